//! Accepting connections: TCP_NODELAY, a deadline for request headers, HTTP/1.1 and h2c, and a
//! graceful drain when shutdown is asked for.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Serves `listener` until `shutdown` turns true, then lets open connections finish for at most
/// `drain`. `service` makes the service of one connection from its peer address.
pub async fn serve<F, S, Fut>(
    name: &'static str,
    listener: TcpListener,
    service: F,
    header_timeout: Duration,
    mut shutdown: watch::Receiver<bool>,
    drain: Duration,
) where
    F: Fn(SocketAddr) -> S,
    S: Fn(Request<Incoming>) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true);
    let graceful = GracefulShutdown::new();
    // Every connection's task, so that those still open when the drain time is up are ended
    // (and what they hold, such as the audit record of a cut answer, finished) before this
    // returns and the process flushes its audit trail and exits.
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if let Err(e) = stream.set_nodelay(true) {
                        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
                    }
                    let svc = hyper::service::service_fn(service(peer));
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                    let conn = graceful.watch(conn.into_owned());
                    conns.spawn(async move {
                        if let Err(e) = conn.await {
                            tracing::debug!(server = name, %peer, error = %e, "connection ended with an error");
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait a moment rather than spin.
                    tracing::warn!(server = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            _ = async { let _ = shutdown.wait_for(|stop| *stop).await; } => break,
        }
    }
    drop(listener);
    tracing::info!(server = name, "draining open connections");
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!(server = name, "drained"),
        _ = tokio::time::sleep(drain) => tracing::warn!(server = name, ?drain, "drain time is up; closing the remaining connections"),
    }
    conns.abort_all();
    while conns.join_next().await.is_some() {}
}
