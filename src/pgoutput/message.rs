//! Typed pgoutput messages. Column values borrow the received buffer (`Bytes`), no copies.

use bytes::Bytes;

use crate::lsn::Lsn;

/// One pgoutput message, as carried in an XLogData payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Begin(Begin),
    Commit(Commit),
    Origin(Origin),
    Relation(Relation),
    Type(Type),
    Insert(Insert),
    Update(Update),
    Delete(Delete),
    Truncate(Truncate),
    /// A `pg_logical_emit_message` record (sent only with `messages 'true'`).
    Message(LogicalMessage),
}

/// Start of a transaction; its commit timestamp is known already (decoding happens at commit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Begin {
    pub final_lsn: Lsn,
    /// Microseconds since 2000-01-01 UTC (see [`crate::pgtime`]).
    pub commit_time: i64,
    pub xid: u32,
}

/// End of a transaction. `end_lsn` is what a client confirms once the transaction is done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    pub flags: u8,
    pub commit_lsn: Lsn,
    pub end_lsn: Lsn,
    pub commit_time: i64,
}

/// The transaction was replicated from another node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub commit_lsn: Lsn,
    pub name: String,
}

/// Describes a table; sent before the first change to it in a session and after DDL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub id: u32,
    /// Empty for `pg_catalog`.
    pub namespace: String,
    pub name: String,
    pub replica_identity: u8,
    pub columns: Vec<Column>,
}

/// One column of a [`Relation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// 1 when the column is part of the replica identity key.
    pub flags: u8,
    pub name: String,
    pub type_oid: u32,
    pub type_modifier: i32,
}

/// Describes a non-builtin data type used by a relation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Type {
    pub id: u32,
    pub namespace: String,
    pub name: String,
}

/// A new row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Insert {
    pub relation_id: u32,
    pub new: TupleData,
}

/// A changed row; `old` is present only with replica identity key/full changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    pub relation_id: u32,
    pub old: Option<OldTuple>,
    pub new: TupleData,
}

/// A deleted row, identified by its key or full old tuple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    pub relation_id: u32,
    pub old: OldTuple,
}

/// The old row image of an Update or Delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldTuple {
    /// `K`: replica identity key columns only.
    Key(TupleData),
    /// `O`: the whole old row (replica identity full).
    Full(TupleData),
}

/// TRUNCATE of one or more relations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncate {
    /// Bit 1: CASCADE, bit 2: RESTART IDENTITY.
    pub options: u8,
    pub relation_ids: Vec<u32>,
}

/// A logical decoding message from `pg_logical_emit_message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicalMessage {
    pub transactional: bool,
    pub lsn: Lsn,
    pub prefix: String,
    pub content: Bytes,
}

/// The column values of one row, in relation column order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TupleData(pub Vec<Value>);

/// One column value of a tuple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// `n`: SQL NULL.
    Null,
    /// `u`: a TOASTed value that did not change (Updates only); the value itself is not sent.
    UnchangedToast,
    /// `t`: the value in the type's text output format.
    Text(Bytes),
    /// `b`: the value in the type's binary format (protocol v2+ with `binary 'true'`).
    Binary(Bytes),
}
