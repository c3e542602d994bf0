//! Arbitrary bytes into the pgoutput decoder: a message or an error, never a panic; and a
//! decoded Insert never yields more values than the bytes could hold.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgoutbox::pgoutput::{decode, Message};

fuzz_target!(|data: &[u8]| {
    if let Ok(Message::Insert(i)) = decode(bytes::Bytes::copy_from_slice(data)) {
        assert!(i.new.0.len() <= data.len());
    }
});
