//! A slot that goes missing is never silently recreated: pgoutbox keeps a state record in the
//! database (public.pgoutbox_state), which physical replication and backups carry along, and a
//! missing slot with a record stops it with what may have been missed and how to recover.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use pgoutbox::pipeline::StreamError;

async fn ended(running: Running) -> StreamError {
    tokio::time::timeout(Duration::from_secs(30), running.task)
        .await
        .expect("the streamer stops by itself")
        .unwrap()
        .expect_err("the streamer stops with an error")
}

/// The slot dropped while pgoutbox was down (as after a restored backup or a failover without
/// failover slots): the next start refuses to create a new one; `pgoutbox slot forget` is the
/// deliberate way on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_slot_that_was_streamed_is_not_recreated() {
    let env = Env::start().await;
    let running = env.spawn_streamer(env.config());
    env.wait_streaming().await;
    let first = Event::new(1, "order", "k");
    env.commit(&[vec![first.clone()]]).await;
    assert_all_arrive(&env, &HashSet::from([first.id.clone()])).await;
    running.stop().await;
    let recorded: String = env
        .db
        .query_one(
            "SELECT confirmed_lsn::text FROM pgoutbox_state WHERE slot = 'pgoutbox'",
            &[],
        )
        .await
        .unwrap()
        .get(0);

    env.db
        .batch_execute("SELECT pg_drop_replication_slot('pgoutbox')")
        .await
        .unwrap();
    let missed = Event::new(2, "order", "k");
    env.commit(&[vec![missed]]).await;
    let e = ended(env.spawn_streamer(env.config())).await;
    let text = e.to_string();
    assert!(e.is_fatal(), "{text}");
    assert!(
        text.contains(
            "replication slot \"pgoutbox\" is missing, but pgoutbox streamed from it before"
        ) && text.contains(&format!(
            "Events committed after WAL {recorded} may never be delivered"
        )) && text.contains("pgoutbox slot forget"),
        "{text}"
    );
    let slots: i64 = env
        .db
        .query_one("SELECT count(*) FROM pg_replication_slots", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(slots, 0, "no new slot was created");

    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgoutbox"))
        .args(["slot", "forget"])
        .env("PGOUTBOX_POSTGRES_URL", env.pg.url())
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("forgot replication slot pgoutbox"));
    let running = env.spawn_streamer(env.config());
    env.wait_streaming().await;
    let after = Event::new(3, "order", "k");
    env.commit(&[vec![after.clone()]]).await;
    assert_all_arrive(&env, &HashSet::from([after.id])).await;
    running.stop().await;
}
