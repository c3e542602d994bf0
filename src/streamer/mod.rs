//! The streamer: runs a source into the configured destination until shutdown or a fatal
//! error, reconnecting with backoff; with `ha`, only while holding the HA lock.

mod backoff;
mod ha;
mod monitor;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

pub use backoff::Backoff;
pub use ha::lock_holder;

use crate::config::{Config, ConfigError, Source};
use crate::pipeline::{AckedEvent, Health, Progress, StreamError};
use tokio_util::task::AbortOnDropHandle;

/// Runs the pipeline until shutdown or a fatal error.
pub struct Streamer {
    cfg: Config,
    observer: Option<mpsc::UnboundedSender<AckedEvent>>,
    health: Arc<Health>,
}

impl Streamer {
    pub fn new(cfg: Config) -> Result<Self, ConfigError> {
        cfg.validate()?;
        Ok(Streamer {
            cfg,
            observer: None,
            health: Arc::default(),
        })
    }

    /// Reports into `health` (kept across a reload) instead of a health of its own.
    pub fn with_health(mut self, health: Arc<Health>) -> Self {
        self.health = health;
        self
    }

    /// Streaming state and slot lag, for health endpoints.
    pub fn health(&self) -> Arc<Health> {
        self.health.clone()
    }

    /// Reports every acked event to `tx`.
    pub fn with_observer(mut self, tx: mpsc::UnboundedSender<AckedEvent>) -> Self {
        self.observer = Some(tx);
        self
    }

    /// Streams until `shutdown` is cancelled (Ok) or a fatal error (Err). Transient errors
    /// reconnect with capped exponential backoff and resume from the slot's confirmed LSN.
    /// With `ha`, streams only while holding the HA lock, and waits as a standby otherwise.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<(), StreamError> {
        if !self.cfg.ha {
            return self.stream(shutdown).await;
        }
        loop {
            let Some(mut leadership) = ha::acquire(&self.cfg, &shutdown, &self.health).await?
            else {
                return Ok(());
            };
            info!(slot = %self.cfg.slot, "leader: holding the HA lock, streaming");
            // Losing the lock ends this term gracefully; shutdown ends it for good.
            let term = shutdown.child_token();
            let stream = self.stream(term.clone());
            tokio::pin!(stream);
            let result = tokio::select! {
                r = &mut stream => r,
                _ = leadership.lost(&self.health, self.cfg.ha_lease) => {
                    warn!("lost the HA lock session: stepping down");
                    term.cancel();
                    stream.await
                }
            };
            drop(leadership);
            result?;
            if shutdown.is_cancelled() {
                return Ok(());
            }
        }
    }

    /// Streams with reconnects until `shutdown` or a fatal error.
    ///
    /// Reconnects back off exponentially (0.5 s doubling to 30 s); a destination's short pause
    /// is retried sooner ([`backoff::reconnect_wait`]).
    async fn stream(&self, shutdown: CancellationToken) -> Result<(), StreamError> {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        // When the current run of failed sessions began (reset by progress).
        let mut failing_since: Option<Instant> = None;
        let mut slot_known = false;
        // The slot's position after the last session: a session that moved it made progress.
        let mut last_confirmed = crate::lsn::Lsn::ZERO;
        let polling = self.cfg.source == Source::Poll;
        // Polls the slot's retained WAL and lag for metrics and readiness; stops with us.
        let _stop_monitor = (!polling).then(|| {
            AbortOnDropHandle::new(tokio::spawn(monitor::run(
                self.cfg.clone(),
                self.health.clone(),
            )))
        });
        loop {
            let mut progress = Progress::default();
            let result = if polling {
                progress.streaming_since = Some(Instant::now());
                self.health.set_streaming(true);
                let r = crate::sources::poll::run(&self.cfg, &shutdown, &self.health).await;
                self.health.set_streaming(false);
                r
            } else {
                crate::sources::replication::run(
                    &self.cfg,
                    &mut slot_known,
                    &shutdown,
                    self.observer.as_ref(),
                    &mut progress,
                    &self.health,
                )
                .await
            };
            match result {
                Ok(()) => return Ok(()),
                Err(e) if e.is_fatal() => {
                    self.health.set_last_error(e.to_string());
                    error!(error = %e, "stopping: this needs an operator");
                    return Err(e);
                }
                Err(e) => {
                    self.health.set_last_error(e.to_string());
                    // Failing to stream is no progress (HA: past the lease, a standby takes
                    // over); a session that streams says so at its status ticks.
                    self.health.note_progress(false);
                    // A session that streamed a while, or that confirmed events (a broker that
                    // keeps refusing some, a full stream draining), was no failure to back off
                    // from: the next one starts at the shortest wait.
                    let moved = progress.confirmed > last_confirmed;
                    last_confirmed = last_confirmed.max(progress.confirmed);
                    if moved
                        || progress
                            .streaming_since
                            .is_some_and(|t| t.elapsed() > Duration::from_secs(30))
                    {
                        backoff.reset();
                        failing_since = None;
                    }
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    let pausing_for = e.is_destination_pause().then(|| since.elapsed());
                    let wait = backoff::reconnect_wait(backoff.next_delay(), pausing_for);
                    if progress.streaming_since.is_some() {
                        warn!(error = %e, retry_in = ?wait, confirmed = %progress.confirmed,
                            "stream stopped; reconnecting and resuming from the slot");
                    } else {
                        warn!(error = %e, retry_in = ?wait, "cannot stream yet; retrying");
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(wait) => {}
                    }
                    info!("reconnecting");
                    metrics::counter!(crate::metrics::RECONNECTS).increment(1);
                }
            }
        }
    }
}
