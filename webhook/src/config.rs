//! The injector's own configuration: what the injected sidecar looks like when a pod's
//! annotations say nothing. Shared by `serve` and `inject`; every flag has an
//! `MCP_GUARD_WEBHOOK_*` environment variable.

use clap::{Args, ValueEnum};

use crate::resource_uri::ResourceUriTemplate;
use crate::settings::MeshSettings;

/// The sidecar image this build injects by default: the same version as the webhook.
pub const DEFAULT_IMAGE: &str = concat!("ghcr.io/mcp-guard/sidecar:", env!("CARGO_PKG_VERSION"));
/// The image of the `redirect` mode's init container (needs `iptables`).
pub const DEFAULT_REDIRECT_IMAGE: &str =
    concat!("ghcr.io/mcp-guard/redirect:", env!("CARGO_PKG_VERSION"));

/// Where the sidecar is placed in the pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NativeSidecars {
    /// Native when the API server is 1.29 or newer (`serve` reads `/version`; `inject` assumes yes).
    Auto,
    /// Always an init container with `restartPolicy: Always`.
    Always,
    /// Always the first regular container, holding the others until it is ready.
    Never,
}

/// Flags that shape the injected sidecar (defaults for the `mcp-guard.dev/*` annotations).
#[derive(Debug, Clone, Args)]
pub struct InjectorArgs {
    /// Sidecar image.
    #[arg(long, env = "MCP_GUARD_WEBHOOK_IMAGE", default_value = DEFAULT_IMAGE)]
    pub image: String,

    /// Image pull policy of the injected containers.
    #[arg(
        long,
        env = "MCP_GUARD_WEBHOOK_IMAGE_PULL_POLICY",
        default_value = "IfNotPresent"
    )]
    pub image_pull_policy: String,

    /// Image of the `redirect` traffic mode's init container; its entrypoint must find `iptables`.
    #[arg(long, env = "MCP_GUARD_WEBHOOK_REDIRECT_IMAGE", default_value = DEFAULT_REDIRECT_IMAGE)]
    pub redirect_image: String,

    /// Port the sidecar listens on for MCP traffic.
    #[arg(long, env = "MCP_GUARD_WEBHOOK_SIDECAR_PORT", default_value_t = 15001)]
    pub sidecar_port: u16,

    /// Port of the sidecar's admin server (`/livez`, `/readyz`, `/metrics`).
    #[arg(long, env = "MCP_GUARD_WEBHOOK_ADMIN_PORT", default_value_t = 15020)]
    pub admin_port: u16,

    /// Native sidecar (init container with `restartPolicy: Always`) or regular first container.
    #[arg(
        long,
        env = "MCP_GUARD_WEBHOOK_NATIVE_SIDECARS",
        value_enum,
        default_value = "auto"
    )]
    pub native_sidecars: NativeSidecars,

    /// Default MCP endpoint path (annotation `mcp-guard.dev/path`).
    #[arg(long, env = "MCP_GUARD_WEBHOOK_DEFAULT_PATH", default_value = "/mcp")]
    pub default_path: String,

    /// Default policy ConfigMap name (annotation `mcp-guard.dev/policy`).
    #[arg(
        long,
        env = "MCP_GUARD_WEBHOOK_DEFAULT_POLICY",
        default_value = "mcp-guard-policy"
    )]
    pub default_policy: String,

    /// Default enforcement mode, `enforce` or `shadow` (annotation `mcp-guard.dev/enforcement`).
    #[arg(
        long,
        env = "MCP_GUARD_WEBHOOK_DEFAULT_ENFORCEMENT",
        default_value = "enforce"
    )]
    pub default_enforcement: String,

    /// Default token issuer (annotation `mcp-guard.dev/issuer`); unset leaves it to the sidecar.
    #[arg(long, env = "MCP_GUARD_WEBHOOK_DEFAULT_ISSUER")]
    pub default_issuer: Option<String>,

    /// Default resource URI (annotation `mcp-guard.dev/resource-uri`), the tokens' audience: a URL
    /// with `{name}` (the workload, as in `MCP_GUARD_SERVER_NAME`), `{namespace}` and `{path}`
    /// (the pod's MCP path), e.g. `https://{name}.{namespace}.svc.cluster.local{path}`. Unset: a
    /// pod with an issuer must carry the annotation.
    #[arg(
        long,
        env = "MCP_GUARD_WEBHOOK_DEFAULT_RESOURCE_URI_TEMPLATE",
        value_name = "TEMPLATE"
    )]
    pub default_resource_uri_template: Option<ResourceUriTemplate>,

    /// Default sidecar log level (annotation `mcp-guard.dev/log-level`).
    #[arg(
        long,
        env = "MCP_GUARD_WEBHOOK_DEFAULT_LOG_LEVEL",
        default_value = "info"
    )]
    pub default_log_level: String,

    /// Sidecar log format (`json` or `text`).
    #[arg(
        long,
        env = "MCP_GUARD_WEBHOOK_SIDECAR_LOG_FORMAT",
        default_value = "json"
    )]
    pub sidecar_log_format: String,

    /// Default CPU request of the sidecar (annotation `mcp-guard.dev/cpu-request`).
    #[arg(long, env = "MCP_GUARD_WEBHOOK_CPU_REQUEST", default_value = "10m")]
    pub cpu_request: String,

    /// Default CPU limit of the sidecar (annotation `mcp-guard.dev/cpu-limit`).
    #[arg(long, env = "MCP_GUARD_WEBHOOK_CPU_LIMIT", default_value = "1")]
    pub cpu_limit: String,

    /// Default memory request of the sidecar (annotation `mcp-guard.dev/memory-request`).
    #[arg(long, env = "MCP_GUARD_WEBHOOK_MEMORY_REQUEST", default_value = "32Mi")]
    pub memory_request: String,

    /// Default memory limit of the sidecar (annotation `mcp-guard.dev/memory-limit`).
    #[arg(long, env = "MCP_GUARD_WEBHOOK_MEMORY_LIMIT", default_value = "256Mi")]
    pub memory_limit: String,

    /// User id the sidecar runs as (PodSecurity `restricted` needs a non-root one).
    #[arg(long, env = "MCP_GUARD_WEBHOOK_SIDECAR_UID", default_value_t = 65532)]
    pub sidecar_uid: i64,

    /// Mesh-wide sidecar settings and locks, JSON: `{"settings": {NAME: VALUE}, "locked":
    /// [NAME]}` (NAME as in the annotation `mcp-guard.dev/NAME`; docs/annotations.md lists them).
    /// A namespace's annotations override these, a pod's override both; a locked setting cannot
    /// be changed by either (the pod is refused). Checked at startup. The chart renders it from
    /// `sidecar.settings` and `sidecar.locked`. An entry here wins over the dedicated flags
    /// above (`--default-policy`, ...).
    #[arg(
        long,
        env = "MCP_GUARD_WEBHOOK_SIDECAR_SETTINGS",
        value_name = "JSON",
        default_value = ""
    )]
    pub sidecar_settings: MeshSettings,

    /// What admission does with a pod (opted into mcp-guard, or labelled
    /// `mcp-guard.dev/server: "true"`) that runs images no `ApprovedServer` approves for its
    /// namespace, where the namespace's `mcp-guard.dev/approval` label says nothing: `enforce`
    /// (refuse), `warn` (admit with a warning), `audit` (admit, record), `disabled`
    /// (docs/registry.md). `inject` checks only when given `--approved-servers`.
    #[arg(
        long,
        env = "MCP_GUARD_WEBHOOK_APPROVAL_MODE",
        value_enum,
        default_value = "warn"
    )]
    pub approval_mode: crate::values::ApprovalMode,

    /// mcp-guard's own namespace: never injected.
    #[arg(
        long,
        env = "MCP_GUARD_WEBHOOK_OWN_NAMESPACE",
        default_value = "mcp-guard"
    )]
    pub own_namespace: String,
}

/// The resolved configuration [`crate::inject::mutate`] works from.
#[derive(Debug, Clone)]
pub struct InjectConfig {
    pub image: String,
    pub image_pull_policy: String,
    pub redirect_image: String,
    pub sidecar_port: u16,
    pub admin_port: u16,
    /// Native sidecar (init container) or regular first container.
    pub native_sidecar: bool,
    pub default_path: String,
    pub default_policy: String,
    pub default_enforcement: String,
    pub default_issuer: Option<String>,
    pub default_resource_uri_template: Option<ResourceUriTemplate>,
    pub default_log_level: String,
    pub sidecar_log_format: String,
    pub cpu_request: String,
    pub cpu_limit: String,
    pub memory_request: String,
    pub memory_limit: String,
    pub sidecar_uid: i64,
    pub own_namespace: String,
    /// Mesh-wide settings and locks (`--sidecar-settings`).
    pub mesh: MeshSettings,
    /// The approval check's mode where a namespace's label says nothing.
    pub approval_mode: crate::values::ApprovalMode,
}

impl InjectConfig {
    /// Resolves the flags, given whether the cluster supports native sidecars.
    pub fn from_args(args: &InjectorArgs, cluster_supports_native: bool) -> Self {
        let native_sidecar = match args.native_sidecars {
            NativeSidecars::Auto => cluster_supports_native,
            NativeSidecars::Always => true,
            NativeSidecars::Never => false,
        };
        Self {
            image: args.image.clone(),
            image_pull_policy: args.image_pull_policy.clone(),
            redirect_image: args.redirect_image.clone(),
            sidecar_port: args.sidecar_port,
            admin_port: args.admin_port,
            native_sidecar,
            default_path: args.default_path.clone(),
            default_policy: args.default_policy.clone(),
            default_enforcement: args.default_enforcement.clone(),
            default_issuer: args.default_issuer.clone(),
            default_resource_uri_template: args.default_resource_uri_template.clone(),
            default_log_level: args.default_log_level.clone(),
            sidecar_log_format: args.sidecar_log_format.clone(),
            cpu_request: args.cpu_request.clone(),
            cpu_limit: args.cpu_limit.clone(),
            memory_request: args.memory_request.clone(),
            memory_limit: args.memory_limit.clone(),
            sidecar_uid: args.sidecar_uid,
            own_namespace: args.own_namespace.clone(),
            mesh: args.sidecar_settings.clone(),
            approval_mode: args.approval_mode,
        }
    }
}

impl Default for InjectConfig {
    /// The flag defaults, with native sidecars: what the golden tests pin.
    fn default() -> Self {
        Self {
            image: DEFAULT_IMAGE.to_string(),
            image_pull_policy: "IfNotPresent".to_string(),
            redirect_image: DEFAULT_REDIRECT_IMAGE.to_string(),
            sidecar_port: 15001,
            admin_port: 15020,
            native_sidecar: true,
            default_path: "/mcp".to_string(),
            default_policy: "mcp-guard-policy".to_string(),
            default_enforcement: "enforce".to_string(),
            default_issuer: None,
            default_resource_uri_template: None,
            default_log_level: "info".to_string(),
            sidecar_log_format: "json".to_string(),
            cpu_request: "10m".to_string(),
            cpu_limit: "1".to_string(),
            memory_request: "32Mi".to_string(),
            memory_limit: "256Mi".to_string(),
            sidecar_uid: 65532,
            own_namespace: "mcp-guard".to_string(),
            mesh: MeshSettings::default(),
            approval_mode: crate::values::ApprovalMode::Warn,
        }
    }
}
