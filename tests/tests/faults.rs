#![allow(clippy::unwrap_used)]
//! Faults against real peers, each asserting what docs/sidecar.md ("What the client sees when
//! something fails") promises: nothing the policy denies is let through, every answered request
//! has exactly one audit line, the sidecar stays up (or exits as documented), and the client gets
//! a clear error. Each refusal is shown next to the same request succeeding without the fault.
//!
//! Covered elsewhere: the upstream down, reset mid-SSE, slow response headers, SIGTERM with one
//! open stream, a client that leaves (sidecar_errors.rs); the identity provider down mid-run and
//! its keys rotated (identity_e2e.rs `key_rotation_and_provider_outage`); the OTLP endpoint down
//! (audit_e2e.rs); a broken bundle keeping the last good one (policy_enforcement.rs); a deleted
//! mirror ConfigMap restored by the controller (controller_apiserver.rs); the webhook's certificate
//! rotated under admission traffic (webhook/tests/serve.rs).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use mcp_guard_tests::oidc::{IdentityServer, Provider, RESOURCE, gen_key, whoami};
use mcp_guard_tests::volume::ConfigMapVolume;
use mcp_guard_tests::*;
use serde_json::{Value, json};

/// Waits until the sidecar's stdout holds `n` audit lines (they are written when each answer
/// ends), then a moment more, and returns them.
async fn wait_audit(sc: &Sidecar, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while audit_lines(&sc.proc.stdout()).len() < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    audit_lines(&sc.proc.stdout())
}

/// Audit lines by request id; panics on a second line for one id.
fn by_id(lines: &[Value]) -> BTreeMap<i64, Value> {
    let mut out = BTreeMap::new();
    for l in lines {
        let id = l["request_id"]
            .as_i64()
            .unwrap_or_else(|| panic!("an audit line without a numeric request id: {l}"));
        assert!(
            out.insert(id, l.clone()).is_none(),
            "two audit lines for request {id}"
        );
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The upstream killed in the middle of a batch
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_killed_mid_batch_ends_the_stream_and_every_request_is_audited() {
    const REVISION: &str = "2025-03-26";
    let mut ev = Everything::start(EverythingTransport::StreamableHttp);
    let batch = |token: &str| {
        json!([
            call_body(1, "echo", json!({"message": "before the kill"})),
            call_with_progress_body(
                2,
                "trigger-long-running-operation",
                json!({"duration": 6, "steps": 6}),
                token,
            ),
            call_body(3, "get-env", json!({})),
            list_body(4),
        ])
    };
    // Without the fault (and without mcp-guard) the server answers all four, get-env included.
    let direct = Session::initialize(&format!("http://127.0.0.1:{}/mcp", ev.port), REVISION).await;
    let d = direct.post(&batch("direct")).await;
    assert_eq!(d.status, 200, "{}", d.body);
    for id in 1..=4 {
        assert!(
            d.expect_response(&json!(id)).get("result").is_some(),
            "direct answer {id}: {}",
            d.body
        );
    }

    let mut sc = Sidecar::start(ev.port, &["--deny-tools", "get-env"]);
    let s = Session::initialize(&sc.url("/mcp"), REVISION).await;
    let mut stream = EventStream::post(&s.url, &batch("kill"), &s.headers()).await;
    assert_eq!(stream.status, 200);
    let mut answers: HashMap<i64, Value> = HashMap::new();
    let mut progressed = false;
    while !(progressed && answers.len() == 3) {
        let (v, _) = stream
            .next_json(Duration::from_secs(30))
            .await
            .unwrap_or_else(|| panic!("the batch's stream ended early: {answers:?}"));
        if v["method"] == "notifications/progress" {
            progressed = true;
        } else if let Some(id) = v["id"].as_i64() {
            answers.insert(id, v);
        }
    }
    // The server dies while call 2 runs (SIGKILL: its connections are reset).
    ev.proc.kill();
    let (rest, ended) = stream.collect(Duration::from_secs(30)).await;
    assert!(ended, "the client's stream hangs after the server died");
    assert!(
        !rest.iter().any(|e| e
            .json()
            .is_some_and(|v| v["id"] == 2 && v.get("result").is_some())),
        "call 2 cannot have finished: {rest:?}"
    );
    assert_eq!(
        answers[&1]["result"]["content"][0]["text"],
        "Echo: before the kill"
    );
    assert_eq!(answers[&3]["error"]["code"], -32602, "{}", answers[&3]);
    assert_eq!(answers[&3]["error"]["message"], "Unknown tool: get-env");
    let tools = tool_names(&answers[&4]["result"]);
    assert!(
        tools.contains(&"echo".to_owned()) && !tools.contains(&"get-env".to_owned()),
        "{tools:?}"
    );

    // The sidecar stays up and answers the next request with a clear error under its id.
    let r = s.post(&list_body(5)).await;
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(assert_jsonrpc_error(&r.body, Some(-32004))["id"], 5);
    sc.assert_alive();

    // One line per governed request, each saying how it ended.
    let lines = by_id(&wait_audit(&sc, 5).await);
    let outcomes: BTreeMap<i64, &str> = lines
        .iter()
        .map(|(id, l)| (*id, l["outcome"].as_str().unwrap_or_default()))
        .collect();
    assert_eq!(
        outcomes,
        BTreeMap::from([
            (1, "ok"),
            (2, "error"),
            (3, "denied"),
            (4, "ok"),
            (5, "upstream_error")
        ]),
        "{lines:#?}"
    );
    assert_eq!(lines[&3]["decision"]["forwarded"], false);
}

// ---------------------------------------------------------------------------------------------
// Idle upstream connections
// ---------------------------------------------------------------------------------------------

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_upstream_connections_are_closed_and_a_server_closing_them_first_costs_nothing() {
    // uvicorn (under the PyPI mcp server) closes a keep-alive connection after 5 s idle. The
    // sidecar's default --idle-timeout (4 s) closes it first, so a request sent around the
    // server's moment goes out on a new connection: answered, never a 502. (With a longer
    // --idle-timeout a request can meet the server's close on a busy machine, and a POST is not
    // retried: the 4 s default is the fix, and what this asserts.)
    let py = PyServer::start(PyAnswers::Json);
    let sc = Sidecar::start(py.port, &[]);
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = sc.url("/mcp");
    let mut id = 0;
    for gap_ms in [4_900, 5_000, 5_100, 5_300, 6_000] {
        id += 1;
        let (status, v) = send_2026(&client, &url, &with_meta_2026(list_body(id))).await;
        assert_eq!(status, 200, "{v}");
        tokio::time::sleep(Duration::from_millis(gap_ms)).await;
        id += 1;
        let (status, v) = send_2026(&client, &url, &with_meta_2026(list_body(id))).await;
        assert_eq!(
            status,
            200,
            "a request after {gap_ms} ms idle (the server closed its side at 5 s): {v}\n{}",
            sc.proc.logs()
        );
    }
    drop(sc);

    // The sidecar's own --idle-timeout closes what it pooled. The example server (hyper) keeps
    // idle connections open for as long as its clients do, so only the sidecar can close them:
    // its descriptors come back down to what it held before a burst of concurrent requests.
    let (_example, example_port) = start_example_server();
    let sc = Sidecar::start(example_port, &["--idle-timeout", "1s"]);
    let pid = sc.proc.pid();
    let (status, _) = send_2026(&client, &sc.url("/mcp"), &with_meta_2026(list_body(1))).await;
    assert_eq!(status, 200);
    let baseline = fd_count(pid);
    let concurrent: Vec<_> = (0..8)
        .map(|i| {
            let url = sc.url("/mcp");
            tokio::spawn(async move {
                let client = reqwest::Client::builder().no_proxy().build().unwrap();
                send_2026(&client, &url, &with_meta_2026(list_body(100 + i)))
                    .await
                    .0
            })
        })
        .collect();
    for t in concurrent {
        assert_eq!(t.await.unwrap(), 200);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while fd_count(pid) > baseline {
        assert!(
            Instant::now() < deadline,
            "the sidecar holds {} descriptors, {baseline} before the burst",
            fd_count(pid)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The identity provider down when the sidecar starts
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_provider_down_at_start_refuses_tokens_with_503_until_it_comes_up() {
    let dir = TempDir::new("idp-down");
    let k1 = gen_key(dir.path(), "k1");
    let provider = Provider::start(&[&k1]);
    let port = provider.port;
    let issuer = provider.issuer();
    let server = IdentityServer::start();
    let token = provider.admin_token().await;
    drop(provider);

    let mut sc = Sidecar::start(
        server.port,
        &[
            "--issuer",
            &issuer,
            "--resource-uri",
            RESOURCE,
            "--jwks-min-refetch-interval",
            "1s",
        ],
    );
    let url = sc.url("/mcp");
    // No key has ever loaded: a token cannot be judged, so it is refused as a temporary failure
    // (not as an invalid token), and no caller gets through. Without a token: 401 as always.
    for _ in 0..3 {
        let r = post(
            &url,
            &initialize_body(0, PROTOCOL_2025),
            &[("authorization", &format!("Bearer {token}"))],
        )
        .await;
        assert_eq!(r.status, 503, "{}", r.body);
        assert!(r.header("retry-after").is_some(), "{:?}", r.headers);
        assert_jsonrpc_error(&r.body, Some(-32001));
    }
    let r = post(&url, &initialize_body(0, PROTOCOL_2025), &[]).await;
    assert_eq!(r.status, 401, "{}", r.body);
    // Readiness waits for the sidecar's own listing of the server's tools (which a busy machine
    // may not have finished yet), never for keys: it turns ready while the provider is still
    // down (`wait_ready` fails the test when it does not).
    sc.wait_ready();
    assert_eq!(
        sc.admin("GET", "/readyz").0,
        200,
        "readiness waits for no key"
    );
    assert!(
        server.client_requests().is_empty(),
        "nothing reached the server while no key was loaded"
    );

    // The provider comes up (same issuer, same key): the sidecar retries on its own and the
    // same token is accepted.
    let _provider = Provider::start_on(port, &[&k1]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = post(
            &url,
            &initialize_body(0, PROTOCOL_2025),
            &[("authorization", &format!("Bearer {token}"))],
        )
        .await;
        if r.status == 200 {
            break;
        }
        assert_eq!(r.status, 503, "{}", r.body);
        assert!(
            Instant::now() < deadline,
            "keys never loaded\n{}",
            sc.proc.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(whoami(&url, &token).await["x-mcp-guard-sub"], "agent-admin");
    let lines = wait_audit(&sc, 1).await;
    assert_eq!(lines.len(), 1, "only the call is audited: {lines:?}");
    assert_eq!(lines[0]["target"], "whoami");
    assert_eq!(lines[0]["subject"]["sub"], "agent-admin");
    sc.assert_alive();
}

// ---------------------------------------------------------------------------------------------
// The policy directory deleted, filled with garbage, replaced a hundred times a second
// ---------------------------------------------------------------------------------------------

/// Both good bundles deny delete_everything and allow echo; they differ in a rule that never
/// fires, so their hashes differ.
fn bundle(version: &str) -> String {
    format!(
        r#"package mcp.authz
import rego.v1
default allow := false
allow if input.request.tool != "delete_everything"
deny contains "delete_everything is never allowed" if input.request.tool == "delete_everything"
deny contains "{version}" if input.request.tool == "never-{version}"
visible := true
"#
    )
}

fn policy_hash(sc: &Sidecar) -> Option<String> {
    let (_, body) = sc.admin("GET", "/policy");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["hash"].as_str().map(str::to_owned)
}

async fn wait_hash(sc: &Sidecar, not: Option<&str>) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let h = policy_hash(sc);
        if let Some(h) = h.filter(|h| Some(h.as_str()) != not) {
            return h;
        }
        assert!(
            Instant::now() < deadline,
            "no new bundle in force\n{}",
            sc.proc.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What one pair of calls (delete_everything, echo) got: (denied?, echo ok?).
async fn probe_pair(client: &reqwest::Client, url: &str, id: i64) -> (Value, Value) {
    let meta = meta_2026();
    let del = json!({"jsonrpc":"2.0","id":id,"method":"tools/call",
        "params":{"name":"delete_everything","arguments":{},"_meta":meta}});
    let echo = json!({"jsonrpc":"2.0","id":id + 1,"method":"tools/call",
        "params":{"name":"echo","arguments":{"text":"still here"},"_meta":meta}});
    let (s1, d) = send_2026(client, url, &del).await;
    let (s2, e) = send_2026(client, url, &echo).await;
    assert_eq!((s1, s2), (200, 200), "{d}\n{e}");
    (d, e)
}

fn assert_pair(d: &Value, e: &Value, what: &str) {
    assert_eq!(d["error"]["code"], -32003, "{what}: delete_everything: {d}");
    assert!(d.get("result").is_none(), "{what}: {d}");
    assert_eq!(
        e["result"]["content"][0]["text"], "still here",
        "{what}: echo: {e}"
    );
}

/// How many times the churn replaces the policy volume.
const CHURN_REPLACEMENTS: u64 = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_directory_deleted_garbage_and_churn_keep_a_good_bundle_in_force() {
    let (_server, server_port) = start_example_server();
    let tmp = TempDir::new("policy-faults");
    let dir = tmp.path().join("policy");
    let url_direct = format!("http://127.0.0.1:{server_port}/mcp");
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    // Without mcp-guard, delete_everything runs.
    let meta = meta_2026();
    let (_, direct) = send_2026(
        &client,
        &url_direct,
        &json!({"jsonrpc":"2.0","id":1,"method":"tools/call",
            "params":{"name":"delete_everything","arguments":{},"_meta":meta}}),
    )
    .await;
    assert!(direct["result"].is_object(), "{direct}");

    let mut vol = ConfigMapVolume::new(&dir, &[("authz.rego", &bundle("a"))]);
    let mut sc = Sidecar::start(
        server_port,
        &[
            "--policy-dir",
            dir.to_str().unwrap(),
            "--policy-poll-interval",
            "200ms",
        ],
    );
    let url = sc.url("/mcp");
    // Learn the hashes of the good bundles by putting each in force once.
    let a = wait_hash(&sc, None).await;
    vol.update(&[("authz.rego", &bundle("b"))]);
    let b = wait_hash(&sc, Some(&a)).await;
    vol.update(&[("authz.rego", &bundle("c"))]);
    let c = wait_hash(&sc, Some(&b)).await;
    vol.update(&[("authz.rego", &bundle("a"))]);
    assert_eq!(wait_hash(&sc, Some(&c)).await, a);
    let good: BTreeSet<String> = [a.clone(), b.clone(), c.clone()].into();
    let mut id = 10;
    let (d, e) = probe_pair(&client, &url, id).await;
    assert_pair(&d, &e, "bundle a");

    // 1. The directory is deleted (as a volume whose ConfigMap went away): bundle a stays.
    std::fs::remove_dir_all(&dir).unwrap();
    let refused = |sc: &Sidecar| {
        let (_, body) = sc.admin("GET", "/policy");
        serde_json::from_str::<Value>(&body).unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while refused(&sc)["last_error"].is_null() {
        assert!(Instant::now() < deadline, "the deletion was never noticed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(policy_hash(&sc).as_deref(), Some(a.as_str()));
    id += 2;
    let (d, e) = probe_pair(&client, &url, id).await;
    assert_pair(&d, &e, "directory deleted");

    // 2. It comes back holding garbage: a module that does not parse and data that is not JSON.
    let mut vol = ConfigMapVolume::new(
        &dir,
        &[
            ("authz.rego", "package mcp.authz\nallow if {\n"),
            ("data.json", "\u{0}\u{1}not json"),
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while refused(&sc)["rejected_hash"].is_null() {
        assert!(Instant::now() < deadline, "the garbage was never refused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(policy_hash(&sc).as_deref(), Some(a.as_str()));
    id += 2;
    let (d, e) = probe_pair(&client, &url, id).await;
    assert_pair(&d, &e, "garbage");

    // 3. Three hundred replacements, 10 ms apart (a hundred a second on a quiet machine; counted,
    // not timed, so a busy machine makes them slower, never fewer), cycling through good
    // bundles, garbage, an empty volume and a deleted directory, while calls keep coming.
    let loaded_before = reloads(&sc, "success");
    let refused_before = reloads(&sc, "failure");
    let stop = Arc::new(AtomicBool::new(false));
    let swaps = {
        let stop = Arc::clone(&stop);
        let dir = dir.clone();
        std::thread::spawn(move || {
            let (ba, bb) = (bundle("a"), bundle("b"));
            let mut n = 0u64;
            while n < CHURN_REPLACEMENTS {
                match n % 5 {
                    0 => vol.update(&[("authz.rego", &ba)]),
                    1 => vol.update(&[("authz.rego", "package mcp.authz\nallow := \n")]),
                    2 => vol.update(&[("authz.rego", &bb)]),
                    3 => vol.update(&[]),
                    _ => {
                        let _ = std::fs::remove_dir_all(&dir);
                        vol = ConfigMapVolume::new(&dir, &[("data.json", "{")]);
                    }
                }
                n += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            // The last word: bundle c.
            vol.update(&[("authz.rego", &bundle("c"))]);
            stop.store(true, Ordering::Relaxed);
            vol
        })
    };
    let mut pairs = 0;
    while !stop.load(Ordering::Relaxed) {
        id += 2;
        let (d, e) = probe_pair(&client, &url, id).await;
        assert_pair(&d, &e, "during the churn");
        pairs += 1;
    }
    let _vol = swaps.join().unwrap();
    assert!(pairs > 0);
    sc.assert_alive();
    // Bundle c goes into force, and the next call is decided by it.
    let deadline = Instant::now() + Duration::from_secs(60);
    while policy_hash(&sc).as_deref() != Some(c.as_str()) {
        assert!(
            Instant::now() < deadline,
            "the last bundle never went into force: {:?}",
            refused(&sc)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    id += 2;
    let (d, e) = probe_pair(&client, &url, id).await;
    assert_pair(&d, &e, "after the churn");
    let last_id = id + 1;

    // Every call has its line, each decided by one of the good bundles, never by none.
    let expected = (last_id - 10 + 1) as usize;
    let lines = by_id(&wait_audit(&sc, expected).await);
    assert_eq!(lines.len(), expected, "{}", sc.proc.logs());
    for (rid, l) in &lines {
        let hash = l["decision"]["policy"].as_str().unwrap_or_default();
        assert!(
            good.contains(hash),
            "request {rid} decided by {hash:?}: {l}"
        );
        let deleting = rid % 2 == 0;
        assert_eq!(l["decision"]["allowed"], !deleting, "{l}");
        assert_eq!(l["outcome"], if deleting { "denied" } else { "ok" }, "{l}");
    }
    assert_eq!(lines[&(last_id - 1)]["decision"]["policy"], c.as_str());
    // The churn reached the sidecar: besides bundle c, it read and counted at least one other
    // state of the volume (a bundle other than the one in force, or a failure other than the
    // last one; a reload that finds what it found last time counts nothing). Which states it
    // meets depends on when its reloads fall, so no one kind is asserted.
    let counted =
        (reloads(&sc, "success") - loaded_before) + (reloads(&sc, "failure") - refused_before);
    assert!(
        counted >= 2,
        "the churn reached the sidecar's counters {counted} time(s), bundle c included"
    );
}

/// A policy directory deleted and made again is another directory: the sidecar watches the new
/// one, so a bundle written there later goes into force without waiting for the poll (an hour
/// here: nothing but the watch can see it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_directory_made_again_is_watched_again() {
    let (_server, server_port) = start_example_server();
    let tmp = TempDir::new("policy-rewatch");
    let dir = tmp.path().join("policy");
    let vol = ConfigMapVolume::new(&dir, &[("authz.rego", &bundle("a"))]);
    let mut sc = Sidecar::start(
        server_port,
        &[
            "--policy-dir",
            dir.to_str().unwrap(),
            "--policy-poll-interval",
            "60m",
        ],
    );
    let a = wait_hash(&sc, None).await;
    let loaded = reloads(&sc, "success");

    // Gone, then back with bundle b: the directory's removal is an event of the old watch.
    drop(vol);
    std::fs::remove_dir_all(&dir).unwrap();
    let mut vol = ConfigMapVolume::new(&dir, &[("authz.rego", &bundle("b"))]);
    let b = wait_hash(&sc, Some(&a)).await;
    // Wait for the new watch (logged once set up; only then can its events be relied on).
    let deadline = Instant::now() + Duration::from_secs(60);
    while !sc.proc.logs().contains("watching the policy directory") {
        assert!(
            Instant::now() < deadline,
            "the new directory was never watched\n{}",
            sc.proc.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Bundle c in the new directory: only its watch can report it.
    vol.update(&[("authz.rego", &bundle("c"))]);
    wait_hash(&sc, Some(&b)).await;
    assert_eq!(reloads(&sc, "success"), loaded + 2);
    sc.assert_alive();
}

/// `mcp_guard_policy_reloads_total{result=RESULT}` of the sidecar (0 before the first).
fn reloads(sc: &Sidecar, result: &str) -> u64 {
    let (_, metrics) = sc.admin("GET", "/metrics");
    let series = format!("mcp_guard_policy_reloads_total{{result=\"{result}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .map_or(0, |v| v.trim().parse().unwrap())
}

// ---------------------------------------------------------------------------------------------
// SIGTERM under load
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
enum Got {
    /// An HTTP answer: (status, body).
    Answer(u16, Value),
    /// No answer: the connection was refused, or closed before a response began.
    Refused { connect: bool, error: String },
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_finishes_what_is_in_flight_refuses_the_rest_and_exits() {
    let py = PyServer::start(PyAnswers::Sse);
    let mut sc = Sidecar::start(
        py.port,
        &["--deny-tools", "secret_tool", "--drain-timeout", "20s"],
    );
    let url = sc.url("/mcp");

    // Two calls that run for a few seconds, in flight once their first progress arrives.
    let mut streams = Vec::new();
    for n in 0..2 {
        let body = with_meta_2026(call_with_progress_body(
            n,
            "slow_count",
            json!({"steps": 8, "interval_ms": 250}),
            &format!("term-{n}"),
        ));
        let h = [
            ("mcp-protocol-version", PROTOCOL_2026),
            ("mcp-method", "tools/call"),
            ("mcp-name", "slow_count"),
        ];
        let mut s = EventStream::post(&url, &body, &h).await;
        assert_eq!(s.status, 200);
        assert!(s.next_json(Duration::from_secs(30)).await.is_some());
        streams.push(s);
    }

    // Load: workers on fresh connections (so a refusal is a refused connection), each request a
    // call of echo, a call of the denied tool, or a list.
    let next_id = Arc::new(AtomicI64::new(1000));
    let answers = Arc::new(AtomicI64::new(0));
    let terminated = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (url, next_id, answers, terminated) = (
            url.clone(),
            Arc::clone(&next_id),
            Arc::clone(&answers),
            Arc::clone(&terminated),
        );
        workers.push(tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .no_proxy()
                .pool_max_idle_per_host(0)
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap();
            let mut got = Vec::new();
            let mut refused_after_term = 0;
            while refused_after_term < 3 {
                let id = next_id.fetch_add(1, Ordering::Relaxed);
                let body = with_meta_2026(match id % 3 {
                    0 => call_body(id, "echo", json!({"text": format!("n{id}")})),
                    1 => call_body(id, "secret_tool", json!({"note": "load"})),
                    _ => list_body(id),
                });
                let after = terminated.load(Ordering::Relaxed);
                match try_send_2026(&client, &url, &body).await {
                    Ok((status, v)) => {
                        answers.fetch_add(1, Ordering::Relaxed);
                        got.push((id, Got::Answer(status, v)));
                    }
                    Err(e) => {
                        if after {
                            refused_after_term += 1;
                        }
                        got.push((
                            id,
                            Got::Refused {
                                connect: e.is_connect(),
                                error: format!("{e:?}"),
                            },
                        ));
                    }
                }
            }
            got
        }));
    }
    // SIGTERM once sixty answers have come back (a count of events, not of time).
    while answers.load(Ordering::Relaxed) < 60 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sc.proc.signal("TERM");
    terminated.store(true, Ordering::Relaxed);

    // The calls in flight finish with their results.
    for (n, mut s) in streams.into_iter().enumerate() {
        let (events, ended) = s.collect(Duration::from_secs(60)).await;
        assert!(ended, "stream {n} did not end");
        assert!(
            events.iter().any(|e| e.json().is_some_and(
                |v| v["id"] == n && v["result"]["content"][0]["text"].as_str().is_some()
            )),
            "call {n}, in flight at SIGTERM, was not answered in full: {events:?}"
        );
    }
    let mut got = Vec::new();
    for w in workers {
        got.extend(w.await.unwrap());
    }
    let exit = sc.proc.wait_exit(Duration::from_secs(60));
    assert!(
        exit.is_some_and(|s| s.success()),
        "the sidecar did not exit cleanly after the drain ({exit:?})\n{}",
        sc.proc.logs()
    );

    // Every answer is the right one; nothing denied was let through; the refusals are refused
    // connections (or connections closed before any answer began), the last ones surely so.
    let mut answered = BTreeSet::new();
    let mut refusals = 0;
    for (id, g) in &got {
        match g {
            Got::Answer(status, v) => {
                assert_eq!(*status, 200, "request {id}: {v}");
                match id % 3 {
                    0 => assert_eq!(v["result"]["content"][0]["text"], format!("n{id}")),
                    1 => assert_eq!(v["error"]["message"], "Unknown tool: secret_tool", "{v}"),
                    _ => assert!(
                        !tool_names(&v["result"]).contains(&"secret_tool".to_owned())
                            && tool_names(&v["result"]).contains(&"echo".to_owned()),
                        "{v}"
                    ),
                }
                answered.insert(*id);
            }
            Got::Refused { connect, error } => {
                // A connection accepted just before the drain began is closed before its
                // request is read (IncompleteMessage); later ones are refused outright. Either
                // way the request was not processed: the audit check below proves it.
                refusals += 1;
                assert!(
                    *connect || error.contains("IncompleteMessage") || error.contains("reset"),
                    "request {id}: not a refusal: {error}"
                );
            }
        }
    }
    assert!(refusals >= 3 && answered.len() >= 60, "{got:?}");
    assert!(!py.secret_tool_ran(), "a denied call reached the server");

    // Exactly the answered requests (and the two streams) are in the audit trail, once each.
    let lines = by_id(&audit_lines(&sc.proc.stdout()));
    let audited: BTreeSet<i64> = lines.keys().copied().filter(|id| *id >= 1000).collect();
    assert_eq!(
        audited, answered,
        "audit lines and answered requests differ"
    );
    assert_eq!(lines[&0]["outcome"], "ok");
    assert_eq!(lines[&1]["outcome"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_longer_than_the_drain_is_cut_audited_and_the_sidecar_exits() {
    let py = PyServer::start(PyAnswers::Sse);
    let mut sc = Sidecar::start(py.port, &["--drain-timeout", "2s"]);
    // 100 steps of 300 ms: half a minute, far past the drain.
    let body = with_meta_2026(call_with_progress_body(
        7,
        "slow_count",
        json!({"steps": 100, "interval_ms": 300}),
        "cut",
    ));
    let h = [
        ("mcp-protocol-version", PROTOCOL_2026),
        ("mcp-method", "tools/call"),
        ("mcp-name", "slow_count"),
    ];
    let mut s = EventStream::post(&sc.url("/mcp"), &body, &h).await;
    assert!(s.next_json(Duration::from_secs(30)).await.is_some());
    sc.proc.signal("TERM");
    let exit = sc.proc.wait_exit(Duration::from_secs(60));
    assert!(
        exit.is_some_and(|s| s.success()),
        "the sidecar did not exit after its drain time ({exit:?})\n{}",
        sc.proc.logs()
    );
    // The sidecar is gone while the call still runs: the client's stream ended without a result.
    let (events, ended) = s.collect(Duration::from_secs(30)).await;
    assert!(ended, "the stream outlived the sidecar");
    assert!(
        !events
            .iter()
            .any(|e| e.json().is_some_and(|v| v.get("result").is_some())),
        "{events:?}"
    );
    assert!(
        sc.proc.stderr().contains("drain time is up"),
        "{}",
        sc.proc.logs()
    );
    // And it is in the audit trail, as a request whose answer ended before its response.
    let lines = audit_lines(&sc.proc.stdout());
    assert_eq!(lines.len(), 1, "{lines:?}\n{}", sc.proc.logs());
    assert_eq!(lines[0]["request_id"], 7);
    assert_eq!(lines[0]["outcome"], "error", "{}", lines[0]);
}
