//! `GET /fleet`: the fleet's rows ([`crate::fleet`]) over HTTPS, for the CLI and (later) the
//! dashboard. The caller is authenticated by the API server (TokenReview) and sees the pods of
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

use crate::access::{Access, Resource};
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

    /// The rows, observed now unless a fresh observation exists.
    pub async fn rows(&self, view: &FleetView) -> Vec<Row> {
        let mut last = self.last.lock().await;
        if let Some((at, rows)) = last.as_ref()
            && at.elapsed() < FRESH
        {
            return rows.clone();
        }
        let pods = view.injected_pods();
        let refs: Vec<&Pod> = pods.iter().map(AsRef::as_ref).collect();
        let targets = fleet::targets(&refs, &view.distributed(), &self.default_policy);
        let rows = fleet::observe(targets, CONCURRENCY, TIMEOUT).await;
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
    let (Some(view), Some(access)) = (&api.view, &api.access) else {
        return Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "the fleet view needs the controller (serve --controller) and cluster access".into(),
        ));
    };
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let caller = access.authenticate(authorization).await?;
    let filter = Filter {
        namespace: params.get("namespace").filter(|s| !s.is_empty()).cloned(),
        server: params.get("server").filter(|s| !s.is_empty()).cloned(),
    };
    let rows = api.rows(view).await;
    let namespaces: BTreeSet<&str> = rows
        .iter()
        .filter(|r| filter.keeps(r))
        .map(|r| r.namespace.as_str())
        .collect();
    let mut allowed = BTreeSet::new();
    for ns in namespaces {
        let what = Resource {
            group: "",
            resource: "pods",
            verb: "list",
            namespace: Some(ns.to_string()),
            name: None,
        };
        if access.allowed(&caller, &what).await? {
            allowed.insert(ns.to_string());
        }
    }
    Ok(FleetList {
        items: rows
            .into_iter()
            .filter(|r| filter.keeps(r) && allowed.contains(&r.namespace))
            .collect(),
    })
}
