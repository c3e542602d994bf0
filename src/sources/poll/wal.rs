//! The polling source as a [`Wal`]: each poll is one transaction of pgoutput messages (Begin,
//! an Insert per row, Commit), so the session applies the same delivery modes, refusals,
//! `on_poison`, retries and lost-event accounting to polled rows as to the replication
//! stream. The confirmation of a poll's Commit is what marks its rows done.
//!
//! Positions: poll number `k` ends at position `k`; an Insert is at its row's `seq` (shown in
//! records as their WAL position). Only the ends are confirmed, and they only grow.

use std::collections::VecDeque;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::time::Instant;

use super::table::{Row, Table};
use crate::lsn::Lsn;
use crate::pgoutput::{encode, Begin, Commit, Insert, Message, Relation, TupleData, Value};
use crate::pipeline::session::Wal;
use crate::pipeline::StreamError;
use crate::replication::ReplicationMessage;

/// A polled table, read as a stream of transactions.
pub struct PollWal<T: Table> {
    table: T,
    relation: Relation,
    /// The index of the `seq` column.
    seq: usize,
    batch: usize,
    interval: Duration,
    /// How often a waiting source says it lives (the session's silence check).
    keepalive: Duration,
    queue: VecDeque<ReplicationMessage>,
    /// The last poll whose rows are locked: its end, its rows' `seq`s, and whether it was
    /// short of a batch (the next poll then waits `interval`).
    open: Option<(Lsn, Vec<i64>, bool)>,
    /// A lock in progress, kept across a cancelled `recv`.
    locking: Option<BoxFuture<'static, Result<Vec<Row>, StreamError>>>,
    next_poll: Instant,
    /// When a keepalive is due if nothing else was returned.
    keepalive_at: Instant,
    polls: u64,
    relation_sent: bool,
}

impl<T: Table> PollWal<T> {
    /// `relation` describes the table's columns; `seq` is the index of its `seq` column.
    pub fn new(
        table: T,
        relation: Relation,
        seq: usize,
        batch: usize,
        interval: Duration,
        keepalive: Duration,
    ) -> Self {
        let now = Instant::now();
        PollWal {
            table,
            relation,
            seq,
            batch,
            interval,
            keepalive,
            queue: VecDeque::new(),
            open: None,
            locking: None,
            next_poll: now,
            keepalive_at: now + keepalive,
            polls: 0,
            relation_sent: false,
        }
    }

    /// A poll's rows → one transaction's messages.
    fn polled(&mut self, rows: Vec<Row>) -> Result<(), StreamError> {
        if rows.is_empty() {
            self.next_poll = Instant::now() + self.interval;
            return Ok(());
        }
        self.polls += 1;
        let end = Lsn(self.polls);
        let now = crate::pgtime::now();
        let xlog = |at: Lsn, msg: Message| ReplicationMessage::XLogData {
            wal_start: at,
            wal_end: at,
            send_time: now,
            data: encode(&msg),
        };
        if !self.relation_sent {
            self.relation_sent = true;
            self.queue
                .push_back(xlog(end, Message::Relation(self.relation.clone())));
        }
        self.queue.push_back(xlog(
            end,
            Message::Begin(Begin {
                final_lsn: end,
                commit_time: now,
                xid: 0,
            }),
        ));
        let short = rows.len() < self.batch;
        let mut seqs = Vec::with_capacity(rows.len());
        for values in rows {
            // A table altered since its columns were learned may not have it where expected.
            let seq = match values.get(self.seq) {
                Some(Value::Text(b)) => std::str::from_utf8(b)
                    .ok()
                    .and_then(|s| s.parse::<i64>().ok()),
                _ => None,
            }
            .ok_or_else(|| {
                StreamError::PollSchema(format!(
                    "{}.{}",
                    self.relation.namespace, self.relation.name
                ))
            })?;
            seqs.push(seq);
            let insert = Insert {
                relation_id: self.relation.id,
                new: TupleData(values),
            };
            self.queue
                .push_back(xlog(Lsn(seq as u64), Message::Insert(insert)));
        }
        self.queue.push_back(xlog(
            end,
            Message::Commit(Commit {
                flags: 0,
                commit_lsn: end,
                end_lsn: end,
                commit_time: now,
            }),
        ));
        self.open = Some((end, seqs, short));
        Ok(())
    }

    fn taken(&mut self, m: ReplicationMessage) -> ReplicationMessage {
        self.keepalive_at = Instant::now() + self.keepalive;
        m
    }
}

impl<T: Table> Wal for PollWal<T> {
    async fn recv(&mut self) -> Result<ReplicationMessage, StreamError> {
        loop {
            if let Some(m) = self.queue.pop_front() {
                return Ok(self.taken(m));
            }
            // Waiting for the last poll's confirmation, or for the interval.
            let waiting = self.open.is_some() || Instant::now() < self.next_poll;
            if waiting && self.locking.is_none() {
                let wake = match self.open {
                    Some(_) => self.keepalive_at,
                    None => self.keepalive_at.min(self.next_poll),
                };
                tokio::time::sleep_until(wake).await;
                if Instant::now() >= self.keepalive_at {
                    let keepalive = ReplicationMessage::PrimaryKeepalive {
                        wal_end: Lsn(self.polls),
                        send_time: crate::pgtime::now(),
                        reply_requested: false,
                    };
                    return Ok(self.taken(keepalive));
                }
                continue;
            }
            let lock = self.locking.get_or_insert_with(|| self.table.lock());
            let rows = lock.as_mut().await;
            self.locking = None;
            self.polled(rows?)?;
        }
    }

    fn try_recv(&mut self) -> Option<Result<ReplicationMessage, StreamError>> {
        let m = self.queue.pop_front()?;
        Some(Ok(self.taken(m)))
    }

    async fn send_status(
        &mut self,
        _write: Lsn,
        flush: Lsn,
        _reply: bool,
    ) -> Result<(), StreamError> {
        let Some((end, _, _)) = &self.open else {
            return Ok(());
        };
        if flush < *end {
            return Ok(());
        }
        if let Some((_, seqs, short)) = self.open.take() {
            self.table.done(seqs).await?;
            self.next_poll = match short {
                true => Instant::now() + self.interval,
                false => Instant::now(),
            };
        }
        Ok(())
    }

    /// A confirmation marks a poll's rows and lets the next poll start: at once.
    fn confirm_gap(&self) -> Duration {
        Duration::ZERO
    }

    async fn close(&mut self) -> Result<(), StreamError> {
        if self.open.take().is_some() || self.locking.take().is_some() {
            self.table.release().await?;
        }
        Ok(())
    }
}
