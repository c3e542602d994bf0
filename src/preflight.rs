//! Start-up checks on a normal connection: fail fast, in one line, saying what to run.

use tokio_postgres::Client;

use crate::lsn::Lsn;
use crate::outbox::TableName;

/// A setup problem the operator must fix; pgoutbox exits non-zero with this line.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error(
        "wal_level is '{0}' but pgoutbox needs 'logical': run `ALTER SYSTEM SET wal_level = logical;` and restart PostgreSQL"
    )]
    WalLevel(String),
    #[error("table {0} does not exist: run `psql -f sql/setup.sql` (or create it and add it to the publication)")]
    NoTable(TableName),
    #[error(
        "publication {0:?} does not exist: run `psql -f sql/setup.sql` or `CREATE PUBLICATION {0} FOR TABLE {1} WITH (publish = 'insert');`"
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
        "replication slot {0:?} does not exist and slot creation is off: create it with `SELECT pg_create_logical_replication_slot('{0}', 'pgoutput');`"
    )]
    NoSlot(String),
    #[error("checking PostgreSQL setup: {0}")]
    Query(#[from] tokio_postgres::Error),
}

impl PreflightError {
    /// Query errors may be transient (connection lost); the rest need an operator.
    pub fn is_fatal(&self) -> bool {
        !matches!(self, PreflightError::Query(_))
    }
}

/// What the server says about our slot.
#[derive(Debug, Clone)]
pub struct SlotInfo {
    pub confirmed_flush: Option<Lsn>,
    pub active_pid: Option<i32>,
}

/// Verifies wal_level, the table, the publication and the slot (if it exists).
pub async fn check(
    pg: &Client,
    table: &TableName,
    publication: &str,
    slot: &str,
) -> Result<Option<SlotInfo>, PreflightError> {
    let wal_level: String = pg
        .query_one("SELECT current_setting('wal_level')", &[])
        .await?
        .get(0);
    if wal_level != "logical" {
        return Err(PreflightError::WalLevel(wal_level));
    }

    let exists = pg
        .query_one(
            "SELECT to_regclass(format('%I.%I', $1::text, $2::text)) IS NOT NULL",
            &[&table.schema, &table.name],
        )
        .await?
        .get::<_, bool>(0);
    if !exists {
        return Err(PreflightError::NoTable(table.clone()));
    }

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
    let covered = pg
        .query_opt(
            "SELECT 1 FROM pg_publication_tables WHERE pubname = $1 AND schemaname = $2 AND tablename = $3",
            &[&publication, &table.schema, &table.name],
        )
        .await?;
    if covered.is_none() {
        return Err(PreflightError::TableNotPublished(
            publication.to_owned(),
            table.clone(),
        ));
    }

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
