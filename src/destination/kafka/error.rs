//! Kafka errors as the pipeline sees them: backpressure, or a refusal of some class.

use rdkafka::error::{KafkaError, RDKafkaErrorCode as C};

use crate::destination::{Class, Refusal};

/// The local queue is full: wait for deliveries, then send again.
pub fn is_backpressure(e: &KafkaError) -> bool {
    matches!(e, KafkaError::MessageProduction(C::QueueFull))
}

/// The class of an error returned by send or reported by a delivery callback.
pub fn class_of(e: &KafkaError) -> Class {
    let KafkaError::MessageProduction(code) = e else {
        return Class::Retriable;
    };
    match code {
        C::MessageSizeTooLarge | C::MessageBatchTooLarge | C::InvalidMessageSize => Class::TooLarge,
        C::UnknownTopicOrPartition | C::UnknownTopic | C::InvalidTopic => Class::InvalidTopic,
        C::TopicAuthorizationFailed | C::ClusterAuthorizationFailed => Class::NotAuthorized,
        C::InvalidMessage | C::InvalidRecord | C::PolicyViolation => Class::Refused,
        _ => Class::Retriable,
    }
}

/// What to change when Kafka refuses a record for good.
fn hint(class: Class) -> &'static str {
    match class {
        Class::TooLarge => {
            "; raise the producer's message.max.bytes (-X) and the topic's max.message.bytes, or make the payload smaller"
        }
        Class::InvalidTopic => "; create the topic, or enable topic auto-creation on the brokers",
        Class::NotAuthorized => "; grant this client WRITE (and IDEMPOTENT_WRITE) on the topic",
        _ => "",
    }
}

/// A Kafka error as a refusal.
pub fn refusal(e: &KafkaError) -> Refusal {
    let class = class_of(e);
    Refusal {
        class,
        message: e.to_string(),
        hint: hint(class),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        let p = KafkaError::MessageProduction;
        assert!(is_backpressure(&p(C::QueueFull)));
        assert!(!is_backpressure(&p(C::MessageTimedOut)));
        assert_eq!(class_of(&p(C::MessageSizeTooLarge)), Class::TooLarge);
        assert_eq!(
            class_of(&p(C::TopicAuthorizationFailed)),
            Class::NotAuthorized
        );
        assert_eq!(
            class_of(&p(C::UnknownTopicOrPartition)),
            Class::InvalidTopic
        );
        assert_eq!(class_of(&p(C::MessageTimedOut)), Class::Retriable);
        assert_eq!(class_of(&p(C::BrokerTransportFailure)), Class::Retriable);
        assert!(refusal(&p(C::MessageSizeTooLarge))
            .hint
            .contains("message.max.bytes"));
    }
}
