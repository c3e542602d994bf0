//! The Kafka topics pgoutbox writes to: which ones it needs, which the cluster lacks, and
//! creating them (`setup --create-kafka-topics`). Brokers that create no topics by
//! themselves (tansu; Kafka with `auto.create.topics.enable=false`) need them made first.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

use super::config::{KafkaConfig, Librdkafka};
use crate::config::Config;
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
    if cfg.plan().transactional() {
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

/// What exactly-once finds of its offsets topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OffsetsTopic {
    /// It exists and is compacted.
    Ready,
    /// The cluster does not have it.
    Missing,
    /// Its `cleanup.policy` is not `compact`: retention would delete the record a restart
    /// resumes after, and the start-up read would grow with every transaction.
    NotCompacted(String),
    /// It exists; the brokers do not describe topic configs (librdkafka's mock cluster).
    Unverified,
}

impl OffsetsTopic {
    /// From a `cleanup.policy` value (`compact`, `delete`, `compact,delete`).
    pub fn from_policy(policy: &str) -> OffsetsTopic {
        let parts: Vec<&str> = policy.split(',').map(str::trim).collect();
        match parts.as_slice() {
            ["compact"] => OffsetsTopic::Ready,
            _ => OffsetsTopic::NotCompacted(policy.to_owned()),
        }
    }

    /// One line naming the problem and its fix; `None` when there is none.
    pub fn problem(&self, topic: &str) -> Option<String> {
        match self {
            OffsetsTopic::Ready | OffsetsTopic::Unverified => None,
            OffsetsTopic::Missing => Some(format!(
                "the exactly-once offsets topic {topic} does not exist: run `pgoutbox setup --create-kafka-topics` (it is created compacted, 1 partition)"
            )),
            OffsetsTopic::NotCompacted(p) => Some(format!(
                "the exactly-once offsets topic {topic} has cleanup.policy={p}, not compact: retention would delete the record a restart resumes after. Set it with `kafka-configs --alter --entity-type topics --entity-name {topic} --add-config cleanup.policy=compact`"
            )),
        }
    }
}

/// Whether the offsets topic `name` exists and is compacted; `describe`: the brokers offer
/// DescribeConfigs (librdkafka's mock does not, and never answers it).
pub async fn offsets_topic(
    cfg: &KafkaConfig,
    name: &str,
    describe: bool,
    timeout: Duration,
) -> Result<OffsetsTopic, String> {
    let (kcfg, names) = (cfg.clone(), vec![name.to_owned()]);
    let absent = tokio::task::spawn_blocking(move || missing(&kcfg, &names, timeout))
        .await
        .map_err(|e| e.to_string())??;
    if !absent.is_empty() {
        return Ok(OffsetsTopic::Missing);
    }
    if !describe {
        return Ok(OffsetsTopic::Unverified);
    }
    let admin: AdminClient<DefaultClientContext> = cfg
        .client_config()
        .map_err(|e| e.to_string())?
        .create()
        .map_err(|e| e.to_string())?;
    let described = admin
        .describe_configs(
            &[ResourceSpecifier::Topic(name)],
            &AdminOptions::new().request_timeout(Some(timeout)),
        )
        .await;
    let resource = match described {
        Err(KafkaError::AdminOp(RDKafkaErrorCode::UnsupportedFeature))
        | Err(KafkaError::AdminOp(RDKafkaErrorCode::InvalidRequest)) => {
            return Ok(OffsetsTopic::Unverified)
        }
        Err(e) => return Err(format!("describing Kafka topic {name}: {e}")),
        Ok(mut r) => match r.pop() {
            Some(Ok(resource)) => resource,
            Some(Err(RDKafkaErrorCode::UnsupportedFeature)) | None => {
                return Ok(OffsetsTopic::Unverified)
            }
            Some(Err(code)) => return Err(format!("describing Kafka topic {name}: {code}")),
        },
    };
    Ok(
        match resource
            .get("cleanup.policy")
            .and_then(|e| e.value.as_deref())
        {
            Some(policy) => OffsetsTopic::from_policy(policy),
            None => OffsetsTopic::Unverified,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_compact_policy_keeps_the_offsets_record() {
        assert_eq!(OffsetsTopic::from_policy("compact"), OffsetsTopic::Ready);
        assert_eq!(OffsetsTopic::from_policy(" compact "), OffsetsTopic::Ready);
        for p in ["delete", "compact,delete", "delete, compact", ""] {
            let t = OffsetsTopic::from_policy(p);
            assert_eq!(t, OffsetsTopic::NotCompacted(p.to_owned()));
            assert!(t.problem("o").unwrap().contains("cleanup.policy=compact"));
        }
        assert_eq!(OffsetsTopic::Unverified.problem("o"), None);
        assert!(OffsetsTopic::Missing
            .problem("o")
            .unwrap()
            .contains("pgoutbox setup --create-kafka-topics"));
    }
}
