//! `check` and `setup` for Kafka: the brokers reachable with the producer's settings, the
//! topics pgoutbox writes to before any event, and with exactly-once the brokers'
//! transactions and the offsets topic; `setup --create-kafka-topics` makes the topics.

use std::time::Duration;

use super::topics::{self, Created, OffsetsTopic};
use super::transactions::{offered, refusal, Support};
use crate::config::Config;
use crate::destination::admin::{Admin, CheckResult};
use crate::destination::DestinationError;

/// How long each check waits for the brokers.
const WAIT: Duration = Duration::from_secs(5);

pub struct KafkaAdmin;

impl Admin for KafkaAdmin {
    async fn check(cfg: &Config) -> Vec<CheckResult> {
        let mut out = Vec::new();
        let (kcfg, plan) = (cfg.producer(), cfg.plan());
        let probe = tokio::task::spawn_blocking(move || super::probe(&kcfg, plan, WAIT))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        out.push(match probe {
            Ok(n) => CheckResult::ok(
                "Kafka reachable",
                format!("{n} broker(s) at {}", cfg.kafka.brokers),
            ),
            Err(e) => CheckResult::failed(
                "Kafka reachable",
                format!(
                    "{e}: check kafka_brokers and the Kafka properties (security.protocol, sasl.*)"
                ),
            ),
        });
        let required = topics::required(cfg);
        if !required.is_empty() {
            let (kcfg, names) = (cfg.producer(), required.clone());
            let missing = tokio::task::spawn_blocking(move || topics::missing(&kcfg, &names, WAIT))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r);
            out.push(match missing {
                Ok(m) if m.is_empty() => {
                    CheckResult::ok("Kafka topics", format!("{} exist", required.join(", ")))
                }
                Ok(m) => CheckResult::failed(
                    "Kafka topics",
                    format!(
                        "{} missing (pgoutbox writes there before any event): run `pgoutbox setup --create-kafka-topics`",
                        m.join(", ")
                    ),
                ),
                Err(e) => CheckResult::failed("Kafka topics", e),
            });
        }
        if plan.transactional() {
            exactly_once(cfg, &mut out).await;
        }
        out
    }

    async fn setup(cfg: &Config, routes: &[String]) -> Result<Vec<String>, DestinationError> {
        let specs = topics::wanted(cfg, routes);
        let done = topics::create(&cfg.producer(), &specs, Duration::from_secs(15))
            .await
            .map_err(DestinationError::Unavailable)?;
        Ok(done
            .into_iter()
            .map(|(name, how)| {
                let spec = specs.iter().find(|s| s.name == name);
                let settings = spec
                    .filter(|s| !s.config.is_empty())
                    .map_or(String::new(), |s| {
                        let kv: Vec<String> =
                            s.config.iter().map(|(k, v)| format!("{k}={v}")).collect();
                        format!(", {}", kv.join(", "))
                    });
                format!(
                    "✔ Kafka topic {name} ({}, {} partition(s){settings}): {}",
                    spec.map_or("", |s| s.role),
                    spec.map_or(0, |s| s.partitions),
                    match how {
                        Created::Created => "created",
                        Created::Existed => "exists, left as it is",
                    }
                )
            })
            .collect())
    }
}

/// Exactly-once: the brokers' transactions and the offsets topic. (The abort probe runs at
/// start only: here it would fence a running instance.)
async fn exactly_once(cfg: &Config, out: &mut Vec<CheckResult>) {
    let offered = offered(&cfg.kafka, WAIT).await;
    out.push(match offered.as_ref().map(|o| o.transactions()) {
        Ok(Support::Offered) => CheckResult::ok(
            "Kafka transactions",
            "the brokers offer InitProducerId, AddPartitionsToTxn and EndTxn".into(),
        ),
        Ok(Support::NotAsked) => CheckResult::ok(
            "Kafka transactions",
            "! not asked over TLS: a broker without transactions stops pgoutbox at its first commit".into(),
        ),
        Ok(Support::Lacking { broker, missing }) => {
            CheckResult::failed("Kafka transactions", refusal(&broker, &missing))
        }
        Err(e) => CheckResult::failed("Kafka transactions", e.clone()),
    });
    let topic = &cfg.offsets_topic;
    let describe = offered.as_ref().is_ok_and(|o| o.describe_configs());
    let line = match topics::offsets_topic(&cfg.producer(), topic, describe, WAIT).await {
        Ok(OffsetsTopic::Missing) => None, // named by "Kafka topics"
        Ok(OffsetsTopic::Ready) => Some(CheckResult::ok(
            "Kafka offsets topic",
            format!("{topic} is compacted"),
        )),
        Ok(OffsetsTopic::Unverified) => Some(CheckResult::ok(
            "Kafka offsets topic",
            format!("! {topic}: the brokers do not describe topic configs, so its cleanup.policy is not verified"),
        )),
        Ok(other) => other
            .problem(topic)
            .map(|p| CheckResult::failed("Kafka offsets topic", p)),
        Err(e) => Some(CheckResult::failed("Kafka offsets topic", e)),
    };
    out.extend(line);
}
