//! Layered settings: flag > environment (`PGOUTBOX_…`) > TOML file (`--config`) > default.
//!
//! Each key is declared once in `settings!` below, which generates the clap flags (each with
//! its environment variable), the strict TOML struct (unknown keys are errors naming the key)
//! and the merge. Each belongs to a `--help` heading ([`heading`]); docs/configuration.md is
//! generated from the declarations (`pgoutbox config --reference`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use pgoutbox::config::{Config, DEFAULT_PUBLICATION, DEFAULT_SLOT};
use pgoutbox::config::{DestinationKind, KafkaConfig};
use pgoutbox::destination::kafka::Librdkafka;
use pgoutbox::outbox::{OutboxConfig, TableName, TopicTemplate};

use super::tables::parse_headers;
pub use super::tables::TableSettings;

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// The `--help` headings, which are also the sections of docs/configuration.md.
pub mod heading {
    pub const POSTGRES: &str = "PostgreSQL";
    pub const KAFKA: &str = "Kafka";
    pub const NATS: &str = "NATS";
    pub const RABBITMQ: &str = "RabbitMQ";
    pub const EVENTS: &str = "Events and routing";
    pub const DELIVERY: &str = "Delivery";
    pub const OPERATIONS: &str = "Operations";
    /// In this order.
    pub const ALL: [&str; 7] = [
        POSTGRES, KAFKA, NATS, RABBITMQ, EVENTS, DELIVERY, OPERATIONS,
    ];
}

macro_rules! settings {
    ($( $heading:ident { $( $(#[doc = $doc:literal])* $name:ident : $ty:ty = $default:expr, $env:literal; )* } )*) => {
        /// Settings given on the command line or in the environment (`None` = not given).
        #[derive(Debug, Default, Clone, clap::Args)]
        pub struct SettingArgs {
            /// TOML configuration file; flags and environment variables override it.
            #[arg(long, env = "PGOUTBOX_CONFIG", value_name = "FILE")]
            pub config: Option<PathBuf>,
            $( $(
                $(#[doc = $doc])*
                #[arg(long, env = $env, hide_env_values = true, help_heading = heading::$heading)]
                pub $name: Option<$ty>,
            )* )*
            /// Any librdkafka producer property, key=value; repeatable (env: separated by ';').
            /// Overrides the file's [kafka] table.
            #[arg(short = 'X', long = "kafka-property", env = "PGOUTBOX_KAFKA_PROPERTIES",
                  value_delimiter = ';', value_name = "KEY=VALUE", help_heading = heading::KAFKA)]
            pub kafka_properties: Vec<String>,
        }

        /// The TOML file. Unknown keys are rejected.
        #[derive(Debug, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct FileSettings {
            /// librdkafka producer properties, e.g. `"sasl.mechanism" = "SCRAM-SHA-512"`.
            #[serde(default)]
            pub kafka: BTreeMap<String, toml::Value>,
            /// Further outbox tables (`[[tables]]`), each with its own routing.
            #[serde(default)]
            pub tables: Vec<TableSettings>,
            $( $( pub $name: Option<$ty>, )* )*
        }

        /// Every setting's heading, key, environment variable and help text, in declaration
        /// order: the source of `pgoutbox config --reference` (docs/configuration.md).
        pub const REFERENCE: &[(&str, &str, &str, &str)] = &[
            $( $( (heading::$heading, stringify!($name), $env, concat!($($doc, "\n"),*)), )* )*
        ];

        /// Every setting, resolved.
        #[derive(Clone)]
        pub struct Settings {
            /// librdkafka properties, file first, then flags/env (later wins).
            pub kafka_properties: Vec<(String, String)>,
            /// The file's `[[tables]]`.
            pub tables: Vec<TableSettings>,
            /// The settings given (flag, environment or file) rather than defaulted.
            pub explicit: std::collections::BTreeSet<&'static str>,
            $( $( pub $name: $ty, )* )*
        }

        impl Settings {
            /// Every setting as a TOML document that loads back as a config file, secrets
            /// shown as `***`.
            pub fn to_toml(&self) -> anyhow::Result<String> {
                let mut t = toml::Table::new();
                $( $(
                    let value = toml::Value::try_from(&self.$name)
                        .with_context(|| format!("showing setting {}", stringify!($name)))?;
                    t.insert(stringify!($name).to_owned(), value);
                )* )*
                redact(&mut t, &self.kafka_properties, &self.tables)?;
                Ok(format!(
                    "# pgoutbox: the effective configuration (flags > environment > file > defaults); secrets as ***\n{}",
                    toml::to_string(&t)?
                ))
            }

            fn merge(args: SettingArgs, file: FileSettings) -> anyhow::Result<Settings> {
                let mut kafka_properties = Vec::new();
                for (k, v) in file.kafka {
                    let v = match v {
                        toml::Value::String(s) => s,
                        other => other.to_string(),
                    };
                    kafka_properties.push((k, v));
                }
                for p in args.kafka_properties.iter().filter(|p| !p.trim().is_empty()) {
                    kafka_properties.push(KafkaConfig::parse_property(p)?);
                }
                let mut explicit = std::collections::BTreeSet::new();
                $( $(
                    if args.$name.is_some() || file.$name.is_some() {
                        explicit.insert(stringify!($name));
                    }
                )* )*
                Ok(Settings {
                    kafka_properties,
                    tables: file.tables,
                    explicit,
                    $( $( $name: args.$name.or(file.$name).unwrap_or_else(|| $default), )* )*
                })
            }
        }
    };
}

settings! {
    POSTGRES {
        /// PostgreSQL URL or key=value string, e.g. postgres://pgoutbox@db:5432/app (required)
        postgres_url: String = String::new(), "PGOUTBOX_POSTGRES_URL";
        /// Password for PostgreSQL (prefer the environment or postgres_password_file to a flag)
        postgres_password: String = String::new(), "PGOUTBOX_POSTGRES_PASSWORD";
        /// File holding the PostgreSQL password (trailing newline ignored)
        postgres_password_file: PathBuf = PathBuf::new(), "PGOUTBOX_POSTGRES_PASSWORD_FILE";
        /// TLS to PostgreSQL: disable, prefer, require, verify-ca, verify-full (overrides the URL's sslmode) [default: prefer]
        postgres_sslmode: String = String::new(), "PGOUTBOX_POSTGRES_SSLMODE";
        /// Root certificate(s) (PEM) to verify the server with (overrides the URL's sslrootcert)
        postgres_sslrootcert: PathBuf = PathBuf::new(), "PGOUTBOX_POSTGRES_SSLROOTCERT";
        /// Logical replication slot, created on first start if missing [default: pgoutbox]
        slot: String = DEFAULT_SLOT.into(), "PGOUTBOX_SLOT";
        /// Publication covering the outbox table [default: pgoutbox_pub]
        publication: String = DEFAULT_PUBLICATION.into(), "PGOUTBOX_PUBLICATION";
        /// The outbox table, schema-qualified [default: public.outbox]
        table: String = "public.outbox".into(), "PGOUTBOX_TABLE";
        /// Create the slot when it is missing at start (true/false) [default: true]
        create_slot: bool = true, "PGOUTBOX_CREATE_SLOT";
        /// Create the slot as a failover slot, kept by standbys with sync_replication_slots (PostgreSQL 17+; true/false) [default: true]
        failover: bool = true, "PGOUTBOX_FAILOVER";
        /// Stream from a failover slot although a standby's physical slot is not in synchronized_standby_slots; delivered events may then be missing from the database after a failover (true/false) [default: false]
        allow_unsynchronized_failover: bool = false, "PGOUTBOX_ALLOW_UNSYNCHRONIZED_FAILOVER";
        /// Where events come from: replication (logical replication slot) or poll (polling publisher; run sql/poll.sql) [default: replication]
        source: String = "replication".into(), "PGOUTBOX_SOURCE";
        /// Polling: milliseconds between polls that found less than a full batch [default: 1000]
        poll_interval_ms: u64 = 1000, "PGOUTBOX_POLL_INTERVAL_MS";
        /// Polling: rows per poll and per transaction [default: 1000]
        poll_batch: usize = 1000, "PGOUTBOX_POLL_BATCH";
        /// Polling: what to do with sent rows, mark (status = 1) or delete [default: mark]
        poll_cleanup: String = "mark".into(), "PGOUTBOX_POLL_CLEANUP";
        /// Seconds between heartbeat messages (pg_logical_emit_message) so an idle database's slot advances; 0 = off [default: 0]
        heartbeat_interval_secs: u64 = 0, "PGOUTBOX_HEARTBEAT_INTERVAL_SECS";
        /// Milliseconds between standby status updates [default: 1000]
        status_interval_ms: u64 = 1000, "PGOUTBOX_STATUS_INTERVAL_MS";
        /// Seconds without any message from PostgreSQL (a reply is requested first) before the replication connection counts as dead [default: 60]
        replication_timeout_secs: u64 = 60, "PGOUTBOX_REPLICATION_TIMEOUT_SECS";
    }
    KAFKA {
        /// Kafka bootstrap servers, e.g. kafka-1:9092,kafka-2:9092 (required with destination = kafka)
        kafka_brokers: String = String::new(), "PGOUTBOX_KAFKA_BROKERS";
        /// File holding the Kafka SASL password (sets sasl.password)
        kafka_sasl_password_file: PathBuf = PathBuf::new(), "PGOUTBOX_KAFKA_SASL_PASSWORD_FILE";
        /// Exactly-once: the producer's transactional.id, stable across restarts [default: pgoutbox-<slot>]
        transactional_id: String = String::new(), "PGOUTBOX_TRANSACTIONAL_ID";
        /// Exactly-once: compacted topic recording (slot, end_lsn) per Kafka transaction [default: pgoutbox.offsets]
        offsets_topic: String = pgoutbox::config::DEFAULT_OFFSETS_TOPIC.into(), "PGOUTBOX_OFFSETS_TOPIC";
        /// Exactly-once: milliseconds between Kafka transaction commits [default: 100]
        transaction_interval_ms: u64 = 100, "PGOUTBOX_TRANSACTION_INTERVAL_MS";
        /// Exactly-once: skip the start-up check that the brokers hide aborted transactions from read_committed readers, and take every offsets record read as committed; only for librdkafka's mock cluster in tests, which does not hide them (true/false) [default: false]
        kafka_trust_read_committed: bool = false, "PGOUTBOX_KAFKA_TRUST_READ_COMMITTED";
    }
    NATS {
        /// NATS server URL(s), comma-separated (a cluster's nodes, tried in order), each with its own credentials: nats://user:password@host:port or nats://token@host:port [default: nats://127.0.0.1:4222]
        nats_url: String = pgoutbox::config::nats::DEFAULT_URL.into(), "PGOUTBOX_NATS_URL";
        /// NATS credentials file (.creds: JWT and NKey seed) [default: none]
        nats_credentials_file: PathBuf = PathBuf::new(), "PGOUTBOX_NATS_CREDENTIALS_FILE";
        /// A file holding a user NKey seed (SU…), for servers whose users are NKeys [default: none]
        nats_nkey_file: PathBuf = PathBuf::new(), "PGOUTBOX_NATS_NKEY_FILE";
        /// JetStream stream that stores the outbox subjects (check looks it up, setup can create it) [default: OUTBOX]
        nats_stream: String = pgoutbox::config::nats::DEFAULT_STREAM.into(), "PGOUTBOX_NATS_STREAM";
        /// Seconds of duplicate removal (Nats-Msg-Id) the stream must keep at least: check fails on a shorter duplicate_window [default: 120]
        nats_duplicate_window_secs: u64 = 120, "PGOUTBOX_NATS_DUPLICATE_WINDOW_SECS";
        /// Milliseconds the server may answer nothing (no PubAck for any publish) before a publish counts as failed [default: 10000]
        nats_ack_timeout_ms: u64 = 10_000, "PGOUTBOX_NATS_ACK_TIMEOUT_MS";
        /// Publishes awaiting acknowledgement at most [default: 16384]
        nats_max_pending: usize = 16384, "PGOUTBOX_NATS_MAX_PENDING";
        /// Root certificate(s) (PEM) that the server's certificate may chain to, besides the system's; requires TLS [default: the system's only]
        nats_tls_ca_file: PathBuf = PathBuf::new(), "PGOUTBOX_NATS_TLS_CA_FILE";
        /// Client certificate (PEM) for a server that verifies clients (mutual TLS); with nats_tls_key_file [default: none]
        nats_tls_cert_file: PathBuf = PathBuf::new(), "PGOUTBOX_NATS_TLS_CERT_FILE";
        /// Private key (PEM) of nats_tls_cert_file [default: none]
        nats_tls_key_file: PathBuf = PathBuf::new(), "PGOUTBOX_NATS_TLS_KEY_FILE";
    }
    RABBITMQ {
        /// RabbitMQ URL, amqp://user:password@host:port/vhost (amqps:// for TLS; %2f is the vhost /) [default: amqp://guest:guest@127.0.0.1:5672/%2f]
        rabbitmq_url: String = pgoutbox::config::rabbitmq::DEFAULT_URL.into(), "PGOUTBOX_RABBITMQ_URL";
        /// Exchange to publish to, the topic being the routing key (check looks it up, setup can declare it) [default: outbox]
        rabbitmq_exchange: String = pgoutbox::config::rabbitmq::DEFAULT_EXCHANGE.into(), "PGOUTBOX_RABBITMQ_EXCHANGE";
        /// Milliseconds the broker may confirm nothing before a publish counts as failed (paused while it blocks publishers) [default: 10000]
        rabbitmq_ack_timeout_ms: u64 = 10_000, "PGOUTBOX_RABBITMQ_ACK_TIMEOUT_MS";
        /// Publishes awaiting their confirm at most [default: 4096]
        rabbitmq_max_pending: usize = 4096, "PGOUTBOX_RABBITMQ_MAX_PENDING";
        /// Root certificate(s) (PEM) that an amqps:// node's certificate may chain to, besides the system's [default: the system's only]
        rabbitmq_tls_ca_file: PathBuf = PathBuf::new(), "PGOUTBOX_RABBITMQ_TLS_CA_FILE";
        /// Client certificate (PEM) for a node that verifies peers (mutual TLS, amqps:// only); with rabbitmq_tls_key_file [default: none]
        rabbitmq_tls_cert_file: PathBuf = PathBuf::new(), "PGOUTBOX_RABBITMQ_TLS_CERT_FILE";
        /// Private key (PEM) of rabbitmq_tls_cert_file [default: none]
        rabbitmq_tls_key_file: PathBuf = PathBuf::new(), "PGOUTBOX_RABBITMQ_TLS_KEY_FILE";
    }
    EVENTS {
        /// Topic per event; ${routedByValue} is the route column's value [default: outbox.event.${routedByValue}]
        topic_template: String = TopicTemplate::DEFAULT.into(), "PGOUTBOX_TOPIC_TEMPLATE";
        /// Prefix of pg_logical_emit_message records that are outbox events (table-less outbox); empty = off [default: outbox]
        message_prefix: String = "outbox".into(), "PGOUTBOX_MESSAGE_PREFIX";
        /// Extra columns placed as record headers, column[:header] separated by commas, e.g. tenant_id:x-tenant,region [default: none]
        additional_headers: String = String::new(), "PGOUTBOX_ADDITIONAL_HEADERS";
        /// Column that becomes the `id` header [default: id]
        id_column: String = "id".into(), "PGOUTBOX_ID_COLUMN";
        /// Column that fills the topic template [default: aggregatetype]
        route_column: String = "aggregatetype".into(), "PGOUTBOX_ROUTE_COLUMN";
        /// Column that becomes the record key [default: aggregateid]
        key_column: String = "aggregateid".into(), "PGOUTBOX_KEY_COLUMN";
        /// Column that becomes the `type` header [default: type]
        type_column: String = "type".into(), "PGOUTBOX_TYPE_COLUMN";
        /// Column that becomes the record value [default: payload]
        payload_column: String = "payload".into(), "PGOUTBOX_PAYLOAD_COLUMN";
        /// Column whose integer value is the record's partition; empty = the key decides [default: none]
        partition_column: String = String::new(), "PGOUTBOX_PARTITION_COLUMN";
        /// A NULL or empty payload becomes a tombstone (true/false); otherwise it is an empty value [default: false]
        tombstone_on_empty_payload: bool = false, "PGOUTBOX_TOMBSTONE_ON_EMPTY_PAYLOAD";
        /// A NULL key column makes the event a poison event (true/false); otherwise it is delivered without a key [default: false]
        require_key: bool = false, "PGOUTBOX_REQUIRE_KEY";
        /// An UPDATE of an outbox row (publication publishing updates): warn, error (log and go on) or fatal (stop) [default: warn]
        on_update: String = "warn".into(), "PGOUTBOX_ON_UPDATE";
    }
    DELIVERY {
        /// Where events go: kafka, nats (JetStream) or rabbitmq [default: kafka]
        destination: String = "kafka".into(), "PGOUTBOX_DESTINATION";
        /// Delivery mode: at-least-once, at-most-once (no duplicates, may lose on a crash) or exactly-once (Kafka transactions; NATS: duplicate removal) [default: at-least-once]
        delivery: String = "at-least-once".into(), "PGOUTBOX_DELIVERY";
        /// An event the destination refuses for good or that cannot be routed: fail (stop), dead-letter, or skip (log and count) [default: fail]
        on_poison: String = "fail".into(), "PGOUTBOX_ON_POISON";
        /// Topic for on_poison = dead-letter [default: pgoutbox.dead-letter]
        dead_letter_topic: String = pgoutbox::config::DEFAULT_DEAD_LETTER_TOPIC.into(), "PGOUTBOX_DEAD_LETTER_TOPIC";
        /// Pause reading WAL while this many events await acks [default: 10000]
        max_in_flight_events: usize = 10_000, "PGOUTBOX_MAX_IN_FLIGHT_EVENTS";
        /// Pause reading WAL while in-flight events hold this many bytes [default: 33554432]
        max_in_flight_bytes: usize = 32 << 20, "PGOUTBOX_MAX_IN_FLIGHT_BYTES";
        /// Seconds to wait for in-flight acks on SIGTERM/SIGINT [default: 10]
        shutdown_timeout_secs: u64 = 10, "PGOUTBOX_SHUTDOWN_TIMEOUT_SECS";
    }
    OPERATIONS {
        /// Hot standby: stream only while holding the slot's HA lock (true/false) [default: false]
        ha: bool = false, "PGOUTBOX_HA";
        /// HA: seconds a leader may renew nothing (frozen, cut off) before a standby terminates its lock session and walsender and takes over; at least 3 [default: 10]
        ha_lease_secs: u64 = 10, "PGOUTBOX_HA_LEASE_SECS";
        /// Address of the HTTP listener for /metrics, /healthz, /readyz; empty = off [default: 127.0.0.1:9187]
        metrics_addr: String = "127.0.0.1:9187".into(), "PGOUTBOX_METRICS_ADDR";
        /// /readyz fails while the slot's unconfirmed lag exceeds this many bytes [default: 268435456]
        ready_max_lag_bytes: i64 = 256 << 20, "PGOUTBOX_READY_MAX_LAG_BYTES";
        /// Log format: text or json [default: text]
        log_format: LogFormat = LogFormat::Text, "PGOUTBOX_LOG_FORMAT";
    }
}

impl Settings {
    /// Reads the file named by `--config` (if any) and merges it under flags and env.
    pub fn load(args: SettingArgs) -> anyhow::Result<Settings> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileSettings::default(),
        };
        Settings::merge(args, file)
    }

    /// The configuration; fails on missing or contradictory settings. Admin commands that
    /// never produce pass `need_kafka = false`.
    pub fn config(&self, need_kafka: bool) -> anyhow::Result<Config> {
        if self.postgres_url.is_empty() {
            bail!("no PostgreSQL URL: set postgres_url in the config file, PGOUTBOX_POSTGRES_URL or --postgres-url");
        }
        let destination: DestinationKind = self.destination.parse().map_err(anyhow::Error::msg)?;
        let need_kafka = need_kafka && destination == DestinationKind::Kafka;
        if need_kafka && self.kafka_brokers.is_empty() {
            bail!("no Kafka brokers: set kafka_brokers in the config file, PGOUTBOX_KAFKA_BROKERS or --kafka-brokers");
        }
        let mut cfg = Config::new(self.postgres_url.clone(), self.kafka_brokers.clone());
        cfg.postgres_password = self.postgres_password()?;
        if !self.postgres_sslmode.is_empty() {
            cfg.sslmode = Some(self.postgres_sslmode.parse()?);
        }
        if !self.postgres_sslrootcert.as_os_str().is_empty() {
            cfg.sslrootcert = Some(self.postgres_sslrootcert.clone());
        }
        cfg.slot = self.slot.clone();
        cfg.publication = self.publication.clone();
        cfg.outbox = self.outbox_config()?;
        cfg.message_prefix_explicit =
            self.explicit.contains("message_prefix") && !self.message_prefix.is_empty();
        for t in &self.tables {
            cfg.extra_tables.push(t.apply(&cfg.outbox)?);
        }
        cfg.on_update = self.on_update.parse().map_err(anyhow::Error::msg)?;
        cfg.on_poison = self.on_poison.parse().map_err(anyhow::Error::msg)?;
        cfg.dead_letter_topic = self.dead_letter_topic.clone();
        cfg.kafka.properties = self.kafka_properties.clone();
        cfg.delivery = self.delivery.parse().map_err(anyhow::Error::msg)?;
        cfg.destination = destination;
        cfg.nats = pgoutbox::config::NatsConfig {
            url: self.nats_url.clone(),
            stream: self.nats_stream.clone(),
            credentials_file: path(&self.nats_credentials_file),
            nkey_file: path(&self.nats_nkey_file),
            duplicate_window: Duration::from_secs(self.nats_duplicate_window_secs),
            ack_timeout: Duration::from_millis(self.nats_ack_timeout_ms),
            max_pending: self.nats_max_pending,
            tls_ca_file: path(&self.nats_tls_ca_file),
            tls_cert_file: path(&self.nats_tls_cert_file),
            tls_key_file: path(&self.nats_tls_key_file),
        };
        cfg.rabbitmq = pgoutbox::config::RabbitConfig {
            url: self.rabbitmq_url.clone(),
            exchange: self.rabbitmq_exchange.clone(),
            ack_timeout: Duration::from_millis(self.rabbitmq_ack_timeout_ms),
            max_pending: self.rabbitmq_max_pending,
            tls_ca_file: path(&self.rabbitmq_tls_ca_file),
            tls_cert_file: path(&self.rabbitmq_tls_cert_file),
            tls_key_file: path(&self.rabbitmq_tls_key_file),
        };
        cfg.kafka.transactional_id = Some(self.transactional_id.clone()).filter(|t| !t.is_empty());
        cfg.kafka.trust_read_committed = self.kafka_trust_read_committed;
        cfg.offsets_topic = self.offsets_topic.clone();
        cfg.source = self.source.parse().map_err(anyhow::Error::msg)?;
        cfg.poll = pgoutbox::poll::PollConfig {
            interval: Duration::from_millis(self.poll_interval_ms),
            batch: self.poll_batch,
            cleanup: self.poll_cleanup.parse().map_err(anyhow::Error::msg)?,
        };
        cfg.transaction_interval = Duration::from_millis(self.transaction_interval_ms);
        if !self.kafka_sasl_password_file.as_os_str().is_empty() {
            let pw = read_secret(&self.kafka_sasl_password_file)?;
            cfg.kafka.properties.push(("sasl.password".into(), pw));
        }
        if need_kafka {
            cfg.producer().producer_config(cfg.plan())?;
        }
        cfg.status_interval = Duration::from_millis(self.status_interval_ms);
        cfg.max_in_flight_events = self.max_in_flight_events;
        cfg.max_in_flight_bytes = self.max_in_flight_bytes;
        cfg.shutdown_timeout = Duration::from_secs(self.shutdown_timeout_secs);
        cfg.replication_timeout = Duration::from_secs(self.replication_timeout_secs);
        cfg.create_slot = self.create_slot;
        cfg.failover = self.failover;
        cfg.allow_unsynchronized_failover = self.allow_unsynchronized_failover;
        cfg.ha = self.ha;
        cfg.ha_lease = Duration::from_secs(self.ha_lease_secs);
        cfg.heartbeat_interval = (self.heartbeat_interval_secs > 0)
            .then(|| Duration::from_secs(self.heartbeat_interval_secs));
        cfg.validate()?;
        Ok(cfg)
    }

    /// The main outbox table's routing.
    fn outbox_config(&self) -> anyhow::Result<OutboxConfig> {
        Ok(OutboxConfig {
            table: TableName::parse(&self.table).map_err(anyhow::Error::msg)?,
            id_column: self.id_column.clone(),
            route_column: self.route_column.clone(),
            key_column: self.key_column.clone(),
            type_column: self.type_column.clone(),
            payload_column: self.payload_column.clone(),
            topic_template: self.topic_template.parse()?,
            message_prefix: Some(self.message_prefix.clone()).filter(|p| !p.is_empty()),
            additional_headers: parse_headers(&self.additional_headers),
            partition_column: Some(self.partition_column.clone()).filter(|c| !c.is_empty()),
            tombstone_on_empty_payload: self.tombstone_on_empty_payload,
            require_key: self.require_key,
        })
    }

    /// Every secret these settings hold, for what the binary prints to hide.
    pub fn secrets(&self) -> Vec<String> {
        pgoutbox::config::secrets_of(
            &[&self.postgres_url, &self.nats_url, &self.rabbitmq_url],
            self.postgres_password().ok().flatten().as_deref(),
            &self.kafka_properties,
        )
    }

    /// The password from `postgres_password` or `postgres_password_file` (not both).
    fn postgres_password(&self) -> anyhow::Result<Option<String>> {
        let file = !self.postgres_password_file.as_os_str().is_empty();
        match (self.postgres_password.is_empty(), file) {
            (true, false) => Ok(None),
            (false, false) => Ok(Some(self.postgres_password.clone())),
            (true, true) => read_secret(&self.postgres_password_file).map(Some),
            (false, true) => bail!("set postgres_password or postgres_password_file, not both"),
        }
    }
}

/// `column[:header],…` → (column, header) pairs.
/// An optional path setting: empty means unset.
fn path(p: &Path) -> Option<PathBuf> {
    Some(p.to_path_buf()).filter(|p| !p.as_os_str().is_empty())
}

/// Secrets out of the shown settings; the `[kafka]` properties and `[[tables]]` in.
fn redact(
    t: &mut toml::Table,
    kafka: &[(String, String)],
    tables: &[TableSettings],
) -> anyhow::Result<()> {
    for key in ["postgres_url", "nats_url", "rabbitmq_url"] {
        if let Some(toml::Value::String(url)) = t.get_mut(key) {
            *url = pgoutbox::config::redact_url(url);
        }
    }
    if let Some(toml::Value::String(pw)) = t.get_mut("postgres_password") {
        if !pw.is_empty() {
            *pw = "***".into();
        }
    }
    let mut props = toml::Table::new();
    for (k, v) in kafka {
        let v = match pgoutbox::config::is_secret_property(k) {
            true => "***".to_owned(),
            false => v.clone(),
        };
        props.insert(k.clone(), toml::Value::String(v));
    }
    t.insert("kafka".into(), toml::Value::Table(props));
    if !tables.is_empty() {
        t.insert("tables".into(), toml::Value::try_from(tables)?);
    }
    Ok(())
}

fn read_file(path: &Path) -> anyhow::Result<FileSettings> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    // toml's message names the offending key and its line, e.g. "unknown field `slott`".
    toml::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "config file {}: {}",
            path.display(),
            e.to_string().replace('\n', " ").trim()
        )
    })
}

fn read_secret(path: &Path) -> anyhow::Result<String> {
    let s = std::fs::read_to_string(path)
        .with_context(|| format!("reading secret file {}", path.display()))?;
    Ok(s.trim_end_matches(['\n', '\r']).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> FileSettings {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn precedence_flag_env_over_file_over_default() {
        let args = SettingArgs {
            slot: Some("from_flag".into()),
            ..Default::default()
        };
        let f = file("slot = 'from_file'\npublication = 'pub_file'\n");
        let s = Settings::merge(args, f).unwrap();
        assert_eq!(s.slot, "from_flag");
        assert_eq!(s.publication, "pub_file");
        assert_eq!(s.table, "public.outbox");
        assert_eq!(s.status_interval_ms, 1000);
    }

    #[test]
    fn tables_inherit_the_main_routing() {
        let f = file(
            "table = 'app.outbox'\nkey_column = 'k'\n\n[[tables]]\ntable = 'billing.outbox'\ntopic_template = 'billing.${routedByValue}'\npartition_column = 'shard'\n",
        );
        let mut s = Settings::merge(SettingArgs::default(), f).unwrap();
        s.postgres_url = "postgres://u@h/db".into();
        let cfg = s.config(false).unwrap();
        let t = &cfg.extra_tables[0];
        assert_eq!(t.table.to_string(), "billing.outbox");
        assert_eq!(t.key_column, "k");
        assert_eq!(t.partition_column.as_deref(), Some("shard"));
        assert_eq!(t.topic_template.render("x"), "billing.x");
        assert!(
            toml::from_str::<FileSettings>("[[tables]]\ntable = 'a'\ntopik = 'x'")
                .unwrap_err()
                .to_string()
                .contains("topik")
        );
        s.tables.push(TableSettings {
            table: "app.outbox".into(),
            ..Default::default()
        });
        assert!(s.config(false).is_err(), "the same table twice");
    }

    #[test]
    fn unknown_keys_are_rejected_by_name() {
        let e = toml::from_str::<FileSettings>("slott = 'x'").unwrap_err();
        assert!(e.to_string().contains("slott"), "{e}");
    }

    #[test]
    fn kafka_table_then_flags() {
        let args = SettingArgs {
            kafka_properties: vec!["linger.ms=20".into()],
            ..Default::default()
        };
        let f = file("[kafka]\n\"linger.ms\" = 10\n\"compression.type\" = \"zstd\"\n");
        let s = Settings::merge(args, f).unwrap();
        assert_eq!(
            s.kafka_properties,
            vec![
                ("compression.type".to_owned(), "zstd".to_owned()),
                ("linger.ms".to_owned(), "10".to_owned()),
                ("linger.ms".to_owned(), "20".to_owned()),
            ]
        );
    }

    #[test]
    fn password_from_file_and_conflict() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        std::fs::write(&p, "s3cret\n").unwrap();
        let mut s = Settings::merge(SettingArgs::default(), FileSettings::default()).unwrap();
        s.postgres_password_file = p;
        assert_eq!(s.postgres_password().unwrap().as_deref(), Some("s3cret"));
        s.postgres_password = "other".into();
        assert!(s.postgres_password().is_err());
    }
}
