//! The streaming replication sub-protocol, which tokio-postgres does not speak.
//!
//! - [`protocol`]: pure encode/decode of the CopyBoth payloads (XLogData, keepalive, status
//!   update) and of backend frames, including CopyBothResponse which postgres-protocol lacks.
//! - [`client`]: the socket: startup with `replication=database`, authentication and
//!   replication commands; [`stream`]: the CopyBoth stream it turns into.
//! - [`connect_config`]: where and as whom to connect; [`error`]: what can go wrong.

pub mod client;
pub mod connect_config;
pub mod error;
pub mod protocol;
pub mod stream;

pub use client::{ReplicationClient, FAILOVER_SINCE};
pub use connect_config::{ConnectConfig, Host};
pub use error::{DbError, ReplicationError};
pub use protocol::ReplicationMessage;
pub use stream::ReplicationStream;
