//! A destination's server list (a cluster's nodes): tried in order, the first that takes the
//! connection wins; when none does, every node's failure is said, and a refusal of the
//! settings (credentials, TLS, a missing vhost) wins over a node that cannot be reached.

use std::future::Future;

use crate::config::urls;
use crate::destination::DestinationError;

/// Connects with `one` to each URL of `list` in order until one succeeds. `title` names the
/// destination, `setting` the setting that holds the list.
pub(crate) async fn first_that_connects<C, F, Fut>(
    title: &str,
    setting: &str,
    list: &str,
    mut one: F,
) -> Result<C, DestinationError>
where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = Result<C, DestinationError>>,
{
    let servers = urls::split(list);
    if servers.is_empty() {
        return Err(DestinationError::Config(format!(
            "{setting} is empty: give one or more server URLs, comma-separated"
        )));
    }
    let mut failures: Vec<DestinationError> = Vec::new();
    for url in servers {
        match one(url.to_owned()).await {
            Ok(c) => {
                if !failures.is_empty() {
                    let before: Vec<String> = failures.iter().map(|e| e.to_string()).collect();
                    tracing::warn!(
                        "connected to {title} at {}; the servers listed before it failed: {}",
                        crate::config::redact_url(url),
                        before.join("; ")
                    );
                }
                return Ok(c);
            }
            Err(e) => failures.push(e),
        }
    }
    if failures.len() == 1 {
        return Err(failures.remove(0));
    }
    let config = failures.iter().any(DestinationError::is_fatal);
    let all: Vec<String> = failures.iter().map(|e| e.to_string()).collect();
    let message = format!(
        "no {title} server of {setting} took the connection: {}",
        all.join("; ")
    );
    Err(match config {
        true => DestinationError::Config(message),
        false => DestinationError::Unavailable(message),
    })
}
