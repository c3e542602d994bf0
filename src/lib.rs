//! pgoutbox: streams the transactional outbox from PostgreSQL logical replication to a
//! message broker (Kafka, NATS JetStream, RabbitMQ), confirming WAL to the slot only past transactions
//! whose every event the broker acknowledged.
//!
//! The modules follow the data flow (docs/architecture.md, "Code map"):
//! [`sources`] ([`replication`] wire protocol → [`pgoutput`] decoder, or polling) →
//! [`outbox`] (mapping) → [`pipeline`] (the guarantees: [`pipeline::watermark`], delivery
//! modes, poison policy) → [`destination`] (I/O only) → outcomes back into the pipeline.
//! [`streamer`] runs it all with reconnects; [`postgres`] holds what pgoutbox asks PostgreSQL
//! on normal connections; [`config`] is at the bottom of the graph.

pub mod checks;
pub mod config;
pub mod destination;
/// Throwaway servers for `pgoutbox demo` and the tests (feature `demo`, on by default).
#[cfg(feature = "demo")]
pub mod embedded;
pub mod lsn;
pub mod metrics;
pub mod outbox;
pub mod pgoutput;
pub mod pgtime;
pub mod pipeline;
pub mod postgres;
pub mod replication;
pub mod sources;
pub mod streamer;
pub mod tls;

pub use config::delivery;
pub use config::Config;
pub use lsn::Lsn;
pub use sources::poll;
pub use streamer::Streamer;
