//! `check` and `setup` for NATS: the server reachable with these credentials, the stream,
//! the subjects it stores and its duplicate window; `setup --create-nats-stream` makes the
//! stream.

use crate::config::Config;
use crate::destination::admin::{Admin, CheckResult};
use crate::destination::DestinationError;

pub struct NatsAdmin;

impl Admin for NatsAdmin {
    async fn check(cfg: &Config) -> Vec<CheckResult> {
        let mut out = Vec::new();
        let client = match super::connect(&cfg.nats).await {
            Ok(c) => c,
            Err(e) => {
                out.push(CheckResult::failed(
                    "NATS reachable",
                    format!("{e}: check nats_url (nats://user:password@host:port) and nats_credentials_file"),
                ));
                return out;
            }
        };
        let server = client.server_info();
        out.push(CheckResult::ok(
            "NATS reachable",
            format!(
                "nats-server {} at {}, max_payload {} bytes",
                server.version,
                crate::config::redact_url(&cfg.nats.url),
                server.max_payload
            ),
        ));
        let js = super::jetstream(client, &cfg.nats);
        let info = match super::stream::inspect(&js, &cfg.nats).await {
            Ok(i) => i,
            Err(e) => {
                out.push(CheckResult::failed(
                    "NATS stream",
                    format!(
                        "{e} (needs JetStream: nats-server -js); fix: {}",
                        super::stream::add_command(cfg)
                    ),
                ));
                return out;
            }
        };
        out.push(CheckResult::ok(
            "NATS stream",
            format!(
                "{} stores {} ({} messages)",
                cfg.nats.stream,
                info.subjects.join(", "),
                info.messages
            ),
        ));
        let needed = super::stream::subjects(cfg);
        let missing: Vec<_> = needed
            .iter()
            .filter(|n| !info.subjects.iter().any(|s| subject_covers(s, n)))
            .cloned()
            .collect();
        out.push(match missing.is_empty() {
            true => CheckResult::ok(
                "NATS subjects",
                format!("the stream takes {}", needed.join(", ")),
            ),
            false => CheckResult::failed(
                "NATS subjects",
                format!(
                    "stream {} does not store {}: events there would be unroutable; fix: nats stream edit {} --subjects '{}'",
                    cfg.nats.stream,
                    missing.join(", "),
                    cfg.nats.stream,
                    info.subjects.iter().chain(&missing).cloned().collect::<Vec<_>>().join(",")
                ),
            ),
        });
        out.push(match info.duplicate_window >= cfg.nats.duplicate_window {
            true => CheckResult::ok(
                "NATS duplicate window",
                format!(
                    "{:?}: a restart within it sends no event twice (Nats-Msg-Id)",
                    info.duplicate_window
                ),
            ),
            false => CheckResult::failed(
                "NATS duplicate window",
                super::stream::short_window(&cfg.nats, info.duplicate_window),
            ),
        });
        out
    }

    async fn setup(cfg: &Config, _routes: &[String]) -> Result<Vec<String>, DestinationError> {
        let client = super::connect(&cfg.nats).await?;
        let js = super::jetstream(client, &cfg.nats);
        let info = super::stream::create(&js, cfg).await?;
        Ok(vec![format!(
            "✔ NATS stream {} stores {} (duplicate_window {:?})",
            cfg.nats.stream,
            info.subjects.join(", "),
            info.duplicate_window
        )])
    }
}

/// Whether NATS subject pattern `pattern` takes every subject `filter` matches.
pub fn subject_covers(pattern: &str, filter: &str) -> bool {
    let mut p = pattern.split('.');
    let mut f = filter.split('.');
    loop {
        match (p.next(), f.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(t)) if t != ">" => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::subject_covers;

    #[test]
    fn subject_coverage() {
        assert!(subject_covers("outbox.>", "outbox.event.>"));
        assert!(subject_covers("outbox.event.>", "outbox.event.>"));
        assert!(subject_covers("outbox.*.x", "outbox.*.x"));
        assert!(subject_covers("a.*", "a.b"));
        assert!(!subject_covers("a.*", "a.>"));
        assert!(!subject_covers("outbox.event.*", "outbox.event.>"));
        assert!(!subject_covers("other.>", "outbox.event.>"));
        assert!(!subject_covers("a.b", "a.b.c"));
    }
}
