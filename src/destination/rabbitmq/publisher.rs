//! The publishing task: takes jobs in order, publishes each on one confirm-mode channel, and
//! hands back every ticket exactly once with its outcome: the broker's ack, or a refusal (a
//! nack, a returned message, a closed channel, no confirm in time).
//!
//! Publishes are pipelined: lapin numbers a publish and queues its frames synchronously, on
//! the first poll of `basic_publish`, so polling each publish once as it is taken keeps the
//! wire order the commit order; the rest (the write, then the confirm) completes
//! concurrently. Confirms are taken in batches (every one settled so far), and a returned
//! message goes to the publish it is ([`returns`](super::returns)), not to the confirm lapin
//! handed it to.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use tokio::sync::{mpsc, watch, Notify};

use super::returns::{take_returns, Return};
use crate::destination::key_gate::{Admit, KeyGate};
use crate::destination::pending::Pending;
use crate::destination::{
    give_back, Class, DestinationError, Outcome, Receipt, Refusal, Returned, BATCH,
};
use crate::outbox::OutboxRecord;

/// One record to publish.
pub struct Job<T> {
    pub routing_key: ShortString,
    pub properties: BasicProperties,
    pub ticket: T,
    /// Handed back with a refusal.
    pub record: OutboxRecord,
}

/// A channel whose publishes the broker confirms.
pub async fn confirm_channel(connection: &Connection) -> Result<Channel, DestinationError> {
    let unavailable = |e: lapin::Error| DestinationError::Unavailable(format!("RabbitMQ: {e}"));
    let channel = connection.create_channel().await.map_err(unavailable)?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(unavailable)?;
    Ok(channel)
}

type Confirmed = (u64, Result<Confirmation, lapin::Error>);
type InFlight = Pin<Box<dyn Future<Output = Confirmed> + Send>>;

/// What a confirm says about its own publish (a return it carries is put on its publish
/// apart: see [`returns`](super::returns)): acked, nacked, or a refusal.
fn read_confirm(
    confirmed: Result<Confirmation, lapin::Error>,
) -> (Result<bool, Refusal>, Option<Return>) {
    match confirmed {
        Ok(Confirmation::Ack(r)) => (Ok(true), r.map(Return::from)),
        Ok(Confirmation::Nack(r)) => (Ok(false), r.map(Return::from)),
        Ok(Confirmation::NotRequested) => (
            Err(Refusal::new(
                Class::Retriable,
                "RabbitMQ: the channel is not in confirm mode",
            )),
            None,
        ),
        Err(e) => (Err(failed(&e)), None),
    }
}

/// The record's outcome: returned (no queue took it), else what its confirm said.
fn outcome(
    id: u64,
    exchange: &str,
    routing_key: &str,
    said: Result<bool, Refusal>,
    returned: Option<Return>,
) -> Result<Receipt, Refusal> {
    if let Some(ret) = returned {
        return Err(Refusal {
            class: Class::Unroutable,
            message: format!(
                "RabbitMQ returned the message ({} {}): no queue is bound to exchange {exchange:?} for routing key {routing_key:?}",
                ret.code, ret.text
            ),
            hint: "; bind a queue to the exchange for this routing key, or route the event elsewhere",
        });
    }
    match said? {
        true => Ok(Receipt {
            partition: 0,
            offset: i64::try_from(id).unwrap_or(i64::MAX),
        }),
        // A queue full with x-overflow = reject-publish, or one that cannot store now: flow
        // control, retried like a broker that is down, never a poison event.
        false => Err(Refusal {
            class: Class::Retriable,
            message: format!(
                "RabbitMQ nacked the message to exchange {exchange:?} with routing key {routing_key:?}: a queue refused it for now (full, with x-overflow = reject-publish, or unable to store it); retried"
            ),
            hint: "",
        }),
    }
}

/// Every confirm settled so far (lapin completes a confirm carrying a return before the
/// confirms it completes after it, so the batch holds it whenever it holds those); pending
/// while none is.
fn settled(
    in_flight: &mut FuturesUnordered<InFlight>,
) -> impl Future<Output = Vec<Confirmed>> + '_ {
    std::future::poll_fn(move |cx| {
        let mut batch = Vec::new();
        while let Poll::Ready(Some(c)) = in_flight.poll_next_unpin(cx) {
            batch.push(c);
        }
        if batch.is_empty() {
            Poll::Pending
        } else {
            Poll::Ready(batch)
        }
    })
}

/// What a publish that failed (the channel closed under it) says about the record: the broker
/// refusing this user the exchange is final (no retry helps, as Kafka's authorization
/// failures); anything else is retriable.
fn failed(e: &lapin::Error) -> Refusal {
    use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
    let refused = matches!(e.kind(), lapin::ErrorKind::ProtocolError(p)
        if matches!(p.kind(), AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED)));
    if refused {
        Refusal {
            class: Class::NotAuthorized,
            message: format!("RabbitMQ: {e}"),
            hint: "; grant the user write permission on the exchange (`rabbitmqctl set_permissions -p VHOST USER CONF WRITE READ`, WRITE matching the exchange)",
        }
    } else {
        Refusal::new(Class::Retriable, format!("RabbitMQ: {e}"))
    }
}

/// What the publisher is told besides its jobs.
pub struct Signals {
    /// Give every outstanding ticket back now, as a retriable refusal.
    pub purge: Arc<Notify>,
    /// The broker's reason while it blocks publishers: no new publish is started, and no
    /// confirm deadline runs (each starts again when the block lifts), so a long alarm is a
    /// pause, not a storm of timeouts and resends.
    pub blocked: watch::Receiver<Option<String>>,
}

/// Why jobs are handed back behind a failed publish of their key.
const HELD: &str = "held back behind an earlier event of its key that failed; sent after it";

/// Publishes `job` on `channel` as the next publish: its frames are queued now, in order (see
/// the module comment); its confirm joins `in_flight`.
async fn start<T>(
    channel: &Channel,
    exchange: &ShortString,
    pending: &mut Pending<T>,
    in_flight: &mut FuturesUnordered<InFlight>,
    job: Job<T>,
) {
    let options = BasicPublishOptions {
        mandatory: true,
        immediate: false,
    };
    let id = pending.next_id();
    let payload = job.record.payload.clone().unwrap_or_default();
    let (channel, exchange) = (channel.clone(), exchange.clone());
    let (routing_key, properties) = (job.routing_key, job.properties);
    let mut publish: InFlight = Box::pin(async move {
        let sent = channel
            .basic_publish(exchange, routing_key, options, &payload, properties)
            .await;
        (
            id,
            match sent {
                Ok(confirm) => confirm.await,
                Err(e) => Err(e),
            },
        )
    });
    let first = std::future::poll_fn(|cx| Poll::Ready(publish.as_mut().poll(cx))).await;
    pending.insert(id, job.ticket, job.record);
    match first {
        Poll::Ready(done) => in_flight.push(Box::pin(std::future::ready(done))),
        Poll::Pending => in_flight.push(publish),
    }
}

/// Publishes on `channel` until the job channel closes, at most `max_pending` awaiting their
/// confirm (jobs are taken only while there is room, as many at once as are queued and fit:
/// lapin writes whatever frames it has queued in one go, so publishing them back to back keeps
/// the writes large). A publish unconfirmed after `ack_timeout` fails as retriable. On
/// `purge`, every outstanding ticket comes back as a retriable refusal at once. While the
/// broker blocks publishers, nothing new goes out and no deadline runs.
pub async fn run<T: Send + 'static>(
    channel: Channel,
    exchange: ShortString,
    mut jobs: mpsc::Receiver<Job<T>>,
    outcomes: mpsc::UnboundedSender<Outcome<T>>,
    signals: Signals,
    max_pending: usize,
    ack_timeout: Duration,
) {
    let Signals { purge, mut blocked } = signals;
    let mut is_blocked = blocked.borrow().is_some();
    let mut pending = Pending::new(ack_timeout);
    // The broker closed the channel refusing this user the exchange: every later publish (a
    // dead letter to the same exchange included) would be refused the same way.
    let mut refused_for: Option<Refusal> = None;
    let mut in_flight: FuturesUnordered<InFlight> = FuturesUnordered::new();
    // Returns whose publish has not settled yet.
    let mut returns: Vec<Return> = Vec::new();
    // The event ids and routing keys of the latest publishes given up for want of a confirm
    // (at most `max_pending`): a return of one of them may still come, harmlessly.
    let mut timed_out: std::collections::VecDeque<(bytes::Bytes, String)> = Default::default();
    let mut batch = Vec::with_capacity(BATCH.min(max_pending));
    // One publish in flight per key: a nack must not let a later event of its key overtake it.
    let mut gate: KeyGate<Job<T>> = KeyGate::default();
    loop {
        let room = match is_blocked {
            true => 0,
            false => max_pending
                .saturating_sub(pending.len() + gate.waiting())
                .min(BATCH),
        };
        tokio::select! {
            Ok(()) = blocked.changed() => {
                let now = blocked.borrow_and_update().is_some();
                if is_blocked && !now {
                    pending.restart_clocks();
                }
                is_blocked = now;
            }
            taken = jobs.recv_many(&mut batch, room), if room > 0 => {
                if taken == 0 {
                    break;
                }
                for job in batch.drain(..) {
                    if let Some(r) = &refused_for {
                        let returned = Some(Returned::from(job.record));
                        let _ = outcomes.send(Outcome { ticket: job.ticket, result: Err(r.clone()), returned });
                        continue;
                    }
                    let key = job.record.key.clone();
                    match gate.admit(key.as_ref(), &job.record.event_id.clone(), job) {
                        Admit::Publish(job) => {
                            start(&channel, &exchange, &mut pending, &mut in_flight, job).await;
                        }
                        Admit::Parked => {}
                        Admit::HandBack(job) => {
                            give_back(&outcomes, "RabbitMQ", HELD, [(job.ticket, job.record)]);
                        }
                    }
                }
            }
            mut batch = settled(&mut in_flight), if !in_flight.is_empty() => {
                batch.sort_unstable_by_key(|(id, _)| *id);
                let mut answers = Vec::with_capacity(batch.len());
                for (id, confirmed) in batch {
                    let (said, ret) = read_confirm(confirmed);
                    if let Err(r) = &said {
                        if r.class == Class::NotAuthorized {
                            refused_for = Some(r.clone());
                        }
                    }
                    returns.extend(ret);
                    // Absent: it timed out, or was purged, before its confirm came.
                    answers.push((id, pending.remove(id), said));
                }
                let own = if returns.is_empty() {
                    Vec::new()
                } else {
                    let keys: Vec<_> = answers
                        .iter()
                        .map(|(_, p, _)| p.as_ref().map(|(_, r)| (r.event_id.as_ref(), r.topic.as_str())))
                        .collect();
                    let own = take_returns(&keys, &mut returns);
                    // A return no awaited publish is: nothing will take it.
                    returns.retain(|r| {
                        let awaited = pending.any(|rec| r.is(&rec.event_id, &rec.topic));
                        if awaited {
                            return true;
                        }
                        if timed_out.iter().any(|(id, key)| r.is(id, key)) {
                            tracing::warn!(message_id = ?r.message_id, routing_key = %r.routing_key, code = r.code,
                                "RabbitMQ returned a message given up before for want of a confirm (it is published again from the slot)");
                        } else {
                            // Never expected: the batch holds every confirm lapin completed
                            // before the returned one's (see `settled`).
                            tracing::error!(message_id = ?r.message_id, routing_key = %r.routing_key, code = r.code,
                                "RabbitMQ returned a message whose publish already counted as delivered: no queue took this event; publish it again (for example with source = poll)");
                        }
                        false
                    });
                    own
                };
                let mut own = own.into_iter();
                let mut next = Vec::new();
                for (id, p, said) in answers {
                    let ret = own.next().flatten();
                    let Some((ticket, record)) = p else { continue };
                    let result = outcome(id, exchange.as_str(), &record.topic, said, ret);
                    let parked = match &result {
                        Err(r) if !r.class.is_final() => gate.failed(record.key.as_ref(), &record.event_id),
                        _ => {
                            next.extend(gate.settled(record.key.as_ref()));
                            Vec::new()
                        }
                    };
                    let returned = result.is_err().then(|| Returned::from(record));
                    let _ = outcomes.send(Outcome { ticket, result, returned });
                    give_back(&outcomes, "RabbitMQ", HELD, parked.into_iter().map(|j| (j.ticket, j.record)));
                }
                for job in next {
                    start(&channel, &exchange, &mut pending, &mut in_flight, job).await;
                }
            }
            () = pending.tick(), if pending.armed() && !is_blocked => {
                let why = format!("no publisher confirm within {ack_timeout:?} (rabbitmq_ack_timeout_ms)");
                let expired = pending.expired();
                let mut parked = Vec::new();
                for (_, record) in &expired {
                    parked.extend(gate.failed(record.key.as_ref(), &record.event_id));
                    if timed_out.len() >= max_pending.max(1) {
                        timed_out.pop_front();
                    }
                    timed_out.push_back((record.event_id.clone(), record.topic.clone()));
                }
                // The failures first: what the pipeline reports is why, not what waited.
                give_back(&outcomes, "RabbitMQ", &why, expired);
                give_back(&outcomes, "RabbitMQ", HELD, parked.into_iter().map(|j| (j.ticket, j.record)));
            }
            _ = purge.notified() => {
                in_flight = FuturesUnordered::new();
                returns.clear();
                let parked = gate.drain().into_iter().map(|j| (j.ticket, j.record));
                let queued = std::iter::from_fn(|| jobs.try_recv().ok().map(|j| (j.ticket, j.record)));
                let all = pending.drain().into_iter().chain(parked).chain(queued);
                give_back(&outcomes, "RabbitMQ", "publish abandoned (purged)", all);
            }
        }
    }
}
