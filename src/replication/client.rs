//! The replication connection: startup, authentication, replication commands, CopyBoth.

use std::collections::HashMap;
use std::io;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::{md5_hash, sasl};
use postgres_protocol::message::{backend::Message, frontend};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tracing::{debug, info, warn};

use super::protocol::{self, Frame, FrameError, ReplicationMessage};
use crate::lsn::Lsn;

/// A byte stream to the server: TCP or Unix socket today, a TLS wrapper later.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Everything that can go wrong on the replication connection.
#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    #[error("connecting to {addr}: {source}")]
    Connect { addr: String, source: io::Error },
    #[error("replication connection: {0}")]
    Io(#[from] io::Error),
    #[error("server error: {0}")]
    Server(DbError),
    #[error("authentication: {0}")]
    Auth(String),
    #[error("replication protocol: {0}")]
    Protocol(String),
    #[error("replication protocol: {0}")]
    Frame(#[from] FrameError),
    #[error("replication connection closed by the server")]
    Closed,
    #[error("TLS: {0}")]
    Tls(String),
    #[error("TLS: the server's certificate was rejected: {0} (check sslmode and sslrootcert)")]
    Certificate(String),
    #[error("nothing received from the server for {0:.0?} although a reply was requested: connection presumed dead")]
    Silent(Duration),
    #[error("no answer to {what} within {after:.0?}: connection presumed dead")]
    NoAnswer { what: &'static str, after: Duration },
}

impl ReplicationError {
    /// The SQLSTATE when the server reported the error.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            ReplicationError::Server(e) => Some(&e.code),
            _ => None,
        }
    }
}

/// The first PostgreSQL version with failover slots.
pub const FAILOVER_SINCE: u32 = 170_000;

/// An ErrorResponse from the server.
#[derive(Debug, Clone)]
pub struct DbError {
    pub severity: String,
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.severity, self.code, self.message)?;
        if let Some(d) = &self.detail {
            write!(f, " ({d})")?;
        }
        if let Some(h) = &self.hint {
            write!(f, " hint: {h}")?;
        }
        Ok(())
    }
}

fn db_error(fields: &mut postgres_protocol::message::backend::ErrorFields<'_>) -> DbError {
    let mut e = DbError {
        severity: "ERROR".into(),
        code: String::new(),
        message: String::new(),
        detail: None,
        hint: None,
    };
    while let Ok(Some(f)) = fields.next() {
        let v = String::from_utf8_lossy(f.value_bytes()).into_owned();
        match f.type_() {
            b'S' => e.severity = v,
            b'C' => e.code = v,
            b'M' => e.message = v,
            b'D' => e.detail = Some(v),
            b'H' => e.hint = Some(v),
            _ => {}
        }
    }
    e
}

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

/// Facts from `IDENTIFY_SYSTEM`.
#[derive(Debug, Clone)]
pub struct SystemInfo {
    pub system_id: String,
    pub timeline: u32,
    pub xlog_pos: Lsn,
    pub dbname: Option<String>,
}

/// A replication connection in command mode (before `START_REPLICATION`).
pub struct ReplicationClient {
    conn: Conn,
    /// ParameterStatus values from the server (server_version, …).
    pub parameters: HashMap<String, String>,
}

/// Framed I/O shared by command mode and streaming mode.
struct Conn {
    io: Box<dyn Io>,
    rbuf: BytesMut,
    wbuf: BytesMut,
}

impl Conn {
    /// Reads until one frame is complete. Cancel-safe: bytes read stay in `rbuf`.
    async fn frame(&mut self) -> Result<Frame, ReplicationError> {
        loop {
            if let Some(f) = protocol::next_frame(&mut self.rbuf)? {
                return Ok(f);
            }
            if self.rbuf.capacity() - self.rbuf.len() < 8192 {
                self.rbuf.reserve(64 * 1024);
            }
            if self.io.read_buf(&mut self.rbuf).await? == 0 {
                return Err(ReplicationError::Closed);
            }
        }
    }

    async fn flush(&mut self) -> Result<(), ReplicationError> {
        let buf = self.wbuf.split();
        self.io.write_all(&buf).await?;
        self.io.flush().await?;
        Ok(())
    }
}

fn proto(e: io::Error) -> ReplicationError {
    ReplicationError::Protocol(e.to_string())
}

impl ReplicationClient {
    /// Connects and authenticates (trust, cleartext, md5, SCRAM-SHA-256) with
    /// `replication=database`, trying each host in order.
    pub async fn connect(cfg: &ConnectConfig) -> Result<Self, ReplicationError> {
        let mut last = None;
        for host in &cfg.hosts {
            // Bounds the whole handshake (TCP, TLS, startup, authentication): a link that
            // accepts but never answers must not hang a reconnect.
            let attempt = tokio::time::timeout(cfg.connect_timeout, Self::connect_one(cfg, host))
                .await
                .unwrap_or_else(|_| {
                    Err(ReplicationError::Connect {
                        addr: format!("{host:?}"),
                        source: io::Error::new(io::ErrorKind::TimedOut, "handshake timed out"),
                    })
                });
            let attempt = match attempt {
                Ok(c) if cfg.read_write => c.writable(host).await,
                other => other,
            };
            match attempt {
                Ok(c) => return Ok(c),
                Err(e) => {
                    warn!(?host, error = %e, "replication connection attempt failed");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or(ReplicationError::Protocol("no host to connect to".into())))
    }

    /// This connection if its server accepts writes (not a standby), for
    /// `target_session_attrs=read-write`.
    async fn writable(mut self, host: &Host) -> Result<Self, ReplicationError> {
        let rows = self.simple_query("SELECT pg_is_in_recovery()").await?;
        match rows.first().and_then(|r| r.first().cloned().flatten()) {
            Some(v) if v == "f" => Ok(self),
            _ => Err(ReplicationError::Connect {
                addr: format!("{host:?}"),
                source: io::Error::other(
                    "the server is in recovery (a standby), and target_session_attrs=read-write",
                ),
            }),
        }
    }

    async fn connect_one(cfg: &ConnectConfig, host: &Host) -> Result<Self, ReplicationError> {
        let (addr, io): (String, Box<dyn Io>) = match host {
            Host::Tcp(name, port) => {
                let addr = format!("{name}:{port}");
                let s = tokio::time::timeout(cfg.connect_timeout, TcpStream::connect(&addr))
                    .await
                    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))
                    .and_then(|r| r)
                    .map_err(|source| ReplicationError::Connect {
                        addr: addr.clone(),
                        source,
                    })?;
                s.set_nodelay(true)?;
                let io = match &cfg.tls {
                    Some(tls) => Self::start_tls(s, name, tls.clone(), cfg.tls_optional).await?,
                    None => Box::new(s),
                };
                (addr, io)
            }
            Host::Unix(dir, port) => {
                let path = dir.join(format!(".s.PGSQL.{port}"));
                let addr = path.display().to_string();
                let s = UnixStream::connect(&path).await.map_err(|source| {
                    ReplicationError::Connect {
                        addr: addr.clone(),
                        source,
                    }
                })?;
                (addr, Box::new(s))
            }
        };
        debug!(%addr, "replication connection open");
        let mut client = ReplicationClient {
            conn: Conn {
                io,
                rbuf: BytesMut::with_capacity(64 * 1024),
                wbuf: BytesMut::new(),
            },
            parameters: HashMap::new(),
        };
        client.startup(cfg).await?;
        Ok(client)
    }

    /// SSLRequest, then the TLS handshake; plaintext only if the server declines and the
    /// mode allows it (Unix sockets never use TLS, as with libpq).
    async fn start_tls(
        mut s: TcpStream,
        host: &str,
        tls: std::sync::Arc<rustls::ClientConfig>,
        optional: bool,
    ) -> Result<Box<dyn Io>, ReplicationError> {
        let mut buf = BytesMut::new();
        frontend::ssl_request(&mut buf);
        s.write_all(&buf).await?;
        let mut answer = [0u8; 1];
        s.read_exact(&mut answer).await?;
        match answer[0] {
            b'S' => {
                let name = rustls::pki_types::ServerName::try_from(host.to_owned())
                    .map_err(|e| ReplicationError::Tls(format!("server name {host:?}: {e}")))?;
                let stream = tokio_rustls::TlsConnector::from(tls)
                    .connect(name, s)
                    .await
                    .map_err(|e| {
                        if crate::tls::is_certificate_error(&e) {
                            ReplicationError::Certificate(e.to_string())
                        } else {
                            ReplicationError::Tls(e.to_string())
                        }
                    })?;
                Ok(Box::new(stream))
            }
            b'N' if optional => Ok(Box::new(s)),
            b'N' => Err(ReplicationError::Tls(
                "the server does not accept TLS connections but sslmode requires TLS".into(),
            )),
            other => Err(ReplicationError::Protocol(format!(
                "unexpected answer {other:#04x} to SSLRequest"
            ))),
        }
    }

    async fn startup(&mut self, cfg: &ConnectConfig) -> Result<(), ReplicationError> {
        let params = [
            ("user", cfg.user.as_str()),
            ("database", cfg.dbname.as_str()),
            ("replication", "database"),
            ("application_name", cfg.application_name.as_str()),
            ("client_encoding", "UTF8"),
        ];
        frontend::startup_message(params.iter().copied(), &mut self.conn.wbuf).map_err(proto)?;
        self.conn.flush().await?;

        let password = || {
            cfg.password.as_deref().ok_or_else(|| {
                ReplicationError::Auth(format!(
                    "the server asks a password for user {:?} but the Postgres URL has none",
                    cfg.user
                ))
            })
        };
        let mut scram: Option<sasl::ScramSha256> = None;
        loop {
            let msg = match self.conn.frame().await? {
                Frame::Message(m) => m,
                Frame::CopyBothResponse => {
                    return Err(ReplicationError::Protocol(
                        "unexpected CopyBothResponse during startup".into(),
                    ))
                }
            };
            match msg {
                Message::AuthenticationOk => {}
                Message::AuthenticationCleartextPassword => {
                    frontend::password_message(password()?, &mut self.conn.wbuf).map_err(proto)?;
                    self.conn.flush().await?;
                }
                Message::AuthenticationMd5Password(body) => {
                    let hash = md5_hash(cfg.user.as_bytes(), password()?, body.salt());
                    frontend::password_message(hash.as_bytes(), &mut self.conn.wbuf)
                        .map_err(proto)?;
                    self.conn.flush().await?;
                }
                Message::AuthenticationSasl(body) => {
                    let mut mechs = body.mechanisms();
                    let mut has_scram = false;
                    while let Some(m) = mechs.next().map_err(proto)? {
                        has_scram |= m == sasl::SCRAM_SHA_256;
                    }
                    if !has_scram {
                        return Err(ReplicationError::Auth(
                            "server offers no SASL mechanism we support (need SCRAM-SHA-256)"
                                .into(),
                        ));
                    }
                    // No TLS yet, so no channel binding to offer.
                    let s =
                        sasl::ScramSha256::new(password()?, sasl::ChannelBinding::unsupported());
                    frontend::sasl_initial_response(
                        sasl::SCRAM_SHA_256,
                        s.message(),
                        &mut self.conn.wbuf,
                    )
                    .map_err(proto)?;
                    self.conn.flush().await?;
                    scram = Some(s);
                }
                Message::AuthenticationSaslContinue(body) => {
                    let s = scram.as_mut().ok_or_else(|| {
                        ReplicationError::Auth("SASL continue without SASL start".into())
                    })?;
                    s.update(body.data())
                        .map_err(|e| ReplicationError::Auth(format!("SCRAM: {e}")))?;
                    frontend::sasl_response(s.message(), &mut self.conn.wbuf).map_err(proto)?;
                    self.conn.flush().await?;
                }
                Message::AuthenticationSaslFinal(body) => {
                    let s = scram.as_mut().ok_or_else(|| {
                        ReplicationError::Auth("SASL final without SASL start".into())
                    })?;
                    s.finish(body.data()).map_err(|e| {
                        ReplicationError::Auth(format!("SCRAM server signature invalid: {e}"))
                    })?;
                }
                Message::ParameterStatus(p) => {
                    if let (Ok(k), Ok(v)) = (p.name(), p.value()) {
                        self.parameters.insert(k.to_owned(), v.to_owned());
                    }
                }
                Message::BackendKeyData(_) | Message::NoticeResponse(_) => {}
                Message::ReadyForQuery(_) => return Ok(()),
                Message::ErrorResponse(body) => {
                    let e = db_error(&mut body.fields());
                    // 28P01 invalid_password, 28000 invalid_authorization_specification.
                    return Err(if e.code.starts_with("28") {
                        ReplicationError::Auth(e.to_string())
                    } else {
                        ReplicationError::Server(e)
                    });
                }
                Message::AuthenticationGss
                | Message::AuthenticationKerberosV5
                | Message::AuthenticationScmCredential
                | Message::AuthenticationSspi
                | Message::AuthenticationGssContinue(_) => {
                    return Err(ReplicationError::Auth(
                        "server requires an unsupported authentication method \
                         (supported: trust, password, md5, scram-sha-256)"
                            .into(),
                    ))
                }
                _ => {
                    return Err(ReplicationError::Protocol(
                        "unexpected message during startup".into(),
                    ))
                }
            }
        }
    }

    /// The server's major version × 10000 + minor, from ParameterStatus.
    pub fn server_version_num(&self) -> Option<u32> {
        let v = self.parameters.get("server_version")?;
        let mut parts = v
            .split(|c: char| !c.is_ascii_digit())
            .filter(|s| !s.is_empty());
        let major: u32 = parts.next()?.parse().ok()?;
        let minor: u32 = parts.next().and_then(|m| m.parse().ok()).unwrap_or(0);
        Some(major * 10000 + minor)
    }

    /// Runs a replication command or query; returns its rows as text.
    pub async fn simple_query(
        &mut self,
        sql: &str,
    ) -> Result<Vec<Vec<Option<String>>>, ReplicationError> {
        frontend::query(sql, &mut self.conn.wbuf).map_err(proto)?;
        self.conn.flush().await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            match self.conn.frame().await? {
                Frame::Message(Message::DataRow(row)) => {
                    let buf = row.buffer();
                    let mut ranges = row.ranges();
                    let mut cols = Vec::new();
                    while let Some(r) = ranges.next().map_err(proto)? {
                        cols.push(r.map(|r| String::from_utf8_lossy(&buf[r]).into_owned()));
                    }
                    rows.push(cols);
                }
                Frame::Message(Message::ErrorResponse(body)) => {
                    error = Some(db_error(&mut body.fields()));
                }
                Frame::Message(Message::ReadyForQuery(_)) => {
                    return match error {
                        Some(e) => Err(ReplicationError::Server(e)),
                        None => Ok(rows),
                    };
                }
                Frame::Message(_) => {}
                Frame::CopyBothResponse => {
                    return Err(ReplicationError::Protocol(format!(
                        "unexpected CopyBothResponse to {sql:?}"
                    )))
                }
            }
        }
    }

    /// `IDENTIFY_SYSTEM`: system id, timeline, current WAL position, database.
    pub async fn identify_system(&mut self) -> Result<SystemInfo, ReplicationError> {
        let rows = self.simple_query("IDENTIFY_SYSTEM").await?;
        let row = rows
            .first()
            .filter(|r| r.len() >= 4)
            .ok_or_else(|| ReplicationError::Protocol("IDENTIFY_SYSTEM returned no row".into()))?;
        let field = |i: usize| row.get(i).cloned().flatten().unwrap_or_default();
        Ok(SystemInfo {
            system_id: field(0),
            timeline: field(1)
                .parse()
                .map_err(|_| ReplicationError::Protocol("IDENTIFY_SYSTEM: bad timeline".into()))?,
            xlog_pos: field(2)
                .parse()
                .map_err(|e| ReplicationError::Protocol(format!("{e}")))?,
            dbname: row.get(3).cloned().flatten(),
        })
    }

    /// Creates a logical slot with pgoutput; returns its consistent point.
    /// With `failover` on PostgreSQL 17+, a failover slot (synchronized to standbys that
    /// have `sync_replication_slots`); before 17 there is no such slot and it is ignored.
    pub async fn create_slot(
        &mut self,
        slot: &str,
        failover: bool,
    ) -> Result<Lsn, ReplicationError> {
        let sql = if failover && self.server_version_num().unwrap_or(0) >= FAILOVER_SINCE {
            format!(
                "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput (SNAPSHOT 'nothing', FAILOVER true)",
                quote_ident(slot)
            )
        } else {
            format!(
                "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput NOEXPORT_SNAPSHOT",
                quote_ident(slot)
            )
        };
        let rows = self.simple_query(&sql).await?;
        let lsn = rows
            .first()
            .and_then(|r| r.get(1).cloned().flatten())
            .ok_or_else(|| {
                ReplicationError::Protocol("CREATE_REPLICATION_SLOT returned no position".into())
            })?;
        lsn.parse()
            .map_err(|e| ReplicationError::Protocol(format!("{e}")))
    }

    /// `START_REPLICATION … LOGICAL` with pgoutput v1; the connection becomes a stream.
    pub async fn start_replication(
        mut self,
        slot: &str,
        start: Lsn,
        publication: &str,
    ) -> Result<ReplicationStream, ReplicationError> {
        // `messages` (logical decoding messages) exists from PostgreSQL 14 on.
        let messages = if self.server_version_num().unwrap_or(0) >= 140000 {
            ", messages 'true'"
        } else {
            ""
        };
        let sql = format!(
            "START_REPLICATION SLOT {} LOGICAL {start} (proto_version '1', publication_names {}{messages})",
            quote_ident(slot),
            quote_literal(&quote_ident(publication)),
        );
        info!(%slot, %start, %publication, "starting replication");
        frontend::query(&sql, &mut self.conn.wbuf).map_err(proto)?;
        self.conn.flush().await?;
        loop {
            match self.conn.frame().await? {
                Frame::CopyBothResponse => {
                    return Ok(ReplicationStream {
                        conn: self.conn,
                        status: BytesMut::with_capacity(64),
                    })
                }
                Frame::Message(Message::ErrorResponse(body)) => {
                    return Err(ReplicationError::Server(db_error(&mut body.fields())))
                }
                Frame::Message(Message::NoticeResponse(body)) => {
                    warn!(notice = %db_error(&mut body.fields()), "server notice");
                }
                Frame::Message(_) => {}
            }
        }
    }
}

/// A connection in CopyBoth mode: WAL messages in, status updates out.
pub struct ReplicationStream {
    conn: Conn,
    status: BytesMut,
}

impl ReplicationStream {
    /// The next replication message. Cancel-safe (usable in `select!`).
    pub async fn recv(&mut self) -> Result<ReplicationMessage, ReplicationError> {
        loop {
            let frame = self.conn.frame().await?;
            if let Some(m) = Self::message(frame) {
                return m;
            }
        }
    }

    /// The next replication message if it has already been read from the socket; `None`:
    /// wait with [`ReplicationStream::recv`].
    pub fn try_recv(&mut self) -> Option<Result<ReplicationMessage, ReplicationError>> {
        loop {
            let frame = match protocol::next_frame(&mut self.conn.rbuf) {
                Ok(Some(f)) => f,
                Ok(None) => return None,
                Err(e) => return Some(Err(e.into())),
            };
            if let Some(m) = Self::message(frame) {
                return Some(m);
            }
        }
    }

    /// What a frame of the stream means: a message, an error, or nothing (a notice).
    fn message(frame: Frame) -> Option<Result<ReplicationMessage, ReplicationError>> {
        match frame {
            Frame::Message(Message::CopyData(body)) => {
                Some(protocol::decode_copy_data(body.into_bytes()).map_err(Into::into))
            }
            Frame::Message(Message::ErrorResponse(body)) => {
                Some(Err(ReplicationError::Server(db_error(&mut body.fields()))))
            }
            Frame::Message(Message::CopyDone) => Some(Err(ReplicationError::Closed)),
            Frame::Message(Message::NoticeResponse(body)) => {
                warn!(notice = %db_error(&mut body.fields()), "server notice");
                None
            }
            Frame::Message(_) => None,
            Frame::CopyBothResponse => Some(Err(ReplicationError::Protocol(
                "second CopyBothResponse in stream".into(),
            ))),
        }
    }

    /// Sends a standby status update: `write` received, `flush` = `apply` = confirmed.
    pub async fn send_status(
        &mut self,
        write: Lsn,
        flush: Lsn,
        reply_requested: bool,
    ) -> Result<(), ReplicationError> {
        self.status.clear();
        protocol::encode_status_update(
            write,
            flush,
            flush,
            crate::pgtime::now(),
            reply_requested,
            &mut self.status,
        );
        let payload: Bytes = self.status.split().freeze();
        frontend::CopyData::new(payload)
            .map_err(proto)?
            .write(&mut self.conn.wbuf);
        self.conn.flush().await
    }

    /// Ends the stream politely (CopyDone, Terminate) so the slot is released at once.
    pub async fn close(&mut self) -> Result<(), ReplicationError> {
        frontend::copy_done(&mut self.conn.wbuf);
        frontend::terminate(&mut self.conn.wbuf);
        self.conn.flush().await?;
        let _ = self.conn.io.shutdown().await;
        Ok(())
    }
}

/// Quotes an identifier for a replication command (`"a""b"`).
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Quotes a string literal (`'it''s'`).
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}
