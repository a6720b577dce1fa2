//! Configuration of the sidecar: every flag has an `MCP_GUARD_*` environment variable, so the
//! webhook can configure an injected container through `env` alone.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;
use mcp_guard_common::duration::parse_duration;
use mcp_guard_common::env;

/// Flags of the proxy (the default command of `mcp-guard-sidecar`).
#[derive(Debug, Clone, Args)]
pub struct ProxyConfig {
    /// Address the MCP proxy listens on.
    #[arg(long, env = env::LISTEN, default_value = "0.0.0.0:15001")]
    pub listen: SocketAddr,

    /// Address of the admin server (/livez, /readyz, /metrics, loopback-only /shutdown).
    #[arg(long, env = env::ADMIN_LISTEN, default_value = "0.0.0.0:15020")]
    pub admin_listen: SocketAddr,

    /// Host of the MCP server; it runs in the same pod, so loopback.
    #[arg(long, env = env::UPSTREAM_HOST, default_value = "127.0.0.1")]
    pub upstream_host: String,

    /// Port of the MCP server.
    #[arg(long, env = env::UPSTREAM_PORT, default_value_t = 8080)]
    pub upstream_port: u16,

    /// Path of the Streamable HTTP endpoint (POST, GET, DELETE).
    #[arg(long, env = env::PATH, default_value = "/mcp")]
    pub path: String,

    /// Path of the older HTTP+SSE transport's event stream. Its message endpoint is learned from
    /// the server's `endpoint` event.
    #[arg(long, env = env::SSE_PATH, default_value = "/sse")]
    pub sse_path: String,

    /// Tools that may be listed and called; when set, every other tool is hidden.
    #[arg(long, env = env::ALLOW_TOOLS, value_delimiter = ',')]
    pub allow_tools: Vec<String>,

    /// Tools that are hidden from lists and refused when called.
    #[arg(long, env = env::DENY_TOOLS, value_delimiter = ',')]
    pub deny_tools: Vec<String>,

    /// Largest request body accepted, in bytes; larger bodies get 413.
    #[arg(long, env = env::MAX_BODY_BYTES, default_value_t = 4 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Largest list response rewritten, in bytes; a larger answer to a filtered list is refused
    /// (fail closed) rather than passed unfiltered.
    #[arg(long, env = env::MAX_LIST_BYTES, default_value_t = 16 * 1024 * 1024)]
    pub max_list_bytes: usize,

    /// Sessions whose owner and client the sidecar remembers; past it the oldest is evicted
    /// (and refused afterwards with a 404 that tells the client to initialize again).
    #[arg(long, env = env::MAX_SESSIONS, default_value_t = 50_000)]
    pub max_sessions: usize,

    /// Time a client has to send its request headers.
    #[arg(long, env = env::HEADER_TIMEOUT, default_value = "10s", value_parser = parse_duration)]
    pub header_timeout: Duration,

    /// Time the MCP server has to answer with response headers.
    #[arg(long, env = env::UPSTREAM_TIMEOUT, default_value = "60s", value_parser = parse_duration)]
    pub upstream_timeout: Duration,

    /// Idle time after which pooled upstream connections are closed. Shorter than the 5 s after
    /// which the HTTP servers of Node.js and uvicorn close an idle keep-alive connection, so that
    /// the sidecar closes first and never sends a request on a connection the server is closing.
    #[arg(long, env = env::IDLE_TIMEOUT, default_value = "4s", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// On SIGTERM, how long open requests and streams may take to finish.
    #[arg(long, env = env::DRAIN_TIMEOUT, default_value = "20s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// Threads that serve the proxy's connections, each with its own runtime; a connection is
    /// served on one of them from its first request to its last. `0`: one per CPU the
    /// container may use (its CPU limit, rounded down, at least one).
    #[arg(long, env = env::THREADS, default_value_t = 0)]
    pub threads: usize,

    /// Do not list the MCP server's tools at start. By default the sidecar lists them (as a
    /// client would, without identity), so the first call is decided on the server's definition
    /// of its tool, and readiness waits until the server has answered (its tools, or a refusal).
    #[arg(long, env = env::SKIP_TOOL_LISTING)]
    pub skip_tool_listing: bool,

    /// Leave out the per-call metrics of `/metrics` (`mcp_guard_calls_total`,
    /// `mcp_guard_call_duration_seconds`), which are otherwise counted whether or not the audit
    /// trail or OpenTelemetry is on.
    #[arg(long, env = env::CALL_METRICS_DISABLED, default_value_t = false)]
    pub call_metrics_disabled: bool,

    /// Identity: token verification and how the identity reaches the server.
    #[command(flatten)]
    pub auth: crate::auth::AuthConfig,

    #[command(flatten)]
    pub policy: crate::policy::config::PolicyConfig,

    /// The audit trail.
    #[command(flatten)]
    pub audit: crate::audit::AuditConfig,

    #[command(flatten)]
    pub limits: crate::limits::config::LimitsConfig,
    /// OpenTelemetry export.
    #[command(flatten)]
    pub telemetry: crate::telemetry::TelemetryConfig,
}

impl ProxyConfig {
    /// The threads that serve the proxy: `--threads`, or one per CPU this process may use.
    pub fn threads(&self) -> usize {
        match self.threads {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        }
    }
}
