//! The order guard: each publish names the one sent before it (`Nats-Expected-Last-Msg-Id`),
//! so JetStream stores it only right after that one. When a publish fails (refused, timed
//! out), every publish sent after it and still in flight is refused too (error 10070, "wrong
//! last msg ID") instead of being stored ahead of it: a key's events can never overtake an
//! earlier one that failed, while publishes stay pipelined.
//!
//! What then happens to those refused publishes:
//! - after a refusal for good (the failed event goes to `on_poison`, never to its subject), and
//!   when the chain broke for no failure of ours (another client wrote to the stream), they
//!   are published again, in order, once every publish sent before the break has answered;
//! - after a failure that is retried (a timeout, a full stream), they are handed back with
//!   it, and so is every later job, until the event that failed comes again (from the slot
//!   after a restart, or resent in process): it goes out first, then the rest.
//!
//! While a break is settling, no new publish goes out. After it, the next publish names no
//! predecessor (nothing of ours is in flight then, so it overtakes nothing) and starts a new
//! chain. A re-sent duplicate (same `Nats-Msg-Id`) is recognised before the check, so the
//! resend after a restart passes.
//!
//! Pure: no I/O, no clocks.

use crate::outbox::OutboxRecord;

/// The header that names the publish a message must follow.
pub const EXPECTED_LAST_MSG_ID: &str = "Nats-Expected-Last-Msg-Id";

/// The chain of publishes of one publishing task.
pub struct Chain<T> {
    /// The message id of the last publish sent: what the next one names.
    last_sent: Option<String>,
    /// The id (publish order) of the last publish sent.
    highest_sent: Option<u64>,
    broken: Option<Break<T>>,
    /// After a retried failure: the event id that must go out before anything else.
    held_for: Option<bytes::Bytes>,
}

/// What to do with a job taken from the queue.
#[derive(Debug, PartialEq, Eq)]
pub enum Take {
    Publish,
    /// Hand it back (retriable): an earlier event failed and must go out first.
    HandBack,
}

/// A failure among the publishes in flight, settling.
struct Break<T> {
    /// Publishes up to this id were sent before the break: their answers settle it.
    through: Option<u64>,
    /// Whether the publishes refused for being out of chain are published again (`true`), or
    /// handed back as retriable with the failure (`false`).
    replay: bool,
    /// Out of chain, to publish again in this order.
    queue: Vec<(T, OutboxRecord)>,
}

impl<T> Default for Chain<T> {
    fn default() -> Self {
        Chain {
            last_sent: None,
            highest_sent: None,
            broken: None,
            held_for: None,
        }
    }
}

impl<T> Chain<T> {
    /// Whether new publishes may go out (no break is settling).
    pub fn open(&self) -> bool {
        self.broken.is_none()
    }

    /// Whether the job for event `event_id` may go out now.
    pub fn take(&mut self, event_id: &[u8]) -> Take {
        match &self.held_for {
            Some(held) if held.as_ref() == event_id => {
                self.held_for = None;
                self.last_sent = None;
                Take::Publish
            }
            Some(_) => Take::HandBack,
            None => Take::Publish,
        }
    }

    /// The message id the next publish must follow, if any.
    pub fn expected(&self) -> Option<&str> {
        self.last_sent.as_deref()
    }

    /// Publish `id` (ids grow in publish order) with message id `msg_id` went out.
    pub fn sent(&mut self, id: u64, msg_id: &str) {
        self.last_sent = Some(msg_id.to_owned());
        self.highest_sent = Some(id);
    }

    fn break_now(&mut self, replay: bool) -> &mut Break<T> {
        let through = self.highest_sent;
        self.broken.get_or_insert(Break {
            through,
            replay,
            queue: Vec::new(),
        })
    }

    /// A publish was refused as out of chain (10070). Returns it when it is to be handed back
    /// (retriable) rather than published again.
    pub fn out_of_chain(&mut self, ticket: T, record: OutboxRecord) -> Option<(T, OutboxRecord)> {
        let b = self.break_now(true);
        match b.replay {
            true => {
                b.queue.push((ticket, record));
                None
            }
            false => Some((ticket, record)),
        }
    }

    /// A publish of event `event_id` failed otherwise: refused (`for_good` when the broker
    /// will never take it) or timed out. Returns what was queued to publish again and must
    /// now be handed back with this retriable failure instead.
    pub fn failed(&mut self, event_id: &bytes::Bytes, for_good: bool) -> Vec<(T, OutboxRecord)> {
        let b = self.break_now(for_good);
        if for_good {
            return Vec::new();
        }
        b.replay = false;
        let back = std::mem::take(&mut b.queue);
        self.held_for.get_or_insert_with(|| event_id.clone());
        back
    }

    /// Given the oldest publish still awaiting its answer, ends a break that has settled: the
    /// publishes to send again, in order (the first starts a new chain). `None` while the
    /// break settles (or when there is none).
    pub fn settled(&mut self, oldest_pending: Option<u64>) -> Option<Vec<(T, OutboxRecord)>> {
        let b = self.broken.as_ref()?;
        let waiting = match (oldest_pending, b.through) {
            (Some(oldest), Some(through)) => oldest <= through,
            _ => false,
        };
        if waiting {
            return None;
        }
        self.last_sent = None;
        self.broken.take().map(|b| b.queue)
    }

    /// Everything was given up (connection lost, purge): the next publish starts a new chain.
    pub fn reset(&mut self) -> Vec<(T, OutboxRecord)> {
        self.last_sent = None;
        self.held_for = None;
        self.broken.take().map(|b| b.queue).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(n: u64) -> OutboxRecord {
        OutboxRecord {
            topic: "outbox.event.order".into(),
            key: None,
            partition: None,
            headers: Vec::new(),
            payload: None,
            event_id: bytes::Bytes::from(n.to_string()),
            lsn: crate::lsn::Lsn(n),
        }
    }

    fn id(n: u64) -> bytes::Bytes {
        bytes::Bytes::from(n.to_string())
    }

    fn send(c: &mut Chain<u64>, ids: std::ops::Range<u64>) -> Vec<Option<String>> {
        ids.map(|i| {
            let e = c.expected().map(str::to_owned);
            c.sent(i, &i.to_string());
            e
        })
        .collect()
    }

    #[test]
    fn each_publish_names_the_one_before() {
        let mut c = Chain::default();
        assert_eq!(
            send(&mut c, 0..3),
            [None, Some("0".into()), Some("1".into())]
        );
    }

    #[test]
    fn after_a_refusal_for_good_the_rest_is_published_again_in_order_once_settled() {
        let mut c = Chain::default();
        send(&mut c, 0..4);
        assert!(c.failed(&id(1), true).is_empty(), "1 refused for good");
        assert!(!c.open(), "nothing new goes out while the break settles");
        assert!(c.out_of_chain(2, rec(2)).is_none());
        assert_eq!(c.settled(Some(3)), None, "3 still in flight");
        assert!(c.out_of_chain(3, rec(3)).is_none());
        let again: Vec<u64> = c
            .settled(None)
            .unwrap()
            .into_iter()
            .map(|(t, _)| t)
            .collect();
        assert_eq!(again, [2, 3]);
        assert!(c.open());
        assert_eq!(
            c.expected(),
            None,
            "the first publish after a break starts a new chain"
        );
    }

    #[test]
    fn after_a_retried_failure_the_rest_goes_back_until_the_failed_event_comes_again() {
        let mut c = Chain::default();
        send(&mut c, 0..4);
        assert!(c.failed(&id(1), false).is_empty());
        assert_eq!(c.out_of_chain(2, rec(2)).map(|(t, _)| t), Some(2));
        assert_eq!(c.out_of_chain(3, rec(3)).map(|(t, _)| t), Some(3));
        assert_eq!(c.settled(None).map(|q| q.len()), Some(0));
        assert_eq!(c.take(b"4"), Take::HandBack, "a later job queued meanwhile");
        assert_eq!(c.take(b"1"), Take::Publish, "the failed event, again");
        assert_eq!(c.expected(), None, "and it starts a new chain");
        c.sent(9, "1");
        assert_eq!(c.take(b"2"), Take::Publish);
        assert_eq!(c.expected(), Some("1"));
    }

    #[test]
    fn a_retried_failure_while_settling_hands_back_what_was_queued() {
        let mut c = Chain::default();
        send(&mut c, 0..5);
        c.failed(&id(1), true);
        assert!(c.out_of_chain(2, rec(2)).is_none());
        let back: Vec<u64> = c
            .failed(&id(3), false)
            .into_iter()
            .map(|(t, _)| t)
            .collect();
        assert_eq!(
            back,
            [2],
            "a timeout among them: nothing is published again"
        );
        assert_eq!(c.out_of_chain(4, rec(4)).map(|(t, _)| t), Some(4));
    }

    #[test]
    fn a_break_by_another_writer_is_published_again() {
        let mut c = Chain::default();
        send(&mut c, 0..3);
        assert!(c.out_of_chain(1, rec(1)).is_none());
        assert!(c.out_of_chain(2, rec(2)).is_none());
        let again: Vec<u64> = c
            .settled(None)
            .unwrap()
            .into_iter()
            .map(|(t, _)| t)
            .collect();
        assert_eq!(again, [1, 2]);
    }

    #[test]
    fn a_failure_of_the_last_publish_sent_settles_at_once() {
        let mut c = Chain::default();
        send(&mut c, 0..2);
        c.failed(&id(1), true);
        assert_eq!(c.settled(None).map(|q| q.len()), Some(0));
        assert!(c.open());
    }
}
