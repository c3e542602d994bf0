//! A 3-node JetStream cluster on loopback, each node with a password of its own, an R3
//! stream, and its leader SIGKILLed twice under load (restarted 3 s later): a leader
//! election is a pause, never a poison event. Under `on_poison` = fail, skip and dead-letter
//! alike: every event stored, each key's events in order, nothing dead-lettered, the relay
//! never stops.

use std::collections::HashSet;
use std::time::Duration;

use crate::common::nats::{self as js, Stored};
use crate::common::{ids_of, pause, workload, Env};
use async_nats::jetstream::{self, stream};
use pgoutbox::embedded::TempNatsCluster;
use pgoutbox::outbox::PoisonPolicy;

const LOGINS: [(&str, &str); 3] = [
    ("pgoutbox", "first-node-pw"),
    ("pgoutbox", "second-node-pw"),
    ("pgoutbox", "third-node-pw"),
];

/// A JetStream context on the first live node.
async fn context(cluster: &TempNatsCluster) -> jetstream::Context {
    for i in 0..3 {
        if !cluster.is_up(i) {
            continue;
        }
        if let Ok(c) = js::client(&cluster.url(i)).await {
            return jetstream::new(c);
        }
    }
    panic!("no node of the cluster takes a connection");
}

/// (Re)creates the outbox stream with three replicas.
async fn fresh_stream(cluster: &TempNatsCluster) {
    crate::common::wait_for("an R3 stream", Duration::from_secs(60), || async {
        let js = context(cluster).await;
        let _ = js.delete_stream(js::STREAM).await;
        js.create_stream(stream::Config {
            name: js::STREAM.into(),
            subjects: js::SUBJECTS.iter().map(|s| s.to_string()).collect(),
            duplicate_window: Duration::from_secs(120),
            num_replicas: 3,
            ..Default::default()
        })
        .await
        .is_ok()
    })
    .await;
}

/// The node that leads the stream now.
async fn leader(cluster: &TempNatsCluster) -> usize {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let js = context(cluster).await;
        if let Ok(mut s) = js.get_stream(js::STREAM).await {
            if let Ok(info) = s.info().await {
                let name = info.cluster.as_ref().and_then(|c| c.leader.clone());
                if let Some(i) = name.and_then(|n| cluster.index_of(&n)) {
                    return i;
                }
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stream has no leader"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One run under `policy`: the stream's leader killed twice under load.
async fn leader_killed_twice(cluster: &mut TempNatsCluster, policy: PoisonPolicy, first: u64) {
    fresh_stream(cluster).await;
    let env = Env::start().await;
    let mut cfg = env.config();
    cfg.destination = pgoutbox::config::DestinationKind::Nats;
    cfg.nats.url = cluster.urls();
    cfg.nats.ack_timeout = Duration::from_secs(2);
    cfg.on_poison = policy;
    let running = env.spawn_streamer(cfg);
    env.wait_streaming().await;
    let txs = workload(first, 1000);
    let ids = ids_of(&txs);
    let writer = env.spawn_writer(txs, Duration::from_millis(5));
    let watch = pause::PauseWatch::start(&env.pg.url()).await;
    let mut killed = Vec::new();
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(800)).await;
        let l = leader(cluster).await;
        killed.push(l);
        cluster.kill(l).unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
        cluster.restart(l).unwrap();
    }
    writer.await.unwrap();
    let paused = watch.longest().await;
    let end = env.current_lsn().await;
    env.wait_confirmed(end, Duration::from_secs(120)).await;
    assert!(
        !running.task.is_finished(),
        "the relay stopped under on_poison = {policy:?}"
    );
    let url = (0..3).map(|i| cluster.url(i)).next().unwrap();
    let got = js::read_until_all(&url, &ids, Duration::from_secs(30)).await;
    let seen: HashSet<String> = got.iter().map(Stored::id).collect();
    let lost = ids.difference(&seen).count();
    let dead = got
        .iter()
        .filter(|m| m.subject == "pgoutbox.dead-letter")
        .count();
    let reordered = js::order_violations(&got);
    eprintln!(
        "NATS R3 stream, leader SIGKILLed twice (nodes {killed:?}) under load, on_poison = {policy:?}: {} events, {} stored, {lost} lost, {} duplicates, {dead} dead-lettered, {reordered} out of key order, longest pause {paused:.1?}",
        ids.len(),
        got.len(),
        got.len() - seen.len()
    );
    assert_eq!(lost, 0, "events lost under on_poison = {policy:?}");
    assert_eq!(dead, 0, "a leader election was taken for a poison event");
    assert_eq!(reordered, 0, "events of a key stored out of order");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_leader_killed_twice_is_a_pause_under_every_poison_policy() {
    let mut cluster = tokio::task::spawn_blocking(|| TempNatsCluster::start(Some(LOGINS)))
        .await
        .unwrap()
        .expect("start a 3-node nats-server cluster");
    // check and setup with the three URLs, each with its own password.
    let env = Env::start().await;
    fresh_stream(&cluster).await;
    let settings = vec![
        ("PGOUTBOX_POSTGRES_URL", env.pg.url()),
        ("PGOUTBOX_DESTINATION", "nats".to_owned()),
        ("PGOUTBOX_NATS_URL", cluster.urls()),
    ];
    let (_, text) = crate::common::pki::check(&settings).await;
    assert!(text.contains("✔ NATS reachable"), "{text}");
    assert!(text.contains("✔ NATS stream"), "{text}");
    for (_, pw) in LOGINS {
        assert!(!text.contains(pw), "check printed a password: {text}");
    }
    drop(env);
    let policies = [
        PoisonPolicy::Skip,
        PoisonPolicy::Fail,
        PoisonPolicy::DeadLetter,
    ];
    for (i, policy) in policies.into_iter().enumerate() {
        leader_killed_twice(&mut cluster, policy, i as u64 * 100_000).await;
    }
}
