//! The sidecar in front of `@modelcontextprotocol/server-everything` (Node 22), in its
//! `streamableHttp` mode (SSE answers, sessions, resumable event store) and its `sse` mode (the
//! older HTTP+SSE transport), driven by the Inspector CLI, the PyPI `mcp` client and raw HTTP.
//!
//! `get-env` is the denied tool: the server lists and runs it (see `peers_direct.rs`), so a
//! JSON-RPC error for it can only come from the sidecar.

use std::time::Duration;

use mcp_guard_tests::*;
use serde_json::{Value, json};

const DENIED: &str = "get-env";

fn front(ev: &Everything) -> Sidecar {
    Sidecar::start(
        ev.port,
        &["--deny-tools", &format!("{DENIED},no-such-tool")],
    )
}

fn assert_filtered(names: &[String], what: &str) {
    assert!(
        !names.iter().any(|n| n == DENIED),
        "{what}: {DENIED} must be hidden, got {names:?}"
    );
    for expected in ["echo", "get-sum", "trigger-long-running-operation"] {
        assert!(
            names.iter().any(|n| n == expected),
            "{what}: {expected} must still be listed, got {names:?}"
        );
    }
}

// --- streamableHttp -------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_inspector_lists_filtered_and_calls_allowed() {
    let ev = Everything::start(EverythingTransport::StreamableHttp);
    let mut sc = front(&ev);
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
            "get-sum",
            "--tool-arg",
            "a=2",
            "--tool-arg",
            "b=40",
        ],
    );
    assert_eq!(
        called["content"][0]["text"], "The sum of 2 and 40 is 42.",
        "{called}"
    );

    // The Inspector refuses to call a tool it was not shown (or gets the sidecar's error):
    // either way the call must not succeed.
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
    assert!(
        !denied.stdout.contains("PATH"),
        "get-env ran: {}",
        denied.stdout
    );
    sc.assert_alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_raw_list_is_filtered_and_denied_call_gets_jsonrpc_error() {
    let ev = Everything::start(EverythingTransport::StreamableHttp);
    let mut sc = front(&ev);
    let s = Session::initialize(&sc.url("/mcp"), PROTOCOL_2025).await;
    assert!(s.id.is_some(), "the server's session id passes through");

    let list = s.post(&list_body(1)).await;
    assert_eq!(list.status, 200, "{}", list.body);
    assert!(
        list.content_type().starts_with("text/event-stream"),
        "server-everything answers SSE; the sidecar keeps it: {}",
        list.content_type()
    );
    assert_filtered(
        &tool_names(&list.expect_response(&json!(1))["result"]),
        "raw tools/list (SSE)",
    );

    let denied = s.post(&call_body(2, DENIED, json!({}))).await;
    let answer = denied.expect_response(&json!(2));
    assert_denied(answer, DENIED);
    assert!(
        !denied.body.contains("PATH"),
        "the denied tool ran: {}",
        denied.body
    );

    let allowed = s
        .post(&call_body(3, "echo", json!({"message": "hi there"})))
        .await;
    let r = allowed.expect_response(&json!(3));
    assert_eq!(r["result"]["content"][0]["text"], "Echo: hi there", "{r}");

    // A batch mixing an allowed and a denied call (2025-03-26 style): both answered.
    let batch = s
        .post(&json!([
            call_body(4, "get-sum", json!({"a": 1, "b": 2})),
            call_body(5, DENIED, json!({})),
        ]))
        .await;
    if batch.status == 200 {
        assert_denied(batch.expect_response(&json!(5)), DENIED);
    } else {
        // A server that refuses batches (newer revisions dropped them) may answer 4xx, but the
        // denied call must still never have run.
        assert!(
            batch.status >= 400,
            "batch: {} {}",
            batch.status,
            batch.body
        );
    }
    assert!(!batch.body.contains("PATH"), "{}", batch.body);
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
        let names: Vec<String> = serde_json::from_value(r[0]["tools"].clone()).unwrap();
        assert_filtered(&names, &format!("python client ({mode}) list"));
        assert_eq!(r[1]["text"], "The sum of 20 and 22 is 42.", "{mode}: {doc}");
        assert_python_denied(&r[2], mode);
    }
    sc.assert_alive();
}

/// A denied call seen by the Python client: an error (raised, or an error result) naming the tool.
fn assert_python_denied(r: &Value, mode: &str) {
    let ok = r["ok"].as_bool().unwrap_or(false);
    let is_error = r["is_error"].as_bool().unwrap_or(false);
    assert!(
        !ok || is_error,
        "python client ({mode}): denied call succeeded: {r}"
    );
    let text = format!("{} {}", r["error"]["message"], r["text"]);
    assert!(
        text.contains(DENIED),
        "python client ({mode}): the error should name {DENIED}: {r}"
    );
    assert!(!text.contains("PATH"), "the denied tool ran: {r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_delete_ends_the_session() {
    let ev = Everything::start(EverythingTransport::StreamableHttp);
    let mut sc = front(&ev);
    let s = Session::initialize(&sc.url("/mcp"), PROTOCOL_2025).await;
    let before = s.post(&list_body(1)).await;
    assert_eq!(before.status, 200);

    let del = s.delete().await;
    assert_eq!(del.status, 200, "DELETE through the sidecar: {}", del.body);

    // server-everything answers 400 "No valid session ID" (not 404) for a session it dropped;
    // the sidecar passes the server's answer on.
    let after = s.post(&list_body(2)).await;
    assert_eq!(after.status, 400, "after DELETE: {}", after.body);
    assert!(after.body.contains("No valid session ID"), "{}", after.body);
    sc.assert_alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_progress_arrives_event_by_event() {
    let ev = Everything::start(EverythingTransport::StreamableHttp);
    let mut sc = front(&ev);
    let s = Session::initialize(&sc.url("/mcp"), PROTOCOL_2025).await;
    // 5 steps over 2 s: one progress notification every 400 ms.
    let mut stream = EventStream::post(
        &s.url,
        &call_with_progress_body(
            7,
            "trigger-long-running-operation",
            json!({"duration": 2, "steps": 5}),
            "p-7",
        ),
        &s.headers(),
    )
    .await;
    assert_eq!(stream.status, 200);
    assert!(stream.content_type().starts_with("text/event-stream"));
    let (events, ended) = stream.collect(Duration::from_secs(30)).await;
    assert!(ended, "the stream must end after the result: {events:?}");
    let progress: Vec<Duration> = events
        .iter()
        .filter(|e| {
            e.json()
                .is_some_and(|v| v["method"] == "notifications/progress")
        })
        .map(|e| e.at)
        .collect();
    assert_eq!(progress.len(), 5, "{events:?}");
    assert_spaced(
        &progress,
        Duration::from_millis(200),
        "server-everything progress",
    );
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
    let mut h = s.headers();

    // Control: agreeing headers pass (server-everything ignores them).
    h.push(("mcp-method", "tools/call"));
    h.push(("mcp-name", "get-sum"));
    let ok = post(
        &s.url,
        &call_body(1, "get-sum", json!({"a": 1, "b": 1})),
        &h,
    )
    .await;
    assert_eq!(ok.status, 200, "agreeing headers: {}", ok.body);
    assert!(ok.expect_response(&json!(1)).get("result").is_some());

    // Mcp-Name says an allowed tool, the body calls another: refused by the sidecar.
    let bad_name = post(
        &s.url,
        &call_body(2, "get-sum", json!({"a": 1, "b": 1})),
        &{
            let mut h = s.headers();
            h.push(("mcp-method", "tools/call"));
            h.push(("mcp-name", "echo"));
            h
        },
    )
    .await;
    assert_eq!(bad_name.status, 400, "Mcp-Name mismatch: {}", bad_name.body);
    assert_jsonrpc_error(&bad_name.body, None);

    // Mcp-Name names an allowed tool while the body calls the denied one.
    let smuggle = post(&s.url, &call_body(3, DENIED, json!({})), &{
        let mut h = s.headers();
        h.push(("mcp-method", "tools/call"));
        h.push(("mcp-name", "echo"));
        h
    })
    .await;
    assert_eq!(smuggle.status, 400, "{}", smuggle.body);
    assert!(!smuggle.body.contains("PATH"));

    // Mcp-Method disagrees with the body's method.
    let bad_method = post(
        &s.url,
        &call_body(4, "get-sum", json!({"a": 1, "b": 1})),
        &{
            let mut h = s.headers();
            h.push(("mcp-method", "tools/list"));
            h
        },
    )
    .await;
    assert_eq!(
        bad_method.status, 400,
        "Mcp-Method mismatch: {}",
        bad_method.body
    );
    assert_jsonrpc_error(&bad_method.body, None);
    sc.assert_alive();
}

// --- sse (older HTTP+SSE transport) -----------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_raw_list_is_filtered_and_denied_call_gets_jsonrpc_error() {
    let ev = Everything::start(EverythingTransport::Sse);
    let mut sc = front(&ev);
    let base = sc.url("");
    let (mut stream, endpoint) = open_legacy_sse(&base, "/sse").await;
    assert!(
        endpoint.starts_with(&format!("{base}/message?sessionId=")),
        "the endpoint points at the sidecar: {endpoint}"
    );

    let post_msg = |body: Value| {
        let endpoint = endpoint.clone();
        async move { post(&endpoint, &body, &[]).await }
    };
    let init = post_msg(initialize_body(0, PROTOCOL_2025)).await;
    assert!(init.status == 202 || init.status == 200, "{}", init.body);
    let (r, _) = await_on_stream(&mut stream, &json!(0), Duration::from_secs(15)).await;
    assert!(
        r.expect("initialize answer on the stream")
            .get("result")
            .is_some()
    );
    post_msg(json!({"jsonrpc": "2.0", "method": "notifications/initialized"})).await;

    post_msg(list_body(1)).await;
    let (r, _) = await_on_stream(&mut stream, &json!(1), Duration::from_secs(15)).await;
    let r = r.expect("tools/list answer on the stream");
    assert_filtered(&tool_names(&r["result"]), "sse tools/list");

    // The denial may come as the POST's answer or on the stream; it must be an error naming
    // the tool either way, and the server must not run the tool.
    let denied = post_msg(call_body(2, DENIED, json!({}))).await;
    let answer = match denied.response(&json!(2)) {
        Some(a) => a.clone(),
        None => {
            let (r, _) = await_on_stream(&mut stream, &json!(2), Duration::from_secs(15)).await;
            r.expect("an answer to the denied call")
        }
    };
    assert_denied(&answer, DENIED);

    post_msg(call_body(3, "get-sum", json!({"a": 3, "b": 4}))).await;
    let (r, seen) = await_on_stream(&mut stream, &json!(3), Duration::from_secs(15)).await;
    let r = r.expect("get-sum answer");
    assert_eq!(
        r["result"]["content"][0]["text"],
        "The sum of 3 and 4 is 7."
    );
    assert!(
        seen.iter().all(|(v, _)| !v.to_string().contains("PATH")),
        "the denied tool ran: {seen:?}"
    );
    sc.assert_alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_inspector_and_python_client() {
    let ev = Everything::start(EverythingTransport::Sse);
    let mut sc = front(&ev);
    let url = sc.url("/sse");

    let listed = inspector_json(&url, "sse", &["--method", "tools/list"]);
    assert_filtered(&tool_names(&listed), "inspector (sse) tools/list");
    let called = inspector_json(
        &url,
        "sse",
        &[
            "--method",
            "tools/call",
            "--tool-name",
            "echo",
            "--tool-arg",
            "message=via sse",
        ],
    );
    assert_eq!(called["content"][0]["text"], "Echo: via sse", "{called}");

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
    let names: Vec<String> = serde_json::from_value(r[0]["tools"].clone()).unwrap();
    assert_filtered(&names, "python client (sse) list");
    assert_eq!(r[1]["text"], "The sum of 1 and 2 is 3.", "{doc}");
    assert_python_denied(&r[2], "sse");
    let times: Vec<Duration> = r[3]["progress"]
        .as_array()
        .unwrap_or_else(|| panic!("no progress: {doc}"))
        .iter()
        .map(|p| Duration::from_secs_f64(p["t"].as_f64().unwrap()))
        .collect();
    assert_eq!(times.len(), 4, "{doc}");
    assert_spaced(
        &times,
        Duration::from_millis(200),
        "python client (sse) progress",
    );
    sc.assert_alive();
}
