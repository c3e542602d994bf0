//! Setup mistakes stop the real binary at once with a non-zero exit and one line saying what
//! to run; nothing is streamed or confirmed.

use std::time::Duration;

use pgoutbox::embedded::{PostgresOptions, TempPostgres};

/// Runs `pgoutbox run` and returns (exit success, stderr's last line).
async fn run_binary(url: &str, extra: &[&str]) -> (bool, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_pgoutbox"))
            .arg("run")
            .env("PGOUTBOX_METRICS_ADDR", "127.0.0.1:0")
            .args(extra)
            .env("PGOUTBOX_POSTGRES_URL", url)
            .env("PGOUTBOX_KAFKA_BROKERS", "127.0.0.1:9")
            .env("RUST_LOG", "off")
            .output(),
    )
    .await
    .expect("pgoutbox exits on its own within 30 s")
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or_default().to_owned();
    (out.status.success(), last)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_level_not_logical_is_reported_with_the_fix() {
    let pg = tokio::task::spawn_blocking(|| {
        TempPostgres::start_with(PostgresOptions {
            settings: vec![("wal_level".into(), "replica".into())],
            hba: vec![],
        })
    })
    .await
    .unwrap()
    .unwrap();
    let (ok, line) = run_binary(&pg.url(), &[]).await;
    assert!(!ok);
    assert_eq!(
        line,
        "pgoutbox: error: wal_level is 'replica' but pgoutbox needs 'logical': run `ALTER SYSTEM SET wal_level = logical;` and restart PostgreSQL"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_table_publication_and_coverage_are_reported() {
    let pg = tokio::task::spawn_blocking(TempPostgres::start)
        .await
        .unwrap()
        .unwrap();
    let url = pg.url();

    let (ok, line) = run_binary(&url, &[]).await;
    assert!(!ok);
    assert!(
        line.contains(
            "table public.outbox does not exist: run `pgoutbox setup` or `psql -f sql/setup.sql`"
        ),
        "{line}"
    );

    pg.psql("CREATE TABLE outbox (id uuid, aggregatetype text, aggregateid text, type text, payload jsonb)")
        .unwrap();
    let (ok, line) = run_binary(&url, &[]).await;
    assert!(!ok);
    assert!(
        line.contains("publication \"pgoutbox_pub\" does not exist"),
        "{line}"
    );

    pg.psql("CREATE TABLE other (id int); CREATE PUBLICATION pgoutbox_pub FOR TABLE other")
        .unwrap();
    let (ok, line) = run_binary(&url, &[]).await;
    assert!(!ok);
    assert!(
        line.contains("does not include table public.outbox: run `ALTER PUBLICATION pgoutbox_pub ADD TABLE public.outbox;`"),
        "{line}"
    );

    pg.psql("ALTER PUBLICATION pgoutbox_pub ADD TABLE outbox; ALTER PUBLICATION pgoutbox_pub SET (publish = 'delete')")
        .unwrap();
    let (ok, line) = run_binary(&url, &[]).await;
    assert!(!ok);
    assert!(line.contains("does not publish inserts"), "{line}");

    // An UNLOGGED table never reaches the WAL: say that, not "add it to the publication"
    // (which PostgreSQL refuses for unlogged tables).
    pg.psql("ALTER PUBLICATION pgoutbox_pub SET (publish = 'insert'); ALTER PUBLICATION pgoutbox_pub DROP TABLE outbox; ALTER TABLE outbox SET UNLOGGED")
        .unwrap();
    let (ok, line) = run_binary(&url, &[]).await;
    assert!(!ok);
    assert!(
        line.contains("table public.outbox is UNLOGGED: its rows never reach the WAL, so no replication slot can see them; run `ALTER TABLE public.outbox SET LOGGED;`"),
        "{line}"
    );

    // Nothing was created or confirmed along the way.
    assert_eq!(
        pg.psql("SELECT count(*) FROM pg_replication_slots")
            .unwrap(),
        "0"
    );
}

#[tokio::test]
async fn weakening_kafka_properties_and_bad_settings_are_refused() {
    let url = "postgres://u@127.0.0.1:9/db";
    let (ok, line) = run_binary(url, &["-X", "acks=1"]).await;
    assert!(!ok);
    assert!(
        line.contains("acks=1 is not allowed: at-least-once delivery needs acks=all"),
        "{line}"
    );
    let (ok, line) = run_binary(url, &["--slot", "Bad-Slot"]).await;
    assert!(!ok);
    assert!(line.contains("invalid slot name"), "{line}");
    let (ok, line) = run_binary(url, &["--topic-template", "x.${nope}"]).await;
    assert!(!ok);
    assert!(line.contains("unknown placeholder"), "{line}");
}

/// sql/setup.sql applies with plain `psql -f`, twice, and leaves what the streamer needs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_sql_is_idempotent_with_psql() {
    let pg = tokio::task::spawn_blocking(TempPostgres::start)
        .await
        .unwrap()
        .unwrap();
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("sql/setup.sql");
    pg.psql_file(&file).unwrap();
    pg.psql("INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES ('a', 'b', 'c', '{}')")
        .unwrap();
    pg.psql_file(&file).unwrap();
    assert_eq!(
        pg.psql("SELECT count(*) FROM outbox").unwrap(),
        "1",
        "data kept"
    );
    assert_eq!(
        pg.psql("SELECT pubinsert, pubupdate, pubdelete, pubtruncate FROM pg_publication WHERE pubname = 'pgoutbox_pub'")
            .unwrap(),
        "t|f|f|f"
    );
    assert_eq!(
        pg.psql("SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = 'pgoutbox_pub'")
            .unwrap(),
        "public.outbox"
    );
    assert_eq!(
        pg.psql("SELECT rolcanlogin, rolreplication, rolsuper, rolcreatedb, rolcreaterole FROM pg_roles WHERE rolname = 'pgoutbox'")
            .unwrap(),
        "t|t|f|f|f"
    );
    assert_eq!(
        pg.psql("SELECT has_table_privilege('pgoutbox', 'outbox', 'SELECT')")
            .unwrap(),
        "f",
        "least privilege: the role never reads the table"
    );
}
