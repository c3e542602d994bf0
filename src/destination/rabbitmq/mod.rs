//! The RabbitMQ destination: each record is a persistent, `mandatory` publish to one exchange
//! with its topic as the routing key, on a channel in confirm mode. A record counts as
//! delivered on the broker's confirm (ack); a nack, or a message the broker returns because no
//! queue is bound for its routing key, is a refusal.
//!
//! - this file: connecting, the record → message mapping, `send` (never waits).
//! - [`publisher`]: the task that publishes in order and matches each confirm to its record.
//! - [`alarm`]: the broker blocking publishers (memory or disk alarm).
//! - [`exchange`]: what `check` and `setup` ask of the exchange.

pub mod admin;
mod alarm;
pub mod exchange;
mod publisher;
mod returns;

use std::sync::{Arc, OnceLock};

use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use tokio::sync::{mpsc, Notify};

use crate::config::rabbitmq::is_valid_routing_key;
use crate::config::{Config, RabbitConfig};
use crate::destination::{
    enqueue, room, Class, Destination, DestinationError, Outcome, Refusal, SendError,
};
use crate::outbox::OutboxRecord;
use publisher::Job;
use tokio_util::task::AbortOnDropHandle;

/// The header carrying the record's key (the routing key is the topic).
pub const KEY_HEADER: &str = "key";

/// Persistent messages survive a broker restart in durable queues.
const PERSISTENT: u8 = 2;

/// How long connecting (and opening the publishing channel) may take: a node that accepts
/// the TCP connection but never answers (frozen, overloaded) must not hang the relay.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Publishes to RabbitMQ; outcomes come back on the channel it was opened with.
pub struct RabbitSink<T: Send + 'static> {
    jobs: mpsc::Sender<Job<T>>,
    purge: Arc<Notify>,
    connection: Connection,
    /// The broker's reason while it blocks publishers.
    blocked: tokio::sync::watch::Receiver<Option<String>>,
    _publisher: AbortOnDropHandle<()>,
    _alarm: AbortOnDropHandle<()>,
}

/// Connects to the first node of `cfg.url` (comma-separated: a cluster's nodes) that takes
/// the connection. Bad URLs, credentials and vhosts are configuration errors (no retry
/// helps); anything else, including no answer within [`CONNECT_TIMEOUT`], is the node being
/// unavailable.
pub async fn connect(cfg: &RabbitConfig) -> Result<Connection, DestinationError> {
    crate::destination::servers::first_that_connects("RabbitMQ", "rabbitmq_url", &cfg.url, |url| {
        connect_to(cfg, url)
    })
    .await
}

/// Connects to the node of one `raw` URL.
async fn connect_to(cfg: &RabbitConfig, raw: String) -> Result<Connection, DestinationError> {
    let url = crate::config::redact_url(&raw);
    let uri: lapin::uri::AMQPUri = raw
        .parse()
        .map_err(|e| DestinationError::Config(format!("RabbitMQ URL {url}: {e}")))?;
    let tls = tls_config(cfg, &uri)?;
    let without_client_cert = uri.scheme == lapin::uri::AMQPScheme::AMQPS && tls.identity.is_none();
    let external = uri.query.auth_mechanism == Some(lapin::uri::SASLMechanism::External);
    if external && tls.identity.is_none() {
        return Err(DestinationError::Config(format!(
            "RabbitMQ URL {url}: auth_mechanism=external logs in as the client certificate's name: use an amqps:// URL and set rabbitmq_tls_cert_file and rabbitmq_tls_key_file"
        )));
    }
    let props = ConnectionProperties::default().with_connection_name("pgoutbox".into());
    let runtime = async_rs::Runtime::tokio_with_handle(socket_runtime()?);
    within(
        &url,
        Connection::connect_uri_with_config(uri, props, tls, runtime),
    )
    .await?
    .map_err(|e| connect_error(&url, &e, without_client_cert, external))
}

/// The TLS settings of an `amqps://` URL: the roots trusted besides the system's
/// (`rabbitmq_tls_ca_file`) and the client certificate (`rabbitmq_tls_cert_file` and
/// `_key_file`), which only an `amqps://` URL may have.
fn tls_config(
    cfg: &RabbitConfig,
    uri: &lapin::uri::AMQPUri,
) -> Result<OwnedTLSConfig, DestinationError> {
    let set = [
        ("rabbitmq_tls_ca_file", cfg.tls_ca_file.is_some()),
        ("rabbitmq_tls_cert_file", cfg.tls_cert_file.is_some()),
    ];
    let Some((name, _)) = set.iter().find(|(_, on)| *on) else {
        return Ok(OwnedTLSConfig::default());
    };
    if uri.scheme != lapin::uri::AMQPScheme::AMQPS {
        return Err(DestinationError::Config(format!(
            "{name} is set but rabbitmq_url is not amqps://: TLS is off"
        )));
    }
    let cert_chain = match &cfg.tls_ca_file {
        Some(path) => Some(
            crate::tls::read_ca_file("rabbitmq_tls_ca_file", path)
                .map_err(DestinationError::Config)?,
        ),
        None => None,
    };
    let identity = match (&cfg.tls_cert_file, &cfg.tls_key_file) {
        (Some(cert), Some(key)) => {
            let (pem, key) = crate::tls::read_client_identity(
                ("rabbitmq_tls_cert_file", cert),
                ("rabbitmq_tls_key_file", key),
            )
            .map_err(DestinationError::Config)?;
            Some(OwnedIdentity::PKCS8 { pem, key })
        }
        _ => None,
    };
    Ok(OwnedTLSConfig {
        identity,
        cert_chain,
    })
}

/// The runtime that serves lapin's sockets: one thread of its own, always waiting on them.
/// lapin reads and writes on a thread of its own but learns that its socket is ready from
/// the runtime the socket is registered with; on the relay's single-threaded runtime that
/// news would wait until the pipeline's thread is idle.
fn socket_runtime() -> Result<tokio::runtime::Handle, DestinationError> {
    static RUNTIME: OnceLock<Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    let built = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("amqp-sockets")
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
    });
    match built {
        Ok(rt) => Ok(rt.handle().clone()),
        Err(e) => Err(DestinationError::Unavailable(format!(
            "RabbitMQ: cannot start the socket thread: {e}"
        ))),
    }
}

/// `step`, or the broker unavailable when it takes longer than [`CONNECT_TIMEOUT`].
async fn within<F: std::future::Future>(url: &str, step: F) -> Result<F::Output, DestinationError> {
    tokio::time::timeout(CONNECT_TIMEOUT, step)
        .await
        .map_err(|_| {
            DestinationError::Unavailable(format!(
                "RabbitMQ at {url}: no answer within {CONNECT_TIMEOUT:?} (the node accepts connections but does not respond)"
            ))
        })
}

/// What a failed connection means: configuration (no retry helps) or the node unavailable,
/// with the fix when one is known. `without_client_cert`: TLS without a client certificate,
/// where a node that verifies peers may cut the connection before its alert arrives;
/// `external`: logging in as the client certificate (SASL EXTERNAL), not with a password.
fn connect_error(
    url: &str,
    e: &lapin::Error,
    without_client_cert: bool,
    external: bool,
) -> DestinationError {
    use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
    let message = format!("RabbitMQ at {url}: {e}");
    match e.kind() {
        lapin::ErrorKind::ProtocolError(p) => match p.kind() {
            AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED) if external => {
                DestinationError::Config(format!(
                    "{message}; with auth_mechanism=external the node logs the relay in as a name from its certificate (RabbitMQ's ssl_cert_login_from: the whole distinguished name by default, or common_name) and that user must exist with permissions on the vhost (`rabbitmqctl add_user NAME PASSWORD`, `rabbitmqctl set_permissions -p VHOST NAME '.*' '.*' '.*'`); the node needs the rabbitmq_auth_mechanism_ssl plugin and EXTERNAL in auth_mechanisms"
                ))
            }
            AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED) => DestinationError::Config(format!(
                "{message}; check the user and password in rabbitmq_url"
            )),
            AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED) => DestinationError::Config(format!(
                "{message}; the vhost does not exist or the user may not use it (`rabbitmqctl add_vhost …`, `rabbitmqctl set_permissions -p VHOST USER '.*' '.*' '.*'`)"
            )),
            _ => DestinationError::Unavailable(message),
        },
        lapin::ErrorKind::AuthProviderError(_) => DestinationError::Config(message),
        _ if crate::tls::is_client_certificate_refusal(e) => DestinationError::Config(format!(
            "{message}; the node refused the TLS handshake: if it verifies peers, set rabbitmq_tls_cert_file and rabbitmq_tls_key_file to a certificate its CA signed"
        )),
        _ if crate::tls::is_certificate_error(e) => DestinationError::Config(format!(
            "{message}; the node's TLS certificate is not trusted: set rabbitmq_tls_ca_file to the CA that signed it, or check the host name in rabbitmq_url"
        )),
        _ if without_client_cert && crate::tls::is_connection_cut(e) => {
            DestinationError::Unavailable(format!(
                "{message}; the node closed the TLS connection: if it verifies peers, set rabbitmq_tls_cert_file and rabbitmq_tls_key_file to a certificate its CA signed"
            ))
        }
        _ => DestinationError::Unavailable(message),
    }
}

/// The message's properties: `message_id` = the event id, `type` from the `type` header,
/// JSON content, persistent, and every header (plus the key) as an AMQP header.
pub(crate) fn properties(record: &OutboxRecord) -> Result<BasicProperties, Refusal> {
    let bad = |what: String| Refusal::new(Class::Refused, what);
    let mut headers = FieldTable::default();
    let key = record.key.as_ref().map(|k| (KEY_HEADER, k));
    let mut kind = None;
    for (k, v) in record
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v))
        .chain(key)
    {
        let name = ShortString::try_new(k)
            .map_err(|_| bad(format!("header name {k:?} is longer than 255 bytes")))?;
        if k == "type" {
            kind = std::str::from_utf8(v)
                .ok()
                .and_then(|t| ShortString::try_new(t).ok());
        }
        headers.insert(name, AMQPValue::LongString(LongString::from(v.to_vec())));
    }
    let id = std::str::from_utf8(&record.event_id)
        .ok()
        .and_then(|id| ShortString::try_new(id).ok())
        .ok_or_else(|| {
            bad("the event id cannot be a message_id (not UTF-8, or longer than 255 bytes)".into())
        })?;
    let mut props = BasicProperties::default()
        .with_message_id(id)
        .with_content_type("application/json".into())
        .with_delivery_mode(PERSISTENT)
        .with_app_id("pgoutbox".into())
        .with_headers(headers);
    if let Some(kind) = kind {
        props = props.with_type(kind);
    }
    Ok(props)
}

impl<T: Send + 'static> Destination<T> for RabbitSink<T> {
    const NAME: &'static str = "rabbitmq";
    type Admin = admin::RabbitAdmin;
    const TITLE: &'static str = "RabbitMQ";

    async fn open(
        cfg: &Config,
        outcomes: mpsc::UnboundedSender<Outcome<T>>,
    ) -> Result<Self, DestinationError> {
        let connection = connect(&cfg.rabbitmq).await?;
        let url = crate::config::redact_url(&cfg.rabbitmq.url);
        let channel = within(&url, async {
            exchange::require(&connection, &cfg.rabbitmq).await?;
            publisher::confirm_channel(&connection).await
        })
        .await??;
        let (jobs, rx) = mpsc::channel(cfg.rabbitmq.max_pending);
        let purge = Arc::new(Notify::new());
        let (blocked, alarm) = alarm::watch(&connection);
        let task = tokio::spawn(publisher::run(
            channel,
            ShortString::try_new(cfg.rabbitmq.exchange.as_str())
                .map_err(|e| DestinationError::Config(format!("rabbitmq_exchange: {e}")))?,
            rx,
            outcomes,
            publisher::Signals {
                purge: purge.clone(),
                blocked: blocked.clone(),
            },
            cfg.rabbitmq.max_pending,
            cfg.rabbitmq.ack_timeout,
        ));
        Ok(RabbitSink {
            jobs,
            purge,
            connection,
            blocked,
            _publisher: AbortOnDropHandle::new(task),
            _alarm: AbortOnDropHandle::new(alarm),
        })
    }

    fn send(&self, record: OutboxRecord, ticket: T) -> Result<(), SendError<T>> {
        let routing_key = match ShortString::try_new(record.topic.as_str()) {
            Ok(k) if is_valid_routing_key(&record.topic) => k,
            _ => {
                let r = Refusal::new(
                    Class::InvalidTopic,
                    format!(
                        "{:?} is not a RabbitMQ routing key (at most 255 bytes)",
                        record.topic
                    ),
                );
                return Err(SendError::Refused(ticket, r, record));
            }
        };
        let properties = match properties(&record) {
            Ok(p) => p,
            Err(r) => return Err(SendError::Refused(ticket, r, record)),
        };
        let job = Job {
            routing_key,
            properties,
            ticket,
            record,
        };
        enqueue(&self.jobs, job, Self::TITLE, |j| (j.ticket, j.record))
    }

    fn ready(&self) -> impl std::future::Future<Output = ()> + Send {
        room(&self.jobs)
    }

    fn purge(&self) {
        self.purge.notify_one();
    }

    fn blocked(&self) -> Option<String> {
        self.blocked.borrow().clone()
    }

    async fn close(self) {
        let close = self.connection.close(200, "pgoutbox stopping".into());
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), close).await;
    }
}
