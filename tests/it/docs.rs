//! The docs that are generated from the code stay in step with it: docs/configuration.md is
//! what `pgoutbox config --reference` prints.

#[tokio::test]
async fn the_configuration_reference_is_generated_from_the_settings() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgoutbox"))
        .args(["config", "--reference"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    let generated = String::from_utf8(out.stdout).unwrap();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md");
    let written = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        written == generated,
        "docs/configuration.md differs from `pgoutbox config --reference`; regenerate it: \
         cargo run -q -- config --reference > docs/configuration.md"
    );
    for key in [
        "postgres_url",
        "destination",
        "kafka_trust_read_committed",
        "ha_lease_secs",
    ] {
        assert!(written.contains(&format!("| `{key}` |")), "{key}");
    }
}

/// GitHub's anchor for a heading: lower case, punctuation dropped (but `-` and `_`), spaces
/// as `-`.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of a Markdown file's headings (a repeated one gets `-1`, `-2`, …).
fn anchors(text: &str) -> std::collections::HashSet<String> {
    let mut seen: std::collections::HashMap<String, usize> = Default::default();
    let mut out = std::collections::HashSet::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.starts_with("```") {
            fenced = !fenced;
        }
        if fenced || !line.starts_with('#') {
            continue;
        }
        let s = slug(line.trim_start_matches('#'));
        let n = seen.entry(s.clone()).or_default();
        out.insert(match *n {
            0 => s.clone(),
            k => format!("{s}-{k}"),
        });
        *n += 1;
    }
    out
}

/// Every relative link and `#anchor` in README.md and docs/*.md resolves.
#[test]
fn every_relative_link_and_anchor_resolves() {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("README.md")];
    for e in std::fs::read_dir(root.join("docs")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "md") {
            files.push(p);
        }
    }
    let mut checked = 0;
    let mut broken = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let own = anchors(&text);
        for (i, _) in text.match_indices("](") {
            let rest = &text[i + 2..];
            let Some(end) = rest.find(')') else { continue };
            let link = &rest[..end];
            if link.contains("://") || link.starts_with("mailto:") || link.contains(' ') {
                continue;
            }
            checked += 1;
            let (path, anchor) = link.split_once('#').unwrap_or((link, ""));
            let target_anchors = if path.is_empty() {
                own.clone()
            } else {
                let target = file.parent().unwrap().join(path);
                if !target.exists() {
                    broken.push(format!("{}: {link} (no such file)", file.display()));
                    continue;
                }
                match target.extension().is_some_and(|x| x == "md") {
                    true => anchors(&std::fs::read_to_string(&target).unwrap()),
                    false => Default::default(),
                }
            };
            if !anchor.is_empty() && !target_anchors.contains(anchor) {
                broken.push(format!("{}: {link} (no such heading)", file.display()));
            }
        }
    }
    assert!(checked > 20, "only {checked} links found");
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// Every destination the code supports is named in README's first paragraph and in the
/// metrics table (docs/operations.md).
#[test]
fn every_destination_is_named_where_a_reader_starts() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let operations = std::fs::read_to_string(root.join("docs/operations.md")).unwrap();
    let first = readme.split("\n\n").nth(1).unwrap_or_default();
    for d in ["Kafka", "NATS", "RabbitMQ"] {
        assert!(
            first.contains(d),
            "{d} not in README's first paragraph: {first}"
        );
    }
    assert!(
        operations.contains("(`kafka`, `nats`, `rabbitmq`)"),
        "the metrics table names every destination label value"
    );
}

/// Every command the docs show as `` `pgoutbox …` `` parses: its subcommand and flags, up to
/// the first placeholder, are accepted by `--help`.
#[test]
fn every_command_shown_parses() {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut text = std::fs::read_to_string(root.join("README.md")).unwrap();
    for e in std::fs::read_dir(root.join("docs")).unwrap() {
        text += &std::fs::read_to_string(e.unwrap().path()).unwrap();
    }
    let mut shown: Vec<Vec<String>> = text
        .split('`')
        .skip(1)
        .step_by(2)
        .filter_map(|span| span.strip_prefix("pgoutbox "))
        .map(|cmd| {
            // Up to the first placeholder or optional part; a flag whose value is a
            // placeholder goes with it.
            let mut args: Vec<String> = Vec::new();
            for t in cmd.split_whitespace() {
                if t.starts_with('[') || t.starts_with('<') || t.contains('|') || t.contains('…')
                {
                    if args
                        .last()
                        .is_some_and(|a| a.starts_with("--") && t.contains('|'))
                    {
                        args.pop();
                    }
                    break;
                }
                args.push(t.to_owned());
            }
            args
        })
        .collect();
    shown.sort();
    shown.dedup();
    assert!(shown.len() >= 8, "{shown:?}");
    for args in shown {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgoutbox"))
            .args(&args)
            .arg("--help")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pgoutbox {} --help: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// README.md and every page of docs/, with their paths.
fn all_docs() -> Vec<(std::path::PathBuf, String)> {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("README.md")];
    for e in std::fs::read_dir(root.join("docs")).unwrap() {
        files.push(e.unwrap().path());
    }
    files
        .into_iter()
        .map(|f| {
            let text = std::fs::read_to_string(&f).unwrap();
            (f, text)
        })
        .collect()
}

/// The settings as the binary knows them: (file key, environment variable).
fn settings() -> Vec<(String, String)> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgoutbox"))
        .args(["config", "--reference"])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    text.lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let key = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
            let env = cells.get(2)?.strip_prefix('`')?.strip_suffix('`')?;
            env.starts_with("PGOUTBOX_")
                .then(|| (key.to_owned(), env.to_owned()))
        })
        .collect()
}

/// Variables the docs name that are not settings: the configuration file, the Kafka
/// properties, and the scripts' and tests' own.
const OTHER_VARIABLES: &[&str] = &[
    "PGOUTBOX_CONFIG",
    "PGOUTBOX_KAFKA_PROPERTIES",
    "PGOUTBOX_MATRIX",
    "PGOUTBOX_KILL_CYCLES",
    "PGOUTBOX_NATS_SERVER",
    "PGOUTBOX_KAFKA_BROKER",
];

/// Keys of other programs' settings that the docs show as `key = value`: PostgreSQL's,
/// RabbitMQ's and NATS's, and the outbox table's options.
const OTHER_KEYS: &[&str] = &[
    "wal_level",
    "sync_replication_slots",
    "hot_standby_feedback",
    "synchronized_standby_slots",
    "publish_via_partition_root",
    "idle_replication_slot_timeout",
    "primary_slot_name",
    "ssl_cert_login_from",
    "fail_if_no_peer_cert",
    "auth_mechanism",
    "content_type",
    "delivery_mode",
    "app_id",
    "max_slot_wal_keep_size",
    "status",
    "discard",
    "verify",
    "x-overflow",
    "publish",
    "wal_status",
];

/// Every setting the docs name exists: each `PGOUTBOX_…` variable, each `key = value` shown
/// in code, and each top-level key of a TOML example (`[[tables]]` keys among the table
/// settings).
#[test]
fn every_setting_named_in_the_docs_exists() {
    let settings = settings();
    assert!(settings.len() > 50, "{settings:?}");
    let keys: std::collections::HashSet<&str> = settings.iter().map(|(k, _)| k.as_str()).collect();
    let envs: std::collections::HashSet<&str> = settings.iter().map(|(_, e)| e.as_str()).collect();
    let mut unknown = Vec::new();
    let mut seen = 0;
    for (file, text) in all_docs() {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        for (i, _) in text.match_indices("PGOUTBOX_") {
            let var: String = text[i..]
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            seen += 1;
            if !envs.contains(var.as_str()) && !OTHER_VARIABLES.contains(&var.as_str()) {
                unknown.push(format!("{name}: {var}"));
            }
        }
        // `key = value` in inline code.
        for span in text.split('`').skip(1).step_by(2) {
            let Some((key, _)) = span.split_once(" = ") else {
                continue;
            };
            let key = key.trim();
            if key.is_empty()
                || !key
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
            {
                continue;
            }
            seen += 1;
            if !keys.contains(key) && !OTHER_KEYS.contains(&key) {
                unknown.push(format!("{name}: `{span}`"));
            }
        }
        // Top-level keys of TOML examples; `[[tables]]` keys are table settings.
        for block in text.split("```toml").skip(1) {
            let block = block.split("```").next().unwrap_or_default();
            let mut section = "";
            for line in block.lines().map(str::trim) {
                if line.starts_with('[') {
                    section = line;
                    continue;
                }
                let Some((key, _)) = line.split_once('=') else {
                    continue;
                };
                let key = key.trim();
                seen += 1;
                let known = match section {
                    "" => keys.contains(key),
                    "[[tables]]" => keys.contains(key) && key != "destination",
                    _ => true, // [kafka]: librdkafka's properties, checked by librdkafka
                };
                if !known {
                    unknown.push(format!("{name}: TOML key {key} in {section:?}"));
                }
            }
        }
    }
    assert!(seen > 40, "only {seen} setting names found");
    assert!(unknown.is_empty(), "not settings:\n{}", unknown.join("\n"));
}

/// `--help` groups the settings under the headings of docs/configuration.md.
#[test]
fn help_groups_the_settings_under_headings() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgoutbox"))
        .args(["run", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    let headings: Vec<&str> = help
        .lines()
        .filter(|l| !l.starts_with(' ') && l.ends_with(':'))
        .collect();
    assert_eq!(
        headings,
        [
            "Options:",
            "PostgreSQL:",
            "Kafka:",
            "NATS:",
            "RabbitMQ:",
            "Events and routing:",
            "Delivery:",
            "Operations:"
        ],
        "{help}"
    );
    let reference = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md"),
    )
    .unwrap();
    for h in &headings[1..] {
        let section = format!("## {}", h.trim_end_matches(':'));
        assert!(
            reference.contains(&section),
            "{section} not in docs/configuration.md"
        );
    }
}

/// The metrics table in docs/operations.md lists every metric src/metrics.rs defines, and
/// nothing else.
#[test]
fn the_metrics_table_lists_every_metric() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let code = std::fs::read_to_string(root.join("src/metrics.rs")).unwrap();
    let names = |text: &str| -> std::collections::BTreeSet<String> {
        text.match_indices("pgoutbox_")
            .map(|(i, _)| {
                text[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect::<String>()
            })
            .filter(|n| n.len() > "pgoutbox_".len())
            .collect()
    };
    let defined = names(&code);
    let ops = std::fs::read_to_string(root.join("docs/operations.md")).unwrap();
    let table: String = ops
        .split("## Metrics")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("| `pgoutbox_"))
        .collect::<Vec<_>>()
        .join("\n");
    let listed = names(&table);
    assert!(defined.len() > 15, "{defined:?}");
    let missing: Vec<_> = defined.difference(&listed).collect();
    let unknown: Vec<_> = listed.difference(&defined).collect();
    assert!(
        missing.is_empty() && unknown.is_empty(),
        "not in the table: {missing:?}; not a metric: {unknown:?}"
    );
}
