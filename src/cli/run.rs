//! `pgoutbox run`: stream until a signal or a fatal error.
//!
//! SIGTERM/SIGINT stop gracefully (a second one exits at once). SIGHUP reloads: the
//! configuration is read again and, if it loads and keeps the slot's position meaningful
//! (`config::reload`: same server, database, slot, publication and source), a graceful stop (everything acked is confirmed, so nothing is sent
//! twice) and a start with it. Otherwise the refusal is logged and streaming goes on untouched.

use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use pgoutbox::pipeline::Health;
use pgoutbox::Streamer;

use super::status_page::Shown;
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
    let shown = Arc::new(Mutex::new(Shown::default()));
    if !settings.metrics_addr.is_empty() {
        super::http::serve(
            &settings.metrics_addr,
            health.clone(),
            settings.ready_max_lag_bytes,
            shown.clone(),
        )
        .await?;
    }
    let (signals, mut received) = mpsc::unbounded_channel();
    tokio::spawn(watch_signals(signals));
    loop {
        let cfg = settings.config(true)?;
        // One line with the effective configuration; Config's Debug redacts every secret.
        info!(config = ?cfg, "pgoutbox starting");
        if let Ok(mut s) = shown.lock() {
            s.slot = cfg.slot.clone();
            s.settings = settings.to_toml().unwrap_or_else(|e| e.to_string());
        }
        let streamer = Streamer::new(cfg.clone())?.with_health(health.clone());
        let shutdown = CancellationToken::new();
        let run = streamer.run(shutdown.clone());
        tokio::pin!(run);
        let mut asked: Option<Signal> = None;
        let mut next: Option<Settings> = None;
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
                        Signal::Reload => match reloaded(&args, &cfg) {
                            Ok(s) => {
                                next = Some(s);
                                info!("SIGHUP: finishing in-flight events, then streaming with the reloaded configuration (a second signal exits at once)");
                            }
                            Err(e) => {
                                error!("{e}");
                                continue;
                            }
                        },
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
        if let Some(s) = next {
            super::log::hide(s.secrets());
            if s.metrics_addr != settings.metrics_addr {
                warn!("metrics_addr changed: the HTTP listener keeps its address until a restart");
            }
            settings = s;
            info!("configuration reloaded");
        }
    }
}

/// The settings a SIGHUP asks for, if they load and may replace `running` without a gap;
/// otherwise why not (the running configuration then stays, and keeps streaming).
fn reloaded(args: &SettingArgs, running: &pgoutbox::Config) -> anyhow::Result<Settings> {
    let s = Settings::load(args.clone())
        .and_then(|s| s.config(true).map(|c| (s, c)))
        .map_err(|e| {
            anyhow::anyhow!(
                "SIGHUP: the configuration does not load, still streaming with the running one: {e:#}"
            )
        })?;
    if let Some(why) = pgoutbox::config::reload::refusal(running, &s.1) {
        anyhow::bail!("{why}");
    }
    Ok(s.0)
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
