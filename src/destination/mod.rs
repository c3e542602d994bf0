//! Where outbox records go. A destination does I/O only: it takes a record without waiting,
//! and hands back each record's ticket exactly once, with its outcome, on the channel it was
//! opened with. What an outcome means for the slot (the watermark), the delivery modes and
//! the poison policy are the pipeline's, once, for every destination.
//!
//! - [`kafka`]: an idempotent (or transactional) librdkafka producer.
//! - [`nats`]: JetStream publishes, acknowledged by the stream (PubAck).
//! - [`rabbitmq`]: AMQP publishes to an exchange, confirmed by the broker.
//! - [`admin`]: what `check` and `setup` do for each of them.
//!
//! A new destination is one folder (the sink implementing [`Destination`], its
//! [`admin::Admin`]) plus one line in `with_destination!` and one in
//! [`crate::config::DestinationKind`].

pub mod admin;
pub mod kafka;
mod key_gate;
pub mod nats;
mod pending;
pub mod rabbitmq;
mod servers;

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::config::Config;
use crate::lsn::Lsn;
use crate::outbox::OutboxRecord;

/// Evaluates `$body` with `$D` naming the destination type `$kind` selects, for tickets of
/// type `$T`: the one place a configured destination becomes a type.
macro_rules! with_destination {
    ($kind:expr, $T:ty, $D:ident => $body:expr) => {
        match $kind {
            $crate::config::DestinationKind::Kafka => {
                type $D = $crate::destination::kafka::KafkaSink<$T>;
                $body
            }
            $crate::config::DestinationKind::Nats => {
                type $D = $crate::destination::nats::NatsSink<$T>;
                $body
            }
            $crate::config::DestinationKind::RabbitMq => {
                type $D = $crate::destination::rabbitmq::RabbitSink<$T>;
                $body
            }
        }
    };
}
pub(crate) use with_destination;

/// Why a destination did not take a record, as the pipeline needs to know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// A failure the destination may get over (a timeout, the server down): not the event's
    /// fault. The stream resumes from the slot (at-most-once: resent in process).
    Retriable,
    /// The record is larger than the destination accepts.
    TooLarge,
    /// The name it is routed to is not a valid name there (a Kafka topic, a NATS subject).
    InvalidTopic,
    /// No stream, queue or topic takes the name it is routed to.
    Unroutable,
    /// The credentials may not write there.
    NotAuthorized,
    /// Refused for another reason that a retry will not change.
    Refused,
}

impl Class {
    /// The destination will never take this record: `on_poison` decides.
    pub fn is_final(self) -> bool {
        self != Class::Retriable
    }

    /// The name in dead-letter headers and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Class::Retriable => "retriable",
            Class::TooLarge => "too-large",
            Class::InvalidTopic => "invalid-topic",
            Class::Unroutable => "unroutable",
            Class::NotAuthorized => "not-authorized",
            Class::Refused => "refused",
        }
    }
}

/// A record the destination did not take, with why and what to change.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    pub class: Class,
    pub message: String,
    /// What to change, starting with "; ", or empty.
    pub hint: &'static str,
}

impl Refusal {
    pub fn new(class: Class, message: impl Into<String>) -> Self {
        Refusal {
            class,
            message: message.into(),
            hint: "",
        }
    }
}

/// Where an acknowledged record landed.
#[derive(Debug, Clone, Copy, Default)]
pub struct Receipt {
    /// The Kafka partition; 0 where the destination has none.
    pub partition: i32,
    /// The Kafka offset, or the stream sequence number.
    pub offset: i64,
}

/// The header naming the destination transaction a record was written in (exactly-once).
pub const TXN_HEADER: &str = "pgoutbox.txn";

/// A record a destination hands back with its refusal, as it was sent.
#[derive(Debug, Clone, Default)]
pub struct Returned {
    pub topic: String,
    pub key: Option<Bytes>,
    pub payload: Option<Bytes>,
    pub headers: Vec<(String, Bytes)>,
}

impl From<OutboxRecord> for Returned {
    fn from(rec: OutboxRecord) -> Self {
        Returned {
            topic: rec.topic,
            key: rec.key,
            payload: rec.payload,
            headers: rec.headers,
        }
    }
}

/// What became of one record, carrying back the caller's ticket.
#[derive(Debug)]
pub struct Outcome<T> {
    pub ticket: T,
    pub result: Result<Receipt, Refusal>,
    /// On a refusal, the record as it was sent (for a dead letter or a resend).
    pub returned: Option<Returned>,
}

/// A record `send` did not take; the ticket and the record are handed back.
#[derive(Debug)]
pub enum SendError<T> {
    /// No room now: send again after some outcomes.
    Full(T, OutboxRecord),
    /// Refused at once (too large, an invalid name …); no outcome will follow.
    Refused(T, Refusal, OutboxRecord),
}

/// At most this many jobs a publishing task takes from its queue at once (and publishes back
/// to back, so that the client writes them together).
pub(crate) const BATCH: usize = 1024;

/// How soon a destination without a readiness signal is offered a refused record again.
pub const RETRY_FULL: Duration = Duration::from_millis(5);

/// Resolves when `jobs` has room for one more (or is closed: `send` then says so).
pub(crate) async fn room<J: Send>(jobs: &mpsc::Sender<J>) {
    // The permit is only a signal: dropping it gives the place back.
    let _ = jobs.reserve().await;
}

/// Hands `job` to a destination's publishing task without waiting: `Full` when the task's
/// queue is full, a retriable refusal when the task has stopped; either way the ticket and the
/// record (`parts` takes them out of the job) come back.
#[allow(clippy::result_large_err)] // as `Destination::send`, whose result this is
pub(crate) fn enqueue<T, J>(
    jobs: &mpsc::Sender<J>,
    job: J,
    title: &str,
    parts: impl FnOnce(J) -> (T, OutboxRecord),
) -> Result<(), SendError<T>> {
    jobs.try_send(job).map_err(|e| match e {
        mpsc::error::TrySendError::Full(job) => {
            let (ticket, record) = parts(job);
            SendError::Full(ticket, record)
        }
        mpsc::error::TrySendError::Closed(job) => {
            let (ticket, record) = parts(job);
            let r = Refusal::new(Class::Retriable, format!("{title} publisher stopped"));
            SendError::Refused(ticket, r, record)
        }
    })
}

/// Hands every `(ticket, record)` of `all` back as a retriable refusal, "`title`: `why`":
/// a publishing task giving up what it holds (a lost connection, a purge, a timeout).
pub(crate) fn give_back<T>(
    outcomes: &mpsc::UnboundedSender<Outcome<T>>,
    title: &str,
    why: &str,
    all: impl IntoIterator<Item = (T, OutboxRecord)>,
) {
    for (ticket, record) in all {
        let _ = outcomes.send(Outcome {
            ticket,
            result: Err(Refusal::new(Class::Retriable, format!("{title}: {why}"))),
            returned: Some(Returned::from(record)),
        });
    }
}

/// A destination that could not be opened or used.
#[derive(Debug, thiserror::Error)]
pub enum DestinationError {
    /// Settings that cannot work: no retry helps.
    #[error("{0}")]
    Config(String),
    /// The server cannot be reached or refused the session: retried.
    #[error("{0}")]
    Unavailable(String),
    /// A transaction call failed (transactional destinations).
    #[error("{message}")]
    Transaction {
        /// The writer is unusable, e.g. fenced by a newer instance.
        fatal: bool,
        /// The transaction must be aborted; the writer stays usable.
        abortable: bool,
        message: String,
    },
}

impl DestinationError {
    /// Whether reconnecting cannot fix it.
    pub fn is_fatal(&self) -> bool {
        match self {
            DestinationError::Config(_) => true,
            DestinationError::Unavailable(_) => false,
            DestinationError::Transaction { fatal, .. } => *fatal,
        }
    }
}

/// One destination. `T` is the caller's opaque ticket.
///
/// Transactional destinations (Kafka with `delivery = exactly-once`) also group records into
/// transactions that commit atomically with the WAL position they end at; the pipeline calls
/// [`resume`](Destination::resume) once, then `begin`/`commit` around batches.
pub trait Destination<T: Send + 'static>: Sized + Send + Sync + 'static {
    /// For metric labels and settings: `kafka`, `nats`.
    const NAME: &'static str;
    /// What `check` and `setup` do for this destination.
    type Admin: admin::Admin;
    /// For people: `Kafka`, `NATS`.
    const TITLE: &'static str;

    /// Connects (or prepares to); outcomes go to `outcomes`.
    fn open(
        cfg: &Config,
        outcomes: mpsc::UnboundedSender<Outcome<T>>,
    ) -> impl Future<Output = Result<Self, DestinationError>> + Send;

    /// Takes a record without waiting for the server; its outcome comes back later. The
    /// record is the destination's: it keeps what it needs to hand it back on a refusal.
    // The record comes back by value when not taken; boxing it would allocate on every
    // backpressure.
    #[allow(clippy::result_large_err)]
    fn send(&self, record: OutboxRecord, ticket: T) -> Result<(), SendError<T>>;

    /// Resolves when a `send` refused as [`SendError::Full`] may succeed: backpressure by
    /// readiness. The default looks again after [`RETRY_FULL`] (librdkafka says nothing when
    /// its queue drains); a destination with a job queue resolves when the queue has room.
    fn ready(&self) -> impl Future<Output = ()> + Send {
        tokio::time::sleep(RETRY_FULL)
    }

    /// Why the broker refuses to take publishes now (RabbitMQ's `connection.blocked`: a memory
    /// or disk alarm), if it does: publishing pauses, and no publish times out meanwhile.
    fn blocked(&self) -> Option<String> {
        None
    }

    /// Gives up on everything not yet acknowledged: each outcome still comes back, as a
    /// retriable refusal, unless the server acknowledged it meanwhile.
    fn purge(&self);

    /// Releases the connection.
    fn close(self) -> impl Future<Output = ()> + Send;

    /// Transactional: fences older writers, and says through which WAL position their
    /// committed transactions reach.
    fn resume(
        &self,
        _limit: Duration,
    ) -> impl Future<Output = Result<Lsn, DestinationError>> + Send {
        async { Ok(Lsn::ZERO) }
    }

    /// Transactional: opens a transaction (a local call).
    fn begin(&self) -> Result<(), DestinationError> {
        Ok(())
    }

    /// Transactional: records that the open transaction ends at WAL `end` (named `tag`), and
    /// commits it. Every record sent in it is acknowledged before.
    fn commit(
        &self,
        _end: Lsn,
        _tag: &Bytes,
    ) -> impl Future<Output = Result<(), DestinationError>> + Send {
        async { Ok(()) }
    }

    /// Transactional: aborts the open transaction.
    fn abort(&self) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// Why this writer was fenced by a newer one, if it was.
    fn fenced(&self) -> Option<String> {
        None
    }
}
