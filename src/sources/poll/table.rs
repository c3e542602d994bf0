//! The outbox table as the polling source uses it: lock a batch of pending rows in a
//! transaction, then mark them done (or delete them) and commit, or roll back. SQL only; what
//! the rows become, and when they may be marked, is decided elsewhere.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::config::poll::{Cleanup, PollConfig};
use crate::outbox::TableName;
use crate::pgoutput::Value;
use crate::pipeline::StreamError;

/// One row's values in column order, as text (as pgoutput sends them).
pub type Row = Vec<Value>;

/// Where the polling source takes rows from. The futures own what they need (`'static`), so
/// a caller can keep one across a cancelled `select!` branch.
pub trait Table: Send + 'static {
    /// Begins a transaction and locks up to a batch of pending rows, in `seq` order, skipping
    /// rows another instance holds. With no row, the transaction is over already.
    fn lock(&self) -> BoxFuture<'static, Result<Vec<Row>, StreamError>>;
    /// Marks the rows with these `seq`s done and commits: they leave the pending set.
    fn done(&self, seqs: Vec<i64>) -> BoxFuture<'static, Result<(), StreamError>>;
    /// Ends the open transaction without marking: its rows stay pending.
    fn release(&self) -> BoxFuture<'static, Result<(), StreamError>>;
}

/// A PostgreSQL outbox table with the polling columns (`sql/poll.sql`).
pub struct PgTable {
    client: Arc<Client>,
    select: Arc<str>,
    done: Arc<str>,
}

impl PgTable {
    pub fn new(client: Client, table: &TableName, poll: &PollConfig) -> Self {
        let quoted = quoted(table);
        let select = format!(
            "SELECT * FROM {quoted} WHERE status = 0 ORDER BY seq LIMIT {} FOR UPDATE SKIP LOCKED",
            poll.batch
        );
        let done = match poll.cleanup {
            Cleanup::Mark => format!("UPDATE {quoted} SET status = 1 WHERE seq = ANY($1)"),
            Cleanup::Delete => format!("DELETE FROM {quoted} WHERE seq = ANY($1)"),
        };
        PgTable {
            client: Arc::new(client),
            select: select.into(),
            done: done.into(),
        }
    }
}

impl Table for PgTable {
    fn lock(&self) -> BoxFuture<'static, Result<Vec<Row>, StreamError>> {
        let (client, select) = (self.client.clone(), self.select.clone());
        Box::pin(async move {
            client.batch_execute("BEGIN").await?;
            let mut rows = Vec::new();
            for msg in client.simple_query(&select).await? {
                if let SimpleQueryMessage::Row(r) = msg {
                    rows.push(
                        (0..r.len())
                            .map(|i| match r.get(i) {
                                Some(v) => Value::Text(Bytes::copy_from_slice(v.as_bytes())),
                                None => Value::Null,
                            })
                            .collect(),
                    );
                }
            }
            if rows.is_empty() {
                client.batch_execute("COMMIT").await?;
            }
            Ok(rows)
        })
    }

    fn done(&self, seqs: Vec<i64>) -> BoxFuture<'static, Result<(), StreamError>> {
        let (client, done) = (self.client.clone(), self.done.clone());
        Box::pin(async move {
            client.execute(&*done, &[&seqs]).await?;
            client.batch_execute("COMMIT").await?;
            Ok(())
        })
    }

    fn release(&self) -> BoxFuture<'static, Result<(), StreamError>> {
        let client = self.client.clone();
        Box::pin(async move { Ok(client.batch_execute("ROLLBACK").await?) })
    }
}

/// `schema.table`, each part a double-quoted SQL identifier.
pub fn quoted(table: &TableName) -> String {
    let quote = |ident: &str| format!("\"{}\"", ident.replace('"', "\"\""));
    format!("{}.{}", quote(&table.schema), quote(&table.name))
}
