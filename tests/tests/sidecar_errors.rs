//! Failure paths and the admin port: every error has a JSON-RPC body and the sidecar keeps
//! serving afterwards. The upstream is the PyPI `mcp` server (tests/scripts/py/server.py);
//! "upstream down" and "reset mid-stream" are that real server not running, or killed.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mcp_guard_tests::*;
use serde_json::json;

fn headers_2026(method: &str) -> Vec<(&str, &str)> {
    vec![
        ("mcp-protocol-version", PROTOCOL_2026),
        ("mcp-method", method),
    ]
}

/// A request the upstream answers 200; proves the sidecar still serves.
async fn assert_serves(sc: &mut Sidecar) {
    let list = post(
        &sc.url("/mcp"),
        &with_meta_2026(list_body(99)),
        &headers_2026("tools/list"),
    )
    .await;
    assert_eq!(
        list.status, 200,
        "a valid request after the error: {}",
        list.body
    );
    assert!(list.expect_response(&json!(99)).get("result").is_some());
    sc.assert_alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_gets_jsonrpc_errors_and_the_sidecar_stays_up() {
    let py = PyServer::start(PyAnswers::Json);
    let mut sc = Sidecar::start(py.port, &["--max-body-bytes", "2048"]);
    let url = sc.url("/mcp");

    let bad = post_raw(&url, "{\"jsonrpc\": \"2.0\", \"id\": 1, ", &[]).await;
    assert_eq!(bad.status, 400, "malformed JSON: {}", bad.body);
    assert_jsonrpc_error(&bad.body, Some(-32700));
    assert_serves(&mut sc).await;

    for not_rpc in [
        r#"{"hello": "world"}"#,
        r#"{"jsonrpc": "1.0", "id": 1, "method": "tools/list"}"#,
        r#""tools/list""#,
        r#"[]"#,
    ] {
        let r = post_raw(&url, not_rpc, &[]).await;
        assert_eq!(r.status, 400, "not JSON-RPC {not_rpc}: {}", r.body);
        assert_jsonrpc_error(&r.body, Some(-32600));
    }
    assert_serves(&mut sc).await;

    let big = json!({
        "jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": "echo", "arguments": {"text": "x".repeat(8192)}}
    });
    let r = post(&url, &big, &[]).await;
    assert_eq!(r.status, 413, "body over --max-body-bytes: {}", r.body);
    assert_jsonrpc_error(&r.body, None);
    assert_serves(&mut sc).await;

    let r = post(&sc.url("/no/such/path"), &list_body(3), &[]).await;
    assert_eq!(r.status, 404, "unknown path: {}", r.body);
    assert_jsonrpc_error(&r.body, None);
    let r = request(reqwest::Method::GET, &sc.url("/favicon.ico"), &[]).await;
    assert_eq!(r.status, 404, "unknown path (GET): {}", r.body);
    assert_serves(&mut sc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_is_502_and_readyz_follows_the_upstream() {
    let port = free_port();
    let mut sc = Sidecar::start(port, &[]);
    assert_eq!(sc.admin("GET", "/livez").0, 200);
    assert_eq!(
        sc.admin("GET", "/readyz").0,
        503,
        "/readyz with nothing on the upstream port"
    );
    let r = post(
        &sc.url("/mcp"),
        &with_meta_2026(list_body(1)),
        &headers_2026("tools/list"),
    )
    .await;
    assert_eq!(r.status, 502, "upstream down: {}", r.body);
    let err = assert_jsonrpc_error(&r.body, Some(-32004));
    assert_eq!(err["id"], 1, "the error answers the request's id: {err}");
    sc.assert_alive();

    // The server comes up on that port: ready, and requests go through.
    let _py = PyServer::start_on(PyAnswers::Json, port);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if sc.admin("GET", "/readyz").0 == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz stayed 503 with the upstream up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_serves(&mut sc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_reset_mid_stream_ends_the_clients_stream() {
    let mut py = PyServer::start(PyAnswers::Sse);
    let port = py.port;
    let mut sc = Sidecar::start(port, &[]);
    let body = with_meta_2026(call_with_progress_body(
        1,
        "slow_count",
        json!({"steps": 50, "interval_ms": 200}),
        "reset",
    ));
    let mut h = headers_2026("tools/call");
    h.push(("mcp-name", "slow_count"));
    let mut stream = EventStream::post(&sc.url("/mcp"), &body, &h).await;
    assert_eq!(stream.status, 200);
    let first = stream.next_json(Duration::from_secs(15)).await;
    assert!(
        first.is_some_and(|(v, _)| v["method"] == "notifications/progress"),
        "a first progress event before the reset"
    );

    // The server dies mid-stream (SIGKILL: the kernel resets its connections).
    py.proc.kill();
    let killed_at = Instant::now();
    loop {
        match stream.next(Duration::from_secs(15)).await {
            Next::Event(_) => continue,
            Next::End => break,
            Next::Timeout => panic!(
                "the client's stream hangs {:?} after the upstream died",
                killed_at.elapsed()
            ),
        }
    }
    sc.assert_alive();

    // Down: a clear 502. Back up on the same port: served again.
    let r = post(
        &sc.url("/mcp"),
        &with_meta_2026(list_body(2)),
        &headers_2026("tools/list"),
    )
    .await;
    assert_eq!(r.status, 502, "{}", r.body);
    assert_jsonrpc_error(&r.body, None);
    let _py2 = PyServer::start_on(PyAnswers::Sse, port);
    assert_serves(&mut sc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_livez_readyz_metrics() {
    let py = PyServer::start(PyAnswers::Json);
    let mut sc = Sidecar::start(py.port, &["--deny-tools", "secret_tool"]);
    assert_eq!(sc.admin("GET", "/livez").0, 200);
    sc.wait_ready();
    assert_eq!(sc.admin("GET", "/readyz").0, 200);
    assert_serves(&mut sc).await;
    let denied = post(
        &sc.url("/mcp"),
        &with_meta_2026(call_body(5, "secret_tool", json!({}))),
        &headers_2026("tools/call"),
    )
    .await;
    assert_denied(denied.expect_response(&json!(5)), "secret_tool");

    let resp = reqwest::Client::builder()
        .no_proxy()
        .timeout(HTTP_TIMEOUT)
        .build()
        .unwrap()
        .get(sc.admin_url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        ct.starts_with("text/plain") || ct.contains("openmetrics"),
        "{ct}"
    );
    let text = resp.text().await.unwrap();
    let samples: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("mcp_guard_requests_total"))
        .collect();
    assert!(
        !samples.is_empty(),
        "no mcp_guard_requests_total in:\n{text}"
    );
    let total: f64 = samples
        .iter()
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(total >= 2.0, "two requests were served: {samples:?}");
    assert!(!py.secret_tool_ran());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_only_from_loopback() {
    let py = PyServer::start(PyAnswers::Json);
    let ip = non_loopback_ipv4().expect(
        "this test needs a non-loopback IPv4 address on the machine to call /shutdown from",
    );
    let mut sc = Sidecar::start_with_admin_host(py.port, &[], [0, 0, 0, 0].into());

    let remote = SocketAddr::new(ip.into(), sc.admin_port);
    let (status, body) = http_blocking(remote, "POST", "/shutdown", HTTP_TIMEOUT)
        .expect("POST /shutdown from a non-loopback address");
    assert_eq!(
        status, 403,
        "/shutdown from {ip} must be refused as forbidden: {body}"
    );
    std::thread::sleep(Duration::from_millis(500));
    sc.assert_alive();
    // Other admin endpoints remain reachable from outside loopback (kubelet probes).
    let (status, _) = http_blocking(remote, "GET", "/livez", HTTP_TIMEOUT).unwrap();
    assert_eq!(status, 200);

    let (status, body) = sc.admin("POST", "/shutdown");
    assert_eq!(status, 200, "/shutdown from loopback: {body}");
    let exit = sc.proc.wait_exit(Duration::from_secs(30));
    assert!(
        exit.is_some(),
        "the sidecar did not exit after /shutdown\n{}",
        sc.proc.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upstream_headers_hit_the_upstream_timeout() {
    // A JSON-answering server sends its headers only with the result, after the tool's 3 s. The
    // same call answers 200 directly; with a 1 s --upstream-timeout the sidecar gives up on it:
    // 504 with a JSON-RPC error under the call's id (a 200 would mean no timeout fired). How long
    // that took is not asserted: on a busy machine only the order of events is certain.
    let py = PyServer::start(PyAnswers::Json);
    let mut h = headers_2026("tools/call");
    h.push(("mcp-name", "slow_count"));
    let slow = with_meta_2026(call_body(
        1,
        "slow_count",
        json!({"steps": 10, "interval_ms": 300}),
    ));
    let direct = post(&format!("http://127.0.0.1:{}/mcp", py.port), &slow, &h).await;
    assert_eq!(
        direct.status, 200,
        "the slow call, directly: {}",
        direct.body
    );
    assert!(direct.expect_response(&json!(1)).get("result").is_some());

    let mut sc = Sidecar::start(py.port, &["--upstream-timeout", "1s"]);
    let r = post(&sc.url("/mcp"), &slow, &h).await;
    assert_eq!(r.status, 504, "upstream timeout: {}", r.body);
    let err = assert_jsonrpc_error(&r.body, Some(-32004));
    assert_eq!(err["id"], 1, "{err}");
    assert_serves(&mut sc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_open_streams_then_exits() {
    let py = PyServer::start(PyAnswers::Sse);
    let mut sc = Sidecar::start(py.port, &["--drain-timeout", "20s"]);
    let body = with_meta_2026(call_with_progress_body(
        1,
        "slow_count",
        json!({"steps": 6, "interval_ms": 300}),
        "drain",
    ));
    let mut h = headers_2026("tools/call");
    h.push(("mcp-name", "slow_count"));
    let mut stream = EventStream::post(&sc.url("/mcp"), &body, &h).await;
    assert_eq!(stream.status, 200);
    assert!(stream.next_json(Duration::from_secs(15)).await.is_some());

    sc.proc.signal("TERM");
    let (events, ended) = stream.collect(Duration::from_secs(20)).await;
    assert!(ended, "the stream must end");
    assert!(
        events.iter().any(|e| e
            .json()
            .is_some_and(|v| v["id"] == 1 && v.get("result").is_some())),
        "the open stream finished with its result during the drain: {events:?}"
    );
    let exit = sc.proc.wait_exit(Duration::from_secs(25));
    assert!(
        exit.is_some(),
        "the sidecar did not exit after draining\n{}",
        sc.proc.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_gone_mid_stream_leaves_everything_serving() {
    let py = PyServer::start(PyAnswers::Sse);
    let mut sc = Sidecar::start(py.port, &[]);
    let body = with_meta_2026(call_with_progress_body(
        1,
        "slow_count",
        json!({"steps": 10, "interval_ms": 200}),
        "gone",
    ));
    let mut h = headers_2026("tools/call");
    h.push(("mcp-name", "slow_count"));
    let mut stream = EventStream::post(&sc.url("/mcp"), &body, &h).await;
    assert!(stream.next_json(Duration::from_secs(15)).await.is_some());
    drop(stream);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_serves(&mut sc).await;
    assert_serves(&mut sc).await;
}
