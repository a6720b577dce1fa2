//! The policy-distribution controller (`serve --controller`): leader-elected through a Lease, it
//! keeps the cluster at one desired state, recomputed whole on every change it watches
//! (level-triggered, idempotent):
//!
//! - every ConfigMap labelled `mcp-guard.dev/policy` in mcp-guard's namespace (a *source*) is
//!   compiled with the sidecar's compiler; the last bundle that compiled is mirrored, under the
//!   source's name, into every namespace that runs injected pods or is annotated
//!   `mcp-guard.dev/inject: enabled`; a bundle that fails never replaces a mirror;
//! - mirrors carry [`MIRROR_LABEL`] (and `app.kubernetes.io/managed-by`); the controller only
//!   ever changes or deletes ConfigMaps carrying it, and deletes them when their source goes or
//!   their namespace no longer needs them; a deleted mirror comes back;
//! - the source gets one status annotation, `mcp-guard.dev/status`, written by the leader only,
//!   plus Events when its compile result or distributed hash changes;
//! - each namespace with injected pods gets the strict-ingress NetworkPolicy, and each approved
//!   server that declares `spec.egress` an egress NetworkPolicy where its pods run ([`netpol`]);
//! - each `ApprovedServer` gets the perimeter report on its `status`: the pods that run its
//!   images with and without the sidecar, with Events for newly ungoverned pods and for pods
//!   labelled as MCP servers that no entry approves ([`perimeter`]).

pub mod lease;
pub mod netpol;
pub mod perimeter;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use futures_util::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::core::PartialObjectMeta;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{Mutex, Notify};

use crate::annotations::{INJECT, STATUS};
use crate::cluster::ApprovedServers;
use crate::validate::{self, POLICY_LABEL};

/// Label on mirrors: the name of the source they copy. Marks the ConfigMap as the controller's.
pub const MIRROR_LABEL: &str = "mcp-guard.dev/mirror-of";
/// Annotation on mirrors: the bundle hash they hold.
pub const HASH_ANNOTATION: &str = "mcp-guard.dev/hash";
/// Annotation on mirrors: `namespace/name` of the source.
pub const SOURCE_ANNOTATION: &str = "mcp-guard.dev/source";
const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
const MANAGER: &str = "mcp-guard-controller";
/// Namespaces never distributed to.
const SYSTEM_NAMESPACES: [&str; 3] = ["kube-system", "kube-public", "kube-node-lease"];

/// Flags of the controller (part of `serve`).
#[derive(Debug, Clone, Args)]
pub struct ControllerArgs {
    /// Run the policy-distribution controller in this process (needs cluster access).
    #[arg(long = "controller", env = "MCP_GUARD_WEBHOOK_CONTROLLER")]
    pub enabled: bool,

    /// Name of the Lease (in mcp-guard's namespace) the replicas elect a leader through.
    #[arg(
        long,
        env = "MCP_GUARD_WEBHOOK_LEASE_NAME",
        default_value = "mcp-guard-controller"
    )]
    pub lease_name: String,

    /// How long a leader's lease lasts without renewal.
    #[arg(long, env = "MCP_GUARD_WEBHOOK_LEASE_DURATION", default_value = "15s", value_parser = mcp_guard_common::duration::parse_duration)]
    pub lease_duration: Duration,

    /// This replica's identity in the Lease (default: `$HOSTNAME`, i.e. the pod name).
    #[arg(long, env = "MCP_GUARD_WEBHOOK_IDENTITY")]
    pub identity: Option<String>,

    /// Full reconcile at least this often, even without a watch event.
    #[arg(long, env = "MCP_GUARD_WEBHOOK_RESYNC_INTERVAL", default_value = "60s", value_parser = mcp_guard_common::duration::parse_duration)]
    pub resync_interval: Duration,

    /// Keep the strict-ingress NetworkPolicy in namespaces with injected pods (`true`/`false`;
    /// a namespace opts out with `mcp-guard.dev/network-policy: disabled`).
    #[arg(long, env = "MCP_GUARD_WEBHOOK_NETWORK_POLICY", default_value_t = true, action = clap::ArgAction::Set)]
    pub network_policy: bool,

    /// Ports admitted to injected pods besides the sidecar's (comma-separated, e.g. `15020` for
    /// metrics scraping); a namespace adds more with `mcp-guard.dev/network-policy-exempt-ports`.
    #[arg(
        long,
        env = "MCP_GUARD_WEBHOOK_NETWORK_POLICY_EXEMPT_PORTS",
        value_delimiter = ','
    )]
    pub network_policy_exempt_ports: Vec<u16>,
}

/// What the controller needs from the injector's configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub own_namespace: String,
    pub sidecar_port: u16,
    pub args: ControllerArgs,
}

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

struct Stores {
    sources: Store<ConfigMap>,
    mirrors: Store<ConfigMap>,
    namespaces: Store<PartialObjectMeta<Namespace>>,
    /// Every pod, pruned to names, labels and images ([`perimeter::prune`]).
    pods: Store<Pod>,
    netpols: Store<NetworkPolicy>,
}

/// A bundle that compiled: its hash and the ConfigMap data it came from.
type GoodBundle = (String, BTreeMap<String, String>);

struct Ctx {
    client: kube::Client,
    settings: Settings,
    recorder: Recorder,
    stores: Stores,
    /// Per source: the last bundle that compiled (hash, data).
    last_good: Mutex<HashMap<String, GoodBundle>>,
    /// The approved-server catalog the webhook watches (`None`: no perimeter report).
    approved: Option<ApprovedServers>,
    /// The last perimeter report written, so that status and Events change only on a change.
    perimeter: Mutex<Option<perimeter::Report>>,
}

/// Starts a reflector whose every event pokes `notify`.
fn reflect<K>(
    api: Api<K>,
    config: watcher::Config,
    notify: Arc<Notify>,
    what: &'static str,
    prune: fn(&mut K),
) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
{
    let (store, writer) = reflector::store();
    let stream = watcher(api, config).default_backoff().modify(prune);
    tokio::spawn(async move {
        let mut s = std::pin::pin!(reflector::reflector(writer, stream));
        while let Some(ev) = s.next().await {
            match ev {
                Ok(_) => notify.notify_one(),
                Err(e) => tracing::warn!(watch = what, error = %e, "watch error; retrying"),
            }
        }
    });
    store
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// This replica's name in the Lease: `--identity`, else `$HOSTNAME` (the pod name), else one
/// made from the process id.
pub fn identity(args: &ControllerArgs) -> String {
    args.identity
        .clone()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| format!("mcp-guard-webhook-{}", std::process::id()))
}

/// On shutdown, after the controller task has stopped: hands the Lease back so another replica
/// leads at once instead of after `--lease-duration`.
pub async fn release(client: kube::Client, settings: &Settings) {
    let api: Api<Lease> = Api::namespaced(client, &settings.own_namespace);
    let id = identity(&settings.args);
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        lease::release(&api, &settings.args.lease_name, &id),
    )
    .await;
}

/// Runs the controller forever (spawned by `serve`).
pub async fn run(client: kube::Client, settings: Settings, approved: Option<ApprovedServers>) {
    let own = settings.own_namespace.clone();
    let identity = identity(&settings.args);
    let notify = Arc::new(Notify::new());
    let stores = Stores {
        sources: reflect(
            Api::namespaced(client.clone(), &own),
            watcher::Config::default().labels(POLICY_LABEL),
            Arc::clone(&notify),
            "sources",
            |_| {},
        ),
        mirrors: reflect(
            Api::all(client.clone()),
            watcher::Config::default().labels(MIRROR_LABEL),
            Arc::clone(&notify),
            "mirrors",
            |_| {},
        ),
        namespaces: reflect(
            Api::all(client.clone()),
            watcher::Config::default(),
            Arc::clone(&notify),
            "namespaces",
            |_| {},
        ),
        // Every pod, not only injected ones: the perimeter report looks for approved images
        // running without the sidecar. Pruned as they arrive, so the cache holds little.
        pods: reflect(
            Api::all(client.clone()),
            watcher::Config::default(),
            Arc::clone(&notify),
            "pods",
            perimeter::prune,
        ),
        netpols: reflect(
            Api::all(client.clone()),
            watcher::Config::default().labels(&format!("{MANAGED_BY}={MANAGER}")),
            Arc::clone(&notify),
            "networkpolicies",
            |_| {},
        ),
    };
    let leadership = lease::Leadership::default();
    let lease_api: Api<Lease> = Api::namespaced(client.clone(), &own);
    // Stops campaigning when `run` is dropped (aborted on shutdown), before the lease is released.
    let _campaign = AbortOnDrop(tokio::spawn(lease::campaign(
        lease_api,
        settings.args.lease_name.clone(),
        identity.clone(),
        settings.args.lease_duration,
        leadership.clone(),
        Arc::clone(&notify),
    )));
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: MANAGER.to_string(),
            instance: Some(identity.clone()),
        },
    );
    let resync = settings.args.resync_interval;
    let ctx = Ctx {
        client,
        settings,
        recorder,
        stores,
        last_good: Mutex::new(HashMap::new()),
        approved,
        perimeter: Mutex::new(None),
    };
    for (what, ready) in [
        (
            "sources",
            ctx.stores.sources.wait_until_ready().await.is_ok(),
        ),
        (
            "mirrors",
            ctx.stores.mirrors.wait_until_ready().await.is_ok(),
        ),
        (
            "namespaces",
            ctx.stores.namespaces.wait_until_ready().await.is_ok(),
        ),
        ("pods", ctx.stores.pods.wait_until_ready().await.is_ok()),
        (
            "networkpolicies",
            ctx.stores.netpols.wait_until_ready().await.is_ok(),
        ),
    ] {
        if !ready {
            tracing::error!(watch = what, "cache never synced; controller stopped");
            return;
        }
    }
    tracing::info!(identity, namespace = own, "controller caches synced");
    let mut failures: u32 = 0;
    loop {
        tokio::select! {
            () = notify.notified() => {}
            () = tokio::time::sleep(resync) => {}
        }
        // Coalesce a burst of events (a rollout creates many pods) into one pass.
        tokio::time::sleep(Duration::from_millis(50)).await;
        if !leadership.is_leader() {
            continue;
        }
        match reconcile(&ctx).await {
            Ok(()) => failures = 0,
            Err(e) => {
                // Retry soon, backing off to 5 s while the failure lasts (a pass writes all it
                // can before reporting a failure, so one bad namespace does not hold the others).
                failures = failures.saturating_add(1);
                let wait = Duration::from_millis(500)
                    .saturating_mul(1 << failures.min(6))
                    .min(Duration::from_secs(5));
                tracing::warn!(error = %e, retry_in = ?wait, "reconcile failed");
                tokio::time::sleep(wait).await;
                notify.notify_one();
            }
        }
    }
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
        .filter(|p| p.metadata.deletion_timestamp.is_none() && perimeter::governed(p))
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

/// Whether the API server answered with HTTP status `code`.
fn has_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

/// One pass over the whole desired state.
async fn reconcile(ctx: &Ctx) -> Result<(), kube::Error> {
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

    if let Err(e) = reconcile_netpols(ctx, &with_pods).await {
        failures.get_or_insert(e);
    }
    if let Err(e) = reconcile_perimeter(ctx).await {
        failures.get_or_insert(e);
    }
    match failures {
        Some(e) => Err(e),
        None => Ok(()),
    }
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

fn truncate(s: &str) -> String {
    if s.len() <= 1000 {
        return s.to_string();
    }
    let mut end = 1000;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
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
    let mut desired = BTreeMap::new();
    for ns in with_pods {
        let ann = annotations.get(ns).cloned().unwrap_or_default();
        if !netpol::enabled_for(&ann, args.network_policy) {
            continue;
        }
        let mut exempt = args.network_policy_exempt_ports.clone();
        if let Some(extra) = ann.get(netpol::EXEMPT_ANNOTATION) {
            let (ports, bad) = netpol::parse_ports(extra);
            if !bad.is_empty() {
                tracing::warn!(
                    namespace = ns,
                    ?bad,
                    annotation = netpol::EXEMPT_ANNOTATION,
                    "invalid ports ignored"
                );
            }
            exempt.extend(ports);
        }
        let np = netpol::desired(ns, ctx.settings.sidecar_port, &exempt, &labels);
        desired.insert((ns.clone(), netpol::NAME.to_string()), np);
    }
    let Some(catalog) = ctx.approved.as_ref().and_then(ApprovedServers::catalog) else {
        return desired;
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
                    && p.labels().get(netpol::APPROVED_LABEL) == Some(&entry.object)
            })
            .filter_map(|p| p.namespace())
            .filter(|ns| ns != own && !SYSTEM_NAMESPACES.contains(&ns.as_str()))
            .collect();
        for ns in namespaces {
            let np = netpol::egress(&ns, &entry.object, rules, &labels);
            desired.insert((ns, netpol::egress_name(&entry.object)), np);
        }
    }
    desired
}

/// Writes the desired NetworkPolicies that differ from what is there and removes the
/// controller's own that are no longer desired.
async fn reconcile_netpols(ctx: &Ctx, with_pods: &BTreeSet<String>) -> Result<(), kube::Error> {
    let desired = desired_netpols(ctx, with_pods);
    let existing: HashMap<(String, String), Arc<NetworkPolicy>> = ctx
        .stores
        .netpols
        .state()
        .iter()
        .filter(|n| {
            let name = n.name_any();
            name == netpol::NAME || name.starts_with(netpol::EGRESS_PREFIX)
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

/// Writes the perimeter report on each `ApprovedServer`'s status (when it changed) and raises
/// an Event for each pod newly found outside the perimeter.
async fn reconcile_perimeter(ctx: &Ctx) -> Result<(), kube::Error> {
    let Some(catalog) = ctx.approved.as_ref().and_then(ApprovedServers::catalog) else {
        return Ok(());
    };
    let own = &ctx.settings.own_namespace;
    let pods = ctx.stores.pods.state();
    let refs: Vec<&Pod> = pods.iter().map(AsRef::as_ref).collect();
    let report = perimeter::report(&catalog, &refs, |ns| {
        ns == own || SYSTEM_NAMESPACES.contains(&ns)
    });
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
        let reference = k8s_openapi::api::core::v1::ObjectReference {
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
        let reference = k8s_openapi::api::core::v1::ObjectReference {
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
