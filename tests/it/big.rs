//! Volume: a 1,000,000-row transaction and a 1 GB backlog are delivered in full by the real
//! binary while its peak RSS (VmHWM) stays under 100 MB.

use std::time::{Duration, Instant};

use crate::common::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

/// Records appended to the outbox topics (no crash here, so exactly one per event). The mock
/// broker keeps only a few MB per partition, so count the high watermark (fresh topics start
/// at offset 0), not high − low.
fn records_in_kafka(env: &Env) -> i64 {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", env.kafka.bootstrap_servers())
        .create()
        .unwrap();
    let mut n = 0;
    for t in AGGREGATE_TYPES {
        for p in 0..PARTITIONS {
            let (_, hi) = c
                .fetch_watermarks(&topic(t), p, Duration::from_secs(10))
                .unwrap();
            n += hi;
        }
    }
    n
}

fn peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb / 1024
}

/// Starts the binary on a backlog already in the slot and waits until all of it is confirmed.
async fn drain(env: &Env, what: &str, expected: i64, extra: &[(&str, &str)]) {
    let end = env.current_lsn().await;
    let dir = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let mut vars = vec![("RUST_LOG", "warn")];
    vars.extend_from_slice(extra);
    let mut child = env.spawn_binary(&dir.path().join("log"), &vars);
    let pid = child.id().unwrap();
    env.wait_confirmed(end, Duration::from_secs(600)).await;
    // at-most-once confirms before it delivers: wait for the records too.
    let deadline = Instant::now() + Duration::from_secs(600);
    while records_in_kafka(env) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let secs = t0.elapsed().as_secs_f64();
    let rss = peak_rss_mib(pid);
    child.start_kill().unwrap();
    let n = records_in_kafka(env);
    eprintln!(
        "{what}: {n} records in {secs:.1} s ({:.0}/s), streamer peak RSS {rss} MiB",
        n as f64 / secs
    );
    assert_eq!(n, expected, "{what}: every event delivered once");
    assert!(rss < 100, "{what}: peak RSS {rss} MiB");
}

/// A test environment whose slot exists before any event is written.
async fn with_slot() -> Env {
    let env = Env::start().await;
    env.db
        .batch_execute("SELECT pg_create_logical_replication_slot('pgoutbox', 'pgoutput')")
        .await
        .unwrap();
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn million_row_transaction() {
    let env = with_slot().await;
    env.db
        .batch_execute(
            "INSERT INTO outbox (aggregatetype, aggregateid, type, payload)
             SELECT (ARRAY['order','customer','invoice'])[1 + g % 3], 'agg-' || (g % 1000), 'T',
                    jsonb_build_object('seq', g)
             FROM generate_series(1, 1000000) g",
        )
        .await
        .unwrap();
    drain(&env, "1,000,000-row transaction", 1_000_000, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gigabyte_backlog() {
    let env = with_slot().await;
    // 8,192 events of 128 KiB = 1 GiB of payload, in 64 transactions.
    for batch in 0..64 {
        env.db
            .batch_execute(&format!(
                "INSERT INTO outbox (aggregatetype, aggregateid, type, payload)
                 SELECT (ARRAY['order','customer','invoice'])[1 + g % 3], 'agg-' || (g % 100), 'T',
                        jsonb_build_object('g', g, 'pad', repeat(md5(g::text), 4096))
                 FROM generate_series({}, {}) g",
                batch * 128,
                batch * 128 + 127
            ))
            .await
            .unwrap();
    }
    let payload: i64 = env
        .db
        .query_one(
            "SELECT sum(octet_length(payload::text))::bigint FROM outbox",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(payload >= 1 << 30, "{payload} bytes of payload");
    drain(&env, "1 GiB backlog", 8_192, &[]).await;
}

/// at-most-once holds a transaction until its Commit is confirmed: past the in-flight byte
/// budget it holds the rest on disk, so memory stays bounded. Before, a 300,000-row × 4 KB
/// transaction peaked at 1,687 MB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_once_huge_transaction_holds_on_disk() {
    let env = with_slot().await;
    // 40,000 events of 4 KiB: 160 MiB in one transaction.
    env.db
        .batch_execute(
            "INSERT INTO outbox (aggregatetype, aggregateid, type, payload)
             SELECT (ARRAY['order','customer','invoice'])[1 + g % 3], 'agg-' || (g % 100), 'T',
                    jsonb_build_object('g', g, 'pad', repeat(md5(g::text), 128))
             FROM generate_series(1, 40000) g",
        )
        .await
        .unwrap();
    drain(
        &env,
        "at-most-once 160 MiB transaction",
        40_000,
        &[("PGOUTBOX_DELIVERY", "at-most-once")],
    )
    .await;
}
