//! One publish in flight per key, for a broker that can refuse a publish and store the next
//! one of the same key (RabbitMQ: a full queue with `x-overflow = reject-publish` nacks one
//! message and takes the next once a consumer freed space). A key's next job waits until its
//! publish before has settled; keys apart (and keyless records) stay pipelined.
//!
//! After a retried failure of a key's publish, the jobs waiting behind it are handed back, and
//! so is every later job of that key, until the failed event comes again (resent from the slot
//! or in process): nothing of the key is stored before it.
//!
//! Pure: no I/O, no clocks.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;

/// What to do with a job now.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit<J> {
    Publish(J),
    /// Parked behind its key's publish in flight.
    Parked,
    /// Hand it back (retriable): an earlier event of its key failed and must go first.
    HandBack(J),
}

/// The keys with a publish in flight, and the jobs waiting behind each.
pub struct KeyGate<J> {
    busy: HashMap<Bytes, VecDeque<J>>,
    waiting: usize,
    /// Key → the event id that must go out before anything else of the key.
    held: HashMap<Bytes, Bytes>,
}

impl<J> Default for KeyGate<J> {
    fn default() -> Self {
        KeyGate {
            busy: HashMap::new(),
            waiting: 0,
            held: HashMap::new(),
        }
    }
}

impl<J> KeyGate<J> {
    /// Jobs parked.
    pub fn waiting(&self) -> usize {
        self.waiting
    }

    /// A job for event `event_id` of `key` was taken.
    pub fn admit(&mut self, key: Option<&Bytes>, event_id: &[u8], job: J) -> Admit<J> {
        let Some(key) = key else {
            return Admit::Publish(job);
        };
        if let Some(first) = self.held.get(key) {
            if first.as_ref() != event_id {
                return Admit::HandBack(job);
            }
            self.held.remove(key);
        }
        match self.busy.get_mut(key) {
            Some(queue) => {
                queue.push_back(job);
                self.waiting += 1;
                Admit::Parked
            }
            None => {
                self.busy.insert(key.clone(), VecDeque::new());
                Admit::Publish(job)
            }
        }
    }

    /// The publish in flight for `key` settled (stored, or refused for good): the key's next
    /// job to publish, if one waits.
    pub fn settled(&mut self, key: Option<&Bytes>) -> Option<J> {
        let key = key?;
        let queue = self.busy.get_mut(key)?;
        match queue.pop_front() {
            Some(next) => {
                self.waiting -= 1;
                Some(next)
            }
            None => {
                self.busy.remove(key);
                None
            }
        }
    }

    /// The publish in flight for `key` (event `event_id`) failed and will be retried: the jobs
    /// waiting behind it, to hand back; later ones of the key are handed back until the event
    /// comes again.
    pub fn failed(&mut self, key: Option<&Bytes>, event_id: &Bytes) -> Vec<J> {
        let Some(key) = key else {
            return Vec::new();
        };
        self.held
            .entry(key.clone())
            .or_insert_with(|| event_id.clone());
        let back: Vec<J> = self.busy.remove(key).map(Vec::from).unwrap_or_default();
        self.waiting -= back.len();
        back
    }

    /// Everything given up (purge, lost channel): the waiting jobs, to hand back.
    pub fn drain(&mut self) -> Vec<J> {
        self.held.clear();
        self.waiting = 0;
        self.busy.drain().flat_map(|(_, q)| q).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    #[test]
    fn a_keys_next_job_waits_for_its_publish_before() {
        let mut g = KeyGate::default();
        assert_eq!(g.admit(Some(&k("a")), b"1", 1), Admit::Publish(1));
        assert_eq!(
            g.admit(Some(&k("b")), b"2", 2),
            Admit::Publish(2),
            "keys apart"
        );
        assert_eq!(g.admit(Some(&k("a")), b"3", 3), Admit::Parked);
        assert_eq!(g.admit(Some(&k("a")), b"4", 4), Admit::Parked);
        assert_eq!(g.admit(None, b"5", 5), Admit::Publish(5), "keyless");
        assert_eq!(g.waiting(), 2);
        assert_eq!(g.settled(Some(&k("a"))), Some(3));
        assert_eq!(g.settled(Some(&k("a"))), Some(4));
        assert_eq!(g.settled(Some(&k("a"))), None);
        assert_eq!(g.admit(Some(&k("a")), b"6", 6), Admit::Publish(6));
        assert_eq!(g.waiting(), 0);
    }

    #[test]
    fn after_a_retried_failure_the_key_waits_for_the_failed_event() {
        let mut g = KeyGate::default();
        g.admit(Some(&k("a")), b"1", 1);
        g.admit(Some(&k("a")), b"2", 2);
        assert_eq!(g.failed(Some(&k("a")), &k("1")), [2]);
        assert_eq!(g.waiting(), 0);
        assert_eq!(g.admit(Some(&k("a")), b"3", 3), Admit::HandBack(3));
        assert_eq!(
            g.admit(Some(&k("b")), b"4", 4),
            Admit::Publish(4),
            "other keys go on"
        );
        assert_eq!(
            g.admit(Some(&k("a")), b"1", 1),
            Admit::Publish(1),
            "the failed one, again"
        );
        assert_eq!(g.admit(Some(&k("a")), b"2", 2), Admit::Parked);
    }

    #[test]
    fn drain_gives_back_every_waiting_job_and_forgets_holds() {
        let mut g = KeyGate::default();
        g.admit(Some(&k("a")), b"1", 1);
        g.admit(Some(&k("a")), b"2", 2);
        g.admit(Some(&k("b")), b"3", 3);
        g.admit(Some(&k("b")), b"4", 4);
        g.failed(Some(&k("b")), &k("3"));
        let mut back = g.drain();
        back.sort();
        assert_eq!(back, [2]);
        assert_eq!(g.admit(Some(&k("b")), b"9", 9), Admit::Publish(9));
    }
}
