//! The Kafka destination's settings: brokers, librdkafka pass-through properties and the
//! exactly-once `transactional.id`. What they become for librdkafka is the destination's
//! business (`destination::kafka::config`).

/// What the Kafka destination needs to build a producer.
#[derive(Debug, Clone, Default)]
pub struct KafkaConfig {
    /// `bootstrap.servers`, e.g. `localhost:9092`.
    pub brokers: String,
    /// Extra librdkafka properties (`key=value`), applied after our defaults.
    pub properties: Vec<(String, String)>,
    /// Exactly-once: the producer's `transactional.id`, stable across restarts so a newer
    /// instance fences an older one.
    pub transactional_id: Option<String>,
    /// Exactly-once: skip the start-up abort probe and take every offsets record a
    /// read_committed reader sees as committed. For librdkafka's mock cluster in tests only:
    /// it does not hide aborted transactions, so its tests count committed ones themselves.
    /// Default false.
    pub trust_read_committed: bool,
}

/// A `key=value` property that is not one.
#[derive(Debug, thiserror::Error)]
#[error("invalid Kafka property {0:?}: expected key=value")]
pub struct MalformedProperty(pub String);

impl KafkaConfig {
    /// Parses `key=value` into a pass-through property.
    pub fn parse_property(s: &str) -> Result<(String, String), MalformedProperty> {
        match s.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.trim().to_owned())),
            _ => Err(MalformedProperty(s.to_owned())),
        }
    }
}

/// Checks a `host:port` list (an optional `scheme://`, `[v6]:port`, or a bare host taking the
/// default port): a port given must be 1-65535, or librdkafka would quietly wrap it. Returns
/// the first entry that is wrong.
pub fn bad_broker(list: &str) -> Option<&str> {
    for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let addr = entry.split_once("://").map_or(entry, |(_, a)| a);
        let port = match addr.rsplit_once(':') {
            Some((host, port))
                if !host.is_empty() && (host.ends_with(']') || !host.contains(':')) =>
            {
                port
            }
            _ => continue,
        };
        if !matches!(port.parse::<u16>(), Ok(p) if p > 0) {
            return Some(entry);
        }
    }
    None
}

/// Whether a librdkafka property holds a secret (passwords, keys, tokens): redacted in logs.
pub fn is_secret_property(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["password", "secret", "jaas", "token"]
        .iter()
        .any(|s| k.contains(s))
        || k.ends_with(".pem")
        || k.contains("key.pem")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_properties() {
        assert_eq!(
            KafkaConfig::parse_property("sasl.mechanism = PLAIN").unwrap(),
            ("sasl.mechanism".into(), "PLAIN".into())
        );
        assert!(KafkaConfig::parse_property("novalue").is_err());
        assert!(KafkaConfig::parse_property("=x").is_err());
    }

    #[test]
    fn broker_ports_are_checked() {
        assert_eq!(bad_broker("a:9092,[::1]:9093,b,SSL://c:9094"), None);
        for bad in ["127.0.0.1:99999", "h:0", "h:x"] {
            assert_eq!(bad_broker(bad), Some(bad));
        }
        assert_eq!(bad_broker("a:1,[::1]:70000"), Some("[::1]:70000"));
    }
}
