//! A replication message → watermark bookkeeping, and the records it makes (pure but for the
//! catalog lookup of a relation created since the start).

use bytes::Bytes;
use tracing::{debug, error, info, trace, warn};

use super::{protocol, Session, Step, Ticket};
use crate::destination::TXN_HEADER;
use crate::lsn::Lsn;
use crate::metrics as m;
use crate::outbox::{MapError, OutboxRecord, UpdatePolicy};
use crate::pgoutput::{self, Message};
use crate::pipeline::poison::Poisoned;
use crate::pipeline::watermark::TxId;
use crate::pipeline::StreamError;
use crate::replication::ReplicationMessage;

impl Session<'_> {
    pub(super) async fn on_message(
        &mut self,
        msg: ReplicationMessage,
    ) -> Result<Step, StreamError> {
        let (wal_start, data) = match msg {
            ReplicationMessage::PrimaryKeepalive {
                wal_end,
                reply_requested,
                ..
            } => {
                self.wm.keepalive(wal_end);
                return Ok(if reply_requested {
                    Step::Reply
                } else {
                    Step::Continue
                });
            }
            ReplicationMessage::XLogData {
                wal_start, data, ..
            } => (wal_start, data),
        };
        self.wm.observe(wal_start);
        match pgoutput::decode(data)? {
            Message::Begin(b) => {
                let id = self.wm.begin()?;
                self.tx = Some((id, b.commit_time));
                self.skip_tx = self
                    .batches
                    .as_ref()
                    .is_some_and(|k| k.already_delivered(b.final_lsn));
                if self.skip_tx {
                    debug!(final_lsn = %b.final_lsn, "transaction is in the destination already: skipped");
                }
            }
            Message::Commit(c) => {
                let (id, _) = self
                    .tx
                    .take()
                    .ok_or_else(|| protocol("Commit without Begin"))?;
                self.wm.commit(id, c.end_lsn)?;
                self.skip_tx = false;
                if let Some(k) = &mut self.batches {
                    k.last_end = c.end_lsn;
                }
                if !self.held.is_empty() {
                    return Ok(Step::Confirm);
                }
            }
            Message::Relation(r) => self.on_relation(r).await?,
            Message::Insert(ins) => {
                let relation = self.relations.get(ins.relation_id);
                let mapped = match self.mapper.map_insert(&ins, wal_start) {
                    // Every insert pgoutput sends is from a published table: one that is no
                    // outbox is refused loudly, never passed in silence.
                    // The state record's own table (a publication of all tables sends it).
                    Ok(None)
                        if relation.is_some_and(|r| {
                            (r.namespace.as_str(), r.name.as_str()) == crate::postgres::state::TABLE
                        }) =>
                    {
                        return Ok(Step::Continue)
                    }
                    Ok(None) => Err(MapError::NotOutbox {
                        relation: relation.map_or_else(
                            || format!("relation {}", ins.relation_id),
                            |r| format!("{}.{}", r.namespace, r.name),
                        ),
                        lsn: wal_start,
                    }),
                    other => other,
                };
                let mapped = match mapped {
                    Err(e) => {
                        let raw = self.mapper.raw_insert(&ins, relation);
                        let raw = Poisoned::unmapped_row(&e, raw, wal_start);
                        if self.tx.is_none() {
                            return Err(protocol("Insert outside a transaction"));
                        }
                        return self.unmapped(e, raw, wal_start);
                    }
                    Ok(mapped) => mapped,
                };
                if let Some(rec) = mapped {
                    if rec.key.is_none() {
                        // Keyless records spread over partitions: per-aggregate order is lost.
                        warn!(event = %String::from_utf8_lossy(&rec.event_id), lsn = %rec.lsn,
                            column = %self.cfg.outbox.key_column,
                            "NULL key column: delivered without a key, so without per-key order");
                    }
                    if self.tx.is_none() {
                        return Err(protocol("Insert outside a transaction"));
                    }
                    return self.event(rec, wal_start);
                }
            }
            Message::Update(u) => self.on_update(u.relation_id, wal_start)?,
            // Deleting outbox rows is how applications clean up: always ignored.
            Message::Delete(d) => self.ignore("delete", d.relation_id),
            Message::Truncate(t) => {
                for id in t.relation_ids {
                    self.ignore("truncate", id);
                }
            }
            Message::Message(m) => {
                // PostgreSQL skips a non-transactional message after a restart only if it
                // starts below the confirmed LSN: confirm one byte into it (still received).
                // Later commits and idle keepalives usually pass it anyway; this covers a stop
                // in between.
                let past = Lsn(m.lsn.0 + 1);
                let mapped = match crate::outbox::map_message(&self.cfg.outbox, &m) {
                    Err(e) => {
                        let raw = Poisoned {
                            topic: String::new(),
                            key: None,
                            payload: Some(m.content.clone()),
                            headers: Vec::new(),
                            event_id: Bytes::from(format!("lsn-{}", m.lsn)),
                            lsn: m.lsn,
                            class: "",
                            message: String::new(),
                        };
                        if m.transactional && self.tx.is_none() {
                            return Err(protocol("transactional message outside a transaction"));
                        }
                        return self.unmapped(e, raw, past);
                    }
                    Ok(mapped) => mapped,
                };
                let Some(rec) = mapped else {
                    trace!(prefix = %m.prefix, lsn = %m.lsn, "logical decoding message ignored");
                    if !m.transactional {
                        // Heartbeats land here: nothing to deliver, so the slot may pass them.
                        self.wm.passed(past);
                    }
                    return Ok(Step::Continue);
                };
                if m.transactional && self.tx.is_none() {
                    return Err(protocol("transactional message outside a transaction"));
                }
                return self.event(rec, past);
            }
            Message::Origin(_) | Message::Type(_) => {}
        }
        Ok(Step::Continue)
    }

    /// An event of the open transaction or, outside one, a standalone event ending at
    /// `standalone_end`: counted in the watermark and produced, or, at-most-once, held until
    /// its position is confirmed.
    pub(super) fn event(
        &mut self,
        mut rec: OutboxRecord,
        standalone_end: Lsn,
    ) -> Result<Step, StreamError> {
        self.meters.decoded.increment(1);
        let counted = !self.plan.confirms_first();
        if let Some(k) = &mut self.batches {
            let delivered = match self.tx {
                Some(_) => self.skip_tx,
                None => standalone_end <= k.delivered_through,
            };
            if delivered {
                if self.tx.is_none() {
                    self.wm.passed(standalone_end);
                }
                self.ignored += 1;
                return Ok(Step::Continue);
            }
            let (tag, _) = k.join(self.wm.confirmed());
            rec.headers.push((TXN_HEADER.to_owned(), tag));
            if self.tx.is_none() {
                k.last_end = standalone_end;
            }
        }
        match self.tx {
            Some((id, commit_time)) => {
                let tx = if counted {
                    self.wm.add_event(id)?;
                    Some(id)
                } else {
                    None
                };
                if !counted {
                    // Produced once its Commit has been confirmed, so a crash can't resend it.
                    self.held
                        .push(rec, commit_time)
                        .map_err(StreamError::Hold)?;
                    return Ok(Step::Continue);
                }
                let (rec, ticket) = self.ticketed(rec, tx, commit_time);
                Ok(Step::Produce(rec, ticket))
            }
            None if counted => {
                let id = self.wm.standalone(standalone_end)?;
                let (rec, ticket) = self.ticketed(rec, Some(id), crate::pgtime::now());
                Ok(Step::Produce(rec, ticket))
            }
            None => {
                self.wm.passed(standalone_end);
                let now = crate::pgtime::now();
                self.held.push(rec, now).map_err(StreamError::Hold)?;
                Ok(Step::Confirm)
            }
        }
    }

    /// A record with the ticket its delivery report will bring back.
    pub(super) fn ticketed(
        &mut self,
        rec: OutboxRecord,
        tx: Option<TxId>,
        commit_time: i64,
    ) -> (OutboxRecord, Ticket) {
        let ticket = Ticket {
            tx,
            bytes: rec.size(),
            commit_time,
            // A copy, not a slice: a slice would keep the whole WAL message (payload and all)
            // alive until the outcome, on top of the destination's own copy.
            event_id: Bytes::copy_from_slice(&rec.event_id),
            topic: self.meters.topic_id(&rec.topic),
            lsn: rec.lsn,
            dead_letter: rec.topic == self.cfg.dead_letter_topic,
            partition: rec.partition,
        };
        (rec, ticket)
    }

    /// A Relation message: which configured outbox it is, by OID (following renames), by
    /// name, or, for a relation created since the start, by the partition it belongs to.
    async fn on_relation(&mut self, r: pgoutput::Relation) -> Result<(), StreamError> {
        if self.mapper.table_of(&r).is_none() {
            let oid = r.id;
            let lookup = self
                .catalog
                .with(async |c| crate::postgres::catalog::ancestors(c, oid).await);
            let ancestors = tokio::time::timeout(self.cfg.replication_timeout, lookup)
                .await
                .unwrap_or_else(|_| Err("timed out".into()))
                .map_err(|error| StreamError::Catalog { oid, error })?;
            let known = ancestors.iter().find_map(|a| self.mapper.table_of_oid(*a));
            if let Some(table) = known {
                self.mapper.learn_oid(oid, table);
            }
        }
        let table = self.mapper.table_of(&r);
        let name = format!("{}.{}", r.namespace, r.name);
        if let Some(t) = table.and_then(|t| self.mapper.tables().get(t)) {
            let configured = t.table.to_string();
            if t.table.schema != r.namespace || t.table.name != r.name {
                info!(relation = %name, outbox = %configured, id = r.id,
                    "relation is the outbox table (renamed, or a partition of it)");
            }
            if let Err(e) = self.mapper.on_relation(&r) {
                warn!(error = %e, relation = %name,
                    "outbox table no longer fits the configuration: each insert into it is a poison event (on_poison)");
            }
        } else {
            self.mapper.on_relation(&r)?;
        }
        debug!(id = r.id, relation = %name, outbox = table.is_some(), "relation");
        self.relations.update(r);
        Ok(())
    }

    /// An UPDATE: ignored unless on an outbox table, where `on_update` decides.
    fn on_update(&mut self, relation_id: u32, lsn: Lsn) -> Result<(), StreamError> {
        let Some(t) = self.mapper.table(relation_id) else {
            self.ignore("update", relation_id);
            return Ok(());
        };
        let table = t.table.to_string();
        match self.cfg.on_update {
            UpdatePolicy::Fatal => return Err(StreamError::OutboxUpdate { table, lsn }),
            UpdatePolicy::Warn => {
                warn!(%table, %lsn, "outbox row updated: ignored (outbox rows are immutable events)")
            }
            UpdatePolicy::Error => {
                error!(%table, %lsn, "outbox row updated: ignored (outbox rows are immutable events)")
            }
        }
        self.ignored += 1;
        metrics::counter!(m::OUTBOX_UPDATES, "table" => table).increment(1);
        Ok(())
    }

    /// Changes other than outbox inserts are counted and skipped.
    fn ignore(&mut self, what: &str, relation_id: u32) {
        self.ignored += 1;
        if let Some(r) = self.relations.get(relation_id) {
            debug!(change = what, relation = %format_args!("{}.{}", r.namespace, r.name),
                "change ignored");
        }
    }
}
