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
}

/// Reads the slot's row from `pg_replication_slots`.
pub async fn slot_status(pg: &Client, slot: &str) -> Result<SlotStatus, tokio_postgres::Error> {
    let current: String = pg
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await?
        .get(0);
    let row = pg
        .query_opt(
            "SELECT active, active_pid, confirmed_flush_lsn::text, restart_lsn::text, wal_status::text,
                    pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint,
                    pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint
             FROM pg_replication_slots WHERE slot_name = $1",
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
        },
    })
}
