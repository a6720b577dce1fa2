//! Policy distribution: each source's last good bundle mirrored into the namespaces that need
//! it, mirrors kept exact (and restored when deleted), and the source's status annotation and
//! Events.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use serde::Serialize;

use super::context::{Ctx, MANAGED_BY, MANAGER, SYSTEM_NAMESPACES, has_status, truncate};
use crate::annotations::{INJECT, STATUS};
use crate::validate;

/// Label on mirrors: the name of the source they copy. Marks the ConfigMap as the controller's.
pub const MIRROR_LABEL: &str = "mcp-guard.dev/mirror-of";
/// Annotation on mirrors: the bundle hash they hold.
pub const HASH_ANNOTATION: &str = "mcp-guard.dev/hash";
/// Annotation on mirrors: `namespace/name` of the source.
pub const SOURCE_ANNOTATION: &str = "mcp-guard.dev/source";

/// The status annotation on a source (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceStatus {
    /// Hash of the source as it is now, when it compiles.
    pub hash: Option<String>,
    /// Hash of the bundle the mirrors hold (the last one that compiled).
    pub distributed_hash: Option<String>,
    /// The compiler's message when the source does not compile.
    pub error: Option<String>,
    /// Namespaces whose mirror holds `distributedHash`.
    pub namespaces: Vec<String>,
    /// Namespaces where a ConfigMap of the same name exists and is not the controller's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conflicts: Vec<String>,
}

/// Namespaces that need the policy: those with injected pods, and those annotated for injection.
/// Returns (all that need policy, those with injected pods).
fn target_namespaces(ctx: &Ctx) -> (BTreeSet<String>, BTreeSet<String>) {
    let own = &ctx.settings.own_namespace;
    let live: BTreeMap<String, BTreeMap<String, String>> = ctx
        .stores
        .namespaces
        .state()
        .iter()
        .filter(|n| n.metadata.deletion_timestamp.is_none())
        .map(|n| (n.name_any(), n.annotations().clone()))
        .collect();
    let usable = |ns: &str| ns != own && !SYSTEM_NAMESPACES.contains(&ns) && live.contains_key(ns);
    let with_pods: BTreeSet<String> = ctx
        .stores
        .pods
        .state()
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none() && super::perimeter::governed(p))
        .filter_map(|p| p.namespace())
        .filter(|ns| usable(ns))
        .collect();
    let mut all = with_pods.clone();
    all.extend(
        live.iter()
            .filter(|(_, a)| a.get(INJECT).map(|v| v.trim()) == Some("enabled"))
            .map(|(n, _)| n.clone())
            .filter(|n| usable(n)),
    );
    (all, with_pods)
}

fn mirror_of(
    source: &ConfigMap,
    namespace: &str,
    hash: &str,
    data: &BTreeMap<String, String>,
) -> ConfigMap {
    let name = source.name_any();
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(namespace.to_string()),
            labels: Some(
                [
                    (MIRROR_LABEL.to_string(), name.clone()),
                    (MANAGED_BY.to_string(), MANAGER.to_string()),
                ]
                .into(),
            ),
            annotations: Some(
                [
                    (HASH_ANNOTATION.to_string(), hash.to_string()),
                    (
                        SOURCE_ANNOTATION.to_string(),
                        format!("{}/{name}", source.namespace().unwrap_or_default()),
                    ),
                ]
                .into(),
            ),
            ..ObjectMeta::default()
        },
        data: Some(data.clone()),
        ..ConfigMap::default()
    }
}

fn post_params() -> PostParams {
    PostParams {
        field_manager: Some(MANAGER.to_string()),
        ..PostParams::default()
    }
}

/// Brings a mirror to `desired` with one merge patch (only the `patch` verb): its data becomes
/// exactly the desired data (keys the source dropped are removed), its labels and annotations
/// ours. The resourceVersion it was read at is a precondition: a concurrent change makes this
/// pass fail and retry.
async fn replace_mirror(
    api: &Api<ConfigMap>,
    current: &ConfigMap,
    desired: &ConfigMap,
) -> Result<(), kube::Error> {
    let patch = mirror_patch(current, desired);
    let params = PatchParams {
        field_manager: Some(MANAGER.to_string()),
        ..PatchParams::default()
    };
    api.patch(&current.name_any(), &params, &Patch::Merge(&patch))
        .await
        .map(|_| ())
}

/// The merge patch of [`replace_mirror`].
fn mirror_patch(current: &ConfigMap, desired: &ConfigMap) -> serde_json::Value {
    use serde_json::{Map, Value};
    let mut data = Map::new();
    for k in current.data.iter().flat_map(|d| d.keys()) {
        data.insert(k.clone(), Value::Null);
    }
    for (k, v) in desired.data.iter().flatten() {
        data.insert(k.clone(), Value::String(v.clone()));
    }
    let mut binary = Map::new();
    for k in current.binary_data.iter().flat_map(|d| d.keys()) {
        binary.insert(k.clone(), Value::Null);
    }
    let strings = |m: &Option<BTreeMap<String, String>>| -> Map<String, Value> {
        m.iter()
            .flatten()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect()
    };
    serde_json::json!({
        "metadata": {
            "resourceVersion": current.metadata.resource_version,
            "labels": strings(&desired.metadata.labels),
            "annotations": strings(&desired.metadata.annotations),
        },
        "data": data,
        "binaryData": binary,
    })
}

/// One pass over the policy: mirrors written, dropped and restored, each source's status. Returns
/// the first failure (after writing all it can) and the namespaces with injected pods.
pub(super) async fn reconcile(ctx: &Ctx) -> (Option<kube::Error>, BTreeSet<String>) {
    let (targets, with_pods) = target_namespaces(ctx);
    let sources = ctx.stores.sources.state();
    let mirrors = ctx.stores.mirrors.state();
    // (namespace, name) -> mirror
    let mirror_index: HashMap<(String, String), Arc<ConfigMap>> = mirrors
        .iter()
        .map(|m| {
            (
                (m.namespace().unwrap_or_default(), m.name_any()),
                Arc::clone(m),
            )
        })
        .collect();
    let mut failures: Option<kube::Error> = None;
    let mut wanted: BTreeSet<(String, String)> = BTreeSet::new();

    for source in sources
        .iter()
        .filter(|s| s.metadata.deletion_timestamp.is_none())
    {
        let name = source.name_any();
        let data = source.data.clone().unwrap_or_default();
        let compiled = validate::compile(&data);
        let good = {
            let mut last_good = ctx.last_good.lock().await;
            match &compiled {
                Ok(hash) => {
                    last_good.insert(name.clone(), (hash.clone(), data.clone()));
                }
                Err(_) if !last_good.contains_key(&name) => {
                    // After a restart: the mirrors hold the last good bundle.
                    if let Some(m) = mirrors.iter().find(|m| {
                        m.labels().get(MIRROR_LABEL) == Some(&name)
                            && m.annotations().contains_key(HASH_ANNOTATION)
                    }) {
                        let hash = m
                            .annotations()
                            .get(HASH_ANNOTATION)
                            .cloned()
                            .unwrap_or_default();
                        last_good.insert(name.clone(), (hash, m.data.clone().unwrap_or_default()));
                    }
                }
                Err(_) => {}
            }
            last_good.get(&name).cloned()
        };
        let mut reached = Vec::new();
        let mut conflicts = Vec::new();
        if let Some((hash, good_data)) = &good {
            for ns in &targets {
                wanted.insert((ns.clone(), name.clone()));
                let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
                let desired = mirror_of(source, ns, hash, good_data);
                let result = match mirror_index.get(&(ns.clone(), name.clone())) {
                    Some(m)
                        if m.annotations().get(HASH_ANNOTATION) == Some(hash)
                            && m.data.as_ref() == Some(good_data) =>
                    {
                        reached.push(ns.clone());
                        continue;
                    }
                    Some(current) => replace_mirror(&api, current, &desired).await,
                    None => match api.create(&post_params(), &desired).await {
                        Ok(_) => Ok(()),
                        Err(e) if has_status(&e, 409) => match api.get_opt(&name).await {
                            Ok(Some(existing))
                                if existing.labels().get(MIRROR_LABEL) == Some(&name) =>
                            {
                                replace_mirror(&api, &existing, &desired).await
                            }
                            Ok(Some(_)) => {
                                conflicts.push(ns.clone());
                                continue;
                            }
                            Ok(None) => Err(e),
                            Err(e) => Err(e),
                        },
                        Err(e) => Err(e),
                    },
                };
                match result {
                    Ok(()) => {
                        tracing::info!(namespace = ns, policy = name, %hash, "mirror written");
                        reached.push(ns.clone());
                    }
                    Err(e) => {
                        tracing::warn!(namespace = ns, policy = name, error = %e, "mirror write failed");
                        failures.get_or_insert(e);
                    }
                }
            }
        }
        let status = SourceStatus {
            hash: compiled.as_ref().ok().cloned(),
            distributed_hash: good.as_ref().map(|(h, _)| h.clone()),
            error: compiled.as_ref().err().cloned(),
            namespaces: reached,
            conflicts,
        };
        if let Err(e) = write_status(ctx, source, &status).await {
            failures.get_or_insert(e);
        }
    }

    // Mirrors nobody wants any more: the source is gone or the namespace no longer needs it.
    for m in mirrors.iter() {
        let key = (m.namespace().unwrap_or_default(), m.name_any());
        let owned = m.labels().get(MIRROR_LABEL) == Some(&key.1);
        if !owned || wanted.contains(&key) || m.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let source_exists = sources.iter().any(|s| s.name_any() == key.1);
        let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &key.0);
        match api.delete(&key.1, &DeleteParams::default()).await {
            Ok(_) => tracing::info!(
                namespace = key.0,
                policy = key.1,
                source_exists,
                "mirror removed"
            ),
            Err(e) if has_status(&e, 404) => {}
            Err(e) => {
                failures.get_or_insert(e);
            }
        }
    }
    if !sources
        .iter()
        .any(|s| s.metadata.deletion_timestamp.is_none())
    {
        ctx.last_good.lock().await.clear();
    } else {
        let names: BTreeSet<String> = sources.iter().map(|s| s.name_any()).collect();
        ctx.last_good.lock().await.retain(|k, _| names.contains(k));
    }

    (failures, with_pods)
}

async fn write_status(
    ctx: &Ctx,
    source: &ConfigMap,
    status: &SourceStatus,
) -> Result<(), kube::Error> {
    let previous: Option<SourceStatus> = source
        .annotations()
        .get(STATUS)
        .and_then(|s| serde_json::from_str(s).ok());
    if previous.as_ref() == Some(status) {
        return Ok(());
    }
    let name = source.name_any();
    let text = serde_json::to_string(status).unwrap_or_default();
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ctx.settings.own_namespace);
    let patch = serde_json::json!({"metadata": {"annotations": {STATUS: text}}});
    let params = PatchParams {
        field_manager: Some(MANAGER.to_string()),
        ..PatchParams::default()
    };
    api.patch(&name, &params, &Patch::Merge(&patch)).await?;
    tracing::info!(policy = name, status = text, "source status written");

    let prev_error = previous.as_ref().and_then(|p| p.error.clone());
    let prev_dist = previous.as_ref().and_then(|p| p.distributed_hash.clone());
    let prev_reached = previous.as_ref().map(|p| p.namespaces.len());
    let mut events = Vec::new();
    if status.error.is_some() && status.error != prev_error {
        events.push(Event {
            type_: EventType::Warning,
            reason: "CompileFailed".into(),
            note: status.error.as_ref().map(|e| {
                truncate(&format!(
                    "not distributed, mirrors keep {}: {e}",
                    status.distributed_hash.as_deref().unwrap_or("nothing")
                ))
            }),
            action: "Compile".into(),
            secondary: None,
        });
    }
    if status.distributed_hash.is_some()
        && (status.distributed_hash != prev_dist || Some(status.namespaces.len()) != prev_reached)
    {
        events.push(Event {
            type_: EventType::Normal,
            reason: "Distributed".into(),
            note: Some(truncate(&format!(
                "{} in {} namespace(s): {}",
                status.distributed_hash.as_deref().unwrap_or(""),
                status.namespaces.len(),
                status.namespaces.join(", ")
            ))),
            action: "Mirror".into(),
            secondary: None,
        });
    }
    if !status.conflicts.is_empty()
        && previous.as_ref().map(|p| &p.conflicts) != Some(&status.conflicts)
    {
        events.push(Event {
            type_: EventType::Warning,
            reason: "MirrorConflict".into(),
            note: Some(truncate(&format!(
                "a ConfigMap named {name} not managed by mcp-guard exists in: {}",
                status.conflicts.join(", ")
            ))),
            action: "Mirror".into(),
            secondary: None,
        });
    }
    let reference = source.object_ref(&());
    for ev in events {
        if let Err(e) = ctx.recorder.publish(&ev, &reference).await {
            tracing::debug!(error = %e, reason = ev.reason, "event not recorded");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_json_is_the_documented_shape() {
        let st = SourceStatus {
            hash: None,
            distributed_hash: Some("sha256:ab".into()),
            error: Some("authz.rego:5:1".into()),
            namespaces: vec!["apps".into()],
            conflicts: vec![],
        };
        let v = serde_json::to_value(&st).unwrap_or_default();
        assert_eq!(
            v,
            serde_json::json!({"hash": null, "distributedHash": "sha256:ab",
                "error": "authz.rego:5:1", "namespaces": ["apps"]})
        );
    }

    #[test]
    fn mirror_patch_removes_dropped_keys_and_pins_the_version() {
        let mut current = ConfigMap {
            data: Some(
                [
                    ("authz.rego".to_string(), "old".to_string()),
                    ("data.json".to_string(), "{}".to_string()),
                ]
                .into(),
            ),
            ..ConfigMap::default()
        };
        current.metadata.name = Some("p".into());
        current.metadata.resource_version = Some("42".into());
        let mut source = ConfigMap::default();
        source.metadata.name = Some("p".into());
        source.metadata.namespace = Some("mcp-guard".into());
        let desired = mirror_of(
            &source,
            "apps",
            "sha256:1",
            &[("authz.rego".to_string(), "new".to_string())].into(),
        );
        let p = mirror_patch(&current, &desired);
        assert_eq!(p["metadata"]["resourceVersion"], "42");
        assert_eq!(p["data"]["authz.rego"], "new");
        assert!(p["data"]["data.json"].is_null());
        assert!(
            p["data"]
                .as_object()
                .is_some_and(|d| d.contains_key("data.json"))
        );
        assert_eq!(p["metadata"]["labels"][MIRROR_LABEL], "p");
        assert_eq!(p["metadata"]["annotations"][HASH_ANNOTATION], "sha256:1");
        assert_eq!(
            p["metadata"]["annotations"][SOURCE_ANNOTATION],
            "mcp-guard/p"
        );
    }
}
