//! The integration tests, one binary: each module is one area, run against real throwaway
//! servers (PostgreSQL, librdkafka's mock cluster or tansu, nats-server, rabbitmq-server).
//! One binary links the crate once; `cargo nextest run -E 'test(/^streaming::/)'` runs one
//! area.

mod common;

mod admin;
mod alert_rules;
mod at_most_once;
mod auth;
mod bad_input;
mod big;
mod broker_faults;
mod broker_outage;
mod config;
mod crash_restart;
mod demo;
mod deploy;
mod docs;
mod drift;
mod exactly_once;
mod failover;
mod ha;
mod heartbeat;
mod idempotent_consumer;
mod kafka_link_faults;
mod kafka_tansu;
mod link_faults;
mod metrics;
mod nats;
mod nats_auth;
mod nats_cluster;
mod nats_tls;
mod operations;
mod poison;
mod poll;
mod preflight;
mod prometheus;
mod rabbitmq;
mod rabbitmq_cluster;
mod rabbitmq_consumer;
mod rabbitmq_tls;
mod reconnect;
mod routing;
mod schema_change;
mod secrets;
mod shutdown;
mod status_page;
mod streaming;
mod tableless;
mod tls;
