//! The producer: `send` never waits for Kafka; each delivery report comes back on a channel.

use bytes::Bytes;
use rdkafka::config::FromClientConfigAndContext;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, OwnedHeaders};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::producer::{
    BaseRecord, DeliveryResult, Producer, ProducerContext, PurgeConfig, ThreadedProducer,
};
use rdkafka::{ClientContext, Message};
use tokio::sync::mpsc;

use super::config::{KafkaConfig, KafkaConfigError};
use super::error::{classify, ErrorClass};
use crate::outbox::OutboxRecord;

/// Where a record landed.
#[derive(Debug, Clone, Copy)]
pub struct Acked {
    pub partition: i32,
    pub offset: i64,
}

/// A failed delivery, classified.
#[derive(Debug, thiserror::Error)]
#[error("Kafka delivery failed ({class:?}): {error}")]
pub struct DeliveryError {
    pub class: ErrorClass,
    pub error: KafkaError,
}

/// One delivery report, carrying back the caller's ticket.
#[derive(Debug)]
pub struct Delivery<T> {
    pub ticket: T,
    pub result: Result<Acked, DeliveryError>,
    /// On failure, the record as it was sent (for the dead-letter topic).
    pub returned: Option<Returned>,
}

/// A record librdkafka gave back with its failed delivery.
#[derive(Debug, Clone)]
pub struct Returned {
    pub topic: String,
    pub key: Option<Bytes>,
    pub payload: Option<Bytes>,
    pub headers: Vec<(String, Bytes)>,
}

/// A record the producer did not accept.
#[derive(Debug)]
pub enum SendError<T> {
    /// The local queue is full; retry after some deliveries. The ticket is handed back.
    QueueFull(T),
    /// Refused at once (e.g. larger than `message.max.bytes`).
    Rejected(T, DeliveryError),
}

/// Sends every delivery report into the pipeline's channel.
pub struct AckContext<T> {
    acks: mpsc::UnboundedSender<Delivery<T>>,
}

impl<T: Send + Sync + 'static> ClientContext for AckContext<T> {
    /// librdkafka's global errors (a broker down, a transport failure) are retried by
    /// librdkafka itself: a warning, not an error. Failed deliveries are reported separately.
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(%error, reason, "Kafka client");
    }
}

impl<T: Send + Sync + 'static> ProducerContext for AckContext<T> {
    type DeliveryOpaque = Box<T>;

    fn delivery(&self, result: &DeliveryResult<'_>, ticket: Box<T>) {
        let (result, returned) = match result {
            Ok(m) => (
                Ok(Acked {
                    partition: m.partition(),
                    offset: m.offset(),
                }),
                None,
            ),
            Err((e, m)) => (
                Err(DeliveryError {
                    class: classify(e),
                    error: e.clone(),
                }),
                Some(Returned {
                    topic: m.topic().to_owned(),
                    key: m.key().map(Bytes::copy_from_slice),
                    payload: m.payload().map(Bytes::copy_from_slice),
                    headers: m
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|h| {
                                    let v = h.value.map(Bytes::copy_from_slice);
                                    (h.key.to_owned(), v.unwrap_or_default())
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                }),
            ),
        };
        // The receiver is gone only when the pipeline has stopped; the slot resends then.
        let _ = self.acks.send(Delivery {
            ticket: *ticket,
            result,
            returned,
        });
    }
}

/// An idempotent, `acks=all` producer; transactional in exactly-once mode.
pub struct KafkaSink<T: Send + Sync + 'static> {
    // Shared with the blocking threads that run transaction calls.
    producer: Arc<ThreadedProducer<AckContext<T>>>,
}

impl<T: Send + Sync + 'static> KafkaSink<T> {
    /// Creates the producer; delivery reports go to `acks`.
    pub fn new(
        cfg: &KafkaConfig,
        acks: mpsc::UnboundedSender<Delivery<T>>,
    ) -> Result<Self, SinkError> {
        let client = cfg.producer_config()?;
        let producer = ThreadedProducer::from_config_and_context(&client, AckContext { acks })
            .map_err(SinkError::Create)?;
        Ok(KafkaSink {
            producer: Arc::new(producer),
        })
    }

    /// Registers the `transactional.id` with the cluster: a previous instance with the same
    /// id is fenced and its open transaction aborted.
    pub async fn init_transactions(&self, timeout: Duration) -> Result<(), TxnError> {
        self.blocking(move |p| p.init_transactions(timeout)).await
    }

    /// Opens a Kafka transaction (a local call).
    pub fn begin_transaction(&self) -> Result<(), TxnError> {
        self.producer.begin_transaction().map_err(TxnError::from)
    }

    /// Flushes and commits the open transaction.
    pub async fn commit_transaction(&self, timeout: Duration) -> Result<(), TxnError> {
        self.blocking(move |p| p.commit_transaction(timeout)).await
    }

    /// Aborts the open transaction; its records stay invisible to read_committed consumers.
    pub async fn abort_transaction(&self, timeout: Duration) -> Result<(), TxnError> {
        self.blocking(move |p| p.abort_transaction(timeout)).await
    }

    /// Runs a blocking librdkafka call off the async threads.
    async fn blocking(
        &self,
        f: impl FnOnce(&ThreadedProducer<AckContext<T>>) -> Result<(), KafkaError> + Send + 'static,
    ) -> Result<(), TxnError> {
        let producer = self.producer.clone();
        tokio::task::spawn_blocking(move || f(&producer))
            .await
            .map_err(|e| TxnError {
                fatal: true,
                abortable: false,
                message: format!("transaction call panicked: {e}"),
            })?
            .map_err(TxnError::from)
    }

    /// Enqueues a record without waiting; its delivery report will carry `ticket`.
    pub fn send(&self, record: &OutboxRecord, ticket: T) -> Result<(), SendError<T>> {
        let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
        for (k, v) in &record.headers {
            headers = headers.insert(Header {
                key: k,
                value: Some(v.as_ref()),
            });
        }
        let mut rec: BaseRecord<'_, [u8], [u8], Box<T>> =
            BaseRecord::with_opaque_to(&record.topic, Box::new(ticket)).headers(headers);
        if let Some(k) = &record.key {
            rec = rec.key(k.as_ref());
        }
        if let Some(p) = record.partition {
            rec = rec.partition(p);
        }
        if let Some(p) = &record.payload {
            rec = rec.payload(p.as_ref());
        }
        self.producer.send(rec).map_err(|(error, rec)| {
            let ticket = *rec.delivery_opaque;
            match classify(&error) {
                ErrorClass::Backpressure => SendError::QueueFull(ticket),
                class => SendError::Rejected(ticket, DeliveryError { class, error }),
            }
        })
    }

    /// Why the producer was fenced (another instance took over its `transactional.id`),
    /// if it was: librdkafka keeps the fatal error, whichever call noticed it first.
    pub fn fenced(&self) -> Option<String> {
        self.producer
            .client()
            .fatal_error()
            .map(|(code, text)| format!("{text} ({code:?})"))
            .filter(|e| e.contains("fenced"))
    }

    /// Messages queued or awaiting acks inside librdkafka.
    pub fn in_flight(&self) -> i32 {
        self.producer.in_flight_count()
    }

    /// Drops everything not yet acked (their events stay unconfirmed, so the slot resends).
    pub fn abort(&self) {
        self.producer
            .purge(PurgeConfig::default().queue().inflight());
    }
}

/// A failed transaction call, with what librdkafka says may follow.
#[derive(Debug, Clone, thiserror::Error)]
#[error("Kafka transaction: {message}")]
pub struct TxnError {
    /// The producer is unusable, e.g. fenced by a newer instance with the same id.
    pub fatal: bool,
    /// The transaction must be aborted; the producer stays usable.
    pub abortable: bool,
    pub message: String,
}

impl From<KafkaError> for TxnError {
    fn from(e: KafkaError) -> Self {
        match &e {
            KafkaError::Transaction(t) => TxnError {
                fatal: t.is_fatal(),
                abortable: t.txn_requires_abort(),
                message: t.to_string(),
            },
            other => TxnError {
                fatal: false,
                abortable: false,
                message: other.to_string(),
            },
        }
    }
}

/// The producer could not be created.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error(transparent)]
    Config(#[from] KafkaConfigError),
    #[error("creating the Kafka producer: {0}")]
    Create(KafkaError),
    #[error("Kafka brokers unreachable: {0}")]
    Unreachable(KafkaError),
}

/// Asks the cluster for metadata with the producer's settings: how many brokers answered.
/// Blocking (librdkafka); call it from a blocking thread.
pub fn probe(cfg: &KafkaConfig, timeout: std::time::Duration) -> Result<usize, SinkError> {
    let producer: rdkafka::producer::BaseProducer =
        cfg.producer_config()?.create().map_err(SinkError::Create)?;
    let md = producer
        .client()
        .fetch_metadata(None, timeout)
        .map_err(SinkError::Unreachable)?;
    Ok(md.brokers().len())
}
