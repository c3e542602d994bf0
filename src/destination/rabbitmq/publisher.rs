//! The publishing task: takes jobs in order, publishes each on one confirm-mode channel, and
//! hands back every ticket exactly once with its outcome: the broker's ack, or a refusal (a
//! nack, a returned message, a closed channel, no confirm in time).
//!
//! Publishes are pipelined: lapin numbers a publish and queues its frames synchronously, on
//! the first poll of `basic_publish`, so polling each publish once as it is taken keeps the
//! wire order the commit order; the rest (the write, then the confirm) completes
//! concurrently.

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
use tokio::sync::{mpsc, Notify};

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

/// What a confirm says about the record.
fn outcome(
    id: u64,
    exchange: &str,
    routing_key: &str,
    c: Confirmation,
) -> Result<Receipt, Refusal> {
    match c {
        Confirmation::Ack(None) => Ok(Receipt {
            partition: 0,
            offset: i64::try_from(id).unwrap_or(i64::MAX),
        }),
        Confirmation::Ack(Some(ret)) | Confirmation::Nack(Some(ret)) => Err(Refusal {
            class: Class::Unroutable,
            message: format!(
                "RabbitMQ returned the message ({} {}): no queue is bound to exchange {exchange:?} for routing key {routing_key:?}",
                ret.reply_code, ret.reply_text
            ),
            hint: "; bind a queue to the exchange for this routing key, or route the event elsewhere",
        }),
        Confirmation::Nack(None) => Err(Refusal {
            class: Class::Refused,
            message: format!(
                "RabbitMQ nacked the message to exchange {exchange:?} with routing key {routing_key:?}"
            ),
            hint: "; a queue refused it (full, with x-overflow = reject-publish) or the broker could not store it",
        }),
        Confirmation::NotRequested => Err(Refusal::new(
            Class::Retriable,
            "RabbitMQ: the channel is not in confirm mode",
        )),
    }
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

/// Publishes on `channel` until the job channel closes, at most `max_pending` awaiting their
/// confirm (jobs are taken only while there is room, as many at once as are queued and fit:
/// lapin writes whatever frames it has queued in one go, so publishing them back to back keeps
/// the writes large). A publish unconfirmed after `ack_timeout` fails as retriable. On
/// `purge`, every outstanding ticket comes back as a retriable refusal at once.
pub async fn run<T: Send + 'static>(
    channel: Channel,
    exchange: ShortString,
    mut jobs: mpsc::Receiver<Job<T>>,
    outcomes: mpsc::UnboundedSender<Outcome<T>>,
    purge: Arc<Notify>,
    max_pending: usize,
    ack_timeout: Duration,
) {
    let mut pending = Pending::new(ack_timeout);
    // The broker closed the channel refusing this user the exchange: every later publish (a
    // dead letter to the same exchange included) would be refused the same way.
    let mut refused_for: Option<Refusal> = None;
    let mut in_flight: FuturesUnordered<InFlight> = FuturesUnordered::new();
    let mut batch = Vec::with_capacity(BATCH.min(max_pending));
    let options = BasicPublishOptions {
        mandatory: true,
        immediate: false,
    };
    loop {
        let room = max_pending.saturating_sub(pending.len()).min(BATCH);
        tokio::select! {
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
                    let id = pending.next_id();
                    let payload = job.record.payload.clone().unwrap_or_default();
                    let (channel, exchange) = (channel.clone(), exchange.clone());
                    let mut publish: InFlight = Box::pin(async move {
                        let sent = channel
                            .basic_publish(exchange, job.routing_key, options, &payload, job.properties)
                            .await;
                        (id, match sent {
                            Ok(confirm) => confirm.await,
                            Err(e) => Err(e),
                        })
                    });
                    // Queue the frames now, in order (see the module comment).
                    let first =
                        std::future::poll_fn(|cx| Poll::Ready(publish.as_mut().poll(cx))).await;
                    pending.insert(id, job.ticket, job.record);
                    match first {
                        Poll::Ready(done) => in_flight.push(Box::pin(std::future::ready(done))),
                        Poll::Pending => in_flight.push(publish),
                    }
                }
            }
            Some((id, confirmed)) = in_flight.next() => {
                // Absent: it timed out, or was purged, before its confirm came.
                let Some((ticket, record)) = pending.remove(id) else { continue };
                let result = match confirmed {
                    Ok(c) => outcome(id, exchange.as_str(), &record.topic, c),
                    Err(e) => {
                        let r = failed(&e);
                        if r.class == Class::NotAuthorized {
                            refused_for = Some(r.clone());
                        }
                        Err(r)
                    }
                };
                let returned = result.is_err().then(|| Returned::from(record));
                let _ = outcomes.send(Outcome { ticket, result, returned });
            }
            () = pending.tick(), if pending.armed() => {
                let why = format!("no publisher confirm within {ack_timeout:?} (rabbitmq_ack_timeout_ms)");
                give_back(&outcomes, "RabbitMQ", &why, pending.expired());
            }
            _ = purge.notified() => {
                in_flight = FuturesUnordered::new();
                let queued = std::iter::from_fn(|| jobs.try_recv().ok().map(|j| (j.ticket, j.record)));
                let all = pending.drain().into_iter().chain(queued);
                give_back(&outcomes, "RabbitMQ", "publish abandoned (purged)", all);
            }
        }
    }
}
