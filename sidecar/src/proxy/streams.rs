//! The requests without a body: GET and DELETE on the Streamable HTTP endpoint, passed through
//! (a GET stream's answers filtered by their shape), and `GET /sse` of the older transport,
//! whose stream carries the answers to the POSTs of its session.

use std::sync::Arc;

use axum::body::Body;
use bytes::Bytes;
use http::header;
use http::request::Parts;
use http::{Method, Response};

use super::forward::answer;
use super::rewrite::{Rewriter, SseRewriteBody};
use super::{
    SESSION_HEADER, caller, clients, is_content_type, legacy, session_refused, upstream_error,
};
use crate::intercept::{Interceptor, Transport};
use crate::upstream::{Upstream, UpstreamBody, UpstreamError, strip_hop_by_hop};

/// The stage for streams.
pub(super) struct Streams {
    pub(super) upstream: Upstream,
    pub(super) interceptor: Arc<dyn Interceptor>,
    pub(super) sessions: Arc<legacy::Sessions>,
    pub(super) clients: Arc<clients::ClientTable>,
    pub(super) max_list_bytes: usize,
}

impl Streams {
    /// Whether `path` is the message endpoint of an open session of the older transport.
    pub(super) fn is_message_path(&self, path: &str) -> bool {
        self.sessions.is_message_path(path)
    }

    /// GET and DELETE on the Streamable HTTP endpoint: passed through; a GET stream's answers
    /// are filtered by their shape (the requests they answer were never seen here, e.g. on
    /// resumption).
    pub(super) async fn pass(&self, parts: Parts) -> Response<Body> {
        let identity = caller(&parts.extensions);
        let session = parts
            .headers
            .get(SESSION_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if let Some(sid) = &session {
            if let Err(refusal) = self.clients.may_use(sid, identity.as_deref()) {
                return session_refused(&self.clients, refusal, None);
            }
            if parts.method == Method::DELETE {
                self.clients.forget(sid);
            }
        }
        match self.send_bodyless(parts).await {
            Ok(resp) => {
                let rewriter = Rewriter::new(
                    Arc::clone(&self.interceptor),
                    Transport::StreamableHttp,
                    session,
                    Box::new(Vec::new()),
                    true,
                )
                .with_identity(identity);
                answer(resp, rewriter, Vec::new(), self.max_list_bytes).await
            }
            Err(e) => upstream_error(&e, None),
        }
    }

    /// Forwards a request that has no body (GET, DELETE) as the client sent it.
    async fn send_bodyless(&self, parts: Parts) -> Result<Response<UpstreamBody>, UpstreamError> {
        self.upstream
            .send(
                parts.method,
                parts.uri.path_and_query(),
                parts.headers,
                Bytes::new(),
            )
            .await
    }

    /// `GET /sse` of the older transport.
    pub(super) async fn sse_stream(&self, parts: Parts) -> Response<Body> {
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
        let stream = self.sessions.open(
            self.upstream.authority().to_owned(),
            clients::Owner::of(identity.as_deref()),
        );
        let rewriter = Rewriter::new(
            Arc::clone(&self.interceptor),
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
