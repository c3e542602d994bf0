//! The delivery modes: how far a crash may lose or repeat events (docs/architecture.md,
//! "Invariants").

use std::str::FromStr;

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

#[cfg(test)]
mod tests {
    use super::*;

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
