//! Which source and which destination: the two choices that pick the code paths.

/// Where pgoutbox reads events from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Source {
    /// Logical replication (pgoutput): low latency, no load on the table (default).
    #[default]
    Replication,
    /// Polling the table (`sql/poll.sql`): for databases without logical replication.
    Poll,
}

impl std::str::FromStr for Source {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "replication" => Ok(Source::Replication),
            "poll" => Ok(Source::Poll),
            _ => Err(format!("source must be replication or poll, not {s:?}")),
        }
    }
}

/// Where events are delivered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DestinationKind {
    /// Apache Kafka (default), through librdkafka.
    #[default]
    Kafka,
    /// NATS JetStream.
    Nats,
    /// RabbitMQ (AMQP 0-9-1) with publisher confirms.
    RabbitMq,
}

impl DestinationKind {
    /// What this destination offers towards exactly-once ([`super::delivery::Plan`]).
    pub fn exactly_once(self) -> super::delivery::ExactlyOnceBy {
        use super::delivery::ExactlyOnceBy;
        match self {
            DestinationKind::Kafka => ExactlyOnceBy::Transactions,
            DestinationKind::Nats => ExactlyOnceBy::Deduplication,
            DestinationKind::RabbitMq => ExactlyOnceBy::Nothing,
        }
    }

    /// For people: `Kafka`, `NATS`, `RabbitMQ`.
    pub fn title(self) -> &'static str {
        match self {
            DestinationKind::Kafka => "Kafka",
            DestinationKind::Nats => "NATS",
            DestinationKind::RabbitMq => "RabbitMQ",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DestinationKind::Kafka => "kafka",
            DestinationKind::Nats => "nats",
            DestinationKind::RabbitMq => "rabbitmq",
        }
    }
}

impl std::str::FromStr for DestinationKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "kafka" => Ok(DestinationKind::Kafka),
            "nats" => Ok(DestinationKind::Nats),
            "rabbitmq" => Ok(DestinationKind::RabbitMq),
            _ => Err(format!(
                "destination must be kafka, nats or rabbitmq, not {s:?}"
            )),
        }
    }
}

impl std::fmt::Display for DestinationKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
