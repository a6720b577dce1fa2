//! The stack's second stage, after authentication: an MCP POST read within its limits, parsed
//! into JSON-RPC messages, its mirrored headers checked against the body, and its MCP session
//! resolved (the owner checked, the client looked up). What comes out is the [`Exchange`] every
//! later stage works on; what is refused here is answered here.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::header::{self, HeaderMap};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use serde_json::Value;

use super::headers::check_mirrored_headers;
use super::rewrite::BoxError;
use super::{SESSION_HEADER, caller, clients, error, legacy};
use crate::identity::Identity;
use crate::intercept::{ClientInfo, Context, Transport};
use crate::jsonrpc::{Payload, code};
use crate::metrics::Outcome;
use mcp_guard_policy::catalog::ToolCatalog;

/// One MCP POST as the later stages see it: the request, its messages and whose they are.
pub(super) struct Exchange {
    pub(super) parts: http::request::Parts,
    pub(super) body: Bytes,
    pub(super) payload: Payload,
    pub(super) transport: Transport,
    /// The older transport's session: the GET stream the answers travel on.
    pub(super) legacy: Option<Arc<legacy::Session>>,
    /// The endpoint the client posted to (on the older transport, the session's name).
    pub(super) endpoint: String,
    /// The `Mcp-Session-Id` the request carries.
    pub(super) session_id: Option<String>,
    pub(super) identity: Option<Arc<Identity>>,
    pub(super) client: Option<Arc<ClientInfo>>,
}

impl Exchange {
    /// The id of a single request (a batch answers per message).
    pub(super) fn single_id(&self) -> Option<&Value> {
        match &self.payload {
            Payload::Single(m) => m.id(),
            Payload::Batch(_) => None,
        }
    }

    /// The session as the interceptor and the observers name it.
    pub(super) fn session(&self) -> Option<&str> {
        match self.transport {
            Transport::StreamableHttp => self.session_id.as_deref(),
            Transport::Sse => Some(self.endpoint.as_str()),
        }
    }

    /// What the interceptor knows of this request.
    pub(super) fn context(&self) -> Context<'_> {
        Context {
            transport: self.transport,
            session_id: self.session(),
            identity: self.identity.as_deref(),
            client: self.client.as_deref(),
        }
    }
}

/// A POST refused before any decision: the answer, and how the request metrics count its
/// messages (`payload` is `None` when the body could not be read or parsed).
pub(super) struct Refused {
    pub(super) answer: Response<Body>,
    pub(super) payload: Option<Payload>,
    pub(super) outcome: Outcome,
}

impl Refused {
    fn unread(answer: Response<Body>) -> Refused {
        Refused {
            answer,
            payload: None,
            outcome: Outcome::Invalid,
        }
    }
}

/// The parse stage.
pub(super) struct Parse {
    pub(super) max_body_bytes: usize,
    pub(super) body_timeout: Duration,
    pub(super) sessions: Arc<legacy::Sessions>,
    pub(super) clients: Arc<clients::ClientTable>,
    /// The server's tool definitions: what a call mirrors into `Mcp-Param-*` headers.
    pub(super) catalog: Arc<ToolCatalog>,
}

impl Parse {
    /// Reads, parses and places one POST.
    pub(super) async fn exchange<B>(
        &self,
        req: Request<B>,
        transport: Transport,
    ) -> Result<Exchange, Refused>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let (parts, body) = req.into_parts();
        let body = self
            .read_body(body, &parts.headers)
            .await
            .map_err(Refused::unread)?;
        let payload = Payload::parse(&body).map_err(|e| {
            Refused::unread(error(
                StatusCode::BAD_REQUEST,
                None,
                e.code(),
                &e.to_string(),
            ))
        })?;
        let mut x = Exchange {
            endpoint: parts
                .uri
                .path_and_query()
                .map(|p| p.as_str().to_owned())
                .unwrap_or_default(),
            session_id: parts
                .headers
                .get(SESSION_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            identity: caller(&parts.extensions),
            parts,
            body,
            payload,
            transport,
            legacy: None,
            client: None,
        };
        if let Err(msg) = check_mirrored_headers(&x.parts.headers, &x.payload, &self.catalog) {
            let answer = error(
                StatusCode::BAD_REQUEST,
                x.single_id(),
                code::HEADER_MISMATCH,
                &msg,
            );
            return Err(x.refused(answer, Outcome::Invalid));
        }
        if let Some((answer, outcome)) = self.session(&mut x) {
            return Err(x.refused(answer, outcome));
        }
        x.client = self
            .clients
            .lookup(&x.payload, &x.parts.headers, x.session_id.as_deref());
        Ok(x)
    }

    /// Places the request in its MCP session: on the older transport the session is the
    /// endpoint the client posts to; on either, only the caller who opened it may use it.
    /// Returns the refusal, if the request is refused.
    fn session(&self, x: &mut Exchange) -> Option<(Response<Body>, Outcome)> {
        if x.transport == Transport::Sse {
            let Some(s) = self.sessions.get(&x.endpoint) else {
                let msg = format!("no open SSE session for {}", x.endpoint);
                let answer = error(
                    StatusCode::NOT_FOUND,
                    x.single_id(),
                    code::INVALID_REQUEST,
                    &msg,
                );
                return Some((answer, Outcome::Invalid));
            };
            x.legacy = Some(s);
        }
        let identity = x.identity.as_deref();
        let refusal = match (&x.legacy, &x.session_id) {
            (Some(s), _) => (!s.may_use(identity)).then_some(clients::Refusal::NotOwner),
            (None, Some(sid)) => self.clients.may_use(sid, identity).err(),
            (None, None) => None,
        };
        refusal.map(|r| {
            let answer = super::session_refused(&self.clients, r, x.single_id());
            (answer, Outcome::Denied)
        })
    }

    /// Reads a request body up to the limit, within the time limit.
    async fn read_body<B>(&self, body: B, headers: &HeaderMap) -> Result<Bytes, Response<Body>>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let max = self.max_body_bytes;
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
        match tokio::time::timeout(self.body_timeout, collect).await {
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
}

impl Exchange {
    /// This request refused with `answer`, its messages counted as `outcome`.
    fn refused(self, answer: Response<Body>, outcome: Outcome) -> Refused {
        Refused {
            answer,
            payload: Some(self.payload),
            outcome,
        }
    }
}
