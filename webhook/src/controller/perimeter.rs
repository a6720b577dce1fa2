//! The perimeter report: which pods run an approved server outside mcp-guard. For every
//! `ApprovedServer`, the pods running one of its images for its namespaces, split into governed
//! (injected) and ungoverned ones (an opt-out, a namespace never opted in, a pod created before
//! the webhook); and the pods labelled `mcp-guard.dev/server: "true"` that run without the
//! sidecar and match no entry at all. The controller writes the first on each entry's `status`
//! and raises an Event for every pod that newly appears in either.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, PodStatus};
use kube::ResourceExt;
use serde::{Deserialize, Serialize};

use crate::annotations::LABEL_INJECTED;
use crate::registry::{Catalog, SERVER_LABEL};

/// Ungoverned pods listed per entry; the count covers all of them.
pub const LISTED: usize = 20;

/// A pod the report names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    /// The pod's images that the entry approves (or, for an unlisted server, all its images).
    pub images: Vec<String>,
}

/// `status` of an `ApprovedServer`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EntryStatus {
    /// Pods running the entry's images with the sidecar.
    pub governed_pods: usize,
    /// Pods running the entry's images without it.
    pub ungoverned_pods: usize,
    /// The first [`LISTED`] of them, by namespace and name.
    pub ungoverned: Vec<PodRef>,
}

/// What the report finds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// By `ApprovedServer` object name; every entry of the catalog has one.
    pub entries: BTreeMap<String, EntryStatus>,
    /// Every ungoverned pod per entry (the status lists only the first [`LISTED`]).
    pub ungoverned: BTreeMap<String, Vec<PodRef>>,
    /// Pods labelled as MCP servers, without the sidecar, that no entry approves.
    pub unlisted: Vec<PodRef>,
}

/// Keeps of a pod only what the report, the controller and the fleet view read (name,
/// namespace, labels, owner, deletion, images and ports, IP, mcp-guard's status and policy
/// annotations): the controller's pod cache holds every pod of the cluster.
pub fn prune(pod: &mut Pod) {
    let keep_annotations = [crate::annotations::STATUS, crate::annotations::POLICY];
    pod.metadata.annotations = pod.metadata.annotations.take().map(|mut a| {
        a.retain(|k, _| keep_annotations.contains(&k.as_str()));
        a
    });
    pod.metadata.managed_fields = None;
    pod.metadata.finalizers = None;
    pod.status = pod.status.take().map(|s| PodStatus {
        pod_ip: s.pod_ip,
        ..PodStatus::default()
    });
    let keep = |cs: &Vec<Container>| -> Vec<Container> {
        cs.iter()
            .map(|c| Container {
                name: c.name.clone(),
                image: c.image.clone(),
                ports: c.ports.clone(),
                ..Container::default()
            })
            .collect()
    };
    pod.spec = pod.spec.as_ref().map(|s| PodSpec {
        containers: keep(&s.containers),
        init_containers: s.init_containers.as_ref().map(keep),
        ..PodSpec::default()
    });
}

/// Whether a change to this pod starts a controller pass at once: an injected pod (policy and
/// NetworkPolicies depend on where they run) or a pod labelled as an MCP server. Any other pod
/// waits for the next pass, so the churn of unrelated pods costs the controller nothing.
pub fn wakes(pod: &Pod) -> bool {
    governed(pod) || pod.labels().get(SERVER_LABEL).map(String::as_str) == Some("true")
}

/// Whether the webhook injected the pod.
pub fn governed(pod: &Pod) -> bool {
    pod.labels().get(LABEL_INJECTED).map(String::as_str) == Some("true")
}

/// The pod's containers and init containers.
pub fn containers(pod: &Pod) -> impl Iterator<Item = &Container> {
    let spec = pod.spec.as_ref();
    let init = spec.and_then(|s| s.init_containers.as_ref());
    spec.map(|s| s.containers.iter())
        .into_iter()
        .flatten()
        .chain(init.into_iter().flatten())
}

fn images(pod: &Pod) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for i in containers(pod).filter_map(|c| c.image.as_ref()) {
        if !out.contains(i) {
            out.push(i.clone());
        }
    }
    out
}

/// The report over `pods` (those in namespaces `skip` names are left out).
pub fn report(catalog: &Catalog, pods: &[&Pod], skip: impl Fn(&str) -> bool) -> Report {
    let mut r = Report {
        entries: catalog
            .entries
            .iter()
            .map(|e| (e.object.clone(), EntryStatus::default()))
            .collect(),
        ..Report::default()
    };
    for pod in pods {
        let namespace = pod.namespace().unwrap_or_default();
        if pod.metadata.deletion_timestamp.is_some() || skip(&namespace) {
            continue;
        }
        let images = images(pod);
        let mut by_entry: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for image in &images {
            for e in catalog.approving(image, &namespace) {
                by_entry
                    .entry(e.object.as_str())
                    .or_default()
                    .push(image.clone());
            }
        }
        let is_governed = governed(pod);
        for (object, images) in &by_entry {
            let Some(status) = r.entries.get_mut(*object) else {
                continue;
            };
            if is_governed {
                status.governed_pods += 1;
            } else {
                status.ungoverned_pods += 1;
                r.ungoverned
                    .entry(object.to_string())
                    .or_default()
                    .push(PodRef {
                        namespace: namespace.clone(),
                        name: pod.name_any(),
                        images: images.clone(),
                    });
            }
        }
        let labelled = pod.labels().get(SERVER_LABEL).map(String::as_str) == Some("true");
        if labelled && !is_governed && by_entry.is_empty() {
            r.unlisted.push(PodRef {
                namespace: namespace.clone(),
                name: pod.name_any(),
                images,
            });
        }
    }
    for (object, pods) in &mut r.ungoverned {
        pods.sort();
        if let Some(status) = r.entries.get_mut(object) {
            status.ungoverned = pods.iter().take(LISTED).cloned().collect();
        }
    }
    r.unlisted.sort();
    r
}

/// The pods of `now` that `before` did not have (by namespace and name).
pub fn new_pods<'a>(before: &[PodRef], now: &'a [PodRef]) -> Vec<&'a PodRef> {
    let known: BTreeSet<(&str, &str)> = before
        .iter()
        .map(|p| (p.namespace.as_str(), p.name.as_str()))
        .collect();
    now.iter()
        .filter(|p| !known.contains(&(p.namespace.as_str(), p.name.as_str())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{ApprovedServerSpec, Entry, ImageRule};
    use serde_json::json;

    fn pod(ns: &str, name: &str, image: &str, labels: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns, "labels": labels,
                "annotations": {"big": "x".repeat(1000)}},
            "spec": {"containers": [{"name": "c", "image": image, "args": ["--a"]}]},
        }))
        .unwrap()
    }

    fn catalog() -> Catalog {
        Catalog {
            entries: vec![Entry {
                object: "tickets".into(),
                spec: ApprovedServerSpec {
                    name: "io.example/tickets".into(),
                    images: vec![ImageRule {
                        repository: "example.com/tickets".into(),
                        ..ImageRule::default()
                    }],
                    namespaces: vec!["apps".into()],
                    ..ApprovedServerSpec::default()
                },
                ..Entry::default()
            }],
        }
    }

    #[test]
    fn governed_ungoverned_and_unlisted_pods_are_told_apart() {
        let pods = [
            pod(
                "apps",
                "governed",
                "example.com/tickets:1",
                json!({LABEL_INJECTED: "true"}),
            ),
            pod("apps", "rogue", "example.com/tickets:1", json!({})),
            pod("other", "elsewhere", "example.com/tickets:1", json!({})),
            pod(
                "apps",
                "stray",
                "example.com/stray:1",
                json!({SERVER_LABEL: "true"}),
            ),
            pod("apps", "plain", "example.com/web:1", json!({})),
            pod(
                "kube-system",
                "sys",
                "example.com/stray:1",
                json!({SERVER_LABEL: "true"}),
            ),
        ];
        let refs: Vec<&Pod> = pods.iter().collect();
        let r = report(&catalog(), &refs, |ns| ns == "kube-system");
        let t = &r.entries["tickets"];
        assert_eq!((t.governed_pods, t.ungoverned_pods), (1, 1));
        assert_eq!(
            t.ungoverned,
            [PodRef {
                namespace: "apps".into(),
                name: "rogue".into(),
                images: vec!["example.com/tickets:1".into()],
            }]
        );
        let unlisted: Vec<_> = r.unlisted.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(unlisted, ["stray"]);
        assert_eq!(new_pods(&[], &t.ungoverned).len(), 1);
        assert!(new_pods(&t.ungoverned, &t.ungoverned).is_empty());
    }

    #[test]
    fn pruning_keeps_what_the_report_reads() {
        let mut p = pod("apps", "rogue", "example.com/tickets:1", json!({"a": "b"}));
        prune(&mut p);
        assert!(p.metadata.annotations.as_ref().is_none_or(|a| a.is_empty()));
        let c = &p.spec.as_ref().unwrap().containers[0];
        assert_eq!(c.image.as_deref(), Some("example.com/tickets:1"));
        assert!(c.args.is_none());
        assert_eq!(p.labels().get("a").map(String::as_str), Some("b"));
    }
}
