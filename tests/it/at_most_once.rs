//! at-most-once loses events only when the process dies: a broker outage while it runs is
//! waited out in process (the confirmed events are resent, reading pauses meanwhile), and an
//! event it does give up (a stop with deliveries outstanding) is logged by id and counted.
//!
//! Before, a delivery failure restarted the session "from the slot", whose position was
//! already past the failed events: 30 s of outage at 10 transactions/s lost a third of them.

use std::collections::HashSet;
use std::time::Duration;

use crate::common::*;
use pgoutbox::delivery::DeliveryMode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_loses_nothing_while_the_process_lives() {
    let env = Env::start().await;
    let mut cfg = env.config();
    cfg.delivery = DeliveryMode::AtMostOnce;
    // librdkafka gives up on a record after 2 s: the outage outlasts that three times.
    cfg.kafka
        .properties
        .push(("message.timeout.ms".into(), "2000".into()));
    cfg.max_in_flight_events = 100;
    let running = env.spawn_streamer(cfg);
    env.wait_streaming().await;

    let txs = workload(0, 100);
    let ids: HashSet<String> = txs.iter().flatten().map(|e| e.id.clone()).collect();
    let writer = env.spawn_writer(txs, Duration::from_millis(80));
    tokio::time::sleep(Duration::from_secs(1)).await;
    env.kafka.set_brokers_up(false).unwrap();
    tokio::time::sleep(Duration::from_secs(6)).await;
    env.kafka.set_brokers_up(true).unwrap();
    writer.await.unwrap();

    let got = read_until_all(&env.reader(), &ids, Duration::from_secs(60)).await;
    let distinct: HashSet<String> = got.iter().map(|r| header_str(r, "id")).collect();
    eprintln!(
        "at-most-once outage: {} inserted, {} delivered, {} duplicates",
        ids.len(),
        distinct.len(),
        got.len() - distinct.len()
    );
    assert_eq!(
        distinct.len(),
        ids.len(),
        "every event, although the outage outlasted message.timeout.ms"
    );
    assert_eq!(got.len(), ids.len(), "at-most-once never duplicates");
    assert!(
        !running.task.is_finished(),
        "the outage did not stop the stream"
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_given_up_at_a_stop_are_logged_by_id() {
    let env = Env::start().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let mut child = env.spawn_binary(
        &log,
        &[
            ("PGOUTBOX_DELIVERY", "at-most-once"),
            ("PGOUTBOX_SHUTDOWN_TIMEOUT_SECS", "1"),
            ("PGOUTBOX_STATUS_INTERVAL_MS", "200"),
        ],
    );
    env.wait_streaming().await;
    env.kafka.set_brokers_up(false).unwrap();
    let events: Vec<Event> = (1..=5).map(|i| Event::new(i, "order", "k")).collect();
    env.commit(std::slice::from_ref(&events)).await;
    // at-most-once confirms the transaction before producing it.
    let end = env.current_lsn().await;
    env.wait_confirmed(end, Duration::from_secs(20)).await;

    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id().unwrap() as i32, libc::SIGTERM) };
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("exits after the shutdown timeout")
        .unwrap();
    assert!(status.success(), "{status:?}");
    let text = std::fs::read_to_string(&log).unwrap();
    for e in &events {
        assert!(
            text.lines()
                .any(|l| l.contains("event lost") && l.contains(&e.id)),
            "no lost line for {}:\n{text}",
            e.id
        );
    }
    assert!(text.contains("lost=5"), "{text}");
}
