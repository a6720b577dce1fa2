//! From a completed [`Record`] to one [`Observation`] per observed message: the request and the
//! captured answer parsed again (borrowing, on the worker's thread), the outcome worked out, the
//! decision put in the words every consumer uses.

use std::borrow::Cow;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use super::record::{End, Event, Record};
use super::trace::TraceContext;
use crate::identity::Identity;
use crate::intercept::{ClientInfo, Filtered, Transport};
use mcp_guard_policy::mcp::{Class, ItemKind, Method};

/// One observed message of a completed request: what the audit line, the span and the call
/// metrics all say of it.
pub struct Observation<'a> {
    /// When the request arrived.
    pub time: SystemTime,
    /// Arrival to the end of the answer.
    pub total: Duration,
    /// Forwarding to the end of the answer; `None` when this message was not forwarded.
    pub upstream: Option<Duration>,
    /// How long deciding on this message took.
    pub policy: Duration,
    pub transport: Transport,
    pub session: Option<&'a str>,
    pub identity: Option<&'a Identity>,
    pub client: Option<&'a ClientInfo>,
    /// The request's trace context, when it has one.
    pub trace: Option<TraceContext>,
    /// The first observed message of its request (its span is the request's span).
    pub first: bool,
    pub request_id: Option<&'a RawValue>,
    pub method: &'a str,
    /// The method, parsed.
    pub mcp: Method,
    pub target: Option<&'a str>,
    /// What `target` names.
    pub target_kind: Option<ItemKind>,
    /// The arguments as the client sent them (the audit trail redacts and caps them).
    pub arguments: Option<&'a RawValue>,
    /// Argument paths the policy asks the audit trail to redact.
    pub redact: &'a [String],
    /// List methods: the items hidden from the caller (would be hidden, in shadow mode).
    pub hidden: Option<Vec<String>>,
    pub decision: Decided<'a>,
    pub outcome: &'static str,
    pub status: Option<u16>,
    pub error_code: Option<i64>,
    pub tool_error: bool,
    /// Names this observation in the audit trail and on its span.
    pub audit_id: String,
}

/// The decision on one message, as the audit line's `decision` object says it.
#[derive(Serialize)]
pub struct Decided<'a> {
    pub allowed: bool,
    pub forwarded: bool,
    pub mode: &'static str,
    pub reasons: Cow<'a, [String]>,
    pub policy: Option<Cow<'a, str>>,
    /// What refused or hid: `policy`, `--deny-tools`, `--allow-tools`, `no policy loaded`,
    /// `rate limit`, `mcp-guard`; `null` when nothing did.
    pub source: Option<String>,
    /// The name of the rate limit that refused (or would have, in shadow mode); `null` when
    /// none did.
    pub limit: Option<&'a str>,
}

impl Decided<'_> {
    /// `allow`, `deny` or `shadow_deny`: the decision label of spans and call metrics.
    pub fn label(&self) -> &'static str {
        match (self.allowed, self.forwarded) {
            (true, _) => "allow",
            (false, true) => "shadow_deny",
            (false, false) => "deny",
        }
    }
}

impl Observation<'_> {
    /// The tool a `tools/call` names (the label of call metrics).
    pub fn tool(&self) -> Option<&str> {
        self.target.filter(|_| self.mcp == Method::ToolsCall)
    }
}

/// Calls `f` with the observation of each observed message of `r`.
pub(crate) fn each(r: &Record, mode: &'static str, mut f: impl FnMut(&Observation<'_>)) {
    // A single message is read in one pass; a batch is cut into its messages first.
    let batch: Vec<&RawValue> = if r.single {
        Vec::new()
    } else {
        serde_json::from_slice(&r.body).unwrap_or_default()
    };
    let (answer_bytes, sse_events) = captured(&r.end);
    let answers = match &r.end {
        End::Answered(a) => Answers::parse(&answer_bytes, &sse_events, a.sse),
        _ => Answers { items: Vec::new() },
    };
    for (k, ev) in r.events.iter().enumerate() {
        let req = if r.single {
            serde_json::from_slice::<ReqView<'_>>(&r.body)
        } else {
            let Some(raw) = batch.get(ev.index) else {
                continue;
            };
            serde_json::from_str::<ReqView<'_>>(raw.get())
        };
        let Ok(req) = req else {
            continue;
        };
        f(&observe(r, ev, k == 0, &req, &answers, mode));
    }
}

/// The captured answer, reassembled and (for SSE) cut into events' data.
fn captured(end: &End) -> (Vec<u8>, Vec<Vec<u8>>) {
    let End::Answered(a) = end else {
        return (Vec::new(), Vec::new());
    };
    let joined: Vec<u8> = a.frames.concat();
    let mut events = Vec::new();
    if a.sse {
        let mut s = crate::sse::EventSplitter::default();
        s.push(&joined);
        while let Some(ev) = s.next_event() {
            if let Some(d) = crate::sse::data(&ev) {
                events.push(d);
            }
        }
    }
    (joined, events)
}

/// The observation of event `ev` of `r`, whose request is `req`.
fn observe<'a>(
    r: &'a Record,
    ev: &'a Event,
    first: bool,
    req: &'a ReqView<'a>,
    answers: &Answers<'_>,
    mode: &'static str,
) -> Observation<'a> {
    let method = req.method.as_deref().unwrap_or_default();
    let mcp = Method::parse(method);
    let item = mcp.item(req.params.as_ref());
    let (outcome, status, mut error_code, tool_error) = outcome(r, ev, req, answers);
    if ev.denied {
        error_code = ev.code;
    }
    let listed = match mcp.class() {
        Class::List(_) => Some(list_note(r, req.id)),
        _ => None,
    };
    Observation {
        time: r.time,
        total: r.total,
        upstream: r.upstream.filter(|_| !ev.denied),
        policy: ev.policy,
        transport: r.transport,
        session: r.session.as_deref(),
        identity: r.identity.as_deref(),
        client: r.client.as_deref(),
        trace: r.trace,
        first,
        request_id: req.id,
        method,
        mcp,
        target: item.map(|i| i.name),
        target_kind: item.map(|i| i.kind),
        arguments: req.params.as_ref().and_then(|p| p.arguments),
        redact: &ev.note.redact,
        decision: decided(ev, listed.as_ref(), mode),
        hidden: listed.map(|f| f.hidden),
        outcome,
        status,
        error_code,
        tool_error,
        audit_id: uuid::Uuid::new_v4().to_string(),
    }
}

/// The decision on `ev` in the audit trail's words; a list names the bundle and the sources
/// that filtered its answer.
fn decided<'a>(ev: &'a Event, listed: Option<&Filtered>, mode: &'static str) -> Decided<'a> {
    let reasons: Cow<'a, [String]> = match &ev.message {
        Some(m) if ev.note.reasons.is_empty() => Cow::Owned(vec![m.clone()]),
        _ => Cow::Borrowed(&ev.note.reasons),
    };
    let (policy, source) = match listed {
        Some(f) => (
            f.policy_hash.as_deref().map(|h| Cow::Owned(h.to_owned())),
            (!f.sources.is_empty()).then(|| f.sources.join(", ")),
        ),
        None => (
            ev.note.policy_hash.as_deref().map(Cow::Borrowed),
            ev.note.source.map(str::to_owned),
        ),
    };
    Decided {
        allowed: !ev.denied && !ev.note.shadow_denied,
        forwarded: !ev.denied,
        mode: if ev.note.shadow_denied {
            "shadow"
        } else {
            mode
        },
        reasons,
        policy,
        source,
        limit: ev.note.limit.as_deref(),
    }
}

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
