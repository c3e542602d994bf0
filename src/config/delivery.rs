//! The delivery modes: how far a crash may lose or repeat events (docs/architecture.md,
//! "Invariants"), and [`Plan`]: how the configured mode is kept with the chosen source and
//! destination. Every part of pgoutbox that acts on the delivery mode asks the plan; the
//! decision is made here only.

use std::str::FromStr;

use super::{ConfigError, DestinationKind, Source};

/// What a consumer may see after pgoutbox crashes at any instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DeliveryMode {
    /// Nothing lost; events in flight at the crash are sent again (default).
    #[default]
    AtLeastOnce,
    /// Nothing sent twice; events in flight at the crash are lost. A transaction's position
    /// is confirmed to PostgreSQL before its events are handed to the producer.
    AtMostOnce,
    /// Nothing lost or repeated for `read_committed` consumers: Kafka transactions that also
    /// record the slot position in a compacted offsets topic.
    ExactlyOnce,
}

impl FromStr for DeliveryMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "at-least-once" => Ok(DeliveryMode::AtLeastOnce),
            "at-most-once" => Ok(DeliveryMode::AtMostOnce),
            "exactly-once" => Ok(DeliveryMode::ExactlyOnce),
            _ => Err(format!(
                "delivery must be at-least-once, at-most-once or exactly-once, not {s:?}"
            )),
        }
    }
}

impl std::fmt::Display for DeliveryMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DeliveryMode::AtLeastOnce => "at-least-once",
            DeliveryMode::AtMostOnce => "at-most-once",
            DeliveryMode::ExactlyOnce => "exactly-once",
        })
    }
}

/// What a destination offers towards exactly-once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExactlyOnceBy {
    /// Transactions that commit the events with the WAL position they end at (Kafka).
    Transactions,
    /// Removing resent duplicates by event id within a window (NATS `Nats-Msg-Id`).
    Deduplication,
    /// Nothing: a resend after a crash is a duplicate (RabbitMQ).
    Nothing,
}

/// How the pipeline keeps the configured delivery mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Confirm a transaction's position, then send its events: a crash loses, never repeats.
    AtMostOnce,
    /// Send, and confirm only past what the destination acknowledged: a crash repeats.
    AtLeastOnce,
    /// Exactly-once as at-least-once, the destination dropping what is resent.
    Deduplicated,
    /// Exactly-once in destination transactions that record their end position; the slot is
    /// confirmed past what is committed, and a restart resumes from the recorded position.
    Transactional,
}

impl Plan {
    /// The one decision: `mode` with events from `source`, delivered to `destination`.
    pub fn new(
        mode: DeliveryMode,
        source: Source,
        destination: DestinationKind,
    ) -> Result<Plan, ConfigError> {
        Ok(match (mode, destination.exactly_once()) {
            (DeliveryMode::AtMostOnce, _) => Plan::AtMostOnce,
            (DeliveryMode::AtLeastOnce, _) => Plan::AtLeastOnce,
            (DeliveryMode::ExactlyOnce, ExactlyOnceBy::Deduplication) => Plan::Deduplicated,
            // A polled row has no WAL position for a transaction to record.
            (DeliveryMode::ExactlyOnce, ExactlyOnceBy::Transactions) if source == Source::Poll => {
                return Err(ConfigError::PollExactlyOnce)
            }
            (DeliveryMode::ExactlyOnce, ExactlyOnceBy::Transactions) => Plan::Transactional,
            (DeliveryMode::ExactlyOnce, ExactlyOnceBy::Nothing) => {
                return Err(ConfigError::NoExactlyOnce(destination))
            }
        })
    }

    /// The destination's transactions carry the events (and the resume position).
    pub fn transactional(self) -> bool {
        self == Plan::Transactional
    }

    /// The delivery mode this plan keeps.
    pub fn mode(self) -> DeliveryMode {
        match self {
            Plan::AtMostOnce => DeliveryMode::AtMostOnce,
            Plan::AtLeastOnce => DeliveryMode::AtLeastOnce,
            Plan::Deduplicated | Plan::Transactional => DeliveryMode::ExactlyOnce,
        }
    }

    /// Events are sent only after their position is confirmed.
    pub fn confirms_first(self) -> bool {
        self == Plan::AtMostOnce
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_once_is_transactions_where_the_destination_has_them() {
        let plan = Plan::new(
            DeliveryMode::ExactlyOnce,
            Source::Replication,
            DestinationKind::Kafka,
        );
        assert!(matches!(plan, Ok(Plan::Transactional)));
    }

    #[test]
    fn exactly_once_is_at_least_once_where_the_destination_removes_duplicates() {
        for source in [Source::Replication, Source::Poll] {
            let plan = Plan::new(DeliveryMode::ExactlyOnce, source, DestinationKind::Nats);
            assert!(matches!(plan, Ok(Plan::Deduplicated)));
        }
    }

    #[test]
    fn exactly_once_is_refused_where_it_cannot_be_kept() {
        assert!(matches!(
            Plan::new(
                DeliveryMode::ExactlyOnce,
                Source::Poll,
                DestinationKind::Kafka
            ),
            Err(ConfigError::PollExactlyOnce)
        ));
        assert!(matches!(
            Plan::new(
                DeliveryMode::ExactlyOnce,
                Source::Replication,
                DestinationKind::RabbitMq
            ),
            Err(ConfigError::NoExactlyOnce(DestinationKind::RabbitMq))
        ));
    }

    #[test]
    fn the_other_modes_need_nothing_of_the_destination() {
        for by in [
            DestinationKind::Kafka,
            DestinationKind::Nats,
            DestinationKind::RabbitMq,
        ] {
            for source in [Source::Replication, Source::Poll] {
                let plan = |mode| Plan::new(mode, source, by).ok();
                assert_eq!(plan(DeliveryMode::AtMostOnce), Some(Plan::AtMostOnce));
                assert_eq!(plan(DeliveryMode::AtLeastOnce), Some(Plan::AtLeastOnce));
            }
        }
    }

    #[test]
    fn round_trip() {
        for m in [
            DeliveryMode::AtLeastOnce,
            DeliveryMode::AtMostOnce,
            DeliveryMode::ExactlyOnce,
        ] {
            assert_eq!(m.to_string().parse(), Ok(m));
        }
        assert!("once".parse::<DeliveryMode>().is_err());
    }
}
