//! The replication connection authenticates with trust, cleartext, md5 and SCRAM-SHA-256, and
//! the least-privilege role from sql/setup.sql can stream end to end.

use std::time::Duration;

use crate::common::*;
use pgoutbox::embedded::{PostgresOptions, TempKafka, TempPostgres};
use pgoutbox::replication::{ConnectConfig, ReplicationClient, ReplicationError};
use pgoutbox::Config;

fn options() -> PostgresOptions {
    PostgresOptions {
        settings: vec![],
        hba: vec![
            "host all u_plain 127.0.0.1/32 password".into(),
            "host all u_md5 127.0.0.1/32 md5".into(),
            "host all u_scram 127.0.0.1/32 scram-sha-256".into(),
            "host all pgoutbox 127.0.0.1/32 scram-sha-256".into(),
        ],
    }
}

async fn identify(url: &str) -> Result<String, ReplicationError> {
    let cfg = ConnectConfig::from_pg_config(&url.parse().unwrap())?;
    let mut c = ReplicationClient::connect(&cfg).await?;
    Ok(c.identify_system().await?.system_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_password_method_authenticates_the_replication_connection() {
    let pg = tokio::task::spawn_blocking(|| TempPostgres::start_with(options()))
        .await
        .unwrap()
        .unwrap();
    pg.psql(
        "CREATE ROLE u_plain LOGIN REPLICATION PASSWORD 'p-plain';
         SET password_encryption = 'md5';
         CREATE ROLE u_md5 LOGIN REPLICATION PASSWORD 'p-md5';
         SET password_encryption = 'scram-sha-256';
         CREATE ROLE u_scram LOGIN REPLICATION PASSWORD 'p-scram';",
    )
    .unwrap();
    let port = pg.port();
    let url = |user: &str, pw: &str| format!("postgres://{user}:{pw}@127.0.0.1:{port}/postgres");

    // trust (the superuser's default line)
    let system_id = identify(&pg.url()).await.unwrap();
    assert!(!system_id.is_empty());
    for (user, pw) in [
        ("u_plain", "p-plain"),
        ("u_md5", "p-md5"),
        ("u_scram", "p-scram"),
    ] {
        assert_eq!(identify(&url(user, pw)).await.unwrap(), system_id, "{user}");
        let wrong = identify(&url(user, "wrong")).await.unwrap_err();
        assert!(
            matches!(&wrong, ReplicationError::Auth(m) if m.contains("password authentication failed")),
            "{user}: {wrong}"
        );
    }
    let missing = identify(&format!("postgres://u_scram@127.0.0.1:{port}/postgres"))
        .await
        .unwrap_err();
    assert!(missing.to_string().contains("has none"), "{missing}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_privilege_role_streams_with_scram() {
    let pg = tokio::task::spawn_blocking(|| TempPostgres::start_with(options()))
        .await
        .unwrap()
        .unwrap();
    let kafka = TempKafka::start(1).unwrap();
    kafka.create_topic("outbox.event.order", 1).unwrap();
    let db = connect(&pg.url()).await;
    db.batch_execute(SETUP_SQL).await.unwrap();
    db.batch_execute("ALTER ROLE pgoutbox PASSWORD 's3cret-pw'")
        .await
        .unwrap();

    let url = format!(
        "postgres://pgoutbox:s3cret-pw@127.0.0.1:{}/postgres",
        pg.port()
    );
    let mut cfg = Config::new(url, kafka.bootstrap_servers());
    cfg.status_interval = Duration::from_millis(200);
    deliver_one_event(cfg, &db).await.stop().await;
}
