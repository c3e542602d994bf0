//! `check` and `setup` for RabbitMQ: logged in at the URL, the exchange there;
//! `setup --create-rabbitmq-exchange` declares the exchange.

use super::exchange;
use crate::config::Config;
use crate::destination::admin::{Admin, CheckResult};
use crate::destination::DestinationError;

pub struct RabbitAdmin;

impl Admin for RabbitAdmin {
    async fn check(cfg: &Config) -> Vec<CheckResult> {
        let mut out = Vec::new();
        let url = crate::config::redact_url(&cfg.rabbitmq.url);
        let connection = match super::connect(&cfg.rabbitmq).await {
            Ok(c) => c,
            Err(e) => {
                out.push(CheckResult::failed(
                    "RabbitMQ reachable",
                    format!("{e}: check rabbitmq_url (amqp://user:password@host:port/vhost)"),
                ));
                return out;
            }
        };
        out.push(CheckResult::ok(
            "RabbitMQ reachable",
            format!("logged in at {url}"),
        ));
        let c = &cfg.rabbitmq;
        out.push(match exchange::exists(&connection, c).await {
            Ok(true) => CheckResult::ok(
                "RabbitMQ exchange",
                format!(
                    "{:?} exists; events with no queue bound for their routing key are returned, then handled per on_poison",
                    c.exchange
                ),
            ),
            Ok(false) => CheckResult::failed(
                "RabbitMQ exchange",
                format!(
                    "{:?} does not exist in this vhost; fix: {}",
                    c.exchange,
                    exchange::declare_command(c)
                ),
            ),
            Err(e) => CheckResult::failed("RabbitMQ exchange", e.to_string()),
        });
        let _ = connection.close(200, "check done".into()).await;
        out
    }

    async fn setup(cfg: &Config, _routes: &[String]) -> Result<Vec<String>, DestinationError> {
        let connection = super::connect(&cfg.rabbitmq).await?;
        exchange::declare(&connection, &cfg.rabbitmq).await?;
        let _ = connection.close(200, "setup done".into()).await;
        Ok(vec![format!(
            "✔ RabbitMQ exchange {} (topic, durable); bind your queues to it by routing key (outbox.event.#)",
            cfg.rabbitmq.exchange
        )])
    }
}
