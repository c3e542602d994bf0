//! Liveness and readiness facts the pipeline publishes for the health endpoints.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// Events waiting and none acknowledged for this long: not ready, said once in the log.
pub const STALLED_AFTER: Duration = Duration::from_secs(10);

const NOT_STANDBY: u8 = 0;
const STANDBY_OK: u8 = 1;
const STANDBY_UNREACHABLE: u8 = 2;

/// Shared between the streamer and whoever serves `/readyz`.
#[derive(Debug)]
pub struct Health {
    streaming: AtomicBool,
    /// Current WAL − confirmed position, in bytes; −1 until first measured.
    lag_bytes: AtomicI64,
    /// HA standby state: not a standby, or waiting with/without a reachable database.
    standby: AtomicU8,
    /// Why the destination refuses publishes now (an alarm), if it does.
    blocked: Mutex<Option<String>>,
    /// A risk the operator accepted, said in `/readyz` without making it fail.
    warning: Mutex<Option<String>>,
    /// Since when nothing moved although there was work (events waiting or in flight, no
    /// ack), or no session could stream; `None` while making progress. The HA leader stops
    /// renewing its lease past `ha_lease` of it.
    stalled_since: Mutex<Option<Instant>>,
    /// The last error a session ended with, and when (for the status page).
    last_error: Mutex<Option<(String, SystemTime)>>,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            streaming: AtomicBool::new(false),
            lag_bytes: AtomicI64::new(-1),
            standby: AtomicU8::new(NOT_STANDBY),
            blocked: Mutex::new(None),
            warning: Mutex::new(None),
            stalled_since: Mutex::new(None),
            last_error: Mutex::new(None),
        }
    }
}

impl Health {
    pub fn set_streaming(&self, on: bool) {
        self.streaming.store(on, Ordering::Relaxed);
        metrics::gauge!(crate::metrics::STREAMING).set(if on { 1.0 } else { 0.0 });
    }

    pub fn streaming(&self) -> bool {
        self.streaming.load(Ordering::Relaxed)
    }

    /// The destination `destination` blocks publishers (`Some(why)`) or takes them again.
    pub fn set_blocked(&self, destination: &'static str, why: Option<String>) {
        metrics::gauge!(crate::metrics::DESTINATION_BLOCKED, "destination" => destination)
            .set(if why.is_some() { 1.0 } else { 0.0 });
        if let Ok(mut b) = self.blocked.lock() {
            *b = why;
        }
    }

    fn blocked(&self) -> Option<String> {
        self.blocked.lock().ok().and_then(|b| b.clone())
    }

    /// A session ended with `error`.
    pub fn set_last_error(&self, error: String) {
        if let Ok(mut e) = self.last_error.lock() {
            *e = Some((error, SystemTime::now()));
        }
    }

    /// The last error a session ended with, and when.
    pub fn last_error(&self) -> Option<(String, SystemTime)> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }

    /// A risk accepted by a setting (`Some(what)`), or none.
    pub fn set_warning(&self, what: Option<String>) {
        if let Ok(mut w) = self.warning.lock() {
            *w = what;
        }
    }

    /// What `/readyz` adds to a ready answer.
    pub fn warning(&self) -> Option<String> {
        self.warning.lock().ok().and_then(|w| w.clone())
    }

    /// A session that moved (or had nothing to do) says `true`; one that had work and
    /// moved nothing, or failed, says `false`: the stall runs from the first such word.
    pub fn note_progress(&self, moved: bool) {
        if let Ok(mut s) = self.stalled_since.lock() {
            match moved {
                true => *s = None,
                false => *s = Some(s.unwrap_or_else(Instant::now)),
            }
        }
    }

    /// How long nothing has moved; zero while making progress.
    pub fn stalled_for(&self) -> Duration {
        self.stalled_since
            .lock()
            .ok()
            .and_then(|s| s.map(|t| t.elapsed()))
            .unwrap_or_default()
    }

    pub fn set_lag_bytes(&self, lag: i64) {
        self.lag_bytes.store(lag, Ordering::Relaxed);
    }

    /// `None` until the slot monitor has measured it.
    pub fn lag_bytes(&self) -> Option<i64> {
        Some(self.lag_bytes.load(Ordering::Relaxed)).filter(|l| *l >= 0)
    }

    /// HA: `Some(reachable)` while waiting for the lock, `None` once leader (or without HA).
    pub fn set_standby(&self, state: Option<bool>) {
        let v = match state {
            None => NOT_STANDBY,
            Some(true) => STANDBY_OK,
            Some(false) => STANDBY_UNREACHABLE,
        };
        self.standby.store(v, Ordering::Relaxed);
    }

    /// Ready = doing its job: streaming with (once measured) lag at most `max_lag_bytes`, or,
    /// under HA, standing by with the database reachable (so rolling updates of a two-replica
    /// deployment can proceed). `Ok` carries the role, `Err` the reason.
    pub fn readiness(&self, max_lag_bytes: i64) -> Result<&'static str, String> {
        if !self.streaming() {
            return match self.standby.load(Ordering::Relaxed) {
                STANDBY_OK => Ok("standby"),
                STANDBY_UNREACHABLE => Err("standby cannot reach PostgreSQL".into()),
                _ => Err("not streaming".into()),
            };
        }
        // Every reason that applies, so that one never hides another.
        let mut why = Vec::new();
        if let Some(reason) = self.blocked() {
            why.push(format!("the destination blocks publishers: {reason}"));
        }
        let stalled = self.stalled_for();
        if stalled > STALLED_AFTER {
            why.push(format!(
                "no progress for {} s: events wait and the destination acknowledges none (backpressure, or a broker cut off)",
                stalled.as_secs()
            ));
        }
        if let Some(lag) = self.lag_bytes().filter(|lag| *lag > max_lag_bytes) {
            why.push(format!("slot lag {lag} bytes exceeds {max_lag_bytes}"));
        }
        match why.is_empty() {
            true => Ok("streaming"),
            false => Err(why.join("; ")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_needs_streaming_and_bounded_lag() {
        let h = Health::default();
        assert!(h.readiness(100).is_err());
        h.set_streaming(true);
        assert!(h.readiness(100).is_ok(), "lag unknown yet: ready");
        h.set_lag_bytes(500);
        assert!(h.readiness(100).unwrap_err().contains("500"));
        h.set_lag_bytes(50);
        assert_eq!(h.readiness(100), Ok("streaming"));
    }

    #[test]
    fn every_reason_for_not_being_ready_is_named() {
        let h = Health::default();
        h.set_streaming(true);
        h.set_blocked("rabbitmq", Some("low on memory".into()));
        h.set_lag_bytes(500);
        let why = h.readiness(100).unwrap_err();
        assert!(
            why.contains("low on memory") && why.contains("500"),
            "{why}"
        );
    }

    #[test]
    fn a_destination_blocking_publishers_is_not_ready() {
        let h = Health::default();
        h.set_streaming(true);
        h.set_blocked("rabbitmq", Some("low on memory".into()));
        assert!(h.readiness(100).unwrap_err().contains("low on memory"));
        h.set_blocked("rabbitmq", None);
        assert_eq!(h.readiness(100), Ok("streaming"));
    }

    #[test]
    fn a_stall_runs_from_the_first_word_of_it_until_progress() {
        let h = Health::default();
        assert_eq!(h.stalled_for(), Duration::ZERO);
        h.note_progress(false);
        std::thread::sleep(Duration::from_millis(20));
        h.note_progress(false);
        assert!(
            h.stalled_for() >= Duration::from_millis(20),
            "not restarted"
        );
        h.note_progress(true);
        assert_eq!(h.stalled_for(), Duration::ZERO);
    }

    #[test]
    fn a_long_stall_is_not_ready() {
        let h = Health::default();
        h.set_streaming(true);
        h.note_progress(false);
        assert_eq!(
            h.readiness(100),
            Ok("streaming"),
            "a short stall is a pause"
        );
        if let Ok(mut s) = h.stalled_since.lock() {
            *s = Instant::now().checked_sub(STALLED_AFTER * 2);
        }
        assert!(h
            .readiness(100)
            .unwrap_err()
            .contains("no progress for 20 s"));
        h.note_progress(true);
        assert_eq!(h.readiness(100), Ok("streaming"));
    }

    #[test]
    fn a_healthy_standby_is_ready() {
        let h = Health::default();
        h.set_standby(Some(true));
        assert_eq!(h.readiness(100), Ok("standby"));
        h.set_standby(Some(false));
        assert!(h.readiness(100).unwrap_err().contains("cannot reach"));
        h.set_standby(None);
        assert_eq!(h.readiness(100), Err("not streaming".into()));
    }
}
