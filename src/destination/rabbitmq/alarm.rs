//! The broker blocking publishers (`connection.blocked`: a memory or disk alarm): watched on
//! the connection, said once when it starts and once when it ends, and handed to the publisher
//! (which pauses its confirm clocks meanwhile) and to readiness.

use futures_util::StreamExt;
use lapin::{Connection, Event};
use tokio::sync::watch;

/// Watches `connection`: the receiver holds the broker's reason while it blocks publishers.
pub fn watch(
    connection: &Connection,
) -> (watch::Receiver<Option<String>>, tokio::task::JoinHandle<()>) {
    let mut events = connection.events_listener();
    // Blocked already before the listener was there: the reason came with the event missed.
    let now = connection
        .status()
        .blocked()
        .then(|| "blocked since the connection opened".to_owned());
    if let Some(why) = &now {
        tracing::warn!(reason = %why, "RabbitMQ blocks publishers (a memory or disk alarm): publishing pauses until it lifts; nothing is lost");
    }
    let (tx, rx) = watch::channel(now);
    let task = tokio::spawn(async move {
        while let Some(event) = events.next().await {
            match event {
                Event::ConnectionBlocked(why) => {
                    tracing::warn!(reason = %why, "RabbitMQ blocks publishers (a memory or disk alarm): publishing pauses until it lifts; nothing is lost");
                    tx.send_replace(Some(why));
                }
                Event::ConnectionUnblocked if tx.send_replace(None).is_some() => {
                    tracing::info!("RabbitMQ takes publishes again: publishing resumes");
                }
                _ => {}
            }
        }
    });
    (rx, task)
}
