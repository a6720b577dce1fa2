//! The operator's story on a real single-node cluster whose pods run (tests/src/node.rs:
//! kubelet, containerd, kube-proxy, the controllers; Kubernetes 1.20 built from Debian's source).
//! The images are assembled without a container engine (tests/scripts/build-images.sh) under the
//! chart's own references, so the chart is installed unchanged.
//!
//! One test plays the story in order, each step on what the previous one left:
//! 1. the plain manifests/mcp-guard.yaml with a certificate of certs/gen-dev-certs.sh put in by
//!    certs/with-certs.sh (docs/install.md, "Without Helm"): the webhook Deployment becomes Ready,
//!    its controller writes the default policy's status, an opted-in pod is injected and runs;
//!    removed again, then `helm install` of charts/mcp-guard (self-signed certificates): the
//!    same, with the pods' own ServiceAccount token;
//! 2. an MCP server Deployment (2 replicas, the project's rmcp example server) and a ClusterIP
//!    Service with a named targetPort, without mcp-guard: a real MCP client (PyPI `mcp`) through
//!    the Service sees every tool and calls the one the policy will hide;
//! 3. the operator annotates the pod template: the rollout replaces the pods, the new ones are
//!    Ready with the sidecar, no sidecar restarted, no `FailedPostStartHook`; the Service is
//!    unchanged and its endpoints are now the sidecar's port; the server's container differs only
//!    as docs/annotations.md says;
//! 4. through the Service, with tokens of a real OpenID provider (npm `oidc-provider`, bound on
//!    the node's bridge so the sidecars reach its discovery and keys): a reader's Inspector CLI
//!    lists only the allowed tool while an admin's lists all, the hidden tool's call is refused
//!    (and one without a token answered 401), an allowed call is answered, and the sidecars' logs
//!    (`kubectl logs -c mcp-guard`) carry audit records naming the caller;
//! 5. the policy source is edited: the running sidecars decide by the new policy (each sidecar's
//!    `/policy` hash changed, the reader now sees the newly allowed tool) without a restart; a
//!    broken edit is refused by the validating webhook at `kubectl apply`;
//! 6. a namespace opts in: its pods are injected, a pod that opts out is left untouched; removing
//!    the annotation from the Deployment and rolling out removes the sidecar (every tool is
//!    listed again, ungoverned);
//! 7. a Job with an injected sidecar and `mcp-guard.dev/shutdown-on-exit: enabled` completes: the
//!    pod reaches Succeeded with every container terminated, the sidecar included;
//! 8. the Deployment opted in again, a pod is deleted while a real client's long call is in flight
//!    through its sidecar: the client gets the whole answer, and the pod's last stored state
//!    (watched until it is gone) has the sidecar and the server terminated with exit code 0
//!    (both drained on SIGTERM, neither killed at the end of the grace period);
//! 9. the webhook Deployment scaled to zero: with `failurePolicy: Fail` an opted-in pod is refused
//!    with the API server's message naming the webhook, with `Ignore` it is created without the
//!    sidecar; scaled back (and `Fail` again), the same pod is created injected.
//!
//! Without root or the node's binaries (tests/scripts/install-node.sh) the test is skipped,
//! unless `MCP_GUARD_REQUIRE_NODE=1` (tests/run.sh sets it), when it fails instead.
//!
//! `MCP_GUARD_NODE_E2E_WITHOUT_SIDECAR=1` is a test-only toggle that proves the story can fail:
//! step 3 then annotates `mcp-guard.dev/inject: disabled` and skips its sidecar checks, so the
//! hidden tool stays reachable through the Service and step 4 must fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mcp_guard_tests::node::{self, Node};
use mcp_guard_tests::oidc::{Provider, RESOURCE, gen_key, probe};
use mcp_guard_tests::otlp::Receiver;
use mcp_guard_tests::{
    TempDir, assert_denied, call_body, http_blocking, inspector, inspector_json, post, py_client,
    tool_names, try_py_client, workspace_root,
};
use serde_json::{Value, json};

/// mcp-guard's release namespace.
const GUARD_NS: &str = "mcp-guard";
/// The MCP server's namespace.
const APP_NS: &str = "mcp-demo";
/// Every tool the example server lists.
const ALL_TOOLS: [&str; 5] = [
    "add",
    "delete_everything",
    "echo",
    "get_weather",
    "slow_echo",
];
/// The tool manifests/examples/policy.yaml hides (it allows only `echo`).
const HIDDEN: &str = "delete_everything";
/// The upper bound for anything the cluster does (a rollout, a volume sync); the story polls for
/// states and never asserts on how long they took.
const LONG: Duration = Duration::from_secs(300);

fn app_version() -> String {
    let chart =
        std::fs::read_to_string(workspace_root().join("charts/mcp-guard/Chart.yaml")).unwrap();
    chart
        .lines()
        .find_map(|l| l.strip_prefix("appVersion:"))
        .map(|v| v.trim().trim_matches('"').to_owned())
        .unwrap()
}

/// The MCP server before the operator touches it (manifests/examples/example-server.yaml): two
/// replicas of the example server with a named port (`mcp`) probed by name, and a Service whose
/// targetPort is that name. Its image tag is the chart's appVersion, as build-images.sh tags it.
fn app_manifest() -> String {
    let text =
        std::fs::read_to_string(workspace_root().join("manifests/examples/example-server.yaml"))
            .unwrap();
    let image = format!(
        "image: localhost/mcp-guard/example-server:{}\n",
        app_version()
    );
    assert!(text.contains(&image), "example-server.yaml names {image:?}");
    text
}

/// The Service's MCP endpoint, as a client on the node reaches it (kube-proxy's rules).
fn service_url(node: &Node) -> String {
    format!("http://{}:80/mcp", node.cluster_ip(APP_NS, "tools"))
}

/// A real MCP client (PyPI `mcp`, one connection) running `ops` through the Service.
fn client(node: &Node, ops: Value) -> Vec<Value> {
    let doc = py_client(&service_url(node), "http", "legacy", &ops);
    doc["results"].as_array().cloned().unwrap_or_default()
}

/// The tools a `tools/list` through the Service shows; a client that cannot connect (the
/// Service's endpoints changing under a rollout) gives one entry saying so, as `listed_as` does.
fn listed(node: &Node) -> Vec<String> {
    let ops = json!([{"op": "list"}]);
    let r = match try_py_client(&service_url(node), "http", "legacy", &ops) {
        Ok(doc) => doc["results"].as_array().cloned().unwrap_or_default(),
        Err(e) => return vec![format!("<client failed: {e}>")],
    };
    let mut names: Vec<String> = r[0]["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("tools/list through the Service failed: {r:?}"))
        .iter()
        .filter_map(|n| n.as_str().map(str::to_owned))
        .collect();
    names.sort();
    names
}

/// The caller's side of step 4: the provider's tokens and a runtime for the raw requests.
struct Caller {
    reader: String,
    admin: String,
    rt: tokio::runtime::Runtime,
}

/// The tools the Inspector CLI (a real MCP client) lists through the Service with `token`.
fn listed_as(node: &Node, token: &str) -> Vec<String> {
    let header = format!("Authorization: Bearer {token}");
    let out = inspector(
        &service_url(node),
        "http",
        &["--method", "tools/list", "--header", &header],
    );
    if !out.success() {
        return vec![format!("<inspector failed: {}>", out.stderr.trim())];
    }
    let v: Value = serde_json::from_str(out.stdout.trim()).unwrap_or(Value::Null);
    let mut names = tool_names(&v);
    names.sort();
    names
}

/// The pods of the app that are not being deleted.
fn live_pods(node: &Node) -> Vec<Value> {
    node.pods(APP_NS, "app=tools")
        .into_iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .collect()
}

fn container<'a>(pod: &'a Value, name: &str) -> Option<&'a Value> {
    pod["spec"]["containers"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == name)
}

fn status<'a>(pod: &'a Value, name: &str) -> Option<&'a Value> {
    pod["status"]["containerStatuses"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == name)
}

/// The webhook injected `pod`: the sidecar container and the status annotation.
fn injected(pod: &Value) -> bool {
    container(pod, "mcp-guard").is_some()
        && pod["metadata"]["annotations"]["mcp-guard.dev/status"].is_string()
}

/// The webhook left `pod` as it was: no sidecar, no status annotation.
fn untouched(pod: &Value) -> bool {
    container(pod, "mcp-guard").is_none()
        && pod["metadata"]["annotations"]["mcp-guard.dev/status"].is_null()
}

fn ready(pod: &Value) -> bool {
    pod["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

fn name(obj: &Value) -> String {
    obj["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// `GET http://POD_IP:15020/policy` (the sidecar's admin port) as JSON.
fn policy_status(pod: &Value) -> Value {
    let ip = pod["status"]["podIP"].as_str().unwrap();
    let addr: SocketAddr = format!("{ip}:15020").parse().unwrap();
    match http_blocking(addr, "GET", "/policy", Duration::from_secs(10)) {
        Ok((200, body)) => serde_json::from_str(&body).unwrap_or(Value::Null),
        _ => Value::Null,
    }
}

/// The operator's edit of the `tools` Deployment (a merge patch), then its rollout to the end.
fn patch_and_roll_out(node: &Node, patch: &Value) {
    node.kubectl_ok(&[
        "patch",
        "deployment",
        "tools",
        "-n",
        APP_NS,
        "--type=merge",
        "-p",
        &patch.to_string(),
    ]);
    rollout(node, APP_NS, "tools");
}

fn rollout(node: &Node, namespace: &str, deployment: &str) {
    let out = node.kubectl(&[
        "rollout",
        "status",
        &format!("deployment/{deployment}"),
        "-n",
        namespace,
        "--timeout=280s",
    ]);
    assert!(
        out.success(),
        "rollout of {namespace}/{deployment}: {}\n{}",
        out.stderr,
        node.diagnostics(namespace)
    );
}

/// A step of the story: its number, what it shows, and the code that shows it.
type Step<'a> = (&'static str, &'static str, Box<dyn FnOnce() + 'a>);

/// Runs one step of the story, printing what it shows and how long it took; returns the time.
fn step(n: &str, what: &str, f: impl FnOnce()) -> Duration {
    let t = Instant::now();
    println!("node_e2e: step {n}: {what}");
    f();
    let took = t.elapsed();
    println!("node_e2e: step {n} passed in {:.1}s", took.as_secs_f64());
    took
}

#[test]
fn operator_story_on_a_real_node() {
    if let Some(why) = node::unavailable() {
        assert!(
            std::env::var("MCP_GUARD_REQUIRE_NODE").as_deref() != Ok("1"),
            "MCP_GUARD_REQUIRE_NODE=1 but {why}"
        );
        eprintln!("node_e2e skipped: {why}");
        return;
    }
    let suite = Instant::now();
    let node = Node::up();
    assert!(
        !node.reused(),
        "a cluster was already up; the story starts from a fresh one: run \
         tests/scripts/cluster-down.sh first"
    );
    println!("node_e2e: cluster up in {:.1}s", node.up_time.as_secs_f64());
    let t = Instant::now();
    let images = node.build_images();
    let images_time = t.elapsed();
    println!(
        "node_e2e: images built and imported in {:.1}s: {images:?}",
        images_time.as_secs_f64()
    );

    // The OpenID provider, where pods reach it: the bridge's gateway address.
    let keys = TempDir::new("node-oidc");
    let key = gen_key(keys.path(), "node-k1");
    let idp = Provider::start_on_host(node.var("GATEWAY"), &[&key]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let caller = Caller {
        reader: rt.block_on(idp.reader_token()),
        admin: rt.block_on(idp.admin_token()),
        rt,
    };

    let before = std::cell::RefCell::new(Vec::new());
    let issuer = idp.issuer();
    let story: Vec<Step<'_>> = vec![
        (
            "1a",
            "the plain manifests/ with certs/ tooling; an opted-in pod is injected; removed",
            Box::new(|| install_manifests(&node)),
        ),
        (
            "1b",
            "helm install of charts/mcp-guard; the webhook is Ready",
            Box::new(|| install_chart(&node)),
        ),
        (
            "2",
            "the MCP server without mcp-guard, through its Service",
            Box::new(|| {
                unguarded_server(&node);
                *before.borrow_mut() = live_pods(&node);
            }),
        ),
        (
            "3",
            "the operator opts the Deployment in; the rollout injects",
            Box::new(|| opt_in(&node, &before.borrow(), &issuer)),
        ),
        (
            "4",
            "governed through the Service",
            Box::new(|| governed(&node, &caller)),
        ),
        (
            "5",
            "a policy edit reaches the running sidecars",
            Box::new(|| policy_edit(&node, &caller)),
        ),
        (
            "6",
            "a namespace opts in, a pod opts out, a Deployment opts out",
            Box::new(|| opt_outs(&node)),
        ),
        (
            "7",
            "a Job with an injected sidecar completes",
            Box::new(|| job(&node)),
        ),
        (
            "8",
            "a pod deleted while a call is in flight",
            Box::new(|| delete_under_traffic(&node, &caller)),
        ),
        (
            "9",
            "the webhook scaled to zero: Fail refuses, Ignore admits uninjected",
            Box::new(|| webhook_down(&node)),
        ),
        (
            "10",
            "sidecar settings from values, the namespace and the pod",
            Box::new(|| settings(&node, &caller)),
        ),
        (
            "11",
            "the controller's fleet view against the cluster: policy drift, pin drift",
            Box::new(|| fleet(&node)),
        ),
    ];
    let mut times = Vec::new();
    for (n, what, f) in story {
        times.push((n, step(n, what, f)));
    }

    println!(
        "node_e2e: not shown on this 1.20 node: native sidecars (1.29+; the webhook's golden \
         tests check that form against the 1.29 and 1.37 schemas), PodSecurity admission (1.23+; \
         the goldens pin the injected securityContext to what `restricted` requires), \
         NetworkPolicy enforcement (the CNI bridge plugin enforces none; the controller's \
         NetworkPolicy objects are checked in controller_apiserver)"
    );
    let per_step: Vec<String> = times
        .iter()
        .map(|(n, t)| format!("{n} {:.1}s", t.as_secs_f64()))
        .collect();
    println!(
        "node_e2e: the suite took {:.1}s (cluster up {:.1}s, images {:.1}s; steps: {})",
        suite.elapsed().as_secs_f64(),
        node.up_time.as_secs_f64(),
        images_time.as_secs_f64(),
        per_step.join(", ")
    );
}

/// The plain manifests, as docs/install.md's "Without Helm" has a user apply them: a certificate
/// of certs/gen-dev-certs.sh put in by certs/with-certs.sh, and on this 1.20 cluster (no
/// `policy/v1`) the PodDisruptionBudget as `policy/v1beta1`. Then removed as "Uninstall" says,
/// so that the story goes on with the chart.
fn install_manifests(node: &Node) {
    let certs = TempDir::new("node-certs");
    let dir = certs.path().to_str().unwrap();
    let root = workspace_root();
    let script = r#"set -euo pipefail
certs/gen-dev-certs.sh mcp-guard-webhook mcp-guard "$1/certs" > "$1/ca-bundle"
certs/with-certs.sh "$1/certs" | sed 's|^apiVersion: policy/v1$|apiVersion: policy/v1beta1|' > "$1/mcp-guard.yaml"
"#;
    let out = mcp_guard_tests::run_bounded(
        "with-certs",
        std::process::Command::new("bash").current_dir(&root).args([
            "-c",
            script,
            "with-certs",
            dir,
        ]),
        Duration::from_secs(60),
    );
    assert!(out.success(), "certs/ tooling: {}", out.stderr);
    let manifest = certs.path().join("mcp-guard.yaml");
    let manifest = manifest.to_str().unwrap();
    let ca_bundle = std::fs::read_to_string(certs.path().join("ca-bundle")).unwrap();
    let text = std::fs::read_to_string(manifest).unwrap();
    assert_eq!(
        text.matches(ca_bundle.trim()).count(),
        3,
        "the generated CA is the Secret's ca.crt and both caBundles"
    );
    node.kubectl_ok(&["create", "namespace", GUARD_NS]);
    node.kubectl_ok(&["apply", "-f", manifest]);
    rollout(node, GUARD_NS, "mcp-guard-webhook");
    webhook_ready(node);
    // The API server reaches the webhook only through the generated CA: an opted-in pod is
    // injected, and runs.
    let ns = "mcp-manifests";
    let pod = opted_in_pod(node, ns, "injected");
    wait_webhook_injects(node, &pod);
    node.kubectl.apply(&pod);
    let pod = node.json(&["get", "pod", "injected", "-n", ns]);
    assert!(
        injected(&pod),
        "injected through the plain manifests' webhook: {pod}"
    );
    node.wait("the injected pod is Ready", ns, LONG, || {
        ready(&node.json(&["get", "pod", "injected", "-n", ns]))
    });

    // Uninstall: admission first, then the objects, the controller's Lease and what it made.
    node.kubectl_ok(&[
        "delete",
        "mutatingwebhookconfiguration,validatingwebhookconfiguration",
        "mcp-guard-webhook",
    ]);
    node.kubectl_ok(&["delete", "namespace", ns, "--wait=false"]);
    node.kubectl_ok(&[
        "delete",
        "-f",
        manifest,
        "--ignore-not-found",
        "--wait=true",
    ]);
    node.kubectl_ok(&[
        "delete",
        "lease",
        "-n",
        GUARD_NS,
        "mcp-guard-controller",
        "--ignore-not-found",
    ]);
    node.wait(
        "the manifests' webhook pods are gone",
        GUARD_NS,
        LONG,
        || {
            node.pods(GUARD_NS, "app.kubernetes.io/component=webhook")
                .is_empty()
        },
    );
}

fn install_chart(node: &Node) {
    let chart = workspace_root().join("charts/mcp-guard");
    let out = node.helm(&[
        "install",
        "mcp-guard",
        chart.to_str().unwrap(),
        "--namespace",
        GUARD_NS,
        "--create-namespace",
        "--wait",
        "--timeout",
        "280s",
    ]);
    assert!(
        out.success(),
        "helm install: {}\n{}\n{}",
        out.stdout,
        out.stderr,
        node.diagnostics(GUARD_NS)
    );
    webhook_ready(node);
}

/// Creates namespace `ns` and returns the manifest of pod `name` in it, opted in by its own
/// annotation.
fn opted_in_pod(node: &Node, ns: &str, name: &str) -> String {
    node.kubectl_ok(&["create", "namespace", ns]);
    example_pod(
        name,
        ns,
        &[
            ("mcp-guard.dev/inject", "enabled"),
            ("mcp-guard.dev/port", "mcp"),
        ],
    )
}

/// Polls a server-side dry run of creating `pod` (admission runs, nothing is stored) until the
/// webhook answers it with the sidecar: the Service's endpoints and kube-proxy's rules follow a
/// rollout by a moment, and with `failurePolicy: Fail` a pod created in that moment is refused.
fn wait_webhook_injects(node: &Node, pod: &str) {
    node.wait("the webhook injects a dry-run pod", GUARD_NS, LONG, || {
        let out = node
            .kubectl
            .run(&["create", "--dry-run=server", "-o", "json"], Some(pod));
        out.success()
            && serde_json::from_str::<Value>(&out.stdout)
                .is_ok_and(|p| container(&p, "mcp-guard").is_some())
    });
}

/// The webhook Deployment of either install path: both replicas Ready, its PodDisruptionBudget
/// stored, its own pods not injected, and its controller at work.
fn webhook_ready(node: &Node) {
    let deploy = node.json(&["get", "deployment", "mcp-guard-webhook", "-n", GUARD_NS]);
    assert_eq!(deploy["status"]["readyReplicas"], json!(2), "{deploy}");
    // The PodDisruptionBudget exists in the version this cluster serves (policy/v1beta1 on 1.20).
    node.kubectl_ok(&[
        "get",
        "poddisruptionbudget",
        "mcp-guard-webhook",
        "-n",
        GUARD_NS,
    ]);
    for pod in node.pods(GUARD_NS, "app.kubernetes.io/component=webhook") {
        assert_eq!(pod["spec"]["serviceAccountName"], "mcp-guard-webhook");
        assert!(
            container(&pod, "mcp-guard").is_none()
                && pod["spec"]["containers"].as_array().map(Vec::len) == Some(1),
            "the webhook's own pod was injected: {pod}"
        );
    }
    // The leader's controller, talking to the API server through the `kubernetes` Service with
    // its pod's ServiceAccount token, compiles the default policy and writes its status.
    node.wait(
        "the controller's status on the default policy",
        GUARD_NS,
        LONG,
        || {
            let cm = node.json(&["get", "configmap", "mcp-guard-policy", "-n", GUARD_NS]);
            cm["metadata"]["annotations"]["mcp-guard.dev/status"]
                .as_str()
                .and_then(|s| serde_json::from_str::<Value>(s).ok())
                .is_some_and(|s| s.to_string().contains("sha256:"))
        },
    );
}

fn unguarded_server(node: &Node) {
    node.kubectl.apply(&app_manifest());
    rollout(node, APP_NS, "tools");
    // A pod Ready is not yet a Service that routes to it: kube-proxy programs the new Service's
    // rules on its own schedule, and a client that comes first is refused a connection.
    node.wait(
        "every tool, without mcp-guard, through the new Service",
        APP_NS,
        LONG,
        || listed(node) == ALL_TOOLS,
    );
    let r = client(
        node,
        json!([
            {"op": "call", "name": HIDDEN, "args": {}},
            {"op": "call", "name": "echo", "args": {"text": "hi"}},
        ]),
    );
    assert!(
        r[0]["ok"] == true && r[0]["is_error"] == false,
        "without mcp-guard {HIDDEN} answers: {r:?}"
    );
    assert!(
        r[1]["ok"] == true && r[1]["text"].as_str().is_some_and(|t| t.contains("hi")),
        "{r:?}"
    );
}

fn opt_in(node: &Node, before: &[Value], issuer: &str) {
    let policy =
        std::fs::read_to_string(workspace_root().join("manifests/examples/policy.yaml")).unwrap();
    node.kubectl.apply(&policy);
    let service_before = node.json(&["get", "service", "tools", "-n", APP_NS])["spec"].clone();
    let without_sidecar = std::env::var("MCP_GUARD_NODE_E2E_WITHOUT_SIDECAR").as_deref() == Ok("1");
    let inject = if without_sidecar {
        "disabled"
    } else {
        "enabled"
    };
    let patch = json!({"spec": {"template": {"metadata": {"annotations": {
        "mcp-guard.dev/inject": inject,
        "mcp-guard.dev/policy": "mcp-tools-policy",
        "mcp-guard.dev/port": "mcp",
        "mcp-guard.dev/path": "/mcp",
        "mcp-guard.dev/issuer": issuer,
        "mcp-guard.dev/resource-uri": RESOURCE,
    }}}}});
    patch_and_roll_out(node, &patch);
    if without_sidecar {
        println!("node_e2e: MCP_GUARD_NODE_E2E_WITHOUT_SIDECAR=1: no sidecar; step 4 must fail");
        return;
    }
    wait_injected(node, before);
    let pods = live_pods(node);
    for pod in &pods {
        let sidecar = status(pod, "mcp-guard").unwrap();
        assert_eq!(
            sidecar["restartCount"],
            json!(0),
            "{}: the sidecar restarted: {sidecar}\n{}",
            name(pod),
            node.diagnostics(APP_NS)
        );
        assert_eq!(status(pod, "server").unwrap()["restartCount"], json!(0));
        // The server's container as the operator wrote it, but for what docs/annotations.md
        // says takeover changes: its port is renamed `mcp-upstream` and a probe that named the
        // port probes the number.
        let mut expected = container(&before[0], "server").unwrap().clone();
        expected["ports"][0]["name"] = json!("mcp-upstream");
        expected["readinessProbe"]["tcpSocket"]["port"] = json!(8080);
        assert_eq!(
            container(pod, "server").unwrap(),
            &expected,
            "the server's container changed beyond the documented takeover"
        );
    }
    let events = node.json(&["get", "events", "-n", APP_NS]);
    let failed: Vec<&Value> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["reason"] == "FailedPostStartHook" || e["reason"] == "BackOff")
        .collect();
    assert!(failed.is_empty(), "events of the rollout: {failed:?}");
    let service_after = node.json(&["get", "service", "tools", "-n", APP_NS])["spec"].clone();
    assert_eq!(service_before, service_after, "the Service is unchanged");
    // ...and its named targetPort now resolves to the sidecar's port.
    let endpoints = node.json(&["get", "endpoints", "tools", "-n", APP_NS]);
    let ports: Vec<&Value> = endpoints["subsets"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["ports"].as_array().unwrap().iter())
        .map(|p| &p["port"])
        .collect();
    assert!(
        !ports.is_empty() && ports.iter().all(|p| **p == json!(15001)),
        "the Service's endpoints are the sidecar's port: {endpoints}"
    );
}

/// Waits for two pods of the app, none of `before`, Ready with the sidecar.
fn wait_injected(node: &Node, before: &[Value]) {
    let old: Vec<String> = before.iter().map(name).collect();
    node.wait(
        "two new pods, Ready, with the sidecar",
        APP_NS,
        LONG,
        || {
            let pods = live_pods(node);
            pods.len() == 2
                && pods.iter().all(|p| {
                    !old.contains(&name(p)) && container(p, "mcp-guard").is_some() && ready(p)
                })
        },
    );
}

fn governed(node: &Node, caller: &Caller) {
    // The policy reaches the namespace through the controller and the pods through kubelet.
    node.wait(
        "the reader sees only echo through the Service",
        APP_NS,
        LONG,
        || listed_as(node, &caller.reader) == ["echo"],
    );
    assert_eq!(
        listed_as(node, &caller.admin),
        ALL_TOOLS,
        "the policy lets mcp-admin use every tool"
    );
    let url = service_url(node);
    let reader = format!("Bearer {}", caller.reader);
    let refused = caller.rt.block_on(post(
        &url,
        &call_body(7, HIDDEN, json!({})),
        &[("authorization", &reader)],
    ));
    assert_denied(refused.expect_response(&json!(7)), HIDDEN);
    let anonymous = caller
        .rt
        .block_on(post(&url, &call_body(8, HIDDEN, json!({})), &[]));
    assert_eq!(anonymous.status, 401, "no token: {}", anonymous.body);
    let header = format!("Authorization: Bearer {}", caller.reader);
    let answered = inspector_json(
        &url,
        "http",
        &[
            "--method",
            "tools/call",
            "--tool-name",
            "echo",
            "--tool-arg",
            "text=governed",
            "--header",
            &header,
        ],
    );
    assert!(
        answered.to_string().contains("governed"),
        "echo is answered: {answered}"
    );
    // The audit trail: the refused and the answered call are records on a sidecar's stdout,
    // naming the caller.
    let mut records = Vec::new();
    for pod in live_pods(node) {
        let logs = node.kubectl_ok(&["logs", &name(&pod), "-n", APP_NS, "-c", "mcp-guard"]);
        records.extend(
            logs.lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter(|v| v["schema"] == "mcp-guard.audit/v1"),
        );
    }
    let refused = records.iter().find(|v| {
        v["method"] == "tools/call" && v["target"] == HIDDEN && v["decision"]["allowed"] == false
    });
    let rec = refused.unwrap_or_else(|| panic!("no audit record of the refused call: {records:?}"));
    assert!(
        rec["subject"].to_string().contains("agent-reader"),
        "the caller: {rec}"
    );
    assert_eq!(rec["server"]["namespace"], APP_NS, "{rec}");
    assert!(
        rec["server"]["pod"]
            .as_str()
            .is_some_and(|p| p.starts_with("tools-")),
        "{rec}"
    );
    let answered = records.iter().find(|v| {
        v["method"] == "tools/call" && v["target"] == "echo" && v["decision"]["allowed"] == true
    });
    let rec =
        answered.unwrap_or_else(|| panic!("no audit record of the answered call: {records:?}"));
    assert!(
        rec["subject"].to_string().contains("agent-reader"),
        "the caller: {rec}"
    );
}

fn policy_edit(node: &Node, caller: &Caller) {
    let pods = live_pods(node);
    let hashes: Vec<Value> = pods
        .iter()
        .map(|p| policy_status(p)["hash"].clone())
        .collect();
    assert!(
        hashes
            .iter()
            .all(|h| h.as_str().is_some_and(|h| h.starts_with("sha256:"))),
        "each sidecar reports the policy in force: {hashes:?}"
    );
    let policy =
        std::fs::read_to_string(workspace_root().join("manifests/examples/policy.yaml")).unwrap();
    let edited = policy.replace(
        r#"{"public_tools": ["echo"]}"#,
        r#"{"public_tools": ["echo", "add"]}"#,
    );
    assert_ne!(
        policy, edited,
        "manifests/examples/policy.yaml changed shape"
    );
    node.kubectl.apply(&edited);
    node.wait(
        "each sidecar enforces the edited policy",
        APP_NS,
        LONG,
        || {
            pods.iter().zip(&hashes).all(|(p, old)| {
                policy_status(p)["hash"]
                    .as_str()
                    .is_some_and(|h| Some(h) != old.as_str())
            })
        },
    );
    node.wait(
        "the reader sees add through the Service",
        APP_NS,
        LONG,
        || listed_as(node, &caller.reader) == ["add", "echo"],
    );
    for pod in live_pods(node) {
        let names: Vec<String> = pods.iter().map(name).collect();
        assert!(
            names.contains(&name(&pod)),
            "no pod was replaced: {}",
            name(&pod)
        );
        assert_eq!(
            status(&pod, "mcp-guard").unwrap()["restartCount"],
            json!(0),
            "{pod}"
        );
    }
    // A broken edit never lands: the validating webhook answers `kubectl apply` with the
    // compiler's message.
    let broken = policy.replace(
        "default allow := false",
        "default allow := false\n    allow if {",
    );
    let out = node.kubectl.run(&["apply"], Some(&broken));
    assert!(
        !out.success(),
        "a policy that does not compile was accepted: {}",
        out.stdout
    );
    assert!(
        out.stderr.contains("policy.mcp-guard.dev") || out.stderr.contains("denied the request"),
        "refused by the validating webhook: {}",
        out.stderr
    );
}

/// A pod of the example server in `namespace` with the given annotations.
fn example_pod(name: &str, namespace: &str, annotations: &[(&str, &str)]) -> String {
    let ann: String = annotations
        .iter()
        .map(|(k, v)| format!("    {k}: \"{v}\"\n"))
        .collect();
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {namespace}
  annotations:
{ann}spec:
  securityContext:
    runAsNonRoot: true
    runAsUser: 1000
  containers:
    - name: server
      image: localhost/mcp-guard/example-server:{version}
      imagePullPolicy: Never
      args: ["--listen", "0.0.0.0:8080", "--stateless-json"]
      ports:
        - name: mcp
          containerPort: 8080
"#,
        version = app_version()
    )
}

fn opt_outs(node: &Node) {
    let ns = "mcp-optin";
    node.kubectl.apply(&format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n  annotations:\n    mcp-guard.dev/inject: enabled\n"
    ));
    node.kubectl.apply(&example_pod(
        "inherits",
        ns,
        &[("mcp-guard.dev/port", "mcp")],
    ));
    node.kubectl.apply(&example_pod(
        "opts-out",
        ns,
        &[
            ("mcp-guard.dev/inject", "disabled"),
            ("mcp-guard.dev/port", "mcp"),
        ],
    ));
    let inherits = node.json(&["get", "pod", "inherits", "-n", ns]);
    assert!(
        injected(&inherits),
        "the namespace's annotation injects: {inherits}"
    );
    let out = node.json(&["get", "pod", "opts-out", "-n", ns]);
    assert!(untouched(&out), "the pod's own `disabled` wins: {out}");
    node.wait("the namespace-injected pod is Ready", ns, LONG, || {
        ready(&node.json(&["get", "pod", "inherits", "-n", ns]))
    });

    // The Deployment opts out again: the next rollout's pods have no sidecar.
    let patch = json!({"spec": {"template": {"metadata": {"annotations": {
        "mcp-guard.dev/inject": "disabled",
    }}}}});
    patch_and_roll_out(node, &patch);
    node.wait("two pods without the sidecar", APP_NS, LONG, || {
        let pods = live_pods(node);
        pods.len() == 2
            && pods
                .iter()
                .all(|p| container(p, "mcp-guard").is_none() && ready(p))
    });
    node.wait("every tool listed again, ungoverned", APP_NS, LONG, || {
        listed(node) == ALL_TOOLS
    });
    node.kubectl_ok(&["delete", "namespace", ns, "--wait=false"]);
}

fn job(node: &Node) {
    let manifest = format!(
        r#"apiVersion: batch/v1
kind: Job
metadata:
  name: report
  namespace: {APP_NS}
spec:
  backoffLimit: 0
  template:
    metadata:
      annotations:
        mcp-guard.dev/inject: enabled
        mcp-guard.dev/shutdown-on-exit: enabled
        mcp-guard.dev/port: mcp
    spec:
      restartPolicy: Never
      securityContext:
        runAsNonRoot: true
        runAsUser: 1000
      containers:
        - name: server
          image: localhost/mcp-guard/example-server:{version}
          imagePullPolicy: Never
          command: ["/usr/local/bin/mcp-guard-example-server"]
          args: ["--version"]
          ports:
            - name: mcp
              containerPort: 8080
"#,
        version = app_version()
    );
    node.kubectl.apply(&manifest);
    node.wait("the Job completes", APP_NS, LONG, || {
        node.json(&["get", "job", "report", "-n", APP_NS])["status"]["succeeded"] == json!(1)
    });
    let pods = node.pods(APP_NS, "job-name=report");
    assert_eq!(pods.len(), 1, "one pod, never retried: {pods:?}");
    let pod = &pods[0];
    assert_eq!(pod["status"]["phase"], "Succeeded", "{pod}");
    assert!(
        container(pod, "mcp-guard").is_some(),
        "the Job's pod was injected: {pod}"
    );
    for c in pod["status"]["containerStatuses"].as_array().unwrap() {
        assert!(
            c["state"]["terminated"].is_object() && c["restartCount"] == json!(0),
            "every container ended, none restarted: {c}"
        );
        assert_eq!(c["state"]["terminated"]["exitCode"], json!(0), "{c}");
    }
}

/// The sum of the sidecar's `mcp_guard_requests_total` for `method` (admin port `/metrics`).
fn requests_seen(ip: &str, method: &str) -> f64 {
    let addr: SocketAddr = format!("{ip}:15020").parse().unwrap();
    let prefix = format!("mcp_guard_requests_total{{method=\"{method}\"");
    match http_blocking(addr, "GET", "/metrics", Duration::from_secs(10)) {
        Ok((200, body)) => body
            .lines()
            .filter(|l| l.starts_with(&prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum(),
        _ => 0.0,
    }
}

fn delete_under_traffic(node: &Node, caller: &Caller) {
    // Step 6 opted the Deployment out; the operator opts it in again.
    let before = live_pods(node);
    let patch = json!({"spec": {"template": {"metadata": {"annotations": {
        "mcp-guard.dev/inject": "enabled",
    }}}}});
    patch_and_roll_out(node, &patch);
    wait_injected(node, &before);
    let pod = live_pods(node).remove(0);
    let pod_name = name(&pod);
    let ip = pod["status"]["podIP"].as_str().unwrap().to_owned();
    // The client goes where the Service sends it: this pod's sidecar port is an endpoint.
    let endpoints = node.json(&["get", "endpoints", "tools", "-n", APP_NS]);
    assert!(
        endpoints["subsets"].as_array().unwrap().iter().any(|s| {
            s["addresses"]
                .as_array()
                .is_some_and(|a| a.iter().any(|a| a["ip"] == ip.as_str()))
                && s["ports"][0]["port"] == json!(15001)
        }),
        "{ip}:15001 is an endpoint of the Service: {endpoints}"
    );
    let url = format!("http://{ip}:15001/mcp");
    let text: String = (0..4096).map(|i| format!("{:015} ", i)).collect();
    let args = json!({"text": text, "seconds": 8}).to_string();
    let header = format!("Authorization: Bearer {}", caller.admin);
    let lists = requests_seen(&ip, "tools/list");
    let call = std::thread::spawn(move || {
        inspector(
            &url,
            "http",
            &[
                "--method",
                "tools/call",
                "--tool-name",
                "slow_echo",
                "--tool-args-json",
                &args,
                "--header",
                &header,
            ],
        )
    });
    // The Inspector lists the tools right before it calls one: once the list is answered, the
    // call is on its way; a moment later it is in flight at the server.
    node.wait(
        "the client's tools/list reaches the pod",
        APP_NS,
        LONG,
        || requests_seen(&ip, "tools/list") > lists,
    );
    std::thread::sleep(Duration::from_secs(1));
    let mut watch = mcp_guard_tests::Proc::spawn(
        "kubectl-watch",
        std::process::Command::new(&node.kubectl.bin)
            .arg(format!(
                "--kubeconfig={}",
                node.kubectl.kubeconfig.display()
            ))
            .args(["get", "pod", &pod_name, "-n", APP_NS, "-w", "-o", "json"])
            .arg("--output-watch-events"),
    );
    node.kubectl_ok(&["delete", "pod", &pod_name, "-n", APP_NS, "--wait=false"]);

    let out = call.join().unwrap();
    assert!(
        out.success(),
        "the call in flight while its pod was deleted failed ({:?}):\nstdout: {}\nstderr: {}",
        out.status,
        mcp_guard_tests::tail(&out.stdout, 2000),
        out.stderr
    );
    let answer: Value = serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "the answer is not whole JSON ({e}): {}",
            mcp_guard_tests::tail(&out.stdout, 2000)
        )
    });
    assert_ne!(answer["isError"], json!(true), "{answer}");
    assert!(
        answer["content"][0]["text"] == json!(text),
        "the answer arrived complete ({} bytes sent back of {}): {}",
        answer["content"][0]["text"].as_str().map_or(0, str::len),
        text.len(),
        mcp_guard_tests::tail(&answer.to_string(), 500)
    );

    // The states the kubelet stored for the pod until it was gone: every container that was
    // seen terminated ended by itself, with exit code 0 (one killed at the end of the grace
    // period shows 137). The kubelet may coalesce that state away and report last only that
    // the removed containers "could not be located"; that synthesized state says nothing.
    let mut events = Vec::new();
    node.wait("the deleted pod is gone", APP_NS, LONG, || {
        events = serde_json::Deserializer::from_str(&watch.stdout())
            .into_iter::<Value>()
            .map_while(Result::ok)
            .collect();
        events.iter().any(|e| e["type"] == "DELETED")
    });
    watch.kill();
    let mut seen = std::collections::BTreeMap::new();
    for e in &events {
        for c in e["object"]["status"]["containerStatuses"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let t = &c["state"]["terminated"];
            if t.is_object() && t["reason"] != "ContainerStatusUnknown" {
                seen.entry(c["name"].as_str().unwrap_or_default().to_owned())
                    .or_insert_with(|| t.clone());
            }
        }
    }
    for (container, t) in &seen {
        assert_eq!(
            t["exitCode"],
            json!(0),
            "{container} ended by itself on SIGTERM (exit code 0, not killed): {t}"
        );
    }
    let codes: Vec<String> = seen
        .iter()
        .map(|(c, t)| format!("{c} exit {}", t["exitCode"]))
        .collect();
    println!(
        "node_e2e: the deleted pod's containers seen terminated: {}",
        codes.join(", ")
    );
    // The ReplicaSet replaces the pod, injected.
    node.wait(
        "two pods Ready with the sidecar again",
        APP_NS,
        LONG,
        || {
            let pods = live_pods(node);
            pods.len() == 2
                && pods
                    .iter()
                    .all(|p| container(p, "mcp-guard").is_some() && ready(p))
        },
    );
}

/// Sets the mutating webhook's failurePolicy, as an operator (or the chart's
/// `mutating.failurePolicy`) does.
fn set_failure_policy(node: &Node, policy: &str) {
    let patch = json!([{"op": "replace", "path": "/webhooks/0/failurePolicy", "value": policy}]);
    node.kubectl_ok(&[
        "patch",
        "mutatingwebhookconfiguration",
        "mcp-guard-webhook",
        "--type=json",
        "-p",
        &patch.to_string(),
    ]);
}

fn scale_webhook(node: &Node, replicas: u32) {
    node.kubectl_ok(&[
        "scale",
        "deployment",
        "mcp-guard-webhook",
        "-n",
        GUARD_NS,
        &format!("--replicas={replicas}"),
    ]);
}

fn webhook_down(node: &Node) {
    let ns = "mcp-outage";
    let pod = opted_in_pod(node, ns, "opted-in");
    scale_webhook(node, 0);
    node.wait("no webhook pod left", GUARD_NS, LONG, || {
        node.pods(GUARD_NS, "app.kubernetes.io/component=webhook")
            .is_empty()
    });

    // failurePolicy Fail (the chart's default): refused, and the message says by what.
    let out = node.kubectl.run(&["create"], Some(&pod));
    assert!(
        !out.success(),
        "an opted-in pod was admitted with no webhook running and failurePolicy Fail: {}",
        out.stdout
    );
    assert!(
        out.stderr
            .contains(r#"failed calling webhook "inject.mcp-guard.dev""#),
        "the refusal names the webhook: {}",
        out.stderr
    );
    assert!(
        node.kubectl(&["get", "pod", "opted-in", "-n", ns])
            .stderr
            .contains("NotFound"),
        "the refused pod is not stored"
    );

    // failurePolicy Ignore: admitted as it is, without the sidecar.
    set_failure_policy(node, "Ignore");
    node.kubectl.apply(&pod);
    let stored = node.json(&["get", "pod", "opted-in", "-n", ns]);
    assert!(
        untouched(&stored),
        "with Ignore the pod is admitted uninjected: {stored}"
    );

    // Scaled back, with Fail again: the same pod (by another name, the first one may still be
    // terminating) is created, injected.
    set_failure_policy(node, "Fail");
    scale_webhook(node, 2);
    rollout(node, GUARD_NS, "mcp-guard-webhook");
    let again = pod.replace("name: opted-in\n", "name: opted-in-again\n");
    assert_ne!(pod, again);
    wait_webhook_injects(node, &again);
    node.kubectl.apply(&again);
    let stored = node.json(&["get", "pod", "opted-in-again", "-n", ns]);
    assert!(
        injected(&stored),
        "scaled back, injection resumes: {stored}"
    );
    node.kubectl_ok(&["delete", "namespace", ns, "--wait=false"]);
}

/// The example server, the pods' MCP server, drains on SIGTERM (what the kubelet sends when a
/// pod is deleted): the call it is answering gets its whole answer, new connections are refused,
/// and it exits 0. Step 8 shows the same in a pod, behind the sidecar; this shows it without a
/// node, so it runs wherever the suite does.
#[test]
fn example_server_drains_on_sigterm() {
    use std::io::{Read, Write};

    let port = mcp_guard_tests::free_port();
    let mut server = mcp_guard_tests::Proc::spawn(
        "mcp-guard-example-server",
        std::process::Command::new(mcp_guard_tests::example_server_bin()).args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--stateless-json",
        ]),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !mcp_guard_tests::port_open(port) {
        assert!(
            server.try_status().is_none() && Instant::now() < deadline,
            "the example server did not listen\n{}",
            server.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let text: String = (0..4096).map(|i| format!("{i:015} ")).collect();
    let body = mcp_guard_tests::with_meta_2026(call_body(
        1,
        "slow_echo",
        json!({"text": text, "seconds": 2}),
    ))
    .to_string();
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    write!(
        conn,
        "POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n\
         Accept: application/json, text/event-stream\r\nMcp-Method: tools/call\r\n\
         Mcp-Name: slow_echo\r\nMCP-Protocol-Version: {}\r\nConnection: close\r\n\
         Content-Length: {}\r\n\r\n{body}",
        mcp_guard_tests::PROTOCOL_2026,
        body.len()
    )
    .unwrap();
    // A loopback request is read at once; the call then waits its two seconds.
    std::thread::sleep(Duration::from_millis(300));
    server.signal("TERM");
    let mut answer = Vec::new();
    conn.read_to_end(&mut answer).unwrap();
    let answer = String::from_utf8_lossy(&answer);
    let (head, raw_body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let json_body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(raw_body)
    } else {
        raw_body.to_owned()
    };
    let doc: Value = serde_json::from_str(json_body.trim()).unwrap_or_else(|e| {
        panic!(
            "not one whole JSON answer ({e}): {}",
            mcp_guard_tests::tail(&json_body, 500)
        )
    });
    assert_eq!(
        doc["result"]["content"][0]["text"],
        json!(text),
        "the call in flight at SIGTERM is answered in full"
    );
    let status = server.wait_exit(Duration::from_secs(60));
    assert!(
        status.is_some_and(|s| s.success()),
        "the example server exits 0 after draining: {status:?}\n{}",
        server.logs()
    );
    assert!(
        !mcp_guard_tests::port_open(port),
        "nothing listens after the drain"
    );
}

/// The payload of an HTTP/1.1 chunked body; panics when the framing is cut short.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").unwrap_or_else(|| {
            panic!(
                "chunked body cut short: {}",
                mcp_guard_tests::tail(body, 200)
            )
        });
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
            .unwrap_or_else(|e| panic!("bad chunk size {size:?}: {e}"));
        if size == 0 {
            return out;
        }
        assert!(rest.len() >= size + 2, "chunk cut short");
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
}

/// Step 10: sidecar settings at their three levels, as an operator sets them. Values (`helm
/// upgrade`): spans go to an OTLP receiver on the node's gateway, locked. The namespace: every
/// token needs `mcp:admin`. The pod: the identity reaches the server as a JWT minted with a key
/// from a Secret (`mint-key-secret`), under the key id the pod names.
fn settings(node: &Node, caller: &Caller) {
    let receiver = Receiver::start_on_host(node.var("GATEWAY"));
    let endpoint = format!("http://{}:{}", node.var("GATEWAY"), receiver.port);
    let chart = workspace_root().join("charts/mcp-guard");
    let out = node.helm(&[
        "upgrade",
        "mcp-guard",
        chart.to_str().unwrap(),
        "--namespace",
        GUARD_NS,
        "--reuse-values",
        "--set",
        &format!("sidecar.settings.otel-endpoint={endpoint}"),
        "--set",
        "sidecar.locked={otel-endpoint}",
        "--wait",
        "--timeout",
        "280s",
    ]);
    assert!(
        out.success(),
        "helm upgrade: {}\n{}",
        out.stdout,
        out.stderr
    );
    webhook_ready(node);

    node.kubectl_ok(&[
        "annotate",
        "namespace",
        APP_NS,
        "--overwrite",
        "mcp-guard.dev/required-scopes=mcp:admin",
    ]);
    let key = std::fs::read_to_string(workspace_root().join("sidecar/tests/fixtures/auth/ec1.pem"))
        .unwrap();
    let secret = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "tools-minting", "namespace": APP_NS},
        "stringData": {"key.pem": key},
    });
    node.kubectl.apply(&secret.to_string());
    let before = live_pods(node);
    let patch = json!({"spec": {"template": {"metadata": {"annotations": {
        "mcp-guard.dev/identity-passthrough": "jwt",
        "mcp-guard.dev/mint-key-secret": "tools-minting",
        "mcp-guard.dev/mint-key-id": "node-mint-1",
    }}}}});
    patch_and_roll_out(node, &patch);
    wait_injected(node, &before);

    // No secret in what the cluster stored or what the sidecar printed.
    let key_line = key.lines().nth(1).unwrap();
    for pod in live_pods(node) {
        let stored = pod.to_string();
        assert!(!stored.contains(key_line), "the key is in the pod spec");
        let logs = node.kubectl_ok(&["logs", "-n", APP_NS, &name(&pod), "-c", "mcp-guard"]);
        for secret in [key_line, caller.admin.as_str(), caller.reader.as_str()] {
            assert!(!logs.contains(secret), "a secret in the sidecar's log");
        }
        // The pod's key id, and the Secret's key behind it (the sidecar would not start in jwt
        // mode without it): the admin port's JWKS.
        let ip = pod["status"]["podIP"].as_str().unwrap();
        let addr: SocketAddr = format!("{ip}:15020").parse().unwrap();
        let (status, body) = http_blocking(
            addr,
            "GET",
            "/.well-known/jwks.json",
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(status, 200, "{body}");
        let jwks: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(jwks["keys"][0]["kid"], "node-mint-1", "{jwks}");
        assert_eq!(jwks["keys"][0]["crv"], "P-256", "{jwks}");
    }

    // The namespace's scope: the reader's token (mcp:tools) is refused, the admin's passes.
    let url = service_url(node);
    let (status, challenge) = caller.rt.block_on(probe(
        &url,
        &[("authorization", &format!("Bearer {}", caller.reader))],
    ));
    assert_eq!(status, 403, "{challenge}");
    assert!(challenge.contains("insufficient_scope"), "{challenge}");
    let admin_sees = listed_as(node, &caller.admin);
    assert!(
        admin_sees.iter().any(|t| t == "echo"),
        "the admin's token carries the scope: {admin_sees:?}"
    );

    // Values: the calls' spans reach the receiver on the gateway, from this namespace's pods.
    node.wait("spans from the injected pods", APP_NS, LONG, || {
        receiver.spans().iter().any(|s| {
            s["resource"]["attributes"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|a| a["key"] == "k8s.namespace.name" && a["value"]["stringValue"] == APP_NS)
        })
    });
}

/// The `GET /fleet` of the webhook's Service as a user reaches it: the Service's name (the
/// certificate's) resolved to its ClusterIP, the CA of the webhook configuration, the admin's
/// bearer token. The JSON, or `Null` when it did not answer 200.
struct FleetClient {
    dir: TempDir,
    url: String,
    resolve: String,
}

impl FleetClient {
    fn new(node: &Node) -> FleetClient {
        let dir = TempDir::new("node-fleet");
        let ca = node.kubectl_ok(&[
            "get",
            "mutatingwebhookconfiguration",
            "mcp-guard-webhook",
            "-o",
            "go-template={{(index .webhooks 0).clientConfig.caBundle | base64decode}}",
        ]);
        std::fs::write(dir.path().join("ca.crt"), ca).unwrap();
        let token = node.kubectl_ok(&[
            "config",
            "view",
            "--raw",
            "--minify",
            "-o",
            "jsonpath={.users[0].user.token}",
        ]);
        assert!(!token.trim().is_empty(), "the admin kubeconfig has a token");
        std::fs::write(
            dir.path().join("auth"),
            format!("Authorization: Bearer {}\n", token.trim()),
        )
        .unwrap();
        let host = format!("mcp-guard-webhook.{GUARD_NS}.svc");
        FleetClient {
            resolve: format!(
                "{host}:443:{}",
                node.cluster_ip(GUARD_NS, "mcp-guard-webhook")
            ),
            url: format!("https://{host}/fleet"),
            dir,
        }
    }

    fn get(&self) -> Value {
        let out = mcp_guard_tests::run_bounded(
            "curl",
            std::process::Command::new("curl")
                .args([
                    "-sS",
                    "--max-time",
                    "30",
                    "-w",
                    "\n%{http_code}",
                    "--resolve",
                ])
                .arg(&self.resolve)
                .arg("--cacert")
                .arg(self.dir.path().join("ca.crt"))
                .arg("-H")
                .arg(format!("@{}", self.dir.path().join("auth").display()))
                .arg(&self.url),
            Duration::from_secs(40),
        );
        match out.stdout.rsplit_once('\n') {
            Some((body, "200")) => serde_json::from_str(body).unwrap_or(Value::Null),
            _ => Value::Null,
        }
    }
}

/// The fleet's rows by `namespace/pod`.
fn rows(list: &Value) -> std::collections::BTreeMap<String, Value> {
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            (
                format!(
                    "{}/{}",
                    r["namespace"].as_str().unwrap_or_default(),
                    r["pod"].as_str().unwrap_or_default()
                ),
                r.clone(),
            )
        })
        .collect()
}

/// The pods the API server has that the webhook injected and that are not being deleted, by
/// `namespace/pod`.
fn injected_pods(node: &Node) -> std::collections::BTreeMap<String, Value> {
    node.json(&[
        "get",
        "pods",
        "--all-namespaces",
        "-l",
        "mcp-guard.dev/injected=true",
    ])["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .map(|p| {
            (
                format!(
                    "{}/{}",
                    p["metadata"]["namespace"].as_str().unwrap_or_default(),
                    name(p)
                ),
                p.clone(),
            )
        })
        .collect()
}

/// The hash the controller distributed for `policy` into `namespace` (its mirror's annotation).
fn distributed(node: &Node, namespace: &str, policy: &str) -> String {
    node.kubectl_ok(&[
        "get",
        "configmap",
        policy,
        "-n",
        namespace,
        "-o",
        "jsonpath={.metadata.annotations.mcp-guard\\.dev/hash}",
    ])
    .trim()
    .to_owned()
}

/// A running, Ready pod's sidecar: its own `/policy` hash, read from the pod IP.
fn enforced(pod: &Value) -> Option<String> {
    policy_status(pod)["hash"].as_str().map(str::to_owned)
}

/// The row of `pod` says what the cluster says: the workload, the server admission labelled it
/// with, the sidecar version, the images, the policy ConfigMap its volume mounts and the hash
/// distributed for it; for a Ready pod, the hash its sidecar reports on its own admin port.
fn assert_row_matches(node: &Node, pod: &Value, row: &Value) {
    let key = format!("{}/{}", pod["metadata"]["namespace"], name(pod));
    let ns = pod["metadata"]["namespace"].as_str().unwrap();
    let policy = pod["spec"]["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == "mcp-guard-policy")
        .and_then(|v| v["configMap"]["name"].as_str())
        .unwrap_or_else(|| panic!("{key}: no policy volume"));
    assert_eq!(row["policy"], policy, "{key}: {row}");
    assert_eq!(
        row["distributedHash"],
        distributed(node, ns, policy),
        "{key}: {row}"
    );
    let owner = &pod["metadata"]["ownerReferences"][0];
    let workload = owner["kind"]
        .as_str()
        .map(|k| format!("{k}/{}", owner["name"].as_str().unwrap_or_default()));
    assert_eq!(
        row["workload"].as_str(),
        workload.as_deref(),
        "{key}: {row}"
    );
    assert_eq!(
        row["server"], pod["metadata"]["labels"]["mcp-guard.dev/approved-server"],
        "{key}: {row}"
    );
    let status: Value = pod["metadata"]["annotations"]["mcp-guard.dev/status"]
        .as_str()
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or(Value::Null);
    assert_eq!(row["sidecarVersion"], status["version"], "{key}: {row}");
    // The pod's own images: containers, then init containers, without those mcp-guard added.
    let ours = ["mcp-guard", "mcp-guard-redirect", "mcp-guard-copy-binary"];
    let mut images: Vec<&Value> = Vec::new();
    for c in ["containers", "initContainers"]
        .iter()
        .flat_map(|k| pod["spec"][k].as_array().into_iter().flatten())
        .filter(|c| !ours.iter().any(|o| c["name"] == *o))
    {
        if !images.contains(&&c["image"]) {
            images.push(&c["image"]);
        }
    }
    assert_eq!(
        row["images"]
            .as_array()
            .map(|a| a.iter().collect::<Vec<_>>()),
        Some(images),
        "{key}: {row}"
    );
    if pod["status"]["phase"] == "Running" && ready(pod) {
        assert!(row["error"].is_null(), "{key}: {row}");
        assert_eq!(
            row["policyHash"].as_str(),
            enforced(pod).as_deref(),
            "{key}: the hash its sidecar reports: {row}"
        );
        assert!(row["requests"].is_u64(), "{key}: {row}");
    }
}

/// How long the kubelet may stay paused: well within the node controller's grace period.
const PAUSED: Duration = Duration::from_secs(30);

/// Step 11: the fleet view, on what the story left (the app's two pods, the Job's finished pod)
/// and a server of its own: approved in its namespace with a pin its `echo` does not match, and
/// a policy source of its own.
fn fleet(node: &Node) {
    let ns = "mcp-fleet";
    node.kubectl_ok(&["create", "namespace", ns]);
    let pin = format!("sha256:{}", "0".repeat(64));
    node.kubectl.apply(
        &json!({
            "apiVersion": "mcp-guard.dev/v1alpha1", "kind": "ApprovedServer",
            "metadata": {"name": "fleet-example"},
            "spec": {"name": "io.example/fleet-example", "owner": "team-fleet",
                "images": [{"repository": "localhost/mcp-guard/example-server"}],
                "namespaces": [ns],
                "tools": [{"name": "echo", "hash": pin}]},
        })
        .to_string(),
    );
    let source = |tools: &str| {
        json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "fleet-policy", "namespace": GUARD_NS,
                "labels": {"mcp-guard.dev/policy": "true"}},
            "data": {"authz.rego": format!(
                "package mcp.authz\n\nimport rego.v1\n\ndefault allow := false\n\nallow if input.request.tool in {tools}\n")},
        })
        .to_string()
    };
    node.kubectl.apply(&source(r#"{"echo"}"#));
    let pod = example_pod(
        "pinned",
        ns,
        &[
            ("mcp-guard.dev/inject", "enabled"),
            ("mcp-guard.dev/port", "mcp"),
            ("mcp-guard.dev/policy", "fleet-policy"),
        ],
    );
    // The catalog reaches the webhook's watch a moment after the apply: until the dry run is
    // labelled with the entry, a pod would be admitted as unapproved.
    node.wait(
        "admission labels the pod as the approved server",
        ns,
        LONG,
        || {
            let out = node
                .kubectl
                .run(&["create", "--dry-run=server", "-o", "json"], Some(&pod));
            out.success()
                && serde_json::from_str::<Value>(&out.stdout).is_ok_and(|p| {
                    p["metadata"]["labels"]["mcp-guard.dev/approved-server"] == "fleet-example"
                })
        },
    );
    node.kubectl.apply(&pod);
    node.wait("the pinned server's pod is Ready", ns, LONG, || {
        ready(&node.json(&["get", "pod", "pinned", "-n", ns]))
    });
    let key = format!("{ns}/pinned");

    // Every injected pod the API server has, and nothing else, each row what the cluster says.
    let client = FleetClient::new(node);
    let mut last = Value::Null;
    node.wait(
        "the fleet lists every injected pod, observed",
        ns,
        LONG,
        || {
            last = client.get();
            let rows = rows(&last);
            let pods = injected_pods(node);
            rows.keys().eq(pods.keys())
                && pods.iter().all(|(k, p)| {
                    !(p["status"]["phase"] == "Running" && ready(p))
                        || rows[k]["policyHash"].is_string()
                })
                && rows.get(&key).is_some_and(|r| r["changedTools"].is_array())
        },
    );
    let pods = injected_pods(node);
    let fleet = rows(&last);
    assert!(
        pods.keys()
            .any(|k| k.starts_with(&format!("{APP_NS}/tools-")))
            && pods.contains_key(&key),
        "the app's pods and the pinned pod are injected: {:?}",
        pods.keys()
    );
    for (k, pod) in &pods {
        assert_row_matches(node, pod, &fleet[k]);
        if pod["status"]["phase"] == "Running" && ready(pod) {
            assert_eq!(fleet[k]["drift"], false, "{k}: {}", fleet[k]);
        }
    }
    let pinned = &fleet[&key];
    assert_eq!(pinned["server"], "fleet-example", "{pinned}");
    // The pins of record name `echo` alone, with a hash its definition does not have: `echo`
    // differs from its pin and every other tool of the server is unpinned, so each counts as
    // changed (docs/registry.md "Pinned tool definitions").
    assert_eq!(
        pinned["changedTools"],
        json!([
            "add",
            "delete_everything",
            "echo",
            "get_weather",
            "slow_echo"
        ]),
        "pin drift: {pinned}"
    );
    for (k, row) in fleet.iter().filter(|(k, _)| **k != key) {
        assert!(row["changedTools"].is_null(), "{k}: no pin drift: {row}");
    }
    println!(
        "node_e2e: the fleet lists {} injected pods: {:?}",
        fleet.len(),
        fleet.keys()
    );

    // A node that lags behind: the kubelet paused, the pinned server's policy edited. The
    // controller distributes the new bundle into the namespace; the pod's volume, which only the
    // kubelet updates, keeps the old one: that pod drifts, the others do not.
    let before = distributed(node, ns, "fleet-policy");
    let enforced_before = enforced(&node.json(&["get", "pod", "pinned", "-n", ns]));
    assert_eq!(enforced_before.as_deref(), Some(before.as_str()));
    {
        let _paused = node.pause("kubelet");
        node.kubectl.apply(&source(r#"{"echo", "add"}"#));
        let mut stale = Value::Null;
        // Within the node controller's grace period (40 s), before the paused kubelet would
        // make the node, and the webhook's endpoints behind the Service, NotReady.
        node.wait("the stale pod's drift in the fleet", ns, PAUSED, || {
            stale = client.get();
            rows(&stale)
                .get(&key)
                .is_some_and(|r| r["distributedHash"].as_str().is_some_and(|h| h != before))
        });
        let rows_now = rows(&stale);
        let row = &rows_now[&key];
        assert_eq!(
            row["distributedHash"],
            distributed(node, ns, "fleet-policy"),
            "{row}"
        );
        assert_eq!(
            row["policyHash"], before,
            "the sidecar still enforces the old bundle: {row}"
        );
        assert_eq!(row["drift"], true, "{row}");
        for (k, r) in rows_now.iter().filter(|(k, _)| **k != key) {
            let p = &pods[k];
            if p["status"]["phase"] == "Running" && ready(p) {
                assert_eq!(r["drift"], false, "{k}: {r}");
            }
        }
    }
    // The kubelet again: the volume follows, the sidecar loads it, the drift goes.
    node.wait(
        "the drift goes once the kubelet catches up",
        ns,
        LONG,
        || {
            rows(&client.get())
                .get(&key)
                .is_some_and(|r| r["drift"] == false && r["policyHash"] == r["distributedHash"])
        },
    );
}
