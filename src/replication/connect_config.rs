//! Where and as whom the replication connection goes, from a libpq-style URL.

use std::time::Duration;

use super::ReplicationError;

/// Where and as whom to connect; taken from a libpq-style URL via tokio-postgres' parser.
#[derive(Clone)]
pub struct ConnectConfig {
    pub hosts: Vec<Host>,
    pub user: String,
    pub password: Option<Vec<u8>>,
    pub dbname: String,
    pub application_name: String,
    pub connect_timeout: Duration,
    /// TLS for TCP hosts; `None` = plaintext.
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    /// Whether a server that declines TLS is acceptable (`sslmode=prefer`).
    pub tls_optional: bool,
    /// `target_session_attrs=read-write`: skip hosts in recovery (standbys), as libpq does.
    pub read_write: bool,
}

impl std::fmt::Debug for ConnectConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the password.
        f.debug_struct("ConnectConfig")
            .field("hosts", &self.hosts)
            .field("user", &self.user)
            .field("dbname", &self.dbname)
            .finish_non_exhaustive()
    }
}

/// One server address.
#[derive(Debug, Clone)]
pub enum Host {
    Tcp(String, u16),
    Unix(std::path::PathBuf, u16),
}

impl ConnectConfig {
    /// Builds from a parsed `tokio_postgres::Config` (URL or key=value form).
    pub fn from_pg_config(cfg: &tokio_postgres::Config) -> Result<Self, ReplicationError> {
        let ports = cfg.get_ports();
        let hosts = cfg
            .get_hosts()
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let port = ports
                    .get(i)
                    .or_else(|| ports.first())
                    .copied()
                    .unwrap_or(5432);
                match h {
                    tokio_postgres::config::Host::Tcp(name) => Host::Tcp(name.clone(), port),
                    tokio_postgres::config::Host::Unix(path) => Host::Unix(path.clone(), port),
                }
            })
            .collect::<Vec<_>>();
        let hosts = if hosts.is_empty() {
            vec![Host::Tcp(
                "localhost".into(),
                ports.first().copied().unwrap_or(5432),
            )]
        } else {
            hosts
        };
        let user = cfg
            .get_user()
            .map(str::to_owned)
            .or_else(|| std::env::var("USER").ok())
            .ok_or_else(|| ReplicationError::Auth("no user given in the Postgres URL".into()))?;
        Ok(ConnectConfig {
            hosts,
            dbname: cfg.get_dbname().unwrap_or(&user).to_owned(),
            user,
            password: cfg.get_password().map(<[u8]>::to_vec),
            application_name: cfg.get_application_name().unwrap_or("pgoutbox").to_owned(),
            connect_timeout: cfg
                .get_connect_timeout()
                .copied()
                .unwrap_or(Duration::from_secs(10)),
            tls: None,
            tls_optional: true,
            read_write: matches!(
                cfg.get_target_session_attrs(),
                tokio_postgres::config::TargetSessionAttrs::ReadWrite
            ),
        })
    }

    /// Adds TLS per `sslmode`.
    pub fn with_tls(mut self, tls: &crate::tls::TlsSettings) -> Result<Self, crate::tls::TlsError> {
        self.tls = tls.client_config()?;
        self.tls_optional = tls.mode.allows_plaintext();
        Ok(self)
    }
}
