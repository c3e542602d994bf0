//! Normal (non-replication) PostgreSQL connections: checks, heartbeat, slot monitor, HA lock.
//! The one place that picks TLS or plaintext, per the configured `sslmode`.

use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;
use tracing::debug;

use crate::config::{Config, ConfigError};
use crate::tls::TlsError;

/// Why a normal connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    // Rendered by describe(), so not also a `source()`.
    #[error("PostgreSQL: {}{}", describe(.0), hint(.0))]
    Postgres(tokio_postgres::Error),
}

impl From<tokio_postgres::Error> for ConnectError {
    fn from(e: tokio_postgres::Error) -> Self {
        ConnectError::Postgres(e)
    }
}

/// The whole story of a tokio-postgres error. Its `Display` says only "db error" or "error
/// connecting to server" and keeps the server's message in `source()`, which logs would lose.
pub fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut s = format!("{} {}: {}", db.severity(), db.code().code(), db.message());
        if let Some(d) = db.detail() {
            s.push_str(&format!(" ({d})"));
        }
        if let Some(h) = db.hint() {
            s.push_str(&format!(" hint: {h}"));
        }
        return s;
    }
    let mut s = e.to_string();
    let mut cur = std::error::Error::source(e);
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Server errors no retry can fix: authentication (class 28) and a database that does not
/// exist (3D000).
pub fn is_fatal_sqlstate(code: &str) -> bool {
    code.starts_with("28") || code == "3D000"
}

/// A connection error no retry can fix: the above, a certificate the server's TLS rejects,
/// or a password the server asks for and the configuration does not have.
pub fn is_fatal(e: &tokio_postgres::Error) -> bool {
    e.as_db_error()
        .is_some_and(|d| is_fatal_sqlstate(d.code().code()))
        || crate::tls::is_certificate_error(e)
        || describe(e).contains("password missing")
}

/// What to do about a connection error, when there is one thing to do (starts with "; ").
pub fn hint(e: &tokio_postgres::Error) -> &'static str {
    if describe(e).contains("password missing") {
        return "; the server asks for a password and none is configured: put it in the URL, PGOUTBOX_POSTGRES_PASSWORD or postgres_password_file";
    }
    match e.as_db_error().map(|d| d.code().code()) {
        Some("3D000") => "; check the database name in the PostgreSQL URL",
        _ => "",
    }
}

/// Opens a connection; its I/O runs on a spawned task, which ends when the connection does.
pub async fn connect(cfg: &Config) -> Result<(Client, JoinHandle<()>), ConnectError> {
    let pg = cfg.pg_config()?;
    let tls = cfg.tls_settings()?.client_config()?;
    let log_end = |r: Result<(), tokio_postgres::Error>| {
        if let Err(e) = r {
            debug!(error = %e, "connection ended");
        }
    };
    Ok(match tls {
        None => {
            let (client, conn) = pg.connect(NoTls).await?;
            (client, tokio::spawn(async move { log_end(conn.await) }))
        }
        Some(tls) => {
            let (client, conn) = pg.connect(MakeRustlsConnect::new((*tls).clone())).await?;
            (client, tokio::spawn(async move { log_end(conn.await) }))
        }
    })
}

/// A connection opened on first use and reopened after a failure, for periodic background
/// work (heartbeat, slot monitor) that must survive database restarts.
pub struct LazyClient {
    cfg: Config,
    client: Option<Client>,
}

impl LazyClient {
    pub fn new(cfg: Config) -> Self {
        LazyClient { cfg, client: None }
    }

    /// Runs `f` on the connection, connecting first if needed; a failure drops the connection
    /// so the next call reconnects. Errors come back as text for logging.
    pub async fn with<T>(
        &mut self,
        f: impl AsyncFnOnce(&Client) -> Result<T, tokio_postgres::Error>,
    ) -> Result<T, String> {
        if self.client.is_none() {
            let (client, _conn) = connect(&self.cfg).await.map_err(|e| e.to_string())?;
            self.client = Some(client);
        }
        let Some(client) = &self.client else {
            return Err("not connected".into());
        };
        let r = f(client).await.map_err(|e| describe(&e));
        if r.is_err() {
            self.client = None;
        }
        r
    }
}
