//! The publishes a publishing task has sent and awaits an acknowledgement for, by publish id
//! (ids grow in publish order), each with its deadline, and one timer for all of them. Used by
//! the NATS and RabbitMQ publishers alike.
//!
//! A publish fails once the server has answered nothing for the timeout: since it was sent, and
//! since the last answer to any publish. A server that is slow but answering (a backlog behind
//! a slow disk, a deep pipeline) is waited for instead of timed out into a storm of resends; a
//! server that went silent is given up on after the timeout, as before.
//!
//! The timer is lazy: it is set when the first publish is added to an empty set, and only
//! moved on when it fires (to the oldest deadline left). The deadlines grow with the ids, so it
//! never fires later than the oldest one; it may fire for a publish acknowledged meanwhile,
//! which costs one wake-up, where re-arming on every acknowledgement would cost a timer
//! registration per message.

use std::collections::VecDeque;
use std::pin::Pin;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use crate::outbox::OutboxRecord;

struct Entry<T> {
    ticket: T,
    record: OutboxRecord,
    deadline: Instant,
}

/// Publishes awaiting their acknowledgement.
pub(crate) struct Pending<T> {
    /// Slot `i` is publish `first + i`; `None` once answered. The front is always `Some`.
    slots: VecDeque<Option<Entry<T>>>,
    first: u64,
    len: usize,
    next: u64,
    timeout: Duration,
    timer: Pin<Box<Sleep>>,
    armed: bool,
    /// When the last answer came (to any publish).
    last_answer: Option<Instant>,
}

impl<T> Pending<T> {
    /// A publish counts as failed `timeout` after it was added.
    pub fn new(timeout: Duration) -> Self {
        Pending {
            slots: VecDeque::new(),
            first: 0,
            len: 0,
            next: 0,
            timeout,
            timer: Box::pin(tokio::time::sleep(timeout)),
            armed: false,
            last_answer: None,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// The id of the oldest publish awaiting its answer.
    pub fn oldest(&self) -> Option<u64> {
        (self.len > 0).then_some(self.first)
    }

    /// The id the next publish gets.
    pub fn next_id(&mut self) -> u64 {
        let id = self.next;
        self.next += 1;
        id
    }

    /// A publish `id` (from [`Pending::next_id`], in order; ids it skips count as answered)
    /// was sent.
    pub fn insert(&mut self, id: u64, ticket: T, record: OutboxRecord) {
        let deadline = Instant::now() + self.timeout;
        if !self.armed {
            self.timer.as_mut().reset(deadline);
            self.armed = true;
        }
        if self.slots.is_empty() {
            self.first = id;
        }
        while self.first + (self.slots.len() as u64) < id {
            self.slots.push_back(None);
        }
        self.slots.push_back(Some(Entry {
            ticket,
            record,
            deadline,
        }));
        self.len += 1;
    }

    /// Publish `id` was answered: its ticket and record, unless it timed out or was drained
    /// before.
    pub fn remove(&mut self, id: u64) -> Option<(T, OutboxRecord)> {
        let i = usize::try_from(id.checked_sub(self.first)?).ok()?;
        let e = self.slots.get_mut(i)?.take()?;
        self.len -= 1;
        self.last_answer = Some(Instant::now());
        while matches!(self.slots.front(), Some(None)) {
            self.slots.pop_front();
            self.first += 1;
        }
        Some((e.ticket, e.record))
    }

    /// Whether some publish awaiting its answer has a record for which `f` holds.
    pub fn any(&self, f: impl Fn(&OutboxRecord) -> bool) -> bool {
        self.slots.iter().flatten().any(|e| f(&e.record))
    }

    /// Whether the timer is set; poll [`Pending::tick`] only then.
    pub fn armed(&self) -> bool {
        self.armed
    }

    /// Completes when the timer fires; then call [`Pending::expired`].
    pub async fn tick(&mut self) {
        self.timer.as_mut().await;
    }

    /// When the publish with `deadline` fails: at its deadline, or later while answers come.
    fn due(&self, deadline: Instant) -> Instant {
        self.last_answer
            .map_or(deadline, |t| deadline.max(t + self.timeout))
    }

    /// The publishes past their deadline with no answer from the server for the timeout,
    /// oldest first (removed); sets the timer to when the oldest one left is due.
    pub fn expired(&mut self) -> Vec<(T, OutboxRecord)> {
        let now = Instant::now();
        let mut gone = Vec::new();
        while let Some(Some(e)) = self.slots.front() {
            if self.due(e.deadline) > now {
                break;
            }
            if let Some(Some(e)) = self.slots.pop_front() {
                gone.push((e.ticket, e.record));
            }
            self.first += 1;
            self.len -= 1;
            while matches!(self.slots.front(), Some(None)) {
                self.slots.pop_front();
                self.first += 1;
            }
        }
        self.armed = false;
        if let Some(Some(e)) = self.slots.front() {
            let at = self.due(e.deadline);
            self.timer.as_mut().reset(at);
            self.armed = true;
        }
        gone
    }

    /// Gives every publish awaiting its answer a whole timeout again, from now: after a pause
    /// the broker announced (an alarm), during which no answer could come.
    pub fn restart_clocks(&mut self) {
        let deadline = Instant::now() + self.timeout;
        for e in self.slots.iter_mut().flatten() {
            e.deadline = deadline;
        }
        if self.len > 0 {
            self.timer.as_mut().reset(deadline);
            self.armed = true;
        }
    }

    /// Every publish awaiting its answer (removed), oldest first.
    pub fn drain(&mut self) -> Vec<(T, OutboxRecord)> {
        self.len = 0;
        self.first = self.next;
        self.slots
            .drain(..)
            .flatten()
            .map(|e| (e.ticket, e.record))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: u8) -> OutboxRecord {
        OutboxRecord {
            topic: "t".into(),
            key: None,
            partition: None,
            headers: Vec::new(),
            payload: None,
            event_id: bytes::Bytes::from(vec![n]),
            lsn: crate::lsn::Lsn(u64::from(n)),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_publish_expires_after_its_timeout_and_not_before() {
        let start = Instant::now();
        let mut p = Pending::new(Duration::from_secs(10));
        assert!(!p.armed(), "nothing to watch yet");
        let a = p.next_id();
        p.insert(a, "a", record(1));
        tokio::time::advance(Duration::from_secs(4)).await;
        let b = p.next_id();
        p.insert(b, "b", record(2));
        p.tick().await;
        assert_eq!(start.elapsed(), Duration::from_secs(10), "a's deadline");
        let gone: Vec<_> = p.expired().into_iter().map(|(t, _)| t).collect();
        assert_eq!(gone, ["a"], "b has 4 s left");
        assert!(p.armed(), "watching b");
        p.tick().await;
        assert_eq!(start.elapsed(), Duration::from_secs(14), "b's deadline");
        let gone: Vec<_> = p.expired().into_iter().map(|(t, _)| t).collect();
        assert_eq!(gone, ["b"]);
        assert!(!p.armed());
        assert_eq!(p.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_that_keeps_answering_is_slow_not_gone() {
        let start = Instant::now();
        let mut p = Pending::new(Duration::from_secs(10));
        let ids: Vec<u64> = (0..3).map(|_| p.next_id()).collect();
        for (&id, t) in ids.iter().zip(["a", "b", "c"]) {
            p.insert(id, t, record(0));
        }
        tokio::time::advance(Duration::from_secs(8)).await;
        assert_eq!(p.remove(ids[0]).map(|(t, _)| t), Some("a"));
        p.tick().await;
        assert_eq!(start.elapsed(), Duration::from_secs(10), "b's own deadline");
        assert!(p.expired().is_empty(), "the server answered 2 s ago");
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(p.remove(ids[1]).map(|(t, _)| t), Some("b"));
        // The timer is lazy: it fires when b would have been due, then moves on.
        p.tick().await;
        assert_eq!(start.elapsed(), Duration::from_secs(18));
        assert!(p.expired().is_empty(), "the server answered 2 s ago");
        p.tick().await;
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(26),
            "10 s after the last answer"
        );
        let gone: Vec<_> = p.expired().into_iter().map(|(t, _)| t).collect();
        assert_eq!(gone, ["c"], "silent for the timeout: given up");
    }

    #[tokio::test(start_paused = true)]
    async fn an_answered_publish_never_expires() {
        let mut p = Pending::new(Duration::from_secs(10));
        let a = p.next_id();
        p.insert(a, "a", record(1));
        assert_eq!(p.remove(a).map(|(t, _)| t), Some("a"));
        assert!(p.remove(a).is_none(), "handed back once");
        p.tick().await;
        assert!(p.expired().is_empty());
        assert!(!p.armed());
    }

    #[tokio::test(start_paused = true)]
    async fn answers_in_any_order_each_once() {
        let mut p = Pending::new(Duration::from_secs(10));
        let ids: Vec<u64> = (0..5).map(|_| p.next_id()).collect();
        for (&id, t) in ids.iter().zip(["a", "b", "c", "d", "e"]) {
            if t != "c" {
                p.insert(id, t, record(0)); // c was never sent (refused at once)
            }
        }
        assert_eq!(p.len(), 4);
        assert!(p.remove(ids[2]).is_none(), "never sent");
        assert_eq!(p.remove(ids[3]).map(|(t, _)| t), Some("d"));
        assert_eq!(p.remove(ids[0]).map(|(t, _)| t), Some("a"));
        assert!(p.remove(ids[0]).is_none(), "handed back once");
        assert!(p.remove(99).is_none(), "unknown");
        assert_eq!(p.len(), 2);
        p.tick().await;
        let gone: Vec<_> = p.expired().into_iter().map(|(t, _)| t).collect();
        assert_eq!(gone, ["b", "e"]);
        assert_eq!(p.len(), 0);
        let f = p.next_id();
        p.insert(f, "f", record(0));
        assert_eq!(p.remove(f).map(|(t, _)| t), Some("f"));
    }

    #[test]
    fn drain_hands_back_everything_oldest_first() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut p = Pending::new(Duration::from_secs(10));
            for t in ["a", "b", "c"] {
                let id = p.next_id();
                p.insert(id, t, record(0));
            }
            let all: Vec<_> = p.drain().into_iter().map(|(t, _)| t).collect();
            assert_eq!(all, ["a", "b", "c"]);
            assert_eq!(p.len(), 0);
        });
    }
}
