//! The MCP-aware proxy: every client message is parsed, put to the interception point, and
//! forwarded to the MCP server only when allowed; answers stream back, list answers filtered.

pub(crate) mod clients;
pub(crate) mod headers;
mod legacy;
pub mod rewrite;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use serde_json::Value;

use crate::config::ProxyConfig;
use crate::intercept::{Context, Interceptor, Transport, Verdict};
use crate::jsonrpc::{self, Kind, Payload, code, id_key};
use crate::limits::{Limiter, Quota, Tripped};
use crate::metrics::{Metrics, Outcome};
use crate::sse;
use crate::upstream::{Upstream, UpstreamError, strip_hop_by_hop};
use headers::check_mirrored_headers;
use mcp_guard_policy::catalog::ToolCatalog;
use mcp_guard_policy::mcp::{self, Class, List};
use rewrite::{BoxError, Rewriter, SseRewriteBody};

const SESSION_HEADER: &str = "mcp-session-id";
const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// The proxy, cheap to clone: one per listener, shared by every connection.
#[derive(Clone)]
pub struct Proxy {
    inner: Arc<Inner>,
}

struct Inner {
    path: String,
    sse_path: String,
    max_body_bytes: usize,
    max_list_bytes: usize,
    body_timeout: Duration,
    upstream: Upstream,
    interceptor: Arc<dyn Interceptor>,
    /// Counts the rate limits of allowed messages.
    limiter: Arc<Limiter>,
    sessions: Arc<legacy::Sessions>,
    clients: clients::ClientTable,
    metrics: Arc<Metrics>,
    /// Authentication, as built: a proxy without it was built with a disabled authenticator
    /// on purpose (which says so at startup).
    auth: Arc<crate::auth::Authenticator>,
    /// The audit trail, when it is on.
    audit: Option<Arc<crate::audit::Auditor>>,
    /// The server's tool definitions: what a call mirrors into `Mcp-Param-*` headers.
    catalog: Arc<ToolCatalog>,
}

/// A JSON-RPC error as an HTTP response.
fn error(status: StatusCode, id: Option<&Value>, code: i64, message: &str) -> Response<Body> {
    json_response(
        status,
        Bytes::from(jsonrpc::error_response(id, code, message, None).to_string()),
    )
}

fn json_response(status: StatusCode, body: Bytes) -> Response<Body> {
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, JSON);
    resp
}

fn accepted() -> Response<Body> {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::ACCEPTED;
    resp
}

/// Whether a content type is `essence` (parameters such as `charset` ignored).
fn is_content_type(headers: &HeaderMap, essence: &str) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(essence))
}

/// The outcome of putting every message of a body to the interceptor.
struct Checked {
    /// Messages to forward; `None` when the body goes unchanged.
    forward: Option<Vec<Value>>,
    /// Answers to denied requests.
    denied: Vec<Value>,
    /// Requests whose answers must be rewritten.
    pending: Vec<(String, List)>,
    /// Task-augmented calls whose answers name the task they create: (id key, tool).
    task_calls: Vec<(String, String)>,
    /// Per message: whether it goes on to the server.
    keep: Vec<bool>,
    /// How many messages remain to forward.
    remaining: usize,
    /// Allowed messages that count against rate limits: (index, limits).
    quotas: Vec<(usize, Quota)>,
    /// The refusal by a rate limit of a single message, answered 429 with `Retry-After`.
    limited: Option<(u64, Value)>,
}

impl Proxy {
    /// A proxy with everything it enforces given here, at construction: the interceptor that
    /// decides, the authenticator (a disabled one for a proxy without authentication) and the
    /// audit trail (`None`: off).
    pub fn new(
        config: &ProxyConfig,
        interceptor: Arc<dyn Interceptor>,
        limiter: Arc<Limiter>,
        metrics: Arc<Metrics>,
        auth: Arc<crate::auth::Authenticator>,
        audit: Option<Arc<crate::audit::Auditor>>,
        catalog: Arc<ToolCatalog>,
    ) -> Result<Self, UpstreamError> {
        let upstream = Upstream::new(
            &config.upstream_host,
            config.upstream_port,
            config.upstream_timeout,
            config.idle_timeout,
        )?;
        Ok(Proxy {
            inner: Arc::new(Inner {
                path: config.path.clone(),
                sse_path: config.sse_path.clone(),
                max_body_bytes: config.max_body_bytes,
                max_list_bytes: config.max_list_bytes,
                body_timeout: config.header_timeout,
                upstream,
                interceptor,
                limiter,
                sessions: Arc::default(),
                clients: clients::ClientTable::with_capacity(config.max_sessions),
                metrics,
                auth,
                audit,
                catalog,
            }),
        })
    }

    pub fn upstream(&self) -> &Upstream {
        &self.inner.upstream
    }

    /// Handles one HTTP request from a client.
    pub async fn handle<B>(&self, req: Request<B>) -> Response<Body>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let inner = &self.inner;
        // Authenticate before anything is parsed or forwarded; serve RFC 9728 metadata.
        let mut req = req;
        let mcp_path = {
            let p = req.uri().path();
            p == inner.path || p == inner.sse_path || inner.sessions.is_message_path(p)
        };
        let auth = &*inner.auth;
        if let Some(resp) = auth.admit(&mut req, mcp_path).await {
            return resp;
        }
        let path = req.uri().path();
        let method = req.method().clone();
        if path == inner.path {
            return match method {
                Method::POST => self.post(req, Transport::StreamableHttp).await,
                Method::GET | Method::DELETE => self.pass(req).await,
                _ => method_not_allowed("GET, POST, DELETE"),
            };
        }
        if path == inner.sse_path {
            return match method {
                Method::GET => self.sse_stream(req).await,
                _ => method_not_allowed("GET"),
            };
        }
        if inner.sessions.is_message_path(path) {
            return match method {
                Method::POST => self.post(req, Transport::Sse).await,
                _ => method_not_allowed("POST"),
            };
        }
        let msg = format!(
            "mcp-guard serves MCP at {} (Streamable HTTP) and {} (HTTP+SSE); nothing at {path}",
            inner.path, inner.sse_path
        );
        error(StatusCode::NOT_FOUND, None, code::INVALID_REQUEST, &msg)
    }

    /// Reads a request body up to the limit, within the time limit.
    async fn read_body<B>(&self, body: B, headers: &HeaderMap) -> Result<Bytes, Response<Body>>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let max = self.inner.max_body_bytes;
        let too_large = || {
            let msg = format!("the request body exceeds the limit of {max} bytes");
            error(StatusCode::PAYLOAD_TOO_LARGE, None, code::TOO_LARGE, &msg)
        };
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max as u64) {
            return Err(too_large());
        }
        let collect = Limited::new(body, max).collect();
        match tokio::time::timeout(self.inner.body_timeout, collect).await {
            Ok(Ok(c)) => Ok(c.to_bytes()),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
            Ok(Err(e)) => {
                let msg = format!("cannot read the request body: {e}");
                Err(error(
                    StatusCode::BAD_REQUEST,
                    None,
                    code::PARSE_ERROR,
                    &msg,
                ))
            }
            Err(_) => Err(error(
                StatusCode::REQUEST_TIMEOUT,
                None,
                code::PARSE_ERROR,
                "the request body did not arrive in time",
            )),
        }
    }

    /// Puts each client message to the interceptor.
    fn check(
        &self,
        payload: &Payload,
        ctx: &Context<'_>,
        audit: &mut crate::audit::Recording,
    ) -> Checked {
        let interceptor = &self.inner.interceptor;
        let msgs = payload.messages();
        let mut denied = Vec::new();
        let mut pending = Vec::new();
        let mut task_calls = Vec::new();
        let mut keep = Vec::with_capacity(msgs.len());
        let mut quotas = Vec::new();
        for (i, m) in msgs.iter().enumerate() {
            let verdict = match m.kind {
                Kind::Request | Kind::Notification => {
                    let (verdict, quota) = audit.check(&**interceptor, ctx, i, m);
                    if let Some(q) = quota {
                        quotas.push((i, q));
                    }
                    verdict
                }
                Kind::Response => Verdict::Allow,
            };
            match (&verdict, m.kind) {
                (Verdict::Allow, Kind::Request) => {
                    if let (Class::List(list), Some(id)) = (m.mcp.class(), m.id())
                        && interceptor.rewrites(list)
                    {
                        pending.push((id_key(id), list));
                    }
                    if let (Some(tool), Some(id)) = (m.task_call(), m.id()) {
                        task_calls.push((id_key(id), tool.to_owned()));
                    }
                    keep.push(true);
                }
                (Verdict::Allow, _) => keep.push(true),
                (Verdict::Deny { .. }, kind) => {
                    tracing::info!(
                        method = m.method().unwrap_or_default(),
                        name = m.target().unwrap_or_default(),
                        "denied"
                    );
                    if kind == Kind::Request
                        && let Some(err) = verdict.error_response(m.id())
                    {
                        denied.push(err);
                    }
                    keep.push(false);
                }
            }
        }
        let mut checked = Checked {
            forward: None,
            denied,
            pending,
            task_calls,
            keep,
            remaining: 0,
            quotas,
            limited: None,
        };
        checked.settle(payload);
        checked
    }

    /// Counts the allowed messages against their rate limits (after every decision, so a
    /// denied message uses no quota); a message a limit refuses is answered here.
    async fn count(
        &self,
        payload: &Payload,
        identity: Option<&crate::identity::Identity>,
        checked: &mut Checked,
        audit: &mut crate::audit::Recording,
    ) {
        if checked.quotas.is_empty() {
            return;
        }
        let limiter = &self.inner.limiter;
        let msgs = payload.messages();
        for (i, quota) in std::mem::take(&mut checked.quotas) {
            let Some(m) = msgs.get(i) else { continue };
            let req = crate::limits::Request {
                policy_hash: &quota.policy_hash,
                identity,
                method: m.method().unwrap_or_default(),
                item: m.item().map(|it| it.name),
            };
            let Err(tripped) = limiter.check(&quota.limits, &req).await else {
                continue;
            };
            let shadow = limiter.shadow();
            audit.rate_limited(i, &tripped, code::RATE_LIMITED, shadow);
            if shadow {
                tracing::info!(method = req.method, limit = %tripped.limit, "would be rate limited (shadow)");
                self.inner.metrics.shadow_denied(Some(req.method));
                continue;
            }
            tracing::info!(method = req.method, name = req.item.unwrap_or_default(), limit = %tripped.limit, store = tripped.store(), "rate limited");
            let err = limited_error(m.id(), &tripped);
            if let Some(k) = checked.keep.get_mut(i) {
                *k = false;
            }
            if matches!(payload, Payload::Single(_)) {
                checked.limited = Some((tripped.retry_after_secs(), err.clone()));
            }
            if m.kind == Kind::Request {
                checked.denied.push(err);
            }
        }
        checked.settle(payload);
    }

    /// Counts every message of a body; those the interceptor refused count as denied.
    fn record(&self, payload: &Payload, outcome: Outcome, keep: Option<&[bool]>, start: Instant) {
        let secs = start.elapsed().as_secs_f64();
        for (i, m) in payload.messages().iter().enumerate() {
            let kept = keep.and_then(|k| k.get(i)).copied().unwrap_or(true);
            let o = if kept { outcome } else { Outcome::Denied };
            self.inner.metrics.record(m.method(), o, secs);
        }
    }

    /// A POST of one message or a batch, on either transport.
    async fn post<B>(&self, req: Request<B>, transport: Transport) -> Response<Body>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let start = Instant::now();
        let (parts, body) = req.into_parts();
        let bytes = match self.read_body(body, &parts.headers).await {
            Ok(b) => b,
            Err(resp) => {
                self.inner.metrics.record(None, Outcome::Invalid, 0.0);
                return resp;
            }
        };
        let payload = match Payload::parse(&bytes) {
            Ok(p) => p,
            Err(e) => {
                self.inner.metrics.record(None, Outcome::Invalid, 0.0);
                return error(StatusCode::BAD_REQUEST, None, e.code(), &e.to_string());
            }
        };
        let single_id = match &payload {
            Payload::Single(m) => m.id().cloned(),
            Payload::Batch(_) => None,
        };
        if let Err(msg) = check_mirrored_headers(&parts.headers, &payload, &self.inner.catalog) {
            self.record(&payload, Outcome::Invalid, None, start);
            return error(
                StatusCode::BAD_REQUEST,
                single_id.as_ref(),
                code::HEADER_MISMATCH,
                &msg,
            );
        }

        // On the older transport the session is the endpoint the client posts to.
        let endpoint = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_default();
        let legacy_session = match transport {
            Transport::Sse => match self.inner.sessions.get(&endpoint) {
                Some(s) => Some(s),
                None => {
                    self.record(&payload, Outcome::Invalid, None, start);
                    let msg = format!("no open SSE session for {endpoint}");
                    return error(
                        StatusCode::NOT_FOUND,
                        single_id.as_ref(),
                        code::INVALID_REQUEST,
                        &msg,
                    );
                }
            },
            Transport::StreamableHttp => None,
        };
        let session_id = parts
            .headers
            .get(SESSION_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let identity = caller(&parts.extensions);
        let refused = match (&legacy_session, &session_id) {
            (Some(s), _) => (!s.may_use(identity.as_deref())).then_some(clients::Refusal::NotOwner),
            (None, Some(sid)) => self.inner.clients.may_use(sid, identity.as_deref()).err(),
            (None, None) => None,
        };
        if let Some(refusal) = refused {
            self.record(&payload, Outcome::Denied, None, start);
            return self.session_refused(refusal, single_id.as_ref());
        }
        let client = self
            .inner
            .clients
            .lookup(&payload, &parts.headers, session_id.as_deref());
        let ctx = Context {
            transport,
            session_id: match transport {
                Transport::StreamableHttp => session_id.as_deref(),
                Transport::Sse => Some(endpoint.as_str()),
            },
            identity: identity.as_deref(),
            client: client.as_deref(),
        };
        let mut audit = crate::audit::Recording::begin(
            self.inner.audit.as_ref(),
            &parts.headers,
            &bytes,
            matches!(payload, Payload::Single(_)),
            identity.as_ref(),
            client.as_ref(),
            start,
        );
        let mut checked = self.check(&payload, &ctx, &mut audit);
        self.count(&payload, identity.as_deref(), &mut checked, &mut audit)
            .await;

        if let Some(session) = &legacy_session {
            // Answers on the older transport travel on the GET stream, the sidecar's own too.
            for (id, list) in &checked.pending {
                session.expect(id.clone(), *list);
            }
            for err in &checked.denied {
                if !session
                    .inject(sse::message_event(err.to_string().as_bytes()))
                    .await
                {
                    tracing::warn!(endpoint, "SSE stream closed before a denial could be sent");
                }
            }
            if checked.remaining == 0 {
                self.record(&payload, Outcome::Ok, Some(&checked.keep), start);
                return audit.wrap(accepted());
            }
        } else if checked.remaining == 0 {
            self.record(&payload, Outcome::Ok, Some(&checked.keep), start);
            if let Some((secs, err)) = checked.limited {
                return audit.wrap(too_many_requests(secs, &err));
            }
            return audit.wrap(match payload {
                Payload::Single(_) => match checked.denied.into_iter().next() {
                    Some(err) => json_response(StatusCode::OK, Bytes::from(err.to_string())),
                    None => accepted(),
                },
                Payload::Batch(_) => {
                    let all = Value::Array(checked.denied).to_string();
                    json_response(StatusCode::OK, Bytes::from(all))
                }
            });
        }

        let body = match &checked.forward {
            None => bytes,
            Some(msgs) if msgs.len() == 1 && matches!(payload, Payload::Single(_)) => {
                Bytes::from(msgs[0].to_string())
            }
            Some(msgs) => Bytes::from(Value::Array(msgs.clone()).to_string()),
        };
        let mut headers = parts.headers;
        audit.propagate(&mut headers);
        audit.forwarding();
        let upstream = self
            .inner
            .upstream
            .send(parts.method, parts.uri.path_and_query(), headers, body)
            .await;
        let resp = match upstream {
            Ok(r) => r,
            Err(e) => {
                self.record(&payload, Outcome::UpstreamError, Some(&checked.keep), start);
                audit.upstream_failed();
                return audit.wrap(upstream_error(&e, single_id.as_ref()));
            }
        };
        self.record(&payload, Outcome::Ok, Some(&checked.keep), start);
        if let (Some(c), Payload::Single(m)) = (&client, &payload)
            && m.mcp == mcp::Method::Initialize
            && let Some(sid) = resp
                .headers()
                .get(SESSION_HEADER)
                .and_then(|v| v.to_str().ok())
        {
            let owner = clients::Owner::of(identity.as_deref());
            self.inner.clients.remember(sid, Arc::clone(c), owner);
        }

        let denied = if legacy_session.is_some() {
            Vec::new()
        } else {
            checked.denied
        };
        let notes = if checked.pending.is_empty() {
            None
        } else {
            audit.list_notes()
        };
        let rewriter = Rewriter::new(
            Arc::clone(&self.inner.interceptor),
            transport,
            session_id,
            Box::new(checked.pending),
            false,
        )
        .with_identity(identity)
        .with_audit(notes)
        .with_task_calls(checked.task_calls);
        audit.wrap(self.answer(resp, rewriter, denied).await)
    }

    /// Streams the server's answer back, rewriting what must change and merging in the answers
    /// to denied requests of a batch.
    async fn answer(
        &self,
        resp: Response<hyper::body::Incoming>,
        mut rewriter: Rewriter,
        denied: Vec<Value>,
    ) -> Response<Body> {
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        let ok = parts.status.is_success();

        if ok && is_content_type(&parts.headers, "text/event-stream") {
            parts.headers.remove(header::CONTENT_LENGTH);
            let leading = denied
                .iter()
                .map(|d| sse::message_event(d.to_string().as_bytes()));
            let body = SseRewriteBody::new(body, rewriter).with_leading(leading);
            return Response::from_parts(parts, Body::new(body));
        }
        if ok && parts.status == StatusCode::ACCEPTED && !denied.is_empty() {
            // Only notifications went through; the denied requests still need their answers.
            let all = Value::Array(denied).to_string();
            return json_response(StatusCode::OK, Bytes::from(all));
        }
        if ok
            && is_content_type(&parts.headers, "application/json")
            && (rewriter.active() || !denied.is_empty())
        {
            let collected = Limited::new(body, self.inner.max_list_bytes)
                .collect()
                .await;
            let bytes = match collected {
                Ok(c) => c.to_bytes(),
                Err(e) => {
                    let msg = format!("cannot read the MCP server's answer: {e}");
                    tracing::warn!("{msg}");
                    return error(
                        StatusCode::BAD_GATEWAY,
                        None,
                        code::UPSTREAM_UNAVAILABLE,
                        &msg,
                    );
                }
            };
            let mut out = rewriter.rewrite_json(&bytes).unwrap_or(bytes);
            if !denied.is_empty() {
                out = merge_answers(&out, denied);
            }
            parts.headers.remove(header::CONTENT_LENGTH);
            return Response::from_parts(parts, Body::from(out));
        }
        Response::from_parts(parts, Body::new(body))
    }

    /// GET and DELETE on the Streamable HTTP endpoint: passed through; a GET stream's answers are
    /// filtered by their shape (the requests they answer were never seen here, e.g. on resumption).
    async fn pass<B>(&self, req: Request<B>) -> Response<Body>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let (parts, _) = req.into_parts();
        let identity = caller(&parts.extensions);
        let session = parts
            .headers
            .get(SESSION_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if let Some(sid) = &session {
            if let Err(refusal) = self.inner.clients.may_use(sid, identity.as_deref()) {
                return self.session_refused(refusal, None);
            }
            if parts.method == Method::DELETE {
                self.inner.clients.forget(sid);
            }
        }
        match self.send_bodyless(parts).await {
            Ok(resp) => {
                let rewriter = Rewriter::new(
                    Arc::clone(&self.inner.interceptor),
                    Transport::StreamableHttp,
                    session,
                    Box::new(Vec::new()),
                    true,
                )
                .with_identity(identity);
                self.answer(resp, rewriter, Vec::new()).await
            }
            Err(e) => upstream_error(&e, None),
        }
    }

    /// Forwards a request that has no body (GET, DELETE) as the client sent it.
    async fn send_bodyless(
        &self,
        parts: http::request::Parts,
    ) -> Result<Response<hyper::body::Incoming>, UpstreamError> {
        self.inner
            .upstream
            .send(
                parts.method,
                parts.uri.path_and_query(),
                parts.headers,
                Bytes::new(),
            )
            .await
    }

    /// `GET /sse` of the older transport.
    async fn sse_stream<B>(&self, req: Request<B>) -> Response<Body>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let (parts, _) = req.into_parts();
        let identity = caller(&parts.extensions);
        let resp = match self.send_bodyless(parts).await {
            Ok(r) => r,
            Err(e) => return upstream_error(&e, None),
        };
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        if !parts.status.is_success() || !is_content_type(&parts.headers, "text/event-stream") {
            return Response::from_parts(parts, Body::new(body));
        }
        parts.headers.remove(header::CONTENT_LENGTH);
        let stream = self.inner.sessions.open(
            self.inner.upstream.authority().to_owned(),
            clients::Owner::of(identity.as_deref()),
        );
        let rewriter = Rewriter::new(
            Arc::clone(&self.inner.interceptor),
            Transport::Sse,
            None,
            stream.pending,
            true,
        )
        .with_identity(identity)
        .with_endpoint_hook(stream.hook);
        let body = SseRewriteBody::new(body, rewriter)
            .with_injected(stream.injected)
            .with_guard(stream.guard);
        Response::from_parts(parts, Body::new(body))
    }
}

impl Proxy {
    /// The answer to a request for a session its caller may not use: 404, which tells an MCP
    /// client to initialize a new session. A session of another caller gets the answer servers
    /// give for a session that does not exist, so nothing about it is revealed; an evicted one
    /// is told why.
    fn session_refused(&self, refusal: clients::Refusal, id: Option<&Value>) -> Response<Body> {
        match refusal {
            clients::Refusal::NotOwner => {
                tracing::warn!("refused a session opened by another caller")
            }
            clients::Refusal::Evicted => {
                tracing::info!("refused a session evicted from the full session table")
            }
        }
        let msg = refusal.message(self.inner.clients.capacity());
        error(StatusCode::NOT_FOUND, id, code::INVALID_REQUEST, &msg)
    }
}

/// The verified caller [`crate::auth::Authenticator::admit`] left in the request's extensions.
fn caller(ext: &http::Extensions) -> Option<Arc<crate::identity::Identity>> {
    ext.get::<crate::auth::Caller>().and_then(|c| c.0.clone())
}

fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut resp = error(
        StatusCode::METHOD_NOT_ALLOWED,
        None,
        code::INVALID_REQUEST,
        &format!("method not allowed here; use {allow}"),
    );
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    resp
}

fn upstream_error(e: &UpstreamError, id: Option<&Value>) -> Response<Body> {
    tracing::warn!(error = %e, "upstream request failed");
    let status = match e {
        UpstreamError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::BAD_GATEWAY,
    };
    error(status, id, code::UPSTREAM_UNAVAILABLE, &e.to_string())
}

impl Checked {
    /// Works out what is forwarded from which messages are kept.
    fn settle(&mut self, payload: &Payload) {
        let msgs = payload.messages();
        self.remaining = self.keep.iter().filter(|k| **k).count();
        self.forward = (self.remaining != msgs.len()).then(|| {
            msgs.iter()
                .zip(&self.keep)
                .filter(|(_, k)| **k)
                .map(|(m, _)| Value::Object(m.raw.clone()))
                .collect()
        });
    }
}

/// The JSON-RPC error answering a request a rate limit refused: code [`code::RATE_LIMITED`],
/// with the limit and the wait in `data`.
fn limited_error(id: Option<&Value>, t: &Tripped) -> Value {
    let data = serde_json::json!({
        "limit": t.limit,
        "retry_after": t.retry_after_secs(),
        "scope": if t.fleet { "fleet" } else { "local" },
    });
    jsonrpc::error_response(id, code::RATE_LIMITED, &t.message(), Some(data))
}

/// HTTP 429 with `Retry-After`, carrying the JSON-RPC error.
fn too_many_requests(secs: u64, err: &Value) -> Response<Body> {
    let mut resp = json_response(StatusCode::TOO_MANY_REQUESTS, Bytes::from(err.to_string()));
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    resp
}

/// Adds the sidecar's own answers to the server's JSON answer (a batch answer stays a batch).
fn merge_answers(server: &[u8], mut denied: Vec<Value>) -> Bytes {
    let mut all = match serde_json::from_slice::<Value>(server) {
        Ok(Value::Array(items)) => items,
        Ok(v) => vec![v],
        Err(_) => Vec::new(),
    };
    all.append(&mut denied);
    Bytes::from(Value::Array(all).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intercept::StaticToolFilter;
    use http_body_util::Full;
    use serde_json::json;

    fn proxy(upstream_port: u16) -> Proxy {
        use clap::Parser;
        #[derive(Parser)]
        struct W {
            #[command(flatten)]
            c: ProxyConfig,
        }
        let cfg = W::parse_from([
            "x",
            "--upstream-port",
            &upstream_port.to_string(),
            "--max-body-bytes",
            "256",
        ])
        .c;
        let f = StaticToolFilter::new(&[], &["secret".into()]);
        let metrics = Arc::new(Metrics::new());
        Proxy::new(
            &cfg,
            Arc::new(f),
            Arc::new(Limiter::local_only(16, Arc::clone(&metrics))),
            metrics,
            Arc::new(crate::auth::Authenticator::disabled()),
            None,
            Arc::default(),
        )
        .unwrap()
    }

    async fn post(
        p: &Proxy,
        path: &str,
        body: &str,
        headers: &[(&str, &str)],
    ) -> (StatusCode, Value) {
        let mut req = Request::post(path);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = p
            .handle(req.body(Full::new(Bytes::from(body.to_owned()))).unwrap())
            .await;
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// A port nothing listens on.
    fn dead_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }

    #[tokio::test]
    async fn malformed_input_is_refused_before_the_server() {
        let p = proxy(dead_port());
        let (s, v) = post(&p, "/mcp", "{oops", &[]).await;
        assert_eq!(
            (s, v["error"]["code"].as_i64()),
            (StatusCode::BAD_REQUEST, Some(-32700))
        );
        let (s, v) = post(&p, "/mcp", r#"{"hello":1}"#, &[]).await;
        assert_eq!(
            (s, v["error"]["code"].as_i64()),
            (StatusCode::BAD_REQUEST, Some(-32600))
        );
        let big = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"{}"}}"#,
            "x".repeat(300)
        );
        let (s, _) = post(&p, "/mcp", &big, &[]).await;
        assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
        let (s, v) = post(&p, "/nope", "{}", &[]).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        assert!(v["error"]["message"].as_str().unwrap().contains("/nope"));
    }

    #[tokio::test]
    async fn denied_call_is_answered_here_and_dead_upstream_is_502() {
        let p = proxy(dead_port());
        let call = r#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"secret"}}"#;
        let (s, v) = post(&p, "/mcp", call, &[]).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(v["id"], 5);
        assert_eq!(v["error"]["message"], "Unknown tool: secret");
        let ok = r#"{"jsonrpc":"2.0","id":6,"method":"tools/call","params":{"name":"echo"}}"#;
        let (s, v) = post(&p, "/mcp", ok, &[]).await;
        assert_eq!(s, StatusCode::BAD_GATEWAY);
        assert_eq!(
            (v["id"].clone(), v["error"]["code"].clone()),
            (json!(6), json!(-32004))
        );
    }

    #[tokio::test]
    async fn mirrored_headers_must_match() {
        let p = proxy(dead_port());
        let call = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"}}"#;
        let (s, v) = post(
            &p,
            "/mcp",
            call,
            &[("mcp-method", "tools/call"), ("mcp-name", "other")],
        )
        .await;
        assert_eq!(
            (s, v["error"]["code"].as_i64()),
            (StatusCode::BAD_REQUEST, Some(-32020))
        );
        let (s, _) = post(&p, "/mcp", call, &[("mcp-method", "tools/list")]).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn batch_with_only_denied_requests() {
        let p = proxy(dead_port());
        let batch = json!([
            {"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"secret"}},
            {"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"secret"}}
        ]);
        let (s, v) = post(&p, "/mcp", &batch.to_string(), &[]).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(v.as_array().map(Vec::len), Some(2));
    }
}
