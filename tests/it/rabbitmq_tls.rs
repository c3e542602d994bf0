//! RabbitMQ over TLS (`amqps://`) against a real node whose certificate a generated CA signed:
//! `check` names the fix while that CA is not trusted, and with `rabbitmq_tls_ca_file` the
//! relay streams every event over TLS. With mutual TLS (the node verifies peers), `check`
//! names the client certificate settings until they are set, and the relay streams with the
//! certificate, logging in with a password or as the certificate's name (SASL EXTERNAL).

use std::collections::HashSet;
use std::time::Duration;

use crate::common::pki::{self, LocalhostPki};
use crate::common::rabbit::{self, Collector};
use crate::common::*;
use lapin::types::FieldTable;
use pgoutbox::embedded::rabbitmq::declare_queue;
use pgoutbox::embedded::TempRabbit;

/// A node with a TLS listener (and with `verify_clients` requiring a client certificate on
/// it), the outbox exchange bound to the events queue.
async fn node(pki: &LocalhostPki, verify_clients: bool) -> TempRabbit {
    let node = tokio::task::block_in_place(|| TempRabbit::start_tls(pki.server(verify_clients)))
        .expect("start rabbitmq-server with a TLS listener");
    declare_queue(
        &node.url(),
        rabbit::EXCHANGE,
        rabbit::EVENTS,
        "outbox.event.#",
        FieldTable::default(),
    )
    .await
    .unwrap();
    node
}

/// Runs the relay with `cfg` over 40 transactions: every event delivered, the slot confirmed,
/// and the node lists the relay's connection as TLS (the collector's is plain), logged in as
/// `user`.
async fn streams_every_event(env: &Env, node: &TempRabbit, cfg: pgoutbox::Config, user: &str) {
    let events = Collector::start(node.url(), rabbit::EVENTS);
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
    let connections = node
        .ctl(&["list_connections", "ssl", "user", "client_properties"])
        .unwrap();
    let ours = connections
        .lines()
        .find(|l| l.contains("connection_name") && l.contains("pgoutbox"))
        .unwrap_or_else(|| panic!("no pgoutbox connection: {connections}"));
    let fields: Vec<&str> = ours.split_whitespace().collect();
    assert_eq!(fields.get(..2), Some(&["true", user][..]), "{connections}");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_streams_with_the_private_ca_and_check_names_it_when_missing() {
    let env = Env::start().await;
    let pki = pki::localhost();
    let node = node(&pki, false).await;
    let tls_url = node.tls_url().unwrap();
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

    let mut cfg = rabbit::config(&env, &node);
    cfg.rabbitmq.url = tls_url;
    cfg.rabbitmq.tls_ca_file = Some(pki.ca_file.clone());
    streams_every_event(&env, &node, cfg, "guest").await;
}

/// The relay's configuration for `url`, trusting the CA and presenting the client certificate.
fn with_client_cert(
    env: &Env,
    node: &TempRabbit,
    url: &str,
    pki: &LocalhostPki,
) -> pgoutbox::Config {
    let mut cfg = rabbit::config(env, node);
    cfg.rabbitmq.url = url.to_owned();
    cfg.rabbitmq.tls_ca_file = Some(pki.ca_file.clone());
    cfg.rabbitmq.tls_cert_file = Some(pki.client_cert_file.clone());
    cfg.rabbitmq.tls_key_file = Some(pki.client_key_file.clone());
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_streams_with_the_client_certificate_and_check_names_it_when_missing() {
    let env = Env::start().await;
    let pki = pki::localhost();
    let node = node(&pki, true).await;
    let tls_url = node.tls_url().unwrap();
    let cert = pki.client_cert_file.display().to_string();
    let key = pki.client_key_file.display().to_string();
    let settings = |url: &str, client: &[(&'static str, &str)]| {
        let mut s = vec![
            ("PGOUTBOX_POSTGRES_URL", env.pg.url()),
            ("PGOUTBOX_DESTINATION", "rabbitmq".into()),
            ("PGOUTBOX_RABBITMQ_URL", url.to_owned()),
            (
                "PGOUTBOX_RABBITMQ_TLS_CA_FILE",
                pki.ca_file.display().to_string(),
            ),
        ];
        s.extend(client.iter().map(|(k, v)| (*k, v.to_string())));
        s
    };
    let both = [
        ("PGOUTBOX_RABBITMQ_TLS_CERT_FILE", cert.as_str()),
        ("PGOUTBOX_RABBITMQ_TLS_KEY_FILE", key.as_str()),
    ];

    // No client certificate: the node refuses the handshake, and check says what to set.
    let (ok, text) = pki::check(&settings(&tls_url, &[])).await;
    assert!(!ok && text.contains("✘ RabbitMQ reachable"), "{text}");
    assert!(
        text.contains("set rabbitmq_tls_cert_file and rabbitmq_tls_key_file"),
        "{text}"
    );
    // A key without its certificate is a configuration error before any connection.
    let (ok, text) = pki::check(&settings(&tls_url, &both[1..])).await;
    assert!(!ok && text.contains("go together"), "{text}");
    // A client certificate with a plain amqp:// URL would silently not be used: refused.
    let plain: Vec<_> = settings(&node.url(), &both)
        .into_iter()
        .filter(|(k, _)| *k != "PGOUTBOX_RABBITMQ_TLS_CA_FILE")
        .collect();
    let (ok, text) = pki::check(&plain).await;
    assert!(
        !ok && text.contains("rabbitmq_tls_cert_file is set but rabbitmq_url is not amqps://"),
        "{text}"
    );
    let (ok, text) = pki::check(&settings(&tls_url, &both)).await;
    assert!(ok && text.contains("✔ RabbitMQ reachable"), "{text}");

    let cfg = with_client_cert(&env, &node, &tls_url, &pki);
    streams_every_event(&env, &node, cfg, "guest").await;
}

/// With mutual TLS the relay may log in as its certificate's common name (SASL EXTERNAL,
/// `?auth_mechanism=external`, no password in the URL): `check` says what is missing while the
/// client certificate is not set and while the node has no such user, then the relay streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_login_as_the_certificate_streams_and_check_names_what_is_missing() {
    let env = Env::start().await;
    let pki = pki::localhost();
    let node = node(&pki, true).await;
    let port = node
        .tls_url()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .to_owned();
    let url = format!("amqps://localhost:{port}?auth_mechanism=external");
    let cert = pki.client_cert_file.display().to_string();
    let key = pki.client_key_file.display().to_string();
    let settings = |with_cert: bool| {
        let mut s = vec![
            ("PGOUTBOX_POSTGRES_URL", env.pg.url()),
            ("PGOUTBOX_DESTINATION", "rabbitmq".into()),
            ("PGOUTBOX_RABBITMQ_URL", url.clone()),
            (
                "PGOUTBOX_RABBITMQ_TLS_CA_FILE",
                pki.ca_file.display().to_string(),
            ),
        ];
        if with_cert {
            s.push(("PGOUTBOX_RABBITMQ_TLS_CERT_FILE", cert.clone()));
            s.push(("PGOUTBOX_RABBITMQ_TLS_KEY_FILE", key.clone()));
        }
        s
    };

    // EXTERNAL without a client certificate cannot work: refused before connecting.
    let (ok, text) = pki::check(&settings(false)).await;
    assert!(
        !ok && text.contains("external logs in as the client certificate's name"),
        "{text}"
    );
    // The node has no user named as the certificate: check says so, with the commands.
    let (ok, text) = pki::check(&settings(true)).await;
    assert!(!ok && text.contains("✘ RabbitMQ reachable"), "{text}");
    assert!(text.contains("rabbitmqctl add_user"), "{text}");

    node.ctl(&["add_user", pki::CLIENT_NAME, "not-used-for-external-login"])
        .unwrap();
    node.ctl(&[
        "set_permissions",
        "-p",
        "/",
        pki::CLIENT_NAME,
        ".*",
        ".*",
        ".*",
    ])
    .unwrap();
    let (ok, text) = pki::check(&settings(true)).await;
    assert!(ok && text.contains("✔ RabbitMQ reachable"), "{text}");

    let cfg = with_client_cert(&env, &node, &url, &pki);
    // Logged in as the certificate's name.
    streams_every_event(&env, &node, cfg, pki::CLIENT_NAME).await;
}
