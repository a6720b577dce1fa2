//! The stack's last stage: what the [`Decision`] keeps goes to the MCP server on loopback (the
//! trace context put on it), and the server's answer streams back through the rewriter, merged
//! with the sidecar's own answers to the denied requests. What nothing is left to forward of is
//! answered here; on the older transport, answers travel on the session's GET stream.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use bytes::Bytes;
use futures_util::StreamExt as _;
use http::header;
use http::{Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, BodyStream, Limited, StreamBody};
use serde_json::Value;

use super::decide::Decision;
use super::parse::Exchange;
use super::rewrite::{Rewriter, SseRewriteBody};
use super::{
    SESSION_HEADER, accepted, clients, error, is_content_type, json_response, upstream_error,
};
use crate::intercept::Interceptor;
use crate::jsonrpc::{self, Payload, code};
use crate::metrics::Outcome;
use crate::observe::Recording;
use crate::sse;
use crate::upstream::{Upstream, UpstreamBody, strip_hop_by_hop};
use mcp_guard_policy::mcp;

/// How a forwarded exchange ended: the answer, how the request metrics count the messages that
/// went on, and when the answer's headers were ready.
pub(super) struct Done {
    pub(super) answer: Response<Body>,
    pub(super) outcome: Outcome,
    pub(super) at: Instant,
}

impl Done {
    fn now(answer: Response<Body>, outcome: Outcome) -> Done {
        Done {
            answer,
            outcome,
            at: Instant::now(),
        }
    }
}

/// The forward stage.
pub(super) struct Forward {
    pub(super) upstream: Upstream,
    pub(super) interceptor: Arc<dyn Interceptor>,
    pub(super) clients: Arc<clients::ClientTable>,
    pub(super) max_list_bytes: usize,
}

impl Forward {
    /// Forwards what `d` keeps of `x` and answers the client; `rec` notes when the request went
    /// out and whether the server failed.
    pub(super) async fn forward(
        &self,
        x: &mut Exchange,
        mut d: Decision,
        rec: &mut Recording,
    ) -> Done {
        if let Some(session) = &x.legacy {
            // Answers on the older transport travel on the GET stream, the sidecar's own too.
            for (id, list) in &d.pending {
                session.expect(id.clone(), *list);
            }
            for err in &d.denied {
                if !session
                    .inject(sse::message_event(err.to_string().as_bytes()))
                    .await
                {
                    tracing::warn!(
                        endpoint = x.endpoint,
                        "SSE stream closed before a denial could be sent"
                    );
                }
            }
            if d.remaining == 0 {
                return Done::now(accepted(), Outcome::Ok);
            }
        } else if d.remaining == 0 {
            return Done::now(answer_here(&x.payload, d), Outcome::Ok);
        }
        let body = match &d.forward {
            None => x.body.clone(),
            Some(msgs) if msgs.len() == 1 && matches!(x.payload, Payload::Single(_)) => {
                jsonrpc::to_body(&msgs[0], x.body.len())
            }
            Some(msgs) => jsonrpc::to_body(&Value::Array(msgs.clone()), x.body.len()),
        };
        let mut headers = std::mem::take(&mut x.parts.headers);
        rec.propagate(&mut headers);
        rec.forwarding();
        let method = x.parts.method.clone();
        let sent = self
            .upstream
            .send(method, x.parts.uri.path_and_query(), headers, body)
            .await;
        let resp = match sent {
            Ok(r) => r,
            Err(e) => {
                rec.upstream_failed();
                return Done::now(upstream_error(&e, x.single_id()), Outcome::UpstreamError);
            }
        };
        let at = Instant::now();
        self.remember_session(x, &resp);
        let rewriter = self.rewriter(x, &mut d, rec);
        let denied = if x.legacy.is_some() {
            Vec::new()
        } else {
            d.denied
        };
        let answer = answer(resp, rewriter, denied, self.max_list_bytes).await;
        Done {
            answer,
            outcome: Outcome::Ok,
            at,
        }
    }

    /// The session an `initialize` opened, remembered with its client and its owner.
    fn remember_session(&self, x: &Exchange, resp: &Response<UpstreamBody>) {
        if let (Some(c), Payload::Single(m)) = (&x.client, &x.payload)
            && m.mcp == mcp::Method::Initialize
            && let Some(sid) = resp
                .headers()
                .get(SESSION_HEADER)
                .and_then(|v| v.to_str().ok())
        {
            let owner = clients::Owner::of(x.identity.as_deref());
            self.clients.remember(sid, Arc::clone(c), owner);
        }
    }

    /// The rewriter of this exchange's answer: the lists it asked for filtered for its caller,
    /// what filtering hid noted for the observers.
    fn rewriter(&self, x: &Exchange, d: &mut Decision, rec: &mut Recording) -> Rewriter {
        let notes = if d.pending.is_empty() {
            None
        } else {
            rec.list_notes()
        };
        Rewriter::new(
            Arc::clone(&self.interceptor),
            x.transport,
            x.session_id.clone(),
            Box::new(std::mem::take(&mut d.pending)),
            false,
        )
        .with_identity(x.identity.clone())
        .with_audit(notes)
        .with_task_calls(std::mem::take(&mut d.task_calls))
    }
}

/// The answer when nothing is left to forward: the refusals, or 429 for a single message a rate
/// limit refused, or 202 when only notifications were denied.
fn answer_here(payload: &Payload, d: Decision) -> Response<Body> {
    if let Some((secs, err)) = d.limited {
        return too_many_requests(secs, &err);
    }
    match payload {
        Payload::Single(_) => match d.denied.into_iter().next() {
            Some(err) => json_response(StatusCode::OK, Bytes::from(err.to_string())),
            None => accepted(),
        },
        Payload::Batch(_) => {
            let all = Value::Array(d.denied).to_string();
            json_response(StatusCode::OK, Bytes::from(all))
        }
    }
}

/// Streams the server's answer back, rewriting what must change and merging in the answers
/// to denied requests of a batch.
pub(super) async fn answer(
    resp: Response<UpstreamBody>,
    mut rewriter: Rewriter,
    denied: Vec<Value>,
    max_list_bytes: usize,
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
        let bytes = match Limited::new(body, max_list_bytes).collect().await {
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
    Response::from_parts(parts, whole_or_streamed(body).await)
}

/// How much of a plain (not SSE) answer is read before the client gets it: see
/// [`whole_or_streamed`].
const WHOLE_ANSWER_BYTES: usize = 64 * 1024;

/// The server's plain answer as the client gets it: read to its end when it ends within
/// [`WHOLE_ANSWER_BYTES`], so that it goes out whole, with its length, in one write. Streamed
/// as it arrives, an answer the server sends chunked costs a write for its data and another for
/// the end of the chunked encoding, each after a wake-up (the end may arrive in a later read
/// of the server's connection): a system call and a context switch more per request. A longer
/// answer, one with trailers, or one that fails goes on streaming from where reading stopped,
/// its failure included, as it would have without the read.
async fn whole_or_streamed<B>(mut body: B) -> Body
where
    B: http_body::Body<Data = Bytes, Error = hyper::Error> + Send + Unpin + 'static,
{
    let mut read: Vec<Bytes> = Vec::new();
    let mut len = 0;
    let stopped = loop {
        match body.frame().await {
            None => return Body::from(joined(read)),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    len += data.len();
                    read.push(data);
                    if len > WHOLE_ANSWER_BYTES {
                        break None;
                    }
                }
                Err(trailers) => break Some(Ok(trailers)),
            },
            Some(Err(e)) => break Some(Err(e)),
        }
    };
    let failed = matches!(stopped, Some(Err(_)));
    let head = read.into_iter().map(|d| Ok(Frame::data(d))).chain(stopped);
    let head = futures_util::stream::iter(head);
    if failed {
        return Body::new(StreamBody::new(head));
    }
    Body::new(StreamBody::new(head.chain(BodyStream::new(body))))
}

/// The pieces of an answer as one (a single piece, the usual case, without a copy).
fn joined(mut pieces: Vec<Bytes>) -> Bytes {
    match pieces.len() {
        1 => pieces.pop().unwrap_or_default(),
        _ => Bytes::from(pieces.concat()),
    }
}

/// HTTP 429 with `Retry-After`, carrying the JSON-RPC error.
fn too_many_requests(secs: u64, err: &Value) -> Response<Body> {
    let mut resp = json_response(StatusCode::TOO_MANY_REQUESTS, Bytes::from(err.to_string()));
    resp.headers_mut()
        .insert(header::RETRY_AFTER, http::HeaderValue::from(secs));
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
    use http_body::Body as _;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The body of the answer a server on loopback writes, `pieces` one after the other with a
    /// pause between them (each its own TCP segment), then closes the connection.
    async fn incoming(pieces: Vec<Vec<u8>>) -> hyper::body::Incoming {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            for p in pieces {
                s.write_all(&p).await.unwrap();
                s.flush().await.unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        });
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let io = hyper_util::rt::TokioIo::new(stream);
        let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        let req = http::Request::get("/").body(http_body_util::Empty::<Bytes>::new());
        send.send_request(req.unwrap()).await.unwrap().into_body()
    }

    fn chunk(data: &[u8]) -> Vec<u8> {
        let mut c = format!("{:x}\r\n", data.len()).into_bytes();
        c.extend_from_slice(data);
        c.extend_from_slice(b"\r\n");
        c
    }

    const HEAD: &[u8] =
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";

    #[tokio::test]
    async fn a_chunked_answer_goes_out_whole_with_its_length() {
        let (a, b) = (br#"{"jsonrpc":"2.0","id":1,"#, br#""result":{}}"#);
        let body = incoming(vec![
            HEAD.to_vec(),
            chunk(a),
            chunk(b),
            b"0\r\n\r\n".to_vec(),
        ])
        .await;
        let out = whole_or_streamed(body).await;
        let len = (a.len() + b.len()) as u64;
        assert_eq!(
            out.size_hint().exact(),
            Some(len),
            "sent with a Content-Length"
        );
        let bytes = out.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], br#"{"jsonrpc":"2.0","id":1,"result":{}}"#);
    }

    #[tokio::test]
    async fn a_long_answer_streams_on_and_arrives_entire() {
        let piece = vec![b'x'; 40 * 1024];
        let mut pieces = vec![HEAD.to_vec()];
        pieces.extend((0..4).map(|_| chunk(&piece)));
        pieces.push(b"0\r\n\r\n".to_vec());
        let out = whole_or_streamed(incoming(pieces).await).await;
        assert_eq!(out.size_hint().exact(), None, "streamed, not held");
        let bytes = out.collect().await.unwrap().to_bytes();
        assert_eq!(bytes.len(), 4 * piece.len());
    }

    #[tokio::test]
    async fn an_answer_cut_short_reaches_the_client_cut() {
        let a = br#"{"jsonrpc":"2.0","id":1,"#;
        // The server dies after one chunk: the client must see the answer fail, not end.
        let out = whole_or_streamed(incoming(vec![HEAD.to_vec(), chunk(a)]).await).await;
        assert!(
            out.collect().await.is_err(),
            "a cut answer must not look complete"
        );
    }
}
