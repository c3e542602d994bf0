//! Exactly-once batching: which PostgreSQL transactions go into the open Kafka transaction,
//! which resent ones are already in Kafka, and what may be confirmed to the slot meanwhile.
//! Pure bookkeeping; the session makes the Kafka calls.

use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::lsn::Lsn;

/// The Kafka transaction being filled.
#[derive(Debug)]
pub struct Batch {
    /// The `pgoutbox.txn` header of its records: `<run>-<seq>`.
    pub tag: Bytes,
    pub began: Instant,
    /// The confirmed position when it opened: nothing past it may be confirmed until the
    /// Kafka commit, however many of its events are acked.
    pub hold: Lsn,
    pub events: usize,
    /// `begin_transaction` was called (lazily, before its first record is sent).
    pub begun: bool,
}

/// Kafka transactions of one session.
#[derive(Debug)]
pub struct Batches {
    run: String,
    seq: u64,
    interval: Duration,
    /// PostgreSQL transactions ending at or below this are in Kafka already (offsets topic).
    pub delivered_through: Lsn,
    /// End of the last PostgreSQL transaction (or standalone event) read in full.
    pub last_end: Lsn,
    pub open: Option<Batch>,
}

impl Batches {
    /// `run` names this session in the tags; `delivered_through` comes from the offsets topic.
    pub fn new(run: String, delivered_through: Lsn, interval: Duration) -> Self {
        Batches {
            run,
            seq: 0,
            interval,
            delivered_through,
            last_end: Lsn::ZERO,
            open: None,
        }
    }

    /// A resent transaction whose commit record starts at `final_lsn` is in Kafka already.
    /// (Its end lies past `final_lsn`; WAL records don't overlap, so this is exact.)
    pub fn already_delivered(&self, final_lsn: Lsn) -> bool {
        final_lsn < self.delivered_through
    }

    /// The open batch's tag; opens one first if none (`Some(tag)` then says: begin it).
    pub fn join(&mut self, confirmed: Lsn) -> (Bytes, bool) {
        if let Some(b) = &mut self.open {
            b.events += 1;
            return (b.tag.clone(), false);
        }
        self.seq += 1;
        let tag = Bytes::from(format!("{}-{}", self.run, self.seq));
        self.open = Some(Batch {
            tag: tag.clone(),
            began: Instant::now(),
            hold: confirmed,
            events: 1,
            begun: false,
        });
        (tag, true)
    }

    /// The position a status update may report, given the watermark's.
    pub fn flushable(&self, confirmed: Lsn) -> Lsn {
        match &self.open {
            Some(b) => confirmed.min(b.hold),
            None => confirmed,
        }
    }

    /// When the open batch should be committed (at the next transaction boundary).
    pub fn deadline(&self) -> Option<Instant> {
        self.open.as_ref().map(|b| b.began + self.interval)
    }

    /// The Kafka commit succeeded: everything read so far is in Kafka.
    pub fn committed(&mut self) -> Option<Batch> {
        self.delivered_through = self.delivered_through.max(self.last_end);
        self.open.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_the_slot_until_the_kafka_commit() {
        let mut b = Batches::new("r".into(), Lsn::ZERO, Duration::from_millis(100));
        assert_eq!(b.flushable(Lsn(50)), Lsn(50));
        let (tag, new) = b.join(Lsn(50));
        assert!(new);
        assert_eq!(tag.as_ref(), b"r-1");
        let (again, new) = b.join(Lsn(60));
        assert!(!new);
        assert_eq!(again, tag);
        // Acks moved the watermark to 90; the batch isn't committed: report 50.
        b.last_end = Lsn(90);
        assert_eq!(b.flushable(Lsn(90)), Lsn(50));
        assert!(b.deadline().is_some());
        let done = b.committed().unwrap();
        assert_eq!(done.events, 2);
        assert_eq!(b.flushable(Lsn(90)), Lsn(90));
        assert_eq!(b.delivered_through, Lsn(90));
        assert!(b.deadline().is_none());
        assert_eq!(b.join(Lsn(90)).0.as_ref(), b"r-2");
    }

    #[test]
    fn skips_exactly_what_the_offsets_topic_covers() {
        let b = Batches::new("r".into(), Lsn(0x200), Duration::from_millis(100));
        // A transaction whose commit record starts below 0x200 ends at or below it.
        assert!(b.already_delivered(Lsn(0x1d0)));
        assert!(!b.already_delivered(Lsn(0x200)));
        assert!(!b.already_delivered(Lsn(0x300)));
    }
}
