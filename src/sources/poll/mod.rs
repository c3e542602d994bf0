//! The polling publisher (`source = poll`): the classic outbox relay, for databases where
//! logical replication is not allowed. Every `poll_interval`, in one transaction:
//! `SELECT … WHERE status = 0 ORDER BY seq LIMIT n FOR UPDATE SKIP LOCKED`, deliver the rows,
//! then mark them done (`status = 1`) or delete them, and commit. Rows locked by another
//! instance are skipped, so several instances never send a row at once.
//!
//! Only what is specific to polling lives here: the SQL ([`table`]) and the rows seen as a
//! stream of transactions ([`wal`]). Delivery is the pipeline's session, as for the
//! replication stream: at-least-once marks a poll's rows once every record is acked (a crash
//! before leaves them pending, to be sent again); at-most-once marks them when the poll is
//! read and sends after the commit; refusals go to `on_poison`. Rows map to records exactly as
//! pgoutput inserts do.

mod table;
#[cfg(test)]
mod tests;
mod wal;

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::info;

pub use crate::config::poll::{Cleanup, PollConfig};
pub use table::{PgTable, Row, Table};
pub use wal::PollWal;

use crate::config::Config;
use crate::destination::Destination;
use crate::lsn::Lsn;
use crate::outbox::OutboxMapper;
use crate::pgoutput::{Column, Relation};
use crate::pipeline::session::{Session, Ticket, Wal};
use crate::pipeline::{Health, Progress, StreamError};

/// The relation id the poller gives its table (any constant: it maps one table, by name).
const RELATION: u32 = 1;

/// Polls until `shutdown`; returns on the first error (the caller retries with backoff).
pub async fn run(
    cfg: &Config,
    shutdown: &CancellationToken,
    health: &Health,
) -> Result<(), StreamError> {
    crate::destination::with_destination!(cfg.destination, Ticket, D => run_to::<D>(cfg, shutdown, health).await)
}

async fn run_to<D: Destination<Ticket>>(
    cfg: &Config,
    shutdown: &CancellationToken,
    health: &Health,
) -> Result<(), StreamError> {
    let (client, conn) = crate::postgres::connection::connect(cfg).await?;
    let _conn = tokio_util::task::AbortOnDropHandle::new(conn);
    let table = &cfg.outbox.table;
    let (relation, seq) = describe(&client, cfg).await?;
    // A table that does not fit the configuration stops here, not at its first row.
    OutboxMapper::new(vec![cfg.outbox.clone()]).on_relation(&relation)?;
    let (ack_tx, mut acks) = mpsc::unbounded_channel();
    let dest = D::open(cfg, ack_tx).await?;
    info!(table = %table, interval = ?cfg.poll.interval, batch = cfg.poll.batch,
        cleanup = ?cfg.poll.cleanup, delivery = %cfg.delivery(), destination = D::NAME, "polling");
    let keepalive = (cfg.replication_timeout / 4).min(Duration::from_secs(1));
    let mut wal = PollWal::new(
        PgTable::new(client, table, &cfg.poll),
        relation,
        seq,
        cfg.poll.batch,
        cfg.poll.interval,
        keepalive,
    );
    // No publication to watch: the guard's sender lives as long as the session, silent.
    let (_guard_tx, guard) = mpsc::channel(1);
    let mut session = Session::new(cfg, Lsn::ZERO, D::NAME, None, None, guard).with_health(health);
    health.set_blocked(D::NAME, None);
    let result = session
        .event_loop(
            &mut wal,
            &dest,
            &mut acks,
            shutdown,
            &mut Progress::default(),
        )
        .await;
    if result.is_err() {
        session.settle(&dest, &mut acks, shutdown).await;
        dest.purge();
        // Rows whose every record was acked are marked, so they are not sent again.
        session.report(&mut wal).await;
        let _ = wal.close().await;
    }
    dest.close().await;
    result
}

/// The table's columns as a Relation message would give them, and the index of `seq`.
async fn describe(
    client: &tokio_postgres::Client,
    cfg: &Config,
) -> Result<(Relation, usize), StreamError> {
    let table = &cfg.outbox.table;
    let quoted = table::quoted(table);
    let probe = client
        .prepare(&format!("SELECT * FROM {quoted} LIMIT 0"))
        .await?;
    let columns: Vec<Column> = probe
        .columns()
        .iter()
        .map(|c| Column {
            flags: 0,
            name: c.name().to_owned(),
            type_oid: c.type_().oid(),
            type_modifier: -1,
        })
        .collect();
    let seq = columns.iter().position(|c| c.name == "seq");
    let status = columns.iter().any(|c| c.name == "status");
    let (Some(seq), true) = (seq, status) else {
        return Err(StreamError::PollSchema(quoted));
    };
    let relation = Relation {
        id: RELATION,
        namespace: table.schema.clone(),
        name: table.name.clone(),
        replica_identity: b'd',
        columns,
    };
    Ok((relation, seq))
}
