//! The destination's part of [`Config::validate`]: its names and limits, and whether the
//! delivery mode can be kept ([`Plan`]).

use super::delivery::Plan;
use super::{nats, rabbitmq, Config, ConfigError, DestinationKind};

impl Config {
    pub(super) fn validate_destination(&self) -> Result<(), ConfigError> {
        Plan::new(self.delivery, self.source, self.destination)?;
        match self.destination {
            DestinationKind::Kafka => {
                for topic in [&self.dead_letter_topic, &self.offsets_topic] {
                    if !crate::outbox::is_valid_topic(topic) {
                        return Err(ConfigError::Topic(topic.clone()));
                    }
                }
            }
            DestinationKind::Nats => {
                if !nats::is_valid_subject(&self.dead_letter_topic) {
                    return Err(ConfigError::Subject(self.dead_letter_topic.clone()));
                }
                if !nats::is_valid_stream(&self.nats.stream) {
                    return Err(ConfigError::Stream(self.nats.stream.clone()));
                }
                if self.nats.max_pending == 0 {
                    return Err(ConfigError::Zero("nats_max_pending"));
                }
                paired(
                    (&self.nats.tls_cert_file, "nats_tls_cert_file"),
                    (&self.nats.tls_key_file, "nats_tls_key_file"),
                )?;
            }
            DestinationKind::RabbitMq => {
                if !rabbitmq::is_valid_routing_key(&self.dead_letter_topic) {
                    return Err(ConfigError::RoutingKey(self.dead_letter_topic.clone()));
                }
                if !rabbitmq::is_valid_exchange(&self.rabbitmq.exchange) {
                    return Err(ConfigError::Exchange(self.rabbitmq.exchange.clone()));
                }
                if self.rabbitmq.max_pending == 0 {
                    return Err(ConfigError::Zero("rabbitmq_max_pending"));
                }
                paired(
                    (&self.rabbitmq.tls_cert_file, "rabbitmq_tls_cert_file"),
                    (&self.rabbitmq.tls_key_file, "rabbitmq_tls_key_file"),
                )?;
            }
        }
        Ok(())
    }
}

/// A client certificate without its key, or a key without its certificate, is refused.
fn paired<T>(
    (cert, cert_name): (&Option<T>, &'static str),
    (key, key_name): (&Option<T>, &'static str),
) -> Result<(), ConfigError> {
    if cert.is_some() != key.is_some() {
        return Err(ConfigError::ClientCertPair {
            cert: cert_name,
            key: key_name,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    type Pair<'a> = (&'a mut Option<PathBuf>, &'a mut Option<PathBuf>);

    fn client_cert(c: &mut Config) -> Pair<'_> {
        match c.destination {
            DestinationKind::Nats => (&mut c.nats.tls_cert_file, &mut c.nats.tls_key_file),
            _ => (&mut c.rabbitmq.tls_cert_file, &mut c.rabbitmq.tls_key_file),
        }
    }

    #[test]
    fn a_client_certificate_needs_its_key_and_a_key_its_certificate() {
        for kind in [DestinationKind::Nats, DestinationKind::RabbitMq] {
            let mut c = Config::new("postgres://u@h/db", "k:9092");
            c.destination = kind;
            assert!(c.validate().is_ok(), "{kind:?}: neither");
            *client_cert(&mut c).0 = Some("client.pem".into());
            let err = c.validate().err();
            assert!(
                matches!(err, Some(ConfigError::ClientCertPair { .. })),
                "{kind:?}: certificate alone: {err:?}"
            );
            *client_cert(&mut c).1 = Some("client.key".into());
            assert!(c.validate().is_ok(), "{kind:?}: both");
            *client_cert(&mut c).0 = None;
            assert!(c.validate().is_err(), "{kind:?}: key alone");
        }
    }
}
