//! The polling publisher (`source = poll`): two instances drain one table concurrently, every
//! row is sent once (SKIP LOCKED) and marked (or deleted); a row only leaves the pending set
//! after Kafka acked it.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use crate::common::kill::cycles;
use crate::common::*;
use pgoutbox::config::Source;
use pgoutbox::embedded::ConsumedRecord;
use pgoutbox::poll::Cleanup;
use pgoutbox::postgres::setup::POLL_SQL;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pollers_send_each_row_once() {
    let env = Env::start().await;
    env.db.batch_execute(POLL_SQL).await.unwrap();
    let mut cfg = env.config();
    cfg.source = Source::Poll;
    cfg.poll.interval = Duration::from_millis(50);
    cfg.poll.batch = 20;
    let a = env.spawn_streamer(cfg.clone());
    let b = env.spawn_streamer(cfg.clone());
    let txs = workload(0, 200);
    env.commit(&txs).await;
    let ids: HashSet<String> = txs.iter().flatten().map(|e| e.id.clone()).collect();
    let reader = env.reader();
    let got = read_until_all(&reader, &ids, Duration::from_secs(60)).await;
    let more = reader
        .read(usize::MAX, Duration::from_secs(1))
        .await
        .unwrap();
    let mut count: HashMap<String, usize> = HashMap::new();
    for r in got.iter().chain(&more) {
        *count.entry(header_str(r, "id")).or_default() += 1;
    }
    assert_eq!(count.len(), ids.len(), "every row sent");
    let twice: Vec<_> = count.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "{} rows sent twice by the two pollers",
        twice.len()
    );
    wait_for("all rows marked", Duration::from_secs(10), || async {
        env.pending_rows().await == 0
    })
    .await;
    a.stop().await;
    b.stop().await;

    // Delete instead of mark; a pending row stays pending while Kafka is down.
    cfg.poll.cleanup = Cleanup::Delete;
    env.kafka.set_brokers_up(false).unwrap();
    let mut down = cfg.clone();
    down.kafka
        .properties
        .push(("message.timeout.ms".into(), "1000".into()));
    let c = env.spawn_streamer(down);
    let late = workload(10_000, 3);
    env.commit(&late).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        env.pending_rows().await,
        late.iter().flatten().count(),
        "unacked rows stay pending"
    );
    env.kafka.set_brokers_up(true).unwrap();
    let late_ids: HashSet<String> = late.iter().flatten().map(|e| e.id.clone()).collect();
    read_until_all(&reader, &late_ids, Duration::from_secs(60)).await;
    wait_for("sent rows deleted", Duration::from_secs(20), || async {
        env.pending_rows().await == 0
    })
    .await;
    c.stop().await;
}

/// `pgoutbox check` with `source = poll` asks for the polling columns, not for replication.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_knows_the_polling_setup() {
    let env = Env::start().await;
    let mut cfg = env.config();
    cfg.source = Source::Poll;
    let line = |results: &[pgoutbox::checks::CheckResult], name: &str| {
        results
            .iter()
            .find(|r| r.name == name)
            .map(|r| r.to_string())
            .unwrap_or_default()
    };
    let before = pgoutbox::checks::run(&cfg).await;
    assert!(
        line(&before, "polling columns")
            .starts_with("✘ polling columns: table public.outbox has no seq and status columns"),
        "{before:?}"
    );
    assert!(before.iter().all(|r| r.name != "replication slot"));
    env.db.batch_execute(POLL_SQL).await.unwrap();
    let after = pgoutbox::checks::run(&cfg).await;
    assert!(after.iter().all(|r| r.ok), "{after:?}");
}

/// The polling source SIGKILLed at random instants under load and restarted: at-least-once
/// loses no row, at-most-once sends none twice (rows are marked before they are sent).
async fn poll_kill_loop(delivery: &str) -> (HashSet<String>, Vec<ConsumedRecord>) {
    use rand::Rng;
    let env = Env::start().await;
    env.db.batch_execute(POLL_SQL).await.unwrap();
    let logdir = tempfile::tempdir().unwrap();
    let log = logdir.path().join("pgoutbox.log");
    let settings = [
        ("PGOUTBOX_SOURCE", "poll"),
        ("PGOUTBOX_POLL_INTERVAL_MS", "20"),
        ("PGOUTBOX_POLL_BATCH", "50"),
        ("PGOUTBOX_DELIVERY", delivery),
    ];
    let cycles = cycles() / 2;
    let txs = workload(0, cycles * 60);
    let ids: HashSet<String> = txs.iter().flatten().map(|e| e.id.clone()).collect();
    let writer = env.spawn_writer(txs, Duration::from_millis(4));
    let mut child = env.spawn_binary(&log, &settings);
    let mut rng = rand::rng();
    let mut kills_with_pending = 0;
    for _ in 0..cycles {
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..600))).await;
        child.start_kill().unwrap();
        child.wait().await.unwrap();
        if env.pending_rows().await > 0 {
            kills_with_pending += 1;
        }
        child = env.spawn_binary(&log, &settings);
    }
    writer.await.unwrap();
    wait_for("every row marked", Duration::from_secs(60), || async {
        env.pending_rows().await == 0
    })
    .await;
    let got = env
        .reader()
        .read(usize::MAX, Duration::from_secs(3))
        .await
        .unwrap();
    child.start_kill().unwrap();
    assert!(
        kills_with_pending > 0,
        "no kill with rows pending: the test proved nothing"
    );
    let seen = distinct(&got);
    eprintln!(
        "poll kill -9 run ({delivery}): {cycles} kills ({kills_with_pending} with rows pending), {} rows, {} delivered, {} distinct",
        ids.len(),
        got.len(),
        seen.len()
    );
    (ids, got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_polling_loses_no_row() {
    let (ids, got) = poll_kill_loop("at-least-once").await;
    let lost = ids.difference(&distinct(&got)).count();
    assert_eq!(lost, 0, "{lost} rows lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_polling_at_most_once_sends_no_row_twice() {
    let (ids, got) = poll_kill_loop("at-most-once").await;
    let seen = distinct(&got);
    assert_eq!(got.len(), seen.len(), "rows sent twice");
    assert!(seen.is_subset(&ids));
    assert!(
        seen.len() > ids.len() / 2,
        "{} of {} arrived",
        seen.len(),
        ids.len()
    );
}
