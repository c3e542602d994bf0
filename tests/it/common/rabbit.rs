//! RabbitMQ side of the harness: a real throwaway node, the outbox exchange with a queue bound
//! to every event and one to the dead letters, and a collector that consumes a queue for the
//! whole test (acking what it recorded), so that a test can look at everything delivered so far.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions};
use lapin::types::{AMQPValue, FieldTable};
use pgoutbox::embedded::rabbitmq::declare_queue;
use pgoutbox::embedded::TempRabbit;
use pgoutbox::Config;
use tokio::task::JoinHandle;

use super::Env;

pub const EXCHANGE: &str = "outbox";
/// Bound to `outbox.event.#`: every event.
pub const EVENTS: &str = "events";
/// Bound to `pgoutbox.dead-letter`.
pub const DEAD: &str = "dead-letters";

/// One delivered message.
#[derive(Debug, Clone)]
pub struct Got {
    pub routing_key: String,
    pub message_id: String,
    pub kind: String,
    pub content_type: String,
    pub persistent: bool,
    pub headers: Vec<(String, String)>,
    pub payload: Vec<u8>,
}

impl Got {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The event id (`id` header).
    pub fn id(&self) -> String {
        self.header("id").unwrap_or_default().to_owned()
    }

    pub fn seq(&self) -> u64 {
        serde_json::from_slice::<serde_json::Value>(&self.payload)
            .ok()
            .and_then(|v| v["seq"].as_u64())
            .unwrap_or(0)
    }
}

/// A throwaway node with the outbox exchange, the events queue and the dead-letter queue.
pub async fn start() -> TempRabbit {
    let node = tokio::task::spawn_blocking(TempRabbit::start)
        .await
        .unwrap()
        .expect("start rabbitmq-server (apt-get install rabbitmq-server)");
    declare_queue(
        &node.url(),
        EXCHANGE,
        EVENTS,
        "outbox.event.#",
        FieldTable::default(),
    )
    .await
    .unwrap();
    declare_queue(
        &node.url(),
        EXCHANGE,
        DEAD,
        "pgoutbox.dead-letter",
        FieldTable::default(),
    )
    .await
    .unwrap();
    node
}

/// The arguments of a queue that takes at most `max` messages and then refuses publishes
/// (the broker nacks them).
pub fn bounded(max: i64) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongLongInt(max));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    args
}

/// `env`'s configuration, delivering to `node`.
pub fn config(env: &Env, node: &TempRabbit) -> Config {
    let mut c = env.config();
    c.destination = pgoutbox::config::DestinationKind::RabbitMq;
    c.rabbitmq.url = node.url();
    c
}

/// The environment of the binary delivering to `node`.
pub fn binary_env(node: &TempRabbit) -> Vec<(&'static str, String)> {
    vec![
        ("PGOUTBOX_DESTINATION", "rabbitmq".into()),
        ("PGOUTBOX_RABBITMQ_URL", node.url()),
    ]
}

/// Consumes a queue for the whole test: every message once, in delivery order (a redelivery
/// after the collector's own reconnect is skipped).
pub struct Collector {
    got: Arc<Mutex<Vec<Got>>>,
    task: JoinHandle<()>,
}

impl Collector {
    pub fn start(url: String, queue: &'static str) -> Self {
        Self::start_paced(url, queue, None)
    }

    /// As [`start`](Self::start), taking at most 5 messages at a time and pausing `pace`
    /// after each: a slow consumer, so that a bounded queue fills and frees space again and
    /// again.
    pub fn start_paced(url: String, queue: &'static str, pace: Option<Duration>) -> Self {
        let got = Arc::new(Mutex::new(Vec::new()));
        let into = got.clone();
        let task = tokio::spawn(async move {
            loop {
                let _ = consume(&url, queue, &into, pace).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        Collector { got, task }
    }

    pub fn snapshot(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }

    /// Waits until every id in `ids` arrived (or `timeout`), then for `quiet` more.
    pub async fn until_all(&self, ids: &HashSet<String>, timeout: Duration) -> Vec<Got> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let seen: HashSet<String> = self.snapshot().iter().map(Got::id).collect();
            if ids.is_subset(&seen) || tokio::time::Instant::now() > deadline {
                tokio::time::sleep(Duration::from_millis(500)).await;
                return self.snapshot();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Collector {
    /// Waits until nothing new has arrived for `quiet`; everything so far.
    pub async fn until_quiet(&self, quiet: Duration) -> Vec<Got> {
        let mut last = usize::MAX;
        loop {
            let n = self.got.lock().unwrap().len();
            if n == last {
                return self.snapshot();
            }
            last = n;
            tokio::time::sleep(quiet).await;
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn consume(
    url: &str,
    queue: &str,
    into: &Mutex<Vec<Got>>,
    pace: Option<Duration>,
) -> Result<(), lapin::Error> {
    // A node still booting may take the TCP connection and not answer yet, and a dead one
    // may go unnoticed: bound the handshake, and let heartbeats find a silent connection.
    let url = format!("{url}?heartbeat=2");
    let connect = lapin::Connection::connect(&url, Default::default());
    let Ok(connection) = tokio::time::timeout(Duration::from_secs(5), connect).await else {
        return Ok(());
    };
    let connection = connection?;
    let channel = connection.create_channel().await?;
    if pace.is_some() {
        channel
            .basic_qos(5, lapin::options::BasicQosOptions::default())
            .await?;
    }
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "collector".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    while let Some(d) = consumer.next().await {
        let d = d?;
        let p = &d.properties;
        let text = |v: &AMQPValue| match v {
            AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
            other => format!("{other:?}"),
        };
        let headers: Vec<(String, String)> = p
            .headers()
            .as_ref()
            .map(|h| {
                h.inner()
                    .iter()
                    .map(|(k, v)| (k.to_string(), text(v)))
                    .collect()
            })
            .unwrap_or_default();
        let short = |s: &Option<lapin::types::ShortString>| {
            s.as_ref().map(|s| s.to_string()).unwrap_or_default()
        };
        let got = Got {
            routing_key: d.routing_key.to_string(),
            message_id: short(p.message_id()),
            kind: short(p.kind()),
            content_type: short(p.content_type()),
            persistent: *p.delivery_mode() == Some(2),
            headers,
            payload: d.data.clone(),
        };
        {
            let mut all = into.lock().unwrap();
            let again = d.redelivered && all.iter().any(|g| g.id() == got.id());
            if !again {
                all.push(got);
            }
        }
        d.ack(BasicAckOptions::default()).await?;
        if let Some(pace) = pace {
            tokio::time::sleep(pace).await;
        }
    }
    Ok(())
}

/// Per key (`key` header), the payload sequence numbers must increase in delivery order.
pub fn order_violations(got: &[Got]) -> usize {
    let mut last: std::collections::HashMap<String, u64> = Default::default();
    let mut seen = HashSet::new();
    let mut violations = 0;
    for m in got {
        if !seen.insert(m.id()) {
            continue;
        }
        let key = m.header("key").unwrap_or_default().to_owned();
        if last.insert(key, m.seq()).is_some_and(|prev| prev > m.seq()) {
            violations += 1;
        }
    }
    violations
}

impl super::Delivered for Got {
    fn event_id(&self) -> String {
        self.id()
    }
}
