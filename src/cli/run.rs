//! `pgoutbox run`: stream until a signal or a fatal error.

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use pgoutbox::Streamer;

use super::Settings;

pub async fn main(settings: Settings) -> anyhow::Result<()> {
    let cfg = settings.config(true)?;
    // One line with the effective configuration; Config's Debug redacts every secret.
    info!(config = ?cfg, "pgoutbox starting");
    let streamer = Streamer::new(cfg)?;
    if !settings.metrics_addr.is_empty() {
        super::http::serve(
            &settings.metrics_addr,
            streamer.health(),
            settings.ready_max_lag_bytes,
        )
        .await?;
    }
    let shutdown = CancellationToken::new();
    tokio::spawn(watch_signals(shutdown.clone()));
    streamer.run(shutdown).await?;
    Ok(())
}

/// First SIGTERM/SIGINT: graceful stop. Second: exit at once.
async fn watch_signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        warn!("cannot install signal handlers; stop with SIGKILL");
        return;
    };
    for n in 0.. {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        if n == 0 {
            info!("signal received: finishing in-flight events (again to exit now)");
            shutdown.cancel();
        } else {
            warn!("second signal: exiting without waiting");
            std::process::exit(130);
        }
    }
}
