//! A real single-node Kubernetes cluster whose pods run: etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler, kubelet and kube-proxy with containerd, brought up by
//! `tests/scripts/cluster-up.sh` and taken down by `tests/scripts/cluster-down.sh` (built by
//! `install-kube.sh` and `install-node.sh`). The images come from `tests/scripts/build-images.sh`.
//! A suite brings the node up once ([`Node::up`]) and it goes down when the handle drops, unless
//! it was already up before (a developer's cluster is reused and left running).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::apiserver::{Kubectl, read_env_file};
use crate::{Output, TempDir, cache_dir, run_bounded, tail, workspace_root};

const NODE_HINT: &str = "run tests/scripts/install-kube.sh and tests/scripts/install-node.sh \
     first, as root (they build kubelet, kube-scheduler and kube-proxy from Debian's kubernetes \
     source and install containerd, runc and the CNI plugins; cached under $MCP_GUARD_CACHE/kube)";

/// `tests/scripts/<name>`.
pub fn script(name: &str) -> PathBuf {
    workspace_root().join("tests").join("scripts").join(name)
}

/// Why a node cannot be brought up here (not root, or the node's binaries are not installed),
/// or `None` when it can.
pub fn unavailable() -> Option<String> {
    let id = run_bounded("id", Command::new("id").arg("-u"), Duration::from_secs(10));
    if id.stdout.trim() != "0" {
        return Some(
            "the node needs root (it creates a bridge, iptables rules, mounts and cgroups)".into(),
        );
    }
    let env = cache_dir().join("kube").join("node-env.sh");
    if !env.exists() {
        return Some(format!("{} is missing: {NODE_HINT}", env.display()));
    }
    None
}

/// Takes the machine-wide node lock (`/tmp/mcp-guard-cluster.lock`, beside the state directory
/// that `cluster-down.sh --purge` removes), waiting while another suite holds it.
fn lock_machine() -> std::fs::File {
    let path = std::env::temp_dir().join("mcp-guard-cluster.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    if file.try_lock().is_err() {
        eprintln!(
            "node: another suite holds {}; waiting for it to finish",
            path.display()
        );
        file.lock()
            .unwrap_or_else(|e| panic!("locking {}: {e}", path.display()));
    }
    file
}

/// The running cluster: kubectl with its admin kubeconfig, and the values `cluster-up.sh` wrote
/// to `$MCP_GUARD_CLUSTER_DIR/env.sh` (`KUBECONFIG`, `CTR`, `CONTAINERD_SOCK`, `GATEWAY`, ...).
pub struct Node {
    pub kubectl: Kubectl,
    pub env: HashMap<String, String>,
    /// How long `cluster-up.sh` took.
    pub up_time: Duration,
    took_up: bool,
    _scratch: TempDir,
    /// Held from before `cluster-up.sh` until after `cluster-down.sh`: the node is one per
    /// machine (its bridge, addresses and state directory are fixed), so a second suite, or a
    /// second checkout's tests, waits for the first instead of tearing its cluster down.
    _lock: std::fs::File,
}

impl Node {
    /// Runs `cluster-up.sh` (a cluster already up is reused) and reads its env file.
    pub fn up() -> Node {
        let lock = lock_machine();
        let start = Instant::now();
        let out = run_bounded(
            "cluster-up.sh",
            Command::new("bash").arg(script("cluster-up.sh")),
            Duration::from_secs(600),
        );
        assert!(
            out.success(),
            "cluster-up.sh failed ({:?}):\n{}",
            out.status,
            tail(&out.stderr, 12000)
        );
        let reused = out.stderr.contains("already up");
        let dir = std::env::var_os("MCP_GUARD_CLUSTER_DIR")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/tmp/mcp-guard-cluster"));
        let env = read_env_file(&dir.join("env.sh"))
            .unwrap_or_else(|e| panic!("{}/env.sh: {e}", dir.display()));
        let scratch = TempDir::new("node");
        let var = |k: &str| -> PathBuf {
            PathBuf::from(
                env.get(k)
                    .unwrap_or_else(|| panic!("{}/env.sh has no {k}", dir.display())),
            )
        };
        let kubectl = Kubectl {
            bin: var("KUBECTL"),
            kubeconfig: var("KUBECONFIG"),
            scratch: scratch.path().to_path_buf(),
        };
        Node {
            kubectl,
            up_time: start.elapsed(),
            env,
            took_up: !reused,
            _scratch: scratch,
            _lock: lock,
        }
    }

    /// Whether the cluster was already up before [`Node::up`] (then it is left up at the end).
    pub fn reused(&self) -> bool {
        !self.took_up
    }

    /// A value of the cluster's env file.
    pub fn var(&self, key: &str) -> &str {
        self.env.get(key).map(String::as_str).unwrap_or_default()
    }

    /// Runs `build-images.sh` (all images, imported into this node's containerd); returns each
    /// image reference with its manifest digest.
    pub fn build_images(&self) -> HashMap<String, String> {
        let out = run_bounded(
            "build-images.sh",
            Command::new("bash")
                .arg(script("build-images.sh"))
                .env("CONTAINERD_SOCK", self.var("CONTAINERD_SOCK")),
            Duration::from_secs(3600),
        );
        assert!(
            out.success(),
            "build-images.sh failed ({:?}):\n{}",
            out.status,
            tail(&out.stderr, 12000)
        );
        out.stdout
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(r, d)| (r.to_owned(), d.trim().to_owned()))
            .collect()
    }

    /// `kubectl ARGS`.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl.run(args, None)
    }

    /// `kubectl ARGS`, its stdout; panics on failure.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.success(),
            "kubectl {args:?} failed:\n{}\n{}",
            out.stdout,
            out.stderr
        );
        out.stdout
    }

    /// `kubectl ARGS -o json`, parsed.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        let text = self.kubectl_ok(&a);
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("kubectl {args:?}: not JSON ({e}): {text}"))
    }

    /// The pods of `namespace` matching the label `selector`.
    pub fn pods(&self, namespace: &str, selector: &str) -> Vec<Value> {
        self.json(&["get", "pods", "-n", namespace, "-l", selector])["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// `helm ARGS` against this cluster (helm from `tests/scripts/install-helm.sh`).
    pub fn helm(&self, args: &[&str]) -> Output {
        let helm = run_bounded(
            "install-helm.sh",
            Command::new("bash").arg(script("install-helm.sh")),
            Duration::from_secs(600),
        );
        assert!(helm.success(), "install-helm.sh: {}", helm.stderr);
        let bin = helm
            .stdout
            .lines()
            .last()
            .unwrap_or("helm")
            .trim()
            .to_owned();
        run_bounded(
            "helm",
            Command::new(bin)
                .env("KUBECONFIG", self.var("KUBECONFIG"))
                .env("HELM_CACHE_HOME", self._scratch.path().join("helm-cache"))
                .env("HELM_CONFIG_HOME", self._scratch.path().join("helm-config"))
                .env("HELM_DATA_HOME", self._scratch.path().join("helm-data"))
                .args(args),
            Duration::from_secs(600),
        )
    }

    /// Polls `check` every second until it is true; panics after `timeout` with `what` and the
    /// state of `namespace` (pods, events).
    pub fn wait(
        &self,
        what: &str,
        namespace: &str,
        timeout: Duration,
        mut check: impl FnMut() -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        loop {
            if check() {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "{what}: not within {timeout:?}\n{}",
                    self.diagnostics(namespace)
                );
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    /// Pods, Deployments and events of `namespace`, and the node, for a failure message.
    pub fn diagnostics(&self, namespace: &str) -> String {
        let mut s = String::new();
        for args in [
            vec!["get", "nodes", "-o", "wide"],
            vec![
                "get",
                "deploy,rs,pods,svc,endpoints",
                "-n",
                namespace,
                "-o",
                "wide",
            ],
            vec!["describe", "pods", "-n", namespace],
            vec!["get", "events", "-n", namespace, "--sort-by=.lastTimestamp"],
        ] {
            let out = self.kubectl(&args);
            s.push_str(&format!(
                "$ kubectl {}\n{}{}\n",
                args.join(" "),
                out.stdout,
                out.stderr
            ));
        }
        tail(&s, 30000).to_owned()
    }

    /// Stops `component` (a process `cluster-up.sh` started and recorded in `pids/`, e.g.
    /// `kubelet`) with SIGSTOP until the returned guard drops (SIGCONT): the node's pods keep
    /// running, but nothing that component does for them happens meanwhile (a kubelet that does
    /// not update ConfigMap volumes, as on a node that lags behind).
    pub fn pause(&self, component: &str) -> Paused {
        let dir = PathBuf::from(self.var("KUBECONFIG"));
        let file = dir
            .parent()
            .map(|d| d.join("pids").join(format!("{component}.pid")))
            .unwrap_or_default();
        let pid = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
            .trim()
            .to_owned();
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        assert_eq!(
            comm.trim(),
            component,
            "{} names process {pid}, which is not {component}",
            file.display()
        );
        let out = signal(&pid, "STOP");
        assert!(out.success(), "kill -STOP {pid}: {}", out.stderr);
        Paused { pid }
    }

    /// The ClusterIP of Service `namespace/name`.
    pub fn cluster_ip(&self, namespace: &str, name: &str) -> String {
        let ip = self.kubectl_ok(&[
            "get",
            "service",
            name,
            "-n",
            namespace,
            "-o",
            "jsonpath={.spec.clusterIP}",
        ]);
        assert!(
            !ip.trim().is_empty(),
            "service {namespace}/{name} has no ClusterIP"
        );
        ip.trim().to_owned()
    }
}

/// A component stopped by [`Node::pause`]; continued on drop.
#[derive(Debug)]
pub struct Paused {
    pid: String,
}

impl Drop for Paused {
    fn drop(&mut self) {
        let out = signal(&self.pid, "CONT");
        if !out.success() {
            eprintln!("node: kill -CONT {}: {}", self.pid, out.stderr);
        }
    }
}

fn signal(pid: &str, sig: &str) -> Output {
    run_bounded(
        "kill",
        Command::new("kill").arg(format!("-{sig}")).arg(pid),
        Duration::from_secs(10),
    )
}

impl Drop for Node {
    fn drop(&mut self) {
        if !self.took_up {
            eprintln!("node: the cluster was up before this suite; leaving it up");
            return;
        }
        if std::thread::panicking() {
            eprintln!(
                "node: logs of the failed run stay in {}",
                self.env
                    .get("KUBECONFIG")
                    .map(|k| k.trim_end_matches("kubeconfig").to_owned() + "logs")
                    .unwrap_or_default()
            );
        }
        let out = run_bounded(
            "cluster-down.sh",
            Command::new("bash").arg(script("cluster-down.sh")),
            Duration::from_secs(300),
        );
        if !out.success() {
            eprintln!("cluster-down.sh failed ({:?}):\n{}", out.status, out.stderr);
        }
    }
}
