#![allow(clippy::unwrap_used)]
//! The audit trail end to end: the sidecar in front of the real rmcp example server
//! (`--stateless-json`, MCP 2026-07-28 requests) with a Rego policy; 10,000 mixed calls
//! (allowed, denied by policy, lists) produce exactly one `mcp-guard.audit/v1` line each on the
//! sidecar's stdout, and secrets at redacted argument paths (named by the policy and by
//! `--audit-redact`) appear in no line.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use mcp_guard_tests::*;
use serde_json::{Value, json};

const CALLS: i64 = 10_000;
const CONCURRENCY: usize = 8;

const POLICY: &str = r#"package mcp.authz
import rego.v1
default allow := false
allow if input.request.tool != "delete_everything"
deny contains "delete_everything is never allowed" if input.request.tool == "delete_everything"
redact contains "arguments.password"
# Every tool is listed, so a denial is told with its reason (not as an unknown tool).
visible := true
"#;

const POLICY_SECRET: &str = "hunter2-POLICY-SECRET";
const FLAG_SECRET: &str = "Atlantis-FLAG-SECRET";

/// What request `i` of the mix is: (method, body).
fn request(i: i64) -> (&'static str, Value) {
    let meta = meta_2026();
    match i % 5 {
        0 => (
            "denied",
            json!({"jsonrpc":"2.0","id":i,"method":"tools/call",
                   "params":{"name":"delete_everything","arguments":{},"_meta":meta}}),
        ),
        1 => (
            "list",
            json!({"jsonrpc":"2.0","id":i,"method":"tools/list","params":{"_meta":meta}}),
        ),
        2 => (
            "echo",
            json!({"jsonrpc":"2.0","id":i,"method":"tools/call",
                   "params":{"name":"echo","arguments":{"text":"hi","password":POLICY_SECRET},"_meta":meta}}),
        ),
        3 => (
            "weather",
            json!({"jsonrpc":"2.0","id":i,"method":"tools/call",
                   "params":{"name":"get_weather","arguments":{"city":FLAG_SECRET},"_meta":meta}}),
        ),
        _ => (
            "add",
            json!({"jsonrpc":"2.0","id":i,"method":"tools/call",
                   "params":{"name":"add","arguments":{"a":i,"b":1},"_meta":meta}}),
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_mixed_calls_one_line_each_and_no_secret() {
    let tmp = TempDir::new("audit-e2e");
    let policy_dir = tmp.path().join("policy");
    std::fs::create_dir_all(&policy_dir).unwrap();
    std::fs::write(policy_dir.join("authz.rego"), POLICY).unwrap();
    let (_server, server_port) = start_example_server();
    let mut sc = Sidecar::start(
        server_port,
        &[
            "--policy-dir",
            policy_dir.to_str().unwrap(),
            "--audit-redact",
            "arguments.city",
            "--server-name",
            "example",
            "--pod-namespace",
            "tools",
        ],
    );
    let url = sc.url("/mcp");
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(CONCURRENCY)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();

    // A first call checks the setup before the load.
    let (status, v) = send_2026(&client, &url, &request(2).1).await;
    assert_eq!(status, 200, "{v}\n{}", sc.proc.logs());
    assert_eq!(v["result"]["content"][0]["text"], "hi", "{v}");

    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..CONCURRENCY {
        let client = client.clone();
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let mut bad = Vec::new();
            let mut i = 1000 + w as i64;
            while i < 1000 + CALLS {
                let (kind, body) = request(i);
                let (status, v) = send_2026(&client, &url, &body).await;
                let ok = status == 200
                    && match kind {
                        "denied" => v["error"]["code"] == -32003,
                        "list" => v["result"]["tools"].is_array(),
                        _ => v["result"].is_object(),
                    };
                if !ok {
                    bad.push(format!("{i} {kind}: {status} {v}"));
                }
                i += CONCURRENCY as i64;
            }
            bad
        }));
    }
    let mut bad = Vec::new();
    for t in tasks {
        bad.extend(t.await.unwrap());
    }
    let load = started.elapsed();
    assert!(
        bad.is_empty(),
        "{} bad answers, e.g. {:?}",
        bad.len(),
        &bad[..bad.len().min(3)]
    );

    // Every line is written within a moment; then no more come.
    let expected = CALLS as usize + 1;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut lines = audit_lines(&sc.proc.stdout());
    while lines.len() < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        lines = audit_lines(&sc.proc.stdout());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stdout = sc.proc.stdout();
    let lines = audit_lines(&stdout);
    sc.assert_alive();
    assert_eq!(
        lines.len(),
        expected,
        "audit lines after {load:?} of load\n{}",
        sc.proc.logs()
    );

    // Exactly one line per request id, with what the request was.
    let mut by_id: HashMap<i64, &Value> = HashMap::new();
    for l in &lines {
        let id = l["request_id"].as_i64().unwrap();
        assert!(by_id.insert(id, l).is_none(), "two lines for id {id}");
    }
    for i in (1000..1000 + CALLS).chain([2]) {
        let l = by_id
            .get(&i)
            .unwrap_or_else(|| panic!("no line for id {i}"));
        let (kind, _) = request(i);
        let (method, target, outcome, allowed) = match kind {
            "denied" => ("tools/call", json!("delete_everything"), "denied", false),
            "list" => ("tools/list", Value::Null, "ok", true),
            "echo" => ("tools/call", json!("echo"), "ok", true),
            "weather" => ("tools/call", json!("get_weather"), "ok", true),
            _ => ("tools/call", json!("add"), "ok", true),
        };
        assert_eq!(
            (
                l["method"].as_str(),
                &l["target"],
                l["outcome"].as_str(),
                l["decision"]["allowed"].as_bool()
            ),
            (Some(method), &target, Some(outcome), Some(allowed)),
            "{l}"
        );
        assert_eq!(l["server"]["namespace"], "tools", "{l}");
        assert_eq!(l["client"]["name"], "mcp-guard-tests", "{l}");
        assert_eq!(l["decision"]["mode"], "enforce", "{l}");
        if kind == "denied" {
            assert_eq!(
                l["decision"]["reasons"],
                json!(["delete_everything is never allowed"]),
                "{l}"
            );
            assert_eq!(l["error_code"], -32003, "{l}");
        }
        if kind == "echo" {
            assert_eq!(l["arguments"]["text"], "hi", "{l}");
            assert_eq!(l["arguments"]["password"], "[REDACTED]", "{l}");
        }
        if kind == "weather" {
            assert_eq!(l["arguments"]["city"], "[REDACTED]", "{l}");
        }
        if kind != "list" {
            assert!(
                l["decision"]["policy"]
                    .as_str()
                    .is_some_and(|h| h.starts_with("sha256:")),
                "{l}"
            );
        }
    }
    assert!(
        !stdout.contains(POLICY_SECRET) && !stdout.contains(FLAG_SECRET),
        "a redacted secret reached the audit trail"
    );
    assert!(
        !sc.proc.stderr().contains(POLICY_SECRET) && !sc.proc.stderr().contains(FLAG_SECRET),
        "a redacted secret reached the logs"
    );
    let (_, metrics) = sc.admin("GET", "/metrics");
    assert!(
        metrics.contains("mcp_guard_audit_dropped_total 0"),
        "{metrics}"
    );
}

/// `--audit-file` appends there instead of stdout; an upstream that is down gives
/// `upstream_error`; a JSON-RPC error answer of the server gives `error`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_file_and_error_outcomes() {
    let tmp = TempDir::new("audit-file");
    let file = tmp.path().join("audit.log");
    let (mut server, server_port) = start_example_server();
    let sc = Sidecar::start(server_port, &["--audit-file", file.to_str().unwrap()]);
    let url = sc.url("/mcp");
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let meta = meta_2026();
    let unknown = json!({"jsonrpc":"2.0","id":1,"method":"tools/call",
        "params":{"name":"no_such_tool","arguments":{},"_meta":meta}});
    let (status, v) = send_2026(&client, &url, &unknown).await;
    assert_eq!(status, 200, "{v}");
    assert!(v["error"].is_object(), "{v}");
    server.kill();
    let echo = json!({"jsonrpc":"2.0","id":2,"method":"tools/call",
        "params":{"name":"echo","arguments":{"text":"x"},"_meta":meta}});
    let (status, _) = send_2026(&client, &url, &echo).await;
    assert_eq!(status, 502);

    let deadline = Instant::now() + Duration::from_secs(10);
    let mut lines = Vec::new();
    while lines.len() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        lines = audit_lines(&std::fs::read_to_string(&file).unwrap_or_default());
    }
    assert_eq!(lines.len(), 2, "{lines:?}\n{}", sc.proc.logs());
    assert_eq!(lines[0]["outcome"], "error", "{}", lines[0]);
    assert!(lines[0]["error_code"].is_i64(), "{}", lines[0]);
    assert_eq!(lines[1]["outcome"], "upstream_error", "{}", lines[1]);
    assert_eq!(lines[1]["status"], 502, "{}", lines[1]);
    assert!(
        audit_lines(&sc.proc.stdout()).is_empty(),
        "audit lines on stdout despite --audit-file"
    );
}

/// In shadow mode a call the policy would deny is forwarded, and its line says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_mode_records_the_would_be_denial() {
    let tmp = TempDir::new("audit-shadow");
    let policy_dir = tmp.path().join("policy");
    std::fs::create_dir_all(&policy_dir).unwrap();
    std::fs::write(policy_dir.join("authz.rego"), POLICY).unwrap();
    let (_server, server_port) = start_example_server();
    let sc = Sidecar::start(
        server_port,
        &[
            "--policy-dir",
            policy_dir.to_str().unwrap(),
            "--enforcement",
            "shadow",
        ],
    );
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let (status, v) = send_2026(&client, &sc.url("/mcp"), &request(5).1).await;
    assert_eq!(status, 200, "{v}");
    assert!(v["result"].is_object(), "forwarded in shadow mode: {v}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut lines = Vec::new();
    while lines.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        lines = audit_lines(&sc.proc.stdout());
    }
    assert_eq!(lines.len(), 1, "{lines:?}\n{}", sc.proc.logs());
    let l = &lines[0];
    assert_eq!(
        l["decision"],
        json!({
            "allowed": false, "forwarded": true, "mode": "shadow",
            "reasons": ["delete_everything is never allowed"],
            "policy": l["decision"]["policy"].clone(),
            "source": "policy",
            "limit": null
        }),
        "{l}"
    );
    assert_eq!(l["outcome"], "ok", "{l}");
    assert_eq!(l["target"], "delete_everything", "{l}");
}

/// With the OTLP endpoint down, every request is still answered, and the export failures are
/// logged at most once per interval (10 s), not once per request or batch. The bound is the
/// contract itself: however long a busy machine takes over the requests, the lines may number at
/// most one more than the intervals that elapsed since the sidecar started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_endpoint_down_is_logged_once_per_interval() {
    const LOG_INTERVAL: Duration = Duration::from_secs(10);
    let (_server, server_port) = start_example_server();
    let dead = free_port();
    let endpoint = format!("http://127.0.0.1:{dead}");
    let started = Instant::now();
    let mut sc = Sidecar::start(
        server_port,
        &["--otlp-endpoint", &endpoint, "--audit-disabled"],
    );
    let url = sc.url("/mcp");
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    const N: i64 = 3000;
    for i in 0..N {
        let body = json!({"jsonrpc": "2.0", "id": i, "method": "tools/call",
            "params": {"name": "echo", "arguments": {"text": "x"},
                       "_meta": {"io.modelcontextprotocol/protocolVersion": PROTOCOL_2026,
                                 "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "1"},
                                 "io.modelcontextprotocol/clientCapabilities": {}}}});
        let (status, answer) = send_2026(&client, &url, &body).await;
        assert_eq!(status, 200, "request {i}: {answer}");
        assert!(answer.get("result").is_some(), "request {i}: {answer}");
    }
    // The batch exporter tries (and fails) several times for 3,000 spans; wait for the first
    // report, then give it time to fail again.
    let rate_limited = |l: &&str| l.contains("logged at most once per interval");
    let failures = |logs: &str, what: &str| {
        logs.lines()
            .filter(rate_limited)
            .filter(|l| l.contains(what))
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while failures(&sc.proc.stderr(), "OpenTelemetry export failed") == 0 {
        assert!(
            Instant::now() < deadline,
            "no export failure reported:\n{}",
            sc.proc.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let logs = sc.proc.stderr();
    let allowed = 1 + (started.elapsed().as_secs() / LOG_INTERVAL.as_secs()) as usize;
    for what in [
        "OpenTelemetry export failed",
        "OpenTelemetry metric export failed",
    ] {
        let n = failures(&logs, what);
        assert!(
            n <= allowed,
            "{n} lines {what:?} in {:?}, more than one per interval:\n{logs}",
            started.elapsed()
        );
    }
    // Nothing else about exports, per batch or per request: at most the startup line.
    let other_export_lines = logs
        .lines()
        .filter(|l| !rate_limited(l))
        .filter(|l| l.to_lowercase().contains("export"))
        .count();
    assert!(
        other_export_lines <= 1,
        "export trouble is logged per batch or request:\n{logs}"
    );
    sc.assert_alive();
}
