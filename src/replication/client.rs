//! The replication connection: startup, authentication, replication commands, CopyBoth.

use std::collections::HashMap;
use std::io;

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::{md5_hash, sasl};
use postgres_protocol::message::{backend::Message, frontend};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tracing::{debug, info, warn};

use super::error::db_error;
use super::protocol::{self, Frame};
use super::{ConnectConfig, Host, ReplicationError, ReplicationStream};
use crate::lsn::Lsn;

/// A byte stream to the server: TCP or Unix socket today, a TLS wrapper later.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Facts from `IDENTIFY_SYSTEM`.
#[derive(Debug, Clone)]
pub struct SystemInfo {
    pub system_id: String,
    pub timeline: u32,
    pub xlog_pos: Lsn,
    pub dbname: Option<String>,
}

/// The first PostgreSQL version with failover slots.
pub const FAILOVER_SINCE: u32 = 170_000;

/// A replication connection in command mode (before `START_REPLICATION`).
pub struct ReplicationClient {
    conn: Conn,
    /// ParameterStatus values from the server (server_version, …).
    pub parameters: HashMap<String, String>,
}

/// Framed I/O shared by command mode and streaming mode.
pub(super) struct Conn {
    pub(super) io: Box<dyn Io>,
    pub(super) rbuf: BytesMut,
    pub(super) wbuf: BytesMut,
}

impl Conn {
    /// Reads until one frame is complete. Cancel-safe: bytes read stay in `rbuf`.
    pub(super) async fn frame(&mut self) -> Result<Frame, ReplicationError> {
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

    pub(super) async fn flush(&mut self) -> Result<(), ReplicationError> {
        let buf = self.wbuf.split();
        self.io.write_all(&buf).await?;
        self.io.flush().await?;
        Ok(())
    }
}

pub(super) fn proto(e: io::Error) -> ReplicationError {
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
                Frame::CopyBothResponse => return Ok(ReplicationStream::new(self.conn)),
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

/// Quotes an identifier for a replication command (`"a""b"`).
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Quotes a string literal (`'it''s'`).
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}
