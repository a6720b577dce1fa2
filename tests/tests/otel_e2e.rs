#![allow(clippy::unwrap_used)]
//! OpenTelemetry end to end: the sidecar exports a server span per MCP request over OTLP/HTTP to a
//! real OTLP receiver (PyPI `opentelemetry-proto`, `tests/scripts/otlp_receiver.py`, installed by
//! `tests/scripts/install-otlp.sh`), in front of a real MCP server (PyPI `mcp`,
//! `identity_server.py`, whose `whoami` tool returns the headers its call arrived with). The trace
//! context comes from the `traceparent` header, or from `params._meta.traceparent`, or is new; in
//! every case the span, the audit line and the MCP server agree on the trace id, and the server's
//! parent is the sidecar's span.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use mcp_guard_tests::oidc::IdentityServer;
use mcp_guard_tests::otlp::Receiver;
use mcp_guard_tests::*;
use serde_json::{Value, json};

/// A span's attributes as a map of key to OTLP JSON value (`{"stringValue": ...}`).
fn attrs(span: &Value) -> HashMap<String, Value> {
    span["attributes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| (a["key"].as_str().unwrap().to_owned(), a["value"].clone()))
        .collect()
}

fn string_attr(span: &Value, key: &str) -> Option<String> {
    attrs(span)
        .get(key)
        .and_then(|v| v["stringValue"].as_str())
        .map(str::to_owned)
}

/// The `traceparent` the MCP server got for call `id` (its `whoami` answer).
fn server_traceparent(resp: &McpResponse, id: i64) -> String {
    let msg = resp.expect_response(&json!(id));
    let text = msg["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("{msg}"));
    let headers: Value = serde_json::from_str(text).unwrap();
    headers["traceparent"]
        .as_str()
        .unwrap_or_else(|| panic!("the MCP server got no traceparent: {headers}"))
        .to_owned()
}

fn whoami(id: i64, meta: Option<Value>) -> Value {
    let mut body = call_body(id, "whoami", json!({}));
    if let Some(m) = meta {
        body["params"]["_meta"] = m;
    }
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_the_receiver_and_agree_with_audit_and_server() {
    let receiver = Receiver::start();
    let server = IdentityServer::start();
    let endpoint = format!("http://127.0.0.1:{}", receiver.port);
    let mut sc = Sidecar::start(
        server.port,
        &[
            "--otlp-endpoint",
            &endpoint,
            "--server-name",
            "identity",
            "--pod-namespace",
            "tools",
        ],
    );
    let s = Session::initialize(&sc.url("/mcp"), PROTOCOL_2025).await;

    // 1. traceparent header.
    let header_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let header_parent = "00f067aa0ba902b7";
    let tp = format!("00-{header_trace}-{header_parent}-01");
    let mut h = s.headers();
    h.push(("traceparent", tp.as_str()));
    let r1 = post(&s.url, &whoami(11, None), &h).await;
    let got1 = server_traceparent(&r1, 11);

    // 2. params._meta.traceparent, no header.
    let meta_trace = "0af7651916cd43dd8448eb211c80319c";
    let meta_parent = "b7ad6b7169203331";
    let meta = json!({"traceparent": format!("00-{meta_trace}-{meta_parent}-01")});
    let r2 = s.post(&whoami(12, Some(meta))).await;
    let got2 = server_traceparent(&r2, 12);

    // 3. No trace context: a new trace.
    let r3 = s.post(&whoami(13, None)).await;
    let got3 = server_traceparent(&r3, 13);

    // The spans arrive (the batch processor exports every few seconds).
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut spans = receiver.spans();
    while spans.len() < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        spans = receiver.spans();
    }
    sc.assert_alive();
    let calls: Vec<&Value> = spans
        .iter()
        .filter(|s| s["name"] == "tools/call whoami")
        .collect();
    assert_eq!(
        calls.len(),
        3,
        "spans: {spans:?}\n{}\n{}",
        sc.proc.logs(),
        receiver.proc.logs()
    );
    let lines = audit_lines(&sc.proc.stdout());
    let line = |id: i64| {
        lines
            .iter()
            .find(|l| l["request_id"] == id)
            .unwrap_or_else(|| panic!("no audit line for {id}: {lines:?}"))
    };
    let span_of = |trace: &str| {
        calls
            .iter()
            .find(|s| s["traceIdHex"] == trace)
            .copied()
            .unwrap_or_else(|| panic!("no span in trace {trace}: {calls:?}"))
    };

    for (id, got, expect_trace, expect_parent) in [
        (11, &got1, Some(header_trace), Some(header_parent)),
        (12, &got2, Some(meta_trace), Some(meta_parent)),
        (13, &got3, None, None),
    ] {
        let audit_trace = line(id)["trace_id"].as_str().unwrap().to_owned();
        assert_eq!(audit_trace.len(), 32, "{}", line(id));
        if let Some(t) = expect_trace {
            assert_eq!(audit_trace, t, "{}", line(id));
        }
        let span = span_of(&audit_trace);
        // The span is a server span, child of the caller's span when there was one.
        assert_eq!(span["kind"], "SPAN_KIND_SERVER", "{span}");
        match expect_parent {
            Some(p) => assert_eq!(span["parentSpanIdHex"], p, "{span}"),
            None => assert!(
                span["parentSpanIdHex"]
                    .as_str()
                    .unwrap_or_default()
                    .is_empty(),
                "{span}"
            ),
        }
        // The MCP server's parent is the sidecar's span, in the same trace.
        let span_id = span["spanIdHex"].as_str().unwrap();
        assert_eq!(
            got,
            &format!("00-{audit_trace}-{span_id}-01"),
            "server got {got}, span {span}"
        );
        // The attributes.
        assert_eq!(
            string_attr(span, "mcp.method.name").as_deref(),
            Some("tools/call")
        );
        assert_eq!(
            string_attr(span, "gen_ai.tool.name").as_deref(),
            Some("whoami")
        );
        assert_eq!(string_attr(span, "mcp.session.id"), s.id.clone(), "{span}");
        assert_eq!(
            string_attr(span, "mcp.protocol.version").as_deref(),
            Some(PROTOCOL_2025),
            "{span}"
        );
        assert_eq!(
            string_attr(span, "mcp_guard.decision").as_deref(),
            Some("allow")
        );
        assert_eq!(
            string_attr(span, "mcp_guard.outcome").as_deref(),
            Some("ok")
        );
        assert_eq!(
            string_attr(span, "mcp_guard.audit_id").as_deref(),
            line(id)["audit_id"].as_str(),
            "{span}"
        );
        let resource = span["resource"].to_string();
        assert!(
            resource.contains("mcp-guard-sidecar") && resource.contains("k8s.namespace.name"),
            "{resource}"
        );
    }

    // Metrics: the sidecar exports what it has when it stops (SIGTERM).
    sc.proc.signal("TERM");
    assert!(
        sc.proc.wait_exit(Duration::from_secs(15)).is_some(),
        "{}",
        sc.proc.logs()
    );
    let metrics = receiver.metrics();
    let duration = metrics
        .iter()
        .find(|m| m["name"] == "mcp.server.operation.duration")
        .unwrap_or_else(|| panic!("no duration histogram: {metrics:?}\n{}", sc.proc.logs()));
    assert_eq!(duration["unit"], "s", "{duration}");
    let points = duration["histogram"]["dataPoints"].as_array().unwrap();
    let point = points
        .iter()
        .find(|p| {
            let a = attrs(p);
            a.get("gen_ai.tool.name") == Some(&json!({"stringValue": "whoami"}))
                && a.get("mcp.method.name") == Some(&json!({"stringValue": "tools/call"}))
                && a.get("mcp_guard.decision") == Some(&json!({"stringValue": "allow"}))
        })
        .unwrap_or_else(|| panic!("no tools/call whoami point: {duration}"));
    assert_eq!(point["count"], "3", "{point}");
    assert_eq!(point["explicitBounds"][0], 5e-05, "{point}");
    let requests = metrics
        .iter()
        .find(|m| m["name"] == "mcp_guard.requests")
        .unwrap_or_else(|| panic!("no request counter: {metrics:?}"));
    assert!(requests.to_string().contains("whoami"), "{requests}");
    assert!(
        metrics
            .iter()
            .any(|m| m["name"] == "mcp_guard.audit.dropped"),
        "{metrics:?}"
    );
    drop(server);
}

/// A denied call is a span too, with the decision, and the MCP server never sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_call_has_a_span_with_the_decision() {
    let receiver = Receiver::start();
    let server = IdentityServer::start();
    let endpoint = format!("http://127.0.0.1:{}", receiver.port);
    let sc = Sidecar::start(
        server.port,
        &["--otlp-endpoint", &endpoint, "--deny-tools", "whoami"],
    );
    let s = Session::initialize(&sc.url("/mcp"), PROTOCOL_2025).await;
    let r = s.post(&whoami(21, None)).await;
    assert!(
        r.expect_response(&json!(21))["error"].is_object(),
        "{}",
        r.body
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut spans = receiver.spans();
    while spans.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        spans = receiver.spans();
    }
    let span = spans
        .iter()
        .find(|s| s["name"] == "tools/call whoami")
        .unwrap_or_else(|| panic!("no span: {spans:?}\n{}", sc.proc.logs()));
    assert_eq!(
        string_attr(span, "mcp_guard.decision").as_deref(),
        Some("deny")
    );
    assert_eq!(
        string_attr(span, "mcp_guard.outcome").as_deref(),
        Some("denied")
    );
    assert_eq!(span["status"]["code"], "STATUS_CODE_ERROR", "{span}");
    let line = audit_lines(&sc.proc.stdout())
        .into_iter()
        .find(|l| l["request_id"] == 21)
        .unwrap();
    assert_eq!(span["traceIdHex"], line["trace_id"], "{span}\n{line}");
}

/// With a verified token, the span's `enduser.id` and the audit line's subject are the token's
/// `sub`; the token itself reaches neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_verified_caller_is_the_spans_enduser() {
    use mcp_guard_tests::oidc::{Provider, RESOURCE, gen_key, jwt_parts};
    let tmp = TempDir::new("otel-identity");
    let key = gen_key(tmp.path(), "k1");
    let provider = Provider::start(&[key.as_path()]);
    let receiver = Receiver::start();
    let server = IdentityServer::start();
    let issuer = provider.issuer();
    let endpoint = format!("http://127.0.0.1:{}", receiver.port);
    let sc = Sidecar::start(
        server.port,
        &[
            "--issuer",
            &issuer,
            "--resource-uri",
            RESOURCE,
            "--otlp-endpoint",
            &endpoint,
        ],
    );
    let token = provider.admin_token().await;
    let (_, claims) = jwt_parts(&token);
    let sub = claims["sub"].as_str().unwrap().to_owned();
    mcp_guard_tests::oidc::whoami(&sc.url("/mcp"), &token).await;

    let deadline = Instant::now() + Duration::from_secs(30);
    let mut spans = receiver.spans();
    while spans.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        spans = receiver.spans();
    }
    let span = spans
        .iter()
        .find(|s| s["name"] == "tools/call whoami")
        .unwrap_or_else(|| panic!("no span: {spans:?}\n{}", sc.proc.logs()));
    assert_eq!(
        string_attr(span, "enduser.id").as_deref(),
        Some(sub.as_str()),
        "{span}"
    );
    let stdout = sc.proc.stdout();
    let line = audit_lines(&stdout)
        .into_iter()
        .find(|l| l["target"] == "whoami")
        .unwrap();
    assert_eq!(line["subject"]["sub"], sub.as_str(), "{line}");
    assert_eq!(line["subject"]["issuer"], issuer.as_str(), "{line}");
    assert_eq!(line["trace_id"], span["traceIdHex"], "{line}");
    let dump = std::fs::read_to_string(&receiver.out).unwrap_or_default();
    assert!(
        !stdout.contains(&token) && !dump.contains(&token) && !sc.proc.stderr().contains(&token),
        "the token leaked into the audit trail, the spans or the logs"
    );
}
