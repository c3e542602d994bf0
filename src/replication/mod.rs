//! The streaming replication sub-protocol, which tokio-postgres does not speak.
//!
//! - [`protocol`]: pure encode/decode of the CopyBoth payloads (XLogData, keepalive, status
//!   update) and of backend frames, including CopyBothResponse which postgres-protocol lacks.
//! - [`client`]: the socket: startup with `replication=database`, authentication, replication
//!   commands and the CopyBoth stream.

pub mod client;
pub mod protocol;

pub use client::{
    ConnectConfig, ReplicationClient, ReplicationError, ReplicationStream, FAILOVER_SINCE,
};
pub use protocol::ReplicationMessage;
