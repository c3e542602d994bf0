//! Pure codecs for the replication connection: no sockets here.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use postgres_protocol::message::backend;

use crate::lsn::Lsn;

/// A backend message as postgres-protocol parses it (all but CopyBothResponse).
pub use postgres_protocol::message::backend::Message as BackendMessage;

/// A message the server sends inside CopyData during `START_REPLICATION`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicationMessage {
    /// `w`: a chunk of decoded WAL (for pgoutput: exactly one pgoutput message).
    XLogData {
        wal_start: Lsn,
        wal_end: Lsn,
        send_time: i64,
        data: Bytes,
    },
    /// `k`: the server's WAL end; `reply_requested` asks for a status update now.
    PrimaryKeepalive {
        wal_end: Lsn,
        send_time: i64,
        reply_requested: bool,
    },
}

/// A CopyData payload that is not a valid replication message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("empty CopyData payload")]
    Empty,
    #[error("unknown replication message tag {0:#04x}")]
    UnknownTag(u8),
    #[error("replication message {tag:?} has {len} bytes, expected {expected}")]
    BadLength {
        tag: char,
        len: usize,
        expected: usize,
    },
    #[error("backend frame: {0}")]
    Backend(String),
}

const XLOG_HEADER: usize = 24;
const KEEPALIVE_LEN: usize = 17;

/// Decodes the payload of one CopyData message from the walsender.
pub fn decode_copy_data(mut payload: Bytes) -> Result<ReplicationMessage, FrameError> {
    if payload.is_empty() {
        return Err(FrameError::Empty);
    }
    let tag = payload.get_u8();
    match tag {
        b'w' => {
            if payload.len() < XLOG_HEADER {
                return Err(FrameError::BadLength {
                    tag: 'w',
                    len: payload.len(),
                    expected: XLOG_HEADER,
                });
            }
            Ok(ReplicationMessage::XLogData {
                wal_start: Lsn(payload.get_u64()),
                wal_end: Lsn(payload.get_u64()),
                send_time: payload.get_i64(),
                data: payload,
            })
        }
        b'k' => {
            if payload.len() != KEEPALIVE_LEN {
                return Err(FrameError::BadLength {
                    tag: 'k',
                    len: payload.len(),
                    expected: KEEPALIVE_LEN,
                });
            }
            Ok(ReplicationMessage::PrimaryKeepalive {
                wal_end: Lsn(payload.get_u64()),
                send_time: payload.get_i64(),
                reply_requested: payload.get_u8() == 1,
            })
        }
        other => Err(FrameError::UnknownTag(other)),
    }
}

/// Encodes a standby status update (`r`) as a CopyData payload.
pub fn encode_status_update(
    write: Lsn,
    flush: Lsn,
    apply: Lsn,
    client_time: i64,
    reply_requested: bool,
    out: &mut BytesMut,
) {
    out.put_u8(b'r');
    out.put_u64(write.0);
    out.put_u64(flush.0);
    out.put_u64(apply.0);
    out.put_i64(client_time);
    out.put_u8(u8::from(reply_requested));
}

/// One backend frame: the messages postgres-protocol parses, plus CopyBothResponse.
pub enum Frame {
    /// `W`: the server entered CopyBoth mode (START_REPLICATION succeeded).
    CopyBothResponse,
    Message(backend::Message),
}

/// Splits the next complete backend frame off `buf`, or `None` if more bytes are needed.
/// Pure over the buffer, so it is cancel-safe for the socket reader that fills `buf`.
pub fn next_frame(buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
    let header =
        match backend::Header::parse(buf).map_err(|e| FrameError::Backend(e.to_string()))? {
            Some(h) => h,
            None => return Ok(None),
        };
    let total = usize::try_from(header.len())
        .map_err(|_| FrameError::Backend("negative frame length".into()))?
        .saturating_add(1);
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    if header.tag() == b'W' {
        // CopyBothResponse: format and column formats carry nothing we need.
        buf.advance(total);
        return Ok(Some(Frame::CopyBothResponse));
    }
    match backend::Message::parse(buf) {
        Ok(Some(m)) => Ok(Some(Frame::Message(m))),
        Ok(None) => Err(FrameError::Backend(
            "complete frame reported incomplete".into(),
        )),
        Err(e) => Err(FrameError::Backend(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn decodes_xlogdata() {
        let mut b = BytesMut::new();
        b.put_u8(b'w');
        b.put_u64(0x1_0000_0010);
        b.put_u64(0x1_0000_0020);
        b.put_i64(42);
        b.put_slice(b"B...");
        let m = decode_copy_data(b.freeze()).unwrap();
        assert_eq!(
            m,
            ReplicationMessage::XLogData {
                wal_start: Lsn(0x1_0000_0010),
                wal_end: Lsn(0x1_0000_0020),
                send_time: 42,
                data: Bytes::from_static(b"B..."),
            }
        );
    }

    #[test]
    fn decodes_keepalive_and_rejects_bad_length() {
        let mut b = BytesMut::new();
        b.put_u8(b'k');
        b.put_u64(77);
        b.put_i64(5);
        b.put_u8(1);
        assert_eq!(
            decode_copy_data(b.clone().freeze()).unwrap(),
            ReplicationMessage::PrimaryKeepalive {
                wal_end: Lsn(77),
                send_time: 5,
                reply_requested: true
            }
        );
        b.put_u8(0);
        assert!(decode_copy_data(b.freeze()).is_err());
    }

    #[test]
    fn status_update_layout() {
        let mut b = BytesMut::new();
        encode_status_update(Lsn(3), Lsn(2), Lsn(1), 9, false, &mut b);
        assert_eq!(b.len(), 34);
        assert_eq!(b[0], b'r');
        assert_eq!(&b[1..9], &3u64.to_be_bytes());
        assert_eq!(&b[9..17], &2u64.to_be_bytes());
        assert_eq!(&b[17..25], &1u64.to_be_bytes());
        assert_eq!(&b[25..33], &9i64.to_be_bytes());
        assert_eq!(b[33], 0);
    }

    #[test]
    fn frames_copy_both_then_copy_data() {
        let mut b = BytesMut::new();
        b.put_u8(b'W');
        b.put_i32(7);
        b.put_u8(0);
        b.put_i16(0);
        b.put_u8(b'd');
        b.put_i32(4 + 2);
        b.put_slice(b"hi");
        b.put_u8(b'Z'); // incomplete third frame
        assert!(matches!(
            next_frame(&mut b),
            Ok(Some(Frame::CopyBothResponse))
        ));
        match next_frame(&mut b) {
            Ok(Some(Frame::Message(backend::Message::CopyData(d)))) => assert_eq!(d.data(), b"hi"),
            _ => panic!("expected CopyData"),
        }
        assert!(matches!(next_frame(&mut b), Ok(None)));
    }

    proptest! {
        #[test]
        fn arbitrary_copy_data_never_panics(data in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_copy_data(Bytes::from(data));
        }

        #[test]
        fn arbitrary_frames_never_panic(data in prop::collection::vec(any::<u8>(), 0..128)) {
            let mut b = BytesMut::from(&data[..]);
            while let Ok(Some(_)) = next_frame(&mut b) {}
        }
    }
}
