//! The PostgreSQL setup checks, in order, once for both callers: the streamer runs the steps
//! marked for the start and stops at the first failure; `pgoutbox check` runs every step to
//! the end and reports each (a standby ends it after the first line: on a standby every later
//! answer misleads).

use tokio_postgres::Client;

use super::{
    columns, headroom, poll_columns, primary, publication_covers, replication_role, slot_state,
    table_exists, unsynced_standbys, wal_level, PreflightError,
};
use crate::config::{Config, Source};

/// What one step found.
#[derive(Debug)]
pub enum Found {
    /// Fine, and what was seen.
    Passed(String),
    /// Fine, with a risk worth saying (`check` prints it after `!`).
    Noted(String),
    /// A setup problem, with its fix.
    Failed(PreflightError),
    /// A problem only `check` reports (the streamer handles it at its own place).
    Refused(String),
}

/// Who runs the sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The streamer before streaming: the start's steps, up to the first failure.
    Start,
    /// `pgoutbox check`: every step.
    Check,
}

/// Runs the steps for `mode`, handing each to `report` (name, what it found). At the start
/// the first failure is the result.
pub async fn run(
    pg: &Client,
    cfg: &Config,
    mode: Mode,
    mut report: impl FnMut(&'static str, Found),
) -> Result<(), PreflightError> {
    let check = mode == Mode::Check;
    // Reports a step; at the start, a failure ends the sequence.
    macro_rules! step {
        ($name:expr, $r:expr) => {{
            let r: Result<String, PreflightError> = $r;
            match r {
                Ok(d) => report($name, Found::Passed(d)),
                Err(e) if !check => return Err(e),
                Err(e) => report($name, Found::Failed(e)),
            }
        }};
    }
    match primary(pg).await {
        Ok(()) => report("primary", Found::Passed("not in recovery".into())),
        Err(e) if !check => return Err(e),
        Err(e) => {
            report("primary", Found::Failed(e));
            return Ok(());
        }
    }
    if cfg.source == Source::Poll {
        if check {
            poll(pg, cfg, &mut report).await;
        }
        return Ok(());
    }
    step!("wal_level", wal_level(pg).await.map(|()| "logical".into()));
    if check {
        step!(
            "replication headroom",
            headroom(pg, &cfg.slot).await.map(|(slots, senders)| {
                format!("{slots} slot(s) and {senders} WAL sender(s) free")
            })
        );
    }
    for (i, o) in cfg.outboxes().into_iter().enumerate() {
        let t = &o.table;
        let table = table_exists(pg, t).await.map_err(|e| e.for_setting(i));
        let table_ok = table.is_ok();
        step!("outbox table", table.map(|()| format!("{t} exists")));
        if table_ok {
            step!(
                "outbox columns",
                columns(pg, &o).await.map(|()| format!(
                    "id={}, route={}, key={}, type={}, payload={}",
                    o.id_column, o.route_column, o.key_column, o.type_column, o.payload_column
                ))
            );
        }
        step!(
            "publication",
            publication_covers(pg, &cfg.publication, t)
                .await
                .map(|()| format!("{} publishes inserts of {t}", cfg.publication))
        );
    }
    if check {
        report("table-less outbox", tableless(pg, cfg).await);
    }
    step!(
        "REPLICATION privilege",
        replication_role(pg)
            .await
            .map(|()| "the role may replicate".into())
    );
    if check {
        step!("replication slot", slot(pg, cfg).await);
        report("failover", failover(pg, cfg).await);
    }
    Ok(())
}

/// The slot as `check` sees it: where it is, or, missing, whether that is a first start or a
/// gap (the state record says it streamed before).
async fn slot(pg: &Client, cfg: &Config) -> Result<String, PreflightError> {
    let record = crate::postgres::state::read(pg, &cfg.slot)
        .await
        .ok()
        .flatten();
    match slot_state(pg, &cfg.slot).await? {
        Some(s) => Ok(format!(
            "{} at {}{}",
            cfg.slot,
            s.confirmed_flush.map_or("?".into(), |l| l.to_string()),
            s.active_pid
                .map_or(String::new(), |p| format!(", streaming to pid {p}"))
        )),
        None => match record {
            Some(r) => Err(PreflightError::SlotMissing {
                slot: cfg.slot.clone(),
                confirmed: r.confirmed,
                at: r.updated_at,
            }),
            None if cfg.create_slot => Ok(format!(
                "{} does not exist yet; it is created on first start",
                cfg.slot
            )),
            None => Err(PreflightError::NoSlot(cfg.slot.clone())),
        },
    }
}

/// Whether the slot survives a failover: a failover slot (PostgreSQL 17+) and, on the
/// primary, `synchronized_standby_slots` naming the standbys' physical slots. (The streamer
/// applies the same rule through `unsynced_standbys` at its start.)
async fn failover(pg: &Client, cfg: &Config) -> Found {
    let row = pg
        .query_one(
            "SELECT current_setting('server_version_num')::int, pg_is_in_recovery(),
                    (SELECT (to_jsonb(s) ->> 'failover')::bool FROM pg_replication_slots s
                     WHERE slot_name = $1),
                    coalesce(current_setting('synchronized_standby_slots', true), ''),
                    (SELECT count(*) FROM pg_replication_slots WHERE slot_type = 'physical')",
            &[&cfg.slot],
        )
        .await;
    let row = match row {
        Ok(r) => r,
        Err(e) => return Found::Refused(crate::postgres::connection::describe(&e)),
    };
    match unsynced_standbys(pg, &cfg.slot, cfg.failover).await {
        Err(e) => return Found::Failed(e),
        Ok(Some(e)) if cfg.allow_unsynchronized_failover => {
            return Found::Noted(format!(
                "accepted by allow_unsynchronized_failover = true: {e}"
            ))
        }
        Ok(Some(e)) => return Found::Failed(e),
        Ok(None) => {}
    }
    let (version, standby): (i32, bool) = (row.get(0), row.get(1));
    let (slot_failover, synced_to, physical): (Option<bool>, String, i64) =
        (row.get(2), row.get(3), row.get(4));
    let slot = &cfg.slot;
    if (version as u32) < crate::replication::FAILOVER_SINCE {
        return Found::Noted(format!("no failover slots before PostgreSQL 17: a promoted standby has no copy of slot {slot}, and pgoutbox then stops rather than create a new one"));
    }
    if standby {
        return Found::Passed(format!(
            "this is a standby; slot {slot} synchronized here: {}",
            slot_failover.unwrap_or(false)
        ));
    }
    match (slot_failover, cfg.failover) {
        (None, true) => Found::Passed(format!("slot {slot} will be created as a failover slot")),
        (_, false) => Found::Noted(format!("failover = false: slot {slot} is not kept by standbys")),
        (Some(false), true) => Found::Refused(format!(
            "slot {slot} is not a failover slot, so standbys keep no copy of it: recreate it while nothing is written (pgoutbox creates failover slots), or set failover = false to accept that")),
        (Some(true), true) if synced_to.is_empty() && physical == 0 => Found::Passed(format!(
            "slot {slot} is a failover slot (no physical standby slot yet: name the standbys' slots in synchronized_standby_slots when you add them)")),
        (Some(true), true) => Found::Passed(format!(
            "slot {slot} is a failover slot; synchronized_standby_slots = {synced_to}")),
    }
}

/// Whether the table-less outbox can work on this server (PostgreSQL 14+).
async fn tableless(pg: &Client, cfg: &Config) -> Found {
    let version = match pg
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
    {
        Ok(r) => r.get::<_, i32>(0) as u32,
        Err(e) => return Found::Refused(crate::postgres::connection::describe(&e)),
    };
    match cfg.tableless_on(version) {
        Ok(None) => match &cfg.outbox.message_prefix {
            Some(p) => Found::Passed(format!("pg_logical_emit_message with prefix {p:?}")),
            None => Found::Passed("off (message_prefix is empty)".into()),
        },
        Ok(Some(warning)) => Found::Noted(warning),
        Err(why) => Found::Refused(why),
    }
}

/// `source = poll` needs no replication: the table, its columns and the polling columns.
async fn poll(pg: &Client, cfg: &Config, report: &mut impl FnMut(&'static str, Found)) {
    let t = &cfg.outbox.table;
    if let Err(e) = table_exists(pg, t).await {
        return report("outbox table", Found::Failed(e));
    }
    report("outbox table", Found::Passed(format!("{t} exists")));
    report(
        "outbox columns",
        match columns(pg, &cfg.outbox).await {
            Ok(()) => Found::Passed("the configured columns exist".into()),
            Err(e) => Found::Failed(e),
        },
    );
    report(
        "polling columns",
        match poll_columns(pg, t).await {
            Ok(()) => Found::Passed("seq and status (sql/poll.sql)".into()),
            Err(e) => Found::Failed(e),
        },
    );
}
