//! The producer: `send` never waits for Kafka; each delivery report comes back on a channel.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::config::FromClientConfigAndContext;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{
    BaseRecord, DeliveryResult, Producer, ProducerContext, PurgeConfig, ThreadedProducer,
};
use rdkafka::{ClientContext, Message};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use super::config::{KafkaConfig, KafkaConfigError, Librdkafka};
use super::error::{is_backpressure, refusal};
use super::offsets::{self, OffsetRecord, OffsetsError, ProbeRecord};
use crate::config::{Config, Plan};
use crate::destination::{
    Class, Destination, DestinationError, Outcome, Receipt, Refusal, Returned, SendError,
    TXN_HEADER,
};
use crate::lsn::Lsn;
use crate::outbox::{is_valid_topic, OutboxRecord};

/// How long a Kafka transaction commit may take before the session gives up on it.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(30);

/// What travels with a record through librdkafka: the caller's ticket, or, for the
/// destination's own offsets record, where its delivery report is awaited.
pub enum Opaque<T> {
    Event(T),
    Control(oneshot::Sender<Result<(), Refusal>>),
}

/// Sends every delivery report into the pipeline's channel.
pub(crate) struct AckContext<T> {
    acks: mpsc::UnboundedSender<Outcome<T>>,
}

impl<T: Send + Sync + 'static> ClientContext for AckContext<T> {
    /// librdkafka's global errors (a broker down, a transport failure) are retried by
    /// librdkafka itself: a warning, not an error. Failed deliveries are reported separately.
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(%error, reason, "Kafka client");
    }
}

/// The record librdkafka hands back with a failed delivery.
fn returned(m: &rdkafka::message::BorrowedMessage<'_>) -> Returned {
    Returned {
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
    }
}

impl<T: Send + Sync + 'static> ProducerContext for AckContext<T> {
    type DeliveryOpaque = Box<Opaque<T>>;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: Box<Opaque<T>>) {
        let ticket = match *opaque {
            Opaque::Event(t) => t,
            Opaque::Control(done) => {
                let _ = done.send(result.as_ref().map(|_| ()).map_err(|(e, _)| refusal(e)));
                return;
            }
        };
        let outcome = match result {
            Ok(m) => Outcome {
                ticket,
                result: Ok(Receipt {
                    partition: m.partition(),
                    offset: m.offset(),
                }),
                returned: None,
            },
            Err((e, m)) => Outcome {
                ticket,
                result: Err(refusal(e)),
                returned: Some(returned(m)),
            },
        };
        // The receiver is gone only when the pipeline has stopped; the slot resends then.
        let _ = self.acks.send(outcome);
    }
}

/// An idempotent, `acks=all` producer; transactional in exactly-once mode.
pub struct KafkaSink<T: Send + Sync + 'static> {
    // Shared with the blocking threads that run transaction calls.
    producer: Arc<ThreadedProducer<AckContext<T>>>,
    settings: KafkaConfig,
    slot: String,
    offsets_topic: String,
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

impl From<SinkError> for DestinationError {
    fn from(e: SinkError) -> Self {
        match e {
            SinkError::Unreachable(_) => DestinationError::Unavailable(e.to_string()),
            _ => DestinationError::Config(e.to_string()),
        }
    }
}

impl From<OffsetsError> for DestinationError {
    fn from(e: OffsetsError) -> Self {
        match e {
            OffsetsError::Config(_) => DestinationError::Config(e.to_string()),
            _ => DestinationError::Unavailable(e.to_string()),
        }
    }
}

/// A failed transaction call, with what librdkafka says may follow.
fn txn_error(e: KafkaError) -> DestinationError {
    match &e {
        KafkaError::Transaction(t) => DestinationError::Transaction {
            // A broker without the API (EndTxn) refuses every retry alike.
            fatal: t.is_fatal() || t.code() == rdkafka::types::RDKafkaErrorCode::UnsupportedFeature,
            abortable: t.txn_requires_abort(),
            message: format!("Kafka transaction: {t}"),
        },
        other => DestinationError::Transaction {
            fatal: false,
            abortable: false,
            message: format!("Kafka transaction: {other}"),
        },
    }
}

impl<T: Send + Sync + 'static> KafkaSink<T> {
    /// Creates the producer for `plan`; delivery reports go to `acks`.
    pub fn new(
        cfg: &KafkaConfig,
        plan: Plan,
        acks: mpsc::UnboundedSender<Outcome<T>>,
    ) -> Result<Self, SinkError> {
        let client = cfg.producer_config(plan)?;
        let producer = ThreadedProducer::from_config_and_context(&client, AckContext { acks })
            .map_err(SinkError::Create)?;
        Ok(KafkaSink {
            producer: Arc::new(producer),
            settings: cfg.clone(),
            slot: String::new(),
            offsets_topic: String::new(),
        })
    }

    /// Runs a blocking librdkafka call off the async threads.
    async fn blocking(
        &self,
        f: impl FnOnce(&ThreadedProducer<AckContext<T>>) -> Result<(), KafkaError> + Send + 'static,
    ) -> Result<(), DestinationError> {
        let producer = self.producer.clone();
        tokio::task::spawn_blocking(move || f(&producer))
            .await
            .map_err(|e| DestinationError::Transaction {
                fatal: true,
                abortable: false,
                message: format!("transaction call panicked: {e}"),
            })?
            .map_err(txn_error)
    }

    fn produce(
        &self,
        record: &OutboxRecord,
        opaque: Opaque<T>,
    ) -> Result<(), (KafkaError, Opaque<T>)> {
        let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
        for (k, v) in &record.headers {
            headers = headers.insert(Header {
                key: k,
                value: Some(v.as_ref()),
            });
        }
        let mut rec: BaseRecord<'_, [u8], [u8], Box<Opaque<T>>> =
            BaseRecord::with_opaque_to(&record.topic, Box::new(opaque)).headers(headers);
        if let Some(k) = &record.key {
            rec = rec.key(k.as_ref());
        }
        if let Some(p) = record.partition {
            rec = rec.partition(p);
        }
        if let Some(p) = &record.payload {
            rec = rec.payload(p.as_ref());
        }
        self.producer
            .send(rec)
            .map_err(|(error, rec)| (error, *rec.delivery_opaque))
    }

    /// Writes the offsets record of the open transaction and waits for its ack.
    async fn write_offsets(&self, end: Lsn, tag: &Bytes) -> Result<(), DestinationError> {
        let offset = OffsetRecord {
            slot: self.slot.clone(),
            end_lsn: end,
            txn: String::from_utf8_lossy(tag).into_owned(),
        };
        self.write_control(self.slot.clone(), offset.encode(), end, tag.clone())
            .await
    }

    /// Writes one record of pgoutbox's own to the offsets topic in the open transaction,
    /// and waits for its ack.
    async fn write_control(
        &self,
        key: String,
        value: Vec<u8>,
        lsn: Lsn,
        tag: Bytes,
    ) -> Result<(), DestinationError> {
        let rec = OutboxRecord {
            topic: self.offsets_topic.clone(),
            key: Some(Bytes::from(key)),
            partition: None,
            headers: vec![(TXN_HEADER.to_owned(), tag)],
            payload: Some(Bytes::from(value)),
            event_id: Bytes::from_static(b"offsets"),
            lsn,
        };
        let (done, acked) = oneshot::channel();
        let mut opaque = Opaque::Control(done);
        loop {
            match self.produce(&rec, opaque) {
                Ok(()) => break,
                Err((e, back)) if is_backpressure(&e) => {
                    opaque = back;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => return Err(abortable(format!("offsets record: {e}"))),
            }
        }
        match acked.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(r)) => Err(abortable(format!("offsets record: {r}"))),
            Err(_) => Err(abortable("offsets record: no delivery report".into())),
        }
    }
}

impl<T: Send + Sync + 'static> KafkaSink<T> {
    /// One transaction holding only a probe record (`nonce`), acked, then aborted: a broker
    /// that hides aborted transactions never shows it to the read that follows.
    async fn abort_probe(&self, nonce: &str) -> Result<(), DestinationError> {
        let key = ProbeRecord::key(&self.slot);
        let value = ProbeRecord {
            probe: nonce.to_owned(),
        };
        self.begin()?;
        let written = self
            .write_control(
                key,
                value.encode(),
                Lsn::ZERO,
                Bytes::from_static(b"abort-probe"),
            )
            .await;
        self.abort().await;
        written.map_err(|e| match e {
            DestinationError::Transaction { message, .. } => {
                DestinationError::Unavailable(format!("exactly-once abort probe: {message}"))
            }
            other => other,
        })
    }
}

fn abortable(message: String) -> DestinationError {
    DestinationError::Transaction {
        fatal: false,
        abortable: true,
        message: format!("Kafka transaction: {message}"),
    }
}

impl<T: Send + Sync + 'static> Destination<T> for KafkaSink<T> {
    const NAME: &'static str = "kafka";
    type Admin = super::admin::KafkaAdmin;
    const TITLE: &'static str = "Kafka";

    async fn open(
        cfg: &Config,
        outcomes: mpsc::UnboundedSender<Outcome<T>>,
    ) -> Result<Self, DestinationError> {
        let mut sink = KafkaSink::new(&cfg.producer(), cfg.plan(), outcomes)?;
        sink.slot = cfg.slot.clone();
        sink.offsets_topic = cfg.offsets_topic.clone();
        Ok(sink)
    }

    fn send(&self, record: OutboxRecord, ticket: T) -> Result<(), SendError<T>> {
        if !is_valid_topic(&record.topic) {
            let r = Refusal::new(
                Class::InvalidTopic,
                format!("{:?} is not a valid Kafka topic name", record.topic),
            );
            return Err(SendError::Refused(ticket, r, record));
        }
        // librdkafka copies the record; the opaque carries only the ticket.
        self.produce(&record, Opaque::Event(ticket))
            .map_err(|(error, opaque)| {
                let ticket = match opaque {
                    Opaque::Event(ticket) => ticket,
                    Opaque::Control(_) => {
                        unreachable!("produce hands back the opaque it was given")
                    }
                };
                match is_backpressure(&error) {
                    true => SendError::Full(ticket, record),
                    false => SendError::Refused(ticket, refusal(&error), record),
                }
            })
    }

    /// Drops everything not yet acked; purged records report back as failed deliveries.
    fn purge(&self) {
        self.producer
            .purge(PurgeConfig::default().queue().inflight());
    }

    async fn close(self) {
        // Dropping the producer blocks briefly while librdkafka shuts down.
        let _ = tokio::task::spawn_blocking(move || drop(self)).await;
    }

    /// Refuses a broker without transactions and an offsets topic that is missing or not
    /// compacted; `init_transactions` then fences any older instance with our
    /// `transactional.id` (and aborts its open transaction); an aborted probe transaction
    /// shows whether the brokers hide aborted records; and the offsets topic, read
    /// committed, says which PostgreSQL transactions are in Kafka already (`resume.rs`).
    async fn resume(&self, limit: Duration) -> Result<Lsn, DestinationError> {
        use super::resume::{resume_after, Probe};
        use super::topics::{offsets_topic, OffsetsTopic};
        use super::transactions::{offered, refusal, Support};
        let offered = offered(&self.settings, limit)
            .await
            .map_err(DestinationError::Unavailable)?;
        if let Support::Lacking { broker, missing } = offered.transactions() {
            return Err(DestinationError::Config(refusal(&broker, &missing)));
        }
        let topic = self.offsets_topic.clone();
        debug!("exactly-once: transactions offered; checking the offsets topic");
        let state = offsets_topic(&self.settings, &topic, offered.describe_configs(), limit)
            .await
            .map_err(DestinationError::Unavailable)?;
        if let Some(problem) = state.problem(&topic) {
            return Err(DestinationError::Config(problem));
        }
        if state == OffsetsTopic::Unverified {
            warn!(%topic, "the brokers do not describe topic configs: whether the exactly-once offsets topic is compacted is not verified");
        }
        debug!(?state, "exactly-once: offsets topic");
        let t = Instant::now();
        self.blocking(move |p| p.init_transactions(limit)).await?;
        debug!(took = ?t.elapsed(), "init_transactions");
        let nonce = format!("{:016x}", rand::random::<u64>());
        let probe = match self.settings.trust_read_committed {
            true => Probe::Trusted,
            false => {
                self.abort_probe(&nonce).await?;
                Probe::Aborted { nonce: &nonce }
            }
        };
        let (kafka, slot) = (self.settings.clone(), self.slot.clone());
        let read_topic = topic.clone();
        let reads =
            tokio::task::spawn_blocking(move || offsets::read(&kafka, &read_topic, &slot, limit))
                .await
                .map_err(|e| DestinationError::Unavailable(format!("offsets reader: {e}")))??;
        let last = resume_after(&reads, probe, &topic)
            .map_err(|e| DestinationError::Config(e.to_string()))?;
        Ok(match last {
            Some(r) => {
                info!(txn = %r.txn, end_lsn = %r.end_lsn, %topic,
                    "exactly-once: resuming after Kafka transaction");
                r.end_lsn
            }
            None => {
                info!(%topic, "exactly-once: no committed offset yet");
                Lsn::ZERO
            }
        })
    }

    fn begin(&self) -> Result<(), DestinationError> {
        self.producer.begin_transaction().map_err(txn_error)
    }

    /// The offsets record is the last thing written before the commit, and acked first:
    /// committing with a record in flight costs librdkafka about 100 ms (measured).
    async fn commit(&self, end: Lsn, tag: &Bytes) -> Result<(), DestinationError> {
        self.write_offsets(end, tag).await?;
        self.blocking(move |p| p.commit_transaction(COMMIT_TIMEOUT))
            .await
    }

    /// Its records stay invisible to read_committed consumers.
    async fn abort(&self) {
        let _ = self
            .blocking(move |p| p.abort_transaction(COMMIT_TIMEOUT))
            .await;
    }

    /// librdkafka keeps the fatal error, whichever call noticed it first.
    fn fenced(&self) -> Option<String> {
        let id = self
            .settings
            .transactional_id
            .as_deref()
            .unwrap_or("pgoutbox");
        self.producer
            .client()
            .fatal_error()
            .map(|(code, text)| format!("{text} ({code:?})"))
            .filter(|e| e.contains("fenced"))
            .map(|e| format!("another pgoutbox with transactional.id {id:?} has taken over ({e})"))
    }
}

/// Asks the cluster for metadata with the producer's settings: how many brokers answered.
/// Blocking (librdkafka); call it from a blocking thread.
pub fn probe(
    cfg: &KafkaConfig,
    plan: Plan,
    timeout: std::time::Duration,
) -> Result<usize, SinkError> {
    let producer: rdkafka::producer::BaseProducer = cfg
        .producer_config(plan)?
        .create()
        .map_err(SinkError::Create)?;
    let md = producer
        .client()
        .fetch_metadata(None, timeout)
        .map_err(SinkError::Unreachable)?;
    Ok(md.brokers().len())
}
