//! The fault checker's LSN half: while a fault test runs, samples the slot's
//! `confirmed_flush_lsn` and checks that every transaction at or below it is already in Kafka.
//!
//! Sound from outside the process: the writer records `pg_current_wal_lsn()` right after each
//! commit (an upper bound of the transaction's end LSN). A sample reads the confirmed LSN C
//! first, then reads Kafka up to the high watermarks fetched after that. An ack precedes
//! visibility, so every transaction whose bound is ≤ C must already be fully visible;
//! anything missing was confirmed early.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgoutbox::Lsn;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use tokio::task::JoinHandle;

use super::{connect, topic, tx_sql, Env, Event, AGGREGATE_TYPES, PARTITIONS};

/// Transactions committed so far: their event ids and the WAL position right after commit.
pub type Committed = Arc<Mutex<Vec<(Vec<String>, Lsn)>>>;

/// Commits `txs` one by one, `pause` apart, recording each commit's upper-bound LSN in
/// `committed`. A transaction whose connection broke (the server may be restarting) is retried
/// until it has committed once (ids are unique, so the table tells whether it did).
pub fn spawn_tracked_writer(
    url: String,
    committed: Committed,
    txs: Vec<Vec<Event>>,
    pause: Duration,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut db = connect(&url).await;
        for tx in &txs {
            let lsn = loop {
                let done = async {
                    db.batch_execute(&tx_sql(tx, "COMMIT")).await?;
                    db.query_one("SELECT pg_current_wal_lsn()::text", &[]).await
                }
                .await;
                if let Ok(row) = done {
                    break row.get::<_, String>(0);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                if let Ok(c) = super::try_connect(&url).await {
                    db = c;
                }
                if committed_already(&db, tx).await {
                    if let Ok(r) = db.query_one("SELECT pg_current_wal_lsn()::text", &[]).await {
                        break r.get::<_, String>(0);
                    }
                }
            };
            let ids = tx.iter().map(|e| e.id.clone()).collect();
            committed.lock().unwrap().push((ids, lsn.parse().unwrap()));
            tokio::time::sleep(pause).await;
        }
    })
}

/// Whether the transaction's first event is in the table (a commit whose reply was lost).
async fn committed_already(db: &tokio_postgres::Client, tx: &[Event]) -> bool {
    let Some(first) = tx.first() else {
        return true;
    };
    db.query_opt(
        &format!("SELECT 1 FROM outbox WHERE id = '{}'", first.id),
        &[],
    )
    .await
    .map(|r| r.is_some())
    .unwrap_or(false)
}

/// Slot `pgoutbox`'s confirmed position, if the server answers.
pub async fn confirmed_of(db: &tokio_postgres::Client) -> Option<Lsn> {
    let row = db
        .query_one(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'pgoutbox'",
            &[],
        )
        .await
        .ok()?;
    row.get::<_, String>(0).parse().ok()
}

/// Whether a transaction at or below `confirmed` has an event the destination (`seen`, read
/// after `confirmed`) does not hold.
pub fn confirmed_early(committed: &Committed, confirmed: Lsn, seen: &HashSet<String>) -> bool {
    committed
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, bound)| *bound <= confirmed)
        .any(|(ids, _)| ids.iter().any(|id| !seen.contains(id)))
}

/// What the sampler found.
#[derive(Debug, Default, Clone, Copy)]
pub struct LsnReport {
    pub samples: usize,
    /// Samples where a transaction at or below the confirmed LSN was not (fully) in Kafka.
    pub early_confirms: usize,
}

/// Samples until `stop` is set; returns the report.
pub fn spawn_sampler(
    env: &Env,
    committed: Committed,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> JoinHandle<LsnReport> {
    let url = env.pg.url();
    let brokers = env.kafka.bootstrap_servers().to_owned();
    tokio::spawn(async move {
        let mut db = connect(&url).await;
        let mut seen = Seen::new(&brokers);
        let mut report = LsnReport::default();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let Some(confirmed) = confirmed_of(&db).await else {
                // The server may be restarting.
                if let Ok(c) = super::try_connect(&url).await {
                    db = c;
                }
                continue;
            };
            let (s, done) = tokio::task::spawn_blocking(move || {
                let done = s_catch_up(&mut seen);
                (seen, done)
            })
            .await
            .unwrap();
            seen = s;
            if !done {
                continue;
            }
            report.samples += 1;
            if confirmed_early(&committed, confirmed, &seen.ids) {
                report.early_confirms += 1;
            }
        }
        report
    })
}

/// A running sampler; [`LsnChecker::finish`] stops it and asserts it found nothing.
pub struct LsnChecker {
    stop: Arc<std::sync::atomic::AtomicBool>,
    task: JoinHandle<LsnReport>,
}

impl LsnChecker {
    pub fn start(env: &Env) -> LsnChecker {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let task = spawn_sampler(env, env.committed.clone(), stop.clone());
        LsnChecker { stop, task }
    }

    /// Stops sampling; asserts the confirmed LSN never passed a transaction not in Kafka.
    pub async fn finish(self) -> LsnReport {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let report = self.task.await.unwrap();
        assert!(
            report.samples > 0,
            "the LSN sampler never completed a sample"
        );
        assert_eq!(
            report.early_confirms, 0,
            "confirmed_flush_lsn passed a transaction not yet in Kafka: {report:?}"
        );
        report
    }
}

fn s_catch_up(seen: &mut Seen) -> bool {
    seen.catch_up(Duration::from_secs(10))
}

/// Every event id a consumer has seen so far, read up to fresh high watermarks.
struct Seen {
    consumer: BaseConsumer,
    ids: HashSet<String>,
    next: std::collections::HashMap<(String, i32), i64>,
}

impl Seen {
    fn new(brokers: &str) -> Self {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", "pgoutbox-checker")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for t in AGGREGATE_TYPES {
            for p in 0..PARTITIONS {
                tpl.add_partition_offset(&topic(t), p, Offset::Beginning)
                    .unwrap();
            }
        }
        consumer.assign(&tpl).unwrap();
        Seen {
            consumer,
            ids: HashSet::new(),
            next: Default::default(),
        }
    }

    /// Reads until every partition is consumed up to the high watermark fetched now.
    fn catch_up(&mut self, timeout: Duration) -> bool {
        let mut targets = Vec::new();
        for t in AGGREGATE_TYPES {
            for p in 0..PARTITIONS {
                match self
                    .consumer
                    .fetch_watermarks(&topic(t), p, Duration::from_secs(5))
                {
                    Ok((_, hi)) => targets.push(((topic(t), p), hi)),
                    Err(_) => return false,
                }
            }
        }
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let behind = targets
                .iter()
                .any(|(k, hi)| self.next.get(k).copied().unwrap_or(0) < *hi);
            if !behind {
                return true;
            }
            if std::time::Instant::now() > deadline {
                return false;
            }
            if let Some(Ok(m)) = self.consumer.poll(Duration::from_millis(100)) {
                self.next
                    .insert((m.topic().to_owned(), m.partition()), m.offset() + 1);
                if let Some(h) = m.headers() {
                    for h in h.iter().filter(|h| h.key == "id") {
                        self.ids.insert(
                            String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                        );
                    }
                }
            }
        }
    }
}
