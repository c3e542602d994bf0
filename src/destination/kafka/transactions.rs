//! Whether the brokers offer what exactly-once needs (Kafka transactions): one ApiVersions
//! request to the first bootstrap broker that answers, before the transactional producer
//! starts and in `check`. A broker without them (tansu 0.6 has no EndTxn) would fail every
//! commit; pgoutbox refuses the mode instead of approximating it.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::api_versions::{self, DESCRIBE_CONFIGS, TRANSACTIONS};
use super::config::KafkaConfig;

/// The largest ApiVersions answer read (a real one is well under a kilobyte).
const MAX_ANSWER: usize = 1 << 20;

/// What the probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Support {
    /// The broker offers every transaction API.
    Offered,
    /// `broker` lacks these APIs.
    Lacking {
        broker: String,
        missing: Vec<&'static str>,
    },
    /// Not asked: the brokers speak TLS (`security.protocol` ssl or sasl_ssl); librdkafka's
    /// own check at the first commit then decides, and stops pgoutbox.
    NotAsked,
}

/// What the first bootstrap broker that answered offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Offered {
    Apis {
        broker: String,
        apis: Vec<api_versions::ApiRange>,
    },
    /// Not asked over TLS (see [`Support::NotAsked`]).
    NotAsked,
}

impl Offered {
    /// Whether the brokers offer Kafka transactions.
    pub fn transactions(&self) -> Support {
        match self {
            Offered::NotAsked => Support::NotAsked,
            Offered::Apis { broker, apis } => {
                let missing = api_versions::missing(apis, &TRANSACTIONS);
                match missing.is_empty() {
                    true => Support::Offered,
                    false => Support::Lacking {
                        broker: broker.clone(),
                        missing,
                    },
                }
            }
        }
    }

    /// Whether the brokers describe topic configs (assumed over TLS).
    pub fn describe_configs(&self) -> bool {
        match self {
            Offered::NotAsked => true,
            Offered::Apis { apis, .. } => {
                api_versions::missing(apis, &[DESCRIBE_CONFIGS]).is_empty()
            }
        }
    }
}

/// Asks the bootstrap brokers in turn; `Err` when none answers within `timeout` each.
pub async fn offered(cfg: &KafkaConfig, timeout: Duration) -> Result<Offered, String> {
    let protocol = cfg
        .properties
        .iter()
        .rev()
        .find(|(k, _)| k == "security.protocol")
        .map(|(_, v)| v.to_ascii_lowercase())
        .unwrap_or_default();
    if protocol.contains("ssl") {
        return Ok(Offered::NotAsked);
    }
    let mut errors = Vec::new();
    for broker in cfg
        .brokers
        .split(',')
        .map(str::trim)
        .filter(|b| !b.is_empty())
    {
        let broker = broker
            .trim_start_matches("PLAINTEXT://")
            .trim_start_matches("SASL_PLAINTEXT://");
        match tokio::time::timeout(timeout, ask(broker)).await {
            Ok(Ok(apis)) => {
                return Ok(Offered::Apis {
                    broker: broker.to_owned(),
                    apis,
                })
            }
            Ok(Err(e)) => errors.push(format!("{broker}: {e}")),
            Err(_) => errors.push(format!("{broker}: no answer within {timeout:?}")),
        }
    }
    Err(format!(
        "no Kafka broker answered ApiVersions ({})",
        errors.join("; ")
    ))
}

async fn ask(broker: &str) -> Result<Vec<api_versions::ApiRange>, String> {
    let mut s = TcpStream::connect(broker)
        .await
        .map_err(|e| e.to_string())?;
    s.write_all(&api_versions::request(1, "pgoutbox"))
        .await
        .map_err(|e| e.to_string())?;
    let len = s.read_i32().await.map_err(|e| e.to_string())?;
    let len = usize::try_from(len)
        .ok()
        .filter(|l| *l <= MAX_ANSWER)
        .ok_or_else(|| format!("an ApiVersions answer of {len} bytes"))?;
    let mut body = vec![0; len];
    s.read_exact(&mut body).await.map_err(|e| e.to_string())?;
    api_versions::parse(1, &body).map_err(|e| e.to_string())
}

/// The refusal for a broker lacking `missing`.
pub fn refusal(broker: &str, missing: &[&str]) -> String {
    format!(
        "delivery = exactly-once needs Kafka transactions, and broker {broker} does not offer {}: it could not commit or abort a transaction, so exactly-once cannot be kept there. Use delivery = at-least-once with an idempotent consumer (examples/idempotent_consumer), or a broker with transactions",
        missing.join(", ")
    )
}
