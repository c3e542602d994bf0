//! End-to-end benchmark (`scripts/bench.sh`): starts its own PostgreSQL, Kafka-protocol
//! broker, NATS server and RabbitMQ node, and runs the release binary against them.
//!
//! - drain: N events already in the slot (small and large transactions); time until every
//!   one is acked (the slot confirmed past the backlog), per destination, against two
//!   ceilings measured in the same run: `pg_recvlogical` draining an identical copy of the
//!   slot to /dev/null, and the destination's own client publishing N pre-built messages with
//!   the same acknowledgement setting ([`destinations`]);
//! - live latency: a load generator commits at fixed rates while pgoutbox streams;
//!   commit→consumer latency per event, for replication to Kafka, NATS and RabbitMQ, and for the
//!   polling publisher at 100 ms and 5 s;
//! - cost: pgoutbox CPU and peak RSS, PostgreSQL CPU, per million events.
//!
//! Prints a markdown table; writes `target/bench/results.json` and `target/bench/latency.svg`.
//! Environment: BENCH_EVENTS (1000000), BENCH_REPS (3), BENCH_SECONDS (10),
//! BENCH_RATES (1000,5000,10000,max).

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
use pgoutbox::setup::{POLL_SQL, SETUP_SQL};

#[path = "e2e/destinations.rs"]
mod destinations;
use destinations::Dest;

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
    /// Commit → Kafka ack, from pgoutbox's own histogram (bucket upper bounds; replication only).
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
    for rate in rates.split(',').map(str::trim) {
        for mode in [
            "replication",
            "replication → NATS",
            "replication → RabbitMQ",
            "poll 100ms",
            "poll 5s",
        ] {
            let r = live_run(&servers, &db, mode, rate, seconds).await;
            eprintln!("bench: {r:?}");
            live.push(r);
        }
    }
    // Each destination's own ceiling: its client publishing pre-built messages, acked.
    let mut ceilings = HashMap::new();
    let (mut k, mut n, mut r) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..reps {
        let bootstrap = kafka.bootstrap_servers().to_owned();
        k.push(
            tokio::task::spawn_blocking(move || destinations::kafka_ceiling(&bootstrap, events))
                .await
                .expect("join"),
        );
        n.push(destinations::nats_ceiling(&nats.url(), events).await);
        r.push(destinations::rabbit_ceiling(&rabbit.url(), events).await);
    }
    eprintln!("bench: ceilings for {events} events: Kafka {k:?} s, NATS {n:?} s, RabbitMQ {r:?} s");
    ceilings.insert(Dest::Kafka, median(&k));
    ceilings.insert(Dest::Nats, median(&n));
    ceilings.insert(Dest::RabbitMq, median(&r));
    let mut drains = Vec::new();
    for variant in ["small transactions (10 events)", "one large transaction"] {
        for d in drain(&servers, &db, variant, events, reps, &ceilings).await {
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
            let _ = pgoutbox::state::forget(db, slot).await;
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
    ceilings: &HashMap<Dest, f64>,
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
    let dests = [Dest::Kafka, Dest::Nats, Dest::RabbitMq];
    let mut ceiling = Vec::new();
    type PerDest = HashMap<Dest, Vec<f64>>;
    let (mut ours, mut cpu, mut rss) = (PerDest::new(), PerDest::new(), PerDest::new());
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

        for dest in dests {
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
            let dc = ceilings[dest];
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
                all_runs_pgoutbox: ours[dest].clone(),
            }
        })
        .collect()
}

/// A consumer at the end of the topic, fetching with minimal wait (latency, not throughput).
fn tail_consumer(bootstrap: &str) -> StreamConsumer {
    let c: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "bench")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "1")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(TOPIC, p, Offset::End)
            .expect("partition");
    }
    c.assign(&tpl).expect("assign");
    c
}

/// Live latency: the load generator commits at `rate` events/s for `seconds` while pgoutbox
/// (in `mode`) streams; commit→consumer per event.
async fn live_run(
    servers: &Servers<'_>,
    db: &Client,
    mode: &str,
    rate: &str,
    seconds: u64,
) -> Live {
    let (pg, kafka) = (servers.pg, servers.kafka);
    db.batch_execute("TRUNCATE outbox").await.expect("truncate");
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let mut settings: Vec<(&str, String)> = vec![
        ("PGOUTBOX_SLOT", "live".into()),
        ("PGOUTBOX_METRICS_ADDR", format!("127.0.0.1:{metrics_port}")),
    ];
    match mode {
        "poll 100ms" => {
            settings.push(("PGOUTBOX_SOURCE", "poll".into()));
            settings.push(("PGOUTBOX_POLL_INTERVAL_MS", "100".into()));
        }
        "poll 5s" => {
            settings.push(("PGOUTBOX_SOURCE", "poll".into()));
            settings.push(("PGOUTBOX_POLL_INTERVAL_MS", "5000".into()));
        }
        "replication → NATS" => {
            destinations::fresh_stream(&servers.nats.url()).await;
            settings.extend(servers.to(Dest::Nats));
        }
        "replication → RabbitMQ" => settings.extend(servers.to(Dest::RabbitMq)),
        _ => {}
    }
    let replication = mode.starts_with("replication");
    let mut child = spawn(pg, kafka, &settings);
    let pid = child.id().expect("pid");
    if replication {
        while db
            .query_opt(
                "SELECT 1 FROM pg_replication_slots WHERE slot_name = 'live' AND active",
                &[],
            )
            .await
            .expect("slot")
            .is_none()
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let received: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let stop = tokio_util::sync::CancellationToken::new();
    let reader = if mode == "replication → NATS" {
        let r = destinations::nats_tail(servers.nats.url(), received.clone(), stop.clone());
        tokio::time::sleep(Duration::from_millis(500)).await;
        r
    } else if mode == "replication → RabbitMQ" {
        let r = destinations::rabbit_tail(servers.rabbit.url(), received.clone(), stop.clone());
        tokio::time::sleep(Duration::from_millis(500)).await;
        r
    } else {
        let consumer = tail_consumer(kafka.bootstrap_servers());
        // Let the consumer resolve its end offsets before any event is written.
        let _ = tokio::time::timeout(Duration::from_secs(1), consumer.recv()).await;
        let received = received.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    m = consumer.recv() => {
                        let Ok(m) = m else { continue };
                        let now = Instant::now();
                        let seq = m.headers().and_then(|h| {
                            h.iter().find(|h| h.key == "id").and_then(|h| h.value)
                        }).and_then(|v| std::str::from_utf8(v).ok())
                          .and_then(|s| s.rsplit('-').next())
                          .and_then(|s| s.parse::<u64>().ok());
                        if let Some(seq) = seq {
                            received.lock().expect("lock").entry(seq).or_insert(now);
                        }
                    }
                }
            }
        })
    };

    let cpu0 = (cpu_secs(pid), postgres_cpu(&pg.data_dir()));
    let gen = connect(&pg.url()).await;
    let mut committed: HashMap<u64, Instant> = HashMap::new();
    let mut n: u64 = 0;
    let started = Instant::now();
    let run_for = Duration::from_secs(seconds);
    let per_tick: Option<u64> = rate.parse::<u64>().ok().map(|r| (r / 100).max(1));
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    while started.elapsed() < run_for {
        let k = match per_tick {
            Some(k) => {
                tick.tick().await;
                k
            }
            None => 10, // max: back-to-back transactions of 10 events
        };
        let values: Vec<String> = (n..n + k).map(row).collect();
        gen.batch_execute(&format!(
            "BEGIN; INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload) VALUES {}; COMMIT;",
            values.join(",")
        ))
        .await
        .expect("commit");
        let at = Instant::now();
        for s in n..n + k {
            committed.insert(s, at);
        }
        n += k;
    }
    let load_secs = started.elapsed().as_secs_f64();
    // Wait for the stragglers (a 5 s poll interval needs a little more than 5 s).
    let deadline = Instant::now() + Duration::from_secs(if mode == "poll 5s" { 12 } else { 5 });
    while received.lock().expect("lock").len() < committed.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cpu1 = (cpu_secs(pid), postgres_cpu(&pg.data_dir()));
    let acks = ack_histogram(metrics_port).await;
    let rss = peak_rss_mib(pid);
    stop.cancel();
    let _ = reader.await;
    let _ = child.kill().await;
    if replication {
        drop_slot(db, "live").await;
    }

    let received = received.lock().expect("lock").clone();
    let mut lat: Vec<f64> = committed
        .iter()
        .filter_map(|(s, c)| {
            received
                .get(s)
                .map(|r| r.saturating_duration_since(*c).as_secs_f64() * 1e3)
        })
        .collect();
    lat.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    let events = committed.len();
    let per_million = |secs: f64| secs * 1e6 / events.max(1) as f64;
    Live {
        mode: mode.into(),
        target_rate: rate.into(),
        achieved_rate: events as f64 / load_secs,
        events,
        received: lat.len(),
        p50_ms: pct(0.50),
        p95_ms: pct(0.95),
        p99_ms: pct(0.99),
        max_ms: lat.last().copied().unwrap_or(f64::NAN),
        ack_p50_ms: bucket_percentile(&acks, 0.50),
        ack_p95_ms: bucket_percentile(&acks, 0.95),
        ack_p99_ms: bucket_percentile(&acks, 0.99),
        pgoutbox_cpu_secs_per_million: per_million(cpu1.0 - cpu0.0),
        pgoutbox_peak_rss_mib: rss,
        postgres_cpu_secs_per_million: per_million(cpu1.1 - cpu0.1),
    }
}

/// `pgoutbox_commit_to_ack_seconds` buckets from the binary's /metrics: (upper bound in ms,
/// cumulative count). Empty when the source records none (polling).
async fn ack_histogram(port: u16) -> Vec<(f64, f64)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut conn) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return Vec::new();
    };
    let _ = conn
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await;
    let mut text = String::new();
    let _ = conn.read_to_string(&mut text).await;
    text.lines()
        .filter(|l| l.starts_with("pgoutbox_commit_to_ack_seconds_bucket{") && l.contains("le=\""))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let count = l.rsplit(' ').next()?.parse::<f64>().ok()?;
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse::<f64>().ok()? * 1e3
            };
            Some((bound, count))
        })
        .collect()
}

/// The upper bound of the bucket holding percentile `p`.
fn bucket_percentile(buckets: &[(f64, f64)], p: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total == 0.0 {
        return None;
    }
    buckets
        .iter()
        .find(|(_, c)| *c >= total * p)
        .map(|(b, _)| *b)
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    format!("{cpus} CPUs ({model}), {mem:.0} GiB RAM, PostgreSQL 15 (fsync=off), librdkafka mock broker (1 node), nats-server 2.9 with JetStream (file storage), RabbitMQ 3.10 (a durable classic queue, persistent messages)")
}

/// A histogram bound for the table: `≤ 5`, or `n/a`.
fn bound(v: Option<f64>) -> String {
    match v {
        Some(b) if b.is_finite() => format!("≤ {b}"),
        Some(_) => "> 60000".into(),
        None => "n/a".into(),
    }
}

fn markdown(r: &Results) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "Machine: {}\n", r.machine);
    let _ = writeln!(s, "**Backlog drain** (median of the runs; pgoutbox = until the slot is confirmed past every event, i.e. all acked by the destination). Two ceilings from the same run: `pg_recvlogical` draining a copy of the slot, and the destination's own client publishing the same number of pre-built messages with the same acknowledgement setting; the ratio is against the lower of the two.\n");
    let _ = writeln!(s, "| backlog | destination | events | pg_recvlogical | destination's client | pgoutbox | ratio to the lower ceiling | pgoutbox CPU s / M events | pgoutbox peak RSS |");
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for d in &r.drain {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.2} s ({:.0} ev/s) | {:.2} s ({:.0} ev/s) | {:.2} s ({:.0} ev/s) | {:.2}× | {:.2} | {:.0} MiB |",
            d.variant, d.destination, d.events, d.ceiling_secs, d.ceiling_events_per_sec,
            d.destination_ceiling_secs, d.destination_ceiling_events_per_sec, d.pgoutbox_secs,
            d.pgoutbox_events_per_sec, d.ratio, d.pgoutbox_cpu_secs_per_million, d.pgoutbox_peak_rss_mib
        );
    }
    let _ = writeln!(s, "\n**Live latency** (ms): commit → consumer, exact per event; commit → ack, from pgoutbox's histogram (≤ bucket bound; replication only)\n");
    let _ = writeln!(s, "| rate (ev/s) | source | achieved ev/s | p50 | p95 | p99 | max | ack p50 | ack p95 | ack p99 | received | pgoutbox CPU s / M | pgoutbox peak RSS | PostgreSQL CPU s / M |");
    let _ = writeln!(
        s,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for l in &r.live {
        let _ = writeln!(
            s,
            "| {} | {} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} | {} | {}/{} | {:.1} | {:.0} MiB | {:.1} |",
            l.target_rate, l.mode, l.achieved_rate, l.p50_ms, l.p95_ms, l.p99_ms, l.max_ms,
            bound(l.ack_p50_ms), bound(l.ack_p95_ms), bound(l.ack_p99_ms),
            l.received, l.events, l.pgoutbox_cpu_secs_per_million, l.pgoutbox_peak_rss_mib,
            l.postgres_cpu_secs_per_million
        );
    }
    let _ = writeln!(s, "\n**p99 ratios** (same run)\n");
    let _ = writeln!(s, "| rate | replication p99 (Kafka) | replication p99 (NATS) | replication p99 (RabbitMQ) | poll 100ms p99 | poll 5s p99 | poll 5s / replication | poll 100ms / replication |");
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|");
    let mut rates: Vec<&str> = r.live.iter().map(|l| l.target_rate.as_str()).collect();
    rates.dedup();
    for rate in rates {
        let p = |m: &str| {
            r.live
                .iter()
                .find(|l| l.target_rate == rate && l.mode == m)
                .map_or(f64::NAN, |l| l.p99_ms)
        };
        let (rep, nats, rabbit, p100, p5) = (
            p("replication"),
            p("replication → NATS"),
            p("replication → RabbitMQ"),
            p("poll 100ms"),
            p("poll 5s"),
        );
        let _ = writeln!(
            s,
            "| {rate} | {rep:.1} ms | {nats:.1} ms | {rabbit:.1} ms | {p100:.1} ms | {p5:.1} ms | {:.0}× | {:.1}× |",
            p5 / rep,
            p100 / rep
        );
    }
    s
}

/// p50 and p99 per rate and source, log scale, as a small standalone SVG.
fn svg(live: &[Live]) -> String {
    let (w, h, left, bottom) = (760.0, 360.0, 70.0, 40.0);
    let y = |ms: f64| {
        let (lo, hi) = (0.0_f64, 4.0_f64); // 1 ms .. 10 s
        let v = ms.max(1.0).log10().clamp(lo, hi);
        (h - bottom) - (v - lo) / (hi - lo) * (h - bottom - 20.0)
    };
    let colors = [
        ("replication", "#2b8a3e"),
        ("poll 100ms", "#e67700"),
        ("poll 5s", "#c92a2a"),
    ];
    let mut rates: Vec<&str> = live.iter().map(|l| l.target_rate.as_str()).collect();
    rates.dedup();
    let group = (w - left - 20.0) / rates.len().max(1) as f64;
    let bar = group / 8.0;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{left}\" y=\"14\">commit → consumer latency, p50 (light) and p99 (dark), log scale</text>\n"
    );
    for (i, label) in ["1 ms", "10 ms", "100 ms", "1 s", "10 s"]
        .iter()
        .enumerate()
    {
        let yy = y(10f64.powi(i as i32));
        let _ = writeln!(s, "<line x1=\"{left}\" x2=\"{}\" y1=\"{yy}\" y2=\"{yy}\" stroke=\"#ddd\"/><text x=\"8\" y=\"{}\">{label}</text>", w - 10.0, yy + 4.0);
    }
    for (gi, rate) in rates.iter().enumerate() {
        let x0 = left + gi as f64 * group + bar;
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\">{rate} ev/s</text>",
            x0,
            h - 12.0
        );
        for (ci, (mode, color)) in colors.iter().enumerate() {
            let Some(l) = live
                .iter()
                .find(|l| l.target_rate == *rate && l.mode == *mode)
            else {
                continue;
            };
            let x = x0 + ci as f64 * 2.2 * bar;
            for (k, (v, op)) in [(l.p50_ms, 0.45), (l.p99_ms, 1.0)].iter().enumerate() {
                let top = y(*v);
                let _ = writeln!(
                    s,
                    "<rect x=\"{}\" y=\"{top}\" width=\"{bar}\" height=\"{}\" fill=\"{color}\" fill-opacity=\"{op}\"/>",
                    x + k as f64 * bar,
                    (h - bottom - top).max(0.0)
                );
            }
        }
    }
    for (ci, (mode, color)) in colors.iter().enumerate() {
        let _ = writeln!(s, "<rect x=\"{}\" y=\"24\" width=\"10\" height=\"10\" fill=\"{color}\"/><text x=\"{}\" y=\"33\">{mode}</text>", left + 200.0 + ci as f64 * 130.0, left + 214.0 + ci as f64 * 130.0);
    }
    s.push_str("</svg>\n");
    s
}
