//! End-to-end benchmark (`scripts/bench.sh`): starts its own PostgreSQL, Kafka-protocol
//! broker, NATS server and RabbitMQ node, and runs the release binary against them.
//!
//! - drain: N events already in the slot (small and large transactions); time until every
//!   one is acked (the slot confirmed past the backlog), per destination, against two
//!   ceilings measured in the same run: `pg_recvlogical` draining an identical copy of the
//!   slot to /dev/null, and the destination's own client publishing N pre-built messages with
//!   the same acknowledgement setting right before each pgoutbox run ([`destinations`]);
//! - live latency ([`live`]): a load generator commits at fixed rates while pgoutbox streams;
//!   commit→consumer latency per event, for replication to Kafka, NATS and RabbitMQ, and for the
//!   polling publisher at 100 ms and 5 s; and, next to RabbitMQ's row, the node's own latency at
//!   that rate (the bench's client publishing pre-built messages paced the same way);
//! - cost: pgoutbox CPU and peak RSS, PostgreSQL CPU, per million events.
//!
//! Prints a markdown table ([`report`]); writes `target/bench/results.json` and
//! `target/bench/latency.svg`.
//! Environment: BENCH_EVENTS (1000000; 0: no drain rows), BENCH_REPS (3), BENCH_SECONDS (10),
//! BENCH_RATES (1000,5000,10000,max; empty: no live rows), BENCH_DESTINATIONS
//! (kafka,nats,rabbitmq: the destinations measured; the polling rows go with kafka).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Headers;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde::Serialize;
use tokio_postgres::{Client, NoTls};

use pgoutbox::embedded::{TempKafka, TempNats, TempPostgres, TempRabbit};
use pgoutbox::postgres::setup::{POLL_SQL, SETUP_SQL};

#[path = "e2e/destinations.rs"]
mod destinations;
#[path = "e2e/live.rs"]
mod live;
#[path = "e2e/report.rs"]
mod report;
use destinations::Dest;
use live::{live_run, ALONE};
use report::{machine, markdown, svg};

const TOPIC: &str = "outbox.event.order";
const PARTITIONS: i32 = 3;
const BIN: &str = env!("CARGO_BIN_EXE_pgoutbox");

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Debug, Serialize, Clone)]
struct Drain {
    variant: String,
    destination: String,
    events: usize,
    /// Median seconds over the repetitions: pg_recvlogical, the destination's own client, us.
    ceiling_secs: f64,
    destination_ceiling_secs: f64,
    pgoutbox_secs: f64,
    ceiling_events_per_sec: f64,
    destination_ceiling_events_per_sec: f64,
    pgoutbox_events_per_sec: f64,
    /// pgoutbox against the lower of the two ceilings.
    ratio: f64,
    pgoutbox_cpu_secs_per_million: f64,
    pgoutbox_peak_rss_mib: f64,
    all_runs_ceiling: Vec<f64>,
    all_runs_destination_ceiling: Vec<f64>,
    all_runs_pgoutbox: Vec<f64>,
}

#[derive(Debug, Serialize, Clone)]
struct Live {
    mode: String,
    target_rate: String,
    achieved_rate: f64,
    events: usize,
    received: usize,
    p50_ms: f64,
    p95_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    /// Commit → the destination's ack, from pgoutbox's own histogram (bucket upper bounds;
    /// polling: from the poll that read the row).
    ack_p50_ms: Option<f64>,
    ack_p95_ms: Option<f64>,
    ack_p99_ms: Option<f64>,
    pgoutbox_cpu_secs_per_million: f64,
    pgoutbox_peak_rss_mib: f64,
    postgres_cpu_secs_per_million: f64,
}

#[derive(Debug, Serialize)]
struct Results {
    machine: String,
    drain: Vec<Drain>,
    live: Vec<Live>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let events: usize = env_or("BENCH_EVENTS", 1_000_000);
    let reps: usize = env_or("BENCH_REPS", 3);
    let seconds: u64 = env_or("BENCH_SECONDS", 10);
    let rates: String = env_or("BENCH_RATES", "1000,5000,10000,max".to_owned());
    let out = PathBuf::from(env_or("BENCH_OUT", "target/bench".to_owned()));
    let wanted: String = env_or("BENCH_DESTINATIONS", "kafka,nats,rabbitmq".to_owned());
    let dests: Vec<Dest> = [Dest::Kafka, Dest::Nats, Dest::RabbitMq]
        .into_iter()
        .filter(|d| wanted.split(',').any(|w| w.trim() == d.key()))
        .collect();
    std::fs::create_dir_all(&out).expect("output directory");

    let pg = tokio::task::spawn_blocking(TempPostgres::start)
        .await
        .expect("join")
        .expect("start PostgreSQL");
    let kafka = TempKafka::start(1).expect("start Kafka mock");
    kafka.create_topic(TOPIC, PARTITIONS).expect("topic");
    let nats = destinations::start_nats().await;
    let rabbit = destinations::start_rabbit().await;
    destinations::fresh_stream(&nats.url()).await;
    let db = connect(&pg.url()).await;
    db.batch_execute(SETUP_SQL).await.expect("setup.sql");
    db.batch_execute(POLL_SQL).await.expect("poll.sql");
    eprintln!(
        "bench: PostgreSQL on port {}, Kafka {}, NATS {}, RabbitMQ port {}",
        pg.port(),
        kafka.bootstrap_servers(),
        nats.url(),
        rabbit.port()
    );
    let servers = Servers {
        pg: &pg,
        kafka: &kafka,
        nats: &nats,
        rabbit: &rabbit,
    };

    let mut live = Vec::new();
    for rate in rates.split(',').map(str::trim).filter(|r| !r.is_empty()) {
        for (dest, mode) in [
            (Dest::Kafka, "replication"),
            (Dest::Nats, "replication → NATS"),
            (Dest::RabbitMq, "replication → RabbitMQ"),
            (Dest::Kafka, "poll 100ms"),
            (Dest::Kafka, "poll 5s"),
        ] {
            if !dests.contains(&dest) {
                continue;
            }
            let r = live_run(&servers, &db, mode, rate, seconds).await;
            eprintln!("bench: {r:?}");
            live.push(r);
            if dest == Dest::RabbitMq {
                if let Some(r) = live::alone_run(&servers, rate, seconds).await {
                    eprintln!("bench: {r:?}");
                    live.push(r);
                }
            }
        }
    }
    let mut drains = Vec::new();
    let variants = ["small transactions (10 events)", "one large transaction"];
    for variant in variants.into_iter().filter(|_| events > 0) {
        for d in drain(&servers, &db, variant, events, reps, &dests).await {
            eprintln!("bench: {d:?}");
            drains.push(d);
        }
    }
    let results = Results {
        machine: machine(),
        drain: drains,
        live,
    };
    let table = markdown(&results);
    println!("{table}");
    std::fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(&results).unwrap_or_default(),
    )
    .expect("write results.json");
    std::fs::write(out.join("results.md"), &table).expect("write results.md");
    std::fs::write(out.join("latency.svg"), svg(&results.live)).expect("write latency.svg");
    eprintln!(
        "bench: wrote {}/results.{{json,md}} and latency.svg",
        out.display()
    );
}

async fn connect(url: &str) -> Client {
    let (c, conn) = tokio_postgres::connect(url, NoTls).await.expect("connect");
    tokio::spawn(conn);
    c
}

/// One event's INSERT values; the id is a UUID made from a counter.
fn row(n: u64) -> String {
    format!(
        "('00000000-0000-4000-8000-{n:012}', 'order', 'agg-{}', 'OrderCreated', '{{\"seq\": {n}, \"note\": \"a typical small outbox payload of about a hundred bytes\"}}')",
        n % 100
    )
}

/// Seconds of CPU (user + system) a process has used; 0 if it is gone.
fn cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// Peak resident set (VmHWM) of a process, in MiB.
fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// CPU seconds of every PostgreSQL process of this cluster (postmaster and children).
fn postgres_cpu(data_dir: &Path) -> f64 {
    let Some(postmaster) = std::fs::read_to_string(data_dir.join("postmaster.pid"))
        .ok()
        .and_then(|s| s.lines().next().and_then(|l| l.trim().parse::<u32>().ok()))
    else {
        return 0.0;
    };
    let mut total = cpu_secs(postmaster);
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let ppid = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit(')')
                        .next()
                        .and_then(|r| r.split_whitespace().nth(1))
                        .and_then(|p| p.parse::<u32>().ok())
                });
            if ppid == Some(postmaster) {
                total += cpu_secs(pid);
            }
        }
    }
    total
}

/// The servers of the run.
struct Servers<'a> {
    pg: &'a TempPostgres,
    kafka: &'a TempKafka,
    nats: &'a TempNats,
    rabbit: &'a TempRabbit,
}

impl Servers<'_> {
    /// The settings that make pgoutbox deliver to `dest`.
    fn to(&self, dest: Dest) -> Vec<(&'static str, String)> {
        match dest {
            Dest::Kafka => Vec::new(),
            Dest::Nats => vec![
                ("PGOUTBOX_DESTINATION", "nats".into()),
                ("PGOUTBOX_NATS_URL", self.nats.url()),
            ],
            Dest::RabbitMq => vec![
                ("PGOUTBOX_DESTINATION", "rabbitmq".into()),
                ("PGOUTBOX_RABBITMQ_URL", self.rabbit.url()),
            ],
        }
    }
}

/// The release binary with these settings; stderr to a log file under target/bench.
fn spawn(pg: &TempPostgres, kafka: &TempKafka, extra: &[(&str, String)]) -> tokio::process::Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open("target/bench/pgoutbox.log")
        .expect("log file");
    tokio::process::Command::new(BIN)
        .arg("run")
        .env("PGOUTBOX_POSTGRES_URL", pg.url())
        .env("PGOUTBOX_KAFKA_BROKERS", kafka.bootstrap_servers())
        .env("PGOUTBOX_METRICS_ADDR", "")
        .env("RUST_LOG", "warn")
        .envs(extra.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("spawn pgoutbox")
}

async fn lsn(db: &Client, sql: &str) -> u64 {
    let s: String = db.query_one(sql, &[]).await.expect("lsn").get(0);
    let (hi, lo) = s.split_once('/').expect("X/Y");
    (u64::from_str_radix(hi, 16).expect("hex") << 32) | u64::from_str_radix(lo, 16).expect("hex")
}

async fn confirmed(db: &Client, slot: &str) -> u64 {
    let row = db
        .query_one(
            "SELECT coalesce(confirmed_flush_lsn, '0/0')::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .expect("slot");
    let s: String = row.get(0);
    let (hi, lo) = s.split_once('/').expect("X/Y");
    (u64::from_str_radix(hi, 16).expect("hex") << 32) | u64::from_str_radix(lo, 16).expect("hex")
}

/// A copy of the backlog's slot: same position, same WAL to decode.
async fn copy_slot(db: &Client, slot: &str) {
    db.execute(
        "SELECT pg_copy_logical_replication_slot('bench_base', $1)",
        &[&slot],
    )
    .await
    .expect("copy slot");
}

/// Drops a slot once its walsender has noticed the client is gone (it stays active briefly).
async fn drop_slot(db: &Client, slot: &str) {
    for _ in 0..200 {
        if db
            .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
            .await
            .is_ok()
        {
            // Dropped on purpose: the next run may create it afresh.
            let _ = pgoutbox::postgres::state::forget(db, slot).await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("slot {slot} still active after 10 s");
}

fn fmt_lsn(l: u64) -> String {
    format!("{:X}/{:X}", l >> 32, l & 0xffff_ffff)
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s.get(s.len() / 2).copied().unwrap_or(0.0)
}

/// Backlog drain: `events` already in the slot; pg_recvlogical and pgoutbox (to each
/// destination) each drain a copy of the same slot, `reps` times. One row per destination.
async fn drain(
    servers: &Servers<'_>,
    db: &Client,
    variant: &str,
    events: usize,
    reps: usize,
    dests: &[Dest],
) -> Vec<Drain> {
    let (pg, kafka) = (servers.pg, servers.kafka);
    db.batch_execute("TRUNCATE outbox").await.expect("truncate");
    // Its own statement: a slot can't be created in a transaction that wrote.
    db.batch_execute("SELECT pg_create_logical_replication_slot('bench_base', 'pgoutput')")
        .await
        .expect("base slot");
    let t = Instant::now();
    if variant.starts_with("small") {
        // A DO block may commit between statements: one transaction per 10 events.
        db.batch_execute(&format!(
            "DO $$ BEGIN FOR t IN 0..{} LOOP
               INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload)
               SELECT ('00000000-0000-4000-8000-' || lpad((t * 10 + i)::text, 12, '0'))::uuid,
                      'order', 'agg-' || ((t * 10 + i) % 100), 'OrderCreated',
                      jsonb_build_object('seq', t * 10 + i, 'note', 'a typical small outbox payload of about a hundred bytes')
               FROM generate_series(0, 9) i;
               COMMIT;
             END LOOP; END $$;",
            events / 10 - 1
        ))
        .await
        .expect("insert small transactions");
    } else {
        db.batch_execute(&format!(
            "INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload)
             SELECT ('00000000-0000-4000-8000-' || lpad(i::text, 12, '0'))::uuid,
                    'order', 'agg-' || (i % 100), 'OrderCreated',
                    jsonb_build_object('seq', i, 'note', 'a typical small outbox payload of about a hundred bytes')
             FROM generate_series(0, {}) i;",
            events - 1
        ))
        .await
        .expect("insert one transaction");
    }
    let end = lsn(db, "SELECT pg_current_wal_insert_lsn()::text").await;
    eprintln!(
        "bench: {variant}: {events} events written in {:?}, backlog ends at {}",
        t.elapsed(),
        fmt_lsn(end)
    );

    let recvlogical = pg.client_tool("pg_recvlogical");
    let mut ceiling = Vec::new();
    type PerDest = HashMap<Dest, Vec<f64>>;
    let (mut ours, mut cpu, mut rss) = (PerDest::new(), PerDest::new(), PerDest::new());
    let mut theirs = PerDest::new();
    for rep in 0..reps {
        let slot = format!("ceiling_{rep}");
        copy_slot(db, &slot).await;
        let t = Instant::now();
        let status = tokio::process::Command::new(&recvlogical)
            .args([
                "-d",
                &pg.url(),
                "--slot",
                &slot,
                "--start",
                "--no-loop",
                "-f",
                "/dev/null",
            ])
            .args([
                "-o",
                "proto_version=1",
                "-o",
                "publication_names=pgoutbox_pub",
            ])
            .arg(format!("--endpos={}", fmt_lsn(end)))
            .stdout(Stdio::null())
            .status()
            .await
            .expect("pg_recvlogical");
        assert!(status.success(), "pg_recvlogical failed");
        ceiling.push(t.elapsed().as_secs_f64());
        drop_slot(db, &slot).await;

        for &dest in dests {
            // The destination's own ceiling right before pgoutbox's run, so that both see the
            // broker in the same state (a RabbitMQ node's speed drifts between runs).
            let c =
                destinations::ceiling(servers.kafka, servers.nats, servers.rabbit, dest, events)
                    .await;
            eprintln!("bench: {} ceiling: {c:.2} s", dest.name());
            theirs.entry(dest).or_default().push(c);
            match dest {
                Dest::Nats => destinations::fresh_stream(&servers.nats.url()).await,
                Dest::RabbitMq => destinations::purge_queue(&servers.rabbit.url()).await,
                Dest::Kafka => {}
            }
            let slot = format!("pgoutbox_{rep}");
            copy_slot(db, &slot).await;
            let t = Instant::now();
            let mut settings = vec![
                ("PGOUTBOX_SLOT", slot.clone()),
                ("PGOUTBOX_CREATE_SLOT", "false".into()),
                ("PGOUTBOX_STATUS_INTERVAL_MS", "100".into()),
            ];
            settings.extend(servers.to(dest));
            let mut child = spawn(pg, kafka, &settings);
            let pid = child.id().expect("pid");
            // Every event acked: the slot is confirmed past the whole backlog.
            while confirmed(db, &slot).await < end {
                assert!(
                    t.elapsed() < Duration::from_secs(600),
                    "drain did not finish"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            ours.entry(dest)
                .or_default()
                .push(t.elapsed().as_secs_f64());
            cpu.entry(dest).or_default().push(cpu_secs(pid));
            rss.entry(dest).or_default().push(peak_rss_mib(pid));
            let _ = child.kill().await;
            drop_slot(db, &slot).await;
        }
    }
    db.batch_execute("SELECT pg_drop_replication_slot('bench_base')")
        .await
        .expect("drop base slot");
    let c = median(&ceiling);
    dests
        .iter()
        .map(|dest| {
            let o = median(&ours[dest]);
            let dc = median(&theirs[dest]);
            Drain {
                variant: variant.into(),
                destination: dest.name().into(),
                events,
                ceiling_secs: c,
                destination_ceiling_secs: dc,
                pgoutbox_secs: o,
                ceiling_events_per_sec: events as f64 / c,
                destination_ceiling_events_per_sec: events as f64 / dc,
                pgoutbox_events_per_sec: events as f64 / o,
                ratio: c.max(dc) / o,
                pgoutbox_cpu_secs_per_million: median(&cpu[dest]) * 1e6 / events as f64,
                pgoutbox_peak_rss_mib: rss[dest].iter().copied().fold(0.0, f64::max),
                all_runs_ceiling: ceiling.clone(),
                all_runs_destination_ceiling: theirs[dest].clone(),
                all_runs_pgoutbox: ours[dest].clone(),
            }
        })
        .collect()
}
