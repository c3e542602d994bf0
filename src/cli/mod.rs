//! Command-line interface: subcommands, and settings layered flag > env > file > default.

mod demo;
mod run;
mod settings;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

pub use settings::{LogFormat, SettingArgs, Settings};

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
    settings: Box<SettingArgs>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Stream outbox inserts to Kafka (the default).
    Run(Box<SettingArgs>),
    /// Run the whole flow on a throwaway PostgreSQL and an in-process Kafka broker.
    Demo(demo::DemoArgs),
}

/// Runs the chosen subcommand.
pub async fn main(cli: Cli) -> anyhow::Result<()> {
    let args = match cli.command {
        Some(Command::Demo(args)) => {
            init_logging("warn", LogFormat::Text);
            return demo::main(args).await;
        }
        Some(Command::Run(args)) => args,
        None => cli.settings,
    };
    let settings = Settings::load(*args)?;
    init_logging("info", settings.log_format);
    run::main(settings).await
}

/// Logs to stderr; `RUST_LOG` overrides the default level.
fn init_logging(default: &str, format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
