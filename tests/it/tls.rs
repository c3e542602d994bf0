//! TLS to PostgreSQL on both connections, against a throwaway server with a generated CA:
//! every sslmode does what libpq's does, and streaming works with verify-full.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::*;
use pgoutbox::embedded::{PostgresOptions, TempKafka, TempPostgres};
use pgoutbox::replication::{ConnectConfig, ReplicationClient, ReplicationError};
use pgoutbox::Config;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

struct Pki {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    other_ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
}

fn ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let pem = params.self_signed(&key).unwrap().pem();
    (pem, Issuer::new(params, key))
}

/// A CA, a server certificate it signs for "localhost" only (no IP), and an unrelated CA.
fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let (ca_pem, issuer) = ca("pgoutbox test CA");
    let (other_pem, _) = ca("some other CA");
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let pki = Pki {
        ca: write("ca.crt", &ca_pem),
        other_ca: write("other.crt", &other_pem),
        server_cert: write("server.crt", &cert.pem()),
        server_key: write("server.key", &key.serialize_pem()),
        _dir: dir,
    };
    // The server reads its key as the postgres user and insists on 0600.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(pki._dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&pki.server_key, std::fs::Permissions::from_mode(0o600)).unwrap();
    if unsafe { libc::geteuid() } == 0 {
        let status = std::process::Command::new("chown")
            .arg("postgres:")
            .arg(&pki.server_key)
            .arg(&pki.server_cert)
            .status()
            .unwrap();
        assert!(status.success());
    }
    pki
}

async fn tls_server(pki: &Pki) -> TempPostgres {
    let p = |x: &Path| x.display().to_string();
    let opts = PostgresOptions {
        settings: vec![
            ("ssl".into(), "on".into()),
            ("ssl_cert_file".into(), p(&pki.server_cert)),
            ("ssl_key_file".into(), p(&pki.server_key)),
        ],
        hba: vec![
            "hostssl all tls_user 127.0.0.1/32 scram-sha-256".into(),
            "hostnossl all tls_user 127.0.0.1/32 reject".into(),
            "hostssl all tls_user ::1/128 scram-sha-256".into(),
            "hostnossl all tls_user ::1/128 reject".into(),
        ],
    };
    let pg = tokio::task::spawn_blocking(move || TempPostgres::start_with(opts))
        .await
        .unwrap()
        .unwrap();
    pg.psql("CREATE ROLE tls_user LOGIN REPLICATION PASSWORD 'tls-pw'")
        .unwrap();
    pg
}

fn config(pg: &TempPostgres, host: &str, params: &str) -> Config {
    Config::new(
        format!(
            "postgres://tls_user:tls-pw@{host}:{}/postgres?{params}",
            pg.port()
        ),
        "unused:9092",
    )
}

/// Opens both kinds of connection; Ok(whether each is encrypted) or the errors.
async fn try_both(cfg: &Config) -> (Result<bool, String>, Result<(), String>) {
    let normal = match pgoutbox::postgres::connection::connect(cfg).await {
        Ok((c, _)) => c
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .map(|r| r.get::<_, bool>(0))
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    let repl = async {
        let cc = ConnectConfig::from_pg_config(&cfg.pg_config().map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?
            .with_tls(&cfg.tls_settings().map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
        let mut c = ReplicationClient::connect(&cc).await.map_err(|e| match e {
            ReplicationError::Certificate(m) => format!("certificate: {m}"),
            other => other.to_string(),
        })?;
        c.identify_system()
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
    .await;
    (normal, repl)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sslmode_behaves_like_libpq() {
    let pki = pki();
    let pg = tls_server(&pki).await;
    let ca = pki.ca.display().to_string();
    let other = pki.other_ca.display().to_string();

    // disable: the server rejects plaintext for this role.
    let (n, r) = try_both(&config(&pg, "127.0.0.1", "sslmode=disable")).await;
    let n = n.unwrap_err();
    assert!(n.contains("no encryption"), "{n}");
    assert!(r.unwrap_err().contains("no encryption"));

    // prefer (the default) and require: encrypted, certificate not checked …
    for params in ["", "sslmode=prefer", "sslmode=require"] {
        let (n, r) = try_both(&config(&pg, "127.0.0.1", params)).await;
        assert_eq!(n, Ok(true), "{params}");
        assert_eq!(r, Ok(()), "{params}");
    }
    // … unless require is given a root certificate: then it verifies like verify-ca.
    let (n, r) = try_both(&config(
        &pg,
        "127.0.0.1",
        &format!("sslmode=require&sslrootcert={other}"),
    ))
    .await;
    let n = n.unwrap_err();
    assert!(n.contains("certificate"), "{n}");
    assert!(r.unwrap_err().starts_with("certificate: "));

    // verify-ca: the chain must lead to the root; the host name may differ (IP vs "localhost").
    let (n, r) = try_both(&config(
        &pg,
        "127.0.0.1",
        &format!("sslmode=verify-ca&sslrootcert={ca}"),
    ))
    .await;
    assert_eq!(n, Ok(true));
    assert_eq!(r, Ok(()));
    let (n, r) = try_both(&config(
        &pg,
        "127.0.0.1",
        &format!("sslmode=verify-ca&sslrootcert={other}"),
    ))
    .await;
    assert!(n.unwrap_err().contains("certificate"));
    assert!(r.unwrap_err().starts_with("certificate: "));

    // verify-full: chain and name.
    let (n, r) = try_both(&config(
        &pg,
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    ))
    .await;
    assert!(n.unwrap_err().contains("certificate"));
    assert!(r.unwrap_err().starts_with("certificate: "));
    let (n, r) = try_both(&config(
        &pg,
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    ))
    .await;
    assert_eq!(n, Ok(true));
    assert_eq!(r, Ok(()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_over_verify_full_tls() {
    let pki = pki();
    let pg = tls_server(&pki).await;
    let kafka = TempKafka::start(1).unwrap();
    kafka.create_topic("outbox.event.order", 1).unwrap();
    let db = connect(&pg.url()).await;
    db.batch_execute(SETUP_SQL).await.unwrap();

    let mut cfg = config(&pg, "localhost", "");
    cfg.sslmode = Some(pgoutbox::tls::SslMode::VerifyFull);
    cfg.sslrootcert = Some(pki.ca.clone());
    cfg.kafka.brokers = kafka.bootstrap_servers().to_owned();
    cfg.heartbeat_interval = Some(Duration::from_secs(1));
    let running = deliver_one_event(cfg, &db).await;
    // The walsender and every session of tls_user (preflight, heartbeat, monitor) use TLS.
    let walsender_ssl: bool = db
        .query_one(
            "SELECT ssl FROM pg_stat_ssl JOIN pg_stat_replication USING (pid)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(walsender_ssl);
    let plaintext: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
             WHERE a.usename = 'tls_user' AND NOT s.ssl",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(plaintext, 0);
    running.stop().await;
}
