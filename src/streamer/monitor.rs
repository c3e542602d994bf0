//! Polls the slot every few seconds: retained WAL and lag, for metrics and `/readyz`.

use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, warn};

use super::Health;
use crate::config::Config;
use crate::metrics as m;
use crate::postgres::status::{slot_status, wal_keep_limit};

/// How often the slot is polled.
pub const POLL_INTERVAL: Duration = Duration::from_secs(5);

/// Runs until aborted. Failures are logged at debug level and retried: the stream itself
/// reports connection problems loudly.
pub async fn run(cfg: Config, health: Arc<Health>) {
    let retained = metrics::gauge!(m::SLOT_RETAINED_WAL);
    let lag = metrics::gauge!(m::SLOT_LAG);
    let keep_limit = metrics::gauge!(m::SLOT_WAL_KEEP_LIMIT);
    let invalidated = metrics::gauge!(m::SLOT_INVALIDATED);
    let slot = cfg.slot.clone();
    let mut pg = crate::postgres::connection::LazyClient::new(cfg);
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    let mut warned = false;
    loop {
        tick.tick().await;
        match pg.with(async |c| slot_status(c, &slot).await).await {
            Ok(s) => {
                // The state record follows the slot (sql/setup.sql's table, where it exists)
                // while this process streams it: so `slot forget`, which refuses an active
                // slot, is not undone behind its back.
                if let Some(lsn) = s
                    .confirmed_flush_lsn
                    .as_deref()
                    .and_then(|l| l.parse().ok())
                    .filter(|_| health.streaming())
                {
                    let written = pg
                        .with(
                            async |c| match crate::postgres::state::available(c).await? {
                                true => crate::postgres::state::write(c, &slot, lsn)
                                    .await
                                    .map(|()| true),
                                false => Ok(false),
                            },
                        )
                        .await;
                    match written {
                        Ok(true) => {}
                        Ok(false) if !warned => {
                            warned = true;
                            warn!(slot = %slot, "no usable table public.pgoutbox_state (sql/setup.sql creates it and grants it to role pgoutbox): if the slot is lost in a failover, pgoutbox cannot tell that from a first start");
                        }
                        Err(e) if !warned => {
                            warned = true;
                            warn!(slot = %slot, error = %e, "cannot write the slot's state record (public.pgoutbox_state)");
                        }
                        _ => {}
                    }
                }
                if let Some(r) = s.retained_wal_bytes {
                    retained.set(r as f64);
                }
                invalidated.set(if s.invalidated() { 1.0 } else { 0.0 });
                if let Ok(limit) = pg.with(async |c| wal_keep_limit(c).await).await {
                    keep_limit.set(limit as f64);
                }
                if let Some(l) = s.lag_bytes {
                    lag.set(l as f64);
                    health.set_lag_bytes(l);
                }
            }
            Err(e) => debug!(error = %e, "slot monitor query failed"),
        }
    }
}
