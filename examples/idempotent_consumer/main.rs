//! An idempotent consumer of pgoutbox's topics: every event applied once, however often
//! Kafka delivers it. See `inbox.rs` for the pattern.
//!
//!   BROKERS=localhost:9092 TOPICS=outbox.event.order DATABASE_URL=postgres://… \
//!     cargo run --example idempotent_consumer

mod inbox;

use anyhow::Context;
use rdkafka::consumer::{Consumer, StreamConsumer};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let env = |k: &str| std::env::var(k).with_context(|| format!("set {k}"));
    let brokers = env("BROKERS")?;
    let topics = env("TOPICS")?;
    let group = std::env::var("GROUP").unwrap_or_else(|_| "idempotent-consumer".into());
    let (mut db, conn) = tokio_postgres::connect(&env("DATABASE_URL")?, tokio_postgres::NoTls)
        .await
        .context("connecting to PostgreSQL")?;
    tokio::spawn(conn);
    db.batch_execute(inbox::SCHEMA).await?;
    let consumer: StreamConsumer = inbox::consumer_config(&brokers, &group).create()?;
    let topics: Vec<&str> = topics.split(',').collect();
    consumer.subscribe(&topics)?;
    let stats = inbox::run(&consumer, &mut db, None).await?;
    eprintln!("{stats:?}");
    Ok(())
}
