//! `setup`, `check` and `status`: what an operator runs around `run`.

use anyhow::{bail, Context};

use pgoutbox::checks;
use pgoutbox::config::{Config, DestinationKind};
use pgoutbox::outbox::TableName;
use pgoutbox::postgres::{setup, status};
use pgoutbox::Lsn;

/// A normal connection for admin commands.
async fn connect(cfg: &Config) -> anyhow::Result<tokio_postgres::Client> {
    let (client, _conn) = pgoutbox::postgres::connection::connect(cfg)
        .await
        .context("connecting to PostgreSQL")?;
    Ok(client)
}

pub async fn setup(
    cfg: Config,
    nats_stream: bool,
    rabbitmq_exchange: bool,
    kafka_topics: bool,
) -> anyhow::Result<()> {
    let pg = connect(&cfg).await?;
    let report = interruptible_apply(&cfg, &pg).await?;
    println!("✔ applied sql/setup.sql: table public.outbox, publication pgoutbox_pub (insert), role pgoutbox");
    match report.created_slot_at {
        Some(lsn) => println!(
            "✔ created replication slot {} (pgoutput) at {lsn}",
            cfg.slot
        ),
        None => {
            // A slot of that name may be another database's or another plugin's.
            pgoutbox::postgres::preflight::slot_state(&pg, &cfg.slot).await?;
            println!("✔ replication slot {} already exists", cfg.slot)
        }
    }
    let default_table = TableName::parse("public.outbox").map_err(anyhow::Error::msg)?;
    if cfg.outbox.table != default_table || cfg.publication != pgoutbox::config::DEFAULT_PUBLICATION
    {
        println!(
            "! you configured table {} and publication {}; sql/setup.sql creates the defaults: \
             create yours with the same DDL, then run `pgoutbox check`",
            cfg.outbox.table, cfg.publication
        );
    }
    let kinds = [
        (kafka_topics, DestinationKind::Kafka),
        (rabbitmq_exchange, DestinationKind::RabbitMq),
        (nats_stream, DestinationKind::Nats),
    ];
    let routes = match kafka_topics {
        true => known_routes(&pg, &cfg).await?,
        false => Vec::new(),
    };
    for (_, kind) in kinds.into_iter().filter(|(asked, _)| *asked) {
        for line in pgoutbox::destination::admin::setup(kind, &cfg, &routes).await? {
            println!("{line}");
        }
    }
    println!("  next: give the role a password (ALTER ROLE pgoutbox PASSWORD '…') and run `pgoutbox check`");
    Ok(())
}

/// The route values in the outbox tables now (at most 1,000 per table): the topics they name
/// are known before any event.
async fn known_routes(pg: &tokio_postgres::Client, cfg: &Config) -> anyhow::Result<Vec<String>> {
    let mut routes = Vec::new();
    for o in cfg.outboxes() {
        let sql = format!(
            "SELECT DISTINCT {}::text FROM {} WHERE {} IS NOT NULL LIMIT 1000",
            quote_ident(&o.route_column),
            o.table,
            quote_ident(&o.route_column)
        );
        let rows = pg
            .query(&sql, &[])
            .await
            .map_err(|e| anyhow::anyhow!("{}", pgoutbox::postgres::connection::describe(&e)))
            .context("reading the route values of the outbox")?;
        routes.extend(rows.iter().map(|r| r.get::<_, String>(0)));
    }
    Ok(routes)
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// `setup::apply`, which may wait long for open transactions before the slot exists. SIGTERM
/// or SIGINT meanwhile cancels it, and what it left is undone: the DDL is one implicit
/// transaction, and a slot this run created without its state record is dropped.
async fn interruptible_apply(
    cfg: &Config,
    pg: &tokio_postgres::Client,
) -> anyhow::Result<setup::SetupReport> {
    use tokio::signal::unix::{signal, SignalKind};
    let pid: i32 = pg.query_one("SELECT pg_backend_pid()", &[]).await?.get(0);
    let existed = status::slot_status(pg, &cfg.slot).await?.exists;
    let (mut term, mut int) = (
        signal(SignalKind::terminate())?,
        signal(SignalKind::interrupt())?,
    );
    let apply = setup::apply(pg, &cfg.slot, cfg.failover);
    tokio::pin!(apply);
    let signalled = tokio::select! {
        r = &mut apply => return r.context("applying sql/setup.sql"),
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    eprintln!("{signalled}: cancelling setup");
    let other = connect(cfg).await?;
    other
        .execute("SELECT pg_cancel_backend($1)", &[&pid])
        .await?;
    let finished = apply.await;
    if finished.is_ok() {
        bail!("{signalled}: setup had finished all the same; run `pgoutbox check`");
    }
    let left = !existed && status::slot_status(&other, &cfg.slot).await?.exists;
    let recorded = pgoutbox::postgres::state::read(&other, &cfg.slot)
        .await?
        .is_some();
    if left && !recorded {
        other
            .execute("SELECT pg_drop_replication_slot($1)", &[&cfg.slot])
            .await?;
    }
    bail!(
        "{signalled}: setup interrupted, nothing half-made: replication slot {} {}; the table, publication and role are made in one transaction. Run `pgoutbox setup` again",
        cfg.slot,
        match (left, recorded) {
            (true, true) => "was created and recorded",
            (true, false) => "was created without its state record, and dropped again",
            (false, _) if existed => "existed before and is untouched",
            (false, _) => "was not created",
        }
    )
}

pub async fn check(cfg: Config) -> anyhow::Result<()> {
    let results = checks::run(&cfg).await;
    for r in &results {
        println!("{}", super::clean(&r.to_string()));
    }
    let failed = results.iter().filter(|r| !r.ok).count();
    if failed > 0 {
        bail!("{failed} of {} checks failed", results.len());
    }
    Ok(())
}

/// Prints the slot; fails (exit 1) when it is missing, lost or invalidated, after printing.
/// `status`: the slot as PostgreSQL sees it, and, when an instance answers on
/// `metrics_addr`, what it says of itself (its `/status.json`).
pub async fn status(cfg: Config, metrics_addr: &str, json: bool) -> anyhow::Result<()> {
    let pg = connect(&cfg).await?;
    let s = status::slot_status(&pg, &cfg.slot).await?;
    let instance = match metrics_addr.is_empty() {
        true => None,
        false => super::status_page::fetch(metrics_addr).await,
    };
    if json {
        let mut v = serde_json::to_value(&s)?;
        if let Some(map) = v.as_object_mut() {
            map.insert("instance".into(), instance.unwrap_or_default());
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        if !s.exists {
            println!(
                "slot {}: does not exist (current WAL {})",
                s.slot, s.current_wal_lsn
            );
        } else {
            print_status(&s);
        }
        print_instance(metrics_addr, instance.as_ref());
    }
    match s.problem() {
        Some(p) => bail!("{p}"),
        None => Ok(()),
    }
}

fn print_status(s: &status::SlotStatus) {
    let or = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let yes_no = |v: Option<bool>| match v {
        Some(true) => "yes",
        Some(false) => "no",
        None => "- (PostgreSQL 17+)",
    };
    println!("slot                 {}", s.slot);
    println!(
        "active               {}",
        match s.active_pid {
            Some(pid) => format!("yes (walsender pid {pid})"),
            None => "no".into(),
        }
    );
    println!("confirmed_flush_lsn  {}", or(&s.confirmed_flush_lsn));
    println!("restart_lsn          {}", or(&s.restart_lsn));
    println!("current WAL          {}", s.current_wal_lsn);
    println!("wal_status           {}", or(&s.wal_status));
    if let Some(r) = &s.invalidation_reason {
        println!("invalidated          {r}");
    }
    println!("failover slot        {}", yes_no(s.failover));
    println!("retained WAL         {}", bytes(s.retained_wal_bytes));
    println!("lag (unconfirmed)    {}", bytes(s.lag_bytes));
}

/// What the instance on `metrics_addr` says of itself.
fn print_instance(addr: &str, instance: Option<&serde_json::Value>) {
    let Some(i) = instance else {
        if !addr.is_empty() {
            println!("instance             no pgoutbox answers on {addr} (metrics_addr)");
        }
        return;
    };
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_owned();
    println!("instance             {addr}: {}", text(&i["readiness"]));
    println!("role                 {}", text(&i["role"]));
    for d in i["destinations"].as_array().into_iter().flatten() {
        println!(
            "delivered            {}: {} ({:.1} events/s)",
            text(&d["destination"]),
            d["delivered"],
            d["events_per_second"].as_f64().unwrap_or(0.0)
        );
    }
    println!("dead letters, lost   {}, {}", i["dead_letters"], i["lost"]);
    match i["last_error"].as_object() {
        Some(e) => println!(
            "last error           {:.0} s ago: {}",
            e.get("seconds_ago").and_then(|s| s.as_f64()).unwrap_or(0.0),
            e.get("message").map(text).unwrap_or_default()
        ),
        None => println!("last error           none since start"),
    }
}

fn bytes(b: Option<i64>) -> String {
    match b {
        None => "-".into(),
        Some(b) if b < 1 << 20 => format!("{b} bytes"),
        Some(b) => format!("{:.1} MiB ({b} bytes)", b as f64 / f64::from(1 << 20)),
    }
}

/// `slot skip --to LSN|now`: moves the stopped slot's confirmed position forward.
pub async fn slot_skip(cfg: Config, to: &str) -> anyhow::Result<()> {
    let pg = connect(&cfg).await?;
    let s = status::slot_status(&pg, &cfg.slot).await?;
    if !s.exists {
        bail!("replication slot {:?} does not exist", cfg.slot);
    }
    if let Some(pid) = s.active_pid {
        bail!(
            "replication slot {:?} is in use by PID {pid}: stop pgoutbox (or whatever streams it) first",
            cfg.slot
        );
    }
    let target: Lsn = match to {
        "now" => s.current_wal_lsn.parse(),
        lsn => lsn.parse(),
    }
    .map_err(|_| {
        anyhow::anyhow!("--to {to:?} is neither a WAL position (like 0/1A2B3C4D) nor `now`")
    })?;
    let end: Lsn = s.current_wal_lsn.parse().unwrap_or(Lsn::ZERO);
    if target > end {
        bail!(
            "--to {target} is past the end of WAL ({end}): nothing moved; `--to now` skips everything written so far"
        );
    }
    let from: Option<Lsn> = s
        .confirmed_flush_lsn
        .as_deref()
        .and_then(|l| l.parse().ok());
    if from.is_some_and(|f| f >= target) {
        bail!(
            "replication slot {:?} is at {} already, not before {target}: a slot only moves forward",
            cfg.slot,
            s.confirmed_flush_lsn.unwrap_or_default()
        );
    }
    let end: String = pg
        .query_one(
            "SELECT end_lsn::text FROM pg_replication_slot_advance($1, $2::text::pg_lsn)",
            &[&cfg.slot, &target.to_string()],
        )
        .await
        .map_err(|e| anyhow::anyhow!("{}", pgoutbox::postgres::connection::describe(&e)))
        .context("moving the slot")?
        .get(0);
    println!(
        "✔ replication slot {} moved from {} to {end}: events committed in between are not delivered by pgoutbox (rows still in the table can be re-sent with source = poll)",
        cfg.slot,
        s.confirmed_flush_lsn.unwrap_or_else(|| "-".into()),
    );
    Ok(())
}

/// `slot forget`: deletes the slot's state record.
pub async fn slot_forget(cfg: Config) -> anyhow::Result<()> {
    let pg = connect(&cfg).await?;
    // A running relay writes the record while it streams: forgetting it then is undone.
    let s = status::slot_status(&pg, &cfg.slot).await?;
    if let Some(pid) = s.active_pid {
        bail!(
            "replication slot {:?} is streamed by PID {pid}, which keeps its state record up to date: nothing forgotten; stop pgoutbox first",
            cfg.slot
        );
    }
    let leader = pgoutbox::streamer::lock_holder(&pg, &cfg.slot)
        .await
        .map_err(|e| anyhow::anyhow!("{}", pgoutbox::postgres::connection::describe(&e)))?;
    if let Some(pid) = leader {
        bail!(
            "an HA instance leads slot {:?} (its lock session is PID {pid}): nothing forgotten; stop pgoutbox first",
            cfg.slot
        );
    }
    let forgot = pgoutbox::postgres::state::forget(&pg, &cfg.slot)
        .await
        .map_err(|e| anyhow::anyhow!("{}", pgoutbox::postgres::connection::describe(&e)))
        .context("deleting the state record")?;
    match forgot {
        true => println!(
            "✔ forgot replication slot {}: if it is missing, pgoutbox creates a new one at the present position on its next start",
            cfg.slot
        ),
        false => println!("✔ nothing recorded for replication slot {}", cfg.slot),
    }
    Ok(())
}
