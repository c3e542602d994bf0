//! What an operator does around a running relay never costs an event and never passes
//! silently: a reload that would switch slots, a standby's address, slot commands against a
//! running relay or past the end of WAL, a moved outbox table, an interrupted `setup`.

use std::collections::HashSet;
use std::time::Duration;

use crate::common::*;

/// Runs the binary with `args` against `url` (no broker needed).
async fn pgoutbox(url: &str, args: &[&str]) -> (bool, String, String) {
    cli(args, url, "127.0.0.1:9").await
}

fn signal(child: &tokio::process::Child, sig: i32) {
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id().unwrap() as i32, sig) };
}

async fn slot_exists(env: &Env, slot: &str) -> bool {
    env.db
        .query_opt(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap()
        .is_some()
}

/// A SIGHUP that changes the slot while a transaction is open and events are being written:
/// refused, said once, and the relay streams on from the same slot: 0 lost. (It used to stop,
/// create the new slot at the present and lose everything committed in between.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_changes_the_slot_is_refused_and_loses_nothing() {
    let env = Env::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (log, conf) = (dir.path().join("log"), dir.path().join("pgoutbox.toml"));
    std::fs::write(&conf, "slot = \"pgoutbox\"\n").unwrap();
    let mut child = env.spawn_binary(&log, &[("PGOUTBOX_CONFIG", conf.to_str().unwrap())]);
    env.wait_streaming().await;

    // An open transaction across the reload: its rows commit after it.
    let open = connect(&env.pg.url()).await;
    let held = workload(100_000, 5);
    let mut sql = String::from("BEGIN;");
    for e in held.iter().flatten() {
        sql.push_str(&e.insert_sql());
    }
    open.batch_execute(&sql).await.unwrap();
    let txs = workload(0, 300);
    let mut ids: HashSet<String> = txs.iter().flatten().map(|e| e.id.clone()).collect();
    ids.extend(held.iter().flatten().map(|e| e.id.clone()));
    let writer = env.spawn_writer(txs, Duration::from_millis(10));
    tokio::time::sleep(Duration::from_millis(700)).await;
    std::fs::write(&conf, "slot = \"third_slot\"\n").unwrap();
    signal(&child, libc::SIGHUP);
    tokio::time::sleep(Duration::from_millis(700)).await;
    open.batch_execute("COMMIT").await.unwrap();
    writer.await.unwrap();

    let got = read_all(&env, &ids, Duration::from_secs(60)).await;
    let distinct: HashSet<String> = got.iter().map(|r| header_str(r, "id")).collect();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        child.try_wait().unwrap().is_none(),
        "still running:\n{text}"
    );
    assert_eq!(ids.difference(&distinct).count(), 0, "lost events:\n{text}");
    assert_eq!(text.matches("SIGHUP refused").count(), 1, "{text}");
    assert!(
        text.contains("pg_copy_logical_replication_slot('pgoutbox', 'third_slot')"),
        "{text}"
    );
    assert!(!slot_exists(&env, "third_slot").await, "no new slot");
    assert!(!text.contains("configuration reloaded"), "{text}");
    signal(&child, libc::SIGTERM);
    assert!(child.wait().await.unwrap().success());
}

/// `postgres_url` pointing at a standby: `check` fails with one line saying so and what to
/// set; `run` says it at every retry, with the same fix, and keeps retrying (a standby may be
/// promoted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_is_named_by_check_and_run() {
    let env = Env::start().await;
    let standby = pgoutbox::embedded::TempPostgres::standby_of(
        &env.pg,
        "standby",
        None,
        pgoutbox::embedded::PostgresOptions::default(),
    )
    .expect("standby");
    let url = standby.url();
    const SAID: &str = "this server is a standby (in recovery)";

    let (ok, out, _) = pgoutbox(&url, &["check"]).await;
    assert!(!ok, "{out}");
    assert!(out.contains(SAID), "{out}");
    assert!(out.contains("target_session_attrs=read-write"), "{out}");
    assert!(
        !out.contains("replication slot") && !out.contains("slot forget"),
        "nothing else is claimed of a standby:\n{out}"
    );

    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgoutbox"))
        .arg("run")
        .env("PGOUTBOX_POSTGRES_URL", &url)
        .env("PGOUTBOX_KAFKA_BROKERS", env.kafka.bootstrap_servers())
        .env("PGOUTBOX_METRICS_ADDR", "")
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_for("two retries", Duration::from_secs(20), || async {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches(SAID)
            .count()
            >= 2
    })
    .await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("WAL control functions"), "{text}");
    drop(child);
}

/// `slot forget` while a relay streams from the slot refuses (the relay would write the
/// record again); `slot skip` past the end of WAL moves nothing and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_commands_refuse_what_they_cannot_do() {
    let env = Env::start().await;
    let (_dir, mut child) = env.streaming_binary().await;
    let record = || async {
        env.db
            .query_opt("SELECT 1 FROM pgoutbox_state WHERE slot = 'pgoutbox'", &[])
            .await
            .unwrap()
            .is_some()
    };
    wait_for("the state record", Duration::from_secs(10), record).await;
    let (ok, _, err) = pgoutbox(&env.pg.url(), &["slot", "forget"]).await;
    assert!(!ok, "{err}");
    assert!(
        err.contains("nothing forgotten; stop pgoutbox first"),
        "{err}"
    );
    assert!(record().await, "the record stays");

    signal(&child, libc::SIGTERM);
    assert!(child.wait().await.unwrap().success());
    let before = env.confirmed_flush().await;
    let (ok, _, err) = pgoutbox(&env.pg.url(), &["slot", "skip", "--to", "FF/0"]).await;
    assert!(!ok, "{err}");
    assert!(err.contains("is past the end of WAL"), "{err}");
    assert!(err.contains("nothing moved"), "{err}");
    assert_eq!(env.confirmed_flush().await, before, "the slot did not move");

    let (ok, out, err) = pgoutbox(&env.pg.url(), &["slot", "forget"]).await;
    assert!(ok, "{err}");
    assert!(out.contains("forgot replication slot pgoutbox"), "{out}");
}

/// After `ALTER TABLE outbox SET SCHEMA s2`, `check` and `run` name the table's new schema
/// and the setting to change, instead of suggesting `setup` (which would create a second,
/// empty outbox).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_outbox_table_is_named_with_its_new_schema() {
    let env = Env::start().await;
    env.db
        .batch_execute("CREATE SCHEMA s2; ALTER TABLE public.outbox SET SCHEMA s2;")
        .await
        .unwrap();
    const SAID: &str = "table public.outbox does not exist, but s2.outbox does";
    let (ok, out, _) = pgoutbox(&env.pg.url(), &["check"]).await;
    assert!(!ok, "{out}");
    assert!(out.contains(SAID), "{out}");
    assert!(out.contains("set table = \"s2.outbox\""), "{out}");

    let running = env.spawn_streamer(env.config());
    let e = tokio::time::timeout(Duration::from_secs(30), running.task)
        .await
        .expect("stops by itself")
        .unwrap()
        .expect_err("stops with an error");
    assert!(e.is_fatal(), "{e}");
    assert!(e.to_string().contains(SAID), "{e}");
}

/// SIGTERM while `setup` waits to create the slot (an open transaction holds it up): the
/// slot is not created later behind the operator's back, and `setup` says what it left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_setup_leaves_nothing_half_made() {
    let env = Env::start().await;
    let open = connect(&env.pg.url()).await;
    open.batch_execute(&format!(
        "BEGIN; {}",
        Event::new(1, "order", "k").insert_sql()
    ))
    .await
    .unwrap();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgoutbox"))
        .arg("setup")
        .env("PGOUTBOX_POSTGRES_URL", env.pg.url())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_for(
        "setup waiting for the open transaction",
        Duration::from_secs(20),
        || async {
            env.db
                .query_opt(
                    "SELECT 1 FROM pg_stat_activity
                     WHERE query LIKE '%pg_create_logical_replication_slot%'
                       AND wait_event_type = 'Lock'",
                    &[],
                )
                .await
                .unwrap()
                .is_some()
        },
    )
    .await;
    signal(&child, libc::SIGTERM);
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("setup exits")
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("nothing half-made"), "{err}");
    assert!(err.contains("was not created"), "{err}");
    open.batch_execute("COMMIT").await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !slot_exists(&env, "pgoutbox").await,
        "no slot appears later"
    );
}
