//! Reconnects: a terminated walsender and a PostgreSQL restart are survived without loss; a
//! slot dropped while in use stops the streamer with an error instead of being recreated.

use std::collections::HashSet;
use std::time::Duration;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn walsender_terminated_under_load_loses_nothing() {
    let env = Env::start().await;
    let _streamer = env.streaming_binary().await;
    let txs = workload(0, 300);
    let ids: HashSet<String> = txs.iter().flatten().map(|e| e.id.clone()).collect();
    let checker = env.lsn_checker();
    let writer = env.spawn_writer(txs, Duration::from_millis(5));
    let mut terminated = 0;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let n: i64 = env
            .db
            .query_one(
                "SELECT count(pg_terminate_backend(active_pid)) FROM pg_replication_slots
                 WHERE slot_name = 'pgoutbox' AND active_pid IS NOT NULL",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        terminated += n;
        env.wait_streaming().await;
    }
    assert!(
        terminated >= 2,
        "the walsender was terminated {terminated} times"
    );
    writer.await.unwrap();
    assert_all_arrive(&env, &ids).await;
    checker.finish().await;
    let end = env.current_lsn().await;
    env.wait_confirmed(end, Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_under_load_loses_nothing() {
    restart_under_load("fast").await;
}

/// `-m immediate` is a crash: PostgreSQL recovers, and the slot may fall back to its last
/// checkpointed position, so events are resent (duplicates) but never lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_crash_restart_under_load_loses_nothing() {
    restart_under_load("immediate").await;
}

async fn restart_under_load(mode: &'static str) {
    let mut env = Env::start().await;
    let _streamer = env.streaming_binary().await;
    let txs = workload(0, 300);
    let ids: HashSet<String> = txs.iter().flatten().map(|e| e.id.clone()).collect();
    let checker = env.lsn_checker();
    let writer = env.spawn_writer(txs, Duration::from_millis(5));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pg = env.pg;
    let pg = tokio::task::spawn_blocking(move || {
        pg.restart(mode).unwrap();
        pg
    })
    .await
    .unwrap();
    env.pg = pg;
    env.db = connect(&env.pg.url()).await;
    writer.await.unwrap();
    assert_all_arrive(&env, &ids).await;
    checker.finish().await;
    env.wait_streaming().await;
    let end = env.current_lsn().await;
    env.wait_confirmed(end, Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_dropped_while_running_is_an_error_not_a_new_slot() {
    let env = Env::start().await;
    let running = env.spawn_streamer(env.config());
    env.wait_streaming().await;
    // Kick the walsender and drop the slot before the streamer's reconnect (≥ 250 ms backoff).
    wait_for("slot dropped", Duration::from_secs(10), || async {
        let _ = env
            .db
            .batch_execute(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots
                 WHERE slot_name = 'pgoutbox' AND active_pid IS NOT NULL",
            )
            .await;
        env.db
            .batch_execute("SELECT pg_drop_replication_slot('pgoutbox')")
            .await
            .is_ok()
    })
    .await;
    let result = tokio::time::timeout(Duration::from_secs(30), running.task)
        .await
        .expect("streamer stops")
        .unwrap();
    let err = result.expect_err("a lost slot must stop the streamer");
    assert!(err.is_fatal());
    assert!(
        err.to_string().contains("events may have been missed"),
        "{err}"
    );
    assert!(
        env.confirmed_flush().await.is_none(),
        "the slot was silently recreated"
    );
}
