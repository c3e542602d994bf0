//! The table-less outbox: `pg_logical_emit_message(true, '<prefix>', '<json>')` becomes the
//! same kind of record as an insert into the outbox table.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{MapError, OutboxConfig, OutboxRecord};
use crate::pgoutput::LogicalMessage;

/// The JSON a service emits. Field names follow the table's default columns.
#[derive(Debug, Deserialize)]
struct Emitted<'a> {
    aggregatetype: String,
    aggregateid: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    /// Kept as written (raw JSON text), like the table path keeps the stored bytes.
    #[serde(borrow)]
    payload: Option<&'a RawValue>,
    /// The dedupe key; when absent, derived from the message's LSN (stable across resends).
    id: Option<String>,
    /// Extra record headers.
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

/// Maps a logical decoding message; `Ok(None)` when its prefix is not the configured one.
pub fn map_message(
    cfg: &OutboxConfig,
    m: &LogicalMessage,
) -> Result<Option<OutboxRecord>, MapError> {
    let Some(prefix) = &cfg.message_prefix else {
        return Ok(None);
    };
    if &m.prefix != prefix {
        return Ok(None);
    }
    let bad = |why: String| MapError::BadMessage { lsn: m.lsn, why };
    let e: Emitted<'_> = serde_json::from_slice(&m.content).map_err(|err| bad(err.to_string()))?;
    if e.aggregatetype.is_empty() && cfg.topic_template.uses_route() {
        return Err(MapError::EmptyRoute {
            lsn: m.lsn,
            column: "aggregatetype".into(),
        });
    }
    let topic = cfg.topic_template.render(&e.aggregatetype);
    let event_id = Bytes::from(e.id.unwrap_or_else(|| format!("lsn-{}", m.lsn)));
    let mut headers = vec![("id".to_owned(), event_id.clone())];
    if let Some(t) = e.kind {
        headers.push(("type".to_owned(), Bytes::from(t)));
    }
    for (k, v) in e.headers {
        if k != "id" && k != "type" {
            headers.push((k, Bytes::from(v)));
        }
    }
    let payload = e
        .payload
        .filter(|p| p.get() != "null")
        .map(|p| Bytes::copy_from_slice(p.get().as_bytes()));
    let payload = cfg.value(payload);
    Ok(Some(OutboxRecord {
        topic,
        key: e.aggregateid.map(Bytes::from),
        partition: None,
        headers,
        payload,
        event_id,
        lsn: m.lsn,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lsn::Lsn;

    fn msg(prefix: &str, content: &str) -> LogicalMessage {
        LogicalMessage {
            transactional: true,
            lsn: Lsn(0x1_0000_0010),
            prefix: prefix.into(),
            content: Bytes::copy_from_slice(content.as_bytes()),
        }
    }

    #[test]
    fn maps_like_the_table_path() {
        let cfg = OutboxConfig::default();
        let r = map_message(
            &cfg,
            &msg(
                "outbox",
                r#"{"aggregatetype":"order","aggregateid":"o-1","type":"OrderPaid","payload":{"total": 5},"id":"e-1","headers":{"traceparent":"00-a-b-01"}}"#,
            ),
        )
        .unwrap()
        .unwrap();
        assert_eq!(r.topic, "outbox.event.order");
        assert_eq!(r.key.as_deref(), Some(&b"o-1"[..]));
        assert_eq!(r.payload.as_deref(), Some(&br#"{"total": 5}"#[..]));
        let names: Vec<&str> = r.headers.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["id", "type", "traceparent"]);
        assert_eq!(r.event_id.as_ref(), b"e-1");
    }

    #[test]
    fn other_prefixes_and_disabled_are_ignored() {
        let cfg = OutboxConfig::default();
        assert!(map_message(&cfg, &msg("pgoutbox.heartbeat", ""))
            .unwrap()
            .is_none());
        let off = OutboxConfig {
            message_prefix: None,
            ..OutboxConfig::default()
        };
        assert!(map_message(&off, &msg("outbox", "{}")).unwrap().is_none());
    }

    #[test]
    fn id_defaults_to_the_lsn_and_bad_json_is_an_error() {
        let cfg = OutboxConfig::default();
        let r = map_message(
            &cfg,
            &msg("outbox", r#"{"aggregatetype":"a","payload":null}"#),
        )
        .unwrap()
        .unwrap();
        assert_eq!(r.event_id.as_ref(), b"lsn-1/10");
        // A JSON null payload is an empty value unless tombstones are asked for.
        assert_eq!(r.payload.as_deref(), Some(&b""[..]));
        let tombstones = OutboxConfig {
            tombstone_on_empty_payload: true,
            ..OutboxConfig::default()
        };
        let m = msg("outbox", r#"{"aggregatetype":"a","payload":null}"#);
        assert_eq!(map_message(&tombstones, &m).unwrap().unwrap().payload, None);
        assert!(map_message(&cfg, &msg("outbox", "not json")).is_err());
        // Topic names are the destination's to check.
        let spaced = map_message(&cfg, &msg("outbox", r#"{"aggregatetype":"bad topic"}"#));
        assert_eq!(spaced.unwrap().unwrap().topic, "outbox.event.bad topic");
    }
}
