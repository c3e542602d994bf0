//! PostgreSQL timestamps: microseconds since 2000-01-01 00:00:00 UTC.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds from the Unix epoch to the PostgreSQL epoch.
const PG_EPOCH_UNIX_SECS: u64 = 946_684_800;

/// Converts a PostgreSQL timestamp to wall-clock time (saturating at the epochs).
pub fn to_system_time(pg_micros: i64) -> SystemTime {
    let epoch = UNIX_EPOCH + Duration::from_secs(PG_EPOCH_UNIX_SECS);
    if pg_micros >= 0 {
        epoch + Duration::from_micros(pg_micros.unsigned_abs())
    } else {
        epoch
            .checked_sub(Duration::from_micros(pg_micros.unsigned_abs()))
            .unwrap_or(UNIX_EPOCH)
    }
}

/// Converts wall-clock time to a PostgreSQL timestamp (as status updates carry).
pub fn from_system_time(t: SystemTime) -> i64 {
    let epoch = UNIX_EPOCH + Duration::from_secs(PG_EPOCH_UNIX_SECS);
    match t.duration_since(epoch) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_micros()).unwrap_or(i64::MAX),
    }
}

/// The current time as a PostgreSQL timestamp.
pub fn now() -> i64 {
    from_system_time(SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_and_round_trip() {
        assert_eq!(
            to_system_time(0),
            UNIX_EPOCH + Duration::from_secs(PG_EPOCH_UNIX_SECS)
        );
        let t = 123_456_789_012_345;
        assert_eq!(from_system_time(to_system_time(t)), t);
        assert_eq!(from_system_time(to_system_time(-5)), -5);
    }
}
