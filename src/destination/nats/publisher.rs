//! The publishing task: takes jobs in order, publishes each to JetStream, and hands back
//! every ticket exactly once with its outcome: the PubAck, or a refusal of some class.

use std::collections::HashMap;
use std::sync::Arc;

use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::ErrorCode;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{mpsc, Notify};

use crate::destination::{Class, Outcome, Receipt, Refusal, Returned};

/// One record to publish.
pub struct Job<T> {
    pub subject: String,
    pub message: PublishMessage,
    pub ticket: T,
    pub returned: Returned,
}

/// What to change when JetStream has no stream for a subject.
const NO_STREAM: &str = "; no JetStream stream stores this subject: add it to the stream's subjects (`nats stream edit OUTBOX --subjects 'outbox.>'`), or route it to one";

/// A publish error as a refusal.
fn refusal(e: &PublishError) -> Refusal {
    let message = format!("NATS: {e}");
    let class = match e.kind() {
        PublishErrorKind::StreamNotFound => {
            return Refusal {
                class: Class::Unroutable,
                message,
                hint: NO_STREAM,
            }
        }
        PublishErrorKind::MaxPayloadExceeded => Class::TooLarge,
        PublishErrorKind::TimedOut
        | PublishErrorKind::BrokenPipe
        | PublishErrorKind::MaxAckPending => Class::Retriable,
        PublishErrorKind::WrongLastMessageId | PublishErrorKind::WrongLastSequence => {
            Class::Refused
        }
        PublishErrorKind::Other => {
            // A JetStream API error says what the stream thinks; anything else is the link.
            let api = std::error::Error::source(e)
                .and_then(|s| s.downcast_ref::<async_nats::jetstream::Error>());
            match api.map(|a| a.error_code()) {
                Some(ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM) => Class::TooLarge,
                // The stream is full or its store failed: it may recover.
                Some(ErrorCode::STREAM_STORE_FAILED | ErrorCode::INSUFFICIENT_RESOURCES) => {
                    Class::Retriable
                }
                Some(_) => Class::Refused,
                None => Class::Retriable,
            }
        }
    };
    let hint = match class {
        Class::TooLarge => {
            "; raise the stream's max_msg_size and the server's max_payload, or make the payload smaller"
        }
        _ => "",
    };
    Refusal {
        class,
        message,
        hint,
    }
}

/// Publishes until the job channel closes, at most `max_pending` awaiting their PubAck (a
/// job is taken only while there is room, so a publish never waits for a permit that only
/// polling the acks would free). On `purge`, every outstanding ticket comes back as a
/// retriable refusal at once.
pub async fn run<T: Send + 'static>(
    js: async_nats::jetstream::Context,
    mut jobs: mpsc::Receiver<Job<T>>,
    outcomes: mpsc::UnboundedSender<Outcome<T>>,
    purge: Arc<Notify>,
    max_pending: usize,
) {
    let mut acks = FuturesUnordered::new();
    let mut waiting: HashMap<u64, (T, Returned)> = HashMap::new();
    let mut next = 0u64;
    let give_up = |ticket: T, returned: Returned| Outcome {
        ticket,
        result: Err(Refusal::new(
            Class::Retriable,
            "NATS: publish abandoned (purged)",
        )),
        returned: Some(returned),
    };
    loop {
        tokio::select! {
            job = jobs.recv(), if acks.len() < max_pending => {
                let Some(job) = job else { break };
                match js.send_publish(job.subject, job.message).await {
                    Ok(ack) => {
                        let id = next;
                        next += 1;
                        waiting.insert(id, (job.ticket, job.returned));
                        acks.push(async move { (id, ack.await) });
                    }
                    Err(e) => {
                        let _ = outcomes.send(Outcome {
                            ticket: job.ticket,
                            result: Err(refusal(&e)),
                            returned: Some(job.returned),
                        });
                    }
                }
            }
            Some((id, result)) = acks.next() => {
                let Some((ticket, returned)) = waiting.remove(&id) else { continue };
                let outcome = match result {
                    Ok(ack) => Outcome {
                        ticket,
                        result: Ok(Receipt {
                            partition: 0,
                            offset: i64::try_from(ack.sequence).unwrap_or(i64::MAX),
                        }),
                        returned: None,
                    },
                    Err(e) => Outcome {
                        ticket,
                        result: Err(refusal(&e)),
                        returned: Some(returned),
                    },
                };
                let _ = outcomes.send(outcome);
            }
            _ = purge.notified() => {
                acks = FuturesUnordered::new();
                for (_, (ticket, returned)) in waiting.drain() {
                    let _ = outcomes.send(give_up(ticket, returned));
                }
                while let Ok(job) = jobs.try_recv() {
                    let _ = outcomes.send(give_up(job.ticket, job.returned));
                }
            }
        }
    }
}
