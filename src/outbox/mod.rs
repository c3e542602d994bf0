//! The outbox mapping: an Insert on a configured outbox table becomes an [`OutboxRecord`]
//! (topic, key, headers, value), following Debezium's outbox event router defaults.

mod mapper;
mod message;
mod policy;
mod template;

pub use mapper::{MapError, OutboxMapper, RawRow};
pub use message::map_message;
pub use policy::{PoisonPolicy, UpdatePolicy};
pub use template::{is_valid_topic, TemplateError, TopicTemplate};

use bytes::Bytes;

use crate::lsn::Lsn;

/// A schema-qualified table name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableName {
    pub schema: String,
    pub name: String,
}

impl TableName {
    /// Parses `schema.table` or `table` (schema `public`); either part may be a quoted SQL
    /// identifier (`"My Schema"."Out.Box"`, `""` for a quote inside).
    pub fn parse(s: &str) -> Result<Self, String> {
        let invalid = || format!("invalid table name {s:?}: expected schema.table");
        let parts = split_identifiers(s).ok_or_else(invalid)?;
        let (schema, name) = match parts.as_slice() {
            [name] => ("public".to_owned(), name.clone()),
            [schema, name] => (schema.clone(), name.clone()),
            _ => return Err(invalid()),
        };
        if schema.is_empty() || name.is_empty() {
            return Err(invalid());
        }
        Ok(TableName { schema, name })
    }
}

/// Splits at dots outside double quotes, unquoting quoted parts; `None` for an unclosed quote
/// or a quote in the middle of a part.
fn split_identifiers(s: &str) -> Option<Vec<String>> {
    let mut parts = Vec::new();
    let mut part = String::new();
    let mut quoted = false;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (false, '.') => parts.push(std::mem::take(&mut part)),
            (false, '"') if part.is_empty() => quoted = true,
            (false, '"') => return None,
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                part.push('"');
            }
            (true, '"') => {
                quoted = false;
                if !matches!(chars.peek(), None | Some('.')) {
                    return None;
                }
            }
            (_, c) => part.push(c),
        }
    }
    if quoted {
        return None;
    }
    parts.push(part);
    Some(parts)
}

/// An identifier as SQL needs it: bare when it is a plain lower-case name, quoted otherwise.
fn sql_ident(s: &str) -> std::borrow::Cow<'_, str> {
    let plain = s
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain {
        s.into()
    } else {
        format!("\"{}\"", s.replace('"', "\"\"")).into()
    }
}

impl std::fmt::Display for TableName {
    /// As SQL would name it, so that fixes quoting it can be pasted.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", sql_ident(&self.schema), sql_ident(&self.name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_plain_and_quoted() {
        let t = TableName::parse("outbox").unwrap();
        assert_eq!((t.schema.as_str(), t.name.as_str()), ("public", "outbox"));
        let t = TableName::parse(r#""My Schema"."Out.Box""#).unwrap();
        assert_eq!(
            (t.schema.as_str(), t.name.as_str()),
            ("My Schema", "Out.Box")
        );
        assert_eq!(t.to_string(), r#""My Schema"."Out.Box""#);
        let t = TableName::parse(r#"app."say ""hi""""#).unwrap();
        assert_eq!(t.name, r#"say "hi""#);
        assert_eq!(t.to_string(), r#"app."say ""hi""""#);
        for bad in [
            "",
            "a.",
            ".b",
            "a.b.c",
            r#""open"#,
            r#"x"y"."z""#,
            r#""a"b"#,
        ] {
            assert!(TableName::parse(bad).is_err(), "{bad}");
        }
    }
}

/// Which table is the outbox and what each of its columns becomes.
#[derive(Debug, Clone)]
pub struct OutboxConfig {
    /// Default `public.outbox`.
    pub table: TableName,
    /// Becomes the `id` header, the consumers' dedupe key. Default `id`.
    pub id_column: String,
    /// Routes to a topic through the template. Default `aggregatetype`.
    pub route_column: String,
    /// Becomes the record key, hence the partition and per-aggregate order. Default `aggregateid`.
    pub key_column: String,
    /// Becomes the `type` header. Default `type`.
    pub type_column: String,
    /// Becomes the record value, bytes as stored (jsonb in its text form). Default `payload`.
    pub payload_column: String,
    /// Default `outbox.event.${routedByValue}`.
    pub topic_template: TopicTemplate,
    /// Extra columns placed as record headers: (column, header name). Default none.
    /// A `traceparent` column and a `headers` json(b) column are used whenever present.
    pub additional_headers: Vec<(String, String)>,
    /// Logical decoding messages with this prefix are outbox events too (table-less outbox).
    /// Default `outbox`; `None` turns it off.
    pub message_prefix: Option<String>,
    /// Column whose integer value is the record's partition (Debezium's `:partition`
    /// placement). Default none: the key decides.
    pub partition_column: Option<String>,
    /// A NULL or empty payload becomes a tombstone (no value). Default false: it is delivered
    /// as an empty value, so nothing is ever compacted away by accident.
    pub tombstone_on_empty_payload: bool,
    /// A NULL key column makes the event unroutable (a poison event, see `on_poison`).
    /// Default false: it is delivered without a key, with a warning.
    pub require_key: bool,
}

impl OutboxConfig {
    /// The record value for a stored payload: `None` (a tombstone) only when asked for.
    fn value(&self, payload: Option<Bytes>) -> Option<Bytes> {
        match payload {
            Some(p) if !p.is_empty() => Some(p),
            _ if self.tombstone_on_empty_payload => None,
            other => Some(other.unwrap_or_default()),
        }
    }
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig {
            table: TableName {
                schema: "public".into(),
                name: "outbox".into(),
            },
            id_column: "id".into(),
            route_column: "aggregatetype".into(),
            key_column: "aggregateid".into(),
            type_column: "type".into(),
            payload_column: "payload".into(),
            topic_template: TopicTemplate::DEFAULT
                .parse()
                .unwrap_or_else(|_| unreachable!("the default template is valid")),
            message_prefix: Some("outbox".into()),
            additional_headers: Vec::new(),
            partition_column: None,
            tombstone_on_empty_payload: false,
            require_key: false,
        }
    }
}

/// One outbox event, ready for Kafka.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRecord {
    pub topic: String,
    pub key: Option<Bytes>,
    /// An explicit partition (`partition_column`); `None` lets the key decide.
    pub partition: Option<i32>,
    /// `id` and `type`, in that order.
    pub headers: Vec<(String, Bytes)>,
    /// `None` is a tombstone (`tombstone_on_empty_payload`).
    pub payload: Option<Bytes>,
    pub event_id: Bytes,
    /// WAL position of the insert.
    pub lsn: Lsn,
}

impl OutboxRecord {
    /// Approximate bytes this record holds, for the in-flight byte budget.
    pub fn size(&self) -> usize {
        self.topic.len()
            + self.key.as_ref().map_or(0, Bytes::len)
            + self.payload.as_ref().map_or(0, Bytes::len)
            + self
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
    }
}
