//! The link between the streamer and Kafka stalled and cut, through per-broker proxies (each
//! broker advertises its proxy's port, so every client connection runs through a proxy): the
//! slot holds while nothing can be acked, and after the link heals every event arrives.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::common::proxy::Proxy;
use crate::common::*;
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::ClientConfig;

/// One proxy per broker; returns them and the proxied bootstrap list.
async fn proxied(env: &Env) -> (Vec<Proxy>, String) {
    let mut proxies = Vec::new();
    for (i, addr) in env.kafka.bootstrap_servers().split(',').enumerate() {
        let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
        let proxy = Proxy::start(port).await;
        env.kafka.advertise(i as i32 + 1, proxy.port).unwrap();
        proxies.push(proxy);
    }
    let bootstrap: Vec<String> = proxies
        .iter()
        .map(|p| format!("127.0.0.1:{}", p.port))
        .collect();
    // Metadata now sends every client through the proxies.
    let probe: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap.join(","))
        .create()
        .unwrap();
    let md = probe
        .client()
        .fetch_metadata(None, Duration::from_secs(10))
        .unwrap();
    let ports: HashSet<u16> = proxies.iter().map(|p| p.port).collect();
    assert_eq!(md.brokers().len(), proxies.len());
    for b in md.brokers() {
        assert!(
            ports.contains(&(b.port() as u16)),
            "broker {} advertises {}",
            b.id(),
            b.port()
        );
    }
    (proxies, bootstrap.join(","))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_kafka_link_holds_the_slot_then_catches_up() {
    let env = Env::start().await;
    let (proxies, bootstrap) = proxied(&env).await;
    let dir = tempfile::tempdir().unwrap();
    let _child = env.spawn_binary(
        &dir.path().join("log"),
        &[
            ("PGOUTBOX_KAFKA_BROKERS", &bootstrap),
            ("PGOUTBOX_STATUS_INTERVAL_MS", "200"),
        ],
    );
    env.wait_streaming().await;
    let checker = env.lsn_checker();
    let txs = workload(0, 400);
    let ids: HashSet<String> = txs.iter().flatten().map(|e| e.id.clone()).collect();
    let writer = env.spawn_writer(txs, Duration::from_millis(5));
    tokio::time::sleep(Duration::from_millis(500)).await;

    proxies.iter().for_each(Proxy::stall);
    let stalled_at = env.current_lsn().await;
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        let c = env.confirmed_flush().await.unwrap();
        assert!(
            c <= stalled_at,
            "confirmed {c} past {stalled_at} while Kafka was unreachable"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        env.current_lsn().await > stalled_at,
        "load went on during the stall"
    );
    proxies.iter().for_each(Proxy::pass);

    writer.await.unwrap();
    assert_all_arrive(&env, &ids).await;
    checker.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_kafka_links_under_load_lose_nothing() {
    let env = Env::start().await;
    let (proxies, bootstrap) = proxied(&env).await;
    let dir = tempfile::tempdir().unwrap();
    let _child = env.spawn_binary(
        &dir.path().join("log"),
        &[
            ("PGOUTBOX_KAFKA_BROKERS", &bootstrap),
            ("PGOUTBOX_STATUS_INTERVAL_MS", "200"),
        ],
    );
    env.wait_streaming().await;
    let checker = env.lsn_checker();
    let txs = workload(0, 300);
    let ids: HashSet<String> = txs.iter().flatten().map(|e| e.id.clone()).collect();
    let writer = env.spawn_writer(txs, Duration::from_millis(5));
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        proxies.iter().for_each(Proxy::cut);
    }
    writer.await.unwrap();
    let got = assert_all_arrive(&env, &ids).await;
    eprintln!(
        "Kafka links cut 3×: {} events, {} records",
        ids.len(),
        got.len()
    );
    checker.finish().await;
}
