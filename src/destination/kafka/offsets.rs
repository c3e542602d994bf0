//! The exactly-once offsets topic: each Kafka transaction also writes, keyed by slot, the
//! `end_lsn` of the last PostgreSQL transaction it carries. Read back with read_committed at
//! start, it says which resent PostgreSQL transactions are already in Kafka.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use super::config::{KafkaConfig, Librdkafka};
use crate::lsn::Lsn;

/// One offsets record (JSON value; the key is the slot name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetRecord {
    pub slot: String,
    /// Every PostgreSQL transaction ending at or below this is in Kafka.
    pub end_lsn: Lsn,
    /// The Kafka transaction that wrote it (its `pgoutbox.txn` header value).
    pub txn: String,
}

impl OffsetRecord {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// `None` for a value that is not an offsets record (ignored, never fatal).
    pub fn decode(bytes: &[u8]) -> Option<OffsetRecord> {
        serde_json::from_slice(bytes).ok()
    }
}

/// Why the offsets topic could not be read.
#[derive(Debug, thiserror::Error)]
pub enum OffsetsError {
    #[error("reading offsets topic {topic}: {error}")]
    Kafka { topic: String, error: KafkaError },
    #[error("reading offsets topic {topic}: no end of partition within {after:?} (a transaction left open by another producer?)")]
    Timeout { topic: String, after: Duration },
    #[error(transparent)]
    Config(#[from] super::config::KafkaConfigError),
}

/// The reader's context: reaching a partition's end is how the read ends, not an error to
/// log (librdkafka reports it through the error callback too).
struct ReaderContext;

impl ClientContext for ReaderContext {
    fn error(&self, error: KafkaError, reason: &str) {
        let end = matches!(
            error,
            KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)
        );
        if !end {
            tracing::warn!(%error, reason, "Kafka offsets reader");
        }
    }
}

impl ConsumerContext for ReaderContext {}

/// The newest offsets record of `slot` that a read_committed consumer sees, if any.
/// Blocking (librdkafka): call it from a blocking thread.
pub fn read_last(
    cfg: &KafkaConfig,
    topic: &str,
    slot: &str,
    timeout: Duration,
) -> Result<Option<OffsetRecord>, OffsetsError> {
    let err = |error| OffsetsError::Kafka {
        topic: topic.to_owned(),
        error,
    };
    let mut c = cfg.client_config()?;
    c.set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .set("enable.auto.commit", "false")
        .set("group.id", "pgoutbox-offsets-reader")
        // Reaching the end quickly matters more than fetch efficiency for one read at start.
        .set("fetch.wait.max.ms", "10");
    let consumer: BaseConsumer<ReaderContext> =
        c.create_with_context(ReaderContext).map_err(err)?;
    let md = consumer.fetch_metadata(Some(topic), timeout).map_err(err)?;
    let partitions: Vec<i32> = md
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Ok(None);
    }
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        tpl.add_partition_offset(topic, *p, Offset::Beginning)
            .map_err(err)?;
    }
    consumer.assign(&tpl).map_err(err)?;
    let deadline = Instant::now() + timeout;
    let mut at_end = std::collections::HashSet::new();
    // Per partition the last record for our key; the slot's key always hashes to one.
    let mut last: Option<(i32, i64, OffsetRecord)> = None;
    while at_end.len() < partitions.len() {
        if Instant::now() >= deadline {
            return Err(OffsetsError::Timeout {
                topic: topic.to_owned(),
                after: timeout,
            });
        }
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            Some(Err(e)) => return Err(err(e)),
            Some(Ok(m)) => {
                if m.key() != Some(slot.as_bytes()) {
                    continue;
                }
                if let Some(rec) = m.payload().and_then(OffsetRecord::decode) {
                    let newer = last
                        .as_ref()
                        .is_none_or(|(p, o, _)| *p != m.partition() || *o < m.offset());
                    if newer {
                        last = Some((m.partition(), m.offset(), rec));
                    }
                }
            }
        }
    }
    Ok(last.map(|(_, _, r)| r))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_garbage() {
        let r = OffsetRecord {
            slot: "pgoutbox".into(),
            end_lsn: Lsn(0x1_0000_0020),
            txn: "ab12-7".into(),
        };
        let bytes = r.encode();
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            r#"{"slot":"pgoutbox","end_lsn":"1/20","txn":"ab12-7"}"#
        );
        assert_eq!(OffsetRecord::decode(&bytes), Some(r));
        assert_eq!(OffsetRecord::decode(b"not json"), None);
    }
}
