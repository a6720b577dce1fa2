#![allow(clippy::unwrap_used)]
//! Rate limits decided by policy, end to end: the real sidecar binary in front of the rmcp
//! example server (MCP 2026-07-28, stateless JSON), callers identified by real tokens from the
//! test OpenID provider (two agents: two subjects), and, for fleet-wide limits, a real Redis
//! (Debian's redis-server, with a password given to the sidecars by file) shared by three
//! sidecar processes, stopped and started again in the middle of the run. Periods are an hour
//! long, so no count depends on the clock. Needs `tests/scripts/install-peers.sh` (the
//! provider), `tests/scripts/install-redis.sh` and `cargo build --workspace --bins`.

use std::time::{Duration, Instant};

use mcp_guard_tests::oidc::{Provider, RESOURCE, gen_key};
use mcp_guard_tests::redis::Redis;
use mcp_guard_tests::suite::headers_2026;
use mcp_guard_tests::*;
use serde_json::{Value, json};

/// `echo` is limited to 3 calls an hour per subject; `add` to 2, and calls of `add` with `a`
/// over 100 are denied (and so must use no quota); `get_weather` for Atlantis carries a
/// malformed limit.
const LOCAL_POLICY: &str = r#"package mcp.authz
import rego.v1

default allow := false
allow if input.request.tool in {"echo", "add", "get_weather"}

deny contains "add: a must be at most 100" if {
    input.request.tool == "add"
    input.request.arguments.a > 100
}

limits contains {"name": "echo-per-subject", "key": "subject", "tool": "echo", "per": "1h", "requests": 3}
limits contains {"name": "add-per-subject", "key": "subject", "tool": "add", "per": "1h", "requests": 2}
limits contains {"key": "subject", "per": "1h", "requests": 1, "scope": "planet"} if {
    input.request.arguments.city == "Atlantis"
}
"#;

/// Five `echo` calls an hour per subject across the fleet; `add` limited likewise but refused
/// while the fleet store is unreachable.
const FLEET_POLICY: &str = r#"package mcp.authz
import rego.v1

allow := true

limits contains {"name": "fleet-echo", "key": "subject", "tool": "echo", "per": "1h", "requests": 5}
limits contains {"name": "fleet-add", "key": "subject", "tool": "add", "per": "1h", "requests": 5, "fallback": "deny"}
"#;

const REDIS_PASSWORD: &str = "s3cret-redis-password";

/// Bound on polls for a state the sidecars reach on their own (a health check runs every second).
const SETTLE: Duration = Duration::from_secs(30);

struct Answer {
    status: u16,
    retry_after: Option<String>,
    body: Value,
}

/// POSTs one `tools/call` as a 2026-07-28 client with `token`.
async fn call(url: &str, token: &str, id: i64, tool: &str, args: Value) -> Answer {
    let auth = format!("Bearer {token}");
    let mut headers = headers_2026("tools/call", Some(tool));
    headers.push(("authorization", &auth));
    let r = post(url, &with_meta_2026(call_body(id, tool, args)), &headers).await;
    Answer {
        status: r.status,
        retry_after: r.header("retry-after"),
        body: serde_json::from_str(&r.body).unwrap_or(Value::Null),
    }
}

fn echoed(a: &Answer) -> bool {
    a.status == 200 && a.body["result"]["content"][0]["text"].is_string()
}

fn assert_limited(a: &Answer, id: i64, limit: &str, scope: &str) {
    assert_eq!(a.status, 429, "{}", a.body);
    let secs: u64 = a.retry_after.as_deref().unwrap().parse().unwrap();
    assert!(secs >= 1, "Retry-After {secs}");
    assert_eq!(a.body["id"], id, "{}", a.body);
    assert_eq!(a.body["error"]["code"], -31429, "{}", a.body);
    assert_eq!(a.body["error"]["data"]["limit"], limit, "{}", a.body);
    assert_eq!(a.body["error"]["data"]["scope"], scope, "{}", a.body);
    assert_eq!(a.body["error"]["data"]["retry_after"], secs, "{}", a.body);
}

/// The value of the metric line starting with `series` on a sidecar's `/metrics`.
fn metric(s: &Sidecar, series: &str) -> Option<f64> {
    let (_, text) = s.admin("GET", "/metrics");
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn audit_lines(s: &Sidecar) -> Vec<Value> {
    s.proc
        .stdout()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["schema"] == "mcp-guard.audit/v1")
        .collect()
}

fn policy_dir(tmp: &TempDir, text: &str) -> String {
    let dir = tmp.path().join("policy");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("authz.rego"), text).unwrap();
    dir.to_str().unwrap().to_owned()
}

fn sidecar(upstream: u16, issuer: &str, policy: &str, extra: &[&str]) -> Sidecar {
    let mut args = vec![
        "--issuer",
        issuer,
        "--resource-uri",
        RESOURCE,
        "--policy-dir",
        policy,
        "--server-name",
        "example",
        "--pod-namespace",
        "tools",
        "--log-format",
        "text",
    ];
    args.extend_from_slice(extra);
    Sidecar::start(upstream, &args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_limits_refuse_past_n_with_429_and_count_no_denied_call() {
    let tmp = TempDir::new("limits-local");
    let key = gen_key(tmp.path(), "k1");
    let provider = Provider::start(&[&key]);
    let (_server, port) = start_example_server();
    let policy = policy_dir(&tmp, LOCAL_POLICY);
    let s = sidecar(port, &provider.issuer(), &policy, &[]);
    let url = s.url("/mcp");
    let reader = provider.reader_token().await;
    let admin = provider.admin_token().await;

    // Exactly 3 calls of echo for the reader; the same request then gets 429.
    for id in 1..=3 {
        let a = call(&url, &reader, id, "echo", json!({"text": "hi"})).await;
        assert!(echoed(&a), "call {id}: {} {}", a.status, a.body);
    }
    let a = call(&url, &reader, 4, "echo", json!({"text": "hi"})).await;
    assert_limited(&a, 4, "echo-per-subject", "local");
    assert!(
        a.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("3 requests per 1h"),
        "{}",
        a.body
    );
    // Another subject has its own bucket: the same call passes for the admin.
    let a = call(&url, &admin, 5, "echo", json!({"text": "hi"})).await;
    assert!(echoed(&a), "{} {}", a.status, a.body);

    // Denied calls use no quota: five refusals by policy, then both of add's calls pass.
    for id in 10..15 {
        let a = call(&url, &reader, id, "add", json!({"a": 1000, "b": 1})).await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(a.body["error"]["code"], -32003, "{}", a.body);
    }
    for id in 15..17 {
        let a = call(&url, &reader, id, "add", json!({"a": 1, "b": 2})).await;
        assert_eq!(a.body["result"]["content"][0]["text"], "3", "{}", a.body);
    }
    let a = call(&url, &reader, 17, "add", json!({"a": 1, "b": 2})).await;
    assert_limited(&a, 17, "add-per-subject", "local");

    // A malformed limit fails closed and says what is wrong; the call without it passes.
    let a = call(&url, &reader, 20, "get_weather", json!({"city": "Paris"})).await;
    assert!(a.body["result"].is_object(), "{}", a.body);
    let a = call(
        &url,
        &reader,
        21,
        "get_weather",
        json!({"city": "Atlantis"}),
    )
    .await;
    assert_eq!(a.body["error"]["code"], -32003, "{}", a.body);
    let msg = a.body["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("malformed limit") && msg.contains(r#""scope" must be "fleet" or "local""#),
        "{msg}"
    );

    // The metric and the audit trail name the limit that tripped.
    assert_eq!(
        metric(
            &s,
            r#"mcp_guard_rate_limited_total{limit="echo-per-subject",store="local"}"#
        ),
        Some(1.0)
    );
    let deadline = Instant::now() + SETTLE;
    let line = loop {
        let lines = audit_lines(&s);
        if let Some(l) = lines.into_iter().find(|l| l["request_id"] == 4) {
            break l;
        }
        assert!(
            Instant::now() < deadline,
            "no audit line for the 429\n{}",
            s.proc.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(line["decision"]["limit"], "echo-per-subject", "{line}");
    assert_eq!(line["decision"]["source"], "rate limit", "{line}");
    assert_eq!(
        (
            line["outcome"].as_str(),
            line["status"].as_u64(),
            line["error_code"].as_i64()
        ),
        (Some("denied"), Some(429), Some(-31429)),
        "{line}"
    );
}

/// Waits until `/metrics` of every sidecar shows `series` at `value`.
async fn settle(sidecars: &[Sidecar], series: &str, value: f64) {
    let deadline = Instant::now() + SETTLE;
    for s in sidecars {
        while metric(s, series) != Some(value) {
            assert!(
                Instant::now() < deadline,
                "{series} did not reach {value}\n{}",
                s.proc.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Calls `tool` `n` times round-robin across `sidecars`; returns how many passed on each.
async fn spread(
    sidecars: &[Sidecar],
    token: &str,
    tool: &str,
    n: usize,
    first_id: i64,
) -> Vec<usize> {
    let mut passed = vec![0; sidecars.len()];
    for k in 0..n {
        let i = k % sidecars.len();
        let id = first_id + k as i64;
        let a = call(
            &sidecars[i].url("/mcp"),
            token,
            id,
            tool,
            json!({"text": "hi", "a": 1, "b": 1}),
        )
        .await;
        if a.status == 200 && a.body["result"].is_object() {
            passed[i] += 1;
        } else {
            assert_eq!(a.status, 429, "{}", a.body);
        }
    }
    passed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_limits_hold_across_three_sidecars_and_fall_back_while_redis_is_down() {
    let tmp = TempDir::new("limits-fleet");
    let key = gen_key(tmp.path(), "k1");
    let provider = Provider::start(&[&key]);
    let (_server, port) = start_example_server();
    let policy = policy_dir(&tmp, FLEET_POLICY);
    let mut redis = Redis::start(REDIS_PASSWORD);
    let password_file = tmp.path().join("redis-password");
    std::fs::write(&password_file, format!("{REDIS_PASSWORD}\n")).unwrap();
    let url = redis.url();
    let pw = password_file.to_str().unwrap().to_owned();
    let fleet_args = [
        "--rate-limit-redis-url",
        url.as_str(),
        "--rate-limit-redis-password-file",
        pw.as_str(),
    ];
    let issuer = provider.issuer();
    let sidecars: Vec<Sidecar> = (0..3)
        .map(|_| sidecar(port, &issuer, &policy, &fleet_args))
        .collect();
    let reader = provider.reader_token().await;
    let admin = provider.admin_token().await;
    settle(&sidecars, "mcp_guard_rate_limit_store_up", 1.0).await;

    // Across the three, the reader gets exactly 5 echo calls, and so does the admin.
    let served = spread(&sidecars, &reader, "echo", 12, 100).await;
    assert_eq!(served.iter().sum::<usize>(), 5, "{served:?}");
    let a = call(
        &sidecars[0].url("/mcp"),
        &reader,
        199,
        "echo",
        json!({"text": "hi"}),
    )
    .await;
    assert_limited(&a, 199, "fleet-echo", "fleet");
    let by_admin = spread(&sidecars, &admin, "echo", 12, 200).await;
    assert_eq!(by_admin.iter().sum::<usize>(), 5, "{by_admin:?}");

    // Redis goes away: each sidecar goes on from its own count of the reader's calls, so the
    // local limit applies (5 per replica), and the fallback is counted.
    redis.stop();
    settle(&sidecars, "mcp_guard_rate_limit_store_up", 0.0).await;
    for (i, s) in sidecars.iter().enumerate() {
        let more = spread(
            std::slice::from_ref(s),
            &reader,
            "echo",
            8,
            300 + 10 * i as i64,
        )
        .await;
        assert_eq!(
            more[0],
            5 - served[i],
            "sidecar {i}: fleet share {served:?}"
        );
        assert!(
            metric(s, "mcp_guard_rate_limit_fallbacks_total").unwrap_or(0.0) >= 1.0,
            "sidecar {i}"
        );
    }
    // A limit that refuses without its store says so.
    let a = call(
        &sidecars[1].url("/mcp"),
        &reader,
        400,
        "add",
        json!({"a": 1, "b": 1}),
    )
    .await;
    assert_eq!(a.status, 429, "{}", a.body);
    assert!(
        a.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cannot be checked"),
        "{}",
        a.body
    );
    assert_eq!(
        metric(
            &sidecars[1],
            r#"mcp_guard_rate_limited_total{limit="fleet-add",store="unavailable"}"#
        ),
        Some(1.0)
    );

    // Redis is back (empty): fleet-wide counting resumes, exactly 5 across the three again.
    redis.restart();
    settle(&sidecars, "mcp_guard_rate_limit_store_up", 1.0).await;
    let again = spread(&sidecars, &admin, "add", 12, 500).await;
    assert_eq!(again.iter().sum::<usize>(), 5, "{again:?}");
    let logs = sidecars.iter().map(|s| s.proc.logs()).collect::<String>();
    assert!(
        !logs.contains(REDIS_PASSWORD),
        "the Redis password reached a log"
    );
}
