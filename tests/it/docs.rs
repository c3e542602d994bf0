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
