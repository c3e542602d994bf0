//! Graceful shutdown: SIGTERM under load exits 0 after confirming everything it delivered,
//! so a restart sends nothing twice (zero duplicates), and nothing is lost.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use crate::common::*;
use tokio::process::Child;

/// A small budget keeps the reader paused inside large transactions, so a stop usually lands
/// mid-transaction: the case that must not cause duplicates.
const SMALL_BUDGET: [(&str, &str); 1] = [("PGOUTBOX_MAX_IN_FLIGHT_EVENTS", "50")];

async fn sigterm(child: &mut Child) -> std::process::ExitStatus {
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id().unwrap() as i32, libc::SIGTERM) };
    tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("exits within 30 s of SIGTERM")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_then_restart_sends_nothing_twice() {
    let env = Env::start().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("pgoutbox.log");
    let mut child = env.spawn_binary(&log, &SMALL_BUDGET);
    env.wait_streaming().await;

    // 30 transactions of 300 events.
    let txs: Vec<Vec<Event>> = (0..30u64)
        .map(|t| {
            (0..300u64)
                .map(|i| {
                    let agg = i % 20;
                    Event::new(
                        t * 300 + i + 1,
                        AGGREGATE_TYPES[(agg % 3) as usize],
                        &format!("agg-{agg}"),
                    )
                })
                .collect()
        })
        .collect();
    let ids: HashSet<String> = txs.iter().flatten().map(|e| e.id.clone()).collect();
    let writer = env.spawn_writer(txs, Duration::from_millis(40));

    // Two graceful stops in the middle of the load, each followed by a restart.
    let mut stops_with_pending_wal = 0;
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let status = sigterm(&mut child).await;
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(status.success(), "exit {status}:\n{text}");
        if env.confirmed_flush().await.unwrap() < env.current_lsn().await {
            stops_with_pending_wal += 1;
        }
        child = env.spawn_binary(&log, &SMALL_BUDGET);
    }
    writer.await.unwrap();

    let got = read_all(&env, &ids, Duration::from_secs(60)).await;
    let mut count: HashMap<String, usize> = HashMap::new();
    for r in &got {
        *count.entry(header_str(r, "id")).or_default() += 1;
    }
    let lost = ids.iter().filter(|id| !count.contains_key(*id)).count();
    let duplicates: usize = count.values().map(|n| n - 1).sum();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(lost, 0, "lost events:\n{text}");
    assert_eq!(
        duplicates, 0,
        "a graceful stop must confirm all it delivered:\n{text}"
    );
    assert!(
        stops_with_pending_wal > 0,
        "no stop happened under load: the test proved nothing"
    );
    assert!(sigterm(&mut child).await.success());
}

/// A second SIGTERM while the first is still waiting for acks exits at once (code 130).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_signal_exits_at_once() {
    let env = Env::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut child = env.spawn_binary(&dir.path().join("log"), &[]);
    env.wait_streaming().await;
    // With the brokers down, events stay in flight and the graceful stop has to wait.
    env.kafka.set_brokers_up(false).unwrap();
    env.commit(&workload(0, 5)).await;
    let end = env.current_lsn().await;
    wait_for("events read", Duration::from_secs(10), || async {
        env.reported_write().await.is_some_and(|w| w >= end)
    })
    .await;
    let pid = child.id().unwrap() as i32;
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "the first signal waits for acks"
    );
    let t = std::time::Instant::now();
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let status = tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .expect("exits at once")
        .unwrap();
    assert_eq!(status.code(), Some(130));
    assert!(t.elapsed() < Duration::from_secs(2));
    env.kafka.set_brokers_up(true).unwrap();
}

/// SIGHUP reloads: a graceful stop under load (nothing lost, nothing sent twice) and a start
/// with the configuration file read again; the process stays up. Before, SIGHUP killed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_configuration_without_losing_or_resending() {
    let env = Env::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (log, conf) = (dir.path().join("log"), dir.path().join("pgoutbox.toml"));
    std::fs::write(&conf, "max_in_flight_events = 50\n").unwrap();
    let conf_env = conf.to_str().unwrap();
    let mut child = env.spawn_binary(&log, &[("PGOUTBOX_CONFIG", conf_env)]);
    env.wait_streaming().await;
    let txs = workload(0, 300);
    let ids: HashSet<String> = txs.iter().flatten().map(|e| e.id.clone()).collect();
    let writer = env.spawn_writer(txs, Duration::from_millis(10));
    let pid = child.id().unwrap() as i32;
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(pid, libc::SIGHUP) };
    }
    writer.await.unwrap();

    let got = read_all(&env, &ids, Duration::from_secs(60)).await;
    let distinct: HashSet<String> = got.iter().map(|r| header_str(r, "id")).collect();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        child.try_wait().unwrap().is_none(),
        "SIGHUP must not end pgoutbox:\n{text}"
    );
    assert_eq!(ids.difference(&distinct).count(), 0, "lost events:\n{text}");
    assert_eq!(
        got.len(),
        distinct.len(),
        "duplicates after a reload:\n{text}"
    );
    assert_eq!(text.matches("configuration reloaded").count(), 2, "{text}");

    // A changed file takes effect (the slot may not change: tests/it/operations.rs).
    std::fs::write(&conf, "max_in_flight_events = 7\n").unwrap();
    unsafe { libc::kill(pid, libc::SIGHUP) };
    wait_for("the reloaded setting", Duration::from_secs(30), || async {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("max_in_flight_events: 7,")
    })
    .await;
    env.wait_streaming().await;
    assert!(sigterm(&mut child).await.success());
}
