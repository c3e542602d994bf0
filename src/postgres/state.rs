//! The state record: which slots pgoutbox streamed from and how far it had confirmed, in
//! `public.pgoutbox_state` (`sql/setup.sql`). It lives in the database, so physical
//! replication carries it to standbys and backups: after a failover to a standby without the
//! slot, a restored backup or a dropped slot, a missing slot with a record is a gap in the
//! stream, not a first start, and pgoutbox refuses to paper over it with a new slot.

use tokio_postgres::Client;

use crate::lsn::Lsn;

/// What the record says of a slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub confirmed: Lsn,
    /// When it was last written (server time, text).
    pub updated_at: String,
}

/// Whether the state table exists here and this role may read and write it (an older setup
/// may lack it, another role may lack the grant).
pub async fn available(pg: &Client) -> Result<bool, tokio_postgres::Error> {
    Ok(pg
        .query_one(
            "SELECT to_regclass('public.pgoutbox_state') IS NOT NULL
                    AND has_table_privilege('public.pgoutbox_state', 'SELECT, INSERT, UPDATE')",
            &[],
        )
        .await?
        .get(0))
}

/// The record of `slot`, if the table exists and has one.
pub async fn read(pg: &Client, slot: &str) -> Result<Option<Record>, tokio_postgres::Error> {
    if !available(pg).await? {
        return Ok(None);
    }
    let row = pg
        .query_opt(
            "SELECT confirmed_lsn::text, updated_at::text FROM public.pgoutbox_state WHERE slot = $1",
            &[&slot],
        )
        .await?;
    Ok(row.map(|r| Record {
        confirmed: r.get::<_, String>(0).parse().unwrap_or(Lsn::ZERO),
        updated_at: r.get(1),
    }))
}

/// Records that `slot` exists and is confirmed up to `confirmed` (never moving it back).
pub async fn write(pg: &Client, slot: &str, confirmed: Lsn) -> Result<(), tokio_postgres::Error> {
    pg.execute(
        "INSERT INTO public.pgoutbox_state (slot, confirmed_lsn) VALUES ($1, $2::text::pg_lsn)
         ON CONFLICT (slot) DO UPDATE SET confirmed_lsn = EXCLUDED.confirmed_lsn, updated_at = now()
         WHERE pgoutbox_state.confirmed_lsn < EXCLUDED.confirmed_lsn",
        &[&slot, &confirmed.to_string()],
    )
    .await
    .map(|_| ())
}

/// Forgets `slot` (a deliberate new start); whether there was a record.
pub async fn forget(pg: &Client, slot: &str) -> Result<bool, tokio_postgres::Error> {
    if !available(pg).await? {
        return Ok(false);
    }
    pg.execute(
        "DELETE FROM public.pgoutbox_state WHERE slot = $1",
        &[&slot],
    )
    .await
    .map(|n| n > 0)
}

/// The relation name of the state table, whose changes a publication of all tables would send.
pub const TABLE: (&str, &str) = ("public", "pgoutbox_state");
