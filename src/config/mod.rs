//! The streamer's settings and their defaults (documented once, here and in docs/configuration.md).

use std::time::Duration;

pub mod delivery;
pub mod kafka;
mod kinds;
pub mod nats;
pub mod poll;
pub mod rabbitmq;
pub mod reload;
pub mod urls;
mod validate;

use crate::outbox::{OutboxConfig, PoisonPolicy, UpdatePolicy};
pub use delivery::{DeliveryMode, ExactlyOnceBy, Plan};
pub use kafka::{is_secret_property, KafkaConfig};
pub use kinds::{DestinationKind, Source};
pub use nats::NatsConfig;
pub use rabbitmq::RabbitConfig;

/// Default slot name.
pub const DEFAULT_SLOT: &str = "pgoutbox";
/// Default exactly-once offsets topic.
pub const DEFAULT_OFFSETS_TOPIC: &str = "pgoutbox.offsets";
/// Default dead-letter topic.
pub const DEFAULT_DEAD_LETTER_TOPIC: &str = "pgoutbox.dead-letter";
/// Default publication name (what `sql/setup.sql` creates).
pub const DEFAULT_PUBLICATION: &str = "pgoutbox_pub";

/// Everything `pgoutbox run` needs.
#[derive(Clone)]
pub struct Config {
    /// libpq-style URL or key=value string; may hold a password, so never logged.
    pub postgres_url: String,
    /// Password that overrides the URL's (from the environment or a secret file).
    pub postgres_password: Option<String>,
    /// TLS mode; overrides the URL's `sslmode` (libpq's default, `prefer`, when neither says).
    pub sslmode: Option<crate::tls::SslMode>,
    /// Root certificate(s) for verify-ca/verify-full; overrides the URL's `sslrootcert`.
    pub sslrootcert: Option<std::path::PathBuf>,
    /// Logical replication slot; created on first start if missing. Default `pgoutbox`.
    pub slot: String,
    /// Publication covering the outbox table. Default `pgoutbox_pub`.
    pub publication: String,
    /// The outbox table and its routing; its routing also serves the table-less outbox.
    pub outbox: OutboxConfig,
    /// `message_prefix` was set on purpose: the table-less outbox is required, so a server
    /// that cannot send logical decoding messages (PostgreSQL 13) is refused, not warned of.
    pub message_prefix_explicit: bool,
    /// Further outbox tables in the same publication, each with its own routing. Default none.
    pub extra_tables: Vec<OutboxConfig>,
    /// An UPDATE of an outbox row (when the publication publishes updates). Default warn.
    pub on_update: UpdatePolicy,
    /// An event that can never be delivered. Default fail.
    pub on_poison: PoisonPolicy,
    /// Where `on_poison = dead-letter` writes. Default `pgoutbox.dead-letter`.
    pub dead_letter_topic: String,
    /// Exactly-once: the compacted topic holding `(slot, end_lsn)` per Kafka transaction.
    /// Default `pgoutbox.offsets`.
    pub offsets_topic: String,
    /// Exactly-once: commit the open Kafka transaction this often (at the next PostgreSQL
    /// transaction boundary). Default 100 ms.
    pub transaction_interval: Duration,
    /// What a crash may lose or repeat. Default at-least-once.
    pub delivery: DeliveryMode,
    /// Where events go. Default Kafka.
    pub destination: DestinationKind,
    pub kafka: KafkaConfig,
    pub nats: NatsConfig,
    pub rabbitmq: RabbitConfig,
    /// Where events come from: the replication slot (default) or polling the table.
    pub source: Source,
    /// Polling settings (`source = poll`).
    pub poll: poll::PollConfig,
    /// How often to send a standby status update. Default 1 s.
    pub status_interval: Duration,
    /// Stop reading WAL while this many events await Kafka acks. Default 10,000.
    pub max_in_flight_events: usize,
    /// …or while their payloads add up to this many bytes. Default 32 MiB.
    pub max_in_flight_bytes: usize,
    /// On shutdown, wait this long for in-flight acks before the final status update. Default 10 s.
    pub shutdown_timeout: Duration,
    /// Create the slot when it does not exist at start. Default true.
    pub create_slot: bool,
    /// Create the slot as a failover slot (PostgreSQL 17+), which standbys with
    /// `sync_replication_slots` keep a copy of. Default true.
    pub failover: bool,
    /// Stream from a failover slot although some standby's physical slot is missing from
    /// `synchronized_standby_slots` (events may be delivered that a failover then loses from
    /// the database). Default false: refused.
    pub allow_unsynchronized_failover: bool,
    /// Emit `pg_logical_emit_message(false, 'pgoutbox.heartbeat', '')` this often, so the slot
    /// advances even on a database that writes nothing. Default off.
    pub heartbeat_interval: Option<Duration>,
    /// Hot standby: stream only while holding the HA advisory lock for the slot. Default off.
    pub ha: bool,
    /// HA: a leader whose lock session has renewed nothing for this long (frozen, or cut off
    /// from the database) is replaced: a standby terminates its lock session and walsender.
    /// Default 10 s; at least 3 s.
    pub ha_lease: Duration,
    /// A replication connection that delivers nothing for this long (while pgoutbox is waiting
    /// on it, and although it asked the server for a reply) is dead: reconnect. Default 60 s.
    pub replication_timeout: Duration,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("postgres_url", &redact_url(&self.postgres_url))
            .field("slot", &self.slot)
            .field("publication", &self.publication)
            .field("outbox", &self.outbox)
            .field("extra_tables", &self.extra_tables)
            .field("on_update", &self.on_update)
            .field("on_poison", &self.on_poison)
            .field("dead_letter_topic", &self.dead_letter_topic)
            .field("offsets_topic", &self.offsets_topic)
            .field("transaction_interval", &self.transaction_interval)
            .field("transactional_id", &self.transactional_id())
            .field(
                "postgres_password",
                &self.postgres_password.as_ref().map(|_| "***"),
            )
            .field("source", &self.source)
            .field("poll", &self.poll)
            .field("delivery", &self.delivery)
            .field("destination", &self.destination)
            .field("kafka_brokers", &self.kafka.brokers)
            .field("nats_url", &redact_url(&self.nats.url))
            .field("nats_stream", &self.nats.stream)
            .field("rabbitmq_url", &redact_url(&self.rabbitmq.url))
            .field("rabbitmq_exchange", &self.rabbitmq.exchange)
            .field(
                "kafka_properties",
                &self
                    .kafka
                    .properties
                    .iter()
                    .map(|(k, v)| {
                        let v = if is_secret_property(k) {
                            "***"
                        } else {
                            v.as_str()
                        };
                        format!("{k}={v}")
                    })
                    .collect::<Vec<_>>(),
            )
            .field("status_interval", &self.status_interval)
            .field("max_in_flight_events", &self.max_in_flight_events)
            .field("max_in_flight_bytes", &self.max_in_flight_bytes)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("create_slot", &self.create_slot)
            .field("failover", &self.failover)
            .field(
                "allow_unsynchronized_failover",
                &self.allow_unsynchronized_failover,
            )
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("ha", &self.ha)
            .field("ha_lease", &self.ha_lease)
            .field("replication_timeout", &self.replication_timeout)
            .field(
                "tls",
                &self
                    .tls_settings()
                    .map_or_else(|e| format!("invalid: {e}"), |t| format!("{t:?}")),
            )
            .finish()
    }
}

/// A setting that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid Postgres URL: {0}")]
    PostgresUrl(String),
    #[error("invalid slot name {0:?}: use 1-63 lower-case letters, digits and underscores")]
    SlotName(String),
    #[error("{0} must be greater than zero")]
    Zero(&'static str),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("ha_lease_secs must be at least 3: the leader renews its lease every second")]
    HaLease,
    #[error("replication_timeout must be more than twice the status interval")]
    ReplicationTimeout,
    #[error("outbox table {0} is configured twice")]
    DuplicateTable(String),
    #[error("{0:?} is not a valid Kafka topic name")]
    Topic(String),
    #[error("{0:?} is not a valid NATS subject to publish to (dot-separated tokens, no spaces or wildcards)")]
    Subject(String),
    #[error("{0:?} is not a valid NATS stream name (no spaces, dots, wildcards or slashes)")]
    Stream(String),
    #[error("{0:?} is not a valid RabbitMQ routing key (at most 255 bytes)")]
    RoutingKey(String),
    #[error("{0:?} is not a valid RabbitMQ exchange name (1 to 255 letters, digits, '-', '_', '.', ':'; the default exchange cannot be used)")]
    Exchange(String),
    #[error("delivery = exactly-once is not available on {title}: a publisher cannot make the broker drop a message it resends after a crash ({title} has no publisher-side duplicate removal), so use at-least-once and deduplicate on the event id in the consumer (examples/rabbitmq_consumer.rs does)", title = .0.title())]
    NoExactlyOnce(DestinationKind),
    #[error("source = poll with delivery = exactly-once needs a destination that removes duplicates (nats); on Kafka use at-least-once with an idempotent consumer")]
    PollExactlyOnce,
    #[error("{name} is out of range: at most {max} (one day)")]
    TooLong { name: &'static str, max: String },
    #[error("{cert} and {key} go together: set both (the client certificate and its private key) or neither")]
    ClientCertPair {
        cert: &'static str,
        key: &'static str,
    },
    #[error("Kafka broker {0:?} is not host:port with a port from 1 to 65535")]
    Broker(String),
}

/// The longest any interval or timeout may be. Longer has no use, and a deadline computed
/// from a huge value would overflow the clock.
pub const MAX_DURATION: Duration = Duration::from_secs(86_400);

impl Config {
    /// A configuration with every default, for the given endpoints.
    pub fn new(postgres_url: impl Into<String>, kafka_brokers: impl Into<String>) -> Self {
        Config {
            postgres_url: postgres_url.into(),
            postgres_password: None,
            sslmode: None,
            sslrootcert: None,
            slot: DEFAULT_SLOT.into(),
            publication: DEFAULT_PUBLICATION.into(),
            outbox: OutboxConfig::default(),
            message_prefix_explicit: false,
            extra_tables: Vec::new(),
            on_update: UpdatePolicy::default(),
            on_poison: PoisonPolicy::default(),
            dead_letter_topic: DEFAULT_DEAD_LETTER_TOPIC.into(),
            offsets_topic: DEFAULT_OFFSETS_TOPIC.into(),
            transaction_interval: Duration::from_millis(100),
            delivery: DeliveryMode::default(),
            destination: DestinationKind::default(),
            kafka: KafkaConfig {
                brokers: kafka_brokers.into(),
                ..KafkaConfig::default()
            },
            nats: NatsConfig::default(),
            rabbitmq: RabbitConfig::default(),
            source: Source::default(),
            poll: poll::PollConfig::default(),
            status_interval: Duration::from_secs(1),
            max_in_flight_events: 10_000,
            max_in_flight_bytes: 32 << 20,
            shutdown_timeout: Duration::from_secs(10),
            create_slot: true,
            failover: true,
            allow_unsynchronized_failover: false,
            heartbeat_interval: None,
            ha: false,
            ha_lease: Duration::from_secs(10),
            replication_timeout: Duration::from_secs(60),
        }
    }

    /// The parsed Postgres connection settings.
    pub fn pg_config(&self) -> Result<tokio_postgres::Config, ConfigError> {
        // tokio-postgres knows neither verify-* nor sslrootcert: pgoutbox handles TLS itself.
        let (url, _, _) = crate::tls::split_tls_params(&self.postgres_url);
        let mut cfg: tokio_postgres::Config = url.parse().map_err(|e: tokio_postgres::Error| {
            ConfigError::PostgresUrl(redact_secrets(&error_chain(&e), &self.postgres_url))
        })?;
        cfg.ssl_mode(match self.tls_settings()?.mode {
            crate::tls::SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            crate::tls::SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
        if let Some(pw) = &self.postgres_password {
            cfg.password(pw.as_bytes());
        }
        // An unreachable host must fail (and be retried), not hang: 10 s unless the URL says.
        if cfg.get_connect_timeout().is_none() {
            cfg.connect_timeout(std::time::Duration::from_secs(10));
        }
        Ok(cfg)
    }

    /// `sslmode` and `sslrootcert`: the settings, else the URL's, else `prefer` and none.
    pub fn tls_settings(&self) -> Result<crate::tls::TlsSettings, ConfigError> {
        let (_, url_mode, url_root) = crate::tls::split_tls_params(&self.postgres_url);
        let mode = match (self.sslmode, url_mode) {
            (Some(m), _) => m,
            (None, Some(m)) => m.parse()?,
            (None, None) => crate::tls::SslMode::default(),
        };
        Ok(crate::tls::TlsSettings {
            mode,
            root_cert: self.sslrootcert.clone().or(url_root.map(Into::into)),
        })
    }

    /// Every secret the settings hold: what no log line, error or page may show.
    pub fn secrets(&self) -> Vec<String> {
        secrets_of(
            &[&self.postgres_url, &self.nats.url, &self.rabbitmq.url],
            self.postgres_password.as_deref(),
            &self.kafka.properties,
        )
    }

    /// The delivery mode.
    pub fn delivery(&self) -> DeliveryMode {
        self.delivery
    }

    /// How the delivery mode is kept with this source and destination. A configuration that
    /// [`validate`](Config::validate) refuses (exactly-once where it cannot be kept) runs as
    /// at-least-once here: nothing lost.
    pub fn plan(&self) -> Plan {
        Plan::new(self.delivery, self.source, self.destination).unwrap_or(Plan::AtLeastOnce)
    }

    /// Exactly-once: the `transactional.id`, by default `pgoutbox-<slot>` (stable, so a
    /// restarted or second instance fences the old one).
    pub fn transactional_id(&self) -> String {
        self.kafka
            .transactional_id
            .clone()
            .unwrap_or_else(|| format!("pgoutbox-{}", self.slot))
    }

    /// The producer settings, with the resolved `transactional.id`.
    pub fn producer(&self) -> KafkaConfig {
        KafkaConfig {
            transactional_id: Some(self.transactional_id()),
            ..self.kafka.clone()
        }
    }

    /// Every outbox table: the main one first, then `extra_tables`.
    pub fn outboxes(&self) -> Vec<OutboxConfig> {
        std::iter::once(&self.outbox)
            .chain(&self.extra_tables)
            .cloned()
            .collect()
    }

    /// Checks everything that can be checked without a network.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let tables = self.outboxes();
        for (i, t) in tables.iter().enumerate() {
            if tables[..i].iter().any(|o| o.table == t.table) {
                return Err(ConfigError::DuplicateTable(t.table.to_string()));
            }
        }
        self.validate_destination()?;
        if self.poll.batch == 0 {
            return Err(ConfigError::Zero("poll_batch"));
        }
        if self.transaction_interval.is_zero() {
            return Err(ConfigError::Zero("transaction_interval"));
        }
        self.pg_config()?;
        self.tls_settings()?.client_config()?;
        let ok = !self.slot.is_empty()
            && self.slot.len() <= 63
            && self
                .slot
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !ok {
            return Err(ConfigError::SlotName(self.slot.clone()));
        }
        if self.max_in_flight_events == 0 {
            return Err(ConfigError::Zero("max_in_flight_events"));
        }
        if self.max_in_flight_bytes == 0 {
            return Err(ConfigError::Zero("max_in_flight_bytes"));
        }
        if self.status_interval.is_zero() {
            return Err(ConfigError::Zero("status_interval"));
        }
        if self.ha_lease < Duration::from_secs(3) {
            return Err(ConfigError::HaLease);
        }
        let durations = [
            ("status_interval_ms", self.status_interval),
            ("replication_timeout_secs", self.replication_timeout),
            ("ha_lease_secs", self.ha_lease),
            ("shutdown_timeout_secs", self.shutdown_timeout),
            ("transaction_interval_ms", self.transaction_interval),
            ("poll_interval_ms", self.poll.interval),
            ("nats_ack_timeout_ms", self.nats.ack_timeout),
            ("rabbitmq_ack_timeout_ms", self.rabbitmq.ack_timeout),
            (
                "heartbeat_interval_secs",
                self.heartbeat_interval.unwrap_or_default(),
            ),
        ];
        for (name, d) in durations {
            if d > MAX_DURATION {
                let max = match name.ends_with("_ms") {
                    true => format!("{}", MAX_DURATION.as_millis()),
                    false => format!("{}", MAX_DURATION.as_secs()),
                };
                return Err(ConfigError::TooLong { name, max });
            }
        }
        if let Some(bad) = kafka::bad_broker(&self.kafka.brokers) {
            return Err(ConfigError::Broker(bad.to_owned()));
        }
        if self.replication_timeout <= self.status_interval * 2 {
            return Err(ConfigError::ReplicationTimeout);
        }
        Ok(())
    }
}

/// The first PostgreSQL version whose pgoutput sends logical decoding messages.
pub const MESSAGES_SINCE: u32 = 140_000;

impl Config {
    /// Whether the table-less outbox works on a server of `version` (`server_version_num`):
    /// `Ok(None)` yes or not used, `Ok(Some(warning))` no but not asked for explicitly,
    /// `Err(why)` no and asked for.
    pub fn tableless_on(&self, version: u32) -> Result<Option<String>, String> {
        let Some(prefix) = &self.outbox.message_prefix else {
            return Ok(None);
        };
        if version >= MESSAGES_SINCE {
            return Ok(None);
        }
        let why = format!(
            "PostgreSQL {} cannot send logical decoding messages to pgoutput, so table-less outbox events (pg_logical_emit_message with prefix {prefix:?}) are never delivered; the table-less outbox needs PostgreSQL 14+",
            version / 10_000
        );
        match self.message_prefix_explicit {
            true => Err(format!("{why}: upgrade, or unset message_prefix and write events to the outbox table")),
            false => Ok(Some(format!("{why}. Only outbox table rows are delivered; set message_prefix = \"\" to say the table-less outbox is not used"))),
        }
    }
}

/// The URL (or comma-separated list of URLs) with every password, token and secret query
/// value replaced by `***`, for logs.
pub fn redact_url(url: &str) -> String {
    urls::redact(url)
}

/// An error and its sources, one after the other.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The secrets of settings: passwords and tokens in every URL of `url_lists`, the PostgreSQL
/// `password`, the secret Kafka properties.
pub fn secrets_of(
    url_lists: &[&str],
    password: Option<&str>,
    kafka_properties: &[(String, String)],
) -> Vec<String> {
    let mut out: Vec<String> = url_lists.iter().flat_map(|u| urls::secrets(u)).collect();
    out.extend(password.map(str::to_owned));
    out.extend(
        kafka_properties
            .iter()
            .filter(|(k, _)| is_secret_property(k))
            .map(|(_, v)| v.clone()),
    );
    out.retain(|s| !s.is_empty());
    out
}

/// Removes the URL's secrets from an error text that might quote them.
fn redact_secrets(text: &str, url: &str) -> String {
    scrub(text, &urls::secrets(url))
}

/// `text` with each of `secrets` replaced by `***`, the longest first (so that a secret
/// containing another is replaced whole).
pub fn scrub(text: &str, secrets: &[String]) -> String {
    let mut sorted: Vec<&String> = secrets.iter().filter(|s| !s.is_empty()).collect();
    sorted.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let mut out = text.to_owned();
    for s in sorted {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), "***");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("postgres://u:s3cret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(
            redact_url("host=h password=s3cret user=u"),
            "host=h password=*** user=u"
        );
        let mut c = Config::new("postgres://u:s3cret@h/db", "k");
        c.postgres_password = Some("pw-override".into());
        c.kafka.properties = vec![
            ("sasl.password".into(), "kafka-pw".into()),
            ("ssl.key.pem".into(), "PEMDATA".into()),
            ("linger.ms".into(), "5".into()),
        ];
        let shown = format!("{c:?}");
        for secret in ["s3cret", "pw-override", "kafka-pw", "PEMDATA"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("linger.ms=5"));
    }

    #[test]
    fn durations_and_brokers_are_range_checked() {
        let mut c = Config::new("postgres://u@h/db", "a:9092,[::1]:9093,b,SSL://c:9094");
        c.validate().unwrap();
        c.shutdown_timeout = Duration::from_secs(u64::MAX);
        let e = c.validate().unwrap_err().to_string();
        assert_eq!(
            e,
            "shutdown_timeout_secs is out of range: at most 86400 (one day)"
        );
        c.shutdown_timeout = MAX_DURATION;
        c.validate().unwrap();
        for bad in ["127.0.0.1:99999", "h:0", "h:x", "a:1,[::1]:70000"] {
            c.kafka.brokers = bad.into();
            assert!(matches!(c.validate(), Err(ConfigError::Broker(_))), "{bad}");
        }
    }

    #[test]
    fn validates_slot_names() {
        let mut c = Config::new("postgres://u@h/db", "k");
        c.validate().unwrap();
        for bad in ["", "Upper", "with-dash", &"x".repeat(64)] {
            c.slot = bad.into();
            assert!(c.validate().is_err(), "{bad}");
        }
    }
}
