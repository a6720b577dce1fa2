//! mcp-guard sidecar: an MCP-aware reverse proxy that sits in front of an unmodified MCP server
//! in the same pod and governs every message that reaches it.
//!
//! The request path: [`server`] accepts → [`proxy`] parses the body into the [`jsonrpc`] model →
//! the [`intercept`] point decides → [`upstream`] forwards → the answer streams back through
//! [`proxy::rewrite`] (list answers filtered, [`sse`] events passed one by one).

pub mod admin;
pub mod cli;
pub mod config;
pub mod identity;
pub mod intercept;
pub mod jsonrpc;
pub mod metrics;
pub mod proxy;
pub mod server;
pub mod sse;
pub mod upstream;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::body::Body;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceExt;

pub use config::ProxyConfig;
use intercept::{Interceptor, StaticToolFilter};
use metrics::Metrics;
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
}

async fn bind(addr: std::net::SocketAddr) -> Result<TcpListener, Error> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })
}

/// Runs the proxy and the admin server until `shutdown` resolves or `/shutdown` is called, then
/// drains open requests for at most the configured drain time.
pub async fn run_proxy(
    config: ProxyConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let interceptor: Arc<dyn Interceptor> = Arc::new(StaticToolFilter::new(
        &config.allow_tools,
        &config.deny_tools,
    ));
    let metrics = Arc::new(Metrics::new());
    let proxy = Proxy::new(&config, interceptor, Arc::clone(&metrics))?;
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
        draining,
        shutdown: stop_tx,
    });
    tracing::info!(
        listen = %config.listen,
        admin = %config.admin_listen,
        upstream = proxy.upstream().authority(),
        path = %config.path,
        sse_path = %config.sse_path,
        "mcp-guard sidecar started"
    );

    let proxy_server = server::serve(
        "proxy",
        proxy_listener,
        move |_peer| {
            let proxy = proxy.clone();
            move |req| {
                let proxy = proxy.clone();
                async move { Ok(proxy.handle(req).await) }
            }
        },
        config.header_timeout,
        stop_rx.clone(),
        config.drain_timeout,
    );
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
    tracing::info!("mcp-guard sidecar stopped");
    Ok(())
}
