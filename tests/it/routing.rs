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

/// docs/scaling.md: the outbox split over two tables, each with its own publication, slot and
/// instance (the SQL is the page's). Both deliver everything, once, and each slot advances.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_slots_with_an_instance_each_split_the_outbox() {
    let env = Env::start().await;
    env.db
        .batch_execute(
            "CREATE SCHEMA IF NOT EXISTS billing;
             CREATE TABLE billing.outbox (LIKE public.outbox INCLUDING ALL);
             CREATE PUBLICATION pgoutbox_billing FOR TABLE billing.outbox WITH (publish = 'insert');",
        )
        .await
        .unwrap();
    let main = env.config();
    let mut billing = env.config();
    billing.outbox.table = TableName::parse("billing.outbox").unwrap();
    billing.publication = "pgoutbox_billing".into();
    billing.slot = "pgoutbox_billing".into();
    let a = env.spawn_streamer(main);
    let b = env.spawn_streamer(billing);
    wait_for("both slots streamed", Duration::from_secs(30), || async {
        let n: i64 = env
            .db
            .query_one(
                "SELECT count(*) FROM pg_replication_slots
                 WHERE active AND slot_name IN ('pgoutbox', 'pgoutbox_billing')",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        n == 2
    })
    .await;

    let public = workload(0, 100);
    let other = workload(100_000, 100);
    env.commit(&public).await;
    for tx in &other {
        let sql = tx_sql(tx, "COMMIT").replace("INSERT INTO outbox", "INSERT INTO billing.outbox");
        env.db.batch_execute(&sql).await.unwrap();
    }
    let ids: std::collections::HashSet<String> = public
        .iter()
        .chain(&other)
        .flatten()
        .map(|e| e.id.clone())
        .collect();
    let got = read_until_all(&env.reader(), &ids, Duration::from_secs(60)).await;
    assert_eq!(got.len(), ids.len(), "each event once");
    // Per-key order holds within a slot; the two tables share keys, so each is checked alone.
    let first: std::collections::HashSet<String> =
        public.iter().flatten().map(|e| e.id.clone()).collect();
    let (from_public, from_billing): (Vec<_>, Vec<_>) = got
        .into_iter()
        .partition(|r| first.contains(&header_str(r, "id")));
    assert_eq!(order_violations(&from_public), 0);
    assert_eq!(order_violations(&from_billing), 0);

    let end = env.current_lsn().await;
    wait_for("both slots confirmed", Duration::from_secs(30), || async {
        let rows = env
            .db
            .query(
                "SELECT slot_name::text FROM pg_replication_slots
                 WHERE confirmed_flush_lsn >= $1::text::pg_lsn",
                &[&end.to_string()],
            )
            .await
            .unwrap();
        let names: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        names.contains(&"pgoutbox".to_owned()) && names.contains(&"pgoutbox_billing".to_owned())
    })
    .await;
    a.stop().await;
    b.stop().await;
}
