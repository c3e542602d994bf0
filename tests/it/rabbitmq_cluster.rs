//! A 3-node RabbitMQ cluster on loopback (one Erlang cookie, distinct node names, ports and
//! data directories), a quorum queue, `rabbitmq_url` listing the three nodes, and the node
//! leading the queue SIGKILLed twice under load (restarted 3 s later): every event delivered,
//! each key's events in order, the relay never stops.

use std::collections::HashSet;
use std::time::Duration;

use crate::common::rabbit::{self, Collector};
use crate::common::{pause, workload, Env};
use lapin::types::{AMQPValue, FieldTable};
use pgoutbox::embedded::TempRabbit;

const EXCHANGE: &str = "outbox";
const QUEUE: &str = "events-quorum";

/// Which node leads the queue, by index.
fn leader(nodes: &[TempRabbit]) -> Option<usize> {
    let live = nodes.iter().find(|n| n.ctl(&["status"]).is_ok())?;
    let out = live
        .ctl(&["list_queues", "-q", "--no-table-headers", "name", "leader"])
        .ok()?;
    let line = out.lines().find(|l| l.starts_with(QUEUE))?;
    let name = line.split_whitespace().nth(1)?;
    nodes.iter().position(|n| n.node_name() == name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_leader_node_killed_twice_loses_nothing_and_keeps_order() {
    let env = Env::start().await;
    let mut nodes = tokio::task::spawn_blocking(|| {
        let nodes: Vec<TempRabbit> = (0..3)
            .map(|_| TempRabbit::start().expect("start a rabbitmq-server node"))
            .collect();
        for n in &nodes[1..] {
            n.join(&nodes[0]).expect("join the cluster");
        }
        nodes
    })
    .await
    .unwrap();
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    pgoutbox::embedded::rabbitmq::declare_queue(
        &nodes[0].url(),
        EXCHANGE,
        QUEUE,
        "outbox.event.#",
        args,
    )
    .await
    .unwrap();
    let urls: Vec<String> = nodes.iter().map(TempRabbit::url).collect();
    let events = Collector::start(urls[0].clone(), QUEUE);
    let mut cfg = rabbit::config(&env, &nodes[0]);
    cfg.rabbitmq.url = urls.join(",");
    cfg.rabbitmq.ack_timeout = Duration::from_secs(3);
    let running = env.spawn_streamer(cfg);
    env.wait_streaming().await;
    let txs = workload(0, 600);
    let ids: HashSet<String> = txs.iter().flatten().map(|e| e.id.clone()).collect();
    let writer = env.spawn_writer(txs, Duration::from_millis(5));
    let watch = pause::PauseWatch::start(&env.pg.url()).await;
    let mut killed = Vec::new();
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(800)).await;
        let l = leader(&nodes).expect("the quorum queue has a leader");
        killed.push(l);
        nodes[l].kill().unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let node = &mut nodes[l];
        tokio::task::block_in_place(|| node.restart()).unwrap();
    }
    writer.await.unwrap();
    let paused = watch.longest().await;
    let end = env.current_lsn().await;
    env.wait_confirmed(end, Duration::from_secs(120)).await;
    assert!(!running.task.is_finished(), "the relay stopped");
    let got = events.until_all(&ids, Duration::from_secs(60)).await;
    let seen: HashSet<String> = got.iter().map(|g| g.id()).collect();
    let lost = ids.difference(&seen).count();
    let reordered = rabbit::order_violations(&got);
    eprintln!(
        "RabbitMQ 3-node cluster, quorum queue leader's node SIGKILLed twice (nodes {killed:?}) under load: {} events, {} delivered, {lost} lost, {} duplicates, {reordered} out of key order, longest pause {paused:.1?}",
        ids.len(),
        got.len(),
        got.len() - seen.len()
    );
    assert_eq!(lost, 0);
    assert_eq!(reordered, 0, "events of a key delivered out of order");
    running.stop().await;
}
