//! The NetworkPolicies the controller keeps:
//!
//! - the strict-ingress one ([`NAME`]) in each namespace with injected pods: it selects the
//!   injected pods whose traffic mode leaves the server listening at the pod IP (`takeover`,
//!   `explicit`; `redirect` closes that in the pod) and admits ingress only on the sidecar's port
//!   plus the exempt ports, and on the sidecar's admin port from the controller's own pods (the
//!   fleet view reads it);
//! - an egress one per `ApprovedServer` that declares `spec.egress` ([`egress_name`]), in each
//!   namespace where pods of that entry run (admission labels them [`APPROVED_LABEL`]): they
//!   reach what the entry lists, and DNS, and nothing else.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams};

use super::context::{Ctx, MANAGED_BY, MANAGER, SYSTEM_NAMESPACES, has_status};
use crate::annotations::{LABEL_INJECTED, LABEL_TRAFFIC};
use crate::cluster::ApprovedServers;

/// Name of the NetworkPolicy in each namespace.
pub const NAME: &str = "mcp-guard-sidecar-only";
/// Prefix of the egress NetworkPolicies, followed by the `ApprovedServer`'s name.
pub const EGRESS_PREFIX: &str = "mcp-guard-egress-";
/// Pod label set at admission: the `ApprovedServer` that approved the pod's images.
pub use crate::registry::APPROVED_LABEL;
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

/// Labels of the controller's pods (the chart's webhook Deployment), in its own namespace.
pub const CONTROLLER_POD_LABELS: [(&str, &str); 2] = [
    ("app.kubernetes.io/part-of", "mcp-guard"),
    ("app.kubernetes.io/component", "webhook"),
];

/// Who may reach the sidecars' admin port: the controller's pods in `namespace`, on `port`.
#[derive(Debug, Clone, Copy)]
pub struct AdminPeer<'a> {
    pub namespace: &'a str,
    pub port: u16,
}

/// One TCP port of a NetworkPolicy rule.
fn tcp(port: u16) -> NetworkPolicyPort {
    NetworkPolicyPort {
        port: Some(IntOrString::Int(i32::from(port))),
        protocol: Some("TCP".to_string()),
        end_port: None,
    }
}

/// The desired NetworkPolicy for `namespace`.
pub fn desired(
    namespace: &str,
    sidecar_port: u16,
    exempt: &[u16],
    admin: AdminPeer<'_>,
    labels: &BTreeMap<String, String>,
) -> NetworkPolicy {
    let controller = NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector {
            match_labels: Some(
                [(
                    "kubernetes.io/metadata.name".to_string(),
                    admin.namespace.to_string(),
                )]
                .into(),
            ),
            match_expressions: None,
        }),
        pod_selector: Some(LabelSelector {
            match_labels: Some(
                CONTROLLER_POD_LABELS
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            match_expressions: None,
        }),
        ip_block: None,
    };
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
            ingress: Some(vec![
                NetworkPolicyIngressRule {
                    from: None,
                    ports: Some(ports.into_iter().map(tcp).collect()),
                },
                NetworkPolicyIngressRule {
                    from: Some(vec![controller]),
                    ports: Some(vec![tcp(admin.port)]),
                },
            ]),
            egress: None,
        }),
    }
}

/// Name of the egress NetworkPolicy of `ApprovedServer` `object`.
pub fn egress_name(object: &str) -> String {
    format!("{EGRESS_PREFIX}{object}")
}

/// The desired egress NetworkPolicy for the pods of `ApprovedServer` `object` in `namespace`:
/// the entry's rules, plus DNS (port 53, UDP and TCP, to anywhere) so names still resolve.
pub fn egress(
    namespace: &str,
    object: &str,
    rules: &[NetworkPolicyEgressRule],
    labels: &BTreeMap<String, String>,
) -> NetworkPolicy {
    let dns = NetworkPolicyEgressRule {
        to: None,
        ports: Some(
            ["UDP", "TCP"]
                .into_iter()
                .map(|protocol| NetworkPolicyPort {
                    port: Some(IntOrString::Int(53)),
                    protocol: Some(protocol.to_string()),
                    end_port: None,
                })
                .collect(),
        ),
    };
    NetworkPolicy {
        metadata: ObjectMeta {
            name: Some(egress_name(object)),
            namespace: Some(namespace.to_string()),
            labels: Some(labels.clone()),
            ..ObjectMeta::default()
        },
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some([(APPROVED_LABEL.to_string(), object.to_string())].into()),
                match_expressions: None,
            }),
            policy_types: Some(vec!["Egress".to_string()]),
            ingress: None,
            egress: Some(rules.iter().cloned().chain(std::iter::once(dns)).collect()),
        }),
    }
}

/// The NetworkPolicies the controller should hold, by (namespace, name): the strict-ingress one
/// in each namespace with injected pods (unless switched off), and each approved server's
/// egress one where its pods run.
fn desired_netpols(
    ctx: &Ctx,
    with_pods: &BTreeSet<String>,
) -> BTreeMap<(String, String), NetworkPolicy> {
    let args = &ctx.settings.args;
    let annotations: HashMap<String, BTreeMap<String, String>> = ctx
        .stores
        .namespaces
        .state()
        .iter()
        .map(|n| (n.name_any(), n.annotations().clone()))
        .collect();
    let labels: BTreeMap<String, String> = [(MANAGED_BY.to_string(), MANAGER.to_string())].into();
    let mut wanted = BTreeMap::new();
    for ns in with_pods {
        let ann = annotations.get(ns).cloned().unwrap_or_default();
        if !enabled_for(&ann, args.network_policy) {
            continue;
        }
        let mut exempt = args.network_policy_exempt_ports.clone();
        if let Some(extra) = ann.get(EXEMPT_ANNOTATION) {
            let (ports, bad) = parse_ports(extra);
            if !bad.is_empty() {
                tracing::warn!(
                    namespace = ns,
                    ?bad,
                    annotation = EXEMPT_ANNOTATION,
                    "invalid ports ignored"
                );
            }
            exempt.extend(ports);
        }
        let admin = AdminPeer {
            namespace: &ctx.settings.own_namespace,
            port: ctx.settings.admin_port,
        };
        let np = desired(ns, ctx.settings.sidecar_port, &exempt, admin, &labels);
        wanted.insert((ns.clone(), NAME.to_string()), np);
    }
    let Some(catalog) = ctx.approved.as_ref().and_then(ApprovedServers::catalog) else {
        return wanted;
    };
    let own = &ctx.settings.own_namespace;
    let pods = ctx.stores.pods.state();
    for entry in &catalog.entries {
        let Some(rules) = &entry.spec.egress else {
            continue;
        };
        let namespaces: BTreeSet<String> = pods
            .iter()
            .filter(|p| {
                p.metadata.deletion_timestamp.is_none()
                    && p.labels().get(APPROVED_LABEL) == Some(&entry.object)
            })
            .filter_map(|p| p.namespace())
            .filter(|ns| ns != own && !SYSTEM_NAMESPACES.contains(&ns.as_str()))
            .collect();
        for ns in namespaces {
            let np = egress(&ns, &entry.object, rules, &labels);
            wanted.insert((ns, egress_name(&entry.object)), np);
        }
    }
    wanted
}

/// Writes the desired NetworkPolicies that differ from what is there and removes the
/// controller's own that are no longer desired.
pub(super) async fn reconcile(ctx: &Ctx, with_pods: &BTreeSet<String>) -> Result<(), kube::Error> {
    let desired = desired_netpols(ctx, with_pods);
    let existing: HashMap<(String, String), Arc<NetworkPolicy>> = ctx
        .stores
        .netpols
        .state()
        .iter()
        .filter(|n| {
            let name = n.name_any();
            name == NAME || name.starts_with(EGRESS_PREFIX)
        })
        .map(|n| {
            (
                (n.namespace().unwrap_or_default(), n.name_any()),
                Arc::clone(n),
            )
        })
        .collect();
    let mut failure = None;
    for ((ns, name), np) in &desired {
        if let Some(cur) = existing.get(&(ns.clone(), name.clone()))
            && cur.spec == np.spec
        {
            continue;
        }
        let api: Api<NetworkPolicy> = Api::namespaced(ctx.client.clone(), ns);
        match api
            .patch(
                name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(np),
            )
            .await
        {
            Ok(_) => tracing::info!(namespace = ns, name, "network policy written"),
            Err(e) => {
                tracing::warn!(namespace = ns, name, error = %e, "network policy write failed");
                failure.get_or_insert(e);
            }
        }
    }
    for (ns, name) in existing.keys().filter(|k| !desired.contains_key(*k)) {
        let api: Api<NetworkPolicy> = Api::namespaced(ctx.client.clone(), ns);
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => tracing::info!(namespace = ns, name, "network policy removed"),
            Err(e) if has_status(&e, 404) => {}
            Err(e) => {
                failure.get_or_insert(e);
            }
        }
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_only_the_sidecar_and_exempt_ports_and_the_admin_port_from_the_controller() {
        let admin = AdminPeer {
            namespace: "mcp-guard",
            port: 15020,
        };
        let np = desired("apps", 15001, &[9090, 15001], admin, &BTreeMap::new());
        let spec = np.spec.unwrap_or_default();
        let ingress = spec.ingress.unwrap_or_default();
        let ports = |rule: &NetworkPolicyIngressRule| -> Vec<_> {
            rule.ports
                .clone()
                .unwrap_or_default()
                .into_iter()
                .map(|p| p.port)
                .collect()
        };
        assert_eq!(ingress.len(), 2);
        assert_eq!(
            ports(&ingress[0]),
            [Some(IntOrString::Int(9090)), Some(IntOrString::Int(15001))]
        );
        assert!(ingress[0].from.is_none(), "anyone may reach the MCP port");
        assert_eq!(ports(&ingress[1]), [Some(IntOrString::Int(15020))]);
        let from = serde_json::to_value(&ingress[1].from).unwrap();
        assert_eq!(
            from,
            serde_json::json!([{
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "mcp-guard"}},
                "podSelector": {"matchLabels": {
                    "app.kubernetes.io/component": "webhook",
                    "app.kubernetes.io/part-of": "mcp-guard"
                }}
            }]),
            "only the controller's pods, in its own namespace"
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

    #[test]
    fn egress_selects_the_entrys_pods_and_adds_dns() {
        let rule: NetworkPolicyEgressRule = serde_json::from_value(serde_json::json!({
            "to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}],
            "ports": [{"protocol": "TCP", "port": 5432}],
        }))
        .unwrap();
        let np = egress(
            "apps",
            "tickets",
            std::slice::from_ref(&rule),
            &BTreeMap::new(),
        );
        assert_eq!(
            np.metadata.name.as_deref(),
            Some("mcp-guard-egress-tickets")
        );
        let spec = np.spec.unwrap_or_default();
        assert_eq!(spec.policy_types, Some(vec!["Egress".to_string()]));
        assert_eq!(
            spec.pod_selector.unwrap_or_default().match_labels,
            Some([(APPROVED_LABEL.to_string(), "tickets".to_string())].into())
        );
        let rules = spec.egress.unwrap_or_default();
        assert_eq!(rules[0], rule);
        assert_eq!(rules.len(), 2, "the entry's rule and DNS");
    }
}
