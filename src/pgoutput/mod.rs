//! The pgoutput logical decoding format (protocol version 1): bytes in, typed messages out
//! ([`decode`]), and back ([`encode`], for the polling source and tests).
//!
//! Pure: no I/O and no state except the [`RelationCache`], which the caller owns because
//! Relation messages are sent once per relation per session and Inserts refer to them by id.

mod decode;
mod encode;
mod message;
mod relation;

pub use decode::{decode, DecodeError};
pub use encode::encode;
pub use message::*;
pub use relation::RelationCache;
