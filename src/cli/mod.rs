//! Command-line interface: subcommands, and settings layered flag > env > file > default.

mod admin;
#[cfg(feature = "demo")]
mod demo;
mod http;
mod log;
mod reference;
mod run;
mod settings;
mod status_page;
mod tables;

use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::{CommandFactory, Parser, Subcommand};

pub use log::clean;
pub use settings::{LogFormat, SettingArgs, Settings};

/// Streams the transactional outbox from PostgreSQL to Kafka or NATS JetStream.
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
    /// Stream outbox inserts to the destination (the default).
    Run(Box<SettingArgs>),
    /// Create the outbox table, publication, role (sql/setup.sql) and the slot; idempotent.
    Setup(SetupArgs),
    /// Check PostgreSQL and the destination: one line per check, non-zero exit on any failure.
    Check(Box<SettingArgs>),
    /// Show the slot: active pid, confirmed and restart LSN, retained WAL, lag.
    Status(StatusArgs),
    /// Operate on the replication slot (`slot skip --to LSN|now`, `slot forget`).
    Slot(SlotArgs),
    /// Print the effective configuration (secrets redacted) without connecting anywhere;
    /// `--reference`: every setting as Markdown (docs/configuration.md).
    Config(ConfigArgs),
    /// Run the whole flow on a throwaway PostgreSQL and an in-process Kafka broker (or NATS).
    #[cfg(feature = "demo")]
    Demo(demo::DemoArgs),
}

#[derive(Debug, clap::Args)]
struct SetupArgs {
    /// Also create the NATS JetStream stream (nats_stream) for the subjects pgoutbox
    /// publishes to, with the duplicate window nats_duplicate_window_secs.
    #[arg(long)]
    create_nats_stream: bool,
    /// Also declare the RabbitMQ exchange (rabbitmq_exchange): durable, of type topic.
    #[arg(long)]
    create_rabbitmq_exchange: bool,
    /// Also create the Kafka topics: offsets (compacted), dead letters, and the topics of the
    /// route values in the outbox table now; topics that exist are left alone.
    #[arg(long)]
    create_kafka_topics: bool,
    #[command(flatten)]
    settings: Box<SettingArgs>,
}

#[derive(Debug, clap::Args)]
struct SlotArgs {
    #[command(subcommand)]
    command: SlotCommand,
}

#[derive(Debug, Subcommand)]
enum SlotCommand {
    /// Move the slot's confirmed position forward, past WAL that cannot or must not be
    /// delivered (a poison event under on_poison = fail, a publication gap). Events committed
    /// in the skipped range are not delivered; the range is printed. pgoutbox must be stopped.
    Skip {
        /// The WAL position to move to (e.g. 0/1A2B3C4D), or `now` for the current one.
        #[arg(long, value_name = "LSN|now")]
        to: String,
        #[command(flatten)]
        settings: Box<SettingArgs>,
    },
    /// Forget that pgoutbox streamed from the slot (its record in public.pgoutbox_state), so
    /// that a missing slot may be created afresh: after a failover or restore, once what was
    /// committed since the last confirmed position has been re-sent or written off.
    Forget {
        #[command(flatten)]
        settings: Box<SettingArgs>,
    },
}

#[derive(Debug, clap::Args)]
struct ConfigArgs {
    /// Print the reference of every setting (Markdown) instead.
    #[arg(long)]
    reference: bool,
    #[command(flatten)]
    settings: Box<SettingArgs>,
}

#[derive(Debug, clap::Args)]
struct StatusArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    settings: Box<SettingArgs>,
}

/// Parses the command line. Settings given before the subcommand (`--config f run`) are
/// taken as the subcommand's. A mistake is one line, `pgoutbox: error: …`, naming the
/// environment variable when the bad value came from one; exit code 2.
pub fn parse(argv: Vec<std::ffi::OsString>) -> Result<Cli, ExitCode> {
    let first = match Cli::try_parse_from(&argv) {
        Ok(cli) => return Ok(cli),
        Err(e) => e,
    };
    if !matches!(
        first.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
    ) {
        let names: Vec<String> = Cli::command()
            .get_subcommands()
            .map(|c| c.get_name().to_owned())
            .collect();
        for (i, a) in argv.iter().enumerate().skip(2) {
            if names.iter().any(|n| a.to_str() == Some(n)) {
                let mut moved = argv.clone();
                let sub = moved.remove(i);
                moved.insert(1, sub);
                match Cli::try_parse_from(&moved) {
                    Ok(cli) => return Ok(cli),
                    // `pgoutbox --config f run --help`: the subcommand's help.
                    Err(e)
                        if matches!(
                            e.kind(),
                            ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
                        ) =>
                    {
                        return Err(usage_error(e, &moved))
                    }
                    Err(_) => {}
                }
            }
        }
    }
    Err(usage_error(first, &argv))
}

/// Prints a parse error (help and version as they are) and gives the exit code.
fn usage_error(e: clap::Error, argv: &[std::ffi::OsString]) -> ExitCode {
    use clap::error::ContextKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        let _ = e.print();
        return ExitCode::SUCCESS;
    }
    let rendered = e.to_string();
    let mut line = rendered
        .lines()
        .next()
        .unwrap_or_default()
        .trim_start_matches("error: ")
        .to_owned();
    // "invalid value 'x' for '--flag <FLAG>'": if the flag was not given, its variable was.
    if let Some(clap::error::ContextValue::String(arg)) = e.get(ContextKind::InvalidArg) {
        let flag = arg.split_whitespace().next().unwrap_or_default();
        let given = argv.iter().filter_map(|a| a.to_str()).any(|a| {
            a == flag
                || a.strip_prefix(flag)
                    .is_some_and(|rest| rest.starts_with('='))
        });
        if let (false, Some(name)) = (given, flag.strip_prefix("--")) {
            let var = match name {
                "kafka-property" => "PGOUTBOX_KAFKA_PROPERTIES".to_owned(),
                n => format!("PGOUTBOX_{}", n.replace('-', "_").to_uppercase()),
            };
            if std::env::var_os(&var).is_some() {
                line = line.replace(&format!("'{arg}'"), &var);
            }
        }
    }
    eprintln!("pgoutbox: error: {line}");
    ExitCode::from(2)
}

/// Runs the chosen subcommand.
pub async fn main(cli: Cli) -> anyhow::Result<()> {
    let admin = |args: Box<SettingArgs>| -> anyhow::Result<pgoutbox::Config> {
        let settings = Settings::load(*args)?;
        init_logging("warn", Some(&settings), settings.log_format);
        settings.config(false)
    };
    match cli.command {
        #[cfg(feature = "demo")]
        Some(Command::Demo(args)) => {
            init_logging("warn", None, LogFormat::Text);
            demo::main(args).await
        }
        Some(Command::Setup(a)) => {
            admin::setup(
                admin(a.settings)?,
                a.create_nats_stream,
                a.create_rabbitmq_exchange,
                a.create_kafka_topics,
            )
            .await
        }
        Some(Command::Check(args)) => admin::check(admin(args)?).await,
        Some(Command::Status(a)) => {
            let settings = Settings::load(*a.settings)?;
            init_logging("warn", Some(&settings), settings.log_format);
            let addr = settings.metrics_addr.clone();
            admin::status(settings.config(false)?, &addr, a.json).await
        }
        Some(Command::Slot(SlotArgs {
            command: SlotCommand::Skip { to, settings },
        })) => admin::slot_skip(admin(settings)?, &to).await,
        Some(Command::Slot(SlotArgs {
            command: SlotCommand::Forget { settings },
        })) => admin::slot_forget(admin(settings)?).await,
        Some(Command::Config(ConfigArgs {
            reference: true, ..
        })) => {
            print!("{}", reference::reference());
            Ok(())
        }
        Some(Command::Config(ConfigArgs { settings: args, .. })) => {
            let settings = Settings::load(*args)?;
            // Refused like `run` would refuse it; then every setting, as a config file.
            settings.config(true)?;
            print!("{}", settings.to_toml()?);
            Ok(())
        }
        Some(Command::Run(args)) => run(args).await,
        None => run(cli.settings).await,
    }
}

async fn run(args: Box<SettingArgs>) -> anyhow::Result<()> {
    let settings = Settings::load((*args).clone())?;
    init_logging("info", Some(&settings), settings.log_format);
    run::main(*args, settings).await
}

/// Logs to stderr, hiding the secrets of `settings` (and of any loaded before).
fn init_logging(default: &str, settings: Option<&Settings>, format: LogFormat) {
    if let Some(s) = settings {
        log::hide(s.secrets());
    }
    log::init(default, format);
}
