//! Writes the perimeter report ([`super::perimeter`]) where operators read it: each
//! `ApprovedServer`'s status, and Events for pods newly found outside the perimeter.

use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::Store;

use super::context::{Ctx, MANAGER, SYSTEM_NAMESPACES, has_status, truncate};
use super::perimeter;
use crate::cluster::ApprovedServers;
use crate::registry::Catalog;

/// The perimeter report over the cached `pods`, leaving out mcp-guard's own namespace (`own`)
/// and the system namespaces.
pub(super) fn over(pods: &Store<Pod>, own: &str, catalog: &Catalog) -> perimeter::Report {
    let pods = pods.state();
    let refs: Vec<&Pod> = pods.iter().map(AsRef::as_ref).collect();
    perimeter::report(catalog, &refs, |ns| {
        ns == own || SYSTEM_NAMESPACES.contains(&ns)
    })
}

/// Writes the perimeter report on each `ApprovedServer`'s status (when it changed) and raises
/// an Event for each pod newly found outside the perimeter.
pub(super) async fn reconcile(ctx: &Ctx) -> Result<(), kube::Error> {
    let Some(catalog) = ctx.approved.as_ref().and_then(ApprovedServers::catalog) else {
        return Ok(());
    };
    let report = over(&ctx.stores.pods, &ctx.settings.own_namespace, &catalog);
    let mut last = ctx.perimeter.lock().await;
    let before = last.clone().unwrap_or_default();
    let api = crate::cluster::approved_servers_api(ctx.client.clone());
    let params = PatchParams {
        field_manager: Some(MANAGER.to_string()),
        ..PatchParams::default()
    };
    let mut failure = None;
    for (object, status) in &report.entries {
        if last.is_some() && before.entries.get(object) == Some(status) {
            continue;
        }
        let patch = serde_json::json!({ "status": status });
        match api
            .patch_status(object, &params, &Patch::Merge(&patch))
            .await
        {
            Ok(_) => tracing::info!(
                approved_server = object,
                governed = status.governed_pods,
                ungoverned = status.ungoverned_pods,
                "perimeter status written"
            ),
            Err(e) if has_status(&e, 404) => {}
            Err(e) => {
                failure.get_or_insert(e);
            }
        }
    }
    let empty = Vec::new();
    for (object, pods) in &report.ungoverned {
        let seen = before.ungoverned.get(object).unwrap_or(&empty);
        let reference = ObjectReference {
            api_version: Some(format!(
                "{}/{}",
                crate::registry::GROUP,
                crate::registry::VERSION
            )),
            kind: Some(crate::registry::KIND.to_string()),
            name: Some(object.clone()),
            // Events about a cluster-scoped object live in `default`; API servers before 1.22
            // refuse an events.k8s.io/v1 Event whose object has no namespace, so it is named.
            namespace: Some("default".to_string()),
            ..Default::default()
        };
        for pod in perimeter::new_pods(seen, pods) {
            let ev = Event {
                type_: EventType::Warning,
                reason: "UngovernedPod".into(),
                note: Some(truncate(&format!(
                    "pod {}/{} runs {} approved by this entry without the mcp-guard sidecar \
                     (opt it in with mcp-guard.dev/inject: enabled, see docs/registry.md)",
                    pod.namespace,
                    pod.name,
                    pod.images.join(", ")
                ))),
                action: "Report".into(),
                secondary: None,
            };
            if let Err(e) = ctx.recorder.publish(&ev, &reference).await {
                tracing::debug!(error = %e, "event not recorded");
            }
        }
    }
    for pod in perimeter::new_pods(&before.unlisted, &report.unlisted) {
        let reference = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            namespace: Some(pod.namespace.clone()),
            name: Some(pod.name.clone()),
            ..Default::default()
        };
        let ev = Event {
            type_: EventType::Warning,
            reason: "UngovernedMcpServer".into(),
            note: Some(truncate(&format!(
                "labelled {}=true, runs {} without the mcp-guard sidecar and approved by no \
                 ApprovedServer (see docs/registry.md)",
                crate::registry::SERVER_LABEL,
                pod.images.join(", ")
            ))),
            action: "Report".into(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&ev, &reference).await {
            tracing::debug!(error = %e, "event not recorded");
        }
    }
    *last = Some(report);
    match failure {
        // Written again on the next pass.
        Some(e) => {
            *last = None;
            Err(e)
        }
        None => Ok(()),
    }
}
