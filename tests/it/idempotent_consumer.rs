//! The idempotent consumer of `examples/idempotent_consumer` (its very code, included here):
//! a topic holding every event two or three times is applied once per event, and replaying
//! the topic from the beginning applies nothing again.

#[path = "../../examples/idempotent_consumer/inbox.rs"]
mod inbox;

use std::collections::HashMap;
use std::time::Duration;

use crate::common::*;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_are_applied_once_and_a_replay_changes_nothing() {
    let env = Env::start().await;
    let topic = "outbox.event.order";
    // 30 events over 5 aggregates; each sent 1–3 times, duplicates interleaved like a
    // resend after a crash.
    let producer: ThreadedProducer<DefaultProducerContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", env.kafka.bootstrap_servers())
        .create()
        .unwrap();
    let mut sent = 0;
    let mut want: HashMap<String, i64> = HashMap::new();
    for round in 0..3 {
        for i in 0..30u32 {
            if round > i % 3 {
                continue;
            }
            let id = format!("event-{i}");
            let key = format!("agg-{}", i % 5);
            if round == 0 {
                *want.entry(key.clone()).or_default() += 1;
            }
            let headers = OwnedHeaders::new().insert(Header {
                key: "id",
                value: Some(id.as_bytes()),
            });
            producer
                .send(
                    BaseRecord::to(topic)
                        .key(&key)
                        .payload("{}")
                        .headers(headers),
                )
                .unwrap();
            sent += 1;
        }
    }
    producer.flush(Duration::from_secs(10)).unwrap();

    let mut db = connect(&env.pg.url()).await;
    db.batch_execute(inbox::SCHEMA).await.unwrap();
    let consume = |group: &str| -> StreamConsumer {
        let c: StreamConsumer = inbox::consumer_config(env.kafka.bootstrap_servers(), group)
            .create()
            .unwrap();
        c.subscribe(&[topic]).unwrap();
        c
    };
    let first = consume("g1");
    let stats = inbox::run(&first, &mut db, Some(Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(stats.applied, 30, "{stats:?}");
    assert_eq!(stats.applied + stats.duplicates, sent);
    assert!(stats.duplicates > 0);

    let applied: HashMap<String, i64> = db
        .query("SELECT aggregate_id, events FROM aggregate_events", &[])
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(applied, want);

    // Offsets were committed after each transaction: the same group has nothing left.
    drop(first);
    let again = consume("g1");
    let stats = inbox::run(&again, &mut db, Some(Duration::from_secs(3)))
        .await
        .unwrap();
    assert_eq!(stats, inbox::Stats::default());

    // A replay from the beginning (a new group) finds every id in the inbox.
    let replay = consume("g2");
    let stats = inbox::run(&replay, &mut db, Some(Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!((stats.applied, stats.duplicates), (0, sent));
    let total: i64 = db
        .query_one("SELECT sum(events)::bigint FROM aggregate_events", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(total, 30);
}
