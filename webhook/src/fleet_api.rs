//! `GET /fleet`: the fleet's rows ([`crate::fleet`]) over HTTPS, for the CLI and the dashboard
//! ([`crate::dashboard`]). The caller is authenticated by the API server (TokenReview) and sees the pods of
//! the namespaces where RBAC lets it `list pods` (SubjectAccessReview, [`crate::access`]), so the
//! fleet shows nobody more than `kubectl get pods` would. The rows are observed at most once per
//! [`FRESH`] however many callers ask (one observation at a time), at most [`CONCURRENCY`]
//! sidecars at once, each within [`TIMEOUT`].

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use k8s_openapi::api::core::v1::Pod;
use tokio::sync::Mutex;

use crate::access::{Access, Caller, Refusal, Resource};
use crate::controller::FleetView;
use crate::fleet::{self, Filter, FleetList, Row};
use crate::registry_api::ApiError;

/// Rows younger than this are served again instead of asking every sidecar.
pub const FRESH: Duration = Duration::from_secs(5);
/// Sidecars asked at once.
pub const CONCURRENCY: usize = 16;
/// Deadline of each request to a sidecar.
pub const TIMEOUT: Duration = Duration::from_secs(2);

/// What `/fleet` reads.
pub struct FleetApi {
    /// The controller's caches; `None` without `--controller` (503).
    pub view: Option<FleetView>,
    pub access: Option<Arc<Access>>,
    /// The policy a pod without `mcp-guard.dev/policy` mounts.
    pub default_policy: String,
    last: Mutex<Option<(Instant, Vec<Row>)>>,
}

impl FleetApi {
    pub fn new(
        view: Option<FleetView>,
        access: Option<Arc<Access>>,
        default_policy: String,
    ) -> Self {
        Self {
            view,
            access,
            default_policy,
            last: Mutex::new(None),
        }
    }

    /// The rows, observed now unless a fresh observation exists; rates over the time since the
    /// observation before.
    pub async fn rows(&self, view: &FleetView) -> Vec<Row> {
        let mut last = self.last.lock().await;
        if let Some((at, rows)) = last.as_ref()
            && at.elapsed() < FRESH
        {
            return rows.clone();
        }
        let rows = fleet::observe(self.all_targets(view), CONCURRENCY, TIMEOUT).await;
        let rows = match last.as_ref() {
            Some((at, before)) => fleet::with_rates(before, rows, at.elapsed()),
            None => rows,
        };
        *last = Some((Instant::now(), rows.clone()));
        rows
    }
}

/// The `/fleet` route.
pub fn router(api: Arc<FleetApi>) -> Router {
    Router::new()
        .route("/fleet", get(get_fleet))
        .with_state(api)
}

async fn get_fleet(
    State(api): State<Arc<FleetApi>>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    match fleet_for(&api, &headers, &params).await {
        Ok(list) => Json(list).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn fleet_for(
    api: &FleetApi,
    headers: &HeaderMap,
    params: &HashMap<String, String>,
) -> Result<FleetList, ApiError> {
    let (view, access) = api.parts()?;
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let caller = access.authenticate(authorization).await?;
    let filter = Filter {
        namespace: params.get("namespace").filter(|s| !s.is_empty()).cloned(),
        server: params.get("server").filter(|s| !s.is_empty()).cloned(),
    };
    let rows = api.rows(view).await;
    Ok(FleetList {
        items: api.visible(&caller, rows, |r| filter.keeps(r)).await?,
    })
}

/// Whether RBAC lets `caller` list the pods of `namespace`: who sees a pod's row.
pub async fn may_list_pods(
    access: &Access,
    caller: &Caller,
    namespace: &str,
) -> Result<bool, Refusal> {
    let what = Resource {
        group: "",
        resource: "pods",
        verb: "list",
        namespace: Some(namespace.to_string()),
        name: None,
    };
    access.allowed(caller, &what).await
}

impl FleetApi {
    /// The controller's view and the API server's reviews, or 503 without them.
    pub fn parts(&self) -> Result<(&FleetView, &Arc<Access>), ApiError> {
        match (&self.view, &self.access) {
            (Some(view), Some(access)) => Ok((view, access)),
            _ => Err(ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                "the fleet view needs the controller (serve --controller) and cluster access"
                    .into(),
            )),
        }
    }

    /// The rows `keep` accepts of the namespaces where `caller` may list pods.
    pub async fn visible(
        &self,
        caller: &Caller,
        rows: Vec<Row>,
        keep: impl Fn(&Row) -> bool,
    ) -> Result<Vec<Row>, ApiError> {
        let (_, access) = self.parts()?;
        let namespaces: BTreeSet<&str> = rows
            .iter()
            .filter(|r| keep(r))
            .map(|r| r.namespace.as_str())
            .collect();
        let mut allowed = BTreeSet::new();
        for ns in namespaces {
            if may_list_pods(access, caller, ns).await? {
                allowed.insert(ns.to_string());
            }
        }
        Ok(rows
            .into_iter()
            .filter(|r| keep(r) && allowed.contains(&r.namespace))
            .collect())
    }

    /// Every injected pod's row to observe, and where its sidecar answers.
    fn all_targets(&self, view: &FleetView) -> Vec<fleet::Target> {
        let pods = view.injected_pods();
        let refs: Vec<&Pod> = pods.iter().map(AsRef::as_ref).collect();
        fleet::targets(&refs, &view.distributed(), &self.default_policy)
    }

    /// Where the sidecars of `rows` answer: their targets, as the last observation found them.
    pub fn targets_of(&self, view: &FleetView, rows: &[Row]) -> Vec<fleet::Target> {
        let wanted: BTreeSet<(&str, &str)> = rows
            .iter()
            .map(|r| (r.namespace.as_str(), r.pod.as_str()))
            .collect();
        self.all_targets(view)
            .into_iter()
            .filter(|t| wanted.contains(&(t.row.namespace.as_str(), t.row.pod.as_str())))
            .collect()
    }
}
