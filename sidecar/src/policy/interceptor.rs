//! Enforcing the policy at the interception point: governed methods are decided, list answers
//! are filtered item by item, and a hidden item is answered as one that does not exist.

use std::sync::Arc;

use serde_json::{Value, json};

use super::catalog::ToolCatalog;
use super::config::{Enforcement, PolicyConfig};
use super::engine::{CompiledBundle, Decision};
use super::input::{self, ServerInfo};
use super::store::PolicyStore;
use crate::intercept::{Context, Interceptor, LIST_METHODS, Verdict, list_field};
use crate::jsonrpc::{Message, code};
use crate::metrics::Metrics;

/// The methods a policy decides on; every other method passes.
pub const GOVERNED: [&str; 4] = [
    "tools/call",
    "prompts/get",
    "resources/read",
    "resources/subscribe",
];

pub struct PolicyInterceptor {
    store: Arc<PolicyStore>,
    mode: Enforcement,
    hide_reasons: bool,
    server: ServerInfo,
    catalog: ToolCatalog,
    metrics: Arc<Metrics>,
}

/// The answer to a call of an item the caller cannot see: the one MCP servers give for an item
/// that does not exist, so a hidden item is revealed by no path.
fn not_found(method: &str, name: &str) -> Verdict {
    let (code, message) = match method {
        "tools/call" => (code::INVALID_PARAMS, format!("Unknown tool: {name}")),
        "prompts/get" => (code::INVALID_PARAMS, format!("Unknown prompt: {name}")),
        _ => (-32002, format!("Resource not found: {name}")),
    };
    Verdict::Deny {
        code,
        message,
        data: None,
    }
}

impl PolicyInterceptor {
    pub fn new(config: &PolicyConfig, store: Arc<PolicyStore>, metrics: Arc<Metrics>) -> Self {
        PolicyInterceptor {
            store,
            mode: config.enforcement,
            hide_reasons: config.hide_deny_reasons,
            server: ServerInfo {
                name: config.server_name.clone(),
                namespace: config.pod_namespace.clone(),
                pod: config.pod_name.clone(),
            },
            catalog: ToolCatalog::default(),
            metrics,
        }
    }

    /// Decides, turning an evaluation failure into a denial (fail closed).
    fn decide(&self, bundle: &CompiledBundle, input: &Value) -> Decision {
        bundle.decide(input).unwrap_or_else(|e| {
            tracing::error!(error = %e, policy_hash = %bundle.hash, "policy evaluation failed; denying");
            Decision {
                allow: false,
                reasons: vec!["policy evaluation failed".into()],
            }
        })
    }

    /// Whether one list item is visible: the bundle's `visible` rule, or else whether a call of
    /// the item with no arguments would be allowed.
    fn item_visible(&self, bundle: &CompiledBundle, input: &Value) -> bool {
        if bundle.has_visible {
            bundle.visible(input).unwrap_or_else(|e| {
                tracing::error!(error = %e, "policy `visible` failed; hiding the item");
                false
            })
        } else {
            self.decide(bundle, input).allowed()
        }
    }

    fn tool_view(&self, msg: &Message) -> Option<Value> {
        (msg.method() == Some("tools/call"))
            .then(|| msg.target().and_then(|n| self.catalog.for_policy(n)))
            .flatten()
    }
}

impl Interceptor for PolicyInterceptor {
    fn check(&self, ctx: &Context<'_>, msg: &Message) -> Verdict {
        let Some(method) = msg.method() else {
            return Verdict::Allow;
        };
        if !GOVERNED.contains(&method) {
            return Verdict::Allow;
        }
        let name = msg.target().unwrap_or_default();
        let Some(bundle) = self.store.current() else {
            if self.mode == Enforcement::Shadow {
                tracing::warn!(method, name, "no policy loaded; forwarded (shadow)");
                self.metrics.shadow_denied(Some(method));
                return Verdict::Allow;
            }
            tracing::warn!(method, name, "no policy loaded; denied");
            return Verdict::Deny {
                code: code::DENIED,
                message: "mcp-guard has no valid policy loaded; the request is refused".into(),
                data: None,
            };
        };
        let input = input::for_message(ctx, &self.server, msg, self.tool_view(msg));
        let decision = self.decide(&bundle, &input);
        if decision.allowed() {
            return Verdict::Allow;
        }
        let subject = ctx.identity.map(|i| i.sub.as_str()).unwrap_or("anonymous");
        if self.mode == Enforcement::Shadow {
            tracing::info!(method, name, subject, reasons = ?decision.reasons, policy_hash = %bundle.hash, "would deny (shadow)");
            self.metrics.shadow_denied(Some(method));
            return Verdict::Allow;
        }
        tracing::info!(method, name, subject, reasons = ?decision.reasons, policy_hash = %bundle.hash, "denied by policy");
        // A caller who cannot see the item is told it does not exist.
        let list = match method {
            "tools/call" => "tools/list",
            "prompts/get" => "prompts/list",
            _ => "resources/list",
        };
        let item = match method {
            "tools/call" | "prompts/get" => json!({"name": name}),
            _ => json!({"uri": name}),
        };
        let item_input = input::for_list_item(ctx, &self.server, list, &item, self.tool_view(msg));
        if !self.item_visible(&bundle, &item_input) {
            return not_found(method, name);
        }
        let (message, data) = if self.hide_reasons {
            ("denied by policy".to_owned(), None)
        } else {
            let message = match decision.reasons.as_slice() {
                [] => "denied by policy".to_owned(),
                r => format!("denied by policy: {}", r.join("; ")),
            };
            (
                message,
                Some(json!({"reasons": decision.reasons, "policy": &*bundle.hash})),
            )
        };
        Verdict::Deny {
            code: code::DENIED,
            message,
            data,
        }
    }

    fn rewrites(&self, method: &str) -> bool {
        LIST_METHODS.contains(&method)
    }

    fn filter_list(&self, ctx: &Context<'_>, method: &str, result: &mut Value) -> bool {
        let Some(field) = list_field(method) else {
            return false;
        };
        let Some(items) = result.get_mut(field).and_then(Value::as_array_mut) else {
            return false;
        };
        if method == "tools/list" {
            for c in self.catalog.record(items) {
                self.metrics.tool_changed();
                tracing::warn!(tool = %c.tool, pinned = %c.pinned, now = %c.now, "tool definition changed since it was first listed");
            }
        }
        let Some(bundle) = self.store.current() else {
            if self.mode == Enforcement::Shadow {
                return false;
            }
            let hidden = items.len();
            items.clear();
            tracing::warn!(method, hidden, "no policy loaded; list answered empty");
            return hidden > 0;
        };
        let before = items.len();
        let mut keep = Vec::with_capacity(before);
        for item in items.iter() {
            let tool = (method == "tools/list").then(|| self.catalog.for_policy_item(item));
            let input = input::for_list_item(ctx, &self.server, method, item, tool);
            keep.push(self.item_visible(&bundle, &input));
        }
        let hidden = keep.iter().filter(|k| !**k).count();
        if hidden == 0 {
            return false;
        }
        if self.mode == Enforcement::Shadow {
            tracing::info!(method, hidden, policy_hash = %bundle.hash, "would hide list items (shadow)");
            return false;
        }
        let mut flags = keep.into_iter();
        items.retain(|_| flags.next().unwrap_or(false));
        true
    }
}
