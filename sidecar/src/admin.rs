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

/// Adds `/policy`: the bundle in force (hash, load time) and the last error, as JSON.
pub fn with_policy_status(
    router: Router,
    store: Option<Arc<crate::policy::PolicyStore>>,
) -> Router {
    router.route(
        "/policy",
        get(move || {
            let status = store.as_ref().map(|s| s.status());
            async move {
                match status {
                    Some(st) => axum::Json(serde_json::json!(st)),
                    None => axum::Json(serde_json::json!({
                        "dir": null,
                        "hash": null,
                        "message": "no policy directory configured; only the static tool lists apply",
                    })),
                }
            }
        }),
    )
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

/// Adds `GET /.well-known/jwks.json`: the public key of the tokens the sidecar mints for its
/// server (identity passthrough `jwt`), when it mints any.
pub fn with_minted_jwks(router: Router, jwks: Option<bytes::Bytes>) -> Router {
    let Some(jwks) = jwks else { return router };
    router.route(
        "/.well-known/jwks.json",
        get(move || {
            let jwks = jwks.clone();
            async move { ([(header::CONTENT_TYPE, "application/json")], jwks) }
        }),
    )
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
