//! librdkafka's mock cluster as a throwaway broker, plus a small consumer to read it back.
//!
//! The mock cluster handle is not `Send`, so it lives on its own thread and is driven by
//! commands; [`TempKafka`] is the thread's `Send + Sync` remote control.

use std::sync::mpsc as std_mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::Producer;

use rdkafka::message::Headers;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use super::EmbeddedError;

type Reply = std_mpsc::Sender<Result<(), String>>;

enum Cmd {
    CreateTopic(String, i32, Reply),
    Advertise(i32, u16, Reply),
    BrokersUp(bool, Reply),
    RequestErrors(RDKafkaApiKey, Vec<RDKafkaRespErr>, Reply),
}

/// A running mock Kafka cluster on loopback. Stops when dropped.
pub struct TempKafka {
    bootstrap: String,
    brokers: i32,
    cmds: Option<std_mpsc::Sender<Cmd>>,
    thread: Option<JoinHandle<()>>,
}

impl TempKafka {
    /// Starts a cluster of `brokers` brokers.
    pub fn start(brokers: i32) -> Result<Self, EmbeddedError> {
        let (boot_tx, boot_rx) = std_mpsc::channel();
        let (cmd_tx, cmd_rx) = std_mpsc::channel::<Cmd>();
        let thread = std::thread::Builder::new()
            .name("kafka-mock".into())
            .spawn(move || {
                // A client that owns a mock cluster (test.mock.num.brokers) gives access to
                // the raw handle, for the one call rdkafka's wrapper lacks (set_host_port).
                let owner: Result<rdkafka::producer::BaseProducer, _> = ClientConfig::new()
                    .set("test.mock.num.brokers", brokers.to_string())
                    .create();
                let owner = match owner {
                    Ok(o) => o,
                    Err(e) => {
                        let _ = boot_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let Some(cluster) = owner.client().mock_cluster() else {
                    let _ = boot_tx.send(Err("the client has no mock cluster".into()));
                    return;
                };
                // SAFETY: the handle belongs to `owner`, which outlives every use below.
                let raw = unsafe {
                    rdkafka::bindings::rd_kafka_handle_mock_cluster(owner.client().native_ptr())
                };
                let _ = boot_tx.send(Ok(cluster.bootstrap_servers()));
                // Runs until every sender is dropped.
                for cmd in cmd_rx {
                    match cmd {
                        Cmd::CreateTopic(name, partitions, reply) => {
                            let r = cluster.create_topic(&name, partitions, 1);
                            let _ = reply.send(r.map_err(|e| e.to_string()));
                        }
                        Cmd::BrokersUp(up, reply) => {
                            let r = (1..=brokers).try_for_each(|id| {
                                if up {
                                    cluster.broker_up(id)
                                } else {
                                    cluster.broker_down(id)
                                }
                            });
                            let _ = reply.send(r.map_err(|e| e.to_string()));
                        }
                        Cmd::Advertise(id, port, reply) => {
                            let host = c"127.0.0.1";
                            // SAFETY: `raw` is live (see above); host is a valid C string.
                            unsafe {
                                rdkafka::bindings::rd_kafka_mock_broker_set_host_port(
                                    raw,
                                    id,
                                    host.as_ptr(),
                                    i32::from(port),
                                )
                            };
                            let _ = reply.send(Ok(()));
                        }
                        Cmd::RequestErrors(api, errors, reply) => {
                            cluster.request_errors(api, &errors);
                            let _ = reply.send(Ok(()));
                        }
                    }
                }
            })?;
        let bootstrap = boot_rx
            .recv()
            .map_err(|e| EmbeddedError::Kafka(e.to_string()))?
            .map_err(EmbeddedError::Kafka)?;
        Ok(TempKafka {
            bootstrap,
            brokers,
            cmds: Some(cmd_tx),
            thread: Some(thread),
        })
    }

    /// `bootstrap.servers` for clients, e.g. `127.0.0.1:40123,127.0.0.1:40125`.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    /// Number of brokers in the cluster.
    pub fn brokers(&self) -> i32 {
        self.brokers
    }

    /// Creates a topic with `partitions` partitions.
    pub fn create_topic(&self, name: &str, partitions: i32) -> Result<(), EmbeddedError> {
        self.call(|r| Cmd::CreateTopic(name.to_owned(), partitions, r))
    }

    /// Makes broker `id` (1-based) advertise 127.0.0.1:`port` in metadata, e.g. a proxy's port,
    /// so clients reach it through that proxy.
    pub fn advertise(&self, id: i32, port: u16) -> Result<(), EmbeddedError> {
        self.call(|r| Cmd::Advertise(id, port, r))
    }

    /// Takes every broker down (connections refused) or brings them back.
    pub fn set_brokers_up(&self, up: bool) -> Result<(), EmbeddedError> {
        self.call(|r| Cmd::BrokersUp(up, r))
    }

    /// Makes the next Produce requests fail with these errors, in order.
    pub fn inject_produce_errors(&self, errors: Vec<RDKafkaRespErr>) -> Result<(), EmbeddedError> {
        self.inject_errors(RDKafkaApiKey::Produce, errors)
    }

    /// The next requests of type `api` (any broker) fail with `errors`, one each, in order.
    pub fn inject_errors(
        &self,
        api: RDKafkaApiKey,
        errors: Vec<RDKafkaRespErr>,
    ) -> Result<(), EmbeddedError> {
        self.call(|r| Cmd::RequestErrors(api, errors, r))
    }

    fn call(&self, make: impl FnOnce(Reply) -> Cmd) -> Result<(), EmbeddedError> {
        let (tx, rx) = std_mpsc::channel();
        self.cmds
            .as_ref()
            .ok_or_else(|| EmbeddedError::Kafka("stopped".into()))?
            .send(make(tx))
            .map_err(|_| EmbeddedError::Kafka("mock cluster thread is gone".into()))?;
        rx.recv()
            .map_err(|_| EmbeddedError::Kafka("mock cluster thread is gone".into()))?
            .map_err(EmbeddedError::Kafka)
    }
}

impl Drop for TempKafka {
    fn drop(&mut self) {
        self.cmds.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A record as a consumer read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumedRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl ConsumedRecord {
    /// The first header with this name.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }
}

/// Reads topics from the beginning, without a consumer group (plain partition assignment).
pub struct TopicReader {
    consumer: StreamConsumer,
}

impl TopicReader {
    /// Assigns every partition of each `(topic, partitions)` from offset zero.
    pub fn new(bootstrap: &str, topics: &[(&str, i32)]) -> Result<Self, EmbeddedError> {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", "pgoutbox-reader")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .set("fetch.wait.max.ms", "50")
            .create()
            .map_err(|e| EmbeddedError::Kafka(e.to_string()))?;
        let mut tpl = TopicPartitionList::new();
        for (topic, partitions) in topics {
            for p in 0..*partitions {
                tpl.add_partition_offset(topic, p, Offset::Beginning)
                    .map_err(|e| EmbeddedError::Kafka(e.to_string()))?;
            }
        }
        consumer
            .assign(&tpl)
            .map_err(|e| EmbeddedError::Kafka(e.to_string()))?;
        Ok(TopicReader { consumer })
    }

    /// The next record, or `None` if none arrives within `timeout`. Transient consumer errors
    /// (a broker down, a connection reset) are skipped, as a real consumer keeps polling.
    pub async fn next(&self, timeout: Duration) -> Result<Option<ConsumedRecord>, EmbeddedError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let m = match tokio::time::timeout_at(deadline, self.consumer.recv()).await {
                Err(_) => return Ok(None),
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "consumer error (retrying)");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                Ok(Ok(m)) => m,
            };
            return Ok(Some(ConsumedRecord {
                topic: m.topic().to_owned(),
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(<[u8]>::to_vec),
                payload: m.payload().map(<[u8]>::to_vec),
                headers: m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                            .collect()
                    })
                    .unwrap_or_default(),
            }));
        }
    }

    /// Reads until `n` records arrived or nothing new came for `idle`.
    pub async fn read(
        &self,
        n: usize,
        idle: Duration,
    ) -> Result<Vec<ConsumedRecord>, EmbeddedError> {
        let mut out = Vec::new();
        while out.len() < n {
            match self.next(idle).await? {
                Some(r) => out.push(r),
                None => break,
            }
        }
        Ok(out)
    }
}
