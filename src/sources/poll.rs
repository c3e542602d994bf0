//! The polling publisher (`source = poll`): the classic outbox relay, for databases where
//! logical replication is not allowed. Every `poll_interval`, in one transaction:
//! `SELECT … WHERE status = 0 ORDER BY seq LIMIT n FOR UPDATE SKIP LOCKED`, produce the rows,
//! wait for every ack, then mark them done (`status = 1`) or delete them, and commit. Rows
//! locked by another instance are skipped, so several instances never send a row at once; a
//! crash before the commit leaves the rows pending, to be sent again (at-least-once). With
//! `delivery = at-most-once` the rows are marked first and sent after the commit. A refusal
//! for good goes to `on_poison`, as on the replication path.
//!
//! Rows map to records exactly as on the replication path: the row (all columns as text) is
//! handed to the same [`OutboxMapper`] as a pgoutput insert would be.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_postgres::SimpleQueryMessage;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

pub use crate::config::poll::{Cleanup, PollConfig};
use crate::config::{Config, DeliveryMode};
use crate::destination::{Destination, DestinationError, Outcome, Refusal, SendError};
use crate::lsn::Lsn;
use crate::metrics as m;
use crate::outbox::{MapError, OutboxMapper, OutboxRecord, PoisonPolicy};
use crate::pgoutput::{Column, Insert, Relation, TupleData, Value};
use crate::pipeline::poison::{self, Poisoned};
use crate::pipeline::StreamError;

/// The relation id the poller gives its table (any constant: it maps one table).
const RELATION: u32 = 1;

/// Polls until `shutdown`; returns on the first error (the caller retries with backoff).
pub async fn run(cfg: &Config, shutdown: &CancellationToken) -> Result<(), StreamError> {
    crate::destination::with_destination!(cfg.destination, usize, D => run_to::<D>(cfg, shutdown).await)
}

async fn run_to<D: Destination<usize>>(
    cfg: &Config,
    shutdown: &CancellationToken,
) -> Result<(), StreamError> {
    let (mut client, conn) = crate::postgres::connection::connect(cfg).await?;
    let _conn = tokio_util::task::AbortOnDropHandle::new(conn);
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
    let dest = D::open(cfg, ack_tx).await?;
    let at_most_once = cfg.delivery() == DeliveryMode::AtMostOnce;
    info!(table = %table, interval = ?cfg.poll.interval, batch = cfg.poll.batch,
        cleanup = ?cfg.poll.cleanup, delivery = %cfg.delivery(), destination = D::NAME, "polling");
    let result = loop {
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
        let mut records = Vec::with_capacity(n);
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
            match mapper.map_insert(&ins, Lsn(seq_value as u64)) {
                Ok(Some(rec)) => records.push(rec),
                Ok(None) => {}
                Err(e) => {
                    let raw = mapper.raw_insert(&ins, Some(&relation));
                    records.extend(unmapped(cfg, e, raw)?);
                }
            }
        }
        // At-most-once: the rows are done before they are sent; a crash loses them.
        let tx = match at_most_once {
            true => {
                if n > 0 {
                    tx.execute(&done, &[&seqs]).await?;
                }
                tx.commit().await?;
                None
            }
            false => Some(tx),
        };
        let delivered = match (deliver(cfg, &dest, &mut acks, records).await, tx) {
            (Ok(d), Some(tx)) => {
                // Every record acked before the rows are marked: a failure leaves them pending.
                if n > 0 {
                    tx.execute(&done, &[&seqs]).await?;
                }
                tx.commit().await?;
                d
            }
            (Ok(d), None) => d,
            (Err((e, _)), Some(_)) => break Err(e),
            (Err((e, undelivered)), None) => {
                for rec in undelivered {
                    lost(&rec, &e);
                }
                break Err(e);
            }
        };
        // Counted once committed, per topic like the replication path.
        for (topic, count) in delivered {
            metrics::counter!(m::EVENTS_DELIVERED, "topic" => topic, "destination" => D::NAME)
                .increment(count);
        }
        if n > 0 {
            debug!(rows = n, took = ?started.elapsed(), "poll delivered");
        }
        if n < cfg.poll.batch {
            tokio::select! {
                _ = shutdown.cancelled() => break Ok(()),
                _ = tokio::time::sleep(cfg.poll.interval) => {}
            }
        } else if shutdown.is_cancelled() {
            break Ok(());
        }
    };
    dest.close().await;
    result
}

/// Sends a poll's records and waits for every outcome. A refusal for good goes to
/// `on_poison`; a retriable failure is resent in process at-most-once (the rows are marked
/// done already) and ends the poll otherwise (the rows stay pending). Returns the count
/// delivered per topic, or the error with the records not delivered.
async fn deliver<D: Destination<usize>>(
    cfg: &Config,
    dest: &D,
    acks: &mut mpsc::UnboundedReceiver<Outcome<usize>>,
    mut records: Vec<OutboxRecord>,
) -> Result<HashMap<String, u64>, (StreamError, Vec<OutboxRecord>)> {
    let at_most_once = cfg.delivery() == DeliveryMode::AtMostOnce;
    let mut queue: VecDeque<usize> = (0..records.len()).collect();
    let mut outstanding = 0usize;
    let mut done = vec![false; records.len()];
    let mut delivered: HashMap<String, u64> = HashMap::new();
    let undelivered = |records: &[OutboxRecord], done: &[bool]| {
        records
            .iter()
            .zip(done)
            .filter(|(_, d)| !**d)
            .map(|(r, _)| r.clone())
            .collect::<Vec<_>>()
    };
    while !queue.is_empty() || outstanding > 0 {
        while let Some(i) = queue.pop_front() {
            // The batch keeps its records: an at-most-once failure is resent from here.
            match dest.send(records[i].clone(), i) {
                Ok(()) => outstanding += 1,
                Err(SendError::Full(i, _)) => {
                    queue.push_front(i);
                    break;
                }
                Err(SendError::Refused(i, e, _)) => {
                    match refused(cfg, &mut records, &mut done, i, e) {
                        Ok(Some(dead)) => queue.push_front(dead),
                        Ok(None) => {}
                        Err(e) => return Err((e, undelivered(&records, &done))),
                    }
                }
            }
        }
        if queue.is_empty() && outstanding == 0 {
            // The last records were refused at send: no outcome will come.
            break;
        }
        let outcome = tokio::select! {
            o = acks.recv() => o,
            () = dest.ready(), if !queue.is_empty() => continue,
        };
        let Some(Outcome {
            ticket: i, result, ..
        }) = outcome
        else {
            let e = StreamError::Destination(DestinationError::Unavailable(
                "the destination stopped reporting".into(),
            ));
            return Err((e, undelivered(&records, &done)));
        };
        outstanding -= 1;
        match result {
            Ok(_) => {
                done[i] = true;
                *delivered.entry(records[i].topic.clone()).or_default() += 1;
            }
            Err(e) if !e.class.is_final() && at_most_once => {
                warn!(event = %String::from_utf8_lossy(&records[i].event_id), error = %e,
                    "delivery failed; at-most-once resends it in process (its row is marked done)");
                tokio::time::sleep(RETRY_DELAY).await;
                queue.push_back(i);
            }
            Err(e) => match refused(cfg, &mut records, &mut done, i, e) {
                Ok(Some(dead)) => queue.push_back(dead),
                Ok(None) => {}
                Err(e) => return Err((e, undelivered(&records, &done))),
            },
        }
    }
    Ok(delivered)
}

/// Pause before an at-most-once resend.
const RETRY_DELAY: Duration = Duration::from_millis(500);

/// Record `i` was refused: per `on_poison`, the index of its dead letter to send (appended to
/// `records`), nothing (skipped), or the error that stops the poll.
fn refused(
    cfg: &Config,
    records: &mut Vec<OutboxRecord>,
    done: &mut Vec<bool>,
    i: usize,
    e: Refusal,
) -> Result<Option<usize>, StreamError> {
    let rec = &records[i];
    let dead_letter = rec.topic == cfg.dead_letter_topic;
    if !e.class.is_final() || dead_letter || cfg.on_poison == PoisonPolicy::Fail {
        return Err(StreamError::Refused {
            event: String::from_utf8_lossy(&rec.event_id).into_owned(),
            topic: rec.topic.clone(),
            bytes: rec.size(),
            lsn: rec.lsn,
            cause: Box::new(e),
        });
    }
    done[i] = true;
    let p = Poisoned::refused(rec.clone(), e);
    Ok(
        poison::handle(cfg.on_poison, &cfg.dead_letter_topic, p).map(|dead| {
            records.push(dead);
            done.push(false);
            records.len() - 1
        }),
    )
}

/// An at-most-once event whose row was marked done and that was not delivered.
fn lost(rec: &OutboxRecord, why: &StreamError) {
    error!(event = %String::from_utf8_lossy(&rec.event_id), reason = %why,
        "event lost: at-most-once marked its row done before delivery");
    metrics::counter!(m::LOST_EVENTS).increment(1);
}

/// A row that can't be mapped, per `on_poison`: `Some` is a dead letter to send instead.
fn unmapped(
    cfg: &Config,
    e: MapError,
    raw: crate::outbox::RawRow,
) -> Result<Option<OutboxRecord>, StreamError> {
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
