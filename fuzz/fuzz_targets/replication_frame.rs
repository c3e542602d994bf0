//! Arbitrary bytes as a stream from the server: backend framing (including CopyBothResponse)
//! and the CopyData payloads inside it must return frames or errors, never panic or loop.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pgoutbox::replication::protocol::{decode_copy_data, next_frame, Frame};

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    let mut frames = 0;
    while let Ok(Some(frame)) = next_frame(&mut buf) {
        frames += 1;
        assert!(frames <= data.len(), "framing must consume input");
        if let Frame::Message(m) = frame {
            if let Some(payload) = copy_data(m) {
                let _ = decode_copy_data(payload);
            }
        }
    }
});

fn copy_data(m: pgoutbox::replication::protocol::BackendMessage) -> Option<bytes::Bytes> {
    match m {
        pgoutbox::replication::protocol::BackendMessage::CopyData(d) => Some(d.into_bytes()),
        _ => None,
    }
}
