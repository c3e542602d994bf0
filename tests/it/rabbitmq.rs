//! RabbitMQ as the destination, against a real throwaway node (`rabbitmq-server`): order per
//! routing key into one queue, properties and headers, rollbacks; a returned (unroutable) and a
//! nacked message per `on_poison`; the kill -9 loop (at-least-once: nothing lost; at-most-once:
//! nothing twice); the node killed and restarted under load; exactly-once refused; `check`.

use std::collections::HashSet;
use std::time::Duration;

use crate::common::kill::{against_broker, cycles};
use crate::common::rabbit::{self, Collector, Got};
use crate::common::*;
use pgoutbox::config::DeliveryMode;
use pgoutbox::outbox::PoisonPolicy;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_in_key_order_with_properties_and_never_a_rollback() {
    let env = Env::start().await;
    let node = rabbit::start().await;
    let events = Collector::start(node.url(), rabbit::EVENTS);
    let running = env.spawn_streamer(rabbit::config(&env, &node));
    env.wait_streaming().await;
    let rolled_back = vec![Event::new(90_000, "order", "k-rb")];
    env.db
        .batch_execute(&tx_sql(&rolled_back, "ROLLBACK"))
        .await
        .unwrap();
    let txs = workload(0, 80);
    let ids = ids_of(&txs);
    env.commit(&txs).await;
    let got = events.until_all(&ids, Duration::from_secs(60)).await;
    assert_eq!(distinct(&got), ids, "exactly the committed events");
    assert_eq!(got.len(), ids.len(), "no duplicates");
    assert_eq!(rabbit::order_violations(&got), 0);
    let by_id: std::collections::HashMap<_, _> =
        txs.iter().flatten().map(|e| (e.id.clone(), e)).collect();
    for m in &got {
        let e = by_id[&m.id()];
        assert_eq!(m.routing_key, topic(&e.aggregate_type));
        assert_eq!(m.message_id, e.id);
        assert_eq!(m.kind, e.kind);
        assert_eq!(m.content_type, "application/json");
        assert!(m.persistent, "published persistent");
        assert_eq!(m.header("type"), Some(e.kind.as_str()));
        assert_eq!(m.header("key"), Some(e.key.as_str()));
        assert_eq!(m.seq(), e.seq);
    }
    let end = env.current_lsn().await;
    env.wait_confirmed(end, Duration::from_secs(30)).await;
    running.stop().await;
}

/// A message no queue is bound for comes back (mandatory): a dead letter with its class; the
/// events around it are delivered and the slot moves on. (A nack is a pause, not a poison
/// event: see `full_queue_with_reject_publish_keeps_each_keys_order`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn returned_messages_follow_on_poison() {
    let env = Env::start().await;
    let node = rabbit::start().await;
    // An exchange of its own that routes only `order` (to the events queue).
    let mut cfg = rabbit::config(&env, &node);
    cfg.on_poison = PoisonPolicy::DeadLetter;
    cfg.rabbitmq.exchange = "narrow".into();
    let c = &cfg.rabbitmq;
    for (queue, binding) in [
        (rabbit::EVENTS, "outbox.event.order"),
        (rabbit::DEAD, "pgoutbox.dead-letter"),
    ] {
        let args = Default::default();
        pgoutbox::embedded::rabbitmq::declare_queue(&c.url, &c.exchange, queue, binding, args)
            .await
            .unwrap();
    }
    let events = Collector::start(node.url(), rabbit::EVENTS);
    let dead = Collector::start(node.url(), rabbit::DEAD);
    let running = env.spawn_streamer(cfg);
    env.wait_streaming().await;
    let before = Event::new(1, "order", "k");
    let unroutable = Event::new(2, "customer", "k");
    let after = Event::new(4, "order", "k");
    let mut txs = vec![
        vec![before.clone()],
        vec![unroutable.clone()],
        vec![after.clone()],
    ];
    // Stored and returned messages side by side: the broker acks them together (one
    // `multiple` ack), and lapin may hand a return to the stored message's confirm.
    let pairs: Vec<(Event, Event)> = (0..1000)
        .map(|i| {
            (
                Event::new(10 + 2 * i, "order", "p"),
                Event::new(11 + 2 * i, "customer", "p"),
            )
        })
        .collect();
    // Ten pairs a transaction: many publishes per ack.
    txs.extend(
        pairs
            .chunks(10)
            .map(|c| c.iter().flat_map(|(a, b)| [a.clone(), b.clone()]).collect()),
    );
    env.commit(&txs).await;
    let mut want: HashSet<String> = [&before, &after].iter().map(|e| e.id.clone()).collect();
    want.extend(pairs.iter().map(|(a, _)| a.id.clone()));
    let got = events.until_all(&want, Duration::from_secs(30)).await;
    assert_eq!(distinct(&got), want);
    let mut poisoned: HashSet<String> = HashSet::from([unroutable.id.clone()]);
    poisoned.extend(pairs.iter().map(|(_, b)| b.id.clone()));
    let dead = dead.until_all(&poisoned, Duration::from_secs(30)).await;
    assert_eq!(distinct(&dead), poisoned, "only the returned, each once");
    let class = |id: &str| {
        dead.iter()
            .find(|m| m.id() == id)
            .and_then(|m| m.header("pgoutbox.error.class"))
            .map(str::to_owned)
    };
    assert_eq!(
        class(&unroutable.id).as_deref(),
        Some("unroutable"),
        "{dead:?}"
    );
    for (_, b) in &pairs {
        assert_eq!(class(&b.id).as_deref(), Some("unroutable"), "{dead:?}");
    }
    let end = env.current_lsn().await;
    env.wait_confirmed(end, Duration::from_secs(30)).await;
    running.stop().await;
}

/// The node SIGKILLed under load and restarted 3 s later, twice: nothing lost; and at each
/// kill, every transaction at or below the slot's confirmed position (read once the node is
/// dead, so nothing more can be stored) is among what the queue delivers in the end: the slot
/// never passed a publish the broker had not confirmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_killed_and_restarted_under_load_loses_nothing() {
    let env = Env::start().await;
    let mut node = rabbit::start().await;
    let events = Collector::start(node.url(), rabbit::EVENTS);
    let mut cfg = rabbit::config(&env, &node);
    cfg.rabbitmq.ack_timeout = Duration::from_secs(2);
    let running = env.spawn_streamer(cfg);
    env.wait_streaming().await;
    let txs = workload(0, 600);
    let ids = ids_of(&txs);
    let writer = env.spawn_writer(txs, Duration::from_millis(5));
    let mut confirmed_at_kill = Vec::new();
    for _ in 0..2 {
        // Kill only once the slot has moved on since the last kill (else the check below
        // would look at a position that proves nothing), mid-load.
        let last = confirmed_at_kill.last().copied().unwrap_or_default();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while env.confirmed_flush().await.unwrap() <= last {
            assert!(
                std::time::Instant::now() < deadline,
                "the slot never moved on"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        node.kill().unwrap();
        confirmed_at_kill.push(env.confirmed_flush().await.unwrap());
        tokio::time::sleep(Duration::from_secs(3)).await;
        node = tokio::task::spawn_blocking(move || {
            node.restart().unwrap();
            node
        })
        .await
        .unwrap();
    }
    writer.await.unwrap();
    let end = env.current_lsn().await;
    env.wait_confirmed(end, Duration::from_secs(90)).await;
    let got = events.until_all(&ids, Duration::from_secs(60)).await;
    let seen = distinct(&got);
    let lost = ids.difference(&seen).count();
    let early = confirmed_at_kill
        .iter()
        .filter(|c| checker::confirmed_early(&env.committed, **c, &seen))
        .count();
    eprintln!(
        "RabbitMQ node killed twice under load: {} events inserted, {} delivered, {lost} lost, {} duplicates, {} out of key order, confirmed LSN at the kills {confirmed_at_kill:?}, {early} early confirms",
        ids.len(),
        got.len(),
        got.len() - seen.len(),
        rabbit::order_violations(&got),
    );
    assert_eq!(lost, 0);
    assert_eq!(
        early, 0,
        "the slot was confirmed past a publish the broker lost"
    );
    running.stop().await;
}

/// The node frozen (SIGSTOP) under load for 4 s, with a 1 s confirm deadline: the publishes
/// awaiting a confirm fail as retriable once it passes (the log says so), the slot does not move
/// while the node is frozen, and once it thaws every event is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_node_times_out_confirms_and_loses_nothing() {
    let env = Env::start().await;
    let node = rabbit::start().await;
    let events = Collector::start(node.url(), rabbit::EVENTS);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let mut vars = rabbit::binary_env(&node);
    vars.push(("PGOUTBOX_RABBITMQ_ACK_TIMEOUT_MS", "1000".into()));
    vars.push(("PGOUTBOX_STATUS_INTERVAL_MS", "100".into()));
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut child = env.spawn_binary(&log, &vars);
    env.wait_streaming().await;
    let txs = workload(0, 300);
    let ids = ids_of(&txs);
    let writer = env.spawn_writer(txs, Duration::from_millis(5));
    tokio::time::sleep(Duration::from_millis(500)).await;
    node.freeze();
    // Confirms already on their way are taken within this; none can come after.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let at_freeze = env.confirmed_flush().await.unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let before_thaw = env.confirmed_flush().await.unwrap();
    node.thaw();
    writer.await.unwrap();
    let end = env.current_lsn().await;
    env.wait_confirmed(end, Duration::from_secs(90)).await;
    let got = events.until_all(&ids, Duration::from_secs(60)).await;
    let lost = ids.difference(&distinct(&got)).count();
    let text = std::fs::read_to_string(&log).unwrap();
    eprintln!(
        "RabbitMQ node frozen 4 s under load: {} events, {} delivered, {lost} lost; slot at the freeze {at_freeze:?}, before the thaw {before_thaw:?}",
        ids.len(),
        got.len()
    );
    assert_eq!(lost, 0);
    assert_eq!(
        at_freeze, before_thaw,
        "the slot moved while no confirm could come"
    );
    assert!(
        text.contains("no publisher confirm within"),
        "the confirm deadline never fired: {text}"
    );
    let _ = child.kill().await;
}

/// A user the broker refuses the exchange to (no write permission): the publish fails as
/// `not-authorized`, a final refusal, so with the default `on_poison = fail` the relay stops
/// naming the permission to grant, and the slot stays before the event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_refused_the_exchange_stops_with_the_fix() {
    refused_the_exchange(PoisonPolicy::Fail).await;
}

/// The dead letter goes to the same exchange, which refuses it as well: the relay still stops
/// with the fix rather than drop the event or retry forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_refused_the_exchange_stops_even_with_dead_letters() {
    refused_the_exchange(PoisonPolicy::DeadLetter).await;
}

async fn refused_the_exchange(on_poison: PoisonPolicy) {
    let env = Env::start().await;
    let node = rabbit::start().await;
    for args in [
        &["add_user", "reader", "secret"][..],
        &["set_permissions", "-p", "/", "reader", ".*", "^$", ".*"],
    ] {
        node.ctl(args).unwrap();
    }
    let mut cfg = rabbit::config(&env, &node);
    cfg.rabbitmq.url = node.url().replace("guest:guest", "reader:secret");
    cfg.on_poison = on_poison;
    let running = env.spawn_streamer(cfg);
    env.wait_streaming().await;
    let before = env.current_lsn().await;
    env.commit(&[vec![Event::new(1, "order", "k")]]).await;
    let err = tokio::time::timeout(Duration::from_secs(30), running.task)
        .await
        .expect("the relay stops")
        .unwrap()
        .unwrap_err();
    let e = err.to_string();
    assert!(e.contains("ACCESS_REFUSED"), "{e}");
    assert!(e.contains("set_permissions"), "{e}");
    assert!(
        matches!(&err, pgoutbox::pipeline::StreamError::Refused { cause, .. }
            if cause.class == pgoutbox::destination::Class::NotAuthorized),
        "{err:?}"
    );
    let confirmed = env.confirmed_flush().await.unwrap();
    assert!(confirmed <= before, "the slot passed a refused event");
}

/// SIGTERM drains and confirms: a restart publishes only what came after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_stop_resends_nothing() {
    let env = Env::start().await;
    let node = rabbit::start().await;
    let events = Collector::start(node.url(), rabbit::EVENTS);
    let events = &events;
    crate::common::graceful::resends_nothing(
        &env,
        &rabbit::binary_env(&node),
        "rabbitmq",
        |ids| async move {
            let got = events.until_all(&ids, Duration::from_secs(30)).await;
            got.iter().map(Got::id).collect()
        },
    )
    .await;
}

/// The kill loop against RabbitMQ; returns (inserted, distinct delivered, delivered).
async fn rabbit_kill_loop(delivery: &str, cycles: usize) -> (usize, usize, usize) {
    let env = Env::start().await;
    let node = rabbit::start().await;
    let events = Collector::start(node.url(), rabbit::EVENTS);
    let at_most_once = delivery == "at-most-once";
    let (ids, got) = against_broker(
        &env,
        "RabbitMQ",
        rabbit::binary_env(&node),
        delivery,
        cycles,
        |ids| async move {
            // At-most-once loses what was in flight at a kill: waiting for every id would
            // time out.
            match at_most_once {
                true => events.until_quiet(Duration::from_secs(2)).await,
                false => events.until_all(&ids, Duration::from_secs(60)).await,
            }
        },
    )
    .await;
    (ids.len(), distinct(&got).len(), got.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_least_once_loses_nothing() {
    let (inserted, distinct, _) = rabbit_kill_loop("at-least-once", cycles() / 2).await;
    assert_eq!(distinct, inserted, "events lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_most_once_repeats_nothing() {
    let (_, distinct, delivered) = rabbit_kill_loop("at-most-once", cycles() / 2).await;
    assert_eq!(delivered, distinct, "an event delivered twice");
}

/// `delivery = exactly-once` is refused at start, saying why.
#[tokio::test]
async fn exactly_once_is_refused_with_the_reason() {
    let mut cfg = pgoutbox::Config::new("postgres://x@127.0.0.1/db", "");
    cfg.destination = pgoutbox::config::DestinationKind::RabbitMq;
    cfg.delivery = DeliveryMode::ExactlyOnce;
    let e = cfg.validate().unwrap_err().to_string();
    assert!(e.contains("no publisher-side duplicate removal"), "{e}");
}

/// `check` on a bare node: a wrong password, a missing vhost and a missing exchange each fail
/// with the fix;
/// `setup --create-rabbitmq-exchange` declares the exchange, and then `check` passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_and_setup_the_exchange() {
    let env = Env::start().await;
    let node = tokio::task::spawn_blocking(pgoutbox::embedded::TempRabbit::start)
        .await
        .unwrap()
        .unwrap();
    let pg = env.pg.url();
    let run = |args: &'static [&'static str], url: String| {
        let pg = pg.clone();
        tokio::task::spawn_blocking(move || {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgoutbox"))
                .args(args)
                .env("PGOUTBOX_POSTGRES_URL", pg)
                .env("PGOUTBOX_DESTINATION", "rabbitmq")
                .env("PGOUTBOX_RABBITMQ_URL", url)
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            (out.status.success(), text)
        })
    };
    let wrong = node.url().replace("guest:guest", "guest:wrong");
    let (ok, text) = run(&["check"], wrong).await.unwrap();
    assert!(!ok && text.contains("✘ RabbitMQ reachable"), "{text}");
    assert!(text.contains("check the user and password"), "{text}");
    assert!(
        !text.contains("guest:wrong"),
        "the password is shown: {text}"
    );
    let no_vhost = node.url().replace("%2f", "no-such-vhost");
    let (ok, text) = run(&["check"], no_vhost).await.unwrap();
    assert!(!ok && text.contains("✘ RabbitMQ reachable"), "{text}");
    assert!(text.contains("the vhost does not exist"), "{text}");
    let (ok, text) = run(&["check"], node.url()).await.unwrap();
    assert!(!ok, "{text}");
    assert!(text.contains("✔ RabbitMQ reachable"), "{text}");
    assert!(
        text.contains("✘ RabbitMQ exchange") && text.contains("setup --create-rabbitmq-exchange"),
        "{text}"
    );
    let (ok, text) = run(&["setup", "--create-rabbitmq-exchange"], node.url())
        .await
        .unwrap();
    assert!(ok && text.contains("✔ RabbitMQ exchange outbox"), "{text}");
    let (ok, text) = run(&["check"], node.url()).await.unwrap();
    assert!(ok && text.contains("✔ RabbitMQ exchange"), "{text}");
    // A node that takes the connection but never answers: a bounded wait, then the failure.
    node.freeze();
    let started = std::time::Instant::now();
    let (ok, text) = run(&["check"], node.url()).await.unwrap();
    let waited = started.elapsed();
    node.thaw();
    assert!(!ok && text.contains("✘ RabbitMQ reachable"), "{text}");
    assert!(text.contains("no answer within 5s"), "{text}");
    assert!(waited < Duration::from_secs(15), "check hung {waited:?}");
}

/// A queue that refuses publishes when full (`x-max-length` 50, `x-overflow =
/// reject-publish`), with a slow consumer freeing space as it acknowledges: the broker nacks
/// a publish and takes later ones again and again. A nack is a pause (no dead letter), every
/// event arrives, and no key's events are ever stored out of order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_with_reject_publish_keeps_each_keys_order() {
    let env = Env::start().await;
    let node = rabbit::start().await;
    let mut cfg = rabbit::config(&env, &node);
    cfg.on_poison = PoisonPolicy::DeadLetter;
    cfg.rabbitmq.exchange = "bounded".into();
    let c = &cfg.rabbitmq;
    for (queue, binding, args) in [
        ("bounded", "outbox.event.#", rabbit::bounded(50)),
        (rabbit::DEAD, "pgoutbox.dead-letter", Default::default()),
    ] {
        pgoutbox::embedded::rabbitmq::declare_queue(&c.url, &c.exchange, queue, binding, args)
            .await
            .unwrap();
    }
    let events = Collector::start_paced(node.url(), "bounded", Some(Duration::from_micros(500)));
    let dead = Collector::start(node.url(), rabbit::DEAD);
    let running = env.spawn_streamer(cfg);
    env.wait_streaming().await;
    let txs = workload(0, 400);
    let ids: HashSet<String> = txs.iter().flatten().map(|e| e.id.clone()).collect();
    env.spawn_writer(txs, Duration::ZERO).await.unwrap();
    let got = events.until_all(&ids, Duration::from_secs(180)).await;
    let seen = distinct(&got);
    let lost = ids.difference(&seen).count();
    let reordered = rabbit::order_violations(&got);
    let dead_letters = dead.snapshot().len();
    eprintln!(
        "full reject-publish queue: {} events, {} consumed, {lost} lost, {} duplicates, {reordered} out of key order, {dead_letters} dead letters",
        ids.len(),
        got.len(),
        got.len() - seen.len()
    );
    assert_eq!(lost, 0);
    assert_eq!(
        dead_letters, 0,
        "a full queue is a pause, not a poison event"
    );
    assert_eq!(
        reordered, 0,
        "a later event of a key was stored before a nacked one"
    );
    running.stop().await;
}

/// A memory alarm (`set_vm_memory_high_watermark 0.0001`) blocks publishers for 20 s under
/// load, longer than the confirm deadline: the relay says so once, `/readyz` answers 503 with
/// the broker's reason and the metric shows it, no publish times out into a resend, and once
/// the alarm lifts every event arrives, none twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_alarm_is_a_pause_said_once_and_resends_nothing() {
    let env = Env::start().await;
    let node = rabbit::start().await;
    let events = Collector::start(node.url(), rabbit::EVENTS);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let port = free_port();
    let mut vars = rabbit::binary_env(&node);
    vars.push(("PGOUTBOX_METRICS_ADDR", format!("127.0.0.1:{port}")));
    vars.push(("PGOUTBOX_STATUS_INTERVAL_MS", "200".into()));
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut child = env.spawn_binary(&log, &vars);
    env.wait_streaming().await;
    let txs = workload(0, 730);
    let ids = ids_of(&txs);
    let writer = env.spawn_writer(txs, Duration::from_millis(20));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ctl = |args: &'static [&'static str]| {
        let node = &node;
        node.ctl(args).unwrap()
    };
    ctl(&["set_vm_memory_high_watermark", "0.0001"]);
    let mut not_ready = 0;
    let mut samples = 0;
    let mut metric_seen = false;
    let until = tokio::time::Instant::now() + Duration::from_secs(20);
    tokio::time::sleep(Duration::from_secs(3)).await;
    while tokio::time::Instant::now() < until {
        samples += 1;
        if let Some((503, body)) = get(port, "/readyz").await {
            if body.contains("blocks publishers") {
                not_ready += 1;
            }
        }
        if let Some((200, m)) = get(port, "/metrics").await {
            metric_seen |= m.contains("pgoutbox_destination_blocked{destination=\"rabbitmq\"} 1");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    ctl(&["set_vm_memory_high_watermark", "0.4"]);
    writer.await.unwrap();
    let got = events.until_all(&ids, Duration::from_secs(90)).await;
    let end = env.current_lsn().await;
    env.wait_confirmed(end, Duration::from_secs(30)).await;
    let seen = distinct(&got);
    let lost = ids.difference(&seen).count();
    let twice = got.len() - seen.len();
    let text = std::fs::read_to_string(&log).unwrap();
    let said = text.matches("RabbitMQ blocks publishers").count();
    eprintln!(
        "RabbitMQ memory alarm 20 s under load: {} events, {lost} lost, {twice} published twice; /readyz 503 in {not_ready} of {samples} samples; said {said} time(s)",
        ids.len()
    );
    assert_eq!(lost, 0);
    assert_eq!(
        twice, 0,
        "publishes timed out into resends during the alarm"
    );
    assert_eq!(said, 1, "the block is said once: {text}");
    assert!(!text.contains("no publisher confirm within"), "{text}");
    assert_eq!(
        not_ready, samples,
        "/readyz said ready while the broker blocked publishers"
    );
    assert!(
        metric_seen,
        "pgoutbox_destination_blocked never showed the block"
    );
    assert!(
        get(port, "/readyz")
            .await
            .is_some_and(|(code, _)| code == 200),
        "ready again after the alarm"
    );
    let _ = child.kill().await;
}
