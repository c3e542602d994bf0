//! `pgoutbox check`: the PostgreSQL preflight sequence run to the end
//! (`postgres/preflight/sequence.rs`), then the destination's checks
//! (`destination/admin.rs`); each failure with its fix.

use crate::config::Config;
use crate::postgres::preflight::sequence::{self, Found, Mode};

pub use crate::destination::admin::CheckResult;

/// Runs every check; PostgreSQL checks are skipped (and fail) if the server is unreachable.
pub async fn run(cfg: &Config) -> Vec<CheckResult> {
    let mut out = Vec::new();
    let pg = crate::postgres::connection::connect(cfg)
        .await
        .map_err(|e| e.to_string());
    match pg {
        Err(e) => out.push(CheckResult {
            name: "PostgreSQL reachable",
            ok: false,
            detail: format!(
                "{e}: check postgres_url, that the server listens there and that pg_hba.conf admits this client"
            ),
        }),
        Ok((client, conn)) => {
            out.push(CheckResult {
                name: "PostgreSQL reachable",
                ok: true,
                detail: server_version(&client).await,
            });
            // The preflight sequence, run to the end.
            let _ = sequence::run(&client, cfg, Mode::Check, |name, found| {
                out.push(match found {
                    Found::Passed(d) => CheckResult::ok(name, d),
                    Found::Noted(d) => CheckResult::ok(name, format!("! {d}")),
                    Found::Failed(e) => CheckResult::failed(name, e.to_string()),
                    Found::Refused(d) => CheckResult::failed(name, d),
                })
            })
            .await;
            drop(client);
            let _ = conn.await;
        }
    }
    out.extend(crate::destination::admin::check(cfg.destination, cfg).await);
    out
}

async fn server_version(pg: &tokio_postgres::Client) -> String {
    match pg
        .query_one("SELECT current_setting('server_version')", &[])
        .await
    {
        Ok(r) => format!("PostgreSQL {}", r.get::<_, String>(0)),
        Err(e) => e.to_string(),
    }
}
