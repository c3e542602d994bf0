//! A TCP proxy for fault tests: passes bytes, stalls them (connections stay open, nothing
//! moves either way), stalls only the connections opened after a client said something, or
//! cuts every open connection.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub struct Proxy {
    pub port: u16,
    stalled: watch::Sender<bool>,
    /// Whether connections opened from now on are held (stalled from their first byte).
    held: watch::Sender<bool>,
    /// Once a client sends these bytes, `held` turns on.
    trigger: Arc<Mutex<Option<Vec<u8>>>>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// Listens on 127.0.0.1 and forwards to 127.0.0.1:`upstream`.
    pub async fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (stalled, rx) = watch::channel(false);
        let (held, held_rx) = watch::channel(false);
        let trigger: Arc<Mutex<Option<Vec<u8>>>> = Arc::default();
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let list = conns.clone();
        let (hold, said) = (held.clone(), trigger.clone());
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                    continue;
                };
                let rx = match *held_rx.borrow() {
                    true => held_rx.clone(),
                    false => rx.clone(),
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                let watch = Some((said.clone(), hold.clone()));
                let a = tokio::spawn(pump(cr, sw, rx.clone(), watch));
                let b = tokio::spawn(pump(sr, cw, rx, None));
                list.lock().unwrap().extend([a, b]);
            }
        });
        Proxy {
            port,
            stalled,
            held,
            trigger,
            conns,
            accept,
        }
    }

    /// Holds every byte (both ways) until [`Proxy::pass`]; connections stay open.
    pub fn stall(&self) {
        self.stalled.send_replace(true);
    }

    /// Once a client sends `bytes`, connections opened after it stall from their first byte
    /// until [`Proxy::pass`]; those open already flow on.
    pub fn stall_new_after(&self, bytes: &[u8]) {
        *self.trigger.lock().unwrap() = Some(bytes.to_vec());
    }

    /// Lets every byte flow again.
    pub fn pass(&self) {
        *self.trigger.lock().unwrap() = None;
        self.held.send_replace(false);
        self.stalled.send_replace(false);
    }

    /// Closes every open connection at once (new ones are accepted).
    pub fn cut(&self) {
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// What a client sends that turns holding new connections on.
type Trigger = (Arc<Mutex<Option<Vec<u8>>>>, watch::Sender<bool>);

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut stalled: watch::Receiver<bool>,
    trigger: Option<Trigger>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // While stalled, do not even read, so nothing moves at all.
        if stalled.wait_for(|s| !*s).await.is_err() {
            return;
        }
        let n = tokio::select! {
            r = from.read(&mut buf) => r.unwrap_or(0),
            _ = stalled.wait_for(|s| *s) => continue,
        };
        if let Some((said, held)) = &trigger {
            let hit = said
                .lock()
                .unwrap()
                .as_ref()
                .is_some_and(|t| buf[..n].windows(t.len()).any(|w| w == t.as_slice()));
            if hit {
                held.send_replace(true);
            }
        }
        // Data read just as a stall began is held until it ends.
        if stalled.wait_for(|s| !*s).await.is_err() {
            return;
        }
        if n == 0 || to.write_all(&buf[..n]).await.is_err() {
            let _ = to.shutdown().await;
            return;
        }
    }
}
