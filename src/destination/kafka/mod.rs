//! The Kafka destination: an idempotent rdkafka producer whose every delivery report flows
//! back to the pipeline through a channel; transactional with `delivery = exactly-once`.
//!
//! - [`admin`]: `check` and `setup` (topics, transactions, the offsets topic).
//! - [`config`]: librdkafka properties, our enforced defaults, pass-through.
//! - [`producer`]: the send call, the delivery callback, the transaction calls.
//! - [`error`]: which Kafka errors are backpressure, and the class of a refusal.
//! - [`offsets`]: the exactly-once offsets topic, `(slot, end_lsn)` per Kafka transaction.
//! - [`resume`]: which offsets record exactly-once resumes after (pure).
//! - [`api_versions`], [`transactions`]: whether the brokers offer Kafka transactions.
//! - [`topics`]: the topics pgoutbox writes to, which are missing, creating them.

pub mod admin;
pub mod api_versions;
pub mod config;
pub mod error;
pub mod offsets;
pub mod producer;
pub mod resume;
pub mod topics;
pub mod transactions;

pub use config::{KafkaConfig, KafkaConfigError, Librdkafka};
pub use producer::{probe, KafkaSink, SinkError};
