//! `pgoutbox setup`: apply `sql/setup.sql` (the source of truth) and create the slot.

use tokio_postgres::Client;

use crate::lsn::Lsn;

/// The DDL of `sql/setup.sql`, compiled in so the binary needs no files.
pub const SETUP_SQL: &str = include_str!("../../sql/setup.sql");

/// The columns the polling publisher needs (`sql/poll.sql`), applied after [`SETUP_SQL`].
pub const POLL_SQL: &str = include_str!("../../sql/poll.sql");

/// What setup did.
#[derive(Debug, Clone)]
pub struct SetupReport {
    /// `Some(lsn)` when the slot was created now; `None` when it existed.
    pub created_slot_at: Option<Lsn>,
}

/// Applies the DDL (idempotent) and creates the pgoutput slot if it is missing.
/// With `failover` on PostgreSQL 17+, the slot is a failover slot.
pub async fn apply(
    pg: &Client,
    slot: &str,
    failover: bool,
) -> Result<SetupReport, tokio_postgres::Error> {
    pg.batch_execute(SETUP_SQL).await?;
    let version: i32 = pg
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await?
        .get(0);
    let create = if failover && version as u32 >= crate::replication::FAILOVER_SINCE {
        "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput', false, false, true)
         WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)"
    } else {
        "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')
         WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)"
    };
    let created = pg.query_opt(create, &[&slot]).await?;
    if let Some(lsn) = created
        .as_ref()
        .and_then(|r| r.get::<_, String>(0).parse().ok())
    {
        crate::postgres::state::write(pg, slot, lsn).await?;
    }
    Ok(SetupReport {
        created_slot_at: created.and_then(|r| r.get::<_, String>(0).parse().ok()),
    })
}
