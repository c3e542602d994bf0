//! What can go wrong on the replication connection, and the server's own error reports.

use std::io;
use std::time::Duration;

use fallible_iterator::FallibleIterator;

use super::protocol::FrameError;

/// Everything that can go wrong on the replication connection.
#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    #[error("connecting to {addr}: {source}")]
    Connect { addr: String, source: io::Error },
    #[error("replication connection: {0}")]
    Io(#[from] io::Error),
    #[error("server error: {0}")]
    Server(DbError),
    #[error("authentication: {0}")]
    Auth(String),
    #[error("replication protocol: {0}")]
    Protocol(String),
    #[error("replication protocol: {0}")]
    Frame(#[from] FrameError),
    #[error("replication connection closed by the server")]
    Closed,
    #[error("TLS: {0}")]
    Tls(String),
    #[error("TLS: the server's certificate was rejected: {0} (check sslmode and sslrootcert)")]
    Certificate(String),
    #[error("nothing received from the server for {0:.0?} although a reply was requested: connection presumed dead")]
    Silent(Duration),
    #[error("no answer to {what} within {after:.0?}: connection presumed dead")]
    NoAnswer { what: &'static str, after: Duration },
}

impl ReplicationError {
    /// The SQLSTATE when the server reported the error.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            ReplicationError::Server(e) => Some(&e.code),
            _ => None,
        }
    }
}

/// An ErrorResponse from the server.
#[derive(Debug, Clone)]
pub struct DbError {
    pub severity: String,
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.severity, self.code, self.message)?;
        if let Some(d) = &self.detail {
            write!(f, " ({d})")?;
        }
        if let Some(h) = &self.hint {
            write!(f, " hint: {h}")?;
        }
        Ok(())
    }
}

pub(super) fn db_error(
    fields: &mut postgres_protocol::message::backend::ErrorFields<'_>,
) -> DbError {
    let mut e = DbError {
        severity: "ERROR".into(),
        code: String::new(),
        message: String::new(),
        detail: None,
        hint: None,
    };
    while let Ok(Some(f)) = fields.next() {
        let v = String::from_utf8_lossy(f.value_bytes()).into_owned();
        match f.type_() {
            b'S' => e.severity = v,
            b'C' => e.code = v,
            b'M' => e.message = v,
            b'D' => e.detail = Some(v),
            b'H' => e.hint = Some(v),
            _ => {}
        }
    }
    e
}
