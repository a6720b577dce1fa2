//! The fleet: every injected pod, what its sidecar says about itself, and what the controller
//! expected of it. The controller builds one [`Row`] per injected pod from its caches (where it
//! runs, which image, which entry approved it, the policy hash distributed to its namespace) and
//! asks the sidecar's admin port (`/policy`, `/metrics`, a bounded number at a time, each with a
//! deadline) for the hash it enforces and its counters; a hash that differs from the
//! distributed one is *drift*. `serve` answers `GET /fleet` with the rows ([`crate::fleet_api`]);
//! `mcp-guard-webhook fleet` prints them.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use serde::{Deserialize, Serialize};

use crate::annotations::{POLICY, STATUS};
use crate::inject::{ADMIN_PORT_NAME, COPY_BINARY_NAME, REDIRECT_NAME, SIDECAR_NAME};
use crate::registry::APPROVED_LABEL;

/// One injected pod as the fleet view shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    pub namespace: String,
    pub pod: String,
    /// The owner, `Kind/name` (a ReplicaSet, a Job, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
    /// The `ApprovedServer` whose images it runs (admission's label), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// The images of the pod's own containers (not the sidecar).
    pub images: Vec<String>,
    /// The sidecar version the webhook injected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sidecar_version: Option<String>,
    /// The policy ConfigMap the pod mounts.
    pub policy: String,
    /// The hash the controller distributed to the pod's namespace for that policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distributed_hash: Option<String>,
    /// The hash the sidecar enforces (its `/policy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_hash: Option<String>,
    /// The sidecar enforces another bundle than the one distributed (or none).
    pub drift: bool,
    /// Requests the sidecar has answered, and how many it denied (its `/metrics`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub denied: Option<u64>,
    /// Requests and denials per second between the last two observations of this sidecar
    /// (absent on the first, or when its counters went back: a restarted sidecar).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_second: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub denied_per_second: Option<f64>,
    /// Tool definitions the sidecar saw differ from their pins (its `/metrics`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_changes: Option<u64>,
    /// The tools whose definition differs from their pin now (its `/tools`): pin drift.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changed_tools: Vec<String>,
    /// Why the sidecar could not be read, or the policy error it reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The containers mcp-guard adds besides the sidecar (their images are mcp-guard's, not the
/// pod's).
const MCP_GUARD_CONTAINERS: [&str; 2] = [REDIRECT_NAME, COPY_BINARY_NAME];

/// A row still to be observed, and where its sidecar's admin port is.
#[derive(Debug, Clone)]
pub struct Target {
    pub row: Row,
    pub admin: Option<SocketAddr>,
}

/// The rows to observe: each injected pod of `pods`, with `distributed` giving the hash each
/// (namespace, policy ConfigMap) holds; a pod without `mcp-guard.dev/policy` mounts
/// `default_policy`.
pub fn targets(
    pods: &[&Pod],
    distributed: &HashMap<(String, String), String>,
    default_policy: &str,
) -> Vec<Target> {
    let mut out = Vec::new();
    for pod in pods {
        let annotations = pod.annotations();
        let Some(status) = annotations.get(STATUS) else {
            continue;
        };
        let status: serde_json::Value = serde_json::from_str(status).unwrap_or_default();
        let namespace = pod.namespace().unwrap_or_default();
        let policy = annotations
            .get(POLICY)
            .cloned()
            .unwrap_or_else(|| default_policy.to_string());
        let mut images = Vec::new();
        let mut admin_port = None;
        for c in crate::controller::perimeter::containers(pod) {
            if c.name == SIDECAR_NAME {
                admin_port = c
                    .ports
                    .iter()
                    .flatten()
                    .find(|p| p.name.as_deref() == Some(ADMIN_PORT_NAME))
                    .and_then(|p| u16::try_from(p.container_port).ok());
            } else if let Some(i) = &c.image
                && !MCP_GUARD_CONTAINERS.contains(&c.name.as_str())
                && !images.contains(i)
            {
                images.push(i.clone());
            }
        }
        let ip: Option<IpAddr> = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|ip| ip.parse().ok());
        let admin = ip
            .zip(admin_port)
            .map(|(ip, port)| SocketAddr::new(ip, port));
        let error = match (ip, admin_port) {
            (None, _) => Some("no pod IP yet".to_string()),
            (_, None) => Some(format!("no {ADMIN_PORT_NAME} port on the sidecar")),
            _ => None,
        };
        let workload = pod
            .owner_references()
            .first()
            .map(|o| format!("{}/{}", o.kind, o.name));
        out.push(Target {
            row: Row {
                distributed_hash: distributed
                    .get(&(namespace.clone(), policy.clone()))
                    .cloned(),
                namespace,
                pod: pod.name_any(),
                workload,
                server: pod.labels().get(APPROVED_LABEL).cloned(),
                images,
                sidecar_version: status
                    .get("version")
                    .and_then(|v| v.as_str())
                    .map(str::to_string),
                policy,
                error,
                ..Row::default()
            },
            admin,
        });
    }
    out.sort_by(|a, b| (&a.row.namespace, &a.row.pod).cmp(&(&b.row.namespace, &b.row.pod)));
    out
}

/// The counters the fleet shows, from a sidecar's `/metrics` (OpenMetrics text): every
/// `mcp_guard_requests_total` sample, those with `outcome="denied"`, and
/// `mcp_guard_tool_definition_changes_total`.
pub fn parse_metrics(text: &str) -> (u64, u64, u64) {
    let (mut requests, mut denied, mut changes) = (0u64, 0u64, 0u64);
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(v) = value.trim().parse::<f64>() else {
            continue;
        };
        // Counters are whole numbers; a float sample is truncated.
        let v = if v.is_finite() && v >= 0.0 {
            v as u64
        } else {
            0
        };
        let name = series.split('{').next().unwrap_or_default();
        match name {
            "mcp_guard_requests_total" => {
                requests += v;
                if series.contains("outcome=\"denied\"") {
                    denied += v;
                }
            }
            "mcp_guard_tool_definition_changes_total" => changes += v,
            _ => {}
        }
    }
    (requests, denied, changes)
}

/// Rates from two observations `elapsed` apart: each row of `now` gets the requests and denials
/// per second since the same pod's row in `before`. A pod seen for the first time, or whose
/// counters went back (its sidecar restarted), gets none.
pub fn with_rates(before: &[Row], mut now: Vec<Row>, elapsed: Duration) -> Vec<Row> {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        return now;
    }
    let earlier: HashMap<(&str, &str), &Row> = before
        .iter()
        .map(|r| ((r.namespace.as_str(), r.pod.as_str()), r))
        .collect();
    let rate = |now: Option<u64>, then: Option<u64>| match (now, then) {
        (Some(n), Some(t)) if n >= t => Some((n - t) as f64 / secs),
        _ => None,
    };
    for row in &mut now {
        let Some(prev) = earlier.get(&(row.namespace.as_str(), row.pod.as_str())) else {
            continue;
        };
        row.requests_per_second = rate(row.requests, prev.requests);
        row.denied_per_second = rate(row.denied, prev.denied);
    }
    now
}

/// The tools a sidecar's `/tools` shows as differing from their pin, by name.
pub fn changed_tools(text: &str) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
    v.get("tools")
        .and_then(|t| t.as_array())
        .into_iter()
        .flatten()
        .filter(|t| t.get("changed").and_then(|c| c.as_bool()) == Some(true))
        .filter_map(|t| t.get("name").and_then(|n| n.as_str()).map(str::to_string))
        .collect()
}

/// The HTTP client that asks the sidecars' admin ports, each request within `timeout`. It keeps
/// no idle connection: each sidecar is asked once per observation, so a pool would only hold one
/// connection (and its buffers) per pod of the fleet until the observation ends; without it, the
/// connections open at once are those of the sidecars being asked.
fn admin_client(timeout: Duration) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .pool_max_idle_per_host(0)
        .no_proxy()
        .build()
        .map_err(|e| format!("no HTTP client: {e}"))
}

/// Why a sidecar's admin endpoint gave no answer to use.
#[derive(Debug)]
enum AdminError {
    /// No answer at all (refused, timed out): asking it anything else now is no use.
    Unreachable(String),
    /// An answer, but not one to read (an error status, a body cut off).
    Answer(String),
}

impl std::fmt::Display for AdminError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdminError::Unreachable(e) | AdminError::Answer(e) => f.write_str(e),
        }
    }
}

/// `GET http://ADMIN/PATH` on a sidecar's admin port: the body of a successful answer.
async fn admin_get(
    client: &reqwest::Client,
    admin: SocketAddr,
    path: &str,
) -> Result<String, AdminError> {
    let url = format!("http://{admin}{path}");
    let resp = client
        .get(&url)
        .send()
        .await
        .map_err(|e| AdminError::Unreachable(e.to_string()))?;
    if !resp.status().is_success() {
        return Err(AdminError::Answer(format!("{url}: HTTP {}", resp.status())));
    }
    resp.text()
        .await
        .map_err(|e| AdminError::Answer(e.to_string()))
}

/// Fills each row from its sidecar: at most `concurrency` sidecars at a time, each request
/// within `timeout`. An unreachable sidecar keeps its row, with the error.
pub async fn observe(targets: Vec<Target>, concurrency: usize, timeout: Duration) -> Vec<Row> {
    let client = match admin_client(timeout) {
        Ok(c) => c,
        Err(why) => {
            return targets
                .into_iter()
                .map(|t| Row {
                    error: Some(why.clone()),
                    ..t.row
                })
                .collect();
        }
    };
    let rows: Vec<Row> = futures_util::stream::iter(targets)
        .map(|t| observe_one(&client, t))
        .buffered(concurrency.max(1))
        .collect()
        .await;
    rows
}

async fn observe_one(client: &reqwest::Client, t: Target) -> Row {
    let mut row = t.row;
    let Some(admin) = t.admin else {
        row.drift = drift(&row);
        return row;
    };
    match admin_get(client, admin, "/policy").await {
        Ok(body) => {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            row.policy_hash = v.get("hash").and_then(|h| h.as_str()).map(str::to_string);
            if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
                row.error = Some(format!("policy: {e}"));
            }
        }
        Err(e @ AdminError::Unreachable(_)) => {
            // A sidecar that does not answer is not asked twice more: one deadline per refresh
            // holds one of the bounded places, not three.
            row.error = Some(format!("sidecar not reachable: {e}"));
            row.drift = drift(&row);
            return row;
        }
        Err(e) => row.error = Some(format!("sidecar not reachable: {e}")),
    }
    if let Ok(text) = admin_get(client, admin, "/metrics").await {
        let (requests, denied, changes) = parse_metrics(&text);
        row.requests = Some(requests);
        row.denied = Some(denied);
        row.tool_changes = Some(changes);
    }
    if let Ok(text) = admin_get(client, admin, "/tools").await {
        row.changed_tools = changed_tools(&text);
    }
    row.drift = drift(&row);
    row
}

/// What one sidecar says beyond its row, for a server's page: its `/policy` (with the history
/// of the bundles it put in force), `/access` (each tool, its pin, who may see and call it) and
/// `/denies` (its last refusals). A part it could not give is `Null`, with the reason in `error`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Detail {
    pub namespace: String,
    pub pod: String,
    pub policy: serde_json::Value,
    pub access: serde_json::Value,
    pub denies: serde_json::Value,
    pub error: Option<String>,
}

/// Asks each target's sidecar for its [`Detail`], as [`observe`] does for the rows.
pub async fn details(targets: Vec<Target>, concurrency: usize, timeout: Duration) -> Vec<Detail> {
    let client = admin_client(timeout);
    futures_util::stream::iter(targets)
        .map(|t| {
            let client = client.clone();
            async move {
                let mut d = Detail {
                    namespace: t.row.namespace,
                    pod: t.row.pod,
                    ..Detail::default()
                };
                let (client, admin) = match (client, t.admin) {
                    (Ok(c), Some(a)) => (c, a),
                    (Err(e), _) => {
                        d.error = Some(e);
                        return d;
                    }
                    (_, None) => {
                        d.error = t.row.error;
                        return d;
                    }
                };
                for (path, slot) in [
                    ("/policy", &mut d.policy),
                    ("/access", &mut d.access),
                    ("/denies", &mut d.denies),
                ] {
                    match admin_get(&client, admin, path).await {
                        Ok(body) => *slot = serde_json::from_str(&body).unwrap_or_default(),
                        Err(e) => {
                            d.error.get_or_insert(format!("sidecar not reachable: {e}"));
                        }
                    }
                }
                d
            }
        })
        .buffered(concurrency.max(1))
        .collect()
        .await
}

/// A hash was distributed and the sidecar does not (or cannot say it does) enforce it.
fn drift(row: &Row) -> bool {
    row.distributed_hash
        .as_ref()
        .is_some_and(|d| row.policy_hash.as_ref() != Some(d))
}

/// One column of the fleet table: the CLI's table and the dashboard's HTML table are both made
/// from [`COLUMNS`], so they cannot disagree.
pub struct Column {
    pub header: &'static str,
    /// Shown only by `-o wide` (the dashboard shows every column).
    pub wide: bool,
    pub cell: fn(&Row) -> String,
}

fn or_dash(v: Option<&str>) -> String {
    v.unwrap_or("-").to_string()
}

fn per_second(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), |r| format!("{r:.1}"))
}

fn count(v: Option<u64>) -> String {
    v.map_or_else(|| "-".to_string(), |n| n.to_string())
}

/// The header of the column naming the pod's server (the dashboard links it).
pub const SERVER: &str = "SERVER";
/// The header of the drift column (the dashboard flags it).
pub const DRIFT: &str = "DRIFT";

/// The fleet table's columns, in order.
pub const COLUMNS: [Column; 16] = [
    Column {
        header: "NAMESPACE",
        wide: false,
        cell: |r| r.namespace.clone(),
    },
    Column {
        header: "POD",
        wide: false,
        cell: |r| r.pod.clone(),
    },
    Column {
        header: SERVER,
        wide: false,
        cell: |r| or_dash(r.server.as_deref()),
    },
    Column {
        header: "VERSION",
        wide: false,
        cell: |r| or_dash(r.sidecar_version.as_deref()),
    },
    Column {
        header: "POLICY",
        wide: false,
        cell: |r| r.policy.clone(),
    },
    Column {
        header: "HASH",
        wide: false,
        cell: |r| or_dash(r.policy_hash.as_deref().map(short).as_deref()),
    },
    Column {
        header: DRIFT,
        wide: false,
        cell: |r| if r.drift { "yes" } else { "no" }.to_string(),
    },
    Column {
        header: "REQUESTS",
        wide: false,
        cell: |r| count(r.requests),
    },
    Column {
        header: "DENIED",
        wide: false,
        cell: |r| count(r.denied),
    },
    Column {
        header: "REQ/S",
        wide: false,
        cell: |r| per_second(r.requests_per_second),
    },
    Column {
        header: "DENY/S",
        wide: false,
        cell: |r| per_second(r.denied_per_second),
    },
    Column {
        header: "STATUS",
        wide: false,
        cell: |r| r.error.clone().unwrap_or_else(|| "ok".to_string()),
    },
    Column {
        header: "WORKLOAD",
        wide: true,
        cell: |r| or_dash(r.workload.as_deref()),
    },
    Column {
        header: "TOOL-CHANGES",
        wide: true,
        cell: |r| count(r.tool_changes),
    },
    Column {
        header: "PIN-DRIFT",
        wide: true,
        cell: |r| {
            if r.changed_tools.is_empty() {
                "-".to_string()
            } else {
                r.changed_tools.join(",")
            }
        },
    },
    Column {
        header: "IMAGES",
        wide: true,
        cell: |r| r.images.join(","),
    },
];

/// The rows as a table, like `kubectl get` (`wide` adds workload, images and tool changes).
pub fn table(rows: &[Row], wide: bool) -> String {
    let columns: Vec<&Column> = COLUMNS.iter().filter(|c| wide || !c.wide).collect();
    let mut lines: Vec<Vec<String>> = vec![columns.iter().map(|c| c.header.to_string()).collect()];
    for r in rows {
        lines.push(columns.iter().map(|c| (c.cell)(r)).collect());
    }
    let widths: Vec<usize> = (0..columns.len())
        .map(|i| {
            lines
                .iter()
                .map(|l| l[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for l in &lines {
        let cells: Vec<String> = l
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("   ").trim_end());
        out.push('\n');
    }
    out
}

/// `sha256:0123456789ab…` → `0123456789ab`.
pub fn short(hash: &str) -> String {
    let hex = hash.strip_prefix("sha256:").unwrap_or(hash);
    hex.chars().take(12).collect()
}

/// Filters of `GET /fleet` and of the CLI.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub namespace: Option<String>,
    pub server: Option<String>,
}

impl Filter {
    pub fn keeps(&self, r: &Row) -> bool {
        self.namespace.as_ref().is_none_or(|n| &r.namespace == n)
            && self
                .server
                .as_ref()
                .is_none_or(|s| r.server.as_ref() == Some(s))
    }

    /// As URL query parameters.
    pub fn query(&self) -> BTreeMap<&'static str, String> {
        let mut q = BTreeMap::new();
        if let Some(n) = &self.namespace {
            q.insert("namespace", n.clone());
        }
        if let Some(s) = &self.server {
            q.insert("server", s.clone());
        }
        q
    }
}

/// `mcp-guard-webhook fleet`: the fleet as the controller sees it.
#[derive(Debug, Clone, clap::Args)]
pub struct FleetArgs {
    /// Base URL of mcp-guard's webhook (a `kubectl port-forward` of its Service, an ingress).
    #[arg(
        long,
        env = "MCP_GUARD_FLEET_URL",
        default_value = "https://localhost:8443"
    )]
    pub url: String,

    /// A Kubernetes bearer token of yours (`kubectl create token …`); the API server decides who
    /// it is and which namespaces you may list pods in.
    #[arg(long, env = "MCP_GUARD_TOKEN", hide_env_values = true)]
    pub token: String,

    /// The CA that signed the webhook's certificate (PEM).
    #[arg(long, env = "MCP_GUARD_FLEET_CA")]
    pub ca: Option<std::path::PathBuf>,

    /// Only this namespace.
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,

    /// Only pods of this `ApprovedServer`.
    #[arg(long)]
    pub server: Option<String>,

    /// `table`, `wide` or `json`.
    #[arg(short = 'o', long, default_value = "table", value_parser = ["table", "wide", "json"])]
    pub output: String,

    /// Print again every interval (e.g. `5s`) until interrupted.
    #[arg(short = 'w', long, value_parser = mcp_guard_common::duration::parse_duration)]
    pub watch: Option<Duration>,
}

/// Runs `fleet`: fetches `/fleet` and prints it, once or every `--watch`.
pub async fn run_cli(args: &FleetArgs) -> Result<(), String> {
    let mut builder = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .no_proxy();
    if let Some(path) = &args.ca {
        let pem = std::fs::read(path).map_err(|e| format!("--ca {}: {e}", path.display()))?;
        let cert = reqwest::Certificate::from_pem(&pem)
            .map_err(|e| format!("--ca {}: not a PEM certificate: {e}", path.display()))?;
        builder = builder.add_root_certificate(cert);
    }
    let client = builder
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
    let filter = Filter {
        namespace: args.namespace.clone(),
        server: args.server.clone(),
    };
    let url = format!("{}/fleet", args.url.trim_end_matches('/'));
    loop {
        let resp = client
            .get(&url)
            .bearer_auth(&args.token)
            .query(&filter.query())
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        let status = resp.status();
        let body = resp.text().await.map_err(|e| format!("GET {url}: {e}"))?;
        if !status.is_success() {
            let why = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
                .unwrap_or(body);
            return Err(format!("GET {url}: {status}: {why}"));
        }
        let list: FleetList =
            serde_json::from_str(&body).map_err(|e| format!("GET {url}: not a fleet: {e}"))?;
        match args.output.as_str() {
            "json" => println!(
                "{}",
                serde_json::to_string_pretty(&list).map_err(|e| e.to_string())?
            ),
            o => print!("{}", table(&list.items, o == "wide")),
        }
        match args.watch {
            Some(every) => tokio::time::sleep(every).await,
            None => return Ok(()),
        }
    }
}

/// `GET /fleet`'s answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FleetList {
    pub items: Vec<Row>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn a_sidecar_that_does_not_answer_is_asked_once_per_refresh() {
        // Accepts connections and never answers: every request ends at its deadline.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = listener.local_addr().unwrap();
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = std::sync::Arc::clone(&accepted);
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((conn, _)) = listener.accept().await {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                held.push(conn);
            }
        });
        let target = Target {
            row: Row {
                pod: "silent".into(),
                ..Row::default()
            },
            admin: Some(admin),
        };
        let rows = observe(vec![target], 4, Duration::from_millis(300)).await;
        let error = rows[0].error.as_deref().unwrap_or_default();
        assert!(error.starts_with("sidecar not reachable"), "{error}");
        assert_eq!(rows[0].requests, None);
        assert_eq!(
            accepted.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "asked /policy only"
        );
    }

    fn pod(name: &str, ip: Option<&str>, admin: Option<u16>) -> Pod {
        let mut ports = vec![json!({"name": "mcp", "containerPort": 15001})];
        if let Some(a) = admin {
            ports.push(json!({"name": ADMIN_PORT_NAME, "containerPort": a}));
        }
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "apps",
                "labels": {APPROVED_LABEL: "tickets"},
                "annotations": {STATUS: "{\"version\":\"0.1.0\"}", POLICY: "tools-policy"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "name": "tickets-7c9f", "uid": "u"}]},
            "spec": {"initContainers": [
                {"name": COPY_BINARY_NAME, "image": "ghcr.io/mcp-guard/sidecar:0.1.0"}],
                "containers": [
                {"name": "server", "image": "example.com/tickets:1"},
                {"name": SIDECAR_NAME, "image": "ghcr.io/mcp-guard/sidecar:0.1.0", "ports": ports}]},
            "status": {"podIP": ip},
        }))
        .unwrap()
    }

    #[test]
    fn rows_carry_where_the_sidecar_is_and_what_was_distributed() {
        let pods = [
            pod("b", Some("10.0.0.2"), Some(15020)),
            pod("a", None, Some(15020)),
        ];
        let refs: Vec<&Pod> = pods.iter().collect();
        let distributed: HashMap<_, _> = [(
            ("apps".to_string(), "tools-policy".to_string()),
            "sha256:ab".to_string(),
        )]
        .into();
        let t = targets(&refs, &distributed, "mcp-guard-policy");
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].row.pod, "a");
        assert_eq!(t[0].row.error.as_deref(), Some("no pod IP yet"));
        let b = &t[1];
        assert_eq!(b.admin, Some("10.0.0.2:15020".parse().unwrap()));
        assert_eq!(b.row.server.as_deref(), Some("tickets"));
        assert_eq!(b.row.workload.as_deref(), Some("ReplicaSet/tickets-7c9f"));
        assert_eq!(b.row.images, ["example.com/tickets:1"]);
        assert_eq!(b.row.sidecar_version.as_deref(), Some("0.1.0"));
        assert_eq!(b.row.distributed_hash.as_deref(), Some("sha256:ab"));
    }

    #[test]
    fn rates_are_the_counters_difference_over_the_time_between_observations() {
        let row = |pod: &str, requests: u64, denied: u64| Row {
            namespace: "apps".into(),
            pod: pod.into(),
            requests: Some(requests),
            denied: Some(denied),
            ..Row::default()
        };
        let before = [row("a", 10, 2), row("b", 50, 5)];
        let now = vec![row("a", 40, 2), row("b", 7, 0), row("c", 3, 1)];
        let rows = with_rates(&before, now, Duration::from_secs(10));
        assert_eq!(rows[0].requests_per_second, Some(3.0));
        assert_eq!(rows[0].denied_per_second, Some(0.0));
        assert_eq!(
            rows[1].requests_per_second, None,
            "restarted: counters went back"
        );
        assert_eq!(rows[2].requests_per_second, None, "seen for the first time");
        let text = table(&rows, false);
        assert!(text.contains("REQ/S") && text.contains("3.0"), "{text}");
    }

    #[test]
    fn counters_come_from_the_metrics_text() {
        let text = "# TYPE mcp_guard_requests counter\n\
            mcp_guard_requests_total{method=\"tools/call\",outcome=\"allowed\"} 7\n\
            mcp_guard_requests_total{method=\"tools/call\",outcome=\"denied\"} 2\n\
            mcp_guard_requests_total{method=\"tools/list\",outcome=\"allowed\"} 3\n\
            mcp_guard_tool_definition_changes_total 1\n\
            mcp_guard_requests_created 1.7e9\n# EOF\n";
        assert_eq!(parse_metrics(text), (12, 2, 1));
    }

    #[test]
    fn the_table_has_a_header_and_a_line_per_row() {
        let rows = [Row {
            namespace: "apps".into(),
            pod: "tickets-1".into(),
            policy: "p".into(),
            policy_hash: Some("sha256:0123456789abcdef".into()),
            drift: true,
            ..Row::default()
        }];
        let t = table(&rows, false);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("NAMESPACE") && lines[0].contains("DRIFT"));
        assert!(
            lines[1].contains("0123456789ab") && lines[1].contains("yes"),
            "{t}"
        );
        assert!(
            table(&rows, true)
                .lines()
                .next()
                .unwrap()
                .contains("IMAGES")
        );
    }
}
