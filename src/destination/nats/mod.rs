//! The NATS JetStream destination: each record is a JetStream publish to the subject its topic
//! names, acknowledged by the stream (PubAck). `Nats-Msg-Id` is the event id, so the stream's
//! duplicate window removes re-sends.
//!
//! - this file: connecting, the record → message mapping, `send` (never waits).
//! - [`chain`]: the order guard (each publish names the one before it).
//! - [`connect`]: the server list, each URL with its credentials, and what a refusal means.
//! - [`client`]: the publishing client, on a thread of its own, never reconnecting by itself
//!   (which keeps each key's order when a connection breaks).
//! - [`lookup`]: what a "no responders" answer means (no stream, or a leader missing).
//! - [`publisher`]: the task that publishes, matches each PubAck to its publish, and hands
//!   each outcome back.
//! - [`stream`]: what `check` and `setup` ask of the stream.

pub mod admin;
mod chain;
mod client;
mod connect;
mod lookup;
mod publisher;
pub mod stream;

use std::str::FromStr;
use std::sync::Arc;

use async_nats::{HeaderMap, HeaderName, HeaderValue};
use tokio::sync::{mpsc, watch, Notify};

use crate::config::nats::is_valid_subject;
use crate::config::{Config, NatsConfig, Plan};
use crate::destination::{
    enqueue, room, Class, Destination, DestinationError, Outcome, Refusal, SendError,
};
use crate::outbox::OutboxRecord;
use publisher::Job;
use tokio_util::task::AbortOnDropHandle;

/// The header carrying the record's key (NATS messages have none of their own).
pub const KEY_HEADER: &str = "key";

/// Publishes to JetStream; outcomes come back on the channel it was opened with.
pub struct NatsSink<T: Send + 'static> {
    jobs: mpsc::Sender<Job<T>>,
    purge: Arc<Notify>,
    max_payload: usize,
    client: async_nats::Client,
    _publisher: AbortOnDropHandle<()>,
    /// Last: dropping it ends the client's tasks (after the publisher's abort).
    _thread: client::ClientThread,
}

/// Connects to a server of `cfg` (the first of its list that takes the connection, each
/// with its own credentials). (The sink's publishing client is connected by
/// [`client::connect`], which never reconnects.)
pub async fn connect(cfg: &NatsConfig) -> Result<async_nats::Client, DestinationError> {
    connect::dial(cfg, connect::options(cfg).await?).await
}

/// The JetStream context for the stream's management API (look-up, creation, `check`).
/// Publishing goes through the core client (`publisher.rs`), which tracks PubAcks itself.
pub fn jetstream(client: async_nats::Client, cfg: &NatsConfig) -> async_nats::jetstream::Context {
    async_nats::jetstream::ContextBuilder::new()
        .timeout(cfg.ack_timeout)
        .build(client)
}

/// A header's name; those every event carries without parsing (which allocates).
fn header_name(k: &str) -> Result<HeaderName, async_nats::header::ParseHeaderNameError> {
    Ok(match k {
        "id" => HeaderName::from_static("id"),
        "type" => HeaderName::from_static("type"),
        KEY_HEADER => HeaderName::from_static(KEY_HEADER),
        "traceparent" => HeaderName::from_static("traceparent"),
        _ => return HeaderName::from_str(k),
    })
}

/// The headers of a record's message: its own (`id`, `type`, …), the key, and `Nats-Msg-Id` =
/// the event id. A name or value NATS cannot carry is a refusal.
pub(crate) fn headers(record: &OutboxRecord) -> Result<HeaderMap, Refusal> {
    let bad = |what: String| Refusal::new(Class::Refused, what);
    let mut headers = HeaderMap::new();
    let key = record.key.as_ref().map(|k| (KEY_HEADER, k));
    for (k, v) in record
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v))
        .chain(key)
    {
        let name =
            header_name(k).map_err(|_| bad(format!("header name {k:?} is not valid in NATS")))?;
        let text = std::str::from_utf8(v).map_err(|_| {
            bad(format!(
                "header {k:?} is not UTF-8, which NATS headers need"
            ))
        })?;
        let value = HeaderValue::from_str(text)
            .map_err(|_| bad(format!("header {k:?} holds a line break")))?;
        headers.append(name, value);
    }
    let id = std::str::from_utf8(&record.event_id)
        .ok()
        .filter(|id| !id.contains(['\r', '\n']) && !id.is_empty())
        .ok_or_else(|| {
            bad(
                "the event id cannot be a Nats-Msg-Id (not UTF-8, empty or with a line break)"
                    .into(),
            )
        })?;
    let id = HeaderValue::from_str(id)
        .map_err(|_| bad("the event id cannot be a Nats-Msg-Id".into()))?;
    headers.insert(async_nats::header::NATS_MESSAGE_ID, id);
    Ok(headers)
}

/// Bytes a message takes against the server's `max_payload`.
fn wire_size(record: &OutboxRecord) -> usize {
    let headers: usize = record
        .headers
        .iter()
        .map(|(k, v)| k.len() + v.len() + 4)
        .sum();
    record.payload.as_ref().map_or(0, |p| p.len())
        + headers
        + record
            .key
            .as_ref()
            .map_or(0, |k| k.len() + KEY_HEADER.len() + 4)
        + record.event_id.len()
        + 32
}

impl<T: Send + 'static> Destination<T> for NatsSink<T> {
    const NAME: &'static str = "nats";
    type Admin = admin::NatsAdmin;
    const TITLE: &'static str = "NATS";

    async fn open(
        cfg: &Config,
        outcomes: mpsc::UnboundedSender<Outcome<T>>,
    ) -> Result<Self, DestinationError> {
        let thread = client::ClientThread::start()?;
        let (lost, lost_rx) = watch::channel(false);
        let nats = cfg.nats.clone();
        let client = thread
            .handle()
            .spawn(async move { client::connect(&nats, lost).await })
            .await
            .map_err(|e| DestinationError::Unavailable(format!("NATS: client thread: {e}")))??;
        let js = jetstream(client.clone(), &cfg.nats);
        let info = stream::inspect(&js, &cfg.nats).await?;
        if info.duplicate_window < cfg.nats.duplicate_window {
            let why = stream::short_window(&cfg.nats, info.duplicate_window);
            match cfg.plan() {
                Plan::Deduplicated => return Err(DestinationError::Config(why)),
                _ => tracing::warn!("{why}"),
            }
        }
        let max_payload = client.server_info().max_payload;
        let (jobs, rx) = mpsc::channel(cfg.nats.max_pending);
        let purge = Arc::new(Notify::new());
        let task = thread.handle().spawn(publisher::run(
            client.clone(),
            rx,
            outcomes,
            publisher::Signals {
                purge: purge.clone(),
                lost: lost_rx,
            },
            cfg.nats.max_pending,
            cfg.nats.ack_timeout,
        ));
        Ok(NatsSink {
            jobs,
            purge,
            max_payload,
            client,
            _publisher: AbortOnDropHandle::new(task),
            _thread: thread,
        })
    }

    fn send(&self, record: OutboxRecord, ticket: T) -> Result<(), SendError<T>> {
        if !is_valid_subject(&record.topic) {
            let r = Refusal::new(
                Class::InvalidTopic,
                format!("{:?} is not a NATS subject to publish to", record.topic),
            );
            return Err(SendError::Refused(ticket, r, record));
        }
        let size = wire_size(&record);
        if size > self.max_payload {
            let r = Refusal {
                class: Class::TooLarge,
                message: format!(
                    "NATS: the message ({} bytes with headers) exceeds the server's max_payload of {} bytes",
                    size, self.max_payload
                ),
                hint: "; raise max_payload in the nats-server configuration (1 MB by default, at most 64 MB), or make the payload smaller",
            };
            return Err(SendError::Refused(ticket, r, record));
        }
        let job = match Job::new(record, ticket) {
            Ok(job) => job,
            Err((ticket, r, record)) => return Err(SendError::Refused(ticket, r, record)),
        };
        enqueue(&self.jobs, job, Self::TITLE, |j| (j.ticket, j.record))
    }

    fn ready(&self) -> impl std::future::Future<Output = ()> + Send {
        room(&self.jobs)
    }

    fn purge(&self) {
        self.purge.notify_one();
    }

    async fn close(self) {
        // Publishes still in the client's buffer go out (briefly: the server may be gone);
        // their acks are no longer awaited.
        let flush = self.client.flush();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), flush).await;
    }
}
