//! Configuration of the sidecar: every flag has an `MCP_GUARD_*` environment variable, so the
//! webhook can configure an injected container through `env` alone.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;

/// Flags of the proxy (the default command of `mcp-guard-sidecar`).
#[derive(Debug, Clone, Args)]
pub struct ProxyConfig {
    /// Address the MCP proxy listens on.
    #[arg(long, env = "MCP_GUARD_LISTEN", default_value = "0.0.0.0:15001")]
    pub listen: SocketAddr,

    /// Address of the admin server (/livez, /readyz, /metrics, loopback-only /shutdown).
    #[arg(long, env = "MCP_GUARD_ADMIN_LISTEN", default_value = "0.0.0.0:15020")]
    pub admin_listen: SocketAddr,

    /// Host of the MCP server; it runs in the same pod, so loopback.
    #[arg(long, env = "MCP_GUARD_UPSTREAM_HOST", default_value = "127.0.0.1")]
    pub upstream_host: String,

    /// Port of the MCP server.
    #[arg(long, env = "MCP_GUARD_UPSTREAM_PORT", default_value_t = 8080)]
    pub upstream_port: u16,

    /// Path of the Streamable HTTP endpoint (POST, GET, DELETE).
    #[arg(long, env = "MCP_GUARD_PATH", default_value = "/mcp")]
    pub path: String,

    /// Path of the older HTTP+SSE transport's event stream. Its message endpoint is learned from
    /// the server's `endpoint` event.
    #[arg(long, env = "MCP_GUARD_SSE_PATH", default_value = "/sse")]
    pub sse_path: String,

    /// Tools that may be listed and called; when set, every other tool is hidden.
    #[arg(long, env = "MCP_GUARD_ALLOW_TOOLS", value_delimiter = ',')]
    pub allow_tools: Vec<String>,

    /// Tools that are hidden from lists and refused when called.
    #[arg(long, env = "MCP_GUARD_DENY_TOOLS", value_delimiter = ',')]
    pub deny_tools: Vec<String>,

    /// Largest request body accepted, in bytes; larger bodies get 413.
    #[arg(long, env = "MCP_GUARD_MAX_BODY_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Largest list response rewritten, in bytes; a larger answer to a filtered list is refused
    /// (fail closed) rather than passed unfiltered.
    #[arg(long, env = "MCP_GUARD_MAX_LIST_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_list_bytes: usize,

    /// Time a client has to send its request headers.
    #[arg(long, env = "MCP_GUARD_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_timeout: Duration,

    /// Time the MCP server has to answer with response headers.
    #[arg(long, env = "MCP_GUARD_UPSTREAM_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub upstream_timeout: Duration,

    /// Idle time after which pooled upstream connections are closed.
    #[arg(long, env = "MCP_GUARD_IDLE_TIMEOUT", default_value = "90s", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// On SIGTERM, how long open requests and streams may take to finish.
    #[arg(long, env = "MCP_GUARD_DRAIN_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// Identity: token verification and how the identity reaches the server.
    #[command(flatten)]
    pub auth: crate::auth::AuthConfig,

    #[command(flatten)]
    pub policy: crate::policy::config::PolicyConfig,

    /// The audit trail.
    #[command(flatten)]
    pub audit: crate::audit::AuditConfig,
    /// OpenTelemetry export.
    #[command(flatten)]
    pub telemetry: crate::telemetry::TelemetryConfig,
}

/// Parses `250ms`, `10s`, `5m` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 250ms, 10s, 5m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("invalid duration unit in {s:?}: use ms, s or m")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("2h").is_err());
        assert!(parse_duration("abc").is_err());
    }
}
