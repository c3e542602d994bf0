//! RabbitMQ over TLS (`amqps://`) against a real node whose certificate a generated CA signed:
//! `check` names the fix while that CA is not trusted, and with `rabbitmq_tls_ca_file` the
//! relay streams every event over TLS.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::pki;
use common::rabbit::{self, Collector};
use common::*;
use lapin::types::FieldTable;
use pgoutbox::embedded::rabbitmq::declare_queue;
use pgoutbox::embedded::TempRabbit;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_streams_with_the_private_ca_and_check_names_it_when_missing() {
    let env = Env::start().await;
    let pki = pki::localhost();
    let (cert, key) = (pki.cert.clone(), pki.key.clone());
    let node = tokio::task::spawn_blocking(move || TempRabbit::start_tls(&cert, &key))
        .await
        .unwrap()
        .expect("start rabbitmq-server with a TLS listener");
    let tls_url = node.tls_url().unwrap();
    declare_queue(
        &node.url(),
        rabbit::EXCHANGE,
        rabbit::EVENTS,
        "outbox.event.#",
        FieldTable::default(),
    )
    .await
    .unwrap();
    let settings = |url: &str, ca: bool| {
        let mut s = vec![
            ("PGOUTBOX_POSTGRES_URL", env.pg.url()),
            ("PGOUTBOX_DESTINATION", "rabbitmq".into()),
            ("PGOUTBOX_RABBITMQ_URL", url.to_owned()),
        ];
        if ca {
            s.push((
                "PGOUTBOX_RABBITMQ_TLS_CA_FILE",
                pki.ca_file.display().to_string(),
            ));
        }
        s
    };

    // The system does not trust the test CA: check says what to set.
    let (ok, text) = pki::check(&settings(&tls_url, false)).await;
    assert!(!ok && text.contains("✘ RabbitMQ reachable"), "{text}");
    assert!(text.contains("set rabbitmq_tls_ca_file"), "{text}");
    // A CA file with a plain amqp:// URL would silently not be used: refused.
    let (ok, text) = pki::check(&settings(&node.url(), true)).await;
    assert!(!ok && text.contains("not amqps://"), "{text}");
    let (ok, text) = pki::check(&settings(&tls_url, true)).await;
    assert!(ok && text.contains("✔ RabbitMQ reachable"), "{text}");

    let events = Collector::start(node.url(), rabbit::EVENTS);
    let mut cfg = rabbit::config(&env, &node);
    cfg.rabbitmq.url = tls_url;
    cfg.rabbitmq.tls_ca_file = Some(pki.ca_file.clone());
    let running = env.spawn_streamer(cfg);
    env.wait_streaming().await;
    let txs = workload(0, 40);
    let ids: HashSet<String> = txs.iter().flatten().map(|e| e.id.clone()).collect();
    env.commit(&txs).await;
    let got = events.until_all(&ids, Duration::from_secs(60)).await;
    let seen: HashSet<String> = got.iter().map(rabbit::Got::id).collect();
    assert_eq!(seen, ids, "every event, over TLS");
    let end = env.current_lsn().await;
    env.wait_confirmed(end, Duration::from_secs(30)).await;
    // The node lists the relay's connection as TLS (the collector's is plain).
    let connections = node
        .ctl(&["list_connections", "ssl", "client_properties"])
        .unwrap();
    let ours = connections
        .lines()
        .find(|l| l.contains("pgoutbox"))
        .unwrap_or_else(|| panic!("no pgoutbox connection: {connections}"));
    assert!(ours.trim_start().starts_with("true"), "{connections}");
    running.stop().await;
}
