//! The Kafka-protocol broker a test runs against: librdkafka's mock cluster (default), or
//! tansu with durable storage when `PGOUTBOX_KAFKA_BROKER=tansu` (scripts/matrix.sh runs the
//! Kafka streaming, crash, outage and dead-letter tests so). Mock-only faults say so.

use pgoutbox::embedded::{EmbeddedError, TempKafka, TempTansu};

pub enum Broker {
    Mock(TempKafka),
    Tansu {
        server: TempTansu,
        bootstrap: String,
    },
}

impl Broker {
    /// The broker `PGOUTBOX_KAFKA_BROKER` names; the mock has `mock_brokers` brokers.
    pub fn start(mock_brokers: i32) -> Broker {
        match std::env::var("PGOUTBOX_KAFKA_BROKER").as_deref() {
            Ok("tansu") => Broker::tansu(),
            _ => Broker::Mock(TempKafka::start(mock_brokers).expect("start kafka mock")),
        }
    }

    /// tansu, whatever `PGOUTBOX_KAFKA_BROKER` says.
    pub fn tansu() -> Broker {
        let server = TempTansu::start().expect("start tansu (scripts/tansu-fetch.sh)");
        let bootstrap = server.bootstrap_servers();
        Broker::Tansu { server, bootstrap }
    }

    /// librdkafka's mock cluster shows aborted transactions to read_committed readers, so
    /// pgoutbox's exactly-once abort probe refuses it: its exactly-once tests tell pgoutbox
    /// to trust what it reads (`kafka_trust_read_committed`) and count committed Kafka
    /// transactions themselves.
    pub fn shows_aborted_transactions(&self) -> bool {
        matches!(self, Broker::Mock(_))
    }

    pub fn is_tansu(&self) -> bool {
        matches!(self, Broker::Tansu { .. })
    }

    pub fn bootstrap_servers(&self) -> &str {
        match self {
            Broker::Mock(k) => k.bootstrap_servers(),
            Broker::Tansu { bootstrap, .. } => bootstrap,
        }
    }

    pub fn create_topic(&self, name: &str, partitions: i32) -> Result<(), EmbeddedError> {
        match self {
            Broker::Mock(k) => k.create_topic(name, partitions),
            Broker::Tansu { server, .. } => server.create_topic(name, partitions, &[]),
        }
    }

    /// Down: every broker refuses connections (tansu: SIGKILLed); up: back with its data.
    pub fn set_brokers_up(&self, up: bool) -> Result<(), EmbeddedError> {
        match (self, up) {
            (Broker::Mock(k), _) => k.set_brokers_up(up),
            (Broker::Tansu { server, .. }, false) => server.kill(),
            (Broker::Tansu { server, .. }, true) => server.restart(),
        }
    }

    pub fn brokers(&self) -> i32 {
        match self {
            Broker::Mock(k) => k.brokers(),
            Broker::Tansu { .. } => 1,
        }
    }

    /// The mock cluster, for its fault injection; a test that needs it does not run on tansu.
    pub fn mock(&self) -> &TempKafka {
        match self {
            Broker::Mock(k) => k,
            Broker::Tansu { .. } => panic!("this test needs librdkafka's mock cluster"),
        }
    }

    pub fn inject_produce_errors(
        &self,
        errors: Vec<rdkafka::types::RDKafkaRespErr>,
    ) -> Result<(), EmbeddedError> {
        self.mock().inject_produce_errors(errors)
    }

    pub fn inject_errors(
        &self,
        api: rdkafka::types::RDKafkaApiKey,
        errors: Vec<rdkafka::types::RDKafkaRespErr>,
    ) -> Result<(), EmbeddedError> {
        self.mock().inject_errors(api, errors)
    }

    pub fn advertise(&self, id: i32, port: u16) -> Result<(), EmbeddedError> {
        self.mock().advertise(id, port)
    }
}
