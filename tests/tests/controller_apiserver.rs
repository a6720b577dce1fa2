//! The policy-distribution controller and the policy validating webhook on a real kube-apiserver
//! (v1.20 built from Debian's source, `tests/scripts/install-kube.sh`) with etcd and
//! kube-controller-manager: `mcp-guard-webhook serve --controller`, running as a ServiceAccount
//! with exactly the RBAC `docs/distribution.md` lists (authenticated by a token the API server
//! issued for that ServiceAccount, no impersonation), mirrors the source policy
//! ConfigMap into every namespace that needs it, refuses broken bundles at apply time, reports
//! status on the source, restores deleted mirrors, keeps the strict-ingress NetworkPolicy, fails
//! over between two replicas through its Lease; and a sidecar started from the injected pod's
//! container spec, reading the mirror laid out as kubelet lays it out, follows an edit of the
//! source without a restart.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// A std Mutex only serializes these blocking tests; no async runtime is involved.
#![allow(clippy::disallowed_types)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mcp_guard_tests::apiserver::{
    ApiServer, Webhook, mutating_webhook_config, validating_webhook_config, wait_until,
};
use mcp_guard_tests::suite::post_2026;
use mcp_guard_tests::volume::ConfigMapVolume;
use mcp_guard_tests::{
    Proc, TempDir, call_body, free_port, http_blocking, port_open, sidecar_bin,
    start_example_server,
};
use serde_json::{Value, json};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

const OWN: &str = "mcp-guard";

/// The rights `serve --controller` needs, exactly as `docs/distribution.md` lists them: the
/// webhook runs as this ServiceAccount, with a token of its own, so a missing verb fails these
/// tests.
const RBAC: &str = r#"apiVersion: v1
kind: ServiceAccount
metadata: {name: mcp-guard-webhook, namespace: mcp-guard}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: mcp-guard-webhook}
rules:
- apiGroups: [""]
  resources: [namespaces]
  verbs: [get, list, watch]
- apiGroups: [mcp-guard.dev]
  resources: [approvedservers]
  verbs: [list, watch]
- apiGroups: [authentication.k8s.io]
  resources: [tokenreviews]
  verbs: [create]
- apiGroups: [authorization.k8s.io]
  resources: [subjectaccessreviews]
  verbs: [create]
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch]
- apiGroups: [""]
  resources: [endpoints]
  verbs: [list]
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [list, watch, create, patch, delete]
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
- apiGroups: [mcp-guard.dev]
  resources: [approvedservers/status]
  verbs: [patch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: mcp-guard-webhook}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: mcp-guard-webhook}
subjects:
- {kind: ServiceAccount, name: mcp-guard-webhook, namespace: mcp-guard}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: mcp-guard-webhook-leader-election, namespace: mcp-guard}
rules:
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  verbs: [get, create, update]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: mcp-guard-webhook-leader-election, namespace: mcp-guard}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: mcp-guard-webhook-leader-election}
subjects:
- {kind: ServiceAccount, name: mcp-guard-webhook, namespace: mcp-guard}
"#;
const POLICY: &str = "mcp-guard-policy";

fn namespace(name: &str, annotations: &[(&str, &str)]) -> String {
    let ann: BTreeMap<&str, &str> = annotations.iter().copied().collect();
    json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "annotations": ann}})
    .to_string()
}

fn pod(name: &str, namespace: &str, inject: bool) -> String {
    let ann: BTreeMap<&str, &str> = if inject {
        [("mcp-guard.dev/inject", "enabled")].into()
    } else {
        BTreeMap::new()
    };
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": name},
            "annotations": ann},
        "spec": {"containers": [{"name": "server", "image": "example.com/mcp:1",
            "ports": [{"name": "http", "containerPort": 8080}]}]}})
    .to_string()
}

fn rego(version: &str) -> String {
    format!(
        "package mcp.authz\n\nimport rego.v1\n\ndefault allow := false\n\n# {version}\nallow if input.request.tool == \"{version}\"\n"
    )
}

const BROKEN: &str = "package mcp.authz\n\nallow if {\n  input.x ==\n}\n";

fn source(authz: &str) -> String {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": POLICY, "namespace": OWN,
            "labels": {"mcp-guard.dev/policy": "true"}},
        "data": {"authz.rego": authz, "data.json": "{\"teams\": []}"}})
    .to_string()
}

fn is_injected(pod: &Value) -> bool {
    pod["metadata"]["annotations"]["mcp-guard.dev/status"].is_string()
}

fn get_opt(api: &ApiServer, kind: &str, ns: &str, name: &str) -> Option<Value> {
    let out = api.kubectl(&["get", kind, name, "-n", ns, "-o", "json"], None);
    if !out.success() {
        return None;
    }
    serde_json::from_str(&out.stdout).ok()
}

fn list(api: &ApiServer, args: &[&str]) -> Vec<Value> {
    let mut a = vec!["get"];
    a.extend_from_slice(args);
    a.extend_from_slice(&["-o", "json"]);
    let out = api.kubectl(&a, None);
    assert!(out.success(), "kubectl {a:?}: {}", out.stderr);
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    v["items"].as_array().cloned().unwrap_or_default()
}

/// `namespace -> authz.rego` of every mirror of the default policy.
fn mirrors(api: &ApiServer) -> BTreeMap<String, String> {
    list(
        api,
        &[
            "configmaps",
            "-A",
            "-l",
            &format!("mcp-guard.dev/mirror-of={POLICY}"),
        ],
    )
    .iter()
    .map(|m| {
        (
            m["metadata"]["namespace"]
                .as_str()
                .unwrap_or("")
                .to_string(),
            m["data"]["authz.rego"].as_str().unwrap_or("").to_string(),
        )
    })
    .collect()
}

fn status(api: &ApiServer) -> Value {
    let cm = api.get_json("configmap", OWN, POLICY);
    cm["metadata"]["annotations"]["mcp-guard.dev/status"]
        .as_str()
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or(Value::Null)
}

struct Cluster {
    api: ApiServer,
    webhook: Webhook,
}

/// Control plane + controller-manager, mcp-guard's namespace, the webhook with the controller,
/// both webhook configurations registered and answering.
fn start(extra: &[&str]) -> Cluster {
    let mut api = ApiServer::start();
    api.start_controller_manager();
    api.apply(&namespace(OWN, &[]));
    api.apply(RBAC);
    let kubeconfig = api.service_account_kubeconfig(OWN, "mcp-guard-webhook");
    let mut args = vec![
        "--controller",
        "--lease-duration=6s",
        "--own-namespace=mcp-guard",
    ];
    if !extra.iter().any(|a| a.starts_with("--resync-interval")) {
        args.push("--resync-interval=5s");
    }
    args.extend_from_slice(extra);
    let webhook = Webhook::start_with_kubeconfig(&api, &kubeconfig, &args);
    api.apply(&mutating_webhook_config(
        "mcp-guard",
        &webhook.mutate_url(),
        &api.ca.ca_pem(),
        "Fail",
    ));
    api.apply(&validating_webhook_config(
        "mcp-guard-policy",
        &webhook.validate_url(),
        &api.ca.ca_pem(),
        "Fail",
    ));
    let probe_pod = pod("probe", "default", true);
    wait_until(Duration::from_secs(30), || {
        let out = api.kubectl(
            &["create", "--dry-run=server", "-o", "json"],
            Some(&probe_pod),
        );
        Ok(out.success()
            && serde_json::from_str::<Value>(&out.stdout).is_ok_and(|p| is_injected(&p)))
    })
    .expect("the API server never called /mutate");
    wait_until(Duration::from_secs(30), || {
        let out = api.kubectl(&["create", "--dry-run=server"], Some(&source(BROKEN)));
        Ok(!out.success() && out.stderr.contains("mcp-guard"))
    })
    .expect("the API server never called /validate");
    Cluster { api, webhook }
}

#[test]
fn policy_is_validated_distributed_reported_and_restored() {
    let _g = serial();
    // A resync far beyond every wait below: whatever the controller does here, it does because
    // a watch told it, so a wait that ends proves the event path (without a bound on how fast).
    let Cluster { api, webhook } = start(&["--resync-interval=60m"]);

    api.apply(&namespace("apps", &[]));
    api.apply(&namespace("team", &[("mcp-guard.dev/inject", "enabled")]));
    api.apply(&namespace("plain", &[]));
    api.apply(&pod("a1", "apps", true));
    api.apply(&pod("a2", "apps", true));
    api.apply(&pod("p1", "plain", false));
    assert!(is_injected(&api.get_json("pod", "apps", "a1")));

    // v1: distributed to the namespace with injected pods and the annotated one, not elsewhere.
    api.apply(&source(&rego("v1")));
    wait_until(Duration::from_secs(60), || {
        let m = mirrors(&api);
        Ok(m.len() == 2 && m.values().all(|r| r.contains("v1")))
    })
    .unwrap_or_else(|e| {
        panic!(
            "v1 never mirrored ({e}): {:?}\n{}",
            mirrors(&api),
            webhook.proc.logs()
        )
    });
    assert_eq!(
        mirrors(&api).keys().cloned().collect::<Vec<_>>(),
        ["apps", "team"]
    );
    let mut st = Value::Null;
    wait_until(Duration::from_secs(60), || {
        st = status(&api);
        Ok(st["namespaces"] == json!(["apps", "team"]))
    })
    .unwrap_or_else(|e| panic!("status never reported both namespaces ({e}): {st:#}"));
    let v1_hash = st["hash"].as_str().unwrap().to_string();
    assert!(v1_hash.starts_with("sha256:"), "{st:#}");
    assert_eq!(st["distributedHash"], st["hash"]);
    assert!(st["error"].is_null(), "{st:#}");
    let mirror = api.get_json("configmap", "apps", POLICY);
    assert_eq!(
        mirror["metadata"]["annotations"]["mcp-guard.dev/hash"],
        v1_hash.as_str()
    );
    assert_eq!(
        mirror["metadata"]["labels"]["mcp-guard.dev/mirror-of"],
        POLICY
    );
    assert_eq!(mirror["data"]["data.json"], "{\"teams\": []}");
    assert!(
        mirror["metadata"]["labels"]["mcp-guard.dev/policy"].is_null(),
        "a mirror must not look like a source"
    );

    // An edit of the source reaches every mirror, through the watch (the resync is an hour away).
    api.apply(&source(&rego("v2")));
    let edited = Instant::now();
    wait_until(Duration::from_secs(60), || {
        let m = mirrors(&api);
        Ok(m.len() == 2 && m.values().all(|r| r.contains("v2")))
    })
    .expect("v2 never mirrored");
    eprintln!("source edit reached every mirror in {:?}", edited.elapsed());
    wait_until(Duration::from_secs(60), || {
        st = status(&api);
        Ok(st["hash"] != v1_hash.as_str() && st["namespaces"] == json!(["apps", "team"]))
    })
    .unwrap_or_else(|e| panic!("status never moved to v2 ({e}): {st:#}"));
    let v2_hash = st["hash"].as_str().unwrap().to_string();

    // A broken edit is refused at apply time, with the compiler's file and line.
    let out = api.kubectl(&["apply"], Some(&source(BROKEN)));
    assert!(!out.success(), "broken bundle admitted: {}", out.stdout);
    assert!(
        out.stderr.contains("denied the request")
            && out.stderr.contains("authz.rego:5")
            && out.stderr.contains("expecting expression"),
        "{}",
        out.stderr
    );
    assert!(
        api.get_json("configmap", OWN, POLICY)["data"]["authz.rego"]
            .as_str()
            .unwrap()
            .contains("v2")
    );

    // Without the validating webhook the broken edit lands: status shows it, mirrors keep v2.
    let out = api.kubectl(
        &[
            "delete",
            "validatingwebhookconfiguration",
            "mcp-guard-policy",
        ],
        None,
    );
    assert!(out.success(), "{}", out.stderr);
    wait_until(Duration::from_secs(30), || {
        Ok(api.kubectl(&["apply"], Some(&source(BROKEN))).success())
    })
    .expect("the broken edit stayed refused after the webhook was removed");
    wait_until(Duration::from_secs(60), || {
        st = status(&api);
        Ok(st["error"]
            .as_str()
            .is_some_and(|e| e.contains("authz.rego:5")))
    })
    .unwrap_or_else(|e| panic!("status never showed the compile error ({e}): {st:#}"));
    assert!(st["hash"].is_null(), "{st:#}");
    assert_eq!(st["distributedHash"], v2_hash.as_str(), "{st:#}");
    assert_eq!(st["namespaces"], json!(["apps", "team"]));
    std::thread::sleep(Duration::from_secs(1));
    let m = mirrors(&api);
    assert_eq!(m.len(), 2);
    assert!(
        m.values().all(|r| r.contains("v2")),
        "a mirror took the broken bundle: {m:?}"
    );
    for ns in ["apps", "team"] {
        let mirror = api.get_json("configmap", ns, POLICY);
        assert_eq!(
            mirror["metadata"]["annotations"]["mcp-guard.dev/hash"],
            v2_hash.as_str()
        );
    }
    let events = list(&api, &["events", "-n", OWN]);
    let reasons: BTreeSet<&str> = events.iter().filter_map(|e| e["reason"].as_str()).collect();
    assert!(
        reasons.contains("CompileFailed") && reasons.contains("Distributed"),
        "{reasons:?}"
    );

    // A deleted mirror comes back (with the last good bundle, the source being broken).
    let out = api.kubectl(&["delete", "configmap", POLICY, "-n", "apps"], None);
    assert!(out.success(), "{}", out.stderr);
    wait_until(Duration::from_secs(60), || {
        Ok(get_opt(&api, "configmap", "apps", POLICY).is_some_and(|m| {
            m["metadata"]["annotations"]["mcp-guard.dev/hash"] == v2_hash.as_str()
        }))
    })
    .expect("deleted mirror not restored");

    // A repaired source flows again; a namespace that stops needing the policy loses its mirror.
    // (v3 also drops data.json: a key removed from the source goes from every mirror.)
    let v3 = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": POLICY, "namespace": OWN,
            "labels": {"mcp-guard.dev/policy": "true"}},
        "data": {"authz.rego": rego("v3")}});
    api.apply(&v3.to_string());
    wait_until(Duration::from_secs(60), || {
        let m = mirrors(&api);
        Ok(m.len() == 2 && m.values().all(|r| r.contains("v3")))
    })
    .expect("v3 never mirrored");
    for ns in ["apps", "team"] {
        let mirror = api.get_json("configmap", ns, POLICY);
        assert!(mirror["data"]["data.json"].is_null(), "{mirror:#}");
    }
    api.apply(&namespace("team", &[("mcp-guard.dev/inject", "disabled")]));
    wait_until(Duration::from_secs(60), || {
        Ok(mirrors(&api).keys().cloned().collect::<Vec<_>>() == ["apps"])
    })
    .expect("mirror in a namespace that no longer needs it was kept");

    // A ConfigMap of that name the controller does not own is never touched.
    api.apply(&namespace("mine", &[]));
    let theirs = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": POLICY, "namespace": "mine"}, "data": {"authz.rego": "theirs"}});
    api.apply(&theirs.to_string());
    api.apply(&namespace("mine", &[("mcp-guard.dev/inject", "enabled")]));
    wait_until(Duration::from_secs(60), || {
        Ok(status(&api)["conflicts"] == json!(["mine"]))
    })
    .expect("conflict not reported");
    assert_eq!(
        api.get_json("configmap", "mine", POLICY)["data"]["authz.rego"],
        "theirs"
    );

    // The source goes: its mirrors go.
    let out = api.kubectl(&["delete", "configmap", POLICY, "-n", OWN], None);
    assert!(out.success(), "{}", out.stderr);
    wait_until(Duration::from_secs(60), || Ok(mirrors(&api).is_empty()))
        .expect("mirrors kept after the source was deleted");
    assert!(get_opt(&api, "configmap", "mine", POLICY).is_some());

    // One replica holds the lease.
    let lease = api.get_json("lease", OWN, "mcp-guard-controller");
    assert!(lease["spec"]["holderIdentity"].is_string(), "{lease:#}");
    assert_no_forbidden(&webhook);
}

/// The documented RBAC was enough: nothing the controller did was refused.
fn assert_no_forbidden(webhook: &Webhook) {
    let logs = webhook.proc.logs();
    assert!(
        !logs.contains("forbidden") && !logs.contains("Forbidden"),
        "the controller lacked a right:\n{logs}"
    );
}

/// A pod of `image`, injected or not, with `labels`, created directly (not through `pod`, whose
/// image every test shares).
fn pod_of(name: &str, namespace: &str, image: &str, inject: bool, labels: Value) -> String {
    let mut p: Value = serde_json::from_str(&pod(name, namespace, inject)).unwrap();
    p["spec"]["containers"][0]["image"] = json!(image);
    if let (Some(l), Some(extra)) = (p["metadata"]["labels"].as_object_mut(), labels.as_object()) {
        l.extend(extra.clone());
    }
    p.to_string()
}

/// Two pods in `apps` outside the perimeter: `rogue` runs an image the `tickets` entry approves
/// without the sidecar; `stray` is labelled an MCP server, runs without the sidecar, and no
/// entry approves its image.
fn outside_the_perimeter(api: &ApiServer) {
    api.apply(&pod_of(
        "rogue",
        "apps",
        "example.com/tickets:1",
        false,
        json!({}),
    ));
    api.apply(&pod_of(
        "stray",
        "apps",
        "example.com/stray:1",
        false,
        json!({"mcp-guard.dev/server": "true"}),
    ));
}

#[test]
fn approved_servers_get_the_perimeter_report_and_their_egress_network_policy() {
    let _g = serial();
    let Cluster { api, webhook } = start(&[]);
    api.install_approved_servers_crd();
    // The entry declares the egress its server needs: its database, and nothing else; and it
    // pins its server's tool definitions of record.
    let pin = format!("sha256:{}", "ab".repeat(32));
    let entry = |egress: bool| {
        let mut e = format!(
            "apiVersion: mcp-guard.dev/v1alpha1\nkind: ApprovedServer\nmetadata:\n  name: tickets\nspec:\n  name: io.example/tickets\n  images:\n  - repository: example.com/tickets\n  tools:\n  - {{name: create_ticket, hash: \"{pin}\"}}\n"
        );
        if egress {
            e.push_str("  egress:\n  - to:\n    - ipBlock: {cidr: 10.20.0.0/16}\n    - namespaceSelector: {matchLabels: {team: data}}\n      podSelector: {matchLabels: {app: postgres}}\n    ports:\n    - {protocol: TCP, port: 5432}\n");
        }
        e
    };
    // The CRD's schema refuses a pin that is not a sha256, naming the field.
    let bad = entry(false)
        .replace("name: tickets\n", "name: bad-pin\n")
        .replace(&pin, "sha256:abc");
    let out = api.kubectl(&["apply", "-f", "-"], Some(&bad));
    assert!(!out.success(), "{}", out.stdout);
    assert!(out.stderr.contains("spec.tools.hash"), "{}", out.stderr);
    api.apply(&entry(true));
    api.apply(&namespace("apps", &[]));
    // Admission reads the catalog from a watch: wait until it knows the entry (a server-side dry
    // run of an opted-in pod comes back labelled with it) before creating the pods.
    let probe = pod_of("probe", "apps", "example.com/tickets:1", true, json!({}));
    wait_until(Duration::from_secs(60), || {
        let out = api.kubectl(&["create", "--dry-run=server", "-o", "json"], Some(&probe));
        Ok(out.success()
            && serde_json::from_str::<Value>(&out.stdout).is_ok_and(|p| {
                p["metadata"]["labels"]["mcp-guard.dev/approved-server"] == "tickets"
            }))
    })
    .unwrap_or_else(|e| {
        panic!(
            "admission never saw the entry ({e})\n{}",
            webhook.proc.logs()
        )
    });
    // Governed: injected by the webhook. Ungoverned: the same image, not opted in. A pod that
    // declares itself an MCP server, runs without the sidecar and is approved by no entry.
    api.apply(&pod_of(
        "governed",
        "apps",
        "example.com/tickets:1",
        true,
        json!({}),
    ));
    outside_the_perimeter(&api);
    api.apply(&pod_of(
        "web",
        "apps",
        "example.com/web:1",
        false,
        json!({}),
    ));
    assert!(is_injected(&api.get_json("pod", "apps", "governed")));
    // Its sidecar compares the server's tools with the entry's pins of record.
    let (env, _) = injected_sidecar(&api, "apps", "governed");
    assert_eq!(
        env.get("MCP_GUARD_PINNED_TOOLS"),
        Some(&format!(r#"{{"create_ticket":"{pin}"}}"#)),
        "{env:?}"
    );

    let status = || api.get_json("approvedserver", "", "tickets")["status"].clone();
    wait_until(Duration::from_secs(60), || {
        let s = status();
        Ok(s["governedPods"] == 1 && s["ungovernedPods"] == 1)
    })
    .unwrap_or_else(|e| {
        panic!(
            "no perimeter status ({e}): {}\n{}",
            status(),
            webhook.proc.logs()
        )
    });
    assert_eq!(
        status()["ungoverned"],
        json!([{"namespace": "apps", "name": "rogue", "images": ["example.com/tickets:1"]}])
    );
    // The table shows it.
    let table = api.kubectl(&["get", "approvedservers"], None);
    assert!(table.stdout.contains("UNGOVERNED"), "{}", table.stdout);

    // Events: on the entry for the ungoverned pod, on the pod for the unlisted server.
    let reasons_about = |name: &str| -> Vec<String> {
        list(
            &api,
            &[
                "events",
                "-A",
                "--field-selector",
                &format!("involvedObject.name={name}"),
            ],
        )
        .iter()
        .map(|e| {
            format!(
                "{} {}",
                e["reason"].as_str().unwrap_or(""),
                e["message"].as_str().or(e["note"].as_str()).unwrap_or("")
            )
        })
        .collect()
    };
    wait_until(Duration::from_secs(30), || {
        Ok(reasons_about("tickets")
            .iter()
            .any(|r| r.starts_with("UngovernedPod") && r.contains("apps/rogue"))
            && reasons_about("stray")
                .iter()
                .any(|r| r.starts_with("UngovernedMcpServer") && r.contains("example.com/stray:1")))
    })
    .unwrap_or_else(|e| {
        panic!(
            "events missing ({e}): {:?} {:?}",
            reasons_about("tickets"),
            reasons_about("stray")
        )
    });
    // Nothing reported for a pod that is no MCP server.
    assert!(
        reasons_about("web").is_empty(),
        "{:?}",
        reasons_about("web")
    );

    // Admission labelled the governed pod with its entry; the controller keeps the entry's
    // egress NetworkPolicy for it: the entry's rules, plus DNS.
    let governed = api.get_json("pod", "apps", "governed");
    assert_eq!(
        governed["metadata"]["labels"]["mcp-guard.dev/approved-server"], "tickets",
        "{governed:#}"
    );
    assert!(
        api.get_json("pod", "apps", "rogue")["metadata"]["labels"]["mcp-guard.dev/approved-server"]
            .is_null()
    );
    let egress = || get_opt(&api, "networkpolicy", "apps", "mcp-guard-egress-tickets");
    wait_until(Duration::from_secs(60), || Ok(egress().is_some()))
        .unwrap_or_else(|e| panic!("no egress NetworkPolicy ({e})\n{}", webhook.proc.logs()));
    let np = egress().unwrap();
    assert_eq!(np["spec"]["policyTypes"], json!(["Egress"]));
    assert_eq!(
        np["spec"]["podSelector"],
        json!({"matchLabels": {"mcp-guard.dev/approved-server": "tickets"}})
    );
    assert_eq!(
        np["spec"]["egress"],
        json!([
            {"to": [{"ipBlock": {"cidr": "10.20.0.0/16"}},
                    {"namespaceSelector": {"matchLabels": {"team": "data"}},
                     "podSelector": {"matchLabels": {"app": "postgres"}}}],
             "ports": [{"protocol": "TCP", "port": 5432}]},
            {"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}
        ])
    );
    // The entry stops restricting egress (apply drops the field): the NetworkPolicy goes.
    api.apply(&entry(false));
    wait_until(Duration::from_secs(60), || Ok(egress().is_none()))
        .unwrap_or_else(|e| panic!("the egress NetworkPolicy stayed ({e})"));

    // The ungoverned pod goes: the report follows.
    let out = api.kubectl(
        &[
            "delete",
            "pod",
            "rogue",
            "-n",
            "apps",
            "--grace-period=0",
            "--force",
        ],
        None,
    );
    assert!(out.success(), "{}", out.stderr);
    wait_until(Duration::from_secs(60), || {
        let s = status();
        Ok(s["ungovernedPods"] == 0 && s["governedPods"] == 1)
    })
    .unwrap_or_else(|e| panic!("the report kept a deleted pod ({e}): {}", status()));
}

#[test]
fn network_policy_selects_injected_pods_and_admits_only_the_sidecar_port() {
    let _g = serial();
    let Cluster { api, webhook } = start(&[]);

    api.apply(&namespace("apps", &[]));
    api.apply(&namespace(
        "metrics",
        &[
            ("mcp-guard.dev/inject", "enabled"),
            ("mcp-guard.dev/network-policy-exempt-ports", "15020"),
        ],
    ));
    api.apply(&namespace(
        "open",
        &[
            ("mcp-guard.dev/inject", "enabled"),
            ("mcp-guard.dev/network-policy", "disabled"),
        ],
    ));
    api.apply(&namespace("quiet", &[("mcp-guard.dev/inject", "enabled")]));
    api.apply(&pod("a1", "apps", true));
    api.apply(&pod("a2", "apps", true));
    api.apply(&pod("plain", "apps", false));
    api.apply(&pod("m1", "metrics", true));
    api.apply(&pod("o1", "open", true));
    // Through the real controllers too: a Deployment's pods.
    api.apply(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: tools\n  namespace: apps\nspec:\n  replicas: 2\n  selector:\n    matchLabels: {app: tools}\n  template:\n    metadata:\n      labels: {app: tools}\n      annotations: {mcp-guard.dev/inject: enabled}\n    spec:\n      containers:\n      - name: server\n        image: example.com/tools:1\n        ports: [{name: mcp, containerPort: 3000}]\n",
    );
    wait_until(Duration::from_secs(60), || {
        Ok(list(&api, &["pods", "-n", "apps", "-l", "app=tools"]).len() == 2)
    })
    .expect("the Deployment's pods never appeared");

    let netpols = |api: &ApiServer| -> BTreeSet<String> {
        list(api, &["networkpolicies", "-A"])
            .iter()
            .filter(|n| n["metadata"]["name"] == "mcp-guard-sidecar-only")
            .filter_map(|n| n["metadata"]["namespace"].as_str().map(str::to_string))
            .collect()
    };
    wait_until(Duration::from_secs(60), || {
        Ok(netpols(&api) == BTreeSet::from(["apps".to_string(), "metrics".to_string()]))
    })
    .unwrap_or_else(|e| {
        panic!(
            "network policies ({e}): {:?}\n{}",
            netpols(&api),
            webhook.proc.logs()
        )
    });

    for (ns, ports) in [("apps", json!([15001])), ("metrics", json!([15001, 15020]))] {
        let np = api.get_json("networkpolicy", ns, "mcp-guard-sidecar-only");
        let spec = &np["spec"];
        assert_eq!(spec["policyTypes"], json!(["Ingress"]), "{np:#}");
        let rules = spec["ingress"].as_array().unwrap();
        assert_eq!(rules.len(), 2, "{np:#}");
        assert!(rules[0]["from"].is_null(), "{np:#}");
        // The second admits the admin port, from the controller's pods only (the fleet view).
        assert_eq!(
            rules[1]["ports"],
            json!([{"port": 15020, "protocol": "TCP"}]),
            "{np:#}"
        );
        assert_eq!(
            rules[1]["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"],
            "webhook",
            "{np:#}"
        );
        let got: Vec<Value> = rules[0]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                assert_eq!(p["protocol"], "TCP");
                p["port"].clone()
            })
            .collect();
        assert_eq!(Value::from(got), ports, "{np:#}");
        assert!(spec["egress"].is_null());

        // The selector, evaluated by the API server, yields exactly the injected pods.
        let sel = &spec["podSelector"];
        let mut terms: Vec<String> = sel["matchLabels"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap()))
                    .collect()
            })
            .unwrap_or_default();
        for e in sel["matchExpressions"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            assert_eq!(e["operator"], "In");
            let vals: Vec<&str> = e["values"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(Value::as_str)
                .collect();
            terms.push(format!(
                "{} in ({})",
                e["key"].as_str().unwrap(),
                vals.join(",")
            ));
        }
        let selected: BTreeSet<String> = list(&api, &["pods", "-n", ns, "-l", &terms.join(",")])
            .iter()
            .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string))
            .collect();
        let injected: BTreeSet<String> = list(&api, &["pods", "-n", ns])
            .iter()
            .filter(|p| is_injected(p))
            .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string))
            .collect();
        assert!(!injected.is_empty());
        assert_eq!(selected, injected, "selector {terms:?}");
        if ns == "apps" {
            assert_eq!(injected.len(), 4, "a1, a2 and the Deployment's two pods");
        }
    }

    // A deleted NetworkPolicy is restored; one in a namespace whose injected pods are gone goes.
    let out = api.kubectl(
        &[
            "delete",
            "networkpolicy",
            "mcp-guard-sidecar-only",
            "-n",
            "apps",
        ],
        None,
    );
    assert!(out.success(), "{}", out.stderr);
    wait_until(Duration::from_secs(60), || {
        Ok(get_opt(&api, "networkpolicy", "apps", "mcp-guard-sidecar-only").is_some())
    })
    .expect("deleted NetworkPolicy not restored");
    let out = api.kubectl(
        &["delete", "pod", "m1", "-n", "metrics", "--wait=false"],
        None,
    );
    assert!(out.success(), "{}", out.stderr);
    wait_until(Duration::from_secs(60), || {
        Ok(netpols(&api) == BTreeSet::from(["apps".to_string()]))
    })
    .unwrap_or_else(|e| {
        panic!(
            "NetworkPolicy kept without injected pods ({e}): {:?}",
            netpols(&api)
        )
    });
    assert_no_forbidden(&webhook);
}

#[test]
fn two_replicas_elect_one_leader_and_fail_over() {
    let _g = serial();
    let Cluster { api, webhook: a } = start(&["--identity=replica-a"]);
    let kubeconfig = api.service_account_kubeconfig(OWN, "mcp-guard-webhook");
    let b = Webhook::start_with_kubeconfig(
        &api,
        &kubeconfig,
        &[
            "--controller",
            "--lease-duration=6s",
            "--resync-interval=5s",
            "--own-namespace=mcp-guard",
            "--identity=replica-b",
        ],
    );
    api.apply(&namespace("team", &[("mcp-guard.dev/inject", "enabled")]));
    api.apply(&source(&rego("v1")));
    wait_until(Duration::from_secs(60), || {
        Ok(mirrors(&api).get("team").is_some_and(|r| r.contains("v1")))
    })
    .expect("v1 never mirrored");

    let holder = |api: &ApiServer| -> String {
        api.get_json("lease", OWN, "mcp-guard-controller")["spec"]["holderIdentity"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    let leader = holder(&api);
    assert!(leader == "replica-a" || leader == "replica-b", "{leader}");
    let (mut leading, following, next) = if leader == "replica-a" {
        (a, b, "replica-b")
    } else {
        (b, a, "replica-a")
    };
    // Only the leader writes.
    assert!(leading.proc.logs().contains("mirror written"));
    assert!(
        !following.proc.logs().contains("mirror written")
            && !following.proc.logs().contains("source status written"),
        "the follower wrote:\n{}",
        following.proc.logs()
    );

    // The leader dies without handing the lease back: the follower takes over once it expires.
    // (The admission webhooks may point at the dead replica: take them away first.)
    for kind in [
        "validatingwebhookconfiguration",
        "mutatingwebhookconfiguration",
    ] {
        let _ = api.kubectl(&["delete", kind, "--all"], None);
    }
    leading.proc.kill();
    wait_until(Duration::from_secs(60), || Ok(holder(&api) == next))
        .unwrap_or_else(|e| panic!("no failover ({e}): holder {}", holder(&api)));
    api.apply(&source(&rego("v2")));
    wait_until(Duration::from_secs(60), || {
        Ok(mirrors(&api).get("team").is_some_and(|r| r.contains("v2")))
    })
    .unwrap_or_else(|e| {
        panic!(
            "the new leader does not distribute ({e})\n{}",
            following.proc.logs()
        )
    });
    assert_no_forbidden(&following);
}

/// One stateless 2026-07-28 `tools/call` through the sidecar: whether it was answered with a
/// result (allowed) rather than an error (denied).
fn call_allowed(rt: &tokio::runtime::Runtime, port: u16, id: i64, tool: &str, args: Value) -> bool {
    let url = format!("http://127.0.0.1:{port}/mcp");
    let r = rt.block_on(post_2026(
        &url,
        call_body(id, tool, args),
        "tools/call",
        Some(tool),
    ));
    r.response(&json!(id))
        .is_some_and(|answer| answer.get("result").is_some())
}

/// `namespace`'s mirror of the default policy: (hash, files).
fn mirror_files(api: &ApiServer, namespace: &str) -> (String, Vec<(String, String)>) {
    let m = api.get_json("configmap", namespace, POLICY);
    let files = m["data"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
        .collect();
    (
        m["metadata"]["annotations"]["mcp-guard.dev/hash"]
            .as_str()
            .unwrap_or("")
            .to_string(),
        files,
    )
}

const ECHO_ONLY: &str = "package mcp.authz\n\nimport rego.v1\n\ndefault allow := false\n\nallow if input.request.tool == \"echo\"\n";
const ECHO_AND_ADD: &str = "package mcp.authz\n\nimport rego.v1\n\ndefault allow := false\n\nallow if input.request.tool in {\"echo\", \"add\"}\n";

#[test]
fn sidecar_from_the_injected_spec_follows_an_edit_of_the_source_without_restart() {
    let _g = serial();
    let Cluster {
        api,
        webhook: _webhook,
    } = start(&[]);
    api.apply(&namespace("apps", &[]));
    api.apply(&pod("srv", "apps", true));
    api.apply(&source(ECHO_ONLY));
    wait_until(Duration::from_secs(60), || {
        Ok(mirrors(&api)
            .get("apps")
            .is_some_and(|r| r.contains("echo")))
    })
    .expect("policy never mirrored");

    // The mirror laid out as kubelet lays out a ConfigMap volume.
    let tmp = TempDir::new("controller-e2e");
    let (hash1, files) = mirror_files(&api, "apps");
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut vol = ConfigMapVolume::new(&tmp.path().join("policy"), &refs);

    // The sidecar, started from the stored pod's sidecar container: its env, with the addresses
    // and the volume path moved to this machine.
    let (_server, upstream) = start_example_server();
    let (port, admin) = (free_port(), free_port());
    let (mut env, _) = injected_sidecar(&api, "apps", "srv");
    assert_eq!(env["MCP_GUARD_POLICY_DIR"], "/etc/mcp-guard/policy");
    env.insert("MCP_GUARD_LISTEN".into(), format!("127.0.0.1:{port}"));
    env.insert(
        "MCP_GUARD_ADMIN_LISTEN".into(),
        format!("127.0.0.1:{admin}"),
    );
    env.insert("MCP_GUARD_UPSTREAM_PORT".into(), upstream.to_string());
    env.insert(
        "MCP_GUARD_POLICY_DIR".into(),
        vol.path().display().to_string(),
    );
    let mut proc = Proc::spawn(
        "mcp-guard-sidecar",
        std::process::Command::new(sidecar_bin()).envs(&env),
    );
    let admin_addr = std::net::SocketAddr::from(([127, 0, 0, 1], admin));
    let policy_hash = |admin_addr| -> String {
        http_blocking(admin_addr, "GET", "/policy", Duration::from_secs(2))
            .ok()
            .and_then(|(_, body)| serde_json::from_str::<Value>(&body).ok())
            .and_then(|v| v["hash"].as_str().map(str::to_string))
            .unwrap_or_default()
    };
    wait_until(Duration::from_secs(30), || {
        if let Some(s) = proc.try_status() {
            return Err(format!("sidecar exited ({s})\n{}", proc.logs()));
        }
        Ok(port_open(port) && policy_hash(admin_addr) == hash1)
    })
    .unwrap_or_else(|e| panic!("sidecar never enforced {hash1} ({e})\n{}", proc.logs()));
    assert_eq!(
        status(&api)["hash"],
        hash1.as_str(),
        "one hash from source to sidecar"
    );

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    assert!(call_allowed(&rt, port, 1, "echo", json!({"text": "hi"})));
    assert!(!call_allowed(&rt, port, 2, "add", json!({"a": 1, "b": 2})));

    // Edit the source; the controller updates the mirror; kubelet would swap the volume.
    api.apply(&source(ECHO_AND_ADD));
    wait_until(Duration::from_secs(60), || {
        Ok(mirror_files(&api, "apps").0 != hash1)
    })
    .expect("mirror not updated");
    let (hash2, files2) = mirror_files(&api, "apps");
    let refs: Vec<(&str, &str)> = files2
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    vol.update(&refs);
    wait_until(Duration::from_secs(60), || {
        Ok(call_allowed(&rt, port, 3, "add", json!({"a": 1, "b": 2})))
    })
    .unwrap_or_else(|e| panic!("the edit never took effect ({e})\n{}", proc.logs()));
    assert!(proc.try_status().is_none(), "the sidecar restarted");
    assert_eq!(policy_hash(admin_addr), hash2);
    let (_, metrics) =
        http_blocking(admin_addr, "GET", "/metrics", Duration::from_secs(2)).unwrap();
    assert!(
        metrics.contains(&format!("mcp_guard_policy_info{{hash=\"{hash2}\"}} 1")),
        "{metrics}"
    );
    assert_eq!(status(&api)["hash"], hash2.as_str());
}

/// The stored pod's sidecar container as the kubelet would run it: its environment (the
/// downward API's pod name and namespace filled in) and its admin port.
fn injected_sidecar(
    api: &ApiServer,
    namespace: &str,
    name: &str,
) -> (BTreeMap<String, String>, u16) {
    let stored = api.get_json("pod", namespace, name);
    let sidecar = mcp_guard_webhook::inject::sidecar_of(&stored).expect("the sidecar container");
    let admin_port = sidecar["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == mcp_guard_webhook::inject::ADMIN_PORT_NAME)
        .and_then(|p| u16::try_from(p["containerPort"].as_u64()?).ok())
        .expect("the admin port");
    let mut env: BTreeMap<String, String> = mcp_guard_tests::container_env(sidecar, None)
        .into_iter()
        .collect();
    env.insert("MCP_GUARD_POD_NAME".into(), name.into());
    env.insert("MCP_GUARD_POD_NAMESPACE".into(), namespace.into());
    (env, admin_port)
}

/// Starts a real sidecar as the injected pod `namespace/name` would run
/// ([`injected_sidecar`]), with its admin port on `ip` (the pod IP this test gives the pod, a
/// loopback address of its own), the MCP port on a free loopback port, and `policy_dir` as its
/// volume.
fn sidecar_of_pod(
    api: &ApiServer,
    namespace: &str,
    name: &str,
    ip: std::net::Ipv4Addr,
    policy_dir: &std::path::Path,
    upstream: u16,
    extra_env: &[(&str, &str)],
) -> (Proc, u16) {
    let (mut env, admin_port) = injected_sidecar(api, namespace, name);
    env.extend(
        extra_env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    let port = free_port();
    env.insert("MCP_GUARD_LISTEN".into(), format!("127.0.0.1:{port}"));
    env.insert(
        "MCP_GUARD_ADMIN_LISTEN".into(),
        format!("{ip}:{admin_port}"),
    );
    env.insert("MCP_GUARD_UPSTREAM_PORT".into(), upstream.to_string());
    env.insert(
        "MCP_GUARD_POLICY_DIR".into(),
        policy_dir.display().to_string(),
    );
    let mut proc = Proc::spawn(
        "mcp-guard-sidecar",
        std::process::Command::new(sidecar_bin()).envs(&env),
    );
    wait_until(Duration::from_secs(30), || {
        if let Some(s) = proc.try_status() {
            return Err(format!("sidecar exited ({s})\n{}", proc.logs()));
        }
        Ok(port_open(port))
    })
    .unwrap_or_else(|e| panic!("sidecar of {namespace}/{name} did not start: {e}"));
    (proc, port)
}

/// Gives a stored pod an IP, as the kubelet would (PUT of its status).
fn set_pod_ip(api: &ApiServer, namespace: &str, name: &str, ip: std::net::Ipv4Addr) {
    let mut pod = api.get_json("pod", namespace, name);
    pod["status"]["podIP"] = json!(ip.to_string());
    pod["status"]["podIPs"] = json!([{"ip": ip.to_string()}]);
    let dir = TempDir::new("pod-status");
    let file = dir.path().join("pod.json");
    std::fs::write(&file, pod.to_string()).unwrap();
    let out = std::process::Command::new("curl")
        .args(["-sS", "-f", "-X", "PUT", "--cacert"])
        .arg(api.ca.ca_path())
        .args(["-H", "Content-Type: application/json", "-H"])
        .arg(format!(
            "Authorization: Bearer {}",
            mcp_guard_tests::apiserver::ADMIN_TOKEN
        ))
        .arg("--data-binary")
        .arg(format!("@{}", file.display()))
        .arg(format!(
            "{}/api/v1/namespaces/{namespace}/pods/{name}/status",
            api.url
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Three injected pods with real sidecars, as the fleet tests need them: `fresh` and `stale` in
/// `apps` (`stale` enforcing an older bundle than the one distributed), `elsewhere` in `other`;
/// one allowed and one denied call through `fresh`; a ServiceAccount `viewer` that may list pods
/// in `apps` only. Ready once `/fleet` shows the three pods observed.
struct Fleet {
    /// Each pod's sidecar and its MCP port: fresh, stale, elsewhere.
    sidecars: Vec<(Proc, u16)>,
    _upstream: Proc,
    _tmp: TempDir,
    rt: tokio::runtime::Runtime,
    /// The bundle distributed to `apps`.
    hash: String,
    viewer: String,
    base: String,
    ca: std::path::PathBuf,
    cluster: Cluster,
}

fn by_pod(list: &Value) -> BTreeMap<String, Value> {
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| (r["pod"].as_str().unwrap_or("").to_string(), r.clone()))
        .collect()
}

impl Fleet {
    fn start() -> Fleet {
        let cluster = start(&[]);
        let api = &cluster.api;
        api.apply(&namespace("apps", &[]));
        api.apply(&namespace("other", &[]));
        for (name, ns) in [("fresh", "apps"), ("stale", "apps"), ("elsewhere", "other")] {
            api.apply(&pod(name, ns, true));
        }
        api.apply(&source(ECHO_ONLY));
        wait_until(Duration::from_secs(30), || {
            let m = mirrors(api);
            Ok(m.get("apps").is_some_and(|r| r.contains("echo")) && m.contains_key("other"))
        })
        .expect("policy never mirrored");

        // The distributed bundle, and an older one the stale sidecar still enforces.
        let tmp = TempDir::new("fleet");
        let (hash, files) = mirror_files(api, "apps");
        let refs: Vec<(&str, &str)> = files
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let current = ConfigMapVolume::new(&tmp.path().join("current"), &refs);
        let old: Vec<(&str, &str)> = refs
            .iter()
            .map(|(k, v)| {
                (
                    *k,
                    if k.ends_with(".rego") {
                        ECHO_AND_ADD
                    } else {
                        *v
                    },
                )
            })
            .collect();
        let stale = ConfigMapVolume::new(&tmp.path().join("stale"), &old);

        let (server, upstream) = start_example_server();
        let ip = |last: u8| std::net::Ipv4Addr::new(127, 0, 0, last);
        let mut sidecars = Vec::new();
        // `stale` also runs a server whose echo is not the approved definition: its pins of
        // record (as admission writes them from an ApprovedServer) name another hash.
        let approved_elsewise = format!(r#"{{"echo":"sha256:{}"}}"#, "0".repeat(64));
        for (name, ns, last, dir, env) in [
            ("fresh", "apps", 61, current.path(), vec![]),
            (
                "stale",
                "apps",
                62,
                stale.path(),
                vec![("MCP_GUARD_PINNED_TOOLS", approved_elsewise.as_str())],
            ),
            ("elsewhere", "other", 63, current.path(), vec![]),
        ] {
            sidecars.push(sidecar_of_pod(api, ns, name, ip(last), dir, upstream, &env));
            set_pod_ip(api, ns, name, ip(last));
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        assert!(call_allowed(
            &rt,
            sidecars[0].1,
            1,
            "echo",
            json!({"text": "hi"})
        ));
        assert!(!call_allowed(
            &rt,
            sidecars[0].1,
            2,
            "add",
            json!({"a": 1, "b": 2})
        ));
        // A client lists the tools too (the sidecar also lists them itself at start).
        let list = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/list", "params": {}});
        let url = format!("http://127.0.0.1:{}/mcp", sidecars[0].1);
        let listed = rt.block_on(post_2026(&url, list, "tools/list", None));
        assert!(
            listed
                .response(&json!(3))
                .is_some_and(|a| a["result"]["tools"].is_array())
        );

        // A developer who may list pods in `apps` only.
        api.apply(
            r#"apiVersion: v1
kind: ServiceAccount
metadata: {name: viewer, namespace: apps}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: pod-reader, namespace: apps}
rules:
- apiGroups: [""]
  resources: [pods]
  verbs: [list]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: viewer-reads-pods, namespace: apps}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: pod-reader}
subjects: [{kind: ServiceAccount, name: viewer, namespace: apps}]
"#,
        );
        let viewer = api.service_account_token("apps", "viewer");
        let ca = api.ca.ca_path();
        let base = format!("https://127.0.0.1:{}", cluster.webhook.port);
        let fleet = Fleet {
            sidecars,
            _upstream: server,
            _tmp: tmp,
            rt,
            hash,
            viewer,
            base,
            ca,
            cluster,
        };
        // The rows fill in as the caches see the pod IPs (the view is at most 5 s old).
        wait_until(Duration::from_secs(60), || {
            let (status, list) = fleet.fleet(mcp_guard_tests::apiserver::ADMIN_TOKEN);
            let rows = by_pod(&list);
            Ok(status == 200
                && rows.len() == 3
                && rows.values().all(|r| r["policyHash"].is_string())
                && rows["fresh"]["requests"].as_u64().is_some_and(|n| n >= 2))
        })
        .unwrap_or_else(|e| {
            panic!(
                "the fleet never showed three observed pods ({e}): {}\n{}",
                fleet.fleet(mcp_guard_tests::apiserver::ADMIN_TOKEN).1,
                fleet.cluster.webhook.proc.logs()
            )
        });
        fleet
    }

    /// `GET PATH` on the webhook with `token` (none when empty): the status and the body.
    fn get(&self, path: &str, token: &str) -> (u16, String) {
        let auth = format!("Authorization: Bearer {token}");
        let headers: Vec<&str> = if token.is_empty() {
            vec![]
        } else {
            vec![&auth]
        };
        mcp_guard_tests::apiserver::curl_with(&self.ca, &format!("{}{path}", self.base), &headers)
    }

    /// `GET /fleet` with `token`: the status and the JSON.
    fn fleet(&self, token: &str) -> (u16, Value) {
        let (status, body) = self.get("/fleet", token);
        (status, serde_json::from_str(&body).unwrap_or(Value::Null))
    }
}

#[test]
fn the_fleet_shows_each_injected_pod_with_its_policy_drift_and_counters() {
    let _g = serial();
    let f = Fleet::start();
    let (hash, viewer, base, ca) = (&f.hash, &f.viewer, &f.base, &f.ca);
    let fleet = |token: &str| f.fleet(token);
    let (_, all) = fleet(mcp_guard_tests::apiserver::ADMIN_TOKEN);
    let rows = by_pod(&all);
    let fresh = &rows["fresh"];
    assert_eq!(fresh["namespace"], "apps");
    assert_eq!(fresh["policy"], POLICY);
    assert_eq!(fresh["distributedHash"], hash.as_str());
    assert_eq!(fresh["policyHash"], hash.as_str());
    assert_eq!(fresh["drift"], false, "{fresh:#}");
    assert!(
        fresh["denied"].as_u64().is_some_and(|n| n >= 1),
        "{fresh:#}"
    );
    assert!(fresh["sidecarVersion"].is_string(), "{fresh:#}");
    assert_eq!(fresh["images"], json!(["example.com/mcp:1"]));
    let stale_row = &rows["stale"];
    assert_eq!(stale_row["drift"], true, "{stale_row:#}");
    // Pin drift: the server's echo differs from its pin of record (the tools the pins do not
    // name are unpinned, so they show as changed too).
    let changed: Vec<&str> = stale_row["changedTools"]
        .as_array()
        .unwrap_or_else(|| panic!("no changedTools: {stale_row:#}"))
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(changed.contains(&"echo"), "{stale_row:#}");
    assert!(
        stale_row["toolChanges"].as_u64().is_some_and(|n| n >= 1),
        "{stale_row:#}"
    );
    assert!(fresh.get("changedTools").is_none(), "{fresh:#}");
    assert_ne!(stale_row["policyHash"], hash.as_str());
    assert_eq!(rows["elsewhere"]["namespace"], "other");

    // RBAC: the viewer sees `apps` only; no token, no fleet.
    let (status, mine) = fleet(viewer);
    assert_eq!(status, 200, "{mine}");
    assert_eq!(by_pod(&mine).keys().collect::<Vec<_>>(), ["fresh", "stale"]);
    let (status, refused) = fleet("");
    assert_eq!(status, 401, "{refused}");

    // The CLI prints the same rows.
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(mcp_guard_tests::apiserver::webhook_bin())
            .arg("fleet")
            .args(["--url", base, "--token", viewer, "--ca"])
            .arg(ca)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let json_out: Value = serde_json::from_str(&cli(&["-o", "json"])).unwrap();
    let cli_rows = by_pod(&json_out);
    assert_eq!(cli_rows.keys().collect::<Vec<_>>(), ["fresh", "stale"]);
    assert_eq!(cli_rows["stale"]["drift"], true);
    assert!(
        cli_rows["stale"]["changedTools"]
            .as_array()
            .is_some_and(|t| t.contains(&json!("echo"))),
        "{}",
        cli_rows["stale"]
    );
    let table = cli(&["-n", "apps"]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("NAMESPACE") && lines[0].contains("DRIFT"),
        "{table}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("stale") && l.contains(" yes ")),
        "{table}"
    );

    // Rates: calls to `fresh` after one observation show in the next as a rate above zero;
    // `elsewhere`, which nobody calls, shows zero. (Each /fleet older than 5 s observes anew.)
    for id in 10..13 {
        assert!(call_allowed(
            &f.rt,
            f.sidecars[0].1,
            id,
            "echo",
            json!({"text": "again"})
        ));
    }
    wait_until(Duration::from_secs(60), || {
        let rows = by_pod(&fleet(mcp_guard_tests::apiserver::ADMIN_TOKEN).1);
        Ok(rows["fresh"]["requestsPerSecond"]
            .as_f64()
            .is_some_and(|r| r > 0.0)
            && rows["elsewhere"]["requestsPerSecond"] == json!(0.0))
    })
    .unwrap_or_else(|e| {
        panic!(
            "no rates ({e}): {}",
            fleet(mcp_guard_tests::apiserver::ADMIN_TOKEN).1
        )
    });
}

/// The web dashboard in a real browser (headless chromium): the fleet table with the stale pod's
/// drift flagged, a server's page with its tools, who may see and call them, its refusals and
/// its policy history, and the governance page with the pods outside the perimeter, a Service
/// that mixes governed and ungoverned pods, and the drift. Refused without a session or a token;
/// the same pages load after the login form. Saves the screenshots docs/fleet.md shows.
#[test]
fn the_dashboard_shows_the_fleet_a_server_and_the_perimeter_in_a_browser() {
    let _g = serial();
    let f = Fleet::start();
    let api = &f.cluster.api;
    api.install_approved_servers_crd();
    api.apply("apiVersion: mcp-guard.dev/v1alpha1\nkind: ApprovedServer\nmetadata:\n  name: tickets\nspec:\n  name: io.example/tickets\n  images:\n  - repository: example.com/tickets\n");
    outside_the_perimeter(api);
    // A Service whose endpoints are a governed and an ungoverned pod (its Endpoints written by
    // hand: the Service has no selector).
    api.apply(
        r#"apiVersion: v1
kind: Service
metadata: {name: tools, namespace: apps}
spec:
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Endpoints
metadata: {name: tools, namespace: apps}
subsets:
- addresses:
  - {ip: 10.250.0.1, targetRef: {kind: Pod, namespace: apps, name: fresh}}
  - {ip: 10.250.0.2, targetRef: {kind: Pod, namespace: apps, name: rogue}}
  ports: [{port: 8080}]
"#,
    );
    let status = || api.get_json("approvedserver", "", "tickets")["status"].clone();
    wait_until(Duration::from_secs(60), || {
        Ok(status()["ungovernedPods"] == 1)
    })
    .unwrap_or_else(|e| panic!("no perimeter status ({e}): {}", status()));

    // Without a session or a token: the login form, no data; with a token: the page.
    let (code, page) = f.get("/dashboard/", "");
    assert_eq!(code, 401, "{page}");
    assert!(
        page.contains("name=\"token\"") && !page.contains("fresh"),
        "{page}"
    );
    let (code, page) = f.get("/dashboard/", mcp_guard_tests::apiserver::ADMIN_TOKEN);
    assert_eq!(code, 200, "{page}");
    assert!(page.contains("data-pod=\"apps/fresh\""), "{page}");
    // The viewer's token shows the namespace it may list pods in, and no other.
    let (code, page) = f.get("/dashboard/", &f.viewer);
    assert_eq!(code, 200, "{page}");
    assert!(
        page.contains("apps/stale") && !page.contains("other/elsewhere"),
        "{page}"
    );

    let browser = mcp_guard_tests::chromium::Browser::new();
    let url = |path: &str| format!("{}{path}", f.base);
    let dom = browser.dom(&url("/dashboard/"));
    assert!(
        dom.contains("id=\"refused\"") && dom.contains("name=\"token\""),
        "{dom}"
    );
    assert!(
        !dom.contains("apps/fresh"),
        "refused, yet data shown: {dom}"
    );
    let img = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/img");
    std::fs::create_dir_all(&img).unwrap();
    browser.screenshot(&url("/dashboard/"), &img.join("dashboard-login.png"));

    // The login form: the token is reviewed once; the browser keeps a session cookie.
    browser.submit(
        &url("/dashboard/login"),
        &[
            ("token", mcp_guard_tests::apiserver::ADMIN_TOKEN),
            ("next", "/dashboard/"),
        ],
    );
    let dom = browser.dom(&url("/dashboard/"));
    assert!(
        dom.contains("id=\"who\""),
        "no session after the login form: {dom}"
    );
    assert!(
        dom.contains("data-pod=\"apps/stale\" class=\"drift\""),
        "the stale pod's drift is not flagged: {dom}"
    );
    assert!(dom.contains("data-pod=\"apps/fresh\">"), "{dom}");
    assert!(dom.contains("data-pod=\"other/elsewhere\">"), "{dom}");
    browser.screenshot(&url("/dashboard/"), &img.join("dashboard-fleet.png"));

    // A server's page: `fresh` runs no ApprovedServer, so its page is its namespace and name.
    let server = url("/dashboard/server?name=apps%2Ffresh");
    let dom = browser.dom(&server);
    assert!(dom.contains("data-tool=\"echo\""), "{dom}");
    assert!(dom.contains("data-tool=\"add\""), "{dom}");
    // The calls went without a token: the anonymous caller may see and call echo, not add.
    let row = |tool: &str| {
        let start = dom.find(&format!("data-tool=\"{tool}\"")).unwrap();
        dom[start..start + dom[start..].find("</tr>").unwrap()].to_string()
    };
    assert!(row("echo").contains("see, call"), "{}", row("echo"));
    assert!(row("add").contains(">hidden<"), "{}", row("add"));
    let denies = &dom[dom.find("id=\"denies\"").unwrap()..];
    assert!(
        denies.contains("<td>add</td>") && denies.contains("policy"),
        "{denies}"
    );
    let history = &dom[dom.find("id=\"history\"").unwrap()..];
    let short = f.hash.trim_start_matches("sha256:")[..12].to_string();
    assert!(history.contains(&short), "{history}");
    browser.screenshot(&server, &img.join("dashboard-server.png"));

    let governance = url("/dashboard/governance");
    let dom = browser.dom(&governance);
    let section = |id: &str| {
        let start = dom
            .find(&format!("id=\"{id}\""))
            .unwrap_or_else(|| panic!("no #{id}: {dom}"));
        dom[start..start + dom[start..].find("</table>").unwrap_or(0)].to_string()
    };
    assert!(
        section("servers").contains("data-server=\"tickets\""),
        "{dom}"
    );
    assert!(
        section("ungoverned").contains("data-pod=\"apps/rogue\""),
        "{dom}"
    );
    assert!(
        section("unlisted").contains("data-pod=\"apps/stray\""),
        "{dom}"
    );
    let mixed = section("mixed");
    assert!(
        mixed.contains("data-service=\"apps/tools\"")
            && mixed.contains("fresh")
            && mixed.contains("rogue"),
        "{dom}"
    );
    assert!(
        section("drift").contains("data-pod=\"apps/stale\""),
        "{dom}"
    );
    assert!(
        !section("drift").contains("data-pod=\"apps/fresh\""),
        "{dom}"
    );
    browser.screenshot(&governance, &img.join("dashboard-governance.png"));

    // The logout form makes the browser forget its session: the same page is refused again.
    browser.submit(&url("/dashboard/logout"), &[]);
    let dom = browser.dom(&url("/dashboard/"));
    assert!(
        dom.contains("id=\"refused\"") && !dom.contains("apps/fresh"),
        "{dom}"
    );
    assert_no_forbidden(&f.cluster.webhook);
}
