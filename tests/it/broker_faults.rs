//! Broker faults under load: every broker down for 30 s, and produce errors injected through
//! the mock cluster's fault API, retriable (absorbed, nothing lost or duplicated) and not
//! (pgoutbox stops, nothing confirmed past the failed event).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::common::*;
use rdkafka::types::RDKafkaRespErr;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brokers_down_30s_under_load() {
    let env = Env::start().await;
    let _streamer = env.streaming_binary().await;
    // About 40 s of continuous load.
    let txs = workload(0, 1_600);
    let ids: HashSet<String> = txs.iter().flatten().map(|e| e.id.clone()).collect();
    let checker = env.lsn_checker();
    let writer = env.spawn_writer(txs, Duration::from_millis(20));
    tokio::time::sleep(Duration::from_secs(2)).await;

    env.kafka.set_brokers_up(false).unwrap();
    let down_at = env.current_lsn().await;
    let until = Instant::now() + Duration::from_secs(30);
    let mut samples = 0;
    while Instant::now() < until {
        let c = env.confirmed_flush().await.unwrap();
        assert!(
            c <= down_at,
            "confirmed {c} past {down_at} with every broker down"
        );
        samples += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        env.current_lsn().await > down_at,
        "load continued during the outage"
    );
    env.kafka.set_brokers_up(true).unwrap();

    writer.await.unwrap();
    let got = assert_all_arrive(&env, &ids).await;
    checker.finish().await;
    eprintln!(
        "30 s outage: {} events, {} records ({} duplicates), {samples} LSN samples",
        ids.len(),
        got.len(),
        got.len() - ids.len()
    );
    let end = env.current_lsn().await;
    env.wait_confirmed(end, Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retriable_produce_errors_are_absorbed() {
    let env = Env::start().await;
    let _streamer = env.streaming_binary().await;
    use RDKafkaRespErr::*;
    env.kafka
        .inject_produce_errors(vec![
            RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
            RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
            RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
            RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
            RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS_AFTER_APPEND,
        ])
        .unwrap();
    let txs = workload(0, 100);
    let ids: HashSet<String> = txs.iter().flatten().map(|e| e.id.clone()).collect();
    env.commit(&txs).await;
    let got = read_all(&env, &ids, Duration::from_secs(60)).await;
    let seen: HashSet<String> = got.iter().map(|r| header_str(r, "id")).collect();
    assert_eq!(ids.difference(&seen).count(), 0, "events lost");
    // The idempotent producer's retries do not duplicate.
    assert_eq!(got.len(), ids.len(), "duplicates after retriable errors");
    assert_eq!(order_violations(&got), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_retriable_produce_error_stops_without_confirming_past_it() {
    let env = Env::start().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let mut child = env.spawn_binary(&log, &[]);
    env.wait_streaming().await;
    let first = workload(0, 5);
    env.commit(&first).await;
    let ids: HashSet<String> = first.iter().flatten().map(|e| e.id.clone()).collect();
    let reader = env.reader();
    read_until_all(&reader, &ids, Duration::from_secs(30)).await;
    let before = env.current_lsn().await;
    env.wait_confirmed(before, Duration::from_secs(10)).await;

    env.kafka
        .inject_produce_errors(vec![
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
        ])
        .unwrap();
    env.commit(&[vec![Event::new(100, "order", "k")]]).await;
    let (_, last) = exits_with_error(&mut child, &log).await;
    assert!(
        last.starts_with("pgoutbox: error: delivering event 00000000-0000-4000-8000-000000000100")
            && last.contains("TopicAuthorizationFailed")
            && last.ends_with("; grant this client WRITE (and IDEMPOTENT_WRITE) on the topic"),
        "{last}"
    );
    assert!(
        env.confirmed_flush().await.unwrap() <= wal_in(&last),
        "confirmed past the failed event"
    );
}
