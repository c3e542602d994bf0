//! (d) While every broker is down, the slot is not confirmed past the last fully acked
//! transaction, although the streamer has received the newer ones; when the brokers return,
//! everything arrives and the slot advances.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_holds_while_brokers_are_down_then_catches_up() {
    let env = Env::start().await;
    let running = env.spawn_streamer(env.config());
    env.wait_streaming().await;
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
    env.kafka.set_brokers_up(false).unwrap();
    let before2 = env.current_lsn().await;
    let batch2 = workload(10_000, 30);
    env.commit(&batch2).await;
    let after2 = env.current_lsn().await;

    // The streamer receives batch 2 (its reported write position passes it) …
    wait_for(
        "streamer received batch 2",
        Duration::from_secs(20),
        || async { env.reported_write().await.is_some_and(|w| w >= after2) },
    )
    .await;
    // … but for several status intervals never confirms any of it.
    let until = Instant::now() + Duration::from_secs(4);
    let mut samples = 0;
    while Instant::now() < until {
        let confirmed = env.confirmed_flush().await.unwrap();
        assert!(
            confirmed <= before2,
            "confirmed {confirmed} passed the last acked transaction (≤ {before2}) while brokers were down"
        );
        samples += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(samples > 10);

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
    running.stop().await;
}
