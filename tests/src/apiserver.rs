//! A real Kubernetes control plane for admission tests: etcd and kube-apiserver (built by
//! `tests/scripts/install-kube.sh`, paths in `$MCP_GUARD_CACHE/kube/env.sh`) on free loopback
//! ports, with self-signed certificates (openssl), token authentication and RBAC, plus the
//! mcp-guard webhook server. No kubelet runs: pods are admitted and stored, never scheduled.
//! Everything stops on drop (the API server before etcd).

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{Output, Proc, TempDir, cache_dir, free_port, port_open, run_bounded, target_dir};

/// The admin token of the API servers started here (member of `system:masters`).
pub const ADMIN_TOKEN: &str = "mcp-guard-test-admin-token";

const KUBE_HINT: &str = "run `tests/scripts/install-kube.sh` first (it builds kube-apiserver from \
     Debian's kubernetes source, installs etcd-server and kubernetes-validate under \
     $MCP_GUARD_CACHE/kube, default ~/.cache/mcp-guard/kube; about 6 minutes the first time)";

/// Paths from `kube/env.sh`.
#[derive(Debug, Clone)]
pub struct KubeTools {
    pub apiserver: PathBuf,
    pub controller_manager: Option<PathBuf>,
    /// The matching kubectl; `kubectl` from `PATH` when the env file names none.
    pub kubectl: PathBuf,
    pub etcd: PathBuf,
    pub validate: Option<PathBuf>,
    pub version: String,
}

/// Reads `$MCP_GUARD_CACHE/kube/env.sh`; panics with the install command when it is missing.
pub fn kube_tools() -> KubeTools {
    let env_file = cache_dir().join("kube").join("env.sh");
    let owned = read_env_file(&env_file)
        .unwrap_or_else(|e| panic!("{} ({e}): {KUBE_HINT}", env_file.display()));
    let vars: HashMap<&str, &str> = owned
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let path = |key: &str| -> PathBuf {
        let p = PathBuf::from(
            vars.get(key)
                .unwrap_or_else(|| panic!("{} has no {key}: {KUBE_HINT}", env_file.display())),
        );
        assert!(p.exists(), "{} does not exist: {KUBE_HINT}", p.display());
        p
    };
    KubeTools {
        apiserver: path("KUBE_APISERVER"),
        controller_manager: vars
            .get("KUBE_CONTROLLER_MANAGER")
            .map(PathBuf::from)
            .filter(|p| p.exists()),
        etcd: path("ETCD"),
        kubectl: vars
            .get("KUBECTL")
            .map(PathBuf::from)
            .filter(|p| p.exists())
            .unwrap_or_else(|| PathBuf::from("kubectl")),
        validate: vars
            .get("KUBE_VALIDATE")
            .map(PathBuf::from)
            .filter(|p| p.exists()),
        version: vars.get("KUBE_VERSION").unwrap_or(&"").to_string(),
    }
}

/// The `KEY=value` lines of an env file the install scripts write (comments skipped).
pub fn read_env_file(path: &Path) -> std::io::Result<HashMap<String, String>> {
    Ok(fs::read_to_string(path)?
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect())
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = run_bounded(
        "openssl",
        Command::new("openssl").current_dir(dir).args(args),
        Duration::from_secs(60),
    );
    assert!(out.success(), "openssl {args:?} failed: {}", out.stderr);
}

/// A CA and serving certificates signed by it, for `127.0.0.1` / `localhost`.
#[derive(Debug)]
pub struct TestCa {
    dir: PathBuf,
}

impl TestCa {
    /// Creates `ca.crt` / `ca.key` in `dir`.
    pub fn new(dir: &Path) -> TestCa {
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "2",
                "-subj",
                "/CN=mcp-guard-test-ca",
            ],
        );
        TestCa {
            dir: dir.to_path_buf(),
        }
    }

    /// The CA certificate (PEM).
    pub fn ca_pem(&self) -> String {
        fs::read_to_string(self.dir.join("ca.crt")).unwrap_or_default()
    }

    /// Path of the CA certificate.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// Issues `<name>.crt` / `<name>.key` for 127.0.0.1 and localhost; returns their paths.
    pub fn issue(&self, name: &str, cn: &str) -> (PathBuf, PathBuf) {
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        let crt = format!("{name}.crt");
        let ext = format!("{name}.ext");
        fs::write(
            self.dir.join(&ext),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap_or_else(|e| panic!("write {ext}: {e}"));
        openssl(
            &self.dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &format!("/CN={cn}"),
            ],
        );
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &crt,
                "-days",
                "2",
                "-extfile",
                &ext,
            ],
        );
        (self.dir.join(crt), self.dir.join(key))
    }
}

/// etcd + kube-apiserver, stopped on drop.
pub struct ApiServer {
    controller_manager: Option<Proc>,
    apiserver: Option<Proc>,
    etcd: Option<Proc>,
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    /// A kubeconfig for the admin token.
    pub kubeconfig: PathBuf,
    /// The CA that signed the API server's certificate (and may sign others).
    pub ca: TestCa,
    pub tools: KubeTools,
    dir: TempDir,
}

impl ApiServer {
    /// Starts etcd and the API server and waits until `/readyz` answers.
    pub fn start() -> ApiServer {
        let tools = kube_tools();
        let dir = TempDir::new("kube");
        let d = dir.path().to_path_buf();
        let ca = TestCa::new(&d);
        let (crt, key) = ca.issue("apiserver", "kube-apiserver");
        openssl(&d, &["genrsa", "-out", "sa.key", "2048"]);
        openssl(&d, &["rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub"]);
        fs::write(
            d.join("tokens.csv"),
            format!("{ADMIN_TOKEN},admin,admin-uid,system:masters\n"),
        )
        .unwrap_or_else(|e| panic!("write tokens.csv: {e}"));

        let mut last = String::new();
        for _ in 0..3 {
            let (client, peer) = (free_port(), free_port());
            let mut etcd = Proc::spawn(
                "etcd",
                Command::new(&tools.etcd)
                    .arg("--name=default")
                    .arg(format!(
                        "--data-dir={}",
                        d.join(format!("etcd-{client}")).display()
                    ))
                    .arg(format!("--listen-client-urls=http://127.0.0.1:{client}"))
                    .arg(format!("--advertise-client-urls=http://127.0.0.1:{client}"))
                    .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
                    .arg(format!(
                        "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
                    ))
                    .arg(format!("--initial-cluster=default=http://127.0.0.1:{peer}"))
                    .arg("--log-level=warn"),
            );
            if let Err(e) = wait_until(Duration::from_secs(30), || {
                if let Some(s) = etcd.try_status() {
                    return Err(format!("etcd exited ({s})\n{}", etcd.logs()));
                }
                Ok(port_open(client))
            }) {
                last = e;
                continue;
            }
            // Pod creations at Metadata level: what admission's audit annotations land in.
            std::fs::write(
                d.join("audit-policy.yaml"),
                "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n- level: Metadata\n  resources: [{group: \"\", resources: [pods]}]\n  verbs: [create]\n- level: None\n",
            )
            .unwrap_or_else(|e| panic!("write audit-policy.yaml: {e}"));
            let port = free_port();
            let mut apiserver = Proc::spawn(
                "kube-apiserver",
                Command::new(&tools.apiserver)
                    .arg(format!("--etcd-servers=http://127.0.0.1:{client}"))
                    .arg("--bind-address=127.0.0.1")
                    .arg("--advertise-address=127.0.0.1")
                    .arg(format!("--secure-port={port}"))
                    .arg("--insecure-port=0")
                    .arg(format!("--tls-cert-file={}", crt.display()))
                    .arg(format!("--tls-private-key-file={}", key.display()))
                    .arg(format!(
                        "--token-auth-file={}",
                        d.join("tokens.csv").display()
                    ))
                    .arg("--authorization-mode=RBAC")
                    .arg("--disable-admission-plugins=ServiceAccount")
                    .arg("--service-cluster-ip-range=10.96.0.0/16")
                    .arg("--service-account-issuer=https://kubernetes.default.svc")
                    .arg(format!(
                        "--service-account-key-file={}",
                        d.join("sa.pub").display()
                    ))
                    .arg(format!(
                        "--service-account-signing-key-file={}",
                        d.join("sa.key").display()
                    ))
                    .arg(format!("--cert-dir={}", d.join("certs").display()))
                    .arg("--allow-privileged=true")
                    .arg(format!(
                        "--audit-policy-file={}",
                        d.join("audit-policy.yaml").display()
                    ))
                    .arg(format!(
                        "--audit-log-path={}",
                        d.join("audit.log").display()
                    ))
                    .arg("--audit-log-format=json")
                    .arg("--v=1"),
            );
            let url = format!("https://127.0.0.1:{port}");
            let kubeconfig = d.join("kubeconfig");
            write_kubeconfig(&kubeconfig, &url, &ca.ca_path(), "admin", ADMIN_TOKEN);
            let mut server = ApiServer {
                controller_manager: None,
                apiserver: None,
                etcd: Some(etcd),
                url,
                kubeconfig,
                ca,
                tools: tools.clone(),
                dir,
            };
            let ready = wait_until(Duration::from_secs(90), || {
                if let Some(s) = apiserver.try_status() {
                    return Err(format!("kube-apiserver exited ({s})\n{}", apiserver.logs()));
                }
                let out = server.kubectl(&["get", "--raw", "/readyz"], None);
                Ok(out.success() && out.stdout.trim() == "ok")
            });
            server.apiserver = Some(apiserver);
            match ready {
                Ok(()) => return server,
                Err(e) => panic!("kube-apiserver did not become ready: {e}"),
            }
        }
        panic!("kube-apiserver did not start: {last}");
    }

    /// Starts kube-controller-manager (Deployment and ReplicaSet controllers only), so
    /// Deployments produce pods through the real controller path.
    pub fn start_controller_manager(&mut self) {
        let bin = self
            .tools
            .controller_manager
            .clone()
            .unwrap_or_else(|| panic!("kube-controller-manager not installed: {KUBE_HINT}"));
        let proc = Proc::spawn(
            "kube-controller-manager",
            Command::new(bin)
                .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
                .arg("--controllers=deployment,replicaset")
                .arg("--leader-elect=false")
                .arg("--port=0")
                .arg("--secure-port=0")
                .arg("--v=1"),
        );
        self.controller_manager = Some(proc);
    }

    /// A [`Kubectl`] for this API server's admin kubeconfig.
    pub fn client(&self) -> Kubectl {
        Kubectl {
            bin: self.tools.kubectl.clone(),
            kubeconfig: self.kubeconfig.clone(),
            scratch: self.dir.path().to_path_buf(),
        }
    }

    /// Runs `kubectl` against this API server (admin), optionally with stdin.
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Output {
        self.client().run(args, stdin)
    }

    /// [`ApiServer::kubectl`] with another kubeconfig (e.g. [`ApiServer::service_account_kubeconfig`]).
    pub fn kubectl_with(&self, kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> Output {
        Kubectl {
            kubeconfig: kubeconfig.to_path_buf(),
            ..self.client()
        }
        .run(args, stdin)
    }

    /// `kubectl apply -f -` with `manifest`; panics on failure.
    pub fn apply(&self, manifest: &str) {
        self.client().apply(manifest)
    }

    /// `kubectl get <kind> <name> -n <ns> -o json`.
    pub fn get_json(&self, kind: &str, namespace: &str, name: &str) -> Value {
        self.client().get_json(kind, namespace, name)
    }

    /// Installs the chart's `ApprovedServer` CRD and waits until it is served.
    pub fn install_approved_servers_crd(&self) {
        let path = crate::workspace_root()
            .join("charts/mcp-guard/crds/approvedservers.mcp-guard.dev.yaml");
        let crd =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        self.apply(&crd);
        let established = self.kubectl(
            &[
                "wait",
                "--for=condition=established",
                "--timeout=60s",
                "crd/approvedservers.mcp-guard.dev",
            ],
            None,
        );
        assert!(established.success(), "{}", established.stderr);
    }

    /// A token for ServiceAccount `namespace/name`, issued by the API server's TokenRequest API
    /// (`POST .../serviceaccounts/NAME/token`, one hour), as `kubectl create token` gets one.
    pub fn service_account_token(&self, namespace: &str, name: &str) -> String {
        let request = r#"{"apiVersion":"authentication.k8s.io/v1","kind":"TokenRequest","spec":{"expirationSeconds":3600}}"#;
        let uri = format!("/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token");
        let out = self.kubectl(&["create", "--raw", &uri], Some(request));
        assert!(
            out.success(),
            "TokenRequest for ServiceAccount {namespace}/{name} failed: {}",
            out.stderr
        );
        let answer: Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "TokenRequest for {namespace}/{name}: not JSON ({e}): {}",
                out.stdout
            )
        });
        answer["status"]["token"]
            .as_str()
            .unwrap_or_else(|| {
                panic!("TokenRequest for {namespace}/{name}: no status.token in {answer}")
            })
            .to_string()
    }

    /// A kubeconfig that authenticates as ServiceAccount `namespace/name` with a token of its
    /// own ([`ApiServer::service_account_token`]): no admin token, no impersonation. What that
    /// identity may do is decided by RBAC alone, exactly as for a pod running under that
    /// ServiceAccount.
    pub fn service_account_kubeconfig(&self, namespace: &str, name: &str) -> PathBuf {
        let token = self.service_account_token(namespace, name);
        let path = self
            .dir
            .path()
            .join(format!("kubeconfig-sa-{namespace}-{name}"));
        write_kubeconfig(
            &path,
            &self.url,
            &self.ca.ca_path(),
            &format!("{namespace}-{name}"),
            &token,
        );
        path
    }

    /// The API server's audit log (JSON lines; pod creations at Metadata level).
    pub fn audit_log(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.path().join("audit.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The directory holding certificates, kubeconfig and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        // Controllers, then the API server: etcd going away under it only produces noise.
        drop(self.controller_manager.take());
        if let Some(mut a) = self.apiserver.take() {
            if !std::thread::panicking() {
                a.signal("TERM");
                let _ = a.wait_exit(Duration::from_secs(5));
            }
            drop(a);
        }
        drop(self.etcd.take());
    }
}

/// `kubectl` bound to one kubeconfig. Stdin is passed as a file in `scratch` (`-f FILE`); every
/// call is bounded (`--request-timeout=30s`, killed after 60 s).
#[derive(Debug, Clone)]
pub struct Kubectl {
    pub bin: PathBuf,
    pub kubeconfig: PathBuf,
    pub scratch: PathBuf,
}

impl Kubectl {
    /// Runs `kubectl ARGS` (with `-f FILE` holding `stdin` when given).
    pub fn run(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new(&self.bin);
        cmd.arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .arg("--request-timeout=30s")
            .args(args);
        if let Some(input) = stdin {
            static N: AtomicU64 = AtomicU64::new(0);
            let file = self
                .scratch
                .join(format!("stdin-{}.yaml", N.fetch_add(1, Ordering::Relaxed)));
            fs::write(&file, input).unwrap_or_else(|e| panic!("write stdin: {e}"));
            cmd.arg("-f").arg(&file);
        }
        run_bounded("kubectl", &mut cmd, Duration::from_secs(60))
    }

    /// `kubectl apply -f -` with `manifest`; panics on failure.
    pub fn apply(&self, manifest: &str) {
        let out = self.run(&["apply"], Some(manifest));
        assert!(
            out.success(),
            "kubectl apply failed:\n{}\n{}\n{manifest}",
            out.stdout,
            out.stderr
        );
    }

    /// `kubectl get <kind> <name> -n <ns> -o json`.
    pub fn get_json(&self, kind: &str, namespace: &str, name: &str) -> Value {
        let out = self.run(&["get", kind, name, "-n", namespace, "-o", "json"], None);
        assert!(out.success(), "kubectl get {kind} {name}: {}", out.stderr);
        serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("kubectl get {kind} {name}: not JSON ({e}): {}", out.stdout))
    }
}

/// Writes a kubeconfig for `url` (trusting `ca`) that authenticates `user` with bearer `token`.
fn write_kubeconfig(path: &Path, url: &str, ca: &Path, user: &str, token: &str) {
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {url}\n    \
         certificate-authority: {}\nusers:\n- name: {user}\n  user:\n    token: {token}\n\
         contexts:\n- name: test\n  context:\n    cluster: test\n    user: {user}\n    \
         namespace: default\ncurrent-context: test\n",
        ca.display()
    );
    fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Polls `check` every 100 ms until it returns `Ok(true)`, an error, or `timeout` passes.
pub fn wait_until(
    timeout: Duration,
    mut check: impl FnMut() -> Result<bool, String>,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        if check()? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("not ready within {timeout:?}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `target/debug/mcp-guard-webhook`; panics with the build command when it is missing.
pub fn webhook_bin() -> PathBuf {
    let path = target_dir().join("debug").join("mcp-guard-webhook");
    assert!(
        path.is_file(),
        "{} not found: run `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

/// The webhook server (`mcp-guard-webhook serve`) with a certificate from `ca`, talking to
/// `api` for namespaces and the version.
pub struct Webhook {
    pub proc: Proc,
    pub port: u16,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Webhook {
    /// Starts the webhook on a free port and waits for `/readyz`.
    pub fn start(api: &ApiServer, extra: &[&str]) -> Webhook {
        Self::start_with_kubeconfig(api, &api.kubeconfig, extra)
    }

    /// [`Webhook::start`] with another kubeconfig (e.g. [`ApiServer::service_account_kubeconfig`]).
    pub fn start_with_kubeconfig(api: &ApiServer, kubeconfig: &Path, extra: &[&str]) -> Webhook {
        let (cert, key) = api
            .ca
            .issue(&format!("webhook-{}", free_port()), "mcp-guard-webhook");
        let mut last = String::new();
        for _ in 0..3 {
            let port = free_port();
            let mut proc = Proc::spawn(
                "mcp-guard-webhook",
                Command::new(webhook_bin())
                    .arg("serve")
                    .arg(format!("--listen=127.0.0.1:{port}"))
                    .arg(format!("--tls-cert={}", cert.display()))
                    .arg(format!("--tls-key={}", key.display()))
                    .arg("--log-format=text")
                    .arg("--log=info,mcp_guard_webhook=debug")
                    .args(extra)
                    .env("KUBECONFIG", kubeconfig),
            );
            let ca = api.ca.ca_path();
            let ready = wait_until(Duration::from_secs(60), || {
                if let Some(s) = proc.try_status() {
                    return Err(format!("webhook exited ({s})\n{}", proc.logs()));
                }
                Ok(curl(&ca, &format!("https://127.0.0.1:{port}/readyz")).0 == 200)
            });
            match ready {
                Ok(()) => {
                    return Webhook {
                        proc,
                        port,
                        cert,
                        key,
                    };
                }
                Err(e) => last = e,
            }
        }
        panic!("webhook did not start: {last}");
    }

    /// `https://127.0.0.1:PORT/mutate`.
    pub fn mutate_url(&self) -> String {
        format!("https://127.0.0.1:{}/mutate", self.port)
    }

    /// `https://127.0.0.1:PORT/validate`.
    pub fn validate_url(&self) -> String {
        format!("https://127.0.0.1:{}/validate", self.port)
    }
}

/// `GET url` with `curl --cacert ca`: (status, body); status 0 when the request failed.
pub fn curl(ca: &Path, url: &str) -> (u16, String) {
    curl_with(ca, url, &[])
}

/// [`curl`] with request headers (`Name: value`).
pub fn curl_with(ca: &Path, url: &str, headers: &[&str]) -> (u16, String) {
    let mut cmd = Command::new("curl");
    for h in headers {
        cmd.arg("-H").arg(h);
    }
    let out = run_bounded(
        "curl",
        cmd.arg("-sS")
            .arg("--max-time")
            .arg("10")
            .arg("--cacert")
            .arg(ca)
            .arg("-w")
            .arg("\n%{http_code}")
            .arg(url),
        Duration::from_secs(20),
    );
    let (body, code) = out
        .stdout
        .rsplit_once('\n')
        .unwrap_or((out.stdout.as_str(), "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// A webhook configuration of `kind` with one webhook `webhook` calling `url` (trusting
/// `ca_pem`); `rules` is the rest of the webhook's YAML (rules and selectors), indented by two.
fn webhook_config(
    kind: &str,
    name: &str,
    webhook: &str,
    url: &str,
    ca_pem: &str,
    failure_policy: &str,
    rules: &str,
) -> String {
    let ca_b64 = base64(ca_pem.as_bytes());
    format!(
        r#"apiVersion: admissionregistration.k8s.io/v1
kind: {kind}
metadata:
  name: {name}
webhooks:
- name: {webhook}
  admissionReviewVersions: ["v1"]
  sideEffects: None
  failurePolicy: {failure_policy}
  timeoutSeconds: 10
  clientConfig:
    url: {url}
    caBundle: {ca_b64}
{rules}"#
    )
}

/// A MutatingWebhookConfiguration that sends pod CREATEs to `url`.
pub fn mutating_webhook_config(
    name: &str,
    url: &str,
    ca_pem: &str,
    failure_policy: &str,
) -> String {
    webhook_config(
        "MutatingWebhookConfiguration",
        name,
        "inject.mcp-guard.dev",
        url,
        ca_pem,
        failure_policy,
        r#"  reinvocationPolicy: IfNeeded
  rules:
  - apiGroups: [""]
    apiVersions: ["v1"]
    operations: ["CREATE"]
    resources: ["pods"]
  namespaceSelector:
    matchExpressions:
    - key: kubernetes.io/metadata.name
      operator: NotIn
      values: ["kube-system", "mcp-guard"]
"#,
    )
}

/// A ValidatingWebhookConfiguration that sends CREATEs and UPDATEs of ConfigMaps labelled
/// `mcp-guard.dev/policy` to `url` (the policy bundle check).
pub fn validating_webhook_config(
    name: &str,
    url: &str,
    ca_pem: &str,
    failure_policy: &str,
) -> String {
    webhook_config(
        "ValidatingWebhookConfiguration",
        name,
        "policy.mcp-guard.dev",
        url,
        ca_pem,
        failure_policy,
        r#"  rules:
  - apiGroups: [""]
    apiVersions: ["v1"]
    operations: ["CREATE", "UPDATE"]
    resources: ["configmaps"]
  objectSelector:
    matchExpressions:
    - key: mcp-guard.dev/policy
      operator: Exists
"#,
    )
}

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(T[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_rfc4648() {
        assert_eq!(super::base64(b""), "");
        assert_eq!(super::base64(b"f"), "Zg==");
        assert_eq!(super::base64(b"fo"), "Zm8=");
        assert_eq!(super::base64(b"foo"), "Zm9v");
        assert_eq!(super::base64(b"foob"), "Zm9vYg==");
    }
}
