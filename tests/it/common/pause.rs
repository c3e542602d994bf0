//! How long delivery stood still, as PostgreSQL sees it: the slot's confirmed position,
//! sampled every 50 ms while there is WAL past it; the longest stretch without an advance.
//! (The slot is confirmed only past acknowledged events, so this is the delivery pause.)

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

pub struct PauseWatch {
    stop: Arc<AtomicBool>,
    task: JoinHandle<Duration>,
}

impl PauseWatch {
    /// Watches slot `pgoutbox` of the server at `url`.
    pub async fn start(url: &str) -> PauseWatch {
        let (db, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let (mut longest, mut last, mut since) = (Duration::ZERO, None, Instant::now());
            while !stopped.load(Ordering::Relaxed) {
                let row = db
                    .query_one(
                        "SELECT confirmed_flush_lsn::text, pg_current_wal_lsn() > confirmed_flush_lsn
                         FROM pg_replication_slots WHERE slot_name = 'pgoutbox'",
                        &[],
                    )
                    .await;
                if let Ok(row) = row {
                    let confirmed: Option<String> = row.get(0);
                    let behind: Option<bool> = row.get(1);
                    if confirmed != last || behind != Some(true) {
                        (last, since) = (confirmed, Instant::now());
                    }
                    longest = longest.max(since.elapsed());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            longest
        });
        PauseWatch { stop, task }
    }

    /// Stops watching: the longest time the slot stood still with WAL past it.
    pub async fn longest(self) -> Duration {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}
