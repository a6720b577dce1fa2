//! The sidecar in front of a PyPI `mcp` 2.x `MCPServer` (tests/scripts/py/server.py) answering
//! with JSON and with SSE, driven by the Inspector CLI, the PyPI `mcp` client (2026-07-28
//! session-less by default, and `mode="legacy"`) and raw HTTP.
//!
//! `secret_tool` is denied; when it runs, the server leaves a marker file, so "never reached
//! the server" is checked on the server's side.

use std::time::Duration;

use mcp_guard_tests::*;
use serde_json::{Value, json};

const DENIED: &str = "secret_tool";

fn front(py: &PyServer) -> Sidecar {
    Sidecar::start(py.port, &["--deny-tools", DENIED])
}

fn assert_filtered(names: &[String], what: &str) {
    assert!(
        !names.iter().any(|n| n == DENIED),
        "{what}: {DENIED} must be hidden, got {names:?}"
    );
    for expected in ["echo", "add", "slow_count"] {
        assert!(
            names.iter().any(|n| n == expected),
            "{what}: {expected} must still be listed, got {names:?}"
        );
    }
}

fn assert_not_run(py: &PyServer) {
    assert!(
        !py.secret_tool_ran(),
        "{DENIED} reached the server and ran\n{}",
        py.proc.logs()
    );
}

// --- Inspector ------------------------------------------------------------------------------

fn inspector_suite(answers: PyAnswers) {
    let py = PyServer::start(answers);
    let mut sc = front(&py);
    let url = sc.url("/mcp");
    let listed = inspector_json(&url, "http", &["--method", "tools/list"]);
    assert_filtered(&tool_names(&listed), "inspector tools/list");
    let called = inspector_json(
        &url,
        "http",
        &[
            "--method",
            "tools/call",
            "--tool-name",
            "add",
            "--tool-arg",
            "a=19",
            "--tool-arg",
            "b=23",
        ],
    );
    assert_eq!(called["content"][0]["text"], "42", "{called}");
    let denied = inspector(
        &url,
        "http",
        &["--method", "tools/call", "--tool-name", DENIED],
    );
    assert!(
        !denied.success() || denied.stdout.contains("error"),
        "inspector call of a denied tool succeeded: {}",
        denied.stdout
    );
    assert_not_run(&py);
    sc.assert_alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_inspector_lists_filtered_and_calls_allowed() {
    tokio::task::spawn_blocking(|| inspector_suite(PyAnswers::Json))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_inspector_lists_filtered_and_calls_allowed() {
    tokio::task::spawn_blocking(|| inspector_suite(PyAnswers::Sse))
        .await
        .unwrap();
}

// --- Python client --------------------------------------------------------------------------

fn python_client_suite(answers: PyAnswers) {
    let py = PyServer::start(answers);
    let mut sc = front(&py);
    let url = sc.url("/mcp");
    let mut ops = vec![
        json!({"op": "list"}),
        json!({"op": "call", "name": "add", "args": {"a": 2, "b": 3}}),
        json!({"op": "call", "name": DENIED, "args": {"note": "through the sidecar"}}),
        json!({"op": "call", "name": "echo", "args": {"text": "after the denial"}}),
    ];
    if answers == PyAnswers::Sse {
        ops.push(json!({"op": "progress", "name": "slow_count",
                        "args": {"steps": 4, "interval_ms": 300}}));
    }
    for (mode, version) in [("auto", PROTOCOL_2026), ("legacy", "")] {
        let doc = py_client(&url, "http", mode, &Value::Array(ops.clone()));
        if !version.is_empty() {
            assert_eq!(doc["protocol_version"], version, "{doc}");
        } else {
            assert_ne!(doc["protocol_version"], PROTOCOL_2026, "legacy mode: {doc}");
        }
        let r = py_results(&doc);
        let names: Vec<String> = serde_json::from_value(r[0]["tools"].clone())
            .unwrap_or_else(|_| panic!("{mode}: list failed: {doc}"));
        assert_filtered(&names, &format!("python client ({mode})"));
        assert_eq!(r[1]["text"], "5", "{mode}: {doc}");
        let d = &r[2];
        assert!(
            !d["ok"].as_bool().unwrap_or(false) || d["is_error"].as_bool().unwrap_or(false),
            "{mode}: denied call succeeded: {d}"
        );
        assert!(
            format!("{} {}", d["error"]["message"], d["text"]).contains(DENIED),
            "{mode}: the error should name {DENIED}: {d}"
        );
        assert_eq!(r[3]["text"], "after the denial", "{mode}: {doc}");
        if answers == PyAnswers::Sse {
            let times: Vec<Duration> = r[4]["progress"]
                .as_array()
                .unwrap_or_else(|| panic!("{mode}: no progress: {doc}"))
                .iter()
                .map(|p| Duration::from_secs_f64(p["t"].as_f64().unwrap_or(0.0)))
                .collect();
            assert_eq!(times.len(), 4, "{mode}: {doc}");
            assert_spaced(
                &times,
                Duration::from_millis(150),
                &format!("python client ({mode}) progress"),
            );
            assert_eq!(r[4]["text"], "counted 4");
        }
    }
    assert_not_run(&py);
    sc.assert_alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_python_client_default_and_legacy() {
    tokio::task::spawn_blocking(|| python_client_suite(PyAnswers::Json))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_python_client_default_and_legacy() {
    tokio::task::spawn_blocking(|| python_client_suite(PyAnswers::Sse))
        .await
        .unwrap();
}

// --- Raw HTTP -------------------------------------------------------------------------------

fn headers_2026<'a>(method: &'a str, name: Option<&'a str>) -> Vec<(&'a str, &'a str)> {
    let mut h = vec![
        ("mcp-protocol-version", PROTOCOL_2026),
        ("mcp-method", method),
    ];
    if let Some(n) = name {
        h.push(("mcp-name", n));
    }
    h
}

async fn raw_suite(answers: PyAnswers) {
    let py = PyServer::start(answers);
    let mut sc = front(&py);
    let url = sc.url("/mcp");
    let want_ct = match answers {
        PyAnswers::Json => "application/json",
        PyAnswers::Sse | PyAnswers::LegacySse => "text/event-stream",
    };

    // 2026-07-28, session-less.
    let list = post(
        &url,
        &with_meta_2026(list_body(1)),
        &headers_2026("tools/list", None),
    )
    .await;
    assert_eq!(list.status, 200, "{}", list.body);
    // A 2026-07-28 answer without notifications is JSON even from an SSE-answering server.
    assert_filtered(
        &tool_names(&list.expect_response(&json!(1))["result"]),
        "raw 2026 tools/list",
    );

    let denied = post(
        &url,
        &with_meta_2026(call_body(2, DENIED, json!({"note": "raw"}))),
        &headers_2026("tools/call", Some(DENIED)),
    )
    .await;
    assert_denied(denied.expect_response(&json!(2)), DENIED);

    let add = post(
        &url,
        &with_meta_2026(call_body(3, "add", json!({"a": 40, "b": 2}))),
        &headers_2026("tools/call", Some("add")),
    )
    .await;
    let r = add.expect_response(&json!(3));
    assert_eq!(r["result"]["structuredContent"]["result"], 42, "{r}");

    // Handshake era, with a session.
    let s = Session::initialize(&url, PROTOCOL_2025).await;
    assert!(s.id.is_some());
    let list = s.post(&list_body(4)).await;
    assert!(list.content_type().starts_with(want_ct));
    assert_filtered(
        &tool_names(&list.expect_response(&json!(4))["result"]),
        "raw session tools/list",
    );
    let denied = s.post(&call_body(5, DENIED, json!({}))).await;
    assert_denied(denied.expect_response(&json!(5)), DENIED);

    // A batch holding only the denied call is answered without the server.
    let batch = s.post(&json!([call_body(6, DENIED, json!({}))])).await;
    if batch.status == 200 {
        assert_denied(batch.expect_response(&json!(6)), DENIED);
    } else {
        assert!(batch.status >= 400, "{} {}", batch.status, batch.body);
    }

    assert_not_run(&py);
    sc.assert_alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_raw_denied_call_never_reaches_the_server() {
    raw_suite(PyAnswers::Json).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_raw_denied_call_never_reaches_the_server() {
    raw_suite(PyAnswers::Sse).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_ends_the_session() {
    for answers in [PyAnswers::Json, PyAnswers::Sse] {
        let py = PyServer::start(answers);
        let mut sc = front(&py);
        let s = Session::initialize(&sc.url("/mcp"), PROTOCOL_2025).await;
        assert_eq!(s.post(&list_body(1)).await.status, 200);
        let del = s.delete().await;
        assert_eq!(del.status, 200, "{answers:?}: DELETE: {}", del.body);
        let after = s.post(&list_body(2)).await;
        assert_eq!(
            after.status, 404,
            "{answers:?}: the server's 404 for an ended session passes through: {}",
            after.body
        );
        sc.assert_alive();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_arrives_event_by_event() {
    let py = PyServer::start(PyAnswers::Sse);
    let mut sc = front(&py);
    let url = sc.url("/mcp");
    let interval = Duration::from_millis(300);
    let body = with_meta_2026(call_with_progress_body(
        9,
        "slow_count",
        json!({"steps": 5, "interval_ms": interval.as_millis() as u64}),
        "tok-9",
    ));
    let mut stream =
        EventStream::post(&url, &body, &headers_2026("tools/call", Some("slow_count"))).await;
    assert_eq!(stream.status, 200);
    assert!(stream.content_type().starts_with("text/event-stream"));
    let (events, ended) = stream.collect(Duration::from_secs(30)).await;
    assert!(ended, "the stream ends after the result: {events:?}");
    let times: Vec<Duration> = events
        .iter()
        .filter(|e| {
            e.json()
                .is_some_and(|v| v["method"] == "notifications/progress")
        })
        .map(|e| e.at)
        .collect();
    assert_eq!(times.len(), 5, "{events:?}");
    assert_spaced(&times, interval / 2, "python server progress");
    assert!(
        events.iter().any(|e| e
            .json()
            .is_some_and(|v| v["id"] == 9 && v.get("result").is_some())),
        "{events:?}"
    );
    sc.assert_alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_host_is_the_servers_own() {
    // The server answers 421 to a foreign Host (see peers_direct.rs); a client reaching the
    // sidecar by a service name must still get through.
    let py = PyServer::start(PyAnswers::Json);
    let mut sc = front(&py);
    let mut h = headers_2026("tools/list", None);
    h.push(("host", "mcp.example.com"));
    let list = post(&sc.url("/mcp"), &with_meta_2026(list_body(1)), &h).await;
    assert_eq!(list.status, 200, "{}", list.body);
    assert_filtered(
        &tool_names(&list.expect_response(&json!(1))["result"]),
        "list with a foreign Host",
    );
    sc.assert_alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrored_headers_must_match_the_body() {
    let py = PyServer::start(PyAnswers::Json);
    let mut sc = front(&py);
    let url = sc.url("/mcp");

    // Mcp-Name names an allowed tool while the body calls the denied one.
    let smuggle = post(
        &url,
        &with_meta_2026(call_body(1, DENIED, json!({}))),
        &headers_2026("tools/call", Some("echo")),
    )
    .await;
    assert_eq!(smuggle.status, 400, "{}", smuggle.body);
    assert_jsonrpc_error(&smuggle.body, None);

    let bad_method = post(
        &url,
        &with_meta_2026(call_body(2, "add", json!({"a": 1, "b": 2}))),
        &headers_2026("tools/list", None),
    )
    .await;
    assert_eq!(bad_method.status, 400, "{}", bad_method.body);
    assert_jsonrpc_error(&bad_method.body, None);

    let good = post(
        &url,
        &with_meta_2026(call_body(3, "add", json!({"a": 1, "b": 2}))),
        &headers_2026("tools/call", Some("add")),
    )
    .await;
    assert_eq!(good.status, 200, "{}", good.body);
    assert_not_run(&py);
    sc.assert_alive();
}

// --- The older HTTP+SSE transport -----------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_sse_transport_filters_denies_and_streams() {
    let py = PyServer::start(PyAnswers::LegacySse);
    let mut sc = front(&py);
    let base = sc.url("");

    // Raw: the endpoint event, a filtered list and a denial, answers on the GET stream.
    let (mut stream, endpoint) = open_legacy_sse(&base, "/sse").await;
    assert!(
        endpoint.starts_with(&format!("{base}/messages/?session_id=")),
        "{endpoint}"
    );
    let init = post(&endpoint, &initialize_body(0, PROTOCOL_2025), &[]).await;
    assert!(init.status == 202 || init.status == 200, "{}", init.body);
    let (r, _) = await_on_stream(&mut stream, &json!(0), Duration::from_secs(15)).await;
    assert!(r.expect("initialize answer").get("result").is_some());
    post(
        &endpoint,
        &json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        &[],
    )
    .await;
    post(&endpoint, &list_body(1), &[]).await;
    let (r, _) = await_on_stream(&mut stream, &json!(1), Duration::from_secs(15)).await;
    assert_filtered(
        &tool_names(&r.expect("tools/list answer")["result"]),
        "legacy sse raw list",
    );
    let denied = post(&endpoint, &call_body(2, DENIED, json!({})), &[]).await;
    let answer = match denied.response(&json!(2)) {
        Some(a) => a.clone(),
        None => await_on_stream(&mut stream, &json!(2), Duration::from_secs(15))
            .await
            .0
            .expect("an answer to the denied call"),
    };
    assert_denied(&answer, DENIED);
    drop(stream);

    // The Python client over the old transport.
    let url = sc.url("/sse");
    let doc = tokio::task::spawn_blocking(move || {
        py_client(
            &url,
            "sse",
            "legacy",
            &json!([
                {"op": "list"},
                {"op": "call", "name": "add", "args": {"a": 1, "b": 2}},
                {"op": "call", "name": DENIED, "args": {}},
                {"op": "progress", "name": "slow_count", "args": {"steps": 4, "interval_ms": 300}},
            ]),
        )
    })
    .await
    .unwrap();
    let r = py_results(&doc);
    let names: Vec<String> = serde_json::from_value(r[0]["tools"].clone()).unwrap();
    assert_filtered(&names, "legacy sse python list");
    assert_eq!(r[1]["text"], "3", "{doc}");
    assert!(
        !r[2]["ok"].as_bool().unwrap_or(false) || r[2]["is_error"].as_bool().unwrap_or(false),
        "{doc}"
    );
    let times: Vec<Duration> = r[3]["progress"]
        .as_array()
        .unwrap_or_else(|| panic!("no progress: {doc}"))
        .iter()
        .map(|p| Duration::from_secs_f64(p["t"].as_f64().unwrap_or(0.0)))
        .collect();
    assert_eq!(times.len(), 4, "{doc}");
    assert_spaced(&times, Duration::from_millis(150), "legacy sse progress");

    assert_not_run(&py);
    sc.assert_alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_list_hides_every_other_tool() {
    let py = PyServer::start(PyAnswers::Json);
    let mut sc = Sidecar::start(py.port, &["--allow-tools", "echo,add"]);
    let url = sc.url("/mcp");
    let list = post(
        &url,
        &with_meta_2026(list_body(1)),
        &headers_2026("tools/list", None),
    )
    .await;
    let mut names = tool_names(&list.expect_response(&json!(1))["result"]);
    names.sort();
    assert_eq!(names, ["add", "echo"], "{}", list.body);
    for (id, tool) in [(2, "slow_count"), (3, DENIED)] {
        let r = post(
            &url,
            &with_meta_2026(call_body(id, tool, json!({}))),
            &headers_2026("tools/call", Some(tool)),
        )
        .await;
        assert_denied(r.expect_response(&json!(id)), tool);
    }
    let ok = post(
        &url,
        &with_meta_2026(call_body(4, "echo", json!({"text": "allowed"}))),
        &headers_2026("tools/call", Some("echo")),
    )
    .await;
    assert_eq!(
        ok.expect_response(&json!(4))["result"]["content"][0]["text"],
        "allowed"
    );
    assert_not_run(&py);
    sc.assert_alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn base64_wrapped_mcp_name_is_decoded() {
    // 2026-07-28 clients wrap a name that is not plain printable ASCII as `=?base64?..?=` in
    // Mcp-Name (the PyPI client does); the sidecar must compare the decoded value, or every
    // call of such a tool / read of such a resource is refused.
    let py = PyServer::start(PyAnswers::Json);
    let mut sc = front(&py);
    let url = sc.url("/mcp");

    let doc = tokio::task::spawn_blocking({
        let url = url.clone();
        move || {
            py_client(
                &url,
                "http",
                "auto",
                &json!([
                    {"op": "read", "uri": "note://plain"},
                    {"op": "read", "uri": "note://café"},
                    {"op": "call", "name": "grüßen", "args": {"name": "Ana"}},
                ]),
            )
        }
    })
    .await
    .unwrap();
    assert_eq!(doc["protocol_version"], PROTOCOL_2026);
    let r = py_results(&doc);
    assert_eq!(r[0]["text"], "plain", "{doc}");
    assert_eq!(
        r[1]["text"], "un café",
        "resource with a non-ASCII URI: {doc}"
    );
    assert_eq!(
        r[2]["text"], "Grüß dich, Ana",
        "tool with a non-ASCII name: {doc}"
    );

    // Raw: the same encoding, and a wrapped name that disagrees with the body.
    // base64("note://café") and base64("note://plain").
    let read = |id: i64, uri: &str| {
        with_meta_2026(json!({
            "jsonrpc": "2.0", "id": id, "method": "resources/read", "params": {"uri": uri}
        }))
    };
    let ok = post(
        &url,
        &read(1, "note://café"),
        &headers_2026("resources/read", Some("=?base64?bm90ZTovL2NhZsOp?=")),
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    let bad = post(
        &url,
        &read(2, "note://café"),
        &headers_2026("resources/read", Some("=?base64?bm90ZTovL3BsYWlu?=")),
    )
    .await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert_jsonrpc_error(&bad.body, None);
    sc.assert_alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_call_in_disguise_is_still_denied() {
    // The server (Python's json) reads these bodies as a call of secret_tool: escapes, a
    // duplicate key (the last one wins), a batch. The sidecar must refuse each, one way or
    // another, and the tool must never run.
    let py = PyServer::start(PyAnswers::Json);
    let mut sc = front(&py);
    let url = sc.url("/mcp");
    let s = Session::initialize(&url, PROTOCOL_2025).await;
    let bodies = [
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"secret\u005ftool","arguments":{}}}"#,
        r#"{"jsonrpc":"2.0","id":2,"method":"tools\/call","params":{"name":"secret_tool","arguments":{}}}"#,
        r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"echo","name":"secret_tool","arguments":{"text":"x"}}}"#,
        r#"{"jsonrpc":"2.0","id":4,"method":"tools/list","method":"tools/call","params":{"name":"secret_tool","arguments":{}}}"#,
        r#"[{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"echo","arguments":{"text":"x"}}},{"jsonrpc":"2.0","id":6,"method":"tools/call","params":{"name":"secret_tool","arguments":{}}}]"#,
    ];
    for body in bodies {
        let r = post_raw(&url, body, &s.headers()).await;
        let refused = r.status == 400
            || r.messages
                .iter()
                .any(|m| m.get("error").is_some() && m.to_string().contains(DENIED));
        assert!(refused, "not refused: {body}\n-> {} {}", r.status, r.body);
        assert!(
            !r.body.contains("secret:"),
            "secret_tool ran: {body}\n-> {}",
            r.body
        );
        assert_not_run(&py);
    }
    sc.assert_alive();
}
