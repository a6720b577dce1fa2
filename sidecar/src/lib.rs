//! mcp-guard sidecar: an MCP-aware reverse proxy that sits in front of an unmodified MCP server
//! in the same pod and governs every message that reaches it.
//!
//! The request path: [`server`] accepts → [`proxy`] parses the body into the [`jsonrpc`] model →
//! the [`intercept`] point decides → [`upstream`] forwards → the answer streams back through
//! [`proxy::rewrite`] (list answers filtered, [`sse`] events passed one by one).

pub mod admin;
pub mod admin_view;
pub mod audit;
pub mod auth;
pub mod cli;
pub mod config;
#[cfg(feature = "fuzzing")]
pub mod fuzz;
pub mod identity;
pub mod intercept;
pub mod jsonrpc;
pub mod limits;
pub mod list_answer;
pub mod metrics;
pub mod observe;
pub mod pod;
pub mod policy;
pub mod proxy;
pub mod server;
pub mod sse;
pub mod telemetry;
pub mod time;
pub mod tools;
pub mod upstream;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::body::Body;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceExt;

pub use config::ProxyConfig;
use intercept::{Chain, Interceptor, StaticToolFilter};
use mcp_guard_policy::catalog::ToolCatalog;
use metrics::Metrics;
use policy::{PolicyInterceptor, PolicyStore};
use proxy::Proxy;

/// Errors that stop the sidecar.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Upstream(#[from] upstream::UpstreamError),
    #[error(transparent)]
    Auth(#[from] auth::AuthError),
    #[error("cannot start the audit trail: {0}")]
    Audit(std::io::Error),
    #[error("OpenTelemetry: {0}")]
    Telemetry(String),
    #[error("cannot start the threads that serve the proxy: {0}")]
    Serve(std::io::Error),
    #[error("rate limits: {0}")]
    Limits(#[from] limits::LimitsError),
}

async fn bind(addr: std::net::SocketAddr) -> Result<TcpListener, Error> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })
}

/// The interception point from configuration: the static tool lists, then Rego policy when a
/// policy directory is configured (loaded now and watched from here on).
fn build_interceptor(
    config: &ProxyConfig,
    metrics: &Arc<Metrics>,
    catalog: &Arc<ToolCatalog>,
) -> (Arc<dyn Interceptor>, Option<Arc<PolicyStore>>) {
    let static_list: Arc<dyn Interceptor> = Arc::new(StaticToolFilter::new(
        &config.allow_tools,
        &config.deny_tools,
    ));
    let Some(dir) = &config.policy.policy_dir else {
        tracing::warn!(
            "no policy directory configured (--policy-dir / MCP_GUARD_POLICY_DIR): only the static tool lists apply"
        );
        return (static_list, None);
    };
    let store = PolicyStore::new(dir, Arc::clone(metrics));
    // A missing or broken bundle is logged by the store; requests are denied until one loads.
    let _ = store.reload();
    store.spawn_watcher(config.policy.policy_poll_interval);
    tracing::info!(
        dir = %dir.display(),
        enforcement = config.policy.enforcement.as_str(),
        "policy enabled"
    );
    let policy: Arc<dyn Interceptor> = Arc::new(PolicyInterceptor::with_catalog(
        &config.policy,
        Arc::clone(&store),
        Arc::clone(metrics),
        Arc::clone(catalog),
    ));
    (Arc::new(Chain(vec![static_list, policy])), Some(store))
}

/// The observers of the request path, each on its own switch: the audit trail
/// (`--audit-disabled`), spans and OTLP call meters (an OTLP endpoint), the Prometheus call
/// metrics (`--call-metrics-disabled`). `None` when every one is off: then no worker runs.
fn start_observer(
    config: &ProxyConfig,
    server: observe::ServerRef,
    metrics: &Arc<Metrics>,
    telemetry: Option<&telemetry::Telemetry>,
) -> Result<Option<Arc<observe::Observer>>, Error> {
    let mut consumers: Vec<Box<dyn observe::Consumer>> = Vec::new();
    if let Some(lines) =
        audit::Lines::open(&config.audit, server, Arc::clone(metrics)).map_err(Error::Audit)?
    {
        consumers.push(Box::new(lines));
    }
    if let Some(t) = telemetry {
        consumers.push(Box::new(t.spans()));
        if let Some(meters) = t.call_meters() {
            consumers.push(Box::new(meters));
        }
    }
    if !config.call_metrics_disabled {
        consumers.push(Box::new(metrics::Calls(Arc::clone(metrics))));
    }
    let settings = observe::Settings {
        queue: config.audit.audit_queue,
        mode: config.policy.enforcement.as_str(),
        spans: telemetry.is_some(),
    };
    let lost: observe::Lost = {
        let metrics = Arc::clone(metrics);
        Arc::new(move |n| metrics.audit_dropped(n))
    };
    observe::Observer::start(settings, consumers, lost).map_err(Error::Audit)
}

/// Runs the proxy and the admin server until `shutdown` resolves or `/shutdown` is called, then
/// drains open requests for at most the configured drain time.
pub async fn run_proxy(
    config: ProxyConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let metrics = Arc::new(Metrics::new());
    let catalog = Arc::new(config.policy.tool_catalog());
    if catalog.pins_of_record() > 0 {
        tracing::info!(
            pins = catalog.pins_of_record(),
            "tool definitions are compared with their pins of record"
        );
    }
    let (interceptor, policy_store, seen) = admin_view::watch(
        build_interceptor(&config, &metrics, &catalog),
        &config.policy,
        &catalog,
    );
    let authenticator = Arc::new(auth::Authenticator::from_config(&config.auth, &metrics)?);
    authenticator.log_startup();
    let server_ref = observe::ServerRef {
        name: config.policy.server_name.clone(),
        namespace: config.policy.pod_namespace.clone(),
        pod: config.policy.pod_name.clone(),
    };
    let telemetry = telemetry::Telemetry::start(&config.telemetry, &server_ref, &metrics)
        .map_err(Error::Telemetry)?;
    let observer = start_observer(&config, server_ref, &metrics, telemetry.as_ref())?;
    let limiter = Arc::new(
        limits::Limiter::from_config(
            &config.limits,
            &config.policy.pod_namespace,
            &config.policy.server_name,
            Arc::clone(&metrics),
        )
        .map_err(Error::Limits)?
        .with_shadow(config.policy.enforcement == policy::config::Enforcement::Shadow),
    );
    limiter.spawn();
    let proxy = Proxy::new(
        &config,
        interceptor,
        limiter,
        Arc::clone(&metrics),
        Arc::clone(&authenticator),
        observer.clone(),
        Arc::clone(&catalog),
    )?;
    let listing = if !config.skip_tool_listing {
        tools::spawn_listing(
            proxy.upstream().clone(),
            &config.path,
            config.max_list_bytes,
            Arc::clone(&catalog),
            Arc::clone(&metrics),
        )
    } else {
        watch::channel(tools::Listing::Off).1
    };
    {
        // Keys load off the request path; until they do, tokens are refused (fail closed).
        let authenticator = Arc::clone(&authenticator);
        tokio::spawn(async move { authenticator.start().await });
    }
    let proxy_listener = bind(config.listen).await?;
    let admin_listener = bind(config.admin_listen).await?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let draining = Arc::new(AtomicBool::new(false));
    {
        let stop_tx = stop_tx.clone();
        let mut stop_rx = stop_rx.clone();
        let draining = Arc::clone(&draining);
        tokio::spawn(async move {
            tokio::select! {
                _ = shutdown => {}
                _ = async { let _ = stop_rx.wait_for(|s| *s).await; } => {}
            }
            draining.store(true, Ordering::Relaxed);
            stop_tx.send_replace(true);
        });
    }

    let admin = admin::router(admin::AdminState {
        metrics,
        upstream: proxy.upstream().clone(),
        listen: proxy_listener.local_addr().unwrap_or(config.listen),
        policy: policy_store,
        catalog,
        listing,
        draining,
        shutdown: stop_tx,
        seen: Some(seen),
    });
    let admin = admin::with_minted_jwks(admin, authenticator.minted_jwks());
    let upstream = proxy.upstream().authority().to_owned();
    let threads = config.threads();
    let lanes = server::Lanes::start(
        "proxy",
        threads,
        move |_peer| {
            let proxy = proxy.clone();
            move |req| {
                let proxy = proxy.clone();
                async move { Ok(proxy.handle(req).await) }
            }
        },
        config.header_timeout,
        &stop_rx,
        config.drain_timeout,
    )
    .map_err(Error::Serve)?;
    tracing::info!(
        listen = %config.listen,
        admin = %config.admin_listen,
        upstream,
        path = %config.path,
        sse_path = %config.sse_path,
        threads,
        "mcp-guard sidecar started"
    );

    let proxy_server = lanes.serve(proxy_listener, stop_rx.clone());
    let admin_server = server::serve(
        "admin",
        admin_listener,
        move |peer| {
            let router = admin.clone().layer(axum::Extension(peer));
            move |req: http::Request<hyper::body::Incoming>| {
                let router = router.clone();
                async move {
                    let resp = router.oneshot(req.map(Body::new)).await;
                    Ok(match resp {
                        Ok(r) => r,
                        Err(never) => match never {},
                    })
                }
            }
        },
        config.header_timeout,
        stop_rx,
        config.drain_timeout,
    );
    tokio::join!(proxy_server, admin_server);
    if let Some(o) = &observer {
        o.flush(std::time::Duration::from_secs(2)).await;
    }
    if let Some(t) = telemetry {
        let done = tokio::task::spawn_blocking(move || t.shutdown());
        let _ = tokio::time::timeout(std::time::Duration::from_secs(3), done).await;
    }
    tracing::info!("mcp-guard sidecar stopped");
    Ok(())
}
