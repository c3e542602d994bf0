//! Where exactly-once resumes: which resent PostgreSQL transactions the offsets topic shows
//! already in Kafka. Pure: the records come in as read, the answer goes out; no I/O.
//!
//! The rules:
//! - **A record counts only if its Kafka transaction is shown committed.** The offsets topic
//!   is read with `read_committed`, which hides aborted transactions only on a broker that
//!   filters them. So at each start pgoutbox writes one probe record in a transaction it
//!   aborts, then reads: a broker that shows the probe shows aborted offsets records too, and
//!   no record read there proves anything. Such a broker is refused, not approximated.
//! - **The newest record wins**: a later Kafka transaction of the slot carries every
//!   PostgreSQL transaction an earlier one did.
//! - Records of other slots, and values that are not offsets records, are ignored.

use super::offsets::{OffsetRecord, Read};

/// The broker showed this start's aborted probe to a read_committed reader.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the brokers show records of aborted Kafka transactions to read_committed readers (this start's aborted probe record was read back from {topic}): no offsets record there proves a commit, and consumers would read aborted events, so exactly-once cannot be kept. Use delivery = at-least-once with an idempotent consumer (examples/idempotent_consumer), or a broker that filters aborted transactions")]
pub struct AbortedVisible {
    pub topic: String,
}

/// How the records were read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe<'a> {
    /// This start aborted a probe transaction that wrote `nonce`.
    Aborted { nonce: &'a str },
    /// No probe was written (`kafka_trust_read_committed`): records are taken as committed.
    Trusted,
}

/// The offsets record to resume after (`None`: nothing of this slot is in Kafka yet).
pub fn resume_after(
    reads: &[Read],
    probe: Probe<'_>,
    topic: &str,
) -> Result<Option<OffsetRecord>, AbortedVisible> {
    if let Probe::Aborted { nonce } = probe {
        if reads
            .iter()
            .any(|r| matches!(r, Read::Probe(n) if n == nonce))
        {
            return Err(AbortedVisible {
                topic: topic.to_owned(),
            });
        }
    }
    Ok(reads.iter().rev().find_map(|r| match r {
        Read::Offsets(o) => Some(o.clone()),
        Read::Probe(_) => None,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lsn::Lsn;

    fn rec(end: u64, txn: &str) -> Read {
        Read::Offsets(OffsetRecord {
            slot: "s".into(),
            end_lsn: Lsn(end),
            txn: txn.into(),
        })
    }

    fn end(r: Result<Option<OffsetRecord>, AbortedVisible>) -> Option<u64> {
        r.unwrap().map(|o| o.end_lsn.0)
    }

    const PROBE: Probe<'static> = Probe::Aborted { nonce: "n2" };

    #[test]
    fn the_newest_record_wins() {
        let reads = [rec(10, "a-1"), rec(20, "a-2"), rec(30, "b-1")];
        assert_eq!(end(resume_after(&reads, PROBE, "t")), Some(30));
    }

    #[test]
    fn nothing_read_resumes_from_the_slot() {
        assert_eq!(end(resume_after(&[], PROBE, "t")), None);
    }

    #[test]
    fn an_aborted_record_does_not_move_the_resume_point() {
        // A broker that filters aborted transactions hides the aborted `a-3` and the probe:
        // what is read ends at the committed `a-2`.
        let filtered = [rec(10, "a-1"), rec(20, "a-2")];
        assert_eq!(end(resume_after(&filtered, PROBE, "t")), Some(20));
        // A broker that shows them: `a-3` and this start's probe are read. `a-3` must not
        // become the resume point (its events would be skipped, never delivered): refused.
        let shown = [
            rec(10, "a-1"),
            rec(20, "a-2"),
            rec(30, "a-3"),
            Read::Probe("n2".into()),
        ];
        let err = resume_after(&shown, PROBE, "pgoutbox.offsets").unwrap_err();
        assert!(err
            .to_string()
            .contains("aborted probe record was read back from pgoutbox.offsets"));
    }

    #[test]
    fn an_earlier_start_s_probe_proves_nothing_either_way() {
        // An older probe (another nonce) that a broker kept, e.g. before compaction: ignored.
        let reads = [rec(10, "a-1"), Read::Probe("n1".into()), rec(20, "b-1")];
        assert_eq!(end(resume_after(&reads, PROBE, "t")), Some(20));
    }

    #[test]
    fn trusted_reads_take_the_newest_record_as_committed() {
        let reads = [rec(10, "a-1"), Read::Probe("n1".into())];
        assert_eq!(end(resume_after(&reads, Probe::Trusted, "t")), Some(10));
    }
}
