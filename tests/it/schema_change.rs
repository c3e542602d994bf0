//! The outbox table altered mid-stream: a column added, and the payload's type changed. The
//! server sends a new Relation message; the mapper relearns column positions and types, and
//! every event before, between and after arrives with the right value.

use std::collections::HashSet;
use std::time::Duration;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_altered_mid_stream() {
    let env = Env::start().await;
    let running = env.spawn_streamer(env.config());
    env.wait_streaming().await;
    let reader = env.reader();
    let checker = env.lsn_checker();

    let first = workload(0, 10);
    env.spawn_writer(first.clone(), Duration::ZERO)
        .await
        .unwrap();
    // A new column first in the tuple order would shift positions if they were not relearned.
    env.db
        .batch_execute("ALTER TABLE outbox ADD COLUMN traceparent text DEFAULT '00-abc-def-01'")
        .await
        .unwrap();
    let second = workload(1_000, 10);
    env.spawn_writer(second.clone(), Duration::ZERO)
        .await
        .unwrap();
    // jsonb → text: same text form, now sent as a text column.
    env.db
        .batch_execute("ALTER TABLE outbox ALTER COLUMN payload TYPE text")
        .await
        .unwrap();
    let third = workload(2_000, 10);
    env.spawn_writer(third.clone(), Duration::ZERO)
        .await
        .unwrap();
    // text → bytea: the record value must be the raw bytes, not the \\x hex text form.
    env.db
        .batch_execute(
            "ALTER TABLE outbox ALTER COLUMN payload TYPE bytea USING convert_to(payload, 'UTF8')",
        )
        .await
        .unwrap();
    let fourth = workload(3_000, 10);
    env.spawn_writer(fourth.clone(), Duration::ZERO)
        .await
        .unwrap();

    let all: Vec<&Event> = first
        .iter()
        .chain(&second)
        .chain(&third)
        .chain(&fourth)
        .flatten()
        .collect();
    let ids: HashSet<String> = all.iter().map(|e| e.id.clone()).collect();
    let got = read_until_all(&reader, &ids, Duration::from_secs(30)).await;
    assert_eq!(got.len(), all.len());
    for r in &got {
        // Every payload, whatever the column type at the time, is the JSON as written.
        let v: serde_json::Value = serde_json::from_slice(r.payload.as_deref().unwrap())
            .unwrap_or_else(|e| {
                panic!(
                    "{e}: {:?}",
                    String::from_utf8_lossy(r.payload.as_deref().unwrap())
                )
            });
        assert_eq!(
            v["key"].as_str().unwrap().as_bytes(),
            r.key.as_deref().unwrap()
        );
    }
    assert_eq!(order_violations(&got), 0);
    checker.finish().await;
    let end = env.current_lsn().await;
    env.wait_confirmed(end, Duration::from_secs(10)).await;
    running.stop().await;
}
