//! `/metrics`, `/healthz` and `/readyz` of the real binary.

use std::collections::HashSet;
use std::process::Stdio;
use std::time::Duration;

use crate::common::*;

/// The value of the first sample whose line starts with `prefix`.
fn sample(metrics: &str, prefix: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health_endpoints() {
    let env = Env::start().await;
    let port = free_port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgoutbox"))
        .env("PGOUTBOX_POSTGRES_URL", env.pg.url())
        .env("PGOUTBOX_KAFKA_BROKERS", env.kafka.bootstrap_servers())
        .env("PGOUTBOX_METRICS_ADDR", format!("127.0.0.1:{port}"))
        .env("PGOUTBOX_READY_MAX_LAG_BYTES", "1000000")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_for("/healthz", Duration::from_secs(30), || async {
        get(port, "/healthz").await.is_some_and(|(c, _)| c == 200)
    })
    .await;
    env.wait_streaming().await;
    wait_for(
        "/readyz 200 while streaming",
        Duration::from_secs(15),
        || async { get(port, "/readyz").await.is_some_and(|(c, _)| c == 200) },
    )
    .await;

    let txs = workload(0, 40);
    let n = txs.iter().flatten().count();
    let per_topic = |t: &str| {
        txs.iter()
            .flatten()
            .filter(|e| e.aggregate_type == t)
            .count()
    };
    env.commit(&txs).await;
    let ids: HashSet<String> = txs.iter().flatten().map(|e| e.id.clone()).collect();
    read_until_all(&env.reader(), &ids, Duration::from_secs(30)).await;
    let end = env.current_lsn().await;
    env.wait_confirmed(end, Duration::from_secs(10)).await;

    // The slot monitor polls every 5 s; wait for its gauges too.
    wait_for("metrics settle", Duration::from_secs(20), || async {
        let text = get(port, "/metrics")
            .await
            .map(|(_, b)| b)
            .unwrap_or_default();
        sample(&text, "pgoutbox_confirmed_lsn").is_some_and(|c| c >= end.0 as f64)
            && text.contains("pgoutbox_slot_retained_wal_bytes")
            && text.contains("pgoutbox_slot_wal_keep_limit_bytes")
    })
    .await;
    let text = get(port, "/metrics").await.unwrap().1;
    for t in AGGREGATE_TYPES {
        let line = format!(
            "pgoutbox_events_delivered_total{{topic=\"{}\",destination=\"kafka\"}}",
            topic(t)
        );
        assert_eq!(
            sample(&text, &line),
            Some(per_topic(t) as f64),
            "{line}\n{text}"
        );
    }
    assert_eq!(
        sample(
            &text,
            "pgoutbox_commit_to_ack_seconds_count{destination=\"kafka\"}"
        ),
        Some(n as f64),
        "{text}"
    );
    assert!(
        text.contains("pgoutbox_commit_to_ack_seconds_bucket{destination=\"kafka\",le=\"0.005\"}"),
        "{text}"
    );
    assert_eq!(sample(&text, "pgoutbox_in_flight_events"), Some(0.0));
    assert_eq!(sample(&text, "pgoutbox_streaming"), Some(1.0));
    // What the alert rules (deploy/prometheus) read.
    assert_eq!(
        sample(&text, "pgoutbox_events_decoded_total"),
        Some(n as f64),
        "{text}"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let advanced = sample(&text, "pgoutbox_confirmed_advanced_timestamp_seconds").unwrap();
    assert!(now - advanced < 60.0, "last advance {advanced}, now {now}");
    // The throwaway server runs with the default max_slot_wal_keep_size = -1 (unlimited).
    assert_eq!(
        sample(&text, "pgoutbox_slot_wal_keep_limit_bytes"),
        Some(-1.0)
    );
    assert_eq!(sample(&text, "pgoutbox_slot_invalidated"), Some(0.0));
    assert!(
        text.contains(&format!(
            "pgoutbox_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )),
        "{text}"
    );
    assert!(sample(&text, "pgoutbox_received_lsn").unwrap() >= end.0 as f64);
    assert!(
        text.contains("# HELP pgoutbox_commit_to_ack_seconds"),
        "{text}"
    );

    // Brokers down and 2 MB of unconfirmed outbox WAL: readiness fails on lag, liveness holds.
    env.kafka.set_brokers_up(false).unwrap();
    env.db
        .batch_execute(
            "INSERT INTO outbox (aggregatetype, aggregateid, type, payload)
             SELECT 'order', 'k', 'T', jsonb_build_object('pad', repeat('x', 1000))
             FROM generate_series(1, 2000)",
        )
        .await
        .unwrap();
    wait_for("/readyz 503 on lag", Duration::from_secs(20), || async {
        get(port, "/readyz")
            .await
            .is_some_and(|(c, b)| c == 503 && b.contains("lag"))
    })
    .await;
    assert_eq!(get(port, "/healthz").await.map(|(c, _)| c), Some(200));
    let text = get(port, "/metrics").await.unwrap().1;
    assert!(
        sample(&text, "pgoutbox_slot_lag_bytes").unwrap() > 1_000_000.0,
        "{text}"
    );
    assert!(
        sample(&text, "pgoutbox_in_flight_events").unwrap() > 0.0,
        "{text}"
    );
    env.kafka.set_brokers_up(true).unwrap();
    child.start_kill().unwrap();
}
