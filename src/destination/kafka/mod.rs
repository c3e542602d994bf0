//! The Kafka destination: an idempotent rdkafka producer whose every delivery report flows
//! back to the pipeline through a channel; transactional with `delivery = exactly-once`.
//!
//! - [`config`]: librdkafka properties, our enforced defaults, pass-through.
//! - [`producer`]: the send call, the delivery callback, the transaction calls.
//! - [`error`]: which Kafka errors are backpressure, and the class of a refusal.
//! - [`offsets`]: the exactly-once offsets topic, `(slot, end_lsn)` per Kafka transaction.

pub mod config;
pub mod error;
pub mod offsets;
pub mod producer;

pub use config::{KafkaConfig, KafkaConfigError, Librdkafka};
pub use producer::{probe, KafkaSink, SinkError};
