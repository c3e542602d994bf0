//! The status page (`/`, one self-contained HTML file) and its data (`/status.json`): the
//! slot's positions, lag and retained WAL, events per second per destination, dead letters,
//! the last error, the role, the version and the effective settings (secrets redacted). The
//! numbers are read from the process's own metrics, so the page and `/metrics` always agree.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::{json, Value};

use pgoutbox::pipeline::Health;
use pgoutbox::Lsn;

/// The page, served as is.
pub const PAGE: &str = include_str!("status.html");

/// What the status page shows that the metrics do not: the slot and the settings, replaced at
/// each (re)load of the configuration.
#[derive(Debug, Default)]
pub struct Shown {
    pub slot: String,
    /// The effective configuration as TOML, secrets as `***`.
    pub settings: String,
}

/// The facts, and what the events-per-second figures are computed against.
pub struct StatusSource {
    pub metrics: PrometheusHandle,
    pub health: Arc<Health>,
    pub max_lag_bytes: i64,
    pub shown: Arc<Mutex<Shown>>,
    /// Delivered totals per destination at an earlier request, and the rates then.
    rates: Mutex<Rates>,
}

#[derive(Default)]
struct Rates {
    at: Option<Instant>,
    totals: HashMap<String, f64>,
    per_second: HashMap<String, f64>,
}

impl StatusSource {
    pub fn new(
        metrics: PrometheusHandle,
        health: Arc<Health>,
        max_lag_bytes: i64,
        shown: Arc<Mutex<Shown>>,
    ) -> Self {
        StatusSource {
            metrics,
            health,
            max_lag_bytes,
            shown,
            rates: Mutex::default(),
        }
    }

    /// `/status.json`.
    pub fn json(&self) -> Value {
        let samples = samples(&self.metrics.render());
        let one = |name: &str| samples.iter().find(|s| s.name == name).map(|s| s.value);
        let sum = |name: &str, label: Option<(&str, &str)>| -> f64 {
            samples
                .iter()
                .filter(|s| s.name == name)
                .filter(|s| label.is_none_or(|(k, v)| s.label(k) == Some(v)))
                .map(|s| s.value)
                .sum()
        };
        let mut totals: HashMap<String, f64> = HashMap::new();
        for s in samples
            .iter()
            .filter(|s| s.name == "pgoutbox_events_delivered_total")
        {
            *totals
                .entry(s.label("destination").unwrap_or("?").to_owned())
                .or_default() += s.value;
        }
        let per_second = self.rates(&totals);
        let mut destinations: Vec<Value> = totals
            .iter()
            .map(|(d, n)| {
                json!({
                    "destination": d,
                    "delivered": *n as u64,
                    "events_per_second": per_second.get(d).copied().unwrap_or(0.0),
                })
            })
            .collect();
        destinations.sort_by_key(|d| d["destination"].as_str().unwrap_or_default().to_owned());
        let now = SystemTime::now();
        let unix = |t: SystemTime| {
            t.duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64())
        };
        let lsn = |v: Option<f64>| v.filter(|v| *v > 0.0).map(|v| Lsn(v as u64).to_string());
        let readiness = self.health.readiness(self.max_lag_bytes);
        let shown = self
            .shown
            .lock()
            .map(|s| (s.slot.clone(), s.settings.clone()));
        let (slot, settings) = shown.unwrap_or_default();
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "slot": slot,
            "ready": readiness.is_ok(),
            "readiness": match &readiness {
                Ok(role) => format!("ready ({role})"),
                Err(why) => format!("not ready: {why}"),
            },
            "role": match (self.health.streaming(), &readiness) {
                (true, _) => "streaming (leader)",
                (false, Ok(_)) => "standby",
                (false, Err(_)) => "not streaming",
            },
            "warning": self.health.warning(),
            "positions": {
                "received": lsn(one("pgoutbox_received_lsn")),
                "confirmed": lsn(one("pgoutbox_confirmed_lsn")),
                "seconds_since_confirmed_moved": one("pgoutbox_confirmed_advanced_timestamp_seconds")
                    .map(|t| (unix(now) - t).max(0.0)),
                "lag_bytes": one("pgoutbox_slot_lag_bytes").map(|v| v as i64),
                "retained_wal_bytes": one("pgoutbox_slot_retained_wal_bytes").map(|v| v as i64),
            },
            "destinations": destinations,
            "in_flight": {
                "events": one("pgoutbox_in_flight_events").unwrap_or(0.0) as u64,
                "bytes": one("pgoutbox_in_flight_bytes").unwrap_or(0.0) as u64,
            },
            "dead_letters": sum("pgoutbox_poison_events_total", Some(("action", "dead-letter"))) as u64,
            "skipped": sum("pgoutbox_poison_events_total", Some(("action", "skip"))) as u64,
            "lost": sum("pgoutbox_lost_events_total", None) as u64,
            "last_error": self.health.last_error().map(|(message, at)| json!({
                "message": message,
                "at_unix": unix(at),
                "seconds_ago": now.duration_since(at).map_or(0.0, |d| d.as_secs_f64()),
            })),
            "settings": settings,
        })
    }

    /// Events per second per destination, over the time since the previous computation (at
    /// least 2 s, so that several viewers do not make it jump).
    fn rates(&self, totals: &HashMap<String, f64>) -> HashMap<String, f64> {
        let Ok(mut r) = self.rates.lock() else {
            return HashMap::new();
        };
        let now = Instant::now();
        match r.at {
            Some(at) if now.duration_since(at).as_secs_f64() < 2.0 => {}
            Some(at) => {
                let dt = now.duration_since(at).as_secs_f64();
                r.per_second = totals
                    .iter()
                    .map(|(d, n)| {
                        (
                            d.clone(),
                            (n - r.totals.get(d).copied().unwrap_or(0.0)) / dt,
                        )
                    })
                    .collect();
                r.at = Some(now);
                r.totals = totals.clone();
            }
            None => {
                r.at = Some(now);
                r.totals = totals.clone();
            }
        }
        r.per_second.clone()
    }
}

/// `/status.json` of the instance listening on `addr` (`metrics_addr`), if one answers
/// within a second: what `pgoutbox status` adds to the slot's view.
pub async fn fetch(addr: &str) -> Option<Value> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ask = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(b"GET /status.json HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .await
            .ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).await.ok()?;
        let (head, body) = text.split_once("\r\n\r\n")?;
        head.starts_with("HTTP/1.0 200")
            .then(|| serde_json::from_str(body).ok())
            .flatten()
    };
    tokio::time::timeout(std::time::Duration::from_secs(1), ask)
        .await
        .ok()
        .flatten()
}

/// One sample of the Prometheus text format.
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

impl Sample {
    fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// The samples of a Prometheus text exposition (what our own recorder renders).
fn samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let value: f64 = value.parse().ok()?;
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            let labels = labels
                .split("\",")
                .filter(|l| !l.is_empty())
                .filter_map(|l| {
                    let (k, v) = l.split_once("=\"")?;
                    Some((k.to_owned(), v.trim_end_matches('"').to_owned()))
                })
                .collect();
            Some(Sample {
                name: name.to_owned(),
                labels,
                value,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::samples;

    #[test]
    fn reads_the_text_format() {
        let text = "# HELP x y\n# TYPE x counter\npgoutbox_events_delivered_total{topic=\"a.b\",destination=\"nats\"} 12\npgoutbox_confirmed_lsn 22000000\n";
        let s = samples(text);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].name, "pgoutbox_events_delivered_total");
        assert_eq!(s[0].label("destination"), Some("nats"));
        assert_eq!(s[0].label("topic"), Some("a.b"));
        assert_eq!(s[0].value, 12.0);
        assert_eq!(s[1].label("x"), None);
        assert_eq!(s[1].value, 22000000.0);
    }
}
