//! The consumer side of the outbox on RabbitMQ, as the material behind pgoutbox describes it:
//!
//! - **ack after the work**: each message is applied in a PostgreSQL transaction that also
//!   records its `message_id` in an inbox table; the message is acked only after that commit,
//!   so a crash in between redelivers it and the inbox absorbs the duplicate;
//! - **retries with growing delays**: a message whose handling fails is republished to a retry
//!   queue of its attempt (`<queue>.retry.1`, `.2`, … with per-queue TTLs `base`, `2·base`,
//!   `4·base`, …) whose dead-letter route leads back to the work queue, then acked;
//! - **parking**: after `max_attempts` the message goes to `<queue>.parked` with its last
//!   error, for a person to look at.
//!
//! A republish waits for its publisher confirm before the original is acked: a crash between
//! the two can only repeat the message, which the inbox absorbs.

use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel};
use tokio_postgres::Client;

/// The inbox, and the table this example's business logic writes (events per aggregate).
pub const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS inbox (
        event_id     text        PRIMARY KEY,
        processed_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE TABLE IF NOT EXISTS aggregate_events (
        aggregate_id text   PRIMARY KEY,
        events       bigint NOT NULL
    );";

/// The header counting a message's attempts (1 on its first delivery).
pub const ATTEMPT: &str = "x-attempt";
/// The header a parked message carries its last error in.
pub const LAST_ERROR: &str = "x-last-error";

/// Where the consumer reads and how it retries.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The exchange pgoutbox publishes to.
    pub exchange: String,
    /// The work queue, and the routing-key pattern it is bound with.
    pub queue: String,
    pub binding: String,
    /// Tries before a message is parked.
    pub max_attempts: u32,
    /// The first retry's delay; each next one doubles.
    pub base_delay: Duration,
}

impl Settings {
    pub fn retry_queue(&self, attempt: u32) -> String {
        format!("{}.retry.{attempt}", self.queue)
    }

    pub fn parked_queue(&self) -> String {
        format!("{}.parked", self.queue)
    }

    /// The delay after failed attempt `attempt` (1-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        self.base_delay * 2u32.saturating_pow(attempt.saturating_sub(1))
    }
}

/// One message as the handler sees it.
#[derive(Debug, Clone)]
pub struct Event {
    pub id: String,
    pub key: String,
    pub attempt: u32,
}

/// What happened to one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handled {
    Applied,
    Duplicate,
    /// Failed; republished to the retry queue of this attempt.
    Retried(u32),
    /// Failed `max_attempts` times; moved to the parked queue.
    Parked,
}

#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error("RabbitMQ: {0}")]
    Rabbit(#[from] lapin::Error),
    #[error("RabbitMQ did not confirm the republish to {0}")]
    NotConfirmed(String),
}

/// Declares the work queue (bound to the exchange), one retry queue per attempt (a TTL, then
/// dead-lettered back to the work queue) and the parked queue. Idempotent.
pub async fn declare(channel: &Channel, s: &Settings) -> Result<(), lapin::Error> {
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare(s.queue.as_str().into(), durable, FieldTable::default())
        .await?;
    channel
        .queue_bind(
            s.queue.as_str().into(),
            s.exchange.as_str().into(),
            s.binding.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    for attempt in 1..s.max_attempts {
        let mut args = FieldTable::default();
        let ttl = i64::try_from(s.delay(attempt).as_millis()).unwrap_or(i64::MAX);
        args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ttl));
        // Expired messages go back to the work queue through the default exchange.
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString("".into()),
        );
        args.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(s.queue.as_str().into()),
        );
        channel
            .queue_declare(s.retry_queue(attempt).as_str().into(), durable, args)
            .await?;
    }
    channel
        .queue_declare(
            s.parked_queue().as_str().into(),
            durable,
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

fn header<'a>(d: &'a Delivery, name: &str) -> Option<&'a AMQPValue> {
    d.properties.headers().as_ref()?.inner().get(name)
}

fn text(v: Option<&AMQPValue>) -> String {
    match v {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        Some(AMQPValue::ShortString(s)) => s.to_string(),
        _ => String::new(),
    }
}

fn attempt_of(d: &Delivery) -> u32 {
    match header(d, ATTEMPT) {
        Some(AMQPValue::LongUInt(n)) => *n,
        Some(AMQPValue::LongLongInt(n)) => u32::try_from(*n).unwrap_or(1),
        _ => 1,
    }
}

/// Applies one event unless its id is in the inbox; both in one transaction. `fails` stands
/// for the business rules: an error rolls everything back.
pub async fn apply_once(
    db: &mut Client,
    e: &Event,
    fails: &(dyn Fn(&Event) -> Option<String> + Send + Sync),
) -> Result<Handled, String> {
    let tx = db.transaction().await.map_err(|e| e.to_string())?;
    let fresh = tx
        .execute(
            "INSERT INTO inbox (event_id) VALUES ($1) ON CONFLICT DO NOTHING",
            &[&e.id],
        )
        .await
        .map_err(|e| e.to_string())?;
    if fresh == 0 {
        // Seen before (dropping the transaction rolls it back: nothing changes).
        return Ok(Handled::Duplicate);
    }
    if let Some(why) = fails(e) {
        return Err(why);
    }
    tx.execute(
        "INSERT INTO aggregate_events (aggregate_id, events) VALUES ($1, 1)
         ON CONFLICT (aggregate_id) DO UPDATE SET events = aggregate_events.events + 1",
        &[&e.key],
    )
    .await
    .map_err(|e| e.to_string())?;
    tx.commit().await.map_err(|e| e.to_string())?;
    Ok(Handled::Applied)
}

/// Republishes `d` to `queue` (through the default exchange) with `headers`, and waits for the
/// broker's confirm.
async fn republish(
    channel: &Channel,
    d: &Delivery,
    queue: &str,
    headers: FieldTable,
) -> Result<(), ConsumerError> {
    let props: BasicProperties = d.properties.clone().with_headers(headers);
    let confirm = channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            &d.data,
            props,
        )
        .await?
        .await?;
    match confirm.is_ack() {
        true => Ok(()),
        false => Err(ConsumerError::NotConfirmed(queue.into())),
    }
}

/// Handles one delivery: apply, or retry later, or park; then ack.
pub async fn handle(
    channel: &Channel,
    db: &mut Client,
    s: &Settings,
    d: &Delivery,
    fails: &(dyn Fn(&Event) -> Option<String> + Send + Sync),
) -> Result<(Event, Handled), ConsumerError> {
    let id = d
        .properties
        .message_id()
        .as_ref()
        .map(ShortString::to_string)
        .unwrap_or_else(|| text(header(d, "id")));
    let e = Event {
        id,
        key: text(header(d, "key")),
        attempt: attempt_of(d),
    };
    let handled = match apply_once(db, &e, fails).await {
        Ok(h) => h,
        Err(why) => {
            let mut headers = d.properties.headers().clone().unwrap_or_default();
            if e.attempt >= s.max_attempts {
                headers.insert(
                    LAST_ERROR.into(),
                    AMQPValue::LongString(LongString::from(why)),
                );
                republish(channel, d, &s.parked_queue(), headers).await?;
                Handled::Parked
            } else {
                headers.insert(ATTEMPT.into(), AMQPValue::LongUInt(e.attempt + 1));
                republish(channel, d, &s.retry_queue(e.attempt), headers).await?;
                Handled::Retried(e.attempt)
            }
        }
    };
    // Only now: the work is committed, or the message is safely elsewhere.
    d.ack(BasicAckOptions::default()).await?;
    Ok((e, handled))
}

/// Consumes the work queue until the channel closes (or `stop` resolves), reporting each
/// delivery's fate to `report`.
pub async fn run(
    channel: &Channel,
    db: &mut Client,
    s: &Settings,
    fails: &(dyn Fn(&Event) -> Option<String> + Send + Sync),
    mut report: impl FnMut(&Event, &Handled),
) -> Result<(), ConsumerError> {
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    channel.basic_qos(32, BasicQosOptions::default()).await?;
    let mut deliveries = channel
        .basic_consume(
            s.queue.as_str().into(),
            "outbox-consumer".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    while let Some(d) = deliveries.next().await {
        let (e, handled) = handle(channel, db, s, &d?, fails).await?;
        report(&e, &handled);
    }
    Ok(())
}
