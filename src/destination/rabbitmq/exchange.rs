//! What `open`, `check` and `setup` ask of the exchange.

use lapin::options::ExchangeDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Connection, ExchangeKind};

use crate::config::RabbitConfig;
use crate::destination::DestinationError;

/// The command that declares the exchange, for messages.
pub fn declare_command(cfg: &RabbitConfig) -> String {
    format!(
        "pgoutbox setup --create-rabbitmq-exchange (or: rabbitmqadmin declare exchange name={} type=topic durable=true)",
        cfg.exchange
    )
}

/// Whether the exchange exists (a passive declare, on a channel of its own: a missing
/// exchange closes the channel it was asked on).
pub async fn exists(connection: &Connection, cfg: &RabbitConfig) -> Result<bool, DestinationError> {
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| DestinationError::Unavailable(format!("RabbitMQ: {e}")))?;
    let passive = ExchangeDeclareOptions {
        passive: true,
        ..ExchangeDeclareOptions::default()
    };
    let found = channel
        .exchange_declare(
            cfg.exchange.as_str().into(),
            ExchangeKind::Topic,
            passive,
            FieldTable::default(),
        )
        .await;
    match found {
        Ok(()) => {
            let _ = channel.close(200, "".into()).await;
            Ok(true)
        }
        Err(e) => {
            use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
            match e.kind() {
                lapin::ErrorKind::ProtocolError(p) => match p.kind() {
                    AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND) => Ok(false),
                    AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED) => Err(DestinationError::Config(format!(
                        "RabbitMQ: {e}; the user may not use exchange {:?} (`rabbitmqctl set_permissions`)",
                        cfg.exchange
                    ))),
                    _ => Err(DestinationError::Unavailable(format!("RabbitMQ: {e}"))),
                },
                _ => Err(DestinationError::Unavailable(format!("RabbitMQ: {e}"))),
            }
        }
    }
}

/// Fails with the fix when the exchange is missing.
pub async fn require(connection: &Connection, cfg: &RabbitConfig) -> Result<(), DestinationError> {
    match exists(connection, cfg).await? {
        true => Ok(()),
        false => Err(DestinationError::Config(format!(
            "RabbitMQ exchange {:?} does not exist in this vhost: {}",
            cfg.exchange,
            declare_command(cfg)
        ))),
    }
}

/// Declares the exchange: durable, of type topic. Idempotent; an existing exchange of another
/// type is an error (RabbitMQ refuses to redeclare it).
pub async fn declare(connection: &Connection, cfg: &RabbitConfig) -> Result<(), DestinationError> {
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| DestinationError::Unavailable(format!("RabbitMQ: {e}")))?;
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(
            cfg.exchange.as_str().into(),
            ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await
        .map_err(|e| {
            DestinationError::Config(format!(
                "RabbitMQ: declaring exchange {:?}: {e}",
                cfg.exchange
            ))
        })?;
    let _ = channel.close(200, "".into()).await;
    Ok(())
}
