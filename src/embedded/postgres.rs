//! A throwaway PostgreSQL cluster: initdb into a temp dir, start on a free port, remove on drop.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tempfile::TempDir;
use tracing::{debug, warn};

use super::EmbeddedError;

/// Extra settings for a throwaway cluster.
#[derive(Debug, Clone, Default)]
pub struct PostgresOptions {
    /// `-c name=value` settings, applied after the defaults (so they can override them).
    pub settings: Vec<(String, String)>,
    /// pg_hba.conf lines placed before the default `trust` lines (first match wins).
    pub hba: Vec<String>,
}

/// A running throwaway cluster. Stops (immediate) and deletes its data on drop.
pub struct TempPostgres {
    dir: TempDir,
    bin: PathBuf,
    port: u16,
    /// initdb refuses to run as root: then every server command runs as `postgres`.
    as_postgres: bool,
    options: PostgresOptions,
}

impl TempPostgres {
    /// Starts a cluster with `wal_level=logical`, trust auth on loopback, user `postgres`.
    pub fn start() -> Result<Self, EmbeddedError> {
        Self::start_with(PostgresOptions::default())
    }

    /// Starts a cluster with extra settings or pg_hba lines.
    pub fn start_with(options: PostgresOptions) -> Result<Self, EmbeddedError> {
        let bin = find_bin_dir().ok_or(EmbeddedError::NoPostgres)?;
        let dir = tempfile::Builder::new().prefix("pgoutbox-pg-").tempdir()?;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let as_postgres = unsafe { libc::geteuid() } == 0;
        let mut pg = TempPostgres {
            dir,
            bin,
            port: 0,
            as_postgres,
            options,
        };
        pg.own_dir()?;
        let mut initdb = pg.server_cmd("initdb");
        initdb.arg("-D").arg(pg.data_dir()).args([
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ]);
        pg.run_checked("initdb", &mut initdb)?;
        pg.write_hba()?;
        // A free port can be taken between probing and binding: retry with another.
        let mut last = None;
        for _ in 0..5 {
            pg.port = free_port()?;
            match pg.pg_ctl_start() {
                Ok(()) => return Ok(pg),
                Err(e) => {
                    warn!(error = %e, "postgres did not start; retrying on another port");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or(EmbeddedError::NoPostgres))
    }

    /// A physical standby of `primary`, made with `pg_basebackup` through the new physical
    /// slot `slot` (`-R`: it follows the primary), started with `options` (for example
    /// `hot_standby_feedback` and `sync_replication_slots`). `port` reuses a port, such as a
    /// dead primary's, so that a fixed multi-host URL finds it.
    pub fn standby_of(
        primary: &TempPostgres,
        slot: &str,
        port: Option<u16>,
        options: PostgresOptions,
    ) -> Result<Self, EmbeddedError> {
        let dir = tempfile::Builder::new().prefix("pgoutbox-pg-").tempdir()?;
        let mut pg = TempPostgres {
            dir,
            bin: primary.bin.clone(),
            port: 0,
            as_postgres: primary.as_postgres,
            options,
        };
        pg.own_dir()?;
        let mut backup = pg.server_cmd("pg_basebackup");
        backup.arg("-D").arg(pg.data_dir()).args([
            "-d",
            &format!(
                "host=127.0.0.1 port={} user=postgres dbname=postgres",
                primary.port
            ),
            "-X",
            "stream",
            // An immediate checkpoint: a spread one made this take a minute.
            "-c",
            "fast",
            "-R",
            "-C",
            "-S",
            slot,
            "--no-sync",
        ]);
        pg.run_checked("pg_basebackup", &mut backup)?;
        pg.port = match port {
            Some(p) => p,
            None => free_port()?,
        };
        pg.pg_ctl_start()?;
        Ok(pg)
    }

    /// Gives the cluster's directory to `postgres` when the servers run as that user.
    fn own_dir(&self) -> Result<(), EmbeddedError> {
        if self.as_postgres {
            self.run_checked(
                "chown",
                Command::new("chown").arg("postgres:").arg(self.dir.path()),
            )?;
        }
        Ok(())
    }

    /// Promotes a standby to a primary and waits until it accepts writes.
    pub fn promote(&self) -> Result<(), EmbeddedError> {
        self.pg_ctl(&["promote", "-w", "-t", "60"])
    }

    /// SIGKILL to the postmaster: a crash, not a shutdown (its backends follow it).
    pub fn kill(&self) -> Result<(), EmbeddedError> {
        let pid_file = std::fs::read_to_string(self.data_dir().join("postmaster.pid"))?;
        let pid: i32 = pid_file
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .ok_or_else(|| EmbeddedError::Command {
                what: "kill".into(),
                detail: "no pid in postmaster.pid".into(),
            })?;
        // SAFETY: kill(2) with a pid read from our own cluster's postmaster.pid.
        if unsafe { libc::kill(pid, libc::SIGKILL) } != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        Ok(())
    }

    /// The directory of the server binaries (for `pg_recvlogical` and friends).
    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    /// A client program (`psql`, `pg_recvlogical`): beside the server binaries if there, else
    /// the newest installed one (server-only builds ship none; clients talk to older and newer
    /// servers alike), else from `PATH`.
    pub fn client_tool(&self, name: &str) -> PathBuf {
        let own = self.bin.join(name);
        if own.exists() {
            return own;
        }
        newest_installed(name).unwrap_or_else(|| PathBuf::from(name))
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A URL for `user` on database `db`, without password.
    pub fn url_for(&self, user: &str, db: &str) -> String {
        format!("postgres://{user}@127.0.0.1:{}/{db}", self.port)
    }

    /// The superuser URL for database `postgres`.
    pub fn url(&self) -> String {
        self.url_for("postgres", "postgres")
    }

    /// Runs SQL through psql as the superuser; returns unaligned, tuples-only output.
    pub fn psql(&self, sql: &str) -> Result<String, EmbeddedError> {
        self.run_psql(&["-c", sql])
    }

    /// Runs a SQL file through psql as the superuser (as a user would apply `sql/setup.sql`).
    pub fn psql_file(&self, path: &Path) -> Result<String, EmbeddedError> {
        self.run_psql(&["-f", &path.display().to_string()])
    }

    fn run_psql(&self, args: &[&str]) -> Result<String, EmbeddedError> {
        let mut c = Command::new(self.client_tool("psql"));
        c.args([
            "-X",
            "-q",
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            &self.url(),
        ])
        .args(args);
        let out = self.run_checked("psql", &mut c)?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// `pg_ctl restart -m <mode>` (`fast` or `immediate`) on the same port.
    pub fn restart(&self, mode: &str) -> Result<(), EmbeddedError> {
        self.pg_ctl(&["stop", "-m", mode])?;
        self.pg_ctl_start()
    }

    fn write_hba(&self) -> Result<(), EmbeddedError> {
        let mut hba = self.options.hba.join("\n");
        hba.push_str("\nlocal all all trust\nhost all all 127.0.0.1/32 trust\nlocal replication all trust\nhost replication all 127.0.0.1/32 trust\n");
        let path = self.data_dir().join("pg_hba.conf");
        std::fs::write(&path, hba)?;
        Ok(())
    }

    fn pg_ctl_start(&self) -> Result<(), EmbeddedError> {
        let mut opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c wal_level=logical \
             -c max_replication_slots=20 -c max_wal_senders=20 -c fsync=off \
             -c max_connections=100",
            self.port,
            self.dir.path().display()
        );
        for (k, v) in &self.options.settings {
            opts.push_str(&format!(" -c {k}={v}"));
        }
        let log = self.dir.path().join("postgres.log");
        self.pg_ctl(&[
            "start",
            "-w",
            "-t",
            "60",
            "-l",
            &log.display().to_string(),
            "-o",
            &opts,
        ])
        .map_err(|e| {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: String = tail.lines().rev().take(5).collect::<Vec<_>>().join(" | ");
            EmbeddedError::Command {
                what: "pg_ctl start".into(),
                detail: format!("{e}; log: {tail}"),
            }
        })?;
        debug!(port = self.port, "throwaway postgres started");
        Ok(())
    }

    fn pg_ctl(&self, args: &[&str]) -> Result<(), EmbeddedError> {
        let mut c = self.server_cmd("pg_ctl");
        c.arg("-D").arg(self.data_dir()).args(args);
        self.run_checked("pg_ctl", &mut c).map(|_| ())
    }

    /// A server binary, run as `postgres` when we are root.
    fn server_cmd(&self, name: &str) -> Command {
        let exe = self.bin.join(name);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        }
    }

    fn run_checked(&self, what: &str, c: &mut Command) -> Result<Output, EmbeddedError> {
        let out = c.output().map_err(|e| EmbeddedError::Command {
            what: what.into(),
            detail: e.to_string(),
        })?;
        if !out.status.success() {
            return Err(EmbeddedError::Command {
                what: what.into(),
                detail: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(out)
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        // Immediate: the data is thrown away anyway.
        if let Err(e) = self.pg_ctl(&["stop", "-m", "immediate", "-t", "30"]) {
            debug!(error = %e, "stopping throwaway postgres");
        }
    }
}

/// The server binaries: `PGOUTBOX_PG_BIN`, else the newest `/usr/lib/postgresql/*/bin`.
fn find_bin_dir() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("PGOUTBOX_PG_BIN") {
        return Some(PathBuf::from(p));
    }
    newest_installed("initdb").and_then(|p| p.parent().map(Path::to_path_buf))
}

/// `/usr/lib/postgresql/<newest major having it>/bin/<name>`.
fn newest_installed(name: &str) -> Option<PathBuf> {
    let mut candidates: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let tool = e.path().join("bin").join(name);
            tool.exists().then_some((v, tool))
        })
        .collect();
    candidates.sort();
    candidates.pop().map(|(_, p)| p)
}

fn free_port() -> Result<u16, EmbeddedError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}
