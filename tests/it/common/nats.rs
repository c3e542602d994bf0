//! NATS side of the harness: a real throwaway `nats-server -js`, the outbox stream, a reader
//! of everything the stream holds, and an LSN checker that compares the slot's confirmed
//! position with what the stream holds.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt;
use pgoutbox::embedded::TempNats;
use pgoutbox::Config;
use tokio::task::JoinHandle;

use super::{connect, Env};

/// The stream the tests publish to, and what it stores.
pub const STREAM: &str = "OUTBOX";
pub const SUBJECTS: &[&str] = &["outbox.event.>", "pgoutbox.dead-letter"];

/// One stored message.
#[derive(Debug, Clone)]
pub struct Stored {
    pub subject: String,
    pub seq: u64,
    pub headers: Vec<(String, String)>,
    pub payload: bytes::Bytes,
}

impl Stored {
    /// What a JetStream consumer received.
    pub fn of(m: &async_nats::jetstream::Message) -> Stored {
        let headers = m
            .headers
            .iter()
            .flat_map(|h| h.iter())
            .flat_map(|(k, vs)| vs.iter().map(move |v| (k.to_string(), v.to_string())))
            .collect();
        Stored {
            subject: m.subject.to_string(),
            seq: m.info().map(|i| i.stream_sequence).unwrap_or(0),
            headers,
            payload: m.payload.clone(),
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The event id (`id` header).
    pub fn id(&self) -> String {
        self.header("id").unwrap_or_default().to_owned()
    }
}

/// A throwaway server with the outbox stream (duplicate window `window`).
pub async fn start(window: Duration) -> TempNats {
    start_with(window, SUBJECTS).await
}

/// A throwaway server with the outbox stream storing `subjects`.
pub async fn start_with(window: Duration, subjects: &[&str]) -> TempNats {
    let nats = tokio::task::spawn_blocking(TempNats::start)
        .await
        .unwrap()
        .expect("start nats-server (apt-get install nats-server)");
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    js.create_stream(stream::Config {
        name: STREAM.into(),
        subjects: subjects.iter().map(|s| s.to_string()).collect(),
        duplicate_window: window,
        ..Default::default()
    })
    .await
    .unwrap();
    nats
}

/// `env`'s configuration, delivering to `nats`.
pub fn config(env: &Env, nats: &TempNats) -> Config {
    let mut c = env.config();
    c.destination = pgoutbox::config::DestinationKind::Nats;
    c.nats.url = nats.url();
    c
}

/// The environment of the binary delivering to `nats`.
pub fn binary_env(nats: &TempNats) -> Vec<(&'static str, String)> {
    vec![
        ("PGOUTBOX_DESTINATION", "nats".into()),
        ("PGOUTBOX_NATS_URL", nats.url()),
    ]
}

/// A client of the server at `url` (one URL), logged in with the user and password it carries.
pub async fn client(url: &str) -> Result<async_nats::Client, async_nats::ConnectError> {
    use pgoutbox::config::urls::{self, Credentials};
    let opts = async_nats::ConnectOptions::new().connection_timeout(Duration::from_secs(2));
    let opts = match urls::credentials(url) {
        Credentials::UserPassword { user, password } => opts.user_and_password(user, password),
        Credentials::Token(t) => opts.token(t),
        Credentials::None => opts,
    };
    opts.connect(urls::without_credentials(url)).await
}

/// Everything the stream holds, in stream order, read through an ordered consumer until
/// nothing new arrives for `quiet`.
pub async fn read_all(url: &str, quiet: Duration) -> Vec<Stored> {
    try_read_all(url, quiet).await.expect("read the stream")
}

/// As [`read_all`], or `None` when the server cannot be read now (a cluster electing a
/// leader, a node down).
pub async fn try_read_all(url: &str, quiet: Duration) -> Option<Vec<Stored>> {
    let js = jetstream::new(client(url).await.ok()?);
    let stream = js.get_stream(STREAM).await.ok()?;
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig::default())
        .await
        .ok()?;
    let mut messages = consumer.messages().await.ok()?;
    let mut out = Vec::new();
    while let Ok(Some(Ok(m))) = tokio::time::timeout(quiet, messages.next()).await {
        out.push(Stored::of(&m));
    }
    Some(out)
}

/// Reads until every id in `ids` is in the stream (or `timeout`).
pub async fn read_until_all(url: &str, ids: &HashSet<String>, timeout: Duration) -> Vec<Stored> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let got = try_read_all(url, Duration::from_millis(500)).await;
        let last_try = tokio::time::Instant::now() > deadline;
        if let Some(got) = got {
            let seen: HashSet<String> = got.iter().map(Stored::id).collect();
            if ids.is_subset(&seen) || last_try {
                return got;
            }
        }
        assert!(!last_try, "the stream could not be read within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Per key (`key` header), the payload sequence numbers must increase in stream order (after
/// dedupe: a resend repeats earlier events).
pub fn order_violations(got: &[Stored]) -> usize {
    let mut last: std::collections::HashMap<String, u64> = Default::default();
    let mut seen = HashSet::new();
    let mut violations = 0;
    for m in got {
        if !seen.insert(m.id()) {
            continue;
        }
        let seq = serde_json::from_slice::<serde_json::Value>(&m.payload)
            .ok()
            .and_then(|v| v["seq"].as_u64())
            .unwrap_or(0);
        let key = m.header("key").unwrap_or_default().to_owned();
        if last.insert(key, seq).is_some_and(|prev| prev > seq) {
            violations += 1;
        }
    }
    violations
}

/// Samples the slot's confirmed LSN against what the stream holds: every committed
/// transaction at or below it must be stored in full. The server may be down meanwhile.
pub struct NatsLsnChecker {
    stop: Arc<AtomicBool>,
    task: JoinHandle<(usize, usize)>,
}

impl NatsLsnChecker {
    pub fn start(env: &Env, url: String) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let committed: super::checker::Committed = env.committed.clone();
        let pg = env.pg.url();
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let db = connect(&pg).await;
            let (mut samples, mut early) = (0, 0);
            while !flag.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let Some(confirmed) = super::checker::confirmed_of(&db).await else {
                    continue;
                };
                // Read after the confirmed position: a stored event never leaves the stream.
                let Ok(got) =
                    tokio::time::timeout(Duration::from_secs(10), try_read_ids(&url)).await
                else {
                    continue;
                };
                let Some(seen) = got else { continue };
                samples += 1;
                if super::checker::confirmed_early(&committed, confirmed, &seen) {
                    early += 1;
                }
            }
            (samples, early)
        });
        NatsLsnChecker { stop, task }
    }

    /// Stops; asserts the confirmed LSN never passed an event the stream did not hold.
    pub async fn finish(self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        let (samples, early) = self.task.await.unwrap();
        assert!(samples > 0, "the LSN sampler never completed a sample");
        assert_eq!(
            early, 0,
            "confirmed_flush_lsn passed an event not in the stream"
        );
        (samples, early)
    }
}

/// The ids the stream holds, or `None` when the server cannot be read now.
async fn try_read_ids(url: &str) -> Option<HashSet<String>> {
    let js = jetstream::new(client(url).await.ok()?);
    let mut stream = js.get_stream(STREAM).await.ok()?;
    let last = stream.info().await.ok()?.state.last_sequence;
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig::default())
        .await
        .ok()?;
    let mut messages = consumer.messages().await.ok()?;
    let mut ids = HashSet::new();
    if last == 0 {
        return Some(ids);
    }
    while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(2), messages.next()).await
    {
        if let Some(id) = m.headers.as_ref().and_then(|h| h.get("id")) {
            ids.insert(id.to_string());
        }
        if m.info().is_ok_and(|i| i.stream_sequence >= last) {
            return Some(ids);
        }
    }
    None
}

impl super::Delivered for Stored {
    fn event_id(&self) -> String {
        self.id()
    }
}
