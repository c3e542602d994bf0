//! `pgoutbox demo`: the whole flow on a throwaway PostgreSQL and an in-process Kafka broker
//! (or, with `--destination nats|rabbitmq`, a throwaway server of the installed `nats-server`
//! or `rabbitmq-server`). Prints
//! each event as a consumer receives it, with its commit→ack latency.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Args;
use tokio::sync::mpsc;
use tokio_postgres::NoTls;
use tokio_util::sync::CancellationToken;

use futures_util::StreamExt;
use pgoutbox::config::DestinationKind;
use pgoutbox::destination::{nats, rabbitmq};
use pgoutbox::embedded::{TempKafka, TempNats, TempPostgres, TempRabbit, TopicReader};
use pgoutbox::pipeline::AckedEvent;
use pgoutbox::{Config, Streamer};

use pgoutbox::postgres::setup::SETUP_SQL;

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
    /// kafka (librdkafka's in-process mock broker), nats or rabbitmq (a throwaway server of
    /// the installed nats-server, with JetStream, or rabbitmq-server).
    #[arg(long, default_value = "kafka")]
    destination: DestinationKind,
}

/// The broker the demo runs, and how a consumer reads it.
enum Broker {
    Kafka(TempKafka),
    Nats(TempNats),
    RabbitMq(TempRabbit),
}

/// The queue the demo binds to the exchange, and reads.
const DEMO_QUEUE: &str = "outbox.demo";

/// What a consumer read: one printed line.
#[derive(Debug)]
struct Read {
    topic: String,
    partition: i32,
    offset: i64,
    key: String,
    kind: String,
    id: Bytes,
}

/// A consumer of what the demo's broker holds.
enum Reader {
    Kafka(TopicReader),
    Nats(Box<nats_reader::Messages>),
    /// The connection lives as long as its consumer.
    RabbitMq(Box<(lapin::Consumer, lapin::Connection)>),
}

impl Reader {
    async fn open(broker: &Broker) -> anyhow::Result<Reader> {
        Ok(match broker {
            Broker::Kafka(k) => Reader::Kafka(TopicReader::new(
                k.bootstrap_servers(),
                &TOPICS.map(|t| (t, PARTITIONS)),
            )?),
            Broker::Nats(n) => Reader::Nats(Box::new(nats_reader::open(&n.url()).await?)),
            Broker::RabbitMq(r) => {
                let connection = lapin::Connection::connect(&r.url(), Default::default()).await?;
                let no_ack = lapin::options::BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                };
                let consumer = connection
                    .create_channel()
                    .await?
                    .basic_consume(DEMO_QUEUE.into(), "demo".into(), no_ack, Default::default())
                    .await?;
                Reader::RabbitMq(Box::new((consumer, connection)))
            }
        })
    }

    async fn next(&mut self, wait: Duration) -> anyhow::Result<Option<Read>> {
        let text = |b: Option<&[u8]>| String::from_utf8_lossy(b.unwrap_or_default()).into_owned();
        match self {
            Reader::Kafka(r) => Ok(r.next(wait).await?.map(|rec| Read {
                key: text(rec.key.as_deref()),
                kind: text(rec.header("type")),
                id: Bytes::from(rec.header("id").unwrap_or_default().to_vec()),
                topic: rec.topic,
                partition: rec.partition,
                offset: rec.offset,
            })),
            Reader::Nats(m) => {
                let Ok(Some(msg)) = tokio::time::timeout(wait, m.next()).await else {
                    return Ok(None);
                };
                let msg = msg.map_err(|e| anyhow::anyhow!("reading the stream: {e}"))?;
                let header = |n: &str| {
                    msg.headers
                        .as_ref()
                        .and_then(|h| h.get(n))
                        .map(|v| v.to_string())
                        .unwrap_or_default()
                };
                Ok(Some(Read {
                    topic: msg.subject.to_string(),
                    partition: 0,
                    offset: msg.info().map_or(0, |i| i.stream_sequence as i64),
                    key: header(nats::KEY_HEADER),
                    kind: header("type"),
                    id: Bytes::from(header("id")),
                }))
            }
            Reader::RabbitMq(r) => {
                let consumer = &mut r.0;
                let Ok(Some(d)) = tokio::time::timeout(wait, consumer.next()).await else {
                    return Ok(None);
                };
                let d = d.map_err(|e| anyhow::anyhow!("reading the queue: {e}"))?;
                let p = &d.properties;
                let key = p
                    .headers()
                    .as_ref()
                    .and_then(|h| h.inner().get(rabbitmq::KEY_HEADER))
                    .and_then(|v| v.as_long_string())
                    .map(|s| s.to_string())
                    .unwrap_or_default();
                let short = |s: &Option<lapin::types::ShortString>| {
                    s.as_ref().map(|s| s.to_string()).unwrap_or_default()
                };
                Ok(Some(Read {
                    topic: d.routing_key.to_string(),
                    partition: 0,
                    offset: d.delivery_tag as i64,
                    key,
                    kind: short(p.kind()),
                    id: Bytes::from(short(p.message_id())),
                }))
            }
        }
    }
}

/// Reading the NATS stream from its start (an ordered consumer).
mod nats_reader {
    use async_nats::jetstream::consumer::pull::{Ordered, OrderedConfig};
    pub type Messages = Ordered;

    pub async fn open(url: &str) -> anyhow::Result<Messages> {
        let js = async_nats::jetstream::new(async_nats::connect(url).await?);
        let stream = js
            .get_stream(pgoutbox::config::nats::DEFAULT_STREAM)
            .await?;
        let consumer = stream.create_consumer(OrderedConfig::default()).await?;
        Ok(consumer.messages().await?)
    }
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

    let mut cfg = Config::new(url.clone(), "");
    cfg.destination = args.destination;
    let broker = match args.destination {
        DestinationKind::Kafka => {
            println!("▶ starting an in-process Kafka-protocol broker (librdkafka mock cluster)…");
            let kafka = TempKafka::start(3).context("starting the Kafka mock cluster")?;
            for t in TOPICS {
                kafka.create_topic(t, PARTITIONS)?;
            }
            println!("  bootstrap.servers={}", kafka.bootstrap_servers());
            cfg.kafka.brokers = kafka.bootstrap_servers().to_owned();
            Broker::Kafka(kafka)
        }
        DestinationKind::Nats => {
            println!("▶ starting a throwaway nats-server with JetStream…");
            let server = tokio::task::spawn_blocking(TempNats::start)
                .await?
                .context("starting nats-server")?;
            cfg.nats.url = server.url();
            let js = nats::jetstream(nats::connect(&cfg.nats).await?, &cfg.nats);
            let info = nats::stream::create(&js, &cfg).await?;
            println!(
                "  {} with stream {} ({})",
                server.url(),
                cfg.nats.stream,
                info.subjects.join(", ")
            );
            Broker::Nats(server)
        }
        DestinationKind::RabbitMq => {
            println!("▶ starting a throwaway RabbitMQ node (rabbitmq-server, a few seconds)…");
            let node = tokio::task::spawn_blocking(TempRabbit::start)
                .await?
                .context("starting rabbitmq-server")?;
            cfg.rabbitmq.url = node.url();
            let c = &cfg.rabbitmq;
            pgoutbox::embedded::rabbitmq::declare_queue(
                &c.url,
                &c.exchange,
                DEMO_QUEUE,
                "outbox.event.#",
                Default::default(),
            )
            .await?;
            println!(
                "  {} with topic exchange {} → queue {DEMO_QUEUE} (outbox.event.#)",
                pgoutbox::config::redact_url(&c.url),
                c.exchange
            );
            Broker::RabbitMq(node)
        }
    };

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

    println!(
        "▶ starting the streamer (slot pgoutbox, at-least-once, to {})\n",
        args.destination
    );
    let (obs_tx, mut obs_rx) = mpsc::unbounded_channel();
    let streamer = Streamer::new(cfg)?.with_observer(obs_tx);
    let shutdown = interrupted.child_token();
    let stream_task = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move { streamer.run(shutdown).await })
    };
    let outcome = tokio::select! {
        r = show(&args, &url, &db, &broker, &mut obs_rx) => r,
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
    broker: &Broker,
    obs_rx: &mut mpsc::UnboundedReceiver<AckedEvent>,
) -> anyhow::Result<()> {
    wait_for_slot(db).await?;

    let mut reader = Reader::open(broker).await?;

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
        let id = rec.id.clone();
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
            rec.key,
            rec.kind,
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
        "  commit→ack latency: median {:.1} ms, max {:.1} ms (commit timestamp in Postgres → broker ack)",
        ms(latencies[latencies.len() / 2]),
        ms(latencies[latencies.len() - 1]),
    );
    println!(
        "  slot pgoutbox confirmed_flush_lsn = {confirmed} (advanced only past acked transactions)"
    );
    if args.hold {
        println!("\n▶ holding until Ctrl-C. In another terminal, try:");
        match broker {
            Broker::Kafka(kafka) => println!(
                "  kcat -b {} -C -t outbox.event.order -o beginning -f '%t[%p]@%o key=%k headers=%h value=%s\\n'",
                kafka.bootstrap_servers()
            ),
            Broker::Nats(n) => println!(
                "  nats --server {} stream view {}",
                n.url(),
                pgoutbox::config::nats::DEFAULT_STREAM
            ),
            Broker::RabbitMq(r) => println!(
                "  rabbitmqctl -n pgoutbox-{}@localhost list_queues name messages",
                r.port()
            ),
        }
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
