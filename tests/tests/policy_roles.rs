//! Role-based tool access, end to end: the real sidecar binary verifies bearer tokens issued by
//! a real OpenID provider (npm `oidc-provider`, two clients: `agent-admin` with role
//! `mcp-admin` and groups ops+dev, `agent-reader` with role `mcp-reader` and group dev) and
//! decides each MCP request for the real `@modelcontextprotocol/server-everything`
//! (streamableHttp) with one Rego policy that gives the two roles different tools. Driven with
//! raw HTTP (reqwest) and with the Inspector CLI. Needs `tests/scripts/install-peers.sh` and
//! `cargo build --workspace --bins`; the provider installs itself.

#![allow(clippy::unwrap_used)]

use std::future::Future;
use std::time::Duration;

use mcp_guard_tests::oidc::{Provider, RESOURCE, gen_key};
use mcp_guard_tests::volume::ConfigMapVolume;
use mcp_guard_tests::*;
use serde_json::{Value, json};

/// Admins may use every tool. Readers (role `mcp-reader`, in group `dev`) may use the tools
/// the server itself marks read-only, except `get-env` (it prints the server's environment);
/// and `get-sum` is capped for everyone but admins, with a reason that names the caller.
const ROLES: &str = r#"package mcp.authz
import rego.v1

default allow := false

allow if "mcp-admin" in input.subject.roles

# Clients set their log level on connect (the Inspector does); every method is decided.
allow if input.request.method == "logging/setLevel"

allow if {
    "mcp-reader" in input.subject.roles
    "dev" in input.subject.groups
    input.tool.annotations.readOnlyHint == true
    input.request.tool != "get-env"
}

deny contains msg if {
    input.request.tool == "get-sum"
    not "mcp-admin" in input.subject.roles
    object.get(input.request.arguments, "a", 0) > 100
    msg := sprintf("get-sum: a must be at most 100 for %s", [input.subject.sub])
}
"#;

/// The same roles' lists decided by one `visible_tools` rule, a whole `tools/list` per
/// evaluation: admins see every tool, readers the read-only ones except `get-env` and `echo`.
/// (`echo` stays callable for readers: seeing and calling are decided apart, as with `visible`.)
const VISIBLE_TOOLS: &str = r#"package mcp.authz
import rego.v1

visible_tools contains t.name if {
    "mcp-admin" in input.subject.roles
    some t in input.tools
}

visible_tools contains t.name if {
    "mcp-reader" in input.subject.roles
    input.request.method == "tools/list"
    some t in input.tools
    t.annotations.readOnlyHint == true
    not t.name in {"get-env", "echo"}
}
"#;

/// The tool the reader role may neither see nor call.
const DENIED: &str = "get-env";
/// A tool the server marks read-only: the reader sees it.
const READ_ONLY: &str = "get-sum";
/// A tool the server does not mark read-only: hidden from the reader, visible to the admin.
const WRITES: &str = "toggle-simulated-logging";

/// Bound on a whole test (peers start in seconds; this only stops a hang).
const TEST_TIMEOUT: Duration = Duration::from_secs(240);

async fn bounded<F: Future<Output = ()>>(what: &str, f: F) {
    if tokio::time::timeout(TEST_TIMEOUT, f).await.is_err() {
        panic!("{what} did not finish within {TEST_TIMEOUT:?}");
    }
}

/// The provider, server-everything and a sidecar in front of it, authenticating against the
/// provider and deciding with [`ROLES`] from a ConfigMap-style volume.
struct Stack {
    provider: Provider,
    _everything: Everything,
    sidecar: Sidecar,
    _vol: ConfigMapVolume,
    _tmp: TempDir,
}

fn stack(extra: &[&str]) -> Stack {
    stack_with(&[("authz.rego", ROLES)], extra)
}

/// [`stack`] with the policy bundle made of `files`.
fn stack_with(files: &[(&str, &str)], extra: &[&str]) -> Stack {
    let tmp = TempDir::new("policy-roles");
    let k1 = gen_key(tmp.path(), "k1");
    let provider = Provider::start(&[&k1]);
    let vol = ConfigMapVolume::new(&tmp.path().join("policy"), files);
    let everything = Everything::start(EverythingTransport::StreamableHttp);
    let issuer = provider.issuer();
    let mut args = vec![
        "--issuer",
        issuer.as_str(),
        "--resource-uri",
        RESOURCE,
        "--policy-dir",
        vol.path().to_str().unwrap(),
        "--log-format",
        "text",
    ];
    args.extend_from_slice(extra);
    let sidecar = Sidecar::start(everything.port, &args);
    Stack {
        provider,
        _everything: everything,
        sidecar,
        _vol: vol,
        _tmp: tmp,
    }
}

/// A raw-HTTP MCP session carrying a bearer token on every request.
struct Agent {
    url: String,
    auth: String,
    session: Option<String>,
    protocol: String,
}

impl Agent {
    async fn connect(url: &str, token: &str) -> Agent {
        let auth = format!("Bearer {token}");
        let init = post(
            url,
            &initialize_body(0, PROTOCOL_2025),
            &[("authorization", &auth)],
        )
        .await;
        assert_eq!(init.status, 200, "initialize: {}", init.body);
        let r = init.expect_response(&json!(0));
        assert!(r.get("result").is_some(), "initialize: {r}");
        let agent = Agent {
            url: url.to_owned(),
            auth,
            session: init.header("mcp-session-id"),
            protocol: r["result"]["protocolVersion"]
                .as_str()
                .unwrap_or(PROTOCOL_2025)
                .to_owned(),
        };
        let ack = agent
            .post(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .await;
        assert!(
            ack.status == 202 || ack.status == 200,
            "initialized: {} {}",
            ack.status,
            ack.body
        );
        agent
    }

    async fn post(&self, body: &Value) -> McpResponse {
        let mut h = vec![
            ("authorization", self.auth.as_str()),
            ("mcp-protocol-version", self.protocol.as_str()),
        ];
        if let Some(s) = &self.session {
            h.push(("mcp-session-id", s.as_str()));
        }
        post(&self.url, body, &h).await
    }

    async fn list(&self, id: i64) -> Vec<String> {
        let r = self.post(&list_body(id)).await;
        assert_eq!(r.status, 200, "tools/list: {}", r.body);
        tool_names(&r.expect_response(&json!(id))["result"])
    }

    /// The JSON-RPC answer to a call, and the whole HTTP body it came in.
    async fn call(&self, id: i64, tool: &str, args: Value) -> (Value, String) {
        let r = self.post(&call_body(id, tool, args)).await;
        assert_eq!(r.status, 200, "tools/call {tool}: {}", r.body);
        (r.expect_response(&json!(id)).clone(), r.body)
    }
}

fn has(names: &[String], tool: &str) -> bool {
    names.iter().any(|n| n == tool)
}

/// The text of a successful call's first content item.
fn text(answer: &Value) -> &str {
    answer["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("no result text: {answer}"))
}

/// The value of one Prometheus sample line (`name{labels} value`), if present.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_from_the_provider_decide_which_tools_are_listed_and_callable() {
    let mut st = stack(&[]);
    let url = st.sidecar.url("/mcp");
    bounded("enforce", async {
        let admin = Agent::connect(&url, &st.provider.admin_token().await).await;
        let reader = Agent::connect(&url, &st.provider.reader_token().await).await;

        // Without a token nothing is listed.
        let anon = post(&url, &list_body(1), &[]).await;
        assert_eq!(anon.status, 401, "{}", anon.body);

        // Lists differ by role.
        let admin_tools = admin.list(1).await;
        let reader_tools = reader.list(1).await;
        for t in [DENIED, READ_ONLY, WRITES, "echo"] {
            assert!(has(&admin_tools, t), "admin misses {t}: {admin_tools:?}");
        }
        assert!(!has(&reader_tools, DENIED), "{reader_tools:?}");
        assert!(!has(&reader_tools, WRITES), "{reader_tools:?}");
        assert!(
            has(&reader_tools, READ_ONLY) && has(&reader_tools, "echo"),
            "{reader_tools:?}"
        );
        assert!(reader_tools.len() < admin_tools.len());

        // 1. The reader's direct call of the hidden tool is a JSON-RPC error, answered as for a
        //    tool that does not exist, and the tool never ran (no environment in the answer).
        let (denied, body) = reader.call(2, DENIED, json!({})).await;
        assert_denied(&denied, DENIED);
        // Answered as for a tool that does not exist: a hidden tool is revealed by no path.
        assert_eq!(denied["error"]["code"], -32602, "{denied}");
        assert_eq!(
            denied["error"]["message"], "Unknown tool: get-env",
            "{denied}"
        );
        assert!(
            !body.contains("\"PATH\""),
            "get-env ran for the reader: {body}"
        );
        assert!(
            st.sidecar.proc.logs().contains("denied by policy"),
            "{}",
            st.sidecar.proc.logs()
        );
        // The hidden non-read-only tool likewise.
        let (denied, _) = reader.call(3, WRITES, json!({})).await;
        assert_denied(&denied, WRITES);

        // 2. The admin calls it and gets the server's environment.
        let (ok, _) = admin.call(2, DENIED, json!({})).await;
        assert!(ok.get("error").is_none(), "{ok}");
        assert!(text(&ok).contains("\"PATH\""), "{ok}");

        // 3. Visible to the reader, refused for its arguments: the reasons (naming the subject
        //    from the token) reach the client in error.data.reasons.
        let (capped, body) = reader.call(4, READ_ONLY, json!({"a": 500, "b": 1})).await;
        assert_eq!(capped["error"]["code"], -32003, "{capped}");
        assert_eq!(
            capped["error"]["data"]["reasons"],
            json!(["get-sum: a must be at most 100 for agent-reader"]),
            "{capped}"
        );
        assert!(!body.contains("501"), "get-sum ran: {body}");
        let (fine, _) = reader.call(5, READ_ONLY, json!({"a": 5, "b": 1})).await;
        assert_eq!(text(&fine), "The sum of 5 and 1 is 6.", "{fine}");
        // The cap is not the admin's.
        let (big, _) = admin.call(3, READ_ONLY, json!({"a": 500, "b": 1})).await;
        assert_eq!(text(&big), "The sum of 500 and 1 is 501.", "{big}");
    })
    .await;
    st.sidecar.assert_alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_visible_tools_rule_decides_each_roles_list() {
    let mut st = stack_with(
        &[("authz.rego", ROLES), ("visible.rego", VISIBLE_TOOLS)],
        &[],
    );
    let url = st.sidecar.url("/mcp");
    bounded("visible_tools", async {
        let admin = Agent::connect(&url, &st.provider.admin_token().await).await;
        let reader = Agent::connect(&url, &st.provider.reader_token().await).await;
        let admin_tools = admin.list(1).await;
        let reader_tools = reader.list(1).await;
        for t in [DENIED, READ_ONLY, WRITES, "echo"] {
            assert!(has(&admin_tools, t), "admin misses {t}: {admin_tools:?}");
        }
        assert!(has(&reader_tools, READ_ONLY), "{reader_tools:?}");
        for t in [DENIED, WRITES, "echo"] {
            assert!(
                !has(&reader_tools, t),
                "the reader sees {t}: {reader_tools:?}"
            );
        }

        // Hidden and refused: answered as for a tool that does not exist.
        let (denied, body) = reader.call(2, DENIED, json!({})).await;
        assert_denied(&denied, DENIED);
        assert_eq!(
            denied["error"]["message"], "Unknown tool: get-env",
            "{denied}"
        );
        assert!(!body.contains("\"PATH\""), "get-env ran: {body}");
        // Hidden but allowed by the call rules: the call goes through.
        let (echoed, _) = reader.call(3, "echo", json!({"message": "hi"})).await;
        assert!(text(&echoed).contains("hi"), "{echoed}");
        // Visible and refused for its arguments: the reasons are given.
        let (capped, _) = reader.call(4, READ_ONLY, json!({"a": 500, "b": 1})).await;
        assert_eq!(capped["error"]["code"], -32003, "{capped}");
    })
    .await;
    st.sidecar.assert_alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_mode_forwards_the_readers_denied_call_and_records_it() {
    let mut st = stack(&["--enforcement", "shadow"]);
    let url = st.sidecar.url("/mcp");
    bounded("shadow", async {
        let reader = Agent::connect(&url, &st.provider.reader_token().await).await;
        // Nothing is hidden in shadow mode.
        let tools = reader.list(1).await;
        assert!(has(&tools, DENIED), "{tools:?}");

        // 4. The call goes through and the server answers.
        let (answer, _) = reader.call(2, DENIED, json!({})).await;
        assert!(answer.get("error").is_none(), "{answer}");
        assert!(text(&answer).contains("\"PATH\""), "{answer}");
        let (capped, _) = reader.call(3, READ_ONLY, json!({"a": 500, "b": 1})).await;
        assert_eq!(text(&capped), "The sum of 500 and 1 is 501.", "{capped}");

        let (status, metrics) = st.sidecar.admin("GET", "/metrics");
        assert_eq!(status, 200, "{metrics}");
        let n = sample(
            &metrics,
            r#"mcp_guard_shadow_denied_total{method="tools/call"}"#,
        )
        .unwrap_or_else(|| panic!("no shadow_denied sample for tools/call:\n{metrics}"));
        assert!(n >= 1.0, "{metrics}");
        let logs = st.sidecar.proc.logs();
        assert!(logs.contains("would deny"), "{logs}");
        assert!(
            logs.contains("agent-reader"),
            "the subject is logged: {logs}"
        );
        assert!(!logs.contains("denied by policy"), "{logs}");
        println!("shadow_denied_total{{tools/call}} = {n}");
    })
    .await;
    st.sidecar.assert_alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspector_cli_with_a_bearer_header_sees_its_roles_list() {
    let mut st = stack(&[]);
    let url = st.sidecar.url("/mcp");
    let admin = st.provider.admin_token().await;
    let reader = st.provider.reader_token().await;
    let list_as = |token: &str| {
        let header = format!("Authorization: Bearer {token}");
        let v = inspector_json(
            &url,
            "http",
            &["--header", &header, "--method", "tools/list"],
        );
        tool_names(&v)
    };
    // 5. The admin sees the tool the reader does not.
    let admin_tools = list_as(&admin);
    assert!(has(&admin_tools, DENIED), "{admin_tools:?}");
    assert!(has(&admin_tools, WRITES), "{admin_tools:?}");
    let reader_tools = list_as(&reader);
    assert!(!has(&reader_tools, DENIED), "{reader_tools:?}");
    assert!(has(&reader_tools, READ_ONLY), "{reader_tools:?}");
    let called = inspector_json(
        &url,
        "http",
        &[
            "--header",
            &format!("Authorization: Bearer {admin}"),
            "--method",
            "tools/call",
            "--tool-name",
            DENIED,
        ],
    );
    assert!(called.to_string().contains("PATH"), "{called}");
    st.sidecar.assert_alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_cannot_be_taken_over_by_another_caller() {
    let mut st = stack(&[]);
    let url = st.sidecar.url("/mcp");
    bounded("session binding", async {
        let admin = Agent::connect(&url, &st.provider.admin_token().await).await;
        let reader_token = st.provider.reader_token().await;
        // The reader presents its own valid token with the admin's session id.
        let thief = Agent {
            url: url.clone(),
            auth: format!("Bearer {reader_token}"),
            session: admin.session.clone(),
            protocol: admin.protocol.clone(),
        };
        assert!(thief.session.is_some(), "server-everything opens sessions");
        let r = thief.post(&call_body(7, DENIED, json!({}))).await;
        assert_eq!(r.status, 404, "{}", r.body);
        assert!(!r.body.contains("PATH"), "{}", r.body);
        let del = request(
            reqwest::Method::DELETE,
            &url,
            &[
                ("authorization", thief.auth.as_str()),
                (
                    "mcp-session-id",
                    thief.session.as_deref().unwrap_or_default(),
                ),
            ],
        )
        .await;
        assert_eq!(
            del.status, 404,
            "the reader cannot end the admin's session: {}",
            del.body
        );
        // The admin's session is untouched.
        let (answer, _) = admin.call(8, DENIED, json!({})).await;
        assert!(answer.get("result").is_some(), "{answer}");
    })
    .await;
    st.sidecar.assert_alive();
}
