//! The strict-ingress NetworkPolicy the controller keeps in each namespace with injected pods:
//! it selects the injected pods whose traffic mode leaves the server listening at the pod IP
//! (`takeover`, `explicit`; `redirect` closes that in the pod) and admits ingress only on the
//! sidecar's port plus the exempt ports.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::annotations::{LABEL_INJECTED, LABEL_TRAFFIC};

/// Name of the NetworkPolicy in each namespace.
pub const NAME: &str = "mcp-guard-sidecar-only";
/// Namespace annotation: `disabled` turns the NetworkPolicy off for that namespace.
pub const ANNOTATION: &str = "mcp-guard.dev/network-policy";
/// Namespace annotation: extra ports (comma-separated numbers) admitted to injected pods.
pub const EXEMPT_ANNOTATION: &str = "mcp-guard.dev/network-policy-exempt-ports";

/// Whether the namespace's annotations leave the NetworkPolicy on (`disabled` turns it off).
pub fn enabled_for(annotations: &BTreeMap<String, String>, default: bool) -> bool {
    match annotations.get(ANNOTATION).map(|s| s.trim()) {
        Some("disabled") => false,
        Some("enabled") => true,
        _ => default,
    }
}

/// Comma-separated port numbers; invalid entries are skipped (and reported by the caller).
pub fn parse_ports(s: &str) -> (Vec<u16>, Vec<String>) {
    let mut ports = Vec::new();
    let mut bad = Vec::new();
    for p in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match p.parse::<u16>() {
            Ok(n) if n > 0 => ports.push(n),
            _ => bad.push(p.to_string()),
        }
    }
    (ports, bad)
}

/// The desired NetworkPolicy for `namespace`.
pub fn desired(
    namespace: &str,
    sidecar_port: u16,
    exempt: &[u16],
    labels: &BTreeMap<String, String>,
) -> NetworkPolicy {
    let mut ports: Vec<u16> = std::iter::once(sidecar_port)
        .chain(exempt.iter().copied())
        .collect();
    ports.sort_unstable();
    ports.dedup();
    NetworkPolicy {
        metadata: ObjectMeta {
            name: Some(NAME.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some(labels.clone()),
            ..ObjectMeta::default()
        },
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: None,
                match_expressions: Some(vec![
                    LabelSelectorRequirement {
                        key: LABEL_INJECTED.to_string(),
                        operator: "In".to_string(),
                        values: Some(vec!["true".to_string()]),
                    },
                    LabelSelectorRequirement {
                        key: LABEL_TRAFFIC.to_string(),
                        operator: "In".to_string(),
                        values: Some(vec!["takeover".to_string(), "explicit".to_string()]),
                    },
                ]),
            }),
            policy_types: Some(vec!["Ingress".to_string()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: None,
                ports: Some(
                    ports
                        .into_iter()
                        .map(|p| NetworkPolicyPort {
                            port: Some(IntOrString::Int(i32::from(p))),
                            protocol: Some("TCP".to_string()),
                            end_port: None,
                        })
                        .collect(),
                ),
            }]),
            egress: None,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_only_the_sidecar_and_exempt_ports() {
        let np = desired("apps", 15001, &[9090, 15001], &BTreeMap::new());
        let spec = np.spec.unwrap_or_default();
        let ports: Vec<_> = spec.ingress.unwrap_or_default()[0]
            .ports
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|p| p.port)
            .collect();
        assert_eq!(
            ports,
            [Some(IntOrString::Int(9090)), Some(IntOrString::Int(15001))]
        );
        assert_eq!(spec.policy_types, Some(vec!["Ingress".to_string()]));
    }

    #[test]
    fn switch_and_ports() {
        let ann: BTreeMap<String, String> =
            [(ANNOTATION.to_string(), "disabled".to_string())].into();
        assert!(!enabled_for(&ann, true));
        assert!(enabled_for(&BTreeMap::new(), true));
        assert_eq!(
            parse_ports("9090, x,0"),
            (vec![9090], vec!["x".into(), "0".into()])
        );
    }
}
