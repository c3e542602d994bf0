//! The pipeline: replication stream → pgoutput → outbox mapping → Kafka, with acks flowing back
//! into the watermark. [`Streamer::run`] reconnects with backoff; [`session`] is one connection.

mod backoff;
mod batches;
mod budget;
mod guard;
mod ha;
mod health;
mod held;
mod monitor;
pub(crate) mod poison;
mod session;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

pub use backoff::Backoff;
pub use budget::Budget;
pub use health::Health;

use crate::config::{Config, ConfigError, Source};
use crate::lsn::Lsn;
use crate::outbox::MapError;
use crate::pgoutput::DecodeError;
use crate::preflight::PreflightError;
use crate::replication::ReplicationError;
use crate::sink::kafka::{DeliveryError, ErrorClass, SinkError};
use crate::watermark::WatermarkError;

/// Why a session ended with an error.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Preflight(#[from] PreflightError),
    // Display renders the cause (pg::describe), so it is not also a `source()`: the CLI prints
    // the chain, and the server's message would appear twice.
    #[error("PostgreSQL: {}{}", crate::pg::describe(.0), crate::pg::hint(.0))]
    Postgres(tokio_postgres::Error),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error(transparent)]
    Replication(#[from] ReplicationError),
    #[error("decoding pgoutput: {0}")]
    Decode(#[from] DecodeError),
    #[error("mapping outbox row: {0}{hint}", hint = if .0.is_poison() { POISON_HINT } else { "" })]
    Map(#[from] MapError),
    #[error("LSN bookkeeping: {0}")]
    Watermark(#[from] WatermarkError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Delivery(#[from] DeliveryError),
    #[error("delivering event {event} ({bytes} bytes to topic {topic}, WAL {lsn}) failed: {error}{hint}",
        error = .cause.error,
        hint = refusal_hint(.cause))]
    Refused {
        event: String,
        topic: String,
        bytes: usize,
        lsn: Lsn,
        /// Rendered in the message, so deliberately not a `source()`.
        cause: Box<DeliveryError>,
    },
    #[error(
        "replication slot {slot:?} is in use by PID {pid} (another pgoutbox or replication client): waiting for it to be released; run standbys with ha = true, or give each instance its own slot"
    )]
    SlotBusy { slot: String, pid: String },
    #[error(
        "fenced: another pgoutbox with transactional.id {id:?} has taken over ({message}); this instance stops so that only one writes"
    )]
    Fenced { id: String, message: String },
    #[error(transparent)]
    Transaction(#[from] crate::sink::kafka::TxnError),
    #[error(transparent)]
    Offsets(#[from] crate::sink::kafka::offsets::OffsetsError),
    #[error(
        "polling needs columns seq (bigserial) and status (smallint) on {0}: run sql/poll.sql"
    )]
    PollSchema(String),
    #[error(
        "outbox table {table} had a row updated (WAL {lsn}) and on_update = fatal: outbox rows are immutable events; stop the writer that updates them, then set on_update = warn or error to pass this change"
    )]
    OutboxUpdate { table: String, lsn: Lsn },
    #[error(
        "replication slot {0:?} disappeared while pgoutbox was using it: events may have been missed; recreate the slot and resync deliberately"
    )]
    SlotLost(String),
    #[error(
        "{drift} between WAL {since} and {seen}: PostgreSQL sends no inserts of the outbox from that change on, so events committed after WAL {since} may be missing. Fix: {fix}; then re-send what was committed in between (rows still in the table: `source = poll`, see sql/poll.sql) and restart",
        fix = .drift.fix()
    )]
    Drift {
        drift: crate::catalog::Drift,
        /// A WAL position at which the publication still sent the outbox.
        since: Lsn,
        /// The WAL position when the change was seen.
        seen: Lsn,
    },
    #[error(
        "PostgreSQL cannot decode the slot: {message}. Decoding reads the catalog as of each WAL position, so a publication dropped (and perhaps created again) after the slot's position fails the same way on every retry. Fix: move the slot past the gap with `pgoutbox slot skip --to now` (events committed in the gap are not sent: re-send rows still in the table with `source = poll`), or drop and recreate the slot"
    )]
    Undecodable { message: String },
    #[error("at-most-once: holding a transaction's events until its commit is confirmed: {0}")]
    Hold(std::io::Error),
    #[error("{0}")]
    NoMessages(String),
    #[error("looking up relation {oid} in the catalog: {error}")]
    Catalog { oid: u32, error: String },
}

impl StreamError {
    /// Errors that reconnecting cannot fix: the process exits non-zero instead of retrying.
    pub fn is_fatal(&self) -> bool {
        match self {
            StreamError::Config(_)
            | StreamError::Tls(_)
            | StreamError::Decode(_)
            | StreamError::Map(_)
            | StreamError::Watermark(_)
            | StreamError::Sink(_)
            | StreamError::OutboxUpdate { .. }
            | StreamError::Fenced { .. }
            | StreamError::PollSchema(_)
            | StreamError::SlotLost(_)
            | StreamError::Drift { .. }
            | StreamError::Undecodable { .. }
            | StreamError::NoMessages(_) => true,
            StreamError::Catalog { .. } | StreamError::Hold(_) => false,
            StreamError::Preflight(e) => e.is_fatal(),
            StreamError::Postgres(e) => crate::pg::is_fatal(e),
            StreamError::Replication(e) => {
                matches!(
                    e,
                    ReplicationError::Auth(_) | ReplicationError::Certificate(_)
                ) || e.sqlstate().is_some_and(crate::pg::is_fatal_sqlstate)
            }
            StreamError::Delivery(e) => e.class == ErrorClass::Final,
            StreamError::Refused { cause, .. } => cause.class == ErrorClass::Final,
            StreamError::SlotBusy { .. } => false,
            StreamError::Transaction(e) => e.fatal,
            StreamError::Offsets(e) => {
                matches!(e, crate::sink::kafka::offsets::OffsetsError::Config(_))
            }
        }
    }
}

/// Aborts a spawned task when dropped.
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl From<tokio_postgres::Error> for StreamError {
    fn from(e: tokio_postgres::Error) -> Self {
        StreamError::Postgres(e)
    }
}

/// How to get past an event that cannot be mapped, under `on_poison = fail`.
const POISON_HINT: &str = "; on_poison = fail stops here, and a restart meets the same event: set on_poison = dead-letter to set such events aside (or skip: logged and counted), or move the slot past its transaction with `pgoutbox slot skip --to LSN` (a WAL position after that transaction's commit: its other events are skipped too)";

/// What to change when Kafka refuses a record for good.
fn refusal_hint(e: &DeliveryError) -> &'static str {
    use rdkafka::error::{KafkaError, RDKafkaErrorCode as C};
    match &e.error {
        KafkaError::MessageProduction(C::MessageSizeTooLarge) => {
            "; raise the producer's message.max.bytes (-X) and the topic's max.message.bytes, or make the payload smaller"
        }
        KafkaError::MessageProduction(C::UnknownTopicOrPartition | C::UnknownTopic) => {
            "; create the topic, or enable topic auto-creation on the brokers"
        }
        KafkaError::MessageProduction(C::TopicAuthorizationFailed) => {
            "; grant this client WRITE (and IDEMPOTENT_WRITE) on the topic"
        }
        _ => "",
    }
}

impl From<crate::pg::ConnectError> for StreamError {
    fn from(e: crate::pg::ConnectError) -> Self {
        match e {
            crate::pg::ConnectError::Config(e) => StreamError::Config(e),
            crate::pg::ConnectError::Tls(e) => StreamError::Tls(e),
            crate::pg::ConnectError::Postgres(e) => StreamError::Postgres(e),
        }
    }
}

/// An event Kafka acknowledged, for observers (the demo, later metrics).
#[derive(Debug, Clone)]
pub struct AckedEvent {
    pub event_id: Bytes,
    pub partition: i32,
    pub offset: i64,
    /// When Postgres committed the event's transaction.
    pub commit_time: SystemTime,
    pub acked_at: SystemTime,
}

/// What a session reports about its progress, so `run` can tell a healthy stream.
#[derive(Debug, Default, Clone, Copy)]
pub struct Progress {
    pub streaming_since: Option<Instant>,
    pub confirmed: Lsn,
}

/// Runs the pipeline until shutdown or a fatal error.
pub struct Streamer {
    cfg: Config,
    observer: Option<mpsc::UnboundedSender<AckedEvent>>,
    health: Arc<Health>,
}

impl Streamer {
    pub fn new(cfg: Config) -> Result<Self, ConfigError> {
        cfg.validate()?;
        Ok(Streamer {
            cfg,
            observer: None,
            health: Arc::default(),
        })
    }

    /// Reports into `health` (kept across a reload) instead of a health of its own.
    pub fn with_health(mut self, health: Arc<Health>) -> Self {
        self.health = health;
        self
    }

    /// Streaming state and slot lag, for health endpoints.
    pub fn health(&self) -> Arc<Health> {
        self.health.clone()
    }

    /// Reports every acked event to `tx`.
    pub fn with_observer(mut self, tx: mpsc::UnboundedSender<AckedEvent>) -> Self {
        self.observer = Some(tx);
        self
    }

    /// Streams until `shutdown` is cancelled (Ok) or a fatal error (Err). Transient errors
    /// reconnect with capped exponential backoff and resume from the slot's confirmed LSN.
    /// With `ha`, streams only while holding the HA lock, and waits as a standby otherwise.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<(), StreamError> {
        if !self.cfg.ha {
            return self.stream(shutdown).await;
        }
        loop {
            let Some(mut leadership) = ha::acquire(&self.cfg, &shutdown, &self.health).await?
            else {
                return Ok(());
            };
            info!(slot = %self.cfg.slot, "leader: holding the HA lock, streaming");
            // Losing the lock ends this term gracefully; shutdown ends it for good.
            let term = shutdown.child_token();
            let stream = self.stream(term.clone());
            tokio::pin!(stream);
            let result = tokio::select! {
                r = &mut stream => r,
                _ = leadership.lost() => {
                    warn!("lost the HA lock session: stepping down");
                    term.cancel();
                    stream.await
                }
            };
            drop(leadership);
            result?;
            if shutdown.is_cancelled() {
                return Ok(());
            }
        }
    }

    /// Streams with reconnects until `shutdown` or a fatal error.
    async fn stream(&self, shutdown: CancellationToken) -> Result<(), StreamError> {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let mut slot_known = false;
        // Polls the slot's retained WAL and lag for metrics and readiness; stops with us.
        let polling = self.cfg.source == Source::Poll;
        // Polls the slot's retained WAL and lag for metrics and readiness; stops with us.
        let _stop_monitor = (!polling).then(|| {
            AbortOnDrop(tokio::spawn(monitor::run(
                self.cfg.clone(),
                self.health.clone(),
            )))
        });
        loop {
            let mut progress = Progress::default();
            let result = if polling {
                progress.streaming_since = Some(Instant::now());
                self.health.set_streaming(true);
                let r = crate::poll::run(&self.cfg, &shutdown).await;
                self.health.set_streaming(false);
                r
            } else {
                session::run(
                    &self.cfg,
                    &mut slot_known,
                    &shutdown,
                    self.observer.as_ref(),
                    &mut progress,
                    &self.health,
                )
                .await
            };
            match result {
                Ok(()) => return Ok(()),
                Err(e) if e.is_fatal() => {
                    error!(error = %e, "stopping: this needs an operator");
                    return Err(e);
                }
                Err(e) => {
                    if progress
                        .streaming_since
                        .is_some_and(|t| t.elapsed() > Duration::from_secs(30))
                    {
                        backoff.reset();
                    }
                    let wait = backoff.next_delay();
                    if progress.streaming_since.is_some() {
                        warn!(error = %e, retry_in = ?wait, confirmed = %progress.confirmed,
                            "stream stopped; reconnecting and resuming from the slot");
                    } else {
                        warn!(error = %e, retry_in = ?wait, "cannot stream yet; retrying");
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(wait) => {}
                    }
                    info!("reconnecting");
                    metrics::counter!(crate::metrics::RECONNECTS).increment(1);
                }
            }
        }
    }
}
