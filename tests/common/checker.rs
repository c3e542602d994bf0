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

/// Like `Env::spawn_writer`, but records each commit's upper-bound LSN.
pub fn spawn_tracked_writer(
    env: &Env,
    txs: Vec<Vec<Event>>,
    pause: Duration,
) -> (Committed, JoinHandle<()>) {
    let committed: Committed = Arc::default();
    let log = committed.clone();
    let url = env.pg.url();
    let task = tokio::spawn(async move {
        let db = connect(&url).await;
        for tx in &txs {
            db.batch_execute(&tx_sql(tx, "COMMIT")).await.unwrap();
            let lsn: String = db
                .query_one("SELECT pg_current_wal_lsn()::text", &[])
                .await
                .unwrap()
                .get(0);
            let ids = tx.iter().map(|e| e.id.clone()).collect();
            log.lock().unwrap().push((ids, lsn.parse().unwrap()));
            tokio::time::sleep(pause).await;
        }
    });
    (committed, task)
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
        let db = connect(&url).await;
        let mut seen = Seen::new(&brokers);
        let mut report = LsnReport::default();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let Ok(row) = db
                .query_one(
                    "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'pgoutbox'",
                    &[],
                )
                .await
            else {
                continue;
            };
            let confirmed: Lsn = row.get::<_, String>(0).parse().unwrap();
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
            let early = committed
                .lock()
                .unwrap()
                .iter()
                .filter(|(_, bound)| *bound <= confirmed)
                .any(|(ids, _)| ids.iter().any(|id| !seen.ids.contains(id)));
            if early {
                report.early_confirms += 1;
            }
        }
        report
    })
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
