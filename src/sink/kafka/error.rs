//! Kafka error classes: they decide whether the pipeline waits, stops, or (later) dead-letters.

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// How the pipeline must treat a Kafka error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The local queue is full: wait for deliveries, then send again.
    Backpressure,
    /// Kafka will never accept this record (too large, no such topic, not authorized).
    Final,
    /// librdkafka gave up retrying (timeout, broker down): the stream restarts from the slot.
    Retriable,
}

/// Classifies an error returned by send or reported by a delivery callback.
pub fn classify(e: &KafkaError) -> ErrorClass {
    use RDKafkaErrorCode as C;
    let code = match e {
        KafkaError::MessageProduction(c) => *c,
        _ => return ErrorClass::Retriable,
    };
    match code {
        C::QueueFull => ErrorClass::Backpressure,
        C::MessageSizeTooLarge
        | C::InvalidMessageSize
        | C::InvalidMessage
        | C::MessageBatchTooLarge
        | C::InvalidRecord
        | C::PolicyViolation
        | C::UnknownTopicOrPartition
        | C::UnknownTopic
        | C::InvalidTopic
        | C::TopicAuthorizationFailed
        | C::ClusterAuthorizationFailed => ErrorClass::Final,
        _ => ErrorClass::Retriable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        let p = KafkaError::MessageProduction;
        assert_eq!(
            classify(&p(RDKafkaErrorCode::QueueFull)),
            ErrorClass::Backpressure
        );
        assert_eq!(
            classify(&p(RDKafkaErrorCode::MessageSizeTooLarge)),
            ErrorClass::Final
        );
        assert_eq!(
            classify(&p(RDKafkaErrorCode::TopicAuthorizationFailed)),
            ErrorClass::Final
        );
        assert_eq!(
            classify(&p(RDKafkaErrorCode::MessageTimedOut)),
            ErrorClass::Retriable
        );
        assert_eq!(
            classify(&p(RDKafkaErrorCode::BrokerTransportFailure)),
            ErrorClass::Retriable
        );
    }
}
