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
//!   labelled as MCP servers that no entry approves ([`perimeter`], written by `report`).
//!
//! This module runs the loop (caches, leadership, one pass per change); each part of a pass is
//! its own module — `mirror` (policy), [`netpol`], `report` — over the shared `context`.

mod context;
pub mod lease;
mod mirror;
pub mod netpol;
pub mod perimeter;
mod report;

pub use mirror::{HASH_ANNOTATION, MIRROR_LABEL, SOURCE_ANNOTATION, SourceStatus};

use std::collections::HashMap;
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use futures_util::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Resource;
use kube::api::Api;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde::de::DeserializeOwned;
use tokio::sync::{Mutex, Notify};

use crate::cluster::ApprovedServers;
use crate::validate::POLICY_LABEL;

use context::{Ctx, MANAGED_BY, MANAGER, Stores};

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
    /// The sidecars' admin port, which the fleet view reads and the strict-ingress
    /// NetworkPolicy admits from the controller.
    pub admin_port: u16,
    pub args: ControllerArgs,
}

/// Starts a reflector (objects pruned by `prune`) whose events about objects `wakes` accepts,
/// and the end of each (re)list, poke `notify`.
fn reflect<K>(
    api: Api<K>,
    config: watcher::Config,
    notify: Arc<Notify>,
    what: &'static str,
    prune: fn(&mut K),
    wakes: fn(&K) -> bool,
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
                Ok(watcher::Event::Apply(k) | watcher::Event::Delete(k)) if wakes(&k) => {
                    notify.notify_one()
                }
                Ok(watcher::Event::InitDone) => notify.notify_one(),
                Ok(_) => {}
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

/// What the fleet view reads from the controller's caches: the injected pods, and the hash
/// each mirror holds. Every replica has them (the caches do not wait for leadership).
#[derive(Clone)]
pub struct FleetView {
    pods: Store<k8s_openapi::api::core::v1::Pod>,
    mirrors: Store<k8s_openapi::api::core::v1::ConfigMap>,
    /// mcp-guard's own namespace (left out of the perimeter report).
    own_namespace: String,
}

impl FleetView {
    /// The injected pods that are not being deleted.
    pub fn injected_pods(&self) -> Vec<Arc<k8s_openapi::api::core::v1::Pod>> {
        self.pods
            .state()
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none() && perimeter::governed(p))
            .collect()
    }

    /// A pod of the cache (pruned as [`perimeter::prune`] says), by namespace and name.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<Arc<k8s_openapi::api::core::v1::Pod>> {
        self.pods
            .get(&reflector::ObjectRef::new(name).within(namespace))
    }

    /// The perimeter report over the cached pods: the one the controller writes on each
    /// `ApprovedServer`'s status, plus the labelled MCP servers no entry approves.
    pub fn perimeter(&self, catalog: &crate::registry::Catalog) -> perimeter::Report {
        report::over(&self.pods, &self.own_namespace, catalog)
    }

    /// (namespace, policy name) → the bundle hash its mirror holds.
    pub fn distributed(&self) -> HashMap<(String, String), String> {
        use kube::ResourceExt;
        self.mirrors
            .state()
            .iter()
            .filter_map(|m| {
                let hash = m.annotations().get(HASH_ANNOTATION)?.clone();
                Some(((m.namespace()?, m.name_any()), hash))
            })
            .collect()
    }
}

/// Starts the controller's caches on the current runtime and returns the fleet's view of them
/// with the controller itself, to be spawned (by `serve`).
pub fn start(
    client: kube::Client,
    settings: Settings,
    approved: Option<ApprovedServers>,
) -> (FleetView, impl std::future::Future<Output = ()> + Send) {
    let notify = Arc::new(Notify::new());
    let stores = stores(&client, &settings.own_namespace, &notify);
    let view = FleetView {
        pods: stores.pods.clone(),
        mirrors: stores.mirrors.clone(),
        own_namespace: settings.own_namespace.clone(),
    };
    (view, run(client, settings, approved, notify, stores))
}

/// The controller's reflector caches, each event poking `notify`.
fn stores(client: &kube::Client, own: &str, notify: &Arc<Notify>) -> Stores {
    Stores {
        sources: reflect(
            Api::namespaced(client.clone(), own),
            watcher::Config::default().labels(POLICY_LABEL),
            Arc::clone(notify),
            "sources",
            |_| {},
            |_| true,
        ),
        mirrors: reflect(
            Api::all(client.clone()),
            watcher::Config::default().labels(MIRROR_LABEL),
            Arc::clone(notify),
            "mirrors",
            |_| {},
            |_| true,
        ),
        namespaces: reflect(
            Api::all(client.clone()),
            watcher::Config::default(),
            Arc::clone(notify),
            "namespaces",
            |_| {},
            |_| true,
        ),
        // Every pod, not only injected ones: the perimeter report looks for approved images
        // running without the sidecar. Pruned as they arrive, so the cache holds little; only
        // pods of mcp-guard's (injected, or labelled MCP servers) start a pass at once, the
        // others are reported at the next pass (at most --resync-interval later).
        pods: reflect(
            Api::all(client.clone()),
            watcher::Config::default(),
            Arc::clone(notify),
            "pods",
            perimeter::prune,
            perimeter::wakes,
        ),
        netpols: reflect(
            Api::all(client.clone()),
            watcher::Config::default().labels(&format!("{MANAGED_BY}={MANAGER}")),
            Arc::clone(notify),
            "networkpolicies",
            |_| {},
            |_| true,
        ),
    }
}

/// Runs the controller forever.
async fn run(
    client: kube::Client,
    settings: Settings,
    approved: Option<ApprovedServers>,
    notify: Arc<Notify>,
    stores: Stores,
) {
    let own = settings.own_namespace.clone();
    let identity = identity(&settings.args);
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

/// One pass over the whole desired state: policy, NetworkPolicies, the perimeter report. Each
/// part writes all it can; the first failure is returned.
async fn reconcile(ctx: &Ctx) -> Result<(), kube::Error> {
    let (mut failure, with_pods) = mirror::reconcile(ctx).await;
    if let Err(e) = netpol::reconcile(ctx, &with_pods).await {
        failure.get_or_insert(e);
    }
    if let Err(e) = report::reconcile(ctx).await {
        failure.get_or_insert(e);
    }
    failure.map_or(Ok(()), Err)
}
