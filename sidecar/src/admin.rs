//! The admin port: liveness, readiness, Prometheus metrics, and a `/shutdown` that only a process
//! in the same pod (loopback) may call, so a Job's main container can end its sidecar.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::{Extension, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::upstream::Upstream;

/// What the admin endpoints look at.
#[derive(Clone)]
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub upstream: Upstream,
    pub draining: Arc<AtomicBool>,
    pub shutdown: watch::Sender<bool>,
}

/// The admin router; each connection adds its peer address as an extension.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/shutdown", post(shutdown))
        .with_state(state)
}

async fn readyz(State(s): State<AdminState>) -> impl IntoResponse {
    if s.draining.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n".to_owned());
    }
    if !s.upstream.accepts_connections().await {
        let msg = format!(
            "MCP server at {} does not accept connections\n",
            s.upstream.authority()
        );
        return (StatusCode::SERVICE_UNAVAILABLE, msg);
    }
    (StatusCode::OK, "ok\n".to_owned())
}

async fn metrics(State(s): State<AdminState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
}

async fn shutdown(
    State(s): State<AdminState>,
    Extension(peer): Extension<SocketAddr>,
) -> impl IntoResponse {
    if !peer.ip().is_loopback() {
        tracing::warn!(%peer, "refused /shutdown from outside the pod");
        return (
            StatusCode::FORBIDDEN,
            "shutdown is only accepted from loopback\n",
        );
    }
    tracing::info!(%peer, "shutdown requested on the admin port");
    s.shutdown.send_replace(true);
    (StatusCode::OK, "shutting down\n")
}
