//! `setup`, `check` and `status` through the real binary against a real server and broker.

use pgoutbox::embedded::{TempKafka, TempPostgres};

async fn pgoutbox(args: &[&str], url: &str, brokers: &str) -> (bool, String, String) {
    crate::common::cli(args, url, brokers).await
}

fn line<'a>(out: &'a str, name: &str) -> &'a str {
    out.lines()
        .find(|l| l[l.char_indices().nth(2).map_or(0, |(i, _)| i)..].starts_with(name))
        .unwrap_or_else(|| panic!("no {name:?} line in:\n{out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_setup_check_status() {
    let pg = tokio::task::spawn_blocking(TempPostgres::start)
        .await
        .unwrap()
        .unwrap();
    let kafka = TempKafka::start(1).unwrap();
    let (url, brokers) = (pg.url(), kafka.bootstrap_servers().to_owned());

    // Nothing set up yet: check fails, naming each problem and its fix.
    let (ok, out, err) = pgoutbox(&["check"], &url, &brokers).await;
    assert!(!ok);
    assert!(err.contains("checks failed"), "{err}");
    assert!(line(&out, "PostgreSQL reachable").starts_with('✔'), "{out}");
    assert!(line(&out, "wal_level").starts_with('✔'), "{out}");
    assert!(
        line(&out, "outbox table")
            .starts_with("✘ outbox table: table public.outbox does not exist: run"),
        "{out}"
    );
    assert!(line(&out, "publication").starts_with('✘'), "{out}");
    assert!(
        line(&out, "Kafka reachable").starts_with("✔ Kafka reachable: 1 broker(s)"),
        "{out}"
    );

    // setup is idempotent and creates the slot once.
    let (ok, out, err) = pgoutbox(&["setup"], &url, "").await;
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("✔ created replication slot pgoutbox (pgoutput) at "),
        "{out}"
    );
    let (ok, out, _) = pgoutbox(&["setup"], &url, "").await;
    assert!(ok);
    assert!(
        out.contains("✔ replication slot pgoutbox already exists"),
        "{out}"
    );

    let (ok, out, err) = pgoutbox(&["check"], &url, &brokers).await;
    assert!(ok, "{out}{err}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with('✔')).count(),
        out.lines().count(),
        "{out}"
    );
    assert!(out.lines().count() >= 9, "{out}");

    // A role without REPLICATION is caught with its fix; Kafka down is caught too.
    pg.psql("CREATE ROLE plain LOGIN").unwrap();
    let plain = pg.url_for("plain", "postgres");
    let (ok, out, _) = pgoutbox(&["check"], &plain, "127.0.0.1:9").await;
    assert!(!ok);
    assert!(
        line(&out, "REPLICATION privilege").contains("run `ALTER ROLE plain REPLICATION;`"),
        "{out}"
    );
    assert!(line(&out, "Kafka reachable").starts_with('✘'), "{out}");

    // status, text and JSON.
    pg.psql(
        "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES ('a','b','c','{}')",
    )
    .unwrap();
    let (ok, out, _) = pgoutbox(&["status"], &url, "").await;
    assert!(ok);
    assert!(out.contains("active               no"), "{out}");
    let (ok, out, _) = pgoutbox(&["status", "--json"], &url, "").await;
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["exists"], true);
    assert_eq!(v["active"], false);
    assert!(v["lag_bytes"].as_i64().unwrap() > 0, "{v}");
    assert!(v["retained_wal_bytes"].as_i64().unwrap() >= v["lag_bytes"].as_i64().unwrap());
}

/// `setup` with a slot of that name in another database: refused with the fix, not
/// "✔ replication slot … already exists".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_refuses_a_slot_of_another_database() {
    let pg = tokio::task::spawn_blocking(TempPostgres::start)
        .await
        .unwrap()
        .unwrap();
    pg.psql("CREATE DATABASE other").unwrap();
    let other = crate::common::connect(&pg.url_for("postgres", "other")).await;
    other
        .batch_execute("SELECT pg_create_logical_replication_slot('pgoutbox', 'pgoutput')")
        .await
        .unwrap();
    let (ok, out, err) = pgoutbox(&["setup"], &pg.url(), "").await;
    assert!(!ok, "{out}");
    assert!(!out.contains("already exists"), "{out}");
    assert_eq!(
        err.trim_end(),
        "pgoutbox: error: replication slot \"pgoutbox\" belongs to database \"other\", not \"postgres\": choose another --slot or connect to \"other\""
    );
}

/// `status` exits non-zero when the slot is missing or lost, after printing it (JSON too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_fails_for_a_missing_or_lost_slot() {
    let pg = tokio::task::spawn_blocking(TempPostgres::start)
        .await
        .unwrap()
        .unwrap();
    let url = pg.url();
    let (ok, out, err) = pgoutbox(&["status", "--json"], &url, "").await;
    assert!(!ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["exists"], false);
    assert_eq!(
        err.trim_end(),
        "pgoutbox: error: replication slot \"pgoutbox\" does not exist"
    );

    // A slot whose WAL the server removed (max_slot_wal_keep_size) is lost.
    pg.psql("SELECT pg_create_logical_replication_slot('pgoutbox', 'pgoutput')")
        .unwrap();
    pg.psql("ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'")
        .unwrap();
    pg.psql("SELECT pg_reload_conf()").unwrap();
    pg.psql("CREATE TABLE w (x text)").unwrap();
    for _ in 0..20 {
        pg.psql("INSERT INTO w SELECT repeat('x', 1000) FROM generate_series(1, 5000)")
            .unwrap();
        pg.psql("SELECT pg_switch_wal()").unwrap();
        pg.psql("CHECKPOINT").unwrap();
        let status = pg
            .psql("SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'pgoutbox'")
            .unwrap();
        if status == "lost" {
            break;
        }
    }
    let (ok, out, err) = pgoutbox(&["status"], &url, "").await;
    assert!(!ok, "{out}");
    assert!(out.contains("wal_status           lost"), "{out}");
    assert!(
        err.trim_end()
            .starts_with("pgoutbox: error: replication slot \"pgoutbox\" is lost")
            || err.contains("is invalidated"),
        "{err}"
    );
}

/// Failover slots: on PostgreSQL 17+ both `setup` and the streamer create the slot with
/// `failover`, and `check` and `status` say so; before 17, `check` says there are none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_slots_where_the_server_has_them() {
    let pg = tokio::task::spawn_blocking(TempPostgres::start)
        .await
        .unwrap()
        .unwrap();
    let kafka = TempKafka::start(1).unwrap();
    kafka.create_topic("outbox.event.order", 1).unwrap();
    let (url, brokers) = (pg.url(), kafka.bootstrap_servers().to_owned());
    let version: i32 = pg.psql("SHOW server_version_num").unwrap().parse().unwrap();
    let failover_of = || {
        pg.psql("SELECT coalesce((to_jsonb(s) ->> 'failover')::bool, false) FROM pg_replication_slots s WHERE slot_name = 'pgoutbox'")
            .unwrap()
    };
    let (ok, out, err) = pgoutbox(&["setup"], &url, "").await;
    assert!(ok, "{out}{err}");
    let (_, out, _) = pgoutbox(&["check"], &url, &brokers).await;
    let check = line(&out, "failover");
    let (_, status, _) = pgoutbox(&["status"], &url, "").await;
    if version >= 170_000 {
        assert_eq!(failover_of(), "t");
        assert!(
            check.starts_with("✔ failover: slot pgoutbox is a failover slot"),
            "{out}"
        );
        assert!(status.contains("failover slot        yes"), "{status}");
        // The streamer creates it the same way.
        // Dropped on purpose, and forgotten (else the state record refuses a new slot).
        pg.psql("SELECT pg_drop_replication_slot('pgoutbox')")
            .unwrap();
        pg.psql("DELETE FROM pgoutbox_state WHERE slot = 'pgoutbox'")
            .unwrap();
        let mut cfg = pgoutbox::Config::new(url.clone(), brokers.clone());
        cfg.status_interval = std::time::Duration::from_millis(200);
        let db = crate::common::connect(&url).await;
        crate::common::deliver_one_event(cfg, &db)
            .await
            .stop()
            .await;
        assert_eq!(failover_of(), "t");
    } else {
        assert_eq!(failover_of(), "f");
        assert!(
            check.contains("no failover slots before PostgreSQL 17"),
            "{out}"
        );
        assert!(
            status.contains("failover slot        - (PostgreSQL 17+)"),
            "{status}"
        );
    }
}
