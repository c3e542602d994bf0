//! Typed messages → pgoutput bytes: the inverse of [`decode`](super::decode). The polling
//! source speaks to the pipeline in pgoutput, so both sources share one decoder and one
//! session; the session's tests script their WAL with it.

use bytes::{BufMut, Bytes, BytesMut};

use super::message::*;

/// The XLogData payload that carries `msg`.
pub fn encode(msg: &Message) -> Bytes {
    let mut b = BytesMut::new();
    match msg {
        Message::Begin(m) => {
            b.put_u8(b'B');
            b.put_u64(m.final_lsn.0);
            b.put_i64(m.commit_time);
            b.put_u32(m.xid);
        }
        Message::Commit(m) => {
            b.put_u8(b'C');
            b.put_u8(m.flags);
            b.put_u64(m.commit_lsn.0);
            b.put_u64(m.end_lsn.0);
            b.put_i64(m.commit_time);
        }
        Message::Origin(m) => {
            b.put_u8(b'O');
            b.put_u64(m.commit_lsn.0);
            string(&mut b, &m.name);
        }
        Message::Relation(m) => {
            b.put_u8(b'R');
            b.put_u32(m.id);
            string(&mut b, &m.namespace);
            string(&mut b, &m.name);
            b.put_u8(m.replica_identity);
            b.put_u16(len16(m.columns.len()));
            for c in &m.columns {
                b.put_u8(c.flags);
                string(&mut b, &c.name);
                b.put_u32(c.type_oid);
                b.put_i32(c.type_modifier);
            }
        }
        Message::Type(m) => {
            b.put_u8(b'Y');
            b.put_u32(m.id);
            string(&mut b, &m.namespace);
            string(&mut b, &m.name);
        }
        Message::Insert(m) => {
            b.put_u8(b'I');
            b.put_u32(m.relation_id);
            b.put_u8(b'N');
            tuple(&mut b, &m.new);
        }
        Message::Update(m) => {
            b.put_u8(b'U');
            b.put_u32(m.relation_id);
            if let Some(old) = &m.old {
                old_tuple(&mut b, old);
            }
            b.put_u8(b'N');
            tuple(&mut b, &m.new);
        }
        Message::Delete(m) => {
            b.put_u8(b'D');
            b.put_u32(m.relation_id);
            old_tuple(&mut b, &m.old);
        }
        Message::Truncate(m) => {
            b.put_u8(b'T');
            b.put_i32(len32(m.relation_ids.len()));
            b.put_u8(m.options);
            for id in &m.relation_ids {
                b.put_u32(*id);
            }
        }
        Message::Message(m) => {
            b.put_u8(b'M');
            b.put_u8(u8::from(m.transactional));
            b.put_u64(m.lsn.0);
            string(&mut b, &m.prefix);
            b.put_i32(len32(m.content.len()));
            b.put_slice(&m.content);
        }
    }
    b.freeze()
}

fn string(b: &mut BytesMut, s: &str) {
    b.put_slice(s.as_bytes());
    b.put_u8(0);
}

fn old_tuple(b: &mut BytesMut, old: &OldTuple) {
    let (marker, t) = match old {
        OldTuple::Key(t) => (b'K', t),
        OldTuple::Full(t) => (b'O', t),
    };
    b.put_u8(marker);
    tuple(b, t);
}

fn tuple(b: &mut BytesMut, t: &TupleData) {
    b.put_u16(len16(t.0.len()));
    for v in &t.0 {
        match v {
            Value::Null => b.put_u8(b'n'),
            Value::UnchangedToast => b.put_u8(b'u'),
            Value::Text(s) => {
                b.put_u8(b't');
                b.put_i32(len32(s.len()));
                b.put_slice(s);
            }
            Value::Binary(s) => {
                b.put_u8(b'b');
                b.put_i32(len32(s.len()));
                b.put_slice(s);
            }
        }
    }
}

/// PostgreSQL caps a relation at 1,600 columns: a count past `u16` is a caller's bug.
fn len16(n: usize) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}

/// Values are at most 1 GB in PostgreSQL.
fn len32(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lsn::Lsn;
    use crate::pgoutput::decode;

    fn text(s: &str) -> Value {
        Value::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn every_message_decodes_to_itself() {
        let tuple = TupleData(vec![text("a"), Value::Null, Value::UnchangedToast]);
        let messages = [
            Message::Begin(Begin {
                final_lsn: Lsn(7),
                commit_time: 42,
                xid: 9,
            }),
            Message::Commit(Commit {
                flags: 0,
                commit_lsn: Lsn(7),
                end_lsn: Lsn(8),
                commit_time: 42,
            }),
            Message::Origin(Origin {
                commit_lsn: Lsn(1),
                name: "o".into(),
            }),
            Message::Relation(Relation {
                id: 5,
                namespace: "public".into(),
                name: "outbox".into(),
                replica_identity: b'd',
                columns: vec![Column {
                    flags: 1,
                    name: "id".into(),
                    type_oid: 25,
                    type_modifier: -1,
                }],
            }),
            Message::Type(Type {
                id: 3,
                namespace: "s".into(),
                name: "t".into(),
            }),
            Message::Insert(Insert {
                relation_id: 5,
                new: tuple.clone(),
            }),
            Message::Update(Update {
                relation_id: 5,
                old: Some(OldTuple::Key(tuple.clone())),
                new: tuple.clone(),
            }),
            Message::Update(Update {
                relation_id: 5,
                old: None,
                new: TupleData(vec![Value::Binary(Bytes::from_static(b"\x01"))]),
            }),
            Message::Delete(Delete {
                relation_id: 5,
                old: OldTuple::Full(tuple),
            }),
            Message::Truncate(Truncate {
                options: 1,
                relation_ids: vec![5, 6],
            }),
            Message::Message(LogicalMessage {
                transactional: true,
                lsn: Lsn(3),
                prefix: "outbox".into(),
                content: Bytes::from_static(b"{}"),
            }),
        ];
        for m in messages {
            assert_eq!(decode(encode(&m)).unwrap(), m);
        }
    }
}
