//! The polling publisher (`source = poll`): the classic outbox relay, for databases where
//! logical replication is not allowed. Every `poll_interval`, in one transaction:
//! `SELECT … WHERE status = 0 ORDER BY seq LIMIT n FOR UPDATE SKIP LOCKED`, produce the rows,
//! wait for every ack, then mark them done (`status = 1`) or delete them, and commit. Rows
//! locked by another instance are skipped, so several instances never send a row at once; a
//! crash before the commit leaves the rows pending, to be sent again (at-least-once).
//!
//! Rows map to records exactly as on the replication path: the row (all columns as text) is
//! handed to the same [`OutboxMapper`] as a pgoutput insert would be.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_postgres::SimpleQueryMessage;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::config::Config;
use crate::lsn::Lsn;
use crate::metrics as m;
use crate::outbox::{MapError, OutboxMapper, PoisonPolicy};
use crate::pgoutput::{Column, Insert, Relation, TupleData, Value};
use crate::pipeline::poison::{self, Poisoned};
use crate::pipeline::StreamError;
use crate::sink::kafka::{Delivery, KafkaSink, SendError};

/// What to do with a row once Kafka has it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Cleanup {
    /// `status = 1` (default): the row stays for audit; drop old rows yourself.
    #[default]
    Mark,
    /// `DELETE` the row.
    Delete,
}

impl std::str::FromStr for Cleanup {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "mark" => Ok(Cleanup::Mark),
            "delete" => Ok(Cleanup::Delete),
            _ => Err(format!("poll_cleanup must be mark or delete, not {s:?}")),
        }
    }
}

/// Polling settings.
#[derive(Debug, Clone)]
pub struct PollConfig {
    /// Pause between polls that found less than a full batch. Default 1 s.
    pub interval: Duration,
    /// Rows per poll (and per transaction). Default 1,000.
    pub batch: usize,
    pub cleanup: Cleanup,
}

impl Default for PollConfig {
    fn default() -> Self {
        PollConfig {
            interval: Duration::from_secs(1),
            batch: 1000,
            cleanup: Cleanup::Mark,
        }
    }
}

/// The relation id the poller gives its table (any constant: it maps one table).
const RELATION: u32 = 1;

/// Polls until `shutdown`; returns on the first error (the caller retries with backoff).
pub async fn run(cfg: &Config, shutdown: &CancellationToken) -> Result<(), StreamError> {
    let (mut client, conn) = crate::pg::connect(cfg).await?;
    let _conn = crate::pipeline::AbortOnDrop(conn);
    let table = &cfg.outbox.table;
    let quoted = format!("{}.{}", quote(&table.schema), quote(&table.name));
    // The table's columns (names and types), as a Relation message would give them.
    let probe = client
        .prepare(&format!("SELECT * FROM {quoted} LIMIT 0"))
        .await?;
    let columns: Vec<Column> = probe
        .columns()
        .iter()
        .map(|c| Column {
            flags: 0,
            name: c.name().to_owned(),
            type_oid: c.type_().oid(),
            type_modifier: -1,
        })
        .collect();
    let seq = columns
        .iter()
        .position(|c| c.name == "seq")
        .ok_or_else(|| StreamError::PollSchema(quoted.clone()))?;
    if !columns.iter().any(|c| c.name == "status") {
        return Err(StreamError::PollSchema(quoted.clone()));
    }
    let relation = Relation {
        id: RELATION,
        namespace: table.schema.clone(),
        name: table.name.clone(),
        replica_identity: b'd',
        columns,
    };
    let mut mapper = OutboxMapper::new(vec![cfg.outbox.clone()]);
    mapper.on_relation(&relation)?;
    let select = format!(
        "SELECT * FROM {quoted} WHERE status = 0 ORDER BY seq LIMIT {} FOR UPDATE SKIP LOCKED",
        cfg.poll.batch
    );
    let done = match cfg.poll.cleanup {
        Cleanup::Mark => format!("UPDATE {quoted} SET status = 1 WHERE seq = ANY($1)"),
        Cleanup::Delete => format!("DELETE FROM {quoted} WHERE seq = ANY($1)"),
    };
    let (ack_tx, mut acks) = mpsc::unbounded_channel();
    let sink: KafkaSink<usize> = KafkaSink::new(&cfg.kafka, ack_tx)?;
    info!(table = %table, interval = ?cfg.poll.interval, batch = cfg.poll.batch,
        cleanup = ?cfg.poll.cleanup, "polling");
    loop {
        let started = Instant::now();
        let tx = client.transaction().await?;
        let mut rows = Vec::new();
        for msg in tx.simple_query(&select).await? {
            if let SimpleQueryMessage::Row(r) = msg {
                let values: Vec<Value> = (0..r.len())
                    .map(|i| match r.get(i) {
                        Some(v) => Value::Text(Bytes::copy_from_slice(v.as_bytes())),
                        None => Value::Null,
                    })
                    .collect();
                rows.push(values);
            }
        }
        let n = rows.len();
        let mut seqs = Vec::with_capacity(n);
        let mut outstanding = 0usize;
        let mut topics: HashMap<String, u64> = HashMap::new();
        for values in rows {
            // A table altered since the columns were learned may not have it where expected.
            let seq_value = match values.get(seq) {
                Some(Value::Text(b)) => std::str::from_utf8(b)
                    .ok()
                    .and_then(|s| s.parse::<i64>().ok()),
                _ => None,
            }
            .ok_or_else(|| StreamError::PollSchema(quoted.clone()))?;
            seqs.push(seq_value);
            let ins = Insert {
                relation_id: RELATION,
                new: TupleData(values),
            };
            // The sequence number stands in for the WAL position in messages and headers.
            let rec = match mapper.map_insert(&ins, Lsn(seq_value as u64)) {
                Ok(Some(rec)) => rec,
                Ok(None) => continue,
                Err(e) => match poison(cfg, e, mapper.raw_insert(&ins, Some(&relation)))? {
                    Some(dead) => dead,
                    None => continue,
                },
            };
            let mut ticket = seq_value as usize;
            loop {
                match sink.send(&rec, ticket) {
                    Ok(()) => break,
                    Err(SendError::QueueFull(t)) => {
                        ticket = t;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err(SendError::Rejected(_, e)) => return Err(StreamError::Delivery(e)),
                }
            }
            outstanding += 1;
            match topics.get_mut(&rec.topic) {
                Some(count) => *count += 1,
                None => {
                    topics.insert(rec.topic.clone(), 1);
                }
            }
        }
        // Every record acked before the rows are marked: a failure leaves them pending.
        while outstanding > 0 {
            match acks.recv().await {
                Some(Delivery { result: Ok(_), .. }) => outstanding -= 1,
                Some(Delivery { result: Err(e), .. }) => return Err(StreamError::Delivery(e)),
                None => return Ok(()),
            }
        }
        if n > 0 {
            tx.execute(&done, &[&seqs]).await?;
        }
        tx.commit().await?;
        // Counted once committed, per topic like the replication path.
        for (topic, count) in topics {
            metrics::counter!(m::EVENTS_DELIVERED, "topic" => topic).increment(count);
        }
        if n > 0 {
            debug!(rows = n, took = ?started.elapsed(), "poll delivered");
        }
        if n < cfg.poll.batch {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(cfg.poll.interval) => {}
            }
        } else if shutdown.is_cancelled() {
            return Ok(());
        }
    }
}

/// A row that can't be mapped, per `on_poison`: `Some` is a dead letter to send instead.
fn poison(
    cfg: &Config,
    e: MapError,
    raw: crate::outbox::RawRow,
) -> Result<Option<crate::outbox::OutboxRecord>, StreamError> {
    if !e.is_poison() || cfg.on_poison == PoisonPolicy::Fail {
        return Err(e.into());
    }
    let p = Poisoned::unmapped_row(&e, raw, Lsn::ZERO);
    Ok(poison::handle(cfg.on_poison, &cfg.dead_letter_topic, p))
}

/// A double-quoted SQL identifier.
fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}
