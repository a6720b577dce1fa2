//! The audit trail: one JSON line (schema `mcp-guard.audit/v1`, see `docs/audit.md`) per audited
//! request, written by [`Lines`], one of the consumers of the observation record
//! ([`crate::observe`]): it redacts and caps the arguments, serializes, and writes the lines of a
//! batch at once, off the request path. Switched off with `--audit-disabled`: then no line is
//! built and nothing is written, whatever else observes the requests.

use std::borrow::Cow;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use mcp_guard_common::env;
use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::metrics::Metrics;
use crate::observe::{Consumer, Decided, Observation, RateLimited, ServerRef};

/// The schema every line names.
pub const SCHEMA: &str = "mcp-guard.audit/v1";

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

/// The audit trail as a consumer of observations: lines gathered in a buffer, written at the
/// end of each batch.
pub struct Lines {
    out: Box<dyn Write + Send>,
    buf: Vec<u8>,
    /// Lines in `buf`.
    pending: u64,
    server: ServerRef,
    redact: Vec<String>,
    max_argument_bytes: usize,
    /// Counts the lines a failed write lost.
    metrics: Arc<Metrics>,
    failures: RateLimited,
}

impl Lines {
    /// The audit trail, opened; `None` when it is off.
    pub fn open(
        config: &AuditConfig,
        server: ServerRef,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Option<Lines>> {
        if config.audit_disabled {
            return Ok(None);
        }
        let out: Box<dyn Write + Send> = match &config.audit_file {
            Some(path) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
            None => Box::new(Stdout),
        };
        for p in &config.audit_redact {
            let p = p.trim();
            if !p.is_empty() && !p.starts_with("arguments") && !p.starts_with("params.arguments") {
                tracing::warn!(
                    path = p,
                    "--audit-redact path does not start with `arguments`; it matches nothing"
                );
            }
        }
        tracing::info!(
            to = %config.audit_file.as_ref().map_or_else(|| "stdout".into(), |p| p.display().to_string()),
            "audit trail enabled"
        );
        Ok(Some(Lines::new(out, config, server, metrics)))
    }

    fn new(
        out: Box<dyn Write + Send>,
        config: &AuditConfig,
        server: ServerRef,
        metrics: Arc<Metrics>,
    ) -> Lines {
        Lines {
            out,
            buf: Vec::with_capacity(64 * 1024),
            pending: 0,
            server,
            redact: config
                .audit_redact
                .iter()
                .map(|p| p.trim().to_owned())
                .filter(|p| !p.is_empty())
                .collect(),
            max_argument_bytes: config.audit_max_argument_bytes,
            metrics,
            failures: RateLimited::new(),
        }
    }

    /// Appends the line of `o` to `buf`.
    fn line(&self, o: &Observation<'_>, buf: &mut Vec<u8>) {
        let (arguments, arguments_bytes, arguments_truncated, redacted) =
            self.arguments(o.arguments, o.redact);
        let identity = o.identity;
        let client = o.client;
        let trace_id = o.trace.map(|t| t.trace_id_hex()).unwrap_or_default();
        let line = Line {
            schema: SCHEMA,
            time: crate::time::rfc3339(o.time, true),
            audit_id: &o.audit_id,
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
            transport: o.transport.as_str(),
            session: o.session,
            request_id: o.request_id,
            method: o.method,
            target: o.target,
            arguments,
            arguments_bytes,
            arguments_truncated,
            redacted,
            hidden: o.hidden.as_deref(),
            decision: &o.decision,
            outcome: o.outcome,
            status: o.status,
            error_code: o.error_code,
            tool_error: o.tool_error,
            duration_us: Durations {
                total: micros(o.total),
                upstream: o.upstream.map(micros),
                policy: micros(o.policy),
            },
        };
        if serde_json::to_writer(&mut *buf, &line).is_ok() {
            buf.push(b'\n');
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

impl Consumer for Lines {
    fn observe(&mut self, o: &Observation<'_>) {
        let mut buf = std::mem::take(&mut self.buf);
        self.line(o, &mut buf);
        self.buf = buf;
        self.pending += 1;
    }

    fn flush(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        if let Err(e) = self
            .out
            .write_all(&self.buf)
            .and_then(|()| self.out.flush())
        {
            self.metrics.audit_dropped(self.pending);
            if let Some(count) = self.failures.add(self.pending) {
                tracing::error!(error = %e, dropped = count, "cannot write audit records");
            }
        }
        self.buf.clear();
        self.pending = 0;
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

#[derive(Serialize)]
struct Line<'a> {
    schema: &'static str,
    time: String,
    audit_id: &'a str,
    trace_id: &'a str,
    subject: Subject<'a>,
    client: ClientRef<'a>,
    server: &'a ServerRef,
    transport: &'static str,
    session: Option<&'a str>,
    request_id: Option<&'a RawValue>,
    method: &'a str,
    target: Option<&'a str>,
    arguments: Option<Cow<'a, RawValue>>,
    arguments_bytes: usize,
    arguments_truncated: bool,
    redacted: Vec<&'a str>,
    /// List methods: the items hidden from the caller (would be hidden, in shadow mode).
    hidden: Option<&'a [String]>,
    decision: &'a Decided<'a>,
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
struct Durations {
    total: u64,
    upstream: Option<u64>,
    policy: u64,
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
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
    use crate::identity::Identity;
    use crate::intercept::{ClientInfo, DecisionNote, Transport};
    use crate::observe::{Answer, End, Event, Record};
    use crate::policy::Enforcement;
    use bytes::Bytes;
    use serde_json::json;
    use std::time::Instant;

    /// The audit trail of a sidecar enforcing, as the worker drives it: each observation of a
    /// record becomes a line in `buf`.
    struct Render(Lines);

    impl Render {
        fn record(&self, r: &Record, buf: &mut Vec<u8>) -> u64 {
            let mut n = 0;
            crate::observe::each(r, Enforcement::Enforce.as_str(), |o| {
                self.0.line(o, buf);
                n += 1;
            });
            n
        }
    }

    fn render(redact: &[&str], max: usize) -> Render {
        let config = AuditConfig {
            audit_redact: redact.iter().map(|s| (*s).to_owned()).collect(),
            audit_max_argument_bytes: max,
            ..AuditConfig::default()
        };
        let server = ServerRef {
            name: "weather".into(),
            namespace: "tools".into(),
            pod: "weather-0".into(),
        };
        Render(Lines::new(
            Box::new(std::io::sink()),
            &config,
            server,
            Arc::new(Metrics::new()),
        ))
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
        use crate::intercept::{Context, Decision, StaticToolFilter, Verdict};
        use crate::jsonrpc::Payload;
        use crate::observe::Recording;
        let metrics = Arc::new(Metrics::new());
        let (observer, mut queue) = crate::observe::Observer::queue(4, {
            let m = Arc::clone(&metrics);
            Arc::new(move |n| m.audit_dropped(n))
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
        let headers = http::HeaderMap::new();
        let begin = || {
            Recording::begin(
                Some(&observer),
                crate::observe::Begin {
                    headers: &headers,
                    body: &bytes,
                    single: false,
                    transport: Transport::StreamableHttp,
                    session: None,
                    identity: None,
                    client: None,
                    start: Instant::now(),
                },
            )
        };
        let mut rec = begin();
        let mut decisions: Vec<Decision> = msgs
            .iter()
            .map(|m| Decision::of(&filter, &ctx, m))
            .collect();
        let verdicts: Vec<bool> = decisions
            .iter()
            .map(|d| d.verdict == Verdict::Allow)
            .collect();
        rec.decided(&msgs, &mut decisions);
        assert_eq!(verdicts, [false, true, true]);
        assert!(rec.active());
        drop(rec);
        let Some(r) = queue.try_record() else {
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
            let mut d = vec![Decision::of(&filter, &ctx, &msgs[0])];
            rec.decided(&msgs[..1], &mut d);
        }
        assert!(
            metrics.encode().contains("mcp_guard_audit_dropped_total 2"),
            "{}",
            metrics.encode()
        );
    }
}
