//! Test fakes for the session, shared by its own tests and the sources' tests: a destination
//! that keeps what it is sent for the test to answer, and a runner for the event loop.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Session, Ticket, Wal};
use crate::config::Config;
use crate::destination::{
    Class, Destination, DestinationError, Outcome, Receipt, Refusal, SendError,
};
use crate::lsn::Lsn;
use crate::outbox::OutboxRecord;
use crate::pipeline::{Progress, StreamError};

/// Takes records into `sent` (at most `room` unanswered); the test answers them.
#[derive(Default)]
pub struct FakeDest {
    pub sent: Mutex<VecDeque<(OutboxRecord, Ticket)>>,
    pub room: usize,
    pub refuse_at_send: Option<Class>,
}

impl Destination<Ticket> for FakeDest {
    const NAME: &'static str = "fake";
    type Admin = crate::destination::kafka::admin::KafkaAdmin;
    const TITLE: &'static str = "Fake";

    async fn open(
        _: &Config,
        _: mpsc::UnboundedSender<Outcome<Ticket>>,
    ) -> Result<Self, DestinationError> {
        Ok(FakeDest::default())
    }
    fn send(&self, record: OutboxRecord, ticket: Ticket) -> Result<(), SendError<Ticket>> {
        if let Some(class) = self.refuse_at_send {
            let r = Refusal::new(class, "refused");
            return Err(SendError::Refused(ticket, r, record));
        }
        let mut sent = self.sent.lock().unwrap();
        if sent.len() >= self.room {
            return Err(SendError::Full(ticket, record));
        }
        sent.push_back((record, ticket));
        Ok(())
    }
    fn purge(&self) {}
    async fn close(self) {}
}

impl FakeDest {
    pub fn with_room(room: usize) -> Self {
        FakeDest {
            room,
            ..FakeDest::default()
        }
    }
}

/// Waits until `dest` holds `n` records.
pub async fn sent(dest: &FakeDest, n: usize) {
    for _ in 0..500 {
        if dest.sent.lock().unwrap().len() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!(
        "{} records sent, expected {n}",
        dest.sent.lock().unwrap().len()
    );
}

/// Answers the sent record with event id `id`.
pub fn answer(
    dest: &FakeDest,
    acks: &mpsc::UnboundedSender<Outcome<Ticket>>,
    id: &str,
    result: Result<(), Class>,
) {
    let mut sent = dest.sent.lock().unwrap();
    let i = sent
        .iter()
        .position(|(r, _)| r.event_id == id.as_bytes())
        .unwrap_or_else(|| panic!("{id} not sent"));
    let (_, ticket) = sent.remove(i).unwrap();
    let result = result
        .map(|()| Receipt::default())
        .map_err(|c| Refusal::new(c, "no"));
    acks.send(Outcome {
        ticket,
        result,
        returned: None,
    })
    .unwrap();
}

pub async fn settle() {
    tokio::time::sleep(Duration::from_millis(80)).await;
}

/// Runs a session from `start` over `wal` against `dest` while `script` plays the test's
/// part; the loop's result if it ended, `None` if the script finished first.
pub async fn run_session(
    cfg: &Config,
    start: Lsn,
    wal: &mut impl Wal,
    dest: &FakeDest,
    acks: &mut mpsc::UnboundedReceiver<Outcome<Ticket>>,
    shutdown: &CancellationToken,
    script: impl std::future::Future<Output = ()>,
) -> Option<Result<(), StreamError>> {
    let (_guard_tx, guard) = mpsc::channel(1);
    let mut session = Session::new(cfg, start, "fake", None, None, guard);
    let mut progress = Progress::default();
    let looping = session.event_loop(wal, dest, acks, shutdown, &mut progress);
    tokio::select! {
        r = looping => Some(r),
        _ = script => None,
    }
}
