//! The Helm chart (`charts/mcp-guard`), the plain manifests rendered from it and the certificate
//! tooling: `helm lint` and `helm template` pass for default and non-default values, every
//! rendered object validates with `kubernetes-validate --strict` against Kubernetes 1.29 and 1.37,
//! bad values are refused by `values.schema.json` with a clear message, `manifests/mcp-guard.yaml`
//! is the chart's current default rendering, the chart's default images are the ones the
//! Dockerfiles say they build, and `certs/gen-dev-certs.sh` makes a working CA and serving
//! certificate. On a real kube-apiserver the plain manifests apply, the ServiceAccount,
//! with a token of its own, has exactly the rights it needs and is refused the rest, and the
//! webhook runs with the Deployment's environment under that identity. docs/install.md's walk-through (the examples) gives a first denied tool call.
//! Helm comes from `tests/scripts/install-helm.sh` (cached, idempotent); kubernetes-validate and
//! kube-apiserver from `tests/scripts/install-kube.sh`; the binaries from `cargo build --bins`.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use mcp_guard_tests::apiserver::{curl, kube_tools, wait_until, webhook_bin};
use mcp_guard_tests::volume::ConfigMapVolume;
use mcp_guard_tests::{
    Everything, EverythingTransport, Output, PROTOCOL_2025, Proc, Session, Sidecar, TempDir,
    call_body, free_port, list_body, run_bounded, tool_names, workspace_root,
};
use serde_json::{Value, json};

const RELEASE: &str = "mcp-guard";
const NAMESPACE: &str = "mcp-guard";

/// Keys whose values `helm template` generates afresh on every render (selfSigned certificates).
const GENERATED_KEYS: &[&str] = &["tls.crt:", "tls.key:", "ca.crt:", "caBundle:"];

fn helm() -> &'static Path {
    static HELM: OnceLock<PathBuf> = OnceLock::new();
    HELM.get_or_init(|| {
        let script = workspace_root().join("tests/scripts/install-helm.sh");
        let out = run_bounded(
            "install-helm",
            Command::new("bash").arg(&script).env("CI", "true"),
            Duration::from_secs(300),
        );
        assert!(
            out.success(),
            "tests/scripts/install-helm.sh failed:\n{}\n{}",
            out.stdout,
            out.stderr
        );
        let path = PathBuf::from(out.stdout.lines().last().unwrap_or("").trim());
        assert!(path.exists(), "install-helm.sh printed no helm path");
        path
    })
}

fn chart() -> PathBuf {
    workspace_root().join("charts/mcp-guard")
}

fn run_helm(args: &[&str]) -> Output {
    run_bounded(
        "helm",
        Command::new(helm())
            .args(args)
            .current_dir(workspace_root())
            .env(
                "HELM_CACHE_HOME",
                std::env::temp_dir().join("mcp-guard-helm-cache"),
            )
            .env(
                "HELM_CONFIG_HOME",
                std::env::temp_dir().join("mcp-guard-helm-config"),
            )
            .env(
                "HELM_DATA_HOME",
                std::env::temp_dir().join("mcp-guard-helm-data"),
            ),
        Duration::from_secs(120),
    )
}

/// `helm template` of the chart with extra arguments: (its arguments, what helm did).
fn run_template(extra: &[&str]) -> (Vec<String>, Output) {
    let chart = chart();
    let mut args = vec![
        "template",
        RELEASE,
        chart.to_str().unwrap(),
        "-n",
        NAMESPACE,
    ];
    args.extend_from_slice(extra);
    let out = run_helm(&args);
    (args.iter().map(|a| a.to_string()).collect(), out)
}

/// `helm template` of the chart with extra arguments; panics on failure.
fn template(extra: &[&str]) -> String {
    let (args, out) = run_template(extra);
    assert!(
        out.success(),
        "helm {args:?} failed:\n{}\n{}",
        out.stdout,
        out.stderr
    );
    out.stdout
}

/// `helm template` that must fail; returns its stderr.
fn template_refused(extra: &[&str]) -> String {
    let (args, out) = run_template(extra);
    assert!(
        !out.success(),
        "helm {args:?} should have been refused, rendered:\n{}",
        out.stdout
    );
    out.stderr
}

/// `kind` of every rendered document.
fn kinds(rendered: &str) -> Vec<String> {
    rendered
        .lines()
        .filter_map(|l| l.strip_prefix("kind: "))
        .map(|k| k.trim().to_string())
        .collect()
}

/// Validates every object with `kubernetes-validate --strict` against 1.29 and 1.37. Only
/// cert-manager's kinds (CRDs, not in the Kubernetes schemas) may lack a schema.
fn validate(rendered: &str, what: &str) {
    let validator = kube_tools().validate.unwrap_or_else(|| {
        panic!("kubernetes-validate is missing: run tests/scripts/install-kube.sh")
    });
    let dir = TempDir::new("chart-validate");
    let file = dir.path().join("rendered.yaml");
    fs::write(&file, rendered).unwrap();
    let objects = kinds(rendered).len();
    assert!(objects > 0, "{what}: nothing rendered");
    for version in ["1.29.0", "1.37.0"] {
        let out = run_bounded(
            "kubernetes-validate",
            Command::new(&validator)
                .args(["-k", version, "--strict"])
                .arg(&file),
            Duration::from_secs(120),
        );
        let all = format!("{}\n{}", out.stdout, out.stderr);
        assert!(
            out.success(),
            "{what}: kubernetes-validate {version} --strict failed:\n{all}"
        );
        let passed = all.lines().filter(|l| l.contains(" passed for ")).count();
        let skipped: Vec<&str> = all
            .lines()
            .filter(|l| l.contains("Couldn't find schema"))
            .collect();
        for line in &skipped {
            assert!(
                line.contains("cert-manager.io/"),
                "{what}: {version}: an object without a Kubernetes schema: {line}"
            );
        }
        assert_eq!(
            passed + skipped.len(),
            objects,
            "{what}: {version}: not every object was validated:\n{all}"
        );
    }
}

/// The non-default values: cert-manager with an existing ClusterIssuer, controller and validating
/// webhook off, other knobs changed.
const CUSTOM_VALUES: &str = r#"
fullnameOverride: guard
webhook:
  replicas: 3
  image:
    digest: sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
  podDisruptionBudget:
    minAvailable: 2
  topologySpread:
    whenUnsatisfiable: DoNotSchedule
  tolerations:
    - key: dedicated
      operator: Equal
      value: system
      effect: NoSchedule
mutating:
  failurePolicy: Ignore
  timeoutSeconds: 5
  reinvocationPolicy: Never
  excludeNamespaces: [legacy, sandbox]
validating:
  enabled: false
controller:
  enabled: false
sidecar:
  image:
    repository: registry.example.com/mcp-guard/sidecar
    tag: "0.2.0"
  enforcement: shadow
  issuer: https://login.example.com/realms/agents
  resourceUriTemplate: https://{name}.{namespace}.svc.cluster.local{path}
  nativeSidecars: never
  resources:
    requests: {cpu: 20m, memory: 48Mi}
    limits: {cpu: 500m, memory: 128Mi}
policy:
  name: team-policy
  files:
    authz.rego: |
      package mcp.authz
      import rego.v1
      default allow := false
      allow if input.request.tool == "echo"
    data.json: |
      {}
certificates:
  mode: certManager
  certManager:
    issuerRef:
      name: corp-ca
      kind: ClusterIssuer
"#;

fn custom_values(dir: &TempDir) -> String {
    let file = dir.path().join("custom.yaml");
    fs::write(&file, CUSTOM_VALUES).unwrap();
    file.to_str().unwrap().to_string()
}

#[test]
fn helm_lint_passes_for_default_and_custom_values() {
    let dir = TempDir::new("chart-lint");
    let custom = custom_values(&dir);
    let chart = chart();
    let chart = chart.to_str().unwrap();
    for args in [
        vec!["lint", "--strict", chart],
        vec!["lint", "--strict", chart, "-f", &custom],
        vec![
            "lint",
            "--strict",
            chart,
            "--set",
            "certificates.mode=secret",
            "--set",
            "certificates.secret.name=webhook-tls",
            "--set",
            "certificates.secret.caBundle=Y2E=",
        ],
    ] {
        let out = run_helm(&args);
        assert!(
            out.success(),
            "helm {args:?}:\n{}\n{}",
            out.stdout,
            out.stderr
        );
    }
}

#[test]
fn default_rendering_is_complete_and_valid() {
    let rendered = template(&[]);
    let mut k = kinds(&rendered);
    k.sort();
    assert_eq!(
        k,
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "Deployment",
            "MutatingWebhookConfiguration",
            "PodDisruptionBudget",
            "Role",
            "RoleBinding",
            "Secret",
            "Service",
            "ServiceAccount",
            "ValidatingWebhookConfiguration",
        ]
    );
    for needle in [
        "replicas: 2",
        "topologyKey: kubernetes.io/hostname",
        "runAsNonRoot: true",
        "readOnlyRootFilesystem: true",
        "drop: [ALL]",
        "type: RuntimeDefault",
        "path: /livez",
        "path: /readyz",
        "scheme: HTTPS",
        "image: ghcr.io/mcp-guard/webhook:0.1.0",
        "value: \"ghcr.io/mcp-guard/sidecar:0.1.0\"",
        "failurePolicy: Fail",
        "timeoutSeconds: 10",
        "reinvocationPolicy: IfNeeded",
        "operations: [\"CREATE\"]",
        "resources: [\"pods\"]",
        "- kube-system\n",
        "- kube-public\n",
        "- kube-node-lease\n",
        "- mcp-guard\n",
        "key: mcp-guard.dev/admission-webhooks",
        "objectSelector:",
        "mcp-guard.dev/admission-webhooks: disabled",
        "apiVersion: policy/v1\n",
        "path: /validate",
        "mcp-guard.dev/policy: \"true\"",
        "default allow := false",
        "resources: [leases]",
        "name: MCP_GUARD_WEBHOOK_CONTROLLER\n              value: \"true\"",
    ] {
        assert!(
            rendered.contains(needle),
            "default rendering lacks {needle:?}:\n{rendered}"
        );
    }
    for absent in [
        "MCP_GUARD_WEBHOOK_DEFAULT_ISSUER",
        "MCP_GUARD_WEBHOOK_DEFAULT_RESOURCE_URI_TEMPLATE",
    ] {
        assert!(
            !rendered.contains(absent),
            "default rendering sets {absent}, which is off by default:\n{rendered}"
        );
    }
    // One CA: the Secret's ca.crt is the caBundle of both webhook configurations.
    let ca = rendered
        .lines()
        .find_map(|l| l.trim().strip_prefix("ca.crt: "))
        .unwrap();
    assert_eq!(
        rendered.matches(&format!("caBundle: {ca}")).count(),
        2,
        "both webhooks trust the generated CA"
    );
    validate(&rendered, "default values");
}

/// On a cluster without `policy/v1` (Kubernetes 1.20) the PodDisruptionBudget is rendered as
/// `policy/v1beta1`, and the webhook's own pods stay out of the mutating webhook by their label
/// (objectSelector), not only by the release namespace: before 1.21 a namespace has no
/// `kubernetes.io/metadata.name` label, so the namespace exclusion does not hold there. The
/// real node (node_e2e) installs the chart on 1.20.
#[test]
fn an_old_cluster_gets_what_it_serves() {
    // What a 1.20 API server's discovery gives Helm: the kind in policy/v1beta1, none in v1.
    let rendered = template(&[
        "--kube-version",
        "1.20.2",
        "--api-versions",
        "policy/v1beta1/PodDisruptionBudget",
    ]);
    let pdb = rendered
        .split("\n---")
        .find(|d| d.contains("kind: PodDisruptionBudget"))
        .unwrap();
    assert!(pdb.contains("apiVersion: policy/v1beta1\n"), "{pdb}");
    let deployment = rendered_deployment(&rendered);
    assert_eq!(
        deployment["spec"]["template"]["metadata"]["labels"]["mcp-guard.dev/admission-webhooks"],
        "disabled"
    );
    let mutating = rendered
        .split("\n---")
        .find(|d| d.contains("kind: MutatingWebhookConfiguration"))
        .unwrap();
    assert!(
        mutating.contains(
            "objectSelector:\n      matchExpressions:\n        - key: mcp-guard.dev/admission-webhooks\n          operator: NotIn\n          values: [\"disabled\"]"
        ),
        "{mutating}"
    );
}

#[test]
fn custom_rendering_follows_values_and_is_valid() {
    let dir = TempDir::new("chart-custom");
    let custom = custom_values(&dir);
    let rendered = template(&["-f", &custom]);
    let k = kinds(&rendered);
    assert!(k.contains(&"Certificate".to_string()), "{k:?}");
    assert!(
        !k.contains(&"Issuer".to_string()),
        "uses the given ClusterIssuer: {k:?}"
    );
    assert!(
        !k.contains(&"Secret".to_string()),
        "cert-manager writes the Secret: {k:?}"
    );
    assert!(!k.contains(&"ValidatingWebhookConfiguration".to_string()));
    assert!(
        !k.contains(&"Role".to_string()),
        "no Lease rights without the controller"
    );
    for needle in [
        "name: guard-webhook",
        "replicas: 3",
        "minAvailable: 2",
        "whenUnsatisfiable: DoNotSchedule",
        "@sha256:0123456789abcdef",
        "registry.example.com/mcp-guard/sidecar:0.2.0",
        "failurePolicy: Ignore",
        "timeoutSeconds: 5",
        "reinvocationPolicy: Never",
        "- legacy\n",
        "- sandbox\n",
        "cert-manager.io/inject-ca-from: mcp-guard/guard-webhook",
        "kind: ClusterIssuer",
        "value: \"shadow\"",
        "value: \"https://login.example.com/realms/agents\"",
        "name: MCP_GUARD_WEBHOOK_DEFAULT_RESOURCE_URI_TEMPLATE\n              \
         value: \"https://{name}.{namespace}.svc.cluster.local{path}\"",
        "value: \"never\"",
        "value: \"team-policy\"",
        "name: team-policy",
        "value: \"128Mi\"",
    ] {
        assert!(
            rendered.contains(needle),
            "custom rendering lacks {needle:?}:\n{rendered}"
        );
    }
    assert!(!rendered.contains("caBundle:"), "cainjector fills it in");
    assert!(
        !rendered.contains("resources: [configmaps]"),
        "controller rights only with it"
    );
    validate(&rendered, "custom values");
    // The env the chart gives the webhook names its real flags: `inject` with that env gives the
    // example server the issuer, the URI from the template and the other sidecar defaults.
    let deployment = rendered_deployment(&rendered);
    let webhook_env: Vec<(String, String)> = deployment["spec"]["template"]["spec"]["containers"]
        [0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|var| Some((var["name"].as_str()?.into(), var["value"].as_str()?.into())))
        .collect();
    let example = workspace_root().join("manifests/examples/mcp-server.yaml");
    let injected = inject_with_env(&example, &webhook_env)
        .into_iter()
        .find(|d| d["kind"] == "Deployment")
        .unwrap();
    let sidecar = injected["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "mcp-guard")
        .unwrap_or_else(|| panic!("nativeSidecars: never puts the sidecar first: {injected:#}"));
    assert_eq!(
        sidecar["image"],
        "registry.example.com/mcp-guard/sidecar:0.2.0"
    );
    assert_eq!(
        env_value(sidecar, "MCP_GUARD_RESOURCE_URI"),
        Some("https://everything.tools.svc.cluster.local/mcp")
    );
    assert_eq!(
        env_value(sidecar, "MCP_GUARD_ISSUER"),
        Some("https://login.example.com/realms/agents")
    );
    assert_eq!(env_value(sidecar, "MCP_GUARD_ENFORCEMENT"), Some("shadow"));

    let secret = template(&[
        "--set",
        "certificates.mode=secret",
        "--set",
        "certificates.secret.name=webhook-tls",
        "--set",
        "certificates.secret.caBundle=Y2E=",
        "--set",
        "controller.networkPolicyExemptPorts={15020,9090}",
    ]);
    assert!(secret.contains("secretName: webhook-tls"));
    assert_eq!(secret.matches("caBundle: Y2E=").count(), 2);
    assert!(secret.contains("value: \"15020,9090\""));
    assert!(!kinds(&secret).contains(&"Secret".to_string()));
    validate(&secret, "existing-Secret values");
}

#[test]
fn bad_values_are_refused_by_the_schema() {
    for (set, message) in [
        (
            "mutating.failurePolicy=Sometimes",
            "mutating.failurePolicy must be one of the following: \"Fail\", \"Ignore\"",
        ),
        (
            "mutating.timeoutSeconds=60",
            "mutating.timeoutSeconds: Must be less than or equal to 30",
        ),
        (
            "mutating.reinvocationPolicy=Always",
            "mutating.reinvocationPolicy must be one of the following",
        ),
        (
            "sidecar.enforcement=audit",
            "sidecar.enforcement must be one of the following: \"enforce\", \"shadow\"",
        ),
        (
            "sidecar.resources.limits.memory=lots",
            "sidecar.resources.limits.memory: Does not match pattern",
        ),
        (
            "sidecar.issuer=login.example.com",
            "sidecar.issuer: Does not match pattern",
        ),
        (
            "sidecar.resourceUriTemplate=5",
            "sidecar.resourceUriTemplate: Invalid type. Expected: string, given: integer",
        ),
        (
            "sidecar.resourceUriTemplate=https://{name}.{ns}.svc{path}",
            "sidecar.resourceUriTemplate: Does not match pattern",
        ),
        (
            "sidecar.resourceUriTemplate=https://{path}",
            "sidecar.resourceUriTemplate: Does not match pattern",
        ),
        (
            "webhook.replicas=0",
            "webhook.replicas: Must be greater than or equal to 1",
        ),
        (
            "webhook.port=443",
            "webhook.port: Must be greater than or equal to 1024",
        ),
        (
            "webhook.bogus=1",
            "webhook: Additional property bogus is not allowed",
        ),
        (
            "certificates.mode=vault",
            "certificates.mode must be one of the following: \"selfSigned\", \"certManager\", \"secret\"",
        ),
        (
            "certificates.mode=secret",
            "certificates.secret.name: String length must be greater than or equal to 1",
        ),
        (
            "controller.resyncInterval=soon",
            "controller.resyncInterval: Does not match pattern",
        ),
    ] {
        let stderr = template_refused(&["--set", set]);
        assert!(
            stderr.contains("values don't meet the specifications of the schema"),
            "--set {set}: {stderr}"
        );
        assert!(
            stderr.contains(message),
            "--set {set}: expected {message:?} in:\n{stderr}"
        );
    }
}

/// The Deployment of a rendering, as JSON.
fn rendered_deployment(rendered: &str) -> Value {
    let dir = TempDir::new("chart-deployment");
    let file = dir.path().join("rendered.yaml");
    fs::write(&file, rendered).unwrap();
    as_json(&file)
        .into_iter()
        .find(|d| d["kind"] == "Deployment")
        .unwrap_or_else(|| panic!("no Deployment rendered"))
}

/// The literal value of environment variable `name` of `container`.
fn env_value<'a>(container: &'a Value, name: &str) -> Option<&'a str> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)?["value"]
        .as_str()
}

/// The header comment of a Dockerfile (its leading `#` lines), as one line of words.
fn dockerfile_header(path: &str) -> String {
    let text = fs::read_to_string(workspace_root().join(path)).unwrap();
    text.lines()
        .take_while(|l| l.starts_with('#'))
        .flat_map(|l| l.trim_start_matches('#').split_whitespace())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The images the chart deploys with its default values (from values.yaml and the chart's
/// appVersion) are the ones the three Dockerfiles say they build: the `docker build -t` line and
/// the chart reference named in each header.
#[test]
fn image_references_match_the_dockerfiles() {
    let deployment = rendered_deployment(&template(&[]));
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let env = |name: &str| -> String {
        env_value(container, name)
            .unwrap_or_else(|| panic!("the Deployment sets no {name}"))
            .to_string()
    };
    let chart_yaml = fs::read_to_string(chart().join("Chart.yaml")).unwrap();
    let app_version = chart_yaml
        .lines()
        .find_map(|l| l.strip_prefix("appVersion:"))
        .map(|v| v.trim().trim_matches('"').to_string())
        .unwrap();
    for (dockerfile, value, image) in [
        (
            "webhook/Dockerfile",
            "webhook.image",
            container["image"].as_str().unwrap().to_string(),
        ),
        (
            "sidecar/Dockerfile",
            "sidecar.image",
            env("MCP_GUARD_WEBHOOK_IMAGE"),
        ),
        (
            "webhook/redirect.Dockerfile",
            "sidecar.redirectImage",
            env("MCP_GUARD_WEBHOOK_REDIRECT_IMAGE"),
        ),
    ] {
        let (repository, tag) = image.rsplit_once(':').unwrap();
        assert_eq!(
            tag, app_version,
            "{value}: the default tag is the chart's appVersion"
        );
        let header = dockerfile_header(dockerfile);
        for expected in [
            format!("docker build -f {dockerfile} -t {image} ."),
            format!("The chart's default image reference is {repository}:<appVersion>"),
        ] {
            assert!(
                header.contains(&expected),
                "{dockerfile} and the chart's {value} ({image}) disagree: the header lacks \
                 {expected:?}:\n{header}"
            );
        }
    }
    let redirect = dockerfile_header("webhook/redirect.Dockerfile");
    assert!(
        redirect.contains("sidecar.redirectImage"),
        "the redirect Dockerfile names the chart value that refers to it: {redirect}"
    );
}

/// Drops the header comment and masks the generated certificate material.
fn normalize(manifest: &str) -> String {
    let mut out = String::new();
    for line in manifest.lines().skip_while(|l| l.starts_with('#')) {
        let trimmed = line.trim_start();
        match GENERATED_KEYS.iter().find(|k| trimmed.starts_with(*k)) {
            Some(key) => {
                let indent = &line[..line.len() - trimmed.len()];
                out.push_str(&format!("{indent}{key} <generated>"));
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[test]
fn plain_manifests_match_the_chart() {
    let path = workspace_root().join("manifests/mcp-guard.yaml");
    let committed = fs::read_to_string(&path).unwrap();
    let rendered = template(&["--include-crds"]);
    assert!(
        normalize(&committed) == normalize(&rendered),
        "manifests/mcp-guard.yaml is not the chart's default rendering: run manifests/render.sh"
    );
    validate(&committed, "manifests/mcp-guard.yaml");
    for example in ["mcp-server.yaml", "policy.yaml", "example-server.yaml"] {
        let text =
            fs::read_to_string(workspace_root().join("manifests/examples").join(example)).unwrap();
        validate(&text, example);
    }
}

#[test]
fn gen_dev_certs_makes_a_ca_and_a_serving_certificate() {
    let dir = TempDir::new("chart-certs");
    let out = run_bounded(
        "gen-dev-certs",
        Command::new("bash")
            .arg(workspace_root().join("certs/gen-dev-certs.sh"))
            .args(["mcp-guard-webhook", "mcp-guard"])
            .arg(dir.path()),
        Duration::from_secs(60),
    );
    assert!(out.success(), "{}\n{}", out.stdout, out.stderr);
    let bundle = out.stdout.trim();
    let ca = fs::read_to_string(dir.path().join("ca.crt")).unwrap();
    let decoded = run_bounded(
        "base64",
        Command::new("bash")
            .arg("-c")
            .arg(format!("printf %s '{bundle}' | base64 -d")),
        Duration::from_secs(10),
    );
    assert_eq!(decoded.stdout, ca, "the printed caBundle is ca.crt");
    let verify = run_bounded(
        "openssl",
        Command::new("openssl")
            .args(["verify", "-CAfile"])
            .arg(dir.path().join("ca.crt"))
            .arg(dir.path().join("tls.crt")),
        Duration::from_secs(10),
    );
    assert!(verify.success(), "{}", verify.stderr);
    let text = run_bounded(
        "openssl",
        Command::new("openssl")
            .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
            .arg(dir.path().join("tls.crt")),
        Duration::from_secs(10),
    );
    assert!(
        text.stdout.contains("DNS:mcp-guard-webhook.mcp-guard.svc"),
        "{}",
        text.stdout
    );
    let usage = run_bounded(
        "gen-dev-certs",
        Command::new("bash").arg(workspace_root().join("certs/gen-dev-certs.sh")),
        Duration::from_secs(10),
    );
    assert!(!usage.success());
    assert!(usage.stderr.contains("usage:"), "{}", usage.stderr);
}

/// On a real kube-apiserver: `kubectl apply -f manifests/mcp-guard.yaml` creates every object,
/// and the webhook's ServiceAccount, authenticated by a token issued for it (no impersonation),
/// holds exactly the rights docs/distribution.md lists and is refused what it does not need.
#[test]
fn plain_manifests_apply_on_a_real_apiserver_with_least_privilege() {
    use mcp_guard_tests::apiserver::ApiServer;

    let api = ApiServer::start();
    let ns = api.kubectl(&["create", "namespace", NAMESPACE], None);
    assert!(ns.success(), "{}", ns.stderr);
    let path = workspace_root().join("manifests/mcp-guard.yaml");
    let out = api.kubectl(&["apply", "-f", path.to_str().unwrap()], None);
    // policy/v1 PodDisruptionBudget is served from Kubernetes 1.21. The chart renders
    // policy/v1beta1 where the cluster has no policy/v1 (Helm's capabilities, see
    // `an_old_cluster_gets_what_it_serves`); these plain manifests are rendered for a current
    // cluster, so on an older control plane that object alone is refused, as unknown.
    let old = api
        .tools
        .version
        .strip_prefix("1.")
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.parse::<u32>().ok())
        .is_some_and(|minor| minor < 21);
    if old {
        let refused: Vec<&str> = out.stderr.lines().filter(|l| !l.is_empty()).collect();
        assert!(
            refused.len() == 1
                && refused[0].contains("no matches for kind \"PodDisruptionBudget\"")
                && refused[0].contains("policy/v1"),
            "kubectl apply on {}:\n{}\n{}",
            api.tools.version,
            out.stdout,
            out.stderr
        );
    } else {
        assert!(
            out.success(),
            "kubectl apply:\n{}\n{}",
            out.stdout,
            out.stderr
        );
    }
    for (kind, namespaced, name) in [
        ("serviceaccount", true, "mcp-guard-webhook"),
        ("secret", true, "mcp-guard-webhook-tls"),
        ("configmap", true, "mcp-guard-policy"),
        ("service", true, "mcp-guard-webhook"),
        ("deployment", true, "mcp-guard-webhook"),
        ("role", true, "mcp-guard-webhook-leader-election"),
        ("rolebinding", true, "mcp-guard-webhook-leader-election"),
        ("clusterrole", false, "mcp-guard-webhook"),
        ("clusterrolebinding", false, "mcp-guard-webhook"),
        ("mutatingwebhookconfiguration", false, "mcp-guard-webhook"),
        ("validatingwebhookconfiguration", false, "mcp-guard-webhook"),
    ] {
        let mut args = vec!["get", kind, name, "-o", "name"];
        if namespaced {
            args.extend(["-n", NAMESPACE]);
        }
        let got = api.kubectl(&args, None);
        assert!(
            got.success(),
            "{kind}/{name} was not created: {}",
            got.stderr
        );
    }
    if !old {
        let got = api.kubectl(
            &[
                "get",
                "pdb",
                "mcp-guard-webhook",
                "-n",
                NAMESPACE,
                "-o",
                "name",
            ],
            None,
        );
        assert!(got.success(), "PodDisruptionBudget: {}", got.stderr);
    }

    // Everything below runs as the ServiceAccount itself: a token the API server issued for it
    // (TokenRequest), so RBAC alone decides, exactly as for the Deployment's pods.
    let sa = format!("system:serviceaccount:{NAMESPACE}:mcp-guard-webhook");
    let kubeconfig = api.service_account_kubeconfig(NAMESPACE, "mcp-guard-webhook");
    let as_sa = |args: &[&str]| api.kubectl_with(&kubeconfig, args, None);
    // `auth can-i` without `--as`: a SelfSubjectAccessReview, answered for the token's identity.
    let can = |verb: &str, resource: &str, namespace: Option<&str>| -> bool {
        let mut args = vec!["auth", "can-i", verb, resource];
        match namespace {
            Some(n) => args.extend(["-n", n]),
            None => args.push("--all-namespaces"),
        }
        let out = as_sa(&args);
        match out.stdout.trim() {
            "yes" => true,
            "no" => false,
            other => panic!(
                "kubectl auth can-i {verb} {resource}: {other:?} {}",
                out.stderr
            ),
        }
    };
    for (verb, resource, namespace) in [
        ("get", "namespaces", None),
        ("list", "namespaces", None),
        ("watch", "namespaces", None),
        ("list", "approvedservers.mcp-guard.dev", None),
        ("watch", "approvedservers.mcp-guard.dev", None),
        ("create", "tokenreviews.authentication.k8s.io", None),
        ("create", "subjectaccessreviews.authorization.k8s.io", None),
        ("list", "pods", None),
        ("watch", "pods", None),
        ("get", "configmaps", Some("tools")),
        ("list", "configmaps", None),
        ("watch", "configmaps", None),
        ("create", "configmaps", Some("tools")),
        ("patch", "configmaps", Some(NAMESPACE)),
        ("delete", "configmaps", Some("tools")),
        ("list", "networkpolicies.networking.k8s.io", None),
        ("create", "networkpolicies.networking.k8s.io", Some("tools")),
        ("patch", "networkpolicies.networking.k8s.io", Some("tools")),
        ("delete", "networkpolicies.networking.k8s.io", Some("tools")),
        ("create", "events.events.k8s.io", Some(NAMESPACE)),
        ("get", "leases.coordination.k8s.io", Some(NAMESPACE)),
        ("create", "leases.coordination.k8s.io", Some(NAMESPACE)),
        ("update", "leases.coordination.k8s.io", Some(NAMESPACE)),
    ] {
        assert!(
            can(verb, resource, namespace),
            "the webhook's ServiceAccount cannot {verb} {resource} in {namespace:?}"
        );
    }
    for (verb, resource, namespace) in [
        ("get", "secrets", Some(NAMESPACE)),
        ("list", "secrets", None),
        ("create", "pods", Some("tools")),
        ("get", "pods", Some("tools")),
        ("delete", "pods", Some("tools")),
        ("update", "configmaps", Some("tools")),
        ("create", "namespaces", None),
        ("patch", "namespaces", None),
        ("create", "approvedservers.mcp-guard.dev", None),
        ("delete", "approvedservers.mcp-guard.dev", None),
        ("create", "deployments.apps", Some("tools")),
        ("get", "leases.coordination.k8s.io", Some("tools")),
        ("delete", "leases.coordination.k8s.io", Some(NAMESPACE)),
        (
            "update",
            "mutatingwebhookconfigurations.admissionregistration.k8s.io",
            None,
        ),
        (
            "create",
            "clusterrolebindings.rbac.authorization.k8s.io",
            None,
        ),
        ("impersonate", "serviceaccounts", Some(NAMESPACE)),
    ] {
        assert!(
            !can(verb, resource, namespace),
            "the webhook's ServiceAccount may {verb} {resource} in {namespace:?}: more than it needs"
        );
    }
    // Real requests beyond those rights are refused, naming the ServiceAccount: the token is the
    // identity the API server sees, and what it was not granted it does not get.
    for args in [
        vec!["get", "secrets", "-n", NAMESPACE],
        vec!["get", "secret", "mcp-guard-webhook-tls", "-n", NAMESPACE],
        vec![
            "create",
            "deployment",
            "intruder",
            "--image=example.com/intruder:1",
            "-n",
            NAMESPACE,
        ],
        vec![
            "create",
            "clusterrolebinding",
            "escalate",
            "--clusterrole=cluster-admin",
            "--user=nobody",
        ],
        vec![
            "delete",
            "mutatingwebhookconfiguration",
            "mcp-guard-webhook",
        ],
    ] {
        let out = as_sa(&args);
        assert!(
            !out.success()
                && out
                    .stderr
                    .contains(&format!("is forbidden: User \"{sa}\" cannot")),
            "kubectl {args:?} as the ServiceAccount should be Forbidden for {sa}:\n{}\n{}",
            out.stdout,
            out.stderr
        );
    }
    // What it was granted works with that token, against real objects.
    let policy = as_sa(&["get", "configmap", "mcp-guard-policy", "-n", NAMESPACE]);
    assert!(
        policy.success(),
        "the ServiceAccount cannot read the policy source: {}",
        policy.stderr
    );

    // The webhook and its controller, configured exactly as the Deployment configures them and
    // running with the ServiceAccount's own token: ready, leading, and writing policy status,
    // with no request refused.
    // No kubelet runs here, so the Service has no endpoints: take the webhook configurations out
    // (they would refuse the controller's own status write to the labelled policy ConfigMap).
    for kind in [
        "mutatingwebhookconfiguration",
        "validatingwebhookconfiguration",
    ] {
        let out = api.kubectl(&["delete", kind, "mcp-guard-webhook"], None);
        assert!(out.success(), "{}", out.stderr);
    }
    let docs = as_json(&path);
    let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["args"], json!(["serve"]));
    let (cert, key) = api.ca.issue("chart-webhook", "mcp-guard-webhook");
    let port = free_port();
    let mut cmd = Command::new(webhook_bin());
    cmd.arg("serve").env("KUBECONFIG", &kubeconfig);
    for var in container["env"].as_array().unwrap() {
        let name = var["name"].as_str().unwrap();
        let value = match (name, var["value"].as_str()) {
            ("MCP_GUARD_WEBHOOK_LISTEN", _) => format!("127.0.0.1:{port}"),
            ("MCP_GUARD_WEBHOOK_TLS_CERT", _) => cert.display().to_string(),
            ("MCP_GUARD_WEBHOOK_TLS_KEY", _) => key.display().to_string(),
            ("MCP_GUARD_WEBHOOK_OWN_NAMESPACE", None) => NAMESPACE.to_string(),
            ("MCP_GUARD_WEBHOOK_IDENTITY", None) => "chart-test-replica".to_string(),
            (_, Some(v)) => v.to_string(),
            (_, None) => panic!("unexpected valueFrom env {name}"),
        };
        cmd.env(name, value);
    }
    let mut webhook = Proc::spawn("mcp-guard-webhook", &mut cmd);
    let ca = api.ca.ca_path();
    wait_until(Duration::from_secs(60), || {
        if let Some(s) = webhook.try_status() {
            return Err(format!("webhook exited ({s})\n{}", webhook.logs()));
        }
        Ok(curl(&ca, &format!("https://127.0.0.1:{port}/readyz")).0 == 200)
    })
    .unwrap();
    wait_until(Duration::from_secs(60), || {
        let lease = api.kubectl(
            &[
                "get",
                "lease",
                "mcp-guard-controller",
                "-n",
                NAMESPACE,
                "-o",
                "json",
            ],
            None,
        );
        let cm = api.get_json("configmap", NAMESPACE, "mcp-guard-policy");
        let status = cm["metadata"]["annotations"]["mcp-guard.dev/status"]
            .as_str()
            .unwrap_or("");
        Ok(lease.success()
            && lease.stdout.contains("chart-test-replica")
            && status.contains("sha256:"))
    })
    .unwrap_or_else(|e| {
        panic!(
            "the controller did not lead and report: {e}\n{}",
            webhook.logs()
        )
    });
    // A namespace with an injected pod: the policy is mirrored there and the strict-ingress
    // NetworkPolicy created, both by the ServiceAccount.
    api.apply(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: tools\n  annotations:\n    \
         mcp-guard.dev/inject: enabled\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: \
         server\n  namespace: tools\n  labels:\n    mcp-guard.dev/injected: \"true\"\nspec:\n  \
         containers:\n  - name: server\n    image: example.com/server:1\n",
    );
    wait_until(Duration::from_secs(60), || {
        let cm = api.kubectl(
            &["get", "configmap", "mcp-guard-policy", "-n", "tools"],
            None,
        );
        let np = api.kubectl(
            &[
                "get",
                "networkpolicy",
                "mcp-guard-sidecar-only",
                "-n",
                "tools",
            ],
            None,
        );
        Ok(cm.success() && np.success())
    })
    .unwrap_or_else(|e| {
        panic!(
            "no mirror or NetworkPolicy in tools: {e}\n{}",
            webhook.logs()
        )
    });
    // The NetworkPolicy admits the sidecars' admin port from exactly the pods the chart's
    // Deployment runs (the controller's fleet view), in its namespace.
    let np = api.get_json("networkpolicy", "tools", "mcp-guard-sidecar-only");
    let admin_rule = &np["spec"]["ingress"][1];
    assert_eq!(
        admin_rule["ports"],
        json!([{"port": 15020, "protocol": "TCP"}]),
        "{np:#}"
    );
    let from = &admin_rule["from"][0];
    assert_eq!(
        from["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"], NAMESPACE,
        "{np:#}"
    );
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    let selector = from["podSelector"]["matchLabels"].as_object().unwrap();
    assert!(!selector.is_empty(), "{np:#}");
    for (k, v) in selector {
        assert_eq!(
            &pod_labels[k], v,
            "the controller's pods carry {k}={v}: {pod_labels}"
        );
    }
    let logs = webhook.logs();
    assert!(
        !logs.to_lowercase().contains("forbidden"),
        "the ServiceAccount was refused something it needs:\n{logs}"
    );
    webhook.kill();
}

/// `mcp-guard-webhook inject -o json` of a file under `manifests/examples`: its documents.
fn inject_example(name: &str) -> Vec<Value> {
    as_json(&workspace_root().join("manifests/examples").join(name))
}

/// The documents of a YAML file as JSON (through `mcp-guard-webhook inject -o json`, which
/// passes through what it does not inject).
fn as_json(path: &Path) -> Vec<Value> {
    inject_with_env(path, &[])
}

/// `mcp-guard-webhook inject -o json -f path` with the webhook's settings in `env`
/// (`MCP_GUARD_WEBHOOK_*`): the documents, injected where they ask for it.
fn inject_with_env(path: &Path, env: &[(String, String)]) -> Vec<Value> {
    let out = run_bounded(
        "mcp-guard-webhook inject",
        Command::new(webhook_bin())
            .args(["inject", "-o", "json", "-f"])
            .arg(path)
            .envs(env.iter().map(|(k, v)| (k, v))),
        Duration::from_secs(30),
    );
    assert!(out.success(), "inject {}: {}", path.display(), out.stderr);
    serde_json::Deserializer::from_str(&out.stdout)
        .into_iter::<Value>()
        .map(|v| v.unwrap())
        .collect()
}

/// docs/install.md's walk-through, without a cluster: the example Deployment is injected in
/// `takeover` mode with the example policy mounted, and a sidecar enforcing that policy in front
/// of the same MCP server shows only `echo`, answers a hidden tool as unknown and refuses a too
/// long `echo` with the policy's reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn examples_give_a_first_denied_tool_call() {
    let docs = inject_example("mcp-server.yaml");
    let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let template = &deployment["spec"]["template"];
    let status: Value = serde_json::from_str(
        template["metadata"]["annotations"]["mcp-guard.dev/status"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(status["traffic"], "takeover", "{status}");
    let volumes = template["spec"]["volumes"].as_array().unwrap();
    assert!(
        volumes
            .iter()
            .any(|v| v["configMap"]["name"] == "mcp-tools-policy"),
        "the example policy is mounted: {volumes:?}"
    );
    let service = docs.iter().find(|d| d["kind"] == "Service").unwrap();
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "mcp");
    let sidecar_takes_mcp = template["spec"]["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(
            template["spec"]["containers"]
                .as_array()
                .into_iter()
                .flatten(),
        )
        .filter(|c| c["name"] == "mcp-guard")
        .any(|c| {
            c["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|p| p["name"] == "mcp")
        });
    assert!(
        sidecar_takes_mcp,
        "the sidecar takes the port name `mcp`: {template}"
    );

    let policy = inject_example("policy.yaml");
    let data = policy[0]["data"].as_object().unwrap();
    let files: Vec<(&str, &str)> = data
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str().unwrap()))
        .collect();
    let tmp = TempDir::new("chart-example-policy");
    let vol = ConfigMapVolume::new(&tmp.path().join("policy"), &files);

    let ev = Everything::start(EverythingTransport::StreamableHttp);
    let mut sc = Sidecar::start(ev.port, &["--policy-dir", vol.path().to_str().unwrap()]);
    let s = Session::initialize(&sc.url("/mcp"), PROTOCOL_2025).await;

    let listed = s.post(&list_body(1)).await;
    assert_eq!(
        tool_names(&listed.expect_response(&json!(1))["result"]),
        ["echo"]
    );
    let hidden = s.post(&call_body(2, "get-env", json!({}))).await;
    let hidden = hidden.expect_response(&json!(2));
    assert_eq!(hidden["error"]["code"], -32602, "{hidden}");
    assert_eq!(
        hidden["error"]["message"], "Unknown tool: get-env",
        "{hidden}"
    );
    let long = "x".repeat(120);
    let refused = s
        .post(&call_body(3, "echo", json!({"message": long})))
        .await;
    let refused = refused.expect_response(&json!(3));
    assert_eq!(refused["error"]["code"], -32003, "{refused}");
    assert_eq!(
        refused["error"]["data"]["reasons"],
        json!(["echo: messages are limited to 100 characters"]),
        "{refused}"
    );
    let ok = s
        .post(&call_body(4, "echo", json!({"message": "hi"})))
        .await;
    let ok = ok.expect_response(&json!(4));
    assert_eq!(ok["result"]["content"][0]["text"], "Echo: hi", "{ok}");
    sc.assert_alive();
}
