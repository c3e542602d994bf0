//! A slot that goes missing is never silently recreated: pgoutbox keeps a state record in the
//! database (public.pgoutbox_state), which physical replication and backups carry along, and a
//! missing slot with a record stops it with what may have been missed and how to recover.

use std::collections::HashSet;
use std::time::Duration;

use crate::common::*;
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

/// Failover needs a PostgreSQL with failover slots (17+) and pg_basebackup: the matrix runs
/// this file with `scripts/pg-fetch.sh 18-full`; elsewhere it says it did not run.
fn failover_capable() -> Option<pgoutbox::embedded::TempPostgres> {
    // Plain first: older servers do not know the standby settings.
    let probe = pgoutbox::embedded::TempPostgres::start().expect("postgres");
    let version: i32 = probe
        .psql("SHOW server_version_num")
        .unwrap()
        .parse()
        .unwrap();
    if version < 170_000 || !probe.bin_dir().join("pg_basebackup").exists() {
        eprintln!(
            "not run: needs PostgreSQL 17+ with pg_basebackup (PGOUTBOX_PG_BIN=$(scripts/pg-fetch.sh 18-full)); this server is {version}"
        );
        return None;
    }
    drop(probe);
    Some(pgoutbox::embedded::TempPostgres::start_with(standby_ready()).expect("postgres"))
}

/// What every server of a failover pair runs with: standbys synchronize failover slots.
fn standby_ready() -> pgoutbox::embedded::PostgresOptions {
    pgoutbox::embedded::PostgresOptions {
        settings: vec![
            ("hot_standby_feedback".into(), "on".into()),
            ("sync_replication_slots".into(), "on".into()),
        ],
        hba: vec![],
    }
}

/// A physical standby of `primary` whose slot `standby` the primary waits for before sending
/// logical changes (`synchronized_standby_slots`).
fn attach_standby(
    primary: &pgoutbox::embedded::TempPostgres,
    port: Option<u16>,
) -> pgoutbox::embedded::TempPostgres {
    let standby =
        pgoutbox::embedded::TempPostgres::standby_of(primary, "standby", port, standby_ready())
            .expect("standby");
    primary
        .psql("ALTER SYSTEM SET synchronized_standby_slots = 'standby'")
        .unwrap();
    primary.psql("SELECT pg_reload_conf()").unwrap();
    standby
}

/// The outbox set up on `primary`, a standby attached, and pgoutbox's configuration for the
/// pair: a multi-host URL with `target_session_attrs=read-write`.
async fn pair(
    primary: &pgoutbox::embedded::TempPostgres,
    kafka: &pgoutbox::embedded::TempKafka,
) -> (pgoutbox::embedded::TempPostgres, String, pgoutbox::Config) {
    connect(&primary.url())
        .await
        .batch_execute(SETUP_SQL)
        .await
        .unwrap();
    let standby = attach_standby(primary, None);
    let url = format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/postgres?target_session_attrs=read-write&connect_timeout=2",
        primary.port(),
        standby.port()
    );
    let mut cfg = pgoutbox::Config::new(url.clone(), kafka.bootstrap_servers());
    cfg.status_interval = Duration::from_millis(200);
    (standby, url, cfg)
}

/// Waits until `pg` has slot `pgoutbox` synchronized from its primary (persistent).
async fn wait_synced(pg: &pgoutbox::embedded::TempPostgres) {
    let db = connect(&pg.url()).await;
    wait_for(
        "slot synchronized to the standby",
        Duration::from_secs(90),
        || async {
            db.query_opt(
                "SELECT 1 FROM pg_replication_slots
             WHERE slot_name = 'pgoutbox' AND synced AND NOT temporary
               AND confirmed_flush_lsn IS NOT NULL",
                &[],
            )
            .await
            .is_ok_and(|r| r.is_some())
        },
    )
    .await;
}

/// Waits until slot `pgoutbox` is streamed on `pg`.
async fn wait_active(pg: &pgoutbox::embedded::TempPostgres) {
    let db = connect(&pg.url()).await;
    wait_slot_active(&db).await;
}

/// The primary killed with SIGKILL under load and the standby promoted, three times: pgoutbox
/// follows through a multi-host URL (`target_session_attrs=read-write`) and resumes from the
/// synchronized slot. Counted against the outbox rows of the surviving history: nothing lost,
/// nothing delivered that the new primary does not have, per-key order kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_failover_under_load_loses_nothing() {
    let Some(mut primary) = failover_capable() else {
        return;
    };
    let kafka = pgoutbox::embedded::TempKafka::start(3).unwrap();
    for t in AGGREGATE_TYPES {
        kafka.create_topic(&topic(t), PARTITIONS).unwrap();
    }
    let (mut standby, url, cfg) = pair(&primary, &kafka).await;
    let running = spawn_streamer(cfg);
    wait_active(&primary).await;

    // `check` on the primary: a failover slot, and synchronized_standby_slots naming the
    // standby's slot (without it, a fail).
    let check = |url: String, brokers: String| async move {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgoutbox"))
            .arg("check")
            .env("PGOUTBOX_POSTGRES_URL", url)
            .env("PGOUTBOX_KAFKA_BROKERS", brokers)
            .output()
            .await
            .unwrap();
        let out = String::from_utf8_lossy(&out.stdout).into_owned();
        out.lines()
            .find(|l| l.contains(" failover: "))
            .unwrap_or_else(|| panic!("no failover line:\n{out}"))
            .to_owned()
    };
    let brokers = kafka.bootstrap_servers().to_owned();
    let line = check(primary.url(), brokers.clone()).await;
    assert_eq!(
        line,
        "✔ failover: slot pgoutbox is a failover slot; synchronized_standby_slots = standby"
    );
    primary
        .psql("ALTER SYSTEM SET synchronized_standby_slots = ''")
        .unwrap();
    primary.psql("SELECT pg_reload_conf()").unwrap();
    let line = check(primary.url(), brokers.clone()).await;
    assert!(
        line.starts_with(
            "✘ failover: replication slot \"pgoutbox\" is a failover slot, but the standbys' physical slot(s) standby are not in synchronized_standby_slots"
        ),
        "{line}"
    );
    primary
        .psql("ALTER SYSTEM SET synchronized_standby_slots = 'standby'")
        .unwrap();
    primary.psql("SELECT pg_reload_conf()").unwrap();

    let writer = checker::spawn_tracked_writer(
        url.clone(),
        Default::default(),
        workload(0, 100_000),
        Duration::from_millis(5),
    );
    // scripts/soak.sh runs more.
    let failovers: usize = std::env::var("PGOUTBOX_FAILOVERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let t0 = std::time::Instant::now();
    for n in 0..failovers {
        wait_synced(&standby).await;
        eprintln!("{:?} failover {}: slot synchronized", t0.elapsed(), n + 1);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let dead_port = primary.port();
        primary.kill().unwrap();
        standby.promote().unwrap();
        eprintln!("{:?} failover {}: promoted", t0.elapsed(), n + 1);
        primary = standby;
        wait_active(&primary).await;
        eprintln!("{:?} failover {}: streaming again", t0.elapsed(), n + 1);
        tokio::time::sleep(Duration::from_secs(1)).await;
        standby = attach_standby(&primary, Some(dead_port));
        eprintln!("{:?} failover {}: new standby", t0.elapsed(), n + 1);
    }
    writer.abort();
    let _ = writer.await;

    let db = connect(&primary.url()).await;
    let ids: HashSet<String> = db
        .query("SELECT id::text FROM outbox", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let topics: Vec<String> = AGGREGATE_TYPES.iter().map(|t| topic(t)).collect();
    let pairs: Vec<(&str, i32)> = topics.iter().map(|t| (t.as_str(), PARTITIONS)).collect();
    let reader = pgoutbox::embedded::TopicReader::new(kafka.bootstrap_servers(), &pairs).unwrap();
    let mut got = read_until_all(&reader, &ids, Duration::from_secs(120)).await;
    got.extend(
        reader
            .read(usize::MAX, Duration::from_secs(1))
            .await
            .unwrap(),
    );
    let seen: HashSet<String> = got.iter().map(|r| header_str(r, "id")).collect();
    let lost = ids.difference(&seen).count();
    let ghosts = seen.difference(&ids).count();
    eprintln!(
        "failover run: {failovers} primaries killed, {} events in the surviving history, {} delivered, {lost} lost, {} duplicates, {ghosts} delivered but not in the surviving history, {} order violations",
        ids.len(),
        seen.len(),
        got.len() - seen.len(),
        order_violations(&got)
    );
    assert!(ids.len() > 1000, "the load ran through the failovers");
    assert_eq!(lost, 0, "events lost");
    assert_eq!(
        ghosts, 0,
        "events of transactions the new primary does not have"
    );
    assert_eq!(order_violations(&got), 0);
    running.stop().await;
}

/// A failover without failover slots: the promoted standby has no slot. The running pgoutbox
/// stops (the slot it streamed is gone), and a restarted one (the usual case: the process
/// moved with the failover) stops too, from the state record the standby received.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_without_failover_slots_stops_instead_of_starting_over() {
    let Some(primary) = failover_capable() else {
        return;
    };
    let kafka = pgoutbox::embedded::TempKafka::start(1).unwrap();
    kafka.create_topic("outbox.event.order", 1).unwrap();
    let (standby, _, mut cfg) = pair(&primary, &kafka).await;
    cfg.failover = false;
    let db = connect(&primary.url()).await;
    deliver_one_event(cfg.clone(), &db).await.stop().await;
    let running = spawn_streamer(cfg.clone());
    wait_active(&primary).await;
    // The state record has reached the standby.
    let sdb = connect(&standby.url()).await;
    wait_for(
        "state record on the standby",
        Duration::from_secs(30),
        || async {
            sdb.query_opt("SELECT 1 FROM pgoutbox_state WHERE slot = 'pgoutbox'", &[])
                .await
                .is_ok_and(|r| r.is_some())
        },
    )
    .await;
    primary.kill().unwrap();
    standby.promote().unwrap();

    let e = tokio::time::timeout(Duration::from_secs(60), running.task)
        .await
        .expect("stops by itself")
        .unwrap()
        .unwrap_err();
    assert!(
        e.is_fatal() && e.to_string().contains("events may have been missed"),
        "{e}"
    );
    let e = tokio::time::timeout(Duration::from_secs(60), spawn_streamer(cfg).task)
        .await
        .expect("stops by itself")
        .unwrap()
        .unwrap_err();
    assert!(
        e.is_fatal()
            && e.to_string()
                .contains("is missing, but pgoutbox streamed from it before"),
        "{e}"
    );
    let slots = standby
        .psql("SELECT count(*) FROM pg_replication_slots WHERE slot_type = 'logical'")
        .unwrap();
    assert_eq!(slots, "0", "no new slot on the promoted standby");
}

/// A failover slot while a standby's physical slot is missing from
/// `synchronized_standby_slots`: pgoutbox could deliver what that standby lacks, which a
/// failover then erases from the database. `run` and `check` refuse it; with
/// `allow_unsynchronized_failover = true` it streams, and says so at the start, in `/readyz`
/// and in `pgoutbox_failover_unsynchronized`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsynchronized_standby_is_refused_unless_allowed() {
    let Some(primary) = failover_capable() else {
        return;
    };
    let kafka = pgoutbox::embedded::TempKafka::start(1).unwrap();
    let db = connect(&primary.url()).await;
    db.batch_execute(SETUP_SQL).await.unwrap();
    // A standby's slot (no standby needs to run for the rule to apply).
    db.batch_execute("SELECT pg_create_physical_replication_slot('lagging')")
        .await
        .unwrap();
    let cfg = pgoutbox::Config::new(primary.url(), kafka.bootstrap_servers());
    let e = tokio::time::timeout(Duration::from_secs(30), spawn_streamer(cfg).task)
        .await
        .expect("stops by itself")
        .unwrap()
        .unwrap_err();
    let text = e.to_string();
    assert!(e.is_fatal(), "{text}");
    assert!(
        text.contains("physical slot(s) lagging are not in synchronized_standby_slots")
            && text.contains("synchronized_standby_slots = 'lagging'")
            && text.contains("allow_unsynchronized_failover"),
        "{text}"
    );
    let binary = |extra: &[(&'static str, String)]| {
        let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgoutbox"));
        c.env("PGOUTBOX_POSTGRES_URL", primary.url())
            .env("PGOUTBOX_KAFKA_BROKERS", kafka.bootstrap_servers())
            .envs(extra.iter().map(|(k, v)| (*k, v.as_str())))
            .kill_on_drop(true);
        c
    };
    let out = binary(&[]).arg("check").output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(stdout.contains("✘ failover: replication slot"), "{stdout}");

    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let _child = binary(&[
        ("PGOUTBOX_ALLOW_UNSYNCHRONIZED_FAILOVER", "true".into()),
        ("PGOUTBOX_METRICS_ADDR", format!("127.0.0.1:{port}")),
    ])
    .arg("run")
    .stderr(std::fs::File::create(&log).unwrap())
    .spawn()
    .unwrap();
    wait_active(&primary).await;
    wait_for(
        "/readyz with the warning",
        Duration::from_secs(20),
        || async {
            get(port, "/readyz").await.is_some_and(|(code, body)| {
                code == 200 && body.contains("warning: failover slot not synchronized")
            })
        },
    )
    .await;
    let metrics = get(port, "/metrics").await.unwrap().1;
    assert!(
        metrics.contains("pgoutbox_failover_unsynchronized 1"),
        "{metrics}"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("allow_unsynchronized_failover = true: replication slot"),
        "{text}"
    );
    let out = binary(&[("PGOUTBOX_ALLOW_UNSYNCHRONIZED_FAILOVER", "true".into())])
        .arg("check")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("! accepted by allow_unsynchronized_failover"),
        "{stdout}"
    );
}
