//! Enforcing the policy at the interception point: governed methods are decided, list answers
//! are filtered item by item, and a hidden item is answered as one that does not exist.

use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use parking_lot::Mutex;
use regorus::Value as RegoValue;
use serde_json::{Value, json};

use super::catalog::{ToolCatalog, View};
use super::config::{Enforcement, PolicyConfig};
use super::engine::{CompiledBundle, Decision};
use super::input::{Frame, ServerInfo};
use super::store::PolicyStore;
use crate::intercept::{Context, DecisionNote, Interceptor, LIST_METHODS, Verdict, list_field};
use crate::jsonrpc::{Message, code};
use crate::metrics::Metrics;

/// The methods a policy decides on; every other method passes.
pub const GOVERNED: [&str; 4] = [
    "tools/call",
    "prompts/get",
    "resources/read",
    "resources/subscribe",
];

/// Visibility decisions remembered at most; the cache starts over when full.
const MAX_CACHED: usize = 100_000;

pub struct PolicyInterceptor {
    store: Arc<PolicyStore>,
    mode: Enforcement,
    hide_reasons: bool,
    server: RegoValue,
    catalog: ToolCatalog,
    metrics: Arc<Metrics>,
    /// Whether a tool is visible, by (bundle, caller frame, tool definition): a visibility input
    /// holds nothing else, so an agent that lists the same tools again pays for each once.
    visible_cache: Mutex<HashMap<u64, bool>>,
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
            }
            .to_value(),
            catalog: ToolCatalog::default(),
            metrics,
            visible_cache: Mutex::new(HashMap::new()),
        }
    }

    /// Decides, turning an evaluation failure into a denial (fail closed).
    fn decide(&self, bundle: &CompiledBundle, input: RegoValue) -> Decision {
        bundle.decide_value(input).unwrap_or_else(|e| {
            tracing::error!(error = %e, policy_hash = %bundle.hash, "policy evaluation failed; denying");
            Decision {
                allow: false,
                reasons: vec!["policy evaluation failed".into()],
                redact: Vec::new(),
            }
        })
    }

    /// Whether one list item is visible: the bundle's `visible` rule, or else whether a call of
    /// the item with no arguments would be allowed. An evaluation failure hides the item.
    fn item_visible(&self, bundle: &CompiledBundle, input: RegoValue) -> bool {
        bundle.visible_value(input).unwrap_or_else(|e| {
            tracing::error!(error = %e, policy_hash = %bundle.hash, "policy visibility failed; hiding the item");
            false
        })
    }

    /// The tools of one list a caller may see, by the bundle's `visible_tools` rule, in one
    /// evaluation. An evaluation failure hides every tool.
    fn visible_tools(
        &self,
        bundle: &CompiledBundle,
        frame: &Frame,
        views: Vec<RegoValue>,
    ) -> BTreeSet<String> {
        bundle
            .visible_tools_value(frame.tool_list(views))
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, policy_hash = %bundle.hash, "policy `visible_tools` failed; hiding the tools");
                BTreeSet::new()
            })
    }

    fn tool_view(&self, msg: &Message) -> Option<RegoValue> {
        (msg.method() == Some("tools/call"))
            .then(|| msg.target().and_then(|n| self.catalog.view(n)))
            .flatten()
            .map(|(view, _)| view)
    }

    /// Visibility of one tool of a list, from the cache when this caller has seen this
    /// definition under this bundle before.
    fn tool_visible(
        &self,
        bundle: &CompiledBundle,
        frame: &Frame,
        frame_key: u64,
        item: &Value,
        (view, hash): &View,
    ) -> bool {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (bundle.generation(), frame_key, &**hash).hash(&mut h);
        let key = h.finish();
        if let Some(v) = self.visible_cache.lock().get(&key) {
            return *v;
        }
        let visible = self.item_visible(
            bundle,
            frame.list_item("tools/list", item, Some(view.clone())),
        );
        let mut cache = self.visible_cache.lock();
        if cache.len() >= MAX_CACHED {
            cache.clear();
        }
        cache.insert(key, visible);
        visible
    }

    /// Which items of a list stay, deciding each item on its own. `views` holds the policy view
    /// of each item of a `tools/list`.
    fn keep_items(
        &self,
        bundle: &CompiledBundle,
        frame: &Frame,
        method: &str,
        items: &[Value],
        views: &[View],
    ) -> Vec<bool> {
        if method == "tools/list" {
            let frame_key = frame.fingerprint();
            return items
                .iter()
                .zip(views)
                .map(|(item, view)| self.tool_visible(bundle, frame, frame_key, item, view))
                .collect();
        }
        items
            .iter()
            .map(|item| self.item_visible(bundle, frame.list_item(method, item, None)))
            .collect()
    }
}

impl Interceptor for PolicyInterceptor {
    fn check(&self, ctx: &Context<'_>, msg: &Message) -> Verdict {
        self.check_noted(ctx, msg, &mut DecisionNote::default())
    }

    fn check_noted(&self, ctx: &Context<'_>, msg: &Message, note: &mut DecisionNote) -> Verdict {
        let Some(method) = msg.method() else {
            return Verdict::Allow;
        };
        if !GOVERNED.contains(&method) {
            return Verdict::Allow;
        }
        let name = msg.target().unwrap_or_default();
        let Some(bundle) = self.store.current() else {
            if self.mode == Enforcement::Shadow {
                note.shadow_denied = true;
                note.reasons = vec!["no policy loaded".into()];
                tracing::warn!(method, name, "no policy loaded; forwarded (shadow)");
                self.metrics.shadow_denied(Some(method));
                return Verdict::Allow;
            }
            note.reasons = vec!["no policy loaded".into()];
            tracing::warn!(method, name, "no policy loaded; denied");
            return Verdict::Deny {
                code: code::DENIED,
                message: "mcp-guard has no valid policy loaded; the request is refused".into(),
                data: None,
            };
        };
        let frame = Frame::new(ctx, &self.server);
        let mut decision = self.decide(&bundle, frame.message(msg, self.tool_view(msg)));
        note.policy_hash = Some(Arc::clone(&bundle.hash));
        note.redact = std::mem::take(&mut decision.redact);
        if decision.allowed() {
            return Verdict::Allow;
        }
        let subject = ctx.identity.map(|i| i.sub.as_str()).unwrap_or("anonymous");
        note.reasons.clone_from(&decision.reasons);
        if self.mode == Enforcement::Shadow {
            note.shadow_denied = true;
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
        let visible = if method == "tools/call" && bundle.has_visible_tools {
            let (view, _) = self.catalog.view_of(&item);
            self.visible_tools(&bundle, &frame, vec![view])
                .contains(name)
        } else {
            self.item_visible(&bundle, frame.list_item(list, &item, self.tool_view(msg)))
        };
        if !visible {
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
        let views = if method == "tools/list" {
            let recorded = self.catalog.record(items);
            for c in recorded.changed {
                self.metrics.tool_changed();
                tracing::warn!(tool = %c.tool, pinned = %c.pinned, now = %c.now, "tool definition changed since it was first listed");
            }
            recorded.views
        } else {
            Vec::new()
        };
        let Some(bundle) = self.store.current() else {
            if self.mode == Enforcement::Shadow {
                return false;
            }
            let hidden = items.len();
            items.clear();
            tracing::warn!(method, hidden, "no policy loaded; list answered empty");
            return hidden > 0;
        };
        let frame = Frame::new(ctx, &self.server);
        let keep: Vec<bool> = if method == "tools/list" && bundle.has_visible_tools {
            let views = views.into_iter().map(|(view, _)| view).collect();
            let names = self.visible_tools(&bundle, &frame, views);
            items
                .iter()
                .map(|i| {
                    i.get("name")
                        .and_then(Value::as_str)
                        .is_some_and(|n| names.contains(n))
                })
                .collect()
        } else {
            self.keep_items(&bundle, &frame, method, items, &views)
        };
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
