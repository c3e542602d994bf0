//! A throwaway RabbitMQ node (Debian's `rabbitmq-server`) on free loopback ports, with its
//! own database and log directories, for the demo, the tests and the benchmark. The tests own
//! the node: they SIGKILL it and start it again on the same ports and data.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{EmbeddedError, ServerTls};

/// A running (or killed) throwaway node.
pub struct TempRabbit {
    port: u16,
    /// The AMQP-over-TLS listener, if started with [`TempRabbit::start_tls`].
    tls_port: Option<u16>,
    dist_port: u16,
    node: String,
    dir: tempfile::TempDir,
    /// The `rabbitmq-server` wrapper (it switches to the `rabbitmq` user).
    child: Option<Child>,
    /// The Erlang VM the wrapper starts: what `kill` kills.
    beam: Option<i32>,
}

/// Debian's place for the node's scripts, else `PATH`.
fn tool(name: &str) -> Option<PathBuf> {
    let sbin = PathBuf::from("/usr/sbin").join(name);
    if sbin.is_file() {
        return Some(sbin);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// The Erlang runtime's schedulers spin for a while before they sleep (`+sbwt`): on a host of
/// its own that saves a wake-up; here the node shares two cores with PostgreSQL, the relay and
/// the test, whose CPU the spinning takes. Off for every scheduler type.
const SHARED_HOST_ERL_ARGS: &str = "+sbwt none +sbwtdcpu none +sbwtdio none";

/// The node's configuration file, written only for a TLS listener.
const CONFIG_FILE: &str = "rabbitmq.conf";

fn free_port() -> Result<u16, EmbeddedError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

impl TempRabbit {
    /// Starts a node on free loopback ports (about 4 s).
    pub fn start() -> Result<Self, EmbeddedError> {
        Self::start_with(None)
    }

    /// Starts a node that also takes AMQP over TLS ([`tls_url`](Self::tls_url)) with `tls`'s
    /// certificate and key; with `tls.client_ca`, only peers presenting a certificate that CA
    /// signed get in (mutual TLS), and they may log in as the certificate's common name
    /// (`?auth_mechanism=external`; that user must exist) instead of with a password.
    pub fn start_tls(tls: ServerTls<'_>) -> Result<Self, EmbeddedError> {
        Self::start_with(Some(tls))
    }

    fn start_with(tls: Option<ServerTls<'_>>) -> Result<Self, EmbeddedError> {
        let dir = tempfile::Builder::new()
            .prefix("pgoutbox-rabbitmq-")
            .tempdir()?;
        // The node runs as `rabbitmq`: it must reach and own its directories.
        let path = dir.path();
        std::fs::create_dir_all(path.join("mnesia"))?;
        std::fs::create_dir_all(path.join("log"))?;
        std::fs::write(path.join("enabled_plugins"), "[].\n")?;
        let tls_port = match tls {
            Some(tls) => {
                let port = free_port()?;
                std::fs::write(path.join("server.crt"), tls.cert)?;
                std::fs::write(path.join("server.key"), tls.key)?;
                let verify = match tls.client_ca {
                    Some(ca) => {
                        std::fs::write(path.join("client-ca.crt"), ca)?;
                        // Clients may also log in as their certificate's common name
                        // (SASL EXTERNAL), besides a user name and password.
                        std::fs::write(
                            path.join("enabled_plugins"),
                            "[rabbitmq_auth_mechanism_ssl].\n",
                        )?;
                        format!(
                            "ssl_options.cacertfile = {}\n\
                             ssl_options.verify = verify_peer\n\
                             ssl_options.fail_if_no_peer_cert = true\n\
                             auth_mechanisms.1 = PLAIN\n\
                             auth_mechanisms.2 = AMQPLAIN\n\
                             auth_mechanisms.3 = EXTERNAL\n\
                             ssl_cert_login_from = common_name\n",
                            path.join("client-ca.crt").display()
                        )
                    }
                    None => "ssl_options.verify = verify_none\n\
                             ssl_options.fail_if_no_peer_cert = false\n"
                        .to_owned(),
                };
                std::fs::write(
                    path.join(CONFIG_FILE),
                    format!(
                        "listeners.ssl.1 = 127.0.0.1:{port}\n\
                         ssl_options.certfile = {}\n\
                         ssl_options.keyfile = {}\n{verify}",
                        path.join("server.crt").display(),
                        path.join("server.key").display()
                    ),
                )?;
                Some(port)
            }
            None => None,
        };
        run("chmod", &["755".as_ref(), path.as_os_str()])?;
        run(
            "chown",
            &[
                "-R".as_ref(),
                "rabbitmq:rabbitmq".as_ref(),
                path.as_os_str(),
            ],
        )?;
        let port = free_port()?;
        let dist_port = free_port()?;
        let mut node = TempRabbit {
            port,
            tls_port,
            dist_port,
            node: format!("pgoutbox-{port}@localhost"),
            dir,
            child: None,
            beam: None,
        };
        node.restart()?;
        Ok(node)
    }

    /// Starts the node (again, after [`kill`](Self::kill)) on the same ports and data.
    pub fn restart(&mut self) -> Result<(), EmbeddedError> {
        let bin = tool("rabbitmq-server").ok_or(EmbeddedError::NoRabbit)?;
        let path = self.dir.path();
        let mut command = Command::new(bin);
        if self.tls_port.is_some() {
            command.env("RABBITMQ_CONFIG_FILE", path.join(CONFIG_FILE));
        }
        let child = command
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_MNESIA_BASE", path.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", path.join("log"))
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                path.join("enabled_plugins"),
            )
            .env("RABBITMQ_FEATURE_FLAGS_FILE", path.join("feature_flags"))
            .env("RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS", SHARED_HOST_ERL_ARGS)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.child = Some(child);
        // The AMQP listeners open last: connections mean the node is ready.
        let deadline = Instant::now() + Duration::from_secs(60);
        let listening = |port: u16| TcpStream::connect(("127.0.0.1", port)).is_ok();
        while !listening(self.port) || !self.tls_port.is_none_or(listening) {
            if let Some(child) = &mut self.child {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(self.failed(format!("exited with {status}")));
                }
            }
            if Instant::now() > deadline {
                let e = self.failed(format!("not listening on port {} after 60 s", self.port));
                self.beam = beam_of(&self.node);
                let _ = self.kill();
                return Err(e);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.beam = beam_of(&self.node);
        if self.beam.is_none() {
            let pid = self.ctl(&["eval", "os:getpid()."])?;
            self.beam = pid.trim().trim_matches('"').parse().ok();
        }
        Ok(())
    }

    fn failed(&self, why: String) -> EmbeddedError {
        let log = std::fs::read_to_string(
            self.dir
                .path()
                .join("log")
                .join(format!("{}.log", self.node)),
        )
        .unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        EmbeddedError::Command {
            what: "rabbitmq-server".into(),
            detail: format!(
                "{why}; log tail: {}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            ),
        }
    }

    /// `rabbitmqctl -n NODE ARGS…`; its output.
    pub fn ctl(&self, args: &[&str]) -> Result<String, EmbeddedError> {
        let bin = tool("rabbitmqctl").ok_or(EmbeddedError::NoRabbit)?;
        let out = Command::new(bin)
            .args(["-n", &self.node])
            .args(args)
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            return Err(EmbeddedError::Command {
                what: format!("rabbitmqctl {}", args.join(" ")),
                detail: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// SIGKILLs the node (its data stays).
    pub fn kill(&mut self) -> Result<(), EmbeddedError> {
        if let Some(pid) = self.beam.take() {
            // SAFETY: kill(2) on a pid we started; no memory is involved.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            child.wait()?;
        }
        Ok(())
    }

    /// Freezes the node (SIGSTOP): connections stay open, nothing is answered.
    pub fn freeze(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// Lets a frozen node go on (SIGCONT).
    pub fn thaw(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, sig: libc::c_int) {
        if let Some(pid) = self.beam {
            // SAFETY: kill(2) on a pid we started; no memory is involved.
            unsafe { libc::kill(pid, sig) };
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The Erlang node name (`pgoutbox-PORT@localhost`), as `rabbitmqctl` names nodes.
    pub fn node_name(&self) -> &str {
        &self.node
    }

    /// Makes this node a member of `seed`'s cluster (`stop_app`, `join_cluster`,
    /// `start_app`). Nodes on one host share the `rabbitmq` user's Erlang cookie; a member
    /// killed and restarted rejoins by itself.
    pub fn join(&self, seed: &TempRabbit) -> Result<(), EmbeddedError> {
        self.ctl(&["stop_app"])?;
        self.ctl(&["join_cluster", &seed.node])?;
        self.ctl(&["start_app"])?;
        Ok(())
    }

    /// `amqp://guest:guest@127.0.0.1:PORT/%2f` (guest may log in over loopback).
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// `amqps://guest:guest@localhost:TLS_PORT/%2f`, for a node started with
    /// [`start_tls`](Self::start_tls) (its certificate names `localhost`).
    pub fn tls_url(&self) -> Option<String> {
        self.tls_port
            .map(|p| format!("amqps://guest:guest@localhost:{p}/%2f"))
    }
}

/// The Erlang VM running `node`: the `beam.smp` process whose environment names it.
fn beam_of(node: &str) -> Option<i32> {
    let wanted = format!("RABBITMQ_NODENAME={node}");
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
        if comm.trim() != "beam.smp" {
            return None;
        }
        let env = std::fs::read(e.path().join("environ")).ok()?;
        env.split(|b| *b == 0)
            .any(|v| v == wanted.as_bytes())
            .then_some(pid)
    })
}

fn run(cmd: &str, args: &[&std::ffi::OsStr]) -> Result<(), EmbeddedError> {
    let status = Command::new(cmd).args(args).status()?;
    if !status.success() {
        return Err(EmbeddedError::Command {
            what: cmd.into(),
            detail: format!("exited with {status}"),
        });
    }
    Ok(())
}

impl Drop for TempRabbit {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// Declares `exchange` (topic, durable) and a durable queue bound to it with `binding`
/// (e.g. `outbox.event.#`), for the demo, the tests and the benchmark; returns the connection
/// to consume on. `arguments` are the queue's (`x-max-length`, …).
pub async fn declare_queue(
    url: &str,
    exchange: &str,
    queue: &str,
    binding: &str,
    arguments: lapin::types::FieldTable,
) -> Result<lapin::Connection, lapin::Error> {
    use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
    let connection =
        lapin::Connection::connect(url, lapin::ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .exchange_declare(
            exchange.into(),
            lapin::ExchangeKind::Topic,
            durable,
            Default::default(),
        )
        .await?;
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare(queue.into(), durable, arguments)
        .await?;
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            binding.into(),
            QueueBindOptions::default(),
            Default::default(),
        )
        .await?;
    Ok(connection)
}
