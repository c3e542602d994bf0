//! The publishing task: takes jobs in order, publishes each to its subject with a reply
//! subject of its own under one inbox subscription, and hands back every ticket exactly once
//! with its outcome: the stream's PubAck, or a refusal of some class. One subscription and one
//! timer ([`Pending`]) for all publishes, rather than a request (inbox, channel and timer) per
//! message.

use std::sync::Arc;
use std::time::Duration;

use async_nats::{HeaderMap, HeaderValue, StatusCode};
use bytes::Bytes;
use futures_util::StreamExt;
use serde::Deserialize;
use tokio::sync::{mpsc, watch, Notify};

use super::chain::{Chain, Take, EXPECTED_LAST_MSG_ID};
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

impl<T> Job<T> {
    /// The publish of `record`: its subject, headers (refused if NATS cannot carry one) and
    /// payload.
    #[allow(clippy::result_large_err)] // the record comes back by value, as from `send`
    pub fn new(record: OutboxRecord, ticket: T) -> Result<Self, (T, Refusal, OutboxRecord)> {
        match super::headers(&record) {
            Ok(headers) => Ok(Job {
                subject: record.topic.clone(),
                headers,
                payload: record.payload.clone().unwrap_or_default(),
                ticket,
                record,
            }),
            Err(r) => Err((ticket, r, record)),
        }
    }
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
/// "wrong last msg ID": the publish named a predecessor that is not the stream's last.
const WRONG_LAST_MSG_ID: u64 = 10070;

/// What the stream answered to a publish.
#[derive(Debug)]
enum Answer {
    Stored(Receipt),
    /// Refused because the publish it names as its predecessor is not the stream's last
    /// ([`Chain`]).
    OutOfChain,
    Refused(Refusal),
}

/// What a PubAck on a publish's reply subject says ("no responders" is [`StreamLookup`]'s
/// to tell).
fn answer(m: &async_nats::Message) -> Answer {
    let ack: PubAck = match serde_json::from_slice(&m.payload) {
        Ok(a) => a,
        Err(e) => {
            return Answer::Refused(Refusal::new(
                Class::Retriable,
                format!("NATS: unreadable PubAck: {e}"),
            ))
        }
    };
    match (ack.seq, ack.error) {
        (_, Some(e)) if e.err_code == WRONG_LAST_MSG_ID => Answer::OutOfChain,
        (_, Some(e)) => {
            let class = match e.err_code {
                MESSAGE_EXCEEDS_MAXIMUM => Class::TooLarge,
                STORE_FAILED | INSUFFICIENT_RESOURCES => Class::Retriable,
                // Unavailable now (no quorum, a leader stepping down, a timeout): a pause.
                _ if e.code >= 500 || e.code == 408 => Class::Retriable,
                _ => Class::Refused,
            };
            Answer::Refused(Refusal {
                class,
                message: format!("NATS JetStream: {} (error {})", e.description, e.err_code),
                hint: match class {
                    Class::TooLarge => "; raise the stream's max_msg_size and the server's max_payload, or make the payload smaller",
                    _ => "",
                },
            })
        }
        (Some(seq), None) => Answer::Stored(Receipt {
            partition: 0,
            offset: i64::try_from(seq).unwrap_or(i64::MAX),
        }),
        (None, None) => Answer::Refused(Refusal::new(
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

/// The publishing task's state besides its channels.
struct Publisher<T> {
    client: async_nats::Client,
    /// Reply subjects are `{prefix}.{publish id}`.
    prefix: String,
    pending: Pending<T>,
    chain: Chain<T>,
    /// Set once the connection is lost: nothing more goes out.
    broken: bool,
    outcomes: mpsc::UnboundedSender<Outcome<T>>,
}

impl<T: Send + 'static> Publisher<T> {
    /// Publishes `job` (following the chain), unless the connection is gone.
    async fn publish(&mut self, job: Job<T>, lost: &mut watch::Receiver<bool>) {
        if self.broken {
            give_back(
                &self.outcomes,
                "NATS",
                LOST,
                std::iter::once((job.ticket, job.record)),
            );
            return;
        }
        if self.chain.take(&job.record.event_id) == Take::HandBack {
            let job = std::iter::once((job.ticket, job.record));
            give_back(&self.outcomes, "NATS", HELD, job);
            return;
        }
        let Job {
            subject,
            mut headers,
            payload,
            ticket,
            record,
        } = job;
        let msg_id = headers
            .get(async_nats::header::NATS_MESSAGE_ID)
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default();
        if let Some(last) = self.chain.expected() {
            if let Ok(v) = last.parse::<HeaderValue>() {
                headers.insert(EXPECTED_LAST_MSG_ID, v);
            }
        }
        let id = self.pending.next_id();
        let reply = format!("{}.{id}", self.prefix);
        let publish = self
            .client
            .publish_with_reply_and_headers(subject, reply, headers, payload);
        // A client without its connection takes publishes only until its queue is full, then
        // never again: stop waiting once the connection is lost.
        let sent = tokio::select! {
            biased;
            sent = publish => Some(sent),
            () = broke(lost) => None,
        };
        match sent {
            None => {
                self.broken = true;
                let all = std::iter::once((ticket, record))
                    .chain(self.pending.drain())
                    .chain(self.chain.reset());
                give_back(&self.outcomes, "NATS", LOST, all);
            }
            Some(Ok(())) => {
                self.chain.sent(id, &msg_id);
                self.pending.insert(id, ticket, record);
            }
            // Not sent: the chain goes on from the publish before.
            Some(Err(e)) => self.refused(ticket, record, not_sent(&e)),
        }
    }

    /// Hands a refusal back.
    fn refused(&self, ticket: T, record: OutboxRecord, r: Refusal) {
        let _ = self.outcomes.send(Outcome {
            ticket,
            result: Err(r),
            returned: Some(Returned::from(record)),
        });
    }

    /// The answer to publish `id` (one the task still awaits).
    fn answered(&mut self, ticket: T, record: OutboxRecord, answer: Answer) {
        match answer {
            Answer::Stored(receipt) => {
                let _ = self.outcomes.send(Outcome {
                    ticket,
                    result: Ok(receipt),
                    returned: None,
                });
            }
            Answer::OutOfChain => {
                if let Some((ticket, record)) = self.chain.out_of_chain(ticket, record) {
                    give_back(&self.outcomes, "NATS", OUT_OF_CHAIN, [(ticket, record)]);
                }
            }
            Answer::Refused(r) => {
                let back = self.chain.failed(&record.event_id, r.class.is_final());
                self.refused(ticket, record, r);
                give_back(&self.outcomes, "NATS", OUT_OF_CHAIN, back);
            }
        }
    }

    /// Publishes timed out: handed back, and the chain broken behind them.
    fn timed_out(&mut self, why: &str, expired: Vec<(T, OutboxRecord)>) {
        let Some((_, first)) = expired.first() else {
            return;
        };
        let back = self.chain.failed(&first.event_id.clone(), false);
        give_back(&self.outcomes, "NATS", why, expired.into_iter().chain(back));
    }

    /// When a break has settled, publishes again what it refused, in order.
    async fn after_break(&mut self, lost: &mut watch::Receiver<bool>) {
        let Some(again) = self.chain.settled(self.pending.oldest()) else {
            return;
        };
        for (ticket, record) in again {
            match Job::new(record, ticket) {
                Ok(job) => self.publish(job, lost).await,
                Err((ticket, r, record)) => self.refused(ticket, record, r),
            }
        }
    }
}

/// Why jobs are handed back after a retried failure.
const HELD: &str = "held back behind an earlier event that failed; sent after it";

/// Why publishes refused as out of chain are handed back.
const OUT_OF_CHAIN: &str =
    "refused to keep the order behind an earlier publish that failed; resent after it";

/// Publishes through `client` until the job channel closes, at most `max_pending` awaiting
/// their PubAck (jobs are taken only while there is room, as many at once as are queued and
/// fit, and while no break of the chain settles). A publish unanswered after `ack_timeout`
/// fails as retriable. On `purge`, every outstanding ticket comes back as a retriable refusal
/// at once; once the connection is lost, every outstanding ticket and every later job too.
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
    let mut lookup = StreamLookup::new(client.clone(), ack_timeout.min(LOOKUP_TIMEOUT));
    let mut p = Publisher {
        client,
        prefix,
        pending: Pending::new(ack_timeout),
        chain: Chain::default(),
        broken: false,
        outcomes,
    };
    let mut batch = Vec::with_capacity(BATCH.min(max_pending));
    loop {
        let room = match p.chain.open() {
            true => max_pending.saturating_sub(p.pending.len()).min(BATCH),
            false => 0,
        };
        tokio::select! {
            taken = jobs.recv_many(&mut batch, room), if room > 0 => {
                if taken == 0 {
                    break;
                }
                for job in batch.drain(..) {
                    p.publish(job, &mut lost_while_sending).await;
                }
            }
            Some(m) = replies.next() => {
                let id = m.subject.rsplit('.').next().and_then(|s| s.parse::<u64>().ok());
                // An answer after its publish timed out (or was purged) is ignored.
                let Some((ticket, record)) = id.and_then(|id| p.pending.remove(id)) else {
                    continue;
                };
                let answer = match m.status {
                    Some(StatusCode::NO_RESPONDERS) => {
                        Answer::Refused(lookup.no_responders(&record.topic).await)
                    }
                    _ => answer(&m),
                };
                p.answered(ticket, record, answer);
                p.after_break(&mut lost_while_sending).await;
            }
            () = broke(&mut lost), if !p.broken => {
                p.broken = true;
                let all = p.pending.drain().into_iter().chain(p.chain.reset());
                give_back(&p.outcomes, "NATS", LOST, all);
            }
            () = p.pending.tick(), if p.pending.armed() => {
                let why = format!("no PubAck within {ack_timeout:?} (nats_ack_timeout_ms)");
                let expired = p.pending.expired();
                p.timed_out(&why, expired);
                p.after_break(&mut lost_while_sending).await;
            }
            _ = purge.notified() => {
                let queued = std::iter::from_fn(|| jobs.try_recv().ok().map(|j| (j.ticket, j.record)));
                let all = p.pending.drain().into_iter().chain(p.chain.reset()).chain(queued);
                give_back(&p.outcomes, "NATS", PURGED, all.collect::<Vec<_>>());
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

    fn class(a: Answer) -> Class {
        match a {
            Answer::Refused(r) => r.class,
            other => panic!("not a refusal: {other:?}"),
        }
    }

    #[test]
    fn answers_become_outcomes() {
        let Answer::Stored(ok) = answer(&msg(r#"{"stream":"OUTBOX","seq":42}"#, None)) else {
            panic!("not stored");
        };
        assert_eq!(ok.offset, 42);
        let dup = answer(&msg(
            r#"{"stream":"OUTBOX","seq":42,"duplicate":true}"#,
            None,
        ));
        assert!(
            matches!(dup, Answer::Stored(_)),
            "a duplicate is stored already: delivered"
        );
        let big = r#"{"error":{"code":400,"err_code":10054,"description":"message size exceeds maximum allowed"}}"#;
        assert_eq!(class(answer(&msg(big, None))), Class::TooLarge);
        let leaderless = r#"{"error":{"code":503,"err_code":10008,"description":"JetStream system temporarily unavailable"}}"#;
        assert_eq!(class(answer(&msg(leaderless, None))), Class::Retriable);
        let full =
            r#"{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"}}"#;
        assert_eq!(class(answer(&msg(full, None))), Class::Retriable);
        let other = r#"{"error":{"code":400,"err_code":10060,"description":"expected stream does not match"}}"#;
        assert_eq!(class(answer(&msg(other, None))), Class::Refused);
        let wrong_last =
            r#"{"error":{"code":400,"err_code":10070,"description":"wrong last msg ID: 1"}}"#;
        assert!(matches!(answer(&msg(wrong_last, None)), Answer::OutOfChain));
    }
}
