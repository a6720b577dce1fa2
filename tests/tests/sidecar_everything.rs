//! The sidecar in front of `@modelcontextprotocol/server-everything` (Node 22), in its
//! `streamableHttp` mode (SSE answers, sessions, resumable event store) and its `sse` mode (the
//! older HTTP+SSE transport), driven by the Inspector CLI, the PyPI `mcp` client and raw HTTP.
//!
//! `get-env` is the denied tool: the server lists and runs it (see `peers_direct.rs`), so a
//! JSON-RPC error for it can only come from the sidecar.

use std::time::Duration;

use mcp_guard_tests::suite::*;
use mcp_guard_tests::*;
use serde_json::json;

/// `get-env` is denied; when it runs, its answer shows the environment (`PATH`).
const TOOLS: ToolFilter = ToolFilter {
    denied: "get-env",
    kept: &["echo", "get-sum", "trigger-long-running-operation"],
    ran_sign: "PATH",
};
const DENIED: &str = TOOLS.denied;

fn front(ev: &Everything) -> Sidecar {
    Sidecar::start(
        ev.port,
        &["--deny-tools", &format!("{DENIED},no-such-tool")],
    )
}

// --- streamableHttp -------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_inspector_lists_filtered_and_calls_allowed() {
    let ev = Everything::start(EverythingTransport::StreamableHttp);
    let mut sc = front(&ev);
    let url = sc.url("/mcp");

    TOOLS.assert_inspector_lists_filtered(&url, "http", "inspector tools/list");
    assert_inspector_call(
        &url,
        "http",
        "get-sum",
        &["a=2", "b=40"],
        "The sum of 2 and 40 is 42.",
    );
    // The Inspector refuses to call a tool it was not shown (or gets the sidecar's error):
    // either way the call must not succeed, and get-env must not run.
    TOOLS.assert_inspector_denied(&url, "http");
    sc.assert_alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_raw_list_is_filtered_and_denied_call_gets_jsonrpc_error() {
    let ev = Everything::start(EverythingTransport::StreamableHttp);
    let mut sc = front(&ev);
    let s = Session::initialize(&sc.url("/mcp"), PROTOCOL_2025).await;
    assert!(s.id.is_some(), "the server's session id passes through");

    // server-everything answers SSE; the sidecar keeps it.
    TOOLS
        .assert_session_list(&s, 1, "text/event-stream", "raw tools/list (SSE)")
        .await;
    TOOLS.assert_session_denied(&s, 2).await;

    let allowed = s
        .post(&call_body(3, "echo", json!({"message": "hi there"})))
        .await;
    let r = allowed.expect_response(&json!(3));
    assert_eq!(r["result"]["content"][0]["text"], "Echo: hi there", "{r}");

    // A batch mixing an allowed and a denied call (2025-03-26 style): both answered.
    let batch = json!([
        call_body(4, "get-sum", json!({"a": 1, "b": 2})),
        call_body(5, DENIED, json!({})),
    ]);
    TOOLS.assert_batch_denied(&s, &batch, 5).await;
    sc.assert_alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_python_client_default_and_legacy() {
    let ev = Everything::start(EverythingTransport::StreamableHttp);
    let mut sc = front(&ev);
    let url = sc.url("/mcp");
    let ops = json!([
        {"op": "list"},
        {"op": "call", "name": "get-sum", "args": {"a": 20, "b": 22}},
        {"op": "call", "name": DENIED, "args": {}},
    ]);
    for mode in ["auto", "legacy"] {
        let doc = py_client(&url, "http", mode, &ops);
        let r = py_results(&doc);
        assert_eq!(r.len(), 3, "{doc}");
        TOOLS.assert_py_listed(&r[0], &format!("python client ({mode}) list"));
        assert_eq!(r[1]["text"], "The sum of 20 and 22 is 42.", "{mode}: {doc}");
        TOOLS.assert_py_denied(&r[2], &format!("python client ({mode})"));
    }
    sc.assert_alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_delete_ends_the_session() {
    let ev = Everything::start(EverythingTransport::StreamableHttp);
    let mut sc = front(&ev);
    // server-everything answers 400 "No valid session ID" (not 404) for a session it dropped;
    // the sidecar passes the server's answer on.
    let after =
        assert_delete_ends_session(&sc.url("/mcp"), 400, "DELETE through the sidecar").await;
    assert!(after.body.contains("No valid session ID"), "{}", after.body);
    sc.assert_alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_progress_arrives_event_by_event() {
    let ev = Everything::start(EverythingTransport::StreamableHttp);
    let mut sc = front(&ev);
    let s = Session::initialize(&sc.url("/mcp"), PROTOCOL_2025).await;
    // 5 steps over 2 s: one progress notification every 400 ms.
    let (events, progress) = assert_progress_streamed(
        &s.url,
        &call_with_progress_body(
            7,
            "trigger-long-running-operation",
            json!({"duration": 2, "steps": 5}),
            "p-7",
        ),
        &s.headers(),
        5,
        Duration::from_millis(200),
        "server-everything progress",
    )
    .await;
    let result = events
        .iter()
        .find(|e| e.json().is_some_and(|v| v["id"] == 7))
        .expect("the final result");
    assert!(
        result.at >= progress[4],
        "the result comes after the progress"
    );
    // server-everything tags every event with an id (resumability); ids pass through.
    assert!(
        events.iter().any(|e| e.id.is_some()),
        "event ids kept: {events:?}"
    );
    sc.assert_alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_last_event_id_resumes_through_the_sidecar() {
    let ev = Everything::start(EverythingTransport::StreamableHttp);
    let mut sc = front(&ev);
    let s = Session::initialize(&sc.url("/mcp"), PROTOCOL_2025).await;
    let first = s
        .post(&call_with_progress_body(
            8,
            "trigger-long-running-operation",
            json!({"duration": 0.3, "steps": 3}),
            "p-8",
        ))
        .await;
    let ids: Vec<String> = first.events.iter().filter_map(|e| e.id.clone()).collect();
    assert!(ids.len() >= 3, "events carry ids: {:?}", first.events);
    // Resume from the first event: the server replays what followed, through the sidecar.
    let mut headers = s.headers();
    headers.push(("last-event-id", ids[0].as_str()));
    let mut resumed = EventStream::get(&s.url, &headers).await;
    assert_eq!(resumed.status, 200);
    let mut replayed = Vec::new();
    while let Some((v, _)) = resumed.next_json(Duration::from_secs(3)).await {
        replayed.push(v);
        if replayed.iter().any(|m| m["id"] == 8) {
            break;
        }
    }
    assert!(
        replayed.iter().any(|m| m["id"] == 8),
        "replay after Last-Event-ID must include the result: {replayed:?}"
    );
    sc.assert_alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_mirrored_headers_must_match_the_body() {
    let ev = Everything::start(EverythingTransport::StreamableHttp);
    let mut sc = front(&ev);
    let s = Session::initialize(&sc.url("/mcp"), PROTOCOL_2025).await;
    let sum = |id| call_body(id, "get-sum", json!({"a": 1, "b": 1}));

    // Control: agreeing headers pass (server-everything ignores them).
    let h = with_mirrored(s.headers(), "tools/call", Some("get-sum"));
    let ok = post(&s.url, &sum(1), &h).await;
    assert_eq!(ok.status, 200, "agreeing headers: {}", ok.body);
    assert!(ok.expect_response(&json!(1)).get("result").is_some());

    // Mcp-Name says an allowed tool, the body calls another: refused by the sidecar.
    let h = with_mirrored(s.headers(), "tools/call", Some("echo"));
    assert_mirror_refused(&s.url, &sum(2), &h, "Mcp-Name mismatch").await;

    // Mcp-Name names an allowed tool while the body calls the denied one.
    let smuggle = assert_mirror_refused(
        &s.url,
        &call_body(3, DENIED, json!({})),
        &h,
        "Mcp-Name smuggling the denied tool",
    )
    .await;
    TOOLS.assert_not_ran(&smuggle.body, "Mcp-Name smuggling the denied tool");

    // Mcp-Method disagrees with the body's method.
    let h = with_mirrored(s.headers(), "tools/list", None);
    assert_mirror_refused(&s.url, &sum(4), &h, "Mcp-Method mismatch").await;
    sc.assert_alive();
}

// --- sse (older HTTP+SSE transport) -----------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_raw_list_is_filtered_and_denied_call_gets_jsonrpc_error() {
    let ev = Everything::start(EverythingTransport::Sse);
    let mut sc = front(&ev);
    let mut sse = LegacySse::initialize(&sc.url(""), "/sse", "/message?sessionId=").await;

    // The denial may come as the POST's answer or on the stream; it must be an error naming
    // the tool either way, and the server must not run the tool.
    TOOLS
        .assert_legacy_filtered_and_denied(&mut sse, "sse tools/list")
        .await;

    let (r, seen) = sse
        .request(&call_body(3, "get-sum", json!({"a": 3, "b": 4})))
        .await;
    assert_eq!(
        r["result"]["content"][0]["text"],
        "The sum of 3 and 4 is 7."
    );
    for (v, _) in &seen {
        TOOLS.assert_not_ran(&v.to_string(), "the stream after the denial");
    }
    sc.assert_alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_inspector_and_python_client() {
    let ev = Everything::start(EverythingTransport::Sse);
    let mut sc = front(&ev);
    let url = sc.url("/sse");

    TOOLS.assert_inspector_lists_filtered(&url, "sse", "inspector (sse) tools/list");
    assert_inspector_call(&url, "sse", "echo", &["message=via sse"], "Echo: via sse");

    let doc = py_client(
        &url,
        "sse",
        "legacy",
        &json!([
            {"op": "list"},
            {"op": "call", "name": "get-sum", "args": {"a": 1, "b": 2}},
            {"op": "call", "name": DENIED, "args": {}},
            {"op": "progress", "name": "trigger-long-running-operation",
             "args": {"duration": 1.6, "steps": 4}},
        ]),
    );
    let r = py_results(&doc);
    TOOLS.assert_py_listed(&r[0], "python client (sse) list");
    assert_eq!(r[1]["text"], "The sum of 1 and 2 is 3.", "{doc}");
    TOOLS.assert_py_denied(&r[2], "python client (sse)");
    assert_py_progress(
        &r[3],
        4,
        Duration::from_millis(200),
        "python client (sse) progress",
    );
    sc.assert_alive();
}
