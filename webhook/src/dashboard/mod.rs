//! The read-only web dashboard under `/dashboard/`, on the webhook's HTTPS port beside `/fleet`:
//! the fleet table, a server's page (its pods, its tools and who may see and call each, its
//! sidecars' recent refusals, the policy bundles they put in force) and a governance page (pods
//! outside the perimeter, Services that mix governed and ungoverned pods, policy drift). It is
//! built from the same rows as `GET /fleet` and the CLI ([`crate::fleet_api`]); a server's page
//! asks only that server's sidecars for more ([`fleet::details`]).
//!
//! Every page is authorised as `/fleet` is ([`crate::access`]): a caller sees the pods of the
//! namespaces where RBAC lets them list pods, and the `ApprovedServer`s they may get. A browser
//! signs in once with a Kubernetes token through the login form ([`session`]); a client may
//! send `Authorization: Bearer` instead. Without either the answer is 401 with the form and no
//! data.

pub mod html;
pub mod session;

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use k8s_openapi::api::core::v1::Endpoints;
use kube::api::{Api, ListParams};
use serde::Deserialize;

use crate::access::{Caller, Refusal};
use crate::cluster::ApprovedServers;
use crate::controller::perimeter::{self, EntryStatus};
use crate::fleet::{self, Row};
use crate::fleet_api::{CONCURRENCY, FleetApi, TIMEOUT, may_list_pods};
use crate::registry_api::ApiError;
use html::{EntryView, Governance, Mixed};
use session::Sessions;

/// What the dashboard reads.
pub struct Dashboard {
    pub fleet: Arc<FleetApi>,
    /// The `ApprovedServer`s and the status the controller writes on them.
    pub approved: Option<ApprovedServers>,
    /// For the Endpoints of the governance page.
    pub client: Option<kube::Client>,
    pub sessions: Sessions,
}

/// The dashboard's routes.
pub fn router(d: Arc<Dashboard>) -> Router {
    Router::new()
        .route(
            "/dashboard",
            get(|| async { see_other("/dashboard/", None) }),
        )
        .route("/dashboard/", get(fleet_page))
        .route("/dashboard/server", get(server_page))
        .route("/dashboard/governance", get(governance_page))
        .route("/dashboard/login", get(login_page).post(login))
        .route("/dashboard/logout", post(logout))
        .with_state(d)
}

/// An HTML answer, never cached, that loads nothing from elsewhere and runs no script.
fn html(status: StatusCode, body: String) -> Response {
    let mut resp = (status, body).into_response();
    let h = resp.headers_mut();
    for (name, value) in [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (header::CACHE_CONTROL, "no-store"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    resp
}

fn see_other(location: &str, cookie: Option<String>) -> Response {
    let mut resp = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    if let Some(v) = cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

/// A refusal as a page: the login form for 401, the reason otherwise; no data.
fn refused(e: ApiError, next: &str) -> Response {
    let ApiError(status, message) = e;
    if status == StatusCode::UNAUTHORIZED {
        let mut resp = html(
            status,
            html::page("Sign in", None, &html::login(&message, next)),
        );
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return resp;
    }
    let body = format!(
        "<p class=\"error\" id=\"refused\">{}</p>",
        html::esc(&message)
    );
    html(status, html::page("Refused", None, &body))
}

/// Where the login may send the browser back to: a page of the dashboard, nothing else.
fn safe_next(next: &str) -> &str {
    let ok = next.starts_with("/dashboard/")
        && !next.contains("//")
        && next
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/?=&%._~-".contains(&b));
    if ok { next } else { "/dashboard/" }
}

/// The caller: from `Authorization: Bearer`, else from the session cookie.
async fn caller(d: &Dashboard, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let (_, access) = d.fleet.parts()?;
    if let Some(authorization) = headers.get(header::AUTHORIZATION) {
        return Ok(access.authenticate(authorization.to_str().ok()).await?);
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(session::from_cookie_header)
        .find_map(|id| d.sessions.get(id))
        .ok_or_else(|| {
            ApiError(
                StatusCode::UNAUTHORIZED,
                "sign in with a Kubernetes token to see the fleet".into(),
            )
        })
}

/// The rows `keep` accepts that `caller` may see.
async fn rows_for(
    d: &Dashboard,
    caller: &Caller,
    keep: impl Fn(&Row) -> bool,
) -> Result<Vec<Row>, ApiError> {
    let (view, _) = d.fleet.parts()?;
    let rows = d.fleet.rows(view).await;
    d.fleet.visible(caller, rows, keep).await
}

async fn fleet_page(State(d): State<Arc<Dashboard>>, headers: HeaderMap) -> Response {
    let result = async {
        let caller = caller(&d, &headers).await?;
        let rows = rows_for(&d, &caller, |_| true).await?;
        let drifted = rows.iter().filter(|r| r.drift).count();
        let body = format!(
            "<p class=\"muted\">Every injected pod you may list: {} pods, {} with policy drift \
             (observed at most {} s ago). The same rows as <code>mcp-guard-webhook fleet</code>.</p>{}",
            rows.len(),
            drifted,
            crate::fleet_api::FRESH.as_secs(),
            html::fleet_table("fleet", &rows)
        );
        Ok::<_, ApiError>(html::page("Fleet", Some(&caller.username), &body))
    }
    .await;
    match result {
        Ok(page) => html(StatusCode::OK, page),
        Err(e) => refused(e, "/dashboard/"),
    }
}

#[derive(Deserialize)]
struct ServerQuery {
    #[serde(default)]
    name: String,
}

async fn server_page(
    State(d): State<Arc<Dashboard>>,
    headers: HeaderMap,
    Query(q): Query<ServerQuery>,
) -> Response {
    let next = format!("/dashboard/server?name={}", html::url_value(&q.name));
    let result = async {
        let caller = caller(&d, &headers).await?;
        let rows = rows_for(&d, &caller, |r| html::server_key(r) == q.name).await?;
        if rows.is_empty() {
            return Err(ApiError(
                StatusCode::NOT_FOUND,
                format!("no injected pod of {:?} that you may list", q.name),
            ));
        }
        let (view, _) = d.fleet.parts()?;
        let targets = d.fleet.targets_of(view, &rows);
        let details = fleet::details(targets, CONCURRENCY, TIMEOUT).await;
        Ok(html::page(
            &format!("Server {}", q.name),
            Some(&caller.username),
            &html::server_page(&rows, &details),
        ))
    }
    .await;
    match result {
        Ok(page) => html(StatusCode::OK, page),
        Err(e) => refused(e, &next),
    }
}

async fn governance_page(State(d): State<Arc<Dashboard>>, headers: HeaderMap) -> Response {
    let result = async {
        let caller = caller(&d, &headers).await?;
        let g = governance(&d, &caller).await?;
        Ok::<_, ApiError>(html::page(
            "Governance",
            Some(&caller.username),
            &html::governance_page(&g),
        ))
    }
    .await;
    match result {
        Ok(page) => html(StatusCode::OK, page),
        Err(e) => refused(e, "/dashboard/governance"),
    }
}

/// Gathers the governance page for `caller`.
async fn governance(d: &Dashboard, caller: &Caller) -> Result<Governance, ApiError> {
    let (view, access) = d.fleet.parts()?;
    let rows = rows_for(d, caller, |_| true).await?;
    let catalog = d.approved.as_ref().and_then(ApprovedServers::catalog);
    let statuses = d.approved.as_ref().and_then(ApprovedServers::statuses);
    let mut entries = Vec::new();
    let mut ungoverned = Vec::new();
    let entries = match (&catalog, statuses) {
        (Some(catalog), Some(statuses)) => {
            for e in &catalog.entries {
                if !crate::registry_api::may_get(access, caller, Some(&e.object)).await? {
                    continue;
                }
                let status: EntryStatus = statuses
                    .get(&e.object)
                    .cloned()
                    .and_then(|s| serde_json::from_value(s).ok())
                    .unwrap_or_default();
                for p in &status.ungoverned {
                    if may_list_pods(access, caller, &p.namespace).await? {
                        ungoverned.push((e.object.clone(), p.clone()));
                    }
                }
                entries.push(EntryView {
                    object: e.object.clone(),
                    name: e.spec.name.clone(),
                    status,
                });
            }
            Ok(entries)
        }
        _ => Err(
            "the catalog of approved servers is not loaded (is the ApprovedServer CRD installed?)"
                .to_string(),
        ),
    };
    let mut unlisted = Vec::new();
    for p in view.perimeter(&catalog.unwrap_or_default()).unlisted {
        if may_list_pods(access, caller, &p.namespace).await? {
            unlisted.push(p);
        }
    }
    let namespaces: BTreeSet<&str> = rows.iter().map(|r| r.namespace.as_str()).collect();
    let mixed = match &d.client {
        None => Err("no cluster access".to_string()),
        Some(client) => mixed_services(client, view, &namespaces).await,
    };
    let drift = rows
        .iter()
        .filter(|r| r.drift || r.tool_changes.unwrap_or(0) > 0)
        .cloned()
        .collect();
    Ok(Governance {
        entries,
        ungoverned,
        unlisted,
        mixed,
        drift,
    })
}

/// The Services of `namespaces` whose endpoints (ready or not) are pods both with and without
/// the sidecar. Only namespaces with injected pods can hold one.
async fn mixed_services(
    client: &kube::Client,
    view: &crate::controller::FleetView,
    namespaces: &BTreeSet<&str>,
) -> Result<Vec<Mixed>, String> {
    let mut out = Vec::new();
    for ns in namespaces {
        let api: Api<Endpoints> = Api::namespaced(client.clone(), ns);
        let list = api
            .list(&ListParams::default())
            .await
            .map_err(|e| format!("cannot list the Endpoints of {ns}: {e}"))?;
        for ep in list.items {
            let (mut governed, mut ungoverned) = (BTreeSet::new(), BTreeSet::new());
            let addresses = ep.subsets.iter().flatten().flat_map(|s| {
                s.addresses
                    .iter()
                    .flatten()
                    .chain(s.not_ready_addresses.iter().flatten())
            });
            for a in addresses {
                let Some(r) = a
                    .target_ref
                    .as_ref()
                    .filter(|r| r.kind.as_deref() == Some("Pod"))
                else {
                    continue;
                };
                let Some(name) = r.name.clone() else { continue };
                match view.pod(ns, &name) {
                    Some(p) if perimeter::governed(&p) => governed.insert(name),
                    _ => ungoverned.insert(name),
                };
            }
            if !governed.is_empty() && !ungoverned.is_empty() {
                out.push(Mixed {
                    namespace: ns.to_string(),
                    service: ep.metadata.name.unwrap_or_default(),
                    governed: governed.into_iter().collect(),
                    ungoverned: ungoverned.into_iter().collect(),
                });
            }
        }
    }
    Ok(out)
}

#[derive(Deserialize)]
struct NextQuery {
    #[serde(default)]
    next: String,
}

async fn login_page(Query(q): Query<NextQuery>) -> Response {
    let body = html::login("", safe_next(&q.next));
    html(StatusCode::OK, html::page("Sign in", None, &body))
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    next: String,
}

/// Reviews the form's token once and starts a session; the token itself is kept nowhere.
async fn login(State(d): State<Arc<Dashboard>>, Form(f): Form<LoginForm>) -> Response {
    let next = safe_next(&f.next).to_string();
    let result = async {
        let (_, access) = d.fleet.parts()?;
        let token = f.token.trim();
        if token.is_empty() || token.contains(char::is_whitespace) {
            return Err(Refusal::Unauthenticated("paste one token, without spaces".into()).into());
        }
        let caller = access
            .authenticate(Some(&format!("Bearer {token}")))
            .await?;
        let id = d
            .sessions
            .create(caller.clone())
            .map_err(|e| ApiError(StatusCode::SERVICE_UNAVAILABLE, e))?;
        tracing::info!(user = caller.username, "dashboard session started");
        Ok::<_, ApiError>(id)
    }
    .await;
    match result {
        Ok(id) => see_other(&next, Some(session::set_cookie(&id))),
        Err(e) => refused(e, &next),
    }
}

async fn logout(State(d): State<Arc<Dashboard>>, headers: HeaderMap) -> Response {
    for id in headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(session::from_cookie_header)
    {
        d.sessions.remove(id);
    }
    see_other("/dashboard/login", Some(session::clear_cookie()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_sends_back_to_dashboard_pages_only() {
        assert_eq!(safe_next("/dashboard/governance"), "/dashboard/governance");
        assert_eq!(
            safe_next("/dashboard/server?name=apps%2Fx"),
            "/dashboard/server?name=apps%2Fx"
        );
        for bad in [
            "https://evil.example/",
            "//evil.example/dashboard/",
            "/dashboard/\"><script>",
            "/fleet",
            "",
        ] {
            assert_eq!(safe_next(bad), "/dashboard/", "{bad}");
        }
    }
}
