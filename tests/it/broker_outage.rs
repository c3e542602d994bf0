//! (d) While every broker is down, the slot is not confirmed past the last fully acked
//! transaction; when the brokers return, everything arrives and the slot advances.
//! With a tiny in-flight budget the reader also pauses (backpressure), and status updates keep
//! flowing while it is paused, so a short `wal_sender_timeout` never kills the connection.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_holds_while_brokers_are_down_then_catches_up() {
    let env = Env::start().await;
    for sql in [
        "ALTER SYSTEM SET wal_sender_timeout = '2s'",
        "SELECT pg_reload_conf()",
    ] {
        env.db.batch_execute(sql).await.unwrap();
    }
    let mut cfg = env.config();
    cfg.max_in_flight_events = 10;
    let running = env.spawn_streamer(cfg);
    env.wait_streaming().await;
    let walsender_pid = || async {
        env.db
            .query_one(
                "SELECT pid FROM pg_stat_replication WHERE application_name = 'pgoutbox'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i32>(0)
    };
    let reader = env.reader();

    // Batch 1 is delivered and confirmed while Kafka is up.
    let batch1 = workload(0, 20);
    env.commit(&batch1).await;
    let after1 = env.current_lsn().await;
    let ids1: HashSet<String> = batch1.iter().flatten().map(|e| e.id.clone()).collect();
    let got1 = read_until_all(&reader, &ids1, Duration::from_secs(30)).await;
    assert_eq!(got1.len(), ids1.len());
    env.wait_confirmed(after1, Duration::from_secs(10)).await;

    // Brokers down; batch 2 commits in Postgres.
    let pid = walsender_pid().await;
    env.kafka.set_brokers_up(false).unwrap();
    let before2 = env.current_lsn().await;
    let batch2 = workload(10_000, 30);
    env.commit(&batch2).await;
    let after2 = env.current_lsn().await;

    // The streamer receives the start of batch 2 (its reported write position passes it) …
    wait_for(
        "streamer received batch 2",
        Duration::from_secs(20),
        || async { env.reported_write().await.is_some_and(|w| w > before2) },
    )
    .await;
    // … but never confirms any of it, and with 10 events in flight it stops reading, for
    // more than twice wal_sender_timeout.
    let until = Instant::now() + Duration::from_secs(4);
    let mut samples = 0;
    while Instant::now() < until {
        let confirmed = env.confirmed_flush().await.unwrap();
        assert!(
            confirmed <= before2,
            "confirmed {confirmed} passed the last acked transaction (≤ {before2}) while brokers were down"
        );
        let received = env.reported_write().await.unwrap();
        assert!(
            received < after2,
            "the reader did not pause: received {received} of {after2}"
        );
        samples += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(samples >= 3, "only {samples} LSN samples during the outage");

    // Brokers return: every batch-2 event arrives and the slot moves past it.
    env.kafka.set_brokers_up(true).unwrap();
    let ids2: HashSet<String> = batch2.iter().flatten().map(|e| e.id.clone()).collect();
    let got2 = read_until_all(&reader, &ids2, Duration::from_secs(60)).await;
    let seen: HashSet<String> = got2.iter().map(|r| header_str(r, "id")).collect();
    assert!(
        ids2.is_subset(&seen),
        "missing {} events",
        ids2.difference(&seen).count()
    );
    assert_eq!(order_violations(&got2), 0);
    env.wait_confirmed(after2, Duration::from_secs(20)).await;
    assert_eq!(
        walsender_pid().await,
        pid,
        "the replication connection was dropped during the outage (status updates stopped?)"
    );
    running.stop().await;
}
