//! Where outbox records go. Today: Kafka.

pub mod kafka;
