//! The link to PostgreSQL cut, and stalled longer than wal_sender_timeout and the streamer's
//! replication timeout: the dead link is detected while still stalled, and after it heals
//! every event arrives. Stalled while a new slot's state record is written: that step gives
//! up in time.

use std::collections::HashSet;
use std::time::Duration;

use crate::common::proxy::Proxy;
use crate::common::*;

/// pgoutbox streaming through a proxy, with short timeouts on both sides.
async fn through_proxy(env: &Env) -> (Proxy, tempfile::TempDir, tokio::process::Child) {
    let proxy = Proxy::start(env.pg.port()).await;
    let (dir, child) = spawn_through(env, &proxy).await;
    env.wait_streaming().await;
    (proxy, dir, child)
}

/// Starts pgoutbox connecting through `proxy`; it logs to `log` in the directory returned.
async fn spawn_through(env: &Env, proxy: &Proxy) -> (tempfile::TempDir, tokio::process::Child) {
    for sql in [
        "ALTER SYSTEM SET wal_sender_timeout = '2s'",
        "SELECT pg_reload_conf()",
    ] {
        env.db.batch_execute(sql).await.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "postgres://postgres@127.0.0.1:{}/postgres?connect_timeout=2",
        proxy.port
    );
    let child = env.spawn_binary(
        &dir.path().join("log"),
        &[
            ("PGOUTBOX_POSTGRES_URL", &url),
            ("PGOUTBOX_STATUS_INTERVAL_MS", "200"),
            ("PGOUTBOX_REPLICATION_TIMEOUT_SECS", "3"),
        ],
    );
    (dir, child)
}

/// Waits until pgoutbox's log (in `dir`) says `what`.
async fn wait_logged(dir: &tempfile::TempDir, what: &str, timeout: Duration) {
    let log = dir.path().join("log");
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains(what) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what:?} not logged within {timeout:?}; pgoutbox's log:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_link_is_detected_and_nothing_is_lost() {
    let env = Env::start().await;
    let (proxy, dir, _child) = through_proxy(&env).await;
    let before = workload(0, 20);
    let during = workload(10_000, 20);
    let ids: HashSet<String> = before
        .iter()
        .chain(&during)
        .flatten()
        .map(|e| e.id.clone())
        .collect();
    env.commit(&before).await;

    proxy.stall();
    env.commit(&during).await;
    // Detected while the link is still stalled: nothing arrives although a reply was asked.
    wait_logged(&dir, "connection presumed dead", Duration::from_secs(40)).await;
    proxy.pass();

    assert_all_arrive(&env, &ids).await;
    let end = env.current_lsn().await;
    env.wait_confirmed(end, Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_link_under_load_loses_nothing() {
    let env = Env::start().await;
    let (proxy, _dir, _child) = through_proxy(&env).await;
    let txs = workload(0, 300);
    let ids: HashSet<String> = txs.iter().flatten().map(|e| e.id.clone()).collect();
    let checker = env.lsn_checker();
    let writer = env.spawn_writer(txs, Duration::from_millis(5));
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        proxy.cut();
    }
    writer.await.unwrap();
    assert_all_arrive(&env, &ids).await;
    checker.finish().await;
    let end = env.current_lsn().await;
    env.wait_confirmed(end, Duration::from_secs(30)).await;
}

/// The link stalls just as the state record of the slot pgoutbox has just created is written
/// (a step on a connection of its own, opened right after CREATE_REPLICATION_SLOT): the step gives up after the replication timeout instead of hanging the
/// session, and once the link heals every event arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stall_while_recording_a_new_slot_does_not_hang() {
    let env = Env::start().await;
    let proxy = Proxy::start(env.pg.port()).await;
    proxy.stall_new_after(b"CREATE_REPLICATION_SLOT");
    let (dir, _child) = spawn_through(&env, &proxy).await;
    let wrote = "cannot write the slot's state record";
    wait_logged(&dir, "created replication slot", Duration::from_secs(30)).await;
    wait_logged(&dir, wrote, Duration::from_secs(20)).await;
    let log = std::fs::read_to_string(dir.path().join("log")).unwrap_or_default();
    assert!(log.contains("no answer within 3s"), "{log}");
    proxy.pass();

    let txs = workload(0, 20);
    let ids: HashSet<String> = txs.iter().flatten().map(|e| e.id.clone()).collect();
    env.commit(&txs).await;
    assert_all_arrive(&env, &ids).await;
}
