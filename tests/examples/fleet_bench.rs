//! The fleet at scale (bench/fleet.sh): how long one refresh of `GET /fleet` takes with N
//! injected pods, and how much memory the controller holds meanwhile.
//!
//! - a real kube-apiserver and etcd (tests/scripts/install-kube.sh), the release
//!   `mcp-guard-webhook serve --controller` distributing a policy source (the decision
//!   benchmark's realistic bundle);
//! - N pods created through the real admission webhook (so they are injected exactly as in a
//!   cluster), spread over namespaces, each given a pod IP of its own on loopback (127.77.x.y,
//!   as a kubelet would set `status.podIP`);
//! - one process (this one) listening on each pod IP's admin port and answering `/policy`,
//!   `/metrics`, `/tools`, `/access`, `/denies` with the bodies a real release sidecar answered
//!   (started from the injected container's own environment, with the distributed bundle, after
//!   a few MCP calls through it), so the shapes cannot drift from the sidecar's; one pod in
//!   `--stale-every` answers the `/policy` the same sidecar gave while it enforced an older
//!   bundle (drift);
//! - then `--rounds` times: a fresh controller process (admission and setup done by another),
//!   its caches synced, one cold `GET /fleet`, `--warm` more each after the 5 s cache expired,
//!   and one served from the cache; each answer is checked (N rows, each observed, the stale ones
//!   and only they flagged) so a refresh that fails fast cannot look fast. The controller's RSS is
//!   sampled from /proc every 10 ms.
//!
//! Writes `<out>/<date>-<name>.md` and `.json`. A benchmark, not a test: it asserts nothing
//! about time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use futures_util::StreamExt;
use mcp_guard_common::env as sidecar_env;
use mcp_guard_tests::apiserver::{ADMIN_TOKEN, ApiServer, mutating_webhook_config, wait_until};
use mcp_guard_tests::suite::post_2026;
use mcp_guard_tests::volume::ConfigMapVolume;
use mcp_guard_tests::{
    Proc, TempDir, call_body, container_env, free_port, port_open, target_dir, workspace_root,
};
use serde_json::{Value, json};

#[derive(Parser, Debug)]
struct Args {
    /// Injected pods to simulate.
    #[arg(long, default_value_t = 500)]
    pods: usize,
    /// Namespaces they are spread over.
    #[arg(long, default_value_t = 25)]
    namespaces: usize,
    /// Controller processes started one after the other, each measured cold then warm.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Refreshes after the cold one, per round (each after the 5 s cache expired).
    #[arg(long, default_value_t = 5)]
    warm: usize,
    /// One pod in this many enforces an older bundle than the one distributed (0: none).
    #[arg(long, default_value_t = 25)]
    stale_every: usize,
    /// The run's name in the results' file names.
    #[arg(long, default_value = "fleet")]
    name: String,
    /// Where the results go.
    #[arg(long)]
    out: Option<PathBuf>,
}

const OWN: &str = "mcp-guard";
const POLICY: &str = "mcp-guard-policy";
/// The admin paths the fleet view and the dashboard read, captured from a real sidecar.
const PATHS: [&str; 5] = ["/policy", "/metrics", "/tools", "/access", "/denies"];
/// Targets of issue 21.
const TARGET_REFRESH_MS: f64 = 2000.0;
const TARGET_RSS_MIB: f64 = 64.0;

fn release_bin(name: &str) -> PathBuf {
    let p = target_dir().join("release").join(name);
    assert!(
        p.is_file(),
        "{} missing: build it with `cargo build --release` (bench/fleet.sh does)",
        p.display()
    );
    p
}

/// The pod IP of pod `i`: 127.77.1.1, 127.77.1.2, ... (all of 127/8 is loopback on Linux).
fn pod_ip(i: usize) -> Ipv4Addr {
    let (hi, lo) = (1 + i / 250, 1 + i % 250);
    Ipv4Addr::new(
        127,
        77,
        u8::try_from(hi).unwrap(),
        u8::try_from(lo).unwrap(),
    )
}

fn namespace_of(i: usize, namespaces: usize) -> String {
    format!("team-{:02}", i % namespaces)
}

fn pod_name(i: usize) -> String {
    format!("tools-{i:04}")
}

fn stale(i: usize, every: usize) -> bool {
    every > 0 && i % every == every - 1
}

/// A pod as a ReplicaSet of a Deployment writes it, opted in.
fn pod_manifest(i: usize, namespace: &str) -> Value {
    let rs = format!("tools-{}", &namespace[5..]);
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": pod_name(i), "namespace": namespace,
            "labels": {"app.kubernetes.io/name": "tools", "pod-template-hash": "6d4cf56db6"},
            "annotations": {"mcp-guard.dev/inject": "enabled"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs,
                "uid": format!("00000000-0000-4000-8000-{:012}", i), "controller": true}]},
        "spec": {"containers": [{"name": "server", "image": "example.com/tools:1.4.2",
            "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
            "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}}}]}
    })
}

struct Api {
    client: reqwest::Client,
    url: String,
}

impl Api {
    fn new(api: &ApiServer) -> Api {
        Api {
            client: https_client(&api.ca.ca_path()),
            url: api.url.clone(),
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder, what: &str) -> Value {
        let resp = req
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        assert!(status.is_success(), "{what}: {status}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{what}: {e}: {body}"))
    }

    async fn post(&self, path: &str, body: &Value) -> Value {
        let url = format!("{}{path}", self.url);
        self.send(self.client.post(&url).json(body), &format!("POST {path}"))
            .await
    }

    async fn get(&self, path: &str) -> Value {
        let url = format!("{}{path}", self.url);
        self.send(self.client.get(&url), &format!("GET {path}"))
            .await
    }

    async fn patch_status(&self, namespace: &str, name: &str, ip: Ipv4Addr) {
        let path = format!("/api/v1/namespaces/{namespace}/pods/{name}/status");
        let body = json!({"status": {"phase": "Running", "podIP": ip.to_string(),
            "podIPs": [{"ip": ip.to_string()}]}});
        let url = format!("{}{path}", self.url);
        self.send(
            self.client
                .patch(&url)
                .header("Content-Type", "application/merge-patch+json")
                .body(body.to_string()),
            &format!("PATCH {path}"),
        )
        .await;
    }
}

fn https_client(ca: &Path) -> reqwest::Client {
    let pem = std::fs::read(ca).expect("read the CA");
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("a PEM CA"))
        .timeout(Duration::from_secs(60))
        .no_proxy()
        .build()
        .expect("an HTTPS client")
}

/// `mcp-guard-webhook serve --controller` (release build) on a free port, ready.
fn start_webhook(api: &ApiServer, extra: &[&str]) -> (Proc, u16) {
    let (cert, key) = api
        .ca
        .issue(&format!("webhook-{}", free_port()), "mcp-guard-webhook");
    let ca = api.ca.ca_path();
    for _ in 0..3 {
        let port = free_port();
        let mut proc = Proc::spawn(
            "mcp-guard-webhook",
            Command::new(release_bin("mcp-guard-webhook"))
                .arg("serve")
                .arg(format!("--listen=127.0.0.1:{port}"))
                .arg(format!("--tls-cert={}", cert.display()))
                .arg(format!("--tls-key={}", key.display()))
                .arg("--controller")
                .arg(format!("--own-namespace={OWN}"))
                .args(extra)
                .env("KUBECONFIG", &api.kubeconfig),
        );
        let ready = wait_until(Duration::from_secs(60), || {
            if let Some(s) = proc.try_status() {
                return Err(format!("webhook exited ({s})\n{}", proc.logs()));
            }
            Ok(
                mcp_guard_tests::apiserver::curl(&ca, &format!("https://127.0.0.1:{port}/readyz"))
                    .0
                    == 200,
            )
        });
        if ready.is_ok() {
            return (proc, port);
        }
    }
    panic!("the webhook did not start");
}

/// What a real sidecar answered on its admin port: (content type, body) per path.
type Answers = BTreeMap<&'static str, (String, String)>;

async fn capture(admin: SocketAddr) -> Answers {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut out = Answers::new();
    for path in PATHS {
        let resp = client
            .get(format!("http://{admin}{path}"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("the sidecar's {path}: {e}"));
        assert!(
            resp.status().is_success(),
            "the sidecar's {path}: {}",
            resp.status()
        );
        let ctype = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/octet-stream")
            .to_string();
        out.insert(path, (ctype, resp.text().await.unwrap()));
    }
    out
}

/// A router answering `answers` as they were captured.
fn simulated(answers: &Answers) -> axum::Router {
    let mut router = axum::Router::new();
    for (path, (ctype, body)) in answers {
        let (ctype, body) = (ctype.clone(), body.clone());
        router = router.route(
            path,
            axum::routing::get(move || {
                let (ctype, body) = (ctype.clone(), body.clone());
                async move { ([(axum::http::header::CONTENT_TYPE, ctype)], body) }
            }),
        );
    }
    router
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The process's user + system CPU time.
fn cpu_time(pid: u32) -> Duration {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command (which may hold spaces) : state is field 3, utime 14, stime 15.
    let rest = text.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| f.get(i).and_then(|v| v.parse::<u64>().ok()))
        .sum();
    let hz = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<u64>()
                .ok()
        })
        .unwrap_or(100);
    Duration::from_millis(ticks * 1000 / hz)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NAN, f64::max)
}

/// One `GET /fleet`, timed, its rows checked: (milliseconds, rows, drifting rows).
async fn refresh(
    client: &reqwest::Client,
    base: &str,
    pods: usize,
    every: usize,
) -> Result<(f64, usize, usize), String> {
    let t = Instant::now();
    let resp = client
        .get(format!("{base}/fleet"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp.text().await.map_err(|e| e.to_string())?;
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    if !status.is_success() {
        return Err(format!("GET /fleet: {status}: {body}"));
    }
    let v: Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
    let items = v["items"].as_array().cloned().unwrap_or_default();
    let observed = items
        .iter()
        .filter(|r| r["policyHash"].is_string() && r["requests"].is_u64() && r["error"].is_null())
        .count();
    let drifting: Vec<usize> = items
        .iter()
        .filter(|r| r["drift"] == json!(true))
        .filter_map(|r| r["pod"].as_str()?.strip_prefix("tools-")?.parse().ok())
        .collect();
    let drift = drifting.len();
    let expected: Vec<usize> = (0..pods).filter(|&i| stale(i, every)).collect();
    let mut sorted = drifting.clone();
    sorted.sort_unstable();
    if items.len() != pods || observed != pods || sorted != expected {
        let sample: Vec<&Value> = items
            .iter()
            .filter(|r| !r["error"].is_null())
            .take(3)
            .collect();
        return Err(format!(
            "GET /fleet: {} rows ({pods} expected), {observed} observed, {drift} drifting ({} expected); e.g. {sample:?}",
            items.len(),
            expected.len()
        ));
    }
    Ok((ms, items.len(), drift))
}

#[derive(Debug, Default, serde::Serialize)]
struct Round {
    cold_ms: f64,
    warm_ms: Vec<f64>,
    cached_ms: f64,
    /// Controller CPU time (user + system) per warm refresh, ms (includes whatever else it did).
    warm_cpu_ms: Vec<f64>,
    sync_s: f64,
    rss_idle_mib: f64,
    rss_max_sampled_mib: f64,
    rss_after_mib: f64,
    rss_hwm_mib: f64,
}

fn main() {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let total = Instant::now();

    // --- the control plane, the policy, the pods -------------------------------------------
    eprintln!("fleet-bench: starting etcd and kube-apiserver");
    let api = ApiServer::start();
    let kube = Api::new(&api);
    let fixtures = workspace_root().join("sidecar/benches/fixtures");
    let rego = std::fs::read_to_string(fixtures.join("realistic.rego")).unwrap();
    let data = std::fs::read_to_string(fixtures.join("realistic.json")).unwrap();
    let older = format!("{rego}\n# the previous version of this bundle\n");
    rt.block_on(async {
        for ns in std::iter::once(OWN.to_string())
            .chain((0..args.namespaces).map(|i| namespace_of(i, args.namespaces)))
        {
            kube.post(
                "/api/v1/namespaces",
                &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
            )
            .await;
        }
        kube.post(
            &format!("/api/v1/namespaces/{OWN}/configmaps"),
            &json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": POLICY, "namespace": OWN,
                    "labels": {"mcp-guard.dev/policy": "true"}},
                "data": {"authz.rego": rego, "data.json": data}}),
        )
        .await;
    });
    let (setup, setup_port) = start_webhook(&api, &[]);
    api.apply(&mutating_webhook_config(
        "mcp-guard",
        &format!("https://127.0.0.1:{setup_port}/mutate"),
        &api.ca.ca_pem(),
        "Fail",
    ));
    eprintln!("fleet-bench: creating {} pods through admission", args.pods);
    let t = Instant::now();
    // (namespace, name, IP, admin port) of each pod, as admission made it.
    let pods: Vec<(String, String, Ipv4Addr, u16)> = rt.block_on(async {
        let mut created: Vec<(usize, Value)> = futures_util::stream::iter(0..args.pods)
            .map(|i| {
                let kube = &kube;
                let ns = namespace_of(i, args.namespaces);
                async move {
                    let mut last = String::new();
                    // Admission is registered a moment before the API server calls it.
                    for _ in 0..50 {
                        let url = format!("{}/api/v1/namespaces/{ns}/pods", kube.url);
                        let resp = kube
                            .client
                            .post(&url)
                            .bearer_auth(ADMIN_TOKEN)
                            .json(&pod_manifest(i, &ns))
                            .send()
                            .await;
                        match resp {
                            Ok(r) if r.status().is_success() => {
                                return (i, r.json::<Value>().await.unwrap());
                            }
                            Ok(r) => {
                                last = format!(
                                    "{}: {}",
                                    r.status(),
                                    r.text().await.unwrap_or_default()
                                )
                            }
                            Err(e) => last = e.to_string(),
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    panic!("creating pod {i}: {last}");
                }
            })
            .buffer_unordered(8)
            .collect()
            .await;
        created.sort_by_key(|(i, _)| *i);
        let mut out = Vec::new();
        for (i, pod) in created {
            assert_eq!(
                pod["metadata"]["labels"]["mcp-guard.dev/injected"], "true",
                "pod {i} was not injected: {pod}"
            );
            let sidecar = pod["spec"]["containers"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["name"] == "mcp-guard")
                .expect("the sidecar container");
            let admin = sidecar["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|p| p["name"] == "mcp-guard-admin")
                .and_then(|p| u16::try_from(p["containerPort"].as_u64()?).ok())
                .expect("the admin port");
            out.push((
                pod["metadata"]["namespace"].as_str().unwrap().to_string(),
                pod_name(i),
                pod_ip(i),
                admin,
            ));
        }
        futures_util::stream::iter(&out)
            .map(|(ns, name, ip, _)| kube.patch_status(ns, name, *ip))
            .buffer_unordered(8)
            .collect::<Vec<()>>()
            .await;
        out
    });
    let create_s = t.elapsed().as_secs_f64();
    eprintln!(
        "fleet-bench: {} pods created and given IPs in {create_s:.1}s",
        pods.len()
    );

    // The distributed bundle, in every namespace.
    let mirror = |ns: &str| -> Value {
        rt.block_on(kube.get(&format!("/api/v1/namespaces/{ns}/configmaps/{POLICY}")))
    };
    wait_until(Duration::from_secs(120), || {
        let list =
            rt.block_on(kube.get("/api/v1/configmaps?labelSelector=mcp-guard.dev/mirror-of"));
        Ok(list["items"].as_array().map_or(0, Vec::len) == args.namespaces)
    })
    .expect("the policy never reached every namespace");
    let first = mirror(&namespace_of(0, args.namespaces));
    let hash = first["metadata"]["annotations"]["mcp-guard.dev/hash"]
        .as_str()
        .expect("the mirror's hash")
        .to_string();
    let files: Vec<(String, String)> = first["data"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
        .collect();

    // --- a real sidecar's answers -----------------------------------------------------------
    eprintln!("fleet-bench: capturing a real sidecar's admin answers");
    let tmp = TempDir::new("fleet-bench");
    let old_files: Vec<(&str, &str)> = files
        .iter()
        .map(|(k, v)| {
            (
                k.as_str(),
                if k.ends_with(".rego") {
                    older.as_str()
                } else {
                    v.as_str()
                },
            )
        })
        .collect();
    let mut volume = ConfigMapVolume::new(&tmp.path().join("policy"), &old_files);
    let upstream_port = free_port();
    let upstream = Proc::spawn(
        "mcp-guard-example-server",
        Command::new(release_bin("mcp-guard-example-server"))
            .arg("--listen")
            .arg(format!("127.0.0.1:{upstream_port}"))
            .arg("--stateless-json"),
    );
    wait_until(Duration::from_secs(30), || Ok(port_open(upstream_port)))
        .expect("the example server");
    let (ns0, name0, _, admin_port) = &pods[0];
    let stored = rt.block_on(kube.get(&format!("/api/v1/namespaces/{ns0}/pods/{name0}")));
    let container = stored["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["name"] == "mcp-guard")
        .cloned()
        .unwrap();
    let mut env: BTreeMap<String, String> = container_env(&container, None).into_iter().collect();
    let mcp_port = free_port();
    let capture_admin = SocketAddr::new(Ipv4Addr::new(127, 77, 0, 1).into(), *admin_port);
    env.insert(sidecar_env::POD_NAME.into(), name0.clone());
    env.insert(sidecar_env::POD_NAMESPACE.into(), ns0.clone());
    env.insert(sidecar_env::LISTEN.into(), format!("127.0.0.1:{mcp_port}"));
    env.insert(sidecar_env::ADMIN_LISTEN.into(), capture_admin.to_string());
    env.insert(sidecar_env::UPSTREAM_PORT.into(), upstream_port.to_string());
    env.insert(
        sidecar_env::POLICY_DIR.into(),
        volume.path().display().to_string(),
    );
    let mut sidecar = Proc::spawn(
        "mcp-guard-sidecar",
        Command::new(release_bin("mcp-guard-sidecar")).envs(&env),
    );
    let policy_hash = |rt: &tokio::runtime::Runtime| -> Option<String> {
        let a = rt.block_on(capture(capture_admin));
        serde_json::from_str::<Value>(&a["/policy"].1).ok()?["hash"]
            .as_str()
            .map(str::to_string)
    };
    wait_until(Duration::from_secs(30), || {
        if let Some(s) = sidecar.try_status() {
            return Err(format!("sidecar exited ({s})\n{}", sidecar.logs()));
        }
        Ok(port_open(mcp_port)
            && std::net::TcpStream::connect(capture_admin).is_ok()
            && policy_hash(&rt).is_some())
    })
    .expect("the capture sidecar did not start");
    let stale_policy = rt.block_on(capture(capture_admin))["/policy"].clone();
    let current: Vec<(&str, &str)> = files
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    volume.update(&current);
    wait_until(Duration::from_secs(30), || {
        Ok(policy_hash(&rt).as_deref() == Some(hash.as_str()))
    })
    .expect("the capture sidecar never enforced the distributed bundle");
    // Traffic, so the counters, the refusals and the role sets are not empty.
    let url = format!("http://127.0.0.1:{mcp_port}/mcp");
    rt.block_on(async {
        let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}});
        post_2026(&url, list, "tools/list", None).await;
        for (id, tool) in [(2, "echo"), (3, "delete_everything"), (4, "add")] {
            let args = if tool == "add" {
                json!({"a": 1, "b": 2})
            } else {
                json!({"text": "hi"})
            };
            post_2026(&url, call_body(id, tool, args), "tools/call", Some(tool)).await;
        }
    });
    let answers = rt.block_on(capture(capture_admin));
    sidecar.kill();
    drop(upstream);
    let mut stale_answers = answers.clone();
    stale_answers.insert("/policy", stale_policy);
    let sizes: BTreeMap<&str, usize> = answers.iter().map(|(p, (_, b))| (*p, b.len())).collect();
    eprintln!("fleet-bench: captured {sizes:?}");

    // --- the simulated sidecars -------------------------------------------------------------
    let fresh_router = simulated(&answers);
    let stale_router = simulated(&stale_answers);
    let expected_stale = (0..pods.len())
        .filter(|&i| stale(i, args.stale_every))
        .count();
    rt.block_on(async {
        for (i, (_, _, ip, port)) in pods.iter().enumerate() {
            let listener = tokio::net::TcpListener::bind((*ip, *port))
                .await
                .unwrap_or_else(|e| panic!("bind {ip}:{port}: {e}"));
            let router = if stale(i, args.stale_every) {
                stale_router.clone()
            } else {
                fresh_router.clone()
            };
            tokio::spawn(async move {
                let _ = axum::serve(listener, router).await;
            });
        }
    });
    eprintln!(
        "fleet-bench: {} simulated sidecars on 127.77.x.y:{}",
        pods.len(),
        pods[0].3
    );

    // Setup is done: admission goes, and so does the controller that served it.
    api.kubectl(
        &["delete", "mutatingwebhookconfiguration", "mcp-guard"],
        None,
    );
    drop(setup);

    // --- the rounds -------------------------------------------------------------------------
    let mut rounds = Vec::new();
    for r in 0..args.rounds {
        let t = Instant::now();
        let (mut proc, port) = start_webhook(&api, &[]);
        wait_until(Duration::from_secs(120), || {
            let logs = proc.logs();
            Ok(logs.contains("controller caches synced"))
        })
        .unwrap_or_else(|e| panic!("the controller's caches never synced: {e}\n{}", proc.logs()));
        let sync_s = t.elapsed().as_secs_f64();
        let pid = proc.pid();
        // Let the first reconcile pass (mirrors, NetworkPolicies, reports) settle.
        std::thread::sleep(Duration::from_secs(2));
        let rss_idle = status_kib(pid, "VmRSS:").unwrap_or(0);
        let stop = Arc::new(AtomicBool::new(false));
        let sampler = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut peak = 0;
                while !stop.load(Ordering::Relaxed) {
                    peak = peak.max(status_kib(pid, "VmRSS:").unwrap_or(0));
                    std::thread::sleep(Duration::from_millis(10));
                }
                peak
            })
        };
        let client = https_client(&api.ca.ca_path());
        let base = format!("https://127.0.0.1:{port}");
        let mut round = Round {
            sync_s,
            rss_idle_mib: mib(rss_idle),
            ..Round::default()
        };
        rt.block_on(async {
            let (ms, _, _) = refresh(&client, &base, pods.len(), args.stale_every)
                .await
                .unwrap_or_else(|e| panic!("round {r}, cold: {e}"));
            round.cold_ms = ms;
            let (ms, _, _) = refresh(&client, &base, pods.len(), args.stale_every)
                .await
                .unwrap_or_else(|e| panic!("round {r}, cached: {e}"));
            round.cached_ms = ms;
            for w in 0..args.warm {
                // The view is kept 5 s (fleet_api::FRESH): past it, the next GET observes anew.
                tokio::time::sleep(Duration::from_millis(5300)).await;
                let cpu = cpu_time(pid);
                let (ms, _, _) = refresh(&client, &base, pods.len(), args.stale_every)
                    .await
                    .unwrap_or_else(|e| panic!("round {r}, warm {w}: {e}"));
                round
                    .warm_cpu_ms
                    .push((cpu_time(pid) - cpu).as_secs_f64() * 1000.0);
                round.warm_ms.push(ms);
            }
        });
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::Relaxed);
        round.rss_max_sampled_mib = mib(sampler.join().unwrap_or(0));
        round.rss_after_mib = mib(status_kib(pid, "VmRSS:").unwrap_or(0));
        round.rss_hwm_mib = mib(status_kib(pid, "VmHWM:").unwrap_or(0));
        eprintln!(
            "fleet-bench: round {}: caches synced in {:.1}s; cold {:.0} ms, warm {:?} ms, cached {:.0} ms; RSS idle {:.1} MiB, peak {:.1} MiB (VmHWM {:.1})",
            r + 1,
            round.sync_s,
            round.cold_ms,
            round.warm_ms.iter().map(|m| m.round()).collect::<Vec<_>>(),
            round.cached_ms,
            round.rss_idle_mib,
            round.rss_max_sampled_mib,
            round.rss_hwm_mib
        );
        proc.signal("TERM");
        proc.wait_exit(Duration::from_secs(10));
        rounds.push(round);
    }
    let load_after = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();

    // --- results ----------------------------------------------------------------------------
    let cold: Vec<f64> = rounds.iter().map(|r| r.cold_ms).collect();
    let warm: Vec<f64> = rounds.iter().flat_map(|r| r.warm_ms.clone()).collect();
    let cached: Vec<f64> = rounds.iter().map(|r| r.cached_ms).collect();
    let cpu: Vec<f64> = rounds.iter().flat_map(|r| r.warm_cpu_ms.clone()).collect();
    let hwm = max(&rounds.iter().map(|r| r.rss_hwm_mib).collect::<Vec<_>>());
    let sampled = max(&rounds
        .iter()
        .map(|r| r.rss_max_sampled_mib)
        .collect::<Vec<_>>());
    let idle = median(&rounds.iter().map(|r| r.rss_idle_mib).collect::<Vec<_>>());
    let worst = max(&cold).max(max(&warm));
    let refresh_met = worst < TARGET_REFRESH_MS;
    let rss_met = hwm < TARGET_RSS_MIB;
    let commit = Command::new("git")
        .args([
            "-C",
            workspace_root().to_str().unwrap(),
            "describe",
            "--always",
            "--dirty",
        ])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let version = Command::new(release_bin("mcp-guard-webhook"))
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let json = json!({
        "name": args.name, "date": date, "commit": commit, "webhook": version,
        "kube": api.tools.version, "cores": cores,
        "load_before": load_before.trim(), "load_after": load_after.trim(),
        "pods": pods.len(), "namespaces": args.namespaces, "stale_pods": expected_stale,
        "concurrency": 16, "answer_bytes": &sizes,
        "setup": {"create_and_ip_s": create_s},
        "refresh_ms": {"cold_median": median(&cold), "cold_max": max(&cold),
            "warm_median": median(&warm), "warm_max": max(&warm),
            "cached_median": median(&cached)},
        "controller_cpu_ms_per_warm_refresh_median": median(&cpu),
        "rss_mib": {"idle_median": idle, "peak_sampled": sampled, "peak_vmhwm": hwm},
        "targets": {"refresh_ms": TARGET_REFRESH_MS, "rss_mib": TARGET_RSS_MIB,
            "refresh_met": refresh_met, "rss_met": rss_met},
        "rounds": &rounds,
        "total_s": total.elapsed().as_secs_f64(),
    });
    let met = |b: bool| if b { "**met**" } else { "**missed**" };
    let mut md = String::new();
    md.push_str(&format!(
        "# fleet at scale: {} ({date})\n\n\
         - machine: {cores} cores, {}\n- commit: {commit}; {version}, release build\n\
         - control plane: kube-apiserver {} with etcd (tests/scripts/install-kube.sh)\n\
         - fleet: {} injected pods (created through the real admission webhook) in {} namespaces, \
         each with its own pod IP on loopback (127.77.x.y); {} of them (one in {}) enforcing an older \
         bundle than the one distributed\n\
         - sidecars: one process answering each pod IP's admin port with the bodies a real release \
         sidecar answered after a few calls (bytes: {})\n\
         - load average before: {}; after: {}\n\n",
        args.name,
        std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| m.lines().next().map(|l| l.split_whitespace().nth(1).unwrap_or("0").parse::<u64>().unwrap_or(0)))
            .map(|k| format!("{:.0} GiB", k as f64 / 1048576.0))
            .unwrap_or_default(),
        api.tools.version,
        pods.len(),
        args.namespaces,
        expected_stale,
        args.stale_every,
        sizes.iter().map(|(p, n)| format!("{p} {n}")).collect::<Vec<_>>().join(", "),
        load_before.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        load_after.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
    ));
    md.push_str(&format!(
        "{} rounds, each a fresh controller process: one cold `GET /fleet` once its caches synced, \
         {} warm ones (each after the 5 s cache expired), one served from the cache. Each answer \
         checked: {} rows, every one observed, exactly the stale pods flagged.\n\n",
        args.rounds,
        args.warm,
        pods.len()
    ));
    md.push_str("| refresh of `GET /fleet` | median (ms) | max (ms) |\n|---|---|---|\n");
    md.push_str(&format!(
        "| cold (first after start) | {:.0} | {:.0} |\n",
        median(&cold),
        max(&cold)
    ));
    md.push_str(&format!(
        "| warm | {:.0} | {:.0} |\n",
        median(&warm),
        max(&warm)
    ));
    md.push_str(&format!(
        "| from the cache (< 5 s old) | {:.0} | {:.0} |\n\n",
        median(&cached),
        max(&cached)
    ));
    md.push_str(&format!(
        "Controller CPU per warm refresh (user + system, median): {:.0} ms.\n\n",
        median(&cpu)
    ));
    md.push_str(&format!(
        "| controller RSS | MiB |\n|---|---|\n| idle, caches synced (median) | {idle:.1} |\n\
         | peak sampled every 10 ms | {sampled:.1} |\n| peak (VmHWM, the worst round) | {hwm:.1} |\n\n"
    ));
    md.push_str("| round | caches synced (s) | cold (ms) | warm (ms) | cached (ms) | RSS idle / peak / after (MiB) |\n|---|---|---|---|---|---|\n");
    for (i, r) in rounds.iter().enumerate() {
        md.push_str(&format!(
            "| {} | {:.1} | {:.0} | {} | {:.0} | {:.1} / {:.1} / {:.1} |\n",
            i + 1,
            r.sync_s,
            r.cold_ms,
            r.warm_ms
                .iter()
                .map(|m| format!("{m:.0}"))
                .collect::<Vec<_>>()
                .join(", "),
            r.cached_ms,
            r.rss_idle_mib,
            r.rss_hwm_mib,
            r.rss_after_mib
        ));
    }
    md.push_str(&format!(
        "\nTargets (issue 21): one refresh under {TARGET_REFRESH_MS:.0} ms: {} (worst {worst:.0} ms); \
         controller RSS under {TARGET_RSS_MIB:.0} MiB: {} (peak {hwm:.1} MiB).\n",
        met(refresh_met),
        met(rss_met)
    ));
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| workspace_root().join("bench/results"));
    std::fs::create_dir_all(&out).unwrap();
    let stem = out.join(format!("{date}-{}", args.name));
    std::fs::write(stem.with_extension("md"), &md).unwrap();
    std::fs::write(
        stem.with_extension("json"),
        serde_json::to_string_pretty(&json).unwrap() + "\n",
    )
    .unwrap();
    print!("{md}");
    eprintln!("fleet-bench: wrote {}.md and .json", stem.display());
}
