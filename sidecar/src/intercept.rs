//! The one interception point of the request path. Identity, policy and filtering plug in here;
//! the transports call it and never decide anything themselves.

use std::collections::HashSet;

use serde_json::Value;

use crate::identity::Identity;
use crate::jsonrpc::{self, Message};
use crate::list_answer::ListAnswer;
use mcp_guard_policy::mcp::{List, Method};

/// Which MCP transport a message arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Streamable HTTP (2025-03-26 and later).
    StreamableHttp,
    /// The older HTTP+SSE transport (2024-11-05).
    Sse,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::StreamableHttp => "streamable-http",
            Transport::Sse => "sse",
        }
    }
}

/// What the interceptor knows of the request a message belongs to.
#[derive(Debug, Clone)]
pub struct Context<'a> {
    pub transport: Transport,
    pub session_id: Option<&'a str>,
    /// The verified caller; `None` when the request is anonymous.
    pub identity: Option<&'a Identity>,
    /// The MCP client, as it introduced itself; `None` when unknown.
    pub client: Option<&'a ClientInfo>,
}

/// The MCP client as it introduced itself; the policy input's `client`, so defined with it.
pub use mcp_guard_policy::input::ClientInfo;

/// The decision on one client message.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Allow,
    /// Refuse with this JSON-RPC error (`code`, `message`, optional `data`); the message never
    /// reaches the server.
    Deny {
        code: i64,
        message: String,
        data: Option<Value>,
    },
}

impl Verdict {
    /// The JSON-RPC error response that answers a denied request.
    pub fn error_response(&self, id: Option<&Value>) -> Option<Value> {
        match self {
            Verdict::Allow => None,
            Verdict::Deny {
                code,
                message,
                data,
            } => Some(jsonrpc::error_response(id, *code, message, data.clone())),
        }
    }
}

/// What the audit trail records of a decision beyond the [`Verdict`]: filled in by
/// [`Interceptor::check_noted`]; empty (no allocation) when nothing is to be said.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DecisionNote {
    /// Why the policy refused (or, in shadow mode, would have refused).
    pub reasons: Vec<String>,
    /// The hash of the policy bundle that decided.
    pub policy_hash: Option<std::sync::Arc<str>>,
    /// The policy would deny, but enforcement is shadow so the message was forwarded.
    pub shadow_denied: bool,
    /// Argument paths (`arguments.password`) the policy asks the audit trail to redact.
    pub redact: Vec<String>,
    /// What refused: `policy`, `--deny-tools`, `--allow-tools`, `no policy loaded`, `rate
    /// limit`; `None` when nothing did.
    pub source: Option<&'static str>,
    /// The rate limits the policy counts an allowed request against; checked by the proxy after
    /// every interceptor allowed it.
    pub limits: Vec<mcp_guard_policy::limits::Limit>,
    /// The rate limit that refused the request (or would have, in shadow mode).
    pub limit: Option<String>,
}

/// The decision on one client message as the decide stage took it: the verdict the proxy acts
/// on, and what the observers record of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub verdict: Verdict,
    pub note: DecisionNote,
    /// How long deciding took.
    pub took: std::time::Duration,
}

impl Decision {
    /// Puts `msg` to `interceptor`.
    pub fn of(interceptor: &dyn Interceptor, ctx: &Context<'_>, msg: &Message) -> Decision {
        let t = std::time::Instant::now();
        let mut note = DecisionNote::default();
        let verdict = interceptor.check_noted(ctx, msg, &mut note);
        Decision {
            verdict,
            note,
            took: t.elapsed(),
        }
    }

    /// A message nothing decides on (a response of the client to the server).
    pub fn allowed() -> Decision {
        Decision {
            verdict: Verdict::Allow,
            note: DecisionNote::default(),
            took: std::time::Duration::ZERO,
        }
    }
}

/// What filtering one list answer did, for the audit trail.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filtered {
    /// The names (URIs for resources) of the items hidden from this caller; in shadow mode,
    /// the items that would have been hidden (they stay in the answer).
    pub hidden: Vec<String>,
    /// Whether items were removed from the answer (not so in shadow mode).
    pub removed: bool,
    /// The hash of the policy bundle that decided, when one did.
    pub policy_hash: Option<std::sync::Arc<str>>,
    /// What hid them: `policy`, `--deny-tools`, `--allow-tools`, `no policy loaded`.
    pub sources: Vec<&'static str>,
    /// The result was marked `cacheScope: "private"` (MCP 2026-07-28): it was decided for this
    /// caller, so no shared cache may serve it to another.
    pub made_private: bool,
}

impl Filtered {
    /// Adds what another filter did to the same answer.
    pub fn merge(&mut self, other: Filtered) {
        self.hidden.extend(other.hidden);
        self.removed |= other.removed;
        self.made_private |= other.made_private;
        if other.policy_hash.is_some() {
            self.policy_hash = other.policy_hash;
        }
        for s in other.sources {
            if !self.sources.contains(&s) {
                self.sources.push(s);
            }
        }
    }
}

impl Filtered {
    /// Whether the result was changed and must be passed on re-serialized.
    pub fn changed(&self) -> bool {
        self.removed || self.made_private
    }
}

/// Decides on client messages and rewrites list results.
pub trait Interceptor: Send + Sync + 'static {
    /// Decides on one request or notification from the client.
    fn check(&self, ctx: &Context<'_>, msg: &Message) -> Verdict;

    /// As [`Self::check`], noting for the audit trail what the verdict alone does not say.
    fn check_noted(&self, ctx: &Context<'_>, msg: &Message, _note: &mut DecisionNote) -> Verdict {
        self.check(ctx, msg)
    }

    /// Whether answers to `list` must be seen (and possibly rewritten) by [`Self::filter_list`].
    fn rewrites(&self, list: List) -> bool;

    /// Removes from a list answer the items this caller may not see, and says which.
    fn filter_list(&self, ctx: &Context<'_>, answer: &mut ListAnswer<'_>) -> Filtered;

    /// The server created task `task_id` for a call of `tool` (a task-augmented `tools/call`):
    /// later requests that name the task are decided with the tool they stem from.
    fn task_created(&self, _task_id: &str, _tool: &str) {}
}

/// Filters the list in a parsed `result` with `interceptor`. A result without the list (as an
/// array) is not handed to the filters.
pub fn filter_result(
    interceptor: &dyn Interceptor,
    ctx: &Context<'_>,
    list: List,
    result: &mut Value,
) -> Filtered {
    let Some(mut answer) = ListAnswer::take(list, result) else {
        return Filtered::default();
    };
    let filtered = interceptor.filter_list(ctx, &mut answer);
    answer.restore(result);
    filtered
}

/// Several interceptors in a row: a message passes only if every one allows it, and every one
/// filters list answers.
pub struct Chain(pub Vec<std::sync::Arc<dyn Interceptor>>);

impl Interceptor for Chain {
    fn check(&self, ctx: &Context<'_>, msg: &Message) -> Verdict {
        for i in &self.0 {
            let v = i.check(ctx, msg);
            if v != Verdict::Allow {
                return v;
            }
        }
        Verdict::Allow
    }

    fn check_noted(&self, ctx: &Context<'_>, msg: &Message, note: &mut DecisionNote) -> Verdict {
        for i in &self.0 {
            let v = i.check_noted(ctx, msg, note);
            if v != Verdict::Allow {
                return v;
            }
        }
        Verdict::Allow
    }

    fn rewrites(&self, list: List) -> bool {
        self.0.iter().any(|i| i.rewrites(list))
    }

    fn filter_list(&self, ctx: &Context<'_>, answer: &mut ListAnswer<'_>) -> Filtered {
        let mut all = Filtered::default();
        for i in &self.0 {
            all.merge(i.filter_list(ctx, answer));
        }
        all
    }

    fn task_created(&self, task_id: &str, tool: &str) {
        for i in &self.0 {
            i.task_created(task_id, tool);
        }
    }
}

/// The static allow/deny list of tool names from configuration.
#[derive(Debug, Clone, Default)]
pub struct StaticToolFilter {
    allow: Option<HashSet<String>>,
    deny: HashSet<String>,
}

impl StaticToolFilter {
    /// `allow` empty means every tool not in `deny` is visible.
    pub fn new(allow: &[String], deny: &[String]) -> Self {
        let clean = |v: &[String]| -> HashSet<String> {
            v.iter()
                .map(|s| s.trim())
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        };
        let allow = clean(allow);
        StaticToolFilter {
            allow: (!allow.is_empty()).then_some(allow),
            deny: clean(deny),
        }
    }

    pub fn visible(&self, tool: &str) -> bool {
        self.hidden_by(tool).is_none()
    }

    /// The flag that hides `tool`, if one does.
    pub fn hidden_by(&self, tool: &str) -> Option<&'static str> {
        if self.deny.contains(tool) {
            return Some("--deny-tools");
        }
        if self.allow.as_ref().is_some_and(|a| !a.contains(tool)) {
            return Some("--allow-tools");
        }
        None
    }
}

impl Interceptor for StaticToolFilter {
    fn check(&self, ctx: &Context<'_>, msg: &Message) -> Verdict {
        self.check_noted(ctx, msg, &mut DecisionNote::default())
    }

    fn check_noted(&self, _ctx: &Context<'_>, msg: &Message, note: &mut DecisionNote) -> Verdict {
        if msg.mcp != Method::ToolsCall {
            return Verdict::Allow;
        }
        let Some(tool) = msg.target() else {
            note.source = Some("mcp-guard");
            return Verdict::Deny {
                code: jsonrpc::code::INVALID_PARAMS,
                message: "tools/call without a tool name".into(),
                data: None,
            };
        };
        match self.hidden_by(tool) {
            None => Verdict::Allow,
            // A hidden tool does not exist for this caller: answer as MCP answers an unknown tool.
            Some(flag) => {
                note.source = Some(flag);
                Verdict::Deny {
                    code: jsonrpc::code::INVALID_PARAMS,
                    message: format!("Unknown tool: {tool}"),
                    data: None,
                }
            }
        }
    }

    fn rewrites(&self, list: List) -> bool {
        list == List::Tools
    }

    fn filter_list(&self, _ctx: &Context<'_>, answer: &mut ListAnswer<'_>) -> Filtered {
        let mut out = Filtered::default();
        if answer.list != List::Tools {
            return out;
        }
        // An item without a readable name cannot be judged: fail closed and drop it.
        let keep: Vec<bool> = answer
            .items()
            .iter()
            .map(|t| {
                let by = match t.name() {
                    Some(n) => self.hidden_by(n),
                    None => Some("mcp-guard"),
                };
                let Some(by) = by else {
                    return true;
                };
                out.hidden.push(t.display_name());
                if !out.sources.contains(&by) {
                    out.sources.push(by);
                }
                false
            })
            .collect();
        if !out.hidden.is_empty() {
            answer.retain(keep);
            out.removed = true;
        }
        out
    }
}

/// For tests and fuzzing: a static filter that also marks the answers it sees private as the
/// policy does (when it hid an item, or the server called the answer shared).
#[cfg(any(test, feature = "fuzzing"))]
pub struct MarksPrivate(pub StaticToolFilter);

#[cfg(any(test, feature = "fuzzing"))]
impl Interceptor for MarksPrivate {
    fn check(&self, ctx: &Context<'_>, msg: &Message) -> Verdict {
        self.0.check(ctx, msg)
    }

    fn rewrites(&self, list: List) -> bool {
        self.0.rewrites(list)
    }

    fn filter_list(&self, ctx: &Context<'_>, answer: &mut ListAnswer<'_>) -> Filtered {
        let mut out = self.0.filter_list(ctx, answer);
        if out.removed || answer.shared_by_server() {
            answer.make_private();
            out.made_private = true;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jsonrpc::Payload;
    use serde_json::json;

    const CTX: Context<'static> = Context {
        transport: Transport::StreamableHttp,
        session_id: None,
        identity: None,
        client: None,
    };

    fn call(tool: &str) -> Message {
        let body = json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":tool}});
        match Payload::parse(body.to_string().as_bytes()).unwrap() {
            Payload::Single(m) => m,
            Payload::Batch(_) => unreachable!(),
        }
    }

    #[test]
    fn deny_list() {
        let f = StaticToolFilter::new(&[], &["rm".into()]);
        assert_eq!(f.check(&CTX, &call("echo")), Verdict::Allow);
        let v = f.check(&CTX, &call("rm"));
        let err = v.error_response(Some(&json!(1))).unwrap();
        assert_eq!(err["error"]["message"], "Unknown tool: rm");
    }

    #[test]
    fn allow_list_hides_the_rest() {
        let f = StaticToolFilter::new(&["echo".into()], &[]);
        assert!(f.visible("echo"));
        assert!(!f.visible("add"));
        let mut r =
            json!({"tools":[{"name":"echo"},{"name":"add"},{"title":"no name"}],"nextCursor":"c"});
        let f = filter_result(&f, &CTX, List::Tools, &mut r);
        assert!(f.removed);
        assert_eq!(f.hidden, ["add", "(unnamed)"]);
        assert_eq!(f.sources, ["--allow-tools", "mcp-guard"]);
        assert_eq!(r, json!({"tools":[{"name":"echo"}],"nextCursor":"c"}));
    }

    #[test]
    fn static_denials_name_their_flag() {
        let f = StaticToolFilter::new(&["echo".into()], &["rm".into()]);
        let mut note = DecisionNote::default();
        assert_ne!(f.check_noted(&CTX, &call("rm"), &mut note), Verdict::Allow);
        assert_eq!(note.source, Some("--deny-tools"));
        let mut note = DecisionNote::default();
        assert_ne!(f.check_noted(&CTX, &call("add"), &mut note), Verdict::Allow);
        assert_eq!(note.source, Some("--allow-tools"));
    }
}
