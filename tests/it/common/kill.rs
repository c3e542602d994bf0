//! The kill loop: the real binary, SIGKILLed at random instants under continuous load and
//! restarted each time, whatever its destination.

use std::collections::HashSet;
use std::time::Duration;

use rand::Rng;

use super::{workload, Env};

/// Kills per run: `PGOUTBOX_KILL_CYCLES`, default 20 (`scripts/soak.sh` runs 200).
pub fn cycles() -> usize {
    std::env::var("PGOUTBOX_KILL_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}

/// What a kill loop left behind.
pub struct Killed {
    pub ids: HashSet<String>,
    pub kills_with_unconfirmed_wal: usize,
    pub log: String,
    pub logdir: tempfile::TempDir,
    pub child: tokio::process::Child,
}

impl Killed {
    pub fn log_path(&self) -> std::path::PathBuf {
        self.logdir.path().join("pgoutbox.log")
    }
}

/// Runs the binary (with `extra` settings) under continuous load, killing it with SIGKILL at
/// random instants and restarting it after a random outage, `cycles` times. Returns once the
/// last instance has confirmed everything written. With `streaming_first`, each instance is
/// killed only once it streams (so kills land mid-transaction rather than during start-up).
pub async fn kill_loop(
    env: &Env,
    cycles: usize,
    extra: &[(&str, &str)],
    streaming_first: bool,
) -> Killed {
    let logdir = tempfile::tempdir().unwrap();
    let log = logdir.path().join("pgoutbox.log");
    // The default status interval: duplicates must follow what was in flight, not it.
    let mut settings = vec![("PGOUTBOX_STATUS_INTERVAL_MS", "1000")];
    settings.extend_from_slice(extra);
    let mut child = env.spawn_binary(&log, &settings);
    env.wait_streaming().await;

    // Continuous load sized to the kills: transactions of 1–10 events, a few ms apart.
    let txs = workload(0, cycles * 60);
    let ids: HashSet<String> = txs.iter().flatten().map(|e| e.id.clone()).collect();
    // Spread over the kills, which come slower on a real broker (below).
    let pause = match env.kafka.is_tansu() {
        true => 30,
        false => 4,
    };
    let writer = env.spawn_writer(txs, Duration::from_millis(pause));

    let mut rng = rand::rng();
    let mut kills_with_unconfirmed_wal = 0;
    for _ in 0..cycles {
        if streaming_first {
            env.wait_streaming().await;
        }
        // A real broker takes a while to connect a new producer (tansu: about a second);
        // killed sooner, an at-most-once instance would confirm what it read and deliver none.
        let life = match env.kafka.is_tansu() {
            true => 1000..2500,
            false => 50..500,
        };
        tokio::time::sleep(Duration::from_millis(rng.random_range(life))).await;
        child.start_kill().unwrap();
        child.wait().await.unwrap();
        if env.confirmed_flush().await.unwrap() < env.current_lsn().await {
            kills_with_unconfirmed_wal += 1;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..200))).await;
        child = env.spawn_binary(&log, &settings);
    }
    writer.await.unwrap();
    let end = env.current_lsn().await;
    env.wait_confirmed(end, Duration::from_secs(60)).await;
    Killed {
        ids,
        kills_with_unconfirmed_wal,
        log: std::fs::read_to_string(&log).unwrap_or_default(),
        logdir,
        child,
    }
}

/// The kill loop against a broker: the binary with `settings` (its destination) and
/// `delivery`, then `read` (what the broker holds, given the inserted ids). Asserts that a
/// kill landed mid-stream, prints one report line titled `title`, stops the last instance.
/// Returns the inserted ids and what was read.
pub async fn against_broker<T, F, Fut>(
    env: &Env,
    title: &str,
    mut settings: Vec<(&'static str, String)>,
    delivery: &str,
    cycles: usize,
    read: F,
) -> (HashSet<String>, Vec<T>)
where
    T: super::Delivered,
    F: FnOnce(HashSet<String>) -> Fut,
    Fut: std::future::Future<Output = Vec<T>>,
{
    settings.push(("PGOUTBOX_DELIVERY", delivery.into()));
    let settings: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut k = kill_loop(env, cycles, &settings, false).await;
    let got = read(k.ids.clone()).await;
    let seen = super::distinct(&got);
    let lost = k.ids.difference(&seen).count();
    assert!(
        k.kills_with_unconfirmed_wal > 0,
        "no kill happened mid-stream: the test proved nothing"
    );
    eprintln!(
        "{title} kill -9 run ({delivery}): {cycles} kills ({} with unconfirmed WAL), {} events inserted, {} stored, {} distinct, {lost} lost, {} duplicates",
        k.kills_with_unconfirmed_wal,
        k.ids.len(),
        got.len(),
        seen.len(),
        got.len() - seen.len(),
    );
    if lost > 0 && delivery != "at-most-once" {
        eprintln!("streamer log:\n{}", k.log);
    }
    k.child.start_kill().unwrap();
    (std::mem::take(&mut k.ids), got)
}
