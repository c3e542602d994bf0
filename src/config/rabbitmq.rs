//! The RabbitMQ destination's settings.

use std::path::PathBuf;
use std::time::Duration;

/// Default broker URL: the local node's default vhost, as `guest` (which RabbitMQ lets in over
/// loopback only).
pub const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// Default exchange (`check` looks it up; `setup --create-rabbitmq-exchange` declares it).
pub const DEFAULT_EXCHANGE: &str = "outbox";

/// What the RabbitMQ destination needs.
#[derive(Debug, Clone)]
pub struct RabbitConfig {
    /// `amqp://user:password@host:port/vhost` (`amqps://` for TLS); the vhost URL-encoded
    /// (`%2f` is `/`).
    pub url: String,
    /// The exchange every record is published to, with its topic as the routing key.
    pub exchange: String,
    /// A publish fails (and is retried from the slot) once the broker has confirmed nothing for
    /// this long, since it was sent and since its last confirm of any publish; the clock stops
    /// while the broker blocks publishers. Default 10 s.
    pub ack_timeout: Duration,
    /// Publishes awaiting their confirm at most. Default 4,096.
    pub max_pending: usize,
    /// Root certificate(s) (PEM) an `amqps://` node's certificate may chain to, besides the
    /// system's: for a node whose certificate a private CA signed.
    pub tls_ca_file: Option<PathBuf>,
    /// The client certificate (PEM) presented to a node that verifies peers (mutual TLS), with
    /// [`tls_key_file`](Self::tls_key_file); only with an `amqps://` URL.
    pub tls_cert_file: Option<PathBuf>,
    /// The private key (PEM) of [`tls_cert_file`](Self::tls_cert_file).
    pub tls_key_file: Option<PathBuf>,
}

impl Default for RabbitConfig {
    fn default() -> Self {
        RabbitConfig {
            url: DEFAULT_URL.into(),
            exchange: DEFAULT_EXCHANGE.into(),
            ack_timeout: Duration::from_secs(10),
            max_pending: 4096,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
        }
    }
}

/// Whether `s` can be a routing key: at most 255 bytes (an AMQP short string).
pub fn is_valid_routing_key(s: &str) -> bool {
    s.len() <= 255
}

/// Whether `s` can name an exchange: 1 to 255 letters, digits, `-`, `_`, `.` or `:`. The
/// default exchange (empty name) routes by queue name and cannot be declared: not allowed.
pub fn is_valid_exchange(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exchanges_and_routing_keys() {
        assert!(is_valid_exchange("outbox"));
        assert!(is_valid_exchange("app.events:v1"));
        for bad in ["", "a b", "amq/x", &"x".repeat(256)] {
            assert!(!is_valid_exchange(bad), "{bad:?}");
        }
        assert!(is_valid_routing_key("outbox.event.order"));
        assert!(is_valid_routing_key(""));
        assert!(!is_valid_routing_key(&"k".repeat(256)));
    }
}
