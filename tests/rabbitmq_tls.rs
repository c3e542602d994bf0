//! RabbitMQ over TLS (`amqps://`) against a real node whose certificate a generated CA signed:
//! `check` names the fix while that CA is not trusted, and with `rabbitmq_tls_ca_file` the
//! relay streams every event over TLS.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::rabbit::{self, Collector};
use common::*;
use lapin::types::FieldTable;
use pgoutbox::embedded::rabbitmq::declare_queue;
use pgoutbox::embedded::TempRabbit;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

/// A CA, and a certificate it signs for "localhost": (CA, certificate, key), PEM.
fn pki() -> (String, String, String) {
    let ca_key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "pgoutbox test CA");
    let ca_pem = params.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(params, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    (ca_pem, cert.pem(), key.serialize_pem())
}

/// `pgoutbox check` against the node at `url`, trusting `ca` if given: (passed, output).
async fn check(env: &Env, url: &str, ca: Option<&std::path::Path>) -> (bool, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_pgoutbox"));
    cmd.arg("check")
        .env("PGOUTBOX_POSTGRES_URL", env.pg.url())
        .env("PGOUTBOX_DESTINATION", "rabbitmq")
        .env("PGOUTBOX_RABBITMQ_URL", url);
    if let Some(ca) = ca {
        cmd.env("PGOUTBOX_RABBITMQ_TLS_CA_FILE", ca);
    }
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_streams_with_the_private_ca_and_check_names_it_when_missing() {
    let env = Env::start().await;
    let (ca, cert, key) = pki();
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
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.crt");
    std::fs::write(&ca_file, &ca).unwrap();

    // The system does not trust the test CA: check says what to set.
    let (ok, text) = check(&env, &tls_url, None).await;
    assert!(!ok && text.contains("✘ RabbitMQ reachable"), "{text}");
    assert!(text.contains("set rabbitmq_tls_ca_file"), "{text}");
    // A CA file with a plain amqp:// URL would silently not be used: refused.
    let (ok, text) = check(&env, &node.url(), Some(&ca_file)).await;
    assert!(!ok && text.contains("not amqps://"), "{text}");
    let (ok, text) = check(&env, &tls_url, Some(&ca_file)).await;
    assert!(ok && text.contains("✔ RabbitMQ reachable"), "{text}");

    let events = Collector::start(node.url(), rabbit::EVENTS);
    let mut cfg = rabbit::config(&env, &node);
    cfg.rabbitmq.url = tls_url;
    cfg.rabbitmq.tls_ca_file = Some(ca_file);
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
