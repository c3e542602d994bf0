//! The publishing task: takes jobs in order, publishes each to its subject with a reply
//! subject of its own under one inbox subscription, and hands back every ticket exactly once
//! with its outcome: the stream's PubAck, or a refusal of some class. One subscription and one
//! timer ([`Pending`]) for all publishes, rather than a request (inbox, channel and timer) per
//! message.

use std::sync::Arc;
use std::time::Duration;

use async_nats::{HeaderMap, StatusCode};
use bytes::Bytes;
use futures_util::StreamExt;
use serde::Deserialize;
use tokio::sync::{mpsc, watch, Notify};

use super::lookup::StreamLookup;
use crate::destination::pending::Pending;
use crate::destination::{give_back, Class, Outcome, Receipt, Refusal, Returned, BATCH};
use crate::outbox::OutboxRecord;

/// One record to publish.
pub struct Job<T> {
    pub subject: String,
    pub headers: HeaderMap,
    pub payload: Bytes,
    pub ticket: T,
    /// Handed back with a refusal.
    pub record: OutboxRecord,
}

/// JetStream's answer to a publish: the stored sequence, or an API error.
#[derive(Deserialize)]
struct PubAck {
    seq: Option<u64>,
    error: Option<ApiError>,
}

#[derive(Deserialize)]
struct ApiError {
    /// HTTP-like: 503 and the like say the cluster cannot take it now.
    #[serde(default)]
    code: u16,
    #[serde(default)]
    err_code: u64,
    #[serde(default)]
    description: String,
}

/// JetStream error codes that say something about the event.
const MESSAGE_EXCEEDS_MAXIMUM: u64 = 10054;
const STORE_FAILED: u64 = 10077;
const INSUFFICIENT_RESOURCES: u64 = 10023;

/// The outcome a PubAck on a publish's reply subject carries ("no responders" is
/// [`StreamLookup`]'s to tell).
fn answer(m: &async_nats::Message) -> Result<Receipt, Refusal> {
    let ack: PubAck = serde_json::from_slice(&m.payload)
        .map_err(|e| Refusal::new(Class::Retriable, format!("NATS: unreadable PubAck: {e}")))?;
    match (ack.seq, ack.error) {
        (_, Some(e)) => {
            let class = match e.err_code {
                MESSAGE_EXCEEDS_MAXIMUM => Class::TooLarge,
                STORE_FAILED | INSUFFICIENT_RESOURCES => Class::Retriable,
                // Unavailable now (no quorum, a leader stepping down, a timeout): a pause.
                _ if e.code >= 500 || e.code == 408 => Class::Retriable,
                _ => Class::Refused,
            };
            Err(Refusal {
                class,
                message: format!("NATS JetStream: {} (error {})", e.description, e.err_code),
                hint: match class {
                    Class::TooLarge => "; raise the stream's max_msg_size and the server's max_payload, or make the payload smaller",
                    _ => "",
                },
            })
        }
        (Some(seq), None) => Ok(Receipt {
            partition: 0,
            offset: i64::try_from(seq).unwrap_or(i64::MAX),
        }),
        (None, None) => Err(Refusal::new(
            Class::Retriable,
            "NATS: PubAck without a sequence",
        )),
    }
}

/// A publish the client did not take.
fn not_sent(e: &async_nats::PublishError) -> Refusal {
    let class = match e.kind() {
        async_nats::client::PublishErrorKind::MaxPayloadExceeded => Class::TooLarge,
        async_nats::client::PublishErrorKind::InvalidSubject => Class::InvalidTopic,
        _ => Class::Retriable,
    };
    Refusal::new(class, format!("NATS: {e}"))
}

/// What the publisher is told besides its jobs.
pub struct Signals {
    /// Give every outstanding ticket back now, as a retriable refusal.
    pub purge: Arc<Notify>,
    /// Turns true when the client's connection broke (it does not reconnect, see
    /// `client.rs`): no PubAck will come, and no later publish may go out.
    pub lost: watch::Receiver<bool>,
}

/// Until the connection is lost (or the client is gone).
async fn broke(lost: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`: dropped here.
    let _ = lost.wait_for(|lost| *lost).await;
}

/// How long a stream look-up after "no responders" may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// Why publishes fail on a purge.
const PURGED: &str = "publish abandoned (purged)";
/// Why publishes fail once the connection broke.
const LOST: &str = "the connection to the server broke; what it did not acknowledge is resent from the slot on a new connection";

/// Publishes through `client` until the job channel closes, at most `max_pending` awaiting
/// their PubAck (jobs are taken only while there is room, as many at once as are queued and
/// fit). A publish unanswered after `ack_timeout` fails as retriable. On `purge`, every
/// outstanding ticket comes back as a retriable refusal at once; once the connection is
/// lost, every outstanding ticket and every later job too.
pub async fn run<T: Send + 'static>(
    client: async_nats::Client,
    mut jobs: mpsc::Receiver<Job<T>>,
    outcomes: mpsc::UnboundedSender<Outcome<T>>,
    signals: Signals,
    max_pending: usize,
    ack_timeout: Duration,
) {
    let Signals { purge, mut lost } = signals;
    // The same signal, awaited while a publish waits for room in the client's queue.
    let mut lost_while_sending = lost.clone();
    let mut broken = false;
    let prefix = client.new_inbox();
    let mut replies = match client.subscribe(format!("{prefix}.*")).await {
        Ok(s) => s,
        Err(e) => {
            let why = format!("cannot subscribe to PubAcks: {e}");
            while let Some(job) = jobs.recv().await {
                give_back(
                    &outcomes,
                    "NATS",
                    &why,
                    std::iter::once((job.ticket, job.record)),
                );
            }
            return;
        }
    };
    let mut pending = Pending::new(ack_timeout);
    let mut lookup = StreamLookup::new(client.clone(), ack_timeout.min(LOOKUP_TIMEOUT));
    let mut batch = Vec::with_capacity(BATCH.min(max_pending));
    loop {
        let room = max_pending.saturating_sub(pending.len()).min(BATCH);
        tokio::select! {
            taken = jobs.recv_many(&mut batch, room), if room > 0 => {
                if taken == 0 {
                    break;
                }
                for job in batch.drain(..) {
                    if broken {
                        give_back(&outcomes, "NATS", LOST, std::iter::once((job.ticket, job.record)));
                        continue;
                    }
                    let id = pending.next_id();
                    let reply = format!("{prefix}.{id}");
                    let publish = client.publish_with_reply_and_headers(
                        job.subject,
                        reply,
                        job.headers,
                        job.payload,
                    );
                    // A client without its connection takes publishes only until its queue
                    // is full, then never again: stop waiting once the connection is lost.
                    let sent = tokio::select! {
                        biased;
                        sent = publish => Some(sent),
                        () = broke(&mut lost_while_sending) => None,
                    };
                    match sent {
                        None => {
                            broken = true;
                            let job = std::iter::once((job.ticket, job.record));
                            give_back(&outcomes, "NATS", LOST, job.chain(pending.drain()));
                        }
                        Some(Ok(())) => pending.insert(id, job.ticket, job.record),
                        Some(Err(e)) => {
                            let _ = outcomes.send(Outcome {
                                ticket: job.ticket,
                                result: Err(not_sent(&e)),
                                returned: Some(Returned::from(job.record)),
                            });
                        }
                    }
                }
            }
            Some(m) = replies.next() => {
                let id = m.subject.rsplit('.').next().and_then(|s| s.parse::<u64>().ok());
                // An answer after its publish timed out (or was purged) is ignored.
                let Some((ticket, record)) = id.and_then(|id| pending.remove(id)) else {
                    continue;
                };
                let result = match m.status {
                    Some(StatusCode::NO_RESPONDERS) => Err(lookup.no_responders(&record.topic).await),
                    _ => answer(&m),
                };
                let returned = result.is_err().then(|| Returned::from(record));
                let _ = outcomes.send(Outcome { ticket, result, returned });
            }
            () = broke(&mut lost), if !broken => {
                broken = true;
                give_back(&outcomes, "NATS", LOST, pending.drain());
            }
            () = pending.tick(), if pending.armed() => {
                let why = format!("no PubAck within {ack_timeout:?} (nats_ack_timeout_ms)");
                give_back(&outcomes, "NATS", &why, pending.expired());
            }
            _ = purge.notified() => {
                let queued = std::iter::from_fn(|| jobs.try_recv().ok().map(|j| (j.ticket, j.record)));
                give_back(&outcomes, "NATS", PURGED, pending.drain().into_iter().chain(queued));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(payload: &str, status: Option<StatusCode>) -> async_nats::Message {
        async_nats::Message {
            subject: "_INBOX.x.1".into(),
            reply: None,
            payload: Bytes::from(payload.to_owned()),
            headers: None,
            status,
            description: None,
            length: payload.len(),
        }
    }

    #[test]
    fn answers_become_outcomes() {
        let ok = answer(&msg(r#"{"stream":"OUTBOX","seq":42}"#, None)).unwrap();
        assert_eq!(ok.offset, 42);
        let dup = answer(&msg(
            r#"{"stream":"OUTBOX","seq":42,"duplicate":true}"#,
            None,
        ));
        assert!(dup.is_ok(), "a duplicate is stored already: delivered");
        let big = r#"{"error":{"code":400,"err_code":10054,"description":"message size exceeds maximum allowed"}}"#;
        assert_eq!(answer(&msg(big, None)).unwrap_err().class, Class::TooLarge);
        let leaderless = r#"{"error":{"code":503,"err_code":10008,"description":"JetStream system temporarily unavailable"}}"#;
        assert_eq!(
            answer(&msg(leaderless, None)).unwrap_err().class,
            Class::Retriable
        );
        let full =
            r#"{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"}}"#;
        assert_eq!(
            answer(&msg(full, None)).unwrap_err().class,
            Class::Retriable
        );
        let other = r#"{"error":{"code":400,"err_code":10060,"description":"expected stream does not match"}}"#;
        assert_eq!(answer(&msg(other, None)).unwrap_err().class, Class::Refused);
    }
}
