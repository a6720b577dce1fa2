//! A small MCP server built with the official Rust SDK (`rmcp`), used by the README demo, the
//! end-to-end suites and the benchmarks as the "unmodified MCP server" behind the sidecar.
//!
//! Streamable HTTP at `/mcp`. Stateful (sessions, SSE answers) by default; `--stateless-json`
//! serves every request without a session and answers plain JSON, the fastest upstream there is
//! for benchmarks (MCP 2026-07-28 style requests); `--stateless-sse` serves the same way but answers
//! each request as a `text/event-stream` that ends after the answer's event (the benchmarks' SSE
//! scenarios).
//!
//! Tools: `echo`, `add`, `get_weather` (read-only), `delete_everything` (destructive; the
//! tool the demo's policy denies) and `slow_echo` (answers after a delay: a call that is still in
//! flight when the pod is deleted).
//!
//! On SIGTERM (what the kubelet sends when a pod is deleted) or SIGINT it drains: it stops
//! accepting connections, lets every request it is answering finish (for at most
//! [`DRAIN_TIMEOUT`], under the kubelet's default grace period of 30 s), then ends the sessions'
//! open event streams and exits 0.
//!
//! The demo includes this file as a module (`#[path]`), so everything it needs is `pub`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use axum::serve::ListenerExt as _;
use clap::Parser;
use futures_util::StreamExt as _;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{Implementation, ServerCapabilities, ServerConfig};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ServerHandler, schemars, tool, tool_handler, tool_router};

/// How long a draining server waits for the requests it is answering before it closes what is
/// left.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(25);

/// The longest delay `slow_echo` accepts.
const MAX_DELAY_SECONDS: f64 = 60.0;

/// Example MCP server (rmcp, Streamable HTTP) with the tools echo, add, get_weather,
/// delete_everything and slow_echo: the unmodified server of mcp-guard's demo, tests and
/// benchmarks.
#[derive(Debug, Clone, Parser)]
#[command(name = "mcp-guard-example-server", version)]
pub struct ExampleArgs {
    /// Address to listen on.
    #[arg(
        long,
        env = "MCP_GUARD_EXAMPLE_LISTEN",
        default_value = "127.0.0.1:8080"
    )]
    pub listen: SocketAddr,

    /// Path of the Streamable HTTP endpoint.
    #[arg(long, env = "MCP_GUARD_EXAMPLE_PATH", default_value = "/mcp")]
    pub path: String,

    /// Serve statelessly (no `Mcp-Session-Id`) and answer `application/json` instead of SSE.
    #[arg(long, env = "MCP_GUARD_EXAMPLE_STATELESS_JSON")]
    pub stateless_json: bool,

    /// Serve statelessly (no `Mcp-Session-Id`) and answer every request as an SSE stream
    /// (`text/event-stream`) that ends after the answer's event.
    #[arg(
        long,
        env = "MCP_GUARD_EXAMPLE_STATELESS_SSE",
        conflicts_with = "stateless_json"
    )]
    pub stateless_sse: bool,

    /// `Host` values accepted (DNS-rebinding protection); `*` accepts any.
    #[arg(
        long,
        env = "MCP_GUARD_EXAMPLE_ALLOWED_HOSTS",
        value_delimiter = ',',
        default_value = "localhost,127.0.0.1,::1"
    )]
    pub allowed_hosts: Vec<String>,
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub struct EchoArgs {
    /// Text to send back.
    pub text: String,
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub struct AddArgs {
    /// Left operand.
    pub a: f64,
    /// Right operand.
    pub b: f64,
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub struct SlowEchoArgs {
    /// Text to send back.
    pub text: String,
    /// Seconds to wait before answering (at most 60).
    pub seconds: f64,
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub struct WeatherArgs {
    /// City name.
    pub city: String,
}

/// The example MCP server's tools.
#[derive(Debug, Clone, Default)]
pub struct ExampleServer;

#[tool_router]
impl ExampleServer {
    #[tool(description = "Returns its text unchanged")]
    fn echo(&self, Parameters(EchoArgs { text }): Parameters<EchoArgs>) -> String {
        text
    }

    #[tool(description = "Adds two numbers")]
    fn add(&self, Parameters(AddArgs { a, b }): Parameters<AddArgs>) -> String {
        (a + b).to_string()
    }

    #[tool(
        description = "Current weather for a city (a fixed, fake reading)",
        annotations(title = "Get weather", read_only_hint = true, open_world_hint = false)
    )]
    fn get_weather(&self, Parameters(WeatherArgs { city }): Parameters<WeatherArgs>) -> String {
        format!("{city}: 21 °C, partly cloudy (fake reading)")
    }

    #[tool(
        description = "Deletes everything (pretend). The tool a policy should deny",
        annotations(
            title = "Delete everything",
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    fn delete_everything(&self) -> String {
        "deleted".to_owned()
    }

    #[tool(
        description = "Returns its text unchanged after waiting the given seconds (at most 60)",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn slow_echo(
        &self,
        Parameters(SlowEchoArgs { text, seconds }): Parameters<SlowEchoArgs>,
    ) -> String {
        let seconds = if seconds.is_finite() {
            seconds.clamp(0.0, MAX_DELAY_SECONDS)
        } else {
            0.0
        };
        tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
        text
    }
}

#[tool_handler]
impl ServerHandler for ExampleServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new(
                "mcp-guard-example-server",
                env!("CARGO_PKG_VERSION"),
            ))
            .with_instructions("Example MCP server for mcp-guard demos, tests and benchmarks")
    }
}

/// The requests being answered, until the last byte of each answer is gone (an SSE answer
/// included); a draining server waits for them. The standalone GET event stream of a session is
/// not counted: it has no end of its own and is closed at the end of the drain.
#[derive(Debug, Clone, Default)]
pub struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    /// How many answers are still open.
    pub fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// Decrements [`InFlight`] when the answer's body is dropped (sent in full, or abandoned).
struct InFlightGuard(Arc<AtomicUsize>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn count_in_flight(State(n): State<InFlight>, req: Request, next: Next) -> Response {
    if req.method() == axum::http::Method::GET {
        return next.run(req).await;
    }
    n.0.fetch_add(1, Ordering::SeqCst);
    let guard = InFlightGuard(Arc::clone(&n.0));
    let (parts, body) = next.run(req).await.into_parts();
    let body = body.into_data_stream().map(move |chunk| {
        let _open = &guard;
        chunk
    });
    Response::from_parts(parts, Body::from_stream(body))
}

/// Builds the HTTP router serving the MCP endpoint at `path`. Cancel `cancel` (the returned
/// config's token) to close every session.
pub fn router(args: &ExampleArgs) -> (axum::Router, StreamableHttpServerConfig) {
    let (app, config, _) = router_counted(args);
    (app, config)
}

/// [`router`], and the count of the requests it is answering.
fn router_counted(args: &ExampleArgs) -> (axum::Router, StreamableHttpServerConfig, InFlight) {
    let mut config = StreamableHttpServerConfig::default();
    config = if args.allowed_hosts.iter().any(|h| h == "*") {
        config.disable_allowed_hosts()
    } else {
        config.with_allowed_hosts(args.allowed_hosts.iter().cloned())
    };
    if args.stateless_json {
        config = config
            .with_legacy_session_mode(false)
            .with_json_response(true)
            .with_sse_keep_alive(None);
    } else if args.stateless_sse {
        config = config
            .with_legacy_session_mode(false)
            .with_json_response(false)
            .with_sse_keep_alive(None);
    }
    let service: StreamableHttpService<ExampleServer, LocalSessionManager> =
        StreamableHttpService::new(
            || Ok(ExampleServer),
            Arc::new(LocalSessionManager::default()),
            config.clone(),
        );
    let in_flight = InFlight::default();
    let app = axum::Router::new().nest_service(&args.path, service).layer(
        axum::middleware::from_fn_with_state(in_flight.clone(), count_in_flight),
    );
    (app, config, in_flight)
}

/// Serves on an already bound listener until `shutdown` resolves, then drains: no new
/// connections, the answers in flight finish (for at most [`DRAIN_TIMEOUT`]), then the sessions'
/// open event streams end. Sets TCP_NODELAY on every accepted socket: without it rmcp's SSE
/// answers stall ~40 ms on reused connections (Nagle + delayed ACK).
pub async fn serve(
    listener: tokio::net::TcpListener,
    args: &ExampleArgs,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (app, config, in_flight) = router_counted(args);
    let cancel = config.cancellation_token.clone();
    let listener = listener.tap_io(|tcp| {
        // A socket that refuses TCP_NODELAY still works, only slower.
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            // axum now accepts nothing new and closes idle connections. Ending the sessions
            // (which ends their open SSE streams, so the drain does not wait on them forever)
            // would also cut the answers still being written: that waits for them first.
            tokio::spawn(async move {
                let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
                while in_flight.count() > 0 && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                cancel.cancel();
            });
        })
        .await
        .context("example MCP server failed")
}

#[allow(dead_code)] // unused when the demo includes this file as a module
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = ExampleArgs::parse();
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let mode = if args.stateless_json {
        "stateless, JSON answers"
    } else if args.stateless_sse {
        "stateless, SSE answers"
    } else {
        "stateful, SSE answers"
    };
    eprintln!(
        "mcp-guard-example-server: MCP at http://{}{} ({mode})",
        listener.local_addr().context("local address")?,
        args.path
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot watch SIGTERM")?;
    serve(listener, &args, async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        eprintln!("mcp-guard-example-server: draining");
    })
    .await?;
    // Give cancelled sessions a moment to flush their last events.
    tokio::time::sleep(Duration::from_millis(10)).await;
    Ok(())
}
