//! The polling source through the pipeline's session, with an in-memory table and the
//! session's fake destination: the delivery modes and `on_poison` apply to polled rows as to
//! the replication stream. Each test is named after the rule it checks.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{PollWal, Row, Table};
use crate::config::{Config, DeliveryMode};
use crate::destination::Class;
use crate::lsn::Lsn;
use crate::outbox::PoisonPolicy;
use crate::pgoutput::{Column, Relation, Value};
use crate::pipeline::session::fakes::{answer, run_session, sent, settle, FakeDest};
use crate::pipeline::StreamError;

const COLUMNS: [&str; 7] = [
    "id",
    "aggregatetype",
    "aggregateid",
    "type",
    "payload",
    "seq",
    "status",
];

/// Rows by `seq`: pending, locked by the open poll, or marked done.
#[derive(Default)]
struct Rows {
    pending: BTreeMap<i64, Row>,
    locked: Vec<i64>,
    done: Vec<i64>,
    released: usize,
}

#[derive(Clone)]
struct FakeTable {
    rows: Arc<Mutex<Rows>>,
    batch: usize,
}

impl FakeTable {
    fn with(ids: &[(&str, Option<&str>)], batch: usize) -> Self {
        let mut rows = Rows::default();
        for (i, (id, route)) in ids.iter().enumerate() {
            let seq = i as i64 + 1;
            let text = |s: &str| Value::Text(Bytes::copy_from_slice(s.as_bytes()));
            let route = route.map_or(Value::Null, text);
            let row = vec![
                text(id),
                route,
                text("k"),
                text("created"),
                text("{}"),
                text(&seq.to_string()),
                text("0"),
            ];
            rows.pending.insert(seq, row);
        }
        FakeTable {
            rows: Arc::new(Mutex::new(rows)),
            batch,
        }
    }

    fn done(&self) -> Vec<i64> {
        self.rows.lock().unwrap().done.clone()
    }
}

impl Table for FakeTable {
    fn lock(&self) -> BoxFuture<'static, Result<Vec<Row>, StreamError>> {
        let mut rows = self.rows.lock().unwrap();
        let seqs: Vec<i64> = rows.pending.keys().copied().take(self.batch).collect();
        let out = seqs.iter().map(|s| rows.pending[s].clone()).collect();
        rows.locked = seqs;
        Box::pin(async move { Ok(out) })
    }
    fn done(&self, seqs: Vec<i64>) -> BoxFuture<'static, Result<(), StreamError>> {
        let mut rows = self.rows.lock().unwrap();
        for s in &seqs {
            rows.pending.remove(s);
        }
        rows.done.extend(seqs);
        rows.locked.clear();
        Box::pin(async { Ok(()) })
    }
    fn release(&self) -> BoxFuture<'static, Result<(), StreamError>> {
        let mut rows = self.rows.lock().unwrap();
        rows.locked.clear();
        rows.released += 1;
        Box::pin(async { Ok(()) })
    }
}

struct Poller {
    cfg: Config,
    wal: PollWal<FakeTable>,
}

impl Poller {
    fn new(mode: DeliveryMode, on_poison: PoisonPolicy, table: FakeTable) -> Self {
        let mut cfg = Config::new("postgres://u@127.0.0.1:9/db", "127.0.0.1:9");
        cfg.status_interval = Duration::from_millis(20);
        cfg.delivery = mode;
        cfg.on_poison = on_poison;
        let relation = Relation {
            id: 1,
            namespace: cfg.outbox.table.schema.clone(),
            name: cfg.outbox.table.name.clone(),
            replica_identity: b'd',
            columns: COLUMNS
                .iter()
                .map(|c| Column {
                    flags: 0,
                    name: (*c).into(),
                    type_oid: 25,
                    type_modifier: -1,
                })
                .collect(),
        };
        let wal = PollWal::new(
            table.clone(),
            relation,
            5,
            table.batch,
            Duration::from_millis(10),
            Duration::from_millis(50),
        );
        Poller { cfg, wal }
    }

    async fn run(
        &mut self,
        dest: &FakeDest,
        acks: &mut mpsc::UnboundedReceiver<
            crate::destination::Outcome<crate::pipeline::session::Ticket>,
        >,
        script: impl std::future::Future<Output = ()>,
    ) -> Option<Result<(), StreamError>> {
        let shutdown = CancellationToken::new();
        run_session(
            &self.cfg,
            Lsn::ZERO,
            &mut self.wal,
            dest,
            acks,
            &shutdown,
            script,
        )
        .await
    }
}

#[tokio::test]
async fn at_least_once_marks_polled_rows_only_once_every_record_is_acked() {
    let table = FakeTable::with(&[("a1", Some("order")), ("a2", Some("order"))], 10);
    let mut p = Poller::new(DeliveryMode::AtLeastOnce, PoisonPolicy::Fail, table.clone());
    let dest = FakeDest::with_room(100);
    let (acks_tx, mut acks) = mpsc::unbounded_channel();
    let r = p
        .run(&dest, &mut acks, async {
            sent(&dest, 2).await;
            answer(&dest, &acks_tx, "a2", Ok(()));
            settle().await;
            assert!(table.done().is_empty(), "a row marked before a1 was acked");
            answer(&dest, &acks_tx, "a1", Ok(()));
            settle().await;
            assert_eq!(table.done(), [1, 2]);
        })
        .await;
    assert!(r.is_none(), "{r:?}");
}

#[tokio::test]
async fn at_most_once_marks_polled_rows_before_they_are_sent() {
    let table = FakeTable::with(&[("a1", Some("order"))], 10);
    let mut p = Poller::new(DeliveryMode::AtMostOnce, PoisonPolicy::Fail, table.clone());
    let dest = FakeDest::with_room(100);
    let (_acks_tx, mut acks) = mpsc::unbounded_channel();
    let r = p
        .run(&dest, &mut acks, async {
            sent(&dest, 1).await;
            // Marked though nothing is acked: a crash now loses a1, never sends it twice.
            assert_eq!(table.done(), [1]);
        })
        .await;
    assert!(r.is_none(), "{r:?}");
}

#[tokio::test]
async fn a_retriable_failure_leaves_the_polled_rows_pending() {
    let table = FakeTable::with(&[("a1", Some("order")), ("a2", Some("order"))], 10);
    let mut p = Poller::new(DeliveryMode::AtLeastOnce, PoisonPolicy::Skip, table.clone());
    let dest = FakeDest::with_room(100);
    let (acks_tx, mut acks) = mpsc::unbounded_channel();
    let r = p
        .run(&dest, &mut acks, async {
            sent(&dest, 2).await;
            answer(&dest, &acks_tx, "a1", Ok(()));
            answer(&dest, &acks_tx, "a2", Err(Class::Retriable));
            std::future::pending::<()>().await;
        })
        .await;
    assert!(matches!(r, Some(Err(StreamError::Refused { .. }))), "{r:?}");
    assert!(table.done().is_empty(), "rows marked: {:?}", table.done());
}

#[tokio::test]
async fn a_polled_row_refused_for_good_is_dead_lettered_before_its_row_is_marked() {
    let table = FakeTable::with(&[("a1", Some("order"))], 10);
    let mut p = Poller::new(
        DeliveryMode::AtLeastOnce,
        PoisonPolicy::DeadLetter,
        table.clone(),
    );
    let dlq = p.cfg.dead_letter_topic.clone();
    let dest = FakeDest::with_room(100);
    let (acks_tx, mut acks) = mpsc::unbounded_channel();
    let r = p
        .run(&dest, &mut acks, async {
            sent(&dest, 1).await;
            answer(&dest, &acks_tx, "a1", Err(Class::Unroutable));
            sent(&dest, 1).await;
            assert_eq!(dest.sent.lock().unwrap()[0].0.topic, dlq);
            settle().await;
            assert!(
                table.done().is_empty(),
                "marked before the dead letter was acked"
            );
            answer(&dest, &acks_tx, "a1", Ok(()));
            settle().await;
            assert_eq!(table.done(), [1]);
        })
        .await;
    assert!(r.is_none(), "{r:?}");
}

#[tokio::test]
async fn an_unmappable_polled_row_is_skipped_under_on_poison_skip_and_the_next_one_delivered() {
    let table = FakeTable::with(&[("a1", None), ("a2", Some("order"))], 10);
    let mut p = Poller::new(DeliveryMode::AtLeastOnce, PoisonPolicy::Skip, table.clone());
    let dest = FakeDest::with_room(100);
    let (acks_tx, mut acks) = mpsc::unbounded_channel();
    let r = p
        .run(&dest, &mut acks, async {
            sent(&dest, 1).await;
            answer(&dest, &acks_tx, "a2", Ok(()));
            settle().await;
            assert_eq!(table.done(), [1, 2]);
        })
        .await;
    assert!(r.is_none(), "{r:?}");
}

#[tokio::test]
async fn a_full_batch_is_followed_by_the_next_poll_and_each_is_marked_on_its_own() {
    let table = FakeTable::with(&[("a1", Some("order")), ("a2", Some("order"))], 1);
    let mut p = Poller::new(DeliveryMode::AtLeastOnce, PoisonPolicy::Fail, table.clone());
    let dest = FakeDest::with_room(100);
    let (acks_tx, mut acks) = mpsc::unbounded_channel();
    let r = p
        .run(&dest, &mut acks, async {
            sent(&dest, 1).await;
            settle().await;
            assert_eq!(dest.sent.lock().unwrap().len(), 1, "one poll at a time");
            answer(&dest, &acks_tx, "a1", Ok(()));
            sent(&dest, 1).await;
            assert_eq!(table.done(), [1]);
            answer(&dest, &acks_tx, "a2", Ok(()));
            settle().await;
            assert_eq!(table.done(), [1, 2]);
        })
        .await;
    assert!(r.is_none(), "{r:?}");
}
