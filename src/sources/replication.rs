//! The replication source: connect, check, create or find the slot, start streaming, and
//! run the pipeline's session into the configured destination until shutdown or an error.

use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::destination::Destination;
use crate::lsn::Lsn;
use crate::pipeline::session::{Session, Ticket};
use crate::pipeline::{AckedEvent, Batches, Health, Progress, StreamError};
use crate::postgres::preflight::{self, PreflightError};
use crate::replication::{ConnectConfig, ReplicationClient, ReplicationError};
use tokio_util::task::AbortOnDropHandle;

/// SQLSTATE undefined_object: START_REPLICATION on a slot that is gone.
const UNDEFINED_OBJECT: &str = "42704";
/// SQLSTATE object_in_use: the slot is streamed by another process.
const OBJECT_IN_USE: &str = "55006";

/// Runs one session into the configured destination. `slot_known` survives reconnects: a
/// slot that existed once and is gone now means WAL was lost, which must not be papered over
/// by creating a new one.
pub async fn run(
    cfg: &Config,
    slot_known: &mut bool,
    shutdown: &CancellationToken,
    observer: Option<&mpsc::UnboundedSender<AckedEvent>>,
    progress: &mut Progress,
    health: &Health,
) -> Result<(), StreamError> {
    crate::destination::with_destination!(cfg.destination, Ticket, D => {
        run_to::<D>(cfg, slot_known, shutdown, observer, progress, health).await
    })
}

async fn run_to<D: Destination<Ticket>>(
    cfg: &Config,
    slot_known: &mut bool,
    shutdown: &CancellationToken,
    observer: Option<&mpsc::UnboundedSender<AckedEvent>>,
    progress: &mut Progress,
    health: &Health,
) -> Result<(), StreamError> {
    let pg_cfg = cfg.pg_config()?;
    // Every request/response step is bounded like the stream itself: a link that stalls
    // mid-handshake must not hang pgoutbox (CREATE_REPLICATION_SLOT excepted: it rightly
    // waits for open transactions to finish).
    let limit = cfg.replication_timeout;
    let outboxes = cfg.outboxes();
    let (slot, catalog) = {
        let (client, conn) = crate::postgres::connection::connect(cfg).await?;
        let checked = within(limit, "the setup checks", async {
            preflight::sequence::run(&client, cfg, preflight::sequence::Mode::Start, |_, _| {})
                .await?;
            let slot = preflight::slot_state(&client, &cfg.slot).await?;
            let risk = preflight::unsynced_standbys(&client, &cfg.slot, cfg.failover).await?;
            failover_risk(cfg, risk, health)?;
            Ok((slot, Catalog::read(&client, cfg, &outboxes).await?))
        })
        .await;
        drop(client);
        conn.abort();
        checked?
    };

    let connect = ConnectConfig::from_pg_config(&pg_cfg)?.with_tls(&cfg.tls_settings()?)?;
    let mut repl = ReplicationClient::connect(&connect).await?;
    let sys = within(limit, "IDENTIFY_SYSTEM", async {
        Ok(repl.identify_system().await?)
    })
    .await?;
    debug!(system_id = %sys.system_id, timeline = sys.timeline, xlog_pos = %sys.xlog_pos,
        "identified system");
    match cfg.tableless_on(repl.server_version_num().unwrap_or(0)) {
        Ok(None) => {}
        Ok(Some(warning)) => warn!("{warning}"),
        Err(why) => return Err(StreamError::NoMessages(why)),
    }
    let start = match slot {
        Some(s) => {
            if let Some(pid) = s.active_pid {
                warn!(slot = %cfg.slot, pid, "slot is in use by another process");
            }
            *slot_known = true;
            s.confirmed_flush.unwrap_or(Lsn::ZERO)
        }
        None if *slot_known => return Err(StreamError::SlotLost(cfg.slot.clone())),
        None => {
            if let Some(r) = &catalog.record {
                return Err(PreflightError::SlotMissing {
                    slot: cfg.slot.clone(),
                    confirmed: r.confirmed,
                    at: r.updated_at.clone(),
                }
                .into());
            }
            if !cfg.create_slot {
                return Err(PreflightError::NoSlot(cfg.slot.clone()).into());
            }
            let lsn = repl.create_slot(&cfg.slot, cfg.failover).await?;
            *slot_known = true;
            info!(slot = %cfg.slot, consistent_point = %lsn, "created replication slot");
            record_slot(cfg, lsn, limit).await;
            lsn
        }
    };

    let (ack_tx, mut acks) = mpsc::unbounded_channel();
    let dest = D::open(cfg, ack_tx).await?;
    // Transactional exactly-once: fence older writers first, then learn what they committed.
    let batches = match cfg.plan().transactional() {
        true => Some(exactly_once_start(cfg, &dest, limit).await?),
        false => None,
    };
    let started = tokio::time::timeout(
        limit,
        repl.start_replication(&cfg.slot, start, &cfg.publication),
    )
    .await
    .unwrap_or(Err(ReplicationError::NoAnswer {
        what: "START_REPLICATION",
        after: limit,
    }));
    let mut stream = match started {
        Err(e) if e.sqlstate() == Some(UNDEFINED_OBJECT) && *slot_known => {
            return Err(StreamError::SlotLost(cfg.slot.clone()))
        }
        Err(ReplicationError::Server(db)) if db.code == OBJECT_IN_USE => {
            // "replication slot "x" is active for PID 123": name the holder.
            let pid = db.message.rsplit(' ').next().unwrap_or("?").to_owned();
            return Err(StreamError::SlotBusy {
                slot: cfg.slot.clone(),
                pid,
            });
        }
        other => other?,
    };
    info!(slot = %cfg.slot, start = %start, "streaming");
    health.set_streaming(true);
    let _not_streaming = OnDrop(|| health.set_streaming(false));
    // Aborted when the session ends, whichever way.
    let _heartbeat = cfg
        .heartbeat_interval
        .map(|every| AbortOnDropHandle::new(tokio::spawn(heartbeat(cfg.clone(), every))));
    progress.streaming_since = Some(Instant::now());
    progress.confirmed = start;

    // The guard reports a publication change that silences the outbox; aborted with us.
    let (guard_tx, guard) = mpsc::channel(1);
    let _guard = AbortOnDropHandle::new(tokio::spawn(super::guard::run(
        cfg.clone(),
        catalog.baseline.clone(),
        catalog.since,
        guard_tx,
    )));
    let mut session =
        Session::new(cfg, start, D::NAME, observer, batches, guard).with_health(health);
    health.set_blocked(D::NAME, None);
    for (table, oids) in catalog.oids.iter().enumerate() {
        for oid in oids {
            session.learn_oid(*oid, table);
        }
    }
    let mut result = session
        .event_loop(&mut stream, &dest, &mut acks, shutdown, progress)
        .await;
    if let (Err(_), Some(message)) = (&result, dest.fenced()) {
        // Another instance owns the writer's identity: say that, and stop for good.
        result = Err(StreamError::Fenced(message));
    }
    if let Err(StreamError::Replication(ReplicationError::Server(db))) = &result {
        // pgoutput names the publication it cannot find in the catalog of that WAL position.
        if db.code == UNDEFINED_OBJECT && db.message.contains("publication") {
            result = Err(StreamError::Undecodable {
                message: db.message.clone(),
            });
        }
    }
    if let Err(e) = &result {
        // At-most-once: what was confirmed must still be delivered by this process.
        session.settle(&dest, &mut acks, shutdown).await;
        // Nothing unacked is confirmed (the watermark holds it); drop what is queued and
        // still report how far we got, so the restart resends as little as possible.
        dest.purge();
        if !matches!(e, StreamError::Replication(_)) {
            session.report(&mut stream).await;
        }
    }
    if result.is_ok() {
        // A graceful stop: the state record says how far, for whatever happens meanwhile.
        record_slot(cfg, session.flushable(), limit).await;
    }
    dest.close().await;
    result
}

/// Transactional exactly-once start: the destination fences older writers and says how far
/// their committed transactions reach; resent PostgreSQL transactions up to there are skipped.
async fn exactly_once_start<D: Destination<Ticket>>(
    cfg: &Config,
    dest: &D,
    limit: Duration,
) -> Result<Batches, StreamError> {
    let through = dest.resume(limit).await?;
    let run = format!(
        "{:x}{:06x}",
        std::process::id(),
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() & 0xff_ffff)
    );
    Ok(Batches::new(run, through, cfg.transaction_interval))
}

/// What the catalog said of the outbox tables when the session started.
struct Catalog {
    baseline: crate::postgres::catalog::Baseline,
    /// Per configured table, its OID and its partitions' OIDs.
    oids: Vec<Vec<u32>>,
    /// The WAL position when the baseline was read.
    since: Lsn,
    /// The state record of the slot, if one was written.
    record: Option<crate::postgres::state::Record>,
}

impl Catalog {
    async fn read(
        pg: &tokio_postgres::Client,
        cfg: &Config,
        outboxes: &[crate::outbox::OutboxConfig],
    ) -> Result<Catalog, StreamError> {
        let names: Vec<_> = outboxes.iter().map(|o| o.table.clone()).collect();
        let baseline =
            crate::postgres::catalog::Baseline::read(pg, &cfg.publication, &names).await?;
        let mut oids = Vec::new();
        for t in &names {
            oids.push(crate::postgres::catalog::table_oids(pg, t).await?);
        }
        let (since, drift) = crate::postgres::catalog::drift(pg, &baseline).await?;
        if let Some(drift) = drift {
            return Err(StreamError::Drift {
                drift,
                since,
                seen: since,
            });
        }
        let record = crate::postgres::state::read(pg, &cfg.slot).await?;
        Ok(Catalog {
            baseline,
            oids,
            since,
            record,
        })
    }
}

/// A failover slot that standbys may lag behind: refused, unless the operator accepted the
/// risk (`allow_unsynchronized_failover`), which is then said at every start and shown in
/// `/readyz` and a metric for as long as it lasts.
fn failover_risk(
    cfg: &Config,
    risk: Option<PreflightError>,
    health: &Health,
) -> Result<(), StreamError> {
    let gauge = metrics::gauge!(crate::metrics::FAILOVER_UNSYNCHRONIZED);
    match risk {
        None => {
            gauge.set(0.0);
            health.set_warning(None);
            Ok(())
        }
        Some(e) if !cfg.allow_unsynchronized_failover => Err(e.into()),
        Some(e) => {
            gauge.set(1.0);
            warn!("allow_unsynchronized_failover = true: {e}");
            health.set_warning(Some(
                "failover slot not synchronized to every standby (allow_unsynchronized_failover)"
                    .into(),
            ));
            Ok(())
        }
    }
}

/// Writes the state record of a slot (just created, or at a graceful stop); without it, a later failover that loses
/// the slot could not be told from a first start, so a failure is said loudly.
async fn record_slot(cfg: &Config, at: Lsn, limit: Duration) {
    let written = async {
        let (client, conn) = crate::postgres::connection::connect(cfg)
            .await
            .map_err(|e| e.to_string())?;
        let r = match crate::postgres::state::available(&client).await {
            Ok(true) => crate::postgres::state::write(&client, &cfg.slot, at)
                .await
                .map(|()| true),
            other => other,
        };
        drop(client);
        conn.abort();
        r.map_err(|e| crate::postgres::connection::describe(&e))
    };
    // Bounded like every other step: a link that stalls here must not hang the session.
    let written = tokio::time::timeout(limit, written)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {limit:?}")));
    match written {
        Ok(true) => {}
        Ok(false) => warn!(slot = %cfg.slot,
            "no usable table public.pgoutbox_state (sql/setup.sql creates it and grants it to role pgoutbox): if this slot is ever lost, for example in a failover, pgoutbox cannot tell that from a first start"),
        Err(e) => warn!(slot = %cfg.slot, error = %e,
            "cannot write the slot's state record (public.pgoutbox_state): a lost slot could not be told from a first start"),
    }
}

/// Writes a tiny non-transactional logical message every `every`, so the slot has WAL of its
/// own database to pass even when the application writes nothing. Errors are logged only: a
/// missed heartbeat delays slot advance, it never loses data.
async fn heartbeat(cfg: Config, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut pg = crate::postgres::connection::LazyClient::new(cfg);
    loop {
        tick.tick().await;
        let beat = pg
            .with(async |c| {
                c.batch_execute("SELECT pg_logical_emit_message(false, 'pgoutbox.heartbeat', '')")
                    .await
            })
            .await;
        if let Err(e) = beat {
            warn!(error = %e, "heartbeat failed");
        }
    }
}

/// Runs a closure when dropped.
struct OnDrop<F: FnMut()>(F);

impl<F: FnMut()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}

/// Runs `f`, failing with "connection presumed dead" if it takes longer than `limit`.
async fn within<T>(
    limit: Duration,
    what: &'static str,
    f: impl std::future::Future<Output = Result<T, StreamError>>,
) -> Result<T, StreamError> {
    tokio::time::timeout(limit, f)
        .await
        .unwrap_or(Err(StreamError::Replication(ReplicationError::NoAnswer {
            what,
            after: limit,
        })))
}
