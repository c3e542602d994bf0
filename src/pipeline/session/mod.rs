//! One replication session: connect, check, start streaming, and run the event loop until
//! shutdown or an error. Reading pauses when the in-flight budget is spent; acks and status
//! updates keep flowing regardless, so `wal_sender_timeout` never fires on a paused reader.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, trace, warn};

mod at_most_once;

use super::batches::Batches;
use super::held::{Held, Release};
use super::poison::{self, Poisoned};
use super::{AbortOnDrop, AckedEvent, Budget, Health, Progress, StreamError};
use crate::config::{Config, DeliveryMode};
use crate::lsn::Lsn;
use crate::metrics as m;
use crate::outbox::{MapError, OutboxMapper, OutboxRecord, PoisonPolicy, UpdatePolicy};
use crate::pgoutput::{self, Message, RelationCache};
use crate::preflight::{self, PreflightError};
use crate::replication::{
    ConnectConfig, ReplicationClient, ReplicationError, ReplicationMessage, ReplicationStream,
};
use crate::sink::kafka::offsets::{self, OffsetRecord};
use crate::sink::kafka::{Delivery, ErrorClass, KafkaSink, SendError};
use crate::watermark::{TxId, Watermark};

/// SQLSTATE undefined_object: START_REPLICATION on a slot that is gone.
const UNDEFINED_OBJECT: &str = "42704";
/// SQLSTATE object_in_use: the slot is streamed by another process.
const OBJECT_IN_USE: &str = "55006";

/// Travels with each record through librdkafka and comes back in its delivery report.
#[derive(Debug)]
struct Ticket {
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
    /// This record is a dead letter: if Kafka refuses it too, the stream stops.
    dead_letter: bool,
    /// An offsets record (exactly-once), not an event.
    control: bool,
    /// The record's explicit partition (`partition_column`), for a resend.
    partition: Option<i32>,
}

/// Runs one session. `slot_known` survives reconnects: a slot that existed once and is gone
/// now means WAL was lost, which must not be papered over by creating a new one.
pub(super) async fn run(
    cfg: &Config,
    slot_known: &mut bool,
    shutdown: &CancellationToken,
    observer: Option<&mpsc::UnboundedSender<AckedEvent>>,
    progress: &mut Progress,
    health: &Health,
) -> Result<(), StreamError> {
    let pg_cfg = cfg.pg_config()?;
    // Every request/response step is bounded like the stream itself: a link that stalls
    // mid-handshake must not hang pgoutbox (CREATE_REPLICATION_SLOT excepted: it rightly
    // waits for open transactions to finish).
    let limit = cfg.replication_timeout;
    let outboxes = cfg.outboxes();
    let (slot, catalog) = {
        let (client, conn) = crate::pg::connect(cfg).await?;
        let checked = within(limit, "the setup checks", async {
            let slot = preflight::check(&client, &outboxes, &cfg.publication, &cfg.slot).await?;
            Ok((slot, Catalog::read(&client, cfg, &outboxes).await?))
        })
        .await;
        drop(client);
        conn.abort();
        checked?
    };

    let connect = ConnectConfig::from_pg_config(&pg_cfg)?.with_tls(&cfg.tls_settings()?)?;
    let mut repl = ReplicationClient::connect(&connect).await?;
    let sys = within(limit, "IDENTIFY_SYSTEM", async {
        Ok(repl.identify_system().await?)
    })
    .await?;
    debug!(system_id = %sys.system_id, timeline = sys.timeline, xlog_pos = %sys.xlog_pos,
        "identified system");
    match cfg.tableless_on(repl.server_version_num().unwrap_or(0)) {
        Ok(None) => {}
        Ok(Some(warning)) => warn!("{warning}"),
        Err(why) => return Err(StreamError::NoMessages(why)),
    }
    let start = match slot {
        Some(s) => {
            if let Some(pid) = s.active_pid {
                warn!(slot = %cfg.slot, pid, "slot is in use by another process");
            }
            *slot_known = true;
            s.confirmed_flush.unwrap_or(Lsn::ZERO)
        }
        None if *slot_known => return Err(StreamError::SlotLost(cfg.slot.clone())),
        None => {
            if let Some(r) = &catalog.record {
                return Err(PreflightError::SlotMissing {
                    slot: cfg.slot.clone(),
                    confirmed: r.confirmed,
                    at: r.updated_at.clone(),
                }
                .into());
            }
            if !cfg.create_slot {
                return Err(PreflightError::NoSlot(cfg.slot.clone()).into());
            }
            let lsn = repl.create_slot(&cfg.slot, cfg.failover).await?;
            *slot_known = true;
            info!(slot = %cfg.slot, consistent_point = %lsn, "created replication slot");
            record_slot(cfg, lsn).await;
            lsn
        }
    };

    let (ack_tx, mut acks) = mpsc::unbounded_channel();
    let sink = KafkaSink::new(&cfg.producer(), ack_tx)?;
    // Exactly-once: fence older instances first, then read what they committed.
    let batches = match cfg.delivery() {
        DeliveryMode::ExactlyOnce => Some(exactly_once_start(cfg, &sink, limit).await?),
        _ => None,
    };
    let started = tokio::time::timeout(
        limit,
        repl.start_replication(&cfg.slot, start, &cfg.publication),
    )
    .await
    .unwrap_or(Err(ReplicationError::NoAnswer {
        what: "START_REPLICATION",
        after: limit,
    }));
    let mut stream = match started {
        Err(e) if e.sqlstate() == Some(UNDEFINED_OBJECT) && *slot_known => {
            return Err(StreamError::SlotLost(cfg.slot.clone()))
        }
        Err(ReplicationError::Server(db)) if db.code == OBJECT_IN_USE => {
            // "replication slot "x" is active for PID 123": name the holder.
            let pid = db.message.rsplit(' ').next().unwrap_or("?").to_owned();
            return Err(StreamError::SlotBusy {
                slot: cfg.slot.clone(),
                pid,
            });
        }
        other => other?,
    };
    info!(slot = %cfg.slot, start = %start, "streaming");
    health.set_streaming(true);
    let _not_streaming = OnDrop(|| health.set_streaming(false));
    // Aborted when the session ends, whichever way.
    let _heartbeat = cfg
        .heartbeat_interval
        .map(|every| AbortOnDrop(tokio::spawn(heartbeat(cfg.clone(), every))));
    progress.streaming_since = Some(Instant::now());
    progress.confirmed = start;

    // The guard reports a publication change that silences the outbox; aborted with us.
    let (guard_tx, guard) = mpsc::channel(1);
    let _guard = AbortOnDrop(tokio::spawn(super::guard::run(
        cfg.clone(),
        catalog.baseline.clone(),
        catalog.since,
        guard_tx,
    )));
    let mut session = Session::new(cfg, start, observer, batches, guard);
    for (table, oids) in catalog.oids.iter().enumerate() {
        for oid in oids {
            session.mapper.learn_oid(*oid, table);
        }
    }
    let mut result = session
        .event_loop(&mut stream, &sink, &mut acks, shutdown, progress)
        .await;
    if let (Err(_), Some(message)) = (&result, sink.fenced()) {
        // Another instance owns the transactional.id: say that, and stop for good.
        result = Err(StreamError::Fenced {
            id: cfg.transactional_id(),
            message,
        });
    }
    if let Err(StreamError::Replication(ReplicationError::Server(db))) = &result {
        // pgoutput names the publication it cannot find in the catalog of that WAL position.
        if db.code == UNDEFINED_OBJECT && db.message.contains("publication") {
            result = Err(StreamError::Undecodable {
                message: db.message.clone(),
            });
        }
    }
    if let Err(e) = &result {
        // At-most-once: what was confirmed must still be delivered by this process.
        session.settle(&sink, &mut acks, shutdown).await;
        // Nothing unacked is confirmed (the watermark holds it); drop what is queued and
        // still report how far we got, so the restart resends as little as possible.
        sink.abort();
        if !matches!(e, StreamError::Replication(_)) {
            let _ = session.send_status(&mut stream, false).await;
        }
    }
    if result.is_ok() {
        // A graceful stop: the state record says how far, for whatever happens meanwhile.
        record_slot(cfg, session.flushable()).await;
    }
    // Dropping the producer blocks briefly while librdkafka shuts down.
    let _ = tokio::task::spawn_blocking(move || drop(sink)).await;
    result
}

/// Exactly-once start: `init_transactions` fences any older instance with our
/// `transactional.id` (and aborts its open transaction); then the offsets topic, read
/// committed, says which resent PostgreSQL transactions are in Kafka already.
async fn exactly_once_start(
    cfg: &Config,
    sink: &KafkaSink<Ticket>,
    limit: Duration,
) -> Result<Batches, StreamError> {
    let t = Instant::now();
    sink.init_transactions(limit).await?;
    debug!(took = ?t.elapsed(), "init_transactions");
    let (kafka, topic, slot) = (cfg.producer(), cfg.offsets_topic.clone(), cfg.slot.clone());
    let last =
        tokio::task::spawn_blocking(move || offsets::read_last(&kafka, &topic, &slot, limit))
            .await
            .map_err(|e| protocol(&format!("offsets reader panicked: {e}")))??;
    let through = match last {
        Some(r) => {
            info!(txn = %r.txn, end_lsn = %r.end_lsn, topic = %cfg.offsets_topic,
                "exactly-once: resuming after Kafka transaction");
            r.end_lsn
        }
        None => {
            info!(topic = %cfg.offsets_topic, "exactly-once: no committed offset yet");
            Lsn::ZERO
        }
    };
    let run = format!(
        "{:x}{:06x}",
        std::process::id(),
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() & 0xff_ffff)
    );
    Ok(Batches::new(run, through, cfg.transaction_interval))
}

/// What the catalog said of the outbox tables when the session started.
struct Catalog {
    baseline: crate::catalog::Baseline,
    /// Per configured table, its OID and its partitions' OIDs.
    oids: Vec<Vec<u32>>,
    /// The WAL position when the baseline was read.
    since: Lsn,
    /// The state record of the slot, if one was written.
    record: Option<crate::state::Record>,
}

impl Catalog {
    async fn read(
        pg: &tokio_postgres::Client,
        cfg: &Config,
        outboxes: &[crate::outbox::OutboxConfig],
    ) -> Result<Catalog, StreamError> {
        let names: Vec<_> = outboxes.iter().map(|o| o.table.clone()).collect();
        let baseline = crate::catalog::Baseline::read(pg, &cfg.publication, &names).await?;
        let mut oids = Vec::new();
        for t in &names {
            oids.push(crate::catalog::table_oids(pg, t).await?);
        }
        let (since, drift) = crate::catalog::drift(pg, &baseline).await?;
        if let Some(drift) = drift {
            return Err(StreamError::Drift {
                drift,
                since,
                seen: since,
            });
        }
        let record = crate::state::read(pg, &cfg.slot).await?;
        Ok(Catalog {
            baseline,
            oids,
            since,
            record,
        })
    }
}

/// The least time between two status updates sent because the watermark moved (the periodic
/// ones and replies to keepalives go out regardless).
const CONFIRM_GAP: Duration = Duration::from_millis(20);

/// Writes the state record of a slot just created; without it, a later failover that loses
/// the slot could not be told from a first start, so a failure is said loudly.
async fn record_slot(cfg: &Config, at: Lsn) {
    let written = async {
        let (client, conn) = crate::pg::connect(cfg).await.map_err(|e| e.to_string())?;
        let r = match crate::state::available(&client).await {
            Ok(true) => crate::state::write(&client, &cfg.slot, at)
                .await
                .map(|()| true),
            other => other,
        };
        drop(client);
        conn.abort();
        r.map_err(|e| crate::pg::describe(&e))
    };
    match written.await {
        Ok(true) => {}
        Ok(false) => warn!(slot = %cfg.slot,
            "no usable table public.pgoutbox_state (sql/setup.sql creates it and grants it to role pgoutbox): if this slot is ever lost, for example in a failover, pgoutbox cannot tell that from a first start"),
        Err(e) => warn!(slot = %cfg.slot, error = %e,
            "cannot write the slot's state record (public.pgoutbox_state): a lost slot could not be told from a first start"),
    }
}

/// How long a Kafka transaction commit may take before the session gives up on it.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(30);
/// Header naming the Kafka transaction a record was written in (exactly-once).
pub const TXN_HEADER: &str = "pgoutbox.txn";

/// Writes a tiny non-transactional logical message every `every`, so the slot has WAL of its
/// own database to pass even when the application writes nothing. Errors are logged only: a
/// missed heartbeat delays slot advance, it never loses data.
async fn heartbeat(cfg: Config, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut pg = crate::pg::LazyClient::new(cfg);
    loop {
        tick.tick().await;
        let beat = pg
            .with(async |c| {
                c.batch_execute("SELECT pg_logical_emit_message(false, 'pgoutbox.heartbeat', '')")
                    .await
            })
            .await;
        if let Err(e) = beat {
            warn!(error = %e, "heartbeat failed");
        }
    }
}

/// Runs a closure when dropped.
struct OnDrop<F: FnMut()>(F);

impl<F: FnMut()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}

/// Runs `f`, failing with "connection presumed dead" if it takes longer than `limit`.
async fn within<T>(
    limit: Duration,
    what: &'static str,
    f: impl std::future::Future<Output = Result<T, StreamError>>,
) -> Result<T, StreamError> {
    tokio::time::timeout(limit, f)
        .await
        .unwrap_or(Err(StreamError::Replication(ReplicationError::NoAnswer {
            what,
            after: limit,
        })))
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
struct Session<'a> {
    cfg: &'a Config,
    wm: Watermark,
    relations: RelationCache,
    mapper: OutboxMapper,
    /// The open transaction and its commit timestamp (known at Begin).
    tx: Option<(TxId, i64)>,
    budget: Budget,
    /// At-most-once: the open transaction's events, produced after its Commit is confirmed.
    held: Held,
    /// At-most-once: a confirmed transaction's events, handed to the producer as the
    /// in-flight budget allows; nothing more is read until all are.
    release: Option<Release>,
    /// Exactly-once: the Kafka transactions.
    batches: Option<Batches>,
    /// Exactly-once: the open PostgreSQL transaction is in Kafka already (a resend).
    skip_tx: bool,
    observer: Option<&'a mpsc::UnboundedSender<AckedEvent>>,
    /// Records for the producer, in order; while any wait (its queue is full, or a retry is
    /// due later), nothing more is read.
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
    catalog: crate::pg::LazyClient,
    delivered: u64,
    ignored: u64,
    meters: Meters,
}

/// Metric handles, resolved once per session instead of once per event.
struct Meters {
    topic_ids: HashMap<String, u32>,
    delivered: Vec<metrics::Counter>,
    in_flight_events: metrics::Gauge,
    in_flight_bytes: metrics::Gauge,
    received_lsn: metrics::Gauge,
    confirmed_lsn: metrics::Gauge,
    commit_to_ack: metrics::Histogram,
}

impl Meters {
    fn new() -> Self {
        Meters {
            topic_ids: HashMap::new(),
            delivered: Vec::new(),
            in_flight_events: metrics::gauge!(m::IN_FLIGHT_EVENTS),
            in_flight_bytes: metrics::gauge!(m::IN_FLIGHT_BYTES),
            received_lsn: metrics::gauge!(m::RECEIVED_LSN),
            confirmed_lsn: metrics::gauge!(m::CONFIRMED_LSN),
            commit_to_ack: metrics::histogram!(m::COMMIT_TO_ACK),
        }
    }

    fn topic_id(&mut self, topic: &str) -> u32 {
        if let Some(id) = self.topic_ids.get(topic) {
            return *id;
        }
        let id = self.delivered.len() as u32;
        self.delivered
            .push(metrics::counter!(m::EVENTS_DELIVERED, "topic" => topic.to_owned()));
        self.topic_ids.insert(topic.to_owned(), id);
        id
    }

    fn in_flight(&self, budget: &Budget) {
        self.in_flight_events.set(budget.events() as f64);
        self.in_flight_bytes.set(budget.bytes() as f64);
    }
}

fn count_error(class: ErrorClass) {
    let kind = match class {
        ErrorClass::Backpressure => "backpressure",
        ErrorClass::Retriable => "retriable",
        ErrorClass::Final => "final",
    };
    metrics::counter!(m::DELIVERY_ERRORS, "kind" => kind).increment(1);
}

impl<'a> Session<'a> {
    fn new(
        cfg: &'a Config,
        start: Lsn,
        observer: Option<&'a mpsc::UnboundedSender<AckedEvent>>,
        batches: Option<Batches>,
        guard: mpsc::Receiver<StreamError>,
    ) -> Self {
        Session {
            pending: VecDeque::new(),
            retry_at: None,
            retries: 0,
            lost: 0,
            sent_flush: start,
            sent_at: Instant::now(),
            guard,
            catalog: crate::pg::LazyClient::new(cfg.clone()),
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
            ignored: 0,
            meters: Meters::new(),
        }
    }

    async fn event_loop(
        &mut self,
        stream: &mut ReplicationStream,
        sink: &KafkaSink<Ticket>,
        acks: &mut mpsc::UnboundedReceiver<Delivery<Ticket>>,
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
        loop {
            self.refill()?;
            self.flush(sink)?;
            if let Some(deadline) = stop_by {
                // A transaction read only in part could never be confirmed, so its events
                // would be sent again after a restart: finish it first.
                if (self.tx.is_none() && self.pending.is_empty() && self.release.is_none())
                    || tokio::time::Instant::now() >= deadline
                {
                    return self.drain(stream, sink, acks, deadline).await;
                }
            }
            let can_read =
                self.pending.is_empty() && self.release.is_none() && self.budget.has_room();
            if !can_read {
                // Not reading on purpose (backpressure): silence proves nothing.
                heard = Instant::now();
            }
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
                    self.send_status(stream, silent > timeout / 2).await?;
                }
                // The watermark moved: confirm it promptly, at most one update per CONFIRM_GAP,
                // so a crash resends about what was in flight, not a status interval's worth.
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(self.sent_at + CONFIRM_GAP)),
                    if self.flushable() > self.sent_flush => self.send_status(stream, false).await?,
                Some(d) = acks.recv() => self.on_delivery(d)?,
                Some(e) = self.guard.recv() => return Err(e),
                msg = stream.recv(), if can_read => {
                    heard = Instant::now();
                    match self.on_message(msg?).await? {
                        Step::Continue => {}
                        Step::Reply => self.send_status(stream, false).await?,
                        Step::Produce(rec, ticket) => {
                            self.pending.push_back((rec, ticket));
                            self.flush(sink)?;
                        }
                        Step::Confirm => {
                            // The server has the confirmation before Kafka has the events:
                            // a crash from here on loses them rather than sending them twice.
                            self.send_status(stream, false).await?;
                            self.release_held()?;
                            self.refill()?;
                            self.flush(sink)?;
                        }
                    }
                }
                _ = tokio::time::sleep(Duration::from_millis(5)), if !self.pending.is_empty() => {}
                _ = sleep_until_opt(stop_by) => {}
                // Only between transactions: inside one, its Commit comes first.
                _ = sleep_until_opt(self.batches.as_ref().and_then(Batches::deadline)
                        .map(tokio::time::Instant::from_std)),
                    if self.tx.is_none() && self.pending.is_empty() => {}
            }
            progress.confirmed = self.flushable();
            if self.batch_due() {
                self.commit_batch(stream, sink, acks).await?;
            }
        }
    }

    /// Waits until every record handed to the producer is acked, status updates flowing.
    async fn await_acks(
        &mut self,
        stream: &mut ReplicationStream,
        acks: &mut mpsc::UnboundedReceiver<Delivery<Ticket>>,
        tick: &mut tokio::time::Interval,
    ) -> Result<(), StreamError> {
        while self.budget.events() > 0 {
            tokio::select! {
                Some(d) = acks.recv() => {
                    // Exactly-once turns every failed delivery into an error.
                    self.on_delivery(d)?;
                }
                _ = tick.tick() => self.send_status(stream, false).await?,
            }
        }
        Ok(())
    }

    /// What may be confirmed: the watermark, held back by an uncommitted Kafka transaction.
    fn flushable(&self) -> Lsn {
        match &self.batches {
            Some(k) => k.flushable(self.wm.confirmed()),
            None => self.wm.confirmed(),
        }
    }

    /// The open Kafka transaction is old enough and we are between PostgreSQL transactions.
    fn batch_due(&self) -> bool {
        self.tx.is_none()
            && self.pending.is_empty()
            && self
                .batches
                .as_ref()
                .and_then(Batches::deadline)
                .is_some_and(|d| d <= Instant::now())
    }

    /// Ends the open Kafka transaction: the offsets record, then the commit (status updates
    /// keep flowing meanwhile); on success the slot may be confirmed past it.
    async fn commit_batch(
        &mut self,
        stream: &mut ReplicationStream,
        sink: &KafkaSink<Ticket>,
        acks: &mut mpsc::UnboundedReceiver<Delivery<Ticket>>,
    ) -> Result<(), StreamError> {
        let Some(k) = &self.batches else {
            return Ok(());
        };
        let Some(open) = &k.open else {
            return Ok(());
        };
        let (tag, end) = (open.tag.clone(), k.last_end);
        let mut tick = tokio::time::interval(self.cfg.status_interval);
        // The batch's events first, so that its offsets record is the last thing written
        // before the commit: a crash before that leaves no trace of this batch's position.
        self.await_acks(stream, acks, &mut tick).await?;
        let offset = OffsetRecord {
            slot: self.cfg.slot.clone(),
            end_lsn: end,
            txn: String::from_utf8_lossy(&tag).into_owned(),
        };
        let rec = OutboxRecord {
            topic: self.cfg.offsets_topic.clone(),
            key: Some(Bytes::from(self.cfg.slot.clone())),
            partition: None,
            headers: vec![(TXN_HEADER.to_owned(), tag.clone())],
            payload: Some(Bytes::from(offset.encode())),
            event_id: Bytes::from_static(b"offsets"),
            lsn: end,
        };
        let offsets = self.ticketed(rec, None, crate::pgtime::now());
        self.pending.push_back(offsets);
        self.flush(sink)?;
        while !self.pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
            self.flush(sink)?;
        }
        // Acked before the commit: committing with a record in flight costs librdkafka about
        // 100 ms (measured), waiting for the ack a fraction of that.
        self.await_acks(stream, acks, &mut tick).await?;
        let started = Instant::now();
        let commit = sink.commit_transaction(COMMIT_TIMEOUT);
        tokio::pin!(commit);
        let result = loop {
            tokio::select! {
                r = &mut commit => break r,
                _ = tick.tick() => self.send_status(stream, false).await?,
                Some(d) = acks.recv() => {
                    // The commit flushes the batch: its acks arrive meanwhile.
                    self.on_delivery(d)?;
                }
            }
        };
        match result {
            Ok(()) => {
                let done = self.batches.as_mut().and_then(Batches::committed);
                info!(txn = %String::from_utf8_lossy(&tag), events = done.map_or(0, |b| b.events),
                    end_lsn = %end, took = ?started.elapsed(), "committed Kafka transaction");
                self.send_status(stream, false).await?;
                Ok(())
            }
            Err(e) => {
                warn!(txn = %String::from_utf8_lossy(&tag), error = %e,
                    "Kafka transaction failed: aborting it; its events will be sent again");
                if e.abortable {
                    let _ = sink.abort_transaction(COMMIT_TIMEOUT).await;
                }
                Err(e.into())
            }
        }
    }

    /// Hands queued records to librdkafka in order, until its local queue is full.
    fn flush(&mut self, sink: &KafkaSink<Ticket>) -> Result<(), StreamError> {
        if self.retry_at.is_some_and(|t| Instant::now() < t) {
            return Ok(());
        }
        self.retry_at = None;
        if let Some(b) = self.batches.as_mut().and_then(|k| k.open.as_mut()) {
            if !b.begun && !self.pending.is_empty() {
                sink.begin_transaction()?;
                b.begun = true;
            }
        }
        while let Some((rec, ticket)) = self.pending.pop_front() {
            let bytes = ticket.bytes;
            match sink.send(&rec, ticket) {
                Ok(()) => {
                    self.budget.take(bytes);
                    self.meters.in_flight(&self.budget);
                }
                Err(SendError::QueueFull(ticket)) => {
                    count_error(ErrorClass::Backpressure);
                    self.pending.push_front((rec, ticket));
                    return Ok(());
                }
                Err(SendError::Rejected(ticket, e)) => {
                    count_error(e.class);
                    if self.retries_in_process(&ticket, &e) {
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

    /// Kafka refused a record for good (at send or in its delivery report): `on_poison`
    /// decides. Returns the dead letter to send in its place, if any.
    fn refused(
        &mut self,
        ticket: Ticket,
        e: crate::sink::kafka::DeliveryError,
        rec: OutboxRecord,
        from_report: bool,
    ) -> Result<Option<(OutboxRecord, Ticket)>, StreamError> {
        // In a Kafka transaction a broker-side refusal dooms the whole transaction: it is
        // aborted and the stream restarts (or stops, if final); only refusals at send are
        // poison events there.
        let doomed = from_report && self.batches.is_some();
        if e.class != ErrorClass::Final
            || doomed
            || ticket.dead_letter
            || self.cfg.on_poison == PoisonPolicy::Fail
        {
            let err = refused(&ticket, &rec.topic, e);
            self.lost(&ticket, &err.to_string());
            return Err(err);
        }
        let poisoned = Poisoned {
            class: poison::class_of(&e),
            message: e.error.to_string(),
            topic: rec.topic,
            key: rec.key,
            payload: rec.payload,
            headers: rec.headers,
            event_id: rec.event_id,
            lsn: rec.lsn,
        };
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
    fn unmapped(
        &mut self,
        e: MapError,
        raw: Poisoned,
        standalone_end: Lsn,
    ) -> Result<Step, StreamError> {
        if !e.is_poison() || self.cfg.on_poison == PoisonPolicy::Fail {
            return Err(e.into());
        }
        let poisoned = Poisoned {
            topic: e.topic().map_or(raw.topic, str::to_owned),
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

    fn on_delivery(&mut self, d: Delivery<Ticket>) -> Result<(), StreamError> {
        let Delivery {
            ticket,
            result,
            returned,
        } = d;
        let acked = match result {
            Ok(a) => a,
            Err(e) => {
                count_error(e.class);
                self.budget.release(ticket.bytes);
                self.meters.in_flight(&self.budget);
                let Some(returned) = self.resend_or_return(ticket, &e, returned) else {
                    return Ok(());
                };
                let (ticket, returned) = returned;
                let topic = self
                    .meters
                    .topic_ids
                    .iter()
                    .find(|(_, id)| **id == ticket.topic)
                    .map(|(t, _)| t.clone())
                    .unwrap_or_default();
                let returned = returned.unwrap_or(crate::sink::kafka::Returned {
                    topic,
                    key: None,
                    payload: None,
                    headers: Vec::new(),
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
        if ticket.control {
            self.meters.in_flight(&self.budget);
            return Ok(());
        }
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

    async fn on_message(&mut self, msg: ReplicationMessage) -> Result<Step, StreamError> {
        let (wal_start, data) = match msg {
            ReplicationMessage::PrimaryKeepalive {
                wal_end,
                reply_requested,
                ..
            } => {
                self.wm.keepalive(wal_end);
                return Ok(if reply_requested {
                    Step::Reply
                } else {
                    Step::Continue
                });
            }
            ReplicationMessage::XLogData {
                wal_start, data, ..
            } => (wal_start, data),
        };
        self.wm.observe(wal_start);
        match pgoutput::decode(data)? {
            Message::Begin(b) => {
                let id = self.wm.begin()?;
                self.tx = Some((id, b.commit_time));
                self.skip_tx = self
                    .batches
                    .as_ref()
                    .is_some_and(|k| k.already_delivered(b.final_lsn));
                if self.skip_tx {
                    debug!(final_lsn = %b.final_lsn, "transaction is in Kafka already: skipped");
                }
            }
            Message::Commit(c) => {
                let (id, _) = self
                    .tx
                    .take()
                    .ok_or_else(|| protocol("Commit without Begin"))?;
                self.wm.commit(id, c.end_lsn)?;
                self.skip_tx = false;
                if let Some(k) = &mut self.batches {
                    k.last_end = c.end_lsn;
                }
                if !self.held.is_empty() {
                    return Ok(Step::Confirm);
                }
            }
            Message::Relation(r) => self.on_relation(r).await?,
            Message::Insert(ins) => {
                let relation = self.relations.get(ins.relation_id);
                let mapped = match self.mapper.map_insert(&ins, wal_start) {
                    // Every insert pgoutput sends is from a published table: one that is no
                    // outbox is refused loudly, never passed in silence.
                    // The state record's own table (a publication of all tables sends it).
                    Ok(None)
                        if relation.is_some_and(|r| {
                            (r.namespace.as_str(), r.name.as_str()) == crate::state::TABLE
                        }) =>
                    {
                        return Ok(Step::Continue)
                    }
                    Ok(None) => Err(MapError::NotOutbox {
                        relation: relation.map_or_else(
                            || format!("relation {}", ins.relation_id),
                            |r| format!("{}.{}", r.namespace, r.name),
                        ),
                        lsn: wal_start,
                    }),
                    other => other,
                };
                let mapped = match mapped {
                    Err(e) => {
                        let raw = self.mapper.raw_insert(&ins, relation);
                        let raw = Poisoned::unmapped_row(&e, raw, wal_start);
                        if self.tx.is_none() {
                            return Err(protocol("Insert outside a transaction"));
                        }
                        return self.unmapped(e, raw, wal_start);
                    }
                    Ok(mapped) => mapped,
                };
                if let Some(rec) = mapped {
                    if rec.key.is_none() {
                        // Keyless records spread over partitions: per-aggregate order is lost.
                        warn!(event = %String::from_utf8_lossy(&rec.event_id), lsn = %rec.lsn,
                            column = %self.cfg.outbox.key_column,
                            "NULL key column: delivered without a key, so without per-key order");
                    }
                    if self.tx.is_none() {
                        return Err(protocol("Insert outside a transaction"));
                    }
                    return self.event(rec, wal_start);
                }
            }
            Message::Update(u) => self.on_update(u.relation_id, wal_start)?,
            // Deleting outbox rows is how applications clean up: always ignored.
            Message::Delete(d) => self.ignore("delete", d.relation_id),
            Message::Truncate(t) => {
                for id in t.relation_ids {
                    self.ignore("truncate", id);
                }
            }
            Message::Message(m) => {
                // PostgreSQL skips a non-transactional message after a restart only if it
                // starts below the confirmed LSN: confirm one byte into it (still received).
                // Later commits and idle keepalives usually pass it anyway; this covers a stop
                // in between.
                let past = Lsn(m.lsn.0 + 1);
                let mapped = match crate::outbox::map_message(&self.cfg.outbox, &m) {
                    Err(e) => {
                        let raw = Poisoned {
                            topic: String::new(),
                            key: None,
                            payload: Some(m.content.clone()),
                            headers: Vec::new(),
                            event_id: Bytes::from(format!("lsn-{}", m.lsn)),
                            lsn: m.lsn,
                            class: "",
                            message: String::new(),
                        };
                        if m.transactional && self.tx.is_none() {
                            return Err(protocol("transactional message outside a transaction"));
                        }
                        return self.unmapped(e, raw, past);
                    }
                    Ok(mapped) => mapped,
                };
                let Some(rec) = mapped else {
                    trace!(prefix = %m.prefix, lsn = %m.lsn, "logical decoding message ignored");
                    if !m.transactional {
                        // Heartbeats land here: nothing to deliver, so the slot may pass them.
                        self.wm.passed(past);
                    }
                    return Ok(Step::Continue);
                };
                if m.transactional && self.tx.is_none() {
                    return Err(protocol("transactional message outside a transaction"));
                }
                return self.event(rec, past);
            }
            Message::Origin(_) | Message::Type(_) => {}
        }
        Ok(Step::Continue)
    }

    /// An event of the open transaction or, outside one, a standalone event ending at
    /// `standalone_end`: counted in the watermark and produced, or, at-most-once, held until
    /// its position is confirmed.
    fn event(&mut self, mut rec: OutboxRecord, standalone_end: Lsn) -> Result<Step, StreamError> {
        let counted = self.cfg.delivery() != DeliveryMode::AtMostOnce;
        if let Some(k) = &mut self.batches {
            let in_kafka = match self.tx {
                Some(_) => self.skip_tx,
                None => standalone_end <= k.delivered_through,
            };
            if in_kafka {
                if self.tx.is_none() {
                    self.wm.passed(standalone_end);
                }
                self.ignored += 1;
                return Ok(Step::Continue);
            }
            let (tag, _) = k.join(self.wm.confirmed());
            rec.headers.push((TXN_HEADER.to_owned(), tag));
            if self.tx.is_none() {
                k.last_end = standalone_end;
            }
        }
        match self.tx {
            Some((id, commit_time)) => {
                let tx = if counted {
                    self.wm.add_event(id)?;
                    Some(id)
                } else {
                    None
                };
                if !counted {
                    // Produced once its Commit has been confirmed, so a crash can't resend it.
                    self.held
                        .push(rec, commit_time)
                        .map_err(StreamError::Hold)?;
                    return Ok(Step::Continue);
                }
                let (rec, ticket) = self.ticketed(rec, tx, commit_time);
                Ok(Step::Produce(rec, ticket))
            }
            None if counted => {
                let id = self.wm.standalone(standalone_end)?;
                let (rec, ticket) = self.ticketed(rec, Some(id), crate::pgtime::now());
                Ok(Step::Produce(rec, ticket))
            }
            None => {
                self.wm.passed(standalone_end);
                let now = crate::pgtime::now();
                self.held.push(rec, now).map_err(StreamError::Hold)?;
                Ok(Step::Confirm)
            }
        }
    }

    /// A record with the ticket its delivery report will bring back.
    fn ticketed(
        &mut self,
        rec: OutboxRecord,
        tx: Option<TxId>,
        commit_time: i64,
    ) -> (OutboxRecord, Ticket) {
        let ticket = Ticket {
            tx,
            bytes: rec.size(),
            commit_time,
            event_id: rec.event_id.clone(),
            topic: self.meters.topic_id(&rec.topic),
            lsn: rec.lsn,
            dead_letter: rec.topic == self.cfg.dead_letter_topic,
            control: self.batches.is_some() && rec.topic == self.cfg.offsets_topic,
            partition: rec.partition,
        };
        (rec, ticket)
    }

    /// A Relation message: which configured outbox it is, by OID (following renames), by
    /// name, or, for a relation created since the start, by the partition it belongs to.
    async fn on_relation(&mut self, r: pgoutput::Relation) -> Result<(), StreamError> {
        if self.mapper.table_of(&r).is_none() {
            let oid = r.id;
            let lookup = self
                .catalog
                .with(async |c| crate::catalog::ancestors(c, oid).await);
            let ancestors = tokio::time::timeout(self.cfg.replication_timeout, lookup)
                .await
                .unwrap_or_else(|_| Err("timed out".into()))
                .map_err(|error| StreamError::Catalog { oid, error })?;
            let known = ancestors.iter().find_map(|a| self.mapper.table_of_oid(*a));
            if let Some(table) = known {
                self.mapper.learn_oid(oid, table);
            }
        }
        let table = self.mapper.table_of(&r);
        let name = format!("{}.{}", r.namespace, r.name);
        if let Some(t) = table.and_then(|t| self.mapper.tables().get(t)) {
            let configured = t.table.to_string();
            if t.table.schema != r.namespace || t.table.name != r.name {
                info!(relation = %name, outbox = %configured, id = r.id,
                    "relation is the outbox table (renamed, or a partition of it)");
            }
            if let Err(e) = self.mapper.on_relation(&r) {
                warn!(error = %e, relation = %name,
                    "outbox table no longer fits the configuration: each insert into it is a poison event (on_poison)");
            }
        } else {
            self.mapper.on_relation(&r)?;
        }
        debug!(id = r.id, relation = %name, outbox = table.is_some(), "relation");
        self.relations.update(r);
        Ok(())
    }

    /// An UPDATE: ignored unless on an outbox table, where `on_update` decides.
    fn on_update(&mut self, relation_id: u32, lsn: Lsn) -> Result<(), StreamError> {
        let Some(t) = self.mapper.table(relation_id) else {
            self.ignore("update", relation_id);
            return Ok(());
        };
        let table = t.table.to_string();
        match self.cfg.on_update {
            UpdatePolicy::Fatal => return Err(StreamError::OutboxUpdate { table, lsn }),
            UpdatePolicy::Warn => {
                warn!(%table, %lsn, "outbox row updated: ignored (outbox rows are immutable events)")
            }
            UpdatePolicy::Error => {
                error!(%table, %lsn, "outbox row updated: ignored (outbox rows are immutable events)")
            }
        }
        self.ignored += 1;
        metrics::counter!(m::OUTBOX_UPDATES, "table" => table).increment(1);
        Ok(())
    }

    /// Changes other than outbox inserts are counted and skipped (DESIGN.md).
    fn ignore(&mut self, what: &str, relation_id: u32) {
        self.ignored += 1;
        if let Some(r) = self.relations.get(relation_id) {
            debug!(change = what, relation = %format_args!("{}.{}", r.namespace, r.name),
                "change ignored");
        }
    }

    async fn send_status(
        &mut self,
        stream: &mut ReplicationStream,
        reply: bool,
    ) -> Result<(), ReplicationError> {
        let flush = self.flushable();
        trace!(write = %self.wm.received(), %flush, in_flight = self.budget.events(),
            "status update");
        self.meters.received_lsn.set(self.wm.received().0 as f64);
        self.meters.confirmed_lsn.set(flush.0 as f64);
        stream.send_status(self.wm.received(), flush, reply).await?;
        self.sent_flush = flush;
        self.sent_at = Instant::now();
        Ok(())
    }

    /// Graceful stop: read no more, wait (until `deadline`) for in-flight acks, confirm, close.
    async fn drain(
        &mut self,
        stream: &mut ReplicationStream,
        sink: &KafkaSink<Ticket>,
        acks: &mut mpsc::UnboundedReceiver<Delivery<Ticket>>,
        deadline: tokio::time::Instant,
    ) -> Result<(), StreamError> {
        let mut tick = tokio::time::interval(self.cfg.status_interval);
        while self.budget.events() > 0 || !self.pending.is_empty() || self.release.is_some() {
            self.refill()?;
            self.flush(sink)?;
            tokio::select! {
                Some(d) = acks.recv() => self.on_delivery(d)?,
                _ = tokio::time::sleep(Duration::from_millis(5)), if !self.pending.is_empty() => {}
                _ = tick.tick() => self.send_status(stream, false).await?,
                _ = tokio::time::sleep_until(deadline) => {
                    warn!(in_flight = self.budget.events(), open_transaction = self.tx.is_some(),
                        "shutdown timeout: unconfirmed events will be sent again on restart");
                    break;
                }
            }
        }
        // At-most-once: events in flight now were confirmed; they are lost, said one by one.
        self.give_up(sink, acks).await;
        if self.tx.is_none() && self.budget.events() == 0 && self.pending.is_empty() {
            self.commit_batch(stream, sink, acks).await?;
        }
        self.send_status(stream, false).await?;
        stream.close().await?;
        info!(confirmed = %self.wm.confirmed(), delivered = self.delivered,
            ignored = self.ignored, lost = self.lost, "stopped");
        Ok(())
    }
}

/// Sleeps until `at`, or forever when there is no deadline.
async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A delivery error with the event it concerns.
fn refused(ticket: &Ticket, topic: &str, cause: crate::sink::kafka::DeliveryError) -> StreamError {
    StreamError::Refused {
        event: String::from_utf8_lossy(&ticket.event_id).into_owned(),
        topic: topic.to_owned(),
        bytes: ticket.bytes,
        lsn: ticket.lsn,
        cause: Box::new(cause),
    }
}

fn protocol(what: &str) -> StreamError {
    StreamError::Replication(ReplicationError::Protocol(what.to_owned()))
}
