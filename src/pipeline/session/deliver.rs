//! Records → the destination, in order; outcomes → the watermark; refusals → `on_poison`.

use std::time::{Instant, SystemTime};

use super::{Session, Step, Ticket};
use crate::destination::{Destination, Outcome, Refusal, Returned, SendError};
use crate::lsn::Lsn;
use crate::outbox::{MapError, OutboxRecord, PoisonPolicy};
use crate::pipeline::poison::{self, Poisoned};
use crate::pipeline::{AckedEvent, StreamError};

impl Session<'_> {
    /// Hands queued records to the destination in order, until it is full.
    pub(super) fn flush<D: Destination<Ticket>>(&mut self, dest: &D) -> Result<(), StreamError> {
        if self.retry_at.is_some_and(|t| Instant::now() < t) {
            return Ok(());
        }
        self.retry_at = None;
        if let Some(b) = self.batches.as_mut().and_then(|k| k.open.as_mut()) {
            if !b.begun && !self.pending.is_empty() {
                dest.begin()?;
                b.begun = true;
            }
        }
        while let Some((rec, ticket)) = self.pending.pop_front() {
            let bytes = ticket.bytes;
            match dest.send(rec, ticket) {
                Ok(()) => {
                    self.budget.take(bytes);
                    self.meters.in_flight(&self.budget);
                }
                Err(SendError::Full(ticket, rec)) => {
                    self.meters.error("backpressure");
                    self.pending.push_front((rec, ticket));
                    return Ok(());
                }
                Err(SendError::Refused(ticket, e, rec)) => {
                    self.meters.refusal(e.class);
                    if self.retries_in_process(&e) {
                        self.retry_later(rec, ticket, &e);
                        return Ok(());
                    }
                    if let Some(dead) = self.refused(ticket, e, rec, false)? {
                        self.pending.push_front(dead);
                    }
                }
            }
        }
        Ok(())
    }

    /// The destination refused a record (at send or in its outcome): a refusal for good goes
    /// to `on_poison`, anything else ends the session. Returns the dead letter to send in its
    /// place, if any.
    fn refused(
        &mut self,
        ticket: Ticket,
        e: Refusal,
        rec: OutboxRecord,
        from_report: bool,
    ) -> Result<Option<(OutboxRecord, Ticket)>, StreamError> {
        // In a destination transaction a server-side refusal dooms the whole transaction: it is
        // aborted and the stream restarts (or stops, if final); only refusals at send are
        // poison events there.
        let doomed = from_report && self.batches.is_some();
        if !e.class.is_final()
            || doomed
            || ticket.dead_letter
            || self.cfg.on_poison == PoisonPolicy::Fail
        {
            let err = refused(&ticket, &rec.topic, e);
            self.lost(&ticket, &err.to_string());
            return Err(err);
        }
        let poisoned = Poisoned::refused(rec, e);
        // Its place in the transaction's count passes to the dead letter, or is done.
        match self.poisoned(poisoned) {
            Some(dead) => Ok(Some(self.ticketed(dead, ticket.tx, ticket.commit_time))),
            None => {
                if let Some(tx) = ticket.tx {
                    self.wm.ack(tx)?;
                }
                Ok(None)
            }
        }
    }

    /// Logs and counts a poison event; the dead letter to send when the policy says so.
    fn poisoned(&mut self, p: Poisoned) -> Option<OutboxRecord> {
        poison::handle(self.cfg.on_poison, &self.cfg.dead_letter_topic, p)
    }

    /// An event that could not be mapped (NULL route, bad topic, …) in transaction `tx`.
    pub(super) fn unmapped(
        &mut self,
        e: MapError,
        raw: Poisoned,
        standalone_end: Lsn,
    ) -> Result<Step, StreamError> {
        if !e.is_poison() || self.cfg.on_poison == PoisonPolicy::Fail {
            return Err(e.into());
        }
        let poisoned = Poisoned {
            topic: raw.topic,
            class: e.class(),
            message: e.to_string(),
            ..raw
        };
        let Some(dead) = self.poisoned(poisoned) else {
            if self.tx.is_none() {
                self.wm.passed(standalone_end);
            }
            return Ok(Step::Continue);
        };
        self.event(dead, standalone_end)
    }

    pub(super) fn on_delivery(&mut self, d: Outcome<Ticket>) -> Result<(), StreamError> {
        let Outcome {
            ticket,
            result,
            returned,
        } = d;
        let acked = match result {
            Ok(a) => a,
            Err(e) => {
                self.meters.refusal(e.class);
                self.budget.release(ticket.bytes);
                self.meters.in_flight(&self.budget);
                let Some(returned) = self.resend_or_return(ticket, &e, returned) else {
                    return Ok(());
                };
                let (ticket, returned) = returned;
                let returned = returned.unwrap_or_else(|| Returned {
                    topic: self.meters.topic_name(ticket.topic),
                    ..Returned::default()
                });
                let rec = OutboxRecord {
                    topic: returned.topic,
                    key: returned.key,
                    partition: ticket.partition,
                    headers: returned.headers,
                    payload: returned.payload,
                    event_id: ticket.event_id.clone(),
                    lsn: ticket.lsn,
                };
                let dead = self.refused(ticket, e, rec, true)?;
                self.pending.extend(dead);
                return Ok(());
            }
        };
        if let Some(tx) = ticket.tx {
            self.wm.ack(tx)?;
        }
        self.budget.release(ticket.bytes);
        self.meters.in_flight(&self.budget);
        self.delivered += 1;
        if let Some(c) = self.meters.delivered.get(ticket.topic as usize) {
            c.increment(1);
        }
        let commit_time = crate::pgtime::to_system_time(ticket.commit_time);
        let acked_at = SystemTime::now();
        if let Ok(latency) = acked_at.duration_since(commit_time) {
            self.meters.commit_to_ack.record(latency.as_secs_f64());
        }
        if let Some(obs) = self.observer {
            let _ = obs.send(AckedEvent {
                event_id: ticket.event_id,
                partition: acked.partition,
                offset: acked.offset,
                commit_time,
                acked_at,
            });
        }
        Ok(())
    }
}

/// A refusal with the event it concerns.
fn refused(ticket: &Ticket, topic: &str, cause: Refusal) -> StreamError {
    StreamError::Refused {
        event: String::from_utf8_lossy(&ticket.event_id).into_owned(),
        topic: topic.to_owned(),
        bytes: ticket.bytes,
        lsn: ticket.lsn,
        cause: Box::new(cause),
    }
}
