//! The publishing client: its own thread, and no reconnecting by itself.
//!
//! async-nats reconnects on its own and then sends the publishes it had queued meanwhile. A
//! publish lost with the old socket is resent only later, from the slot, so a key's events
//! would be stored out of order. The publishing client therefore never reconnects: when its
//! connection breaks, every publish awaiting a PubAck fails as retriable, and the session
//! resumes from the slot on a new client, in order (the duplicate window removes what the old
//! connection did store).
//!
//! The old client's tasks would then wait forever, with whatever it had queued. They run on a
//! one-thread runtime of the sink's own ([`ClientThread`]), together with the publisher task,
//! and dropping the sink drops that runtime and ends them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, watch};

use crate::config::NatsConfig;
use crate::destination::DestinationError;

/// A one-thread runtime on a thread of its own, stopped (and every task on it dropped) when
/// this is dropped.
pub struct ClientThread {
    handle: tokio::runtime::Handle,
    stop: Option<oneshot::Sender<()>>,
}

impl ClientThread {
    pub fn start() -> Result<Self, DestinationError> {
        let unavailable =
            |e: std::io::Error| DestinationError::Unavailable(format!("NATS: client thread: {e}"));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(unavailable)?;
        let handle = rt.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("nats-client".into())
            .spawn(move || {
                // Until the sink is dropped (the sender with it); then the runtime's drop
                // ends every task still on it.
                rt.block_on(async {
                    let _ = stopped.await;
                });
            })
            .map_err(unavailable)?;
        Ok(ClientThread {
            handle,
            stop: Some(stop),
        })
    }

    pub fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }
}

impl Drop for ClientThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Connects the publishing client (as [`super::connect`]) so that it never reconnects by
/// itself; `lost` turns true when its connection breaks. Run it on a [`ClientThread`]: the
/// client's tasks go to the runtime it runs on.
pub async fn connect(
    cfg: &NatsConfig,
    lost: watch::Sender<bool>,
) -> Result<async_nats::Client, DestinationError> {
    let connected = Arc::new(AtomicBool::new(false));
    let after_connect = connected.clone();
    let lost = Arc::new(lost);
    let opts = super::connect::options(cfg)
        .await?
        // The first connection tries each server at once; a broken one is never retried
        // (the wait is longer than any session).
        .reconnect_delay_callback(move |_| match after_connect.load(Ordering::Acquire) {
            true => Duration::MAX,
            false => Duration::ZERO,
        })
        .event_callback(move |event| {
            let lost = lost.clone();
            async move {
                if matches!(event, async_nats::Event::Disconnected) {
                    lost.send_replace(true);
                }
            }
        });
    let client = super::connect::dial(cfg, opts).await?;
    connected.store(true, Ordering::Release);
    Ok(client)
}
