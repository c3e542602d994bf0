//! Producer configuration. Defaults are set here once; users may pass any librdkafka
//! property through, except ones that would break at-least-once delivery.

use rdkafka::ClientConfig;

pub use crate::config::kafka::KafkaConfig;
use crate::config::{DeliveryMode, Plan};

/// A producer configuration that cannot work or would weaken the delivery guarantee.
#[derive(Debug, thiserror::Error)]
pub enum KafkaConfigError {
    #[error("no Kafka brokers given: set PGOUTBOX_KAFKA_BROKERS or --kafka-brokers")]
    NoBrokers,
    #[error("Kafka property {key}={value} is not allowed: {mode} delivery needs {need}")]
    Weakens {
        key: String,
        value: String,
        need: &'static str,
        mode: DeliveryMode,
    },
    #[error("Kafka property {key} is set by pgoutbox: use {instead}")]
    Reserved { key: String, instead: &'static str },
    #[error("Kafka configuration rejected by librdkafka: {0}")]
    Rejected(String),
}

/// Properties we set unless the user overrides them (documented in docs/kafka.md).
const DEFAULTS: &[(&str, &str)] = &[
    ("client.id", "pgoutbox"),
    // Small batches, low latency: the outbox is usually latency-sensitive.
    ("linger.ms", "5"),
    // Give up on a message after 5 minutes; the stream then stops and resumes from the slot.
    ("message.timeout.ms", "300000"),
    ("compression.type", "none"),
];

/// Producer properties a consumer would warn about.
const PRODUCER_ONLY: &[&str] = &[
    "acks",
    "linger.ms",
    "message.timeout.ms",
    "compression.type",
    "enable.idempotence",
    "transactional.id",
    "batch.size",
    "batch.num.messages",
    "queue.buffering.max.messages",
    "queue.buffering.max.kbytes",
    "retries",
    "retry.backoff.ms",
    "max.in.flight.requests.per.connection",
    "transaction.timeout.ms",
];

/// Properties at-least-once depends on; a user value must agree.
const ENFORCED: &[(&str, &[&str], &str)] = &[
    ("enable.idempotence", &["true"], "enable.idempotence=true"),
    ("acks", &["all", "-1"], "acks=all"),
];

/// The librdkafka configurations of [`KafkaConfig`].
pub trait Librdkafka {
    /// Connection settings for any client (the offsets reader): brokers and user properties.
    fn client_config(&self) -> Result<ClientConfig, KafkaConfigError>;
    /// The librdkafka configuration for the producer of this delivery mode.
    fn producer_config(&self, plan: Plan) -> Result<ClientConfig, KafkaConfigError>;
}

impl Librdkafka for KafkaConfig {
    fn client_config(&self) -> Result<ClientConfig, KafkaConfigError> {
        if self.brokers.trim().is_empty() {
            return Err(KafkaConfigError::NoBrokers);
        }
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        for (k, v) in &self.properties {
            // Producer-only settings would only make the consumer log warnings.
            if !PRODUCER_ONLY.contains(&k.as_str()) {
                c.set(k, v);
            }
        }
        Ok(c)
    }

    fn producer_config(&self, plan: Plan) -> Result<ClientConfig, KafkaConfigError> {
        // At-most-once may trade acks for latency; the idempotent producer needs acks=all.
        let enforced: &[_] = match plan.confirms_first() {
            true => &[],
            false => ENFORCED,
        };
        if self.brokers.trim().is_empty() {
            return Err(KafkaConfigError::NoBrokers);
        }
        let mut c = ClientConfig::new();
        for (k, v) in DEFAULTS {
            c.set(*k, *v);
        }
        c.set("bootstrap.servers", &self.brokers);
        for (k, v) in &self.properties {
            if k == "transactional.id" {
                return Err(KafkaConfigError::Reserved {
                    key: k.clone(),
                    instead: "transactional_id (with delivery = exactly-once)",
                });
            }
            if let Some((_, ok, need)) = enforced.iter().find(|(key, _, _)| key == k) {
                if !ok.contains(&v.to_ascii_lowercase().as_str()) {
                    return Err(KafkaConfigError::Weakens {
                        key: k.clone(),
                        value: v.clone(),
                        need,
                        mode: plan.mode(),
                    });
                }
            }
            c.set(k, v);
        }
        for (k, ok, _) in ENFORCED {
            let user = self.properties.iter().rev().find(|(key, _)| key == k);
            match user {
                Some(_) if enforced.is_empty() => {}
                _ => {
                    c.set(*k, ok[0]);
                }
            }
        }
        if plan.transactional() {
            let id = self.transactional_id.as_deref().unwrap_or("pgoutbox");
            c.set("transactional.id", id);
            // librdkafka requires message.timeout.ms <= transaction.timeout.ms (60 s default).
            let user = |key: &str| self.properties.iter().any(|(k, _)| k == key);
            if !user("message.timeout.ms") {
                let txn = c
                    .get("transaction.timeout.ms")
                    .unwrap_or("60000")
                    .to_owned();
                c.set("message.timeout.ms", txn);
            }
        }
        let lowered_acks = c.get("acks").is_some_and(|a| !matches!(a, "all" | "-1"));
        let user_idempotence = self
            .properties
            .iter()
            .any(|(k, _)| k == "enable.idempotence");
        if lowered_acks && !user_idempotence {
            c.set("enable.idempotence", "false");
        }
        // librdkafka checks names and values here, without any network: a typo fails at start.
        c.create_native_config()
            .map_err(|e| KafkaConfigError::Rejected(e.to_string()))?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enforces_idempotence_and_acks() {
        let cfg = KafkaConfig {
            brokers: "b:9092".into(),
            properties: vec![("linger.ms".into(), "20".into())],
            ..KafkaConfig::default()
        };
        let c = cfg.producer_config(Plan::AtLeastOnce).unwrap();
        assert_eq!(c.get("enable.idempotence"), Some("true"));
        assert_eq!(c.get("acks"), Some("all"));
        assert_eq!(c.get("linger.ms"), Some("20"));
        assert_eq!(c.get("bootstrap.servers"), Some("b:9092"));
    }

    #[test]
    fn exactly_once_is_transactional_within_its_timeout() {
        let cfg = KafkaConfig {
            brokers: "b".into(),
            transactional_id: Some("pgoutbox-s1".into()),
            ..KafkaConfig::default()
        };
        let c = cfg.producer_config(Plan::Transactional).unwrap();
        assert_eq!(c.get("transactional.id"), Some("pgoutbox-s1"));
        assert_eq!(c.get("message.timeout.ms"), Some("60000"));
        assert_eq!(c.get("acks"), Some("all"));
        let own_id = KafkaConfig {
            properties: vec![("transactional.id".into(), "x".into())],
            ..cfg
        };
        let e = own_id
            .producer_config(Plan::Transactional)
            .unwrap_err()
            .to_string();
        assert!(e.contains("transactional_id"), "{e}");
    }

    #[test]
    fn at_most_once_may_lower_acks() {
        let cfg = KafkaConfig {
            brokers: "b".into(),
            properties: vec![("acks".into(), "1".into())],
            transactional_id: None,
            trust_read_committed: false,
        };
        let c = cfg.producer_config(Plan::AtMostOnce).unwrap();
        assert_eq!(c.get("acks"), Some("1"));
        assert_eq!(c.get("enable.idempotence"), Some("false"));
        let default = KafkaConfig {
            properties: vec![],
            ..cfg
        };
        let c = default.producer_config(Plan::AtMostOnce).unwrap();
        assert_eq!(c.get("acks"), Some("all"));
        assert_eq!(c.get("enable.idempotence"), Some("true"));
    }

    #[test]
    fn rejects_weaker_settings() {
        for (k, v) in [("acks", "1"), ("enable.idempotence", "false")] {
            let cfg = KafkaConfig {
                brokers: "b".into(),
                properties: vec![(k.into(), v.into())],
                ..KafkaConfig::default()
            };
            assert!(cfg.producer_config(Plan::AtLeastOnce).is_err(), "{k}={v}");
        }
        assert!(KafkaConfig::default()
            .producer_config(Plan::AtLeastOnce)
            .is_err());
    }

    /// librdkafka is built with OpenSSL: TLS and SASL/SCRAM settings are accepted.
    #[test]
    fn tls_and_sasl_properties_are_supported() {
        let cfg = KafkaConfig {
            brokers: "127.0.0.1:9".into(),
            properties: vec![
                ("security.protocol".into(), "SASL_SSL".into()),
                ("sasl.mechanism".into(), "SCRAM-SHA-512".into()),
                ("sasl.username".into(), "u".into()),
                ("sasl.password".into(), "p".into()),
            ],
            ..KafkaConfig::default()
        };
        let producer: Result<rdkafka::producer::BaseProducer, _> =
            cfg.producer_config(Plan::AtLeastOnce).unwrap().create();
        assert!(producer.is_ok(), "{:?}", producer.err());
    }

    #[test]
    fn unknown_and_invalid_properties_fail_early() {
        for (k, v) in [("no.such.property", "1"), ("linger.ms", "soon")] {
            let cfg = KafkaConfig {
                brokers: "b".into(),
                properties: vec![(k.into(), v.into())],
                ..KafkaConfig::default()
            };
            let e = cfg
                .producer_config(Plan::AtLeastOnce)
                .unwrap_err()
                .to_string();
            assert!(e.contains(k), "{e}");
        }
    }
}
