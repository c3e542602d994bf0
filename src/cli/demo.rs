//! `pgoutbox demo`: the whole flow on a throwaway PostgreSQL and an in-process Kafka broker.
//! Prints each event as a Kafka consumer receives it, with its commit→ack latency.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Args;
use tokio::sync::mpsc;
use tokio_postgres::NoTls;
use tokio_util::sync::CancellationToken;

use pgoutbox::embedded::{TempKafka, TempPostgres, TopicReader};
use pgoutbox::pipeline::AckedEvent;
use pgoutbox::{Config, Streamer};

use pgoutbox::setup::SETUP_SQL;

const TOPICS: [&str; 2] = ["outbox.event.order", "outbox.event.customer"];
const PARTITIONS: i32 = 3;

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Business transactions to commit.
    #[arg(long, default_value_t = 12)]
    transactions: usize,
    /// Pause between transactions, in milliseconds.
    #[arg(long, default_value_t = 150)]
    interval_ms: u64,
    /// Keep Postgres, the broker and the streamer running until Ctrl-C (to try kcat or psql).
    #[arg(long)]
    hold: bool,
}

pub async fn main(args: DemoArgs) -> anyhow::Result<()> {
    let interrupted = CancellationToken::new();
    let demo = demo(args, interrupted.clone());
    tokio::pin!(demo);
    tokio::select! {
        r = &mut demo => r,
        _ = tokio::signal::ctrl_c() => {
            println!("\ninterrupted: stopping the streamer, then Kafka and PostgreSQL");
            interrupted.cancel();
            // The demo winds down in order; its guards delete the throwaway data.
            demo.await
        }
    }
}

async fn demo(args: DemoArgs, interrupted: CancellationToken) -> anyhow::Result<()> {
    println!("▶ starting a throwaway PostgreSQL (wal_level=logical)…");
    let pg = tokio::task::spawn_blocking(TempPostgres::start)
        .await?
        .context("starting PostgreSQL")?;
    // Dropped on every exit path (including Ctrl-C): stops the server, deletes its data.
    let url = pg.url();
    println!("  {url}");

    println!("▶ starting an in-process Kafka-protocol broker (librdkafka mock cluster)…");
    let kafka = TempKafka::start(3).context("starting the Kafka mock cluster")?;
    for t in TOPICS {
        kafka.create_topic(t, PARTITIONS)?;
    }
    println!("  bootstrap.servers={}", kafka.bootstrap_servers());

    println!("▶ applying sql/setup.sql (outbox table, publication, role)");
    let (db, conn) = url
        .parse::<tokio_postgres::Config>()?
        .connect(NoTls)
        .await?;
    tokio::spawn(conn);
    db.batch_execute(SETUP_SQL).await?;
    db.batch_execute(
        "CREATE TABLE orders (id bigserial PRIMARY KEY, customer text NOT NULL, total numeric NOT NULL)",
    )
    .await?;

    println!("▶ starting the streamer (slot pgoutbox, at-least-once)\n");
    let (obs_tx, mut obs_rx) = mpsc::unbounded_channel();
    let streamer =
        Streamer::new(Config::new(url.clone(), kafka.bootstrap_servers()))?.with_observer(obs_tx);
    let shutdown = interrupted.child_token();
    let stream_task = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move { streamer.run(shutdown).await })
    };
    let outcome = tokio::select! {
        r = show(&args, &url, &db, &kafka, &mut obs_rx) => r,
        _ = interrupted.cancelled() => Ok(()),
    };
    println!("▶ stopping and cleaning up");
    shutdown.cancel();
    stream_task.await??;
    outcome
}

/// Writes business transactions and prints what a consumer reads, until all arrived.
async fn show(
    args: &DemoArgs,
    url: &str,
    db: &tokio_postgres::Client,
    kafka: &TempKafka,
    obs_rx: &mut mpsc::UnboundedReceiver<AckedEvent>,
) -> anyhow::Result<()> {
    wait_for_slot(db).await?;

    let reader = TopicReader::new(kafka.bootstrap_servers(), &TOPICS.map(|t| (t, PARTITIONS)))?;

    // Business transactions: an order row and its outbox event(s) commit together.
    let mut expected = 0;
    let writer = {
        let mut plan = Vec::new();
        for i in 0..args.transactions {
            let customer = format!("c-{}", i % 4);
            let events = if i % 3 == 0 { 2 } else { 1 };
            expected += events;
            plan.push((i, customer, events));
        }
        let interval = Duration::from_millis(args.interval_ms);
        let db_url = url.to_owned();
        tokio::spawn(async move { write_business(&db_url, plan, interval).await })
    };

    println!(
        "{:<24} {:>3} {:>5}  {:<8} {:<16} {:<38} commit→ack",
        "topic", "p", "off", "key", "type", "id (header)"
    );
    let mut acks: HashMap<Bytes, AckedEvent> = HashMap::new();
    let mut latencies = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while latencies.len() < expected {
        if Instant::now() > deadline {
            bail!(
                "only {} of {expected} events arrived within 60 s",
                latencies.len()
            );
        }
        let Some(rec) = reader.next(Duration::from_millis(500)).await? else {
            continue;
        };
        let id = Bytes::from(rec.header("id").unwrap_or_default().to_vec());
        // The ack report can trail the consumer by a moment: wait for it briefly.
        let ack_deadline = Instant::now() + Duration::from_secs(2);
        while !acks.contains_key(&id) && Instant::now() < ack_deadline {
            match tokio::time::timeout(Duration::from_millis(50), obs_rx.recv()).await {
                Ok(Some(a)) => {
                    acks.insert(a.event_id.clone(), a);
                }
                Ok(None) => break,
                Err(_) => {}
            }
        }
        let latency = acks
            .get(&id)
            .and_then(|a| a.acked_at.duration_since(a.commit_time).ok());
        if let Some(l) = latency {
            latencies.push(l);
        } else {
            latencies.push(Duration::ZERO);
        }
        println!(
            "{:<24} {:>3} {:>5}  {:<8} {:<16} {:<38} {}",
            rec.topic,
            rec.partition,
            rec.offset,
            String::from_utf8_lossy(rec.key.as_deref().unwrap_or_default()),
            String::from_utf8_lossy(rec.header("type").unwrap_or_default()),
            String::from_utf8_lossy(&id),
            latency.map_or("?".into(), |l| format!("{:.1} ms", l.as_secs_f64() * 1e3)),
        );
    }
    writer.await??;

    // The rolled-back transaction's event must never show up.
    if let Some(extra) = reader.next(Duration::from_secs(1)).await? {
        bail!("unexpected extra event: {extra:?}");
    }
    latencies.sort();
    let confirmed: String = db
        .query_one(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'pgoutbox'",
            &[],
        )
        .await?
        .get(0);
    println!(
        "\n✔ {} events from {} transactions delivered; the rolled-back transaction's event never appeared",
        latencies.len(),
        args.transactions
    );
    println!(
        "  commit→ack latency: median {:.1} ms, max {:.1} ms (commit timestamp in Postgres → Kafka ack)",
        ms(latencies[latencies.len() / 2]),
        ms(latencies[latencies.len() - 1]),
    );
    println!(
        "  slot pgoutbox confirmed_flush_lsn = {confirmed} (advanced only past acked transactions)"
    );
    if args.hold {
        println!("\n▶ holding until Ctrl-C. In another terminal, try:");
        println!(
            "  kcat -b {} -C -t outbox.event.order -o beginning -f '%t[%p]@%o key=%k headers=%h value=%s\\n'",
            kafka.bootstrap_servers()
        );
        println!(
            r#"  psql '{url}' -c "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES ('order', 'o-99', 'OrderCreated', '{{\"total\": 1}}')""#
        );
        std::future::pending::<()>().await;
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

async fn write_business(
    url: &str,
    plan: Vec<(usize, String, usize)>,
    interval: Duration,
) -> anyhow::Result<()> {
    let (mut db, conn) = url
        .parse::<tokio_postgres::Config>()?
        .connect(NoTls)
        .await?;
    tokio::spawn(conn);
    for (i, customer, events) in plan {
        let tx = db.transaction().await?;
        let order: i64 = tx
            .query_one(
                "INSERT INTO orders (customer, total) VALUES ($1, $2::text::numeric) RETURNING id",
                &[&customer, &format!("{}.50", 10 + i)],
            )
            .await?
            .get(0);
        tx.execute(
            "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) \
             VALUES ('order', $1, 'OrderCreated', jsonb_build_object('order', $2::bigint, 'customer', $3::text))",
            &[&format!("o-{order}"), &order, &customer],
        )
        .await?;
        if events == 2 {
            tx.execute(
                "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) \
                 VALUES ('customer', $1, 'CustomerOrdered', jsonb_build_object('order', $2::bigint))",
                &[&customer, &order],
            )
            .await?;
        }
        tx.commit().await?;
        if i == 1 {
            // A transaction that rolls back: its event must never reach Kafka.
            let tx = db.transaction().await?;
            tx.execute(
                "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) \
                 VALUES ('order', 'o-rolled-back', 'OrderCreated', '{}')",
                &[],
            )
            .await?;
            tx.rollback().await?;
        }
        tokio::time::sleep(interval).await;
    }
    Ok(())
}

async fn wait_for_slot(db: &tokio_postgres::Client) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let active: Option<bool> = db
            .query_opt(
                "SELECT active FROM pg_replication_slots WHERE slot_name = 'pgoutbox'",
                &[],
            )
            .await?
            .map(|r| r.get(0));
        if active == Some(true) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the streamer did not start streaming within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
