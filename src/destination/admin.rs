//! What `pgoutbox check` and `pgoutbox setup` do for a destination: each destination
//! implements [`Admin`] in its own folder (`kafka/admin.rs`, `nats/admin.rs`,
//! `rabbitmq/admin.rs`), and [`check`] and [`setup`] pick it through `with_destination!`, the
//! one place a configured destination becomes a type.

use std::future::Future;

use super::{with_destination, Destination, DestinationError};
use crate::config::{Config, DestinationKind};

/// One line of the `check` report.
#[derive(Debug, Clone)]
pub struct CheckResult {
    pub name: &'static str,
    pub ok: bool,
    /// What was found, or (on failure) what is wrong and what to run.
    pub detail: String,
}

impl std::fmt::Display for CheckResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mark = if self.ok { '✔' } else { '✘' };
        write!(f, "{mark} {}: {}", self.name, self.detail)
    }
}

impl CheckResult {
    pub fn ok(name: &'static str, detail: String) -> Self {
        CheckResult {
            name,
            ok: true,
            detail,
        }
    }

    pub fn failed(name: &'static str, detail: String) -> Self {
        CheckResult {
            name,
            ok: false,
            detail,
        }
    }
}

/// A destination's `check` and `setup`.
pub trait Admin {
    /// The destination's lines of `pgoutbox check`: reachable with these credentials, and
    /// whatever it needs before the first event; each failure says what to run.
    fn check(cfg: &Config) -> impl Future<Output = Vec<CheckResult>> + Send;

    /// `pgoutbox setup --create-…`: makes what the destination needs before the first event
    /// (idempotent). `routes`: the route values in the outbox tables now. Returns the lines
    /// to print.
    fn setup(
        cfg: &Config,
        routes: &[String],
    ) -> impl Future<Output = Result<Vec<String>, DestinationError>> + Send;
}

/// `check`'s lines for the destination `kind`.
pub async fn check(kind: DestinationKind, cfg: &Config) -> Vec<CheckResult> {
    with_destination!(kind, (), D => <<D as Destination<()>>::Admin as Admin>::check(cfg).await)
}

/// `setup`'s work for the destination `kind`.
pub async fn setup(
    kind: DestinationKind,
    cfg: &Config,
    routes: &[String],
) -> Result<Vec<String>, DestinationError> {
    with_destination!(kind, (), D => <<D as Destination<()>>::Admin as Admin>::setup(cfg, routes).await)
}
