//! The audit trail: one JSON line (schema `mcp-guard.audit/v1`, see `docs/audit.md`) per audited
//! request.
//!
//! The request path only gathers what it already holds (the request body as shared [`Bytes`],
//! the caller, the verdict, a few instants) into one [`Record`] per HTTP request and hands it to a
//! bounded queue with `try_send`; it never waits. A dedicated writer thread parses again what it
//! needs, redacts, caps, serializes and writes the lines, in batches. When the queue is full the
//! record is dropped, counted in `mcp_guard_audit_dropped_total` and logged (at most once per
//! interval).

use std::borrow::Cow;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Body;
use bytes::Bytes;
use clap::Args;
use http::Response;
use http_body::Frame;
use mcp_guard_common::env;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::sync::mpsc;

use crate::identity::Identity;
use crate::intercept::{
    ClientInfo, Context, DecisionNote, Filtered, Interceptor, Transport, Verdict,
};
use crate::jsonrpc::{Kind, Message};
use crate::limits::{Quota, Tripped};
use crate::metrics::Metrics;
use crate::policy::Enforcement;
use crate::telemetry::{SpanRecord, Telemetry, TraceContext, parse_traceparent};
use mcp_guard_policy::mcp::{Class, ItemKind, Method};

/// The schema every line names.
pub const SCHEMA: &str = "mcp-guard.audit/v1";

/// What filtering did to each list answer of a request, by the request's id key
/// ([`crate::jsonrpc::id_key`]): filled by the rewriter as the answer streams, read by the
/// writer when the record is rendered.
pub type ListNotes = Arc<parking_lot::Mutex<Vec<(String, Filtered)>>>;

/// Whether requests of `method` are audited: every method but the plumbing ones (the decided
/// methods and the lists).
pub fn audited(method: Method) -> bool {
    method.class() != Class::Plumbing
}

/// How much of the answer is kept to tell a JSON-RPC error from a result.
const ANSWER_CAPTURE_BYTES: usize = 64 * 1024;

/// How often a lost record or a write failure is logged at most.
const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The value that replaces a redacted argument.
pub const REDACTED: &str = "[REDACTED]";

/// Audit flags.
#[derive(Debug, Clone, Args)]
pub struct AuditConfig {
    /// Turn the audit trail off.
    #[arg(long, env = env::AUDIT_DISABLED, default_value_t = false)]
    pub audit_disabled: bool,

    /// Append audit lines to this file instead of writing them to stdout.
    #[arg(long, env = env::AUDIT_FILE)]
    pub audit_file: Option<PathBuf>,

    /// Argument paths whose values never reach the audit trail, comma-separated
    /// (`arguments.password,arguments.auth.token`; `*` matches any key or index). The policy can
    /// name more with its `redact` rule.
    #[arg(long, env = env::AUDIT_REDACT, value_delimiter = ',')]
    pub audit_redact: Vec<String>,

    /// Largest `arguments` recorded, in bytes of JSON after redaction; larger ones are left out
    /// (`arguments_truncated: true`).
    #[arg(
        long,
        env = env::AUDIT_MAX_ARGUMENT_BYTES,
        default_value_t = 4096
    )]
    pub audit_max_argument_bytes: usize,

    /// Requests whose records may wait for the writer; beyond that records are dropped (counted
    /// and logged), never waited for.
    #[arg(long, env = env::AUDIT_QUEUE, default_value_t = 8192)]
    pub audit_queue: usize,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            audit_disabled: false,
            audit_file: None,
            audit_redact: Vec::new(),
            audit_max_argument_bytes: 4096,
            audit_queue: 8192,
        }
    }
}

/// The governed server, as every line names it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ServerRef {
    pub name: String,
    pub namespace: String,
    pub pod: String,
}

enum Msg {
    Record(Box<Record>),
    Flush(std::sync::mpsc::SyncSender<()>),
}

/// The audit trail's entry point, shared by the request path.
pub struct Auditor {
    tx: mpsc::Sender<Msg>,
    metrics: Arc<Metrics>,
    drops: RateLimited,
    /// Spans are exported: the request path picks span ids and propagates them.
    tracing: bool,
}

/// Counts events and logs them at most once per [`LOG_INTERVAL`].
pub(crate) struct RateLimited {
    origin: Instant,
    /// Milliseconds since `origin` of the last log line, plus one (0: never).
    last: AtomicU64,
    pending: AtomicU64,
}

impl RateLimited {
    pub(crate) fn new() -> Self {
        RateLimited {
            origin: Instant::now(),
            last: AtomicU64::new(0),
            pending: AtomicU64::new(0),
        }
    }

    /// Adds `n`; returns the count to log when a line is due.
    pub(crate) fn add(&self, n: u64) -> Option<u64> {
        self.pending.fetch_add(n, Ordering::Relaxed);
        let now = u64::try_from(self.origin.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        let last = self.last.load(Ordering::Relaxed);
        let interval = u64::try_from(LOG_INTERVAL.as_millis()).unwrap_or(u64::MAX);
        if last != 0 && now.saturating_sub(last) < interval {
            return None;
        }
        self.last
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .ok()?;
        Some(self.pending.swap(0, Ordering::Relaxed))
    }
}

/// Settings the writer renders with.
struct Render {
    /// Audit lines are written (else only spans are built).
    lines: bool,
    telemetry: Option<Telemetry>,
    server: ServerRef,
    mode: Enforcement,
    redact: Vec<String>,
    max_argument_bytes: usize,
    /// The admin port's registry: the same per-call instruments as the OTLP metrics.
    metrics: Arc<Metrics>,
}

impl Auditor {
    /// Starts the writer; `None` when neither the audit trail nor OpenTelemetry is on.
    pub fn start(
        config: &AuditConfig,
        server: ServerRef,
        mode: Enforcement,
        metrics: Arc<Metrics>,
        telemetry: Option<Telemetry>,
    ) -> std::io::Result<Option<Arc<Auditor>>> {
        if config.audit_disabled && telemetry.is_none() {
            return Ok(None);
        }
        let out: Box<dyn Write + Send> = match &config.audit_file {
            _ if config.audit_disabled => Box::new(std::io::sink()),
            Some(path) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
            None => Box::new(Stdout),
        };
        let (tx, rx) = mpsc::channel(config.audit_queue.max(1));
        for p in &config.audit_redact {
            let p = p.trim();
            if !p.is_empty() && !p.starts_with("arguments") && !p.starts_with("params.arguments") {
                tracing::warn!(
                    path = p,
                    "--audit-redact path does not start with `arguments`; it matches nothing"
                );
            }
        }
        let tracing = telemetry.is_some();
        let render = Render {
            lines: !config.audit_disabled,
            telemetry,
            server,
            mode,
            redact: config
                .audit_redact
                .iter()
                .map(|p| p.trim().to_owned())
                .filter(|p| !p.is_empty())
                .collect(),
            max_argument_bytes: config.audit_max_argument_bytes,
            metrics: Arc::clone(&metrics),
        };
        let writer_metrics = Arc::clone(&metrics);
        std::thread::Builder::new()
            .name("mcp-guard-audit".into())
            .spawn(move || writer(rx, out, render, writer_metrics))?;
        if !config.audit_disabled {
            tracing::info!(
                to = %config.audit_file.as_ref().map_or_else(|| "stdout".into(), |p| p.display().to_string()),
                "audit trail enabled"
            );
        }
        Ok(Some(Arc::new(Auditor {
            tx,
            metrics,
            drops: RateLimited::new(),
            tracing,
        })))
    }

    fn submit(&self, record: Box<Record>) {
        let n = record.events.len() as u64;
        if let Err(e) = self.tx.try_send(Msg::Record(record)) {
            self.metrics.audit_dropped(n);
            if let Some(count) = self.drops.add(n) {
                let why = match e {
                    mpsc::error::TrySendError::Full(_) => "the audit queue is full",
                    mpsc::error::TrySendError::Closed(_) => "the audit writer stopped",
                };
                tracing::warn!(
                    dropped = count,
                    "audit records dropped: {why} (see mcp_guard_audit_dropped_total)"
                );
            }
        }
    }

    /// Waits (at most `timeout`) until every record queued so far is written.
    pub async fn flush(&self, timeout: Duration) {
        let (ack_tx, ack_rx) = std::sync::mpsc::sync_channel(1);
        if tokio::time::timeout(timeout, self.tx.send(Msg::Flush(ack_tx)))
            .await
            .is_err()
        {
            return;
        }
        let _ = tokio::task::spawn_blocking(move || ack_rx.recv_timeout(timeout)).await;
    }
}

/// Stdout, locked per write so lines never interleave with anything else written there.
struct Stdout;

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        std::io::stdout().lock().write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        std::io::stdout().lock().write_all(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stdout().lock().flush()
    }
}

fn writer(
    mut rx: mpsc::Receiver<Msg>,
    mut out: Box<dyn Write + Send>,
    render: Render,
    metrics: Arc<Metrics>,
) {
    let failures = RateLimited::new();
    let mut buf = Vec::with_capacity(64 * 1024);
    while let Some(first) = rx.blocking_recv() {
        let mut acks = Vec::new();
        let mut lines = 0u64;
        let mut next = Some(first);
        // Whether the batch stopped at its size cap, with records possibly still queued.
        let mut capped = false;
        while let Some(msg) = next.take() {
            match msg {
                Msg::Record(r) => lines += render.record(&r, &mut buf),
                Msg::Flush(ack) => acks.push(ack),
            }
            if buf.len() < 256 * 1024 {
                next = rx.try_recv().ok();
            } else {
                capped = true;
            }
        }
        if !buf.is_empty() {
            if let Err(e) = out.write_all(&buf).and_then(|()| out.flush()) {
                metrics.audit_dropped(lines);
                if let Some(count) = failures.add(lines) {
                    tracing::error!(error = %e, dropped = count, "cannot write audit records");
                }
            }
            buf.clear();
        }
        for ack in acks {
            let _ = ack.try_send(());
        }
        // Let the next records gather before waiting for them: a writer parked on an empty queue
        // is woken by every record (a futex wake on the request path), one that lingers is woken
        // by none and writes them in one batch. Records wait at most this long more. A batch that
        // stopped at its cap goes on at once, so a busy sidecar's writer never falls behind.
        if !capped {
            std::thread::sleep(WRITER_LINGER);
        }
    }
}

/// How long the audit writer lets records gather after writing a batch.
const WRITER_LINGER: std::time::Duration = std::time::Duration::from_millis(2);

/// One audited message of a request.
#[derive(Debug)]
struct Event {
    /// Its index in the batch (0 for a single message).
    index: usize,
    /// Refused here (not forwarded).
    denied: bool,
    /// The JSON-RPC error code of the refusal.
    code: Option<i64>,
    /// The refusal's message, when the interceptor gave no reasons.
    message: Option<String>,
    note: DecisionNote,
    policy: Duration,
}

/// How the request ended, as far as the proxy saw it.
#[derive(Debug, Default)]
enum End {
    /// Not forwarded (yet): every event was denied, or the client went away.
    #[default]
    NotForwarded,
    /// The server could not be reached, or did not answer in time; the status the client got.
    UpstreamFailed(Option<u16>),
    /// The answer the client got.
    Answered(Answer),
}

#[derive(Debug, Default)]
struct Answer {
    status: u16,
    sse: bool,
    /// Whether the request reached the server.
    forwarded: bool,
    frames: Vec<Bytes>,
    captured: usize,
    truncated: bool,
    /// The body was read to its end.
    complete: bool,
}

/// The audit record of one HTTP request: one line per audited message.
#[derive(Debug)]
struct Record {
    time: SystemTime,
    start: Instant,
    total: Duration,
    upstream: Option<Duration>,
    body: Bytes,
    single: bool,
    transport: Transport,
    session: Option<String>,
    identity: Option<Arc<Identity>>,
    client: Option<Arc<ClientInfo>>,
    /// The request's trace context (the caller's trace id even when OpenTelemetry is off).
    trace: Option<TraceContext>,
    events: Vec<Event>,
    /// What the filtering of list answers did, when the request listed.
    lists: Option<ListNotes>,
    end: End,
}

/// The audit of one request as the proxy handles it; does nothing when the trail is off.
#[derive(Default)]
pub struct Recording {
    auditor: Option<Arc<Auditor>>,
    state: Option<Box<Record>>,
    identity: Option<Arc<Identity>>,
    client: Option<Arc<ClientInfo>>,
    body: Bytes,
    single: bool,
    start: Option<Instant>,
    forwarded_at: Option<Instant>,
    failed: bool,
    /// The `traceparent` header the request came with.
    incoming: Option<(u128, u64, u8)>,
}

impl Recording {
    /// Starts the audit of a request that arrived at `start` with `headers` and `body`.
    pub fn begin(
        auditor: Option<&Arc<Auditor>>,
        headers: &http::HeaderMap,
        body: &Bytes,
        single: bool,
        identity: Option<&Arc<Identity>>,
        client: Option<&Arc<ClientInfo>>,
        start: Instant,
    ) -> Recording {
        let Some(auditor) = auditor else {
            return Recording::default();
        };
        Recording {
            auditor: Some(Arc::clone(auditor)),
            state: None,
            identity: identity.cloned(),
            client: client.cloned(),
            body: body.clone(),
            single,
            start: Some(start),
            forwarded_at: None,
            failed: false,
            incoming: headers
                .get("traceparent")
                .and_then(|v| v.to_str().ok())
                .and_then(parse_traceparent),
        }
    }

    /// Puts message `index` to the interceptor, noting the decision when it is audited; returns
    /// the verdict and the rate limits an allowed message counts against.
    pub fn check(
        &mut self,
        interceptor: &dyn Interceptor,
        ctx: &Context<'_>,
        index: usize,
        msg: &Message,
    ) -> (Verdict, Option<Quota>) {
        let audited = self.auditor.is_some() && msg.kind == Kind::Request && audited(msg.mcp);
        let mut note = DecisionNote::default();
        if !audited {
            let verdict = interceptor.check_noted(ctx, msg, &mut note);
            return (verdict, Quota::of(&mut note));
        }
        let t = Instant::now();
        let verdict = interceptor.check_noted(ctx, msg, &mut note);
        let quota = Quota::of(&mut note);
        let policy = t.elapsed();
        let (denied, code, message) = match &verdict {
            Verdict::Allow => (false, None, None),
            Verdict::Deny { code, message, .. } => (
                true,
                Some(*code),
                note.reasons.is_empty().then(|| message.clone()),
            ),
        };
        let tracing = self.auditor.as_ref().is_some_and(|a| a.tracing);
        let incoming = self.incoming;
        let record = self.state.get_or_insert_with(|| {
            let start = self.start.unwrap_or_else(Instant::now);
            let parent = incoming.or_else(|| meta_traceparent(msg));
            let trace = match (tracing, parent) {
                (true, p) => Some(TraceContext::new(p)),
                (false, Some(p)) => Some(TraceContext::observed(p)),
                (false, None) => None,
            };
            Box::new(Record {
                time: SystemTime::now()
                    .checked_sub(start.elapsed())
                    .unwrap_or_else(SystemTime::now),
                start,
                total: Duration::ZERO,
                upstream: None,
                body: std::mem::take(&mut self.body),
                single: self.single,
                transport: ctx.transport,
                session: ctx.session_id.map(str::to_owned),
                identity: self.identity.take(),
                client: self.client.take(),
                trace,
                events: Vec::with_capacity(1),
                lists: None,
                end: End::NotForwarded,
            })
        });
        record.events.push(Event {
            index,
            denied,
            code,
            message,
            note,
            policy,
        });
        (verdict, quota)
    }

    /// Message `index` was refused by a rate limit (or would have been, in shadow mode: then it
    /// was forwarded), with JSON-RPC error `code`.
    pub fn rate_limited(&mut self, index: usize, tripped: &Tripped, code: i64, shadow: bool) {
        let Some(ev) = self
            .state
            .as_mut()
            .and_then(|r| r.events.iter_mut().find(|e| e.index == index))
        else {
            return;
        };
        ev.denied = !shadow;
        ev.code = (!shadow).then_some(code);
        ev.message = None;
        ev.note.reasons = vec![tripped.message()];
        ev.note.source = Some("rate limit");
        ev.note.limit = Some(tripped.limit.clone());
        ev.note.shadow_denied = shadow;
    }

    /// Where the rewriter notes what it hides from the lists this request asks for; `None`
    /// when nothing of the request is audited.
    pub fn list_notes(&mut self) -> Option<ListNotes> {
        let record = self.state.as_mut()?;
        Some(Arc::clone(
            record.lists.get_or_insert_with(ListNotes::default),
        ))
    }

    /// Whether anything of this request is audited.
    pub fn active(&self) -> bool {
        self.state.is_some()
    }

    /// Puts the request's trace context on the request to the MCP server, when spans are
    /// exported (the sidecar's span becomes the server's parent).
    pub fn propagate(&self, headers: &mut http::HeaderMap) {
        if let (Some(a), Some(r)) = (&self.auditor, &self.state)
            && a.tracing
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
        let (Some(auditor), Some(mut record)) = (self.auditor.take(), self.state.take()) else {
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
        let body = AuditBody {
            inner: body,
            record: Some(record),
            auditor,
        };
        Response::from_parts(parts, Body::new(body))
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        if let (Some(auditor), Some(mut record)) = (self.auditor.take(), self.state.take()) {
            record.total = record.start.elapsed();
            record.upstream = self.forwarded_at.map(|t| t.elapsed());
            if self.failed {
                record.end = End::UpstreamFailed(None);
            }
            auditor.submit(record);
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
/// hands the record to the writer when it ends or is dropped.
struct AuditBody {
    inner: Body,
    record: Option<Box<Record>>,
    auditor: Arc<Auditor>,
}

impl http_body::Body for AuditBody {
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

impl Drop for AuditBody {
    fn drop(&mut self) {
        if let Some(mut record) = self.record.take() {
            record.total = record.start.elapsed();
            self.auditor.submit(record);
        }
    }
}

// ---- The writer's side: rendering lines. ----

#[derive(Deserialize)]
struct ReqView<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    method: Option<Cow<'a, str>>,
    #[serde(borrow)]
    params: Option<ParamsView<'a>>,
}

#[derive(Deserialize)]
struct ParamsView<'a> {
    #[serde(borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    uri: Option<Cow<'a, str>>,
    #[serde(borrow, rename = "taskId")]
    task_id: Option<Cow<'a, str>>,
    #[serde(borrow, rename = "ref")]
    reference: Option<RefView<'a>>,
    #[serde(borrow)]
    arguments: Option<&'a RawValue>,
}

/// A completion's `ref`.
#[derive(Deserialize)]
struct RefView<'a> {
    #[serde(borrow, rename = "type")]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    uri: Option<Cow<'a, str>>,
}

impl mcp_guard_policy::mcp::Params for ParamsView<'_> {
    fn field(&self, key: &str) -> Option<&str> {
        match key {
            "name" => self.name.as_deref(),
            "uri" => self.uri.as_deref(),
            "taskId" => self.task_id.as_deref(),
            _ => None,
        }
    }

    fn ref_field(&self, key: &str) -> Option<&str> {
        let r = self.reference.as_ref()?;
        match key {
            "type" => r.kind.as_deref(),
            "name" => r.name.as_deref(),
            "uri" => r.uri.as_deref(),
            _ => None,
        }
    }
}

#[derive(Deserialize)]
struct RespView<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    error: Option<ErrView>,
    result: Option<ResultView>,
}

#[derive(Deserialize)]
struct ErrView {
    code: Option<i64>,
}

#[derive(Deserialize)]
struct ResultView {
    #[serde(rename = "isError")]
    is_error: Option<bool>,
}

#[derive(Serialize)]
struct Line<'a> {
    schema: &'static str,
    time: String,
    audit_id: String,
    trace_id: &'a str,
    subject: Subject<'a>,
    client: ClientRef<'a>,
    server: &'a ServerRef,
    transport: &'static str,
    session: Option<&'a str>,
    request_id: Option<&'a RawValue>,
    method: &'a str,
    /// The method, parsed.
    #[serde(skip)]
    mcp: Method,
    target: Option<&'a str>,
    /// What `target` names.
    #[serde(skip)]
    target_kind: Option<ItemKind>,
    arguments: Option<Cow<'a, RawValue>>,
    arguments_bytes: usize,
    arguments_truncated: bool,
    redacted: Vec<&'a str>,
    /// List methods: the items hidden from the caller (would be hidden, in shadow mode).
    hidden: Option<Vec<String>>,
    decision: DecisionOut<'a>,
    outcome: &'static str,
    status: Option<u16>,
    error_code: Option<i64>,
    tool_error: bool,
    duration_us: Durations,
}

#[derive(Serialize)]
struct Subject<'a> {
    sub: Option<&'a str>,
    email: Option<&'a str>,
    client_id: Option<&'a str>,
    issuer: Option<&'a str>,
}

#[derive(Serialize)]
struct ClientRef<'a> {
    name: Option<&'a str>,
    version: Option<&'a str>,
    protocol_version: Option<&'a str>,
}

#[derive(Serialize)]
struct DecisionOut<'a> {
    allowed: bool,
    forwarded: bool,
    mode: &'static str,
    reasons: Cow<'a, [String]>,
    policy: Option<&'a str>,
    /// What refused or hid: `policy`, `--deny-tools`, `--allow-tools`, `no policy loaded`,
    /// `rate limit`, `mcp-guard`; `null` when nothing did.
    source: Option<String>,
    /// The name of the rate limit that refused (or would have, in shadow mode); `null` when
    /// none did.
    limit: Option<&'a str>,
}

#[derive(Serialize)]
struct Durations {
    total: u64,
    upstream: Option<u64>,
    policy: u64,
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// The answers found in the captured part of the server's answer.
struct Answers<'a> {
    items: Vec<RespView<'a>>,
}

impl<'a> Answers<'a> {
    fn parse(bytes: &'a [u8], sse_events: &'a [Vec<u8>], sse: bool) -> Answers<'a> {
        let mut items = Vec::new();
        let mut add = |b: &'a [u8]| {
            if let Ok(one) = serde_json::from_slice::<RespView<'a>>(b) {
                items.push(one);
            } else if let Ok(many) = serde_json::from_slice::<Vec<RespView<'a>>>(b) {
                items.extend(many);
            }
        };
        if sse {
            for d in sse_events {
                add(d);
            }
        } else {
            add(bytes);
        }
        Answers { items }
    }

    /// The response to the request with `id`; for a single request, also the answer's only
    /// response whatever its id. Notifications (progress, logs) are never a response: a stream
    /// cut after them has not answered.
    fn find(&self, id: Option<&RawValue>, single: bool) -> Option<&RespView<'a>> {
        let id = id.map(|i| i.get().trim());
        let mut responses = self
            .items
            .iter()
            .filter(|r| r.result.is_some() || r.error.is_some());
        if let Some(found) = responses
            .clone()
            .find(|r| id.is_some() && r.id.map(|i| i.get().trim()) == id)
        {
            return Some(found);
        }
        match (single, responses.next(), responses.next()) {
            (true, Some(only), None) => Some(only),
            _ => None,
        }
    }
}

impl Render {
    /// Appends the record's lines to `buf`; returns how many.
    fn record(&self, r: &Record, buf: &mut Vec<u8>) -> u64 {
        let messages: Vec<&RawValue> = if r.single {
            serde_json::from_slice::<&RawValue>(&r.body)
                .map(|m| vec![m])
                .unwrap_or_default()
        } else {
            serde_json::from_slice(&r.body).unwrap_or_default()
        };
        // The captured answer, reassembled and (for SSE) cut into events' data.
        let (answer_bytes, sse_events) = match &r.end {
            End::Answered(a) => {
                let joined: Vec<u8> = a.frames.concat();
                let events = if a.sse {
                    let mut s = crate::sse::EventSplitter::default();
                    s.push(&joined);
                    let mut out = Vec::new();
                    while let Some(ev) = s.next_event() {
                        if let Some(d) = crate::sse::data(&ev) {
                            out.push(d);
                        }
                    }
                    out
                } else {
                    Vec::new()
                };
                (joined, events)
            }
            _ => (Vec::new(), Vec::new()),
        };
        let answers = match &r.end {
            End::Answered(a) => Answers::parse(&answer_bytes, &sse_events, a.sse),
            _ => Answers { items: Vec::new() },
        };
        let mut n = 0;
        for (k, ev) in r.events.iter().enumerate() {
            let Some(raw) = messages.get(ev.index) else {
                continue;
            };
            let Ok(req) = serde_json::from_str::<ReqView<'_>>(raw.get()) else {
                continue;
            };
            self.line(r, ev, k == 0, &req, &answers, buf);
            n += u64::from(self.lines);
        }
        n
    }

    fn line(
        &self,
        r: &Record,
        ev: &Event,
        first: bool,
        req: &ReqView<'_>,
        answers: &Answers<'_>,
        buf: &mut Vec<u8>,
    ) {
        let method = req.method.as_deref().unwrap_or_default();
        let mcp = Method::parse(method);
        let item = mcp.item(req.params.as_ref());
        let target = item.map(|i| i.name);
        let raw_args = req.params.as_ref().and_then(|p| p.arguments);
        let (arguments, arguments_bytes, arguments_truncated, redacted) =
            self.arguments(raw_args, &ev.note.redact);

        let (outcome, status, mut error_code, tool_error) = outcome(r, ev, req, answers);
        if ev.denied {
            error_code = ev.code;
        }
        let reasons: Cow<'_, [String]> = match &ev.message {
            Some(m) if ev.note.reasons.is_empty() => Cow::Owned(vec![m.clone()]),
            _ => Cow::Borrowed(&ev.note.reasons),
        };
        let mode = if ev.note.shadow_denied {
            "shadow"
        } else {
            self.mode.as_str()
        };
        let identity = r.identity.as_deref();
        let client = r.client.as_deref();
        let trace_id = r.trace.map(|t| t.trace_id_hex()).unwrap_or_default();
        let listed = match mcp.class() {
            Class::List(_) => Some(list_note(r, req.id)),
            _ => None,
        };
        let (policy, source) = match &listed {
            Some(f) => (
                f.policy_hash.as_deref(),
                (!f.sources.is_empty()).then(|| f.sources.join(", ")),
            ),
            None => (
                ev.note.policy_hash.as_deref(),
                ev.note.source.map(str::to_owned),
            ),
        };
        let line = Line {
            schema: SCHEMA,
            time: crate::time::rfc3339(r.time, true),
            audit_id: uuid::Uuid::new_v4().to_string(),
            trace_id: &trace_id,
            subject: Subject {
                sub: identity.map(|i| i.sub.as_str()),
                email: identity.and_then(|i| i.email.as_deref()),
                client_id: identity.and_then(|i| i.client_id.as_deref()),
                issuer: identity.map(|i| i.iss.as_str()),
            },
            client: ClientRef {
                name: client.and_then(|c| c.name.as_deref()),
                version: client.and_then(|c| c.version.as_deref()),
                protocol_version: client.and_then(|c| c.protocol_version.as_deref()),
            },
            server: &self.server,
            transport: r.transport.as_str(),
            session: r.session.as_deref(),
            request_id: req.id,
            method,
            mcp,
            target,
            target_kind: item.map(|i| i.kind),
            arguments,
            arguments_bytes,
            arguments_truncated,
            redacted,
            hidden: listed.as_ref().map(|f| f.hidden.clone()),
            decision: DecisionOut {
                allowed: !ev.denied && !ev.note.shadow_denied,
                forwarded: !ev.denied,
                mode,
                reasons,
                policy,
                source,
                limit: ev.note.limit.as_deref(),
            },
            outcome,
            status,
            error_code,
            tool_error,
            duration_us: Durations {
                total: micros(r.total),
                upstream: r.upstream.filter(|_| !ev.denied).map(micros),
                policy: micros(ev.policy),
            },
        };
        if self.lines && serde_json::to_writer(&mut *buf, &line).is_ok() {
            buf.push(b'\n');
        }
        let decision = match (line.decision.allowed, line.decision.forwarded) {
            (true, _) => "allow",
            (false, true) => "shadow_deny",
            (false, false) => "deny",
        };
        let tool = target.filter(|_| line.mcp == Method::ToolsCall);
        self.metrics.record_call(
            line.method,
            tool,
            decision,
            line.outcome,
            r.total.as_secs_f64(),
        );
        if let (Some(t), Some(trace)) = (&self.telemetry, r.trace) {
            let span_id = if first {
                trace.span_id
            } else {
                TraceContext::new(None).span_id
            };
            t.record(
                line.method,
                tool,
                decision,
                line.outcome,
                r.total.as_secs_f64(),
            );
            t.span(span_of(r, &line, trace, span_id));
        }
    }

    /// The arguments as recorded: redacted, compact, within the cap.
    fn arguments<'a>(
        &'a self,
        raw: Option<&'a RawValue>,
        policy_paths: &'a [String],
    ) -> (Option<Cow<'a, RawValue>>, usize, bool, Vec<&'a str>) {
        let Some(raw) = raw else {
            return (None, 0, false, Vec::new());
        };
        let paths = self.redact.iter().chain(policy_paths);
        let mut redacted = Vec::new();
        let text = raw.get();
        let needs_work = self.redact.len() + policy_paths.len() > 0
            || text.contains(['\n', '\r'])
            || text.len() > self.max_argument_bytes;
        let out: Cow<'a, RawValue> = if needs_work {
            let Ok(mut v) = serde_json::from_str::<Value>(text) else {
                return (None, text.len(), true, Vec::new());
            };
            for p in paths {
                if redact_path(&mut v, p) {
                    redacted.push(p.as_str());
                }
            }
            match serde_json::value::to_raw_value(&v) {
                Ok(r) => Cow::Owned(r),
                Err(_) => return (None, text.len(), true, redacted),
            }
        } else {
            Cow::Borrowed(raw)
        };
        let len = out.get().len();
        if len > self.max_argument_bytes {
            return (None, len, true, redacted);
        }
        (Some(out), len, false, redacted)
    }
}

/// What the filtering of the answer to list request `id` did (empty when the answer was not
/// seen: the client left, or it travelled on the older transport's event stream).
fn list_note(r: &Record, id: Option<&RawValue>) -> Filtered {
    let mut all = Filtered::default();
    let (Some(notes), Some(id)) = (&r.lists, id) else {
        return all;
    };
    let Ok(id) = serde_json::from_str::<Value>(id.get()) else {
        return all;
    };
    let key = crate::jsonrpc::id_key(&id);
    for (k, f) in notes.lock().iter() {
        if *k == key {
            all.merge(f.clone());
        }
    }
    all
}

/// The server span of one audited message, from its audit line.
fn span_of(r: &Record, line: &Line<'_>, trace: TraceContext, span_id: u64) -> SpanRecord {
    use opentelemetry::{Array, KeyValue, StringValue, Value as OtelValue};
    let name = match line.target {
        Some(t) => format!("{} {t}", line.method),
        None => line.method.to_owned(),
    };
    let mut attributes = Vec::with_capacity(16);
    attributes.push(KeyValue::new("mcp.method.name", line.method.to_owned()));
    if let (Some(t), Some(kind)) = (line.target, line.target_kind) {
        let key = match kind {
            ItemKind::Tool => "gen_ai.tool.name",
            ItemKind::Prompt => "gen_ai.prompt.name",
            ItemKind::Resource | ItemKind::ResourceTemplate => "mcp.resource.uri",
            ItemKind::Task => "mcp.task.id",
        };
        attributes.push(KeyValue::new(key, t.to_owned()));
    }
    if line.mcp == Method::ToolsCall {
        attributes.push(KeyValue::new("gen_ai.operation.name", "execute_tool"));
    }
    if let Some(s) = line.session {
        attributes.push(KeyValue::new("mcp.session.id", s.to_owned()));
    }
    if let Some(v) = line.client.protocol_version {
        attributes.push(KeyValue::new("mcp.protocol.version", v.to_owned()));
    }
    if let Some(sub) = line.subject.sub {
        attributes.push(KeyValue::new("enduser.id", sub.to_owned()));
    }
    if let Some(id) = line.request_id {
        attributes.push(KeyValue::new("jsonrpc.request.id", id.get().to_owned()));
    }
    let d = &line.decision;
    let decision = match (d.allowed, d.forwarded) {
        (true, _) => "allow",
        (false, true) => "shadow_deny",
        (false, false) => "deny",
    };
    attributes.push(KeyValue::new("mcp_guard.decision", decision));
    attributes.push(KeyValue::new("mcp_guard.decision.mode", d.mode));
    if !d.reasons.is_empty() {
        let reasons: Vec<StringValue> = d.reasons.iter().map(|r| r.clone().into()).collect();
        attributes.push(KeyValue::new(
            "mcp_guard.decision.reasons",
            OtelValue::Array(Array::String(reasons)),
        ));
    }
    if let Some(p) = d.policy {
        attributes.push(KeyValue::new("mcp_guard.policy.hash", p.to_owned()));
    }
    attributes.push(KeyValue::new("mcp_guard.outcome", line.outcome));
    attributes.push(KeyValue::new("mcp_guard.audit_id", line.audit_id.clone()));
    if let Some(s) = line.status {
        attributes.push(KeyValue::new("http.response.status_code", i64::from(s)));
    }
    if let Some(c) = line.error_code {
        attributes.push(KeyValue::new("rpc.jsonrpc.error_code", c));
    }
    let error = (line.outcome != "ok").then(|| {
        let kind = match line.error_code {
            Some(c) => c.to_string(),
            None => line.outcome.to_owned(),
        };
        attributes.push(KeyValue::new("error.type", kind));
        line.outcome.to_owned()
    });
    SpanRecord {
        name,
        start: r.time,
        end: r.time + r.total,
        trace,
        span_id,
        attributes,
        error,
    }
}

/// What became of one audited message: (outcome, HTTP status, JSON-RPC error code, tool error).
fn outcome(
    r: &Record,
    ev: &Event,
    req: &ReqView<'_>,
    answers: &Answers<'_>,
) -> (&'static str, Option<u16>, Option<i64>, bool) {
    let status = match &r.end {
        End::Answered(a) => Some(a.status),
        End::UpstreamFailed(s) => *s,
        End::NotForwarded => None,
    };
    if ev.denied {
        return ("denied", status, None, false);
    }
    let a = match &r.end {
        End::UpstreamFailed(_) => return ("upstream_error", status, None, false),
        End::NotForwarded => return ("error", status, None, false),
        End::Answered(a) => a,
    };
    if !a.forwarded {
        return ("error", status, None, false);
    }
    if a.status >= 500 {
        return ("upstream_error", status, None, false);
    }
    if a.status >= 400 {
        return ("error", status, None, false);
    }
    match answers.find(req.id, r.single) {
        Some(resp) if resp.error.is_some() => (
            "error",
            status,
            resp.error.as_ref().and_then(|e| e.code),
            false,
        ),
        Some(resp) => (
            "ok",
            status,
            None,
            resp.result
                .as_ref()
                .and_then(|x| x.is_error)
                .unwrap_or(false),
        ),
        // Accepted (the older transport answers on its event stream) or an answer beyond what
        // was kept: forwarded and not seen to fail.
        None if a.status == 202 || a.truncated => ("ok", status, None, false),
        // The stream ended (or the client left) before the answer.
        None => ("error", status, None, false),
    }
}

/// Replaces the value at `path` (`arguments.a.b`, `*` for any key or index) with
/// [`REDACTED`]; `true` when something was replaced.
pub fn redact_path(arguments: &mut Value, path: &str) -> bool {
    let rest = path
        .strip_prefix("params.")
        .unwrap_or(path)
        .strip_prefix("arguments");
    let segs: Vec<&str> = match rest {
        Some("") => Vec::new(),
        Some(r) => match r.strip_prefix('.') {
            Some(r) => r.split('.').collect(),
            None => return false,
        },
        None => return false,
    };
    redact_at(arguments, &segs)
}

fn redact_at(v: &mut Value, segs: &[&str]) -> bool {
    let Some((first, rest)) = segs.split_first() else {
        *v = Value::String(REDACTED.into());
        return true;
    };
    match v {
        Value::Object(map) if *first == "*" => map
            .values_mut()
            .fold(false, |acc, c| redact_at(c, rest) | acc),
        Value::Object(map) => map.get_mut(*first).is_some_and(|c| redact_at(c, rest)),
        Value::Array(items) if *first == "*" => items
            .iter_mut()
            .fold(false, |acc, c| redact_at(c, rest) | acc),
        Value::Array(items) => first
            .parse::<usize>()
            .ok()
            .and_then(|i| items.get_mut(i))
            .is_some_and(|c| redact_at(c, rest)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intercept::StaticToolFilter;
    use crate::jsonrpc::Payload;
    use serde_json::json;

    fn render(redact: &[&str], max: usize) -> Render {
        Render {
            lines: true,
            telemetry: None,
            server: ServerRef {
                name: "weather".into(),
                namespace: "tools".into(),
                pod: "weather-0".into(),
            },
            mode: Enforcement::Enforce,
            redact: redact.iter().map(|s| (*s).to_owned()).collect(),
            max_argument_bytes: max,
            metrics: Arc::new(Metrics::new()),
        }
    }

    fn lines(buf: &[u8]) -> Vec<Value> {
        std::str::from_utf8(buf)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn record(body: &Value, events: Vec<Event>, end: End) -> Record {
        Record {
            time: std::time::UNIX_EPOCH + Duration::from_micros(1_764_094_216_123_456),
            start: Instant::now(),
            total: Duration::from_micros(900),
            upstream: Some(Duration::from_micros(700)),
            body: Bytes::from(body.to_string()),
            single: !body.is_array(),
            transport: Transport::StreamableHttp,
            session: Some("s-1".into()),
            identity: Some(Arc::new(Identity {
                sub: "alice".into(),
                iss: "https://idp".into(),
                email: Some("alice@example.com".into()),
                client_id: Some("agent-7".into()),
                ..Identity::default()
            })),
            client: Some(Arc::new(ClientInfo {
                name: Some("claude".into()),
                version: Some("1.2".into()),
                protocol_version: Some("2025-06-18".into()),
            })),
            trace: None,
            events,
            lists: None,
            end,
        }
    }

    fn event(index: usize, denied: bool, note: DecisionNote) -> Event {
        Event {
            index,
            denied,
            code: denied.then_some(-32003),
            message: None,
            note,
            policy: Duration::from_micros(12),
        }
    }

    fn answered(status: u16, body: &Value) -> End {
        End::Answered(Answer {
            status,
            sse: false,
            forwarded: true,
            frames: vec![Bytes::from(body.to_string())],
            captured: 0,
            truncated: false,
            complete: true,
        })
    }

    /// A 200 SSE answer made of `frames`; `complete` when the stream ended in order.
    fn sse_answer(frames: Vec<Bytes>, complete: bool) -> End {
        End::Answered(Answer {
            status: 200,
            sse: true,
            forwarded: true,
            frames,
            complete,
            ..Answer::default()
        })
    }

    #[test]
    fn line_shape_and_redaction() {
        let body = json!({"jsonrpc":"2.0","id":7,"method":"tools/call","params":{
            "name":"login","arguments":{"user":"a","password":"hunter2","nested":{"token":"t0k"}}}});
        let note = DecisionNote {
            policy_hash: Some("sha256:abc".into()),
            redact: vec!["arguments.nested.token".into()],
            ..DecisionNote::default()
        };
        let r = record(
            &body,
            vec![event(0, false, note)],
            answered(
                200,
                &json!({"jsonrpc":"2.0","id":7,"result":{"content":[],"isError":true}}),
            ),
        );
        let mut buf = Vec::new();
        assert_eq!(
            render(&["arguments.password"], 4096).record(&r, &mut buf),
            1
        );
        let text = String::from_utf8(buf.clone()).unwrap();
        assert!(!text.contains("hunter2") && !text.contains("t0k"), "{text}");
        let l = &lines(&buf)[0];
        assert_eq!(l["schema"], SCHEMA);
        assert_eq!(l["time"], "2025-11-25T18:10:16.123456Z");
        assert_eq!(l["audit_id"].as_str().unwrap().len(), 36);
        assert_eq!(l["trace_id"], "");
        assert_eq!(
            l["subject"],
            json!({"sub":"alice","email":"alice@example.com","client_id":"agent-7","issuer":"https://idp"})
        );
        assert_eq!(l["client"]["name"], "claude");
        assert_eq!(l["server"]["namespace"], "tools");
        assert_eq!(
            (l["method"].as_str(), l["target"].as_str()),
            (Some("tools/call"), Some("login"))
        );
        assert_eq!(l["request_id"], 7);
        assert_eq!(
            l["arguments"],
            json!({"user":"a","password":REDACTED,"nested":{"token":REDACTED}})
        );
        assert_eq!(
            l["redacted"],
            json!(["arguments.password", "arguments.nested.token"])
        );
        assert_eq!(
            l["decision"],
            json!({"allowed":true,"forwarded":true,"mode":"enforce","reasons":[],"policy":"sha256:abc","source":null,"limit":null})
        );
        assert_eq!(
            (l["outcome"].as_str(), l["status"].as_u64()),
            (Some("ok"), Some(200))
        );
        assert_eq!(l["tool_error"], true);
        assert_eq!(
            l["duration_us"],
            json!({"total":900,"upstream":700,"policy":12})
        );
    }

    #[test]
    fn batch_outcomes_denied_error_and_shadow() {
        let body = json!([
            {"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"rm","arguments":{}}},
            {"jsonrpc":"2.0","method":"notifications/progress"},
            {"jsonrpc":"2.0","id":"b","method":"tools/call","params":{"name":"add","arguments":{"a":1}}},
            {"jsonrpc":"2.0","id":3,"method":"resources/read","params":{"uri":"file:///x"}}
        ]);
        let mut rm = event(0, true, DecisionNote::default());
        rm.message = Some("Unknown tool: rm".into());
        let shadow = DecisionNote {
            reasons: vec!["no reading".into()],
            shadow_denied: true,
            policy_hash: Some("sha256:1".into()),
            source: Some("policy"),
            ..DecisionNote::default()
        };
        let answer = json!([
            {"jsonrpc":"2.0","id":"b","error":{"code":-32602,"message":"bad"}},
            {"jsonrpc":"2.0","id":3,"result":{"contents":[]}}
        ]);
        let r = record(
            &body,
            vec![
                rm,
                event(2, false, DecisionNote::default()),
                event(3, false, shadow),
            ],
            answered(200, &answer),
        );
        let mut buf = Vec::new();
        assert_eq!(render(&[], 4096).record(&r, &mut buf), 3);
        let l = lines(&buf);
        assert_eq!(l[0]["outcome"], "denied");
        assert_eq!(l[0]["error_code"], -32003);
        assert_eq!(l[0]["decision"]["reasons"], json!(["Unknown tool: rm"]));
        assert_eq!(l[0]["decision"]["forwarded"], false);
        assert_eq!(l[0]["duration_us"]["upstream"], Value::Null);
        assert_eq!(
            (l[1]["outcome"].as_str(), l[1]["error_code"].as_i64()),
            (Some("error"), Some(-32602))
        );
        assert_eq!(l[2]["target"], "file:///x");
        assert_eq!(l[2]["outcome"], "ok");
        assert_eq!(
            l[2]["decision"],
            json!({"allowed":false,"forwarded":true,"mode":"shadow","reasons":["no reading"],"policy":"sha256:1","source":"policy","limit":null})
        );
    }

    #[test]
    fn sse_answers_upstream_failures_and_caps() {
        let body = json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"big","arguments":{"blob":"x".repeat(100),"k":"secret"}}});
        let sse = "event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"}\n\n\
                   data: {\"jsonrpc\":\"2.0\",\"id\":1,\"error\":{\"code\":-1,\"message\":\"x\"}}\n\n";
        let r = record(
            &body,
            vec![event(0, false, DecisionNote::default())],
            sse_answer(vec![Bytes::from(&sse[..30]), Bytes::from(&sse[30..])], true),
        );
        let mut buf = Vec::new();
        render(&["arguments.k"], 64).record(&r, &mut buf);
        let l = &lines(&buf)[0];
        assert_eq!(
            (l["outcome"].as_str(), l["error_code"].as_i64()),
            (Some("error"), Some(-1))
        );
        assert_eq!(l["arguments"], Value::Null);
        assert_eq!(l["arguments_truncated"], true);
        assert!(l["arguments_bytes"].as_u64().unwrap() > 64);
        assert_eq!(l["redacted"], json!(["arguments.k"]));

        let r = record(
            &body,
            vec![event(0, false, DecisionNote::default())],
            End::UpstreamFailed(Some(502)),
        );
        let mut buf = Vec::new();
        render(&[], 4096).record(&r, &mut buf);
        assert_eq!(lines(&buf)[0]["outcome"], "upstream_error");
        assert_eq!(lines(&buf)[0]["status"], 502);
    }

    #[test]
    fn a_stream_cut_after_a_notification_has_not_answered() {
        let body = json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"slow"}});
        let sse = "event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{\"progress\":1}}\n\n";
        let r = record(
            &body,
            vec![event(0, false, DecisionNote::default())],
            sse_answer(vec![Bytes::from(sse)], false),
        );
        let mut buf = Vec::new();
        render(&[], 4096).record(&r, &mut buf);
        assert_eq!(lines(&buf)[0]["outcome"], "error");
    }

    #[test]
    fn redaction_paths() {
        let mut v = json!({"a":{"b":1,"c":[{"p":"s1"},{"p":"s2"}]},"top":"t"});
        assert!(redact_path(&mut v, "arguments.a.c.*.p"));
        assert!(redact_path(&mut v, "params.arguments.top"));
        assert!(!redact_path(&mut v, "arguments.missing.x"));
        assert!(!redact_path(&mut v, "other.top"));
        assert!(!redact_path(&mut v, "argumentsX"));
        assert_eq!(
            v,
            json!({"a":{"b":1,"c":[{"p":REDACTED},{"p":REDACTED}]},"top":REDACTED})
        );
        assert!(redact_path(&mut v, "arguments.a.c.0"));
        assert!(redact_path(&mut v, "arguments"));
        assert_eq!(v, json!(REDACTED));
    }

    #[test]
    fn pretty_arguments_stay_on_one_line() {
        let body = "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"e\",\"arguments\":{\n  \"text\": \"hi\"\n}}}";
        let mut r = record(
            &json!(null),
            vec![event(0, false, DecisionNote::default())],
            End::NotForwarded,
        );
        r.body = Bytes::from(body);
        r.single = true;
        let mut buf = Vec::new();
        render(&[], 4096).record(&r, &mut buf);
        let text = String::from_utf8(buf).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert_eq!(lines(text.as_bytes())[0]["arguments"], json!({"text":"hi"}));
    }

    #[test]
    fn recording_notes_only_audited_requests() {
        let (tx, mut rx) = mpsc::channel(4);
        let auditor = Arc::new(Auditor {
            tx,
            metrics: Arc::new(Metrics::new()),
            drops: RateLimited::new(),
            tracing: false,
        });
        let body = json!([
            {"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"rm"}},
            {"jsonrpc":"2.0","id":2,"method":"ping"},
            {"jsonrpc":"2.0","id":3,"method":"tools/list"}
        ]);
        let bytes = Bytes::from(body.to_string());
        let Payload::Batch(msgs) = Payload::parse(&bytes).unwrap() else {
            unreachable!()
        };
        let filter = StaticToolFilter::new(&[], &["rm".into()]);
        let ctx = Context {
            transport: Transport::StreamableHttp,
            session_id: None,
            identity: None,
            client: None,
        };
        let begin = || {
            Recording::begin(
                Some(&auditor),
                &http::HeaderMap::new(),
                &bytes,
                false,
                None,
                None,
                Instant::now(),
            )
        };
        let mut rec = begin();
        let verdicts: Vec<bool> = msgs
            .iter()
            .enumerate()
            .map(|(i, m)| rec.check(&filter, &ctx, i, m).0 == Verdict::Allow)
            .collect();
        assert_eq!(verdicts, [false, true, true]);
        assert!(rec.active());
        drop(rec);
        let Ok(Msg::Record(r)) = rx.try_recv() else {
            panic!("no record")
        };
        assert_eq!(r.events.iter().map(|e| e.index).collect::<Vec<_>>(), [0, 2]);
        let mut buf = Vec::new();
        render(&[], 4096).record(&r, &mut buf);
        let l = lines(&buf);
        assert_eq!(
            (l[0]["outcome"].as_str(), l[1]["outcome"].as_str()),
            (Some("denied"), Some("error"))
        );

        // A full queue drops, counts and does not block.
        for _ in 0..6 {
            let mut rec = begin();
            rec.check(&filter, &ctx, 0, &msgs[0]);
        }
        assert!(
            auditor
                .metrics
                .encode()
                .contains("mcp_guard_audit_dropped_total 2"),
            "{}",
            auditor.metrics.encode()
        );
    }
}
