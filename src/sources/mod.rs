//! Where events come from: the replication slot (pgoutput), or polling the outbox table.
//!
//! - [`replication`]: one replication session, from the checks to the pipeline's event loop.
//! - [`guard`]: watches the catalog for a publication change that silences the outbox.
//! - [`poll`]: the polling publisher (`source = poll`).

pub mod guard;
pub mod poll;
pub mod replication;
