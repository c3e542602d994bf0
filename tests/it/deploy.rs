//! deploy/ cannot run here (no Docker engine, no cluster), so check what can be checked: every
//! YAML file parses, the compose file and Dockerfile reference files that exist, and every
//! setting the manifests use is one pgoutbox really has.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use yaml_rust2::{Yaml, YamlLoader};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            yaml_files(&p, out);
        } else if matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
            out.push(p);
        }
    }
}

fn load(path: &Path) -> Vec<Yaml> {
    let text = std::fs::read_to_string(path).unwrap();
    YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Environment variable names pgoutbox reads, from its own `--help`.
fn known_env() -> BTreeSet<String> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgoutbox"))
        .args(["run", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    help.split("[env: ")
        .skip(1)
        .filter_map(|s| s.split([']', '=']).next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_yaml_file_parses() {
    let mut files = Vec::new();
    yaml_files(&root().join("deploy"), &mut files);
    assert!(files.len() >= 6, "{files:?}");
    for f in &files {
        let docs = load(f);
        assert!(
            !docs.is_empty() && !docs[0].is_null(),
            "{} is empty",
            f.display()
        );
    }
}

#[test]
fn compose_references_existing_files_and_real_settings() {
    let deploy = root().join("deploy");
    let doc = &load(&deploy.join("docker-compose.yml"))[0];
    let known = known_env();
    let services = doc["services"].as_hash().expect("services");
    for name in ["postgres", "kafka", "pgoutbox", "consumer"] {
        assert!(
            services.contains_key(&Yaml::from_str(name)),
            "service {name}"
        );
    }
    for (name, svc) in services {
        let name = name.as_str().unwrap();
        if let Some(ctx) = svc["build"]["context"].as_str() {
            let ctx = deploy.join(ctx);
            assert!(ctx.is_dir(), "{name}: build context {}", ctx.display());
            let dockerfile = svc["build"]["dockerfile"].as_str().unwrap_or("Dockerfile");
            assert!(ctx.join(dockerfile).is_file(), "{name}: {dockerfile}");
        }
        for v in svc["volumes"].as_vec().into_iter().flatten() {
            let host = v.as_str().unwrap().split(':').next().unwrap();
            if host.starts_with('.') {
                assert!(deploy.join(host).exists(), "{name}: volume {host}");
            }
        }
        if let Some(env) = svc["environment"].as_hash() {
            for k in env.keys() {
                let k = k.as_str().unwrap();
                if k.starts_with("PGOUTBOX_") {
                    assert!(known.contains(k), "{name}: unknown setting {k}");
                }
            }
        }
    }
    for (_, s) in doc["secrets"].as_hash().unwrap() {
        let f = s["file"].as_str().unwrap();
        assert!(deploy.join(f).is_file(), "secret file {f}");
    }
}

#[test]
fn dockerfile_copies_files_that_exist() {
    let text = std::fs::read_to_string(root().join("deploy/Dockerfile")).unwrap();
    let mut copies = 0;
    for line in text
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        let parts: Vec<&str> = line.split_whitespace().collect();
        for src in &parts[1..parts.len() - 1] {
            assert!(root().join(src).exists(), "COPY {src}");
            copies += 1;
        }
    }
    assert!(copies >= 4);
    assert!(text.contains("USER 10001"), "runs as non-root");
}

#[test]
fn env_example_and_systemd_unit_use_real_settings() {
    let known = known_env();
    let example = std::fs::read_to_string(root().join("deploy/pgoutbox.env.example")).unwrap();
    for line in example.lines() {
        let line = line.trim_start_matches('#');
        if let Some((k, _)) = line.split_once('=') {
            if k.starts_with("PGOUTBOX_") {
                assert!(
                    known.contains(k),
                    "pgoutbox.env.example: unknown setting {k}"
                );
            }
        }
    }
    // Every setting is in the example, so it documents them all.
    for k in &known {
        assert!(
            example.contains(k.as_str()),
            "pgoutbox.env.example lacks {k}"
        );
    }
    let unit = std::fs::read_to_string(root().join("deploy/pgoutbox.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/pgoutbox run"));
}

#[test]
fn kubernetes_manifests_are_consistent() {
    let k8s = root().join("deploy/kubernetes");
    let kustomization = &load(&k8s.join("kustomization.yaml"))[0];
    let mut kinds = BTreeSet::new();
    for r in kustomization["resources"].as_vec().unwrap() {
        let f = r.as_str().unwrap();
        for doc in load(&k8s.join(f)) {
            kinds.insert(doc["kind"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(
        kinds,
        ["ConfigMap", "Deployment", "Secret", "Service"]
            .map(String::from)
            .into()
    );
    let dep = &load(&k8s.join("deployment.yaml"))[0];
    assert_eq!(dep["spec"]["replicas"].as_i64(), Some(2));
    let c = &dep["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        c["livenessProbe"]["httpGet"]["path"].as_str(),
        Some("/healthz")
    );
    assert_eq!(
        c["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/readyz")
    );

    // The ConfigMap's pgoutbox.toml is accepted by the real binary (HA on, known keys only),
    // with the secret files it names replaced by local stand-ins.
    let cm = &load(&k8s.join("configmap.yaml"))[0];
    let toml_text = cm["data"]["pgoutbox.toml"].as_str().unwrap();
    assert!(toml_text.contains("ha = true"));
    let dir = tempfile::tempdir().unwrap();
    let toml = dir.path().join("pgoutbox.toml");
    std::fs::write(&toml, toml_text).unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "x").unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let ca = rcgen::CertificateParams::new(vec!["ca".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let ca_file = dir.path().join("ca.crt");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgoutbox"))
        .args(["config", "--config"])
        .arg(&toml)
        .env("PGOUTBOX_POSTGRES_PASSWORD_FILE", &pw)
        .env("PGOUTBOX_POSTGRES_SSLROOTCERT", &ca_file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("\nha = true\n"), "{stdout}");
    assert!(stdout.contains("sslmode=verify-full"), "{stdout}");
}
