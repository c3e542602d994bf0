//! `pgoutbox run`: build the configuration, stream until a signal or a fatal error.

use std::time::Duration;

use anyhow::bail;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use pgoutbox::config::{redact_url, Config};
use pgoutbox::outbox::{OutboxConfig, TableName};
use pgoutbox::sink::kafka::KafkaConfig;
use pgoutbox::Streamer;

use super::RunArgs;

/// Turns flags/env into a [`Config`].
pub fn config(args: RunArgs) -> anyhow::Result<Config> {
    let Some(url) = args.postgres_url else {
        bail!("no PostgreSQL URL: set PGOUTBOX_POSTGRES_URL or --postgres-url");
    };
    let Some(brokers) = args.kafka_brokers else {
        bail!("no Kafka brokers: set PGOUTBOX_KAFKA_BROKERS or --kafka-brokers");
    };
    let mut cfg = Config::new(url, brokers);
    cfg.slot = args.slot;
    cfg.publication = args.publication;
    cfg.outbox = OutboxConfig {
        table: TableName::parse(&args.table).map_err(anyhow::Error::msg)?,
        id_column: args.id_column,
        route_column: args.route_column,
        key_column: args.key_column,
        type_column: args.type_column,
        payload_column: args.payload_column,
        topic_template: args.topic_template.parse()?,
    };
    cfg.kafka.properties = args
        .kafka_properties
        .iter()
        .filter(|p| !p.trim().is_empty())
        .map(|p| KafkaConfig::parse_property(p))
        .collect::<Result<_, _>>()?;
    cfg.kafka.producer_config()?;
    cfg.status_interval = Duration::from_millis(args.status_interval_ms);
    cfg.max_in_flight_events = args.max_in_flight_events;
    cfg.max_in_flight_bytes = args.max_in_flight_bytes;
    cfg.shutdown_timeout = Duration::from_secs(args.shutdown_timeout_secs);
    cfg.create_slot = !args.no_create_slot;
    cfg.validate()?;
    Ok(cfg)
}

pub async fn main(args: RunArgs) -> anyhow::Result<()> {
    let cfg = config(args)?;
    info!(postgres = %redact_url(&cfg.postgres_url), kafka = %cfg.kafka.brokers,
        slot = %cfg.slot, publication = %cfg.publication, table = %cfg.outbox.table,
        topic_template = %cfg.outbox.topic_template.as_str(), "pgoutbox starting");
    let streamer = Streamer::new(cfg)?;
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
