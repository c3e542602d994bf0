//! pgoutbox: streams the transactional outbox from PostgreSQL logical replication to Kafka,
//! confirming WAL to the slot only past transactions whose every event Kafka acknowledged.
//!
//! The modules follow the data flow (see DESIGN.md):
//! [`replication`] (wire protocol) → [`pgoutput`] (decoder) → [`outbox`] (mapping) →
//! [`sink::kafka`] (producer) → acks → [`watermark`] (which LSN may be confirmed).
//! [`pipeline`] wires them together; [`preflight`] checks the database setup;
//! [`embedded`] starts throwaway Postgres and Kafka for the demo and tests.

pub mod catalog;
pub mod checks;
pub mod config;
pub mod delivery;
pub mod embedded;
pub mod lsn;
pub mod metrics;
pub mod outbox;
pub mod pg;
pub mod pgoutput;
pub mod pgtime;
pub mod pipeline;
pub mod poll;
pub mod preflight;
pub mod replication;
pub mod setup;
pub mod sink;
pub mod state;
pub mod status;
pub mod tls;
pub mod watermark;

pub use config::Config;
pub use lsn::Lsn;
pub use pipeline::Streamer;
