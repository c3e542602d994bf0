//! Server URLs as settings give them: a comma-separated list (a cluster), each URL with its own
//! credentials. What the destinations connect to, and what every printed line must hide.
//!
//! Pure: no I/O.

use percent_encoding::percent_decode_str;

/// The URLs of a comma-separated list, trimmed, empty entries left out.
pub fn split(list: &str) -> Vec<&str> {
    list.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect()
}

/// One URL taken apart: `scheme://[userinfo@]authority[/path][?query]`.
struct Parts<'a> {
    /// Up to and including `://`, or empty.
    scheme: &'a str,
    userinfo: Option<&'a str>,
    /// The rest: host, port, path, query.
    rest: &'a str,
}

fn parts(url: &str) -> Parts<'_> {
    let (scheme, after) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => ("", url),
    };
    // The authority ends at the first '/', '?' or '#'; its last '@' ends the userinfo.
    let end = after.find(['/', '?', '#']).unwrap_or(after.len());
    match after[..end].rfind('@') {
        Some(at) => Parts {
            scheme,
            userinfo: Some(&after[..at]),
            rest: &after[at + 1..],
        },
        None => Parts {
            scheme,
            userinfo: None,
            rest: after,
        },
    }
}

/// Whether a bare userinfo (no `:`) is a secret token rather than a user name: NATS's
/// `nats://TOKEN@host`.
/// Without a scheme (`TOKEN@host:4222`, a list's later entry) it is taken as a token too:
/// hiding a user name costs nothing.
fn bare_userinfo_is_token(scheme: &str) -> bool {
    matches!(scheme, "" | "nats://" | "tls://" | "ws://" | "wss://")
}

/// Query parameters whose value is a secret.
fn secret_param(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    k.contains("password") || k.contains("token") || k.contains("secret") || k == "pass"
}

/// The credentials of one URL of a list, percent-decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    None,
    UserPassword {
        user: String,
        password: String,
    },
    /// NATS: `nats://TOKEN@host`.
    Token(String),
}

fn decode(s: &str) -> String {
    percent_decode_str(s).decode_utf8_lossy().into_owned()
}

/// The credentials `url` carries in its userinfo.
pub fn credentials(url: &str) -> Credentials {
    let p = parts(url);
    match p.userinfo {
        None | Some("") => Credentials::None,
        Some(info) => match info.split_once(':') {
            Some((user, password)) => Credentials::UserPassword {
                user: decode(user),
                password: decode(password),
            },
            None if bare_userinfo_is_token(p.scheme) => Credentials::Token(decode(info)),
            None => Credentials::UserPassword {
                user: decode(info),
                password: String::new(),
            },
        },
    }
}

/// `url` without its userinfo: what a client that takes credentials apart is given.
pub fn without_credentials(url: &str) -> String {
    let p = parts(url);
    format!("{}{}", p.scheme, p.rest)
}

/// Every URL of `list` with its password (or token) and secret query values replaced by
/// `***`, for logs; a libpq `key=value` string has its `password=` value replaced.
pub fn redact(list: &str) -> String {
    if !list.contains("://") && list.contains('=') {
        return redact_key_values(list);
    }
    list.split(',')
        .map(|url| {
            let p = parts(url);
            let info = match p.userinfo {
                None => String::new(),
                Some(info) => match info.split_once(':') {
                    Some((user, _)) => format!("{user}:***@"),
                    None if bare_userinfo_is_token(p.scheme.trim_start()) => "***@".into(),
                    None => format!("{info}@"),
                },
            };
            format!("{}{info}{}", p.scheme, redact_query(p.rest))
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn redact_query(rest: &str) -> String {
    let Some((path, query)) = rest.split_once('?') else {
        return rest.to_owned();
    };
    let query = query
        .split('&')
        .map(|kv| match kv.split_once('=') {
            Some((k, _)) if secret_param(k) => format!("{k}=***"),
            _ => kv.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&");
    format!("{path}?{query}")
}

fn redact_key_values(s: &str) -> String {
    s.split_whitespace()
        .map(|kv| match kv.split_once('=') {
            Some((k, _)) if secret_param(k) => format!("{k}=***"),
            _ => kv.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Every secret `list` holds (passwords, tokens, secret query values), as written and
/// percent-decoded: what no printed line may contain.
pub fn secrets(list: &str) -> Vec<String> {
    let mut out = Vec::new();
    if !list.contains("://") && list.contains('=') {
        for kv in list.split_whitespace() {
            if let Some((k, v)) = kv.split_once('=') {
                if secret_param(k) {
                    out.push(v.trim_matches('\'').to_owned());
                }
            }
        }
    } else {
        for url in list.split(',') {
            let p = parts(url);
            if let Some(info) = p.userinfo {
                match info.split_once(':') {
                    Some((_, password)) => out.push(password.to_owned()),
                    None if bare_userinfo_is_token(p.scheme.trim_start()) => {
                        out.push(info.to_owned())
                    }
                    None => {}
                }
            }
            if let Some((_, query)) = p.rest.split_once('?') {
                for kv in query.split('&') {
                    if let Some((k, v)) = kv.split_once('=') {
                        if secret_param(k) {
                            out.push(v.to_owned());
                        }
                    }
                }
            }
        }
    }
    let decoded: Vec<String> = out.iter().map(|s| decode(s)).collect();
    out.extend(decoded);
    out.retain(|s| !s.is_empty());
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_split_on_commas_and_spaces() {
        assert_eq!(
            split("nats://a:4222, nats://b:4222,,c:4222 "),
            ["nats://a:4222", "nats://b:4222", "c:4222"]
        );
    }

    #[test]
    fn every_password_of_a_list_is_redacted() {
        let list = "nats://u:one@a:4222,nats://u:two@b:4222, nats://tok3n@c:4222";
        let r = redact(list);
        for s in ["one", "two", "tok3n"] {
            assert!(!r.contains(s), "{r}");
        }
        assert_eq!(
            r,
            "nats://u:***@a:4222,nats://u:***@b:4222, nats://***@c:4222"
        );
        assert_eq!(
            redact("amqp://g:p1@a:5672/%2f,amqp://g:p2@b:5672/%2f"),
            "amqp://g:***@a:5672/%2f,amqp://g:***@b:5672/%2f"
        );
        assert_eq!(
            redact("postgres://u:s3cret@h1:5432,h2:5432/db?target_session_attrs=read-write"),
            "postgres://u:***@h1:5432,h2:5432/db?target_session_attrs=read-write"
        );
        assert_eq!(
            redact("postgres://h/db?user=u&password=pw"),
            "postgres://h/db?user=u&password=***"
        );
        assert_eq!(
            redact("host=h password=s3cret user=u"),
            "host=h password=*** user=u"
        );
        // A user name alone is no secret (PostgreSQL, AMQP).
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        // An '@' in the password (unencoded) still ends at the last '@'.
        assert_eq!(redact("nats://u:p@ss@h:4222"), "nats://u:***@h:4222");
    }

    #[test]
    fn secrets_are_found_as_written_and_decoded() {
        let s = secrets("nats://u:p%40ss@a,nats://tok@b,amqp://x:y@c/?auth_token=zz");
        for want in ["p%40ss", "p@ss", "tok", "y", "zz"] {
            assert!(s.contains(&want.to_owned()), "{s:?}");
        }
        assert!(secrets("postgres://u@h/db").is_empty());
        assert_eq!(secrets("host=h password='pw' user=u"), ["pw"]);
    }

    #[test]
    fn credentials_per_url() {
        assert_eq!(
            credentials("nats://u:p%40ss@a:4222"),
            Credentials::UserPassword {
                user: "u".into(),
                password: "p@ss".into()
            }
        );
        assert_eq!(
            credentials("nats://tok@a:4222"),
            Credentials::Token("tok".into())
        );
        assert_eq!(credentials("a:4222"), Credentials::None);
        assert_eq!(without_credentials("nats://u:p@a:4222"), "nats://a:4222");
        assert_eq!(without_credentials("u:p@a:4222"), "a:4222");
    }
}
