//! A throwaway 3-node NATS JetStream cluster on loopback: each node its own name, client and
//! route ports and store, routes to all three, and (optionally) a user and password of its
//! own. Tests kill and restart nodes (SIGKILL, same ports and store).

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::nats::find_server;
use super::EmbeddedError;

/// The cluster's name.
const CLUSTER: &str = "pgoutbox-test";

/// One node.
struct Node {
    name: String,
    client_port: u16,
    route_port: u16,
    /// `(user, password)` clients log in with.
    login: Option<(String, String)>,
    child: Option<Child>,
}

/// Three `nats-server -js` nodes in one cluster; killed when dropped.
pub struct TempNatsCluster {
    dir: tempfile::TempDir,
    nodes: Vec<Node>,
}

fn free_port() -> Result<u16, EmbeddedError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

impl TempNatsCluster {
    /// Starts three nodes; with `logins`, node `i` lets clients in only as `logins[i]`.
    pub fn start(logins: Option<[(&str, &str); 3]>) -> Result<Self, EmbeddedError> {
        let dir = tempfile::Builder::new()
            .prefix("pgoutbox-nats-cluster-")
            .tempdir()?;
        let mut nodes = Vec::new();
        for i in 0..3 {
            nodes.push(Node {
                name: format!("n{}", i + 1),
                client_port: free_port()?,
                route_port: free_port()?,
                login: logins.map(|l| (l[i].0.to_owned(), l[i].1.to_owned())),
                child: None,
            });
        }
        let mut cluster = TempNatsCluster { dir, nodes };
        for i in 0..3 {
            cluster.spawn(i)?;
        }
        for i in 0..3 {
            cluster.wait_listening(i)?;
        }
        Ok(cluster)
    }

    fn spawn(&mut self, i: usize) -> Result<(), EmbeddedError> {
        let bin = find_server().ok_or(EmbeddedError::NoNats)?;
        let routes: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.route_port))
            .collect();
        let node = &self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{}.log", node.name)))?;
        let mut command = Command::new(bin);
        command
            .args(["-js", "-a", "127.0.0.1", "-n", &node.name])
            .arg("-p")
            .arg(node.client_port.to_string())
            .arg("-sd")
            .arg(self.dir.path().join(&node.name))
            .args(["--cluster_name", CLUSTER, "--cluster"])
            .arg(format!("nats://127.0.0.1:{}", node.route_port))
            .arg("--routes")
            .arg(routes.join(","));
        if let Some((user, pass)) = &node.login {
            command.args(["--user", user, "--pass", pass]);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        self.nodes[i].child = Some(child);
        Ok(())
    }

    fn wait_listening(&mut self, i: usize) -> Result<(), EmbeddedError> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let port = self.nodes[i].client_port;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(Ok(Some(status))) = self.nodes[i].child.as_mut().map(Child::try_wait) {
                return Err(EmbeddedError::Command {
                    what: format!("nats-server {}", self.nodes[i].name),
                    detail: format!("exited with {status}: {}", self.log(i)),
                });
            }
            if Instant::now() > deadline {
                return Err(EmbeddedError::Command {
                    what: format!("nats-server {}", self.nodes[i].name),
                    detail: format!("not listening on port {port} after 10 s"),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Node `i`'s log so far.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{}.log", self.nodes[i].name)))
            .unwrap_or_default()
    }

    /// SIGKILLs node `i` (its store stays).
    pub fn kill(&mut self, i: usize) -> Result<(), EmbeddedError> {
        if let Some(mut child) = self.nodes[i].child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Starts node `i` again, on its ports and store.
    pub fn restart(&mut self, i: usize) -> Result<(), EmbeddedError> {
        self.spawn(i)?;
        self.wait_listening(i)
    }

    /// The index of the node named `name` (`n1`…`n3`), as a stream's cluster leader is named.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// Whether node `i` runs.
    pub fn is_up(&self, i: usize) -> bool {
        self.nodes[i].child.is_some()
    }

    /// `nats://[user:password@]127.0.0.1:PORT` of node `i`.
    pub fn url(&self, i: usize) -> String {
        let n = &self.nodes[i];
        match &n.login {
            Some((u, p)) => format!("nats://{u}:{p}@127.0.0.1:{}", n.client_port),
            None => format!("nats://127.0.0.1:{}", n.client_port),
        }
    }

    /// Every node's URL, comma-separated.
    pub fn urls(&self) -> String {
        (0..self.nodes.len())
            .map(|i| self.url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Where the nodes keep their stores and logs.
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

impl Drop for TempNatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            let _ = self.kill(i);
        }
    }
}
