//! The record of one HTTP request as the request path fills it: [`Recording`] notes the
//! decision the decide stage took on each observed message, when the request went to the server
//! and how that ended; [`ObservedBody`] keeps the first bytes of the answer and hands the
//! complete record to the [`Observer`] when the answer ends (or is dropped).

use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Body;
use bytes::Bytes;
use http::Response;
use http_body::Frame;

use super::trace::{TraceContext, parse_traceparent};
use super::{Observer, observed};
use crate::identity::Identity;
use crate::intercept::{ClientInfo, Decision, DecisionNote, Filtered, Transport, Verdict};
use crate::jsonrpc::{Kind, Message};

/// What filtering did to each list answer of a request, by the request's id key
/// ([`crate::jsonrpc::id_key`]): filled by the rewriter as the answer streams, read by the
/// worker when the record is observed.
pub type ListNotes = Arc<parking_lot::Mutex<Vec<(String, Filtered)>>>;

/// How much of the answer is kept to tell a JSON-RPC error from a result.
const ANSWER_CAPTURE_BYTES: usize = 64 * 1024;

/// One observed message of a request.
#[derive(Debug)]
pub(crate) struct Event {
    /// Its index in the batch (0 for a single message).
    pub(crate) index: usize,
    /// Refused here (not forwarded).
    pub(crate) denied: bool,
    /// The JSON-RPC error code of the refusal.
    pub(crate) code: Option<i64>,
    /// The refusal's message, when the interceptor gave no reasons.
    pub(crate) message: Option<String>,
    pub(crate) note: DecisionNote,
    pub(crate) policy: Duration,
}

impl Event {
    /// The observed side of the decision on message `index`.
    fn of(index: usize, decision: &mut Decision) -> Event {
        let note = std::mem::take(&mut decision.note);
        let (denied, code, message) = match &decision.verdict {
            Verdict::Allow => (false, None, None),
            Verdict::Deny { code, message, .. } => (
                true,
                Some(*code),
                note.reasons.is_empty().then(|| message.clone()),
            ),
        };
        Event {
            index,
            denied,
            code,
            message,
            note,
            policy: decision.took,
        }
    }
}

/// How the request ended, as far as the proxy saw it.
#[derive(Debug, Default)]
pub(crate) enum End {
    /// Not forwarded (yet): every event was denied, or the client went away.
    #[default]
    NotForwarded,
    /// The server could not be reached, or did not answer in time; the status the client got.
    UpstreamFailed(Option<u16>),
    /// The answer the client got.
    Answered(Answer),
}

#[derive(Debug, Default)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) sse: bool,
    /// Whether the request reached the server.
    pub(crate) forwarded: bool,
    pub(crate) frames: Vec<Bytes>,
    pub(crate) captured: usize,
    pub(crate) truncated: bool,
    /// The body was read to its end.
    pub(crate) complete: bool,
}

/// The record of one HTTP request: one observation per observed message.
#[derive(Debug)]
pub(crate) struct Record {
    pub(crate) time: SystemTime,
    pub(crate) start: Instant,
    pub(crate) total: Duration,
    pub(crate) upstream: Option<Duration>,
    pub(crate) body: Bytes,
    pub(crate) single: bool,
    pub(crate) transport: Transport,
    pub(crate) session: Option<String>,
    pub(crate) identity: Option<Arc<Identity>>,
    pub(crate) client: Option<Arc<ClientInfo>>,
    /// The request's trace context (the caller's trace id even when spans are off).
    pub(crate) trace: Option<TraceContext>,
    pub(crate) events: Vec<Event>,
    /// What the filtering of list answers did, when the request listed.
    pub(crate) lists: Option<ListNotes>,
    pub(crate) end: End,
}

/// What the request path knows of a request before anything is decided.
pub struct Begin<'a> {
    pub headers: &'a http::HeaderMap,
    pub body: &'a Bytes,
    pub single: bool,
    pub transport: Transport,
    pub session: Option<&'a str>,
    pub identity: Option<&'a Arc<Identity>>,
    pub client: Option<&'a Arc<ClientInfo>>,
    pub start: Instant,
}

/// The record of one request as the proxy handles it; does nothing when no consumer is on.
#[derive(Default)]
pub struct Recording {
    observer: Option<Arc<Observer>>,
    state: Option<Box<Record>>,
    forwarded_at: Option<Instant>,
    failed: bool,
    /// The `traceparent` header the request came with.
    incoming: Option<(u128, u64, u8)>,
}

impl Recording {
    /// Starts the record of a request (nothing when `observer` is `None`).
    pub fn begin(observer: Option<&Arc<Observer>>, b: Begin<'_>) -> Recording {
        let Some(observer) = observer else {
            return Recording::default();
        };
        let start = b.start;
        Recording {
            observer: Some(Arc::clone(observer)),
            state: Some(Box::new(Record {
                time: SystemTime::now()
                    .checked_sub(start.elapsed())
                    .unwrap_or_else(SystemTime::now),
                start,
                total: Duration::ZERO,
                upstream: None,
                body: b.body.clone(),
                single: b.single,
                transport: b.transport,
                session: b.session.map(str::to_owned),
                identity: b.identity.cloned(),
                client: b.client.cloned(),
                trace: None,
                events: Vec::new(),
                lists: None,
                end: End::NotForwarded,
            })),
            forwarded_at: None,
            failed: false,
            incoming: b
                .headers
                .get("traceparent")
                .and_then(|v| v.to_str().ok())
                .and_then(parse_traceparent),
        }
    }

    /// Observes the decisions on the messages of the body (`decisions[i]` on `msgs[i]`): each
    /// observed request becomes an event; its note is taken, the verdict left to the proxy. A
    /// request with nothing observed records nothing.
    pub fn decided(&mut self, msgs: &[Message], decisions: &mut [Decision]) {
        let Some(record) = &mut self.state else {
            return;
        };
        for (i, (m, d)) in msgs.iter().zip(decisions.iter_mut()).enumerate() {
            if m.kind != Kind::Request || !observed(m.mcp) {
                continue;
            }
            if record.trace.is_none() {
                let spans = self.observer.as_ref().is_some_and(|o| o.spans);
                let parent = self.incoming.or_else(|| meta_traceparent(m));
                record.trace = match (spans, parent) {
                    (true, p) => Some(TraceContext::new(p)),
                    (false, Some(p)) => Some(TraceContext::observed(p)),
                    (false, None) => None,
                };
            }
            record.events.push(Event::of(i, d));
        }
        if record.events.is_empty() {
            self.state = None;
            self.observer = None;
        }
    }

    /// Where the rewriter notes what it hides from the lists this request asks for; `None`
    /// when nothing of the request is observed.
    pub fn list_notes(&mut self) -> Option<ListNotes> {
        let record = self.state.as_mut()?;
        Some(Arc::clone(
            record.lists.get_or_insert_with(ListNotes::default),
        ))
    }

    /// Whether anything of this request is observed.
    pub fn active(&self) -> bool {
        self.state.is_some()
    }

    /// Puts the request's trace context on the request to the MCP server, when spans are
    /// exported (the sidecar's span becomes the server's parent).
    pub fn propagate(&self, headers: &mut http::HeaderMap) {
        if let (Some(o), Some(r)) = (&self.observer, &self.state)
            && o.spans
            && let Some(t) = &r.trace
            && let Ok(v) = http::HeaderValue::from_str(&t.traceparent())
        {
            headers.insert("traceparent", v);
        }
    }

    /// The request goes to the server now.
    pub fn forwarding(&mut self) {
        if self.state.is_some() {
            self.forwarded_at = Some(Instant::now());
        }
    }

    /// The server could not be reached or did not answer in time.
    pub fn upstream_failed(&mut self) {
        self.failed = true;
    }

    /// Wraps the response so that the record is completed when its body ends (or is dropped).
    pub fn wrap(mut self, resp: Response<Body>) -> Response<Body> {
        let (Some(observer), Some(mut record)) = (self.observer.take(), self.state.take()) else {
            return resp;
        };
        record.upstream = self.forwarded_at.map(|t| t.elapsed());
        record.end = if self.failed {
            End::UpstreamFailed(Some(resp.status().as_u16()))
        } else {
            End::Answered(Answer {
                status: resp.status().as_u16(),
                sse: is_sse(resp.headers()),
                forwarded: self.forwarded_at.is_some(),
                ..Answer::default()
            })
        };
        let (parts, body) = resp.into_parts();
        let body = ObservedBody {
            inner: body,
            record: Some(record),
            observer,
        };
        Response::from_parts(parts, Body::new(body))
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        if let (Some(observer), Some(mut record)) = (self.observer.take(), self.state.take())
            && !record.events.is_empty()
        {
            record.total = record.start.elapsed();
            record.upstream = self.forwarded_at.map(|t| t.elapsed());
            if self.failed {
                record.end = End::UpstreamFailed(None);
            }
            observer.submit(record);
        }
    }
}

/// `params._meta.traceparent` of a message (the MCP convention for trace context in a body).
fn meta_traceparent(msg: &Message) -> Option<(u128, u64, u8)> {
    msg.params()?
        .get("_meta")?
        .get("traceparent")?
        .as_str()
        .and_then(parse_traceparent)
}

fn is_sse(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("text/event-stream"))
}

/// A response body that passes every frame through, keeps the first bytes of the answer, and
/// hands the record to the observer when it ends or is dropped.
struct ObservedBody {
    inner: Body,
    record: Option<Box<Record>>,
    observer: Arc<Observer>,
}

impl http_body::Body for ObservedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        let polled = std::pin::Pin::new(&mut this.inner).poll_frame(cx);
        if let Some(record) = &mut this.record
            && let End::Answered(a) = &mut record.end
        {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref()
                        && !a.truncated
                    {
                        if a.captured + data.len() <= ANSWER_CAPTURE_BYTES {
                            a.captured += data.len();
                            a.frames.push(data.clone());
                        } else {
                            a.truncated = true;
                        }
                    }
                }
                Poll::Ready(None) => a.complete = true,
                _ => {}
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ObservedBody {
    fn drop(&mut self) {
        if let Some(mut record) = self.record.take() {
            record.total = record.start.elapsed();
            self.observer.submit(record);
        }
    }
}
