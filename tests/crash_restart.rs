//! (e) The real binary, killed with SIGKILL at random instants under continuous load and
//! restarted each time, loses nothing: every committed event arrives at least once, in per-key
//! order. `PGOUTBOX_KILL_CYCLES` sets the number of kills (default 20; `scripts/soak.sh` runs 200).

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use rand::Rng;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_loses_nothing() {
    let cycles: usize = std::env::var("PGOUTBOX_KILL_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let env = Env::start().await;
    let logdir = tempfile::tempdir().unwrap();
    let log = logdir.path().join("pgoutbox.log");
    let status_100ms = [("PGOUTBOX_STATUS_INTERVAL_MS", "100")];
    let mut child = env.spawn_binary(&log, &status_100ms);
    env.wait_streaming().await;

    // Continuous load sized to the kills: transactions of 1–10 events, a few ms apart.
    let txs = workload(0, cycles * 60);
    let ids: HashSet<String> = txs.iter().flatten().map(|e| e.id.clone()).collect();
    let checker = env.lsn_checker();
    let writer = env.spawn_writer(txs, Duration::from_millis(4));

    // Kill -9 at a random instant, restart after a random outage, `cycles` times.
    let mut rng = rand::rng();
    let mut kills_with_unconfirmed_wal = 0;
    for _ in 0..cycles {
        tokio::time::sleep(Duration::from_millis(rng.random_range(50..500))).await;
        child.start_kill().unwrap();
        child.wait().await.unwrap();
        if env.confirmed_flush().await.unwrap() < env.current_lsn().await {
            kills_with_unconfirmed_wal += 1;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..200))).await;
        child = env.spawn_binary(&log, &status_100ms);
    }
    writer.await.unwrap();
    let end = env.current_lsn().await;
    env.wait_confirmed(end, Duration::from_secs(60)).await;
    let lsn = checker.finish().await;

    let reader = env.reader();
    let got = read_until_all(&reader, &ids, Duration::from_secs(90)).await;
    let seen: HashSet<String> = got.iter().map(|r| header_str(r, "id")).collect();
    let lost = ids.difference(&seen).count();
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(lost, 0, "{lost} events lost; streamer log:\n{log_text}");
    assert_eq!(order_violations(&got), 0);
    eprintln!(
        "kill -9 run: {cycles} kills ({kills_with_unconfirmed_wal} with unconfirmed WAL), {} events inserted, {} distinct delivered, {lost} lost, {} duplicates, 0 order violations, confirmed LSN sampled {} times, passed an unacked transaction {} times",
        ids.len(),
        seen.len(),
        got.len() - seen.len(),
        lsn.samples,
        lsn.early_confirms,
    );
    assert!(lsn.samples >= 2, "too few LSN samples to mean anything");
    assert_eq!(
        lsn.early_confirms, 0,
        "confirmed_flush_lsn passed an unacked transaction"
    );
    assert!(
        kills_with_unconfirmed_wal > 0,
        "no kill happened mid-stream: the test proved nothing"
    );
    env.wait_confirmed(end, Duration::from_secs(20)).await;
    child.start_kill().unwrap();
}
