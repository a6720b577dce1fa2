//! What the webhook reads from the cluster: the API server's version (native sidecars need
//! 1.29) once at startup, namespace annotations and labels from a metadata-only reflector cache,
//! so a review never waits on a GET (a cache miss, e.g. a namespace created a moment ago, falls
//! back to one GET), and the catalog of approved servers from a reflector over `ApprovedServer`
//! objects, so an approval counts for the next pod without a restart.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("kubernetes client configuration: {0}")]
    Config(#[from] kube::config::InferConfigError),
    #[error("kubernetes client: {0}")]
    Client(#[from] kube::Error),
    #[error("cannot read the API server version {0:?}")]
    Version(String),
}

/// Builds a client from the environment (in-cluster, or `KUBECONFIG`).
pub async fn client() -> Result<kube::Client, ClusterError> {
    let config = kube::Config::infer().await?;
    Ok(kube::Client::try_from(config)?)
}

/// `(major, minor)` of the API server.
pub async fn server_version(client: &kube::Client) -> Result<(u32, u32), ClusterError> {
    let info = client.apiserver_version().await?;
    parse_version(&info.major, &info.minor)
        .ok_or_else(|| ClusterError::Version(format!("{}.{}", info.major, info.minor)))
}

/// Parses `major` and `minor` as the API server reports them (`"1"`, `"29+"`).
pub fn parse_version(major: &str, minor: &str) -> Option<(u32, u32)> {
    let digits = |s: &str| -> Option<u32> {
        let d: String = s.chars().take_while(char::is_ascii_digit).collect();
        d.parse().ok()
    };
    Some((digits(major)?, digits(minor)?))
}

/// Native sidecars (`restartPolicy: Always` on init containers) are on by default from 1.29.
pub fn supports_native_sidecars(version: (u32, u32)) -> bool {
    version >= (1, 29)
}

/// Runs a reflector from `api` into `writer`'s store on the current runtime, retrying with
/// backoff on errors (logged as `error`); the flag turns true once the first list has arrived
/// (logged as `what` synced).
fn reflect<K>(
    api: Api<K>,
    writer: reflector::store::Writer<K>,
    what: &'static str,
    error: &'static str,
) -> Arc<AtomicBool>
where
    K: kube::Resource
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Send + Sync,
{
    let synced = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&synced);
    let ready = writer.as_reader();
    tokio::spawn(async move {
        if ready.wait_until_ready().await.is_ok() {
            flag.store(true, Ordering::Release);
            tracing::info!("{what} synced");
        }
    });
    let stream = watcher(api, watcher::Config::default()).default_backoff();
    tokio::spawn(async move {
        let mut s = std::pin::pin!(reflector::reflector(writer, stream));
        while let Some(ev) = s.next().await {
            if let Err(e) = ev {
                tracing::warn!(error = %e, "{error}; retrying");
            }
        }
    });
    synced
}

/// Namespace annotations, from a reflector cache.
#[derive(Clone)]
pub struct Namespaces {
    store: Store<PartialObjectMeta<Namespace>>,
    api: Api<PartialObjectMeta<Namespace>>,
    synced: Arc<AtomicBool>,
}

impl Namespaces {
    /// Starts the reflector on the current runtime.
    pub fn start(client: kube::Client) -> Self {
        let (store, writer) = reflector::store();
        // `Api<PartialObjectMeta<_>>` lists and watches metadata only: no specs in memory.
        let api: Api<PartialObjectMeta<Namespace>> = Api::all(client);
        let synced = reflect(
            api.clone(),
            writer,
            "namespace cache",
            "namespace watch error",
        );
        Self { store, api, synced }
    }

    /// Whether the first list has arrived.
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// The namespace's annotations; empty when the namespace cannot be found.
    pub async fn annotations(&self, name: &str) -> BTreeMap<String, String> {
        self.meta(name).await.0
    }

    /// The namespace's annotations and labels; empty when the namespace cannot be found.
    pub async fn meta(&self, name: &str) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
        let pick = |m: &kube::api::ObjectMeta| {
            (
                m.annotations.clone().unwrap_or_default(),
                m.labels.clone().unwrap_or_default(),
            )
        };
        if let Some(ns) = self.store.get(&ObjectRef::new(name)) {
            return pick(&ns.metadata);
        }
        match self.api.get_opt(name).await {
            Ok(Some(ns)) => pick(&ns.metadata),
            Ok(None) => Default::default(),
            Err(e) => {
                tracing::warn!(namespace = name, error = %e, "namespace lookup failed");
                Default::default()
            }
        }
    }
}

fn approved_servers_resource() -> ApiResource {
    let gvk = GroupVersionKind::gvk(
        crate::registry::GROUP,
        crate::registry::VERSION,
        crate::registry::KIND,
    );
    ApiResource::from_gvk_with_plural(&gvk, crate::registry::PLURAL)
}

/// The API of `ApprovedServer` objects (cluster-scoped).
pub fn approved_servers_api(client: kube::Client) -> Api<DynamicObject> {
    Api::all_with(client, &approved_servers_resource())
}

/// The `ApprovedServer` objects, from a reflector cache.
#[derive(Clone)]
pub struct ApprovedServers {
    store: Store<DynamicObject>,
    synced: Arc<AtomicBool>,
}

impl ApprovedServers {
    /// Starts the reflector on the current runtime. Without the CRD (a cluster where the chart's
    /// CRD is not installed) the watch keeps retrying and the catalog stays unknown.
    pub fn start(client: kube::Client) -> Self {
        let resource = approved_servers_resource();
        let api: Api<DynamicObject> = Api::all_with(client, &resource);
        let writer = reflector::store::Writer::new(resource);
        let store = writer.as_reader();
        let synced = reflect(
            api,
            writer,
            "approved-server catalog",
            "ApprovedServer watch error (is the CRD installed?)",
        );
        Self { store, synced }
    }

    /// The catalog, or `None` until the first list has arrived. An entry the webhook cannot read
    /// is left out (and logged): it approves nothing.
    pub fn catalog(&self) -> Option<crate::registry::Catalog> {
        if !self.synced.load(Ordering::Acquire) {
            return None;
        }
        let mut entries = Vec::new();
        for obj in self.store.state() {
            let value = match serde_json::to_value(obj.as_ref()) {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(error = %e, "ApprovedServer not serializable");
                    continue;
                }
            };
            match crate::registry::Catalog::entry(&value) {
                Ok(entry) => entries.push(entry),
                Err(e) => tracing::warn!(error = %e, "ApprovedServer ignored"),
            }
        }
        Some(crate::registry::Catalog { entries })
    }

    /// Each entry's object name and `status` (the perimeter report the controller writes on
    /// it; `Null` before the first), by object name; `None` until the first list has arrived.
    pub fn statuses(&self) -> Option<std::collections::BTreeMap<String, serde_json::Value>> {
        if !self.synced.load(Ordering::Acquire) {
            return None;
        }
        Some(
            self.store
                .state()
                .iter()
                .filter_map(|o| {
                    let status = o.data.get("status").cloned().unwrap_or_default();
                    Some((o.metadata.name.clone()?, status))
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(parse_version("1", "29+"), Some((1, 29)));
        assert_eq!(parse_version("1", "x"), None);
        assert!(supports_native_sidecars((1, 29)));
        assert!(!supports_native_sidecars((1, 28)));
        assert!(supports_native_sidecars((2, 0)));
    }
}
