//! The Kafka topics pgoutbox writes to: which ones it needs, which the cluster lacks, and
//! creating them (`setup --create-kafka-topics`). Brokers that create no topics by
//! themselves (tansu; Kafka with `auto.create.topics.enable=false`) need them made first.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;

use super::config::{KafkaConfig, Librdkafka};
use crate::config::{Config, DeliveryMode};
use crate::outbox::PoisonPolicy;

/// A topic to make: its name, partitions and settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub config: Vec<(&'static str, &'static str)>,
    /// What pgoutbox uses it for, for the report.
    pub role: &'static str,
}

impl TopicSpec {
    /// The exactly-once offsets topic: one partition, compacted (one record per slot matters).
    pub fn offsets(name: &str) -> TopicSpec {
        TopicSpec {
            name: name.to_owned(),
            partitions: 1,
            config: vec![("cleanup.policy", "compact")],
            role: "exactly-once offsets",
        }
    }

    pub fn dead_letter(name: &str) -> TopicSpec {
        TopicSpec {
            name: name.to_owned(),
            partitions: 1,
            config: Vec::new(),
            role: "dead letters",
        }
    }

    /// A route's topic: three partitions, so keys spread while each keeps its order.
    pub fn route(name: &str) -> TopicSpec {
        TopicSpec {
            name: name.to_owned(),
            partitions: 3,
            config: Vec::new(),
            role: "events",
        }
    }
}

/// What `setup --create-kafka-topics` makes: the offsets and dead-letter topics, and the
/// topics of `routes` (route values known now) through every table's template; a template
/// without a placeholder names its one topic whatever the route.
pub fn wanted(cfg: &Config, routes: &[String]) -> Vec<TopicSpec> {
    let mut out = vec![
        TopicSpec::offsets(&cfg.offsets_topic),
        TopicSpec::dead_letter(&cfg.dead_letter_topic),
    ];
    for o in cfg.outboxes() {
        let fixed = o.topic_template.render("a") == o.topic_template.render("b");
        let names: Vec<String> = match fixed {
            true => vec![o.topic_template.render("")],
            false => routes.iter().map(|r| o.topic_template.render(r)).collect(),
        };
        for name in names {
            if !out.iter().any(|t| t.name == name) && crate::outbox::is_valid_topic(&name) {
                out.push(TopicSpec::route(&name));
            }
        }
    }
    out
}

/// The topics `run` needs before the first event: the offsets topic (exactly-once) and the
/// dead-letter topic (`on_poison = dead-letter`).
pub fn required(cfg: &Config) -> Vec<String> {
    let mut out = Vec::new();
    if cfg.delivery() == DeliveryMode::ExactlyOnce {
        out.push(cfg.offsets_topic.clone());
    }
    if cfg.on_poison == PoisonPolicy::DeadLetter {
        out.push(cfg.dead_letter_topic.clone());
    }
    out
}

/// What creating one topic came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    Created,
    Existed,
}

/// Creates `specs` (replication: the brokers' default); a topic that exists is left alone.
pub async fn create(
    cfg: &KafkaConfig,
    specs: &[TopicSpec],
    timeout: Duration,
) -> Result<Vec<(String, Created)>, String> {
    let admin: AdminClient<DefaultClientContext> = cfg
        .client_config()
        .map_err(|e| e.to_string())?
        .create()
        .map_err(|e| e.to_string())?;
    let topics: Vec<NewTopic<'_>> = specs
        .iter()
        .map(|s| {
            s.config.iter().fold(
                NewTopic::new(&s.name, s.partitions, TopicReplication::Fixed(-1)),
                |t, (k, v)| t.set(k, v),
            )
        })
        .collect();
    let results = admin
        .create_topics(
            &topics,
            &AdminOptions::new().operation_timeout(Some(timeout)),
        )
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for r in results {
        match r {
            Ok(name) => out.push((name, Created::Created)),
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => out.push((name, Created::Existed)),
            Err((name, code)) => return Err(format!("creating Kafka topic {name}: {code}")),
        }
    }
    Ok(out)
}

/// Which of `names` the cluster does not have (asked without creating any). Blocking
/// (librdkafka): call it from a blocking thread.
pub fn missing(
    cfg: &KafkaConfig,
    names: &[String],
    timeout: Duration,
) -> Result<Vec<String>, String> {
    let mut c = cfg.client_config().map_err(|e| e.to_string())?;
    c.set("allow.auto.create.topics", "false");
    let consumer: BaseConsumer = c.create().map_err(|e| e.to_string())?;
    let md = consumer
        .fetch_metadata(None, timeout)
        .map_err(|e| e.to_string())?;
    Ok(names
        .iter()
        .filter(|n| {
            !md.topics()
                .iter()
                .any(|t| t.name() == n.as_str() && t.error().is_none())
        })
        .cloned()
        .collect())
}
