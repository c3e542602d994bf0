//! Insert on an outbox table → [`OutboxRecord`]. Several tables may be outboxes, each with
//! its own routing.

use std::collections::HashMap;

use bytes::Bytes;

use super::{OutboxConfig, OutboxRecord};
use crate::lsn::Lsn;
use crate::pgoutput::{Insert, Relation, TupleData, Value};

const BYTEA_OID: u32 = 17;
const JSON_OID: u32 = 114;
const JSONB_OID: u32 = 3802;

/// Why an outbox row cannot become a Kafka record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    #[error("outbox table {table} has no column {column:?} (configured as the {role} column)")]
    MissingColumn {
        table: String,
        column: String,
        role: &'static str,
    },
    #[error("insert into relation {0} arrived before its Relation message")]
    UnknownRelation(u32),
    #[error("outbox row at {lsn} has {found} columns, its relation has {expected}")]
    ColumnCount {
        lsn: Lsn,
        found: usize,
        expected: usize,
    },
    #[error("outbox row at {lsn}: column {column:?} is NULL")]
    Null { lsn: Lsn, column: String },
    #[error("outbox row at {lsn}: column {column:?} is empty, so it routes nowhere")]
    EmptyRoute { lsn: Lsn, column: String },
    #[error("outbox row at {lsn}: {column:?} is not valid UTF-8")]
    NotUtf8 { lsn: Lsn, column: String },
    #[error(
        "outbox row at {lsn}: partition {value:?} (column {column:?}) is not a partition number"
    )]
    BadPartition {
        lsn: Lsn,
        column: String,
        value: String,
    },
    #[error("outbox row at {lsn}: bytea payload is not in hex format (set bytea_output = 'hex')")]
    ByteaFormat { lsn: Lsn },
    #[error("outbox message at {lsn} is not valid: {why} (expected JSON with aggregatetype, and optionally aggregateid, type, payload, id, headers)")]
    BadMessage { lsn: Lsn, why: String },
    #[error("outbox row at {lsn}: headers column is not a JSON object of headers: {why}")]
    BadHeaders { lsn: Lsn, why: String },
    #[error(
        "insert into {relation} (WAL {lsn}) arrived from the publication, but {relation} is not a configured outbox table: configure it as one ([[tables]]), or take it out of the publication (`ALTER PUBLICATION … DROP TABLE {relation};`)"
    )]
    NotOutbox { relation: String, lsn: Lsn },
}

impl MapError {
    /// Errors of one event that `on_poison` may handle: every error but a protocol violation.
    /// A table that no longer fits the configuration (a column renamed or dropped) is one too:
    /// otherwise its rows, which decoding replays as they were, could never be passed.
    pub fn is_poison(&self) -> bool {
        !matches!(self, MapError::UnknownRelation(_))
    }

    /// A short name for the dead-letter header and metrics.
    pub fn class(&self) -> &'static str {
        match self {
            MapError::Null { .. }
            | MapError::NotUtf8 { .. }
            | MapError::BadPartition { .. }
            | MapError::NotOutbox { .. }
            | MapError::EmptyRoute { .. } => "unroutable",
            _ => "malformed",
        }
    }
}

/// An outbox row that could not be mapped, kept whole for the dead-letter topic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawRow {
    /// The row as a JSON object of column → text (or null).
    pub json: Bytes,
    /// The key column's value, if set.
    pub key: Option<Bytes>,
    /// The event id column's value, if set.
    pub id: Option<Bytes>,
}

/// Positions of the configured columns in one relation's tuples.
#[derive(Debug, Clone)]
struct Columns {
    /// Which configured table this relation is.
    table: usize,
    id: usize,
    route: usize,
    key: usize,
    kind: usize,
    payload: usize,
    payload_is_bytea: bool,
    count: usize,
    /// Configured extra columns (position, header name), then `traceparent` if present.
    headers: Vec<(usize, String)>,
    /// A `headers` jsonb column whose object entries become record headers.
    headers_json: Option<usize>,
    partition: Option<usize>,
}

/// A column that becomes the W3C trace-context header when the table has it.
const TRACEPARENT: &str = "traceparent";
/// A jsonb column expanded into record headers when the table has it.
const HEADERS_JSON: &str = "headers";

/// Maps outbox inserts; learns column positions from Relation messages.
#[derive(Debug)]
pub struct OutboxMapper {
    tables: Vec<OutboxConfig>,
    /// Relation OID → configured table, learned from the catalog: the table itself and its
    /// partitions. A relation is an outbox by OID first (so a rename does not hide it), by
    /// name second (a table created after the OIDs were learned).
    oids: HashMap<u32, usize>,
    /// Relation id → column positions, or why the relation no longer fits its configuration
    /// (each insert into it is then a poison event).
    outbox: HashMap<u32, Result<Columns, MapError>>,
}

impl OutboxMapper {
    /// A mapper for these outbox tables (the first is also the table-less outbox's routing).
    pub fn new(tables: Vec<OutboxConfig>) -> Self {
        OutboxMapper {
            tables,
            oids: HashMap::new(),
            outbox: HashMap::new(),
        }
    }

    /// The configured tables, in order.
    pub fn tables(&self) -> &[OutboxConfig] {
        &self.tables
    }

    /// Relation `oid` (the table, or one of its partitions) is configured table `table`.
    pub fn learn_oid(&mut self, oid: u32, table: usize) {
        if table < self.tables.len() {
            self.oids.insert(oid, table);
        }
    }

    /// Which configured outbox table relation `oid` is (or is a partition of), if learned.
    pub fn table_of_oid(&self, oid: u32) -> Option<usize> {
        self.oids.get(&oid).copied()
    }

    /// Which configured outbox table this relation is, if any.
    pub fn table_of(&self, rel: &Relation) -> Option<usize> {
        if let Some(t) = self.oids.get(&rel.id) {
            return Some(*t);
        }
        // pgoutput sends an empty namespace for pg_catalog only.
        self.tables
            .iter()
            .position(|t| rel.namespace == t.table.schema && rel.name == t.table.name)
    }

    /// Learns (or, after DDL, relearns) a relation. An outbox that lacks a configured column
    /// is remembered with the error, which each of its inserts then returns; the error is
    /// also returned here, for a warning (or, polling, to refuse to start).
    pub fn on_relation(&mut self, rel: &Relation) -> Result<(), MapError> {
        let Some(table) = self.table_of(rel) else {
            self.outbox.remove(&rel.id);
            return Ok(());
        };
        let learned = self.columns(table, rel);
        let result = learned.as_ref().map(|_| ()).map_err(Clone::clone);
        self.outbox.insert(rel.id, learned);
        result
    }

    /// Where the configured columns of table `table` are in `rel`.
    fn columns(&self, table: usize, rel: &Relation) -> Result<Columns, MapError> {
        let cfg = &self.tables[table];
        let find = |column: &str, role: &'static str| {
            rel.columns
                .iter()
                .position(|c| c.name == column)
                .ok_or_else(|| MapError::MissingColumn {
                    table: cfg.table.to_string(),
                    column: column.to_owned(),
                    role,
                })
        };
        let payload = find(&cfg.payload_column, "payload")?;
        let mut headers = Vec::new();
        for (column, header) in &cfg.additional_headers {
            headers.push((find(column, "additional header")?, header.clone()));
        }
        let position = |name: &str| rel.columns.iter().position(|c| c.name == name);
        if let Some(i) = position(TRACEPARENT) {
            if !headers.iter().any(|(_, h)| h == TRACEPARENT) {
                headers.push((i, TRACEPARENT.to_owned()));
            }
        }
        let partition = match &cfg.partition_column {
            Some(c) => Some(find(c, "partition")?),
            None => None,
        };
        Ok(Columns {
            table,
            id: find(&cfg.id_column, "event id")?,
            route: find(&cfg.route_column, "route")?,
            key: find(&cfg.key_column, "key")?,
            kind: find(&cfg.type_column, "type")?,
            payload,
            payload_is_bytea: rel.columns[payload].type_oid == BYTEA_OID,
            count: rel.columns.len(),
            headers,
            headers_json: position(HEADERS_JSON)
                .filter(|i| matches!(rel.columns[*i].type_oid, JSON_OID | JSONB_OID)),
            partition,
        })
    }

    /// Whether inserts into this relation id are outbox events.
    pub fn is_outbox_id(&self, relation_id: u32) -> bool {
        self.outbox.contains_key(&relation_id)
    }

    /// The configured table a relation id belongs to, once its Relation message was seen.
    pub fn table(&self, relation_id: u32) -> Option<&OutboxConfig> {
        let t = match self.outbox.get(&relation_id)? {
            Ok(c) => c.table,
            Err(_) => *self.oids.get(&relation_id)?,
        };
        self.tables.get(t)
    }

    /// An inserted row as it was, for the dead-letter topic: every column, and the key and
    /// event id where the relation is an outbox whose columns are known.
    pub fn raw_insert(&self, insert: &Insert, rel: Option<&Relation>) -> RawRow {
        let cols = self
            .outbox
            .get(&insert.relation_id)
            .and_then(|c| c.as_ref().ok());
        let TupleData(values) = &insert.new;
        let text = |i: usize| match values.get(i) {
            Some(Value::Text(b) | Value::Binary(b)) => Some(b.clone()),
            _ => None,
        };
        let mut obj = serde_json::Map::new();
        for (i, v) in values.iter().enumerate() {
            let name = rel
                .and_then(|r| r.columns.get(i))
                .map_or_else(|| format!("column{i}"), |c| c.name.clone());
            let v = match v {
                Value::Text(b) | Value::Binary(b) => {
                    serde_json::Value::String(String::from_utf8_lossy(b).into_owned())
                }
                Value::Null | Value::UnchangedToast => serde_json::Value::Null,
            };
            obj.insert(name, v);
        }
        // A table that no longer fits still has its id and key columns, most likely.
        let by_name = |column: &str| {
            rel.and_then(|r| r.columns.iter().position(|c| c.name == column))
                .and_then(text)
        };
        let cfg = self.table(insert.relation_id);
        RawRow {
            json: Bytes::from(serde_json::Value::Object(obj).to_string()),
            key: cols.map_or_else(|| cfg.and_then(|t| by_name(&t.key_column)), |c| text(c.key)),
            id: cols.map_or_else(|| cfg.and_then(|t| by_name(&t.id_column)), |c| text(c.id)),
        }
    }

    /// Maps an insert; `Ok(None)` when it is not on an outbox table.
    pub fn map_insert(&self, insert: &Insert, lsn: Lsn) -> Result<Option<OutboxRecord>, MapError> {
        let cols = match self.outbox.get(&insert.relation_id) {
            None => return Ok(None),
            Some(Err(e)) => return Err(e.clone()),
            Some(Ok(cols)) => cols,
        };
        let cfg = &self.tables[cols.table];
        let TupleData(values) = &insert.new;
        if values.len() != cols.count {
            return Err(MapError::ColumnCount {
                lsn,
                found: values.len(),
                expected: cols.count,
            });
        }
        let value = |i: usize| match &values[i] {
            Value::Text(b) | Value::Binary(b) => Some(b.clone()),
            Value::Null | Value::UnchangedToast => None,
        };
        let required = |i: usize, column: &str| {
            value(i).ok_or_else(|| MapError::Null {
                lsn,
                column: column.to_owned(),
            })
        };

        let event_id = required(cols.id, &cfg.id_column)?;
        let topic = if cfg.topic_template.uses_route() {
            let route = required(cols.route, &cfg.route_column)?;
            let route = std::str::from_utf8(&route).map_err(|_| MapError::NotUtf8 {
                lsn,
                column: cfg.route_column.clone(),
            })?;
            if route.is_empty() {
                return Err(MapError::EmptyRoute {
                    lsn,
                    column: cfg.route_column.clone(),
                });
            }
            cfg.topic_template.render(route)
        } else {
            cfg.topic_template.render("")
        };
        // Whether the destination takes that name is the destination's to say.
        let mut headers = vec![("id".to_owned(), event_id.clone())];
        if let Some(t) = value(cols.kind) {
            headers.push(("type".to_owned(), t));
        }
        for (i, name) in &cols.headers {
            if let Some(v) = value(*i) {
                headers.push((name.clone(), v));
            }
        }
        if let Some(obj) = cols.headers_json.and_then(value) {
            headers.extend(json_headers(&obj, lsn)?);
        }
        let payload = match value(cols.payload) {
            Some(p) if cols.payload_is_bytea => {
                Some(decode_bytea_hex(&p).ok_or(MapError::ByteaFormat { lsn })?)
            }
            other => other,
        };
        let partition = match cols.partition {
            Some(i) => {
                let column = cfg.partition_column.clone().unwrap_or_default();
                let text = required(i, &column)?;
                let text = String::from_utf8_lossy(&text);
                Some(
                    text.parse::<i32>()
                        .ok()
                        .filter(|p| *p >= 0)
                        .ok_or_else(|| MapError::BadPartition {
                            lsn,
                            column,
                            value: text.into_owned(),
                        })?,
                )
            }
            None => None,
        };
        let key = value(cols.key);
        if key.is_none() && cfg.require_key {
            return Err(MapError::Null {
                lsn,
                column: cfg.key_column.clone(),
            });
        }
        Ok(Some(OutboxRecord {
            topic,
            key,
            partition,
            headers,
            payload: cfg.value(payload),
            event_id,
            lsn,
        }))
    }
}

/// A JSON object's entries as headers: strings as-is, other values as their JSON text.
fn json_headers(obj: &[u8], lsn: Lsn) -> Result<Vec<(String, Bytes)>, MapError> {
    let map: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(obj).map_err(|e| MapError::BadHeaders {
            lsn,
            why: e.to_string(),
        })?;
    Ok(map
        .into_iter()
        .filter(|(k, _)| k != "id" && k != "type")
        .map(|(k, v)| {
            let bytes = match v {
                serde_json::Value::String(s) => Bytes::from(s),
                other => Bytes::from(other.to_string()),
            };
            (k, bytes)
        })
        .collect())
}

/// bytea's text output `\x0a1b…` back to the stored bytes.
fn decode_bytea_hex(text: &[u8]) -> Option<Bytes> {
    let hex = text.strip_prefix(b"\\x")?;
    if hex.len() % 2 != 0 {
        return None;
    }
    let nibble = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    hex.chunks_exact(2)
        .map(|p| Some(nibble(p[0])? << 4 | nibble(p[1])?))
        .collect::<Option<Vec<u8>>>()
        .map(Bytes::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::TableName;
    use crate::pgoutput::Column;

    fn rel(id: u32, ns: &str, name: &str, cols: &[(&str, u32)]) -> Relation {
        Relation {
            id,
            namespace: ns.into(),
            name: name.into(),
            replica_identity: b'd',
            columns: cols
                .iter()
                .map(|(n, oid)| Column {
                    flags: 0,
                    name: (*n).into(),
                    type_oid: *oid,
                    type_modifier: -1,
                })
                .collect(),
        }
    }

    fn outbox_rel(payload_oid: u32) -> Relation {
        rel(
            7,
            "public",
            "outbox",
            &[
                ("id", 2950),
                ("aggregatetype", 25),
                ("aggregateid", 25),
                ("type", 25),
                ("payload", payload_oid),
                ("created_at", 1184),
            ],
        )
    }

    fn t(s: &str) -> Value {
        Value::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    fn row(vals: Vec<Value>) -> Insert {
        Insert {
            relation_id: 7,
            new: TupleData(vals),
        }
    }

    #[test]
    fn maps_with_debezium_defaults() {
        let mut m = OutboxMapper::new(vec![OutboxConfig::default()]);
        m.on_relation(&outbox_rel(3802)).unwrap();
        let rec = m
            .map_insert(
                &row(vec![
                    t("6c1f"),
                    t("order"),
                    t("o-1"),
                    t("OrderCreated"),
                    t(r#"{"a": 1}"#),
                    t("2026-01-01"),
                ]),
                Lsn(5),
            )
            .unwrap()
            .unwrap();
        assert_eq!(rec.topic, "outbox.event.order");
        assert_eq!(rec.key.as_deref(), Some(&b"o-1"[..]));
        assert_eq!(rec.payload.as_deref(), Some(&br#"{"a": 1}"#[..]));
        assert_eq!(
            rec.headers,
            vec![
                ("id".to_owned(), Bytes::from_static(b"6c1f")),
                ("type".to_owned(), Bytes::from_static(b"OrderCreated"))
            ]
        );
        assert_eq!(rec.lsn, Lsn(5));
    }

    #[test]
    fn other_tables_are_not_mapped() {
        let mut m = OutboxMapper::new(vec![OutboxConfig::default()]);
        let other = rel(8, "public", "orders", &[("id", 23)]);
        m.on_relation(&other).unwrap();
        let ins = Insert {
            relation_id: 8,
            new: TupleData(vec![t("1")]),
        };
        assert_eq!(m.map_insert(&ins, Lsn(1)).unwrap(), None);
        let same_name_other_schema = rel(9, "audit", "outbox", &[("id", 23)]);
        assert!(m.table_of(&same_name_other_schema).is_none());
    }

    #[test]
    fn configured_columns_and_fixed_topic() {
        let cfg = OutboxConfig {
            table: TableName::parse("app.events").unwrap(),
            id_column: "event_id".into(),
            route_column: "kind".into(),
            key_column: "entity".into(),
            type_column: "name".into(),
            payload_column: "body".into(),
            topic_template: "all-events".parse().unwrap(),
            message_prefix: None,
            additional_headers: vec![("kind".into(), "x-kind".into())],
            ..OutboxConfig::default()
        };
        let mut m = OutboxMapper::new(vec![cfg]);
        let r = rel(
            3,
            "app",
            "events",
            &[
                ("body", 17),
                ("entity", 25),
                ("event_id", 20),
                ("kind", 25),
                ("name", 25),
            ],
        );
        m.on_relation(&r).unwrap();
        let ins = Insert {
            relation_id: 3,
            new: TupleData(vec![t("\\x00ff10"), t("e1"), t("42"), Value::Null, t("N")]),
        };
        let rec = m.map_insert(&ins, Lsn(1)).unwrap().unwrap();
        assert_eq!(rec.topic, "all-events");
        assert_eq!(rec.payload.as_deref(), Some(&[0u8, 0xff, 0x10][..]));
        assert_eq!(rec.event_id.as_ref(), b"42");
    }

    #[test]
    fn missing_column_names_it() {
        let mut m = OutboxMapper::new(vec![OutboxConfig::default()]);
        let r = rel(7, "public", "outbox", &[("id", 2950), ("payload", 3802)]);
        let e = m.on_relation(&r).unwrap_err();
        assert!(e.to_string().contains("aggregatetype"), "{e}");
        // Each insert into it is then an error of its own, which on_poison may pass.
        let e = m
            .map_insert(&row(vec![t("1"), t("{}")]), Lsn(1))
            .unwrap_err();
        assert!(
            e.is_poison() && e.to_string().contains("aggregatetype"),
            "{e}"
        );
    }

    #[test]
    fn a_bad_headers_column_is_described_as_such() {
        let deep = format!("{{\"a\": {}1{}}}", "[".repeat(200), "]".repeat(200));
        let e = json_headers(deep.as_bytes(), Lsn(1))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("outbox row at 0/1: headers column is not a JSON object of headers: recursion limit exceeded"),
            "{e}"
        );
        assert!(
            !e.contains("aggregatetype"),
            "not the table-less format: {e}"
        );
    }

    #[test]
    fn a_renamed_outbox_is_followed_by_its_oid() {
        let mut m = OutboxMapper::new(vec![OutboxConfig::default()]);
        m.learn_oid(7, 0);
        let mut r = outbox_rel(3802);
        r.name = "outbox_renamed".into();
        m.on_relation(&r).unwrap();
        assert!(m.is_outbox_id(7));
        let ins = row(vec![
            t("e"),
            t("order"),
            t("o-1"),
            t("T"),
            t("{}"),
            t("now"),
        ]);
        assert!(m.map_insert(&ins, Lsn(1)).unwrap().is_some());
        // A partition's own OID maps to its root's routing.
        m.learn_oid(8, 0);
        assert_eq!(m.table_of(&rel(8, "public", "outbox_p1", &[])), Some(0));
        // Without the OID, the new name is not the outbox.
        let mut fresh = OutboxMapper::new(vec![OutboxConfig::default()]);
        fresh.on_relation(&r).unwrap();
        assert!(!fresh.is_outbox_id(7));
    }

    #[test]
    fn null_route_is_an_error_and_topic_names_are_the_destinations_to_check() {
        let mut m = OutboxMapper::new(vec![OutboxConfig::default()]);
        m.on_relation(&outbox_rel(3802)).unwrap();
        let null_route = row(vec![t("1"), Value::Null, t("k"), t("T"), t("{}"), t("x")]);
        assert!(matches!(
            m.map_insert(&null_route, Lsn(1)),
            Err(MapError::Null { .. })
        ));
        let bad = row(vec![
            t("1"),
            t("has space"),
            t("k"),
            t("T"),
            t("{}"),
            t("x"),
        ]);
        let rec = m.map_insert(&bad, Lsn(1)).unwrap().unwrap();
        assert_eq!(rec.topic, "outbox.event.has space");
        let empty = row(vec![t("1"), t(""), t("k"), t("T"), t("{}"), t("x")]);
        let e = m.map_insert(&empty, Lsn(1)).unwrap_err();
        assert_eq!(
            (e.class(), e.to_string().as_str()),
            (
                "unroutable",
                "outbox row at 0/1: column \"aggregatetype\" is empty, so it routes nowhere"
            )
        );
        let short = row(vec![t("1")]);
        assert!(matches!(
            m.map_insert(&short, Lsn(1)),
            Err(MapError::ColumnCount { .. })
        ));
    }

    #[test]
    fn header_columns_traceparent_and_headers_json() {
        let cfg = OutboxConfig {
            additional_headers: vec![("tenant".into(), "x-tenant".into())],
            ..OutboxConfig::default()
        };
        let mut m = OutboxMapper::new(vec![cfg]);
        let mut r = outbox_rel(3802);
        for (name, oid) in [("tenant", 25), ("traceparent", 25), ("headers", 3802)] {
            r.columns.push(Column {
                flags: 0,
                name: name.into(),
                type_oid: oid,
                type_modifier: -1,
            });
        }
        m.on_relation(&r).unwrap();
        let row = row(vec![
            t("1"),
            t("order"),
            t("k"),
            t("T"),
            t("{}"),
            t("x"),
            t("acme"),
            t("00-abc-def-01"),
            t(r#"{"region": "eu", "retries": 3, "id": "ignored"}"#),
        ]);
        let rec = m.map_insert(&row, Lsn(1)).unwrap().unwrap();
        let h: Vec<(&str, &[u8])> = rec
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_ref()))
            .collect();
        assert_eq!(
            h,
            [
                ("id", &b"1"[..]),
                ("type", b"T"),
                ("x-tenant", b"acme"),
                ("traceparent", b"00-abc-def-01"),
                ("region", b"eu"),
                ("retries", b"3"),
            ]
        );
        // A configured header column that the table lacks is an error naming it.
        let mut m = OutboxMapper::new(vec![OutboxConfig {
            additional_headers: vec![("nope".into(), "nope".into())],
            ..OutboxConfig::default()
        }]);
        assert!(m
            .on_relation(&outbox_rel(3802))
            .unwrap_err()
            .to_string()
            .contains("nope"));
    }

    #[test]
    fn tombstone_only_when_asked() {
        let null = row(vec![t("1"), t("a"), t("k"), t("T"), Value::Null, t("x")]);
        let empty = row(vec![t("1"), t("a"), t("k"), t("T"), t(""), t("x")]);
        let mut m = OutboxMapper::new(vec![OutboxConfig::default()]);
        m.on_relation(&outbox_rel(25)).unwrap();
        for r in [&null, &empty] {
            let p = m.map_insert(r, Lsn(1)).unwrap().unwrap().payload;
            assert_eq!(p.as_deref(), Some(&b""[..]));
        }
        let mut m = OutboxMapper::new(vec![OutboxConfig {
            tombstone_on_empty_payload: true,
            ..OutboxConfig::default()
        }]);
        m.on_relation(&outbox_rel(25)).unwrap();
        for r in [&null, &empty] {
            assert_eq!(m.map_insert(r, Lsn(1)).unwrap().unwrap().payload, None);
        }
    }

    #[test]
    fn null_key_is_unroutable_only_when_required() {
        let r = row(vec![t("1"), t("a"), Value::Null, t("T"), t("{}"), t("x")]);
        let mut m = OutboxMapper::new(vec![OutboxConfig::default()]);
        m.on_relation(&outbox_rel(3802)).unwrap();
        assert_eq!(m.map_insert(&r, Lsn(1)).unwrap().unwrap().key, None);
        let mut m = OutboxMapper::new(vec![OutboxConfig {
            require_key: true,
            ..OutboxConfig::default()
        }]);
        m.on_relation(&outbox_rel(3802)).unwrap();
        let e = m.map_insert(&r, Lsn(1)).unwrap_err();
        assert!(e.is_poison());
        assert_eq!(e.class(), "unroutable");
        assert!(e.to_string().contains("\"aggregateid\" is NULL"), "{e}");
    }

    #[test]
    fn several_tables_each_with_its_routing_and_partition() {
        let orders = OutboxConfig {
            table: TableName::parse("sales.outbox").unwrap(),
            topic_template: "sales.${routedByValue}".parse().unwrap(),
            partition_column: Some("created_at".into()),
            ..OutboxConfig::default()
        };
        let mut m = OutboxMapper::new(vec![OutboxConfig::default(), orders]);
        let mut sales = outbox_rel(3802);
        sales.id = 8;
        sales.namespace = "sales".into();
        m.on_relation(&outbox_rel(3802)).unwrap();
        m.on_relation(&sales).unwrap();
        let vals = |p: &str| vec![t("1"), t("order"), t("k"), t("T"), t("{}"), t(p)];
        let public = m.map_insert(&row(vals("2")), Lsn(1)).unwrap().unwrap();
        assert_eq!(
            (public.topic.as_str(), public.partition),
            ("outbox.event.order", None)
        );
        let ins = |p: &str| Insert {
            relation_id: 8,
            new: TupleData(vals(p)),
        };
        let rec = m.map_insert(&ins("2"), Lsn(1)).unwrap().unwrap();
        assert_eq!(
            (rec.topic.as_str(), rec.partition),
            ("sales.order", Some(2))
        );
        for bad in ["-1", "two"] {
            let e = m.map_insert(&ins(bad), Lsn(1)).unwrap_err();
            assert!(matches!(e, MapError::BadPartition { .. }), "{e}");
        }
        assert_eq!(m.table(8).unwrap().table.schema, "sales");
        assert!(m.table(9).is_none());
    }

    #[test]
    fn bytea_hex() {
        assert_eq!(decode_bytea_hex(b"\\x").unwrap().len(), 0);
        assert_eq!(decode_bytea_hex(b"\\xAb").unwrap().as_ref(), &[0xab]);
        assert!(decode_bytea_hex(b"\\xa").is_none());
        assert!(decode_bytea_hex(b"\\xzz").is_none());
        assert!(decode_bytea_hex(b"\\001").is_none());
    }
}
