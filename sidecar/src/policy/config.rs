//! Policy flags of the sidecar.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

use mcp_guard_common::duration::parse_duration;
use mcp_guard_common::env;

/// Whether a policy's denials are enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Enforcement {
    /// Denied requests are refused; hidden items are removed from lists.
    Enforce,
    /// Decide and record what would be denied, but forward everything.
    Shadow,
}

impl Enforcement {
    pub fn as_str(self) -> &'static str {
        match self {
            Enforcement::Enforce => "enforce",
            Enforcement::Shadow => "shadow",
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct PolicyConfig {
    /// Directory of the policy bundle (`*.rego`, optional `data.json`), as a ConfigMap volume lays
    /// it out. When set, Rego policy governs; while it holds no valid bundle every governed request
    /// is denied (fail closed). When unset, only the static tool lists apply.
    #[arg(long, env = env::POLICY_DIR)]
    pub policy_dir: Option<PathBuf>,

    /// `enforce`, or `shadow` to decide and record without refusing anything.
    #[arg(
        long,
        env = env::ENFORCEMENT,
        value_enum,
        default_value = "enforce"
    )]
    pub enforcement: Enforcement,

    /// Leave deny reasons out of the errors clients get (they are still logged).
    #[arg(long, env = env::HIDE_DENY_REASONS, default_value_t = false)]
    pub hide_deny_reasons: bool,

    /// How often the bundle directory is re-read in case a file-system event was missed.
    #[arg(long, env = env::POLICY_POLL_INTERVAL, default_value = "2s", value_parser = parse_duration)]
    pub policy_poll_interval: Duration,

    /// Name of the governed MCP server (policy input `server.name`).
    #[arg(long, env = env::SERVER_NAME, default_value = "")]
    pub server_name: String,

    /// Namespace of the pod (policy input `server.namespace`).
    #[arg(long, env = env::POD_NAMESPACE, default_value = "")]
    pub pod_namespace: String,

    /// Name of the pod (policy input `server.pod`).
    #[arg(long, env = env::POD_NAME, default_value = "")]
    pub pod_name: String,

    /// Pins of record, a JSON object of tool name to `sha256:<hex>` of its approved definition
    /// (`input.tool.pinned_hash`), the same for every replica and restart. Without it, each
    /// sidecar pins the definitions it sees first. With it, a tool not named is unpinned (policy
    /// sees it as changed).
    #[arg(long, env = env::PINNED_TOOLS, value_parser = mcp_guard_policy::catalog::parse_pins)]
    pub pinned_tools: Option<std::collections::BTreeMap<String, String>>,
}

impl PolicyConfig {
    /// The policy input's `server`: this pod and the server it runs, converted once.
    pub fn server_value(&self) -> regorus::Value {
        mcp_guard_policy::input::ServerInfo {
            name: self.server_name.clone(),
            namespace: self.pod_namespace.clone(),
            pod: self.pod_name.clone(),
        }
        .to_value()
    }

    /// The tool catalog this configuration asks for: compared with its pins of record, or
    /// pinning what it sees first.
    pub fn tool_catalog(&self) -> mcp_guard_policy::catalog::ToolCatalog {
        match &self.pinned_tools {
            Some(pins) => mcp_guard_policy::catalog::ToolCatalog::with_pins(pins.clone()),
            None => mcp_guard_policy::catalog::ToolCatalog::default(),
        }
    }
}
