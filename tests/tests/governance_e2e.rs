//! Governance without gaps (issue 18), each path first taken without mcp-guard, where it
//! succeeds (so the test can fail), then through the sidecar, where it is refused:
//! - every request is decided, against `@modelcontextprotocol/server-everything`: the methods
//!   that name a hidden item without being its call (a completion, an unsubscription) are
//!   answered as for a missing item, and the methods no policy rule decides
//!   (`logging/setLevel`, the tasks extension, a vendor's method) are denied;
//! - session ownership never lapses, against the PyPI `mcp` server and a real OpenID provider:
//!   past the session table's capacity the oldest session alone is evicted, and refused to
//!   everyone afterwards, while the server would still let another caller use it.

use mcp_guard_tests::oidc::{Provider, RESOURCE, gen_key, open_session};
use mcp_guard_tests::*;
use serde_json::{Value, json};

/// Tools, prompts, resources and completions are allowed, but `completable-prompt` and the
/// dynamic text resources are hidden; nothing decides `logging/setLevel`, `tasks/*` or vendor
/// methods, so they are denied.
const POLICY: &str = r#"package mcp.authz
import rego.v1

default allow := false

allow if input.request.method in {
	"tools/call", "prompts/get", "resources/read",
	"completion/complete", "resources/subscribe", "resources/unsubscribe",
}

deny contains "completable-prompt is hidden" if input.request.prompt == "completable-prompt"

deny contains "dynamic text resources are hidden" if {
	startswith(input.request.uri, "demo://resource/dynamic/text/")
}
"#;

const HIDDEN_PROMPT: &str = "completable-prompt";
const HIDDEN_TEMPLATE: &str = "demo://resource/dynamic/text/{resourceId}";
const HIDDEN_RESOURCE: &str = "demo://resource/dynamic/text/1";
const VISIBLE_TEMPLATE: &str = "demo://resource/dynamic/blob/{resourceId}";

fn rpc(id: i64, method: &str, params: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
}

fn complete_prompt(id: i64, name: &str) -> Value {
    rpc(
        id,
        "completion/complete",
        json!({"ref": {"type": "ref/prompt", "name": name},
               "argument": {"name": "department", "value": "E"}}),
    )
}

fn complete_template(id: i64, uri: &str) -> Value {
    rpc(
        id,
        "completion/complete",
        json!({"ref": {"type": "ref/resource", "uri": uri},
               "argument": {"name": "resourceId", "value": "1"}}),
    )
}

/// The answer to `body` (whose id is `id`) in session `s`.
async fn ask(s: &Session, id: i64, body: &Value) -> Value {
    s.post(body).await.expect_response(&json!(id)).clone()
}

fn result(v: &Value, what: &str) -> Value {
    match v.get("result") {
        Some(r) => r.clone(),
        None => panic!("{what}: expected a result, got {v}"),
    }
}

fn error(v: &Value, what: &str) -> (i64, String) {
    let e = &v["error"];
    match (e["code"].as_i64(), e["message"].as_str()) {
        (Some(c), Some(m)) => (c, m.to_owned()),
        _ => panic!("{what}: expected a JSON-RPC error, got {v}"),
    }
}

fn names(list: &Value, field: &str, key: &str) -> Vec<String> {
    list[field]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|i| i[key].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_is_decided_and_hidden_items_stay_hidden() {
    let ev = Everything::start(EverythingTransport::StreamableHttp);
    let dir = TempDir::new("governance");
    std::fs::write(dir.path().join("authz.rego"), POLICY).expect("write the policy");
    let mut sc = Sidecar::start(
        ev.port,
        &["--policy-dir", &dir.path().display().to_string()],
    );

    // Without mcp-guard, the server answers every one of these.
    let direct =
        Session::initialize(&format!("http://127.0.0.1:{}/mcp", ev.port), PROTOCOL_2025).await;
    let prompts = result(
        &ask(&direct, 1, &rpc(1, "prompts/list", json!({}))).await,
        "direct prompts/list",
    );
    assert!(
        names(&prompts, "prompts", "name").contains(&HIDDEN_PROMPT.to_owned()),
        "{prompts}"
    );
    let templates = result(
        &ask(&direct, 2, &rpc(2, "resources/templates/list", json!({}))).await,
        "direct templates",
    );
    assert!(
        names(&templates, "resourceTemplates", "uriTemplate").contains(&HIDDEN_TEMPLATE.to_owned())
    );
    let c = result(
        &ask(&direct, 3, &complete_prompt(3, HIDDEN_PROMPT)).await,
        "direct completion",
    );
    assert_eq!(c["completion"]["values"], json!(["Engineering"]), "{c}");
    let c = result(
        &ask(&direct, 4, &complete_template(4, HIDDEN_TEMPLATE)).await,
        "direct template completion",
    );
    assert_eq!(c["completion"]["values"], json!(["1"]), "{c}");
    let unsub = rpc(5, "resources/unsubscribe", json!({"uri": HIDDEN_RESOURCE}));
    result(&ask(&direct, 5, &unsub).await, "direct unsubscribe");
    let set_level = rpc(6, "logging/setLevel", json!({"level": "debug"}));
    result(
        &ask(&direct, 6, &set_level).await,
        "direct logging/setLevel",
    );
    let tasks = rpc(7, "tasks/list", json!({}));
    result(&ask(&direct, 7, &tasks).await, "direct tasks/list");
    // A vendor method reaches the server, which does not know it.
    let vendor = rpc(8, "vendor.example/export", json!({"name": HIDDEN_PROMPT}));
    assert_eq!(
        error(&ask(&direct, 8, &vendor).await, "direct vendor").0,
        -32601
    );

    // Through the sidecar.
    let s = Session::initialize(&sc.url("/mcp"), PROTOCOL_2025).await;
    let prompts = result(
        &ask(&s, 1, &rpc(1, "prompts/list", json!({}))).await,
        "prompts/list",
    );
    let listed = names(&prompts, "prompts", "name");
    assert!(!listed.contains(&HIDDEN_PROMPT.to_owned()), "{listed:?}");
    assert!(listed.contains(&"simple-prompt".to_owned()), "{listed:?}");
    let templates = result(
        &ask(&s, 2, &rpc(2, "resources/templates/list", json!({}))).await,
        "templates",
    );
    let listed = names(&templates, "resourceTemplates", "uriTemplate");
    assert_eq!(
        listed,
        [VISIBLE_TEMPLATE],
        "the hidden template is filtered out"
    );

    // A completion naming a hidden prompt gets exactly the answer a request for it gets.
    let get = error(
        &ask(
            &s,
            3,
            &rpc(3, "prompts/get", json!({"name": HIDDEN_PROMPT})),
        )
        .await,
        "prompts/get of the hidden prompt",
    );
    assert_eq!(get, (-32602, format!("Unknown prompt: {HIDDEN_PROMPT}")));
    let complete = error(
        &ask(&s, 4, &complete_prompt(4, HIDDEN_PROMPT)).await,
        "completion of the hidden prompt",
    );
    assert_eq!(complete, get);
    // The same for a hidden resource template, and for unsubscribing from a hidden resource.
    let read = error(
        &ask(
            &s,
            5,
            &rpc(5, "resources/read", json!({"uri": HIDDEN_TEMPLATE})),
        )
        .await,
        "read of the hidden template",
    );
    assert_eq!(
        read,
        (-32002, format!("Resource not found: {HIDDEN_TEMPLATE}"))
    );
    let complete = error(
        &ask(&s, 6, &complete_template(6, HIDDEN_TEMPLATE)).await,
        "template completion",
    );
    assert_eq!(complete, read);
    let unsub = rpc(7, "resources/unsubscribe", json!({"uri": HIDDEN_RESOURCE}));
    assert_eq!(
        error(&ask(&s, 7, &unsub).await, "unsubscribe"),
        (-32002, format!("Resource not found: {HIDDEN_RESOURCE}"))
    );
    // A completion of a visible template still works.
    let c = result(
        &ask(&s, 8, &complete_template(8, VISIBLE_TEMPLATE)).await,
        "visible completion",
    );
    assert_eq!(c["completion"]["values"], json!(["1"]), "{c}");

    // Methods the policy does not decide are denied by mcp-guard, not the server's -32601.
    for (id, body) in [
        (9, rpc(9, "logging/setLevel", json!({"level": "debug"}))),
        (10, rpc(10, "tasks/list", json!({}))),
        (11, rpc(11, "tasks/get", json!({"taskId": "t-1"}))),
        (
            12,
            rpc(12, "vendor.example/export", json!({"name": HIDDEN_PROMPT})),
        ),
    ] {
        let (code, message) = error(&ask(&s, id, &body).await, &body.to_string());
        assert_eq!(code, -32003, "{body}: {message}");
        assert!(message.starts_with("denied by policy"), "{message}");
    }
    sc.assert_alive();
    let logs = sc.proc.logs();
    assert!(
        logs.contains("names a hidden item"),
        "the refusals are logged:\n{}",
        tail(&logs, 4000)
    );
}

/// `tools/list` in session `sid` as the bearer of `token` (no token: straight to the server).
async fn list_in(url: &str, sid: &str, token: Option<&str>) -> McpResponse {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![
        ("mcp-session-id", sid),
        ("mcp-protocol-version", PROTOCOL_2025),
    ];
    if let Some(a) = &auth {
        headers.push(("authorization", a.as_str()));
    }
    post(url, &list_body(1), &headers).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_capacity_the_oldest_session_is_evicted_alone_and_never_taken_over() {
    let dir = TempDir::new("sessions");
    let key = gen_key(dir.path(), "k1");
    let provider = Provider::start(&[&key]);
    let py = PyServer::start(PyAnswers::Json);
    let issuer = provider.issuer();
    let mut sc = Sidecar::start(
        py.port,
        &[
            "--issuer",
            &issuer,
            "--resource-uri",
            RESOURCE,
            "--max-sessions",
            "2",
        ],
    );
    let url = sc.url("/mcp");
    let direct = format!("http://127.0.0.1:{}/mcp", py.port);
    let admin = provider.admin_token().await;
    let reader = provider.reader_token().await;

    let a = open_session(&url, &admin).await;
    let b1 = open_session(&url, &reader).await;
    // The table holds both: the admin's session is the admin's alone.
    assert_eq!(list_in(&url, &a, Some(&admin)).await.status, 200);
    let taken = list_in(&url, &a, Some(&reader)).await;
    assert_eq!(taken.status, 404, "{}", taken.body);
    assert!(taken.body.contains("session not found"), "{}", taken.body);

    // A third session evicts the oldest (the admin's), and only it.
    let b2 = open_session(&url, &reader).await;
    for who in [&reader, &admin] {
        let r = list_in(&url, &a, Some(who)).await;
        assert_eq!(r.status, 404, "{}", r.body);
        assert!(
            r.body.contains("session expired") && r.body.contains("at most 2 sessions"),
            "an evicted session is refused with the reason: {}",
            r.body
        );
    }
    for sid in [&b1, &b2] {
        let r = list_in(&url, sid, Some(&reader)).await;
        assert_eq!(r.status, 200, "the other sessions stay: {}", r.body);
    }
    // The server itself still serves the evicted session to whoever names it: without
    // mcp-guard's refusal, the reader would have taken over the admin's session.
    let r = list_in(&direct, &a, None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.expect_response(&json!(1)).get("result").is_some(),
        "{}",
        r.body
    );
    sc.assert_alive();
}
