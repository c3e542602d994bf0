//! Kafka on tansu 0.6, a second, independent Kafka-protocol broker with durable (SQLite)
//! storage: what librdkafka's mock cluster cannot show. The broker SIGKILLed and restarted
//! with its data under load, and a route to a topic that does not exist (tansu creates no
//! topic by itself). scripts/matrix.sh runs them with `PGOUTBOX_KAFKA_BROKER=tansu` and the
//! binary of scripts/tansu-fetch.sh; otherwise they say they did not run.

use std::collections::HashSet;
use std::time::Duration;

use crate::common::broker::Broker;
use crate::common::*;

/// tansu's environment, or `None` (said) when the binary is not there.
async fn tansu_env() -> Option<Env> {
    if std::env::var("PGOUTBOX_KAFKA_BROKER").as_deref() != Ok("tansu") {
        eprintln!("not run: PGOUTBOX_KAFKA_BROKER=tansu PGOUTBOX_TANSU=$(scripts/tansu-fetch.sh) runs it (scripts/matrix.sh does)");
        return None;
    }
    Some(Env::start_on(Broker::tansu()).await)
}

/// The broker SIGKILLed twice under load and started again with its data: every event
/// arrives, in key order; nothing confirmed was lost with the broker's unflushed state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_killed_and_restarted_under_load_loses_nothing_and_keeps_order() {
    let Some(env) = tansu_env().await else {
        return;
    };
    let running = env.spawn_streamer(env.config());
    env.wait_streaming().await;
    let txs = workload(0, 600);
    let ids: HashSet<String> = txs.iter().flatten().map(|e| e.id.clone()).collect();
    let checker = env.lsn_checker();
    let writer = env.spawn_writer(txs, Duration::from_millis(5));
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(800)).await;
        env.kafka.set_brokers_up(false).unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        env.kafka.set_brokers_up(true).unwrap();
    }
    writer.await.unwrap();
    let got = read_until_all(&env.reader(), &ids, Duration::from_secs(120)).await;
    let seen: HashSet<String> = got.iter().map(|r| header_str(r, "id")).collect();
    assert_eq!(ids.difference(&seen).count(), 0, "events lost");
    assert_eq!(order_violations(&got), 0);
    checker.finish().await;
    running.stop().await;
}

/// A route to a topic that does not exist on a broker that creates none: with the default
/// `on_poison = fail` the relay stops naming the topic and what to do, and the slot stays
/// before the event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_topic_stops_with_the_fix() {
    let Some(env) = tansu_env().await else {
        return;
    };
    let running = env.spawn_streamer(env.config());
    env.wait_streaming().await;
    let before = env.current_lsn().await;
    env.commit(&[vec![Event::new(1, "nowhere", "k")]]).await;
    let err = tokio::time::timeout(Duration::from_secs(90), running.task)
        .await
        .expect("the relay stops")
        .unwrap()
        .unwrap_err();
    let e = err.to_string();
    assert!(e.contains("outbox.event.nowhere"), "{e}");
    assert!(e.contains("create the topic"), "{e}");
    let confirmed = env.confirmed_flush().await.unwrap();
    assert!(
        confirmed <= before,
        "the slot passed the undeliverable event"
    );
}

/// Exactly-once on a broker without Kafka transactions (tansu 0.6 has no EndTxn): `run` stops
/// at once naming what is missing and the alternative, and `check` fails the same way. (It
/// used to go on, every commit failing, and on restart trust offsets records of transactions
/// that never committed.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_without_transactions_is_refused_for_that_mode() {
    let Some(env) = tansu_env().await else {
        return;
    };
    env.kafka.create_topic("pgoutbox.offsets", 1).unwrap();
    let mut cfg = env.config();
    cfg.delivery = pgoutbox::delivery::DeliveryMode::ExactlyOnce;
    let err = tokio::time::timeout(Duration::from_secs(30), env.spawn_streamer(cfg).task)
        .await
        .expect("stops by itself")
        .unwrap()
        .unwrap_err();
    let e = err.to_string();
    assert!(err.is_fatal(), "{e}");
    assert!(
        e.contains("needs Kafka transactions")
            && e.contains("EndTxn")
            && e.contains("at-least-once"),
        "{e}"
    );
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgoutbox"))
        .arg("check")
        .env("PGOUTBOX_POSTGRES_URL", env.pg.url())
        .env("PGOUTBOX_KAFKA_BROKERS", env.kafka.bootstrap_servers())
        .env("PGOUTBOX_DELIVERY", "exactly-once")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.contains("✘ Kafka transactions: delivery = exactly-once needs Kafka transactions"),
        "{stdout}"
    );
}

/// A broker that creates no topics: `check` names the topics pgoutbox writes to before any
/// event (dead letters here) and the command; `setup --create-kafka-topics` makes them, the
/// offsets topic compacted, and the topics of the route values in the table; run again, it
/// leaves them as they are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_creates_the_kafka_topics_and_check_names_the_missing() {
    let Some(env) = tansu_env().await else {
        return;
    };
    let (url, brokers) = (env.pg.url(), env.kafka.bootstrap_servers().to_owned());
    let run = |args: &'static [&'static str]| {
        let (url, brokers) = (url.clone(), brokers.clone());
        async move {
            let (ok, out, _) = cli_with(
                args,
                &url,
                &brokers,
                &[("PGOUTBOX_ON_POISON", "dead-letter")],
            )
            .await;
            (ok, out)
        }
    };
    env.commit(&[vec![Event::new(1, "shipment", "k")]]).await;
    let (ok, out) = run(&["check"]).await;
    assert!(!ok, "{out}");
    assert!(
        out.contains("✘ Kafka topics: pgoutbox.dead-letter missing")
            && out.contains("pgoutbox setup --create-kafka-topics"),
        "{out}"
    );
    let (ok, out) = run(&["setup", "--create-kafka-topics"]).await;
    assert!(ok, "{out}");
    for line in [
        "✔ Kafka topic pgoutbox.offsets (exactly-once offsets, 1 partition(s), cleanup.policy=compact): created",
        "✔ Kafka topic pgoutbox.dead-letter (dead letters, 1 partition(s)): created",
        "✔ Kafka topic outbox.event.shipment (events, 3 partition(s)): created",
    ] {
        assert!(out.contains(line), "{line:?} in:\n{out}");
    }
    let (ok, out) = run(&["setup", "--create-kafka-topics"]).await;
    assert!(ok, "{out}");
    assert_eq!(out.matches("exists, left as it is").count(), 3, "{out}");
    let (_, out) = run(&["check"]).await;
    assert!(
        out.contains("✔ Kafka topics: pgoutbox.dead-letter exist"),
        "{out}"
    );
}
