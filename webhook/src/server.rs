//! `mcp-guard-webhook serve`: the HTTPS admission server. `/mutate` answers `AdmissionReview` v1
//! (kube's types) with [`crate::inject::mutate`]'s decision, `/validate` refuses policy
//! ConfigMaps that do not compile ([`crate::validate`]); `/livez`, `/readyz` and `/metrics` sit
//! beside them on the same TLS port, with the registry API, `/fleet` and the dashboard
//! (`/dashboard/`, [`crate::dashboard`]). With `--controller` the policy-distribution controller
//! ([`crate::controller`]) runs in the same process.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use clap::Args;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use mcp_guard_common::duration::parse_duration;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::cluster::{self, ApprovedServers, ClusterError, Namespaces};
use crate::config::{InjectConfig, InjectorArgs, NativeSidecars};
use crate::inject::{self, Outcome, PodContext};
use crate::metrics::Metrics;
use crate::registry::{self, Verdict};
use crate::registry_api;
use crate::selection::SkipReason;
use crate::tls::{CertStore, TlsError};

/// Flags of `serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address of the HTTPS listener.
    #[arg(long, env = "MCP_GUARD_WEBHOOK_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,

    /// Serving certificate chain (PEM); reloaded when it changes.
    #[arg(
        long,
        env = "MCP_GUARD_WEBHOOK_TLS_CERT",
        default_value = "/etc/mcp-guard/tls/tls.crt"
    )]
    pub tls_cert: PathBuf,

    /// Serving private key (PEM); reloaded when it changes.
    #[arg(
        long,
        env = "MCP_GUARD_WEBHOOK_TLS_KEY",
        default_value = "/etc/mcp-guard/tls/tls.key"
    )]
    pub tls_key: PathBuf,

    /// How often the certificate files are checked even without a file event.
    #[arg(long, env = "MCP_GUARD_WEBHOOK_TLS_RELOAD_INTERVAL", default_value = "60s", value_parser = parse_duration)]
    pub tls_reload_interval: Duration,

    /// Largest accepted request body.
    #[arg(long, env = "MCP_GUARD_WEBHOOK_MAX_BODY_BYTES", default_value_t = 6 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Run without cluster access: namespace annotations are not read, and `--native-sidecars
    /// auto` means native. For benchmarks and tests.
    #[arg(long, env = "MCP_GUARD_WEBHOOK_NO_KUBE")]
    pub no_kube: bool,

    /// How long in-flight reviews may take to finish after SIGTERM.
    #[arg(long, env = "MCP_GUARD_WEBHOOK_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    #[command(flatten)]
    pub injector: InjectorArgs,

    #[command(flatten)]
    pub controller: crate::controller::ControllerArgs,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// What the handlers share.
pub struct AppState {
    pub config: InjectConfig,
    pub namespaces: Option<Namespaces>,
    /// The catalog of approved servers; `None` (with `--no-kube`) switches the check off.
    pub approved: Option<ApprovedServers>,
    pub metrics: Metrics,
}

/// The routes, for the server and for in-process tests: admission and health, and the registry
/// API ([`registry_api`]).
pub fn router(
    state: Arc<AppState>,
    registry: registry_api::Registry,
    max_body_bytes: usize,
) -> Router {
    Router::new()
        .route("/mutate", post(mutate))
        .route("/validate", post(validate))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
        .merge(registry_api::router(registry))
        .layer(DefaultBodyLimit::max(max_body_bytes))
}

async fn readyz(State(st): State<Arc<AppState>>) -> Response {
    match &st.namespaces {
        Some(ns) if !ns.is_synced() => (
            StatusCode::SERVICE_UNAVAILABLE,
            "namespace cache not synced",
        )
            .into_response(),
        _ => "ok".into_response(),
    }
}

async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        st.metrics.encode(),
    )
        .into_response()
}

async fn mutate(State(st): State<Arc<AppState>>, body: Bytes) -> Response {
    let started = Instant::now();
    let response = match review(&st, &body).await {
        Ok(resp) => (
            [(header::CONTENT_TYPE, "application/json")],
            review_json(resp),
        )
            .into_response(),
        Err((kind, message)) => {
            st.metrics.error(kind);
            tracing::warn!(kind, %message, "admission review rejected");
            (StatusCode::BAD_REQUEST, message).into_response()
        }
    };
    st.metrics.observe_duration(started.elapsed().as_secs_f64());
    response
}

/// `/validate`: policy ConfigMaps that do not compile are refused ([`crate::validate`]).
async fn validate(State(st): State<Arc<AppState>>, body: Bytes) -> Response {
    let started = Instant::now();
    let response = match crate::validate::review(&body) {
        Ok(resp) => {
            if !resp.allowed {
                st.metrics.policy_refused();
            }
            (
                [(header::CONTENT_TYPE, "application/json")],
                review_json(resp),
            )
                .into_response()
        }
        Err(message) => {
            st.metrics.error("bad_request");
            tracing::warn!(%message, "validation review rejected");
            (StatusCode::BAD_REQUEST, message).into_response()
        }
    };
    st.metrics.observe_duration(started.elapsed().as_secs_f64());
    response
}

/// Serializes kube's review, with the patch as the base64 string the API server's `[]byte`
/// expects (kube's `Vec<u8>` serializes as an array of numbers: accepted, but four times larger).
fn review_json(mut resp: AdmissionResponse) -> Vec<u8> {
    use base64::Engine;
    let patch = resp.patch.take();
    let review = resp.into_review();
    let fallback = || br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec();
    match patch {
        None => serde_json::to_vec(&review).unwrap_or_else(|_| fallback()),
        Some(bytes) => {
            let mut v = serde_json::to_value(&review).unwrap_or(Value::Null);
            if let Some(r) = v.get_mut("response").and_then(Value::as_object_mut) {
                r.insert(
                    "patch".to_string(),
                    Value::String(base64::engine::general_purpose::STANDARD.encode(bytes)),
                );
            }
            serde_json::to_vec(&v).unwrap_or_else(|_| fallback())
        }
    }
}

async fn review(st: &AppState, body: &[u8]) -> Result<AdmissionResponse, (&'static str, String)> {
    // One parse: the pod stays raw `Value` (unknown fields survive); the rest of the review,
    // without the objects, goes through kube's types.
    let mut raw: Value = serde_json::from_slice(body)
        .map_err(|e| ("bad_request", format!("not an AdmissionReview: {e}")))?;
    let pod = raw
        .pointer_mut("/request/object")
        .map(Value::take)
        .unwrap_or(Value::Null);
    if let Some(old) = raw.pointer_mut("/request/oldObject") {
        *old = Value::Null;
    }
    let review: AdmissionReview<DynamicObject> = serde_json::from_value(raw)
        .map_err(|e| ("bad_request", format!("not an AdmissionReview: {e}")))?;
    let req: AdmissionRequest<DynamicObject> = review.try_into().map_err(|e| {
        (
            "bad_request",
            format!("not an AdmissionReview request: {e}"),
        )
    })?;
    let resp = AdmissionResponse::from(&req);
    if req.operation != Operation::Create || req.kind.kind != "Pod" || req.sub_resource.is_some() {
        return Ok(resp);
    }
    if !pod.is_object() {
        return Err(("no_object", "the review carries no object".to_string()));
    }
    let namespace = req
        .namespace
        .clone()
        .or_else(|| {
            pod.pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or_else(|| "default".to_string());
    let (ns_annotations, ns_labels) = match &st.namespaces {
        Some(ns) => ns.meta(&namespace).await,
        None => (BTreeMap::new(), BTreeMap::new()),
    };
    let mut resp = resp;
    // The label naming the entry the pod runs as, for its egress NetworkPolicy (when injected).
    let mut runs_as = None;
    if let Some(approved) = &st.approved {
        let subject = registry::Subject {
            pod: &pod,
            namespace: &namespace,
            namespace_annotations: &ns_annotations,
            namespace_labels: &ns_labels,
            own_namespace: &st.config.own_namespace,
        };
        let catalog = approved.catalog();
        let (verdict, label) = registry::admit(catalog.as_ref(), subject, st.config.approval_mode);
        runs_as = label;
        match verdict {
            Verdict::Pass => {}
            Verdict::Refuse(message) => {
                st.metrics.denied();
                tracing::info!(namespace, %message, "refused: unapproved images");
                return Ok(resp.deny(message));
            }
            Verdict::Warn(message) => resp.warnings.get_or_insert_with(Vec::new).push(message),
            Verdict::Record(message) => {
                resp.audit_annotations
                    .insert(registry::AUDIT_KEY.to_string(), message);
            }
        }
    }
    let ctx = PodContext {
        pod: &pod,
        namespace: &namespace,
        namespace_annotations: &ns_annotations,
        workload_name: None,
    };
    let pod_name = pod
        .pointer("/metadata/name")
        .or_else(|| pod.pointer("/metadata/generateName"))
        .and_then(Value::as_str)
        .unwrap_or("");
    match inject::mutate(&st.config, ctx) {
        Outcome::Injected { mut patch, traffic } => {
            if let Some(r) = runs_as {
                r.apply(&mut patch);
            }
            match resp.clone().with_patch(patch) {
                Ok(r) => {
                    st.metrics.injected(traffic);
                    tracing::info!(namespace, pod = pod_name, %traffic, "injected");
                    Ok(r)
                }
                Err(e) => {
                    st.metrics.error("patch");
                    Ok(resp.deny(format!("mcp-guard: cannot serialize the patch: {e}")))
                }
            }
        }
        Outcome::Skipped(reason) => {
            st.metrics.skipped(reason);
            tracing::debug!(namespace, pod = pod_name, %reason, "skipped");
            let mut resp = resp;
            if reason == SkipReason::NoServerPort {
                resp.warnings.get_or_insert_with(Vec::new).push(format!(
                    "mcp-guard: namespace {namespace} opts in, but the pod declares no container \
                     port: not injected (set {} to the MCP server's port)",
                    crate::annotations::PORT
                ));
            }
            Ok(resp)
        }
        Outcome::Invalid(message) => {
            st.metrics.denied();
            tracing::info!(namespace, pod = pod_name, %message, "refused");
            Ok(resp.deny(format!("mcp-guard: {message}")))
        }
    }
}

/// Runs `serve` until SIGTERM or an interrupt.
pub async fn serve(args: ServeArgs) -> Result<(), ServerError> {
    let metrics = Metrics::new();
    let certs = CertStore::load(&args.tls_cert, &args.tls_key)?;
    let tls_config = certs.server_config()?;

    let mut controller_client = None;
    let mut approved = None;
    let mut access: Option<Arc<crate::access::Access>> = None;
    let mut kube_client = None;
    let (namespaces, native) = if args.no_kube {
        if args.controller.enabled {
            tracing::warn!("--controller ignored with --no-kube");
        }
        (None, true)
    } else {
        let client = cluster::client().await?;
        let native = match args.injector.native_sidecars {
            NativeSidecars::Auto => {
                let v = cluster::server_version(&client).await?;
                let native = cluster::supports_native_sidecars(v);
                tracing::info!(version = %format!("{}.{}", v.0, v.1), native, "API server version read");
                native
            }
            _ => false,
        };
        if args.controller.enabled {
            controller_client = Some(client.clone());
        }
        approved = Some(ApprovedServers::start(client.clone()));
        access = Some(Arc::new(crate::access::Access::new(client.clone())));
        kube_client = Some(client.clone());
        (Some(Namespaces::start(client)), native)
    };
    let config = InjectConfig::from_args(&args.injector, native);
    tracing::info!(native_sidecar = config.native_sidecar, image = %config.image, "injector configured");
    let mut fleet_view = None;
    let controller = controller_client.map(|client| {
        let settings = crate::controller::Settings {
            own_namespace: config.own_namespace.clone(),
            sidecar_port: config.sidecar_port,
            admin_port: config.admin_port,
            args: args.controller.clone(),
        };
        tracing::info!(
            namespace = settings.own_namespace,
            "policy controller starting"
        );
        let (view, run) =
            crate::controller::start(client.clone(), settings.clone(), approved.clone());
        fleet_view = Some(view);
        let task = tokio::spawn(run);
        (task, client, settings)
    });

    let watch = tokio::spawn({
        let certs = Arc::clone(&certs);
        let (interval, metrics) = (args.tls_reload_interval, metrics.clone());
        async move {
            if let Err(e) = certs.watch(interval, metrics).await {
                tracing::error!(error = %e, "certificate watch failed; reload only on restart");
            }
        }
    });
    let state = Arc::new(AppState {
        config,
        namespaces,
        approved: approved.clone(),
        metrics,
    });
    let fleet = Arc::new(crate::fleet_api::FleetApi::new(
        fleet_view,
        access.clone(),
        state.config.default_policy.clone(),
    ));
    let dashboard = Arc::new(crate::dashboard::Dashboard {
        fleet: Arc::clone(&fleet),
        approved: approved.clone(),
        client: kube_client,
        sessions: crate::dashboard::session::Sessions::default(),
    });
    let registry = registry_api::Registry { approved, access };
    let app = router(state, registry, args.max_body_bytes)
        .merge(crate::fleet_api::router(fleet))
        .merge(crate::dashboard::router(dashboard));

    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|source| ServerError::Listen {
            addr: args.listen,
            source,
        })?;
    tracing::info!(addr = %listener.local_addr().unwrap_or(args.listen), "serving");
    let acceptor = TlsAcceptor::from(tls_config);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut stop = std::pin::pin!(mcp_guard_common::process::terminated());
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(app.clone());
        let conn_builder = {
            let mut b = hyper::server::conn::http1::Builder::new();
            b.timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10));
            b
        };
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                };
            let conn = conn_builder.serve_connection(TokioIo::new(tls), service);
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    tracing::info!("shutting down");
    drop(listener);
    watch.abort();
    if let Some((task, client, settings)) = controller {
        task.abort();
        let _ = task.await;
        crate::controller::release(client, &settings).await;
    }
    if tokio::time::timeout(args.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("in-flight connections did not finish in time");
    }
    Ok(())
}
