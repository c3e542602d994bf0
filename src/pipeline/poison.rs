//! Poison events: what `on_poison = dead-letter` writes. Pure: the session decides when.

use bytes::Bytes;

use crate::destination::Refusal;
use crate::lsn::Lsn;
use crate::metrics as m;
use crate::outbox::{MapError, OutboxRecord, PoisonPolicy, RawRow};

/// Header names on dead-letter records.
pub const ERROR_CLASS: &str = "pgoutbox.error.class";
pub const ERROR_MESSAGE: &str = "pgoutbox.error.message";
pub const ORIGINAL_TOPIC: &str = "pgoutbox.original.topic";
pub const LSN: &str = "pgoutbox.lsn";
/// Set (to the payload's size) when the payload itself was the problem and is left out.
pub const PAYLOAD_OMITTED: &str = "pgoutbox.payload.omitted";

/// An event that cannot be delivered as configured, with why.
#[derive(Debug)]
pub struct Poisoned {
    /// The topic it was meant for; empty if it could not be routed.
    pub topic: String,
    pub key: Option<Bytes>,
    pub payload: Option<Bytes>,
    /// Its own headers (`id`, `type`, …), kept on the dead letter.
    pub headers: Vec<(String, Bytes)>,
    pub event_id: Bytes,
    pub lsn: Lsn,
    /// `too-large`, `invalid-topic`, `not-authorized`, `unroutable`, `malformed`, `refused`.
    pub class: &'static str,
    pub message: String,
}

impl Poisoned {
    /// An outbox row that could not be mapped, kept whole, and why.
    pub fn unmapped_row(e: &MapError, raw: RawRow, lsn: Lsn) -> Self {
        Poisoned {
            topic: String::new(),
            key: raw.key,
            payload: Some(raw.json),
            headers: raw
                .id
                .iter()
                .map(|id| ("id".to_owned(), id.clone()))
                .collect(),
            event_id: raw.id.unwrap_or_default(),
            lsn,
            class: e.class(),
            message: e.to_string(),
        }
    }

    /// A record the destination refused for good, and why.
    pub fn refused(rec: OutboxRecord, e: Refusal) -> Self {
        Poisoned {
            class: e.class.label(),
            message: e.message,
            topic: rec.topic,
            key: rec.key,
            payload: rec.payload,
            headers: rec.headers,
            event_id: rec.event_id,
            lsn: rec.lsn,
        }
    }

    /// The dead-letter record: same key and headers, plus the error headers. A payload that
    /// was too large is left out (it would be refused again), its size said in a header.
    pub fn into_dead_letter(self, topic: &str) -> OutboxRecord {
        let mut headers = self.headers;
        let mut payload = self.payload;
        if self.class == "too-large" {
            let size = payload.take().map_or(0, |p| p.len());
            headers.push((PAYLOAD_OMITTED.into(), Bytes::from(size.to_string())));
        }
        headers.push((
            ERROR_CLASS.into(),
            Bytes::from_static(self.class.as_bytes()),
        ));
        headers.push((ERROR_MESSAGE.into(), Bytes::from(self.message)));
        headers.push((ORIGINAL_TOPIC.into(), Bytes::from(self.topic)));
        headers.push((LSN.into(), Bytes::from(self.lsn.to_string())));
        OutboxRecord {
            topic: topic.to_owned(),
            key: self.key,
            partition: None,
            headers,
            payload,
            event_id: self.event_id,
            lsn: self.lsn,
        }
    }
}

/// Logs and counts a poison event (`on_poison` skip or dead-letter); the dead letter to send
/// when the policy says so. `fail` is the caller's to handle before.
pub fn handle(policy: PoisonPolicy, dead_letter_topic: &str, p: Poisoned) -> Option<OutboxRecord> {
    let action = match policy {
        PoisonPolicy::Skip => "skip",
        _ => "dead-letter",
    };
    tracing::warn!(event = %String::from_utf8_lossy(&p.event_id), lsn = %p.lsn, topic = %p.topic,
        reason = p.class, error = %p.message, action, "undeliverable event");
    metrics::counter!(m::POISON_EVENTS, "action" => action, "reason" => p.class).increment(1);
    match policy {
        PoisonPolicy::Skip | PoisonPolicy::Fail => None,
        PoisonPolicy::DeadLetter => Some(p.into_dead_letter(dead_letter_topic)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poisoned(class: &'static str) -> Poisoned {
        Poisoned {
            topic: "outbox.event.order".into(),
            key: Some(Bytes::from_static(b"k")),
            payload: Some(Bytes::from_static(b"12345")),
            headers: vec![("id".into(), Bytes::from_static(b"e-1"))],
            event_id: Bytes::from_static(b"e-1"),
            lsn: Lsn(0x1_0000_0020),
            class,
            message: "why".into(),
        }
    }

    #[test]
    fn dead_letter_keeps_the_event_and_says_why() {
        let r = poisoned("invalid-topic").into_dead_letter("dlq");
        assert_eq!(r.topic, "dlq");
        assert_eq!(r.key.as_deref(), Some(&b"k"[..]));
        assert_eq!(r.payload.as_deref(), Some(&b"12345"[..]));
        let h = |n: &str| {
            r.headers
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(h("id").as_deref(), Some(&b"e-1"[..]));
        assert_eq!(h(ERROR_CLASS).as_deref(), Some(&b"invalid-topic"[..]));
        assert_eq!(h(ERROR_MESSAGE).as_deref(), Some(&b"why"[..]));
        assert_eq!(
            h(ORIGINAL_TOPIC).as_deref(),
            Some(&b"outbox.event.order"[..])
        );
        assert_eq!(h(LSN).as_deref(), Some(&b"1/20"[..]));
        assert!(h(PAYLOAD_OMITTED).is_none());
    }

    #[test]
    fn too_large_payload_is_left_out() {
        let r = poisoned("too-large").into_dead_letter("dlq");
        assert_eq!(r.payload, None);
        let omitted = r
            .headers
            .iter()
            .find(|(k, _)| k == PAYLOAD_OMITTED)
            .unwrap();
        assert_eq!(omitted.1.as_ref(), b"5");
    }
}
