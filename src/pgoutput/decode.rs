//! The decoder: one XLogData payload to one [`Message`]. Strict: every byte must be consumed.

use bytes::{Buf, Bytes};

use super::message::*;
use crate::lsn::Lsn;

/// Why a payload is not a valid pgoutput v1 message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("empty pgoutput message")]
    Empty,
    #[error("unknown pgoutput message tag {0:#04x}")]
    UnknownTag(u8),
    #[error("pgoutput message truncated: needed {needed} more bytes for {what}")]
    Truncated { what: &'static str, needed: usize },
    #[error("unterminated string in {0}")]
    UnterminatedString(&'static str),
    #[error("invalid tuple value kind {0:#04x}")]
    InvalidValueKind(u8),
    #[error("invalid tuple marker {0:#04x} in {1}")]
    InvalidTupleMarker(u8, &'static str),
    #[error("negative length {0} in {1}")]
    NegativeLength(i32, &'static str),
    #[error("{0} trailing bytes after a {1} message")]
    TrailingBytes(usize, &'static str),
}

/// Decodes one pgoutput message. `payload` is the XLogData body; values share its memory.
pub fn decode(payload: Bytes) -> Result<Message, DecodeError> {
    let mut r = Reader(payload);
    let tag = r.u8("message tag").map_err(|_| DecodeError::Empty)?;
    let (msg, what) = match tag {
        b'B' => (
            Message::Begin(Begin {
                final_lsn: r.lsn("Begin")?,
                commit_time: r.i64("Begin")?,
                xid: r.u32("Begin")?,
            }),
            "Begin",
        ),
        b'C' => (
            Message::Commit(Commit {
                flags: r.u8("Commit")?,
                commit_lsn: r.lsn("Commit")?,
                end_lsn: r.lsn("Commit")?,
                commit_time: r.i64("Commit")?,
            }),
            "Commit",
        ),
        b'O' => (
            Message::Origin(Origin {
                commit_lsn: r.lsn("Origin")?,
                name: r.string("Origin")?,
            }),
            "Origin",
        ),
        b'R' => (Message::Relation(relation(&mut r)?), "Relation"),
        b'Y' => (
            Message::Type(Type {
                id: r.u32("Type")?,
                namespace: r.string("Type")?,
                name: r.string("Type")?,
            }),
            "Type",
        ),
        b'I' => {
            let relation_id = r.u32("Insert")?;
            r.expect_marker(b'N', "Insert")?;
            let new = tuple(&mut r)?;
            (Message::Insert(Insert { relation_id, new }), "Insert")
        }
        b'U' => {
            let relation_id = r.u32("Update")?;
            let old = match r.u8("Update")? {
                b'K' => Some(OldTuple::Key(tuple(&mut r)?)),
                b'O' => Some(OldTuple::Full(tuple(&mut r)?)),
                b'N' => None,
                other => return Err(DecodeError::InvalidTupleMarker(other, "Update")),
            };
            if old.is_some() {
                r.expect_marker(b'N', "Update")?;
            }
            let new = tuple(&mut r)?;
            (
                Message::Update(Update {
                    relation_id,
                    old,
                    new,
                }),
                "Update",
            )
        }
        b'D' => {
            let relation_id = r.u32("Delete")?;
            let old = match r.u8("Delete")? {
                b'K' => OldTuple::Key(tuple(&mut r)?),
                b'O' => OldTuple::Full(tuple(&mut r)?),
                other => return Err(DecodeError::InvalidTupleMarker(other, "Delete")),
            };
            (Message::Delete(Delete { relation_id, old }), "Delete")
        }
        b'T' => {
            let n = r.len32("Truncate")?;
            let options = r.u8("Truncate")?;
            // Bound the allocation by what the buffer can actually hold.
            r.need(n.saturating_mul(4), "Truncate")?;
            let relation_ids = (0..n)
                .map(|_| r.u32("Truncate"))
                .collect::<Result<_, _>>()?;
            (
                Message::Truncate(Truncate {
                    options,
                    relation_ids,
                }),
                "Truncate",
            )
        }
        b'M' => {
            let flags = r.u8("Message")?;
            let lsn = r.lsn("Message")?;
            let prefix = r.string("Message")?;
            let len = r.len32("Message")?;
            let content = r.bytes(len, "Message")?;
            (
                Message::Message(LogicalMessage {
                    transactional: flags & 1 == 1,
                    lsn,
                    prefix,
                    content,
                }),
                "Message",
            )
        }
        other => return Err(DecodeError::UnknownTag(other)),
    };
    if r.0.has_remaining() {
        return Err(DecodeError::TrailingBytes(r.0.remaining(), what));
    }
    Ok(msg)
}

fn relation(r: &mut Reader) -> Result<Relation, DecodeError> {
    const W: &str = "Relation";
    let id = r.u32(W)?;
    let namespace = r.string(W)?;
    let name = r.string(W)?;
    let replica_identity = r.u8(W)?;
    let n = r.u16(W)?;
    // Each column takes at least 10 bytes: cap the allocation by the input.
    let mut columns = Vec::with_capacity(usize::from(n).min(r.0.remaining() / 10));
    for _ in 0..n {
        columns.push(Column {
            flags: r.u8(W)?,
            name: r.string(W)?,
            type_oid: r.u32(W)?,
            type_modifier: r.i32(W)?,
        });
    }
    Ok(Relation {
        id,
        namespace,
        name,
        replica_identity,
        columns,
    })
}

fn tuple(r: &mut Reader) -> Result<TupleData, DecodeError> {
    const W: &str = "TupleData";
    let n = r.u16(W)?;
    let mut values = Vec::with_capacity(usize::from(n).min(r.0.remaining()));
    for _ in 0..n {
        values.push(match r.u8(W)? {
            b'n' => Value::Null,
            b'u' => Value::UnchangedToast,
            b't' => {
                let len = r.len32(W)?;
                Value::Text(r.bytes(len, W)?)
            }
            b'b' => {
                let len = r.len32(W)?;
                Value::Binary(r.bytes(len, W)?)
            }
            other => return Err(DecodeError::InvalidValueKind(other)),
        });
    }
    Ok(TupleData(values))
}

/// Big-endian cursor that reports truncation instead of panicking.
struct Reader(Bytes);

impl Reader {
    fn need(&self, n: usize, what: &'static str) -> Result<(), DecodeError> {
        match n.checked_sub(self.0.remaining()) {
            Some(needed) if needed > 0 => Err(DecodeError::Truncated { what, needed }),
            _ => Ok(()),
        }
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        self.need(1, what)?;
        Ok(self.0.get_u8())
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        self.need(2, what)?;
        Ok(self.0.get_u16())
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        self.need(4, what)?;
        Ok(self.0.get_u32())
    }
    fn i32(&mut self, what: &'static str) -> Result<i32, DecodeError> {
        self.need(4, what)?;
        Ok(self.0.get_i32())
    }
    fn i64(&mut self, what: &'static str) -> Result<i64, DecodeError> {
        self.need(8, what)?;
        Ok(self.0.get_i64())
    }
    fn lsn(&mut self, what: &'static str) -> Result<Lsn, DecodeError> {
        self.need(8, what)?;
        Ok(Lsn(self.0.get_u64()))
    }
    /// An Int32 length that must not be negative.
    fn len32(&mut self, what: &'static str) -> Result<usize, DecodeError> {
        let n = self.i32(what)?;
        usize::try_from(n).map_err(|_| DecodeError::NegativeLength(n, what))
    }
    fn bytes(&mut self, n: usize, what: &'static str) -> Result<Bytes, DecodeError> {
        self.need(n, what)?;
        Ok(self.0.split_to(n))
    }
    /// A NUL-terminated string. Names are in the server encoding; non-UTF-8 bytes are replaced.
    fn string(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let end = self
            .0
            .iter()
            .position(|b| *b == 0)
            .ok_or(DecodeError::UnterminatedString(what))?;
        let s = String::from_utf8_lossy(&self.0[..end]).into_owned();
        self.0.advance(end + 1);
        Ok(s)
    }
    fn expect_marker(&mut self, marker: u8, what: &'static str) -> Result<(), DecodeError> {
        match self.u8(what)? {
            m if m == marker => Ok(()),
            other => Err(DecodeError::InvalidTupleMarker(other, what)),
        }
    }
}
