//! Liveness and readiness facts the pipeline publishes for the health endpoints.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

/// Shared between the streamer and whoever serves `/readyz`.
#[derive(Debug)]
pub struct Health {
    streaming: AtomicBool,
    /// Current WAL − confirmed position, in bytes; −1 until first measured.
    lag_bytes: AtomicI64,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            streaming: AtomicBool::new(false),
            lag_bytes: AtomicI64::new(-1),
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

    pub fn set_lag_bytes(&self, lag: i64) {
        self.lag_bytes.store(lag, Ordering::Relaxed);
    }

    /// `None` until the slot monitor has measured it.
    pub fn lag_bytes(&self) -> Option<i64> {
        Some(self.lag_bytes.load(Ordering::Relaxed)).filter(|l| *l >= 0)
    }

    /// Ready = streaming and (once measured) lag at most `max_lag_bytes`; else the reason.
    pub fn readiness(&self, max_lag_bytes: i64) -> Result<(), String> {
        if !self.streaming() {
            return Err("not streaming".into());
        }
        match self.lag_bytes() {
            Some(lag) if lag > max_lag_bytes => {
                Err(format!("slot lag {lag} bytes exceeds {max_lag_bytes}"))
            }
            _ => Ok(()),
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
        assert!(h.readiness(100).is_ok());
    }
}
