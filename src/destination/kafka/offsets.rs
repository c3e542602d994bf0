//! The exactly-once offsets topic: each Kafka transaction also writes, keyed by slot, the
//! `end_lsn` of the last PostgreSQL transaction it carries. Read back with read_committed at
//! start, it says which resent PostgreSQL transactions are already in Kafka (`resume.rs`
//! decides; this file does the reading).

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

/// One record of the offsets topic, as read in partition order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    /// An offsets record of the slot.
    Offsets(OffsetRecord),
    /// An abort probe: the nonce its (aborted) transaction wrote.
    Probe(String),
}

/// The abort probe's record: written in a transaction that is aborted before the read, under
/// its own key so that it never stands for the slot in the compacted topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeRecord {
    pub probe: String,
}

impl ProbeRecord {
    /// The key of `slot`'s probe records.
    pub fn key(slot: &str) -> String {
        format!("{slot}/abort-probe")
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
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

/// The offsets and probe records of `slot` that a read_committed consumer sees, in
/// partition order. Blocking (librdkafka): call it from a blocking thread.
pub fn read(
    cfg: &KafkaConfig,
    topic: &str,
    slot: &str,
    timeout: Duration,
) -> Result<Vec<Read>, OffsetsError> {
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
        return Ok(Vec::new());
    }
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        tpl.add_partition_offset(topic, *p, Offset::Beginning)
            .map_err(err)?;
    }
    consumer.assign(&tpl).map_err(err)?;
    let deadline = Instant::now() + timeout;
    let mut at_end = std::collections::HashSet::new();
    let probe_key = ProbeRecord::key(slot);
    // The slot's keys always hash to one partition each: offsets of one partition ascend.
    let mut out = Vec::new();
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
                let payload = m.payload().unwrap_or_default();
                if m.key() == Some(slot.as_bytes()) {
                    out.extend(OffsetRecord::decode(payload).map(Read::Offsets));
                } else if m.key() == Some(probe_key.as_bytes()) {
                    let probe = serde_json::from_slice::<ProbeRecord>(payload).ok();
                    out.extend(probe.map(|p| Read::Probe(p.probe)));
                }
            }
        }
    }
    Ok(out)
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
