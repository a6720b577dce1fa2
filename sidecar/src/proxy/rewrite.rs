//! Rewriting the server's answers: list results are filtered, everything else passes through
//! byte for byte. SSE bodies are rewritten event by event as they stream, never buffered whole.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use bytes::Bytes;
use http_body::{Body, Frame};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::identity::Identity;
use crate::intercept::{Context, Filtered, Interceptor, Transport};
use crate::jsonrpc::{self, code, id_key};
use crate::list_answer;
use crate::sse::{self, EventSplitter};
use mcp_guard_policy::mcp::List;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Where the method of an answered request is looked up.
pub trait PendingRequests: Send {
    /// Takes the method of the request with this id, if it awaits an answer that is rewritten.
    fn take(&mut self, id: &str) -> Option<List>;
    fn is_empty(&self) -> bool;
}

/// The requests of one POST whose answers are rewritten (usually none or one).
impl PendingRequests for Vec<(String, List)> {
    fn take(&mut self, id: &str) -> Option<List> {
        let i = self.iter().position(|(k, _)| k == id)?;
        Some(self.swap_remove(i).1)
    }
    fn is_empty(&self) -> bool {
        Vec::is_empty(self)
    }
}

/// Hook for the `endpoint` event of the older SSE transport: gets the announced URL, returns the
/// data to send instead.
pub type EndpointHook = Box<dyn FnMut(&str) -> String + Send>;

/// Rewrites the answers of one HTTP exchange.
pub struct Rewriter {
    interceptor: Arc<dyn Interceptor>,
    transport: Transport,
    session_id: Option<String>,
    /// The caller the answers are for; lists are filtered for them.
    identity: Option<Arc<Identity>>,
    pending: Box<dyn PendingRequests>,
    /// Look at every answer, even with no list request pending (GET streams): answers whose
    /// request was not seen are recognised by their shape.
    sniff: bool,
    endpoint: Option<EndpointHook>,
    /// Where what each list filtering did is noted for the audit trail, by request id.
    audit: Option<crate::observe::ListNotes>,
    /// Task-augmented `tools/call` requests awaiting their answer: (id key, tool).
    task_calls: Vec<(String, String)>,
}

impl Rewriter {
    pub fn new(
        interceptor: Arc<dyn Interceptor>,
        transport: Transport,
        session_id: Option<String>,
        pending: Box<dyn PendingRequests>,
        sniff: bool,
    ) -> Self {
        Rewriter {
            interceptor,
            transport,
            session_id,
            identity: None,
            pending,
            sniff,
            endpoint: None,
            audit: None,
            task_calls: Vec::new(),
        }
    }

    /// Watches the answers to these task-augmented calls (id key, tool) for the task each
    /// creates, and tells the interceptor ([`Interceptor::task_created`]).
    pub fn with_task_calls(mut self, calls: Vec<(String, String)>) -> Self {
        self.task_calls = calls;
        self
    }

    /// Notes what each list filtering does in `notes` (the audit record of the request).
    pub fn with_audit(mut self, notes: Option<crate::observe::ListNotes>) -> Self {
        self.audit = notes;
        self
    }

    pub fn with_identity(mut self, identity: Option<Arc<Identity>>) -> Self {
        self.identity = identity;
        self
    }

    pub fn with_endpoint_hook(mut self, hook: EndpointHook) -> Self {
        self.endpoint = Some(hook);
        self
    }

    /// Whether any answer of this exchange may need rewriting.
    pub fn active(&self) -> bool {
        self.sniff
            || !self.pending.is_empty()
            || self.endpoint.is_some()
            || !self.task_calls.is_empty()
    }

    /// Rewrites one JSON-RPC message in place; returns whether it changed.
    fn rewrite_message(&mut self, msg: &mut Value) -> bool {
        let Some(obj) = msg.as_object_mut() else {
            return false;
        };
        let answered = obj
            .get("id")
            .filter(|_| obj.contains_key("result") || obj.contains_key("error"))
            .map(id_key);
        if let Some(key) = &answered
            && let Some(i) = self.task_calls.iter().position(|(k, _)| k == key)
        {
            let (_, tool) = self.task_calls.swap_remove(i);
            if let Some(task) = obj
                .get("result")
                .and_then(|r| r.get("task"))
                .and_then(|t| t.get("taskId"))
                .and_then(Value::as_str)
            {
                self.interceptor.task_created(task, &tool);
            }
            return false;
        }
        let known = answered.and_then(|key| self.pending.take(&key));
        // An answer whose id matches no list request still goes by its shape: a server that
        // mislabels an answer must not carry a hidden item past the filter.
        let method = match (known, obj.get("result")) {
            (Some(m), _) => Some(m),
            (None, Some(r)) => List::by_shape(r),
            _ => None,
        };
        let Some(method) = method else {
            return false;
        };
        let ctx = self.context();
        let Some(result) = obj.get_mut("result") else {
            return false;
        };
        let filtered = crate::intercept::filter_result(&*self.interceptor, &ctx, method, result);
        let changed = filtered.changed();
        if let (Some(notes), Some(id)) = (&self.audit, obj.get("id")) {
            notes.lock().push((id_key(id), filtered));
        }
        changed
    }

    fn context(&self) -> Context<'_> {
        Context {
            transport: self.transport,
            session_id: self.session_id.as_deref(),
            identity: self.identity.as_deref(),
            client: None,
        }
    }

    /// Rewrites a JSON body (one message or a batch). `None` when nothing changed.
    /// An answer to a filtered list that cannot be read is replaced by an error: fail closed.
    ///
    /// A single answer is read without parsing its items ([`list_answer::Read`]); anything
    /// else (a batch, a task's answer awaited, an odd shape) is parsed whole, to the same end.
    pub fn rewrite_json(&mut self, body: &[u8]) -> Option<Bytes> {
        if self.task_calls.is_empty()
            && let Some(read) = list_answer::Read::of(body)
        {
            return self.rewrite_read(&read);
        }
        self.rewrite_parsed(body)
    }

    /// [`Self::rewrite_message`] on an answer read by [`list_answer::Read`].
    fn rewrite_read(&mut self, read: &list_answer::Read<'_>) -> Option<Bytes> {
        let answered = read.answered();
        let known = answered.as_ref().and_then(|key| self.pending.take(key));
        let list = known.or_else(|| read.by_shape())?;
        if !read.has_result() {
            return None;
        }
        // A result without the list is not handed to the filters.
        let (filtered, out) = match read.answer(list) {
            Some(mut answer) => {
                let filtered = self.interceptor.filter_list(&self.context(), &mut answer);
                let out = filtered.changed().then(|| read.write(&answer));
                (filtered, out)
            }
            None => (Filtered::default(), None),
        };
        if let (Some(notes), Some(key)) = (&self.audit, answered) {
            notes.lock().push((key, filtered));
        }
        out.map(Bytes::from)
    }

    /// [`Self::rewrite_json`] on the message parsed whole.
    #[doc(hidden)]
    pub fn rewrite_parsed(&mut self, body: &[u8]) -> Option<Bytes> {
        let mut v: Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => {
                if self.pending.is_empty() {
                    return None;
                }
                tracing::warn!(error = %e, "the MCP server's answer to a filtered list is not JSON; refused");
                let err = jsonrpc::error_response(
                    None,
                    code::UPSTREAM_UNAVAILABLE,
                    "mcp-guard could not read the MCP server's answer",
                    None,
                );
                return Some(Bytes::from(err.to_string()));
            }
        };
        let changed = match &mut v {
            Value::Array(items) => items
                .iter_mut()
                .fold(false, |acc, m| self.rewrite_message(m) | acc),
            m => self.rewrite_message(m),
        };
        changed.then(|| jsonrpc::to_body(&v, body.len()))
    }

    /// Rewrites one raw SSE event; returns it unchanged (same bytes) when nothing needs changing.
    pub fn rewrite_event(&mut self, raw: Bytes) -> Bytes {
        if !self.active() {
            return raw;
        }
        if let Some(hook) = self.endpoint.as_mut()
            && sse::event_type(&raw) == Some(b"endpoint")
        {
            let url = sse::data(&raw).unwrap_or_default();
            let new = hook(&String::from_utf8_lossy(&url));
            return if new.as_bytes() == url.as_slice() {
                raw
            } else {
                sse::replace_data(&raw, new.as_bytes())
            };
        }
        let Some(data) = sse::data(&raw) else {
            return raw;
        };
        // Only results are rewritten; skip the parse for everything that cannot hold one. A key
        // written with escapes (`"\u0072esult"` is `"result"` to every JSON reader) takes the
        // parse.
        let first = data.iter().find(|b| !b.is_ascii_whitespace());
        if !matches!(first, Some(b'{' | b'['))
            || !(contains(&data, b"\"result\"") || contains(&data, b"\\u"))
        {
            return raw;
        }
        match self.rewrite_json(&data) {
            Some(new) => sse::replace_data(&raw, &new),
            None => raw,
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// A response body that passes an SSE stream through event by event, rewriting list answers,
/// with extra events (answers the sidecar gives itself) merged in.
pub struct SseRewriteBody<B> {
    inner: B,
    splitter: EventSplitter,
    rewriter: Rewriter,
    ready: VecDeque<Bytes>,
    injected: Option<mpsc::Receiver<Bytes>>,
    inner_done: bool,
    /// Dropped with the body: for cleanup when the stream ends or the client goes away.
    _guard: Option<Box<dyn Send + Sync>>,
}

impl<B> SseRewriteBody<B> {
    pub fn new(inner: B, rewriter: Rewriter) -> Self {
        SseRewriteBody {
            inner,
            splitter: EventSplitter::default(),
            rewriter,
            ready: VecDeque::new(),
            injected: None,
            inner_done: false,
            _guard: None,
        }
    }

    /// Events to send before anything from the server.
    pub fn with_leading(mut self, events: impl IntoIterator<Item = Bytes>) -> Self {
        self.ready.extend(events);
        self
    }

    /// Events the sidecar sends on this stream later (answers to denied requests).
    pub fn with_injected(mut self, rx: mpsc::Receiver<Bytes>) -> Self {
        self.injected = Some(rx);
        self
    }

    pub fn with_guard(mut self, guard: Box<dyn Send + Sync>) -> Self {
        self._guard = Some(guard);
        self
    }
}

impl<B> Body for SseRewriteBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            if let Some(b) = this.ready.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(b))));
            }
            if let Some(rx) = this.injected.as_mut()
                && let Poll::Ready(Some(b)) = rx.poll_recv(cx)
            {
                return Poll::Ready(Some(Ok(Frame::data(b))));
            }
            if this.inner_done {
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    // Trailers have no meaning in SSE; only data frames are kept.
                    if let Ok(data) = frame.into_data() {
                        this.splitter.push(&data);
                        while let Some(event) = this.splitter.next_event() {
                            let out = this.rewriter.rewrite_event(event);
                            this.ready.push_back(out);
                        }
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    let e: BoxError = e.into();
                    tracing::warn!(error = %e, "MCP server's event stream broke off");
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(None) => {
                    this.inner_done = true;
                    let rest = this.splitter.take_rest();
                    if !rest.is_empty() {
                        let out = this.rewriter.rewrite_event(rest);
                        this.ready.push_back(out);
                    }
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intercept::{MarksPrivate, StaticToolFilter};
    use http_body_util::{BodyExt, StreamBody};
    use serde_json::json;

    fn filter() -> Arc<dyn Interceptor> {
        Arc::new(MarksPrivate(StaticToolFilter::new(&[], &["secret".into()])))
    }

    /// The rewriter of a POST that sent `tools/list` as id 1.
    fn list_request_rewriter() -> Rewriter {
        let pending: Vec<(String, List)> = vec![("1".into(), List::Tools)];
        Rewriter::new(
            filter(),
            Transport::StreamableHttp,
            None,
            Box::new(pending),
            false,
        )
    }

    fn list_answer(id: i64) -> String {
        json!({"jsonrpc":"2.0","id":id,"result":{"tools":[{"name":"echo"},{"name":"secret"}]}})
            .to_string()
    }

    #[test]
    fn known_id_is_filtered_other_answers_untouched() {
        let mut r = list_request_rewriter();
        let out = r.rewrite_json(list_answer(1).as_bytes()).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["result"]["tools"], json!([{"name":"echo"}]));
        // Not a pending id, not a list: untouched.
        let call = json!({"jsonrpc":"2.0","id":2,"result":{"content":[]}}).to_string();
        assert!(r.rewrite_json(call.as_bytes()).is_none());
    }

    /// `body` rewritten as read ([`list_answer::Read`]) and as parsed whole, by the rewriter of
    /// a `tools/list` sent as id 1: the same message to a JSON reader, the same audit notes.
    fn read_as_parsed(body: &str) -> Option<Value> {
        let notes = crate::observe::ListNotes::default();
        let out = list_request_rewriter()
            .with_audit(Some(Arc::clone(&notes)))
            .rewrite_json(body.as_bytes());
        let parsed_notes = crate::observe::ListNotes::default();
        let expected = list_request_rewriter()
            .with_audit(Some(Arc::clone(&parsed_notes)))
            .rewrite_parsed(body.as_bytes());
        let json = |b: &Option<Bytes>| {
            b.as_deref()
                .map(|b| serde_json::from_slice::<Value>(b).unwrap())
        };
        assert!(
            list_answer::same_rewrite(out.as_deref(), expected.as_deref()),
            "{body}: {out:?} and {expected:?}"
        );
        assert_eq!(*notes.lock(), *parsed_notes.lock(), "{body}");
        // Written again, a read answer is still one each reader reads alike: no member twice.
        if let (Some(_), Some(out)) = (list_answer::Read::of(body.as_bytes()), &out) {
            assert!(list_answer::Read::of(out).is_some(), "{out:?}");
        }
        json(&out)
    }

    #[test]
    fn an_answer_read_is_rewritten_as_the_answer_parsed() {
        let filtered = [
            r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"echo"},{"name":"secret"}]}}"#,
            // Spaces everywhere, the hidden tool first, last, alone; members after the list.
            " { \"id\" : 1 , \"result\" : { \"tools\" : [ {\"name\":\"secret\"} , { \"name\" : \"echo\" } ] , \"nextCursor\" : \"c\" } , \"jsonrpc\":\"2.0\" } ",
            r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"echo"},{"name":"secret"}],"cacheScope":"public"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"secret"}]}}"#,
            // Nothing hidden, but the server called the answer shared: made private.
            r#"{"jsonrpc":"2.0","id":1,"result":{"cacheScope":"public","tools":[{"name":"echo"}]}}"#,
            // Escapes in a key, in a name; an item of no name, or not an object.
            r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"secret"},{"name":"echo"}]}}"#,
            r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"title":"no name"},7,"x",[],{"name":5},{"name":"echo"}]}}"#,
            // An answer under another id, found by its shape; another list beside.
            r#"{"jsonrpc":"2.0","id":"9","result":{"prompts":[{"name":"p"}],"tools":[{"name":"secret"}]}}"#,
        ];
        for body in filtered {
            assert!(list_answer::Read::of(body.as_bytes()).is_some(), "{body}");
            let out = read_as_parsed(body).unwrap_or_else(|| panic!("not filtered: {body}"));
            assert!(!out.to_string().contains("secret"), "{out}");
        }
        let untouched = [
            r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"echo"}]}}"#,
            r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[]}}"#,
            r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"echo"}],"cacheScope":"private"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"error":{"code":-1,"message":"no"}}"#,
            r#"{"jsonrpc":"2.0","id":2,"result":{"content":[{"type":"text","text":"secret"}]}}"#,
            r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{}}"#,
        ];
        for body in untouched {
            assert!(list_answer::Read::of(body.as_bytes()).is_some(), "{body}");
            assert_eq!(read_as_parsed(body), None, "{body}");
        }
        // Shapes left to the whole parse: a member given twice, an item naming itself twice,
        // a list that is not an array, a result that is not an object, a batch.
        for body in [
            r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"secret"}]},"result":{"tools":[]}}"#,
            r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"secret","name":"echo"}]}}"#,
            r#"{"jsonrpc":"2.0","id":1,"result":{"tools":{"name":"secret"}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"result":[{"name":"secret"}]}"#,
            r#"[{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"secret"}]}}]"#,
            // What only a whole parse refuses (and with it the answer): a number out of range,
            // written with an exponent or with 309 digits, a lone surrogate. Found by the
            // `json_rewrite` fuzz target (the first, without a result).
            r#"{"idpcdpc": "2N.0", "il": 22222e32222222}"#,
            r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"echo","x":1e400}]}}"#,
            &format!(
                r#"{{"jsonrpc":"2.0","id":1,"result":{{"tools":[{{"name":"echo","x":{}}}]}}}}"#,
                "9".repeat(309)
            ),
            r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"echo","d":"\ud800"}]}}"#,
        ] {
            assert!(list_answer::Read::of(body.as_bytes()).is_none(), "{body}");
            read_as_parsed(body);
        }
        // Alike but read: a number in range, paired surrogates, 308 digits.
        for body in [
            r#"{"jsonAAAAAAAAAAAAAAerAAAAd":177777777777777777777777777777777777777777777777777777777777777777777,"result":{"t\u006fols":[{"n\u0222222222222222222222222222":"echo"}],"cacheScope":"privaerrorte"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"echo","x":1e300,"y":"2e"}]}}"#,
            r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"echo","d":"\ud83d\ude00"}]}}"#,
            &format!(
                r#"{{"jsonrpc":"2.0","id":1,"result":{{"tools":[{{"name":"echo","x":{}}}]}}}}"#,
                "9".repeat(308)
            ),
        ] {
            read_as_parsed(body);
        }
    }

    #[test]
    fn a_filtered_answer_keeps_the_servers_text_of_what_it_keeps() {
        let body = r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name": "echo" ,"description":"Says it back"},{"name":"secret"}],"nextCursor":"c"}}"#;
        let out = list_request_rewriter()
            .rewrite_json(body.as_bytes())
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out),
            r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name": "echo" ,"description":"Says it back"}],"nextCursor":"c","cacheScope":"private"}}"#
        );
    }

    #[test]
    fn a_list_answer_under_another_id_is_filtered_too() {
        // Found by the `json_rewrite` fuzz target: the client asked for the list as id 1.
        let mut r = list_request_rewriter();
        let out = r.rewrite_json(list_answer(2).as_bytes()).unwrap();
        assert!(!String::from_utf8_lossy(&out).contains("secret"));
    }

    #[test]
    fn sniffing_catches_unknown_ids() {
        let mut r = Rewriter::new(filter(), Transport::Sse, None, Box::new(Vec::new()), true);
        let ev = Bytes::from(format!(
            "id: 3\nevent: message\ndata: {}\n\n",
            list_answer(9)
        ));
        let out = r.rewrite_event(ev);
        assert!(!String::from_utf8_lossy(&out).contains("secret"));
        assert!(out.starts_with(b"id: 3\nevent: message\ndata: "));
    }

    #[test]
    fn unreadable_list_answer_fails_closed() {
        let mut r = list_request_rewriter();
        let out = r
            .rewrite_json(
                b"{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"tools\":[{\"name\":\"secret\"",
            )
            .unwrap();
        assert!(!String::from_utf8_lossy(&out).contains("secret"));
    }

    #[tokio::test]
    async fn body_streams_events_and_merges_injected() {
        let (tx, rx) = mpsc::channel(4);
        let chunks: Vec<Result<Frame<Bytes>, std::io::Error>> = vec![
            Ok(Frame::data(Bytes::from_static(b"id: p\ndata:\n\n"))),
            Ok(Frame::data(Bytes::from(format!(
                "data: {}",
                list_answer(1)
            )))),
            Ok(Frame::data(Bytes::from_static(b"\n\n"))),
        ];
        let inner = StreamBody::new(futures_util::stream::iter(chunks));
        let r = list_request_rewriter();
        tx.send(Bytes::from_static(b"data: injected\n\n"))
            .await
            .unwrap();
        let body = SseRewriteBody::new(inner, r).with_injected(rx);
        drop(tx);
        let all = body.collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&all);
        assert!(
            text.starts_with("data: injected\n\nid: p\ndata:\n\n"),
            "{text}"
        );
        assert!(
            text.contains("\"echo\"") && !text.contains("secret"),
            "{text}"
        );
    }

    /// A GET stream (sniffing) through the real body, the server's bytes in `chunks`.
    async fn through_get_stream(chunks: Vec<&'static [u8]>) -> String {
        let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = chunks
            .into_iter()
            .map(|c| Ok(Frame::data(Bytes::from_static(c))))
            .collect();
        let inner = StreamBody::new(futures_util::stream::iter(frames));
        let r = Rewriter::new(
            filter(),
            Transport::StreamableHttp,
            None,
            Box::new(Vec::new()),
            true,
        );
        let all = SseRewriteBody::new(inner, r)
            .collect()
            .await
            .unwrap()
            .to_bytes();
        String::from_utf8_lossy(&all).into_owned()
    }

    #[tokio::test]
    async fn an_escaped_id_key_does_not_skip_the_filter() {
        // `"\u0069d"` is `"id"` to every JSON reader, the client's included.
        let text = through_get_stream(vec![
            b"event: message\ndata: {\"jsonrpc\":\"2.0\",\"\\u0069d\":4,",
            b"\"result\":{\"tools\":[{\"name\":\"echo\"},{\"name\":\"secret\"}]}}\n\n",
        ])
        .await;
        assert!(
            text.contains("\"echo\"") && !text.contains("secret"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn events_framed_with_carriage_returns_are_filtered_as_clients_read_them() {
        // Lone CRs end lines for every SSE client; the stream stays open after the event.
        let text = through_get_stream(vec![
            b"event: message\rdata: {\"jsonrpc\":\"2.0\",\"id\":4,",
            b"\"result\":{\"tools\":[{\"name\":\"echo\"},{\"name\":\"secret\"}]}}\r",
            b"\r: keep-alive\r\r",
        ])
        .await;
        assert!(
            text.contains("\"echo\"") && !text.contains("secret"),
            "{text}"
        );
        assert!(text.starts_with("event: message\ndata: {"), "{text}");
    }
}
