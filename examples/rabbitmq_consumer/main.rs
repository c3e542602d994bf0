//! A consumer of pgoutbox's RabbitMQ exchange: every event applied once (inbox table), acked
//! only after its transaction commits, failures retried with growing delays and parked after
//! a few tries. See `consumer.rs` for the pattern.
//!
//!   AMQP_URL=amqp://guest:guest@localhost:5672/%2f DATABASE_URL=postgres://… \
//!     cargo run --example rabbitmq_consumer

mod consumer;

use std::time::Duration;

use anyhow::Context;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let env = |k: &str| std::env::var(k).with_context(|| format!("set {k}"));
    let settings = consumer::Settings {
        exchange: std::env::var("EXCHANGE").unwrap_or_else(|_| "outbox".into()),
        queue: std::env::var("QUEUE").unwrap_or_else(|_| "orders".into()),
        binding: std::env::var("BINDING").unwrap_or_else(|_| "outbox.event.#".into()),
        max_attempts: 5,
        base_delay: Duration::from_secs(1),
    };
    let (mut db, conn) = tokio_postgres::connect(&env("DATABASE_URL")?, tokio_postgres::NoTls)
        .await
        .context("connecting to PostgreSQL")?;
    tokio::spawn(conn);
    db.batch_execute(consumer::SCHEMA).await?;
    let amqp = lapin::Connection::connect(&env("AMQP_URL")?, Default::default())
        .await
        .context("connecting to RabbitMQ")?;
    let channel = amqp.create_channel().await?;
    consumer::declare(&channel, &settings).await?;
    consumer::run(&channel, &mut db, &settings, &|_| None, |e, h| {
        eprintln!("{} (attempt {}): {h:?}", e.id, e.attempt)
    })
    .await?;
    Ok(())
}
