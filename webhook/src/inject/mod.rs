//! The injection decision as one pure function: raw pod (plus its namespace's annotations and
//! the webhook's configuration) in, [`Outcome`] out. The admission server, the offline `inject`
//! command and the golden tests all call [`mutate`].
//!
//! Three steps: `selection` decides whether the pod is injected at all (on the raw object);
//! [`plan`] reads the pod as a typed [`Pod`] and decides what the injection adds and changes
//! (ports, traffic mode, conflicts, the sidecar and its configuration, init containers,
//! volumes, labels and annotations; the containers and volumes themselves come from
//! [`containers`]); [`render`] writes that plan as a JSON patch on the raw pod, so fields the
//! typed view does not know survive.

mod containers;
pub mod plan;
pub mod render;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use serde::Deserialize;
use serde_json::Value;

use self::plan::Planned;
use crate::annotations::{AnnotationError, Traffic};
use crate::config::InjectConfig;
use crate::selection::{self, Selection, SkipReason};

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
    let opt_in = match selection::select(
        ctx.pod,
        ctx.namespace,
        ctx.namespace_annotations,
        &cfg.own_namespace,
    )
    .map_err(|e| vec![e])?
    {
        Selection::Skip(reason) => return Ok(Outcome::Skipped(reason)),
        Selection::Inject(opt_in) => opt_in,
    };
    // Only a pod that asked for the sidecar is read as a typed Pod: one we leave alone is never
    // refused for a field our types read differently.
    let pod = Pod::deserialize(ctx.pod)
        .map_err(|e| vec![plan::refusal(format!("the pod cannot be read: {e}"))])?;
    let plan = match plan::plan(cfg, ctx, &pod, opt_in)? {
        Planned::Skip(reason) => return Ok(Outcome::Skipped(reason)),
        Planned::Inject(plan) => plan,
    };
    let patch = render::render(&plan, ctx.pod)
        .map_err(|e| vec![plan::refusal(format!("the pod cannot be patched: {e}"))])?;
    Ok(Outcome::Injected {
        patch,
        traffic: plan.traffic,
    })
}

fn pod_array<'a>(pod: &'a Value, pointer: &str) -> impl Iterator<Item = &'a Value> {
    pod.pointer(pointer)
        .and_then(Value::as_array)
        .map(|a| a.iter())
        .into_iter()
        .flatten()
}
