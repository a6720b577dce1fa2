//! The admin port: liveness, the startup gate, readiness, Prometheus metrics, the policy status,
//! the tools, what the sidecar has seen for the controller's dashboard (`/access`, `/denies`,
//! [`crate::admin_view`]), and a `/shutdown` that only a process in the same pod (loopback) may
//! call, so a Job's main container can end its sidecar.
//!
//! Three health endpoints, three meanings, so no probe waits on something it cannot get:
//! * `/livez`: the process runs (liveness);
//! * `/startupz`: the sidecar can serve: its MCP listener is bound, the configuration is loaded
//!   and the policy state is known (a bundle in force, or none, which denies). It never looks at
//!   the MCP server, which the kubelet starts only after the sidecar has started: the postStart
//!   hook of the regular-container form and the native form's startupProbe wait on this;
//! * `/readyz`: the pod can take traffic: started, not draining, the MCP server accepts
//!   connections, and the server has answered the sidecar's own listing of its tools (with them,
//!   or a refusal), so the first call is decided on the server's definition of its tool (the
//!   readiness probe, which decides the Service's endpoints).
//!
//! `/tools` shows the tools the sidecar knows, each with its hash and pin, and its listing's
//! state.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::{Extension, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use tokio::sync::watch;

use mcp_guard_policy::catalog::ToolCatalog;

use crate::metrics::Metrics;
use crate::policy::PolicyStore;
use crate::tools::Listing;
use crate::upstream::Upstream;

/// What the admin endpoints look at.
#[derive(Clone)]
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub upstream: Upstream,
    /// The MCP listener's address, bound before the admin port answers.
    pub listen: SocketAddr,
    /// The policy store, when a policy directory is configured.
    pub policy: Option<Arc<PolicyStore>>,
    /// The server's tools as the sidecar knows them.
    pub catalog: Arc<ToolCatalog>,
    /// Where the sidecar's own listing of the server's tools stands.
    pub listing: watch::Receiver<Listing>,
    pub draining: Arc<AtomicBool>,
    pub shutdown: watch::Sender<bool>,
    /// The tools, callers and refusals seen, when the interception point records them.
    pub seen: Option<Arc<crate::admin_view::Seen>>,
}

/// The admin router; each connection adds its peer address as an extension.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .route("/startupz", get(startupz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/policy", get(policy))
        .route("/tools", get(tools))
        .route("/access", get(access))
        .route("/denies", get(denies))
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

/// The startup gate. The admin port is bound only after the MCP listener is bound and the policy
/// directory has been read once, so answering at all means the sidecar can serve; the body says
/// in which policy state.
async fn startupz(State(s): State<AdminState>) -> String {
    let policy = match &s.policy {
        None => "no policy directory: only the static tool lists apply".to_owned(),
        Some(store) => match store.status().hash {
            Some(hash) => format!("policy {hash} in force"),
            None => "no policy loaded yet: governed requests are denied until one loads".to_owned(),
        },
    };
    format!("ok: serving MCP on {}; {policy}\n", s.listen)
}

/// `/policy`: the bundle in force (hash, load time) and the last error, as JSON.
async fn policy(State(s): State<AdminState>) -> axum::Json<serde_json::Value> {
    axum::Json(match &s.policy {
        Some(store) => serde_json::json!(store.status()),
        None => serde_json::json!({
            "dir": null,
            "hash": null,
            "message": "no policy directory configured; only the static tool lists apply",
        }),
    })
}

/// `/tools`: the sidecar's listing state, how many pins of record it was given, and each tool
/// it knows with its hash, pin and whether it differs.
async fn tools(State(s): State<AdminState>) -> axum::Json<serde_json::Value> {
    let listing = s.listing.borrow().clone();
    axum::Json(serde_json::json!({
        "listing": listing,
        "pins_of_record": s.catalog.pins_of_record(),
        "tools": s.catalog.pins(),
    }))
}

/// `/access`: for each tool and each role set seen, whether the policy shows it and lets it be
/// called ([`crate::admin_view::access`]).
async fn access(State(s): State<AdminState>) -> axum::Json<serde_json::Value> {
    axum::Json(match &s.seen {
        Some(o) => crate::admin_view::access(o),
        None => serde_json::json!({"policyHash": null, "tools": []}),
    })
}

/// `/denies`: the last refusals and their reasons ([`crate::admin_view::denies`]).
async fn denies(State(s): State<AdminState>) -> axum::Json<serde_json::Value> {
    axum::Json(match &s.seen {
        Some(o) => crate::admin_view::denies(o),
        None => serde_json::json!({"denies": []}),
    })
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
    if let Listing::Pending { last_error } = &*s.listing.borrow() {
        let why = last_error.as_deref().unwrap_or("no answer yet");
        let msg = format!("listing the MCP server's tools ({why})\n");
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
