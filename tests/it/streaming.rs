//! End-to-end streaming against a real PostgreSQL and a real Kafka-protocol broker:
//! what a consumer reads, and what `pg_replication_slots.confirmed_flush_lsn` says.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use crate::common::*;

/// (a) ≥ 1,000 events in ≥ 300 transactions of 1–10 events: right topic, key, value bytes and
/// headers, per-key order kept; the slot is confirmed past the last transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_every_event_with_topic_key_value_headers_in_key_order() {
    let env = Env::start().await;
    let running = env.spawn_streamer(env.config());
    env.wait_streaming().await;

    let txs = workload(0, 330);
    let events: Vec<&Event> = txs.iter().flatten().collect();
    assert!(events.len() >= 1000, "{} events", events.len());
    env.commit(&txs).await;
    let end = env.current_lsn().await;

    let ids: HashSet<String> = events.iter().map(|e| e.id.clone()).collect();
    let reader = env.reader();
    let got = read_until_all(&reader, &ids, Duration::from_secs(60)).await;
    // Give stragglers (duplicates would be a bug here: no crash happened) a moment.
    let mut got = got;
    got.extend(
        reader
            .read(usize::MAX, Duration::from_millis(500))
            .await
            .unwrap(),
    );

    let stored = env.stored_payloads().await;
    let by_id: HashMap<&str, &Event> = events.iter().map(|e| (e.id.as_str(), *e)).collect();
    assert_eq!(got.len(), events.len(), "exactly one record per event");
    for r in &got {
        let id = header_str(r, "id");
        let e = by_id
            .get(id.as_str())
            .unwrap_or_else(|| panic!("unknown id {id}"));
        assert_eq!(r.topic, topic(&e.aggregate_type));
        assert_eq!(r.key.as_deref(), Some(e.key.as_bytes()));
        assert_eq!(header_str(r, "type"), e.kind);
        let value = stored[&e.id].as_deref().unwrap();
        assert_eq!(
            r.payload.as_deref(),
            Some(value.as_bytes()),
            "value bytes as stored"
        );
        assert_eq!(r.headers.len(), 2, "exactly the id and type headers");
    }
    assert_eq!(order_violations(&got), 0);

    env.wait_confirmed(end, Duration::from_secs(10)).await;
    running.stop().await;
}

/// (b) + (c): a rolled-back transaction's events never appear; inserts outside the
/// publication, updates, deletes and truncates of other published tables, and updates, deletes and truncates of the outbox
/// (published here on purpose so the streamer really sees them) neither appear nor break it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollbacks_and_other_changes_never_reach_kafka() {
    let env = Env::start().await;
    env.db
        .batch_execute(
            "CREATE TABLE unpublished (id int PRIMARY KEY, v text);
             CREATE TABLE published_other (id int PRIMARY KEY, v text);
             INSERT INTO published_other VALUES (1, 'a');
             ALTER PUBLICATION pgoutbox_pub ADD TABLE published_other;
             ALTER PUBLICATION pgoutbox_pub SET (publish = 'insert, update, delete, truncate');",
        )
        .await
        .unwrap();
    let running = env.spawn_streamer(env.config());
    env.wait_streaming().await;

    let before = Event::new(1, "order", "k1");
    let rolled_back = [
        Event::new(2, "order", "k1"),
        Event::new(3, "customer", "k2"),
    ];
    let after = Event::new(4, "order", "k1");
    let mut sql = tx_sql(std::slice::from_ref(&before), "COMMIT");
    sql += &tx_sql(&rolled_back, "ROLLBACK");
    // (An insert into published_other would be a poison event: tests/it/drift.rs.)
    sql += "INSERT INTO unpublished VALUES (1, 'a');
            UPDATE published_other SET v = 'b'; DELETE FROM published_other;
            UPDATE outbox SET type = 'Changed'; DELETE FROM outbox;
            BEGIN; INSERT INTO published_other VALUES (2, 'b'); ROLLBACK;";
    sql += &tx_sql(&[Event::new(5, "invoice", "k3")], "COMMIT");
    sql += "TRUNCATE outbox; TRUNCATE published_other;";
    sql += &tx_sql(std::slice::from_ref(&after), "COMMIT");
    env.db.batch_execute(&sql).await.unwrap();
    let end = env.current_lsn().await;

    let reader = env.reader();
    let mut got = reader.read(3, Duration::from_secs(30)).await.unwrap();
    got.extend(
        reader
            .read(usize::MAX, Duration::from_secs(1))
            .await
            .unwrap(),
    );
    let ids: Vec<String> = got.iter().map(|r| header_str(r, "id")).collect();
    let mut expected = vec![
        before.id.clone(),
        Event::new(5, "invoice", "k3").id,
        after.id.clone(),
    ];
    let mut sorted = ids.clone();
    sorted.sort();
    expected.sort();
    assert_eq!(sorted, expected, "only committed outbox inserts, once each");
    // The stream survived all of it and confirmed everything.
    env.wait_confirmed(end, Duration::from_secs(10)).await;
    running.stop().await;
}

/// Header columns: a configured extra column (with an alias), `traceparent` and a `headers`
/// jsonb column whose entries become record headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_columns_become_record_headers() {
    let env = Env::start().await;
    env.db
        .batch_execute(
            "ALTER TABLE outbox ADD COLUMN tenant text, ADD COLUMN traceparent text, ADD COLUMN headers jsonb",
        )
        .await
        .unwrap();
    let mut cfg = env.config();
    cfg.outbox.additional_headers = vec![("tenant".into(), "x-tenant".into())];
    let running = env.spawn_streamer(cfg);
    env.wait_streaming().await;
    env.db
        .batch_execute(
            r#"INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload, tenant, traceparent, headers)
               VALUES ('00000000-0000-4000-8000-0000000000b1', 'order', 'o-1', 'T', '{}', 'acme',
                       '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01', '{"region": "eu"}')"#,
        )
        .await
        .unwrap();
    let got = env.reader().read(1, Duration::from_secs(30)).await.unwrap();
    assert_eq!(got.len(), 1);
    let r = &got[0];
    assert_eq!(header_str(r, "x-tenant"), "acme");
    assert_eq!(
        header_str(r, "traceparent"),
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    );
    assert_eq!(header_str(r, "region"), "eu");
    assert_eq!(r.headers.len(), 5, "{:?}", r.headers);
    running.stop().await;
}

/// (f) With no outbox traffic but writes to another table, the slot keeps advancing, so an
/// idle outbox never makes PostgreSQL retain WAL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_lsn_advances_without_outbox_traffic() {
    let env = Env::start().await;
    env.db
        .batch_execute("CREATE TABLE busy (id serial PRIMARY KEY, v text)")
        .await
        .unwrap();
    let running = env.spawn_streamer(env.config());
    env.wait_streaming().await;
    let start = env.confirmed_flush().await.unwrap();

    let mut marks = Vec::new();
    for round in 0..4 {
        env.db
            .batch_execute(&format!(
                "INSERT INTO busy (v) SELECT md5(g::text) FROM generate_series(1, 500) g; -- {round}"
            ))
            .await
            .unwrap();
        marks.push(env.current_lsn().await);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let last = *marks.last().unwrap();
    assert!(last > start);
    env.wait_confirmed(last, Duration::from_secs(20)).await;
    running.stop().await;
}
