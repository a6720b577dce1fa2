//! The real peers without the sidecar: the baseline every sidecar suite is the counterfactual
//! of. If these fail, the peers (or their installation) changed, not the sidecar: a denied tool
//! is listed and runs, the server checks `Host`, DELETE ends a session, progress is streamed.

use std::time::Duration;

use mcp_guard_tests::suite::*;
use mcp_guard_tests::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_streamable_http_direct() {
    let ev = Everything::start(EverythingTransport::StreamableHttp);
    let url = format!("http://127.0.0.1:{}/mcp", ev.port);

    let s = Session::initialize(&url, PROTOCOL_2025).await;
    assert!(s.id.is_some(), "server-everything gives a session id");
    let list = s.post(&list_body(1)).await;
    assert!(list.content_type().starts_with("text/event-stream"));
    let names = tool_names(&list.expect_response(&json!(1))["result"]);
    assert!(names.contains(&"get-env".to_owned()), "{names:?}");
    let call = s.post(&call_body(2, "get-env", json!({}))).await;
    assert!(call.expect_response(&json!(2)).get("result").is_some());
    assert!(
        call.body.contains("PATH"),
        "get-env shows the environment: {}",
        call.body
    );

    // server-everything does not check Mcp-Method / Mcp-Name: only the sidecar can refuse a
    // mismatch (sidecar_everything.rs).
    let h = with_mirrored(s.headers(), "tools/list", Some("echo"));
    let mismatch = post(&url, &call_body(3, "get-sum", json!({"a": 1, "b": 2})), &h).await;
    assert_eq!(mismatch.status, 200, "{}", mismatch.body);

    let del = s.delete().await;
    assert_eq!(del.status, 200, "{}", del.body);
    let after = s.post(&list_body(4)).await;
    assert_eq!(
        after.status, 400,
        "server-everything answers 400 to an unknown session"
    );

    let listed = inspector_json(&url, "http", &["--method", "tools/list"]);
    assert!(tool_names(&listed).contains(&"get-env".to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_server_direct() {
    let py = PyServer::start(PyAnswers::Json);
    let url = format!("http://127.0.0.1:{}/mcp", py.port);

    let mut h = headers_2026("tools/list", None);
    h.push(("host", "mcp.example.com"));
    let foreign = post(&url, &with_meta_2026(list_body(1)), &h).await;
    assert_eq!(foreign.status, 421, "the server refuses a foreign Host");

    let mismatch = post_2026(
        &url,
        call_body(2, "add", json!({"a": 1, "b": 2})),
        "tools/call",
        Some("echo"),
    )
    .await;
    assert_eq!(mismatch.status, 400, "{}", mismatch.body);

    let doc = py_client(
        &url,
        "http",
        "auto",
        &json!([{"op": "list"}, {"op": "call", "name": "secret_tool", "args": {"note": "x"}}]),
    );
    assert_eq!(doc["protocol_version"], PROTOCOL_2026);
    let r = py_results(&doc);
    assert!(
        py_tool_names(&r[0], "direct list").contains(&"secret_tool".to_owned()),
        "{doc}"
    );
    assert_eq!(r[1]["text"], "secret:x");
    assert!(
        py.secret_tool_ran(),
        "the marker shows a call that reached the server"
    );

    // The server answers 404 to a session it ended.
    assert_delete_ends_session(&url, 404, "python server direct").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_server_progress_is_streamed_direct() {
    let py = PyServer::start(PyAnswers::Sse);
    let url = format!("http://127.0.0.1:{}/mcp", py.port);
    let s = Session::initialize(&url, PROTOCOL_2025).await;
    assert_progress_streamed(
        &url,
        &call_with_progress_body(
            5,
            "slow_count",
            json!({"steps": 4, "interval_ms": 300}),
            "tok",
        ),
        &s.headers(),
        4,
        Duration::from_millis(150),
        "direct progress",
    )
    .await;
}
