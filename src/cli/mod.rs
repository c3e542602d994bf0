//! Command-line interface: flags (each also an environment variable) and subcommands.

mod demo;
mod run;

use clap::{Args, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use pgoutbox::config::{DEFAULT_PUBLICATION, DEFAULT_SLOT};
use pgoutbox::outbox::TopicTemplate;

/// Streams the transactional outbox from PostgreSQL to Kafka.
#[derive(Debug, Parser)]
#[command(
    name = "pgoutbox",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// With no subcommand, `run` is assumed.
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Stream outbox inserts to Kafka (the default).
    Run(Box<RunArgs>),
    /// Run the whole flow on a throwaway PostgreSQL and an in-process Kafka broker.
    Demo(demo::DemoArgs),
}

/// Settings of `pgoutbox run`; every flag can also be given as its environment variable.
#[derive(Debug, Args, Default)]
pub struct RunArgs {
    /// PostgreSQL URL, e.g. postgres://pgoutbox:secret@db:5432/app
    #[arg(long, env = "PGOUTBOX_POSTGRES_URL", hide_env_values = true)]
    postgres_url: Option<String>,
    /// Kafka bootstrap servers, e.g. kafka-1:9092,kafka-2:9092
    #[arg(long, env = "PGOUTBOX_KAFKA_BROKERS")]
    kafka_brokers: Option<String>,
    /// Logical replication slot (created on first start if missing).
    #[arg(long, env = "PGOUTBOX_SLOT", default_value = DEFAULT_SLOT)]
    slot: String,
    /// Publication that covers the outbox table.
    #[arg(long, env = "PGOUTBOX_PUBLICATION", default_value = DEFAULT_PUBLICATION)]
    publication: String,
    /// The outbox table, schema-qualified.
    #[arg(long, env = "PGOUTBOX_TABLE", default_value = "public.outbox")]
    table: String,
    /// Topic for each event; ${routedByValue} is the route column's value. No placeholder = one fixed topic.
    #[arg(long, env = "PGOUTBOX_TOPIC_TEMPLATE", default_value = TopicTemplate::DEFAULT)]
    topic_template: String,
    /// Column whose value becomes the `id` header (consumers dedupe on it).
    #[arg(long, env = "PGOUTBOX_ID_COLUMN", default_value = "id")]
    id_column: String,
    /// Column that routes to a topic through the template.
    #[arg(long, env = "PGOUTBOX_ROUTE_COLUMN", default_value = "aggregatetype")]
    route_column: String,
    /// Column that becomes the record key (hence partition and per-key order).
    #[arg(long, env = "PGOUTBOX_KEY_COLUMN", default_value = "aggregateid")]
    key_column: String,
    /// Column that becomes the `type` header.
    #[arg(long, env = "PGOUTBOX_TYPE_COLUMN", default_value = "type")]
    type_column: String,
    /// Column that becomes the record value, bytes as stored.
    #[arg(long, env = "PGOUTBOX_PAYLOAD_COLUMN", default_value = "payload")]
    payload_column: String,
    /// Any librdkafka producer property, key=value; repeatable (env: separated by ';').
    #[arg(
        short = 'X',
        long = "kafka-property",
        env = "PGOUTBOX_KAFKA_PROPERTIES",
        value_delimiter = ';',
        value_name = "KEY=VALUE"
    )]
    kafka_properties: Vec<String>,
    /// Milliseconds between standby status updates to PostgreSQL.
    #[arg(long, env = "PGOUTBOX_STATUS_INTERVAL_MS", default_value_t = 1000)]
    status_interval_ms: u64,
    /// Pause reading WAL while this many events await Kafka acks.
    #[arg(long, env = "PGOUTBOX_MAX_IN_FLIGHT_EVENTS", default_value_t = 10_000)]
    max_in_flight_events: usize,
    /// Pause reading WAL while in-flight events hold this many bytes.
    #[arg(long, env = "PGOUTBOX_MAX_IN_FLIGHT_BYTES", default_value_t = 32 << 20)]
    max_in_flight_bytes: usize,
    /// Seconds to wait for in-flight acks on SIGTERM/SIGINT before the final status update.
    #[arg(long, env = "PGOUTBOX_SHUTDOWN_TIMEOUT_SECS", default_value_t = 10)]
    shutdown_timeout_secs: u64,
    /// Fail instead of creating the slot when it does not exist.
    #[arg(long, env = "PGOUTBOX_NO_CREATE_SLOT")]
    no_create_slot: bool,
}

/// Runs the chosen subcommand.
pub async fn main(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Some(Command::Demo(args)) => {
            init_logging("warn");
            demo::main(args).await
        }
        Some(Command::Run(args)) => {
            init_logging("info");
            run::main(*args).await
        }
        None => {
            init_logging("info");
            run::main(cli.run).await
        }
    }
}

/// Logs to stderr; `RUST_LOG` overrides the default level.
fn init_logging(default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
