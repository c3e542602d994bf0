//! Everything pgoutbox asks PostgreSQL on a normal (non-replication) connection: connecting
//! ([`connection`], TLS per `sslmode`), the start-up checks ([`preflight`]), the catalog's
//! view of the outbox ([`catalog`]), `setup` ([`setup`]), the state record ([`state`]) and
//! what `status` reports ([`status`]). The replication protocol is [`crate::replication`];
//! decoding is [`crate::pgoutput`].

pub mod catalog;
pub mod connection;
pub mod preflight;
pub mod setup;
pub mod state;
pub mod status;
