//! TLS to PostgreSQL with libpq's `sslmode` semantics, on rustls (ring provider); and the
//! rustls helpers the destinations share (CA files).
//!
//! | sslmode | TLS | certificate checked |
//! |---|---|---|
//! | `disable` | never | – |
//! | `prefer` | if the server offers it | no |
//! | `require` | always | no; with `sslrootcert` given, as `verify-ca` (libpq's rule) |
//! | `verify-ca` | always | chain up to the root cert, any host name |
//! | `verify-full` | always | chain and host name |

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, Error, RootCertStore, SignatureScheme,
};

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    Disable,
    /// libpq's default.
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl FromStr for SslMode {
    type Err = TlsError;
    fn from_str(s: &str) -> Result<Self, TlsError> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            // allow/ … are libpq modes pgoutbox does not offer.
            other => return Err(TlsError::Mode(other.to_owned())),
        })
    }
}

impl SslMode {
    /// Whether a server without TLS is acceptable.
    pub fn allows_plaintext(self) -> bool {
        matches!(self, SslMode::Disable | SslMode::Prefer)
    }
}

/// A TLS setting that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("invalid sslmode {0:?}: use disable, prefer, require, verify-ca or verify-full")]
    Mode(String),
    #[error("reading sslrootcert {path}: {error}")]
    RootCert { path: PathBuf, error: String },
    #[error("sslrootcert {0} holds no certificate")]
    NoRootCert(PathBuf),
    #[error("no trusted root certificates: set sslrootcert")]
    NoRoots,
    #[error("TLS setup: {0}")]
    Rustls(#[from] Error),
}

/// `sslmode` plus an optional root certificate file (`sslrootcert`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    pub mode: SslMode,
    pub root_cert: Option<PathBuf>,
}

impl TlsSettings {
    /// The rustls configuration, or `None` for `disable`.
    pub fn client_config(&self) -> Result<Option<Arc<ClientConfig>>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let verifier: Arc<dyn ServerCertVerifier> = match self.mode {
            SslMode::Disable => return Ok(None),
            SslMode::Require if self.root_cert.is_none() => Arc::new(Lenient {
                chain: None,
                provider,
            }),
            SslMode::Prefer => Arc::new(Lenient {
                chain: None,
                provider,
            }),
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                let roots = Arc::new(self.roots()?);
                let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                    .build()
                    .map_err(|e| Error::General(e.to_string()))?;
                if self.mode != SslMode::VerifyFull {
                    Arc::new(Lenient {
                        chain: Some(webpki),
                        provider,
                    })
                } else {
                    webpki
                }
            }
        };
        Ok(Some(Arc::new(
            builder
                .dangerous()
                .with_custom_certificate_verifier(verifier)
                .with_no_client_auth(),
        )))
    }

    fn roots(&self) -> Result<RootCertStore, TlsError> {
        let mut roots = RootCertStore::empty();
        match &self.root_cert {
            Some(path) => {
                for cert in read_certs(path)? {
                    roots.add(cert)?;
                }
                if roots.is_empty() {
                    return Err(TlsError::NoRootCert(path.clone()));
                }
            }
            None => {
                // The system store, like libpq's sslrootcert=system.
                for cert in rustls_native_certs::load_native_certs().certs {
                    let _ = roots.add(cert);
                }
                if roots.is_empty() {
                    return Err(TlsError::NoRoots);
                }
            }
        }
        Ok(roots)
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |e: &dyn std::fmt::Display| TlsError::RootCert {
        path: path.to_owned(),
        error: e.to_string(),
    };
    CertificateDer::pem_file_iter(path)
        .map_err(|e| err(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(&e))
}

/// libpq's lenient modes. Without `chain` (`require`/`prefer`): the session is encrypted
/// and the handshake is verified, but the certificate is not (libpq's behaviour without a
/// root certificate). With it (`verify-ca`): the full WebPKI check except the host name.
#[derive(Debug)]
struct Lenient {
    chain: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        verify_tls12_signature(message, cert, dss, algorithms)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        verify_tls13_signature(message, cert, dss, algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The PEM text of the CA file the setting `setting` names, or why it cannot be used.
pub fn read_ca_file(setting: &str, path: &Path) -> Result<String, String> {
    let pem =
        std::fs::read_to_string(path).map_err(|e| format!("{setting} {}: {e}", path.display()))?;
    if !pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err(format!(
            "{setting} {}: no PEM certificate in it",
            path.display()
        ));
    }
    Ok(pem)
}

/// A client certificate (PEM, the chain up from the client's own) and its private key (PEM:
/// PKCS#8, PKCS#1 or SEC1), read from the files two settings name, or why they cannot be used.
/// Read up front so that a wrong path or file is a plain configuration error, not a failed
/// handshake.
pub fn read_client_identity(
    (cert_setting, cert_path): (&str, &Path),
    (key_setting, key_path): (&str, &Path),
) -> Result<(Vec<u8>, Vec<u8>), String> {
    let cert = std::fs::read(cert_path)
        .map_err(|e| format!("{cert_setting} {}: {e}", cert_path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{cert_setting} {}: {e}", cert_path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{cert_setting} {}: no PEM certificate in it",
            cert_path.display()
        ));
    }
    let key = std::fs::read(key_path)
        .map_err(|e| format!("{key_setting} {}: {e}", key_path.display()))?;
    PrivateKeyDer::from_pem_slice(&key).map_err(|e| {
        format!(
            "{key_setting} {}: no usable private key (PEM, unencrypted): {e}",
            key_path.display()
        )
    })?;
    Ok((cert, key))
}

/// Whether `e` (or any error it wraps) is the server refusing the TLS handshake for want of
/// an acceptable client certificate (TLS alerts `certificate_required`, `bad_certificate`,
/// `unknown_ca`, `handshake_failure`, …): a setup problem that retrying cannot fix.
pub fn is_client_certificate_refusal(e: &(dyn std::error::Error + 'static)) -> bool {
    use rustls::AlertDescription as A;
    let refused = |r: &Error| {
        matches!(
            r,
            Error::AlertReceived(
                A::CertificateRequired
                    | A::BadCertificate
                    | A::UnknownCA
                    | A::CertificateUnknown
                    | A::UnsupportedCertificate
                    | A::CertificateExpired
                    | A::CertificateRevoked
                    | A::AccessDenied
                    | A::HandshakeFailure
                    | A::DecryptError
            )
        )
    };
    any_rustls_error(e, refused)
}

/// Whether `e` (or any error it wraps) is the peer cutting the connection (reset, or closed
/// in the middle of a read): what a TLS server that wants a client certificate may do before
/// its alert reaches the client.
pub fn is_connection_cut(e: &(dyn std::error::Error + 'static)) -> bool {
    use std::io::ErrorKind as K;
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                K::ConnectionReset | K::ConnectionAborted | K::UnexpectedEof | K::BrokenPipe
            ) {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

/// Whether `e` or an error it wraps (directly or inside an `io::Error`) is a rustls error
/// that `pred` accepts.
fn any_rustls_error(e: &(dyn std::error::Error + 'static), pred: impl Fn(&Error) -> bool) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.downcast_ref::<Error>().is_some_and(&pred) {
            return true;
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io
                .get_ref()
                .and_then(|i| i.downcast_ref::<Error>())
                .is_some_and(&pred)
            {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

/// Whether `e` (or any error it wraps) is a rejected server certificate: a setup problem that
/// retrying cannot fix.
pub fn is_certificate_error(e: &(dyn std::error::Error + 'static)) -> bool {
    any_rustls_error(e, |r| matches!(r, Error::InvalidCertificate(_)))
}

/// Removes `sslmode` and `sslrootcert` from a libpq-style URL or key=value string (which
/// tokio-postgres cannot parse in full) and returns them.
pub fn split_tls_params(url: &str) -> (String, Option<String>, Option<String>) {
    let mut mode = None;
    let mut root = None;
    let mut take = |k: &str, v: String| match k {
        "sslmode" => {
            mode = Some(v);
            true
        }
        "sslrootcert" => {
            root = Some(v);
            true
        }
        _ => false,
    };
    if url.contains("://") {
        let Some((base, query)) = url.split_once('?') else {
            return (url.to_owned(), None, None);
        };
        let kept: Vec<&str> = query
            .split('&')
            .filter(|kv| !kv.is_empty())
            .filter(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                !take(k, percent_decode(v))
            })
            .collect();
        let rebuilt = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        (rebuilt, mode, root)
    } else {
        let kept: Vec<&str> = url
            .split_whitespace()
            .filter(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                !take(k, v.trim_matches('\'').to_owned())
            })
            .collect();
        (kept.join(" "), mode, root)
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_url_params() {
        let (u, m, r) = split_tls_params(
            "postgres://u:p@h:5432/db?application_name=x&sslmode=verify-full&sslrootcert=%2Fetc%2Froot.crt",
        );
        assert_eq!(u, "postgres://u:p@h:5432/db?application_name=x");
        assert_eq!(m.as_deref(), Some("verify-full"));
        assert_eq!(r.as_deref(), Some("/etc/root.crt"));
        let (u, m, _) = split_tls_params("postgres://h/db?sslmode=require");
        assert_eq!(u, "postgres://h/db");
        assert_eq!(m.as_deref(), Some("require"));
        let (u, m, r) = split_tls_params("host=h sslmode=verify-ca sslrootcert=/r.crt user=u");
        assert_eq!(u, "host=h user=u");
        assert_eq!(m.as_deref(), Some("verify-ca"));
        assert_eq!(r.as_deref(), Some("/r.crt"));
        assert_eq!(split_tls_params("postgres://h/db").0, "postgres://h/db");
        assert_eq!(split_tls_params("postgres://h/db?").0, "postgres://h/db");
    }

    #[test]
    fn modes() {
        assert_eq!(
            "verify-full".parse::<SslMode>().unwrap(),
            SslMode::VerifyFull
        );
        assert!("allow".parse::<SslMode>().is_err());
        assert!(SslMode::Prefer.allows_plaintext());
        assert!(!SslMode::Require.allows_plaintext());
        let none = TlsSettings {
            mode: SslMode::Disable,
            root_cert: None,
        };
        assert!(none.client_config().unwrap().is_none());
        let missing = TlsSettings {
            mode: SslMode::VerifyFull,
            root_cert: Some("/nonexistent/root.crt".into()),
        };
        assert!(missing.client_config().is_err());
    }
}
