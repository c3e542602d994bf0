//! The HTTP listener: `/metrics` (Prometheus text), `/healthz` (alive), `/readyz` (streaming,
//! lag within bound), `/` and `/status.json` (the status page, `status_page.rs`). Every route
//! answers GET (and HEAD) only; anything else is 405.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing::info;

use pgoutbox::pipeline::Health;

use super::status_page::{Shown, StatusSource, PAGE};

#[derive(Clone)]
struct App {
    metrics: PrometheusHandle,
    health: Arc<Health>,
    max_lag_bytes: i64,
    status: Arc<StatusSource>,
}

/// Installs the Prometheus recorder and serves the endpoints on `addr` in the background.
/// Fails (so `run` exits) when the address cannot be bound.
pub async fn serve(
    addr: &str,
    health: Arc<Health>,
    max_lag_bytes: i64,
    shown: Arc<Mutex<Shown>>,
) -> anyhow::Result<()> {
    let metrics = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(pgoutbox::metrics::COMMIT_TO_ACK.into()),
            pgoutbox::metrics::COMMIT_TO_ACK_BUCKETS,
        )?
        .install_recorder()?;
    pgoutbox::metrics::describe();
    let addr: SocketAddr = addr
        .parse()
        .with_context(|| format!("metrics_addr {addr:?} is not host:port"))?;
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on {addr} (metrics_addr); choose another or set it empty to disable")
    })?;
    info!(addr = %listener.local_addr()?, "status page on /, metrics on /metrics, health on /healthz and /readyz");
    // Histograms keep raw samples until upkeep folds them in.
    let upkeep = metrics.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    let app = Router::new()
        .route("/metrics", get(render))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/", get(page))
        .route("/status.json", get(status))
        .with_state(App {
            status: Arc::new(StatusSource::new(
                metrics.clone(),
                health.clone(),
                max_lag_bytes,
                shown,
            )),
            metrics,
            health,
            max_lag_bytes,
        });
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics listener stopped");
        }
    });
    Ok(())
}

async fn page() -> impl IntoResponse {
    ([(header::CACHE_CONTROL, "no-store")], Html(PAGE))
}

async fn status(State(app): State<App>) -> impl IntoResponse {
    (
        [(header::CACHE_CONTROL, "no-store")],
        Json(app.status.json()),
    )
}

async fn render(State(app): State<App>) -> String {
    app.metrics.render()
}

async fn ready(State(app): State<App>) -> (StatusCode, String) {
    match app.health.readiness(app.max_lag_bytes) {
        Ok(role) => match app.health.warning() {
            Some(w) => (StatusCode::OK, format!("ready ({role}); warning: {w}\n")),
            None => (StatusCode::OK, format!("ready ({role})\n")),
        },
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}
