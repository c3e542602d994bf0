//! Certificates for the TLS tests of the destinations: a generated CA, a server certificate
//! it signs for `localhost`, and a client certificate it signs (mutual TLS).

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};

/// A CA, a certificate it signs for "localhost", and that certificate's key, as PEM; the CA
/// and a client certificate it signs (with its key) also written to files, kept as long as
/// the returned directory.
pub struct LocalhostPki {
    pub ca_file: std::path::PathBuf,
    pub ca: String,
    pub cert: String,
    pub key: String,
    pub client_cert_file: std::path::PathBuf,
    pub client_key_file: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl LocalhostPki {
    /// The server side: this certificate, and with `verify_clients` this CA for clients.
    pub fn server(&self, verify_clients: bool) -> pgoutbox::embedded::ServerTls<'_> {
        pgoutbox::embedded::ServerTls {
            cert: &self.cert,
            key: &self.key,
            client_ca: verify_clients.then_some(self.ca.as_str()),
        }
    }
}

/// The common name of the client certificate (the user it logs in as with SASL EXTERNAL).
pub const CLIENT_NAME: &str = "pgoutbox";

pub fn localhost() -> LocalhostPki {
    let ca_key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "pgoutbox test CA");
    let ca = params.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(params, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let client_key = KeyPair::generate().unwrap();
    let mut client = CertificateParams::new(Vec::<String>::new()).unwrap();
    client
        .distinguished_name
        .push(DnType::CommonName, CLIENT_NAME);
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client = client.signed_by(&client_key, &issuer).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.crt");
    std::fs::write(&ca_file, &ca).unwrap();
    let client_cert_file = dir.path().join("client.crt");
    std::fs::write(&client_cert_file, client.pem()).unwrap();
    let client_key_file = dir.path().join("client.key");
    std::fs::write(&client_key_file, client_key.serialize_pem()).unwrap();
    LocalhostPki {
        ca_file,
        ca,
        cert: cert.pem(),
        key: key.serialize_pem(),
        client_cert_file,
        client_key_file,
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
