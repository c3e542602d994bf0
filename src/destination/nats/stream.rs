//! The JetStream stream the outbox subjects are stored in: what `check` and the start look
//! up, and what `setup --create-nats-stream` creates.

use std::time::Duration;

use async_nats::jetstream::stream::{Config as StreamConfig, StorageType};
use async_nats::jetstream::Context;

use crate::config::{Config, NatsConfig};
use crate::destination::DestinationError;
use crate::outbox::TopicTemplate;

/// What pgoutbox needs to know of the stream.
#[derive(Debug, Clone)]
pub struct StreamInfo {
    pub subjects: Vec<String>,
    pub duplicate_window: Duration,
    /// The largest message the stream takes; -1 = no limit of its own.
    pub max_message_size: i32,
    pub messages: u64,
}

/// The subject filter that covers what a template renders: `outbox.event.>` for a route
/// value at the end (it may hold dots), `*` for one elsewhere.
pub fn subject_filter(template: &TopicTemplate) -> String {
    const MARK: &str = "\u{1}";
    let rendered = template.render(MARK);
    match rendered.strip_suffix(MARK) {
        Some(prefix) if !prefix.contains(MARK) => format!("{prefix}>"),
        _ => rendered.replace(MARK, "*"),
    }
}

/// The subjects a stream must take for `cfg`: every table's template, and the dead-letter
/// subject when `on_poison = dead-letter`.
pub fn subjects(cfg: &Config) -> Vec<String> {
    let mut s: Vec<String> = cfg
        .outboxes()
        .iter()
        .map(|o| subject_filter(&o.topic_template))
        .collect();
    if cfg.on_poison == crate::outbox::PoisonPolicy::DeadLetter {
        s.push(cfg.dead_letter_topic.clone());
    }
    s.sort();
    s.dedup();
    s
}

/// The command that creates the stream with the NATS CLI.
pub fn add_command(cfg: &Config) -> String {
    let window = cfg.nats.duplicate_window.as_secs().max(1);
    format!(
        "nats stream add {} --subjects '{}' --storage file --retention limits --dupe-window {window}s --defaults (or `pgoutbox setup --create-nats-stream`)",
        cfg.nats.stream,
        subjects(cfg).join(",")
    )
}

/// Looks the configured stream up.
pub async fn inspect(js: &Context, cfg: &NatsConfig) -> Result<StreamInfo, DestinationError> {
    use async_nats::jetstream::context::GetStreamErrorKind;
    let stream = js.get_stream(&cfg.stream).await.map_err(|e| match e.kind() {
        GetStreamErrorKind::JetStream(api) if api.code() == 404 => {
            DestinationError::Unavailable(format!(
                "NATS JetStream stream {:?}: {e}: create it (`nats stream add`, or `pgoutbox setup --create-nats-stream`), or set nats_stream",
                cfg.stream
            ))
        }
        _ => DestinationError::Unavailable(format!(
            "NATS JetStream stream {:?}: {e}: JetStream did not answer the look-up (a cluster electing a leader, a node restarting, or JetStream not enabled for this account); retrying",
            cfg.stream
        )),
    })?;
    let info = stream.cached_info();
    Ok(StreamInfo {
        subjects: info.config.subjects.clone(),
        duplicate_window: info.config.duplicate_window,
        max_message_size: info.config.max_message_size,
        messages: info.state.messages,
    })
}

/// Why a stream's duplicate window is too short for the configured one.
pub fn short_window(cfg: &NatsConfig, have: Duration) -> String {
    format!(
        "stream {:?} removes re-sent events only within {:?} (duplicate_window), less than nats_duplicate_window_secs = {}: a restart later than that after a crash can deliver events twice; raise it (`nats stream edit {} --dupe-window {}s`) or lower the setting",
        cfg.stream,
        have,
        cfg.duplicate_window.as_secs(),
        cfg.stream,
        cfg.duplicate_window.as_secs()
    )
}

/// Creates the stream (file storage, limits retention, the configured duplicate window) for
/// the subjects `cfg` publishes to, or checks the one there.
pub async fn create(js: &Context, cfg: &Config) -> Result<StreamInfo, DestinationError> {
    let config = StreamConfig {
        name: cfg.nats.stream.clone(),
        subjects: subjects(cfg),
        storage: StorageType::File,
        duplicate_window: cfg.nats.duplicate_window,
        ..Default::default()
    };
    js.get_or_create_stream(config).await.map_err(|e| {
        DestinationError::Unavailable(format!("creating stream {:?}: {e}", cfg.nats.stream))
    })?;
    inspect(js, &cfg.nats).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_filters() {
        let t = |s: &str| subject_filter(&s.parse().unwrap());
        assert_eq!(t("outbox.event.${routedByValue}"), "outbox.event.>");
        assert_eq!(t("outbox.${routedByValue}.events"), "outbox.*.events");
        assert_eq!(t("fixed.subject"), "fixed.subject");
    }
}
