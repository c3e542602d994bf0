//! The setup checks on a normal connection, each failing in one line that says what to run.
//! [`sequence`] runs them in order: at start up to the first failure, for `pgoutbox check`
//! to the end.

pub mod sequence;

use tokio_postgres::Client;

use crate::lsn::Lsn;
use crate::outbox::{OutboxConfig, TableName};

/// A setup problem the operator must fix; pgoutbox exits non-zero with this line.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error(
        "wal_level is '{0}' but pgoutbox needs 'logical': run `ALTER SYSTEM SET wal_level = logical;` and restart PostgreSQL"
    )]
    WalLevel(String),
    #[error("table {0} does not exist: run `pgoutbox setup` or `psql -f sql/setup.sql`")]
    NoTable(TableName),
    #[error(
        "table {table} does not exist, but {} does (moved with ALTER TABLE … SET SCHEMA?): set {setting} = \"{}\" (running `pgoutbox setup` would create a second, empty {table} that nothing writes to)",
        .found.iter().map(ToString::to_string).collect::<Vec<_>>().join(" and "),
        .found.first().map(ToString::to_string).unwrap_or_default()
    )]
    TableMoved {
        table: TableName,
        found: Vec<TableName>,
        /// `table`, or `tables[].table` for a further outbox table.
        setting: &'static str,
    },
    #[error(
        "this server is a standby (in recovery): pgoutbox streams from the primary; set postgres_url to the primary's address, or list every server with target_session_attrs=read-write (postgres://host1,host2/db?target_session_attrs=read-write) so that whichever is primary is found"
    )]
    Standby,
    #[error(
        "replication slot {slot:?} is a failover slot, but the standbys' physical slot(s) {unsynced} are not in synchronized_standby_slots ({setting:?}): pgoutbox could deliver events a standby has not received, and after a failover to it those events would exist in no database. Run `ALTER SYSTEM SET synchronized_standby_slots = '{wanted}'; SELECT pg_reload_conf();`, or set allow_unsynchronized_failover = true to accept that risk"
    )]
    UnsyncedFailover {
        slot: String,
        unsynced: String,
        setting: String,
        wanted: String,
    },
    #[error(
        "publication {0:?} does not exist: run `pgoutbox setup` or `CREATE PUBLICATION {0} FOR TABLE {1} WITH (publish = 'insert');`"
    )]
    NoPublication(String, TableName),
    #[error(
        "publication {0:?} does not publish inserts: run `ALTER PUBLICATION {0} SET (publish = 'insert');`"
    )]
    NoInserts(String),
    #[error(
        "publication {0:?} does not include table {1}: run `ALTER PUBLICATION {0} ADD TABLE {1};`"
    )]
    TableNotPublished(String, TableName),
    #[error(
        "table {0} is UNLOGGED: its rows never reach the WAL, so no replication slot can see them; run `ALTER TABLE {0} SET LOGGED;`"
    )]
    Unlogged(TableName),
    #[error(
        "replication slot {slot:?} uses plugin {plugin:?}, not pgoutput: drop it (`SELECT pg_drop_replication_slot('{slot}');`) or choose another --slot"
    )]
    WrongPlugin { slot: String, plugin: String },
    #[error(
        "replication slot {slot:?} belongs to database {other:?}, not {ours:?}: choose another --slot or connect to {other:?}"
    )]
    OtherDatabase {
        slot: String,
        other: String,
        ours: String,
    },
    #[error(
        "replication slot {0:?} is invalidated (wal_status = lost): events may have been missed; recreate it with `SELECT pg_drop_replication_slot('{0}');` and resync"
    )]
    SlotLost(String),
    #[error(
        "replication slot {slot:?} is missing, but pgoutbox streamed from it before (confirmed up to WAL {confirmed}, recorded {at}): a failover to a standby without the slot, a restored backup or a dropped slot. Events committed after WAL {confirmed} may never be delivered, and pgoutbox does not start a new slot over that gap. Recover: re-send what was committed since (rows still in the table: `source = poll`), then run `pgoutbox slot forget` and start again; the new slot starts at the present"
    )]
    SlotMissing {
        slot: String,
        confirmed: Lsn,
        at: String,
    },
    #[error(
        "replication slot {0:?} does not exist and slot creation is off: create it with `SELECT pg_create_logical_replication_slot('{0}', 'pgoutput');`"
    )]
    NoSlot(String),
    #[error(
        "table {table} has no column {column:?} (the {role} column): add it, or set {role_key} to the column to use"
    )]
    MissingColumn {
        table: TableName,
        column: String,
        role: &'static str,
        role_key: &'static str,
    },
    #[error(
        "column {column:?} of {table} is a generated column, which logical replication does not send (before PostgreSQL 18): store the value in a plain column, or take it out of {role_key}"
    )]
    GeneratedColumn {
        table: TableName,
        column: String,
        role_key: &'static str,
    },
    #[error(
        "column {column:?} of {table} has type {ty}; the payload must be jsonb, json, bytea, text or varchar"
    )]
    PayloadType {
        table: TableName,
        column: String,
        ty: String,
    },
    #[error("table {0} has no seq and status columns, which polling needs: run sql/poll.sql")]
    PollColumns(TableName),
    #[error("role {0:?} may not replicate: run `ALTER ROLE {0} REPLICATION;` as a superuser")]
    NoReplication(String),
    #[error(
        "all {max} replication slots are in use: drop an unused slot or raise max_replication_slots (restart required)"
    )]
    NoSlotHeadroom { max: i64 },
    #[error(
        "all {max} WAL senders are in use: stop another replication client or raise max_wal_senders (restart required)"
    )]
    NoSenderHeadroom { max: i64 },
    // Rendered by describe(), so not also a `source()`.
    #[error("checking PostgreSQL setup: {}", crate::postgres::connection::describe(.0))]
    Query(tokio_postgres::Error),
}

impl From<tokio_postgres::Error> for PreflightError {
    fn from(e: tokio_postgres::Error) -> Self {
        PreflightError::Query(e)
    }
}

impl PreflightError {
    /// Names the setting of outbox table `i` (0 = `table`, then `tables[]`).
    pub fn for_setting(self, i: usize) -> Self {
        match self {
            PreflightError::TableMoved { table, found, .. } if i > 0 => {
                PreflightError::TableMoved {
                    table,
                    found,
                    setting: "tables[].table",
                }
            }
            other => other,
        }
    }

    /// Query errors may be transient (connection lost); the rest need an operator.
    pub fn is_fatal(&self) -> bool {
        // A standby may be promoted: retried, saying so every time.
        !matches!(self, PreflightError::Query(_) | PreflightError::Standby)
    }
}

/// What the server says about our slot.
#[derive(Debug, Clone)]
pub struct SlotInfo {
    pub confirmed_flush: Option<Lsn>,
    pub active_pid: Option<i32>,
}

/// The server is a primary: a standby can neither keep the state record nor (before
/// PostgreSQL 16) decode.
pub async fn primary(pg: &Client) -> Result<(), PreflightError> {
    let in_recovery: bool = pg
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await?
        .get(0);
    match in_recovery {
        true => Err(PreflightError::Standby),
        false => Ok(()),
    }
}

/// The physical slots (the standbys') that `synchronized_standby_slots` does not name, when
/// `slot` is (or will be created as) a failover slot on a PostgreSQL 17+ primary: pgoutbox may
/// then receive, and deliver, what those standbys do not have yet. `None` when it is safe.
pub async fn unsynced_standbys(
    pg: &Client,
    slot: &str,
    create_as_failover: bool,
) -> Result<Option<PreflightError>, PreflightError> {
    let row = pg
        .query_one(
            "SELECT current_setting('server_version_num')::int,
                    (SELECT (to_jsonb(s) ->> 'failover')::bool FROM pg_replication_slots s
                     WHERE slot_name = $1),
                    coalesce(current_setting('synchronized_standby_slots', true), ''),
                    coalesce((SELECT array_agg(slot_name::text ORDER BY slot_name)
                              FROM pg_replication_slots WHERE slot_type = 'physical'), '{}')",
            &[&slot],
        )
        .await?;
    let (version, failover): (i32, Option<bool>) = (row.get(0), row.get(1));
    let (setting, physical): (String, Vec<String>) = (row.get(2), row.get(3));
    if (version as u32) < crate::replication::FAILOVER_SINCE
        || !failover.unwrap_or(create_as_failover)
    {
        return Ok(None);
    }
    let named: Vec<&str> = setting
        .split(',')
        .map(|s| s.trim().trim_matches('"'))
        .filter(|s| !s.is_empty())
        .collect();
    let unsynced: Vec<&String> = physical
        .iter()
        .filter(|p| !named.contains(&p.as_str()))
        .collect();
    if unsynced.is_empty() {
        return Ok(None);
    }
    let wanted = named
        .iter()
        .copied()
        .chain(unsynced.iter().map(|s| s.as_str()))
        .collect::<Vec<_>>()
        .join(",");
    Ok(Some(PreflightError::UnsyncedFailover {
        slot: slot.to_owned(),
        unsynced: unsynced
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        setting: setting.clone(),
        wanted,
    }))
}

/// `wal_level` must be `logical`.
pub async fn wal_level(pg: &Client) -> Result<(), PreflightError> {
    let wal_level: String = pg
        .query_one("SELECT current_setting('wal_level')", &[])
        .await?
        .get(0);
    if wal_level != "logical" {
        return Err(PreflightError::WalLevel(wal_level));
    }
    Ok(())
}

/// The outbox table exists.
pub async fn table_exists(pg: &Client, table: &TableName) -> Result<(), PreflightError> {
    let exists = pg
        .query_one(
            "SELECT to_regclass(format('%I.%I', $1::text, $2::text)) IS NOT NULL",
            &[&table.schema, &table.name],
        )
        .await?
        .get::<_, bool>(0);
    if !exists {
        // A table of that name elsewhere is the same table moved, far likelier than a new one.
        let found = pg
            .query(
                "SELECT n.nspname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE c.relname = $1 AND c.relkind IN ('r', 'p') AND n.nspname <> $2
                   AND n.nspname NOT IN ('pg_catalog', 'information_schema')
                 ORDER BY 1",
                &[&table.name, &table.schema],
            )
            .await?;
        if found.is_empty() {
            return Err(PreflightError::NoTable(table.clone()));
        }
        return Err(PreflightError::TableMoved {
            table: table.clone(),
            found: found
                .iter()
                .map(|r| TableName {
                    schema: r.get(0),
                    name: table.name.clone(),
                })
                .collect(),
            setting: "table",
        });
    }
    Ok(())
}

/// Every configured column exists; the payload has a type whose bytes make a record value.
pub async fn columns(pg: &Client, outbox: &OutboxConfig) -> Result<(), PreflightError> {
    let rows = pg
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, NULL), a.attgenerated::text,
                    current_setting('server_version_num')::int
             FROM pg_attribute a
             WHERE a.attrelid = to_regclass(format('%I.%I', $1::text, $2::text))
               AND a.attnum > 0 AND NOT a.attisdropped",
            &[&outbox.table.schema, &outbox.table.name],
        )
        .await?;
    let ty = |col: &str| -> Option<String> {
        rows.iter()
            .find(|r| r.get::<_, String>(0) == col)
            .map(|r| r.get(1))
    };
    let mut wanted = vec![
        (&outbox.id_column, "event id", "id_column"),
        (&outbox.route_column, "route", "route_column"),
        (&outbox.key_column, "key", "key_column"),
        (&outbox.type_column, "type", "type_column"),
        (&outbox.payload_column, "payload", "payload_column"),
    ];
    if let Some(p) = &outbox.partition_column {
        wanted.push((p, "partition", "partition_column"));
    }
    for (column, _) in &outbox.additional_headers {
        wanted.push((column, "additional header", "additional_headers"));
    }
    for (column, role, role_key) in wanted {
        let Some(row) = rows.iter().find(|r| r.get::<_, String>(0) == *column) else {
            return Err(PreflightError::MissingColumn {
                table: outbox.table.clone(),
                column: column.clone(),
                role,
                role_key,
            });
        };
        // Before PostgreSQL 18, pgoutput never sends generated columns.
        let generated = !row.get::<_, String>(2).is_empty();
        if generated && row.get::<_, i32>(3) < 180_000 {
            return Err(PreflightError::GeneratedColumn {
                table: outbox.table.clone(),
                column: column.clone(),
                role_key,
            });
        }
    }
    let payload_ty = ty(&outbox.payload_column).unwrap_or_default();
    if !matches!(
        payload_ty.as_str(),
        "jsonb" | "json" | "bytea" | "text" | "character varying"
    ) {
        return Err(PreflightError::PayloadType {
            table: outbox.table.clone(),
            column: outbox.payload_column.clone(),
            ty: payload_ty,
        });
    }
    Ok(())
}

/// The polling publisher's columns (`sql/poll.sql`) exist.
pub async fn poll_columns(pg: &Client, table: &TableName) -> Result<(), PreflightError> {
    let found: i64 = pg
        .query_one(
            "SELECT count(*) FROM pg_attribute
             WHERE attrelid = to_regclass(format('%I.%I', $1::text, $2::text))
               AND attname IN ('seq', 'status') AND NOT attisdropped",
            &[&table.schema, &table.name],
        )
        .await?
        .get(0);
    if found < 2 {
        return Err(PreflightError::PollColumns(table.clone()));
    }
    Ok(())
}

/// The publication exists, publishes inserts and includes the table.
pub async fn publication_covers(
    pg: &Client,
    publication: &str,
    table: &TableName,
) -> Result<(), PreflightError> {
    let pubinsert = pg
        .query_opt(
            "SELECT pubinsert FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await?;
    match pubinsert {
        None => {
            return Err(PreflightError::NoPublication(
                publication.to_owned(),
                table.clone(),
            ))
        }
        Some(row) if !row.get::<_, bool>(0) => {
            return Err(PreflightError::NoInserts(publication.to_owned()))
        }
        Some(_) => {}
    }
    let row = pg
        .query_opt(
            "SELECT c.oid, c.relpersistence::text FROM pg_class c
             WHERE c.oid = to_regclass(format('%I.%I', $1::text, $2::text))",
            &[&table.schema, &table.name],
        )
        .await?;
    let Some(row) = row else {
        return Err(PreflightError::NoTable(table.clone()));
    };
    if row.get::<_, String>(1) == "u" {
        return Err(PreflightError::Unlogged(table.clone()));
    }
    // The table, or (publish_via_partition_root off) its partitions.
    if !crate::postgres::catalog::publishes(pg, publication, row.get(0)).await? {
        return Err(PreflightError::TableNotPublished(
            publication.to_owned(),
            table.clone(),
        ));
    }
    Ok(())
}

/// The connecting role has REPLICATION (or is a superuser).
pub async fn replication_role(pg: &Client) -> Result<(), PreflightError> {
    let row = pg
        .query_one(
            "SELECT current_user::text, rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await?;
    if !row.get::<_, bool>(1) {
        return Err(PreflightError::NoReplication(row.get(0)));
    }
    Ok(())
}

/// Room for one more slot (unless ours exists) and one more WAL sender (unless ours runs).
pub async fn headroom(pg: &Client, slot: &str) -> Result<(i64, i64), PreflightError> {
    let r = pg
        .query_one(
            "SELECT current_setting('max_replication_slots')::bigint,
                    (SELECT count(*) FROM pg_replication_slots),
                    EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1),
                    current_setting('max_wal_senders')::bigint,
                    (SELECT count(*) FROM pg_stat_replication),
                    EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 AND active)",
            &[&slot],
        )
        .await?;
    let (max_slots, slots, ours): (i64, i64, bool) = (r.get(0), r.get(1), r.get(2));
    let (max_senders, senders, ours_active): (i64, i64, bool) = (r.get(3), r.get(4), r.get(5));
    if !ours && slots >= max_slots {
        return Err(PreflightError::NoSlotHeadroom { max: max_slots });
    }
    if !ours_active && senders >= max_senders {
        return Err(PreflightError::NoSenderHeadroom { max: max_senders });
    }
    Ok((max_slots - slots, max_senders - senders))
}

/// The slot, if it exists, is a pgoutput slot of this database that is not invalidated.
pub async fn slot_state(pg: &Client, slot: &str) -> Result<Option<SlotInfo>, PreflightError> {
    let slot_row = pg
        .query_opt(
            "SELECT plugin::text, database::text, current_database()::text, \
                    confirmed_flush_lsn::text, active_pid, coalesce(wal_status, '')::text \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await?;
    let Some(row) = slot_row else {
        return Ok(None);
    };
    let plugin: Option<String> = row.get(0);
    let plugin = plugin.unwrap_or_else(|| "(physical slot)".into());
    if plugin != "pgoutput" {
        return Err(PreflightError::WrongPlugin {
            slot: slot.to_owned(),
            plugin,
        });
    }
    let db: Option<String> = row.get(1);
    let ours: String = row.get(2);
    if let Some(other) = db.filter(|d| *d != ours) {
        return Err(PreflightError::OtherDatabase {
            slot: slot.to_owned(),
            other,
            ours,
        });
    }
    if row.get::<_, String>(5) == "lost" {
        return Err(PreflightError::SlotLost(slot.to_owned()));
    }
    let confirmed: Option<String> = row.get(3);
    Ok(Some(SlotInfo {
        confirmed_flush: confirmed.and_then(|s| s.parse().ok()),
        active_pid: row.get(4),
    }))
}
