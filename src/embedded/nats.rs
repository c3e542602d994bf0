//! A throwaway NATS server with JetStream: Debian's `nats-server` on a free loopback port,
//! its store in a temporary directory. Tests own it, so they can kill it and start it again
//! on the same port and store.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{EmbeddedError, ServerTls};

/// A running `nats-server -js`; killed when dropped.
pub struct TempNats {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Clients must use TLS, with the certificate [`TempNats::start_tls`] was given.
    tls: bool,
    /// Clients must present a certificate the CA [`TempNats::start_tls`] was given signed.
    verify_clients: bool,
    /// The server's configuration file, for settings that have no command-line flag
    /// ([`start_tls_mapped`](TempNats::start_tls_mapped)); it holds the TLS settings too.
    config: Option<PathBuf>,
}

/// What a server's configuration file holds besides the command line's settings.
enum Extra<'a> {
    /// TLS with `verify_and_map`, these users (certificate subjects) let in.
    Mapped(&'a [&'a str]),
    /// The caller's own configuration.
    Conf(&'a str),
}

/// The `nats-server` binary: `PGOUTBOX_NATS_SERVER`, else on `PATH`, else Debian's place.
pub(super) fn find_server() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PGOUTBOX_NATS_SERVER") {
        return Some(PathBuf::from(p));
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("nats-server"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| {
        let debian = PathBuf::from("/usr/sbin/nats-server");
        debian.is_file().then_some(debian)
    })
}

impl TempNats {
    /// Starts a server with JetStream on a free loopback port.
    pub fn start() -> Result<Self, EmbeddedError> {
        Self::start_with(None, None)
    }

    /// Starts a server that requires TLS ([`tls_url`](Self::tls_url)) with `tls`'s certificate
    /// and key; with `tls.client_ca`, only clients presenting a certificate that CA signed get
    /// in (mutual TLS).
    pub fn start_tls(tls: ServerTls<'_>) -> Result<Self, EmbeddedError> {
        Self::start_with(Some(tls), None)
    }

    /// Starts a server that requires TLS and a client certificate its CA (`tls.client_ca`,
    /// which must be set) signed, and takes the connection's user from that certificate
    /// (`verify_and_map`): only a certificate whose subject (for example `CN=pgoutbox`) is
    /// one of `users` gets in.
    pub fn start_tls_mapped(tls: ServerTls<'_>, users: &[&str]) -> Result<Self, EmbeddedError> {
        if tls.client_ca.is_none() {
            return Err(EmbeddedError::Command {
                what: "nats-server".into(),
                detail: "verify_and_map needs the CA that signs client certificates".into(),
            });
        }
        Self::start_with(Some(tls), Some(Extra::Mapped(users)))
    }

    /// Starts a server with `conf` (nats-server configuration syntax: `authorization { … }`,
    /// `operator`, `resolver` …) added to its settings; JetStream, port and store as always.
    pub fn start_configured(conf: &str) -> Result<Self, EmbeddedError> {
        Self::start_with(None, Some(Extra::Conf(conf)))
    }

    fn start_with(
        tls: Option<ServerTls<'_>>,
        extra: Option<Extra<'_>>,
    ) -> Result<Self, EmbeddedError> {
        let dir = tempfile::Builder::new()
            .prefix("pgoutbox-nats-")
            .tempdir()?;
        if let Some(tls) = tls {
            std::fs::write(dir.path().join("server.crt"), tls.cert)?;
            std::fs::write(dir.path().join("server.key"), tls.key)?;
            if let Some(ca) = tls.client_ca {
                std::fs::write(dir.path().join("client-ca.crt"), ca)?;
            }
        }
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = l.local_addr()?.port();
        drop(l);
        let config = match extra {
            Some(Extra::Conf(conf)) => {
                let file = dir.path().join("server.conf");
                std::fs::write(&file, conf)?;
                Some(file)
            }
            Some(Extra::Mapped(users)) => {
                let path = |f: &str| dir.path().join(f).display().to_string();
                let users: Vec<String> = users
                    .iter()
                    .map(|u| format!("    {{ user: {u:?} }}\n"))
                    .collect();
                let text = format!(
                    "tls {{\n  cert_file: {:?}\n  key_file: {:?}\n  ca_file: {:?}\n  verify_and_map: true\n}}\nauthorization {{\n  users = [\n{}  ]\n}}\n",
                    path("server.crt"),
                    path("server.key"),
                    path("client-ca.crt"),
                    users.concat()
                );
                let file = dir.path().join("server.conf");
                std::fs::write(&file, text)?;
                Some(file)
            }
            None => None,
        };
        let mut nats = TempNats {
            port,
            dir,
            child: None,
            tls: tls.is_some(),
            verify_clients: tls.is_some_and(|t| t.client_ca.is_some()),
            config,
        };
        nats.restart()?;
        Ok(nats)
    }

    /// Starts the server (again, after [`kill`](Self::kill)) on the same port and store.
    pub fn restart(&mut self) -> Result<(), EmbeddedError> {
        let bin = find_server().ok_or(EmbeddedError::NoNats)?;
        let log = std::fs::File::create(self.dir.path().join("server.log"))?;
        let mut command = Command::new(bin);
        if let Some(config) = &self.config {
            command.arg("-c").arg(config);
        } else {
            if self.tls {
                command
                    .arg("--tls")
                    .arg("--tlscert")
                    .arg(self.dir.path().join("server.crt"))
                    .arg("--tlskey")
                    .arg(self.dir.path().join("server.key"));
            }
            if self.verify_clients {
                command
                    .arg("--tlsverify")
                    .arg("--tlscacert")
                    .arg(self.dir.path().join("client-ca.crt"));
            }
        }
        let child = command
            .args(["-js", "-a", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .arg("-sd")
            .arg(self.dir.path().join("store"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(child) = &mut self.child {
                if let Ok(Some(status)) = child.try_wait() {
                    let log = std::fs::read_to_string(self.dir.path().join("server.log"))
                        .unwrap_or_default();
                    return Err(EmbeddedError::Command {
                        what: "nats-server".into(),
                        detail: format!("exited with {status}: {log}"),
                    });
                }
            }
            if Instant::now() > deadline {
                return Err(EmbeddedError::Command {
                    what: "nats-server".into(),
                    detail: format!("not listening on port {} after 10 s", self.port),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// SIGKILLs the server (its store stays).
    pub fn kill(&mut self) -> Result<(), EmbeddedError> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The server program's version line (`nats-server: v2.9.10`), for reports.
    pub fn version() -> Option<String> {
        let out = Command::new(find_server()?)
            .arg("--version")
            .output()
            .ok()?;
        let line = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        (!line.is_empty()).then_some(line)
    }

    /// `tls://localhost:PORT`, for a server started with [`start_tls`](Self::start_tls) (its
    /// certificate names `localhost`).
    pub fn tls_url(&self) -> Option<String> {
        self.tls.then(|| format!("tls://localhost:{}", self.port))
    }
}

impl Drop for TempNats {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}
