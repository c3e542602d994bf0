//! A graceful stop, whatever the destination: SIGTERM drains and confirms, so a restart sends
//! nothing twice; the delivered-events metric carries the destination's label.

use std::collections::HashSet;
use std::future::Future;
use std::time::Duration;

use super::{free_port, get, ids_of, workload, Env};

/// Runs the binary with `settings` (which deliver to `destination`), commits, stops it with
/// SIGTERM, restarts it and commits more. `read(ids)` returns the ids the destination holds
/// once it holds `ids` (each stored copy once). Asserts every event was stored exactly once.
pub async fn resends_nothing<F, R>(
    env: &Env,
    settings: &[(&str, String)],
    destination: &str,
    read: R,
) where
    R: Fn(HashSet<String>) -> F,
    F: Future<Output = Vec<String>>,
{
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let port = free_port();
    let mut settings: Vec<(&str, String)> = settings.to_vec();
    settings.push(("PGOUTBOX_METRICS_ADDR", format!("127.0.0.1:{port}")));
    let settings: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let first = workload(0, 20);
    let second = workload(1000, 20);
    let mut child = env.spawn_binary(&log, &settings);
    env.wait_streaming().await;
    env.commit(&first).await;
    let got = read(ids_of(&first)).await;
    assert_eq!(got.len(), ids_of(&first).len());
    let metrics = get(port, "/metrics").await.unwrap().1;
    let n = first
        .iter()
        .flatten()
        .filter(|e| e.aggregate_type == "order")
        .count();
    let line = format!(
        "pgoutbox_events_delivered_total{{topic=\"outbox.event.order\",destination=\"{destination}\"}} {n}"
    );
    assert!(metrics.contains(&line), "{line}\n{metrics}");
    // SAFETY: kill(2) with a child's pid has no memory effects.
    unsafe { libc::kill(child.id().unwrap() as i32, libc::SIGTERM) };
    let status = child.wait().await.unwrap();
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut child = env.spawn_binary(&log, &settings);
    env.wait_streaming().await;
    env.commit(&second).await;
    let all: HashSet<String> = ids_of(&first).union(&ids_of(&second)).cloned().collect();
    let got = read(all.clone()).await;
    let distinct: HashSet<String> = got.iter().cloned().collect();
    assert_eq!(distinct, all);
    assert_eq!(got.len(), all.len(), "a graceful stop resent events");
    child.start_kill().unwrap();
}
