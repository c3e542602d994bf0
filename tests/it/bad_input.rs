//! The bad-input catalogue (docs/operations.md, "When something is wrong"): what a user gets
//! wrong, the exact line pgoutbox prints, and that nothing was lost or confirmed early. Rows
//! already proven elsewhere are noted in docs/operations.md with their test.

use std::collections::HashSet;
use std::time::Duration;

use crate::common::*;
use pgoutbox::embedded::{PostgresOptions, TempPostgres};
use tokio::process::Command;

/// Runs `pgoutbox run` to its exit; asserts it failed and returns its last stderr line.
async fn fatal(url: &str, brokers: &str, args: &[&str]) -> String {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        Command::new(env!("CARGO_BIN_EXE_pgoutbox"))
            .arg("run")
            .args(args)
            .env("PGOUTBOX_POSTGRES_URL", url)
            .env("PGOUTBOX_KAFKA_BROKERS", brokers)
            .env("PGOUTBOX_METRICS_ADDR", "")
            .env("RUST_LOG", "off")
            .output(),
    )
    .await
    .expect("exits on its own")
    .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    err.lines().last().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn settings_mistakes() {
    let line = fatal("postgres://u@h:notaport/db", "k:9092", &[]).await;
    assert_eq!(line, "pgoutbox: error: invalid Postgres URL: invalid connection string: invalid value for option `port`");

    let line = fatal(
        "postgres://u@127.0.0.1:9/db",
        "k:9092",
        &["-X", "no.such.property=1"],
    )
    .await;
    assert!(
        line.starts_with("pgoutbox: error: Kafka configuration rejected by librdkafka: Client config error: No such configuration property: \"no.such.property\""),
        "{line}"
    );

    // Out of range: refused at start (a huge shutdown timeout once overflowed the clock).
    let line = fatal(
        "postgres://u@127.0.0.1:9/db",
        "k:9092",
        &["--shutdown-timeout-secs", "18446744073709551615"],
    )
    .await;
    assert_eq!(
        line,
        "pgoutbox: error: shutdown_timeout_secs is out of range: at most 86400 (one day)"
    );
    let line = fatal("postgres://u@127.0.0.1:9/db", "127.0.0.1:99999", &[]).await;
    assert_eq!(
        line,
        "pgoutbox: error: Kafka broker \"127.0.0.1:99999\" is not host:port with a port from 1 to 65535"
    );

    let dir = tempfile::tempdir().unwrap();
    let toml = dir.path().join("bad.toml");
    std::fs::write(&toml, "slot = \"unterminated\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pgoutbox"))
        .arg("--config")
        .arg(&toml)
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.trim_end()
            .ends_with("invalid basic string, expected `\"`")
            && err.contains(&format!(
                "pgoutbox: error: config file {}: TOML parse error at line 1, column 21",
                toml.display()
            )),
        "{err}"
    );

    let out = Command::new(env!("CARGO_BIN_EXE_pgoutbox"))
        .arg("run")
        .env_remove("PGOUTBOX_POSTGRES_URL")
        .output()
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim_end(),
        "pgoutbox: error: no PostgreSQL URL: set postgres_url in the config file, PGOUTBOX_POSTGRES_URL or --postgres-url"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_mistakes() {
    let pg = tokio::task::spawn_blocking(|| {
        TempPostgres::start_with(PostgresOptions {
            settings: vec![],
            hba: vec!["host all pw_user 127.0.0.1/32 scram-sha-256".into()],
        })
    })
    .await
    .unwrap()
    .unwrap();
    let url = pg.url();
    let k = "127.0.0.1:9";

    // Outbox table without a `type` column.
    pg.psql("CREATE TABLE outbox (id uuid, aggregatetype text, aggregateid text, payload jsonb)")
        .unwrap();
    assert_eq!(
        fatal(&url, k, &[]).await,
        "pgoutbox: error: table public.outbox has no column \"type\" (the type column): add it, or set type_column to the column to use"
    );
    // Payload of a type whose bytes are not a record value.
    pg.psql("ALTER TABLE outbox ADD COLUMN type text; ALTER TABLE outbox ALTER COLUMN payload TYPE integer USING NULL")
        .unwrap();
    assert_eq!(
        fatal(&url, k, &[]).await,
        "pgoutbox: error: column \"payload\" of public.outbox has type integer; the payload must be jsonb, json, bytea, text or varchar"
    );
    pg.psql("ALTER TABLE outbox ALTER COLUMN payload TYPE jsonb USING NULL; CREATE PUBLICATION pgoutbox_pub FOR TABLE outbox WITH (publish = 'insert')")
        .unwrap();

    // Header columns: checked at start, not at the first insert. A generated column is
    // never sent by pgoutput (before 18), so it could never become a header.
    pg.psql("ALTER TABLE outbox ADD COLUMN region text GENERATED ALWAYS AS (aggregateid || '-eu') STORED")
        .unwrap();
    assert_eq!(
        fatal(&url, k, &["--additional-headers", "region"]).await,
        "pgoutbox: error: column \"region\" of public.outbox is a generated column, which logical replication does not send (before PostgreSQL 18): store the value in a plain column, or take it out of additional_headers"
    );
    assert_eq!(
        fatal(&url, k, &["--additional-headers", "tenant:x-tenant"]).await,
        "pgoutbox: error: table public.outbox has no column \"tenant\" (the additional header column): add it, or set additional_headers to the column to use"
    );

    // A role without REPLICATION.
    pg.psql("CREATE ROLE plain LOGIN").unwrap();
    assert_eq!(
        fatal(&pg.url_for("plain", "postgres"), k, &[]).await,
        "pgoutbox: error: role \"plain\" may not replicate: run `ALTER ROLE plain REPLICATION;` as a superuser"
    );

    // A wrong password.
    pg.psql("CREATE ROLE pw_user LOGIN REPLICATION PASSWORD 'right'")
        .unwrap();
    let wrong = format!("postgres://pw_user:wrong@127.0.0.1:{}/postgres", pg.port());
    assert_eq!(
        fatal(&wrong, k, &[]).await,
        "pgoutbox: error: PostgreSQL: FATAL 28P01: password authentication failed for user \"pw_user\""
    );

    // No password for a role the server asks one of: fatal at once, not retried.
    let missing = format!("postgres://pw_user@127.0.0.1:{}/postgres", pg.port());
    assert_eq!(
        fatal(&missing, k, &[]).await,
        "pgoutbox: error: PostgreSQL: invalid configuration: password missing; the server asks for a password and none is configured: put it in the URL, PGOUTBOX_POSTGRES_PASSWORD or postgres_password_file"
    );
    // A database that does not exist: fatal at once, not retried.
    assert_eq!(
        fatal(&pg.url_for("postgres", "nope"), k, &[]).await,
        "pgoutbox: error: PostgreSQL: FATAL 3D000: database \"nope\" does not exist; check the database name in the PostgreSQL URL"
    );

    // The slot belongs to another database.
    pg.psql("CREATE DATABASE other").unwrap();
    let other = connect(&pg.url_for("postgres", "other")).await;
    other
        .batch_execute("SELECT pg_create_logical_replication_slot('pgoutbox', 'pgoutput')")
        .await
        .unwrap();
    assert_eq!(
        fatal(&url, k, &[]).await,
        "pgoutbox: error: replication slot \"pgoutbox\" belongs to database \"other\", not \"postgres\": choose another --slot or connect to \"other\""
    );
    // A slot created by another tool with another plugin.
    other
        .batch_execute("SELECT pg_drop_replication_slot('pgoutbox')")
        .await
        .unwrap();
    pg.psql("SELECT pg_create_logical_replication_slot('pgoutbox', 'test_decoding')")
        .unwrap();
    assert_eq!(
        fatal(&url, k, &[]).await,
        "pgoutbox: error: replication slot \"pgoutbox\" uses plugin \"test_decoding\", not pgoutput: drop it (`SELECT pg_drop_replication_slot('pgoutbox');`) or choose another --slot"
    );
}

/// Kafka refuses an oversized record for good: pgoutbox stops with the event's details, the
/// events before it are delivered, and the slot is not confirmed past them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_payload_stops_with_the_event_and_confirms_nothing_past_it() {
    let env = Env::start().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let mut child = env.spawn_binary(&log, &[]);
    env.wait_streaming().await;
    let before = Event::new(1, "order", "k");
    env.commit(&[vec![before.clone()]]).await;
    let reader = env.reader();
    read_until_all(
        &reader,
        &HashSet::from([before.id.clone()]),
        Duration::from_secs(30),
    )
    .await;
    env.insert_oversized().await;
    env.commit(&[vec![Event::new(3, "order", "k")]]).await;
    let (_, line) = exits_with_error(&mut child, &log).await;
    assert!(
        line.starts_with("pgoutbox: error: delivering event 00000000-0000-4000-8000-00000000b16b (")
            && line.contains(" bytes to topic outbox.event.order, WAL ")
            && line.ends_with("failed: Message production error: MessageSizeTooLarge (Broker: Message size too large); raise the producer's message.max.bytes (-X) and the topic's max.message.bytes, or make the payload smaller"),
        "{line}"
    );
    assert!(
        env.confirmed_flush().await.unwrap() <= wal_in(&line),
        "confirmed past the refused event"
    );
    // The event after the refused one was not delivered either: order is kept.
    let later = reader
        .read(usize::MAX, Duration::from_secs(2))
        .await
        .unwrap();
    assert!(later.is_empty(), "{later:?}");
}

/// Two non-HA instances on one slot: the second waits, says why, and delivers nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_in_use_by_another_process_waits_and_says_why() {
    let env = Env::start().await;
    let dir = tempfile::tempdir().unwrap();
    let _a = env.spawn_binary(&dir.path().join("a"), &[]);
    env.wait_streaming().await;
    let log_b = dir.path().join("b");
    let mut b = env.spawn_binary(&log_b, &[]);
    let txs = workload(0, 20);
    let ids: HashSet<String> = txs.iter().flatten().map(|e| e.id.clone()).collect();
    env.commit(&txs).await;
    let reader = env.reader();
    let got = read_until_all(&reader, &ids, Duration::from_secs(30)).await;
    assert_eq!(got.len(), ids.len(), "each event once");
    wait_for("b explains", Duration::from_secs(10), || async {
        std::fs::read_to_string(&log_b)
            .unwrap_or_default()
            .contains("is in use by PID")
    })
    .await;
    let text = std::fs::read_to_string(&log_b).unwrap();
    assert!(
        text.contains("replication slot \"pgoutbox\" is in use by PID ")
            && text.contains("(another pgoutbox or replication client): waiting for it to be released; run standbys with ha = true, or give each instance its own slot"),
        "{text}"
    );
    assert!(b.try_wait().unwrap().is_none(), "b keeps waiting");
}

/// Brokers unreachable: events stay unconfirmed; with a short message.timeout.ms the delivery
/// error is reported and the stream restarts from the slot instead of moving on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_brokers_hold_the_slot_and_say_so() {
    let env = Env::start().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let _child = env.spawn_binary(
        &log,
        &[("PGOUTBOX_KAFKA_PROPERTIES", "message.timeout.ms=1500")],
    );
    env.wait_streaming().await;
    env.kafka.set_brokers_up(false).unwrap();
    let before = env.current_lsn().await;
    env.commit(&workload(0, 3)).await;
    wait_for(
        "the delivery timeout is reported",
        Duration::from_secs(20),
        || async {
            std::fs::read_to_string(&log).unwrap_or_default().contains(
                "failed: Message production error: MessageTimedOut (Local: Message timed out)",
            )
        },
    )
    .await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("stream stopped; reconnecting and resuming from the slot"),
        "{text}"
    );
    assert!(env.confirmed_flush().await.unwrap() <= before);
    env.kafka.set_brokers_up(true).unwrap();
}

/// A NULL aggregateid (possible only if the column allows it; sql/setup.sql says NOT NULL):
/// delivered without a key, with a warning that per-key order is lost for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn null_key_is_delivered_keyless_with_a_warning() {
    let env = Env::start().await;
    env.db
        .batch_execute("ALTER TABLE outbox ALTER COLUMN aggregateid DROP NOT NULL")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let _child = env.spawn_binary(&log, &[]);
    env.wait_streaming().await;
    env.db
        .batch_execute(
            "INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload)
             VALUES ('00000000-0000-4000-8000-00000000000a', 'order', NULL, 'T', '{}')",
        )
        .await
        .unwrap();
    let got = read_until_all(
        &env.reader(),
        &HashSet::from(["00000000-0000-4000-8000-00000000000a".to_owned()]),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].key, None);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("NULL key column: delivered without a key, so without per-key order")
            && text.contains("event=00000000-0000-4000-8000-00000000000a"),
        "{text}"
    );
}
