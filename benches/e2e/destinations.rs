//! The destinations the benchmark drives: their servers, and each one's ceiling measured in
//! the same run (the destination's own client crate publishing pre-built messages, with the
//! acknowledgement setting pgoutbox uses, as fast as it can).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, message::PublishMessage, stream};
use futures_util::stream::{FuturesUnordered, StreamExt};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
    QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use pgoutbox::embedded::rabbitmq::declare_queue;
use pgoutbox::embedded::{TempKafka, TempNats, TempRabbit};

use super::TOPIC;

/// The stream pgoutbox publishes to in the benchmark.
pub const STREAM: &str = "OUTBOX";

/// Where pgoutbox delivers in one measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dest {
    Kafka,
    Nats,
    RabbitMq,
}

impl Dest {
    /// Its name in BENCH_DESTINATIONS.
    pub fn key(self) -> &'static str {
        match self {
            Dest::Kafka => "kafka",
            Dest::Nats => "nats",
            Dest::RabbitMq => "rabbitmq",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Dest::Kafka => "Kafka (mock)",
            Dest::Nats => "NATS JetStream",
            Dest::RabbitMq => "RabbitMQ",
        }
    }
}

/// `dest`'s own ceiling for `events` messages, in seconds.
pub async fn ceiling(
    kafka: &TempKafka,
    nats: &TempNats,
    rabbit: &TempRabbit,
    dest: Dest,
    events: usize,
) -> f64 {
    match dest {
        Dest::Kafka => {
            let bootstrap = kafka.bootstrap_servers().to_owned();
            tokio::task::spawn_blocking(move || kafka_ceiling(&bootstrap, events))
                .await
                .expect("join")
        }
        Dest::Nats => nats_ceiling(&nats.url(), events).await,
        Dest::RabbitMq => rabbit_ceiling(&rabbit.url(), events).await,
    }
}

/// A throwaway nats-server with JetStream.
pub async fn start_nats() -> TempNats {
    tokio::task::spawn_blocking(TempNats::start)
        .await
        .expect("join")
        .expect("start nats-server (apt-get install nats-server)")
}

async fn js(url: &str) -> jetstream::Context {
    jetstream::new(async_nats::connect(url).await.expect("connect to NATS"))
}

/// Deletes and creates the outbox stream: empty, and no duplicate-removal state left from an
/// earlier run (file storage, the 2-minute duplicate window pgoutbox expects).
pub async fn fresh_stream(url: &str) {
    let js = js(url).await;
    let _ = js.delete_stream(STREAM).await;
    js.create_stream(stream::Config {
        name: STREAM.into(),
        subjects: vec!["outbox.event.>".into()],
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .expect("create stream");
}

/// The payload every ceiling message carries: what the backlog rows become.
fn payload(n: usize) -> bytes::Bytes {
    bytes::Bytes::from(format!(
        "{{\"seq\": {n}, \"note\": \"a typical small outbox payload of about a hundred bytes\"}}"
    ))
}

/// NATS ceiling: `n` pre-built JetStream publishes (headers `id`, `type`, `key` and
/// `Nats-Msg-Id`, as pgoutbox sends them), at most as many awaiting their PubAck as pgoutbox
/// allows by default, until every one is acknowledged. Seconds.
pub async fn nats_ceiling(url: &str, n: usize) -> f64 {
    fresh_stream(url).await;
    let window = pgoutbox::config::NatsConfig::default().max_pending;
    let client = async_nats::connect(url).await.expect("connect");
    let js = jetstream::ContextBuilder::new()
        .max_ack_inflight(window)
        .backpressure_on_inflight(true)
        .build(client);
    let messages: Vec<(String, PublishMessage)> = (0..n)
        .map(|i| {
            let id = format!("ceiling-{i:012}");
            let mut h = async_nats::HeaderMap::new();
            h.insert("id", id.as_str());
            h.insert("type", "OrderCreated");
            h.insert("key", format!("agg-{}", i % 100).as_str());
            let m = PublishMessage::build()
                .payload(payload(i))
                .headers(h)
                .message_id(&id);
            (TOPIC.to_owned(), m)
        })
        .collect();
    let started = Instant::now();
    let mut acks = FuturesUnordered::new();
    for (subject, m) in messages {
        let ack = js.send_publish(subject, m).await.expect("publish");
        acks.push(std::future::IntoFuture::into_future(ack));
        while acks.len() >= window {
            acks.next().await.expect("ack").expect("acked");
        }
    }
    while let Some(a) = acks.next().await {
        a.expect("acked");
    }
    started.elapsed().as_secs_f64()
}

struct Counting(Arc<AtomicUsize>);

impl ClientContext for Counting {}

impl ProducerContext for Counting {
    type DeliveryOpaque = ();
    fn delivery(&self, r: &DeliveryResult<'_>, _: ()) {
        if r.is_ok() {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Kafka ceiling: `n` pre-built records (key, headers `id` and `type`) from an idempotent
/// `acks=all` producer with pgoutbox's defaults (linger.ms=5), until every one is acked.
/// Blocking; seconds.
pub fn kafka_ceiling(bootstrap: &str, n: usize) -> f64 {
    let acked = Arc::new(AtomicUsize::new(0));
    let producer: ThreadedProducer<Counting> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .create_with_context(Counting(acked.clone()))
        .expect("producer");
    let records: Vec<(String, String, bytes::Bytes)> = (0..n)
        .map(|i| {
            (
                format!("ceiling-{i:012}"),
                format!("agg-{}", i % 100),
                payload(i),
            )
        })
        .collect();
    let started = Instant::now();
    for (id, key, value) in &records {
        let headers = rdkafka::message::OwnedHeaders::new()
            .insert(rdkafka::message::Header {
                key: "id",
                value: Some(id.as_str()),
            })
            .insert(rdkafka::message::Header {
                key: "type",
                value: Some("OrderCreated"),
            });
        let mut rec = BaseRecord::to(TOPIC)
            .key(key.as_str())
            .payload(value.as_ref())
            .headers(headers);
        loop {
            match producer.send(rec) {
                Ok(()) => break,
                Err((_, back)) => {
                    rec = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    while acked.load(Ordering::Relaxed) < n {
        assert!(Instant::now() < deadline, "Kafka ceiling did not finish");
        std::thread::sleep(Duration::from_millis(1));
    }
    let secs = started.elapsed().as_secs_f64();
    let _ = producer.flush(Duration::from_secs(10));
    secs
}

/// Records, per event sequence number (from the `id` header), when a consumer of the stream
/// got it; new messages only, until `stop`.
pub fn nats_tail(
    url: String,
    received: Arc<Mutex<HashMap<u64, Instant>>>,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let js = js(&url).await;
        let stream = js.get_stream(STREAM).await.expect("stream");
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                deliver_policy: consumer::DeliverPolicy::New,
                ..Default::default()
            })
            .await
            .expect("consumer");
        let mut messages = consumer.messages().await.expect("messages");
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                m = messages.next() => {
                    let Some(Ok(m)) = m else { continue };
                    let now = Instant::now();
                    let seq = m.headers.as_ref().and_then(|h| h.get("id"))
                        .and_then(|v| v.as_str().rsplit('-').next().and_then(|s| s.parse::<u64>().ok()));
                    if let Some(seq) = seq {
                        received.lock().expect("lock").entry(seq).or_insert(now);
                    }
                }
            }
        }
    })
}

/// The exchange pgoutbox publishes to in the benchmark, and the queue bound to every event.
pub const EXCHANGE: &str = "outbox";
pub const QUEUE: &str = "bench";

/// The bench queue's type: `BENCH_RABBIT_QUEUE` = `quorum` (default: RabbitMQ's durable,
/// replicated queue type), `classic` or `classic-v2` (a classic queue, version 2 storage).
pub fn rabbit_queue_type() -> String {
    std::env::var("BENCH_RABBIT_QUEUE").unwrap_or_else(|_| "quorum".into())
}

/// A throwaway RabbitMQ node with the exchange and the bench queue.
pub async fn start_rabbit() -> TempRabbit {
    let node = tokio::task::spawn_blocking(TempRabbit::start)
        .await
        .expect("join")
        .expect("start rabbitmq-server (apt-get install rabbitmq-server)");
    let mut arguments = FieldTable::default();
    let kind = rabbit_queue_type();
    let (kind, version) = kind.split_once("-v").unwrap_or((kind.as_str(), ""));
    arguments.insert("x-queue-type".into(), AMQPValue::LongString(kind.into()));
    if let Ok(v) = version.parse::<i32>() {
        arguments.insert("x-queue-version".into(), AMQPValue::LongInt(v));
    }
    declare_queue(&node.url(), EXCHANGE, QUEUE, "outbox.event.#", arguments)
        .await
        .expect("declare the bench queue");
    node
}

/// Empties the bench queue (between runs: a drain leaves a million messages in it).
pub async fn purge_queue(url: &str) {
    let connection = lapin::Connection::connect(url, Default::default())
        .await
        .expect("connect to RabbitMQ");
    let channel = connection.create_channel().await.expect("channel");
    channel
        .queue_purge(QUEUE.into(), QueuePurgeOptions::default())
        .await
        .expect("purge");
    let _ = connection.close(200, "".into()).await;
}

/// Persistent, with the properties and headers pgoutbox sends (message id `{prefix}-{i}`,
/// type, content type, headers `id`, `type`, `key`), and the payload of event `i`.
fn rabbit_message(prefix: &str, i: usize) -> (BasicProperties, bytes::Bytes) {
    let id = format!("{prefix}-{i:012}");
    let mut h = FieldTable::default();
    h.insert("id".into(), AMQPValue::LongString(id.as_str().into()));
    h.insert("type".into(), AMQPValue::LongString("OrderCreated".into()));
    h.insert(
        "key".into(),
        AMQPValue::LongString(format!("agg-{}", i % 100).into()),
    );
    let props = BasicProperties::default()
        .with_message_id(id.as_str().into())
        .with_type("OrderCreated".into())
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_headers(h);
    (props, payload(i))
}

/// pgoutbox's publish options: a message no queue takes comes back.
const MANDATORY: BasicPublishOptions = BasicPublishOptions {
    mandatory: true,
    immediate: false,
};

/// A confirm-mode channel on a new connection to `url`.
async fn rabbit_confirm_channel(url: &str) -> (lapin::Connection, lapin::Channel) {
    let connection = lapin::Connection::connect(url, Default::default())
        .await
        .expect("connect to RabbitMQ");
    let channel = connection.create_channel().await.expect("channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm mode");
    (connection, channel)
}

type Publish = std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>>;

/// One publish as pgoutbox pipelines it: lapin queues its frames on the first poll, so it is
/// polled once now, in order; the rest resolves to whether the broker stored it (acked and not
/// returned: a returned message is acked too). None: it completed at once (and was stored).
async fn rabbit_publish(
    channel: &lapin::Channel,
    props: BasicProperties,
    body: bytes::Bytes,
) -> Option<Publish> {
    let channel = channel.clone();
    let mut publish: Publish = Box::pin(async move {
        let confirm = channel
            .basic_publish(EXCHANGE.into(), TOPIC.into(), MANDATORY, &body, props)
            .await
            .expect("publish");
        matches!(
            confirm.await.expect("confirm"),
            lapin::Confirmation::Ack(None)
        )
    });
    match std::future::poll_fn(|cx| std::task::Poll::Ready(publish.as_mut().poll(cx))).await {
        std::task::Poll::Ready(ack) => {
            assert!(ack, "nacked or returned");
            None
        }
        std::task::Poll::Pending => Some(publish),
    }
}

/// RabbitMQ alone, for the live rows: `per_tick` pre-built messages ([`rabbit_message`]) every
/// 10 ms for `seconds`, published as pgoutbox publishes them (pipelined, confirmed), no
/// PostgreSQL. When each was published, by sequence number.
pub async fn rabbit_paced(url: &str, per_tick: usize, seconds: u64) -> HashMap<u64, Instant> {
    let (connection, channel) = rabbit_confirm_channel(url).await;
    let mut sent = HashMap::new();
    let mut confirms = FuturesUnordered::new();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let (started, mut n) = (Instant::now(), 0);
    while started.elapsed() < Duration::from_secs(seconds) {
        tokio::select! {
            _ = tick.tick() => {
                for i in n..n + per_tick {
                    let (props, body) = rabbit_message("alone", i);
                    sent.insert(i as u64, Instant::now());
                    if let Some(publish) = rabbit_publish(&channel, props, body).await {
                        confirms.push(publish);
                    }
                }
                n += per_tick;
            }
            Some(ack) = confirms.next() => assert!(ack, "nacked or returned"),
        }
    }
    while let Some(ack) = confirms.next().await {
        assert!(ack, "nacked or returned");
    }
    let _ = connection.close(200, "".into()).await;
    sent
}

/// RabbitMQ ceiling: `n` pre-built persistent, mandatory publishes (message id, type, headers
/// `id`, `type`, `key`, as pgoutbox sends them) on one confirm-mode channel, pipelined with at
/// most 4,096 awaiting their confirm, until every one is confirmed. Seconds.
pub async fn rabbit_ceiling(url: &str, n: usize) -> f64 {
    purge_queue(url).await;
    let (connection, channel) = rabbit_confirm_channel(url).await;
    let messages: Vec<(BasicProperties, bytes::Bytes)> =
        (0..n).map(|i| rabbit_message("ceiling", i)).collect();
    let started = Instant::now();
    let mut confirms = FuturesUnordered::new();
    for (props, body) in messages {
        let Some(publish) = rabbit_publish(&channel, props, body).await else {
            continue;
        };
        confirms.push(publish);
        while confirms.len() >= 4096 {
            assert!(
                confirms.next().await.expect("confirm"),
                "nacked or returned"
            );
        }
    }
    while let Some(ack) = confirms.next().await {
        assert!(ack, "nacked or returned");
    }
    let secs = started.elapsed().as_secs_f64();
    let depth = channel
        .queue_declare(
            QUEUE.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("queue depth")
        .message_count();
    eprintln!("bench: RabbitMQ ceiling: {n} confirmed, the queue holds {depth}");
    let _ = connection.close(200, "".into()).await;
    purge_queue(url).await;
    secs
}

/// Records, per event sequence number (from the message id), when a consumer of the bench
/// queue got it (the queue emptied first), until `stop`.
pub fn rabbit_tail(
    url: String,
    received: Arc<Mutex<HashMap<u64, Instant>>>,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        purge_queue(&url).await;
        let connection = lapin::Connection::connect(&url, Default::default())
            .await
            .expect("connect to RabbitMQ");
        let channel = connection.create_channel().await.expect("channel");
        let no_ack = BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        };
        let mut deliveries = channel
            .basic_consume(QUEUE.into(), "bench".into(), no_ack, FieldTable::default())
            .await
            .expect("consume");
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                d = deliveries.next() => {
                    let Some(Ok(d)) = d else { continue };
                    let now = Instant::now();
                    let seq = d.properties.message_id().as_ref()
                        .and_then(|id| id.as_str().rsplit('-').next().and_then(|s| s.parse::<u64>().ok()));
                    if let Some(seq) = seq {
                        received.lock().expect("lock").entry(seq).or_insert(now);
                    }
                }
            }
        }
        let _ = connection.close(200, "".into()).await;
    })
}
