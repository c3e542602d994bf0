//! Live latency: a load generator commits at fixed rates while pgoutbox streams (to each
//! destination, and through the polling publisher); commit→consumer per event.

use super::*;

/// A consumer at the end of the topic, fetching with minimal wait (latency, not throughput).
fn tail_consumer(bootstrap: &str) -> StreamConsumer {
    let c: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "bench")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "1")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(TOPIC, p, Offset::End)
            .expect("partition");
    }
    c.assign(&tpl).expect("assign");
    c
}

/// Live latency: the load generator commits at `rate` events/s for `seconds` while pgoutbox
/// (in `mode`) streams; commit→consumer per event.
pub async fn live_run(
    servers: &Servers<'_>,
    db: &Client,
    mode: &str,
    rate: &str,
    seconds: u64,
) -> Live {
    let (pg, kafka) = (servers.pg, servers.kafka);
    db.batch_execute("TRUNCATE outbox").await.expect("truncate");
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let mut settings: Vec<(&str, String)> = vec![
        ("PGOUTBOX_SLOT", "live".into()),
        ("PGOUTBOX_METRICS_ADDR", format!("127.0.0.1:{metrics_port}")),
    ];
    match mode {
        "poll 100ms" => {
            settings.push(("PGOUTBOX_SOURCE", "poll".into()));
            settings.push(("PGOUTBOX_POLL_INTERVAL_MS", "100".into()));
        }
        "poll 5s" => {
            settings.push(("PGOUTBOX_SOURCE", "poll".into()));
            settings.push(("PGOUTBOX_POLL_INTERVAL_MS", "5000".into()));
        }
        "replication → NATS" => {
            destinations::fresh_stream(&servers.nats.url()).await;
            settings.extend(servers.to(Dest::Nats));
        }
        "replication → RabbitMQ" => settings.extend(servers.to(Dest::RabbitMq)),
        _ => {}
    }
    let replication = mode.starts_with("replication");
    let mut child = spawn(pg, kafka, &settings);
    let pid = child.id().expect("pid");
    if replication {
        while db
            .query_opt(
                "SELECT 1 FROM pg_replication_slots WHERE slot_name = 'live' AND active",
                &[],
            )
            .await
            .expect("slot")
            .is_none()
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let received: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let stop = tokio_util::sync::CancellationToken::new();
    let reader = if mode == "replication → NATS" {
        let r = destinations::nats_tail(servers.nats.url(), received.clone(), stop.clone());
        tokio::time::sleep(Duration::from_millis(500)).await;
        r
    } else if mode == "replication → RabbitMQ" {
        let r = destinations::rabbit_tail(servers.rabbit.url(), received.clone(), stop.clone());
        tokio::time::sleep(Duration::from_millis(500)).await;
        r
    } else {
        let consumer = tail_consumer(kafka.bootstrap_servers());
        // Let the consumer resolve its end offsets before any event is written.
        let _ = tokio::time::timeout(Duration::from_secs(1), consumer.recv()).await;
        let received = received.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    m = consumer.recv() => {
                        let Ok(m) = m else { continue };
                        let now = Instant::now();
                        let seq = m.headers().and_then(|h| {
                            h.iter().find(|h| h.key == "id").and_then(|h| h.value)
                        }).and_then(|v| std::str::from_utf8(v).ok())
                          .and_then(|s| s.rsplit('-').next())
                          .and_then(|s| s.parse::<u64>().ok());
                        if let Some(seq) = seq {
                            received.lock().expect("lock").entry(seq).or_insert(now);
                        }
                    }
                }
            }
        })
    };

    let cpu0 = (cpu_secs(pid), postgres_cpu(&pg.data_dir()));
    let gen = connect(&pg.url()).await;
    let mut committed: HashMap<u64, Instant> = HashMap::new();
    let mut n: u64 = 0;
    let started = Instant::now();
    let run_for = Duration::from_secs(seconds);
    let per_tick: Option<u64> = rate.parse::<u64>().ok().map(|r| (r / 100).max(1));
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    while started.elapsed() < run_for {
        let k = match per_tick {
            Some(k) => {
                tick.tick().await;
                k
            }
            None => 10, // max: back-to-back transactions of 10 events
        };
        let values: Vec<String> = (n..n + k).map(row).collect();
        gen.batch_execute(&format!(
            "BEGIN; INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload) VALUES {}; COMMIT;",
            values.join(",")
        ))
        .await
        .expect("commit");
        let at = Instant::now();
        for s in n..n + k {
            committed.insert(s, at);
        }
        n += k;
    }
    let load_secs = started.elapsed().as_secs_f64();
    // Wait for the stragglers (a 5 s poll interval needs a little more than 5 s).
    let deadline = Instant::now() + Duration::from_secs(if mode == "poll 5s" { 12 } else { 5 });
    while received.lock().expect("lock").len() < committed.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cpu1 = (cpu_secs(pid), postgres_cpu(&pg.data_dir()));
    let acks = ack_histogram(metrics_port).await;
    let rss = peak_rss_mib(pid);
    stop.cancel();
    let _ = reader.await;
    let _ = child.kill().await;
    if replication {
        drop_slot(db, "live").await;
    }

    let received = received.lock().expect("lock").clone();
    let events = committed.len();
    let per_million = |secs: f64| secs * 1e6 / events.max(1) as f64;
    Live {
        ack_p50_ms: bucket_percentile(&acks, 0.50),
        ack_p95_ms: bucket_percentile(&acks, 0.95),
        ack_p99_ms: bucket_percentile(&acks, 0.99),
        pgoutbox_cpu_secs_per_million: per_million(cpu1.0 - cpu0.0),
        pgoutbox_peak_rss_mib: rss,
        postgres_cpu_secs_per_million: per_million(cpu1.1 - cpu0.1),
        ..latencies(mode, rate, load_secs, &committed, &received)
    }
}

/// The RabbitMQ node's own latency at `rate` ([`ALONE`]): the bench's lapin client publishing
/// pre-built messages, paced as the load generator commits, to the same consumer; publish →
/// consumer per message. Nothing else runs, so a slow row here is the node (or the machine),
/// not pgoutbox. None for `max`.
pub async fn alone_run(servers: &Servers<'_>, rate: &str, seconds: u64) -> Option<Live> {
    let per_tick = (rate.parse::<usize>().ok()? / 100).max(1);
    let url = servers.rabbit.url();
    let received: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let stop = tokio_util::sync::CancellationToken::new();
    let reader = destinations::rabbit_tail(url.clone(), received.clone(), stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let sent = destinations::rabbit_paced(&url, per_tick, seconds).await;
    let load_secs = started.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(5);
    while received.lock().expect("lock").len() < sent.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    let _ = reader.await;
    let received = received.lock().expect("lock").clone();
    Some(latencies(ALONE, rate, load_secs, &sent, &received))
}

/// The mode of [`alone_run`]'s rows.
pub const ALONE: &str = "RabbitMQ client alone";

/// A row's latencies, from when each event was committed (or published) and received; the
/// cost columns zero.
fn latencies(
    mode: &str,
    rate: &str,
    load_secs: f64,
    committed: &HashMap<u64, Instant>,
    received: &HashMap<u64, Instant>,
) -> Live {
    let mut lat: Vec<f64> = committed
        .iter()
        .filter_map(|(s, c)| {
            received
                .get(s)
                .map(|r| r.saturating_duration_since(*c).as_secs_f64() * 1e3)
        })
        .collect();
    lat.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    Live {
        mode: mode.into(),
        target_rate: rate.into(),
        achieved_rate: committed.len() as f64 / load_secs,
        events: committed.len(),
        received: lat.len(),
        p50_ms: pct(0.50),
        p95_ms: pct(0.95),
        p99_ms: pct(0.99),
        max_ms: lat.last().copied().unwrap_or(f64::NAN),
        ack_p50_ms: None,
        ack_p95_ms: None,
        ack_p99_ms: None,
        pgoutbox_cpu_secs_per_million: 0.0,
        pgoutbox_peak_rss_mib: 0.0,
        postgres_cpu_secs_per_million: 0.0,
    }
}

/// `pgoutbox_commit_to_ack_seconds` buckets from the binary's /metrics: (upper bound in ms,
/// cumulative count). Empty when the source records none (polling).
async fn ack_histogram(port: u16) -> Vec<(f64, f64)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut conn) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return Vec::new();
    };
    let _ = conn
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await;
    let mut text = String::new();
    let _ = conn.read_to_string(&mut text).await;
    text.lines()
        .filter(|l| l.starts_with("pgoutbox_commit_to_ack_seconds_bucket{") && l.contains("le=\""))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let count = l.rsplit(' ').next()?.parse::<f64>().ok()?;
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse::<f64>().ok()? * 1e3
            };
            Some((bound, count))
        })
        .collect()
}

/// The upper bound of the bucket holding percentile `p`.
fn bucket_percentile(buckets: &[(f64, f64)], p: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total == 0.0 {
        return None;
    }
    buckets
        .iter()
        .find(|(_, c)| *c >= total * p)
        .map(|(b, _)| *b)
}
