//! The injection plan: everything the injection adds to one pod and changes in it, decided from
//! the pod read through k8s-openapi's [`Pod`], its namespace and the webhook's configuration.
//! Nothing here writes JSON: [`super::render`] turns a [`Plan`] into the patch on the raw pod.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, LifecycleHandler, Pod, Probe, Volume, VolumeMount};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::json;

use super::containers::{self, SecretVolume, SidecarSpec};
use super::{BIN_DIR, BIN_VOLUME, COPY_BINARY_NAME, DEFAULT_CONTAINER, PodContext};
use super::{POLICY_VOLUME, REDIRECT_NAME, SIDECAR_NAME};
use crate::annotations::{self, AnnotationError, PortRef, Settings, Traffic};
use crate::config::InjectConfig;
use crate::resource_uri::Workload;
use crate::selection::{OptIn, SkipReason};
use crate::settings::Layers;

/// What the injection does to one pod, in the order the patch does it.
#[derive(Debug, Clone)]
pub struct Plan {
    /// How clients' traffic reaches the sidecar.
    pub traffic: Traffic,
    /// `takeover`: the server's port handed to the sidecar.
    pub takeover: Option<Takeover>,
    /// `shutdown-on-exit` in the regular form: the app container run under `run-app`.
    pub wrap: Option<Wrap>,
    /// The sidecar container.
    pub sidecar: Container,
    /// Whether the sidecar goes in as a native sidecar (first init container) or as the first
    /// regular container.
    pub native: bool,
    /// Init containers in front of the pod's own (the redirect, the binary's copy), in order.
    pub init_containers: Vec<Container>,
    /// Volumes appended to the pod's.
    pub volumes: Vec<Volume>,
    /// Annotations added: the status that makes a second pass a no-op, the default container.
    pub annotations: BTreeMap<String, String>,
    /// Labels added, for the NetworkPolicy and for people.
    pub labels: BTreeMap<String, String>,
}

/// In `takeover` mode the app's port is renamed and the sidecar takes its name; probes and
/// lifecycle hooks of the app container that used the name would now reach the sidecar, so
/// they get the number.
#[derive(Debug, Clone)]
pub struct Takeover {
    /// The app container and the index of the port in its `ports`.
    pub container: usize,
    pub port: usize,
    /// The server port's number.
    pub number: u16,
    /// The handlers of the app container that named the port, in the container's order.
    pub named_by: Vec<(Handler, Action)>,
}

/// A probe or lifecycle hook of a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handler {
    Liveness,
    Readiness,
    Startup,
    PostStart,
    PreStop,
}

/// The action of a handler that names a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    HttpGet,
    TcpSocket,
}

/// The app container's command under `run-app`, and the mount of the binary it runs.
#[derive(Debug, Clone)]
pub struct Wrap {
    pub container: usize,
    pub command: Vec<String>,
    pub mount: VolumeMount,
}

/// A plan, or why the pod is left alone.
#[derive(Debug, Clone)]
pub enum Planned {
    Inject(Box<Plan>),
    Skip(SkipReason),
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

/// Plans the injection of `pod`, which selection opted in (`opt_in` says how).
pub fn plan(
    cfg: &InjectConfig,
    ctx: PodContext<'_>,
    pod: &Pod,
    opt_in: OptIn,
) -> Result<Planned, Vec<AnnotationError>> {
    let pod_annotations = pod.metadata.annotations.clone().unwrap_or_default();
    let name = server_name(pod, ctx.workload_name);
    let settings = settings(cfg, ctx, &pod_annotations, &name)?;
    let secrets = containers::secret_volumes(&settings);
    let app_containers = app_containers(pod)?;
    let declared = declared_ports(app_containers);
    let conflicts = conflicts(cfg, pod, &declared, &secrets);
    if !conflicts.is_empty() {
        return Err(conflicts);
    }
    let Some(server) = server_port(&settings, &declared, opt_in)? else {
        return Ok(Planned::Skip(SkipReason::NoServerPort));
    };
    let port_name = server.declared.as_ref().and_then(|p| p.name.as_deref());
    let traffic = traffic(settings.traffic, port_name, server.number)?;
    let app = server.declared.as_ref().map_or(0, |p| p.container);
    // The app container: the one declaring the server's port (read from `app_containers`),
    // else the first (there is one).
    let app_container = &app_containers[app];
    let run_app = if settings.shutdown_on_exit {
        Some(run_app_command(cfg, pod, app_container)?)
    } else {
        None
    };
    let takeover = match (traffic, &server.declared, port_name) {
        (Traffic::Takeover, Some(p), Some(port_name)) => Some(Takeover {
            container: p.container,
            port: p.index,
            number: p.number,
            named_by: handlers_naming(app_container, port_name),
        }),
        _ => None,
    };
    // The app's command under `run-app`, in the regular form only: the kubelet itself ends a
    // native sidecar once the app containers have exited.
    let wrap = run_app.filter(|_| !cfg.native_sidecar).map(|command| Wrap {
        container: app,
        command,
        mount: containers::bin_mount(),
    });
    let spec = SidecarSpec {
        settings: &settings,
        secrets: &secrets,
        port_name: containers::mcp_port_name(traffic, port_name),
        upstream_port: server.number,
        server_name: &name,
    };
    let (sidecar, init_containers) = added_containers(cfg, spec, traffic, wrap.is_some());
    let default_container = Some(app_container.name.as_str())
        .filter(|n| !n.is_empty() && !pod_annotations.contains_key(DEFAULT_CONTAINER));
    Ok(Planned::Inject(Box::new(Plan {
        traffic,
        takeover,
        volumes: containers::volumes(&settings.policy, wrap.is_some(), &secrets),
        wrap,
        sidecar,
        native: cfg.native_sidecar,
        init_containers,
        annotations: new_annotations(cfg, traffic, server.number, default_container),
        labels: new_labels(traffic),
    })))
}

/// Every `mcp-guard.dev/*` setting of the pod from its three levels, checked.
fn settings(
    cfg: &InjectConfig,
    ctx: PodContext<'_>,
    pod_annotations: &BTreeMap<String, String>,
    name: &str,
) -> Result<Settings, Vec<AnnotationError>> {
    let layers = Layers {
        pod: pod_annotations,
        namespace: ctx.namespace_annotations,
        namespace_name: ctx.namespace,
        mesh: &cfg.mesh,
    };
    let workload = Workload {
        name,
        namespace: ctx.namespace,
    };
    Settings::parse(layers, cfg, workload)
}

/// The pod's regular containers, at least one.
fn app_containers(pod: &Pod) -> Result<&[Container], Vec<AnnotationError>> {
    match &pod.spec {
        Some(spec) if !spec.containers.is_empty() => Ok(&spec.containers),
        _ => Err(vec![refusal(
            "the pod has no spec.containers to put the sidecar in front of".to_string(),
        )]),
    }
}

/// The sidecar, and the init containers in front of the pod's own: the redirect in `redirect`
/// mode, the binary's copy when the app is wrapped.
fn added_containers(
    cfg: &InjectConfig,
    spec: SidecarSpec<'_>,
    traffic: Traffic,
    wrapped: bool,
) -> (Container, Vec<Container>) {
    let mut init = Vec::new();
    if traffic == Traffic::Redirect {
        init.push(containers::redirect(cfg, spec.upstream_port));
    }
    if wrapped {
        init.push(containers::copy_binary(cfg));
    }
    (containers::sidecar(cfg, spec), init)
}

/// An error against `mcp-guard.dev/inject: enabled`: the pod as a whole cannot be injected.
pub fn refusal(why: String) -> AnnotationError {
    AnnotationError::new(annotations::INJECT, "enabled", why)
}

/// Names, ports and volumes the sidecar needs that the pod already uses.
fn conflicts(
    cfg: &InjectConfig,
    pod: &Pod,
    declared: &[DeclaredPort],
    secrets: &[SecretVolume],
) -> Vec<AnnotationError> {
    let mut conflicts = Vec::new();
    let spec = pod.spec.as_ref();
    let all_containers = spec.into_iter().flat_map(|s| {
        s.containers
            .iter()
            .chain(s.init_containers.iter().flatten())
    });
    for c in all_containers {
        let name = &c.name;
        if name == SIDECAR_NAME || name == REDIRECT_NAME || name == COPY_BINARY_NAME {
            conflicts.push(refusal(format!(
                "the pod already has a container named {name:?} but no {} annotation; remove the container or the annotation",
                annotations::STATUS
            )));
        }
    }
    for p in declared {
        if p.number == cfg.sidecar_port || p.number == cfg.admin_port {
            conflicts.push(refusal(format!(
                "container port {} is reserved for the mcp-guard sidecar (ports {} and {})",
                p.number, cfg.sidecar_port, cfg.admin_port
            )));
        }
    }
    let pod_volumes: Vec<&str> = spec
        .and_then(|s| s.volumes.as_ref())
        .into_iter()
        .flatten()
        .map(|v| v.name.as_str())
        .collect();
    let ours = [POLICY_VOLUME, BIN_VOLUME]
        .into_iter()
        .chain(secrets.iter().map(|v| v.volume.as_str()));
    for volume in ours.filter(|v| pod_volumes.contains(v)) {
        conflicts.push(refusal(format!(
            "the pod already has a volume named {volume:?}"
        )));
    }
    conflicts
}

/// The server's port: the one `mcp-guard.dev/port` names, else the port named `mcp`, else the
/// first declared. `None`: the pod inherited the opt-in from its namespace but declares no
/// port (it is skipped, not refused).
fn server_port(
    settings: &Settings,
    declared: &[DeclaredPort],
    opt_in: OptIn,
) -> Result<Option<ServerPort>, Vec<AnnotationError>> {
    let found = |p: &DeclaredPort| ServerPort {
        declared: Some(p.clone()),
        number: p.number,
    };
    match &settings.port {
        Some(PortRef::Number(n)) => Ok(Some(ServerPort {
            declared: declared.iter().find(|p| p.number == *n).cloned(),
            number: *n,
        })),
        Some(PortRef::Name(name)) => declared
            .iter()
            .find(|p| p.name.as_deref() == Some(name))
            .map(|p| Some(found(p)))
            .ok_or_else(|| {
                vec![AnnotationError::new(
                    annotations::PORT,
                    name,
                    "no container of the pod declares a TCP port with that name",
                )]
            }),
        None => match declared
            .iter()
            .find(|p| p.name.as_deref() == Some("mcp"))
            .or_else(|| declared.first())
        {
            Some(p) => Ok(Some(found(p))),
            None if opt_in == OptIn::Namespace => Ok(None),
            None => Err(vec![AnnotationError::new(
                annotations::PORT,
                "",
                "the pod declares no container port: set it to the MCP server's port number",
            )]),
        },
    }
}

/// The traffic mode: the annotation's, else `takeover` when the server's port has a name (which
/// `takeover` needs), else `explicit`.
fn traffic(
    chosen: Option<Traffic>,
    port_name: Option<&str>,
    number: u16,
) -> Result<Traffic, Vec<AnnotationError>> {
    match (chosen, port_name) {
        (Some(t), _) if t != Traffic::Takeover => Ok(t),
        (Some(_), None) => Err(vec![AnnotationError::new(
            annotations::TRAFFIC,
            "takeover",
            format!(
                "takeover needs the server's port ({number}) to be a named container port; name it, or use \"explicit\" or \"redirect\""
            ),
        )]),
        (_, Some(_)) => Ok(Traffic::Takeover),
        (None, None) => Ok(Traffic::Explicit),
    }
}

/// For `mcp-guard.dev/shutdown-on-exit`: the app container's command under `run-app`. Refused,
/// with the reason, where it cannot work: a pod the kubelet never lets finish (`restartPolicy:
/// Always`), or a container whose command the webhook cannot see (it comes from the image).
/// Checked in both sidecar forms, so a manifest means the same on every cluster.
fn run_app_command(
    cfg: &InjectConfig,
    pod: &Pod,
    container: &Container,
) -> Result<Vec<String>, Vec<AnnotationError>> {
    let refuse = |why: String| {
        vec![AnnotationError::new(
            annotations::SHUTDOWN_ON_EXIT,
            "enabled",
            why,
        )]
    };
    let restart = pod
        .spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
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
    let name = &container.name;
    let command = container
        .command
        .as_ref()
        .filter(|c| !c.is_empty())
        .ok_or_else(|| {
            refuse(format!(
                "container {name:?} declares no command: its image's entrypoint is not visible \
                 to the webhook, so it cannot be wrapped; set the container's command (the \
                 image's entrypoint) in the pod template"
            ))
        })?;
    if container
        .volume_mounts
        .iter()
        .flatten()
        .any(|m| m.mount_path == BIN_DIR)
    {
        return Err(refuse(format!(
            "container {name:?} already mounts something at {BIN_DIR}"
        )));
    }
    let admin = format!("127.0.0.1:{}", cfg.admin_port);
    let run_app = [
        &format!("{BIN_DIR}/mcp-guard-sidecar"),
        "run-app",
        "--admin",
        &admin,
        "--on-failure",
        on_failure,
        "--",
    ];
    let mut wrapped: Vec<String> = run_app.map(String::from).to_vec();
    wrapped.extend(command.iter().cloned());
    Ok(wrapped)
}

/// TCP ports declared by the regular containers, in order.
fn declared_ports(containers: &[Container]) -> Vec<DeclaredPort> {
    let mut out = Vec::new();
    for (ci, c) in containers.iter().enumerate() {
        for (pi, p) in c.ports.iter().flatten().enumerate() {
            let tcp = p.protocol.as_deref().unwrap_or("TCP") == "TCP";
            // A port of 0 is no port (the field is required, so a missing one reads as 0).
            let number = u16::try_from(p.container_port).ok().filter(|n| *n != 0);
            let Some(number) = number.filter(|_| tcp) else {
                continue;
            };
            out.push(DeclaredPort {
                container: ci,
                index: pi,
                name: p.name.clone().filter(|s| !s.is_empty()),
                number,
            });
        }
    }
    out
}

/// The probes and lifecycle hooks of `container` whose port is the port name `name`.
fn handlers_naming(container: &Container, name: &str) -> Vec<(Handler, Action)> {
    let lifecycle = container.lifecycle.as_ref();
    let handlers = [
        (Handler::Liveness, probe_ports(&container.liveness_probe)),
        (Handler::Readiness, probe_ports(&container.readiness_probe)),
        (Handler::Startup, probe_ports(&container.startup_probe)),
        (
            Handler::PostStart,
            hook_ports(lifecycle.and_then(|l| l.post_start.as_ref())),
        ),
        (
            Handler::PreStop,
            hook_ports(lifecycle.and_then(|l| l.pre_stop.as_ref())),
        ),
    ];
    let names =
        |port: Option<&IntOrString>| matches!(port, Some(IntOrString::String(s)) if s == name);
    let mut out = Vec::new();
    for (handler, ports) in handlers {
        let Some((http, tcp)) = ports else { continue };
        for (action, port) in [(Action::HttpGet, http), (Action::TcpSocket, tcp)] {
            if names(port) {
                out.push((handler, action));
            }
        }
    }
    out
}

/// The ports a handler names: its `httpGet` and its `tcpSocket` action's.
type HandlerPorts<'a> = (Option<&'a IntOrString>, Option<&'a IntOrString>);

fn probe_ports(p: &Option<Probe>) -> Option<HandlerPorts<'_>> {
    p.as_ref().map(|p| {
        let http = p.http_get.as_ref().map(|a| &a.port);
        (http, p.tcp_socket.as_ref().map(|a| &a.port))
    })
}

fn hook_ports(h: Option<&LifecycleHandler>) -> Option<HandlerPorts<'_>> {
    h.map(|h| {
        let http = h.http_get.as_ref().map(|a| &a.port);
        (http, h.tcp_socket.as_ref().map(|a| &a.port))
    })
}

/// The status annotation (what was injected, and the mark that makes a second pass a no-op) and
/// the default container for `kubectl logs` / `exec` unless the pod names one.
fn new_annotations(
    cfg: &InjectConfig,
    traffic: Traffic,
    upstream_port: u16,
    default_container: Option<&str>,
) -> BTreeMap<String, String> {
    let status = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "traffic": traffic.as_str(),
        "sidecar": if cfg.native_sidecar { "native" } else { "regular" },
        "port": cfg.sidecar_port,
        "upstreamPort": upstream_port,
    });
    let mut out = BTreeMap::new();
    out.insert(annotations::STATUS.to_string(), status.to_string());
    if let Some(name) = default_container {
        out.insert(DEFAULT_CONTAINER.to_string(), name.to_string());
    }
    out
}

/// The labels the NetworkPolicy selects.
fn new_labels(traffic: Traffic) -> BTreeMap<String, String> {
    BTreeMap::from([
        (annotations::LABEL_INJECTED.to_string(), "true".to_string()),
        (
            annotations::LABEL_TRAFFIC.to_string(),
            traffic.as_str().to_string(),
        ),
    ])
}

/// The workload's name for `MCP_GUARD_SERVER_NAME`: the `app.kubernetes.io/name` label, else
/// the owning workload's name.
fn server_name(pod: &Pod, workload_name: Option<&str>) -> String {
    let meta = &pod.metadata;
    let labels = meta.labels.as_ref();
    let label = |k: &str| labels.and_then(|l| l.get(k));
    if let Some(n) = label("app.kubernetes.io/name").filter(|s| !s.is_empty()) {
        return n.clone();
    }
    if let Some(w) = workload_name.filter(|s| !s.is_empty()) {
        return w.to_string();
    }
    if let Some(gen_name) = meta.generate_name.as_deref().filter(|s| !s.is_empty()) {
        let mut base = gen_name.trim_end_matches('-');
        if let Some(hash) = label("pod-template-hash") {
            base = base.strip_suffix(&format!("-{hash}")).unwrap_or(base);
        }
        if !base.is_empty() {
            return base.to_string();
        }
    }
    let owner = meta.owner_references.iter().flatten().next();
    if let Some(o) = owner.map(|o| o.name.as_str()).filter(|s| !s.is_empty()) {
        return o.to_string();
    }
    meta.name.clone().unwrap_or_else(|| "unknown".to_string())
}
