//! Routing parity with Debezium's outbox router: several outbox tables in one publication,
//! each with its own topic template; a partition column; tombstones only when asked; UPDATEs
//! of outbox rows handled by `on_update`, DELETEs ignored.

use std::time::Duration;

use crate::common::*;
use pgoutbox::outbox::{OutboxConfig, TableName, UpdatePolicy};
use pgoutbox::pipeline::StreamError;
use pgoutbox::Config;

const BILLING_SQL: &str = "CREATE SCHEMA billing;
    CREATE TABLE billing.outbox (id uuid PRIMARY KEY, aggregatetype text NOT NULL,
      aggregateid text, type text, payload jsonb, shard int);
    ALTER PUBLICATION pgoutbox_pub ADD TABLE billing.outbox;
    ALTER PUBLICATION pgoutbox_pub SET (publish = 'insert, update, delete');";

fn routed(env: &Env) -> Config {
    let mut cfg = env.config();
    cfg.outbox.tombstone_on_empty_payload = true;
    cfg.extra_tables.push(OutboxConfig {
        table: TableName::parse("billing.outbox").unwrap(),
        topic_template: "billing.${routedByValue}".parse().unwrap(),
        partition_column: Some("shard".into()),
        message_prefix: None,
        ..OutboxConfig::default()
    });
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_partitions_tombstones_and_updates() {
    let env = Env::start().await;
    env.db.batch_execute(BILLING_SQL).await.unwrap();
    env.kafka.create_topic("billing.invoice", 3).unwrap();
    let running = env.spawn_streamer(routed(&env));
    env.wait_streaming().await;
    env.db
        .batch_execute(
            "INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload)
               VALUES ('00000000-0000-4000-8000-000000000001', 'order', 'o-1', 'OrderDeleted', NULL);
             INSERT INTO billing.outbox VALUES
               ('00000000-0000-4000-8000-000000000002', 'invoice', 'i-1', 'InvoiceSent', '{\"n\": 1}', 2),
               ('00000000-0000-4000-8000-000000000003', 'invoice', 'i-2', 'InvoiceSent', '{\"n\": 2}', 0);
             UPDATE outbox SET type = 'Changed';
             DELETE FROM outbox;
             INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload)
               VALUES ('00000000-0000-4000-8000-000000000004', 'order', 'o-1', 'OrderCreated', '{}');",
        )
        .await
        .unwrap();
    let reader = pgoutbox::embedded::TopicReader::new(
        env.kafka.bootstrap_servers(),
        &[("outbox.event.order", PARTITIONS), ("billing.invoice", 3)],
    )
    .unwrap();
    let got = reader.read(4, Duration::from_secs(30)).await.unwrap();
    let extra = reader.read(1, Duration::from_secs(1)).await.unwrap();
    assert!(extra.is_empty(), "only the four inserts: {extra:?}");
    let by = |n: u8| {
        got.iter()
            .find(|r| header_str(r, "id").ends_with(&format!("{n}")))
            .unwrap_or_else(|| panic!("event {n} missing from {got:?}"))
    };
    // A NULL payload with tombstone_on_empty_payload: no value at all.
    assert_eq!(by(1).payload, None);
    assert_eq!(by(1).topic, "outbox.event.order");
    // The second table's own template, and its partition column.
    assert_eq!(
        (by(2).topic.as_str(), by(2).partition),
        ("billing.invoice", 2)
    );
    assert_eq!(
        (by(3).topic.as_str(), by(3).partition),
        ("billing.invoice", 0)
    );
    // The UPDATE (warn) and the DELETE did not stop the stream: the next insert arrived.
    assert_eq!(header_str(by(4), "type"), "OrderCreated");
    running.stop().await;

    // on_update = fatal: the next outbox UPDATE stops the stream with an error naming it.
    let mut cfg = routed(&env);
    cfg.on_update = UpdatePolicy::Fatal;
    let running = env.spawn_streamer(cfg);
    env.wait_streaming().await;
    env.db
        .batch_execute(
            "INSERT INTO billing.outbox VALUES ('00000000-0000-4000-8000-000000000005', 'invoice', 'i-3', 'T', '{}', 1);
             UPDATE billing.outbox SET shard = 0 WHERE aggregateid = 'i-3';",
        )
        .await
        .unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(30), running.task)
        .await
        .expect("on_update = fatal stops the streamer")
        .unwrap();
    match ended {
        Err(e @ StreamError::OutboxUpdate { .. }) => {
            assert!(e.is_fatal());
            assert!(e.to_string().contains("billing.outbox"), "{e}");
        }
        other => panic!("expected the outbox-update error, got {other:?}"),
    }
}
