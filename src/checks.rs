//! `pgoutbox check`: every setup check, run to the end, each failure with its fix.

use std::time::Duration;

use crate::config::{Config, DestinationKind, Source};
use crate::destination::{kafka, nats};
use crate::postgres::preflight::{self, PreflightError};

/// One line of the report.
#[derive(Debug, Clone)]
pub struct CheckResult {
    pub name: &'static str,
    pub ok: bool,
    /// What was found, or (on failure) what is wrong and what to run.
    pub detail: String,
}

impl std::fmt::Display for CheckResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mark = if self.ok { '✔' } else { '✘' };
        write!(f, "{mark} {}: {}", self.name, self.detail)
    }
}

fn result(name: &'static str, r: Result<String, PreflightError>) -> CheckResult {
    match r {
        Ok(detail) => CheckResult {
            name,
            ok: true,
            detail,
        },
        Err(e) => CheckResult {
            name,
            ok: false,
            detail: e.to_string(),
        },
    }
}

/// Runs every check; PostgreSQL checks are skipped (and fail) if the server is unreachable.
pub async fn run(cfg: &Config) -> Vec<CheckResult> {
    let mut out = Vec::new();
    let pg = crate::postgres::connection::connect(cfg)
        .await
        .map_err(|e| e.to_string());
    match pg {
        Err(e) => out.push(CheckResult {
            name: "PostgreSQL reachable",
            ok: false,
            detail: format!(
                "{e}: check postgres_url, that the server listens there and that pg_hba.conf admits this client"
            ),
        }),
        Ok((client, conn)) => {
            out.push(CheckResult {
                name: "PostgreSQL reachable",
                ok: true,
                detail: server_version(&client).await,
            });
            postgres_checks(&client, cfg, &mut out).await;
            drop(client);
            let _ = conn.await;
        }
    }
    match cfg.destination {
        DestinationKind::Kafka => kafka_checks(cfg, &mut out).await,
        DestinationKind::Nats => nats_checks(cfg, &mut out).await,
        DestinationKind::RabbitMq => rabbitmq_checks(cfg, &mut out).await,
    }
    out
}

async fn kafka_checks(cfg: &Config, out: &mut Vec<CheckResult>) {
    let (kcfg, delivery) = (cfg.producer(), cfg.delivery());
    let probe =
        tokio::task::spawn_blocking(move || kafka::probe(&kcfg, delivery, Duration::from_secs(5)))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
    out.push(match probe {
        Ok(n) => CheckResult {
            name: "Kafka reachable",
            ok: true,
            detail: format!("{n} broker(s) at {}", cfg.kafka.brokers),
        },
        Err(e) => CheckResult {
            name: "Kafka reachable",
            ok: false,
            detail: format!(
                "{e}: check kafka_brokers and the Kafka properties (security.protocol, sasl.*)"
            ),
        },
    });
    let required = kafka::topics::required(cfg);
    if !required.is_empty() {
        let kcfg = cfg.producer();
        let names = required.clone();
        let missing = tokio::task::spawn_blocking(move || {
            kafka::topics::missing(&kcfg, &names, Duration::from_secs(5))
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
        out.push(match missing {
            Ok(m) if m.is_empty() => CheckResult {
                name: "Kafka topics",
                ok: true,
                detail: format!("{} exist", required.join(", ")),
            },
            Ok(m) => CheckResult {
                name: "Kafka topics",
                ok: false,
                detail: format!(
                    "{} missing (pgoutbox writes there before any event): run `pgoutbox setup --create-kafka-topics`",
                    m.join(", ")
                ),
            },
            Err(e) => CheckResult {
                name: "Kafka topics",
                ok: false,
                detail: e,
            },
        });
    }
    if delivery == crate::config::DeliveryMode::ExactlyOnce {
        use kafka::topics::{offsets_topic, OffsetsTopic};
        use kafka::transactions::{offered, refusal, Support};
        let wait = Duration::from_secs(5);
        let offered = offered(&cfg.kafka, wait).await;
        let (ok, detail) = match offered.as_ref().map(|o| o.transactions()) {
            Ok(Support::Offered) => (true, "the brokers offer InitProducerId, AddPartitionsToTxn and EndTxn".into()),
            Ok(Support::NotAsked) => (true, "! not asked over TLS: a broker without transactions stops pgoutbox at its first commit".into()),
            Ok(Support::Lacking { broker, missing }) => (false, refusal(&broker, &missing)),
            Err(e) => (false, e.clone()),
        };
        out.push(CheckResult {
            name: "Kafka transactions",
            ok,
            detail,
        });
        let topic = &cfg.offsets_topic;
        let describe = offered.as_ref().is_ok_and(|o| o.describe_configs());
        let line = match offsets_topic(&cfg.producer(), topic, describe, wait).await {
            Ok(OffsetsTopic::Missing) => None, // named by "Kafka topics"
            Ok(OffsetsTopic::Ready) => Some((true, format!("{topic} is compacted"))),
            Ok(OffsetsTopic::Unverified) => Some((true, format!("! {topic}: the brokers do not describe topic configs, so its cleanup.policy is not verified"))),
            Ok(other) => other.problem(topic).map(|p| (false, p)),
            Err(e) => Some((false, e)),
        };
        if let Some((ok, detail)) = line {
            out.push(CheckResult {
                name: "Kafka offsets topic",
                ok,
                detail,
            });
        }
    }
}

/// The server (reachable, credentials, JetStream), the stream, the subjects it stores and
/// its duplicate window.
async fn rabbitmq_checks(cfg: &Config, out: &mut Vec<CheckResult>) {
    use crate::destination::rabbitmq::{self, exchange};
    let url = crate::config::redact_url(&cfg.rabbitmq.url);
    let connection = match rabbitmq::connect(&cfg.rabbitmq).await {
        Ok(c) => c,
        Err(e) => {
            return out.push(CheckResult {
                name: "RabbitMQ reachable",
                ok: false,
                detail: format!("{e}: check rabbitmq_url (amqp://user:password@host:port/vhost)"),
            })
        }
    };
    out.push(CheckResult {
        name: "RabbitMQ reachable",
        ok: true,
        detail: format!("logged in at {url}"),
    });
    let c = &cfg.rabbitmq;
    out.push(match exchange::exists(&connection, c).await {
        Ok(true) => CheckResult {
            name: "RabbitMQ exchange",
            ok: true,
            detail: format!(
                "{:?} exists; events with no queue bound for their routing key are returned, then handled per on_poison",
                c.exchange
            ),
        },
        Ok(false) => CheckResult {
            name: "RabbitMQ exchange",
            ok: false,
            detail: format!(
                "{:?} does not exist in this vhost; fix: {}",
                c.exchange,
                exchange::declare_command(c)
            ),
        },
        Err(e) => CheckResult {
            name: "RabbitMQ exchange",
            ok: false,
            detail: e.to_string(),
        },
    });
    let _ = connection.close(200, "check done".into()).await;
}

async fn nats_checks(cfg: &Config, out: &mut Vec<CheckResult>) {
    let fail = |name, detail: String| CheckResult {
        name,
        ok: false,
        detail,
    };
    let client = match nats::connect(&cfg.nats).await {
        Ok(c) => c,
        Err(e) => {
            return out.push(fail(
                "NATS reachable",
                format!(
                "{e}: check nats_url (nats://user:password@host:port) and nats_credentials_file"
            ),
            ))
        }
    };
    let server = client.server_info();
    out.push(CheckResult {
        name: "NATS reachable",
        ok: true,
        detail: format!(
            "nats-server {} at {}, max_payload {} bytes",
            server.version,
            crate::config::redact_url(&cfg.nats.url),
            server.max_payload
        ),
    });
    let js = nats::jetstream(client, &cfg.nats);
    let info = match nats::stream::inspect(&js, &cfg.nats).await {
        Ok(i) => i,
        Err(e) => {
            return out.push(fail(
                "NATS stream",
                format!(
                    "{e} (needs JetStream: nats-server -js); fix: {}",
                    nats::stream::add_command(cfg)
                ),
            ))
        }
    };
    out.push(CheckResult {
        name: "NATS stream",
        ok: true,
        detail: format!(
            "{} stores {} ({} messages)",
            cfg.nats.stream,
            info.subjects.join(", "),
            info.messages
        ),
    });
    let needed = nats::stream::subjects(cfg);
    let missing: Vec<_> = needed
        .iter()
        .filter(|n| !info.subjects.iter().any(|s| subject_covers(s, n)))
        .cloned()
        .collect();
    out.push(match missing.is_empty() {
        true => CheckResult {
            name: "NATS subjects",
            ok: true,
            detail: format!("the stream takes {}", needed.join(", ")),
        },
        false => fail(
            "NATS subjects",
            format!(
                "stream {} does not store {}: events there would be unroutable; fix: nats stream edit {} --subjects '{}'",
                cfg.nats.stream,
                missing.join(", "),
                cfg.nats.stream,
                info.subjects.iter().chain(&missing).cloned().collect::<Vec<_>>().join(",")
            ),
        ),
    });
    out.push(match info.duplicate_window >= cfg.nats.duplicate_window {
        true => CheckResult {
            name: "NATS duplicate window",
            ok: true,
            detail: format!(
                "{:?}: a restart within it sends no event twice (Nats-Msg-Id)",
                info.duplicate_window
            ),
        },
        false => fail(
            "NATS duplicate window",
            nats::stream::short_window(&cfg.nats, info.duplicate_window),
        ),
    });
}

/// Whether NATS subject pattern `pattern` takes every subject `filter` matches.
pub fn subject_covers(pattern: &str, filter: &str) -> bool {
    let mut p = pattern.split('.');
    let mut f = filter.split('.');
    loop {
        match (p.next(), f.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(t)) if t != ">" => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

async fn server_version(pg: &tokio_postgres::Client) -> String {
    match pg
        .query_one("SELECT current_setting('server_version')", &[])
        .await
    {
        Ok(r) => format!("PostgreSQL {}", r.get::<_, String>(0)),
        Err(e) => e.to_string(),
    }
}

async fn postgres_checks(pg: &tokio_postgres::Client, cfg: &Config, out: &mut Vec<CheckResult>) {
    // A standby answers most checks misleadingly (no slot, read-only): one line says it all.
    let primary = preflight::primary(pg).await;
    let is_primary = primary.is_ok();
    out.push(result(
        "primary",
        primary.map(|()| "not in recovery".into()),
    ));
    if !is_primary {
        return;
    }
    if cfg.source == Source::Poll {
        return poll_checks(pg, cfg, out).await;
    }
    out.push(result(
        "wal_level",
        preflight::wal_level(pg).await.map(|()| "logical".into()),
    ));
    out.push(result(
        "replication headroom",
        preflight::headroom(pg, &cfg.slot)
            .await
            .map(|(slots, senders)| format!("{slots} slot(s) and {senders} WAL sender(s) free")),
    ));
    for (i, o) in cfg.outboxes().into_iter().enumerate() {
        let t = &o.table;
        let table = preflight::table_exists(pg, t)
            .await
            .map_err(|e| e.for_setting(i));
        let table_ok = table.is_ok();
        out.push(result(
            "outbox table",
            table.map(|()| format!("{t} exists")),
        ));
        if table_ok {
            out.push(result(
                "outbox columns",
                preflight::columns(pg, &o).await.map(|()| {
                    format!(
                        "id={}, route={}, key={}, type={}, payload={}",
                        o.id_column, o.route_column, o.key_column, o.type_column, o.payload_column
                    )
                }),
            ));
        }
        out.push(result(
            "publication",
            preflight::publication_covers(pg, &cfg.publication, t)
                .await
                .map(|()| format!("{} publishes inserts of {t}", cfg.publication)),
        ));
    }
    out.push(tableless(pg, cfg).await);
    out.push(result(
        "REPLICATION privilege",
        preflight::replication_role(pg)
            .await
            .map(|()| "the role may replicate".into()),
    ));
    let record = crate::postgres::state::read(pg, &cfg.slot)
        .await
        .ok()
        .flatten();
    out.push(result(
        "replication slot",
        preflight::slot_state(pg, &cfg.slot)
            .await
            .and_then(|s| match s {
                Some(s) => Ok(format!(
                    "{} at {}{}",
                    cfg.slot,
                    s.confirmed_flush.map_or("?".into(), |l| l.to_string()),
                    s.active_pid
                        .map_or(String::new(), |p| format!(", streaming to pid {p}"))
                )),
                None if record.is_some() => Err(PreflightError::SlotMissing {
                    slot: cfg.slot.clone(),
                    confirmed: record
                        .as_ref()
                        .map_or(crate::lsn::Lsn::ZERO, |r| r.confirmed),
                    at: record
                        .as_ref()
                        .map(|r| r.updated_at.clone())
                        .unwrap_or_default(),
                }),
                None if cfg.create_slot => Ok(format!(
                    "{} does not exist yet; it is created on first start",
                    cfg.slot
                )),
                None => Err(PreflightError::NoSlot(cfg.slot.clone())),
            }),
    ));
    out.push(failover(pg, cfg).await);
}

/// Whether the slot survives a failover: a failover slot (PostgreSQL 17+) and, on the
/// primary, `synchronized_standby_slots` naming the standbys' physical slots.
async fn failover(pg: &tokio_postgres::Client, cfg: &Config) -> CheckResult {
    let name = "failover";
    let row = pg
        .query_one(
            "SELECT current_setting('server_version_num')::int, pg_is_in_recovery(),
                    (SELECT (to_jsonb(s) ->> 'failover')::bool FROM pg_replication_slots s
                     WHERE slot_name = $1),
                    coalesce(current_setting('synchronized_standby_slots', true), ''),
                    (SELECT count(*) FROM pg_replication_slots WHERE slot_type = 'physical')",
            &[&cfg.slot],
        )
        .await;
    let row = match row {
        Ok(r) => r,
        Err(e) => {
            return CheckResult {
                name,
                ok: false,
                detail: crate::postgres::connection::describe(&e),
            }
        }
    };
    let risk = match preflight::unsynced_standbys(pg, &cfg.slot, cfg.failover).await {
        Ok(r) => r,
        Err(e) => {
            return CheckResult {
                name,
                ok: false,
                detail: e.to_string(),
            }
        }
    };
    let (version, standby): (i32, bool) = (row.get(0), row.get(1));
    let (slot_failover, synced_to, physical): (Option<bool>, String, i64) =
        (row.get(2), row.get(3), row.get(4));
    if let Some(e) = risk {
        return match cfg.allow_unsynchronized_failover {
            true => CheckResult {
                name,
                ok: true,
                detail: format!("! accepted by allow_unsynchronized_failover = true: {e}"),
            },
            false => CheckResult {
                name,
                ok: false,
                detail: e.to_string(),
            },
        };
    }
    let slot = &cfg.slot;
    let (ok, detail) = if (version as u32) < crate::replication::FAILOVER_SINCE {
        (true, format!("! no failover slots before PostgreSQL 17: a promoted standby has no copy of slot {slot}, and pgoutbox then stops rather than create a new one"))
    } else if standby {
        (
            true,
            format!(
                "this is a standby; slot {slot} synchronized here: {}",
                slot_failover.unwrap_or(false)
            ),
        )
    } else {
        match (slot_failover, cfg.failover) {
            (None, true) => (true, format!("slot {slot} will be created as a failover slot")),
            (_, false) => (true, format!("! failover = false: slot {slot} is not kept by standbys")),
            (Some(false), true) => (false, format!(
                "slot {slot} is not a failover slot, so standbys keep no copy of it: recreate it while nothing is written (pgoutbox creates failover slots), or set failover = false to accept that")),
            (Some(true), true) if synced_to.is_empty() && physical == 0 => (true, format!(
                "slot {slot} is a failover slot (no physical standby slot yet: name the standbys' slots in synchronized_standby_slots when you add them)")),
            (Some(true), true) => (true, format!(
                "slot {slot} is a failover slot; synchronized_standby_slots = {synced_to}")),
        }
    };
    CheckResult { name, ok, detail }
}

/// Whether the table-less outbox can work on this server (PostgreSQL 14+).
async fn tableless(pg: &tokio_postgres::Client, cfg: &Config) -> CheckResult {
    let name = "table-less outbox";
    let version = match pg
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
    {
        Ok(r) => r.get::<_, i32>(0) as u32,
        Err(e) => {
            return CheckResult {
                name,
                ok: false,
                detail: crate::postgres::connection::describe(&e),
            }
        }
    };
    let (ok, detail) = match cfg.tableless_on(version) {
        Ok(None) => match &cfg.outbox.message_prefix {
            Some(p) => (true, format!("pg_logical_emit_message with prefix {p:?}")),
            None => (true, "off (message_prefix is empty)".into()),
        },
        Ok(Some(warning)) => (true, format!("! {warning}")),
        Err(why) => (false, why),
    };
    CheckResult { name, ok, detail }
}

/// `source = poll` needs no replication: the table, its columns and the polling columns.
async fn poll_checks(pg: &tokio_postgres::Client, cfg: &Config, out: &mut Vec<CheckResult>) {
    let t = &cfg.outbox.table;
    let table = preflight::table_exists(pg, t).await;
    let table_ok = table.is_ok();
    out.push(result(
        "outbox table",
        table.map(|()| format!("{t} exists")),
    ));
    if !table_ok {
        return;
    }
    out.push(result(
        "outbox columns",
        preflight::columns(pg, &cfg.outbox)
            .await
            .map(|()| "the configured columns exist".into()),
    ));
    out.push(result(
        "polling columns",
        preflight::poll_columns(pg, t)
            .await
            .map(|()| "seq and status (sql/poll.sql)".into()),
    ));
}

#[cfg(test)]
mod tests {
    use super::subject_covers;

    #[test]
    fn subject_coverage() {
        assert!(subject_covers("outbox.>", "outbox.event.>"));
        assert!(subject_covers("outbox.event.>", "outbox.event.>"));
        assert!(subject_covers("outbox.*.x", "outbox.*.x"));
        assert!(subject_covers("a.*", "a.b"));
        assert!(!subject_covers("a.*", "a.>"));
        assert!(!subject_covers("outbox.event.*", "outbox.event.>"));
        assert!(!subject_covers("other.>", "outbox.event.>"));
        assert!(!subject_covers("a.b", "a.b.c"));
    }
}
