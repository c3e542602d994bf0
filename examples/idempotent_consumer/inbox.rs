//! The idempotent-consumer pattern for pgoutbox's at-least-once (or any) delivery: each event
//! is applied in a PostgreSQL transaction that also records its `id` header in an inbox
//! table, so a duplicate finds its id already there and changes nothing. The Kafka offset is
//! committed only after that transaction commits, so a crash in between replays the event
//! and the inbox absorbs it.

use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::Message;
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

/// Why an event could not be handled.
#[derive(Debug, thiserror::Error)]
pub enum InboxError {
    #[error("record at {topic}[{partition}]@{offset} has no id header")]
    NoId {
        topic: String,
        partition: i32,
        offset: i64,
    },
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("Kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
}

/// What happened to one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    Duplicate,
}

/// Applies one event unless its id is in the inbox; both in one transaction.
pub async fn apply_once(
    db: &mut Client,
    id: &str,
    key: Option<&str>,
) -> Result<Outcome, InboxError> {
    let tx = db.transaction().await?;
    let fresh = tx
        .execute(
            "INSERT INTO inbox (event_id) VALUES ($1) ON CONFLICT DO NOTHING",
            &[&id],
        )
        .await?;
    if fresh == 0 {
        // Seen before: the transaction changes nothing.
        tx.rollback().await?;
        return Ok(Outcome::Duplicate);
    }
    // The business effect, in the same transaction as the inbox row.
    tx.execute(
        "INSERT INTO aggregate_events (aggregate_id, events) VALUES ($1, 1)
         ON CONFLICT (aggregate_id) DO UPDATE SET events = aggregate_events.events + 1",
        &[&key.unwrap_or("")],
    )
    .await?;
    tx.commit().await?;
    Ok(Outcome::Applied)
}

/// Handles one record: apply it once, then commit its offset.
pub async fn handle(
    consumer: &StreamConsumer,
    db: &mut Client,
    m: &BorrowedMessage<'_>,
) -> Result<Outcome, InboxError> {
    let id = m
        .headers()
        .and_then(|h| h.iter().find(|h| h.key == "id").and_then(|h| h.value))
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .ok_or_else(|| InboxError::NoId {
            topic: m.topic().to_owned(),
            partition: m.partition(),
            offset: m.offset(),
        })?;
    let key = m.key().map(String::from_utf8_lossy);
    let outcome = apply_once(db, &id, key.as_deref()).await?;
    // Only now: a crash before this line replays the record, and the inbox absorbs it.
    consumer.commit_message(m, CommitMode::Sync)?;
    Ok(outcome)
}

/// Counts of a run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub applied: u64,
    pub duplicates: u64,
}

/// Consumes until no record arrives for `idle` (`None`: forever).
pub async fn run(
    consumer: &StreamConsumer,
    db: &mut Client,
    idle: Option<Duration>,
) -> Result<Stats, InboxError> {
    let mut stats = Stats::default();
    loop {
        let next = match idle {
            Some(idle) => match tokio::time::timeout(idle, consumer.recv()).await {
                Ok(m) => m?,
                Err(_) => return Ok(stats),
            },
            None => consumer.recv().await?,
        };
        match handle(consumer, db, &next).await? {
            Outcome::Applied => stats.applied += 1,
            Outcome::Duplicate => stats.duplicates += 1,
        }
    }
}

/// A consumer for this pattern: read_committed (exactly-once producers' aborted records are
/// skipped), offsets committed by hand, from the beginning for a new group.
pub fn consumer_config(brokers: &str, group: &str) -> rdkafka::ClientConfig {
    let mut c = rdkafka::ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed");
    c
}
