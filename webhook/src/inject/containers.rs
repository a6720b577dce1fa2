//! What the injection adds to a pod, as Kubernetes types: the sidecar container with its
//! environment (the sidecar's contract, `mcp_guard_common::env`), the init containers of the
//! `redirect` mode and of `shutdown-on-exit`, and the volumes they mount.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    EnvVarSource, ExecAction, HTTPGetAction, KeyToPath, Lifecycle, LifecycleHandler,
    ObjectFieldSelector, Probe, ResourceRequirements, SeccompProfile, SecretKeySelector,
    SecretVolumeSource, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use mcp_guard_common::env as sidecar_env;

use super::{
    ADMIN_PORT_NAME, BIN_DIR, BIN_VOLUME, COPY_BINARY_NAME, POLICY_DIR, POLICY_VOLUME,
    REDIRECT_NAME, SECRETS_DIR, SIDECAR_NAME, SIDECAR_PORT_NAME,
};
use crate::annotations::{Settings, Traffic};
use crate::config::InjectConfig;
use crate::settings::{Kind, SecretRef, Setting};

/// A Secret a `*-secret` setting mounts into the sidecar.
#[derive(Debug, Clone)]
pub struct SecretVolume {
    pub setting: &'static Setting,
    pub volume: String,
    pub secret: SecretRef,
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
pub fn secret_volumes(s: &Settings) -> Vec<SecretVolume> {
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

/// What the sidecar container is built from, beyond the webhook's configuration.
#[derive(Debug, Clone, Copy)]
pub struct SidecarSpec<'a> {
    pub settings: &'a Settings,
    pub secrets: &'a [SecretVolume],
    /// The name of the sidecar's MCP port: the server port's own name in `takeover` mode.
    pub port_name: &'a str,
    /// The server's port, the sidecar's upstream.
    pub upstream_port: u16,
    /// `MCP_GUARD_SERVER_NAME`.
    pub server_name: &'a str,
}

/// The sidecar container, native (an init container with `restartPolicy: Always`) or regular.
pub fn sidecar(cfg: &InjectConfig, spec: SidecarSpec<'_>) -> Container {
    let s = spec.settings;
    let mut mounts = vec![mount(POLICY_VOLUME, POLICY_DIR, true)];
    mounts.extend(
        spec.secrets
            .iter()
            .map(|v| mount(&v.volume, &v.mount_path(), true)),
    );
    let mut c = Container {
        name: SIDECAR_NAME.to_string(),
        image: Some(cfg.image.clone()),
        image_pull_policy: Some(cfg.image_pull_policy.clone()),
        ports: Some(vec![
            tcp_port(spec.port_name, cfg.sidecar_port),
            tcp_port(ADMIN_PORT_NAME, cfg.admin_port),
        ]),
        env: Some(sidecar_env_vars(cfg, spec)),
        resources: Some(resources(
            (&s.cpu_request, &s.memory_request),
            (&s.cpu_limit, &s.memory_limit),
        )),
        security_context: Some(restricted_security_context(cfg.sidecar_uid)),
        volume_mounts: Some(mounts),
        // Never the server: the kubelet starts the server's container only after this passes.
        startup_probe: Some(admin_probe(cfg, "/startupz", 1, 120)),
        readiness_probe: Some(admin_probe(cfg, "/readyz", 5, 3)),
        liveness_probe: Some(admin_probe(cfg, "/livez", 10, 3)),
        termination_message_policy: Some("FallbackToLogsOnError".to_string()),
        ..Container::default()
    };
    if cfg.native_sidecar {
        c.restart_policy = Some("Always".to_string());
    } else {
        // A regular container: the kubelet starts containers in order and waits for this hook
        // to finish before starting the next, so the app starts behind a serving sidecar. The
        // hook must not wait for the app: it has not been started yet.
        let wait = ["mcp-guard-sidecar", "wait-started", "--timeout", "120s"];
        c.lifecycle = Some(Lifecycle {
            post_start: Some(LifecycleHandler {
                exec: Some(ExecAction {
                    command: Some(wait.map(String::from).to_vec()),
                }),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
        });
    }
    c
}

/// The sidecar's environment: its listeners and upstream, then each setting some level sets.
fn sidecar_env_vars(cfg: &InjectConfig, spec: SidecarSpec<'_>) -> Vec<EnvVar> {
    let s = spec.settings;
    let mut env = vec![
        value(sidecar_env::LISTEN, format!("0.0.0.0:{}", cfg.sidecar_port)),
        value(
            sidecar_env::ADMIN_LISTEN,
            format!("0.0.0.0:{}", cfg.admin_port),
        ),
        value(sidecar_env::UPSTREAM_PORT, spec.upstream_port.to_string()),
        value(sidecar_env::PATH, &s.path),
        value(sidecar_env::POLICY_DIR, POLICY_DIR),
        value(sidecar_env::ENFORCEMENT, &s.enforcement),
    ];
    if let Some(uri) = &s.resource_uri {
        env.push(value(sidecar_env::RESOURCE_URI, uri));
    }
    if let Some(iss) = &s.issuer {
        env.push(value(sidecar_env::ISSUER, iss));
    }
    env.extend([
        value(sidecar_env::SERVER_NAME, spec.server_name),
        from_source(sidecar_env::POD_NAME, field_ref("metadata.name")),
        from_source(sidecar_env::POD_NAMESPACE, field_ref("metadata.namespace")),
        value(sidecar_env::LOG, &s.log_level),
        value(sidecar_env::LOG_FORMAT, &s.log_format),
    ]);
    for (setting, v) in &s.sidecar {
        let var = match setting.kind {
            // Checked in Settings::parse: a reference that does not parse is never reached.
            Kind::SecretEnv { key } => SecretRef::parse(v, key).map(|r| {
                let selector = SecretKeySelector {
                    name: r.name,
                    key: r.key,
                    optional: None,
                };
                let source = EnvVarSource {
                    secret_key_ref: Some(selector),
                    ..EnvVarSource::default()
                };
                from_source(setting.env, source)
            }),
            Kind::SecretFile { .. } => spec
                .secrets
                .iter()
                .find(|sv| sv.setting == *setting)
                .map(|sv| value(setting.env, sv.file())),
            _ => Some(value(setting.env, v)),
        };
        env.extend(var);
    }
    env
}

/// The `redirect` mode's init container: an iptables PREROUTING redirect of the server's port
/// to the sidecar's (root with NET_ADMIN, so not PodSecurity-restricted).
pub fn redirect(cfg: &InjectConfig, server_port: u16) -> Container {
    let command = [
        "iptables",
        "-t",
        "nat",
        "-A",
        "PREROUTING",
        "-p",
        "tcp",
        "--dport",
        &server_port.to_string(),
        "-j",
        "REDIRECT",
        "--to-ports",
        &cfg.sidecar_port.to_string(),
    ];
    let security = SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            add: Some(vec!["NET_ADMIN".to_string(), "NET_RAW".to_string()]),
            drop: Some(vec!["ALL".to_string()]),
        }),
        privileged: Some(false),
        read_only_root_filesystem: Some(false),
        run_as_non_root: Some(false),
        run_as_user: Some(0),
        seccomp_profile: Some(runtime_default()),
        ..SecurityContext::default()
    };
    init_container(cfg, REDIRECT_NAME, &cfg.redirect_image, &command, security)
}

/// The init container that puts the sidecar binary (static) where the app container runs it.
pub fn copy_binary(cfg: &InjectConfig) -> Container {
    let command = ["mcp-guard-sidecar", "copy-binary", BIN_DIR];
    let security = restricted_security_context(cfg.sidecar_uid);
    let mut c = init_container(cfg, COPY_BINARY_NAME, &cfg.image, &command, security);
    c.volume_mounts = Some(vec![VolumeMount {
        name: BIN_VOLUME.to_string(),
        mount_path: BIN_DIR.to_string(),
        ..VolumeMount::default()
    }]);
    c
}

/// A short-lived init container: runs `command` once, with small resources.
fn init_container(
    cfg: &InjectConfig,
    name: &str,
    image: &str,
    command: &[&str],
    security: SecurityContext,
) -> Container {
    Container {
        name: name.to_string(),
        image: Some(image.to_string()),
        image_pull_policy: Some(cfg.image_pull_policy.clone()),
        command: Some(command.iter().map(|s| s.to_string()).collect()),
        resources: Some(resources(("10m", "16Mi"), ("100m", "64Mi"))),
        security_context: Some(security),
        termination_message_policy: Some("FallbackToLogsOnError".to_string()),
        ..Container::default()
    }
}

/// Where the app container finds the sidecar binary under `shutdown-on-exit` (read-only).
pub fn bin_mount() -> VolumeMount {
    mount(BIN_VOLUME, BIN_DIR, true)
}

/// The volumes the injection adds: the policy ConfigMap, optional so the pod starts before its
/// namespace has the policy; the binary's copy when the app is wrapped; and the Secrets the
/// settings name: the key alone, read-only, for the sidecar's user (no other container mounts
/// them). A missing Secret or key keeps the pod from starting.
pub fn volumes(policy: &str, wrapped: bool, secrets: &[SecretVolume]) -> Vec<Volume> {
    let mut volumes = vec![Volume {
        name: POLICY_VOLUME.to_string(),
        config_map: Some(ConfigMapVolumeSource {
            name: policy.to_string(),
            optional: Some(true),
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    }];
    if wrapped {
        volumes.push(Volume {
            name: BIN_VOLUME.to_string(),
            empty_dir: Some(EmptyDirVolumeSource {
                size_limit: Some(Quantity("64Mi".to_string())),
                ..EmptyDirVolumeSource::default()
            }),
            ..Volume::default()
        });
    }
    volumes.extend(secrets.iter().map(|v| Volume {
        name: v.volume.clone(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(v.secret.name.clone()),
            items: Some(vec![KeyToPath {
                key: v.secret.key.clone(),
                path: v.secret.key.clone(),
                ..KeyToPath::default()
            }]),
            default_mode: Some(0o444),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }));
    volumes
}

/// The name of the sidecar's MCP port: in `takeover` mode the server port's own name.
pub fn mcp_port_name(traffic: Traffic, server_port_name: Option<&str>) -> &str {
    match (traffic, server_port_name) {
        (Traffic::Takeover, Some(n)) => n,
        _ => SIDECAR_PORT_NAME,
    }
}

fn restricted_security_context(uid: i64) -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            add: None,
            drop: Some(vec!["ALL".to_string()]),
        }),
        privileged: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        run_as_user: Some(uid),
        run_as_group: Some(uid),
        seccomp_profile: Some(runtime_default()),
        ..SecurityContext::default()
    }
}

fn runtime_default() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".to_string(),
        localhost_profile: None,
    }
}

/// An HTTP probe of the sidecar's admin port, answering within a second.
fn admin_probe(cfg: &InjectConfig, path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_string()),
            port: IntOrString::Int(i32::from(cfg.admin_port)),
            scheme: Some("HTTP".to_string()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(1),
        failure_threshold: Some(failures),
        ..Probe::default()
    }
}

fn tcp_port(name: &str, number: u16) -> ContainerPort {
    ContainerPort {
        name: Some(name.to_string()),
        container_port: i32::from(number),
        protocol: Some("TCP".to_string()),
        ..ContainerPort::default()
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.to_string(),
        mount_path: path.to_string(),
        read_only: Some(read_only),
        ..VolumeMount::default()
    }
}

/// Requests and limits, each as (cpu, memory).
fn resources(requests: (&str, &str), limits: (&str, &str)) -> ResourceRequirements {
    let map = |(cpu, memory): (&str, &str)| {
        BTreeMap::from([
            ("cpu".to_string(), Quantity(cpu.to_string())),
            ("memory".to_string(), Quantity(memory.to_string())),
        ])
    };
    ResourceRequirements {
        requests: Some(map(requests)),
        limits: Some(map(limits)),
        claims: None,
    }
}

fn value(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: Some(value.into()),
        value_from: None,
    }
}

fn from_source(name: &str, source: EnvVarSource) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: None,
        value_from: Some(source),
    }
}

fn field_ref(path: &str) -> EnvVarSource {
    EnvVarSource {
        field_ref: Some(ObjectFieldSelector {
            api_version: Some("v1".to_string()),
            field_path: path.to_string(),
        }),
        ..EnvVarSource::default()
    }
}
