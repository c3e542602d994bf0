//! Configuration through the real binary: precedence flag > env > file > default, unknown
//! keys rejected by name, and secrets kept out of logs and errors.

use std::process::Stdio;
use std::time::Duration;

use crate::common::*;
use pgoutbox::embedded::{PostgresOptions, TempKafka, TempPostgres};
use tokio::process::Command;

fn pgoutbox() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pgoutbox"));
    c.env("PGOUTBOX_METRICS_ADDR", "127.0.0.1:0")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .env_remove("RUST_LOG");
    c
}

/// Starts `cmd`, waits until `slot` is active, sends SIGTERM, returns (exit ok, stderr).
async fn run_until_slot_active(mut cmd: Command, pg: &TempPostgres, slot: &str) -> (bool, String) {
    let child = cmd.spawn().unwrap();
    let db = connect(&pg.url()).await;
    let q = format!("SELECT 1 FROM pg_replication_slots WHERE slot_name = '{slot}' AND active");
    wait_for(
        &format!("slot {slot} active"),
        Duration::from_secs(30),
        || async { db.query_opt(&q, &[]).await.unwrap().is_some() },
    )
    .await;
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id().unwrap() as i32, libc::SIGTERM) };
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("exits after SIGTERM")
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flag_beats_env_beats_file() {
    let pg = tokio::task::spawn_blocking(TempPostgres::start)
        .await
        .unwrap()
        .unwrap();
    let kafka = TempKafka::start(1).unwrap();
    pg.psql(SETUP_SQL).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pgoutbox.toml");
    std::fs::write(
        &file,
        format!(
            "postgres_url = '{}'\nkafka_brokers = '{}'\nslot = 'from_file'\nstatus_interval_ms = 100\n[kafka]\n\"linger.ms\" = 1\n",
            pg.url(),
            kafka.bootstrap_servers()
        ),
    )
    .unwrap();

    let mut c = pgoutbox();
    c.args(["run", "--config"]).arg(&file);
    let (ok, log) = run_until_slot_active(c, &pg, "from_file").await;
    assert!(ok, "{log}");

    let mut c = pgoutbox();
    c.args(["run", "--config"])
        .arg(&file)
        .env("PGOUTBOX_SLOT", "from_env");
    let (ok, log) = run_until_slot_active(c, &pg, "from_env").await;
    assert!(ok, "{log}");

    let mut c = pgoutbox();
    c.args(["run", "--config"])
        .arg(&file)
        .env("PGOUTBOX_SLOT", "from_env")
        .args(["--slot", "from_flag"]);
    let (ok, log) = run_until_slot_active(c, &pg, "from_flag").await;
    assert!(ok, "{log}");
    assert!(
        log.contains("linger.ms=1"),
        "file's [kafka] table applied: {log}"
    );
}

#[tokio::test]
async fn unknown_config_key_is_rejected_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        "postgres_url = 'postgres://x@127.0.0.1:9/x'\nslott = 'typo'\n",
    )
    .unwrap();
    let out = pgoutbox()
        .arg("--config")
        .arg(&file)
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap_or_default();
    assert!(last.starts_with("pgoutbox: error: config file"), "{err}");
    assert!(last.contains("unknown field `slott`"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_logs_or_errors() {
    let pg = tokio::task::spawn_blocking(|| {
        TempPostgres::start_with(PostgresOptions {
            settings: vec![],
            hba: vec!["host all streamer 127.0.0.1/32 scram-sha-256".into()],
        })
    })
    .await
    .unwrap()
    .unwrap();
    let kafka = TempKafka::start(1).unwrap();
    pg.psql(SETUP_SQL).unwrap();
    pg.psql("CREATE ROLE streamer LOGIN REPLICATION PASSWORD 'Right-Pw-7731'")
        .unwrap();
    let secrets = ["Url-Secret-1193", "Right-Pw-7731", "Kafka-Secret-5521"];

    // A wrong password in the URL: a fatal auth error that must not echo it.
    let bad_url = format!(
        "postgres://streamer:Url-Secret-1193@127.0.0.1:{}/postgres",
        pg.port()
    );
    let out = pgoutbox()
        .args(["run", "--log-format", "json"])
        .env("RUST_LOG", "debug")
        .env("PGOUTBOX_POSTGRES_URL", &bad_url)
        .env("PGOUTBOX_KAFKA_BROKERS", kafka.bootstrap_servers())
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("password authentication failed"), "{err}");
    for s in secrets {
        assert!(!err.contains(s), "{s} leaked:\n{err}");
    }

    // The right password from a file, a Kafka secret as a property: streams, logs redacted.
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "Right-Pw-7731\n").unwrap();
    let mut c = pgoutbox();
    c.args([
        "run",
        "--log-format",
        "json",
        "-X",
        "sasl.password=Kafka-Secret-5521",
    ])
    .env("RUST_LOG", "debug")
    .env(
        "PGOUTBOX_POSTGRES_URL",
        format!("postgres://streamer@127.0.0.1:{}/postgres", pg.port()),
    )
    .env("PGOUTBOX_POSTGRES_PASSWORD_FILE", &pw)
    .env("PGOUTBOX_KAFKA_BROKERS", kafka.bootstrap_servers());
    let (ok, log) = run_until_slot_active(c, &pg, "pgoutbox").await;
    assert!(ok, "{log}");
    assert!(log.contains("pgoutbox starting"), "{log}");
    assert!(log.contains("sasl.password=***"), "{log}");
    for line in log.lines().filter(|l| l.starts_with('{')) {
        serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    }
    for s in secrets {
        assert!(!log.contains(s), "{s} leaked:\n{log}");
    }
}

/// The CLI's own mistakes and conveniences: `config` prints every setting as a file that
/// loads back; a bad environment value is named by its variable, with the usual prefix;
/// settings may come before the subcommand.
#[tokio::test]
async fn config_output_bad_env_values_and_settings_before_the_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("shown.toml");
    let bin = env!("CARGO_BIN_EXE_pgoutbox");
    let run = |args: &[&str], vars: &[(&str, &str)]| {
        std::process::Command::new(bin)
            .args(args)
            .env("PGOUTBOX_POSTGRES_URL", "postgres://u:s3cret@h/db")
            .env("PGOUTBOX_KAFKA_BROKERS", "k:9092")
            .envs(vars.iter().copied())
            .output()
            .unwrap()
    };
    let out = run(
        &["config"],
        &[
            ("PGOUTBOX_SLOT", "shown"),
            ("PGOUTBOX_KAFKA_PROPERTIES", "sasl.password=kpw;linger.ms=7"),
        ],
    );
    let shown = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{shown}");
    for key in [
        "slot = \"shown\"",
        "metrics_addr = ",
        "ready_max_lag_bytes = ",
        "log_format = ",
        "poll_interval_ms = ",
        "\"linger.ms\" = \"7\"",
    ] {
        assert!(shown.contains(key), "{key} missing:\n{shown}");
    }
    assert!(
        !shown.contains("s3cret") && !shown.contains("kpw"),
        "{shown}"
    );
    // It loads back as a config file, and shows the same.
    std::fs::write(&file, &shown).unwrap();
    let again = run(&["config", "--config", file.to_str().unwrap()], &[]);
    assert_eq!(String::from_utf8(again.stdout).unwrap(), shown);

    // A bad value from the environment is named by its variable.
    let out = run(&["run"], &[("PGOUTBOX_MAX_IN_FLIGHT_EVENTS", "-1")]);
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(!out.status.success());
    assert_eq!(
        err.trim_end(),
        "pgoutbox: error: invalid value '-1' for PGOUTBOX_MAX_IN_FLIGHT_EVENTS: invalid digit found in string"
    );
    // …and a bad flag by its flag.
    let out = run(&["run", "--max-in-flight-events", "x"], &[]);
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.starts_with("pgoutbox: error: invalid value 'x' for '--max-in-flight-events <MAX_IN_FLIGHT_EVENTS>'"),
        "{err}"
    );

    // Settings before the subcommand are taken as the subcommand's.
    let out = run(&["--config", file.to_str().unwrap(), "config"], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8(out.stdout).unwrap(), shown);
}
