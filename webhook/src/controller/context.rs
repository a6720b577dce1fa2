//! What the controller's parts share: the caches, the client and the settings of one
//! controller ([`Ctx`]), and small helpers.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::core::PartialObjectMeta;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::Store;
use tokio::sync::Mutex;

use super::Settings;
use super::perimeter::Report;
use crate::cluster::ApprovedServers;

pub(super) const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub(super) const MANAGER: &str = "mcp-guard-controller";
/// Namespaces never distributed to.
pub(super) const SYSTEM_NAMESPACES: [&str; 3] = ["kube-system", "kube-public", "kube-node-lease"];

/// The controller's reflector caches.
pub(super) struct Stores {
    pub(super) sources: Store<ConfigMap>,
    pub(super) mirrors: Store<ConfigMap>,
    pub(super) namespaces: Store<PartialObjectMeta<Namespace>>,
    /// Every pod, pruned to names, labels and images ([`super::perimeter::prune`]).
    pub(super) pods: Store<Pod>,
    pub(super) netpols: Store<NetworkPolicy>,
}

/// A bundle that compiled: its hash and the ConfigMap data it came from.
pub(super) type GoodBundle = (String, BTreeMap<String, String>);

/// One controller: its client, settings, Event recorder, caches and memory between passes.
pub(super) struct Ctx {
    pub(super) client: kube::Client,
    pub(super) settings: Settings,
    pub(super) recorder: Recorder,
    pub(super) stores: Stores,
    /// Per source: the last bundle that compiled (hash, data).
    pub(super) last_good: Mutex<HashMap<String, GoodBundle>>,
    /// The approved-server catalog the webhook watches (`None`: no perimeter report).
    pub(super) approved: Option<ApprovedServers>,
    /// The last perimeter report written, so that status and Events change only on a change.
    pub(super) perimeter: Mutex<Option<Report>>,
}

/// Whether the API server answered with HTTP status `code`.
pub(super) fn has_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

/// At most 1000 bytes of `s` (an Event's note), cut at a character boundary.
pub(super) fn truncate(s: &str) -> String {
    if s.len() <= 1000 {
        return s.to_string();
    }
    let mut end = 1000;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}
