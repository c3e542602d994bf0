//! DDL and publication changes while streaming: nothing PostgreSQL sends is passed in silence,
//! and a change that makes it stop sending the outbox stops pgoutbox with the WAL range.
//!
//! Each of these confirmed the slot past undelivered events before (an insert into a renamed
//! table or a leaf partition counted as "ignored"; a table out of the publication unnoticed).

use std::collections::HashSet;
use std::time::Duration;

use crate::common::*;
use pgoutbox::embedded::TopicReader;
use pgoutbox::outbox::PoisonPolicy;
use pgoutbox::pipeline::StreamError;

/// Waits for the in-process streamer to end on its own; its error.
async fn ended(running: Running, within: Duration) -> StreamError {
    tokio::time::timeout(within, running.task)
        .await
        .expect("the streamer stops by itself")
        .unwrap()
        .expect_err("the streamer stops with an error")
}

fn ids(events: &[Event]) -> HashSet<String> {
    events.iter().map(|e| e.id.clone()).collect()
}

/// Reads what arrived of `events` (up to 30 s) and prints inserted / delivered / whether the
/// slot was confirmed past them; asserts every one arrived once, in key order.
async fn report(env: &Env, what: &str, events: &[Event], end: pgoutbox::Lsn) {
    let want = ids(events);
    let got = read_until_all(&env.reader(), &want, Duration::from_secs(30)).await;
    let seen: HashSet<String> = got.iter().map(|r| header_str(r, "id")).collect();
    let delivered = want.intersection(&seen).count();
    let confirmed_past = env.confirmed_flush().await.is_some_and(|c| c >= end);
    eprintln!(
        "{what}: {} inserted, {delivered} delivered, slot confirmed past them: {confirmed_past}",
        want.len()
    );
    assert_eq!(delivered, want.len(), "events lost");
    assert_eq!(order_violations(&got), 0);
}

/// A rename, even a brief one, does not hide the outbox: it is followed by its OID.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_outbox_is_still_delivered() {
    let env = Env::start().await;
    let running = env.spawn_streamer(env.config());
    env.wait_streaming().await;
    let events: Vec<Event> = (1..=3).map(|i| Event::new(i, "order", "k")).collect();
    let renamed = events[1]
        .insert_sql()
        .replace("INSERT INTO outbox ", "INSERT INTO outbox_renamed ");
    env.db
        .batch_execute(&format!(
            "{first}
             ALTER TABLE outbox RENAME TO outbox_renamed;
             {renamed}
             ALTER TABLE outbox_renamed RENAME TO outbox;
             {last}",
            first = events[0].insert_sql(),
            last = events[2].insert_sql(),
        ))
        .await
        .unwrap();
    let end = env.current_lsn().await;
    report(&env, "renamed outbox", &events, end).await;
    env.wait_confirmed(end, Duration::from_secs(10)).await;
    running.stop().await;
}

/// A partitioned outbox: inserts arrive under the root, then (publish_via_partition_root
/// switched off while running) under each leaf, including a partition created since the start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_outbox_is_delivered_whatever_the_publication_says_of_its_root() {
    let env = Env::start().await;
    env.db
        .batch_execute(
            "DROP PUBLICATION pgoutbox_pub; DROP TABLE outbox;
             CREATE TABLE outbox (id uuid NOT NULL, aggregatetype text NOT NULL,
                 aggregateid text NOT NULL, type text NOT NULL, payload jsonb)
                 PARTITION BY LIST (aggregatetype);
             CREATE TABLE outbox_order PARTITION OF outbox FOR VALUES IN ('order');
             CREATE TABLE outbox_customer PARTITION OF outbox FOR VALUES IN ('customer');
             CREATE PUBLICATION pgoutbox_pub FOR TABLE outbox
                 WITH (publish = 'insert', publish_via_partition_root = true);",
        )
        .await
        .unwrap();
    let running = env.spawn_streamer(env.config());
    env.wait_streaming().await;
    let events = [
        Event::new(1, "order", "k1"),
        Event::new(2, "customer", "k2"),
        Event::new(3, "order", "k1"),
        Event::new(4, "customer", "k2"),
        Event::new(5, "invoice", "k3"),
    ];
    env.commit(&[events[..2].to_vec()]).await;
    env.db
        .batch_execute(
            "ALTER PUBLICATION pgoutbox_pub SET (publish_via_partition_root = false);
             CREATE TABLE outbox_invoice PARTITION OF outbox FOR VALUES IN ('invoice');",
        )
        .await
        .unwrap();
    env.commit(&[events[2..].to_vec()]).await;
    let end = env.current_lsn().await;
    report(&env, "partitioned outbox", &events, end).await;
    env.wait_confirmed(end, Duration::from_secs(10)).await;
    running.stop().await;

    // A restart with the leaves published (not the root) passes the setup checks.
    let running = env.spawn_streamer(env.config());
    let after = Event::new(6, "customer", "k2");
    env.commit(&[vec![after.clone()]]).await;
    assert_all_arrive(&env, &ids(&[after])).await;
    running.stop().await;
}

/// An insert into a published table that is no outbox is a poison event naming the table:
/// with `on_poison = fail` the stream stops before it, with dead-letter it is set aside.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_insert_into_a_published_table_that_is_no_outbox_is_a_poison_event() {
    let env = Env::start().await;
    env.kafka
        .create_topic(pgoutbox::config::DEFAULT_DEAD_LETTER_TOPIC, 1)
        .unwrap();
    env.db
        .batch_execute(
            "CREATE TABLE published_other (id int PRIMARY KEY, v text);
             ALTER PUBLICATION pgoutbox_pub ADD TABLE published_other;",
        )
        .await
        .unwrap();
    let running = env.spawn_streamer(env.config());
    env.wait_streaming().await;
    let before = env.current_lsn().await;
    env.db
        .batch_execute("INSERT INTO published_other VALUES (1, 'a')")
        .await
        .unwrap();
    let e = ended(running, Duration::from_secs(30)).await;
    assert!(e.is_fatal());
    let text = e.to_string();
    assert!(
        text.contains("insert into public.published_other")
            && text.contains("not a configured outbox table"),
        "{text}"
    );
    assert!(env.confirmed_flush().await.unwrap() <= before);

    // With dead-letter, the row is set aside with the reason, and the stream goes on.
    let mut cfg = env.config();
    cfg.on_poison = PoisonPolicy::DeadLetter;
    let running = env.spawn_streamer(cfg);
    let after = Event::new(7, "order", "k");
    env.commit(&[vec![after.clone()]]).await;
    assert_all_arrive(&env, &ids(&[after])).await;
    let dlq = TopicReader::new(
        env.kafka.bootstrap_servers(),
        &[(pgoutbox::config::DEFAULT_DEAD_LETTER_TOPIC, 1)],
    )
    .unwrap();
    let dead = dlq.read(1, Duration::from_secs(20)).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(header_str(&dead[0], "pgoutbox.error.class"), "unroutable");
    assert!(header_str(&dead[0], "pgoutbox.error.message").contains("public.published_other"));
    let row: serde_json::Value =
        serde_json::from_slice(dead[0].payload.as_deref().unwrap()).unwrap();
    assert_eq!(row["v"], "a");
    running.stop().await;
}

/// The table taken out of the publication while running: pgoutput sends nothing more for
/// it, and pgoutbox stops within seconds, saying since when events may be missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_taken_out_of_the_publication_stops_pgoutbox_with_the_wal_range() {
    let env = Env::start().await;
    let running = env.spawn_streamer(env.config());
    env.wait_streaming().await;
    env.commit(&[vec![Event::new(1, "order", "k")]]).await;
    env.db
        .batch_execute("ALTER PUBLICATION pgoutbox_pub DROP TABLE public.outbox")
        .await
        .unwrap();
    let lost = Event::new(2, "order", "k");
    env.commit(&[vec![lost]]).await;
    let started = std::time::Instant::now();
    let e = ended(running, Duration::from_secs(15)).await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "detected within seconds"
    );
    assert!(e.is_fatal());
    let text = e.to_string();
    assert!(
        text.contains("was taken out of publication \"pgoutbox_pub\"")
            && text.contains("may be missing")
            && text.contains("ALTER PUBLICATION pgoutbox_pub ADD TABLE public.outbox"),
        "{text}"
    );
    // A restart refuses to stream past the gap too.
    let again = ended(env.spawn_streamer(env.config()), Duration::from_secs(15)).await;
    assert!(
        again
            .to_string()
            .contains("does not include table public.outbox"),
        "{again}"
    );
}

/// The outbox dropped and created again with a plain CREATE TABLE (not in the publication).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbox_dropped_and_recreated_stops_pgoutbox() {
    let env = Env::start().await;
    let running = env.spawn_streamer(env.config());
    env.wait_streaming().await;
    env.db
        .batch_execute(
            "DROP TABLE outbox;
             CREATE TABLE outbox (id uuid PRIMARY KEY, aggregatetype text NOT NULL,
                 aggregateid text NOT NULL, type text NOT NULL, payload jsonb);",
        )
        .await
        .unwrap();
    let e = ended(running, Duration::from_secs(15)).await;
    let text = e.to_string();
    assert!(
        e.is_fatal() && text.contains("outbox table public.outbox was dropped"),
        "{text}"
    );
}

/// The payload column renamed, even back again: the row inserted meanwhile no longer fits.
/// It is a poison event, so `on_poison = dead-letter` sets it aside and `fail` stops with the
/// way out. Before, it failed every restart whatever `on_poison` said.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_that_no_longer_fits_is_a_poison_event_not_a_dead_end() {
    let env = Env::start().await;
    let dlq = pgoutbox::config::DEFAULT_DEAD_LETTER_TOPIC;
    env.kafka.create_topic(dlq, 1).unwrap();
    let running = env.spawn_streamer(env.config());
    env.wait_streaming().await;
    let [a, b, c] = [1, 2, 3].map(|i| Event::new(i, "order", "k"));
    env.db
        .batch_execute(&format!(
            "{a}
             ALTER TABLE outbox RENAME COLUMN payload TO body;
             {b}
             ALTER TABLE outbox RENAME COLUMN body TO payload;
             {c}",
            a = a.insert_sql(),
            b = b.insert_sql().replace(", payload)", ", body)"),
            c = c.insert_sql(),
        ))
        .await
        .unwrap();
    let e = ended(running, Duration::from_secs(30)).await;
    let text = e.to_string();
    assert!(
        e.is_fatal()
            && text.contains("has no column \"payload\"")
            && text.contains("set on_poison = dead-letter"),
        "{text}"
    );

    let mut cfg = env.config();
    cfg.on_poison = PoisonPolicy::DeadLetter;
    let running = env.spawn_streamer(cfg);
    assert_all_arrive(&env, &ids(&[a, c])).await;
    let reader = TopicReader::new(env.kafka.bootstrap_servers(), &[(dlq, 1)]).unwrap();
    let dead = reader.read(1, Duration::from_secs(20)).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(header_str(&dead[0], "id"), b.id);
    assert_eq!(header_str(&dead[0], "pgoutbox.error.class"), "malformed");
    let row: serde_json::Value =
        serde_json::from_slice(dead[0].payload.as_deref().unwrap()).unwrap();
    assert!(
        row["body"].as_str().unwrap().contains("\"seq\": 2"),
        "the row is kept whole: {row}"
    );
    running.stop().await;
}

/// The publication dropped and created again: decoding fails from the drop on, for good.
/// pgoutbox stops at once with the way out, and `pgoutbox slot skip --to now` takes it.
/// Before, every restart retried `publication "pgoutbox_pub" does not exist` forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_publication_stops_pgoutbox_and_slot_skip_gets_past_it() {
    let env = Env::start().await;
    let running = env.spawn_streamer(env.config());
    env.wait_streaming().await;
    let [a, gap, c] = [1, 2, 3].map(|i| Event::new(i, "order", "k"));
    env.commit(&[vec![a.clone()]]).await;
    assert_all_arrive(&env, &ids(&[a])).await;
    env.db
        .batch_execute(&format!(
            "DROP PUBLICATION pgoutbox_pub;
             {gap}
             CREATE PUBLICATION pgoutbox_pub FOR TABLE outbox WITH (publish = 'insert');",
            gap = gap.insert_sql()
        ))
        .await
        .unwrap();
    let e = ended(running, Duration::from_secs(15)).await;
    assert!(e.is_fatal(), "{e}");
    assert!(e.to_string().contains("slot skip --to now"), "{e}");

    // A restart fails the same way, at once.
    let e = ended(env.spawn_streamer(env.config()), Duration::from_secs(15)).await;
    let text = e.to_string();
    assert!(
        e.is_fatal()
            && text.contains("publication \"pgoutbox_pub\" does not exist")
            && text.contains("slot skip --to now"),
        "{text}"
    );

    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgoutbox"))
        .args(["slot", "skip", "--to", "now"])
        .env("PGOUTBOX_POSTGRES_URL", env.pg.url())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("replication slot pgoutbox moved from"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let running = env.spawn_streamer(env.config());
    env.commit(&[vec![c.clone()]]).await;
    assert_all_arrive(&env, &ids(&[c])).await;
    running.stop().await;
}
