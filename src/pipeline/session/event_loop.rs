//! The event loop: read while the in-flight budget has room, hand records to the
//! destination, apply outcomes, confirm promptly; the graceful drain; transactional commits.
//! Status updates flow whatever else is busy, so `wal_sender_timeout` never fires on a paused
//! reader.

use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{Session, Step, Ticket, Wal};
use crate::destination::{Destination, DestinationError, Outcome};
use crate::pipeline::batches::Batches;
use crate::pipeline::{Progress, StreamError};
use crate::replication::ReplicationError;

/// At most this many messages already read are handled for one wait on the stream (status
/// updates and acks are looked at in between).
const BURST: usize = 256;

impl Session<'_> {
    /// Runs until shutdown (a graceful drain, `Ok`) or an error.
    pub async fn event_loop<D: Destination<Ticket>>(
        &mut self,
        wal: &mut impl Wal,
        dest: &D,
        acks: &mut mpsc::UnboundedReceiver<Outcome<Ticket>>,
        shutdown: &CancellationToken,
        progress: &mut Progress,
    ) -> Result<(), StreamError> {
        let mut tick = tokio::time::interval(self.cfg.status_interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // Set by shutdown: stop at the next transaction boundary, then drain acks.
        let mut stop_by: Option<tokio::time::Instant> = None;
        // Last time the server was heard from, counted only while we wait on the socket.
        let mut heard = Instant::now();
        let timeout = self.cfg.replication_timeout;
        let (mut confirm_due, mut batch_due) = (Alarm::new(), Alarm::new());
        loop {
            self.refill()?;
            self.flush(dest)?;
            if let Some(deadline) = stop_by {
                // A transaction read only in part could never be confirmed, so its events
                // would be sent again after a restart: finish it first.
                if (self.tx.is_none() && self.pending.is_empty() && self.release.is_none())
                    || tokio::time::Instant::now() >= deadline
                {
                    return self.drain(wal, dest, acks, deadline).await;
                }
            }
            let can_read = self.can_read();
            if !can_read {
                // Not reading on purpose (backpressure): silence proves nothing.
                heard = Instant::now();
            }
            confirm_due.set(
                (self.flushable() > self.sent_flush).then(|| self.sent_at + wal.confirm_gap()),
            );
            // Only between transactions: inside one, its Commit comes first.
            batch_due.set(
                self.batches
                    .as_ref()
                    .and_then(Batches::deadline)
                    .filter(|_| self.tx.is_none() && self.pending.is_empty()),
            );
            tokio::select! {
                biased;
                _ = shutdown.cancelled(), if stop_by.is_none() => {
                    info!(in_transaction = self.tx.is_some(), in_flight = self.budget.events(),
                        "shutting down: finishing the current transaction and in-flight acks");
                    stop_by = Some(tokio::time::Instant::now() + self.cfg.shutdown_timeout);
                }
                // Status first: it must flow whatever else is busy (wal_sender_timeout).
                _ = tick.tick() => {
                    let silent = heard.elapsed();
                    if silent > timeout {
                        let e = ReplicationError::Silent(silent);
                        // Said now: tearing the session down (the producer) can take a while.
                        warn!(error = %e, "replication connection is dead; reconnecting");
                        return Err(StreamError::Replication(e));
                    }
                    // Past half the timeout, ask for a reply: a live server answers at once.
                    self.send_status(wal, silent > timeout / 2).await?;
                    self.watch_destination(dest);
                }
                // The watermark moved: confirm it promptly, at most one update per confirm gap,
                // so a crash resends about what was in flight, not a status interval's worth.
                () = confirm_due.wait() => self.send_status(wal, false).await?,
                Some(d) = acks.recv() => self.on_delivery(d)?,
                Some(e) = self.guard.recv() => return Err(e),
                msg = wal.recv(), if can_read => {
                    heard = Instant::now();
                    self.on_wal(msg?, wal, dest).await?;
                    // What has already arrived of this transaction, without a `select!` per
                    // message; never past its Commit, so that everything decided between
                    // transactions (shutdown, batch commits) still is.
                    let mut burst = 1;
                    while burst < BURST && stop_by.is_none() && self.tx.is_some() && self.can_read() {
                        let Some(msg) = wal.try_recv() else { break };
                        self.on_wal(msg?, wal, dest).await?;
                        burst += 1;
                    }
                }
                () = dest.ready(), if !self.pending.is_empty() => {}
                _ = sleep_until_opt(stop_by) => {}
                () = batch_due.wait() => {}
            }
            progress.confirmed = self.flushable();
            if self.batch_due() {
                self.commit_batch(wal, dest, acks).await?;
            }
        }
    }

    /// Nothing waits to be sent and the in-flight budget has room: read on.
    fn can_read(&self) -> bool {
        self.pending.is_empty() && self.release.is_none() && self.budget.has_room()
    }

    /// Acts on one message of the stream.
    async fn on_wal<D: Destination<Ticket>>(
        &mut self,
        msg: crate::replication::ReplicationMessage,
        wal: &mut impl Wal,
        dest: &D,
    ) -> Result<(), StreamError> {
        match self.on_message(msg).await? {
            Step::Continue => {}
            Step::Reply => self.send_status(wal, false).await?,
            Step::Produce(rec, ticket) => {
                self.pending.push_back((rec, ticket));
                self.flush(dest)?;
            }
            Step::Confirm => {
                // The server has the confirmation before the destination has the events:
                // a crash from here on loses them rather than sending them twice.
                self.send_status(wal, false).await?;
                self.release_held()?;
                self.refill()?;
                self.flush(dest)?;
            }
        }
        Ok(())
    }

    /// Waits until every record handed to the producer is acked, status updates flowing.
    async fn await_acks(
        &mut self,
        wal: &mut impl Wal,
        acks: &mut mpsc::UnboundedReceiver<Outcome<Ticket>>,
        tick: &mut tokio::time::Interval,
    ) -> Result<(), StreamError> {
        while self.budget.events() > 0 {
            tokio::select! {
                Some(d) = acks.recv() => {
                    // Exactly-once turns every failed delivery into an error.
                    self.on_delivery(d)?;
                }
                _ = tick.tick() => self.send_status(wal, false).await?,
            }
        }
        Ok(())
    }

    /// The open destination transaction is old enough and we are between PostgreSQL transactions.
    fn batch_due(&self) -> bool {
        self.tx.is_none()
            && self.pending.is_empty()
            && self
                .batches
                .as_ref()
                .and_then(Batches::deadline)
                .is_some_and(|d| d <= Instant::now())
    }

    /// Ends the open destination transaction: its end position, then the commit (status updates
    /// keep flowing meanwhile); on success the slot may be confirmed past it.
    async fn commit_batch<D: Destination<Ticket>>(
        &mut self,
        wal: &mut impl Wal,
        dest: &D,
        acks: &mut mpsc::UnboundedReceiver<Outcome<Ticket>>,
    ) -> Result<(), StreamError> {
        let Some(k) = &self.batches else {
            return Ok(());
        };
        let Some(open) = &k.open else {
            return Ok(());
        };
        let (tag, end) = (open.tag.clone(), k.last_end);
        let mut tick = tokio::time::interval(self.cfg.status_interval);
        // The batch's events first: the destination then records the batch's end position
        // as the last thing in the transaction, and commits.
        self.await_acks(wal, acks, &mut tick).await?;
        let started = Instant::now();
        let commit = dest.commit(end, &tag);
        tokio::pin!(commit);
        let result = loop {
            tokio::select! {
                r = &mut commit => break r,
                _ = tick.tick() => self.send_status(wal, false).await?,
                Some(d) = acks.recv() => {
                    // Exactly-once turns every failed delivery into an error.
                    self.on_delivery(d)?;
                }
            }
        };
        match result {
            Ok(()) => {
                let done = self.batches.as_mut().and_then(Batches::committed);
                info!(txn = %String::from_utf8_lossy(&tag), events = done.map_or(0, |b| b.events),
                    end_lsn = %end, took = ?started.elapsed(), "committed {} transaction", D::TITLE);
                self.send_status(wal, false).await?;
                Ok(())
            }
            Err(e) => {
                warn!(txn = %String::from_utf8_lossy(&tag), error = %e,
                    "{} transaction failed: aborting it; its events will be sent again", D::TITLE);
                if matches!(
                    e,
                    DestinationError::Transaction {
                        abortable: true,
                        ..
                    }
                ) {
                    dest.abort().await;
                }
                Err(e.into())
            }
        }
    }

    /// Graceful stop: read no more, wait (until `deadline`) for in-flight acks, confirm, close.
    async fn drain<D: Destination<Ticket>>(
        &mut self,
        wal: &mut impl Wal,
        dest: &D,
        acks: &mut mpsc::UnboundedReceiver<Outcome<Ticket>>,
        deadline: tokio::time::Instant,
    ) -> Result<(), StreamError> {
        let mut tick = tokio::time::interval(self.cfg.status_interval);
        while self.budget.events() > 0 || !self.pending.is_empty() || self.release.is_some() {
            self.refill()?;
            self.flush(dest)?;
            tokio::select! {
                Some(d) = acks.recv() => self.on_delivery(d)?,
                () = dest.ready(), if !self.pending.is_empty() => {}
                _ = tick.tick() => self.send_status(wal, false).await?,
                _ = tokio::time::sleep_until(deadline) => {
                    warn!(in_flight = self.budget.events(), open_transaction = self.tx.is_some(),
                        "shutdown timeout: unconfirmed events will be sent again on restart");
                    break;
                }
            }
        }
        // At-most-once: events in flight now were confirmed; they are lost, said one by one.
        self.give_up(dest, acks).await;
        if self.tx.is_none() && self.budget.events() == 0 && self.pending.is_empty() {
            self.commit_batch(wal, dest, acks).await?;
        }
        self.send_status(wal, false).await?;
        wal.close().await?;
        info!(confirmed = %self.wm.confirmed(), delivered = self.delivered,
            ignored = self.ignored, lost = self.lost, "stopped");
        Ok(())
    }
}

/// A deadline that the loop sets on every turn: one timer, moved only when the deadline
/// changes (a timer made afresh on every turn wakes the runtime's driver every time).
struct Alarm {
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
    at: Option<Instant>,
}

impl Alarm {
    fn new() -> Self {
        Alarm {
            sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
            at: None,
        }
    }

    fn set(&mut self, at: Option<Instant>) {
        if at != self.at {
            if let Some(at) = at {
                self.sleep
                    .as_mut()
                    .reset(tokio::time::Instant::from_std(at));
            }
            self.at = at;
        }
    }

    /// Resolves once the deadline is past; never while there is none.
    async fn wait(&mut self) {
        match self.at {
            Some(_) => self.sleep.as_mut().await,
            None => std::future::pending().await,
        }
    }
}

/// Sleeps until `at`, or forever when there is no deadline.
pub(super) async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
