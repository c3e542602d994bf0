//! With `heartbeat_interval`, the slot advances on a database where nothing at all is written:
//! the heartbeat's own logical messages give it WAL to pass. (Without heartbeats, keepalives
//! advance it when other tables or databases write: tests/it/streaming.rs.)

use std::time::Duration;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_advances_an_idle_slot_as_the_least_privilege_role() {
    let env = Env::start().await;
    let mut cfg = env.config();
    // The role sql/setup.sql creates: REPLICATION, CONNECT, nothing else.
    cfg.postgres_url = env.pg.url_for("pgoutbox", "postgres");
    cfg.heartbeat_interval = Some(Duration::from_millis(500));
    let running = env.spawn_streamer(cfg);
    env.wait_streaming().await;
    // Settle: the slot has caught up with everything written so far.
    let settled = env.current_lsn().await;
    env.wait_confirmed(settled, Duration::from_secs(10)).await;

    // Nobody writes; only heartbeats make WAL, and the slot follows them.
    let target = env.current_lsn().await;
    wait_for(
        "WAL written by heartbeats",
        Duration::from_secs(10),
        || async { env.current_lsn().await > target },
    )
    .await;
    let moved = env.current_lsn().await;
    env.wait_confirmed(moved, Duration::from_secs(10)).await;
    running.stop().await;
}
