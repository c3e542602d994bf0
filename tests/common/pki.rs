//! Certificates for the TLS tests of the destinations: a generated CA and a server
//! certificate it signs for `localhost`.

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

/// A CA, a certificate it signs for "localhost", and that certificate's key, as PEM; the CA
/// also written to a file (kept as long as the returned directory).
pub struct LocalhostPki {
    pub ca_file: std::path::PathBuf,
    pub cert: String,
    pub key: String,
    _dir: tempfile::TempDir,
}

pub fn localhost() -> LocalhostPki {
    let ca_key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "pgoutbox test CA");
    let ca_pem = params.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(params, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.crt");
    std::fs::write(&ca_file, ca_pem).unwrap();
    LocalhostPki {
        ca_file,
        cert: cert.pem(),
        key: key.serialize_pem(),
        _dir: dir,
    }
}

/// `pgoutbox check` with these settings: (passed, everything it printed).
pub async fn check(env: &[(&str, String)]) -> (bool, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_pgoutbox"));
    cmd.arg("check");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}
