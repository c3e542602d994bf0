//! `pgoutbox setup`: apply `sql/setup.sql` (the source of truth) and create the slot.

use tokio_postgres::Client;

use crate::lsn::Lsn;

/// The DDL of `sql/setup.sql`, compiled in so the binary needs no files.
pub const SETUP_SQL: &str = include_str!("../sql/setup.sql");

/// The columns the polling publisher needs (`sql/poll.sql`), applied after [`SETUP_SQL`].
pub const POLL_SQL: &str = include_str!("../sql/poll.sql");

/// What setup did.
#[derive(Debug, Clone)]
pub struct SetupReport {
    /// `Some(lsn)` when the slot was created now; `None` when it existed.
    pub created_slot_at: Option<Lsn>,
}

/// Applies the DDL (idempotent) and creates the pgoutput slot if it is missing.
pub async fn apply(pg: &Client, slot: &str) -> Result<SetupReport, tokio_postgres::Error> {
    pg.batch_execute(SETUP_SQL).await?;
    let created = pg
        .query_opt(
            "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')
             WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
            &[&slot],
        )
        .await?;
    Ok(SetupReport {
        created_slot_at: created.and_then(|r| r.get::<_, String>(0).parse().ok()),
    })
}
