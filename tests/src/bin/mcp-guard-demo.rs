//! mcp-guard in one command: `cargo run -p mcp-guard-tests --bin mcp-guard-demo`.
//!
//! Starts, in this process and on free loopback ports, an unmodified MCP server (the rmcp example
//! server, with a destructive `delete_everything` tool) and the mcp-guard sidecar in front of it
//! with an embedded Rego policy ([`POLICY`]), then talks MCP over plain HTTP to both and prints
//! what a client sees. Exits non-zero when anything is not as expected. Needs nothing but cargo.

#[allow(dead_code)] // the server binary's `main` is not used here
#[path = "mcp-guard-example-server.rs"]
mod example_server;

use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail, ensure};
use clap::Parser;
use futures_util::StreamExt as _;
use mcp_guard_sidecar::ProxyConfig;
use serde_json::{Value, json};

const PROTOCOL_VERSION: &str = "2025-11-25";
const DENIED_TOOL: &str = "delete_everything";

/// The demo's policy, written to a temporary bundle directory as a ConfigMap would be mounted.
const POLICY: &str = r#"package mcp.authz
import rego.v1

default allow := false

# Tools whose own definition says they change nothing are open to everyone.
allow if input.tool.annotations.readOnlyHint == true

# Other tools, by name.
allow if input.request.tool in {"echo", "add"}

# Arguments are checked too; the reason reaches the client.
deny contains "add: operands above 1000 are not allowed" if {
    input.request.tool == "add"
    some v in input.request.arguments
    v > 1000
}
"#;
const ECHO_TEXT: &str = "hello through mcp-guard";
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// Runs an MCP server and the mcp-guard sidecar in this process and shows what a client sees.
#[derive(Debug, Parser)]
#[command(name = "mcp-guard-demo", version)]
struct DemoArgs {
    /// After the transcript, keep the server and the sidecar running (until Ctrl-C) so you can
    /// talk to them yourself, e.g. with curl or the MCP Inspector.
    #[arg(long, env = "MCP_GUARD_DEMO_KEEP_RUNNING")]
    keep_running: bool,
}

/// Wraps the sidecar's flags so they parse exactly as on its command line (and environment).
#[derive(Debug, Parser)]
struct SidecarFlags {
    #[command(flatten)]
    config: ProxyConfig,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = DemoArgs::parse();
    match run(&args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\nmcp-guard demo FAILED: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: &DemoArgs) -> anyhow::Result<()> {
    // 1. The MCP server, unmodified: stateful Streamable HTTP, SSE answers.
    let server_listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .context("cannot bind a loopback port for the MCP server")?;
    let server_addr = server_listener.local_addr().context("server address")?;
    let server_args = example_server::ExampleArgs {
        listen: server_addr,
        path: "/mcp".to_owned(),
        stateless_json: false,
        stateless_sse: false,
        allowed_hosts: vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
    };
    let (stop_server, server_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        example_server::serve(server_listener, &server_args, async {
            let _ = server_stopped.await;
        })
        .await
    });

    // 2. The sidecar in front of it, through its library, with the demo's policy.
    let policy_dir = std::env::temp_dir().join(format!("mcp-guard-demo-{}", std::process::id()));
    std::fs::create_dir_all(&policy_dir)
        .and_then(|()| std::fs::write(policy_dir.join("authz.rego"), POLICY))
        .with_context(|| format!("cannot write the demo policy to {}", policy_dir.display()))?;
    let audit_file = policy_dir.join("audit.jsonl");
    let proxy_addr = free_loopback_port().context("no free port for the sidecar")?;
    let admin_addr = free_loopback_port().context("no free port for the sidecar admin")?;
    let flags = [
        "mcp-guard-sidecar".to_owned(),
        "--listen".to_owned(),
        proxy_addr.to_string(),
        "--admin-listen".to_owned(),
        admin_addr.to_string(),
        "--upstream-host".to_owned(),
        "127.0.0.1".to_owned(),
        "--upstream-port".to_owned(),
        server_addr.port().to_string(),
        "--path".to_owned(),
        "/mcp".to_owned(),
        "--policy-dir".to_owned(),
        policy_dir.to_string_lossy().into_owned(),
        "--audit-file".to_owned(),
        audit_file.to_string_lossy().into_owned(),
    ];
    let config = SidecarFlags::try_parse_from(&flags)
        .map_err(|e| anyhow!("sidecar flags rejected: {e}"))?
        .config;
    let (stop_sidecar, sidecar_stopped) = tokio::sync::oneshot::channel::<()>();
    // Polled on this task (not spawned): the client below runs concurrently with it, and a
    // sidecar that returns early ends the demo at once.
    let sidecar = mcp_guard_sidecar::run_proxy(config, async {
        let _ = sidecar_stopped.await;
    });
    let mut sidecar = std::pin::pin!(sidecar);

    let server_url = format!("http://{server_addr}/mcp");
    let proxy_url = format!("http://{proxy_addr}/mcp");
    println!("mcp-guard demo\n");
    println!("  MCP server   {server_url}   (rmcp, unmodified; its tools are listed below)");
    println!("  sidecar      {proxy_url}   (admin http://{admin_addr})");
    println!("  policy       {}/authz.rego:\n", policy_dir.display());
    for line in POLICY.lines().filter(|l| !l.trim().is_empty()) {
        println!("      {line}");
    }
    println!();

    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .context("cannot build the HTTP client")?;

    // 3. Wait until the sidecar says it is ready (it checks the upstream accepts connections),
    // 4. then the conversation.
    let client = async {
        wait_ready(&http, admin_addr).await?;
        converse(&http, &server_url, &proxy_url).await?;
        if args.keep_running {
            println!("\nKept running; point an MCP client at {proxy_url}. Ctrl-C to stop.");
            let _ = tokio::signal::ctrl_c().await;
        }
        anyhow::Ok(())
    };
    let (outcome, sidecar_done) = tokio::select! {
        ended = &mut sidecar => {
            let outcome = match ended {
                Ok(()) => Err(anyhow!("the sidecar stopped by itself while the demo was running")),
                Err(e) => Err(anyhow!(e).context("the sidecar failed")),
            };
            (outcome, true)
        }
        outcome = client => (outcome, false),
    };

    // 5. Stop both, the sidecar first (it drains), then the server.
    let _ = stop_sidecar.send(());
    if !sidecar_done {
        match tokio::time::timeout(Duration::from_secs(5), &mut sidecar).await {
            Ok(Err(e)) => eprintln!("sidecar stopped with an error: {e}"),
            Ok(Ok(())) => {}
            Err(_) => eprintln!("sidecar did not stop within 5 s"),
        }
    }
    let _ = stop_server.send(());
    match tokio::time::timeout(Duration::from_secs(5), server).await {
        Ok(Ok(Err(e))) => eprintln!("MCP server stopped with an error: {e:#}"),
        Ok(Err(e)) => eprintln!("MCP server task failed: {e}"),
        Ok(Ok(Ok(()))) | Err(_) => {}
    }

    outcome?;
    show_audit(&audit_file).await?;
    println!(
        "\nOK: the server is unchanged, yet through mcp-guard the client never saw {DENIED_TOOL} \
         and could not call it, and add's arguments were checked by the policy."
    );
    Ok(())
}

/// The client's side of the demo: first a look at the server itself, then the same through the
/// sidecar, checking each answer.
async fn converse(http: &reqwest::Client, server_url: &str, proxy_url: &str) -> anyhow::Result<()> {
    // Straight to the server, to show what the sidecar hides.
    let mut direct = McpSession::new(http.clone(), server_url.to_owned());
    direct
        .initialize()
        .await
        .context("initialize, direct to the server")?;
    let direct_tools = tool_names(&direct.request("tools/list", json!({})).await?)?;
    println!("Directly at the MCP server:");
    println!(
        "  tools/list                    -> {}",
        direct_tools.join(", ")
    );
    ensure!(
        direct_tools.iter().any(|t| t == DENIED_TOOL),
        "the example server does not offer {DENIED_TOOL}"
    );
    direct.close().await;

    println!("\nThrough mcp-guard:");
    let mut mcp = McpSession::new(http.clone(), proxy_url.to_owned());
    let info = mcp
        .initialize()
        .await
        .context("initialize through the sidecar")?;
    println!(
        "  initialize                    -> {} {}, protocol {}, session {}",
        info.pointer("/serverInfo/name")
            .and_then(Value::as_str)
            .unwrap_or("?"),
        info.pointer("/serverInfo/version")
            .and_then(Value::as_str)
            .unwrap_or("?"),
        info.get("protocolVersion")
            .and_then(Value::as_str)
            .unwrap_or("?"),
        mcp.session_id.as_deref().unwrap_or("(none)"),
    );

    let listed = mcp
        .request("tools/list", json!({}))
        .await
        .context("tools/list through the sidecar")?;
    let tools = tool_names(&listed)?;
    let hidden = !tools.iter().any(|t| t == DENIED_TOOL);
    println!(
        "  tools/list                    -> {}{}",
        tools.join(", "),
        if hidden {
            format!("   ({DENIED_TOOL} hidden)")
        } else {
            String::new()
        }
    );
    ensure!(
        hidden,
        "tools/list through the sidecar still shows {DENIED_TOOL}: {tools:?}"
    );
    ensure!(
        tools.iter().any(|t| t == "echo"),
        "tools/list through the sidecar lost the allowed tool echo: {tools:?}"
    );

    let echoed = mcp
        .request(
            "tools/call",
            json!({ "name": "echo", "arguments": { "text": ECHO_TEXT } }),
        )
        .await
        .context("tools/call echo through the sidecar")?;
    let text = first_text(&echoed)
        .with_context(|| format!("tools/call echo returned no text: {echoed}"))?;
    println!("  tools/call echo {{\"text\": \"{ECHO_TEXT}\"}}");
    println!("                                -> \"{text}\"");
    ensure!(
        text == ECHO_TEXT && echoed.get("isError") != Some(&Value::Bool(true)),
        "tools/call echo answered {echoed}, expected the text back"
    );

    let (status, denied) = mcp
        .call(
            "tools/call",
            json!({ "name": DENIED_TOOL, "arguments": {} }),
        )
        .await
        .with_context(|| format!("tools/call {DENIED_TOOL} through the sidecar"))?;
    println!("  tools/call {DENIED_TOOL}");
    match denied.get("error") {
        Some(error) => {
            let code = error.get("code").cloned().unwrap_or(Value::Null);
            let message = error
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("(no message)");
            println!(
                "                                -> refused (HTTP {status}): JSON-RPC error {code}: {message}"
            );
        }
        None => bail!(
            "tools/call {DENIED_TOOL} was not refused (HTTP {status}); the answer was {denied}"
        ),
    }
    ensure!(
        !denied.to_string().contains("\"deleted\""),
        "the denied call reached the server: {denied}"
    );

    let (status, refused) = mcp
        .call(
            "tools/call",
            json!({ "name": "add", "arguments": { "a": 5000, "b": 1 } }),
        )
        .await
        .context("tools/call add through the sidecar")?;
    println!("  tools/call add {{\"a\": 5000, \"b\": 1}}");
    let reasons = refused
        .pointer("/error/data/reasons")
        .cloned()
        .unwrap_or(Value::Null);
    println!("                                -> refused (HTTP {status}): reasons {reasons}");
    ensure!(
        reasons == json!(["add: operands above 1000 are not allowed"]),
        "tools/call add with a large operand was not refused with its reason: {refused}"
    );

    mcp.close().await;
    Ok(())
}

/// A minimal Streamable HTTP MCP client (protocol 2025-11-25): sessions, JSON or SSE answers.
struct McpSession {
    http: reqwest::Client,
    url: String,
    session_id: Option<String>,
    next_id: u64,
}

impl McpSession {
    fn new(http: reqwest::Client, url: String) -> Self {
        Self {
            http,
            url,
            session_id: None,
            next_id: 1,
        }
    }

    /// `initialize` then `notifications/initialized`; returns the initialize result.
    async fn initialize(&mut self) -> anyhow::Result<Value> {
        let result = self
            .request(
                "initialize",
                json!({
                    "protocolVersion": PROTOCOL_VERSION,
                    "capabilities": {},
                    "clientInfo": { "name": "mcp-guard-demo", "version": env!("CARGO_PKG_VERSION") }
                }),
            )
            .await?;
        let response = self
            .post(&json!({ "jsonrpc": "2.0", "method": "notifications/initialized" }))
            .send()
            .await
            .context("notifications/initialized: no answer")?;
        let status = response.status();
        ensure!(
            status.is_success(),
            "notifications/initialized answered HTTP {status}: {}",
            response.text().await.unwrap_or_default()
        );
        Ok(result)
    }

    /// Sends a request and returns its `result`; a JSON-RPC error is an error.
    async fn request(&mut self, method: &str, params: Value) -> anyhow::Result<Value> {
        let (status, message) = self.call(method, params).await?;
        if let Some(error) = message.get("error") {
            bail!("{method} failed (HTTP {status}): {error}");
        }
        message
            .get("result")
            .cloned()
            .with_context(|| format!("{method}: answer has neither result nor error: {message}"))
    }

    /// Sends a request and returns the HTTP status and the whole JSON-RPC answer.
    async fn call(
        &mut self,
        method: &str,
        params: Value,
    ) -> anyhow::Result<(reqwest::StatusCode, Value)> {
        let id = self.next_id;
        self.next_id += 1;
        let body = json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params });
        let response = self
            .post(&body)
            .send()
            .await
            .with_context(|| format!("{method}: no answer from {}", self.url))?;
        let status = response.status();
        if let Some(session) = response
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
        {
            self.session_id = Some(session.to_owned());
        }
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        let message = if content_type.starts_with("text/event-stream") {
            read_sse_answer(response, id)
                .await
                .with_context(|| format!("{method}: HTTP {status}, SSE answer"))?
        } else {
            let text = response
                .text()
                .await
                .with_context(|| format!("{method}: reading the HTTP {status} answer"))?;
            serde_json::from_str::<Value>(&text).with_context(|| {
                format!("{method}: HTTP {status}, answer is not JSON-RPC: {text:?}")
            })?
        };
        Ok((status, message))
    }

    fn post(&self, body: &Value) -> reqwest::RequestBuilder {
        let mut request = self
            .http
            .post(&self.url)
            .header(
                reqwest::header::ACCEPT,
                "application/json, text/event-stream",
            )
            .header("MCP-Protocol-Version", PROTOCOL_VERSION)
            .json(body);
        if let Some(session) = &self.session_id {
            request = request.header("Mcp-Session-Id", session);
        }
        request
    }

    /// Ends the session (DELETE); failures do not matter to the demo.
    async fn close(&self) {
        if let Some(session) = &self.session_id {
            let _ = self
                .http
                .delete(&self.url)
                .header("Mcp-Session-Id", session)
                .header("MCP-Protocol-Version", PROTOCOL_VERSION)
                .send()
                .await;
        }
    }
}

/// Reads SSE events until the JSON-RPC answer with `id` arrives (skipping priming events,
/// notifications and server requests).
async fn read_sse_answer(response: reqwest::Response, id: u64) -> anyhow::Result<Value> {
    let mut stream = response.bytes_stream();
    let mut buffer = String::new();
    loop {
        while let Some((event, rest)) = split_event(&buffer) {
            let data = event
                .lines()
                .filter_map(|line| line.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect::<Vec<_>>()
                .join("\n");
            buffer = rest;
            if data.trim().is_empty() {
                continue;
            }
            let message: Value = serde_json::from_str(&data)
                .with_context(|| format!("SSE event data is not JSON: {data:?}"))?;
            let is_answer = message.get("id") == Some(&json!(id))
                && (message.get("result").is_some() || message.get("error").is_some());
            if is_answer {
                return Ok(message);
            }
        }
        match stream.next().await {
            Some(chunk) => {
                let chunk = chunk.context("SSE stream broke")?;
                buffer.push_str(&String::from_utf8_lossy(&chunk).replace("\r\n", "\n"));
            }
            None => bail!("SSE stream ended without the answer; left over: {buffer:?}"),
        }
    }
}

/// Splits the first complete SSE event (ended by a blank line) off `buffer`.
fn split_event(buffer: &str) -> Option<(String, String)> {
    buffer
        .find("\n\n")
        .map(|end| (buffer[..end].to_owned(), buffer[end + 2..].to_owned()))
}

fn tool_names(list: &Value) -> anyhow::Result<Vec<String>> {
    let tools = list
        .get("tools")
        .and_then(Value::as_array)
        .with_context(|| format!("tools/list result has no tools array: {list}"))?;
    Ok(tools
        .iter()
        .filter_map(|t| t.get("name").and_then(Value::as_str).map(str::to_owned))
        .collect())
}

fn first_text(result: &Value) -> Option<&str> {
    result
        .get("content")?
        .as_array()?
        .iter()
        .find_map(|c| c.get("text").and_then(Value::as_str))
}

/// A loopback port nobody listens on right now (the sidecar binds it a moment later).
fn free_loopback_port() -> std::io::Result<SocketAddr> {
    std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()
}

/// Polls the sidecar's admin `/readyz` until it answers 200.
async fn wait_ready(http: &reqwest::Client, admin: SocketAddr) -> anyhow::Result<()> {
    let url = format!("http://{admin}/readyz");
    let started = Instant::now();
    let mut last = String::from("no answer yet");
    while started.elapsed() < READY_TIMEOUT {
        match http.get(&url).timeout(Duration::from_secs(1)).send().await {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) => last = format!("HTTP {}", r.status()),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    bail!(
        "the sidecar was not ready within {} s ({url}: {last})",
        READY_TIMEOUT.as_secs()
    )
}

/// Prints the audit trail the sidecar wrote (one JSON line per governed or list request, written
/// off the request path, so it is read until the calls above are all there).
async fn show_audit(path: &std::path::Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let lines = loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let calls = lines.iter().filter(|l| l["method"] == "tools/call").count();
        if calls >= 3 || Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!("\nAudit trail ({}):", path.display());
    for l in &lines {
        let target = l["target"].as_str().unwrap_or("");
        let reasons = l["decision"]["reasons"]
            .as_array()
            .filter(|r| !r.is_empty())
            .map(|r| format!(" {}", Value::Array(r.clone())))
            .unwrap_or_default();
        println!(
            "  {:<12} {:<18} allowed={:<5} outcome={}{reasons}",
            l["method"].as_str().unwrap_or("?"),
            target,
            l["decision"]["allowed"],
            l["outcome"].as_str().unwrap_or("?"),
        );
    }
    ensure!(
        lines.iter().filter(|l| l["method"] == "tools/call").count() == 3,
        "expected one audit line per tools/call (3), got {lines:?}"
    );
    Ok(())
}
