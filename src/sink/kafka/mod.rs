//! The Kafka sink: an idempotent rdkafka producer whose every delivery report flows back to
//! the pipeline (and so to the watermark) through a channel.
//!
//! - [`config`]: librdkafka properties, our enforced defaults, pass-through.
//! - [`producer`]: the send call and the delivery callback.
//! - [`error`]: which Kafka errors are backpressure, final or retriable.
//! - [`offsets`]: the exactly-once offsets topic, `(slot, end_lsn)` per Kafka transaction.

pub mod config;
pub mod error;
pub mod offsets;
pub mod producer;

pub use config::{KafkaConfig, KafkaConfigError};
pub use error::{classify, ErrorClass};
pub use producer::{
    probe, Acked, Delivery, DeliveryError, KafkaSink, Returned, SendError, SinkError, TxnError,
};
