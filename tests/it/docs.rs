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
/// metrics table.
#[test]
fn every_destination_is_named_where_a_reader_starts() {
    let readme =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
            .unwrap();
    let first = readme.split("\n\n").nth(1).unwrap_or_default();
    for d in ["Kafka", "NATS", "RabbitMQ"] {
        assert!(
            first.contains(d),
            "{d} not in README's first paragraph: {first}"
        );
    }
    assert!(
        readme.contains("(`kafka`, `nats`, `rabbitmq`)"),
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
