//! Capped exponential backoff with jitter, for reconnects.

use std::time::Duration;

/// Doubles from `base` to `max`; each wait is drawn from [½, 1] of the current step.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Backoff {
            base,
            max,
            attempt: 0,
        }
    }

    /// The next wait.
    pub fn next_delay(&mut self) -> Duration {
        let step = self
            .base
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        // Jitter spreads reconnects of many instances after a shared outage.
        step.mul_f64(rand::random_range(0.5..=1.0))
    }

    /// Back to `base` after a healthy run.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// The longest reconnect wait while a destination has paused for less than [`FAST_RETRY_FOR`].
pub const FAST_RETRY: Duration = Duration::from_secs(1);
/// How long a destination's pause is retried at [`FAST_RETRY`] before the backoff grows.
pub const FAST_RETRY_FOR: Duration = Duration::from_secs(30);

/// The wait before the next reconnect: `backoff`'s, or, while a destination has been pausing
/// (`pausing_for`: a leader election, a node restarting) for less than [`FAST_RETRY_FOR`], at
/// most [`FAST_RETRY`]: such a cluster is back within seconds, and a grown backoff would only
/// lengthen the pause.
pub fn reconnect_wait(backoff: Duration, pausing_for: Option<Duration>) -> Duration {
    match pausing_for {
        Some(d) if d < FAST_RETRY_FOR => backoff.min(FAST_RETRY),
        _ => backoff,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_caps_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
        for _ in 0..10 {
            assert!(b.next_delay() <= Duration::from_secs(1));
        }
        assert!(b.next_delay() >= Duration::from_millis(500));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn a_short_destination_pause_is_retried_within_a_second() {
        let grown = Duration::from_secs(16);
        assert_eq!(
            reconnect_wait(grown, Some(Duration::from_secs(5))),
            FAST_RETRY
        );
        let short = Duration::from_millis(300);
        assert_eq!(reconnect_wait(short, Some(Duration::ZERO)), short);
    }

    #[test]
    fn a_long_pause_and_other_failures_back_off() {
        let grown = Duration::from_secs(16);
        assert_eq!(reconnect_wait(grown, Some(FAST_RETRY_FOR)), grown);
        assert_eq!(reconnect_wait(grown, None), grown);
    }
}
