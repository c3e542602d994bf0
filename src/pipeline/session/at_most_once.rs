//! At-most-once after the confirmation: an event's position is confirmed to PostgreSQL before
//! the event is produced, so once produced it is this process's to deliver, or it is lost.
//! A retriable failure is resent in process (reading pauses meanwhile, so memory stays within
//! the in-flight budget); a session that ends in an error first delivers what it confirmed;
//! whatever is given up is logged by event id and counted in `pgoutbox_lost_events_total`.

use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::event_loop::sleep_until_opt;
use super::{Session, StreamError, Ticket};
use crate::destination::{Class, Destination, Outcome, Refusal, Returned};
use crate::metrics as m;
use crate::outbox::OutboxRecord;

/// Pause before a failed delivery is sent again (the destination's client has usually
/// retried it already; this only keeps an instant refusal from spinning).
const RETRY_DELAY: Duration = Duration::from_millis(500);
/// How long purged records may take to report back when giving up.
const PURGE_WAIT: Duration = Duration::from_secs(2);

/// Released events queued for the producer at a time.
const REFILL: usize = 64;

impl Session<'_> {
    fn at_most_once(&self) -> bool {
        self.plan.confirms_first()
    }

    /// The held transaction is confirmed: its events are released to the producer.
    pub(super) fn release_held(&mut self) -> Result<(), StreamError> {
        let n = self.held.len();
        if self.held.spilled() > 0 {
            debug!(
                events = n,
                on_disk = self.held.spilled(),
                "at-most-once: releasing a transaction held partly on disk"
            );
        }
        match self.held.take() {
            Ok(r) => {
                self.release = Some(r);
                Ok(())
            }
            Err(e) => {
                self.lost_unnamed(n, &e);
                Err(StreamError::Hold(e))
            }
        }
    }

    /// Moves released events to the destination queue while the in-flight budget has room.
    pub(super) fn refill(&mut self) -> Result<(), StreamError> {
        let Some(mut release) = self.release.take() else {
            return Ok(());
        };
        while self.pending.len() < REFILL && self.budget.has_room() {
            match release.next_event() {
                Ok(Some((rec, commit_time))) => {
                    let queued = self.ticketed(rec, None, commit_time);
                    self.pending.push_back(queued);
                }
                Ok(None) => break,
                Err(e) => {
                    self.lost_unnamed(release.len() + 1, &e);
                    return Err(StreamError::Hold(e));
                }
            }
        }
        if !release.is_empty() {
            self.release = Some(release);
        }
        Ok(())
    }

    /// Confirmed events that cannot be read back from the spill file: counted, not named.
    fn lost_unnamed(&mut self, n: u64, e: &std::io::Error) {
        error!(events = n, error = %e,
            "events lost: at-most-once confirmed them, and their spill file failed");
        metrics::counter!(m::LOST_EVENTS).increment(n);
        self.lost += n;
    }

    /// Whether this failure is resent in process: at-most-once, and a failure the
    /// destination may get over.
    pub(super) fn retries_in_process(&self, e: &Refusal) -> bool {
        self.at_most_once() && e.class == Class::Retriable
    }

    /// Queues a record for a resend after [`RETRY_DELAY`]; nothing is read until it is sent.
    pub(super) fn retry_later(&mut self, rec: OutboxRecord, ticket: Ticket, e: &Refusal) {
        self.retries += 1;
        // One line per outage, not per event: the first, then every 1,000th.
        if self.retries % 1000 == 1 {
            warn!(event = %String::from_utf8_lossy(&ticket.event_id), error = %e,
                retries = self.retries,
                "delivery failed; at-most-once resends it in process (its position is confirmed, so a restart would not)");
        }
        self.pending.push_back((rec, ticket));
        self.retry_at = Some(Instant::now() + RETRY_DELAY);
    }

    /// A failed delivery report: at-most-once resends a retriable failure (`None`);
    /// otherwise the ticket and the returned record go on to `on_poison` and the errors.
    pub(super) fn resend_or_return(
        &mut self,
        ticket: Ticket,
        e: &Refusal,
        returned: Option<Returned>,
    ) -> Option<(Ticket, Option<Returned>)> {
        if !self.retries_in_process(e) {
            return Some((ticket, returned));
        }
        let Some(r) = returned else {
            self.lost(&ticket, "the producer did not hand the failed record back");
            return None;
        };
        let rec = OutboxRecord {
            topic: r.topic,
            key: r.key,
            partition: ticket.partition,
            headers: r.headers,
            payload: r.payload,
            event_id: ticket.event_id.clone(),
            lsn: ticket.lsn,
        };
        self.retry_later(rec, ticket, e);
        None
    }

    /// An at-most-once event that will never be delivered: said with its id, and counted.
    pub(super) fn lost(&mut self, ticket: &Ticket, why: &str) {
        if !self.at_most_once() {
            return;
        }
        error!(event = %String::from_utf8_lossy(&ticket.event_id), lsn = %ticket.lsn,
            reason = why, "event lost: at-most-once confirmed its position before delivery");
        metrics::counter!(m::LOST_EVENTS).increment(1);
        self.lost += 1;
    }

    /// After a session error, at-most-once: delivers (with resends) every event whose
    /// position is confirmed before the session ends; on shutdown, for at most the shutdown
    /// timeout, after which the rest is given up.
    pub async fn settle<D: Destination<Ticket>>(
        &mut self,
        dest: &D,
        acks: &mut mpsc::UnboundedReceiver<Outcome<Ticket>>,
        shutdown: &CancellationToken,
    ) {
        if !self.at_most_once()
            || (self.budget.events() == 0 && self.pending.is_empty() && self.release.is_none())
        {
            return;
        }
        info!(
            in_flight = self.budget.events(),
            queued = self.pending.len(),
            "at-most-once: delivering the confirmed events before the session ends"
        );
        let mut stop_by = shutdown
            .is_cancelled()
            .then(|| tokio::time::Instant::now() + self.cfg.shutdown_timeout);
        while self.budget.events() > 0 || !self.pending.is_empty() || self.release.is_some() {
            // A refusal here is logged as a lost event by `refused`; go on with the rest.
            let _ = self.refill();
            let _ = self.flush(dest);
            tokio::select! {
                Some(d) = acks.recv() => {
                    let _ = self.on_delivery(d);
                }
                () = dest.ready(), if !self.pending.is_empty() => {}
                _ = shutdown.cancelled(), if stop_by.is_none() => {
                    stop_by = Some(tokio::time::Instant::now() + self.cfg.shutdown_timeout);
                }
                _ = sleep_until_opt(stop_by) => break,
            }
        }
        self.give_up(dest, acks).await;
    }

    /// At-most-once, stopping with events still queued or in flight: each is lost, and said.
    pub(super) async fn give_up<D: Destination<Ticket>>(
        &mut self,
        dest: &D,
        acks: &mut mpsc::UnboundedReceiver<Outcome<Ticket>>,
    ) {
        if !self.at_most_once() {
            return;
        }
        let mut queued: Vec<_> = self.pending.drain(..).map(|(_, t)| t).collect();
        if let Some(mut release) = self.release.take() {
            loop {
                match release.next_event() {
                    Ok(Some((rec, _))) => queued.push(self.ticketed(rec, None, 0).1),
                    Ok(None) => break,
                    Err(e) => {
                        self.lost_unnamed(release.len() + 1, &e);
                        break;
                    }
                }
            }
        }
        for ticket in &queued {
            self.lost(ticket, "not yet produced when pgoutbox stopped");
        }
        if self.budget.events() == 0 {
            return;
        }
        // Purged records come back through the delivery reports, each with its ticket.
        dest.purge();
        let until = tokio::time::Instant::now() + PURGE_WAIT;
        while self.budget.events() > 0 {
            tokio::select! {
                Some(d) = acks.recv() => {
                    if d.result.is_ok() {
                        let _ = self.on_delivery(d);
                    } else {
                        self.budget.release(d.ticket.bytes);
                        self.lost(&d.ticket, "not acknowledged when pgoutbox stopped");
                    }
                }
                _ = tokio::time::sleep_until(until) => break,
            }
        }
        let unknown = self.budget.events();
        if unknown > 0 {
            error!(events = unknown,
                "at-most-once: events in flight never reported back when pgoutbox stopped; counted as lost");
            metrics::counter!(m::LOST_EVENTS).increment(unknown as u64);
            self.lost += unknown as u64;
        }
    }
}
