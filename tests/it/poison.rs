//! `on_poison`: events Kafka refuses for good (a real oversized payload) and events that
//! cannot be routed (an invalid topic name, a NULL route, a malformed table-less message)
//! go to the dead-letter topic with their reasons, or are skipped with a log line and a
//! counter, or stop the stream. Either way nothing is dropped silently and, when the stream
//! goes on, the slot moves past them.

use std::collections::HashSet;
use std::time::Duration;

use crate::common::*;
use pgoutbox::embedded::TopicReader;
use pgoutbox::outbox::PoisonPolicy;

const DLQ: &str = "pgoutbox.dead-letter";

/// Commits a good event, four poison events and another good event; returns the good ids.
async fn commit_poison(env: &Env) -> HashSet<String> {
    let good = [Event::new(1, "order", "k-1"), Event::new(9, "order", "k-9")];
    env.db
        .batch_execute(&format!(
            "ALTER TABLE outbox ALTER COLUMN aggregatetype DROP NOT NULL;
             {first}
             INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload) VALUES
               ('00000000-0000-4000-8000-00000000b16b', 'order', 'k-big', 'Big',
                jsonb_build_object('pad', repeat('x', 2000000)));
             INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload) VALUES
               ('00000000-0000-4000-8000-0000000000b1', 'has space', 'k-2', 'T', '{{}}');
             BEGIN;
             INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload) VALUES
               ('00000000-0000-4000-8000-0000000000b2', NULL, 'k-3', 'T', '{{\"n\": 3}}');
             SELECT pg_logical_emit_message(true, 'outbox', 'not json');
             COMMIT;
             {last}",
            first = good[0].insert_sql(),
            last = good[1].insert_sql(),
        ))
        .await
        .unwrap();
    good.iter().map(|e| e.id.clone()).collect()
}

fn header<'a>(r: &'a pgoutbox::embedded::ConsumedRecord, name: &str) -> &'a str {
    std::str::from_utf8(
        r.header(name)
            .unwrap_or_else(|| panic!("no header {name}: {r:?}")),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_policy_writes_each_with_its_reason_and_moves_on() {
    let env = Env::start().await;
    env.kafka.create_topic(DLQ, 1).unwrap();
    let mut cfg = env.config();
    cfg.on_poison = PoisonPolicy::DeadLetter;
    let running = env.spawn_streamer(cfg);
    env.wait_streaming().await;
    let good = commit_poison(&env).await;
    let got = read_until_all(&env.reader(), &good, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 2, "{got:?}");

    let dlq = TopicReader::new(env.kafka.bootstrap_servers(), &[(DLQ, 1)]).unwrap();
    let dead = dlq.read(4, Duration::from_secs(30)).await.unwrap();
    assert_eq!(dead.len(), 4, "{dead:?}");
    let class = |c: &str| {
        dead.iter()
            .find(|r| header(r, "pgoutbox.error.class") == c)
            .unwrap_or_else(|| panic!("no {c} dead letter in {dead:?}"))
    };
    let big = class("too-large");
    assert_eq!(header(big, "id"), "00000000-0000-4000-8000-00000000b16b");
    assert_eq!(header(big, "pgoutbox.original.topic"), "outbox.event.order");
    assert!(header(big, "pgoutbox.error.message").contains("MessageSizeTooLarge"));
    assert!(
        header(big, "pgoutbox.payload.omitted")
            .parse::<usize>()
            .unwrap()
            > 2_000_000
    );
    assert_eq!(big.key.as_deref(), Some(&b"k-big"[..]));
    assert_eq!(big.payload, None);

    let bad_topic = class("invalid-topic");
    assert_eq!(
        header(bad_topic, "id"),
        "00000000-0000-4000-8000-0000000000b1"
    );
    assert!(header(bad_topic, "pgoutbox.error.message").contains("not a valid Kafka topic"));
    // The topic it would have gone to, even though no broker would take that name.
    assert_eq!(
        header(bad_topic, "pgoutbox.original.topic"),
        "outbox.event.has space"
    );
    assert!(header(bad_topic, "pgoutbox.lsn").contains('/'));

    let null_route = class("unroutable");
    assert_eq!(
        header(null_route, "id"),
        "00000000-0000-4000-8000-0000000000b2"
    );
    assert!(header(null_route, "pgoutbox.error.message").contains("\"aggregatetype\" is NULL"));
    let row: serde_json::Value =
        serde_json::from_slice(null_route.payload.as_deref().unwrap()).unwrap();
    assert_eq!(row["aggregateid"], "k-3");
    assert_eq!(row["aggregatetype"], serde_json::Value::Null);

    let malformed = class("malformed");
    assert_eq!(malformed.payload.as_deref(), Some(&b"not json"[..]));

    // Dead letters count as delivered: the slot moves past everything.
    let end = env.current_lsn().await;
    env.wait_confirmed(end, Duration::from_secs(15)).await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_policy_logs_counts_and_moves_on() {
    let env = Env::start().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = env.spawn_binary(
        &log,
        &[
            ("PGOUTBOX_ON_POISON", "skip"),
            ("PGOUTBOX_METRICS_ADDR", addr.as_str()),
            ("PGOUTBOX_STATUS_INTERVAL_MS", "200"),
        ],
    );
    env.wait_streaming().await;
    let good = commit_poison(&env).await;
    let got = read_until_all(&env.reader(), &good, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 2, "{got:?}");
    let end = env.current_lsn().await;
    env.wait_confirmed(end, Duration::from_secs(15)).await;

    let text = std::fs::read_to_string(&log).unwrap();
    let skipped: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("undeliverable event") && l.contains("action=\"skip\""))
        .collect();
    assert_eq!(skipped.len(), 4, "{text}");
    assert!(skipped
        .iter()
        .any(|l| l.contains("00000000-0000-4000-8000-00000000b16b")
            && l.contains("reason=\"too-large\"")));
    let metrics = get(port, "/metrics").await.unwrap().1;
    for reason in ["too-large", "invalid-topic", "unroutable", "malformed"] {
        let line = format!("pgoutbox_poison_events_total{{action=\"skip\",reason=\"{reason}\"}} 1");
        assert!(metrics.contains(&line), "{line} missing from\n{metrics}");
    }
    assert!(child.try_wait().unwrap().is_none(), "still running");
    let dlq = TopicReader::new(env.kafka.bootstrap_servers(), &[(DLQ, 1)]).unwrap();
    assert!(dlq
        .read(1, Duration::from_secs(1))
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_policy_stops_at_a_bad_route() {
    let env = Env::start().await;
    let running = env.spawn_streamer(env.config());
    env.wait_streaming().await;
    let before = env.current_lsn().await;
    env.db
        .batch_execute(
            "INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload) VALUES
               ('00000000-0000-4000-8000-0000000000b1', 'has space', 'k-2', 'T', '{}')",
        )
        .await
        .unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(30), running.task)
        .await
        .expect("stops")
        .unwrap();
    let e = ended.unwrap_err();
    assert!(e.is_fatal());
    assert!(
        e.to_string()
            .contains("\"outbox.event.has space\" is not a valid Kafka topic name"),
        "{e}"
    );
    assert!(env.confirmed_flush().await.unwrap() <= before);
}
