//! Which pods get the sidecar: the opt-in annotation on the pod or its namespace (the pod wins),
//! and the pods that are never injected whatever they say.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::Value;

use crate::annotations::{self, AnnotationError, InjectChoice};

/// Namespaces that are never injected.
pub const NEVER_NAMESPACES: &[&str] = &["kube-system", "kube-public", "kube-node-lease"];
/// Label that marks mcp-guard's own pods (`app.kubernetes.io/part-of: mcp-guard`).
pub const PART_OF: &str = "app.kubernetes.io/part-of";

/// Why a pod was left alone. The label value of the `skipped` metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// Carries `mcp-guard.dev/status`: injected before (a reinvocation, or a copied manifest).
    AlreadyInjected,
    HostNetwork,
    /// kube-system, kube-public, kube-node-lease.
    SystemNamespace,
    /// mcp-guard's own namespace or its own pods.
    OwnPod,
    /// `mcp-guard.dev/inject: disabled` on the pod.
    OptedOut,
    /// Neither the pod nor its namespace asked for injection.
    NotEnabled,
    /// Inherited from the namespace, but the pod declares no port and names none.
    NoServerPort,
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::AlreadyInjected => "already_injected",
            SkipReason::HostNetwork => "host_network",
            SkipReason::SystemNamespace => "system_namespace",
            SkipReason::OwnPod => "own_pod",
            SkipReason::OptedOut => "opted_out",
            SkipReason::NotEnabled => "not_enabled",
            SkipReason::NoServerPort => "no_server_port",
        }
    }

    pub const ALL: [SkipReason; 7] = [
        SkipReason::AlreadyInjected,
        SkipReason::HostNetwork,
        SkipReason::SystemNamespace,
        SkipReason::OwnPod,
        SkipReason::OptedOut,
        SkipReason::NotEnabled,
        SkipReason::NoServerPort,
    ];
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the opt-in came from. A pod that asked itself gets an error where a pod that merely
/// inherited the namespace's choice is skipped (no port to govern).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptIn {
    Pod,
    Namespace,
}

/// The selection verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    Inject(OptIn),
    Skip(SkipReason),
}

/// A string map at `pointer` in `v` (annotations, labels); non-string values are ignored.
pub fn string_map(v: &Value, pointer: &str) -> BTreeMap<String, String> {
    v.pointer(pointer)
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// Decides whether `pod` (raw JSON) in `namespace` is injected.
pub fn select(
    pod: &Value,
    namespace: &str,
    namespace_annotations: &BTreeMap<String, String>,
    own_namespace: &str,
) -> Result<Selection, AnnotationError> {
    let pod_annotations = string_map(pod, "/metadata/annotations");
    if pod_annotations.contains_key(annotations::STATUS) {
        return Ok(Selection::Skip(SkipReason::AlreadyInjected));
    }
    if pod.pointer("/spec/hostNetwork").and_then(Value::as_bool) == Some(true) {
        return Ok(Selection::Skip(SkipReason::HostNetwork));
    }
    if NEVER_NAMESPACES.contains(&namespace) {
        return Ok(Selection::Skip(SkipReason::SystemNamespace));
    }
    let labels = string_map(pod, "/metadata/labels");
    if namespace == own_namespace || labels.get(PART_OF).map(String::as_str) == Some("mcp-guard") {
        return Ok(Selection::Skip(SkipReason::OwnPod));
    }
    match pod_annotations.get(annotations::INJECT) {
        Some(v) => match annotations::inject_choice(v.trim())? {
            InjectChoice::Enabled => Ok(Selection::Inject(OptIn::Pod)),
            InjectChoice::Disabled => Ok(Selection::Skip(SkipReason::OptedOut)),
        },
        None => match namespace_annotations.get(annotations::INJECT) {
            None => Ok(Selection::Skip(SkipReason::NotEnabled)),
            Some(v) => match annotations::inject_choice(v.trim()) {
                Ok(InjectChoice::Enabled) => Ok(Selection::Inject(OptIn::Namespace)),
                Ok(InjectChoice::Disabled) => Ok(Selection::Skip(SkipReason::NotEnabled)),
                Err(mut e) => {
                    e.annotation = format!("{} (on namespace {namespace})", e.annotation);
                    Err(e)
                }
            },
        },
    }
}
