//! The table-less outbox: `pg_logical_emit_message(…, 'outbox', '<json>')` gives the same kind
//! of record as the table path; rolled-back transactional messages never appear,
//! non-transactional ones do, and after a graceful restart nothing is sent twice.

use std::collections::HashMap;
use std::time::Duration;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logical_messages_are_outbox_events() {
    let env = Env::start().await;
    let version: i32 = env
        .db
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .unwrap()
        .get(0);
    if version < 140_000 {
        return tableless_is_never_silent_where_it_cannot_work(&env).await;
    }
    let running = env.spawn_streamer(env.config());
    env.wait_streaming().await;
    env.db
        .batch_execute(
            r#"CREATE TABLE orders (id int PRIMARY KEY);
            BEGIN;
            INSERT INTO orders VALUES (1);
            SELECT pg_logical_emit_message(true, 'outbox',
              '{"aggregatetype":"order","aggregateid":"o-1","type":"OrderPaid","id":"m-1","payload":{"total": 5},"headers":{"traceparent":"00-abc-def-01"}}');
            COMMIT;
            BEGIN;
            SELECT pg_logical_emit_message(true, 'outbox', '{"aggregatetype":"order","aggregateid":"o-2","id":"m-rolled-back"}');
            ROLLBACK;
            SELECT pg_logical_emit_message(false, 'outbox',
              '{"aggregatetype":"customer","aggregateid":"c-1","type":"Ping","id":"m-2","payload":"plain"}');
            SELECT pg_logical_emit_message(true, 'other-prefix', '{"aggregatetype":"order","id":"m-ignored"}');
            SELECT pg_logical_emit_message(true, 'outbox', '{"aggregatetype":"invoice","aggregateid":"i-1"}');"#,
        )
        .await
        .unwrap();
    let reader = env.reader();
    let mut got = reader.read(3, Duration::from_secs(30)).await.unwrap();
    got.extend(
        reader
            .read(usize::MAX, Duration::from_secs(1))
            .await
            .unwrap(),
    );
    let by_id: HashMap<String, _> = got.iter().map(|r| (header_str(r, "id"), r)).collect();
    assert_eq!(got.len(), 3, "{by_id:?}");

    let paid = by_id["m-1"];
    assert_eq!(paid.topic, "outbox.event.order");
    assert_eq!(paid.key.as_deref(), Some(&b"o-1"[..]));
    assert_eq!(header_str(paid, "type"), "OrderPaid");
    assert_eq!(header_str(paid, "traceparent"), "00-abc-def-01");
    assert_eq!(paid.payload.as_deref(), Some(&br#"{"total": 5}"#[..]));

    let ping = by_id["m-2"];
    assert_eq!(ping.topic, "outbox.event.customer");
    assert_eq!(ping.payload.as_deref(), Some(&br#""plain""#[..]));

    // No id given: derived from the message's LSN, stable if it is ever resent.
    let derived = got
        .iter()
        .find(|r| r.topic == "outbox.event.invoice")
        .unwrap();
    assert!(header_str(derived, "id").starts_with("lsn-"));

    // Graceful stop and restart: everything was confirmed, so nothing comes again.
    let end = env.current_lsn().await;
    env.wait_confirmed(end, Duration::from_secs(10)).await;
    running.stop().await;
    let running = env.spawn_streamer(env.config());
    env.wait_streaming().await;
    let again = reader
        .read(usize::MAX, Duration::from_secs(3))
        .await
        .unwrap();
    assert!(again.is_empty(), "resent after restart: {again:?}");
    running.stop().await;
}

/// PostgreSQL 13's pgoutput cannot send logical decoding messages: a table-less event would
/// be skipped without a trace. Asked for explicitly, that is a start-up error; by default, a
/// warning at every start and a `check` line; the outbox table still works.
async fn tableless_is_never_silent_where_it_cannot_work(env: &Env) {
    let mut cfg = env.config();
    cfg.message_prefix_explicit = true;
    let running = env.spawn_streamer(cfg);
    let e = tokio::time::timeout(Duration::from_secs(30), running.task)
        .await
        .expect("refused at start")
        .unwrap()
        .unwrap_err();
    assert!(
        e.is_fatal()
            && e.to_string()
                .contains("the table-less outbox needs PostgreSQL 14+"),
        "{e}"
    );

    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let _child = env.spawn_binary(&log, &[]);
    env.wait_streaming().await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("WARN") && text.contains("table-less outbox events (pg_logical_emit_message with prefix \"outbox\") are never delivered"),
        "{text}"
    );
    let event = Event::new(1, "order", "k");
    env.commit(&[vec![event.clone()]]).await;
    assert_all_arrive(env, &std::collections::HashSet::from([event.id])).await;

    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgoutbox"))
        .arg("check")
        .env("PGOUTBOX_POSTGRES_URL", env.pg.url())
        .env("PGOUTBOX_KAFKA_BROKERS", env.kafka.bootstrap_servers())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout
            .contains("✔ table-less outbox: ! PostgreSQL 13 cannot send logical decoding messages"),
        "{stdout}"
    );
}
