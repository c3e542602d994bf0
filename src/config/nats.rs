//! The NATS JetStream destination's settings.

use std::path::PathBuf;
use std::time::Duration;

/// Default server URL.
pub const DEFAULT_URL: &str = "nats://127.0.0.1:4222";
/// Default stream name (`check` looks it up; `setup --create-nats-stream` creates it).
pub const DEFAULT_STREAM: &str = "OUTBOX";

/// What the NATS destination needs.
#[derive(Debug, Clone)]
pub struct NatsConfig {
    /// Server URL(s), comma-separated (a cluster's nodes), each with its own credentials:
    /// `nats://user:password@host:port` or `nats://token@host:port`.
    pub url: String,
    /// The stream the outbox subjects are stored in.
    pub stream: String,
    /// A `.creds` file (JWT and NKey seed), for servers with decentralized auth.
    pub credentials_file: Option<PathBuf>,
    /// A file holding a user NKey seed (`SU…`), for servers whose users are NKeys.
    pub nkey_file: Option<PathBuf>,
    /// How far back JetStream removes re-sent events (`Nats-Msg-Id`): `check` fails when the
    /// stream's `duplicate_window` is shorter. Exactly-once on NATS holds for restarts within
    /// this window. Default 2 minutes (JetStream's default).
    pub duplicate_window: Duration,
    /// A publish fails (and is retried from the slot) once the server has answered nothing for
    /// this long, since it was sent and since its last answer to any publish: a slow server
    /// that keeps answering is waited for. Default 10 s.
    pub ack_timeout: Duration,
    /// Publishes awaiting their acknowledgement at most. Default 16,384: JetStream handles
    /// deep pipelines well (fewer, larger reads and writes per message on both sides).
    pub max_pending: usize,
    /// Root certificate(s) (PEM) the server's certificate may chain to, besides the system's:
    /// for a server whose certificate a private CA signed. Setting it requires TLS.
    pub tls_ca_file: Option<PathBuf>,
    /// The client certificate (PEM) presented to a server that verifies clients (mutual
    /// TLS), with [`tls_key_file`](Self::tls_key_file); setting it requires TLS.
    pub tls_cert_file: Option<PathBuf>,
    /// The private key (PEM) of [`tls_cert_file`](Self::tls_cert_file).
    pub tls_key_file: Option<PathBuf>,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            url: DEFAULT_URL.into(),
            stream: DEFAULT_STREAM.into(),
            credentials_file: None,
            nkey_file: None,
            duplicate_window: Duration::from_secs(120),
            ack_timeout: Duration::from_secs(10),
            max_pending: 16384,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
        }
    }
}

/// The longest subject pgoutbox publishes to. A publish is one control line
/// (`HPUB subject reply sizes`) that nats-server takes up to its `max_control_line`, 4 KB by
/// default, and drops the connection past it; this leaves room for the rest of the line.
pub const MAX_SUBJECT_BYTES: usize = 4096 - 256;

/// Whether `s` may be published to: tokens of printable non-space characters separated by
/// dots, none empty, no wildcard tokens (`*`, `>`), at most [`MAX_SUBJECT_BYTES`].
pub fn is_valid_subject(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_SUBJECT_BYTES
        && s.split('.').all(|t| {
            !t.is_empty()
                && t != "*"
                && t != ">"
                && t.chars().all(|c| !c.is_whitespace() && !c.is_control())
        })
}

/// Whether `s` may name a stream: no spaces, dots, wildcards or path separators.
pub fn is_valid_stream(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.chars().all(|c| {
            !c.is_whitespace() && !c.is_control() && !matches!(c, '.' | '*' | '>' | '/' | '\\')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects() {
        assert!(is_valid_subject("outbox.event.order"));
        assert!(is_valid_subject("pgoutbox.dead-letter"));
        assert!(is_valid_subject("orders:created"));
        for bad in [
            "", "a..b", ".a", "a.", "a.*.b", "a.>", "a b", "a\tb", "a\r\nb",
        ] {
            assert!(!is_valid_subject(bad), "{bad:?}");
        }
        assert!(is_valid_subject(&"x".repeat(MAX_SUBJECT_BYTES)));
        assert!(!is_valid_subject(&"x".repeat(MAX_SUBJECT_BYTES + 1)));
    }

    #[test]
    fn streams() {
        assert!(is_valid_stream("OUTBOX"));
        for bad in ["", "A.B", "A B", "A*", "a/b"] {
            assert!(!is_valid_stream(bad), "{bad:?}");
        }
    }
}
