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
/// Names the headers (and `key`, for the record's key) whose values this dead letter carries
/// base64-encoded (standard alphabet), comma-separated: values that were not UTF-8 or held
/// control characters (a line break), which not every broker carries in a header.
pub const ENCODED: &str = "pgoutbox.encoded";

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
        let mut encoded = Vec::new();
        for (name, value) in &mut headers {
            if !plain(value) {
                *value = base64(value);
                encoded.push(name.clone());
            }
        }
        let key = self.key.map(|k| match plain(&k) {
            true => k,
            false => {
                encoded.push("key".into());
                base64(&k)
            }
        });
        if !encoded.is_empty() {
            headers.push((ENCODED.into(), Bytes::from(encoded.join(","))));
        }
        // The id the broker removes re-sends by (NATS's Nats-Msg-Id): as its header.
        let event_id = match plain(&self.event_id) {
            true => self.event_id,
            false => base64(&self.event_id),
        };
        OutboxRecord {
            topic: topic.to_owned(),
            key,
            partition: None,
            headers,
            payload,
            event_id,
            lsn: self.lsn,
        }
    }
}

/// Whether every destination carries `value` as it is in a header: UTF-8 without control
/// characters.
fn plain(value: &[u8]) -> bool {
    std::str::from_utf8(value).is_ok_and(|s| !s.chars().any(char::is_control))
}

fn base64(value: &[u8]) -> Bytes {
    use base64::Engine;
    Bytes::from(base64::engine::general_purpose::STANDARD.encode(value))
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
    fn what_a_header_cannot_carry_is_encoded_and_named() {
        let mut p = poisoned("invalid-topic");
        p.topic = "outbox.event.a\r\nb".into();
        p.key = Some(Bytes::from_static(b"k\n"));
        p.headers
            .push(("traceparent".into(), Bytes::from_static(b"\xff\xfe")));
        let r = p.into_dead_letter("dlq");
        let h = |n: &str| {
            r.headers
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        };
        assert_eq!(
            h(ORIGINAL_TOPIC).as_deref(),
            Some("b3V0Ym94LmV2ZW50LmENCmI=")
        );
        assert_eq!(h("traceparent").as_deref(), Some("//4="));
        assert_eq!(r.key.as_deref(), Some(&b"awo="[..]));
        assert_eq!(
            h(ENCODED).as_deref(),
            Some("traceparent,pgoutbox.original.topic,key")
        );
        assert_eq!(
            h("id").as_deref(),
            Some("e-1"),
            "plain values stay as they are"
        );
        assert!(r.headers.iter().all(|(_, v)| plain(v)));
    }

    proptest::proptest! {
        /// Whatever a row holds (route value, key, header values, id), its dead letter is
        /// one every destination takes: a subject and routing key that are valid, headers
        /// NATS and RabbitMQ carry.
        #[test]
        fn every_dead_letter_is_writable(
            route in proptest::prop_oneof![
                proptest::prelude::any::<String>(),
                "[a-z. \r\n\t*>]{0,40}",
                "[a-z.\r\n]{3000,6000}",
            ],
            key in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40),
            header in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40),
            id in "[ -~\r\n]{1,40}",
        ) {
            let topic = format!("outbox.event.{route}");
            let p = Poisoned {
                message: format!("{topic:?} is not a subject"),
                topic,
                key: Some(Bytes::from(key)),
                payload: Some(Bytes::from_static(b"{}")),
                headers: vec![("id".into(), Bytes::from(id.clone())), ("traceparent".into(), Bytes::from(header))],
                event_id: Bytes::from(id),
                lsn: Lsn(1),
                class: "invalid-topic",
            };
            let dead = p.into_dead_letter("pgoutbox.dead-letter");
            proptest::prop_assert!(crate::config::nats::is_valid_subject(&dead.topic));
            proptest::prop_assert!(crate::config::rabbitmq::is_valid_routing_key(&dead.topic));
            let nats = crate::destination::nats::headers(&dead);
            proptest::prop_assert!(nats.is_ok(), "{:?}", nats.err());
            let amqp = crate::destination::rabbitmq::properties(&dead);
            proptest::prop_assert!(amqp.is_ok(), "{:?}", amqp.err());
        }
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
