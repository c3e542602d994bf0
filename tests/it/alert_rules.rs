//! deploy/prometheus: the alert rules load (`promtool check rules`), each alert fires on its
//! synthetic series and stays silent on a healthy one (`promtool test rules`, the cases in
//! pgoutbox.rules.test.yml), and every metric they and the Grafana dashboard use is one
//! pgoutbox exports.

use std::path::PathBuf;
use std::process::Command;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus")
}

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir())
        .output()
        .expect("promtool (Debian package prometheus; scripts/prereqs.sh installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

#[test]
fn the_rules_load_and_their_unit_tests_pass() {
    let checked = promtool(&["check", "rules", "pgoutbox.rules.yml"]);
    assert!(checked.contains("SUCCESS"), "{checked}");
    let tested = promtool(&["test", "rules", "pgoutbox.rules.test.yml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");
}

#[test]
fn every_metric_the_rules_and_the_dashboard_use_is_exported() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let rules = std::fs::read_to_string(dir().join("pgoutbox.rules.yml")).unwrap()
        + &std::fs::read_to_string(root.join("deploy/grafana/pgoutbox.json")).unwrap();
    let source =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/metrics.rs"))
            .unwrap();
    let mut used: Vec<&str> = rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("pgoutbox_"))
        .collect();
    used.sort_unstable();
    used.dedup();
    assert!(used.len() >= 8, "{used:?}");
    for name in used {
        let base = name.trim_end_matches("_bucket");
        assert!(
            source.contains(&format!("\"{base}\"")),
            "the rules or the dashboard use {name}, which src/metrics.rs does not define"
        );
    }
}
