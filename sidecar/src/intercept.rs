//! The one interception point of the request path. Identity, policy and filtering plug in here;
//! the transports call it and never decide anything themselves.

use std::collections::HashSet;

use serde_json::Value;

use crate::identity::Identity;
use crate::jsonrpc::{self, Message};

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
}

/// The list methods whose results are filtered item by item.
pub const LIST_METHODS: [&str; 4] = [
    "tools/list",
    "prompts/list",
    "resources/list",
    "resources/templates/list",
];

/// The field of a list result that holds its items.
pub fn list_field(method: &str) -> Option<&'static str> {
    match method {
        "tools/list" => Some("tools"),
        "prompts/list" => Some("prompts"),
        "resources/list" => Some("resources"),
        "resources/templates/list" => Some("resourceTemplates"),
        _ => None,
    }
}

/// Guesses the list method of a result by its shape; used for answers whose request the proxy
/// did not see (a resumed stream), so that nothing hidden slips through unfiltered.
pub fn list_method_by_shape(result: &Value) -> Option<&'static str> {
    let obj = result.as_object()?;
    LIST_METHODS
        .into_iter()
        .find(|m| list_field(m).is_some_and(|f| obj.get(f).is_some_and(Value::is_array)))
}

/// Decides on client messages and rewrites list results.
pub trait Interceptor: Send + Sync + 'static {
    /// Decides on one request or notification from the client.
    fn check(&self, ctx: &Context<'_>, msg: &Message) -> Verdict;

    /// As [`Self::check`], noting for the audit trail what the verdict alone does not say.
    fn check_noted(&self, ctx: &Context<'_>, msg: &Message, _note: &mut DecisionNote) -> Verdict {
        self.check(ctx, msg)
    }

    /// Whether answers to `method` must be seen (and possibly rewritten) by [`Self::filter_list`].
    fn rewrites(&self, method: &str) -> bool;

    /// Removes from a list `result` the items this caller may not see. Returns whether anything
    /// was removed.
    fn filter_list(&self, ctx: &Context<'_>, method: &str, result: &mut Value) -> bool;
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

    fn rewrites(&self, method: &str) -> bool {
        self.0.iter().any(|i| i.rewrites(method))
    }

    fn filter_list(&self, ctx: &Context<'_>, method: &str, result: &mut Value) -> bool {
        self.0.iter().fold(false, |changed, i| {
            i.filter_list(ctx, method, result) | changed
        })
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
        !self.deny.contains(tool) && self.allow.as_ref().is_none_or(|a| a.contains(tool))
    }
}

impl Interceptor for StaticToolFilter {
    fn check(&self, _ctx: &Context<'_>, msg: &Message) -> Verdict {
        if msg.method() != Some("tools/call") {
            return Verdict::Allow;
        }
        match msg.target() {
            Some(tool) if self.visible(tool) => Verdict::Allow,
            // A hidden tool does not exist for this caller: answer as MCP answers an unknown tool.
            Some(tool) => Verdict::Deny {
                code: jsonrpc::code::INVALID_PARAMS,
                message: format!("Unknown tool: {tool}"),
                data: None,
            },
            None => Verdict::Deny {
                code: jsonrpc::code::INVALID_PARAMS,
                message: "tools/call without a tool name".into(),
                data: None,
            },
        }
    }

    fn rewrites(&self, method: &str) -> bool {
        method == "tools/list"
    }

    fn filter_list(&self, _ctx: &Context<'_>, method: &str, result: &mut Value) -> bool {
        if method != "tools/list" {
            return false;
        }
        let Some(items) = result.get_mut("tools").and_then(Value::as_array_mut) else {
            return false;
        };
        let before = items.len();
        // An item without a readable name cannot be judged: fail closed and drop it.
        items.retain(|t| {
            t.get("name")
                .and_then(Value::as_str)
                .is_some_and(|n| self.visible(n))
        });
        items.len() != before
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
        assert!(f.filter_list(&CTX, "tools/list", &mut r));
        assert_eq!(r, json!({"tools":[{"name":"echo"}],"nextCursor":"c"}));
    }

    #[test]
    fn shape() {
        assert_eq!(
            list_method_by_shape(&json!({"tools": []})),
            Some("tools/list")
        );
        assert_eq!(
            list_method_by_shape(&json!({"resourceTemplates": []})),
            Some("resources/templates/list")
        );
        assert_eq!(list_method_by_shape(&json!({"content": []})), None);
    }
}
