//! High availability: instances contend for a PostgreSQL advisory lock keyed by the slot; only
//! the holder streams. The lock lives as long as its session, so a leader that dies (or loses
//! its connection) releases it and a standby takes over, resuming from the slot's confirmed LSN.
//! The slot itself admits one streamer at a time, so even a split second of overlap is safe.
//!
//! A leader that is alive to PostgreSQL but makes no progress (a frozen process keeps its
//! sessions open) must not hold the slot for good: the leader renews a lease by running a
//! query on its lock session every second, which PostgreSQL records as the session's
//! `state_change`. A standby that finds the lock holder's session unchanged for longer than
//! `ha_lease` terminates that session and the slot's walsender, and takes the lock. The old
//! leader, if it wakes, finds its lock session gone and steps down.

use std::time::Duration;

use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{Health, StreamError};
use crate::config::Config;

/// First key of the two-key advisory lock: "pgob" in ASCII, so pgoutbox's locks are
/// recognisable in `pg_locks` (classid) and cannot collide with an application's one-key locks.
pub const LOCK_CLASS: i32 = 0x7067_6F62;

/// How often a standby tries the lock, and the leader renews its lease on its lock session.
const POLL: Duration = Duration::from_secs(1);

/// A held lock: the session that holds it.
pub struct Leadership {
    client: Client,
    conn: tokio::task::JoinHandle<()>,
}

impl Leadership {
    /// Resolves when the lock session is gone or stops answering: leadership is lost.
    /// Renews the lease every second while `health` shows progress; stalled for longer than
    /// `lease` (the destination takes nothing, or no session streams), it stops renewing so
    /// that a standby takes over, and goes on when things move again.
    pub async fn lost(&mut self, health: &Health, lease: Duration) {
        let mut said = false;
        loop {
            tokio::select! {
                _ = &mut self.conn => return,
                _ = tokio::time::sleep(POLL) => {
                    let stalled = health.stalled_for();
                    if stalled > lease {
                        if !said {
                            warn!(stalled_secs = stalled.as_secs(),
                                "no progress for longer than the HA lease (the destination takes nothing, or no session streams): no longer renewing the lease, so that a standby takes over");
                            said = true;
                        }
                        continue;
                    }
                    said = false;
                    let ping = tokio::time::timeout(POLL * 5, self.client.simple_query("SELECT 1"));
                    if !matches!(ping.await, Ok(Ok(_))) {
                        return;
                    }
                }
            }
        }
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        // Closing the session releases the lock at once.
        self.conn.abort();
    }
}

/// Waits until this instance holds the lock (`Some`) or shutdown is requested (`None`).
pub async fn acquire(
    cfg: &Config,
    shutdown: &CancellationToken,
    health: &Health,
) -> Result<Option<Leadership>, StreamError> {
    cfg.validate()?;
    let mut announced = false;
    loop {
        match try_lock(cfg).await {
            Ok(Attempt::Leader(l)) => {
                health.set_standby(None);
                // A new term starts with a clean slate.
                health.note_progress(true);
                return Ok(Some(l));
            }
            Ok(Attempt::Replaced) => {
                health.set_standby(Some(true));
                // Straight back for the lock, now free.
                continue;
            }
            Ok(Attempt::Held) => {
                health.set_standby(Some(true));
                if !announced {
                    info!(slot = %cfg.slot, "standby: another instance holds the HA lock");
                    announced = true;
                }
            }
            Err(e) => {
                health.set_standby(Some(false));
                warn!(error = %e, "standby: cannot reach PostgreSQL to contend for the HA lock")
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            _ = tokio::time::sleep(POLL) => {}
        }
    }
}

/// The backend holding the HA lock of `slot` (an HA instance, leading), if any.
pub async fn lock_holder(pg: &Client, slot: &str) -> Result<Option<i32>, tokio_postgres::Error> {
    let row = pg
        .query_opt(
            "SELECT pid FROM pg_locks
             WHERE locktype = 'advisory' AND granted AND objsubid = 2
               AND classid = $1::int::oid AND objid = hashtext($2)::oid
               AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            &[&LOCK_CLASS, &slot],
        )
        .await?;
    Ok(row.map(|r| r.get(0)))
}

/// What one try for the lock came to.
enum Attempt {
    Leader(Leadership),
    /// Another instance holds it and renews its lease.
    Held,
    /// Another instance held it with an expired lease, and was terminated.
    Replaced,
}

async fn try_lock(cfg: &Config) -> Result<Attempt, crate::postgres::connection::ConnectError> {
    let (client, conn) = crate::postgres::connection::connect(cfg).await?;
    debug!("contending for the HA lock");
    let got: bool = client
        .query_one(
            "SELECT pg_try_advisory_lock($1, hashtext($2))",
            &[&LOCK_CLASS, &cfg.slot],
        )
        .await?
        .get(0);
    if got {
        return Ok(Attempt::Leader(Leadership { client, conn }));
    }
    let replaced = replace_if_expired(&client, cfg).await;
    conn.abort();
    Ok(match replaced? {
        true => Attempt::Replaced,
        false => Attempt::Held,
    })
}

/// Terminates the lock holder's session and the slot's walsender when the holder renewed
/// nothing for longer than the lease; whether it did.
async fn replace_if_expired(client: &Client, cfg: &Config) -> Result<bool, tokio_postgres::Error> {
    let Some(pid) = lock_holder(client, &cfg.slot).await? else {
        return Ok(false);
    };
    let idle: Option<f64> = client
        .query_opt(
            "SELECT extract(epoch FROM now() - coalesce(state_change, backend_start))::float8
             FROM pg_stat_activity WHERE pid = $1",
            &[&pid],
        )
        .await?
        .and_then(|r| r.get(0));
    let Some(idle) = idle.filter(|s| *s > cfg.ha_lease.as_secs_f64()) else {
        return Ok(false);
    };
    warn!(slot = %cfg.slot, pid, idle_secs = idle.round(),
        lease_secs = cfg.ha_lease.as_secs(),
        "the HA leader renewed nothing for longer than its lease (frozen, or cut off): terminating its lock session and walsender to take over");
    client
        .execute(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots
             WHERE slot_name = $1 AND active_pid IS NOT NULL",
            &[&cfg.slot],
        )
        .await?;
    client
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await?;
    Ok(true)
}
