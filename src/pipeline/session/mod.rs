//! One session's delivery core: events read from the WAL go to a [`Destination`], outcomes
//! come back into the watermark, and the slot is confirmed only past what the destination
//! acknowledged. Generic over the destination and over the WAL stream ([`Wal`]), so that the
//! rules are tested with fakes of both (`tests.rs`).
//!
//! - [`event_loop`]: the loop, the graceful drain, transactional commits.
//! - [`decode`]: a replication message → watermark bookkeeping and records to send.
//! - [`deliver`]: records → the destination, outcomes → the watermark, refusals → `on_poison`.
//! - [`at_most_once`]: delivery after the confirmation, resends in process, lost events.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::mpsc;
use tracing::{info, trace, warn};

mod at_most_once;
mod decode;
mod deliver;
mod event_loop;
#[cfg(test)]
pub(crate) mod fakes;
#[cfg(test)]
mod tests;

use super::batches::Batches;
use super::held::{Held, Release};
use super::{AckedEvent, Budget, StreamError};
use crate::config::{Config, Plan};
use crate::destination::Class;
use crate::lsn::Lsn;
use crate::metrics as m;
use crate::outbox::{OutboxMapper, OutboxRecord};
use crate::pgoutput::RelationCache;
use crate::pipeline::watermark::{TxId, Watermark};
use crate::replication::{ReplicationError, ReplicationMessage, ReplicationStream};

/// The WAL side of a session: messages in, status updates out. The replication stream is one;
/// the polling source ([`crate::sources::poll`]) is another, speaking pgoutput too.
pub trait Wal: Send {
    /// The next message; cancel-safe (it is awaited in a `select!`).
    fn recv(&mut self) -> impl Future<Output = Result<ReplicationMessage, StreamError>> + Send;
    /// The next message if it has already arrived, without waiting; `None`: use `recv`.
    /// Lets the loop take a burst of messages for one `select!`.
    fn try_recv(&mut self) -> Option<Result<ReplicationMessage, StreamError>> {
        None
    }
    /// Reports `write` received and `flush` confirmed; `reply` asks the server to answer.
    /// Done when the confirmation is out: at-most-once sends a transaction's events after.
    fn send_status(
        &mut self,
        write: Lsn,
        flush: Lsn,
        reply: bool,
    ) -> impl Future<Output = Result<(), StreamError>> + Send;
    /// Ends the stream.
    fn close(&mut self) -> impl Future<Output = Result<(), StreamError>> + Send;
    /// The least time between two status updates sent because the watermark moved (the
    /// periodic ones and replies go out regardless): coalesces a walsender's confirmations.
    fn confirm_gap(&self) -> std::time::Duration {
        std::time::Duration::from_millis(20)
    }
}

impl Wal for ReplicationStream {
    async fn recv(&mut self) -> Result<ReplicationMessage, StreamError> {
        Ok(ReplicationStream::recv(self).await?)
    }
    fn try_recv(&mut self) -> Option<Result<ReplicationMessage, StreamError>> {
        ReplicationStream::try_recv(self).map(|r| r.map_err(Into::into))
    }
    async fn send_status(
        &mut self,
        write: Lsn,
        flush: Lsn,
        reply: bool,
    ) -> Result<(), StreamError> {
        Ok(ReplicationStream::send_status(self, write, flush, reply).await?)
    }
    async fn close(&mut self) -> Result<(), StreamError> {
        Ok(ReplicationStream::close(self).await?)
    }
}

/// Travels with each record through the destination and comes back with its outcome.
#[derive(Debug)]
pub struct Ticket {
    /// The transaction whose count this event is in; `None` when nothing waits for its ack
    /// (at-most-once).
    tx: Option<TxId>,
    bytes: usize,
    commit_time: i64,
    event_id: Bytes,
    /// Index into the session's per-topic delivered counters.
    topic: u32,
    /// WAL position of the insert, for error messages.
    lsn: Lsn,
    /// This record is a dead letter: if it is refused too, the stream stops.
    dead_letter: bool,
    /// The record's explicit partition (`partition_column`), for a resend.
    partition: Option<i32>,
}

/// What the event loop does after handling one replication message.
// Built and consumed at once on the stack; boxing would allocate once per event.
#[allow(clippy::large_enum_variant)]
enum Step {
    Continue,
    Reply,
    Produce(OutboxRecord, Ticket),
    /// At-most-once: report the watermark now, then produce what is held.
    Confirm,
}

/// Per-session state: the watermark, relation cache, mapper and in-flight budget.
pub struct Session<'a> {
    cfg: &'a Config,
    /// How the delivery mode is kept (transactional exactly-once also has `batches`).
    plan: Plan,
    wm: Watermark,
    relations: RelationCache,
    mapper: OutboxMapper,
    /// The open transaction and its commit timestamp (known at Begin).
    tx: Option<(TxId, i64)>,
    budget: Budget,
    /// At-most-once: the open transaction's events, produced after its Commit is confirmed.
    held: Held,
    /// At-most-once: a confirmed transaction's events, handed to the destination as the
    /// in-flight budget allows; nothing more is read until all are.
    release: Option<Release>,
    /// Transactional exactly-once: the destination's transactions.
    batches: Option<Batches>,
    /// Exactly-once: the open PostgreSQL transaction is in the destination already (a resend).
    skip_tx: bool,
    observer: Option<&'a mpsc::UnboundedSender<AckedEvent>>,
    /// Where the destination's blocked state is published (readiness, metric).
    health: Option<&'a crate::pipeline::Health>,
    /// Records for the destination, in order; while any wait (it is full, or a retry is due
    /// later), nothing more is read.
    pending: VecDeque<(OutboxRecord, Ticket)>,
    /// At-most-once: no resend of a failed delivery before this instant.
    retry_at: Option<Instant>,
    /// The last status update: what it confirmed, and when.
    sent_flush: Lsn,
    sent_at: Instant,
    /// At-most-once: failed deliveries resent, and events given up.
    retries: u64,
    lost: u64,
    /// A publication change that silences the outbox, from the guard.
    guard: mpsc::Receiver<StreamError>,
    /// Looks up relations the mapper does not know (a partition created since the start).
    catalog: crate::postgres::connection::LazyClient,
    delivered: u64,
    /// `delivered` at the last status tick.
    delivered_at_tick: u64,
    /// A stall was logged and has not ended yet.
    said_stalled: bool,
    ignored: u64,
    meters: Meters,
}

/// Metric handles, resolved once per session instead of once per event.
struct Meters {
    destination: &'static str,
    topic_ids: HashMap<String, u32>,
    delivered: Vec<metrics::Counter>,
    in_flight_events: metrics::Gauge,
    in_flight_bytes: metrics::Gauge,
    received_lsn: metrics::Gauge,
    confirmed_lsn: metrics::Gauge,
    /// When the confirmed position last moved (Unix seconds).
    confirmed_at: metrics::Gauge,
    confirmed_last: f64,
    decoded: metrics::Counter,
    commit_to_ack: metrics::Histogram,
    stalled: metrics::Gauge,
}

impl Meters {
    fn new(destination: &'static str) -> Self {
        Meters {
            destination,
            topic_ids: HashMap::new(),
            delivered: Vec::new(),
            in_flight_events: metrics::gauge!(m::IN_FLIGHT_EVENTS),
            in_flight_bytes: metrics::gauge!(m::IN_FLIGHT_BYTES),
            received_lsn: metrics::gauge!(m::RECEIVED_LSN),
            confirmed_lsn: metrics::gauge!(m::CONFIRMED_LSN),
            confirmed_at: metrics::gauge!(m::CONFIRMED_ADVANCED_AT),
            confirmed_last: -1.0,
            decoded: metrics::counter!(m::EVENTS_DECODED),
            commit_to_ack: metrics::histogram!(m::COMMIT_TO_ACK, "destination" => destination),
            stalled: metrics::gauge!(m::STALLED, "destination" => destination),
        }
    }

    /// The confirmed position, and when it last moved (the first status of a session counts
    /// as a move: a restarted instance is not reported stalled since before it started).
    fn confirmed(&mut self, flush: crate::lsn::Lsn) {
        let at = flush.0 as f64;
        self.confirmed_lsn.set(at);
        if at != self.confirmed_last {
            self.confirmed_last = at;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            self.confirmed_at.set(now);
        }
    }

    fn topic_id(&mut self, topic: &str) -> u32 {
        if let Some(id) = self.topic_ids.get(topic) {
            return *id;
        }
        let id = self.delivered.len() as u32;
        self.delivered.push(metrics::counter!(m::EVENTS_DELIVERED,
            "topic" => topic.to_owned(), "destination" => self.destination));
        self.topic_ids.insert(topic.to_owned(), id);
        id
    }

    fn topic_name(&self, id: u32) -> String {
        self.topic_ids
            .iter()
            .find(|(_, i)| **i == id)
            .map(|(t, _)| t.clone())
            .unwrap_or_default()
    }

    fn in_flight(&self, budget: &Budget) {
        self.in_flight_events.set(budget.events() as f64);
        self.in_flight_bytes.set(budget.bytes() as f64);
    }

    fn error(&self, kind: &'static str) {
        metrics::counter!(m::DELIVERY_ERRORS, "kind" => kind, "destination" => self.destination)
            .increment(1);
    }

    fn refusal(&self, class: Class) {
        self.error(match class {
            Class::Retriable => "retriable",
            _ => "final",
        });
    }
}

impl<'a> Session<'a> {
    /// A session resuming at `start`; `destination` names it in metrics, `transactional`
    /// says whether exactly-once is done with the destination's transactions (`batches`).
    pub fn new(
        cfg: &'a Config,
        start: Lsn,
        destination: &'static str,
        observer: Option<&'a mpsc::UnboundedSender<AckedEvent>>,
        batches: Option<Batches>,
        guard: mpsc::Receiver<StreamError>,
    ) -> Self {
        Session {
            health: None,
            plan: cfg.plan(),
            pending: VecDeque::new(),
            retry_at: None,
            retries: 0,
            lost: 0,
            sent_flush: start,
            sent_at: Instant::now(),
            guard,
            catalog: crate::postgres::connection::LazyClient::new(cfg.clone()),
            cfg,
            wm: Watermark::new(start),
            relations: RelationCache::default(),
            mapper: OutboxMapper::new(cfg.outboxes()),
            tx: None,
            budget: Budget::new(cfg.max_in_flight_events, cfg.max_in_flight_bytes),
            held: Held::new(cfg.max_in_flight_bytes),
            release: None,
            batches,
            skip_tx: false,
            observer,
            delivered: 0,
            delivered_at_tick: 0,
            said_stalled: false,
            ignored: 0,
            meters: Meters::new(destination),
        }
    }

    /// Publishes the destination's blocked state to `health` at every status tick.
    pub fn with_health(mut self, health: &'a crate::pipeline::Health) -> Self {
        self.health = Some(health);
        self
    }

    /// Tells readiness and the metric whether the destination blocks publishers now, and
    /// whether anything moved since the last tick: an ack, or nothing to do. A blocked
    /// destination (an alarm: every instance is paused alike) counts as moving.
    pub(super) fn watch_destination<D: crate::destination::Destination<Ticket>>(
        &mut self,
        dest: &D,
    ) {
        if let Some(h) = self.health {
            let blocked = dest.blocked();
            let idle = self.budget.events() == 0 && self.pending.is_empty();
            h.note_progress(idle || blocked.is_some() || self.delivered != self.delivered_at_tick);
            self.delivered_at_tick = self.delivered;
            h.set_blocked(D::NAME, blocked);
            let stalled = h.stalled_for();
            self.meters.stalled.set(stalled.as_secs_f64());
            match (
                stalled > crate::pipeline::health::STALLED_AFTER,
                self.said_stalled,
            ) {
                (true, false) => {
                    warn!(destination = D::NAME, stalled_secs = stalled.as_secs(),
                        in_flight = self.budget.events(), waiting = self.pending.len(),
                        "the destination acknowledges nothing while events wait: paused (backpressure, or a broker cut off); /readyz says so until it moves");
                    self.said_stalled = true;
                }
                (false, true) => {
                    info!(destination = D::NAME, "the destination acknowledges again");
                    self.said_stalled = false;
                }
                _ => {}
            }
        }
    }

    /// Tells the mapper that relation `oid` is configured outbox table number `table`.
    pub fn learn_oid(&mut self, oid: u32, table: usize) {
        self.mapper.learn_oid(oid, table);
    }

    /// What may be confirmed: the watermark, held back by an uncommitted destination
    /// transaction.
    pub fn flushable(&self) -> Lsn {
        match &self.batches {
            Some(k) => k.flushable(self.wm.confirmed()),
            None => self.wm.confirmed(),
        }
    }

    async fn send_status(&mut self, wal: &mut impl Wal, reply: bool) -> Result<(), StreamError> {
        let flush = self.flushable();
        trace!(write = %self.wm.received(), %flush, in_flight = self.budget.events(),
            "status update");
        self.meters.received_lsn.set(self.wm.received().0 as f64);
        self.meters.confirmed(flush);
        wal.send_status(self.wm.received(), flush, reply).await?;
        self.sent_flush = flush;
        self.sent_at = Instant::now();
        Ok(())
    }

    /// Reports the confirmed position once more, after an error (best effort).
    pub async fn report(&mut self, wal: &mut impl Wal) {
        let _ = self.send_status(wal, false).await;
    }
}

pub(super) fn protocol(what: &str) -> StreamError {
    StreamError::Replication(ReplicationError::Protocol(what.to_owned()))
}
