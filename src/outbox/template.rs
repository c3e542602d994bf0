//! Topic templates such as `outbox.event.${routedByValue}`, compiled once.

use std::str::FromStr;

/// A topic name with one optional placeholder for the route column's value.
///
/// `${routedByValue}` (Debezium's name) and `${aggregatetype}` both mean the route value;
/// a template without a placeholder is a fixed topic.
#[derive(Clone, PartialEq, Eq)]
pub struct TopicTemplate {
    source: String,
    /// Literal pieces; the route value goes between consecutive pieces.
    pieces: Vec<String>,
}

impl std::fmt::Debug for TopicTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.source)
    }
}

/// A template that cannot produce topic names.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("topic template {0:?} has an unknown placeholder {1:?} (use ${{routedByValue}})")]
    UnknownPlaceholder(String, String),
    #[error("topic template {0:?} has an unterminated ${{")]
    Unterminated(String),
    #[error("topic template {0:?} is empty")]
    Empty(String),
}

impl TopicTemplate {
    /// Debezium's default.
    pub const DEFAULT: &'static str = "outbox.event.${routedByValue}";

    /// The topic for a route value.
    pub fn render(&self, route: &str) -> String {
        self.pieces.join(route)
    }

    /// Whether the topic depends on the route value.
    pub fn uses_route(&self) -> bool {
        self.pieces.len() > 1
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }
}

impl FromStr for TopicTemplate {
    type Err = TemplateError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(TemplateError::Empty(s.into()));
        }
        let mut pieces = vec![String::new()];
        let mut rest = s;
        while let Some(start) = rest.find("${") {
            let (lit, after) = rest.split_at(start);
            let end = after
                .find('}')
                .ok_or_else(|| TemplateError::Unterminated(s.into()))?;
            let name = &after[2..end];
            if !matches!(name, "routedByValue" | "aggregatetype") {
                return Err(TemplateError::UnknownPlaceholder(s.into(), name.into()));
            }
            if let Some(last) = pieces.last_mut() {
                last.push_str(lit);
            }
            pieces.push(String::new());
            rest = &after[end + 1..];
        }
        if let Some(last) = pieces.last_mut() {
            last.push_str(rest);
        }
        Ok(TopicTemplate {
            source: s.into(),
            pieces,
        })
    }
}

/// Whether Kafka accepts `topic` as a topic name (1–249 of `[A-Za-z0-9._-]`, not `.`/`..`).
pub fn is_valid_topic(topic: &str) -> bool {
    !topic.is_empty()
        && topic.len() <= 249
        && topic != "."
        && topic != ".."
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_default_and_aliases() {
        let t: TopicTemplate = TopicTemplate::DEFAULT.parse().unwrap();
        assert_eq!(t.render("order"), "outbox.event.order");
        let t: TopicTemplate = "x.${aggregatetype}.y.${routedByValue}".parse().unwrap();
        assert_eq!(t.render("a"), "x.a.y.a");
        let t: TopicTemplate = "fixed".parse().unwrap();
        assert!(!t.uses_route());
        assert_eq!(t.render("ignored"), "fixed");
    }

    #[test]
    fn rejects_bad_templates() {
        assert!("a.${nope}".parse::<TopicTemplate>().is_err());
        assert!("a.${routedByValue".parse::<TopicTemplate>().is_err());
        assert!("".parse::<TopicTemplate>().is_err());
    }

    #[test]
    fn topic_validity() {
        assert!(is_valid_topic("outbox.event.order_v2-x"));
        for bad in ["", ".", "..", "a b", "ä", &"x".repeat(250)] {
            assert!(!is_valid_topic(bad), "{bad}");
        }
    }
}
