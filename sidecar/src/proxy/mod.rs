//! The MCP-aware proxy, assembled at construction as a stack of stages, each in its own module
//! and each readable on its own (as linkerd2-proxy composes its inbound stack):
//!
//! 1. authenticate: the bearer token verified, the caller put on the request
//!    ([`crate::auth::Authenticator::admit`]); RFC 9728 metadata served;
//! 2. route: Streamable HTTP, the older HTTP+SSE transport, or 404 (here, [`Proxy::handle`]);
//! 3. parse: the body read and parsed, its mirrored headers checked, its MCP session resolved
//!    ([`parse`]), giving the [`parse::Exchange`];
//! 4. decide: every message put to the interceptor, the allowed ones counted against their rate
//!    limits ([`decide`]), giving the [`decide::Decision`];
//! 5. forward: what is kept goes to the server, the answer streams back rewritten ([`forward`];
//!    GET and DELETE streams in [`streams`]).
//!
//! The observers watch rather than take part: the request metrics count each message's outcome
//! once, when the stack is done with it ([`Proxy::post`]); the audit trail, spans and call
//! metrics get the decision and the answer through one [`Recording`], completed when the answer
//! ends ([`crate::observe`]).

pub(crate) mod clients;
mod decide;
mod forward;
pub(crate) mod headers;
mod legacy;
mod parse;
pub mod rewrite;
mod streams;

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use serde_json::Value;

use crate::config::ProxyConfig;
use crate::intercept::{Interceptor, Transport};
use crate::jsonrpc::{self, Payload, code};
use crate::limits::Limiter;
use crate::metrics::{Metrics, Outcome};
use crate::observe::{Begin, Observer, Recording};
use crate::upstream::{Upstream, UpstreamError};
use mcp_guard_policy::catalog::ToolCatalog;
use rewrite::BoxError;

const SESSION_HEADER: &str = "mcp-session-id";
const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// The proxy, cheap to clone: one per listener, shared by every connection.
#[derive(Clone)]
pub struct Proxy {
    stack: Arc<Stack>,
}

/// The stages, built once.
struct Stack {
    path: String,
    sse_path: String,
    /// Authentication, as built: a proxy without it was built with a disabled authenticator
    /// on purpose (which says so at startup).
    auth: Arc<crate::auth::Authenticator>,
    parse: parse::Parse,
    decide: decide::Decide,
    forward: forward::Forward,
    streams: streams::Streams,
    /// The request metrics.
    metrics: Arc<Metrics>,
    /// The audit trail, spans and call metrics; `None` when every one is off.
    observer: Option<Arc<Observer>>,
}

impl Proxy {
    /// A proxy with everything it enforces given here, at construction: the interceptor that
    /// decides, the rate limiter, the authenticator (a disabled one for a proxy without
    /// authentication), the observers (`None`: none is on) and the server's tool definitions
    /// (what a call mirrors into `Mcp-Param-*` headers).
    pub fn new(
        config: &ProxyConfig,
        interceptor: Arc<dyn Interceptor>,
        limiter: Arc<Limiter>,
        metrics: Arc<Metrics>,
        auth: Arc<crate::auth::Authenticator>,
        observer: Option<Arc<Observer>>,
        catalog: Arc<ToolCatalog>,
    ) -> Result<Self, UpstreamError> {
        let upstream = Upstream::new(
            &config.upstream_host,
            config.upstream_port,
            config.upstream_timeout,
            config.idle_timeout,
            config.threads(),
        )?;
        let sessions = Arc::new(legacy::Sessions::default());
        let clients = Arc::new(clients::ClientTable::with_capacity(config.max_sessions));
        let stack = Stack {
            path: config.path.clone(),
            sse_path: config.sse_path.clone(),
            auth,
            parse: parse::Parse {
                max_body_bytes: config.max_body_bytes,
                body_timeout: config.header_timeout,
                sessions: Arc::clone(&sessions),
                clients: Arc::clone(&clients),
                catalog,
            },
            decide: decide::Decide {
                interceptor: Arc::clone(&interceptor),
                limiter,
                metrics: Arc::clone(&metrics),
            },
            forward: forward::Forward {
                upstream: upstream.clone(),
                interceptor: Arc::clone(&interceptor),
                clients: Arc::clone(&clients),
                max_list_bytes: config.max_list_bytes,
            },
            streams: streams::Streams {
                upstream,
                interceptor,
                sessions,
                clients,
                max_list_bytes: config.max_list_bytes,
            },
            metrics,
            observer,
        };
        Ok(Proxy {
            stack: Arc::new(stack),
        })
    }

    pub fn upstream(&self) -> &Upstream {
        &self.stack.forward.upstream
    }

    /// Handles one HTTP request from a client: authenticated before anything is parsed or
    /// forwarded, then routed.
    pub async fn handle<B>(&self, mut req: Request<B>) -> Response<Body>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let s = &*self.stack;
        let path = req.uri().path();
        let mcp_path = path == s.path || path == s.sse_path || s.streams.is_message_path(path);
        if let Some(resp) = s.auth.admit(&mut req, mcp_path).await {
            return resp;
        }
        let path = req.uri().path();
        let method = req.method().clone();
        if path == s.path {
            return match method {
                Method::POST => self.post(req, Transport::StreamableHttp).await,
                Method::GET | Method::DELETE => s.streams.pass(req.into_parts().0).await,
                _ => method_not_allowed("GET, POST, DELETE"),
            };
        }
        if path == s.sse_path {
            return match method {
                Method::GET => s.streams.sse_stream(req.into_parts().0).await,
                _ => method_not_allowed("GET"),
            };
        }
        if s.streams.is_message_path(path) {
            return match method {
                Method::POST => self.post(req, Transport::Sse).await,
                _ => method_not_allowed("POST"),
            };
        }
        let msg = format!(
            "mcp-guard serves MCP at {} (Streamable HTTP) and {} (HTTP+SSE); nothing at {path}",
            s.path, s.sse_path
        );
        error(StatusCode::NOT_FOUND, None, code::INVALID_REQUEST, &msg)
    }

    /// A POST of one message or a batch, on either transport, through the stages: parse,
    /// decide, forward; the observers get the decision and the answer.
    async fn post<B>(&self, req: Request<B>, transport: Transport) -> Response<Body>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let s = &*self.stack;
        let start = Instant::now();
        let mut x = match s.parse.exchange(req, transport).await {
            Ok(x) => x,
            Err(refused) => {
                let at = refused.payload.as_ref().map(|_| Instant::now());
                self.tally(refused.payload.as_ref(), refused.outcome, None, start, at);
                return refused.answer;
            }
        };
        let mut rec = Recording::begin(
            s.observer.as_ref(),
            Begin {
                headers: &x.parts.headers,
                body: &x.body,
                single: matches!(x.payload, Payload::Single(_)),
                transport,
                session: x.session(),
                identity: x.identity.as_ref(),
                client: x.client.as_ref(),
                start,
            },
        );
        let mut decision = s.decide.decide(&x).await;
        rec.decided(x.payload.messages(), &mut decision.messages);
        let keep = std::mem::take(&mut decision.keep);
        let done = s.forward.forward(&mut x, decision, &mut rec).await;
        self.tally(
            Some(&x.payload),
            done.outcome,
            Some(&keep),
            start,
            Some(done.at),
        );
        rec.wrap(done.answer)
    }

    /// The request metrics of one POST, counted once: each message with `outcome`, those the
    /// decision did not keep as denied; the time from `start` to `at` (none when the body could
    /// not be read).
    fn tally(
        &self,
        payload: Option<&Payload>,
        outcome: Outcome,
        keep: Option<&[bool]>,
        start: Instant,
        at: Option<Instant>,
    ) {
        let metrics = &self.stack.metrics;
        let secs = at.map_or(0.0, |at| at.duration_since(start).as_secs_f64());
        let Some(payload) = payload else {
            metrics.record(None, outcome, secs);
            return;
        };
        for (i, m) in payload.messages().iter().enumerate() {
            let kept = keep.and_then(|k| k.get(i)).copied().unwrap_or(true);
            let o = if kept { outcome } else { Outcome::Denied };
            metrics.record(m.method(), o, secs);
        }
    }
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

/// The answer to a request for a session its caller may not use: 404, which tells an MCP
/// client to initialize a new session. A session of another caller gets the answer servers
/// give for a session that does not exist, so nothing about it is revealed; an evicted one
/// is told why.
fn session_refused(
    clients: &clients::ClientTable,
    refusal: clients::Refusal,
    id: Option<&Value>,
) -> Response<Body> {
    match refusal {
        clients::Refusal::NotOwner => {
            tracing::warn!("refused a session opened by another caller")
        }
        clients::Refusal::Evicted => {
            tracing::info!("refused a session evicted from the full session table")
        }
    }
    let msg = refusal.message(clients.capacity());
    error(StatusCode::NOT_FOUND, id, code::INVALID_REQUEST, &msg)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intercept::StaticToolFilter;
    use http_body_util::{BodyExt, Full};
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
