//! The sidecar in front of a PyPI `mcp` 2.x `MCPServer` (tests/scripts/py/server.py) answering
//! with JSON and with SSE, driven by the Inspector CLI, the PyPI `mcp` client (2026-07-28
//! session-less by default, and `mode="legacy"`) and raw HTTP.
//!
//! `secret_tool` is denied; when it runs, the server leaves a marker file, so "never reached
//! the server" is checked on the server's side.

use std::time::Duration;

use mcp_guard_tests::suite::*;
use mcp_guard_tests::*;
use serde_json::{Value, json};

/// `secret_tool` is denied; when it runs, it answers `secret:<note>` (and leaves its marker).
const TOOLS: ToolFilter = ToolFilter {
    denied: "secret_tool",
    kept: &["echo", "add", "slow_count"],
    ran_sign: "secret:",
};
const DENIED: &str = TOOLS.denied;

fn front(py: &PyServer) -> Sidecar {
    Sidecar::start(py.port, &["--deny-tools", DENIED])
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
    TOOLS.assert_inspector_lists_filtered(&url, "http", "inspector tools/list");
    assert_inspector_call(&url, "http", "add", &["a=19", "b=23"], "42");
    TOOLS.assert_inspector_denied(&url, "http");
    assert_not_run(&py);
    sc.assert_alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_inspector_lists_filtered_and_calls_allowed() {
    run_blocking(|| inspector_suite(PyAnswers::Json)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_inspector_lists_filtered_and_calls_allowed() {
    run_blocking(|| inspector_suite(PyAnswers::Sse)).await;
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
        TOOLS.assert_py_listed(&r[0], &format!("python client ({mode})"));
        assert_eq!(r[1]["text"], "5", "{mode}: {doc}");
        TOOLS.assert_py_denied(&r[2], mode);
        assert_eq!(r[3]["text"], "after the denial", "{mode}: {doc}");
        if answers == PyAnswers::Sse {
            assert_py_progress(
                &r[4],
                4,
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
    run_blocking(|| python_client_suite(PyAnswers::Json)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_python_client_default_and_legacy() {
    run_blocking(|| python_client_suite(PyAnswers::Sse)).await;
}

// --- Raw HTTP -------------------------------------------------------------------------------

async fn raw_suite(answers: PyAnswers) {
    let py = PyServer::start(answers);
    let mut sc = front(&py);
    let url = sc.url("/mcp");
    let want_ct = match answers {
        PyAnswers::Json => "application/json",
        PyAnswers::Sse | PyAnswers::LegacySse => "text/event-stream",
    };

    // 2026-07-28, session-less.
    let list = post_2026(&url, list_body(1), "tools/list", None).await;
    assert_eq!(list.status, 200, "{}", list.body);
    // A 2026-07-28 answer without notifications is JSON even from an SSE-answering server.
    TOOLS.assert_filtered(
        &tool_names(&list.expect_response(&json!(1))["result"]),
        "raw 2026 tools/list",
    );

    let denied = post_2026(
        &url,
        call_body(2, DENIED, json!({"note": "raw"})),
        "tools/call",
        Some(DENIED),
    )
    .await;
    TOOLS.assert_denied(denied.expect_response(&json!(2)));

    let add = post_2026(
        &url,
        call_body(3, "add", json!({"a": 40, "b": 2})),
        "tools/call",
        Some("add"),
    )
    .await;
    let r = add.expect_response(&json!(3));
    assert_eq!(r["result"]["structuredContent"]["result"], 42, "{r}");

    // Handshake era, with a session.
    let s = Session::initialize(&url, PROTOCOL_2025).await;
    assert!(s.id.is_some());
    TOOLS
        .assert_session_list(&s, 4, want_ct, "raw session tools/list")
        .await;
    TOOLS.assert_session_denied(&s, 5).await;

    // A batch holding only the denied call is answered without the server.
    TOOLS
        .assert_batch_denied(&s, &json!([call_body(6, DENIED, json!({}))]), 6)
        .await;

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
        // The server's 404 for an ended session passes through.
        assert_delete_ends_session(&sc.url("/mcp"), 404, &format!("{answers:?}")).await;
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
    let (events, _) = assert_progress_streamed(
        &url,
        &body,
        &headers_2026("tools/call", Some("slow_count")),
        5,
        interval / 2,
        "python server progress",
    )
    .await;
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
    TOOLS.assert_filtered(
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
    assert_mirror_refused(
        &url,
        &with_meta_2026(call_body(1, DENIED, json!({}))),
        &headers_2026("tools/call", Some("echo")),
        "Mcp-Name smuggling the denied tool",
    )
    .await;

    assert_mirror_refused(
        &url,
        &with_meta_2026(call_body(2, "add", json!({"a": 1, "b": 2}))),
        &headers_2026("tools/list", None),
        "Mcp-Method mismatch",
    )
    .await;

    let good = post_2026(
        &url,
        call_body(3, "add", json!({"a": 1, "b": 2})),
        "tools/call",
        Some("add"),
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

    // Raw: the endpoint event, a filtered list and a denial, answers on the GET stream.
    let mut sse = LegacySse::initialize(&sc.url(""), "/sse", "/messages/?session_id=").await;
    TOOLS
        .assert_legacy_filtered_and_denied(&mut sse, "legacy sse raw list")
        .await;
    drop(sse);

    // The Python client over the old transport.
    let url = sc.url("/sse");
    let doc = run_blocking(move || {
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
    .await;
    let r = py_results(&doc);
    TOOLS.assert_py_listed(&r[0], "legacy sse python list");
    assert_eq!(r[1]["text"], "3", "{doc}");
    TOOLS.assert_py_denied(&r[2], "legacy sse python");
    assert_py_progress(&r[3], 4, Duration::from_millis(150), "legacy sse progress");

    assert_not_run(&py);
    sc.assert_alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_list_hides_every_other_tool() {
    let py = PyServer::start(PyAnswers::Json);
    let mut sc = Sidecar::start(py.port, &["--allow-tools", "echo,add"]);
    let url = sc.url("/mcp");
    let list = post_2026(&url, list_body(1), "tools/list", None).await;
    let mut names = tool_names(&list.expect_response(&json!(1))["result"]);
    names.sort();
    assert_eq!(names, ["add", "echo"], "{}", list.body);
    for (id, tool) in [(2, "slow_count"), (3, DENIED)] {
        let r = post_2026(
            &url,
            call_body(id, tool, json!({})),
            "tools/call",
            Some(tool),
        )
        .await;
        assert_denied(r.expect_response(&json!(id)), tool);
    }
    let ok = post_2026(
        &url,
        call_body(4, "echo", json!({"text": "allowed"})),
        "tools/call",
        Some("echo"),
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

    let doc = run_blocking({
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
    .await;
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
        json!({
            "jsonrpc": "2.0", "id": id, "method": "resources/read", "params": {"uri": uri}
        })
    };
    let ok = post_2026(
        &url,
        read(1, "note://café"),
        "resources/read",
        Some("=?base64?bm90ZTovL2NhZsOp?="),
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_mirror_refused(
        &url,
        &with_meta_2026(read(2, "note://café")),
        &headers_2026("resources/read", Some("=?base64?bm90ZTovL3BsYWlu?=")),
        "wrapped Mcp-Name disagreeing with the body",
    )
    .await;
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
        TOOLS.assert_not_ran(&r.body, body);
        assert_not_run(&py);
    }
    sc.assert_alive();
}
