//! What to do with rows and events that cannot be delivered as configured.

use std::str::FromStr;

/// An UPDATE of an outbox row (the publication publishes updates): outbox rows are immutable
/// events, so an update is a mistake somewhere. DELETEs are always ignored (cleanup).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum UpdatePolicy {
    /// Log a warning and count it (default, like Debezium's `table.op.invalid.behavior`).
    #[default]
    Warn,
    /// Log an error and count it; streaming goes on.
    Error,
    /// Stop with an error naming the row's position: an operator must look.
    Fatal,
}

impl FromStr for UpdatePolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "warn" => Ok(UpdatePolicy::Warn),
            "error" => Ok(UpdatePolicy::Error),
            "fatal" => Ok(UpdatePolicy::Fatal),
            _ => Err(format!("on_update must be warn, error or fatal, not {s:?}")),
        }
    }
}

/// An event that can never be delivered: Kafka refuses it for good (too large, invalid
/// topic, not authorized) or it cannot be routed (NULL id or route, bad partition).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PoisonPolicy {
    /// Stop with an error naming the event (default): nothing moves past it.
    #[default]
    Fail,
    /// Write it to the dead-letter topic with headers saying why; counts as delivered then.
    DeadLetter,
    /// Log it, count it, move on.
    Skip,
}

impl FromStr for PoisonPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fail" => Ok(PoisonPolicy::Fail),
            "dead-letter" => Ok(PoisonPolicy::DeadLetter),
            "skip" => Ok(PoisonPolicy::Skip),
            _ => Err(format!(
                "on_poison must be fail, dead-letter or skip, not {s:?}"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse() {
        assert_eq!("fatal".parse(), Ok(UpdatePolicy::Fatal));
        assert_eq!("dead-letter".parse(), Ok(PoisonPolicy::DeadLetter));
        assert!("Skip".parse::<PoisonPolicy>().unwrap_err().contains("Skip"));
        assert!("ignore".parse::<UpdatePolicy>().is_err());
    }
}
