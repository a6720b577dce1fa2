//! The injection decision as one pure function: raw pod (plus its namespace's annotations and
//! the webhook's configuration) in, [`Outcome`] out. The admission server, the offline `inject`
//! command and the golden tests all call [`mutate`].

use std::collections::BTreeMap;

use mcp_guard_common::env as sidecar_env;
use serde_json::{Value, json};

use crate::annotations::{self, AnnotationError, PortRef, Settings, Traffic};
use crate::config::InjectConfig;
use crate::patch::PatchBuilder;
use crate::resource_uri::Workload;
use crate::selection::{self, OptIn, Selection, SkipReason};
use crate::settings::{Kind, Layers, SecretRef, Setting};

/// Name of the injected sidecar container.
pub const SIDECAR_NAME: &str = "mcp-guard";
/// Name of the `redirect` mode's init container.
pub const REDIRECT_NAME: &str = "mcp-guard-redirect";
/// Name of the policy volume.
pub const POLICY_VOLUME: &str = "mcp-guard-policy";
/// Where the policy ConfigMap is mounted (the whole volume, never a subPath).
pub const POLICY_DIR: &str = "/etc/mcp-guard/policy";
/// In `takeover` mode the app's port is renamed to this, and the sidecar takes the old name.
pub const UPSTREAM_PORT_NAME: &str = "mcp-upstream";
/// Name of the sidecar's port in `explicit` and `redirect` modes.
pub const SIDECAR_PORT_NAME: &str = "mcp-guard";
/// Name of the sidecar's admin port.
pub const ADMIN_PORT_NAME: &str = "mcp-guard-admin";
/// The init container that copies the sidecar binary for `mcp-guard.dev/shutdown-on-exit`.
pub const COPY_BINARY_NAME: &str = "mcp-guard-copy-binary";
/// The emptyDir volume that carries that copy into the app container.
pub const BIN_VOLUME: &str = "mcp-guard-bin";
/// Where the app container finds the copy (read-only).
pub const BIN_DIR: &str = "/mcp-guard/bin";
/// Where the Secrets named by `*-secret` settings are mounted: `SECRETS_DIR/<setting>/<key>`.
pub const SECRETS_DIR: &str = "/etc/mcp-guard/secrets";
/// `kubectl logs` / `exec` pick this container by default.
pub const DEFAULT_CONTAINER: &str = "kubectl.kubernetes.io/default-container";

/// What to do with a pod.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Inject: apply `patch` (never empty).
    Injected {
        patch: json_patch::Patch,
        traffic: Traffic,
    },
    /// Leave the pod as it is.
    Skipped(SkipReason),
    /// Refuse the pod: the message names the annotation(s) at fault.
    Invalid(String),
}

/// The pod and what the webhook knows about its surroundings.
#[derive(Debug, Clone, Copy)]
pub struct PodContext<'a> {
    /// The pod, raw.
    pub pod: &'a Value,
    /// The namespace the pod is created in (from the admission request: the pod's own
    /// `metadata.namespace` may be empty).
    pub namespace: &'a str,
    /// The namespace's annotations (empty when unknown).
    pub namespace_annotations: &'a BTreeMap<String, String>,
    /// The owning workload's name when known (offline injection of a Deployment, ...).
    pub workload_name: Option<&'a str>,
}

/// A declared container port.
#[derive(Debug, Clone)]
struct DeclaredPort {
    container: usize,
    index: usize,
    name: Option<String>,
    number: u16,
}

/// The port the MCP server listens on, resolved against the pod's declared ports.
#[derive(Debug, Clone)]
struct ServerPort {
    /// The declared port, when the pod declares it.
    declared: Option<DeclaredPort>,
    number: u16,
}

/// Decides and builds the injection for one pod.
pub fn mutate(cfg: &InjectConfig, ctx: PodContext<'_>) -> Outcome {
    match try_mutate(cfg, ctx) {
        Ok(outcome) => outcome,
        Err(errors) => Outcome::Invalid(
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        ),
    }
}

/// The pod as the API server stores it after injection (the patch applied), or the outcome
/// when the pod is not injected.
pub fn injected(cfg: &InjectConfig, ctx: PodContext<'_>) -> Result<Value, Outcome> {
    match mutate(cfg, ctx) {
        Outcome::Injected { patch, .. } => {
            let mut pod = ctx.pod.clone();
            json_patch::patch(&mut pod, &patch).map_err(|e| {
                Outcome::Invalid(format!("the injection patch does not apply: {e}"))
            })?;
            Ok(pod)
        }
        other => Err(other),
    }
}

/// The injected sidecar container of `pod` (native or regular form).
pub fn sidecar_of(pod: &Value) -> Option<&Value> {
    ["/spec/initContainers", "/spec/containers"]
        .into_iter()
        .flat_map(|p| pod_array(pod, p))
        .find(|c| c.get("name").and_then(Value::as_str) == Some(SIDECAR_NAME))
}

/// Adds `name=value` to the env of the sidecar container an injection patch adds (whether the
/// patch adds the container itself or a whole container list holding it). Returns whether it
/// found the container.
pub fn add_sidecar_env(patch: &mut json_patch::Patch, name: &str, value: &str) -> bool {
    let is_sidecar = |c: &Value| c.get("name").and_then(Value::as_str) == Some(SIDECAR_NAME);
    for op in &mut patch.0 {
        let json_patch::PatchOperation::Add(add) = op else {
            continue;
        };
        let container = if is_sidecar(&add.value) {
            Some(&mut add.value)
        } else if let Value::Array(list) = &mut add.value {
            list.iter_mut().find(|c| is_sidecar(c))
        } else {
            None
        };
        if let Some(Value::Object(c)) = container {
            let env = c.entry("env").or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(env) = env {
                env.push(serde_json::json!({"name": name, "value": value}));
                return true;
            }
        }
    }
    false
}

fn try_mutate(cfg: &InjectConfig, ctx: PodContext<'_>) -> Result<Outcome, Vec<AnnotationError>> {
    let pod = ctx.pod;
    let opt_in = match selection::select(
        pod,
        ctx.namespace,
        ctx.namespace_annotations,
        &cfg.own_namespace,
    )
    .map_err(|e| vec![e])?
    {
        Selection::Skip(reason) => return Ok(Outcome::Skipped(reason)),
        Selection::Inject(opt_in) => opt_in,
    };
    let pod_annotations = selection::string_map(pod, "/metadata/annotations");
    let name = server_name(ctx);
    let workload = Workload {
        name: &name,
        namespace: ctx.namespace,
    };
    let layers = Layers {
        pod: &pod_annotations,
        namespace: ctx.namespace_annotations,
        namespace_name: ctx.namespace,
        mesh: &cfg.mesh,
    };
    let settings = Settings::parse(layers, cfg, workload)?;
    let secret_volumes = secret_volumes(&settings);

    let Some(containers) = pod.pointer("/spec/containers").and_then(Value::as_array) else {
        return Err(vec![AnnotationError::new(
            annotations::INJECT,
            "enabled",
            "the pod has no spec.containers to put the sidecar in front of",
        )]);
    };
    let declared = declared_ports(containers);

    // Names and ports the sidecar needs must be free.
    let mut conflicts = Vec::new();
    for c in containers
        .iter()
        .chain(pod_array(pod, "/spec/initContainers"))
    {
        let name = c.get("name").and_then(Value::as_str).unwrap_or_default();
        if name == SIDECAR_NAME || name == REDIRECT_NAME || name == COPY_BINARY_NAME {
            conflicts.push(AnnotationError::new(
                annotations::INJECT,
                "enabled",
                format!("the pod already has a container named {name:?} but no {} annotation; remove the container or the annotation", annotations::STATUS),
            ));
        }
    }
    for p in &declared {
        if p.number == cfg.sidecar_port || p.number == cfg.admin_port {
            conflicts.push(AnnotationError::new(
                annotations::INJECT,
                "enabled",
                format!(
                    "container port {} is reserved for the mcp-guard sidecar (ports {} and {})",
                    p.number, cfg.sidecar_port, cfg.admin_port
                ),
            ));
        }
    }
    let ours = [POLICY_VOLUME, BIN_VOLUME]
        .into_iter()
        .chain(secret_volumes.iter().map(|v| v.volume.as_str()));
    for volume in ours {
        if pod_array(pod, "/spec/volumes")
            .any(|v| v.get("name").and_then(Value::as_str) == Some(volume))
        {
            conflicts.push(AnnotationError::new(
                annotations::INJECT,
                "enabled",
                format!("the pod already has a volume named {volume:?}"),
            ));
        }
    }
    if !conflicts.is_empty() {
        return Err(conflicts);
    }

    // The server's port.
    let server = match &settings.port {
        Some(PortRef::Number(n)) => ServerPort {
            declared: declared.iter().find(|p| p.number == *n).cloned(),
            number: *n,
        },
        Some(PortRef::Name(name)) => {
            match declared.iter().find(|p| p.name.as_deref() == Some(name)) {
                Some(p) => ServerPort {
                    declared: Some(p.clone()),
                    number: p.number,
                },
                None => {
                    return Err(vec![AnnotationError::new(
                        annotations::PORT,
                        name,
                        "no container of the pod declares a TCP port with that name",
                    )]);
                }
            }
        }
        None => {
            let chosen = declared
                .iter()
                .find(|p| p.name.as_deref() == Some("mcp"))
                .or_else(|| declared.first());
            match chosen {
                Some(p) => ServerPort {
                    declared: Some(p.clone()),
                    number: p.number,
                },
                None if opt_in == OptIn::Namespace => {
                    return Ok(Outcome::Skipped(SkipReason::NoServerPort));
                }
                None => {
                    return Err(vec![AnnotationError::new(
                        annotations::PORT,
                        "",
                        "the pod declares no container port: set it to the MCP server's port number",
                    )]);
                }
            }
        }
    };
    let port_name = server.declared.as_ref().and_then(|p| p.name.clone());
    let traffic = match (settings.traffic, &port_name) {
        (Some(t), _) if t != Traffic::Takeover => t,
        (Some(_), None) => {
            return Err(vec![AnnotationError::new(
                annotations::TRAFFIC,
                "takeover",
                format!(
                    "takeover needs the server's port ({}) to be a named container port; name it, or use \"explicit\" or \"redirect\"",
                    server.number
                ),
            )]);
        }
        (_, Some(_)) => Traffic::Takeover,
        (None, None) => Traffic::Explicit,
    };
    let app_container = server.declared.as_ref().map_or(0, |p| p.container);
    let run_app = if settings.shutdown_on_exit {
        Some(run_app_command(cfg, pod, &containers[app_container])?)
    } else {
        None
    };

    let mut b = PatchBuilder::new();

    // 1. Edits inside existing containers first: their indices are still the original ones.
    if traffic == Traffic::Takeover
        && let (Some(p), Some(name)) = (&server.declared, &port_name)
    {
        b.replace(
            format!("/spec/containers/{}/ports/{}/name", p.container, p.index),
            json!(UPSTREAM_PORT_NAME),
        );
        rewrite_named_ports(
            &mut b,
            &containers[p.container],
            p.container,
            name,
            p.number,
        );
    }

    // The app's command under `run-app`, in the regular form only: the kubelet itself ends a
    // native sidecar once the app containers have exited.
    let wrap = run_app.filter(|_| !cfg.native_sidecar);
    if let Some(command) = &wrap {
        b.replace(
            format!("/spec/containers/{app_container}/command"),
            json!(command),
        );
        b.append(
            pod,
            &format!("/spec/containers/{app_container}/volumeMounts"),
            vec![json!({"name": BIN_VOLUME, "mountPath": BIN_DIR, "readOnly": true})],
        );
    }

    // 2. The sidecar (and the redirect init container).
    let sidecar = sidecar_container(
        cfg,
        &settings,
        &secret_volumes,
        traffic,
        port_name.as_deref(),
        &server,
        &name,
    );
    let mut init = Vec::new();
    if traffic == Traffic::Redirect {
        init.push(redirect_container(cfg, server.number));
    }
    if wrap.is_some() {
        init.push(copy_binary_container(cfg));
    }
    if cfg.native_sidecar {
        init.push(sidecar);
        b.prepend(pod, "/spec/initContainers", init);
    } else {
        b.prepend(pod, "/spec/initContainers", init);
        b.add("/spec/containers/0", sidecar);
    }

    // 3. The policy volume: optional, so the pod starts before its namespace has the policy.
    let mut volumes = vec![json!({
        "name": POLICY_VOLUME,
        "configMap": {"name": settings.policy, "optional": true},
    })];
    if wrap.is_some() {
        volumes.push(json!({"name": BIN_VOLUME, "emptyDir": {"sizeLimit": "64Mi"}}));
    }
    // Secrets the settings name: the key alone, read-only, for the sidecar's user (no other
    // container mounts them). A missing Secret or key keeps the pod from starting.
    for v in &secret_volumes {
        volumes.push(json!({
            "name": v.volume,
            "secret": {
                "secretName": v.secret.name,
                "items": [{"key": v.secret.key, "path": v.secret.key}],
                "defaultMode": 0o444,
            },
        }));
    }
    b.append(pod, "/spec/volumes", volumes);

    // 4. Metadata: the status that makes a second pass a no-op, and labels for NetworkPolicy.
    let status = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "traffic": traffic.as_str(),
        "sidecar": if cfg.native_sidecar { "native" } else { "regular" },
        "port": cfg.sidecar_port,
        "upstreamPort": server.number,
    });
    let mut new_annotations = BTreeMap::new();
    new_annotations.insert(annotations::STATUS.to_string(), status.to_string());
    if !pod_annotations.contains_key(DEFAULT_CONTAINER)
        && let Some(name) = containers
            .get(app_container)
            .and_then(|c| c.get("name"))
            .and_then(Value::as_str)
    {
        new_annotations.insert(DEFAULT_CONTAINER.to_string(), name.to_string());
    }
    b.add_map_entries(pod, "/metadata/annotations", &new_annotations);
    let mut labels = BTreeMap::new();
    labels.insert(annotations::LABEL_INJECTED.to_string(), "true".to_string());
    labels.insert(
        annotations::LABEL_TRAFFIC.to_string(),
        traffic.as_str().to_string(),
    );
    b.add_map_entries(pod, "/metadata/labels", &labels);

    let patch = b.into_patch().map_err(|e| {
        vec![AnnotationError::new(
            annotations::INJECT,
            "enabled",
            format!("the pod cannot be patched: {e}"),
        )]
    })?;
    Ok(Outcome::Injected { patch, traffic })
}

/// For `mcp-guard.dev/shutdown-on-exit`: the app container's command under `run-app`. Refused,
/// with the reason, where it cannot work: a pod the kubelet never lets finish (`restartPolicy:
/// Always`), or a container whose command the webhook cannot see (it comes from the image).
/// Checked in both sidecar forms, so a manifest means the same on every cluster.
fn run_app_command(
    cfg: &InjectConfig,
    pod: &Value,
    container: &Value,
) -> Result<Vec<Value>, Vec<AnnotationError>> {
    let refuse = |why: String| {
        vec![AnnotationError::new(
            annotations::SHUTDOWN_ON_EXIT,
            "enabled",
            why,
        )]
    };
    let restart = pod
        .pointer("/spec/restartPolicy")
        .and_then(Value::as_str)
        .unwrap_or("Always");
    let on_failure = match restart {
        "Never" => "shutdown",
        "OnFailure" => "keep",
        other => {
            return Err(refuse(format!(
                "only pods that finish can end their sidecar (restartPolicy Never or OnFailure, \
                 as in Jobs and CronJobs); this pod's restartPolicy is {other}"
            )));
        }
    };
    let name = container
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let command = container
        .get("command")
        .and_then(Value::as_array)
        .filter(|c| !c.is_empty())
        .ok_or_else(|| {
            refuse(format!(
                "container {name:?} declares no command: its image's entrypoint is not visible \
                 to the webhook, so it cannot be wrapped; set the container's command (the \
                 image's entrypoint) in the pod template"
            ))
        })?;
    if container
        .get("volumeMounts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|m| m.get("mountPath").and_then(Value::as_str) == Some(BIN_DIR))
    {
        return Err(refuse(format!(
            "container {name:?} already mounts something at {BIN_DIR}"
        )));
    }
    let mut wrapped = vec![
        json!(format!("{BIN_DIR}/mcp-guard-sidecar")),
        json!("run-app"),
        json!("--admin"),
        json!(format!("127.0.0.1:{}", cfg.admin_port)),
        json!("--on-failure"),
        json!(on_failure),
        json!("--"),
    ];
    wrapped.extend(command.iter().cloned());
    Ok(wrapped)
}

/// The init container that puts the sidecar binary (static) where the app container runs it.
fn copy_binary_container(cfg: &InjectConfig) -> Value {
    json!({
        "name": COPY_BINARY_NAME,
        "image": cfg.image,
        "imagePullPolicy": cfg.image_pull_policy,
        "command": ["mcp-guard-sidecar", "copy-binary", BIN_DIR],
        "resources": {
            "requests": {"cpu": "10m", "memory": "16Mi"},
            "limits": {"cpu": "100m", "memory": "64Mi"},
        },
        "securityContext": restricted_security_context(cfg.sidecar_uid),
        "volumeMounts": [{"name": BIN_VOLUME, "mountPath": BIN_DIR}],
        "terminationMessagePolicy": "FallbackToLogsOnError",
    })
}

fn pod_array<'a>(pod: &'a Value, pointer: &str) -> impl Iterator<Item = &'a Value> {
    pod.pointer(pointer)
        .and_then(Value::as_array)
        .map(|a| a.iter())
        .into_iter()
        .flatten()
}

/// TCP ports declared by the regular containers, in order.
fn declared_ports(containers: &[Value]) -> Vec<DeclaredPort> {
    let mut out = Vec::new();
    for (ci, c) in containers.iter().enumerate() {
        let Some(ports) = c.get("ports").and_then(Value::as_array) else {
            continue;
        };
        for (pi, p) in ports.iter().enumerate() {
            let protocol = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
            let Some(number) = p
                .get("containerPort")
                .and_then(Value::as_u64)
                .and_then(|n| u16::try_from(n).ok())
            else {
                continue;
            };
            if protocol != "TCP" {
                continue;
            }
            out.push(DeclaredPort {
                container: ci,
                index: pi,
                name: p
                    .get("name")
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string),
                number,
            });
        }
    }
    out
}

/// In `takeover` mode the port's name moves to the sidecar: probes and lifecycle hooks of the
/// app container that used the name would now hit the sidecar, so they get the number.
fn rewrite_named_ports(
    b: &mut PatchBuilder,
    container: &Value,
    ci: usize,
    name: &str,
    number: u16,
) {
    let handlers = [
        ("livenessProbe", None),
        ("readinessProbe", None),
        ("startupProbe", None),
        ("lifecycle", Some("postStart")),
        ("lifecycle", Some("preStop")),
    ];
    for (field, sub) in handlers {
        let (handler, path) = match sub {
            None => (
                container.get(field),
                format!("/spec/containers/{ci}/{field}"),
            ),
            Some(s) => (
                container.get(field).and_then(|l| l.get(s)),
                format!("/spec/containers/{ci}/{field}/{s}"),
            ),
        };
        let Some(handler) = handler else { continue };
        for kind in ["httpGet", "tcpSocket"] {
            if handler
                .pointer(&format!("/{kind}/port"))
                .and_then(Value::as_str)
                == Some(name)
            {
                b.replace(format!("{path}/{kind}/port"), json!(number));
            }
        }
    }
}

/// The workload's name for `MCP_GUARD_SERVER_NAME`: the `app.kubernetes.io/name` label, else
/// the owning workload's name.
fn server_name(ctx: PodContext<'_>) -> String {
    let pod = ctx.pod;
    let labels = selection::string_map(pod, "/metadata/labels");
    if let Some(n) = labels
        .get("app.kubernetes.io/name")
        .filter(|s| !s.is_empty())
    {
        return n.clone();
    }
    if let Some(w) = ctx.workload_name.filter(|s| !s.is_empty()) {
        return w.to_string();
    }
    if let Some(gen_name) = pod
        .pointer("/metadata/generateName")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
    {
        let mut base = gen_name.trim_end_matches('-');
        if let Some(hash) = labels.get("pod-template-hash") {
            base = base.strip_suffix(&format!("-{hash}")).unwrap_or(base);
        }
        if !base.is_empty() {
            return base.to_string();
        }
    }
    let owner = pod
        .pointer("/metadata/ownerReferences/0/name")
        .and_then(Value::as_str);
    if let Some(o) = owner.filter(|s| !s.is_empty()) {
        return o.to_string();
    }
    pod.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("unknown")
        .to_string()
}

fn restricted_security_context(uid: i64) -> Value {
    json!({
        "allowPrivilegeEscalation": false,
        "capabilities": {"drop": ["ALL"]},
        "privileged": false,
        "readOnlyRootFilesystem": true,
        "runAsNonRoot": true,
        "runAsUser": uid,
        "runAsGroup": uid,
        "seccompProfile": {"type": "RuntimeDefault"},
    })
}

fn sidecar_container(
    cfg: &InjectConfig,
    s: &Settings,
    secrets: &[SecretVolume],
    traffic: Traffic,
    port_name: Option<&str>,
    server: &ServerPort,
    server_name: &str,
) -> Value {
    let mcp_port_name = match (traffic, port_name) {
        (Traffic::Takeover, Some(n)) => n,
        _ => SIDECAR_PORT_NAME,
    };
    let mut env = vec![
        json!({"name": sidecar_env::LISTEN, "value": format!("0.0.0.0:{}", cfg.sidecar_port)}),
        json!({"name": sidecar_env::ADMIN_LISTEN, "value": format!("0.0.0.0:{}", cfg.admin_port)}),
        json!({"name": sidecar_env::UPSTREAM_PORT, "value": server.number.to_string()}),
        json!({"name": sidecar_env::PATH, "value": s.path}),
        json!({"name": sidecar_env::POLICY_DIR, "value": POLICY_DIR}),
        json!({"name": sidecar_env::ENFORCEMENT, "value": s.enforcement}),
    ];
    if let Some(uri) = &s.resource_uri {
        env.push(json!({"name": sidecar_env::RESOURCE_URI, "value": uri}));
    }
    if let Some(iss) = &s.issuer {
        env.push(json!({"name": sidecar_env::ISSUER, "value": iss}));
    }
    env.extend([
        json!({"name": sidecar_env::SERVER_NAME, "value": server_name}),
        json!({"name": sidecar_env::POD_NAME, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}}),
        json!({"name": sidecar_env::POD_NAMESPACE, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}}),
        json!({"name": sidecar_env::LOG, "value": s.log_level}),
        json!({"name": sidecar_env::LOG_FORMAT, "value": s.log_format}),
    ]);
    for (setting, value) in &s.sidecar {
        env.push(match setting.kind {
            Kind::SecretEnv { key } => match SecretRef::parse(value, key) {
                Some(r) => {
                    json!({"name": setting.env, "valueFrom": {"secretKeyRef": {"name": r.name, "key": r.key}}})
                }
                // Checked in Settings::parse; never reached.
                None => continue,
            },
            Kind::SecretFile { .. } => match secrets.iter().find(|v| v.setting == *setting) {
                Some(v) => json!({"name": setting.env, "value": v.file()}),
                None => continue,
            },
            _ => json!({"name": setting.env, "value": value}),
        });
    }
    let mut mounts =
        vec![json!({"name": POLICY_VOLUME, "mountPath": POLICY_DIR, "readOnly": true})];
    for v in secrets {
        mounts.push(json!({"name": v.volume, "mountPath": v.mount_path(), "readOnly": true}));
    }
    let startupz = json!({"path": "/startupz", "port": cfg.admin_port, "scheme": "HTTP"});
    let readyz = json!({"path": "/readyz", "port": cfg.admin_port, "scheme": "HTTP"});
    let mut c = json!({
        "name": SIDECAR_NAME,
        "image": cfg.image,
        "imagePullPolicy": cfg.image_pull_policy,
        "ports": [
            {"name": mcp_port_name, "containerPort": cfg.sidecar_port, "protocol": "TCP"},
            {"name": ADMIN_PORT_NAME, "containerPort": cfg.admin_port, "protocol": "TCP"},
        ],
        "env": env,
        "resources": {
            "requests": {"cpu": s.cpu_request, "memory": s.memory_request},
            "limits": {"cpu": s.cpu_limit, "memory": s.memory_limit},
        },
        "securityContext": restricted_security_context(cfg.sidecar_uid),
        "volumeMounts": mounts,
        // Never the server: the kubelet starts the server's container only after this passes.
        "startupProbe": {"httpGet": startupz, "periodSeconds": 1, "timeoutSeconds": 1, "failureThreshold": 120},
        "readinessProbe": {"httpGet": readyz, "periodSeconds": 5, "timeoutSeconds": 1, "failureThreshold": 3},
        "livenessProbe": {
            "httpGet": {"path": "/livez", "port": cfg.admin_port, "scheme": "HTTP"},
            "periodSeconds": 10, "timeoutSeconds": 1, "failureThreshold": 3,
        },
        "terminationMessagePolicy": "FallbackToLogsOnError",
    });
    if let Some(obj) = c.as_object_mut() {
        if cfg.native_sidecar {
            obj.insert("restartPolicy".into(), json!("Always"));
        } else {
            // A regular container: the kubelet starts containers in order and waits for this
            // hook to finish before starting the next, so the app starts behind a serving
            // sidecar. The hook must not wait for the app: it has not been started yet.
            obj.insert(
                "lifecycle".into(),
                json!({"postStart": {"exec": {"command": ["mcp-guard-sidecar", "wait-started", "--timeout", "120s"]}}}),
            );
        }
    }
    c
}

/// A Secret a `*-secret` setting mounts into the sidecar.
struct SecretVolume {
    setting: &'static Setting,
    volume: String,
    secret: SecretRef,
}

impl SecretVolume {
    /// Where the Secret is mounted in the sidecar.
    fn mount_path(&self) -> String {
        format!("{SECRETS_DIR}/{}", self.setting.name)
    }

    /// The file the sidecar's variable names.
    fn file(&self) -> String {
        format!("{}/{}", self.mount_path(), self.secret.key)
    }
}

/// The Secret volumes of the pod's `*-secret` file settings, in the table's order.
fn secret_volumes(s: &Settings) -> Vec<SecretVolume> {
    s.sidecar
        .iter()
        .filter_map(|(setting, value)| match setting.kind {
            Kind::SecretFile { key } => Some(SecretVolume {
                setting,
                volume: format!("mcp-guard-{}", setting.name),
                secret: SecretRef::parse(value, key)?,
            }),
            _ => None,
        })
        .collect()
}

fn redirect_container(cfg: &InjectConfig, server_port: u16) -> Value {
    json!({
        "name": REDIRECT_NAME,
        "image": cfg.redirect_image,
        "imagePullPolicy": cfg.image_pull_policy,
        "command": [
            "iptables", "-t", "nat", "-A", "PREROUTING", "-p", "tcp",
            "--dport", server_port.to_string(),
            "-j", "REDIRECT", "--to-ports", cfg.sidecar_port.to_string(),
        ],
        "resources": {
            "requests": {"cpu": "10m", "memory": "16Mi"},
            "limits": {"cpu": "100m", "memory": "64Mi"},
        },
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
            "privileged": false,
            "readOnlyRootFilesystem": false,
            "runAsNonRoot": false,
            "runAsUser": 0,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationMessagePolicy": "FallbackToLogsOnError",
    })
}
