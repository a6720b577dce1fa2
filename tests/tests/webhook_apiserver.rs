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

use mcp_guard_tests::apiserver::{
    ApiServer, Webhook, curl, curl_with, mutating_webhook_config, wait_until,
};
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
    api.install_approved_servers_crd();
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

    // audit: admitted without a warning; the API server's audit log records the finding.
    let out = create("first", "watched");
    assert!(out.success(), "{}", out.stderr);
    assert!(!out.stderr.contains("Warning:"), "{}", out.stderr);
    let recorded = || {
        api.audit_log().into_iter().find(|e| {
            e["objectRef"]["namespace"] == "watched"
                && e["objectRef"]["name"] == "first"
                && e["verb"] == "create"
                && e["stage"] == "ResponseComplete"
        })
    };
    wait_until(Duration::from_secs(30), || Ok(recorded().is_some()))
        .expect("the pod's creation never reached the audit log");
    let event = recorded().unwrap();
    assert_eq!(event["responseStatus"]["code"], 201, "{event:#}");
    assert!(
        event["annotations"]["inject.mcp-guard.dev/unapproved-images"]
            .as_str()
            .is_some_and(|m| m.contains("example.com/mcp-server:1.0")),
        "{event:#}"
    );
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

fn approved(object: &str, name: &str, version: &str, description: &str) -> String {
    format!(
        "apiVersion: mcp-guard.dev/v1alpha1\nkind: ApprovedServer\nmetadata:\n  name: {object}\nspec:\n  name: {name}\n  version: \"{version}\"\n  title: {object}\n  description: {description}\n  owner: team-tools\n  images:\n  - repository: example.com/{object}\n  remotes:\n  - type: streamable-http\n    url: http://{object}.tools.svc:8080/mcp\n"
    )
}

/// What the MCP registry's published schema (server.schema.json 2025-12-11 and the OpenAPI
/// description 2025-12-01, `ServerResponse`) requires of one answer, written down from the spec.
fn assert_server_response(item: &Value) {
    let fail = |why: &str| -> ! { panic!("not a valid ServerResponse ({why}): {item:#}") };
    let keys = |v: &Value| -> Vec<String> {
        v.as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default()
    };
    let s = &item["server"];
    let len = |v: &Value| v.as_str().map(|t| t.chars().count());
    // name: required, 3..=200, ^[a-zA-Z0-9.-]+/[a-zA-Z0-9._-]+$
    let name = s["name"].as_str().unwrap_or_else(|| fail("no name"));
    let (ns, local) = name
        .split_once('/')
        .unwrap_or_else(|| fail("name has no '/'"));
    if !(3..=200).contains(&name.len())
        || ns.is_empty()
        || local.is_empty()
        || !ns
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        || !local
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-')
    {
        fail("name pattern");
    }
    // description: required, 1..=100
    if !len(&s["description"]).is_some_and(|n| (1..=100).contains(&n)) {
        fail("description length");
    }
    // title: optional, 1..=100
    if !s["title"].is_null() && !len(&s["title"]).is_some_and(|n| (1..=100).contains(&n)) {
        fail("title length");
    }
    // version: required, at most 255, a specific version (no range, not "latest")
    let version = s["version"].as_str().unwrap_or_else(|| fail("no version"));
    if version.is_empty()
        || version.len() > 255
        || version == "latest"
        || version.starts_with(['^', '~', '>', '<', '='])
        || version.contains('*')
    {
        fail("version");
    }
    // $schema: a URI
    if !s["$schema"]
        .as_str()
        .is_some_and(|u| u.starts_with("https://"))
    {
        fail("$schema");
    }
    // remotes: [{type: streamable-http|sse, url: ^https?://[^\s]+$}]
    for r in s["remotes"].as_array().into_iter().flatten() {
        let url = r["url"].as_str().unwrap_or_default();
        if !matches!(r["type"].as_str(), Some("streamable-http" | "sse"))
            || !(url.starts_with("http://") || url.starts_with("https://"))
            || url.contains(char::is_whitespace)
        {
            fail("remote");
        }
    }
    // Only the fields ServerDetail names.
    let allowed = [
        "$schema",
        "name",
        "description",
        "title",
        "repository",
        "version",
        "websiteUrl",
        "icons",
        "packages",
        "remotes",
        "_meta",
    ];
    if let Some(k) = keys(s).iter().find(|k| !allowed.contains(&k.as_str())) {
        fail(&format!("unknown field {k}"));
    }
    // _meta.io.modelcontextprotocol.registry/official: additionalProperties false.
    let official = &item["_meta"]["io.modelcontextprotocol.registry/official"];
    let allowed = [
        "status",
        "statusMessage",
        "statusChangedAt",
        "publishedAt",
        "updatedAt",
        "isLatest",
    ];
    if let Some(k) = keys(official)
        .iter()
        .find(|k| !allowed.contains(&k.as_str()))
    {
        fail(&format!("unknown official field {k}"));
    }
    if !matches!(
        official["status"].as_str(),
        Some("active" | "deprecated" | "deleted")
    ) || !official["isLatest"].is_boolean()
    {
        fail("official status / isLatest");
    }
    for t in ["publishedAt", "updatedAt"] {
        let ok = official[t]
            .as_str()
            .is_some_and(|v| v.len() >= 20 && v.as_bytes()[4] == b'-' && v.as_bytes()[10] == b'T');
        if !ok {
            fail(t);
        }
    }
}

#[test]
fn the_registry_api_serves_approved_servers_to_ide_clients_as_rbac_allows() {
    let _g = serial();
    let (api, mut webhook) = start();
    api.install_approved_servers_crd();
    for (object, name, version) in [
        ("tickets-1", "io.example/tickets", "1.4.0"),
        ("tickets-2", "io.example/tickets", "2.0.0"),
        ("search", "io.example/search", "0.3.1"),
        ("wiki", "io.example/wiki", "1.0.0"),
        ("builds", "io.example/builds", "3.2.0"),
    ] {
        api.apply(&approved(
            object,
            name,
            version,
            "Approved for the tools team",
        ));
    }
    // Three developers: one may read every approved server, one only `search`, one nothing.
    api.apply(
        r#"apiVersion: v1
kind: ServiceAccount
metadata: {name: dev-all, namespace: default}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: dev-one, namespace: default}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: nobody, namespace: default}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: approved-servers-reader}
rules:
- apiGroups: [mcp-guard.dev]
  resources: [approvedservers]
  verbs: [get, list]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: dev-all-reads-approved-servers}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: approved-servers-reader}
subjects: [{kind: ServiceAccount, name: dev-all, namespace: default}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: search-reader}
rules:
- apiGroups: [mcp-guard.dev]
  resources: [approvedservers]
  resourceNames: [search]
  verbs: [get]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: dev-one-reads-search}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: search-reader}
subjects: [{kind: ServiceAccount, name: dev-one, namespace: default}]
"#,
    );
    let token = |sa: &str| {
        format!(
            "Authorization: Bearer {}",
            api.service_account_token("default", sa)
        )
    };
    let (all, one, nobody) = (token("dev-all"), token("dev-one"), token("nobody"));
    let ca = api.ca.ca_path();
    // The IDE's gallery URL is a base URL; the client appends `v0.1/servers`.
    let base = format!("https://127.0.0.1:{}/", webhook.port);
    let get = |path: &str, auth: &str| -> (u16, Value) {
        let headers: Vec<&str> = if auth.is_empty() { vec![] } else { vec![auth] };
        let (status, body) = curl_with(&ca, &format!("{base}{path}"), &headers);
        let v = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("GET {path}: {status} not JSON ({e}): {body}"));
        (status, v)
    };
    // Pages of two, to the end, as a client follows `metadata.nextCursor`.
    let read_all = |auth: &str| -> Vec<Value> {
        let mut items = Vec::new();
        let mut cursor = String::new();
        for _ in 0..20 {
            let path = if cursor.is_empty() {
                "v0.1/servers?limit=2".to_string()
            } else {
                format!(
                    "v0.1/servers?limit=2&cursor={}",
                    cursor.replace('/', "%2F").replace(':', "%3A")
                )
            };
            let (status, page) = get(&path, auth);
            assert_eq!(status, 200, "{page}");
            let servers = page["servers"].as_array().cloned().unwrap_or_default();
            assert_eq!(page["metadata"]["count"], servers.len(), "{page}");
            items.extend(servers);
            match page["metadata"]["nextCursor"].as_str() {
                Some(c) if !c.is_empty() => cursor = c.to_string(),
                _ => return items,
            }
        }
        panic!("pagination never ended");
    };
    let objects = |items: &[Value]| -> Vec<String> {
        items
            .iter()
            .map(|i| {
                i["_meta"]["dev.mcp-guard/approval"]["approvedServer"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect()
    };
    // The catalog arrives through the webhook's reflector, which retries until the CRD exists.
    wait_until(Duration::from_secs(60), || Ok(read_all(&all).len() == 5)).unwrap_or_else(|e| {
        panic!(
            "the registry never listed the five entries: {e}\n{}",
            webhook.proc.logs()
        )
    });
    let everything = read_all(&all);
    assert_eq!(
        objects(&everything),
        ["builds", "search", "tickets-1", "tickets-2", "wiki"]
    );
    for item in &everything {
        assert_server_response(item);
    }
    let latest: Vec<(&str, bool)> = everything
        .iter()
        .map(|i| {
            (
                i["server"]["version"].as_str().unwrap_or_default(),
                i["_meta"]["io.modelcontextprotocol.registry/official"]["isLatest"] == true,
            )
        })
        .collect();
    assert_eq!(
        latest,
        [
            ("3.2.0", true),
            ("0.3.1", true),
            ("1.4.0", false),
            ("2.0.0", true),
            ("1.0.0", true)
        ]
    );
    assert_eq!(
        everything[1]["server"]["remotes"][0]["url"],
        "http://search.tools.svc:8080/mcp"
    );

    // RBAC decides what each caller sees; a server the caller may not read is not found.
    assert_eq!(objects(&read_all(&one)), ["search"]);
    assert!(read_all(&nobody).is_empty());
    let (status, body) = get("v0.1/servers/io.example%2Ftickets/versions", &all);
    assert_eq!(status, 200, "{body}");
    let versions: Vec<&str> = body["servers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["server"]["version"].as_str())
        .collect();
    assert_eq!(versions, ["2.0.0", "1.4.0"]);
    let (status, body) = get("v0.1/servers/io.example%2Ftickets/versions/latest", &all);
    assert_eq!(
        (status, body["server"]["version"].clone()),
        (200, Value::from("2.0.0"))
    );
    assert_server_response(&body);
    let (status, body) = get("v0.1/servers/io.example%2Ftickets/versions/1.4.0", &all);
    assert_eq!(
        (status, body["server"]["version"].clone()),
        (200, Value::from("1.4.0"))
    );
    let (status, body) = get("v0.1/servers/io.example%2Ftickets/versions/latest", &one);
    assert_eq!(status, 404, "{body}");
    let (status, body) = get("v0.1/servers?search=tick&version=latest", &all);
    assert_eq!(
        (status, objects(body["servers"].as_array().unwrap())),
        (200, vec!["tickets-2".to_string()])
    );

    // No token, a forged token, a bad parameter: refused, each saying why.
    let (status, body) = get("v0.1/servers", "");
    assert_eq!(status, 401, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("Authorization"),
        "{body}"
    );
    let (status, body) = get("v0.1/servers", "Authorization: Bearer forged.token.value");
    assert_eq!(status, 401, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("does not accept"),
        "{body}"
    );
    let (status, body) = get("v0.1/servers?limit=1000", &all);
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap_or_default().contains("limit"),
        "{body}"
    );

    // An approval shows up without a restart (the example the docs apply); so does its removal.
    let example = std::fs::read_to_string(
        mcp_guard_tests::workspace_root().join("manifests/examples/approved-server.yaml"),
    )
    .unwrap();
    api.apply(&example);
    wait_until(Duration::from_secs(60), || {
        Ok(objects(&read_all(&all)).contains(&"everything".to_string()))
    })
    .expect("a new approval never reached the registry API");
    let (status, body) = get(
        "v0.1/servers/io.github.modelcontextprotocol%2Fserver-everything/versions/latest",
        &all,
    );
    assert_eq!(status, 200, "{body}");
    assert_server_response(&body);
    assert_eq!(
        body["server"]["remotes"][0]["url"],
        "http://everything.tools.svc/mcp"
    );
    let out = api.kubectl(&["delete", "approvedserver", "wiki"], None);
    assert!(out.success(), "{}", out.stderr);
    wait_until(Duration::from_secs(60), || {
        Ok(!objects(&read_all(&all)).contains(&"wiki".to_string()))
    })
    .expect("a removed approval stayed in the registry API");
    assert!(webhook.proc.try_status().is_none(), "the webhook restarted");
}
