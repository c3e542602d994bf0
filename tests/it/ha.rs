//! High availability: two instances with `ha = true`; only one streams. Killing the leader
//! with SIGKILL under load makes the standby stream within 10 s, and no event is lost; a
//! leader frozen with SIGSTOP is replaced within its lease and steps down when it wakes.

use std::collections::HashSet;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::*;
use tokio::process::{Child, Command};

/// Instances tell themselves apart by application_name, visible in pg_stat_replication.
fn instance(env: &Env, name: &str, port: u16) -> Child {
    instance_with(env, name, port, &[], Stdio::null())
}

fn instance_with(env: &Env, name: &str, port: u16, extra: &[(&str, &str)], stderr: Stdio) -> Child {
    Command::new(env!("CARGO_BIN_EXE_pgoutbox"))
        .env(
            "PGOUTBOX_POSTGRES_URL",
            format!("{}?application_name={name}", env.pg.url()),
        )
        .env("PGOUTBOX_KAFKA_BROKERS", env.kafka.bootstrap_servers())
        .env("PGOUTBOX_HA", "true")
        .env("PGOUTBOX_METRICS_ADDR", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "warn")
        .envs(extra.iter().copied())
        .stdout(Stdio::null())
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

async fn streaming_instances(env: &Env) -> Vec<String> {
    env.db
        .query("SELECT application_name FROM pg_stat_replication", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_takes_over_after_leader_is_killed() {
    let env = Env::start().await;
    let (port_a, port_b) = (free_port(), free_port());
    let mut a = instance(&env, "instance_a", port_a);
    env.wait_streaming().await;
    let _b = instance(&env, "instance_b", port_b);
    // b starts, finds the lock taken and waits: only a streams.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(streaming_instances(&env).await, ["instance_a"]);
    let locks = held_locks(&env).await;
    assert_eq!(locks, 1, "exactly one instance holds the HA lock");
    // Both are ready, each in its role, so a rolling update of the pair can proceed.
    assert_eq!(
        get(port_a, "/readyz").await,
        Some((200, "ready (streaming)\n".into()))
    );
    assert_eq!(
        get(port_b, "/readyz").await,
        Some((200, "ready (standby)\n".into()))
    );

    let txs = workload(0, 300);
    let ids: HashSet<String> = txs.iter().flatten().map(|e| e.id.clone()).collect();
    let checker = env.lsn_checker();
    let writer = env.spawn_writer(txs, Duration::from_millis(5));
    tokio::time::sleep(Duration::from_millis(700)).await;
    a.start_kill().unwrap();
    a.wait().await.unwrap();
    let killed = Instant::now();
    wait_for("standby streaming", Duration::from_secs(10), || async {
        streaming_instances(&env).await == ["instance_b"]
    })
    .await;
    let takeover = killed.elapsed();
    wait_for(
        "b ready as the streamer",
        Duration::from_secs(10),
        || async { get(port_b, "/readyz").await == Some((200, "ready (streaming)\n".into())) },
    )
    .await;
    eprintln!("HA takeover after SIGKILL: {:.1} s", takeover.as_secs_f64());
    assert!(takeover < Duration::from_secs(10));

    writer.await.unwrap();
    assert_all_arrive(&env, &ids).await;
    checker.finish().await;
}

/// How many advisory locks are held (the HA lock is the only one).
async fn held_locks(env: &Env) -> i64 {
    env.db
        .query_one(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// Waits (up to `within`) until only `instance_b` streams; how long since `since`.
async fn b_takes_over(env: &Env, since: Instant, within: Duration, what: &str) -> Duration {
    wait_for("the standby streaming", within, || async {
        streaming_instances(env).await == ["instance_b"]
    })
    .await;
    let took = since.elapsed();
    eprintln!("HA takeover from {what}: {:.1} s", took.as_secs_f64());
    took
}

/// Samples pg_stat_replication every 200 ms until `until`: only `instance_b` streams.
async fn only_b_streams_until(env: &Env, until: Instant) {
    while Instant::now() < until {
        assert_eq!(streaming_instances(env).await, ["instance_b"]);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the instance logging to `log` says it stepped down.
async fn steps_down(log: &std::path::Path) {
    wait_for(
        "the old leader steps down",
        Duration::from_secs(30),
        || async {
            std::fs::read_to_string(log)
                .unwrap_or_default()
                .contains("lost the HA lock session: stepping down")
        },
    )
    .await;
}

/// A leader frozen (SIGSTOP) for 30 s under load keeps its lock session and walsender open,
/// so it holds the slot without making progress. It renews no lease meanwhile: the standby
/// terminates its sessions and streams within the lease (4 s here) plus a few seconds; the
/// old leader wakes (SIGCONT), steps down, and never streams again while the other does.
/// Nothing is lost. (Before the lease, the standby never took over.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_leader_is_replaced_within_its_lease() {
    let env = Env::start().await;
    let dir = tempfile::tempdir().unwrap();
    let log_a = dir.path().join("a.log");
    let lease = [("PGOUTBOX_HA_LEASE_SECS", "4")];
    let a = instance_with(
        &env,
        "instance_a",
        free_port(),
        &lease,
        std::fs::File::create(&log_a).unwrap().into(),
    );
    env.wait_streaming().await;
    let _b = instance_with(&env, "instance_b", free_port(), &lease, Stdio::null());
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(streaming_instances(&env).await, ["instance_a"]);

    let txs = workload(0, 2500);
    let ids: HashSet<String> = txs.iter().flatten().map(|e| e.id.clone()).collect();
    let checker = env.lsn_checker();
    let writer = env.spawn_writer(txs, Duration::from_millis(10));
    tokio::time::sleep(Duration::from_millis(700)).await;
    let pid = a.id().unwrap() as i32;
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let frozen = Instant::now();
    let takeover = b_takes_over(&env, frozen, Duration::from_secs(15), "a frozen leader").await;
    assert!(takeover < Duration::from_secs(10), "{takeover:?}");
    // Frozen for 30 s in all; from the takeover on, only b streams.
    only_b_streams_until(&env, frozen + Duration::from_secs(30)).await;
    unsafe { libc::kill(pid, libc::SIGCONT) };
    steps_down(&log_a).await;
    only_b_streams_until(&env, Instant::now() + Duration::from_secs(5)).await;
    writer.await.unwrap();
    assert_all_arrive(&env, &ids).await;
    checker.finish().await;
    let locks = held_locks(&env).await;
    assert_eq!(locks, 1, "one lock holder after the old leader woke");
}

/// A leader cut off from the broker (its NATS link stalls: connections stay open, nothing
/// moves) but not from PostgreSQL: it acks nothing, so it stops renewing its lease once the
/// stall outlasts the lease, and the standby, which reaches the broker, takes over and
/// delivers. The old leader steps down when its link flows again. Nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_the_broker_is_replaced() {
    use crate::common::nats as js;
    let env = Env::start().await;
    let nats = js::start(Duration::from_secs(120)).await;
    let proxy = crate::common::proxy::Proxy::start(nats.port()).await;
    let dir = tempfile::tempdir().unwrap();
    let log_a = dir.path().join("a.log");
    let url_a = format!("nats://127.0.0.1:{}", proxy.port);
    let url_b = nats.url();
    let via = |url: &'static str| {
        [
            ("PGOUTBOX_HA_LEASE_SECS", "4"),
            ("PGOUTBOX_DESTINATION", "nats"),
            ("PGOUTBOX_NATS_URL", url),
        ]
    };
    let (url_a, url_b): (&'static str, &'static str) = (
        Box::leak(url_a.into_boxed_str()),
        Box::leak(url_b.into_boxed_str()),
    );
    let _a = instance_with(
        &env,
        "instance_a",
        free_port(),
        &via(url_a),
        std::fs::File::create(&log_a).unwrap().into(),
    );
    env.wait_streaming().await;
    let _b = instance_with(&env, "instance_b", free_port(), &via(url_b), Stdio::null());
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(streaming_instances(&env).await, ["instance_a"]);

    let txs = workload(0, 1500);
    let ids: HashSet<String> = txs.iter().flatten().map(|e| e.id.clone()).collect();
    let writer = env.spawn_writer(txs, Duration::from_millis(10));
    tokio::time::sleep(Duration::from_millis(700)).await;
    proxy.stall();
    let cut = Instant::now();
    let took = b_takes_over(
        &env,
        cut,
        Duration::from_secs(30),
        "a leader cut off from NATS",
    )
    .await;
    // The stall must outlast the lease (4 s), then the lease must expire (4 s), polled.
    assert!(took < Duration::from_secs(20), "{took:?}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.pass();
    steps_down(&log_a).await;
    let text = std::fs::read_to_string(&log_a).unwrap();
    assert!(text.contains("no longer renewing the lease"), "{text}");
    only_b_streams_until(&env, Instant::now() + Duration::from_secs(3)).await;
    writer.await.unwrap();
    let got = js::read_until_all(&nats.url(), &ids, Duration::from_secs(90)).await;
    let seen: HashSet<String> = got.iter().map(|m| m.id()).collect();
    assert_eq!(
        ids.difference(&seen).count(),
        0,
        "events lost across the takeover"
    );
    assert_eq!(js::order_violations(&got), 0);
}
