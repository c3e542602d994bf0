//! `pgoutbox run`: stream until a signal or a fatal error.
//!
//! SIGTERM/SIGINT stop gracefully (a second one exits at once). SIGHUP reloads: a graceful
//! stop (everything acked is confirmed, so nothing is sent twice), then the configuration is
//! read again and streaming starts over; a configuration that no longer loads is reported
//! and the previous one kept.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use pgoutbox::pipeline::Health;
use pgoutbox::Streamer;

use super::{SettingArgs, Settings};

/// The signals `run` acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signal {
    Stop,
    Reload,
}

pub async fn main(args: SettingArgs, mut settings: Settings) -> anyhow::Result<()> {
    // A configuration that cannot work fails before anything is started.
    settings.config(true)?;
    let health = Arc::new(Health::default());
    if !settings.metrics_addr.is_empty() {
        super::http::serve(
            &settings.metrics_addr,
            health.clone(),
            settings.ready_max_lag_bytes,
        )
        .await?;
    }
    let (signals, mut received) = mpsc::unbounded_channel();
    tokio::spawn(watch_signals(signals));
    loop {
        let cfg = settings.config(true)?;
        // One line with the effective configuration; Config's Debug redacts every secret.
        info!(config = ?cfg, "pgoutbox starting");
        let streamer = Streamer::new(cfg)?.with_health(health.clone());
        let shutdown = CancellationToken::new();
        let run = streamer.run(shutdown.clone());
        tokio::pin!(run);
        let mut asked: Option<Signal> = None;
        let result = loop {
            tokio::select! {
                r = &mut run => break r,
                Some(signal) = received.recv() => {
                    if asked.is_some() {
                        warn!("second signal: exiting without waiting");
                        std::process::exit(130);
                    }
                    match signal {
                        Signal::Stop => info!("signal received: finishing in-flight events (again to exit now)"),
                        Signal::Reload => info!("SIGHUP: finishing in-flight events, then reloading the configuration (a second signal exits at once)"),
                    }
                    asked = Some(signal);
                    shutdown.cancel();
                }
            }
        };
        result?;
        if asked != Some(Signal::Reload) {
            return Ok(());
        }
        match Settings::load(args.clone()).and_then(|s| s.config(true).map(|_| s)) {
            Ok(s) => {
                super::log::hide(s.secrets());
                if s.metrics_addr != settings.metrics_addr {
                    warn!(
                        "metrics_addr changed: the HTTP listener keeps its address until a restart"
                    );
                }
                settings = s;
                info!("configuration reloaded");
            }
            Err(e) => error!(error = %format!("{e:#}"),
                "reloading the configuration failed: keeping the previous one"),
        }
    }
}

/// Forwards SIGTERM and SIGINT (stop) and SIGHUP (reload).
async fn watch_signals(to: mpsc::UnboundedSender<Signal>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        warn!("cannot install signal handlers; stop with SIGKILL");
        return;
    };
    loop {
        let s = tokio::select! {
            _ = term.recv() => Signal::Stop,
            _ = int.recv() => Signal::Stop,
            _ = hup.recv() => Signal::Reload,
        };
        if to.send(s).is_err() {
            return;
        }
    }
}
