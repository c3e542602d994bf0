//! The polling source's settings (`source = poll`).

use std::time::Duration;

/// What to do with a row once Kafka has it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Cleanup {
    /// `status = 1` (default): the row stays for audit; drop old rows yourself.
    #[default]
    Mark,
    /// `DELETE` the row.
    Delete,
}

impl std::str::FromStr for Cleanup {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "mark" => Ok(Cleanup::Mark),
            "delete" => Ok(Cleanup::Delete),
            _ => Err(format!("poll_cleanup must be mark or delete, not {s:?}")),
        }
    }
}

/// Polling settings.
#[derive(Debug, Clone)]
pub struct PollConfig {
    /// Pause between polls that found less than a full batch. Default 1 s.
    pub interval: Duration,
    /// Rows per poll (and per transaction). Default 1,000.
    pub batch: usize,
    pub cleanup: Cleanup,
}

impl Default for PollConfig {
    fn default() -> Self {
        PollConfig {
            interval: Duration::from_secs(1),
            batch: 1000,
            cleanup: Cleanup::Mark,
        }
    }
}
