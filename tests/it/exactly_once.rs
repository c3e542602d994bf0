//! Exactly-once: records carry the Kafka transaction they were written in, the offsets topic
//! records how far the slot's WAL is in Kafka, and PostgreSQL transactions resent from behind
//! that point are skipped, not written again.

use std::collections::HashSet;
use std::time::Duration;

use crate::common::*;
use pgoutbox::delivery::DeliveryMode;
use pgoutbox::destination::kafka::offsets::OffsetRecord;
use pgoutbox::embedded::TopicReader;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_rewound_behind_the_offsets_topic_resends_nothing() {
    let env = Env::start().await;
    // Created by the operator, compacted, like any offsets topic (docs/kafka.md).
    env.kafka.create_topic("pgoutbox.offsets", 1).unwrap();
    // A copy of the slot at its start, to rewind to later.
    env.db
        .batch_execute(
            "SELECT pg_create_logical_replication_slot('pgoutbox', 'pgoutput');
             SELECT pg_copy_logical_replication_slot('pgoutbox', 'pgoutbox_start');",
        )
        .await
        .unwrap();
    let mut cfg = env.config();
    cfg.delivery = DeliveryMode::ExactlyOnce;
    let running = env.spawn_streamer(cfg.clone());
    env.wait_streaming().await;
    let txs = workload(0, 30);
    env.commit(&txs).await;
    let ids: HashSet<String> = txs.iter().flatten().map(|e| e.id.clone()).collect();
    let reader = env.reader();
    let got = read_until_all(&reader, &ids, Duration::from_secs(30)).await;
    assert_eq!(got.len(), ids.len());
    assert!(got.iter().all(|r| r.header("pgoutbox.txn").is_some()));
    let end = env.current_lsn().await;
    env.wait_confirmed(end, Duration::from_secs(10)).await;
    running.stop().await;

    // The offsets topic says where Kafka is, per slot.
    let offsets = TopicReader::new(env.kafka.bootstrap_servers(), &[("pgoutbox.offsets", 1)])
        .unwrap()
        .read(usize::MAX, Duration::from_secs(2))
        .await
        .unwrap();
    let last = offsets.last().expect("offsets records");
    assert_eq!(last.key.as_deref(), Some(&b"pgoutbox"[..]));
    let rec = OffsetRecord::decode(last.payload.as_deref().unwrap()).unwrap();
    assert!(rec.end_lsn >= end, "{rec:?} < {end}");

    // Rewind: the slot is back at its start, so PostgreSQL resends every transaction.
    env.db
        .batch_execute(
            "SELECT pg_drop_replication_slot('pgoutbox');
             SELECT pg_copy_logical_replication_slot('pgoutbox_start', 'pgoutbox');
             SELECT pg_drop_replication_slot('pgoutbox_start');",
        )
        .await
        .unwrap();
    assert!(env.confirmed_flush().await.unwrap() < end);
    let running = env.spawn_streamer(cfg);
    env.wait_streaming().await;
    let more = workload(1000, 5);
    env.commit(&more).await;
    let more_ids: HashSet<String> = more.iter().flatten().map(|e| e.id.clone()).collect();
    let after = read_until_all(&reader, &more_ids, Duration::from_secs(30)).await;
    let again: Vec<String> = after
        .iter()
        .map(|r| header_str(r, "id"))
        .filter(|id| ids.contains(id))
        .collect();
    assert!(again.is_empty(), "resent {} events: {again:?}", again.len());
    assert_eq!(after.len(), more_ids.len());
    // The skipped transactions still advance the slot.
    let end = env.current_lsn().await;
    env.wait_confirmed(end, Duration::from_secs(10)).await;
    running.stop().await;
}

/// Fencing: when the broker says a newer producer has the same `transactional.id` (what
/// Kafka answers a zombie after another instance's `init_transactions`), pgoutbox stops for
/// good instead of writing, and nothing of the fenced transaction is committed or confirmed.
/// The mock broker doesn't fence by itself (measured: a second `init_transactions` leaves the
/// first producer able to commit), so the broker's answer is injected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_instance_stops_instead_of_writing() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let env = Env::start().await;
    env.kafka.create_topic("pgoutbox.offsets", 1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let mut child = env.spawn_binary(
        &log,
        &[
            ("PGOUTBOX_DELIVERY", "exactly-once"),
            ("PGOUTBOX_STATUS_INTERVAL_MS", "200"),
        ],
    );
    env.wait_streaming().await;
    let first = vec![Event::new(1, "order", "k")];
    env.commit(std::slice::from_ref(&first)).await;
    let reader = env.reader();
    read_until_all(
        &reader,
        &HashSet::from([first[0].id.clone()]),
        Duration::from_secs(30),
    )
    .await;
    let before = env.current_lsn().await;
    env.wait_confirmed(before, Duration::from_secs(10)).await;

    env.kafka
        .inject_errors(
            RDKafkaApiKey::AddPartitionsToTxn,
            vec![RDKafkaRespErr::RD_KAFKA_RESP_ERR_PRODUCER_FENCED; 3],
        )
        .unwrap();
    let fenced = Event::new(2, "order", "k");
    // A WAL position read inside the fenced transaction, after its insert, before its commit.
    // The slot may reach it (with nothing in flight, pgoutbox confirms the positions it is
    // told of, and a part of a transaction not yet committed is decoded again after a
    // restart), never the commit.
    env.db
        .batch_execute(&format!("BEGIN; {}", fenced.insert_sql()))
        .await
        .unwrap();
    let inside = env.insert_lsn().await;
    env.db.batch_execute("COMMIT").await.unwrap();
    let (text, last) = exits_with_error(&mut child, &log).await;
    // Reading the offsets topic to its end is no error.
    assert!(!text.contains("PartitionEOF"), "{text}");
    assert!(
        last.starts_with(
            "pgoutbox: error: fenced: another pgoutbox with transactional.id \"pgoutbox-pgoutbox\" has taken over"
        ),
        "{last}"
    );
    // Its transaction never committed: the slot stays before the fenced commit, and no
    // record of it belongs to a committed Kafka transaction.
    let confirmed = env.confirmed_flush().await.unwrap();
    assert!(
        confirmed >= before && confirmed <= inside,
        "confirmed {confirmed:?}, not within {before:?}..={inside:?}: {text}"
    );
    let committed = txns_logged(&text, "committed Kafka transaction");
    let later = reader
        .read(usize::MAX, Duration::from_secs(1))
        .await
        .unwrap();
    for r in later.iter().filter(|r| header_str(r, "id") == fenced.id) {
        assert!(
            !committed.contains(&header_str(r, "pgoutbox.txn")),
            "the fenced event was committed"
        );
    }
}

/// A graceful stop commits the open Kafka transaction (here the interval is far away), then
/// confirms the slot: a restart resends nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_commits_the_open_transaction() {
    let env = Env::start().await;
    env.kafka.create_topic("pgoutbox.offsets", 1).unwrap();
    let mut cfg = env.config();
    cfg.delivery = DeliveryMode::ExactlyOnce;
    cfg.transaction_interval = Duration::from_secs(600);
    let running = env.spawn_streamer(cfg.clone());
    env.wait_streaming().await;
    let txs = workload(0, 10);
    env.commit(&txs).await;
    let ids: HashSet<String> = txs.iter().flatten().map(|e| e.id.clone()).collect();
    let reader = env.reader();
    // Written (the mock shows uncommitted records), but not committed: the slot must wait.
    read_until_all(&reader, &ids, Duration::from_secs(30)).await;
    let end = env.current_lsn().await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        env.confirmed_flush().await.unwrap() < end,
        "confirmed before the Kafka commit"
    );
    running.stop().await;
    assert!(env.confirmed_flush().await.unwrap() >= end);
    let offsets = TopicReader::new(env.kafka.bootstrap_servers(), &[("pgoutbox.offsets", 1)])
        .unwrap()
        .read(usize::MAX, Duration::from_secs(2))
        .await
        .unwrap();
    let rec = OffsetRecord::decode(offsets.last().unwrap().payload.as_deref().unwrap()).unwrap();
    assert!(rec.end_lsn >= end, "{rec:?} < {end}");

    let running = env.spawn_streamer(cfg);
    env.wait_streaming().await;
    let again = reader
        .read(usize::MAX, Duration::from_secs(2))
        .await
        .unwrap();
    assert!(
        again.is_empty(),
        "resent after a graceful stop: {}",
        again.len()
    );
    running.stop().await;
}

/// Exactly-once with `cfg` on `env` stops by itself at start: its error.
async fn refused_at_start(env: &Env, mut cfg: pgoutbox::Config) -> String {
    cfg.delivery = DeliveryMode::ExactlyOnce;
    let running = env.spawn_streamer(cfg);
    tokio::time::timeout(Duration::from_secs(60), running.task)
        .await
        .expect("exactly-once stops")
        .unwrap()
        .unwrap_err()
        .to_string()
}

/// The resume rule's broker check, against a broker that fails it: librdkafka's mock shows
/// aborted transactions to read_committed readers, so an offsets record read there proves no
/// commit. Exactly-once stops at start naming why (the abort probe was read back). Without
/// the probe it would resume after whatever it read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_shows_aborted_transactions_is_refused() {
    let env = Env::start().await;
    env.kafka.create_topic("pgoutbox.offsets", 1).unwrap();
    let mut cfg = env.config();
    cfg.kafka.trust_read_committed = false;
    let err = refused_at_start(&env, cfg).await;
    assert!(
        err.contains("aborted probe record was read back from pgoutbox.offsets"),
        "{err}"
    );
    assert!(err.contains("delivery = at-least-once"), "{err}");
}

/// Exactly-once needs its offsets topic before the first event: missing, it stops at start
/// with the command that creates it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_offsets_topic_is_named_at_start() {
    let env = Env::start().await;
    let err = refused_at_start(&env, env.config()).await;
    assert!(
        err.contains("offsets topic pgoutbox.offsets does not exist"),
        "{err}"
    );
    assert!(
        err.contains("pgoutbox setup --create-kafka-topics"),
        "{err}"
    );
}
