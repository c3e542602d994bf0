//! `pgoutbox check`: every setup check, run to the end, each failure with its fix.

use crate::config::{Config, Source};
use crate::postgres::preflight::{self, PreflightError};

pub use crate::destination::admin::CheckResult;

fn result(name: &'static str, r: Result<String, PreflightError>) -> CheckResult {
    match r {
        Ok(detail) => CheckResult {
            name,
            ok: true,
            detail,
        },
        Err(e) => CheckResult {
            name,
            ok: false,
            detail: e.to_string(),
        },
    }
}

/// Runs every check; PostgreSQL checks are skipped (and fail) if the server is unreachable.
pub async fn run(cfg: &Config) -> Vec<CheckResult> {
    let mut out = Vec::new();
    let pg = crate::postgres::connection::connect(cfg)
        .await
        .map_err(|e| e.to_string());
    match pg {
        Err(e) => out.push(CheckResult {
            name: "PostgreSQL reachable",
            ok: false,
            detail: format!(
                "{e}: check postgres_url, that the server listens there and that pg_hba.conf admits this client"
            ),
        }),
        Ok((client, conn)) => {
            out.push(CheckResult {
                name: "PostgreSQL reachable",
                ok: true,
                detail: server_version(&client).await,
            });
            postgres_checks(&client, cfg, &mut out).await;
            drop(client);
            let _ = conn.await;
        }
    }
    out.extend(crate::destination::admin::check(cfg.destination, cfg).await);
    out
}

async fn server_version(pg: &tokio_postgres::Client) -> String {
    match pg
        .query_one("SELECT current_setting('server_version')", &[])
        .await
    {
        Ok(r) => format!("PostgreSQL {}", r.get::<_, String>(0)),
        Err(e) => e.to_string(),
    }
}

async fn postgres_checks(pg: &tokio_postgres::Client, cfg: &Config, out: &mut Vec<CheckResult>) {
    // A standby answers most checks misleadingly (no slot, read-only): one line says it all.
    let primary = preflight::primary(pg).await;
    let is_primary = primary.is_ok();
    out.push(result(
        "primary",
        primary.map(|()| "not in recovery".into()),
    ));
    if !is_primary {
        return;
    }
    if cfg.source == Source::Poll {
        return poll_checks(pg, cfg, out).await;
    }
    out.push(result(
        "wal_level",
        preflight::wal_level(pg).await.map(|()| "logical".into()),
    ));
    out.push(result(
        "replication headroom",
        preflight::headroom(pg, &cfg.slot)
            .await
            .map(|(slots, senders)| format!("{slots} slot(s) and {senders} WAL sender(s) free")),
    ));
    for (i, o) in cfg.outboxes().into_iter().enumerate() {
        let t = &o.table;
        let table = preflight::table_exists(pg, t)
            .await
            .map_err(|e| e.for_setting(i));
        let table_ok = table.is_ok();
        out.push(result(
            "outbox table",
            table.map(|()| format!("{t} exists")),
        ));
        if table_ok {
            out.push(result(
                "outbox columns",
                preflight::columns(pg, &o).await.map(|()| {
                    format!(
                        "id={}, route={}, key={}, type={}, payload={}",
                        o.id_column, o.route_column, o.key_column, o.type_column, o.payload_column
                    )
                }),
            ));
        }
        out.push(result(
            "publication",
            preflight::publication_covers(pg, &cfg.publication, t)
                .await
                .map(|()| format!("{} publishes inserts of {t}", cfg.publication)),
        ));
    }
    out.push(tableless(pg, cfg).await);
    out.push(result(
        "REPLICATION privilege",
        preflight::replication_role(pg)
            .await
            .map(|()| "the role may replicate".into()),
    ));
    let record = crate::postgres::state::read(pg, &cfg.slot)
        .await
        .ok()
        .flatten();
    out.push(result(
        "replication slot",
        preflight::slot_state(pg, &cfg.slot)
            .await
            .and_then(|s| match s {
                Some(s) => Ok(format!(
                    "{} at {}{}",
                    cfg.slot,
                    s.confirmed_flush.map_or("?".into(), |l| l.to_string()),
                    s.active_pid
                        .map_or(String::new(), |p| format!(", streaming to pid {p}"))
                )),
                None if record.is_some() => Err(PreflightError::SlotMissing {
                    slot: cfg.slot.clone(),
                    confirmed: record
                        .as_ref()
                        .map_or(crate::lsn::Lsn::ZERO, |r| r.confirmed),
                    at: record
                        .as_ref()
                        .map(|r| r.updated_at.clone())
                        .unwrap_or_default(),
                }),
                None if cfg.create_slot => Ok(format!(
                    "{} does not exist yet; it is created on first start",
                    cfg.slot
                )),
                None => Err(PreflightError::NoSlot(cfg.slot.clone())),
            }),
    ));
    out.push(failover(pg, cfg).await);
}

/// Whether the slot survives a failover: a failover slot (PostgreSQL 17+) and, on the
/// primary, `synchronized_standby_slots` naming the standbys' physical slots.
async fn failover(pg: &tokio_postgres::Client, cfg: &Config) -> CheckResult {
    let name = "failover";
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
        Err(e) => {
            return CheckResult {
                name,
                ok: false,
                detail: crate::postgres::connection::describe(&e),
            }
        }
    };
    let risk = match preflight::unsynced_standbys(pg, &cfg.slot, cfg.failover).await {
        Ok(r) => r,
        Err(e) => {
            return CheckResult {
                name,
                ok: false,
                detail: e.to_string(),
            }
        }
    };
    let (version, standby): (i32, bool) = (row.get(0), row.get(1));
    let (slot_failover, synced_to, physical): (Option<bool>, String, i64) =
        (row.get(2), row.get(3), row.get(4));
    if let Some(e) = risk {
        return match cfg.allow_unsynchronized_failover {
            true => CheckResult {
                name,
                ok: true,
                detail: format!("! accepted by allow_unsynchronized_failover = true: {e}"),
            },
            false => CheckResult {
                name,
                ok: false,
                detail: e.to_string(),
            },
        };
    }
    let slot = &cfg.slot;
    let (ok, detail) = if (version as u32) < crate::replication::FAILOVER_SINCE {
        (true, format!("! no failover slots before PostgreSQL 17: a promoted standby has no copy of slot {slot}, and pgoutbox then stops rather than create a new one"))
    } else if standby {
        (
            true,
            format!(
                "this is a standby; slot {slot} synchronized here: {}",
                slot_failover.unwrap_or(false)
            ),
        )
    } else {
        match (slot_failover, cfg.failover) {
            (None, true) => (true, format!("slot {slot} will be created as a failover slot")),
            (_, false) => (true, format!("! failover = false: slot {slot} is not kept by standbys")),
            (Some(false), true) => (false, format!(
                "slot {slot} is not a failover slot, so standbys keep no copy of it: recreate it while nothing is written (pgoutbox creates failover slots), or set failover = false to accept that")),
            (Some(true), true) if synced_to.is_empty() && physical == 0 => (true, format!(
                "slot {slot} is a failover slot (no physical standby slot yet: name the standbys' slots in synchronized_standby_slots when you add them)")),
            (Some(true), true) => (true, format!(
                "slot {slot} is a failover slot; synchronized_standby_slots = {synced_to}")),
        }
    };
    CheckResult { name, ok, detail }
}

/// Whether the table-less outbox can work on this server (PostgreSQL 14+).
async fn tableless(pg: &tokio_postgres::Client, cfg: &Config) -> CheckResult {
    let name = "table-less outbox";
    let version = match pg
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
    {
        Ok(r) => r.get::<_, i32>(0) as u32,
        Err(e) => {
            return CheckResult {
                name,
                ok: false,
                detail: crate::postgres::connection::describe(&e),
            }
        }
    };
    let (ok, detail) = match cfg.tableless_on(version) {
        Ok(None) => match &cfg.outbox.message_prefix {
            Some(p) => (true, format!("pg_logical_emit_message with prefix {p:?}")),
            None => (true, "off (message_prefix is empty)".into()),
        },
        Ok(Some(warning)) => (true, format!("! {warning}")),
        Err(why) => (false, why),
    };
    CheckResult { name, ok, detail }
}

/// `source = poll` needs no replication: the table, its columns and the polling columns.
async fn poll_checks(pg: &tokio_postgres::Client, cfg: &Config, out: &mut Vec<CheckResult>) {
    let t = &cfg.outbox.table;
    let table = preflight::table_exists(pg, t).await;
    let table_ok = table.is_ok();
    out.push(result(
        "outbox table",
        table.map(|()| format!("{t} exists")),
    ));
    if !table_ok {
        return;
    }
    out.push(result(
        "outbox columns",
        preflight::columns(pg, &cfg.outbox)
            .await
            .map(|()| "the configured columns exist".into()),
    ));
    out.push(result(
        "polling columns",
        preflight::poll_columns(pg, t)
            .await
            .map(|()| "seq and status (sql/poll.sql)".into()),
    ));
}
