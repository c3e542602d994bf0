//! NATS over TLS against a real `nats-server` that requires it, its certificate signed by a
//! generated CA: `check` names `nats_tls_ca_file` while that CA is not trusted, and with it
//! the relay streams every event over TLS into the stream.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use common::nats::{STREAM, SUBJECTS};
use common::pki;
use common::*;
use pgoutbox::embedded::TempNats;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_streams_with_the_private_ca_and_check_names_it_when_missing() {
    let env = Env::start().await;
    let pki = pki::localhost();
    let (cert, key) = (pki.cert.clone(), pki.key.clone());
    let server = tokio::task::spawn_blocking(move || TempNats::start_tls(&cert, &key))
        .await
        .unwrap()
        .expect("start nats-server with TLS");
    let url = server.tls_url().unwrap();
    pgoutbox::tls::ensure_default_provider();
    let client = async_nats::ConnectOptions::new()
        .add_root_certificates(pki.ca_file.clone())
        .require_tls(true)
        .connect(url.as_str())
        .await
        .unwrap();
    let js = jetstream::new(client);
    js.create_stream(stream::Config {
        name: STREAM.into(),
        subjects: SUBJECTS.iter().map(|s| s.to_string()).collect(),
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .unwrap();
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

    let mut cfg = common::nats::config(&env, &server);
    cfg.nats.url = url.clone();
    cfg.nats.tls_ca_file = Some(pki.ca_file.clone());
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
