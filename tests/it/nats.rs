//! NATS JetStream as the destination, against a real throwaway `nats-server -js`: ordering,
//! headers and rollbacks; the kill -9 loop with the LSN checker (at-least-once and
//! exactly-once = duplicate removal by `Nats-Msg-Id`); the server killed and restarted under
//! load; poison events refused by the real server; a graceful stop that resends nothing;
//! `check`.

use std::collections::HashSet;
use std::time::Duration;

use crate::common::kill::{against_broker, cycles};
use crate::common::nats::{self as js, Stored};
use crate::common::*;
use pgoutbox::outbox::PoisonPolicy;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_in_key_order_with_headers_and_never_a_rollback() {
    let env = Env::start().await;
    let server = js::start(Duration::from_secs(120)).await;
    let running = env.spawn_streamer(js::config(&env, &server));
    env.wait_streaming().await;
    let rolled_back = vec![Event::new(90_000, "order", "k-rb")];
    env.db
        .batch_execute(&tx_sql(&rolled_back, "ROLLBACK"))
        .await
        .unwrap();
    let txs = workload(0, 80);
    let ids = ids_of(&txs);
    env.commit(&txs).await;
    let got = js::read_until_all(&server.url(), &ids, Duration::from_secs(60)).await;
    assert_eq!(distinct(&got), ids, "exactly the committed events");
    assert_eq!(got.len(), ids.len(), "no duplicates");
    assert_eq!(js::order_violations(&got), 0);
    let events: std::collections::HashMap<_, _> =
        txs.iter().flatten().map(|e| (e.id.clone(), e)).collect();
    for m in &got {
        let e = events[&m.id()];
        assert_eq!(m.subject, topic(&e.aggregate_type));
        assert_eq!(m.header("Nats-Msg-Id"), Some(e.id.as_str()));
        assert_eq!(m.header("type"), Some(e.kind.as_str()));
        assert_eq!(m.header("key"), Some(e.key.as_str()));
        let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        assert_eq!(v["seq"].as_u64(), Some(e.seq));
    }
    let end = env.current_lsn().await;
    env.wait_confirmed(end, Duration::from_secs(30)).await;
    running.stop().await;
}

/// A backlog far larger than the publishes allowed to await their PubAck at once
/// (`nats_max_pending`): the publisher waits for acks, never for a permit only they free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_larger_than_the_pending_window_drains() {
    let env = Env::start().await;
    let server = js::start(Duration::from_secs(120)).await;
    let txs = workload(0, 200);
    let ids = ids_of(&txs);
    let mut cfg = js::config(&env, &server);
    cfg.nats.max_pending = 8;
    let running = env.spawn_streamer(cfg);
    env.wait_streaming().await;
    env.commit(&txs).await;
    let end = env.current_lsn().await;
    env.wait_confirmed(end, Duration::from_secs(60)).await;
    let got = js::read_until_all(&server.url(), &ids, Duration::from_secs(30)).await;
    assert_eq!(distinct(&got), ids);
    running.stop().await;
}

/// The kill loop against NATS, the LSN checker sampling throughout: nothing lost, each key
/// in order; returns (inserted, distinct stored, stored).
async fn nats_kill_loop(delivery: &str, window: Duration, cycles: usize) -> (usize, usize, usize) {
    let env = Env::start().await;
    let server = js::start(window).await;
    let checker = js::NatsLsnChecker::start(&env, server.url());
    let url = server.url();
    let title = format!("NATS (duplicate window {window:?})");
    let (ids, got) = against_broker(
        &env,
        &title,
        js::binary_env(&server),
        delivery,
        cycles,
        |ids| async move {
            let (samples, _) = checker.finish().await;
            eprintln!("LSN sampled {samples} times, 0 early confirms");
            js::read_until_all(&url, &ids, Duration::from_secs(60)).await
        },
    )
    .await;
    let seen = distinct(&got);
    assert_eq!(ids.difference(&seen).count(), 0, "events lost");
    assert_eq!(js::order_violations(&got), 0);
    (ids.len(), seen.len(), got.len())
}

/// At-least-once with duplicate removal off (the shortest window): nothing lost, and the
/// kills do resend, which the stream then keeps twice. This is what the next test removes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_least_once_loses_nothing() {
    let (_, distinct, stored) =
        nats_kill_loop("at-least-once", Duration::from_millis(100), cycles() / 2).await;
    assert!(stored >= distinct);
}

/// Exactly-once on NATS: the stream's duplicate window (2 min) removes every resend by its
/// `Nats-Msg-Id`: a consumer of the stream reads each event exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_exactly_once_neither_loses_nor_repeats() {
    let (inserted, distinct, stored) =
        nats_kill_loop("exactly-once", Duration::from_secs(120), cycles() / 2).await;
    assert_eq!(distinct, inserted);
    assert_eq!(stored, distinct, "the stream holds an event twice");
}

/// The server SIGKILLed under load and restarted 3 s later, twice: nothing lost, each key's
/// events in order, and the slot never confirmed past an event the stream did not hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_killed_and_restarted_under_load_loses_nothing() {
    let env = Env::start().await;
    let mut server = js::start(Duration::from_secs(120)).await;
    let checker = js::NatsLsnChecker::start(&env, server.url());
    let mut cfg = js::config(&env, &server);
    cfg.nats.ack_timeout = Duration::from_secs(2);
    let running = env.spawn_streamer(cfg);
    env.wait_streaming().await;
    let txs = workload(0, 600);
    let ids = ids_of(&txs);
    let writer = env.spawn_writer(txs, Duration::from_millis(5));
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(800)).await;
        server.kill().unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
        server.restart().unwrap();
    }
    writer.await.unwrap();
    let end = env.current_lsn().await;
    env.wait_confirmed(end, Duration::from_secs(90)).await;
    let (samples, _) = checker.finish().await;
    let got = js::read_until_all(&server.url(), &ids, Duration::from_secs(30)).await;
    let seen = distinct(&got);
    let lost = ids.difference(&seen).count();
    // The publishing client never replays a queue of its own after a reconnect, so nothing
    // overtakes a publish lost with the old socket: each key's events stay in order.
    let reordered = js::order_violations(&got);
    eprintln!(
        "NATS server killed twice under load: {} events inserted, {} stored, {lost} lost, {} duplicates, {reordered} out of key order, LSN sampled {samples} times, 0 early confirms",
        ids.len(),
        got.len(),
        got.len() - seen.len()
    );
    assert_eq!(lost, 0);
    assert_eq!(reordered, 0, "events of a key stored out of order");
    running.stop().await;
}

/// A payload above the server's max_payload (1 MB), and a subject no stream stores: each is
/// refused by the real server and goes to the dead-letter subject, with why; the events
/// around them are delivered and the slot moves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_by_the_real_server_follow_on_poison() {
    let env = Env::start().await;
    let server = js::start_with(
        Duration::from_secs(120),
        &["outbox.event.order", "pgoutbox.dead-letter"],
    )
    .await;
    let mut cfg = js::config(&env, &server);
    cfg.on_poison = PoisonPolicy::DeadLetter;
    let running = env.spawn_streamer(cfg);
    env.wait_streaming().await;
    let before = Event::new(1, "order", "k");
    let unroutable = Event::new(2, "customer", "k");
    let after = Event::new(3, "order", "k");
    env.commit(&[vec![before.clone()], vec![unroutable.clone()]])
        .await;
    env.insert_oversized().await;
    env.commit(&[vec![after.clone()]]).await;
    let want: HashSet<String> = [&before, &after].iter().map(|e| e.id.clone()).collect();
    let got = js::read_until_all(&server.url(), &want, Duration::from_secs(30)).await;
    let dead: Vec<_> = got
        .iter()
        .filter(|m| m.subject == "pgoutbox.dead-letter")
        .collect();
    let class = |id: &str| {
        dead.iter()
            .find(|m| m.id() == id)
            .and_then(|m| m.header("pgoutbox.error.class"))
            .map(str::to_owned)
    };
    assert_eq!(
        class(&unroutable.id).as_deref(),
        Some("unroutable"),
        "{got:?}"
    );
    assert_eq!(class(OVERSIZED_ID).as_deref(), Some("too-large"));
    let end = env.current_lsn().await;
    env.wait_confirmed(end, Duration::from_secs(30)).await;
    running.stop().await;
}

/// Under `on_poison = fail`, the too-large payload stops the stream before it: exit with the
/// event named, the slot not confirmed past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_large_under_fail_stops_and_confirms_nothing_past_it() {
    let env = Env::start().await;
    let server = js::start(Duration::from_secs(120)).await;
    let running = env.spawn_streamer(js::config(&env, &server));
    env.wait_streaming().await;
    env.commit(&[vec![Event::new(1, "order", "k")]]).await;
    let before_big = env.current_lsn().await;
    env.wait_confirmed(before_big, Duration::from_secs(30))
        .await;
    env.insert_oversized().await;
    let result = tokio::time::timeout(Duration::from_secs(30), running.task)
        .await
        .expect("stops")
        .unwrap();
    let e = result.unwrap_err().to_string();
    assert!(e.contains(OVERSIZED_ID) && e.contains("max_payload"), "{e}");
    assert!(
        env.confirmed_flush().await.unwrap() <= wal_in(&e),
        "confirmed past the refused event"
    );
}

/// SIGTERM drains and confirms: a restart (after the duplicate window has passed, so the
/// stream would keep a resend) sends nothing twice. Metrics carry the destination.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_stop_resends_nothing() {
    let env = Env::start().await;
    let server = js::start(Duration::from_millis(500)).await;
    let url = server.url();
    crate::common::graceful::resends_nothing(&env, &js::binary_env(&server), "nats", |ids| {
        let url = url.clone();
        async move {
            let got = js::read_until_all(&url, &ids, Duration::from_secs(30)).await;
            got.iter().map(Stored::id).collect()
        }
    })
    .await;
}

/// The polling publisher delivers to NATS through the same destination, marking each row
/// only once its PubAck came back; a row refused by the server follows `on_poison`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_publisher_delivers_to_nats() {
    let env = Env::start().await;
    env.db
        .batch_execute(pgoutbox::postgres::setup::POLL_SQL)
        .await
        .unwrap();
    let server = js::start(Duration::from_secs(120)).await;
    let mut cfg = js::config(&env, &server);
    cfg.source = pgoutbox::config::Source::Poll;
    cfg.poll.interval = Duration::from_millis(50);
    cfg.on_poison = PoisonPolicy::Skip;
    let running = env.spawn_streamer(cfg);
    let txs = workload(0, 50);
    let ids = ids_of(&txs);
    env.commit(&txs).await;
    let got = js::read_until_all(&server.url(), &ids, Duration::from_secs(30)).await;
    assert_eq!(distinct(&got), ids);
    // A poll whose only row is refused at send: skipped, marked, and the poller goes on (it
    // waited forever for an outcome before).
    env.insert_oversized().await;
    wait_for("every row marked", Duration::from_secs(10), || async {
        env.pending_rows().await == 0
    })
    .await;
    let last = vec![Event::new(5_000, "order", "k")];
    env.commit(std::slice::from_ref(&last)).await;
    let all: HashSet<String> = ids.union(&ids_of(&[last])).cloned().collect();
    let got = js::read_until_all(&server.url(), &all, Duration::from_secs(30)).await;
    assert_eq!(distinct(&got), all);
    assert_eq!(got.len(), all.len());
    running.stop().await;
}

/// `setup --create-nats-stream` creates the stream `check` then finds complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_creates_the_stream() {
    let env = Env::start().await;
    let server = tokio::task::spawn_blocking(pgoutbox::embedded::TempNats::start)
        .await
        .unwrap()
        .unwrap();
    let (pg, url) = (env.pg.url(), server.url());
    let run = |args: &'static [&'static str]| {
        let (pg, url) = (pg.clone(), url.clone());
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_pgoutbox"))
                .args(args)
                .env("PGOUTBOX_POSTGRES_URL", pg)
                .env("PGOUTBOX_DESTINATION", "nats")
                .env("PGOUTBOX_NATS_URL", url)
                .output()
                .unwrap()
        })
    };
    let out = run(&["setup", "--create-nats-stream"]).await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("✔ NATS stream OUTBOX stores outbox.event.> (duplicate_window 120s)"),
        "{text}"
    );
    let out = run(&["check"]).await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// `check` says what the NATS side lacks, with the command that fixes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_the_server_and_the_stream() {
    let env = Env::start().await;
    let server = js::start(Duration::from_secs(120)).await;
    let (pg, url) = (env.pg.url(), server.url());
    let check = move |stream: &'static str| {
        let (pg, url) = (pg.clone(), url.clone());
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_pgoutbox"))
                .arg("check")
                .env("PGOUTBOX_POSTGRES_URL", pg)
                .env("PGOUTBOX_DESTINATION", "nats")
                .env("PGOUTBOX_NATS_URL", url)
                .env("PGOUTBOX_NATS_STREAM", stream)
                .output()
                .unwrap()
        })
    };
    let out = check(js::STREAM).await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for line in [
        "✔ NATS reachable",
        "✔ NATS stream",
        "✔ NATS subjects",
        "✔ NATS duplicate window",
    ] {
        assert!(text.contains(line), "{line}\n{text}");
    }
    let out = check("MISSING").await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(
        text.contains("✘ NATS stream")
            && text.contains("nats stream add MISSING --subjects 'outbox.event.>'"),
        "{text}"
    );
}

/// Route values a fuzzer makes (any printable text, dots, spaces, wildcards, line breaks, tabs,
/// subjects longer than the server's control line) and a few chosen ones: each event is either
/// stored under its subject or dead-lettered as invalid before sending, the relay never stops
/// or stalls, and the slot confirms past all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_route_value_stalls_the_relay() {
    use proptest::strategy::{Strategy, ValueTree};
    let env = Env::start().await;
    let server = js::start(Duration::from_secs(120)).await;
    let mut cfg = js::config(&env, &server);
    cfg.on_poison = PoisonPolicy::DeadLetter;
    let running = env.spawn_streamer(cfg);
    env.wait_streaming().await;
    let strategy = proptest::prop_oneof![
        "\\PC{0,30}",
        "[a-z. \\r\\n\\t*>]{0,20}",
        "[a-z.\\r\\n]{4000,6000}",
        "[a-z]{3800,3900}",
    ];
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let mut values: Vec<String> = (0..150)
        .map(|_| strategy.new_tree(&mut runner).unwrap().current())
        .collect();
    values.extend([
        "x".repeat(5000),
        "a\r\nb".into(),
        String::new(),
        "order".into(),
    ]);
    let id = |i: usize| format!("00000000-0000-4000-8000-{:012}", 900_000 + i);
    for (i, v) in values.iter().enumerate() {
        env.db
            .execute(
                "INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload) \
                 VALUES ($1::text::uuid, $2, 'k', 'fuzzed', '{}'::jsonb)",
                &[&id(i), v],
            )
            .await
            .unwrap();
    }
    let ids: HashSet<String> = (0..values.len()).map(id).collect();
    let got = js::read_until_all(&server.url(), &ids, Duration::from_secs(60)).await;
    let end = env.current_lsn().await;
    env.wait_confirmed(end, Duration::from_secs(30)).await;
    assert!(!running.task.is_finished(), "the relay stopped");
    let mut dead = 0;
    for (i, v) in values.iter().enumerate() {
        let m = got
            .iter()
            .find(|m| m.id() == id(i))
            .unwrap_or_else(|| panic!("route value {v:?} was neither stored nor dead-lettered"));
        let subject = format!("outbox.event.{v}");
        if m.subject == "pgoutbox.dead-letter" {
            dead += 1;
            // An empty value routes nowhere (the mapper's `unroutable`).
            let class = m.header("pgoutbox.error.class");
            assert!(
                class == Some("invalid-topic") || (v.is_empty() && class == Some("unroutable")),
                "{v:?}: {class:?}"
            );
            assert!(!pgoutbox::config::nats::is_valid_subject(&subject), "{v:?}");
        } else {
            assert_eq!(m.subject, subject);
        }
    }
    eprintln!(
        "{} fuzzed route values: {} stored under their subject, {dead} dead-lettered before sending",
        values.len(),
        values.len() - dead
    );
    running.stop().await;
}

/// A stream that refuses new messages when full (`discard = new`, 50 messages, work-queue
/// retention), with a slow consumer freeing space as it acknowledges: publishes are refused
/// and later ones accepted again and again. Everything arrives, and no key's events are ever
/// stored out of order (a refused event is never overtaken by a later one of its key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_stream_with_discard_new_keeps_each_keys_order() {
    use async_nats::jetstream::{consumer, stream};
    use futures_util::StreamExt;
    let env = Env::start().await;
    let server = tokio::task::spawn_blocking(pgoutbox::embedded::TempNats::start)
        .await
        .unwrap()
        .unwrap();
    let jsx = async_nats::jetstream::new(async_nats::connect(server.url()).await.unwrap());
    let stream = jsx
        .create_stream(stream::Config {
            name: js::STREAM.into(),
            subjects: js::SUBJECTS.iter().map(|s| s.to_string()).collect(),
            retention: stream::RetentionPolicy::WorkQueue,
            discard: stream::DiscardPolicy::New,
            max_messages: 50,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .unwrap();
    let reader = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("reader".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .unwrap();
    let txs = workload(0, 400);
    let ids = ids_of(&txs);
    let want = ids.len();
    // The slow consumer: 5 messages, then a pause, acknowledging each (which frees its
    // place), in stream order.
    let consume = tokio::spawn(async move {
        let mut got: Vec<Stored> = Vec::new();
        let mut distinct = HashSet::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
        while distinct.len() < want && tokio::time::Instant::now() < deadline {
            let Ok(mut batch) = reader.fetch().max_messages(5).messages().await else {
                continue;
            };
            while let Some(Ok(m)) = batch.next().await {
                let s = Stored::of(&m);
                distinct.insert(s.id());
                got.push(s);
                m.ack().await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        got
    });
    let mut cfg = js::config(&env, &server);
    cfg.nats.ack_timeout = Duration::from_secs(2);
    let running = env.spawn_streamer(cfg);
    env.wait_streaming().await;
    env.spawn_writer(txs, Duration::ZERO).await.unwrap();
    let got = consume.await.unwrap();
    let seen = distinct(&got);
    let lost = ids.difference(&seen).count();
    let reordered = js::order_violations(&got);
    eprintln!(
        "full discard-new stream: {} events, {} consumed, {lost} lost, {} duplicates, {reordered} out of key order",
        ids.len(),
        got.len(),
        got.len() - seen.len()
    );
    assert_eq!(lost, 0);
    assert_eq!(
        reordered, 0,
        "a later event of a key was stored before a refused one"
    );
    running.stop().await;
}

/// A server that takes the connection but answers nothing (its link stalls: bytes held both
/// ways): the relay pauses, says so once, `/readyz` answers 503 naming the stall and
/// `pgoutbox_destination_stalled_seconds` counts it; when the link flows again everything
/// arrives and `/readyz` is 200 again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_acknowledges_nothing_is_said_and_not_ready() {
    let env = Env::start().await;
    let nats = js::start(Duration::from_secs(120)).await;
    let proxy = crate::common::proxy::Proxy::start(nats.port()).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let port = free_port();
    let (url, metrics) = (
        format!("nats://127.0.0.1:{}", proxy.port),
        format!("127.0.0.1:{port}"),
    );
    let _child = env.spawn_binary(
        &log,
        &[
            ("PGOUTBOX_DESTINATION", "nats"),
            ("PGOUTBOX_NATS_URL", url.as_str()),
            ("PGOUTBOX_NATS_ACK_TIMEOUT_MS", "60000"),
            ("PGOUTBOX_METRICS_ADDR", metrics.as_str()),
        ],
    );
    env.wait_streaming().await;
    let txs = workload(0, 300);
    let ids: HashSet<String> = txs.iter().flatten().map(|e| e.id.clone()).collect();
    proxy.stall();
    let writer = env.spawn_writer(txs, Duration::from_millis(5));
    wait_for(
        "/readyz 503 naming the stall",
        Duration::from_secs(30),
        || async {
            get(port, "/readyz")
                .await
                .is_some_and(|(c, b)| c == 503 && b.contains("no progress for"))
        },
    )
    .await;
    // The gauge follows at each status tick (every second).
    let stalled = || async {
        let m = get(port, "/metrics").await.map(|r| r.1).unwrap_or_default();
        m.lines()
            .find(|l| l.starts_with("pgoutbox_destination_stalled_seconds{destination=\"nats\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    wait_for(
        "the stall gauge past 10 s",
        Duration::from_secs(10),
        || async { stalled().await > 10.0 },
    )
    .await;
    proxy.pass();
    writer.await.unwrap();
    let got = js::read_until_all(&nats.url(), &ids, Duration::from_secs(60)).await;
    let seen: HashSet<String> = got.iter().map(|m| m.id()).collect();
    assert_eq!(ids.difference(&seen).count(), 0, "events lost");
    wait_for("/readyz 200 again", Duration::from_secs(20), || async {
        get(port, "/readyz").await.is_some_and(|(c, _)| c == 200)
    })
    .await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        text.matches("the destination acknowledges nothing while events wait")
            .count(),
        1,
        "{text}"
    );
}
