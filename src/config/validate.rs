//! The destination's part of [`Config::validate`]: its names and limits, and which delivery
//! modes it can keep.

use super::{nats, rabbitmq, Config, ConfigError, DeliveryMode, DestinationKind, Source};

impl Config {
    pub(super) fn validate_destination(&self) -> Result<(), ConfigError> {
        match self.destination {
            DestinationKind::Kafka => {
                for topic in [&self.dead_letter_topic, &self.offsets_topic] {
                    if !crate::outbox::is_valid_topic(topic) {
                        return Err(ConfigError::Topic(topic.clone()));
                    }
                }
                if self.source == Source::Poll && self.delivery == DeliveryMode::ExactlyOnce {
                    return Err(ConfigError::PollExactlyOnce);
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
                if self.delivery == DeliveryMode::ExactlyOnce {
                    return Err(ConfigError::RabbitExactlyOnce);
                }
            }
        }
        Ok(())
    }
}
