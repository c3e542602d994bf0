//! Throwaway infrastructure for `pgoutbox demo`, the integration tests and benchmarks:
//! a real PostgreSQL cluster with `wal_level=logical` on its own port and data dir, and
//! librdkafka's mock cluster, a real Kafka-protocol broker on loopback; and a real NATS
//! server with JetStream (Debian's `nats-server`); a real RabbitMQ node (Debian's
//! `rabbitmq-server`); tansu, a second Kafka-protocol broker with durable storage.

pub mod kafka;
pub mod nats;
pub mod nats_cluster;
pub mod postgres;
pub mod rabbitmq;
pub mod tansu;

pub use kafka::{ConsumedRecord, TempKafka, TopicReader};
pub use nats::TempNats;
pub use nats_cluster::TempNatsCluster;
pub use postgres::{PostgresOptions, TempPostgres};
pub use rabbitmq::TempRabbit;
pub use tansu::TempTansu;

/// The TLS a throwaway server offers: its certificate and key (PEM), and for mutual TLS the
/// CA (PEM) that must have signed every client's certificate.
#[derive(Debug, Clone, Copy)]
pub struct ServerTls<'a> {
    pub cert: &'a str,
    pub key: &'a str,
    pub client_ca: Option<&'a str>,
}

/// Starting or driving embedded infrastructure failed.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error(
        "PostgreSQL server binaries not found: run `apt-get install -y postgresql` (Debian) or set PGOUTBOX_PG_BIN to the directory holding initdb"
    )]
    NoPostgres,
    #[error(
        "nats-server not found: run `apt-get install -y nats-server` (Debian) or set PGOUTBOX_NATS_SERVER to the binary"
    )]
    NoNats,
    #[error(
        "rabbitmq-server not found: run `apt-get install -y rabbitmq-server` (Debian; it is not started on install)"
    )]
    NoRabbit,
    #[error("tansu not found: run scripts/tansu-fetch.sh (it builds and caches tansu 0.6.0) or set PGOUTBOX_TANSU to the binary")]
    NoTansu,
    #[error("{what} failed: {detail}")]
    Command { what: String, detail: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("Kafka mock cluster: {0}")]
    Kafka(String),
}
