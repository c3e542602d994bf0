//! The publication guard: while streaming, checks every few seconds that PostgreSQL still
//! sends the outbox's inserts. A table taken out of the publication, dropped, or a publication
//! dropped or recreated makes pgoutput fall silent for it; the guard turns that silence into
//! an error naming the change and the WAL range in which it happened.

use std::time::Duration;

use tokio::sync::mpsc;
use tracing::debug;

use crate::config::Config;
use crate::lsn::Lsn;
use crate::pipeline::StreamError;
use crate::postgres::catalog::{self, Baseline};

/// How often the catalog is compared with the baseline.
pub const INTERVAL: Duration = Duration::from_secs(2);

/// Runs until a drift is found (sent on `found`, then returns) or until aborted. `since` is
/// a WAL position at which the baseline still held. Failed queries are retried: the stream
/// itself reports a lost database loudly.
pub async fn run(cfg: Config, base: Baseline, since: Lsn, found: mpsc::Sender<StreamError>) {
    let mut pg = crate::postgres::connection::LazyClient::new(cfg);
    let mut tick = tokio::time::interval(INTERVAL);
    tick.tick().await;
    let mut good = since;
    loop {
        tick.tick().await;
        match pg.with(async |c| catalog::drift(c, &base).await).await {
            Ok((now, None)) => good = now,
            Ok((now, Some(drift))) => {
                let _ = found
                    .send(StreamError::Drift {
                        drift,
                        since: good,
                        seen: now,
                    })
                    .await;
                return;
            }
            Err(e) => debug!(error = %e, "publication guard query failed"),
        }
    }
}
