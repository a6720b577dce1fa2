//! Checks shared by the suites that put the sidecar in front of a real MCP server
//! (`sidecar_everything.rs`, `sidecar_python.rs`) and by their baseline without it
//! (`peers_direct.rs`).
//!
//! What differs from server to server (which tool is denied, which tools must stay listed, what
//! an answer shows when the denied tool ran) is a [`ToolFilter`]; the helpers take it, or the
//! server's own values, as parameters, so each suite keeps asserting against its own peer. Every
//! helper asserts (it panics with the answer it saw) and returns what a suite may check further.

use std::time::Duration;

use serde_json::{Value, json};

use crate::{
    EventStream, McpResponse, Output, PROTOCOL_2025, PROTOCOL_2026, Session, SseEvent,
    assert_denied, assert_jsonrpc_error, assert_spaced, await_on_stream, call_body,
    initialize_body, inspector, inspector_json, list_body, open_legacy_sse, post, tool_names,
    with_meta_2026,
};

/// How long an old-transport (HTTP+SSE) stream may take to carry one answer.
const LEGACY_ANSWER_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a streamed (SSE) answer with progress may take to end.
const PROGRESS_STREAM_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// The filter a suite configures
// ---------------------------------------------------------------------------------------------

/// The sidecar's tool filter as one real server sees it: the tool the sidecar denies (the server
/// lists and runs it without the sidecar, see `peers_direct.rs`), the tools that must stay
/// listed, and the text an answer carries only when the denied tool ran.
#[derive(Debug, Clone, Copy)]
pub struct ToolFilter {
    /// The denied tool.
    pub denied: &'static str,
    /// Tools the server lists that the filter must keep.
    pub kept: &'static [&'static str],
    /// Text that appears in an answer only when the denied tool ran (e.g. `PATH` in
    /// server-everything's `get-env` output).
    pub ran_sign: &'static str,
}

impl ToolFilter {
    /// Asserts that `names` (a listing) hides the denied tool and still holds every kept one.
    pub fn assert_filtered(&self, names: &[String], what: &str) {
        let denied = self.denied;
        assert!(
            !names.iter().any(|n| n == denied),
            "{what}: {denied} must be hidden, got {names:?}"
        );
        for expected in self.kept {
            assert!(
                names.iter().any(|n| n == expected),
                "{what}: {expected} must still be listed, got {names:?}"
            );
        }
    }

    /// Asserts that `text` (an answer, a client's output) shows no sign of the denied tool
    /// having run.
    pub fn assert_not_ran(&self, text: &str, what: &str) {
        assert!(
            !text.contains(self.ran_sign),
            "{what}: the denied tool {} ran: {text}",
            self.denied
        );
    }

    /// Asserts that `msg` is a JSON-RPC error naming the denied tool (see [`assert_denied`]).
    pub fn assert_denied(&self, msg: &Value) {
        assert_denied(msg, self.denied);
    }

    // --- Inspector CLI ------------------------------------------------------------------------

    /// Lists tools with the Inspector CLI (`transport` `http` or `sse`) and asserts the listing
    /// is filtered.
    pub fn assert_inspector_lists_filtered(&self, url: &str, transport: &str, what: &str) {
        let listed = inspector_json(url, transport, &["--method", "tools/list"]);
        self.assert_filtered(&tool_names(&listed), what);
    }

    /// Calls the denied tool with the Inspector CLI and asserts the call did not succeed (the
    /// Inspector refuses to call a tool it was not shown, or prints the sidecar's error) and
    /// that its output shows no sign of the tool having run. Returns the run.
    pub fn assert_inspector_denied(&self, url: &str, transport: &str) -> Output {
        let denied = inspector(
            url,
            transport,
            &["--method", "tools/call", "--tool-name", self.denied],
        );
        assert!(
            !denied.success() || denied.stdout.contains("error"),
            "inspector call of a denied tool succeeded: {}",
            denied.stdout
        );
        self.assert_not_ran(&denied.stdout, "inspector call of a denied tool");
        denied
    }

    // --- Python client ------------------------------------------------------------------------

    /// Asserts that a `list` result of [`crate::py_client`] succeeded and is filtered.
    pub fn assert_py_listed(&self, result: &Value, what: &str) {
        self.assert_filtered(&py_tool_names(result, what), what);
    }

    /// Asserts that a `call` result of [`crate::py_client`] for the denied tool is an error
    /// (raised, or an error result) naming the tool, with no sign of the tool having run.
    pub fn assert_py_denied(&self, result: &Value, what: &str) {
        let denied = self.denied;
        let ok = result["ok"].as_bool().unwrap_or(false);
        let is_error = result["is_error"].as_bool().unwrap_or(false);
        assert!(!ok || is_error, "{what}: denied call succeeded: {result}");
        let text = format!("{} {}", result["error"]["message"], result["text"]);
        assert!(
            text.contains(denied),
            "{what}: the error should name {denied}: {result}"
        );
        self.assert_not_ran(&text, what);
    }

    // --- Raw HTTP, handshake-era session ------------------------------------------------------

    /// `tools/list` (id `id`) within `s`: asserts status 200, a `Content-Type` starting with
    /// `content_type` (the server's kind of answer, JSON or SSE, is kept) and a filtered list.
    pub async fn assert_session_list(
        &self,
        s: &Session,
        id: i64,
        content_type: &str,
        what: &str,
    ) -> McpResponse {
        let list = s.post(&list_body(id)).await;
        assert_eq!(list.status, 200, "{what}: {}", list.body);
        assert!(
            list.content_type().starts_with(content_type),
            "{what}: the server answers {content_type}; the sidecar keeps it: {}",
            list.content_type()
        );
        self.assert_filtered(
            &tool_names(&list.expect_response(&json!(id))["result"]),
            what,
        );
        list
    }

    /// Calls the denied tool (id `id`) within `s`: asserts a JSON-RPC error naming it and no
    /// sign of the tool having run.
    pub async fn assert_session_denied(&self, s: &Session, id: i64) -> McpResponse {
        let denied = s.post(&call_body(id, self.denied, json!({}))).await;
        self.assert_denied(denied.expect_response(&json!(id)));
        self.assert_not_ran(&denied.body, "denied call");
        denied
    }

    /// POSTs a batch holding a call of the denied tool (id `denied_id`) within `s`: the batch is
    /// answered (200; the suites' servers take batches on a session), the
    /// denial (a JSON-RPC error naming the tool) under the denied call's id, and the denied call
    /// never ran.
    pub async fn assert_batch_denied(
        &self,
        s: &Session,
        batch: &Value,
        denied_id: i64,
    ) -> McpResponse {
        let answer = s.post(batch).await;
        assert_eq!(answer.status, 200, "batch: {}", answer.body);
        self.assert_denied(answer.expect_response(&json!(denied_id)));
        self.assert_not_ran(&answer.body, "batch");
        answer
    }

    // --- Raw HTTP, the older HTTP+SSE transport -----------------------------------------------

    /// Over an initialized old-transport session: `tools/list` (id 1), answered on the stream,
    /// is filtered, and a call of the denied tool (id 2) gets a JSON-RPC error naming it, as
    /// the POST's answer or on the stream. Returns the denial.
    pub async fn assert_legacy_filtered_and_denied(
        &self,
        sse: &mut LegacySse,
        what: &str,
    ) -> Value {
        let (list, _) = sse.request(&list_body(1)).await;
        self.assert_filtered(&tool_names(&list["result"]), what);
        let denied = sse.answer(&call_body(2, self.denied, json!({}))).await;
        self.assert_denied(&denied);
        denied
    }
}

// ---------------------------------------------------------------------------------------------
// Inspector CLI and Python client
// ---------------------------------------------------------------------------------------------

/// Calls `tool` with the Inspector CLI (`args` as `key=value`, each one `--tool-arg`) and
/// asserts the first content item's text is `text`. Returns the call's result.
pub fn assert_inspector_call(
    url: &str,
    transport: &str,
    tool: &str,
    args: &[&str],
    text: &str,
) -> Value {
    let mut cli = vec!["--method", "tools/call", "--tool-name", tool];
    for arg in args {
        cli.extend(["--tool-arg", arg]);
    }
    let called = inspector_json(url, transport, &cli);
    assert_eq!(called["content"][0]["text"], text, "{called}");
    called
}

/// The tool names of a `list` result of [`crate::py_client`]; panics when the list failed.
pub fn py_tool_names(result: &Value, what: &str) -> Vec<String> {
    serde_json::from_value(result["tools"].clone())
        .unwrap_or_else(|_| panic!("{what}: list failed: {result}"))
}

/// Asserts that a `progress` result of [`crate::py_client`] saw `steps` progress notifications,
/// each arriving at least `min_gap` after the one before (streamed, not bunched). Returns their
/// arrival times.
pub fn assert_py_progress(
    result: &Value,
    steps: usize,
    min_gap: Duration,
    what: &str,
) -> Vec<Duration> {
    let times: Vec<Duration> = result["progress"]
        .as_array()
        .unwrap_or_else(|| panic!("{what}: no progress: {result}"))
        .iter()
        .map(|p| {
            let t = p["t"]
                .as_f64()
                .unwrap_or_else(|| panic!("{what}: progress without a time: {result}"));
            Duration::from_secs_f64(t)
        })
        .collect();
    assert_eq!(times.len(), steps, "{what}: {result}");
    assert_spaced(&times, min_gap, what);
    times
}

/// Runs blocking work (an external client) off the async runtime's threads and returns its
/// result; a panic in it is the test's panic.
pub async fn run_blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => v,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("blocking task: {e}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP
// ---------------------------------------------------------------------------------------------

/// `headers` plus the mirrored `Mcp-Method` and, when given, `Mcp-Name`.
pub fn with_mirrored<'a>(
    mut headers: Vec<(&'a str, &'a str)>,
    method: &'a str,
    name: Option<&'a str>,
) -> Vec<(&'a str, &'a str)> {
    headers.push(("mcp-method", method));
    if let Some(n) = name {
        headers.push(("mcp-name", n));
    }
    headers
}

/// The headers of a session-less 2026-07-28 request: `Mcp-Protocol-Version`, `Mcp-Method` and,
/// when given, `Mcp-Name`.
pub fn headers_2026<'a>(method: &'a str, name: Option<&'a str>) -> Vec<(&'a str, &'a str)> {
    with_mirrored(vec![("mcp-protocol-version", PROTOCOL_2026)], method, name)
}

/// POSTs `body` as a session-less 2026-07-28 request: with the `_meta` envelope and
/// [`headers_2026`] (`method` and `name` as given, so they may disagree with the body).
pub async fn post_2026(url: &str, body: Value, method: &str, name: Option<&str>) -> McpResponse {
    post(url, &with_meta_2026(body), &headers_2026(method, name)).await
}

/// POSTs `body` with `headers` whose mirrored `Mcp-Method`/`Mcp-Name` disagree with it, and
/// asserts the sidecar refuses it: status 400 with a JSON-RPC error body.
pub async fn assert_mirror_refused(
    url: &str,
    body: &Value,
    headers: &[(&str, &str)],
    what: &str,
) -> McpResponse {
    let refused = post(url, body, headers).await;
    assert_eq!(refused.status, 400, "{what}: {}", refused.body);
    assert_jsonrpc_error(&refused.body, None);
    refused
}

/// Opens a handshake-era session at `url`, lists tools (200), DELETEs the session (200), and
/// asserts that a later request gets `gone` (the status the server gives an ended session).
/// Returns that last answer.
pub async fn assert_delete_ends_session(url: &str, gone: u16, what: &str) -> McpResponse {
    let s = Session::initialize(url, PROTOCOL_2025).await;
    let before = s.post(&list_body(1)).await;
    assert_eq!(before.status, 200, "{what}: before DELETE: {}", before.body);
    let del = s.delete().await;
    assert_eq!(del.status, 200, "{what}: DELETE: {}", del.body);
    let after = s.post(&list_body(2)).await;
    assert_eq!(
        after.status, gone,
        "{what}: the server's {gone} for an ended session: {}",
        after.body
    );
    after
}

/// The arrival times of the `notifications/progress` events among `events`.
pub fn progress_times(events: &[SseEvent]) -> Vec<Duration> {
    events
        .iter()
        .filter(|e| {
            e.json()
                .is_some_and(|v| v["method"] == "notifications/progress")
        })
        .map(|e| e.at)
        .collect()
}

/// POSTs `body` (a call with a progress token) and reads the answer as it arrives: asserts
/// status 200, an SSE answer that ends, and `steps` progress notifications each arriving at
/// least `min_gap` after the one before (streamed, not buffered). Returns the events and the
/// progress arrival times.
pub async fn assert_progress_streamed(
    url: &str,
    body: &Value,
    headers: &[(&str, &str)],
    steps: usize,
    min_gap: Duration,
    what: &str,
) -> (Vec<SseEvent>, Vec<Duration>) {
    let mut stream = EventStream::post(url, body, headers).await;
    assert_eq!(stream.status, 200, "{what}");
    assert!(
        stream.content_type().starts_with("text/event-stream"),
        "{what}: {}",
        stream.content_type()
    );
    let (events, ended) = stream.collect(PROGRESS_STREAM_TIMEOUT).await;
    assert!(
        ended,
        "{what}: the stream must end after the result: {events:?}"
    );
    let times = progress_times(&events);
    assert_eq!(times.len(), steps, "{what}: {events:?}");
    assert_spaced(&times, min_gap, what);
    (events, times)
}

/// A session over the older HTTP+SSE transport, initialized: the open `GET` stream and the
/// endpoint it announced.
#[derive(Debug)]
pub struct LegacySse {
    /// The open event stream, where the answers come.
    pub stream: EventStream,
    /// The endpoint the stream announced, where requests are POSTed.
    pub endpoint: String,
}

impl LegacySse {
    /// Opens `GET <base><sse_path>`, asserts the announced endpoint starts with
    /// `<base><endpoint_prefix>` (it points at the sidecar, not at the server), then
    /// initializes: the `initialize` POST is accepted (202 or 200), its answer on the stream is
    /// a result, and `notifications/initialized` is sent.
    pub async fn initialize(base: &str, sse_path: &str, endpoint_prefix: &str) -> LegacySse {
        let (stream, endpoint) = open_legacy_sse(base, sse_path).await;
        assert!(
            endpoint.starts_with(&format!("{base}{endpoint_prefix}")),
            "the endpoint points at the sidecar: {endpoint}"
        );
        let mut sse = LegacySse { stream, endpoint };
        let init = sse.post(&initialize_body(0, PROTOCOL_2025)).await;
        assert!(init.status == 202 || init.status == 200, "{}", init.body);
        let (r, _) = sse.await_answer(&json!(0)).await;
        assert!(
            r.get("result").is_some(),
            "initialize answer on the stream: {r}"
        );
        sse.post(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .await;
        sse
    }

    /// POSTs `body` to the endpoint.
    pub async fn post(&self, body: &Value) -> McpResponse {
        post(&self.endpoint, body, &[]).await
    }

    /// Waits on the stream for the answer with `id`; panics when none comes. Returns it with
    /// the messages that came before it.
    pub async fn await_answer(&mut self, id: &Value) -> (Value, Vec<(Value, SseEvent)>) {
        let (answer, seen) = await_on_stream(&mut self.stream, id, LEGACY_ANSWER_TIMEOUT).await;
        let answer = answer.unwrap_or_else(|| panic!("no answer to {id} on the stream: {seen:?}"));
        (answer, seen)
    }

    /// POSTs a request and waits for its answer on the stream (see [`LegacySse::await_answer`]).
    pub async fn request(&mut self, body: &Value) -> (Value, Vec<(Value, SseEvent)>) {
        self.post(body).await;
        self.await_answer(&body["id"]).await
    }

    /// POSTs a request and returns its answer, taken from the POST's own answer when it has
    /// one (the sidecar may answer a denial itself) and from the stream otherwise.
    pub async fn answer(&mut self, body: &Value) -> Value {
        let posted = self.post(body).await;
        match posted.response(&body["id"]) {
            Some(a) => a.clone(),
            None => self.await_answer(&body["id"]).await.0,
        }
    }
}
