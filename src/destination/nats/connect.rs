//! Connecting to a NATS server of the configured list: each URL with its own credentials
//! (`nats://user:password@host`, `nats://token@host`), or those of the settings (a `.creds`
//! file, an NKey seed file), tried in order until one takes the connection.

use crate::config::urls::{self, Credentials};
use crate::config::NatsConfig;
use crate::destination::servers::first_that_connects;
use crate::destination::DestinationError;

/// The client options `cfg` asks for, for every server: name, settings' credentials, TLS.
pub(super) async fn options(
    cfg: &NatsConfig,
) -> Result<async_nats::ConnectOptions, DestinationError> {
    let mut opts = async_nats::ConnectOptions::new()
        .name("pgoutbox")
        // `send` checks every subject itself (a bad one is refused as `invalid-topic`).
        .skip_subject_validation(true)
        // Each connection is to one server of the list, with that URL's credentials: the
        // cluster's other servers (announced by the server) are not this URL's to log in to.
        .ignore_discovered_servers()
        .connection_timeout(std::time::Duration::from_secs(5));
    if let Some(path) = &cfg.credentials_file {
        opts = opts.credentials_file(path).await.map_err(|e| {
            DestinationError::Config(format!("nats_credentials_file {}: {e}", path.display()))
        })?;
    }
    if let Some(path) = &cfg.nkey_file {
        let seed = std::fs::read_to_string(path).map_err(|e| {
            DestinationError::Config(format!("nats_nkey_file {}: {e}", path.display()))
        })?;
        let seed = seed
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with("SU"))
            .ok_or_else(|| {
                DestinationError::Config(format!(
                    "nats_nkey_file {}: no user NKey seed (a line starting with SU) in it",
                    path.display()
                ))
            })?;
        opts = opts.nkey(seed.to_owned());
    }
    if let Some(path) = &cfg.tls_ca_file {
        // Read here for a clear error: the client reads it again while connecting.
        crate::tls::read_ca_file("nats_tls_ca_file", path).map_err(DestinationError::Config)?;
        opts = opts.add_root_certificates(path.clone()).require_tls(true);
    }
    if let (Some(cert), Some(key)) = (&cfg.tls_cert_file, &cfg.tls_key_file) {
        crate::tls::read_client_identity(("nats_tls_cert_file", cert), ("nats_tls_key_file", key))
            .map_err(DestinationError::Config)?;
        opts = opts
            .add_client_certificate(cert.clone(), key.clone())
            .require_tls(true);
    }
    Ok(opts)
}

/// Connects with `opts` to the first server of `cfg.url` that takes the connection, each
/// with the credentials its URL carries.
pub(super) async fn dial(
    cfg: &NatsConfig,
    opts: async_nats::ConnectOptions,
) -> Result<async_nats::Client, DestinationError> {
    first_that_connects("NATS", "nats_url", &cfg.url, |url| {
        let opts = match urls::credentials(&url) {
            Credentials::None => opts.clone(),
            Credentials::UserPassword { user, password } => {
                opts.clone().user_and_password(user, password)
            }
            Credentials::Token(token) => opts.clone().token(token),
        };
        async move {
            async_nats::connect_with_options(urls::without_credentials(&url).as_str(), opts)
                .await
                .map_err(|e| classify(cfg, &url, &e))
        }
    })
    .await
}

/// A failed connection to `url`, classified (configuration or unavailable) with its fix.
fn classify(cfg: &NatsConfig, url: &str, e: &async_nats::ConnectError) -> DestinationError {
    let tls = url.contains("tls://") || cfg.tls_ca_file.is_some();
    let without_client_cert = tls && cfg.tls_cert_file.is_none();
    let message = format!("NATS at {}: {e}", crate::config::redact_url(url));
    let untrusted =
        e.kind() == async_nats::ConnectErrorKind::Tls || crate::tls::is_certificate_error(e);
    match e.kind() {
        _ if crate::tls::is_client_certificate_refusal(e) => DestinationError::Config(format!(
            "{message}; the server refused the TLS handshake: if it verifies clients, set nats_tls_cert_file and nats_tls_key_file to a certificate its CA signed"
        )),
        async_nats::ConnectErrorKind::Io if without_client_cert && crate::tls::is_connection_cut(e) => {
            DestinationError::Unavailable(format!(
                "{message}; the server closed the connection: if it verifies TLS clients, set nats_tls_cert_file and nats_tls_key_file to a certificate its CA signed"
            ))
        }
        _ if untrusted => DestinationError::Config(format!(
            "{message}; for a server certificate from a private CA set nats_tls_ca_file to that CA, and check the host name in nats_url"
        )),
        async_nats::ConnectErrorKind::AuthorizationViolation => {
            DestinationError::Config(format!("{message}; {}", refused_login(cfg, url)))
        }
        async_nats::ConnectErrorKind::ServerParse
        | async_nats::ConnectErrorKind::Authentication => DestinationError::Config(message),
        _ => DestinationError::Unavailable(message),
    }
}

/// What to change when the server refused the login, by the credentials that were offered.
fn refused_login(cfg: &NatsConfig, url: &str) -> String {
    let offered = match urls::credentials(url) {
        Credentials::UserPassword { .. } => {
            "the server refused the user and password of this URL: correct them in nats_url (nats://user:password@host:port)"
        }
        Credentials::Token(_) => {
            "the server refused the token of this URL: correct it in nats_url (nats://token@host:port)"
        }
        Credentials::None if cfg.credentials_file.is_some() => {
            "the server refused the user of nats_credentials_file: check that its JWT belongs to an account this server trusts"
        }
        Credentials::None if cfg.nkey_file.is_some() => {
            "the server refused the NKey of nats_nkey_file: its public key (starting with U) must be among the server's authorization users"
        }
        Credentials::None => {
            "the server requires credentials: give them in nats_url (nats://user:password@host:port or nats://token@host:port), or set nats_credentials_file (JWT) or nats_nkey_file (NKey seed)"
        }
    };
    let mapped = if cfg.tls_cert_file.is_some() {
        "; a server with verify_and_map takes the user from the client certificate instead: its users must include the certificate's subject (such as \"CN=pgoutbox\") or an e-mail or DNS name in it"
    } else {
        ""
    };
    format!("{offered}{mapped}")
}
