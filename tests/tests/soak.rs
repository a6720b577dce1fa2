#![allow(clippy::unwrap_used)]
//! Soak: a mixed load on loopback through one sidecar for `MCP_GUARD_SOAK_SECONDS` (default 90;
//! bench/README.md gives the ten-minute command) while the policy is replaced every few seconds.
//!
//! Peers: the example MCP server (rmcp) with sessions and SSE answers, the OIDC provider issuing
//! the callers' tokens, a kubelet-style ConfigMap volume for the policy. Load: sessions opened,
//! used and deleted; calls (allowed and denied), lists; slow calls whose SSE answers stay open;
//! GET streams; callers that fetch a new token every few seconds.
//!
//! Properties, not timings: no 5xx of the sidecar's own and no wrong answer; nothing the policy
//! denies is let through; exactly one audit line per governed request answered, each decided by
//! one of the bundles put in force; the resident set flat (the mean of the last window within
//! 10 % of the first, after a warm-up window) and no descriptor growth (after the load the
//! sidecar holds no more descriptors than before it).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use mcp_guard_tests::oidc::{Provider, RESOURCE, gen_key};
use mcp_guard_tests::volume::ConfigMapVolume;
use mcp_guard_tests::*;
use serde_json::{Value, json};

/// Denies delete_everything (and hides it); the generation only changes the bundle's hash.
fn bundle(generation: u64) -> String {
    format!(
        r#"package mcp.authz
import rego.v1
default allow := false
allow if {{
    input.subject.sub != null
    input.request.tool != "delete_everything"
}}
deny contains "delete_everything is never allowed" if input.request.tool == "delete_everything"
deny contains "generation {generation}" if input.request.tool == "never-{generation}"
"#
    )
}

/// The callers' tokens' lifetime.
const TOKEN_TTL: Duration = Duration::from_secs(20);

/// When the sidecar's token cache has reached its steady size: a token's lifetime, then the
/// cache's sweep of expired entries.
const CACHE_FILLED: Duration =
    Duration::from_secs(TOKEN_TTL.as_secs() + mcp_guard_sidecar::auth::cache::SWEEP_EVERY_SECS);

fn soak_duration() -> Duration {
    let secs = std::env::var("MCP_GUARD_SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(90);
    // Long enough for a window after the cache filled and a last window after that one.
    Duration::from_secs(secs.max(90))
}

/// What one worker saw.
#[derive(Default, Debug)]
struct Tally {
    /// Ids of governed requests (calls, lists) that were answered.
    answered: BTreeSet<i64>,
    /// Ids of calls of the denied tool (all answered with a refusal).
    denied: BTreeSet<i64>,
    failures: Vec<String>,
    sessions: u64,
    streams: u64,
    tokens: u64,
}

impl Tally {
    fn fail(&mut self, what: String) {
        if self.failures.len() < 50 {
            self.failures.push(what);
        }
    }
}

/// A caller: a reqwest client (connections reused), a token, maybe a session.
struct Caller {
    client: reqwest::Client,
    url: String,
    token: String,
    session: Option<String>,
    ids: Arc<AtomicI64>,
}

impl Caller {
    fn headers(&self) -> Vec<(String, String)> {
        let mut h = vec![
            ("content-type".to_owned(), "application/json".to_owned()),
            (
                "accept".to_owned(),
                "application/json, text/event-stream".to_owned(),
            ),
            ("authorization".to_owned(), format!("Bearer {}", self.token)),
            ("mcp-protocol-version".to_owned(), PROTOCOL_2025.to_owned()),
        ];
        if let Some(s) = &self.session {
            h.push(("mcp-session-id".to_owned(), s.clone()));
        }
        h
    }

    async fn send(
        &self,
        method: reqwest::Method,
        body: Option<&Value>,
    ) -> Result<McpResponse, String> {
        let mut req = self.client.request(method, &self.url);
        for (k, v) in self.headers() {
            req = req.header(k, v);
        }
        if let Some(b) = body {
            req = req.body(b.to_string());
        }
        let resp = req.send().await.map_err(|e| format!("{e:?}"))?;
        Ok(read_response(resp).await)
    }

    async fn open(&mut self, t: &mut Tally) -> bool {
        self.session = None;
        match self
            .send(
                reqwest::Method::POST,
                Some(&initialize_body(0, PROTOCOL_2025)),
            )
            .await
        {
            Ok(r) if r.status == 200 && r.response(&json!(0)).is_some() => {
                self.session = r.header("mcp-session-id");
            }
            Ok(r) => {
                t.fail(format!("initialize: {} {}", r.status, r.body));
                return false;
            }
            Err(e) => {
                t.fail(format!("initialize: {e}"));
                return false;
            }
        }
        let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        match self.send(reqwest::Method::POST, Some(&note)).await {
            Ok(r) if r.status == 202 => {}
            Ok(r) => t.fail(format!("initialized: {} {}", r.status, r.body)),
            Err(e) => t.fail(format!("initialized: {e}")),
        }
        t.sessions += 1;
        self.session.is_some()
    }

    async fn close(&mut self, t: &mut Tally) {
        match self.send(reqwest::Method::DELETE, None).await {
            Ok(r) if r.status < 300 => {}
            Ok(r) => t.fail(format!("DELETE: {} {}", r.status, r.body)),
            Err(e) => t.fail(format!("DELETE: {e}")),
        }
        self.session = None;
    }

    /// One governed request, checked: `kind` is `echo`, `slow`, `denied` or `list`.
    async fn governed(&self, kind: &str, t: &mut Tally) {
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        let body = match kind {
            "echo" => call_body(id, "echo", json!({"text": format!("t{id}")})),
            "slow" => call_body(
                id,
                "slow_echo",
                json!({"text": format!("s{id}"), "seconds": 1.0}),
            ),
            "denied" => call_body(id, "delete_everything", json!({})),
            _ => list_body(id),
        };
        let r = match self.send(reqwest::Method::POST, Some(&body)).await {
            Ok(r) => r,
            Err(e) => return t.fail(format!("{kind} {id}: {e}")),
        };
        if r.status != 200 {
            return t.fail(format!("{kind} {id}: status {} {}", r.status, r.body));
        }
        let Some(msg) = r.response(&json!(id)) else {
            return t.fail(format!("{kind} {id}: no answer: {}", r.body));
        };
        let ok = match kind {
            "echo" => msg["result"]["content"][0]["text"] == format!("t{id}").as_str(),
            "slow" => msg["result"]["content"][0]["text"] == format!("s{id}").as_str(),
            "denied" => {
                t.denied.insert(id);
                msg.get("result").is_none()
                    && msg["error"]["message"] == "Unknown tool: delete_everything"
            }
            _ => {
                let names = tool_names(&msg["result"]);
                names.contains(&"echo".to_owned())
                    && !names.contains(&"delete_everything".to_owned())
            }
        };
        if ok {
            t.answered.insert(id);
        } else {
            t.fail(format!("{kind} {id}: wrong answer {msg}"));
        }
    }
}

fn token_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(HTTP_TIMEOUT)
        .build()
        .unwrap()
}

/// `VmRSS` of a process, in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The hashes of the bundles the sidecar put in force (its `policy loaded` log lines).
fn loaded_hashes(logs: &str) -> BTreeSet<String> {
    logs.lines()
        .filter(|l| l.contains("policy loaded"))
        .filter_map(|l| {
            let at = l.find("sha256:")?;
            let hash = l.get(at..at + 7 + 64)?;
            hash[7..]
                .bytes()
                .all(|b| b.is_ascii_hexdigit())
                .then(|| hash.to_owned())
        })
        .collect()
}

fn mean(xs: &[u64]) -> f64 {
    xs.iter().sum::<u64>() as f64 / xs.len().max(1) as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_mixed_load_with_policy_reloads() {
    let duration = soak_duration();
    let tmp = TempDir::new("soak");
    let k1 = gen_key(tmp.path(), "k1");
    // Tokens live 20 s, so callers refresh them, and the sidecar's cache must let the expired
    // ones go (a bounded cache that kept them until full would grow for the whole run).
    let provider = Arc::new(Provider::start_with_ttl(&[&k1], TOKEN_TTL.as_secs()));
    let (_server, server_port) = start_example_server_with(&[]);
    let policy_dir = tmp.path().join("policy");
    let mut vol = ConfigMapVolume::new(&policy_dir, &[("authz.rego", &bundle(0))]);
    let audit_file = tmp.path().join("audit.log");
    let issuer = provider.issuer();
    let mut sc = Sidecar::start(
        server_port,
        &[
            "--issuer",
            &issuer,
            "--resource-uri",
            RESOURCE,
            "--policy-dir",
            policy_dir.to_str().unwrap(),
            "--audit-file",
            audit_file.to_str().unwrap(),
            "--idle-timeout",
            "2s",
        ],
    );
    let pid = sc.proc.pid();
    let url = sc.url("/mcp");
    let policy_hash = |sc: &Sidecar| -> Option<String> {
        let (_, body) = sc.admin("GET", "/policy");
        serde_json::from_str::<Value>(&body).ok()?["hash"]
            .as_str()
            .map(str::to_owned)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while policy_hash(&sc).is_none() {
        assert!(Instant::now() < deadline, "no policy\n{}", sc.proc.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Without mcp-guard the denied tool runs: the refusals below are the sidecar's.
    let direct = post(
        &format!("http://127.0.0.1:{server_port}/mcp"),
        &initialize_body(0, PROTOCOL_2025),
        &[],
    )
    .await;
    assert_eq!(direct.status, 200, "{}", direct.body);
    let sid = direct.header("mcp-session-id").unwrap();
    let direct_headers = [
        ("mcp-session-id", sid.as_str()),
        ("mcp-protocol-version", PROTOCOL_2025),
    ];
    post(
        &format!("http://127.0.0.1:{server_port}/mcp"),
        &json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        &direct_headers,
    )
    .await;
    let ran = post(
        &format!("http://127.0.0.1:{server_port}/mcp"),
        &call_body(1, "delete_everything", json!({})),
        &direct_headers,
    )
    .await;
    assert!(
        ran.expect_response(&json!(1)).get("result").is_some(),
        "{}",
        ran.body
    );

    // Warm the sidecar (keys, first session) before the baseline.
    let first_token = provider.admin_token().await;
    let ids = Arc::new(AtomicI64::new(1000));
    {
        let mut warm = Caller {
            client: token_client(),
            url: url.clone(),
            token: first_token.clone(),
            session: None,
            ids: Arc::clone(&ids),
        };
        let mut t = Tally::default();
        assert!(
            warm.open(&mut t).await,
            "{:?}\n{}",
            t.failures,
            sc.proc.logs()
        );
        warm.governed("echo", &mut t).await;
        warm.close(&mut t).await;
        assert!(t.failures.is_empty(), "{:?}", t.failures);
        // Its request is counted with the rest.
        assert_eq!(t.answered.len(), 1);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let fds_before = fd_count(pid);

    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    // What every worker gets: the endpoint, the id counter, the stop switch, the provider.
    let shared = || {
        (
            url.clone(),
            Arc::clone(&ids),
            Arc::clone(&stop),
            Arc::clone(&provider),
        )
    };
    // Session workers: open, a dozen mixed requests, close; tokens refreshed every few seconds.
    for w in 0..3 {
        let (url, ids, stop, provider) = shared();
        workers.push(tokio::spawn(async move {
            let mut t = Tally::default();
            let mut c = Caller {
                client: token_client(),
                url,
                token: provider.admin_token().await,
                session: None,
                ids,
            };
            let mut token_at = Instant::now();
            let mut round = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if token_at.elapsed() > Duration::from_secs(4 + w) {
                    c.token = provider.admin_token().await;
                    token_at = Instant::now();
                    t.tokens += 1;
                }
                if !c.open(&mut t).await {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                for i in 0..12u64 {
                    let kind = match (i + round) % 4 {
                        0 | 1 => "echo",
                        2 => "denied",
                        _ => "list",
                    };
                    c.governed(kind, &mut t).await;
                }
                c.close(&mut t).await;
                round += 1;
            }
            t
        }));
    }
    // A stream worker: slow calls whose SSE answers stay open a second, beside a GET stream.
    {
        let (url, ids, stop, provider) = shared();
        workers.push(tokio::spawn(async move {
            let mut t = Tally::default();
            let mut c = Caller {
                client: token_client(),
                url: url.clone(),
                token: provider.reader_token().await,
                session: None,
                ids,
            };
            while !stop.load(Ordering::Relaxed) {
                c.token = provider.reader_token().await;
                t.tokens += 1;
                if !c.open(&mut t).await {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                let auth = format!("Bearer {}", c.token);
                let sid = c.session.clone().unwrap_or_default();
                let h = [
                    ("mcp-protocol-version", PROTOCOL_2025),
                    ("authorization", auth.as_str()),
                    ("mcp-session-id", sid.as_str()),
                ];
                let mut get = EventStream::get(&url, &h).await;
                if get.status != 200 {
                    t.fail(format!("GET stream: {}", get.status));
                }
                for _ in 0..3 {
                    c.governed("slow", &mut t).await;
                }
                // The GET stream is still open (it ends only when the client leaves).
                if let Next::End = get.next(Duration::from_millis(10)).await {
                    t.fail("the GET stream ended early".to_owned());
                }
                drop(get);
                t.streams += 1;
                c.close(&mut t).await;
            }
            t
        }));
    }
    // A worker that takes a new token for every session (a new verification each time).
    {
        let (url, ids, stop, provider) = shared();
        workers.push(tokio::spawn(async move {
            let mut t = Tally::default();
            while !stop.load(Ordering::Relaxed) {
                let mut c = Caller {
                    client: token_client(),
                    url: url.clone(),
                    token: provider.reader_token().await,
                    session: None,
                    ids: Arc::clone(&ids),
                };
                t.tokens += 1;
                if c.open(&mut t).await {
                    c.governed("echo", &mut t).await;
                    c.governed("denied", &mut t).await;
                    c.close(&mut t).await;
                }
            }
            t
        }));
    }

    // The policy changes every 3 s; the resident set and descriptors are sampled every second.
    let started = Instant::now();
    let mut samples: Vec<(Duration, u64, usize)> = Vec::new();
    let mut generation = 0u64;
    let mut last_reload = Instant::now();
    while started.elapsed() < duration {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Some(rss) = rss_kib(pid) {
            samples.push((started.elapsed(), rss, fd_count(pid)));
        }
        if last_reload.elapsed() >= Duration::from_secs(3) {
            generation += 1;
            vol.update(&[("authz.rego", &bundle(generation))]);
            last_reload = Instant::now();
        }
        sc.assert_alive();
    }
    stop.store(true, Ordering::Relaxed);
    let mut total = Tally::default();
    for w in workers {
        let t = w.await.unwrap();
        total.answered.extend(t.answered);
        total.denied.extend(t.denied);
        total.failures.extend(t.failures);
        total.sessions += t.sessions;
        total.streams += t.streams;
        total.tokens += t.tokens;
    }
    // Every bundle put in force, as the sidecar logged it.
    let hashes = loaded_hashes(&sc.proc.stderr());
    sc.assert_alive();

    // Descriptors: once clients are gone and the pool's idle time has passed, no more than before.
    let deadline = Instant::now() + Duration::from_secs(30);
    while fd_count(pid) > fds_before && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let fds_after = fd_count(pid);

    // The audit trail: one line per governed request answered, decided by a bundle in force.
    let expected = total.answered.len() + 1;
    let read = || audit_lines(&std::fs::read_to_string(&audit_file).unwrap_or_default());
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut lines = read();
    while lines.len() < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        lines = read();
    }
    let mut by_id: BTreeMap<i64, Value> = BTreeMap::new();
    let mut duplicates = 0;
    for l in &lines {
        if by_id
            .insert(l["request_id"].as_i64().unwrap_or(-1), l.clone())
            .is_some()
        {
            duplicates += 1;
        }
    }
    let (_, metrics) = sc.admin("GET", "/metrics");

    // The figures, for bench/results (printed before the assertions, so a failure shows them).
    let window = (duration / 5).min(Duration::from_secs(60));
    let rss_in = |from: Duration, to: Duration| -> Vec<u64> {
        samples
            .iter()
            .filter(|(t, _, _)| *t >= from && *t < to)
            .map(|(_, r, _)| *r)
            .collect()
    };
    // The first window starts once the token cache has filled: entries live TOKEN_TTL and the
    // sidecar sweeps expired ones every 30 s, so until then the resident set grows by design
    // (by how much depends on how fast callers refresh their tokens). A leak shows after it.
    let start = window.max(CACHE_FILLED);
    let first = rss_in(start, start + window);
    let last_w = rss_in(duration - window, duration + Duration::from_secs(5));
    let (rss_first, rss_last) = (mean(&first), mean(&last_w));
    let fds_max = samples.iter().map(|s| s.2).max().unwrap_or(0);
    let rss_peak = samples.iter().map(|s| s.1).max().unwrap_or(0);
    let governed = total.answered.len() + 1;
    println!(
        "soak: {:?}: {} governed requests answered ({} refused by policy), {} sessions, {} slow-call streams with GET streams, {} tokens fetched, {} policy bundles in force",
        duration,
        governed,
        total.denied.len(),
        total.sessions,
        total.streams,
        total.tokens,
        hashes.len()
    );
    println!(
        "soak: RSS mean {:.0} KiB in [{:?}, {:?}), {:.0} KiB in the last {:?} ({:+.1} %), peak {} KiB; descriptors {} before, {} after, {} at most under load",
        rss_first,
        start,
        start + window,
        rss_last,
        window,
        (rss_last / rss_first - 1.0) * 100.0,
        rss_peak,
        fds_before,
        fds_after,
        fds_max
    );
    println!(
        "soak: audit lines {} for {} governed requests, {} duplicates",
        lines.len(),
        governed,
        duplicates
    );

    assert!(
        total.failures.is_empty(),
        "{} failures, e.g. {:#?}\n{}",
        total.failures.len(),
        &total.failures[..total.failures.len().min(10)],
        sc.proc.logs()
    );
    assert!(
        total.sessions > 10 && total.streams > 2 && total.tokens > 2,
        "{total:?}"
    );
    assert!(hashes.len() >= 3, "the policy was replaced: {hashes:?}");
    assert_eq!(duplicates, 0, "an id has two audit lines");
    let audited: BTreeSet<i64> = by_id.keys().copied().filter(|id| *id > 1000).collect();
    let answered: BTreeSet<i64> = total
        .answered
        .iter()
        .copied()
        .filter(|id| *id > 1000)
        .collect();
    assert_eq!(
        audited.len(),
        answered.len(),
        "audit lines {} vs governed requests answered {}",
        audited.len(),
        answered.len()
    );
    assert_eq!(audited, answered, "the audited ids are the answered ones");
    for (id, l) in &by_id {
        let hash = l["decision"]["policy"].as_str().unwrap_or_default();
        assert!(
            hashes.contains(hash),
            "request {id} decided by {hash:?}: {l}"
        );
        if total.denied.contains(id) {
            assert_eq!(l["outcome"], "denied", "{l}");
            assert_eq!(l["decision"]["forwarded"], false, "{l}");
        } else {
            assert_eq!(l["outcome"], "ok", "{l}");
        }
    }
    assert!(
        metrics.contains("mcp_guard_audit_dropped_total 0"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("outcome=\"upstream_error\""),
        "the sidecar answered upstream errors: {metrics}"
    );
    assert!(
        rss_last <= rss_first * 1.10,
        "the resident set grew from {rss_first:.0} KiB to {rss_last:.0} KiB: {samples:?}"
    );
    assert!(
        fds_after <= fds_before,
        "descriptors: {fds_before} before the load, {fds_after} after"
    );
}
