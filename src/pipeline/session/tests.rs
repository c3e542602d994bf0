//! The session's rules, with a fake WAL and a fake destination: no server, no clock beyond
//! the loop's own timers. Each test is named after the rule it checks.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::fakes::{answer, run_session, sent, settle, FakeDest};
use super::{Session, Ticket, Wal};
use crate::config::{Config, DeliveryMode};
use crate::destination::{Class, Outcome};
use crate::lsn::Lsn;
use crate::outbox::PoisonPolicy;
use crate::pgoutput::{encode, Begin, Column, Commit, Insert, Message, Relation, TupleData, Value};
use crate::pipeline::StreamError;
use crate::replication::ReplicationMessage;

/// Scripted WAL: messages from the test, every status update's flush position kept.
struct FakeWal {
    rx: mpsc::UnboundedReceiver<ReplicationMessage>,
    flushes: Arc<Mutex<Vec<Lsn>>>,
}

impl Wal for FakeWal {
    async fn recv(&mut self) -> Result<ReplicationMessage, StreamError> {
        match self.rx.recv().await {
            Some(m) => Ok(m),
            None => std::future::pending().await,
        }
    }
    fn try_recv(&mut self) -> Option<Result<ReplicationMessage, StreamError>> {
        self.rx.try_recv().ok().map(Ok)
    }
    async fn send_status(&mut self, _: Lsn, flush: Lsn, _: bool) -> Result<(), StreamError> {
        self.flushes.lock().unwrap().push(flush);
        Ok(())
    }
    async fn close(&mut self) -> Result<(), StreamError> {
        Ok(())
    }
}

const REL: u32 = 16400;

fn relation() -> Bytes {
    let columns = [
        ("id", 25),
        ("aggregatetype", 25),
        ("aggregateid", 25),
        ("type", 25),
        ("payload", 3802),
    ];
    encode(&Message::Relation(Relation {
        id: REL,
        namespace: "public".into(),
        name: "outbox".into(),
        replica_identity: b'd',
        columns: columns
            .iter()
            .map(|(name, oid)| Column {
                flags: 0,
                name: (*name).into(),
                type_oid: *oid,
                type_modifier: -1,
            })
            .collect(),
    }))
}

fn insert(id: &str, key: &str) -> Bytes {
    let values = [id, "order", key, "created", "{}"];
    encode(&Message::Insert(Insert {
        relation_id: REL,
        new: TupleData(
            values
                .iter()
                .map(|v| Value::Text(Bytes::copy_from_slice(v.as_bytes())))
                .collect(),
        ),
    }))
}

fn begin(final_lsn: u64) -> Bytes {
    encode(&Message::Begin(Begin {
        final_lsn: Lsn(final_lsn),
        commit_time: crate::pgtime::now(),
        xid: 700,
    }))
}

fn commit(lsn: u64, end: u64) -> Bytes {
    encode(&Message::Commit(Commit {
        flags: 0,
        commit_lsn: Lsn(lsn),
        end_lsn: Lsn(end),
        commit_time: crate::pgtime::now(),
    }))
}

fn xlog(at: u64, data: Bytes) -> ReplicationMessage {
    ReplicationMessage::XLogData {
        wal_start: Lsn(at),
        wal_end: Lsn(at),
        send_time: 0,
        data,
    }
}

/// One transaction at `at` with the given event ids; ends at `at + 100`.
fn transaction(at: u64, ids: &[&str]) -> Vec<ReplicationMessage> {
    let mut m = vec![xlog(at, begin(at + 90))];
    for (i, id) in ids.iter().enumerate() {
        m.push(xlog(at + 10 + i as u64, insert(id, "k")));
    }
    m.push(xlog(at + 90, commit(at + 90, at + 100)));
    m
}

const START: u64 = 0x1000;

struct Harness {
    cfg: Config,
    wal_tx: mpsc::UnboundedSender<ReplicationMessage>,
    wal: Option<FakeWal>,
    flushes: Arc<Mutex<Vec<Lsn>>>,
    acks_tx: mpsc::UnboundedSender<Outcome<Ticket>>,
    acks: mpsc::UnboundedReceiver<Outcome<Ticket>>,
    shutdown: CancellationToken,
}

impl Harness {
    fn new(mode: DeliveryMode, on_poison: PoisonPolicy) -> Self {
        let mut cfg = Config::new("postgres://u@127.0.0.1:9/db", "127.0.0.1:9");
        cfg.status_interval = Duration::from_millis(20);
        cfg.delivery = mode;
        cfg.on_poison = on_poison;
        let (wal_tx, rx) = mpsc::unbounded_channel();
        let flushes = Arc::new(Mutex::new(Vec::new()));
        let (acks_tx, acks) = mpsc::unbounded_channel();
        wal_tx.send(xlog(START, relation())).unwrap();
        Harness {
            cfg,
            wal_tx,
            wal: Some(FakeWal {
                rx,
                flushes: flushes.clone(),
            }),
            flushes,
            acks_tx,
            acks,
            shutdown: CancellationToken::new(),
        }
    }

    fn feed(&self, msgs: Vec<ReplicationMessage>) {
        for m in msgs {
            self.wal_tx.send(m).unwrap();
        }
    }

    /// The highest position confirmed so far.
    fn confirmed(&self) -> Lsn {
        self.flushes
            .lock()
            .unwrap()
            .iter()
            .copied()
            .max()
            .unwrap_or(Lsn::ZERO)
    }
}

async fn run(
    h: &mut Harness,
    dest: &FakeDest,
    script: impl std::future::Future<Output = ()>,
) -> Option<Result<(), StreamError>> {
    let mut wal = h.wal.take().unwrap();
    run_session(
        &h.cfg,
        Lsn(START),
        &mut wal,
        dest,
        &mut h.acks,
        &h.shutdown,
        script,
    )
    .await
}

#[tokio::test]
async fn the_slot_is_confirmed_only_past_transactions_whose_every_event_is_acked() {
    let mut h = Harness::new(DeliveryMode::AtLeastOnce, PoisonPolicy::Fail);
    let dest = FakeDest::with_room(100);
    let acks = h.acks_tx.clone();
    h.feed(transaction(0x2000, &["a1", "a2"]));
    h.feed(transaction(0x3000, &["b1"]));
    let flushes = h.flushes.clone();
    let confirmed = move || {
        flushes
            .lock()
            .unwrap()
            .iter()
            .copied()
            .max()
            .unwrap_or(Lsn::ZERO)
    };
    let r = run(&mut h, &dest, async {
        sent(&dest, 3).await;
        // Out of order: the later transaction first, then half of the earlier one.
        answer(&dest, &acks, "b1", Ok(()));
        answer(&dest, &acks, "a2", Ok(()));
        settle().await;
        assert!(
            confirmed() < Lsn(0x2000 + 100),
            "confirmed {} past an unacked event",
            confirmed()
        );
        answer(&dest, &acks, "a1", Ok(()));
        settle().await;
        assert_eq!(confirmed(), Lsn(0x3000 + 100));
    })
    .await;
    assert!(r.is_none(), "the loop ended: {r:?}");
}

#[tokio::test]
async fn a_crash_between_send_and_ack_leaves_the_transaction_unconfirmed() {
    let mut h = Harness::new(DeliveryMode::AtLeastOnce, PoisonPolicy::Fail);
    let dest = FakeDest::with_room(100);
    h.feed(transaction(0x2000, &["a1"]));
    h.feed(transaction(0x3000, &["b1"]));
    let acks = h.acks_tx.clone();
    let r = run(&mut h, &dest, async {
        sent(&dest, 2).await;
        answer(&dest, &acks, "a1", Ok(()));
        settle().await;
        // The loop is dropped here, as in a crash: b1 was sent and never acked.
    })
    .await;
    assert!(r.is_none());
    assert_eq!(
        h.confirmed(),
        Lsn(0x2000 + 100),
        "a restart resends from here: b1 again"
    );
}

#[tokio::test]
async fn a_retriable_failure_ends_the_session_and_confirms_nothing_past_it() {
    let mut h = Harness::new(DeliveryMode::AtLeastOnce, PoisonPolicy::Skip);
    let dest = FakeDest::with_room(100);
    h.feed(transaction(0x2000, &["a1", "a2"]));
    let acks = h.acks_tx.clone();
    let r = run(&mut h, &dest, async {
        sent(&dest, 2).await;
        answer(&dest, &acks, "a1", Ok(()));
        answer(&dest, &acks, "a2", Err(Class::Retriable));
        std::future::pending::<()>().await;
    })
    .await;
    assert!(matches!(r, Some(Err(StreamError::Refused { .. }))), "{r:?}");
    assert!(h.confirmed() < Lsn(0x2000 + 100));
}

#[tokio::test]
async fn a_refusal_for_good_is_skipped_under_on_poison_skip() {
    let mut h = Harness::new(DeliveryMode::AtLeastOnce, PoisonPolicy::Skip);
    let dest = FakeDest::with_room(100);
    h.feed(transaction(0x2000, &["a1", "a2"]));
    let acks = h.acks_tx.clone();
    let flushes = h.flushes.clone();
    let r = run(&mut h, &dest, async {
        sent(&dest, 2).await;
        answer(&dest, &acks, "a1", Ok(()));
        answer(&dest, &acks, "a2", Err(Class::TooLarge));
        settle().await;
        let confirmed = flushes.lock().unwrap().iter().copied().max();
        assert_eq!(confirmed, Some(Lsn(0x2000 + 100)));
    })
    .await;
    assert!(r.is_none(), "{r:?}");
}

#[tokio::test]
async fn a_dead_letter_takes_the_refused_events_place_in_the_transaction() {
    let mut h = Harness::new(DeliveryMode::AtLeastOnce, PoisonPolicy::DeadLetter);
    let dest = FakeDest::with_room(100);
    h.feed(transaction(0x2000, &["a1"]));
    let acks = h.acks_tx.clone();
    let flushes = h.flushes.clone();
    let dlq = h.cfg.dead_letter_topic.clone();
    let r = run(&mut h, &dest, async {
        sent(&dest, 1).await;
        answer(&dest, &acks, "a1", Err(Class::Unroutable));
        sent(&dest, 1).await;
        {
            let sent = dest.sent.lock().unwrap();
            let (rec, _) = &sent[0];
            assert_eq!(rec.topic, dlq);
            assert!(rec
                .headers
                .iter()
                .any(|(k, v)| k == "pgoutbox.error.class" && v.as_ref() == b"unroutable"));
        }
        settle().await;
        assert!(flushes
            .lock()
            .unwrap()
            .iter()
            .all(|f| *f < Lsn(0x2000 + 100)));
        answer(&dest, &acks, "a1", Ok(()));
        settle().await;
        assert_eq!(
            flushes.lock().unwrap().iter().copied().max(),
            Some(Lsn(0x2000 + 100))
        );
    })
    .await;
    assert!(r.is_none(), "{r:?}");
}

#[tokio::test]
async fn a_refusal_for_good_stops_the_stream_under_on_poison_fail() {
    let mut h = Harness::new(DeliveryMode::AtLeastOnce, PoisonPolicy::Fail);
    let dest = FakeDest {
        room: 100,
        refuse_at_send: Some(Class::InvalidTopic),
        ..FakeDest::default()
    };
    h.feed(transaction(0x2000, &["a1"]));
    let r = run(&mut h, &dest, std::future::pending()).await;
    let Some(Err(e)) = r else { panic!("{r:?}") };
    assert!(e.is_fatal(), "{e}");
    assert!(
        matches!(&e, StreamError::Refused { cause, .. } if cause.class == Class::InvalidTopic),
        "{e}"
    );
    assert!(h.confirmed() < Lsn(0x2000 + 100));
}

#[tokio::test]
async fn a_full_destination_stalls_reading_until_outcomes_make_room() {
    let mut h = Harness::new(DeliveryMode::AtLeastOnce, PoisonPolicy::Fail);
    let dest = FakeDest::with_room(1);
    h.feed(transaction(0x2000, &["a1", "a2", "a3"]));
    let acks = h.acks_tx.clone();
    let flushes = h.flushes.clone();
    let r = run(&mut h, &dest, async {
        for id in ["a1", "a2", "a3"] {
            sent(&dest, 1).await;
            settle().await;
            assert_eq!(dest.sent.lock().unwrap().len(), 1, "one at a time");
            answer(&dest, &acks, id, Ok(()));
        }
        settle().await;
        assert_eq!(
            flushes.lock().unwrap().iter().copied().max(),
            Some(Lsn(0x2000 + 100))
        );
    })
    .await;
    assert!(r.is_none(), "{r:?}");
}

#[tokio::test]
async fn at_most_once_confirms_a_transaction_before_its_events_are_sent() {
    let mut h = Harness::new(DeliveryMode::AtMostOnce, PoisonPolicy::Fail);
    let dest = FakeDest::with_room(100);
    h.feed(transaction(0x2000, &["a1"]));
    let flushes = h.flushes.clone();
    let r = run(&mut h, &dest, async {
        sent(&dest, 1).await;
        // Confirmed already, though nothing is acked: a crash now loses a1, never resends it.
        assert!(flushes.lock().unwrap().contains(&Lsn(0x2000 + 100)));
    })
    .await;
    assert!(r.is_none(), "{r:?}");
}

#[tokio::test]
async fn a_graceful_stop_waits_for_outstanding_outcomes_then_confirms() {
    let mut h = Harness::new(DeliveryMode::AtLeastOnce, PoisonPolicy::Fail);
    let dest = FakeDest::with_room(100);
    h.feed(transaction(0x2000, &["a1"]));
    let acks = h.acks_tx.clone();
    let shutdown = h.shutdown.clone();
    let r = run(&mut h, &dest, async {
        sent(&dest, 1).await;
        shutdown.cancel();
        settle().await;
        answer(&dest, &acks, "a1", Ok(()));
        std::future::pending::<()>().await;
    })
    .await;
    assert!(matches!(r, Some(Ok(()))), "{r:?}");
    assert_eq!(h.confirmed(), Lsn(0x2000 + 100));
}

#[test]
fn exactly_once_without_destination_transactions_runs_as_at_least_once() {
    let mut cfg = Config::new("postgres://u@127.0.0.1:9/db", "127.0.0.1:9");
    cfg.delivery = DeliveryMode::ExactlyOnce;
    cfg.destination = crate::config::DestinationKind::Nats;
    let (_tx, guard) = mpsc::channel(1);
    let s = Session::new(&cfg, Lsn(START), "fake", None, None, guard);
    assert_eq!(s.plan, crate::config::Plan::Deduplicated);
    assert!(!s.plan.confirms_first() && !s.plan.transactional());
}
