//! NATS over TLS against a real `nats-server` that requires it, its certificate signed by a
//! generated CA: `check` names `nats_tls_ca_file` while that CA is not trusted, and with it
//! the relay streams every event over TLS into the stream. With mutual TLS (the server
//! verifies clients), `check` names the client certificate settings until they are set, and
//! the relay streams with the certificate. With the user taken from the certificate
//! (`verify_and_map`), `check` names the mapping until the server has a user for the
//! certificate's subject, and the relay streams as that user.

use std::collections::HashSet;
use std::time::Duration;

use crate::common::nats::{STREAM, SUBJECTS};
use crate::common::pki::{self, LocalhostPki};
use crate::common::*;
use async_nats::jetstream::{self, stream};
use pgoutbox::embedded::TempNats;

/// A server requiring TLS (and with `verify_clients` a client certificate), holding the
/// outbox stream; its `tls://` URL and a JetStream context on it.
async fn server(
    pki: &LocalhostPki,
    verify_clients: bool,
) -> (TempNats, String, jetstream::Context) {
    let server = tokio::task::block_in_place(|| TempNats::start_tls(pki.server(verify_clients)))
        .expect("start nats-server with TLS");
    with_stream(pki, server, verify_clients).await
}

/// Creates the outbox stream on `server`, connecting with the client certificate if
/// `verify_clients`; its `tls://` URL and the JetStream context.
async fn with_stream(
    pki: &LocalhostPki,
    server: TempNats,
    verify_clients: bool,
) -> (TempNats, String, jetstream::Context) {
    let url = server.tls_url().unwrap();
    let mut opts = async_nats::ConnectOptions::new()
        .add_root_certificates(pki.ca_file.clone())
        .require_tls(true);
    if verify_clients {
        opts =
            opts.add_client_certificate(pki.client_cert_file.clone(), pki.client_key_file.clone());
    }
    let js = jetstream::new(opts.connect(url.as_str()).await.unwrap());
    js.create_stream(stream::Config {
        name: STREAM.into(),
        subjects: SUBJECTS.iter().map(|s| s.to_string()).collect(),
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .unwrap();
    (server, url, js)
}

/// Runs the relay with `cfg` over 40 transactions: every event stored once, the slot
/// confirmed past them.
async fn streams_every_event(env: &Env, js: &jetstream::Context, cfg: pgoutbox::Config) {
    let running = env.spawn_streamer(cfg);
    env.wait_streaming().await;
    let txs = workload(0, 40);
    let ids: HashSet<String> = txs.iter().flatten().map(|e| e.id.clone()).collect();
    env.commit(&txs).await;
    let end = env.current_lsn().await;
    env.wait_confirmed(end, Duration::from_secs(30)).await;
    running.stop().await;
    let mut stream = js.get_stream(STREAM).await.unwrap();
    let stored = stream.info().await.unwrap().state.messages;
    assert_eq!(stored, ids.len() as u64, "every event, once, over TLS");
}

/// The relay's configuration for `url`, trusting the CA and presenting the client certificate.
fn with_client_cert(
    env: &Env,
    server: &TempNats,
    url: &str,
    pki: &LocalhostPki,
) -> pgoutbox::Config {
    let mut cfg = crate::common::nats::config(env, server);
    cfg.nats.url = url.to_owned();
    cfg.nats.tls_ca_file = Some(pki.ca_file.clone());
    cfg.nats.tls_cert_file = Some(pki.client_cert_file.clone());
    cfg.nats.tls_key_file = Some(pki.client_key_file.clone());
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_streams_with_the_private_ca_and_check_names_it_when_missing() {
    let env = Env::start().await;
    let pki = pki::localhost();
    let (server, url, js) = server(&pki, false).await;
    let settings = |ca: bool| {
        let mut s = vec![
            ("PGOUTBOX_POSTGRES_URL", env.pg.url()),
            ("PGOUTBOX_DESTINATION", "nats".into()),
            ("PGOUTBOX_NATS_URL", url.clone()),
        ];
        if ca {
            s.push((
                "PGOUTBOX_NATS_TLS_CA_FILE",
                pki.ca_file.display().to_string(),
            ));
        }
        s
    };

    // The system does not trust the test CA: check says what to set.
    let (ok, text) = pki::check(&settings(false)).await;
    assert!(!ok && text.contains("✘ NATS reachable"), "{text}");
    assert!(text.contains("set nats_tls_ca_file"), "{text}");
    let (ok, text) = pki::check(&settings(true)).await;
    assert!(ok && text.contains("✔ NATS reachable"), "{text}");

    let mut cfg = crate::common::nats::config(&env, &server);
    cfg.nats.url = url.clone();
    cfg.nats.tls_ca_file = Some(pki.ca_file.clone());
    streams_every_event(&env, &js, cfg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_streams_with_the_client_certificate_and_check_names_it_when_missing() {
    let env = Env::start().await;
    let pki = pki::localhost();
    let (server, url, js) = server(&pki, true).await;
    let cert = pki.client_cert_file.display().to_string();
    let key = pki.client_key_file.display().to_string();
    let settings = |client: &[(&'static str, &str)]| {
        let mut s = vec![
            ("PGOUTBOX_POSTGRES_URL", env.pg.url()),
            ("PGOUTBOX_DESTINATION", "nats".into()),
            ("PGOUTBOX_NATS_URL", url.clone()),
            (
                "PGOUTBOX_NATS_TLS_CA_FILE",
                pki.ca_file.display().to_string(),
            ),
        ];
        s.extend(client.iter().map(|(k, v)| (*k, v.to_string())));
        s
    };

    // No client certificate: the server refuses the handshake, and check says what to set.
    let (ok, text) = pki::check(&settings(&[])).await;
    assert!(!ok && text.contains("✘ NATS reachable"), "{text}");
    assert!(
        text.contains("set nats_tls_cert_file and nats_tls_key_file"),
        "{text}"
    );
    // A certificate without its key is a configuration error before any connection.
    let (ok, text) = pki::check(&settings(&[("PGOUTBOX_NATS_TLS_CERT_FILE", &cert)])).await;
    assert!(!ok && text.contains("go together"), "{text}");
    // A key file that holds no key is named.
    let (ok, text) = pki::check(&settings(&[
        ("PGOUTBOX_NATS_TLS_CERT_FILE", &cert),
        ("PGOUTBOX_NATS_TLS_KEY_FILE", &cert),
    ]))
    .await;
    assert!(!ok && text.contains("nats_tls_key_file"), "{text}");
    let (ok, text) = pki::check(&settings(&[
        ("PGOUTBOX_NATS_TLS_CERT_FILE", &cert),
        ("PGOUTBOX_NATS_TLS_KEY_FILE", &key),
    ]))
    .await;
    assert!(ok && text.contains("✔ NATS reachable"), "{text}");

    streams_every_event(&env, &js, with_client_cert(&env, &server, &url, &pki)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_mapped_to_a_user_streams_and_check_names_the_mapping_when_missing() {
    let env = Env::start().await;
    let pki = pki::localhost();
    let subject = format!("CN={}", pki::CLIENT_NAME);
    let mapped = |users: &[&str]| {
        tokio::task::block_in_place(|| TempNats::start_tls_mapped(pki.server(true), users))
            .expect("start nats-server with verify_and_map")
    };
    let settings = |url: &str| {
        vec![
            ("PGOUTBOX_POSTGRES_URL", env.pg.url()),
            ("PGOUTBOX_DESTINATION", "nats".into()),
            ("PGOUTBOX_NATS_URL", url.to_owned()),
            (
                "PGOUTBOX_NATS_TLS_CA_FILE",
                pki.ca_file.display().to_string(),
            ),
            (
                "PGOUTBOX_NATS_TLS_CERT_FILE",
                pki.client_cert_file.display().to_string(),
            ),
            (
                "PGOUTBOX_NATS_TLS_KEY_FILE",
                pki.client_key_file.display().to_string(),
            ),
        ]
    };

    // The certificate is valid, but no user has its subject: refused, and check says how the
    // server maps certificates to users.
    let other = mapped(&["CN=someone-else"]);
    let (ok, text) = pki::check(&settings(&other.tls_url().unwrap())).await;
    assert!(!ok && text.contains("✘ NATS reachable"), "{text}");
    assert!(
        text.contains("its users must include the certificate's subject"),
        "{text}"
    );
    drop(other);

    let (server, url, js) = with_stream(&pki, mapped(&[subject.as_str()]), true).await;
    let (ok, text) = pki::check(&settings(&url)).await;
    assert!(ok && text.contains("✔ NATS reachable"), "{text}");
    streams_every_event(&env, &js, with_client_cert(&env, &server, &url, &pki)).await;
}
