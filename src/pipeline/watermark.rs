//! The LSN watermark: the only place that decides which WAL position may be confirmed.
//!
//! Implements the watermark rule (docs/architecture.md, "Invariants"). It is pure bookkeeping (no I/O, no clocks) so every rule
//! can be tested in isolation; the pipeline feeds it what it sees and sends what it says.

use std::collections::VecDeque;

use crate::lsn::Lsn;

/// Identifies one tracked Postgres transaction. Events carry it so their acks find it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TxId(u64);

/// A call that contradicts the replication stream's shape (a bug or a protocol violation).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WatermarkError {
    /// Begin arrived while another transaction had not committed.
    #[error("transaction begun while another is still open")]
    AlreadyOpen,
    /// An event or commit named a transaction that is not the open one.
    #[error("transaction {0:?} is not open")]
    NotOpen(TxId),
    /// An ack named a transaction that is unknown or has no outstanding events.
    #[error("ack for transaction {0:?} which has no outstanding events")]
    UnexpectedAck(TxId),
}

#[derive(Debug)]
struct Tx {
    /// `None` until its Commit is seen: an uncommitted transaction is never complete.
    end_lsn: Option<Lsn>,
    outstanding: u64,
}

/// Tracks transactions in commit order and computes the confirmable LSN.
#[derive(Debug)]
pub struct Watermark {
    confirmed: Lsn,
    received: Lsn,
    /// Id of `txs[0]`; ids are dense, so an ack finds its transaction by subtraction.
    base: u64,
    txs: VecDeque<Tx>,
    open: Option<TxId>,
}

impl Watermark {
    /// Starts at the slot's confirmed position: everything up to it is already done.
    pub fn new(start: Lsn) -> Self {
        Watermark {
            confirmed: start,
            received: start,
            base: 0,
            txs: VecDeque::new(),
            open: None,
        }
    }

    /// The LSN that may be reported as flushed (rules 2, 4 and 6).
    pub fn confirmed(&self) -> Lsn {
        self.confirmed
    }

    /// The last LSN received from the server (the status update's `write`).
    pub fn received(&self) -> Lsn {
        self.received
    }

    /// Transactions seen but not yet fully acked (including an open one).
    pub fn pending_transactions(&self) -> usize {
        self.txs.len()
    }

    /// Records that data up to `lsn` has been received.
    pub fn observe(&mut self, lsn: Lsn) {
        self.received = self.received.max(lsn);
    }

    /// A Begin: starts tracking a transaction.
    pub fn begin(&mut self) -> Result<TxId, WatermarkError> {
        if self.open.is_some() {
            return Err(WatermarkError::AlreadyOpen);
        }
        let id = TxId(self.base + self.txs.len() as u64);
        self.txs.push_back(Tx {
            end_lsn: None,
            outstanding: 0,
        });
        self.open = Some(id);
        Ok(id)
    }

    /// One outbox event of the open transaction was handed to the sink.
    pub fn add_event(&mut self, tx: TxId) -> Result<(), WatermarkError> {
        if self.open != Some(tx) {
            return Err(WatermarkError::NotOpen(tx));
        }
        self.slot(tx)
            .ok_or(WatermarkError::NotOpen(tx))?
            .outstanding += 1;
        Ok(())
    }

    /// A Commit: the transaction ends at `end_lsn` (rule 1: with no events it is complete now).
    pub fn commit(&mut self, tx: TxId, end_lsn: Lsn) -> Result<(), WatermarkError> {
        if self.open != Some(tx) {
            return Err(WatermarkError::NotOpen(tx));
        }
        self.open = None;
        self.observe(end_lsn);
        self.slot(tx).ok_or(WatermarkError::NotOpen(tx))?.end_lsn = Some(end_lsn);
        self.advance();
        Ok(())
    }

    /// Kafka acknowledged one event of `tx`.
    pub fn ack(&mut self, tx: TxId) -> Result<(), WatermarkError> {
        let t = self.slot(tx).ok_or(WatermarkError::UnexpectedAck(tx))?;
        if t.outstanding == 0 {
            return Err(WatermarkError::UnexpectedAck(tx));
        }
        t.outstanding -= 1;
        self.advance();
        Ok(())
    }

    /// A position outside any transaction that needs no delivery (a non-transactional logical
    /// message we do not publish, such as a heartbeat): complete at once, like an empty
    /// transaction (rule 1), yet confirmed only after every earlier transaction (rule 2).
    pub fn passed(&mut self, lsn: Lsn) {
        self.observe(lsn);
        if self.open.is_some() {
            // Inside a transaction the Commit decides.
            return;
        }
        self.txs.push_back(Tx {
            end_lsn: Some(lsn),
            outstanding: 0,
        });
        self.advance();
    }

    /// One event outside any transaction (a non-transactional logical message that is
    /// published): tracked like a one-event transaction ending at `end`.
    pub fn standalone(&mut self, end: Lsn) -> Result<TxId, WatermarkError> {
        let tx = self.begin()?;
        self.add_event(tx)?;
        self.commit(tx, end)?;
        Ok(tx)
    }

    /// A keepalive reporting the server's WAL end (rule 4: idle advance when nothing is pending).
    pub fn keepalive(&mut self, wal_end: Lsn) {
        self.observe(wal_end);
        if self.txs.is_empty() && self.open.is_none() {
            self.confirmed = self.confirmed.max(wal_end);
        }
    }

    fn slot(&mut self, tx: TxId) -> Option<&mut Tx> {
        let idx = tx.0.checked_sub(self.base)?;
        self.txs.get_mut(usize::try_from(idx).ok()?)
    }

    /// Rule 2: pop every complete transaction at the front; never move backwards (rule 6).
    fn advance(&mut self) {
        while let Some(front) = self.txs.front() {
            match front.end_lsn {
                Some(end) if front.outstanding == 0 => {
                    self.confirmed = self.confirmed.max(end);
                    self.txs.pop_front();
                    self.base += 1;
                }
                _ => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tx_with_events(w: &mut Watermark, events: u64, end: u64) -> TxId {
        let tx = w.begin().unwrap();
        for _ in 0..events {
            w.add_event(tx).unwrap();
        }
        w.commit(tx, Lsn(end)).unwrap();
        tx
    }

    #[test]
    fn rule1_empty_transaction_completes_at_commit() {
        let mut w = Watermark::new(Lsn(100));
        tx_with_events(&mut w, 0, 200);
        assert_eq!(w.confirmed(), Lsn(200));
        assert_eq!(w.pending_transactions(), 0);
    }

    #[test]
    fn rule1_transaction_waits_for_every_event() {
        let mut w = Watermark::new(Lsn(100));
        let tx = tx_with_events(&mut w, 3, 200);
        w.ack(tx).unwrap();
        w.ack(tx).unwrap();
        assert_eq!(w.confirmed(), Lsn(100));
        w.ack(tx).unwrap();
        assert_eq!(w.confirmed(), Lsn(200));
    }

    #[test]
    fn rule1_acks_before_commit_do_not_complete_the_transaction() {
        let mut w = Watermark::new(Lsn(100));
        let tx = w.begin().unwrap();
        w.add_event(tx).unwrap();
        w.ack(tx).unwrap();
        assert_eq!(w.confirmed(), Lsn(100));
        w.commit(tx, Lsn(300)).unwrap();
        assert_eq!(w.confirmed(), Lsn(300));
    }

    #[test]
    fn rule2_out_of_order_acks_hold_at_the_oldest_incomplete() {
        let mut w = Watermark::new(Lsn(100));
        let a = tx_with_events(&mut w, 1, 200);
        let b = tx_with_events(&mut w, 1, 300);
        let c = tx_with_events(&mut w, 1, 400);
        w.ack(c).unwrap();
        w.ack(b).unwrap();
        assert_eq!(w.confirmed(), Lsn(100), "a is still unacked");
        w.ack(a).unwrap();
        assert_eq!(w.confirmed(), Lsn(400), "a completes and releases b and c");
    }

    #[test]
    fn rule2_empty_transaction_behind_an_unacked_one_waits() {
        let mut w = Watermark::new(Lsn(100));
        let a = tx_with_events(&mut w, 1, 200);
        tx_with_events(&mut w, 0, 300);
        assert_eq!(w.confirmed(), Lsn(100));
        w.ack(a).unwrap();
        assert_eq!(w.confirmed(), Lsn(300));
    }

    #[test]
    fn rule3_write_is_last_received() {
        let mut w = Watermark::new(Lsn(100));
        w.observe(Lsn(150));
        let a = tx_with_events(&mut w, 1, 200);
        assert_eq!(w.received(), Lsn(200));
        assert_eq!(w.confirmed(), Lsn(100));
        w.ack(a).unwrap();
        assert!(w.confirmed() <= w.received());
    }

    #[test]
    fn rule4_idle_keepalive_advances() {
        let mut w = Watermark::new(Lsn(100));
        w.keepalive(Lsn(500));
        assert_eq!(w.confirmed(), Lsn(500));
        assert_eq!(w.received(), Lsn(500));
    }

    #[test]
    fn rule4_keepalive_ignored_while_events_in_flight() {
        let mut w = Watermark::new(Lsn(100));
        let a = tx_with_events(&mut w, 1, 200);
        w.keepalive(Lsn(500));
        assert_eq!(w.confirmed(), Lsn(100));
        w.ack(a).unwrap();
        assert_eq!(
            w.confirmed(),
            Lsn(200),
            "keepalive position is not remembered as confirmed"
        );
        w.keepalive(Lsn(600));
        assert_eq!(w.confirmed(), Lsn(600));
    }

    #[test]
    fn rule4_keepalive_ignored_inside_an_open_transaction() {
        let mut w = Watermark::new(Lsn(100));
        let tx = w.begin().unwrap();
        w.keepalive(Lsn(500));
        assert_eq!(w.confirmed(), Lsn(100));
        w.commit(tx, Lsn(450)).unwrap();
        assert_eq!(w.confirmed(), Lsn(450));
    }

    #[test]
    fn passed_position_completes_at_once_but_waits_behind_unacked() {
        let mut w = Watermark::new(Lsn(100));
        w.passed(Lsn(150));
        assert_eq!(w.confirmed(), Lsn(150));
        let a = tx_with_events(&mut w, 1, 200);
        w.passed(Lsn(250));
        assert_eq!(w.confirmed(), Lsn(150));
        w.ack(a).unwrap();
        assert_eq!(w.confirmed(), Lsn(250));
        let t = w.begin().unwrap();
        w.passed(Lsn(300));
        w.commit(t, Lsn(310)).unwrap();
        assert_eq!(w.confirmed(), Lsn(310));
    }

    #[test]
    fn standalone_event_waits_for_its_ack_and_for_earlier_ones() {
        let mut w = Watermark::new(Lsn(100));
        let a = tx_with_events(&mut w, 1, 200);
        let s = w.standalone(Lsn(250)).unwrap();
        w.ack(s).unwrap();
        assert_eq!(w.confirmed(), Lsn(100));
        w.ack(a).unwrap();
        assert_eq!(w.confirmed(), Lsn(250));
    }

    #[test]
    fn rule5_unacked_event_holds_forever() {
        let mut w = Watermark::new(Lsn(100));
        let _failed = tx_with_events(&mut w, 1, 200);
        for end in [300, 400, 500] {
            let t = tx_with_events(&mut w, 1, end);
            w.ack(t).unwrap();
        }
        w.keepalive(Lsn(900));
        assert_eq!(w.confirmed(), Lsn(100));
    }

    #[test]
    fn rule6_never_backwards() {
        let mut w = Watermark::new(Lsn(1000));
        tx_with_events(&mut w, 0, 500);
        assert_eq!(w.confirmed(), Lsn(1000));
        w.keepalive(Lsn(10));
        assert_eq!(w.confirmed(), Lsn(1000));
        assert_eq!(w.received(), Lsn(1000));
    }

    #[test]
    fn rule6_never_beyond_received() {
        let w = Watermark::new(Lsn(100));
        assert_eq!(w.confirmed(), Lsn(100));
        let mut w = Watermark::new(Lsn(100));
        let t = tx_with_events(&mut w, 1, 200);
        w.ack(t).unwrap();
        assert_eq!(w.confirmed(), w.received());
    }

    #[test]
    fn misuse_is_reported_not_ignored() {
        let mut w = Watermark::new(Lsn(0));
        let t = w.begin().unwrap();
        assert_eq!(w.begin(), Err(WatermarkError::AlreadyOpen));
        w.commit(t, Lsn(10)).unwrap();
        assert_eq!(w.add_event(t), Err(WatermarkError::NotOpen(t)));
        assert_eq!(w.ack(t), Err(WatermarkError::UnexpectedAck(t)));
        assert_eq!(
            w.ack(TxId(99)),
            Err(WatermarkError::UnexpectedAck(TxId(99)))
        );
    }

    proptest! {
        /// Any order of acks: confirmed is exactly the end of the longest complete prefix,
        /// never decreases and never passes what was received.
        #[test]
        fn matches_model_under_any_ack_order(
            sizes in prop::collection::vec(0u64..4, 1..30),
            seed in any::<u64>(),
        ) {
            let mut w = Watermark::new(Lsn(10));
            let mut acks = Vec::new();
            let mut ends = Vec::new();
            for (i, n) in sizes.iter().enumerate() {
                let end = 100 + 10 * i as u64;
                let tx = tx_with_events(&mut w, *n, end);
                ends.push(end);
                acks.extend(std::iter::repeat_n((i, tx), *n as usize));
            }
            // Deterministic shuffle from the seed.
            let mut s = seed | 1;
            for i in (1..acks.len()).rev() {
                s ^= s << 13; s ^= s >> 7; s ^= s << 17;
                acks.swap(i, (s % (i as u64 + 1)) as usize);
            }
            let mut remaining: Vec<u64> = sizes.clone();
            let mut last = w.confirmed();
            for (i, tx) in acks {
                w.ack(tx).unwrap();
                remaining[i] -= 1;
                let done = remaining.iter().take_while(|r| **r == 0).count();
                let expect = if done == 0 { 10 } else { ends[done - 1] };
                prop_assert_eq!(w.confirmed(), Lsn(expect));
                prop_assert!(w.confirmed() >= last);
                prop_assert!(w.confirmed() <= w.received());
                last = w.confirmed();
            }
            prop_assert_eq!(w.confirmed(), Lsn(*ends.last().unwrap()));
        }
    }
}
