//! Shared integration-test harness: a real throwaway PostgreSQL (wal_level=logical) and a real
//! Kafka-protocol broker (librdkafka's mock cluster), plus helpers to write outbox events and
//! to read what a consumer and `pg_replication_slots` actually say.
#![allow(dead_code)]

pub mod broker;
pub mod checker;
pub mod graceful;
pub mod kill;
pub mod nats;
pub mod pause;
pub mod pki;
pub mod proxy;
pub mod rabbit;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use pgoutbox::embedded::{ConsumedRecord, TempPostgres, TopicReader};
use pgoutbox::{Config, Lsn, Streamer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls};
use tokio_util::sync::CancellationToken;

pub use pgoutbox::postgres::setup::SETUP_SQL;
pub const PARTITIONS: i32 = 3;
/// The WAL position a delivery error names (`… WAL 0/1A2B3C) failed: …`): the refused event's
/// insert, which the slot must not be confirmed past. (Comparing with a position read before
/// the insert is too strict: other WAL, such as the state record's periodic write, may come in
/// between and be passed.)
pub fn wal_in(error: &str) -> Lsn {
    error
        .split("WAL ")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no WAL position in {error:?}"))
}

/// The id of the event [`Env::insert_oversized`] writes.
pub const OVERSIZED_ID: &str = "00000000-0000-4000-8000-00000000b16b";
pub const AGGREGATE_TYPES: [&str; 3] = ["order", "customer", "invoice"];

/// Postgres + Kafka for one test; both are torn down on drop.
pub struct Env {
    /// Transactions committed by `spawn_writer`, with their LSN bounds (for the LSN checker).
    pub committed: checker::Committed,
    pub db: Client,
    pub kafka: broker::Broker,
    pub pg: TempPostgres,
}

impl Env {
    /// Starts both, applies sql/setup.sql and creates one topic per aggregate type.
    pub async fn start() -> Env {
        Env::start_on(broker::Broker::start(3)).await
    }

    /// Like [`Env::start`], on `kafka`.
    pub async fn start_on(kafka: broker::Broker) -> Env {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn,pgoutbox=info".into()),
            )
            .with_test_writer()
            .try_init();
        let pg = tokio::task::spawn_blocking(TempPostgres::start)
            .await
            .unwrap()
            .expect("start postgres");
        for t in AGGREGATE_TYPES {
            kafka.create_topic(&topic(t), PARTITIONS).unwrap();
        }
        let db = connect(&pg.url()).await;
        db.batch_execute(SETUP_SQL).await.unwrap();
        Env {
            committed: Default::default(),
            db,
            kafka,
            pg,
        }
    }

    /// The default configuration, with a short status interval so tests see LSNs move fast.
    pub fn config(&self) -> Config {
        let mut c = Config::new(self.pg.url(), self.kafka.bootstrap_servers());
        c.status_interval = Duration::from_millis(200);
        c.kafka.trust_read_committed = self.kafka.shows_aborted_transactions();
        c
    }

    /// Runs the streamer in-process until the returned token is cancelled.
    pub fn spawn_streamer(&self, cfg: Config) -> Running {
        spawn_streamer(cfg)
    }

    /// The real binary against this Postgres and Kafka (metrics on an ephemeral port), its
    /// stderr appended to `log`; `extra` adds environment variables.
    pub fn spawn_binary(
        &self,
        log: &std::path::Path,
        extra: &[(&str, &str)],
    ) -> tokio::process::Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        tokio::process::Command::new(env!("CARGO_BIN_EXE_pgoutbox"))
            .arg("run")
            .env("PGOUTBOX_POSTGRES_URL", self.pg.url())
            .env("PGOUTBOX_KAFKA_BROKERS", self.kafka.bootstrap_servers())
            .env("PGOUTBOX_METRICS_ADDR", "127.0.0.1:0")
            .env("RUST_LOG", "info")
            .env(
                "PGOUTBOX_KAFKA_TRUST_READ_COMMITTED",
                self.kafka.shows_aborted_transactions().to_string(),
            )
            .envs(extra.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn pgoutbox")
    }

    /// The real binary (status updates every 200 ms), already streaming. Killed, and its
    /// log removed, when the returned pair is dropped.
    pub async fn streaming_binary(&self) -> (tempfile::TempDir, tokio::process::Child) {
        let dir = tempfile::tempdir().unwrap();
        let child = self.spawn_binary(
            &dir.path().join("log"),
            &[("PGOUTBOX_STATUS_INTERVAL_MS", "200")],
        );
        self.wait_streaming().await;
        (dir, child)
    }

    /// Commits `txs` in the background, `pause` apart, recording each commit's LSN bound for
    /// the LSN checker; retried across server restarts until each has committed once.
    pub fn spawn_writer(&self, txs: Vec<Vec<Event>>, pause: Duration) -> JoinHandle<()> {
        checker::spawn_tracked_writer(self.pg.url(), self.committed.clone(), txs, pause)
    }

    /// Starts sampling `confirmed_flush_lsn` against what Kafka holds.
    pub fn lsn_checker(&self) -> checker::LsnChecker {
        checker::LsnChecker::start(self)
    }

    /// A reader of every outbox topic from the beginning.
    pub fn reader(&self) -> TopicReader {
        let topics: Vec<String> = AGGREGATE_TYPES.iter().map(|t| topic(t)).collect();
        let pairs: Vec<(&str, i32)> = topics.iter().map(|t| (t.as_str(), PARTITIONS)).collect();
        TopicReader::new(self.kafka.bootstrap_servers(), &pairs).unwrap()
    }

    /// The slot's `confirmed_flush_lsn`, if the slot exists.
    pub async fn confirmed_flush(&self) -> Option<Lsn> {
        let row = self
            .db
            .query_opt(
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'pgoutbox'",
                &[],
            )
            .await
            .unwrap()?;
        row.get::<_, Option<String>>(0).map(|s| s.parse().unwrap())
    }

    /// The server's current WAL write position.
    pub async fn current_lsn(&self) -> Lsn {
        self.lsn_of("pg_current_wal_lsn()").await
    }

    /// Where the next WAL record goes (inside an open transaction too: past its changes).
    pub async fn insert_lsn(&self) -> Lsn {
        self.lsn_of("pg_current_wal_insert_lsn()").await
    }

    async fn lsn_of(&self, function: &str) -> Lsn {
        let s: String = self
            .db
            .query_one(&format!("SELECT {function}::text"), &[])
            .await
            .unwrap()
            .get(0);
        s.parse().unwrap()
    }

    /// The `write` position the streamer last reported (what it has received).
    pub async fn reported_write(&self) -> Option<Lsn> {
        let row = self
            .db
            .query_opt(
                "SELECT write_lsn::text FROM pg_stat_replication WHERE application_name = 'pgoutbox'",
                &[],
            )
            .await
            .unwrap()?;
        row.get::<_, Option<String>>(0).map(|s| s.parse().unwrap())
    }

    /// Waits until the slot is being streamed.
    pub async fn wait_streaming(&self) {
        wait_slot_active(&self.db).await;
    }

    /// Waits until `confirmed_flush_lsn` reaches `lsn`.
    pub async fn wait_confirmed(&self, lsn: Lsn, timeout: Duration) {
        wait_for(
            &format!("confirmed_flush_lsn >= {lsn}"),
            timeout,
            || async { self.confirmed_flush().await.is_some_and(|c| c >= lsn) },
        )
        .await;
    }

    /// Commits each transaction (a list of events) in turn.
    pub async fn commit(&self, txs: &[Vec<Event>]) {
        for chunk in txs.chunks(50) {
            let sql: String = chunk.iter().map(|t| tx_sql(t, "COMMIT")).collect();
            self.db.batch_execute(&sql).await.unwrap();
        }
    }

    /// Polling: rows not yet sent (`status = 0`).
    pub async fn pending_rows(&self) -> usize {
        let n: i64 = self
            .db
            .query_one("SELECT count(*) FROM outbox WHERE status = 0", &[])
            .await
            .unwrap()
            .get(0);
        n as usize
    }

    /// Commits one event (id [`OVERSIZED_ID`]) whose 2 MB payload exceeds Kafka's
    /// `message.max.bytes` and NATS' `max_payload`.
    pub async fn insert_oversized(&self) {
        self.db
            .batch_execute(&format!(
                "INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload) VALUES
                 ('{OVERSIZED_ID}', 'order', 'k', 'Big', jsonb_build_object('pad', repeat('x', 2000000)))"
            ))
            .await
            .unwrap();
    }

    /// The stored text form of each payload (jsonb normalises), by event id.
    pub async fn stored_payloads(&self) -> HashMap<String, Option<String>> {
        self.db
            .query("SELECT id::text, payload::text FROM outbox", &[])
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    }
}

/// Runs a streamer in-process until the returned token is cancelled.
pub fn spawn_streamer(cfg: Config) -> Running {
    let shutdown = CancellationToken::new();
    let streamer = Streamer::new(cfg).unwrap();
    let token = shutdown.clone();
    let task = tokio::spawn(async move { streamer.run(token).await });
    Running { shutdown, task }
}

/// Starts a streamer with `cfg` (whose Kafka has topic `outbox.event.order`, 1 partition),
/// commits one event through `db` and checks a consumer reads it. Returns the running streamer.
pub async fn deliver_one_event(cfg: Config, db: &Client) -> Running {
    let brokers = cfg.kafka.brokers.clone();
    let running = spawn_streamer(cfg);
    wait_slot_active(db).await;
    let e = Event::new(1, "order", "o-1");
    db.batch_execute(&tx_sql(std::slice::from_ref(&e), "COMMIT"))
        .await
        .unwrap();
    let reader = TopicReader::new(&brokers, &[("outbox.event.order", 1)]).unwrap();
    let got = read_until_all(
        &reader,
        &std::collections::HashSet::from([e.id.clone()]),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(got.len(), 1);
    running
}

/// Waits until slot `pgoutbox` is being streamed.
pub async fn wait_slot_active(db: &Client) {
    // The slot reads active already while CREATE_REPLICATION_SLOT runs (and has no
    // confirmed_flush_lsn then): wait for its walsender to stream.
    wait_for("slot streamed", Duration::from_secs(30), || async {
        db.query_opt(
            "SELECT 1 FROM pg_replication_slots s JOIN pg_stat_replication r ON r.pid = s.active_pid \
             WHERE s.slot_name = 'pgoutbox' AND r.state IN ('catchup', 'streaming')",
            &[],
        )
        .await
        .unwrap()
        .is_some()
    })
    .await;
}

/// An in-process streamer.
pub struct Running {
    pub shutdown: CancellationToken,
    pub task: JoinHandle<Result<(), pgoutbox::pipeline::StreamError>>,
}

impl Running {
    /// Graceful stop; panics if the streamer had failed.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("streamer stops within 30 s")
            .unwrap()
            .expect("streamer ended without error");
    }
}

pub async fn connect(url: &str) -> Client {
    try_connect(url).await.unwrap()
}

pub async fn try_connect(url: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, conn) = url
        .parse::<tokio_postgres::Config>()
        .unwrap()
        .connect(NoTls)
        .await?;
    tokio::spawn(conn);
    Ok(client)
}

pub fn topic(aggregate_type: &str) -> String {
    format!("outbox.event.{aggregate_type}")
}

/// One outbox row as a test writes it.
#[derive(Debug, Clone)]
pub struct Event {
    pub id: String,
    pub aggregate_type: String,
    pub key: String,
    pub kind: String,
    /// Global sequence number, also inside the payload, for order checks.
    pub seq: u64,
}

impl Event {
    pub fn new(seq: u64, aggregate_type: &str, key: &str) -> Event {
        Event {
            id: format!("00000000-0000-4000-8000-{seq:012}"),
            aggregate_type: aggregate_type.into(),
            key: key.into(),
            kind: format!("{aggregate_type}Changed"),
            seq,
        }
    }

    pub fn insert_sql(&self) -> String {
        format!(
            "INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload) VALUES \
             ('{}', '{}', '{}', '{}', '{{\"seq\": {}, \"key\": \"{}\", \"note\": \"ünïcødé ✓\"}}');",
            self.id, self.aggregate_type, self.key, self.kind, self.seq, self.key
        )
    }
}

/// One transaction's SQL, ending in COMMIT or ROLLBACK.
pub fn tx_sql(events: &[Event], end: &str) -> String {
    let mut s = String::from("BEGIN;");
    for e in events {
        s.push_str(&e.insert_sql());
    }
    s.push_str(end);
    s.push(';');
    s
}

/// `n` transactions of 1–10 events over 20 aggregates, deterministic.
pub fn workload(first_seq: u64, n: usize) -> Vec<Vec<Event>> {
    let mut seq = first_seq;
    (0..n)
        .map(|i| {
            let size = (i * 7 + 3) % 10 + 1;
            (0..size)
                .map(|_| {
                    seq += 1;
                    let agg = seq % 20;
                    Event::new(
                        seq,
                        AGGREGATE_TYPES[(agg % 3) as usize],
                        &format!("agg-{agg}"),
                    )
                })
                .collect()
        })
        .collect()
}

/// Polls `cond` every 50 ms; panics with `what` after `timeout`.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads until `ids` have all arrived (at least once) or `timeout`; returns everything read.
pub async fn read_until_all(
    reader: &TopicReader,
    ids: &std::collections::HashSet<String>,
    timeout: Duration,
) -> Vec<ConsumedRecord> {
    let deadline = Instant::now() + timeout;
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    while seen.len() < ids.len() && Instant::now() < deadline {
        if let Some(r) = reader.next(Duration::from_millis(200)).await.unwrap() {
            let id = header_str(&r, "id");
            if ids.contains(&id) {
                seen.insert(id);
            }
            out.push(r);
        }
    }
    out
}

/// Reads until `ids` have all arrived (or `timeout`), then one more second for duplicates.
pub async fn read_all(
    env: &Env,
    ids: &std::collections::HashSet<String>,
    timeout: Duration,
) -> Vec<ConsumedRecord> {
    let reader = env.reader();
    let mut got = read_until_all(&reader, ids, timeout).await;
    got.extend(
        reader
            .read(usize::MAX, Duration::from_secs(1))
            .await
            .unwrap(),
    );
    got
}

/// Waits (30 s at most) for the binary to exit with status 1: its log and the log's last
/// line, the error it stopped with.
pub async fn exits_with_error(
    child: &mut tokio::process::Child,
    log: &std::path::Path,
) -> (String, String) {
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("pgoutbox stops by itself")
        .unwrap();
    assert_eq!(status.code(), Some(1));
    let text = std::fs::read_to_string(log).unwrap();
    let last = text.lines().last().unwrap_or_default().to_owned();
    (text, last)
}

/// The event ids of `txs`.
pub fn ids_of(txs: &[Vec<Event>]) -> HashSet<String> {
    txs.iter().flatten().map(|e| e.id.clone()).collect()
}

/// A message read back from a broker: the event id it carries.
pub trait Delivered {
    fn event_id(&self) -> String;
}

impl Delivered for ConsumedRecord {
    fn event_id(&self) -> String {
        header_str(self, "id")
    }
}

/// The distinct event ids among `got`.
pub fn distinct<T: Delivered>(got: &[T]) -> HashSet<String> {
    got.iter().map(Delivered::event_id).collect()
}

pub fn header_str(r: &ConsumedRecord, name: &str) -> String {
    String::from_utf8_lossy(r.header(name).unwrap_or_default()).into_owned()
}

/// Per key, the payload sequence numbers must increase in consumed order (after dedupe).
pub fn order_violations(records: &[ConsumedRecord]) -> usize {
    let mut last: HashMap<Vec<u8>, u64> = HashMap::new();
    let mut seen = std::collections::HashSet::new();
    let mut violations = 0;
    for r in records {
        if !seen.insert(header_str(r, "id")) {
            continue;
        }
        let v: serde_json::Value = serde_json::from_slice(r.payload.as_deref().unwrap()).unwrap();
        let seq = v["seq"].as_u64().unwrap();
        let key = r.key.clone().unwrap_or_default();
        if let Some(prev) = last.insert(key, seq) {
            if prev > seq {
                violations += 1;
            }
        }
    }
    violations
}

/// A plain HTTP/1.0 GET: (status code, body).
pub async fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.ok()?;
    let code = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((code, body))
}

/// A TCP port free right now on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Reads until every id arrived; asserts none is lost and per-key order holds after dedupe.
pub async fn assert_all_arrive(
    env: &Env,
    ids: &std::collections::HashSet<String>,
) -> Vec<ConsumedRecord> {
    let got = read_until_all(&env.reader(), ids, Duration::from_secs(90)).await;
    let seen: std::collections::HashSet<String> = got.iter().map(|r| header_str(r, "id")).collect();
    assert_eq!(ids.difference(&seen).count(), 0, "events lost");
    assert_eq!(order_violations(&got), 0);
    got
}

/// The `txn=` values (Kafka transactions) of the streamer's log lines containing `what`.
pub fn txns_logged(log: &str, what: &str) -> std::collections::HashSet<String> {
    log.lines()
        .filter(|l| l.contains(what))
        .filter_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("txn=")))
        .map(str::to_owned)
        .collect()
}

/// Runs the binary with `args` against `url` and `brokers`; (success, stdout, stderr).
pub async fn cli(args: &[&str], url: &str, brokers: &str) -> (bool, String, String) {
    cli_with(args, url, brokers, &[]).await
}

/// [`cli`] with further settings in the environment.
pub async fn cli_with(
    args: &[&str],
    url: &str,
    brokers: &str,
    extra: &[(&str, &str)],
) -> (bool, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgoutbox"))
        .args(args)
        .env("PGOUTBOX_POSTGRES_URL", url)
        .env("PGOUTBOX_KAFKA_BROKERS", brokers)
        .envs(extra.iter().copied())
        .env_remove("RUST_LOG")
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
