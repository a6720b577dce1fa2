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

/// server-everything behind a sidecar deciding with `policy` (a bundle of one module) and
/// `extra` flags. The directory holds the bundle; keep it while the sidecar runs.
fn governed_everything(policy: &str, extra: &[&str]) -> (Everything, TempDir, Sidecar) {
    let ev = Everything::start(EverythingTransport::StreamableHttp);
    let dir = TempDir::new("governed");
    std::fs::write(dir.path().join("authz.rego"), policy).expect("write the policy");
    let policy_dir = dir.path().display().to_string();
    let mut args = vec!["--policy-dir", policy_dir.as_str()];
    args.extend_from_slice(extra);
    let sc = Sidecar::start(ev.port, &args);
    (ev, dir, sc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_is_decided_and_hidden_items_stay_hidden() {
    let (ev, _dir, mut sc) = governed_everything(POLICY, &[]);

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

/// The fields docs/audit.md promises on every line, read from its table ("## The line"), with
/// the sub-fields the table names for `subject`, `client`, `server`, `decision`, `duration_us`.
fn promised_fields() -> Vec<String> {
    let doc =
        std::fs::read_to_string(workspace_root().join("docs/audit.md")).expect("docs/audit.md");
    let table = doc
        .split("## The line")
        .nth(1)
        .expect("a section named The line");
    let mut fields = Vec::new();
    for row in table.lines().take_while(|l| !l.starts_with("## ")) {
        let Some(first) = row.strip_prefix("| ").and_then(|r| r.split(" | ").next()) else {
            continue;
        };
        for name in first.split('`').skip(1).step_by(2) {
            if name != "field" && !name.contains(' ') {
                fields.push(name.to_owned());
            }
        }
    }
    fields
}

/// The value at a documented field name (`decision.allowed`, `arguments_bytes`); `decision`'s
/// and `duration_us`'s sub-fields are named on their own rows as `decision.X`.
fn field<'a>(line: &'a Value, name: &str) -> Option<&'a Value> {
    name.split('.').try_fold(line, |v, k| v.get(k))
}

const AUDIT_POLICY: &str = r#"package mcp.authz
import rego.v1

default allow := false

allow if input.request.method in {"tools/call", "prompts/get", "resources/read", "completion/complete"}

deny contains "get-sum: a must be below 100" if {
	input.request.tool == "get-sum"
	input.request.arguments.a >= 100
}

deny contains "toggle tools are hidden" if startswith(input.request.tool, "toggle-")

deny contains "completable-prompt is hidden" if input.request.prompt == "completable-prompt"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_records_of_every_kind_carry_what_the_docs_promise() {
    let (ev, _dir, mut sc) = governed_everything(AUDIT_POLICY, &["--deny-tools", "get-env"]);
    // Without mcp-guard the server lists and runs every tool named below.
    let direct =
        Session::initialize(&format!("http://127.0.0.1:{}/mcp", ev.port), PROTOCOL_2025).await;
    let all = result(&ask(&direct, 1, &list_body(1)).await, "direct tools/list");
    let all = names(&all, "tools", "name");
    for t in ["get-env", "toggle-simulated-logging", "get-sum", "echo"] {
        assert!(all.contains(&t.to_owned()), "{t} in {all:?}");
    }
    let r = ask(
        &direct,
        2,
        &call_body(2, "get-sum", json!({"a": 500, "b": 1})),
    )
    .await;
    assert!(
        result(&r, "direct get-sum")["content"][0]["text"]
            .as_str()
            .unwrap_or("")
            .contains("501"),
        "{r}"
    );

    let s = Session::initialize(&sc.url("/mcp"), PROTOCOL_2025).await;
    let requests = [
        (
            "allowed call",
            call_body(10, "echo", json!({"message": "hi"})),
        ),
        (
            "denied by policy",
            call_body(11, "get-sum", json!({"a": 500, "b": 1})),
        ),
        (
            "hidden by policy",
            call_body(12, "toggle-simulated-logging", json!({})),
        ),
        (
            "hidden by --deny-tools",
            call_body(13, "get-env", json!({})),
        ),
        ("filtered list", list_body(14)),
        (
            "list with nothing hidden",
            rpc(15, "resources/list", json!({})),
        ),
        (
            "undecided method",
            rpc(16, "logging/setLevel", json!({"level": "debug"})),
        ),
        (
            "completion of a hidden prompt",
            complete_prompt(17, HIDDEN_PROMPT),
        ),
    ];
    for (id, (what, body)) in (10..).zip(&requests) {
        let answer = ask(&s, id, body).await;
        assert!(
            answer.get("result").is_some() || answer.get("error").is_some(),
            "{what}: {answer}"
        );
    }

    // One line per request, each with every promised field.
    let mut lines = Vec::new();
    for _ in 0..100 {
        lines = sc
            .proc
            .stdout()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| {
                v["schema"] == "mcp-guard.audit/v1"
                    && v["request_id"].as_i64().is_some_and(|i| i >= 10)
            })
            .collect::<Vec<_>>();
        if lines.len() >= requests.len() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(lines.len(), requests.len(), "{lines:#?}");
    let promised = promised_fields();
    for required in [
        "hidden",
        "decision.source",
        "decision.policy",
        "duration_us",
    ] {
        assert!(
            promised.iter().any(|f| f == required),
            "docs/audit.md names {required}: {promised:?}"
        );
    }
    let by_id = |id: i64| {
        lines
            .iter()
            .find(|l| l["request_id"] == id)
            .unwrap_or_else(|| panic!("no line for {id}: {lines:#?}"))
    };
    for (id, (what, _)) in (10..).zip(&requests) {
        let l = by_id(id);
        for f in &promised {
            assert!(field(l, f).is_some(), "{what}: field {f} missing from {l}");
        }
    }
    let policy_hash = by_id(10)["decision"]["policy"].clone();
    assert!(
        policy_hash
            .as_str()
            .is_some_and(|h| h.starts_with("sha256:")),
        "{policy_hash}"
    );
    let check = |id: i64, outcome: &str, source: Value, target: Value| {
        let l = by_id(id);
        assert_eq!(
            (&l["outcome"], &l["decision"]["source"], &l["target"]),
            (&json!(outcome), &source, &target),
            "{l}"
        );
    };
    check(10, "ok", Value::Null, json!("echo"));
    check(11, "denied", json!("policy"), json!("get-sum"));
    assert_eq!(
        by_id(11)["decision"]["reasons"],
        json!(["get-sum: a must be below 100"])
    );
    assert_eq!(by_id(11)["decision"]["policy"], policy_hash);
    check(
        12,
        "denied",
        json!("policy"),
        json!("toggle-simulated-logging"),
    );
    assert_eq!(by_id(12)["error_code"], -32602);
    check(13, "denied", json!("--deny-tools"), json!("get-env"));
    assert_eq!(
        by_id(13)["decision"]["reasons"],
        json!(["Unknown tool: get-env"])
    );
    check(16, "denied", json!("policy"), Value::Null);
    assert_eq!(by_id(16)["error_code"], -32003);
    check(17, "denied", json!("policy"), json!(HIDDEN_PROMPT));
    assert_eq!(by_id(17)["error_code"], -32602);

    // List records: the bundle that filtered, and what was hidden, by whom.
    let list = by_id(14);
    assert_eq!(list["decision"]["policy"], policy_hash, "{list}");
    let mut hidden: Vec<String> =
        serde_json::from_value(list["hidden"].clone()).expect("hidden names");
    hidden.sort();
    assert_eq!(
        hidden,
        [
            "get-env",
            "toggle-simulated-logging",
            "toggle-subscriber-updates"
        ],
        "{list}"
    );
    let source = list["decision"]["source"].as_str().unwrap_or_default();
    assert!(
        source.contains("--deny-tools") && source.contains("policy"),
        "{list}"
    );
    let quiet = by_id(15);
    assert_eq!(
        (&quiet["hidden"], &quiet["decision"]["policy"]),
        (&json!([]), &policy_hash),
        "{quiet}"
    );
    assert_eq!(by_id(10)["hidden"], Value::Null);
    sc.assert_alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2025_03_26_client_batches_and_every_message_is_decided() {
    const REVISION: &str = "2025-03-26";
    let (ev, _dir, mut sc) = governed_everything(POLICY, &["--deny-tools", "get-env"]);
    let batch = json!([
        call_body(1, "echo", json!({"message": "in a batch"})),
        call_body(2, "get-env", json!({})),
        list_body(3),
        complete_prompt(4, HIDDEN_PROMPT),
        rpc(5, "logging/setLevel", json!({"level": "debug"})),
        {"jsonrpc": "2.0", "method": "notifications/roots/list_changed"},
    ]);

    // The server negotiates 2025-03-26 and answers the whole batch, get-env and all.
    let direct = Session::initialize(&format!("http://127.0.0.1:{}/mcp", ev.port), REVISION).await;
    assert_eq!(direct.protocol, REVISION);
    let d = direct.post(&batch).await;
    assert_eq!(d.status, 200, "{}", d.body);
    let env = result(d.expect_response(&json!(2)), "direct get-env");
    assert!(env.to_string().contains("PATH"), "get-env ran: {env}");
    assert!(
        names(
            &result(d.expect_response(&json!(3)), "direct list"),
            "tools",
            "name"
        )
        .contains(&"get-env".to_owned())
    );
    result(d.expect_response(&json!(4)), "direct completion");
    result(d.expect_response(&json!(5)), "direct logging/setLevel");

    // Through the sidecar each message of the batch is decided on its own.
    let s = Session::initialize(&sc.url("/mcp"), REVISION).await;
    assert_eq!(
        s.protocol, REVISION,
        "the sidecar passes the negotiation through"
    );
    let r = s.post(&batch).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let echo = result(r.expect_response(&json!(1)), "echo");
    assert_eq!(echo["content"][0]["text"], "Echo: in a batch", "{echo}");
    assert_eq!(
        error(r.expect_response(&json!(2)), "get-env"),
        (-32602, "Unknown tool: get-env".to_owned())
    );
    let tools = names(
        &result(r.expect_response(&json!(3)), "tools/list"),
        "tools",
        "name",
    );
    assert!(
        !tools.contains(&"get-env".to_owned()) && tools.contains(&"echo".to_owned()),
        "{tools:?}"
    );
    assert_eq!(
        error(r.expect_response(&json!(4)), "completion"),
        (-32602, format!("Unknown prompt: {HIDDEN_PROMPT}"))
    );
    assert_eq!(
        error(r.expect_response(&json!(5)), "logging/setLevel").0,
        -32003
    );
    assert!(!r.body.contains("PATH"), "get-env never ran: {}", r.body);
    sc.assert_alive();
}

/// `secret_tool` is hidden by policy; every other tool and every resource is allowed.
const HIDE_SECRET: &str = r#"package mcp.authz
import rego.v1
default allow := false
allow if input.request.method == "resources/read"
allow if {
	input.request.method == "tools/call"
	input.request.tool != "secret_tool"
}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_decided_per_caller_is_never_passed_on_as_public() {
    let py = PyServer::start_with(PyAnswers::Json, &["--stateless", "--public-cache"]);
    let dir = TempDir::new("cache-scope");
    std::fs::write(dir.path().join("authz.rego"), HIDE_SECRET).expect("write the policy");
    let mut sc = Sidecar::start(
        py.port,
        &["--policy-dir", &dir.path().display().to_string()],
    );
    let list = |url: String, id: i64, method: &'static str| async move {
        let body = with_meta_2026(rpc(id, method, json!({})));
        let r = post(
            &url,
            &body,
            &[
                ("mcp-protocol-version", PROTOCOL_2026),
                ("mcp-method", method),
            ],
        )
        .await;
        result(r.expect_response(&json!(id)), method)
    };

    // The server says every list is the same for every caller, and lists secret_tool.
    let direct = format!("http://127.0.0.1:{}/mcp", py.port);
    let tools = list(direct.clone(), 1, "tools/list").await;
    assert_eq!(tools["cacheScope"], "public", "{tools}");
    assert!(names(&tools, "tools", "name").contains(&"secret_tool".to_owned()));
    let resources = list(direct, 2, "resources/list").await;
    assert_eq!(resources["cacheScope"], "public", "{resources}");

    // Through mcp-guard the lists are this caller's view: a shared cache must not serve them to
    // another caller, whether or not anything was hidden from this one.
    let tools = list(sc.url("/mcp"), 3, "tools/list").await;
    assert!(
        !names(&tools, "tools", "name").contains(&"secret_tool".to_owned()),
        "{tools}"
    );
    assert_eq!(tools["cacheScope"], "private", "{tools}");
    assert_eq!(
        tools["ttlMs"], 60000,
        "the freshness hint itself passes: {tools}"
    );
    let resources = list(sc.url("/mcp"), 4, "resources/list").await;
    assert_eq!(
        names(&resources, "resources", "uri").len(),
        2,
        "{resources}"
    );
    assert_eq!(resources["cacheScope"], "private", "{resources}");
    sc.assert_alive();
}

/// Research tasks may be created and polled, but their results are not for this caller: a rule
/// that can only hold when the task's originating tool reaches the policy.
const TASKS: &str = r#"package mcp.authz
import rego.v1
allow if input.request.method in {"tools/call", "tasks/get", "tasks/result"}
deny contains "research results are not for this caller" if {
	input.request.method == "tasks/result"
	input.request.tool == "simulate-research-query"
}
"#;

/// Creates a research task in session `s` (request `id`); returns its id.
async fn research_task(s: &Session, id: i64) -> String {
    let body = rpc(
        id,
        "tools/call",
        json!({"name": "simulate-research-query", "arguments": {"topic": "mcp"},
               "task": {"ttl": 60000}}),
    );
    let created = result(&ask(s, id, &body).await, "task-augmented call");
    match created["task"]["taskId"].as_str() {
        Some(t) => t.to_owned(),
        None => panic!("no task created: {created}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_is_decided_with_the_tool_that_created_it() {
    let (ev, _dir, mut sc) = governed_everything(TASKS, &[]);
    const REVISION: &str = "2025-11-25";

    // Directly, the server hands the research results to whoever asks for the task.
    let direct = Session::initialize(&format!("http://127.0.0.1:{}/mcp", ev.port), REVISION).await;
    let task = research_task(&direct, 1).await;
    let got = ask(&direct, 2, &rpc(2, "tasks/result", json!({"taskId": task}))).await;
    assert!(got.get("result").is_some(), "direct tasks/result: {got}");

    // Through mcp-guard the task is created and polled, and its results are refused by the
    // rule on the tool that created it.
    let s = Session::initialize(&sc.url("/mcp"), REVISION).await;
    let task = research_task(&s, 1).await;
    let polled = ask(&s, 2, &rpc(2, "tasks/get", json!({"taskId": task}))).await;
    assert_eq!(
        result(&polled, "tasks/get")["taskId"],
        task.as_str(),
        "{polled}"
    );
    let refused = ask(&s, 3, &rpc(3, "tasks/result", json!({"taskId": task}))).await;
    assert_eq!(
        error(&refused, "tasks/result"),
        (
            -32003,
            "denied by policy: research results are not for this caller".to_owned()
        )
    );
    sc.assert_alive();
}
