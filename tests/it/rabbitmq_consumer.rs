//! The consumer of `examples/rabbitmq_consumer` (its very code, included here), on a real
//! throwaway RabbitMQ node and PostgreSQL: duplicates are applied once; a handler that fails
//! twice is retried with growing delays and then applied; one that always fails is parked
//! after `max_attempts`; nothing is lost.

#[path = "../../examples/rabbitmq_consumer/consumer.rs"]
mod consumer;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::common::*;
use consumer::{Handled, Settings};
use lapin::options::{BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_once_failures_retried_with_backoff_then_parked_nothing_lost() {
    let env = Env::start().await;
    env.db.batch_execute(consumer::SCHEMA).await.unwrap();
    let node = rabbit::start().await;
    let settings = Settings {
        exchange: rabbit::EXCHANGE.into(),
        queue: "orders".into(),
        binding: "outbox.event.order".into(),
        max_attempts: 4,
        base_delay: Duration::from_millis(200),
    };
    let amqp = lapin::Connection::connect(&node.url(), Default::default())
        .await
        .unwrap();
    let channel = amqp.create_channel().await.unwrap();
    consumer::declare(&channel, &settings).await.unwrap();

    // 30 events over 5 aggregates, each published 1–3 times (as resends after crashes would),
    // plus one that fails twice before it succeeds and two that always fail.
    let publisher = amqp.create_channel().await.unwrap();
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let publish = |id: String, key: String| {
        let publisher = publisher.clone();
        async move {
            let mut headers = FieldTable::default();
            headers.insert("key".into(), AMQPValue::LongString(key.as_str().into()));
            let props = BasicProperties::default()
                .with_message_id(id.as_str().into())
                .with_headers(headers);
            let confirm = publisher
                .basic_publish(
                    rabbit::EXCHANGE.into(),
                    "outbox.event.order".into(),
                    BasicPublishOptions::default(),
                    b"{}",
                    props,
                )
                .await
                .unwrap()
                .await
                .unwrap();
            assert!(confirm.is_ack());
        }
    };
    let mut want: HashMap<String, i64> = HashMap::new();
    let mut published = 0;
    for round in 0..3 {
        for i in 0..30u32 {
            if round > i % 3 {
                continue;
            }
            let key = format!("agg-{}", i % 5);
            if round == 0 {
                *want.entry(key.clone()).or_default() += 1;
            }
            publish(format!("event-{i}"), key).await;
            published += 1;
        }
    }
    publish("flaky".into(), "agg-flaky".into()).await;
    publish("bad-1".into(), "agg-bad".into()).await;
    publish("bad-2".into(), "agg-bad".into()).await;
    *want.entry("agg-flaky".into()).or_default() += 1;

    let fails = |e: &consumer::Event| match e.id.as_str() {
        "flaky" if e.attempt <= 2 => Some(format!("flaky failure on attempt {}", e.attempt)),
        "bad-1" | "bad-2" => Some("always fails".to_owned()),
        _ => None,
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let pg = env.pg.url();
    let (s, url) = (settings.clone(), node.url());
    let task = tokio::spawn(async move {
        let mut db = connect(&pg).await;
        let amqp = lapin::Connection::connect(&url, Default::default())
            .await
            .unwrap();
        let channel = amqp.create_channel().await.unwrap();
        let _ = consumer::run(&channel, &mut db, &s, &fails, |e, h| {
            let _ = tx.send((e.id.clone(), e.attempt, h.clone(), Instant::now()));
        })
        .await;
    });

    // Until every event is applied or parked.
    let mut seen: Vec<(String, u32, Handled, Instant)> = Vec::new();
    let settled = |seen: &[(String, u32, Handled, Instant)]| {
        let applied = seen.iter().filter(|s| s.2 == Handled::Applied).count();
        let parked = seen.iter().filter(|s| s.2 == Handled::Parked).count();
        applied == 31 && parked == 2
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !settled(&seen) {
        assert!(Instant::now() < deadline, "not settled: {seen:?}");
        if let Ok(Some(s)) = tokio::time::timeout(Duration::from_millis(500), rx.recv()).await {
            seen.push(s);
        }
    }
    task.abort();

    // Duplicates applied once: the business table counts each event once.
    let rows = env
        .db
        .query("SELECT aggregate_id, events FROM aggregate_events", &[])
        .await
        .unwrap();
    let got: HashMap<String, i64> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(got, want, "each event applied exactly once");
    let duplicates = seen.iter().filter(|s| s.2 == Handled::Duplicate).count();
    assert_eq!(
        duplicates,
        published - 30,
        "every extra copy recognised as one"
    );

    // The flaky event: two retries, then applied.
    let flaky: Vec<_> = seen.iter().filter(|s| s.0 == "flaky").collect();
    let fates: Vec<_> = flaky.iter().map(|s| s.2.clone()).collect();
    assert_eq!(
        fates,
        [Handled::Retried(1), Handled::Retried(2), Handled::Applied]
    );

    // The bad events: retried with growing delays, then parked with their error.
    for id in ["bad-1", "bad-2"] {
        let tries: Vec<_> = seen.iter().filter(|s| s.0 == id).collect();
        let fates: Vec<_> = tries.iter().map(|s| s.2.clone()).collect();
        assert_eq!(
            fates,
            [
                Handled::Retried(1),
                Handled::Retried(2),
                Handled::Retried(3),
                Handled::Parked
            ]
        );
        for (k, pair) in tries.windows(2).enumerate() {
            let gap = pair[1].3 - pair[0].3;
            let delay = settings.delay(k as u32 + 1);
            assert!(
                gap >= delay.mul_f64(0.9),
                "{id}: retry {} after {gap:?}, expected at least {delay:?}",
                k + 1
            );
        }
    }
    let parked = amqp.create_channel().await.unwrap();
    let mut last_errors = Vec::new();
    while let Ok(Some(m)) = parked
        .basic_get(
            settings.parked_queue().as_str().into(),
            BasicGetOptions { no_ack: true },
        )
        .await
    {
        let err = match m
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get(consumer::LAST_ERROR))
        {
            Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
            other => format!("{other:?}"),
        };
        last_errors.push(err);
    }
    assert_eq!(
        last_errors.len(),
        2,
        "both bad events parked: {last_errors:?}"
    );
    assert!(last_errors.iter().all(|e| e.contains("always fails")));
    eprintln!(
        "RabbitMQ consumer: {published} copies of 30 events + 3: {duplicates} duplicates recognised, flaky applied after 2 retries, 2 parked after 4 attempts, delays {:?}",
        (1..4).map(|a| settings.delay(a)).collect::<Vec<_>>()
    );
}
