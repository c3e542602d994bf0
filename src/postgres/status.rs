//! What `pgoutbox status` reports: the slot as PostgreSQL sees it.

use serde::Serialize;
use tokio_postgres::Client;

/// The slot's state and how much WAL it holds back.
#[derive(Debug, Clone, Serialize)]
pub struct SlotStatus {
    pub slot: String,
    pub exists: bool,
    pub active: bool,
    /// Backend pid of the walsender streaming the slot, if any.
    pub active_pid: Option<i32>,
    pub confirmed_flush_lsn: Option<String>,
    pub restart_lsn: Option<String>,
    /// `reserved`, `extended`, `unreserved` or `lost`.
    pub wal_status: Option<String>,
    /// WAL the server keeps for this slot: current WAL position − restart_lsn.
    pub retained_wal_bytes: Option<i64>,
    /// How far the confirmed position trails the current WAL position.
    pub lag_bytes: Option<i64>,
    pub current_wal_lsn: String,
    /// Why the server invalidated the slot (PostgreSQL 17+: `wal_removed`, `rows_removed`,
    /// `wal_level_insufficient`, 18: `idle_timeout`), if it did.
    pub invalidation_reason: Option<String>,
    /// A failover slot, synchronized to standbys (PostgreSQL 17+; `None` before).
    pub failover: Option<bool>,
    /// A slot synchronized from the primary, on a standby (PostgreSQL 17+).
    pub synced: Option<bool>,
}

impl SlotStatus {
    /// What is wrong with the slot, if it cannot be streamed from: missing, lost or
    /// invalidated (events past its position may be gone).
    pub fn problem(&self) -> Option<String> {
        if !self.exists {
            return Some(format!("replication slot {:?} does not exist", self.slot));
        }
        if let Some(reason) = &self.invalidation_reason {
            return Some(format!(
                "replication slot {:?} is invalidated ({reason}): events past its position may be lost; recreate it deliberately and resync",
                self.slot
            ));
        }
        if self.wal_status.as_deref() == Some("lost") {
            return Some(format!(
                "replication slot {:?} is lost (wal_status = lost): the WAL it needs is gone; recreate it deliberately and resync",
                self.slot
            ));
        }
        None
    }
}

/// The server's current WAL position; on a standby, the last replayed one.
const CURRENT_LSN: &str =
    "CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END";

/// Reads the slot's row from `pg_replication_slots`.
/// The server's `max_slot_wal_keep_size` in bytes; -1: unlimited.
pub async fn wal_keep_limit(pg: &Client) -> Result<i64, tokio_postgres::Error> {
    let mb: i64 = pg
        .query_one(
            "SELECT setting::bigint FROM pg_settings WHERE name = 'max_slot_wal_keep_size'",
            &[],
        )
        .await?
        .get(0);
    Ok(if mb < 0 {
        -1
    } else {
        mb.saturating_mul(1 << 20)
    })
}

impl SlotStatus {
    /// Whether the server has invalidated the slot.
    pub fn invalidated(&self) -> bool {
        self.invalidation_reason.is_some() || self.wal_status.as_deref() == Some("lost")
    }
}

pub async fn slot_status(pg: &Client, slot: &str) -> Result<SlotStatus, tokio_postgres::Error> {
    let current: String = pg
        .query_one(&format!("SELECT ({CURRENT_LSN})::text"), &[])
        .await?
        .get(0);
    // Columns that only some versions have are read through to_jsonb (absent = NULL).
    let row = pg
        .query_opt(
            &format!(
                "SELECT active, active_pid, confirmed_flush_lsn::text, restart_lsn::text, wal_status::text,
                    pg_wal_lsn_diff({CURRENT_LSN}, restart_lsn)::bigint,
                    pg_wal_lsn_diff({CURRENT_LSN}, confirmed_flush_lsn)::bigint,
                    to_jsonb(s) ->> 'invalidation_reason',
                    (to_jsonb(s) ->> 'failover')::bool,
                    (to_jsonb(s) ->> 'synced')::bool
                 FROM pg_replication_slots s WHERE slot_name = $1"
            ),
            &[&slot],
        )
        .await?;
    Ok(match row {
        None => SlotStatus {
            slot: slot.to_owned(),
            exists: false,
            active: false,
            active_pid: None,
            confirmed_flush_lsn: None,
            restart_lsn: None,
            wal_status: None,
            retained_wal_bytes: None,
            lag_bytes: None,
            current_wal_lsn: current,
            invalidation_reason: None,
            failover: None,
            synced: None,
        },
        Some(r) => SlotStatus {
            slot: slot.to_owned(),
            exists: true,
            active: r.get(0),
            active_pid: r.get(1),
            confirmed_flush_lsn: r.get(2),
            restart_lsn: r.get(3),
            wal_status: r.get(4),
            retained_wal_bytes: r.get(5),
            lag_bytes: r.get(6),
            current_wal_lsn: current,
            invalidation_reason: r.get(7),
            failover: r.get(8),
            synced: r.get(9),
        },
    })
}
