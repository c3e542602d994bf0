//! The pipeline: the guarantees, once for every source and destination. Events go to a
//! destination; outcomes come back into the watermark; the delivery modes, the poison policy
//! and the in-flight budget are applied here ([`session`]).

mod batches;
mod budget;
pub mod health;
mod held;
pub(crate) mod poison;
pub mod session;
pub mod watermark;

use std::time::{Instant, SystemTime};

use bytes::Bytes;

pub use batches::Batches;
pub use budget::Budget;
pub use health::Health;

use crate::config::ConfigError;
use crate::destination::{DestinationError, Refusal};
use crate::lsn::Lsn;
use crate::outbox::MapError;
use crate::pgoutput::DecodeError;
use crate::pipeline::watermark::WatermarkError;
use crate::postgres::preflight::PreflightError;
use crate::replication::ReplicationError;

/// Why a session ended with an error.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Preflight(#[from] PreflightError),
    // Display renders the cause (pg::describe), so it is not also a `source()`: the CLI prints
    // the chain, and the server's message would appear twice.
    #[error("PostgreSQL: {}{}", crate::postgres::connection::describe(.0), crate::postgres::connection::hint(.0))]
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
    Destination(#[from] DestinationError),
    #[error("delivering event {event} ({bytes} bytes to topic {topic}, WAL {lsn}) failed: {cause}{hint}",
        hint = .cause.hint)]
    Refused {
        event: String,
        topic: String,
        bytes: usize,
        lsn: Lsn,
        /// Rendered in the message, so deliberately not a `source()`.
        cause: Box<Refusal>,
    },
    #[error(
        "replication slot {slot:?} is in use by PID {pid} (another pgoutbox or replication client): waiting for it to be released; run standbys with ha = true, or give each instance its own slot"
    )]
    SlotBusy { slot: String, pid: String },
    #[error("fenced: {0}; this instance stops so that only one writes")]
    Fenced(String),
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
        drift: crate::postgres::catalog::Drift,
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
            | StreamError::OutboxUpdate { .. }
            | StreamError::Fenced(_)
            | StreamError::PollSchema(_)
            | StreamError::SlotLost(_)
            | StreamError::Drift { .. }
            | StreamError::Undecodable { .. }
            | StreamError::NoMessages(_) => true,
            StreamError::Catalog { .. } | StreamError::Hold(_) => false,
            StreamError::Preflight(e) => e.is_fatal(),
            StreamError::Postgres(e) => crate::postgres::connection::is_fatal(e),
            StreamError::Replication(e) => {
                matches!(
                    e,
                    ReplicationError::Auth(_) | ReplicationError::Certificate(_)
                ) || e
                    .sqlstate()
                    .is_some_and(crate::postgres::connection::is_fatal_sqlstate)
            }
            StreamError::Destination(e) => e.is_fatal(),
            StreamError::Refused { cause, .. } => cause.class.is_final(),
            StreamError::SlotBusy { .. } => false,
        }
    }

    /// A destination that cannot take events now but may in a moment (a leader election, a
    /// node restarting, a broker unreachable): the reconnect is retried quickly at first.
    pub fn is_destination_pause(&self) -> bool {
        match self {
            StreamError::Destination(DestinationError::Unavailable(_)) => true,
            StreamError::Refused { cause, .. } => !cause.class.is_final(),
            _ => false,
        }
    }
}

impl From<tokio_postgres::Error> for StreamError {
    fn from(e: tokio_postgres::Error) -> Self {
        StreamError::Postgres(e)
    }
}

/// How to get past an event that cannot be mapped, under `on_poison = fail`.
const POISON_HINT: &str = "; on_poison = fail stops here, and a restart meets the same event: set on_poison = dead-letter to set such events aside (or skip: logged and counted), or move the slot past its transaction with `pgoutbox slot skip --to LSN` (a WAL position after that transaction's commit: its other events are skipped too)";

impl From<crate::postgres::connection::ConnectError> for StreamError {
    fn from(e: crate::postgres::connection::ConnectError) -> Self {
        match e {
            crate::postgres::connection::ConnectError::Config(e) => StreamError::Config(e),
            crate::postgres::connection::ConnectError::Tls(e) => StreamError::Tls(e),
            crate::postgres::connection::ConnectError::Postgres(e) => StreamError::Postgres(e),
        }
    }
}

/// An event the destination acknowledged, for observers (the demo).
#[derive(Debug, Clone)]
pub struct AckedEvent {
    pub event_id: Bytes,
    /// Kafka partition and offset; NATS: 0 and the stream sequence.
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
