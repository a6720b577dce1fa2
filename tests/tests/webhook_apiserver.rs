//! The webhook on the real admission path: a kube-apiserver (v1.20 built from Debian's source,
//! `tests/scripts/install-kube.sh`) with etcd, the webhook registered by a
//! MutatingWebhookConfiguration (`clientConfig.url` + `caBundle`), pods created with `kubectl`.
//! No kubelet runs, so pods are stored, never started: these tests are about admission.
//!
//! The API server is 1.20, so the webhook reads `/version` and injects the regular-container
//! form (native sidecars need 1.29; that form is checked against the 1.29+ schemas by the golden
//! tests with kubernetes-validate).
#![allow(clippy::unwrap_used, clippy::expect_used)]
// A std Mutex only serializes these blocking tests; no async runtime is involved.
#![allow(clippy::disallowed_types)]

use std::sync::Mutex;
use std::time::Duration;

use mcp_guard_tests::apiserver::{ApiServer, Webhook, curl, mutating_webhook_config, wait_until};
use serde_json::Value;

/// One control plane at a time: each is ~360 MB and busy for seconds on a 2-core machine.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn pod(name: &str, namespace: &str, annotations: &[(&str, &str)]) -> String {
    let ann = if annotations.is_empty() {
        String::new()
    } else {
        let lines: Vec<String> = annotations
            .iter()
            .map(|(k, v)| format!("    {k}: \"{v}\"\n"))
            .collect();
        format!("  annotations:\n{}", lines.concat())
    };
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {namespace}\n  labels:\n    app: {name}\n{ann}spec:\n  containers:\n  - name: server\n    image: example.com/mcp-server:1.0\n    ports:\n    - name: http\n      containerPort: 8080\n    readinessProbe:\n      httpGet:\n        path: /healthz\n        port: http\n"
    )
}

fn namespace(name: &str, annotations: &[(&str, &str)]) -> String {
    let ann: String = annotations
        .iter()
        .map(|(k, v)| format!("    {k}: \"{v}\"\n"))
        .collect();
    if ann.is_empty() {
        format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n")
    } else {
        format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n  annotations:\n{ann}")
    }
}

fn container_names(pod: &Value, field: &str) -> Vec<String> {
    pod["spec"][field]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| c["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn is_injected(pod: &Value) -> bool {
    pod["metadata"]["annotations"]["mcp-guard.dev/status"].is_string()
}

/// Registers the webhook and waits until the API server calls it (a server-side dry run of an
/// annotated pod comes back injected).
fn register(api: &ApiServer, url: &str, failure_policy: &str) {
    api.apply(&mutating_webhook_config(
        "mcp-guard",
        url,
        &api.ca.ca_pem(),
        failure_policy,
    ));
    let probe = pod("probe", "default", &[("mcp-guard.dev/inject", "enabled")]);
    wait_until(Duration::from_secs(30), || {
        let out = api.kubectl(&["create", "--dry-run=server", "-o", "json"], Some(&probe));
        Ok(out.success()
            && serde_json::from_str::<Value>(&out.stdout)
                .map(|p| is_injected(&p))
                .unwrap_or(false))
    })
    .expect("the API server never called the webhook");
}

fn start() -> (ApiServer, Webhook) {
    let api = ApiServer::start();
    let webhook = Webhook::start(&api, &[]);
    (api, webhook)
}

#[test]
fn annotated_pod_is_stored_injected_and_plain_pod_untouched() {
    let _g = serial();
    let (api, webhook) = start();
    register(&api, &webhook.mutate_url(), "Fail");

    api.apply(&namespace("apps", &[]));
    api.apply(&pod(
        "annotated",
        "apps",
        &[("mcp-guard.dev/inject", "enabled")],
    ));
    api.apply(&pod("plain", "apps", &[]));

    let injected = api.get_json("pod", "apps", "annotated");
    assert!(
        is_injected(&injected),
        "annotated pod not injected: {injected:#}"
    );
    // 1.20: no native sidecars, so the sidecar is the first regular container.
    assert_eq!(
        container_names(&injected, "containers"),
        ["mcp-guard", "server"],
        "{injected:#}"
    );
    let sidecar = &injected["spec"]["containers"][0];
    assert_eq!(
        sidecar["ports"][0]["name"], "http",
        "the sidecar takes the port's name"
    );
    assert_eq!(sidecar["ports"][0]["containerPort"], 15001);
    assert!(sidecar["lifecycle"]["postStart"]["exec"].is_object());
    let app = &injected["spec"]["containers"][1];
    assert_eq!(app["ports"][0]["name"], "mcp-upstream");
    assert_eq!(
        app["readinessProbe"]["httpGet"]["port"], 8080,
        "probe by name rewritten to the number"
    );
    assert_eq!(
        injected["metadata"]["labels"]["mcp-guard.dev/injected"],
        "true"
    );
    assert_eq!(
        injected["metadata"]["labels"]["mcp-guard.dev/traffic"],
        "takeover"
    );
    let volume = injected["spec"]["volumes"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["name"] == "mcp-guard-policy"))
        .cloned()
        .expect("policy volume");
    assert_eq!(volume["configMap"]["optional"], true);
    let status: Value = serde_json::from_str(
        injected["metadata"]["annotations"]["mcp-guard.dev/status"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(status["sidecar"], "regular");

    let plain = api.get_json("pod", "apps", "plain");
    assert!(!is_injected(&plain), "plain pod was injected: {plain:#}");
    assert_eq!(container_names(&plain, "containers"), ["server"]);
    assert!(container_names(&plain, "initContainers").is_empty());
    assert!(plain["metadata"]["labels"]["mcp-guard.dev/injected"].is_null());

    // Namespace opt-in, read from the webhook's namespace cache.
    api.apply(&namespace("team", &[("mcp-guard.dev/inject", "enabled")]));
    api.apply(&pod("inherits", "team", &[]));
    api.apply(&pod(
        "opts-out",
        "team",
        &[("mcp-guard.dev/inject", "disabled")],
    ));
    assert!(is_injected(&api.get_json("pod", "team", "inherits")));
    assert!(!is_injected(&api.get_json("pod", "team", "opts-out")));

    let (code, metrics) = curl(
        &api.ca.ca_path(),
        &format!("https://127.0.0.1:{}/metrics", webhook.port),
    );
    assert_eq!(code, 200);
    let injected_count: f64 = metrics
        .lines()
        .find(|l| l.starts_with("mcp_guard_webhook_injected_total{traffic=\"takeover\"}"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    // Two stored pods plus at least one dry-run probe.
    assert!(injected_count >= 3.0, "{metrics}");
    assert!(metrics.contains("mcp_guard_webhook_admission_duration_seconds_bucket"));
}

#[test]
fn invalid_annotation_is_refused_with_its_message() {
    let _g = serial();
    let (api, webhook) = start();
    register(&api, &webhook.mutate_url(), "Fail");

    let out = api.kubectl(
        &["create"],
        Some(&pod(
            "bad",
            "default",
            &[
                ("mcp-guard.dev/inject", "enabled"),
                ("mcp-guard.dev/traffic", "sideways"),
            ],
        )),
    );
    assert!(!out.success(), "invalid pod was admitted: {}", out.stdout);
    assert!(
        out.stderr.contains("denied the request")
            && out.stderr.contains("mcp-guard.dev/traffic")
            && out.stderr.contains("sideways")
            && out.stderr.contains("takeover"),
        "message does not name the annotation and its allowed values: {}",
        out.stderr
    );
    let get = api.kubectl(&["get", "pod", "bad", "-n", "default"], None);
    assert!(!get.success(), "the refused pod exists");
}

#[test]
fn webhook_down_failure_policy_ignore_admits_and_fail_refuses() {
    let _g = serial();
    let (api, mut webhook) = start();
    register(&api, &webhook.mutate_url(), "Ignore");
    webhook.proc.kill();

    let annotated = |name: &str| pod(name, "default", &[("mcp-guard.dev/inject", "enabled")]);
    let out = api.kubectl(&["create"], Some(&annotated("through")));
    assert!(
        out.success(),
        "failurePolicy Ignore must admit the pod: {}",
        out.stderr
    );
    let stored = api.get_json("pod", "default", "through");
    assert!(
        !is_injected(&stored),
        "stored injected with the webhook down?"
    );
    assert_eq!(container_names(&stored, "containers"), ["server"]);

    api.apply(&mutating_webhook_config(
        "mcp-guard",
        &webhook.mutate_url(),
        &api.ca.ca_pem(),
        "Fail",
    ));
    // The API server picks the new policy up from its informer within moments.
    wait_until(Duration::from_secs(30), || {
        let out = api.kubectl(
            &["create", "--dry-run=server", "-o", "json"],
            Some(&annotated("probe")),
        );
        Ok(!out.success())
    })
    .expect("failurePolicy Fail never took effect");
    let out = api.kubectl(&["create"], Some(&annotated("refused")));
    assert!(!out.success(), "failurePolicy Fail admitted a pod");
    assert!(
        out.stderr.contains("failed calling webhook"),
        "unexpected refusal: {}",
        out.stderr
    );
}

#[test]
fn deployment_pods_are_injected_through_the_controllers() {
    let _g = serial();
    let (mut api, webhook) = start();
    register(&api, &webhook.mutate_url(), "Fail");
    api.start_controller_manager();

    api.apply(&namespace("tools", &[("mcp-guard.dev/inject", "enabled")]));
    api.apply(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: tools\n  namespace: tools\nspec:\n  replicas: 2\n  selector:\n    matchLabels: {app: tools}\n  template:\n    metadata:\n      labels: {app: tools}\n    spec:\n      containers:\n      - name: server\n        image: example.com/tools:1\n        ports: [{name: mcp, containerPort: 3000}]\n",
    );
    let mut pods = Value::Null;
    wait_until(Duration::from_secs(60), || {
        let out = api.kubectl(
            &[
                "get",
                "pods",
                "-n",
                "tools",
                "-l",
                "app=tools",
                "-o",
                "json",
            ],
            None,
        );
        if !out.success() {
            return Ok(false);
        }
        pods = serde_json::from_str(&out.stdout).unwrap_or(Value::Null);
        Ok(pods["items"].as_array().is_some_and(|i| i.len() == 2))
    })
    .expect("the Deployment's pods never appeared (controller-manager running?)");
    for p in pods["items"].as_array().unwrap() {
        assert!(is_injected(p), "{p:#}");
        assert_eq!(container_names(p, "containers"), ["mcp-guard", "server"]);
        let env = p["spec"]["containers"][0]["env"].as_array().unwrap();
        let server_name = env
            .iter()
            .find(|e| e["name"] == "MCP_GUARD_SERVER_NAME")
            .map(|e| e["value"].clone());
        assert_eq!(
            server_name,
            Some(Value::from("tools")),
            "workload name from generateName"
        );
    }
}

/// A Namespace with labels.
fn labelled_namespace(name: &str, labels: &[(&str, &str)]) -> String {
    let lines: String = labels
        .iter()
        .map(|(k, v)| format!("    {k}: \"{v}\"\n"))
        .collect();
    format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n  labels:\n{lines}")
}

/// The ApprovedServer catalog on the real admission path: the chart's CRD installed, a pod
/// whose image no entry approves is refused in an `enforce` namespace (and admitted in a
/// `disabled` one: the refusal is the catalog's), admitted with the API server's warning in a
/// `warn` one, admitted with the audit annotation in an `audit` one; approving the image lets
/// the next pod in, with the same webhook process; an entry that requires a RuntimeClass refuses
/// a pod without it and admits one with it.
#[test]
fn approved_servers_are_enforced_warned_and_audited_and_approval_needs_no_restart() {
    let _g = serial();
    let (api, mut webhook) = start();
    let crd = std::fs::read_to_string(
        mcp_guard_tests::workspace_root()
            .join("charts/mcp-guard/crds/approvedservers.mcp-guard.dev.yaml"),
    )
    .unwrap();
    api.apply(&crd);
    let established = api.kubectl(
        &[
            "wait",
            "--for=condition=established",
            "--timeout=60s",
            "crd/approvedservers.mcp-guard.dev",
        ],
        None,
    );
    assert!(established.success(), "{}", established.stderr);
    register(&api, &webhook.mutate_url(), "Fail");
    for (ns, mode) in [
        ("strict", "enforce"),
        ("loose", "warn"),
        ("watched", "audit"),
        ("unchecked", "disabled"),
    ] {
        api.apply(&labelled_namespace(ns, &[("mcp-guard.dev/approval", mode)]));
    }
    let opted_in = [("mcp-guard.dev/inject", "enabled")];
    let create =
        |name: &str, ns: &str| api.kubectl(&["create", "-f", "-"], Some(&pod(name, ns, &opted_in)));

    // enforce: refused, naming the image and what to add; the catalog is reached without a
    // restart once the CRD exists (the reflector retries until then).
    wait_until(Duration::from_secs(60), || {
        let out = create("first", "strict");
        Ok(!out.success() && out.stderr.contains("approved by no ApprovedServer"))
    })
    .unwrap_or_else(|e| {
        panic!(
            "never refused in enforce mode: {e}\n{}",
            webhook.proc.logs()
        )
    });
    let out = create("first", "strict");
    assert!(
        out.stderr.contains("\"example.com/mcp-server:1.0\"")
            && out.stderr.contains("namespace \"strict\"")
            && out.stderr.contains("repository: example.com/mcp-server"),
        "{}",
        out.stderr
    );
    // The same pod where the check is off: admitted and injected.
    let out = create("first", "unchecked");
    assert!(out.success(), "{}", out.stderr);
    assert!(is_injected(&api.get_json("pod", "unchecked", "first")));

    // warn: admitted, injected, and kubectl prints the API server's warning.
    let out = create("first", "loose");
    assert!(out.success(), "{}", out.stderr);
    assert!(
        out.stderr.contains("Warning:") && out.stderr.contains("approved by no ApprovedServer"),
        "{}",
        out.stderr
    );
    assert!(is_injected(&api.get_json("pod", "loose", "first")));

    // audit: admitted without a warning; the webhook's answer carries the audit annotation.
    let out = create("first", "watched");
    assert!(out.success(), "{}", out.stderr);
    assert!(!out.stderr.contains("Warning:"), "{}", out.stderr);
    let review = serde_json::json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "audit-1",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "watched",
            "operation": "CREATE",
            "userInfo": {"username": "tester"},
            "object": as_json(&api, &pod("second", "watched", &opted_in)),
        },
    });
    let answer = post_review(&api, &webhook, &review);
    assert_eq!(answer["response"]["allowed"], true, "{answer}");
    let recorded = answer["response"]["auditAnnotations"]["unapproved-images"]
        .as_str()
        .unwrap_or_default();
    assert!(recorded.contains("example.com/mcp-server:1.0"), "{answer}");

    // Approve the image: the next pod in the enforce namespace is admitted, same process.
    api.apply(
        "apiVersion: mcp-guard.dev/v1alpha1\nkind: ApprovedServer\nmetadata:\n  name: mcp-server\nspec:\n  name: com.example/mcp-server\n  owner: team-tools\n  images:\n  - repository: example.com/mcp-server\n    tag: \"1.*\"\n  namespaces: [strict]\n",
    );
    wait_until(Duration::from_secs(60), || {
        Ok(create("approved", "strict").success())
    })
    .unwrap_or_else(|e| {
        panic!(
            "never admitted after approval: {e}\n{}",
            webhook.proc.logs()
        )
    });
    assert!(is_injected(&api.get_json("pod", "strict", "approved")));
    assert!(webhook.proc.try_status().is_none(), "the webhook restarted");
    // An entry that requires an isolation class approves only pods that run in it.
    api.apply(
        "apiVersion: node.k8s.io/v1\nkind: RuntimeClass\nmetadata:\n  name: sandboxed\nhandler: runsc\n",
    );
    api.apply(
        "apiVersion: mcp-guard.dev/v1alpha1\nkind: ApprovedServer\nmetadata:\n  name: shell\nspec:\n  name: com.example/shell\n  owner: team-tools\n  runtimeClassName: sandboxed\n  images:\n  - repository: example.com/mcp-server\n  namespaces: [isolated]\n",
    );
    api.apply(&labelled_namespace(
        "isolated",
        &[("mcp-guard.dev/approval", "enforce")],
    ));
    let sandboxed = |name: &str, class: Option<&str>| {
        let manifest = pod(name, "isolated", &opted_in);
        match class {
            Some(c) => manifest.replace("spec:\n", &format!("spec:\n  runtimeClassName: {c}\n")),
            None => manifest,
        }
    };
    wait_until(Duration::from_secs(60), || {
        let out = api.kubectl(&["create", "-f", "-"], Some(&sandboxed("plain", None)));
        Ok(!out.success() && out.stderr.contains("only in RuntimeClass \"sandboxed\""))
    })
    .unwrap_or_else(|e| panic!("a pod outside the entry's RuntimeClass was not refused: {e}"));
    let out = api.kubectl(
        &["create", "-f", "-"],
        Some(&sandboxed("isolated", Some("sandboxed"))),
    );
    assert!(out.success(), "{}", out.stderr);
    assert!(is_injected(&api.get_json("pod", "isolated", "isolated")));

    // The table reads well.
    let table = api.kubectl(&["get", "approvedservers"], None);
    assert!(
        table.stdout.contains("SERVER")
            && table.stdout.contains("com.example/mcp-server")
            && table.stdout.contains("team-tools"),
        "{}",
        table.stdout
    );
}

/// A manifest as JSON (`kubectl create --dry-run=client -o json`).
fn as_json(api: &ApiServer, manifest: &str) -> Value {
    let out = api.kubectl(
        &["create", "--dry-run=client", "-o", "json", "-f", "-"],
        Some(manifest),
    );
    assert!(out.success(), "{}", out.stderr);
    serde_json::from_str(&out.stdout).unwrap()
}

/// POSTs an AdmissionReview to the webhook's `/mutate` (TLS, trusting the test CA).
fn post_review(api: &ApiServer, webhook: &Webhook, review: &Value) -> Value {
    let out = mcp_guard_tests::run_bounded(
        "curl",
        std::process::Command::new("curl")
            .arg("-sS")
            .arg("--max-time")
            .arg("10")
            .arg("--cacert")
            .arg(api.ca.ca_path())
            .arg("-H")
            .arg("content-type: application/json")
            .arg("--data-binary")
            .arg(review.to_string())
            .arg(webhook.mutate_url()),
        Duration::from_secs(20),
    );
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", out.stdout, out.stderr))
}
