//! Enforcing the policy at the interception point: governed methods are decided, list answers
//! are filtered item by item, and a hidden item is answered as one that does not exist.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use parking_lot::Mutex;
use regorus::Value as RegoValue;
use serde_json::{Value, json};

use mcp_guard_policy::catalog::{ToolCatalog, View};
use mcp_guard_policy::engine::{CompiledBundle, Decision};
use mcp_guard_policy::input::{Frame, ServerInfo};

use super::config::{Enforcement, PolicyConfig};
use super::store::PolicyStore;
use crate::identity::Identity;
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

/// Distinct frames (callers, in effect) remembered at most; the cache starts over when full.
const MAX_FRAMES: usize = 1_000;

/// Tool visibility already decided, by exact key: the bundle's generation, the frame (numbered
/// here by its full text, so two callers never share an entry unless their frames are equal),
/// and the definition's SHA-256. A visibility input holds nothing else, so an agent that lists
/// the same tools again pays for each decision once.
#[derive(Default)]
struct VisibleCache {
    frames: HashMap<String, u64>,
    /// The last frame number given. Numbers are never reused, not even after the cache starts
    /// over: a listing still running with an old number can then only add entries no one reads.
    last_frame: u64,
    decisions: HashMap<(u64, u64, Arc<str>), bool>,
}

impl VisibleCache {
    /// The number of `frame_key`, numbering a frame seen for the first time.
    fn frame(&mut self, frame_key: String) -> u64 {
        if let Some(n) = self.frames.get(&frame_key) {
            return *n;
        }
        if self.frames.len() >= MAX_FRAMES {
            self.frames.clear();
            self.decisions.clear();
        }
        self.last_frame += 1;
        self.frames.insert(frame_key, self.last_frame);
        self.last_frame
    }

    fn get(&self, key: &(u64, u64, Arc<str>)) -> Option<bool> {
        self.decisions.get(key).copied()
    }

    fn insert(&mut self, key: (u64, u64, Arc<str>), visible: bool) {
        if self.decisions.len() >= MAX_CACHED {
            self.decisions.clear();
        }
        self.decisions.insert(key, visible);
    }
}

pub struct PolicyInterceptor {
    store: Arc<PolicyStore>,
    mode: Enforcement,
    hide_reasons: bool,
    server: RegoValue,
    catalog: ToolCatalog,
    metrics: Arc<Metrics>,
    visible_cache: Mutex<VisibleCache>,
}

/// The policy frame of a request: its caller, client, session and transport.
fn frame(ctx: &Context<'_>, server: &RegoValue) -> Frame {
    Frame::new(
        ctx.identity.map(Identity::policy_subject),
        ctx.client,
        server,
        ctx.session_id,
        ctx.transport.as_str(),
    )
}

/// The input deciding on one client message, in `frame`.
fn message_input(frame: &Frame, msg: &Message, tool: Option<RegoValue>) -> RegoValue {
    let arguments = msg.params().and_then(|p| p.get("arguments"));
    frame.message(
        msg.method().unwrap_or_default(),
        msg.target(),
        arguments,
        tool,
    )
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
            visible_cache: Mutex::new(VisibleCache::default()),
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
    /// definition under this bundle before. `frame_number` is the frame's number in the cache
    /// ([`VisibleCache::frame`]).
    fn tool_visible(
        &self,
        bundle: &CompiledBundle,
        frame: &Frame,
        frame_number: u64,
        item: &Value,
        (view, hash): &View,
    ) -> bool {
        let key = (bundle.generation(), frame_number, Arc::clone(hash));
        if let Some(v) = self.visible_cache.lock().get(&key) {
            return v;
        }
        let visible = self.item_visible(
            bundle,
            frame.list_item("tools/list", item, Some(view.clone())),
        );
        self.visible_cache.lock().insert(key, visible);
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
            let frame_number = self.visible_cache.lock().frame(frame.key());
            return items
                .iter()
                .zip(views)
                .map(|(item, view)| self.tool_visible(bundle, frame, frame_number, item, view))
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
        let frame = frame(ctx, &self.server);
        let mut decision = self.decide(&bundle, message_input(&frame, msg, self.tool_view(msg)));
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
            if recorded.unpinned > 0 {
                tracing::warn!(
                    unpinned = recorded.unpinned,
                    "tool catalog full: tools listed for the first time are not pinned; policy sees them as changed"
                );
            }
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
        let frame = frame(ctx, &self.server);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intercept::{ClientInfo, Transport};
    use crate::jsonrpc::Payload;

    #[test]
    fn the_document_has_the_documented_shape() {
        let id = Identity {
            sub: "ana".into(),
            roles: vec!["analyst".into()],
            ..Default::default()
        };
        let client = ClientInfo {
            name: Some("agent".into()),
            version: Some("1".into()),
            protocol_version: Some("2025-11-25".into()),
        };
        let ctx = Context {
            transport: Transport::StreamableHttp,
            session_id: Some("s1"),
            identity: Some(&id),
            client: Some(&client),
        };
        let server = ServerInfo {
            name: "warehouse".into(),
            namespace: "analytics".into(),
            pod: "w-0".into(),
        };
        let frame = frame(&ctx, &server.to_value());
        let body = json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"run_query","arguments":{"limit":5}}});
        let Payload::Single(msg) = Payload::parse(body.to_string().as_bytes()).unwrap() else {
            unreachable!()
        };
        let doc = message_input(
            &frame,
            &msg,
            Some(RegoValue::from(json!({"name": "run_query"}))),
        );
        let doc: Value = serde_json::from_str(&doc.to_json_str().unwrap()).unwrap();
        assert_eq!(
            doc,
            json!({
                "version": mcp_guard_policy::input::INPUT_VERSION,
                "subject": {"authenticated": true, "sub": "ana", "iss": "", "email": null, "groups": [],
                            "roles": ["analyst"], "scopes": [], "client_id": null, "claims": {}},
                "client": {"name": "agent", "version": "1", "protocol_version": "2025-11-25"},
                "server": {"name": "warehouse", "namespace": "analytics", "pod": "w-0"},
                "request": {"method": "tools/call", "name": "run_query", "tool": "run_query",
                            "arguments": {"limit": 5}, "session_id": "s1", "transport": "streamable-http"},
                "tool": {"name": "run_query"},
            })
        );
        let item = frame.list_item("prompts/list", &json!({"name": "greet"}), None);
        let item: Value = serde_json::from_str(&item.to_json_str().unwrap()).unwrap();
        assert_eq!(item["request"]["method"], "prompts/get");
        assert_eq!(item["request"]["prompt"], "greet");
        assert_eq!(item["request"]["list"], "prompts/list");
    }

    #[test]
    fn frames_are_told_apart_exactly_and_numbers_never_come_back() {
        let mut cache = VisibleCache::default();
        let a = cache.frame(r#"[{"sub":"a"}]"#.into());
        let b = cache.frame(r#"[{"sub":"b"}]"#.into());
        assert_ne!(a, b);
        assert_eq!(cache.frame(r#"[{"sub":"a"}]"#.into()), a);
        let hash: Arc<str> = "sha256:00".into();
        cache.insert((1, a, Arc::clone(&hash)), true);
        assert_eq!(cache.get(&(1, a, Arc::clone(&hash))), Some(true));
        assert_eq!(
            cache.get(&(1, b, Arc::clone(&hash))),
            None,
            "another caller"
        );
        assert_eq!(
            cache.get(&(2, a, Arc::clone(&hash))),
            None,
            "another bundle"
        );

        // Past the limit the cache starts over, and no number is given twice: a listing that
        // still holds `a` cannot fill in decisions for a frame numbered after the reset.
        let mut seen = std::collections::HashSet::from([a, b]);
        for i in 0..MAX_FRAMES + 5 {
            assert!(seen.insert(cache.frame(format!("[{i}]"))));
        }
        assert!(cache.frames.len() <= MAX_FRAMES);
        assert_eq!(cache.get(&(1, a, hash)), None, "forgotten with the reset");
    }
}
