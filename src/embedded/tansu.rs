//! A throwaway tansu broker: a second, independent Kafka-protocol broker (next to librdkafka's
//! mock cluster) on a free loopback port, storing in an SQLite file in a temporary directory,
//! so it can be SIGKILLed and started again on the same port with its data. The binary comes
//! from `scripts/tansu-fetch.sh` (`PGOUTBOX_TANSU`, else its cache).

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::EmbeddedError;

/// Where `scripts/tansu-fetch.sh` puts the pinned version by default.
const CACHED: &str = "/var/cache/pgoutbox/tansu/0.6.0/bin/tansu";

/// A running `tansu broker`; killed when dropped.
pub struct TempTansu {
    bin: PathBuf,
    port: u16,
    dir: tempfile::TempDir,
    child: Mutex<Option<Child>>,
}

/// The tansu binary: `PGOUTBOX_TANSU`, else the fetch script's cache.
pub fn find_tansu() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PGOUTBOX_TANSU") {
        return Some(PathBuf::from(p));
    }
    let cached = PathBuf::from(CACHED);
    cached.is_file().then_some(cached)
}

impl TempTansu {
    /// Starts a broker with SQLite storage on a free loopback port.
    pub fn start() -> Result<Self, EmbeddedError> {
        let bin = find_tansu().ok_or(EmbeddedError::NoTansu)?;
        let dir = tempfile::Builder::new()
            .prefix("pgoutbox-tansu-")
            .tempdir()?;
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = l.local_addr()?.port();
        drop(l);
        let t = TempTansu {
            bin,
            port,
            dir,
            child: Mutex::new(None),
        };
        t.restart()?;
        Ok(t)
    }

    /// Starts the broker (again, after [`kill`](Self::kill)) on the same port and storage.
    pub fn restart(&self) -> Result<(), EmbeddedError> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("broker.log"))?;
        let listener = format!("tcp://127.0.0.1:{}", self.port);
        // tansu reads the file of `sqlite://FILE` relative to its working directory.
        let storage = "sqlite://tansu.db";
        let child = Command::new(&self.bin)
            .arg("broker")
            .args(["--listener-url", &listener])
            .args(["--advertised-listener-url", &listener])
            .args(["--storage-engine", storage])
            .current_dir(self.dir.path())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        let mut slot = self.child.lock().unwrap_or_else(|p| p.into_inner());
        *slot = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(child) = slot.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(self.failed(format!("exited with {status}")));
                }
            }
            if Instant::now() > deadline {
                return Err(self.failed(format!("not listening on port {} after 20 s", self.port)));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    fn failed(&self, what: String) -> EmbeddedError {
        let log = std::fs::read_to_string(self.dir.path().join("broker.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(5).collect();
        EmbeddedError::Command {
            what: "tansu broker".into(),
            detail: format!("{what}; log: {}", tail.join(" | ")),
        }
    }

    /// Creates `name` with `partitions` partitions and `config` (`cleanup.policy=compact` …).
    pub fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        config: &[(&str, &str)],
    ) -> Result<(), EmbeddedError> {
        let mut c = Command::new(&self.bin);
        c.args(["topic", "create", name])
            .args(["--broker", &format!("tcp://127.0.0.1:{}", self.port)])
            .args(["--partitions", &partitions.to_string()]);
        for (k, v) in config {
            c.args(["--config", &format!("{k}={v}")]);
        }
        let out = c.output()?;
        if !out.status.success() {
            return Err(EmbeddedError::Command {
                what: format!("tansu topic create {name}"),
                detail: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(())
    }

    /// SIGKILLs the broker (its storage stays).
    pub fn kill(&self) -> Result<(), EmbeddedError> {
        let taken = self.child.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(mut child) = taken {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// `127.0.0.1:PORT`, for `kafka_brokers`.
    pub fn bootstrap_servers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for TempTansu {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}
