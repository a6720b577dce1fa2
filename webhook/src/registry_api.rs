//! The MCP registry API over the approved-server catalog, for developer tools: an IDE's "MCP
//! gallery" URL (it appends `v0.1/servers`) pointed at the webhook's Service lists what the
//! platform team approved, as the MCP registry's OpenAPI description (2025-12-01) gives it:
//!
//! - `GET /v0.1/servers` with `cursor`, `limit` (default 30, at most 100), `search` (substring of
//!   the name), `updated_since` (RFC 3339) and `version` (`latest` or one version);
//! - `GET /v0.1/servers/{name}/versions`, newest first;
//! - `GET /v0.1/servers/{name}/versions/{version}` (`latest` for the latest).
//!
//! Each `ApprovedServer` object is one version of one server (`spec.name`, `spec.version`). Read
//! access is Kubernetes RBAC ([`crate::access`]): a caller sees an entry it may `get`
//! (`approvedservers`, group `mcp-guard.dev`), so a Role with `resourceNames` hands out single
//! servers. An entry the caller may not see answers 404, exactly as one that does not exist.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

use crate::access::{Access, Caller, Refusal, Resource};
use crate::cluster::ApprovedServers;
use crate::registry::{Catalog, Entry, GROUP, PLURAL};

/// What the registry API reads: the catalog and the API server's reviews; both `None` without
/// cluster access (`--no-kube`), when every request answers 503.
#[derive(Clone)]
pub struct Registry {
    pub approved: Option<ApprovedServers>,
    pub access: Option<Arc<Access>>,
}

/// The registry API's routes.
pub fn router(registry: Registry) -> Router {
    Router::new()
        .route("/v0.1/servers", get(get_servers))
        .route("/v0.1/servers/{name}/versions", get(get_versions))
        .route("/v0.1/servers/{name}/versions/{version}", get(get_version))
        .with_state(Arc::new(registry))
}

/// The `server.json` schema the answers follow.
pub const SCHEMA: &str =
    "https://static.modelcontextprotocol.io/schemas/2025-12-11/server.schema.json";
/// The registry-managed part of an answer's `_meta`.
pub const OFFICIAL: &str = "io.modelcontextprotocol.registry/official";
/// mcp-guard's part of an answer's `_meta`: the approval behind the entry.
pub const APPROVAL: &str = "dev.mcp-guard/approval";
const DEFAULT_LIMIT: usize = 30;
const MAX_LIMIT: usize = 100;

/// A client error, answered as the registry does: `{"error": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError(pub StatusCode, pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.0, Json(json!({ "error": self.1 }))).into_response();
        if self.0 == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::Unauthenticated(m) => ApiError(StatusCode::UNAUTHORIZED, m),
            Refusal::Unavailable(m) => ApiError(StatusCode::SERVICE_UNAVAILABLE, m),
        }
    }
}

/// Orders two versions: semantic versions by precedence, then as text.
fn compare_versions(a: &str, b: &str) -> Ordering {
    match (semver::Version::parse(a), semver::Version::parse(b)) {
        (Ok(x), Ok(y)) => x.cmp_precedence(&y).then_with(|| a.cmp(b)),
        (Ok(_), Err(_)) => Ordering::Greater,
        (Err(_), Ok(_)) => Ordering::Less,
        (Err(_), Err(_)) => a.cmp(b),
    }
}

/// The entry of `catalog` that is the latest version of each server name: the highest version,
/// the newer object on a tie.
fn latest_objects(catalog: &Catalog) -> HashMap<&str, &str> {
    let mut latest: HashMap<&str, &Entry> = HashMap::new();
    for e in &catalog.entries {
        let slot = latest.entry(e.spec.name.as_str()).or_insert(e);
        let newer = compare_versions(e.spec.version(), slot.spec.version())
            .then_with(|| e.created.cmp(&slot.created))
            == Ordering::Greater;
        if newer {
            *slot = e;
        }
    }
    latest
        .into_iter()
        .map(|(name, e)| (name, e.object.as_str()))
        .collect()
}

/// One entry as the registry API answers it (`ServerResponse`).
pub fn server_response(entry: &Entry, is_latest: bool) -> Value {
    let spec = &entry.spec;
    let description = spec
        .description
        .clone()
        .or_else(|| spec.title.clone())
        .unwrap_or_else(|| spec.name.clone());
    let mut server = json!({
        "$schema": SCHEMA,
        "name": spec.name,
        "description": description,
        "version": spec.version(),
    });
    if let Some(title) = &spec.title {
        server["title"] = json!(title);
    }
    if let Some(url) = &spec.website_url {
        server["websiteUrl"] = json!(url);
    }
    if !spec.remotes.is_empty() {
        server["remotes"] = json!(spec.remotes);
    }
    let mut official = json!({ "status": "active", "isLatest": is_latest });
    if let Some(t) = &entry.created {
        official["publishedAt"] = json!(t);
    }
    if let Some(t) = entry.updated.as_ref().or(entry.created.as_ref()) {
        official["updatedAt"] = json!(t);
    }
    let images: Vec<String> = spec
        .images
        .iter()
        .map(|i| {
            let mut s = i.repository.clone();
            if let Some(t) = &i.tag {
                s = format!("{s}:{t}");
            }
            if let Some(d) = &i.digest {
                s = format!("{s}@{d}");
            }
            s
        })
        .collect();
    let mut approval = json!({
        "approvedServer": entry.object,
        "images": images,
        "namespaces": spec.namespaces,
    });
    if let Some(owner) = &spec.owner {
        approval["owner"] = json!(owner);
    }
    if let Some(rc) = &spec.runtime_class_name {
        approval["runtimeClassName"] = json!(rc);
    }
    json!({
        "server": server,
        "_meta": { OFFICIAL: official, APPROVAL: approval },
    })
}

/// The query of `GET /v0.1/servers`, checked.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ListQuery {
    pub cursor: Option<(String, String)>,
    pub limit: usize,
    pub search: Option<String>,
    pub updated_since: Option<Timestamp>,
    pub version: Option<String>,
}

impl ListQuery {
    /// Reads the query parameters; the error names the one that is wrong.
    pub fn parse(params: &HashMap<String, String>) -> Result<ListQuery, ApiError> {
        let bad = |m: String| ApiError(StatusCode::BAD_REQUEST, m);
        let limit = match params.get("limit") {
            None => DEFAULT_LIMIT,
            Some(l) => match l.parse::<usize>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
                _ => return Err(bad(format!("limit {l:?}: a number from 1 to {MAX_LIMIT}"))),
            },
        };
        let cursor = match params.get("cursor").filter(|c| !c.is_empty()) {
            None => None,
            Some(c) => match c.split_once(':') {
                Some((name, object)) => Some((name.to_string(), object.to_string())),
                None => {
                    return Err(bad(format!(
                        "cursor {c:?}: not a cursor this registry returned"
                    )));
                }
            },
        };
        let updated_since = match params.get("updated_since") {
            None => None,
            Some(t) => Some(
                t.parse::<Timestamp>()
                    .map_err(|e| bad(format!("updated_since {t:?}: not an RFC 3339 time ({e})")))?,
            ),
        };
        Ok(ListQuery {
            cursor,
            limit,
            search: params.get("search").filter(|s| !s.is_empty()).cloned(),
            updated_since,
            version: params.get("version").filter(|s| !s.is_empty()).cloned(),
        })
    }
}

/// Whether `entry` passes the query's filters (not the cursor).
fn wanted(q: &ListQuery, entry: &Entry, is_latest: bool) -> bool {
    if let Some(s) = &q.search
        && !entry.spec.name.to_lowercase().contains(&s.to_lowercase())
    {
        return false;
    }
    if let Some(since) = &q.updated_since {
        let updated = entry
            .updated
            .as_deref()
            .and_then(|t| t.parse::<Timestamp>().ok());
        if updated.is_none_or(|u| u < *since) {
            return false;
        }
    }
    match q.version.as_deref() {
        Some("latest") => is_latest,
        Some(v) => entry.spec.version() == v,
        None => true,
    }
}

/// One page of `GET /v0.1/servers` over the entries `visible` lets through, ordered by server
/// name then object name; the cursor is the last item's `name:object`.
pub async fn list<F, Fut>(
    catalog: &Catalog,
    q: &ListQuery,
    mut visible: F,
) -> Result<Value, ApiError>
where
    F: FnMut(&Entry) -> Fut,
    Fut: Future<Output = Result<bool, ApiError>>,
{
    let latest = latest_objects(catalog);
    let mut entries: Vec<&Entry> = catalog.entries.iter().collect();
    entries.sort_by(|a, b| (&a.spec.name, &a.object).cmp(&(&b.spec.name, &b.object)));
    let mut page = Vec::new();
    let mut next = None;
    for e in entries {
        if let Some((name, object)) = &q.cursor
            && (&e.spec.name, &e.object) <= (name, object)
        {
            continue;
        }
        let is_latest = latest.get(e.spec.name.as_str()) == Some(&e.object.as_str());
        if !wanted(q, e, is_latest) || !visible(e).await? {
            continue;
        }
        if page.len() == q.limit {
            next = page
                .last()
                .map(|(e, _): &(&Entry, bool)| format!("{}:{}", e.spec.name, e.object));
            break;
        }
        page.push((e, is_latest));
    }
    let servers: Vec<Value> = page
        .iter()
        .map(|(e, latest)| server_response(e, *latest))
        .collect();
    let mut metadata = json!({ "count": servers.len() });
    if let Some(c) = next {
        metadata["nextCursor"] = json!(c);
    }
    Ok(json!({ "servers": servers, "metadata": metadata }))
}

/// The versions of server `name` that `visible` lets through, newest first; 404 when none.
pub async fn versions<F, Fut>(
    catalog: &Catalog,
    name: &str,
    mut visible: F,
) -> Result<Vec<(Entry, bool)>, ApiError>
where
    F: FnMut(&Entry) -> Fut,
    Fut: Future<Output = Result<bool, ApiError>>,
{
    let latest = latest_objects(catalog);
    let mut found = Vec::new();
    for e in catalog.entries.iter().filter(|e| e.spec.name == name) {
        if visible(e).await? {
            let is_latest = latest.get(name) == Some(&e.object.as_str());
            found.push((e.clone(), is_latest));
        }
    }
    if found.is_empty() {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("Server not found: {name:?}"),
        ));
    }
    found.sort_by(|(a, _), (b, _)| {
        compare_versions(b.spec.version(), a.spec.version()).then_with(|| b.created.cmp(&a.created))
    });
    Ok(found)
}

/// The catalog and the caller, or why not.
async fn prepare(
    st: &Registry,
    headers: &HeaderMap,
) -> Result<(Catalog, Caller, Arc<Access>), ApiError> {
    let (Some(approved), Some(access)) = (&st.approved, &st.access) else {
        return Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "the registry API needs cluster access (the webhook runs with --no-kube)".into(),
        ));
    };
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let caller = access.authenticate(authorization).await?;
    let catalog = approved.catalog().ok_or_else(|| {
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "the catalog of approved servers is not loaded yet (is the ApprovedServer CRD installed?)"
                .into(),
        )
    })?;
    Ok((catalog, caller, Arc::clone(access)))
}

/// RBAC: may `caller` get `object` (or, with `None`, every approved server)?
pub(crate) async fn may_get(
    access: &Access,
    caller: &Caller,
    object: Option<&str>,
) -> Result<bool, ApiError> {
    let what = Resource {
        group: GROUP,
        resource: PLURAL,
        verb: "get",
        namespace: None,
        name: object.map(str::to_string),
    };
    Ok(access.allowed(caller, &what).await?)
}

/// A per-entry visibility check that asks once whether the caller may get them all.
struct Visibility<'a> {
    access: &'a Access,
    caller: &'a Caller,
    all: bool,
}

impl<'a> Visibility<'a> {
    async fn new(access: &'a Access, caller: &'a Caller) -> Result<Visibility<'a>, ApiError> {
        let all = may_get(access, caller, None).await?;
        Ok(Visibility {
            access,
            caller,
            all,
        })
    }

    async fn check(&self, object: String) -> Result<bool, ApiError> {
        if self.all {
            return Ok(true);
        }
        may_get(self.access, self.caller, Some(&object)).await
    }
}

fn logged(result: Result<Value, ApiError>, what: &str) -> Response {
    match result {
        Ok(v) => Json(v).into_response(),
        Err(e) => {
            tracing::debug!(request = what, status = e.0.as_u16(), error = %e.1, "registry API refused");
            e.into_response()
        }
    }
}

/// `GET /v0.1/servers`.
pub async fn get_servers(
    State(st): State<Arc<Registry>>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let result = async {
        let q = ListQuery::parse(&params)?;
        let (catalog, caller, access) = prepare(&st, &headers).await?;
        let vis = Visibility::new(&access, &caller).await?;
        list(&catalog, &q, |e| vis.check(e.object.clone())).await
    }
    .await;
    logged(result, "list")
}

/// `GET /v0.1/servers/{name}/versions`.
pub async fn get_versions(
    State(st): State<Arc<Registry>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    let result = async {
        let (catalog, caller, access) = prepare(&st, &headers).await?;
        let vis = Visibility::new(&access, &caller).await?;
        let found = versions(&catalog, &name, |e| vis.check(e.object.clone())).await?;
        let servers: Vec<Value> = found
            .iter()
            .map(|(e, latest)| server_response(e, *latest))
            .collect();
        Ok(json!({ "servers": servers, "metadata": { "count": servers.len() } }))
    }
    .await;
    logged(result, "versions")
}

/// `GET /v0.1/servers/{name}/versions/{version}` (`latest` for the latest).
pub async fn get_version(
    State(st): State<Arc<Registry>>,
    headers: HeaderMap,
    Path((name, version)): Path<(String, String)>,
) -> Response {
    let result = async {
        let (catalog, caller, access) = prepare(&st, &headers).await?;
        let vis = Visibility::new(&access, &caller).await?;
        let found = versions(&catalog, &name, |e| vis.check(e.object.clone())).await?;
        let hit = if version == "latest" {
            found.iter().find(|(_, latest)| *latest).or(found.first())
        } else {
            found.iter().find(|(e, _)| e.spec.version() == version)
        };
        match hit {
            Some((e, latest)) => Ok(server_response(e, *latest)),
            None => Err(ApiError(
                StatusCode::NOT_FOUND,
                format!("Server version not found: {name:?} {version:?}"),
            )),
        }
    }
    .await;
    logged(result, "version")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{ApprovedServerSpec, ImageRule, Remote};

    fn entry(object: &str, name: &str, version: &str, created: &str) -> Entry {
        Entry {
            object: object.into(),
            spec: ApprovedServerSpec {
                name: name.into(),
                version: Some(version.into()),
                images: vec![ImageRule {
                    repository: "example.com/x".into(),
                    tag: Some("1.*".into()),
                    ..ImageRule::default()
                }],
                remotes: vec![Remote {
                    transport: "streamable-http".into(),
                    url: "http://x.apps.svc:8080/mcp".into(),
                }],
                ..ApprovedServerSpec::default()
            },
            created: Some(created.into()),
            updated: Some(created.into()),
        }
    }

    fn catalog() -> Catalog {
        Catalog {
            entries: vec![
                entry(
                    "tickets-2",
                    "io.example/tickets",
                    "2.0.0",
                    "2026-12-02T00:00:00Z",
                ),
                entry(
                    "tickets-1",
                    "io.example/tickets",
                    "1.10.0",
                    "2026-12-01T00:00:00Z",
                ),
                entry(
                    "search",
                    "io.example/search",
                    "0.3.0",
                    "2026-11-01T00:00:00Z",
                ),
                entry("wiki", "io.example/wiki", "1.0.0", "2026-10-01T00:00:00Z"),
            ],
        }
    }

    fn all(_: &Entry) -> std::future::Ready<Result<bool, ApiError>> {
        std::future::ready(Ok(true))
    }

    fn q(pairs: &[(&str, &str)]) -> Result<ListQuery, ApiError> {
        ListQuery::parse(
            &pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[tokio::test]
    async fn pages_follow_the_cursor_to_the_end_without_repeats() {
        let c = catalog();
        let mut seen = Vec::new();
        let mut cursor = String::new();
        loop {
            let page = list(&c, &q(&[("limit", "3"), ("cursor", &cursor)]).unwrap(), all)
                .await
                .unwrap();
            for s in page["servers"].as_array().unwrap() {
                seen.push(
                    s["_meta"][APPROVAL]["approvedServer"]
                        .as_str()
                        .unwrap()
                        .to_string(),
                );
            }
            match page["metadata"]["nextCursor"].as_str() {
                Some(next) => cursor = next.to_string(),
                None => break,
            }
        }
        assert_eq!(seen, ["search", "tickets-1", "tickets-2", "wiki"]);
    }

    #[tokio::test]
    async fn latest_is_the_highest_version_and_filters_apply() {
        let c = catalog();
        let page = list(
            &c,
            &q(&[("version", "latest"), ("search", "TICK")]).unwrap(),
            all,
        )
        .await
        .unwrap();
        let servers = page["servers"].as_array().unwrap();
        assert_eq!(servers.len(), 1);
        assert_eq!(servers[0]["server"]["version"], "2.0.0");
        assert_eq!(servers[0]["_meta"][OFFICIAL]["isLatest"], true);
        let recent = list(
            &c,
            &q(&[("updated_since", "2026-11-15T00:00:00Z")]).unwrap(),
            all,
        )
        .await
        .unwrap();
        assert_eq!(recent["metadata"]["count"], 2);
        let found = versions(&c, "io.example/tickets", all).await.unwrap();
        let order: Vec<_> = found.iter().map(|(e, _)| e.spec.version()).collect();
        assert_eq!(order, ["2.0.0", "1.10.0"]);
        let hidden = versions(&c, "io.example/tickets", |_| std::future::ready(Ok(false))).await;
        assert_eq!(hidden.unwrap_err().0, StatusCode::NOT_FOUND);
    }

    #[test]
    fn bad_parameters_are_named() {
        for (k, v) in [
            ("limit", "0"),
            ("limit", "101"),
            ("limit", "x"),
            ("cursor", "nocolon"),
            ("updated_since", "yesterday"),
        ] {
            let e = q(&[(k, v)]).unwrap_err();
            assert_eq!(e.0, StatusCode::BAD_REQUEST);
            assert!(e.1.contains(k) && e.1.contains(v), "{e:?}");
        }
    }

    #[test]
    fn a_response_has_what_the_schema_requires() {
        let v = server_response(
            &entry("a", "io.example/a", "1.0.0", "2026-12-01T00:00:00Z"),
            true,
        );
        let s = &v["server"];
        assert_eq!(s["name"], "io.example/a");
        assert_eq!(s["description"], "io.example/a");
        assert_eq!(s["remotes"][0]["type"], "streamable-http");
        assert_eq!(v["_meta"][APPROVAL]["images"][0], "example.com/x:1.*");
        assert_eq!(v["_meta"][OFFICIAL]["publishedAt"], "2026-12-01T00:00:00Z");
    }
}
