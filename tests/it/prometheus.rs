//! The alert rules against a real Prometheus (Debian's 2.42, started here on loopback) that
//! scrapes a real pgoutbox streaming to a real nats-server: the link to the server stalled
//! under load makes PgoutboxStalled pending or firing in Prometheus's own `/api/v1/alerts`;
//! the link flowing again resolves it; pgoutbox killed makes PgoutboxNotStreaming fire. The rules are
//! deploy/prometheus/pgoutbox.rules.yml with its durations shortened (5 minutes of stall to
//! 5 s, `for:` to 2 s), nothing else changed. Every query of the Grafana dashboard
//! (deploy/grafana/pgoutbox.json) runs against the same Prometheus and must return data.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

/// A throwaway Prometheus; killed when dropped.
struct TempPrometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl TempPrometheus {
    /// Scrapes `target` (job `pgoutbox`) every second with `rules`.
    fn start(target: &str, rules: &str) -> TempPrometheus {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("rules.yml"), rules).unwrap();
        std::fs::write(
            dir.path().join("prometheus.yml"),
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [rules.yml]\nscrape_configs:\n  - job_name: pgoutbox\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus (Debian package prometheus; scripts/prereqs.sh installs it)");
        TempPrometheus {
            child,
            port,
            _dir: dir,
        }
    }

    /// The state (`pending`, `firing`) of each active alert named `name`, from Prometheus.
    async fn alert(&self, name: &str) -> Vec<String> {
        let Some((200, body)) = get(self.port, "/api/v1/alerts").await else {
            return Vec::new();
        };
        let json = body
            .split_once("\r\n\r\n")
            .map_or(body.as_str(), |(_, b)| b);
        let v: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
        v["data"]["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["labels"]["alertname"] == name)
            .filter_map(|a| a["state"].as_str().map(str::to_owned))
            .collect()
    }

    /// How many series `query` returns at this instant (`Err`: Prometheus refused it).
    async fn series(&self, query: &str) -> Result<usize, String> {
        let mut encoded = String::new();
        for b in query.bytes() {
            match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    encoded.push(b as char)
                }
                _ => encoded.push_str(&format!("%{b:02X}")),
            }
        }
        let (code, body) = get(self.port, &format!("/api/v1/query?query={encoded}"))
            .await
            .ok_or("no answer")?;
        let json = body
            .split_once("\r\n\r\n")
            .map_or(body.as_str(), |(_, b)| b);
        let v: serde_json::Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
        match (code, v["data"]["result"].as_array()) {
            (200, Some(r)) => Ok(r.len()),
            _ => Err(format!("{code}: {json}")),
        }
    }

    /// Waits until `ok` holds for alert `name`'s states.
    async fn wait(&self, name: &str, what: &str, ok: impl Fn(&[String]) -> bool) -> Duration {
        let t = Instant::now();
        loop {
            let states = self.alert(name).await;
            if ok(&states) {
                return t.elapsed();
            }
            assert!(
                t.elapsed() < Duration::from_secs(90),
                "{name}: not {what} within 90 s (states {states:?})"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for TempPrometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The shipped rules with their durations shortened for a test.
fn shortened_rules() -> String {
    let rules = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("deploy/prometheus/pgoutbox.rules.yml"),
    )
    .unwrap();
    assert!(rules.contains("pgoutbox_confirmed_advanced_timestamp_seconds) > 300"));
    rules
        .replace(
            "pgoutbox_confirmed_advanced_timestamp_seconds) > 300",
            "pgoutbox_confirmed_advanced_timestamp_seconds) > 5",
        )
        .replace("for: 1m", "for: 2s")
        .replace("for: 2m", "for: 2s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stall_and_not_streaming_alerts_fire_in_a_real_prometheus() {
    let env = Env::start().await;
    let nats = crate::common::nats::start(Duration::from_secs(120)).await;
    let proxy = crate::common::proxy::Proxy::start(nats.port()).await;
    let metrics = free_port();
    let dir = tempfile::tempdir().unwrap();
    let (url, addr) = (
        format!("nats://127.0.0.1:{}", proxy.port),
        format!("127.0.0.1:{metrics}"),
    );
    let mut child = env.spawn_binary(
        &dir.path().join("log"),
        &[
            ("PGOUTBOX_DESTINATION", "nats"),
            ("PGOUTBOX_NATS_URL", url.as_str()),
            // A link that answers nothing for a minute stays one session: a stall, not errors.
            ("PGOUTBOX_NATS_ACK_TIMEOUT_MS", "60000"),
            ("PGOUTBOX_METRICS_ADDR", addr.as_str()),
        ],
    );
    env.wait_streaming().await;
    // A limit for the dashboard's max_slot_wal_keep_size line (the default is unlimited).
    for sql in [
        "ALTER SYSTEM SET max_slot_wal_keep_size = '1GB'",
        "SELECT pg_reload_conf()",
    ] {
        env.db.batch_execute(sql).await.unwrap();
    }
    let prometheus = TempPrometheus::start(&format!("127.0.0.1:{metrics}"), &shortened_rules());
    let writer = env.spawn_writer(workload(0, 600), Duration::from_millis(30));
    // Healthy and scraped: no stall.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(prometheus.alert("PgoutboxStalled").await.is_empty());

    proxy.stall();
    let stalled = prometheus
        .wait("PgoutboxStalled", "pending or firing", |s| !s.is_empty())
        .await;
    let firing = prometheus
        .wait("PgoutboxStalled", "firing", |s| {
            s.iter().any(|s| s == "firing")
        })
        .await;
    proxy.pass();
    let resolved = prometheus
        .wait("PgoutboxStalled", "resolved", <[String]>::is_empty)
        .await;
    writer.await.unwrap();
    dashboard_queries_return_data(&prometheus).await;

    child.start_kill().unwrap();
    let _ = child.wait().await;
    let not_streaming = prometheus
        .wait("PgoutboxNotStreaming", "firing", |s| {
            s.iter().any(|s| s == "firing")
        })
        .await;
    eprintln!(
        "Prometheus: PgoutboxStalled pending {stalled:.1?} after the NATS link stalled, firing {firing:.1?} later, resolved {resolved:.1?} after it flowed again; PgoutboxNotStreaming firing {not_streaming:.1?} after the kill"
    );
}

/// Every query of every dashboard panel, its variables set to match everything, returns at
/// least one series from the live Prometheus.
async fn dashboard_queries_return_data(prometheus: &TempPrometheus) {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana/pgoutbox.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut queries = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let query = expr
                .replace("$__rate_interval", "30s")
                .replace("$job", ".*")
                .replace("$instance", ".*");
            let n = prometheus.series(&query).await;
            assert!(
                matches!(n, Ok(n) if n > 0),
                "panel {:?}: {expr} gave {n:?}",
                panel["title"]
            );
            queries += 1;
        }
    }
    eprintln!("Grafana dashboard: {queries} panel queries, each returned data");
}
