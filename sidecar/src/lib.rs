//! mcp-guard sidecar: an MCP-aware reverse proxy that sits in front of an unmodified MCP server.

pub mod config;

pub use config::ProxyConfig;

/// Errors that stop the sidecar.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// Runs the proxy and the admin server until `shutdown` resolves (or SIGTERM when run from main),
/// then drains open requests.
pub async fn run_proxy(
    config: ProxyConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let _ = (config, shutdown);
    Ok(())
}
