//! Enforcing the policy at the interception point: every method but the plumbing ones is
//! decided ([`mcp_guard_policy::mcp`] says which is which), list answers are filtered item by
//! item, and a hidden item is answered as one that does not exist, on every method that names it.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use parking_lot::Mutex;
use regorus::Value as RegoValue;
use serde_json::{Value, json};

use mcp_guard_policy::catalog::{ToolCatalog, View};
use mcp_guard_policy::engine::{CompiledBundle, Decision};
use mcp_guard_policy::input::Frame;
use mcp_guard_policy::mcp::{Class, Item, ItemKind, List, Method};

use super::config::{Enforcement, PolicyConfig};
use super::store::PolicyStore;
use crate::identity::Identity;
use crate::intercept::{Context, DecisionNote, Filtered, Interceptor, Verdict};
use crate::jsonrpc::{Message, code};
use crate::list_answer::{ListAnswer, ListItem};
use crate::metrics::Metrics;

/// Tasks whose originating tool is remembered at most; past it the oldest is forgotten (its
/// requests are then decided by task id alone, as for a task created before the sidecar
/// started).
const MAX_TASKS: usize = 10_000;

/// The tool each task was created by, as the server's answers to task-augmented calls said.
#[derive(Default)]
struct TaskOrigins {
    tools: HashMap<String, Arc<str>>,
    order: std::collections::VecDeque<String>,
}

impl TaskOrigins {
    fn insert(&mut self, task: &str, tool: &str) {
        if self
            .tools
            .insert(task.to_owned(), Arc::from(tool))
            .is_none()
        {
            self.order.push_back(task.to_owned());
        }
        while self.order.len() > MAX_TASKS {
            if let Some(old) = self.order.pop_front() {
                self.tools.remove(&old);
            }
        }
    }

    fn get(&self, task: &str) -> Option<Arc<str>> {
        self.tools.get(task).cloned()
    }
}

/// Visibility decisions remembered at most; the cache starts over when full.
const MAX_CACHED: usize = 100_000;

/// Distinct frames (callers, in effect) remembered at most; the cache starts over when full.
const MAX_FRAMES: usize = 1_000;

/// Tool visibility already decided, by exact key: the bundle's generation, the frame (numbered
/// here by the text of what the bundle's rules can tell of it, [`CompiledBundle::frame_key`]: its
/// caller terms' values and the frame parts read besides them, so two callers share an entry only
/// when no rule can tell them apart) and the tool's definition (its SHA-256). A visibility input
/// holds nothing else, so an agent that lists the same tools again, with a refreshed token too,
/// pays for each decision once, and so does each next caller the policy cannot tell from an
/// earlier one (another user of the same roles, for a policy reading roles).
///
/// Finer, for a bundle with tool classes ([`CompiledBundle::tool_class`]): the decision taken
/// for the first tool of a class stands for every tool of that class, so a caller of a kind
/// never seen pays one evaluation per class, not per tool.
#[derive(Default)]
struct VisibleCache {
    frames: FastMap<String, u64>,
    /// The last frame number given. Numbers are never reused, not even after the cache starts
    /// over: a listing still running with an old number can then only add entries no one reads.
    last_frame: u64,
    /// By generation, frame and definition.
    decisions: FastMap<(u64, u64, Arc<str>), bool>,
    /// By generation, frame and tool class.
    by_class: FastMap<(u64, u64, Arc<str>), bool>,
    /// The class of a definition under the bundle of generation `classes_generation`.
    classes: FastMap<Arc<str>, Arc<str>>,
    classes_generation: u64,
}

/// The cache's maps are looked up several times per tool of every listing, so they hash with
/// foldhash (seeded per process, as `hashbrown`'s maps do) rather than SipHash: their keys are
/// frame keys the sidecar writes, definition hashes (SHA-256) and tool classes, none of which a
/// caller chooses, and each map is bounded.
type FastMap<K, V> = foldhash::HashMap<K, V>;

/// What the cache knows of one tool for one frame.
#[derive(Debug, PartialEq)]
enum Known {
    Decided(bool),
    /// Not decided; the tool's class when the bundle's classes put it in one already.
    Class(Option<Arc<str>>),
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
            self.by_class.clear();
        }
        self.last_frame += 1;
        self.frames.insert(frame_key, self.last_frame);
        self.last_frame
    }

    fn get(&self, key: &(u64, u64, Arc<str>)) -> Known {
        if let Some(v) = self.decisions.get(key) {
            return Known::Decided(*v);
        }
        let class = (self.classes_generation == key.0)
            .then(|| self.classes.get(&key.2).cloned())
            .flatten();
        Known::Class(class)
    }

    /// The decision for a tool of `class` (once its class is known), remembered for `key` too.
    fn get_by_class(&mut self, key: &(u64, u64, Arc<str>), class: &Arc<str>) -> Option<bool> {
        if self.classes_generation != key.0 || self.classes.len() >= MAX_CACHED {
            self.classes.clear();
            self.classes_generation = key.0;
        }
        self.classes
            .entry(Arc::clone(&key.2))
            .or_insert_with(|| Arc::clone(class));
        let v = *self.by_class.get(&(key.0, key.1, Arc::clone(class)))?;
        self.insert(key.clone(), None, v);
        Some(v)
    }

    fn insert(&mut self, key: (u64, u64, Arc<str>), class: Option<Arc<str>>, visible: bool) {
        if self.decisions.len() >= MAX_CACHED {
            self.decisions.clear();
            self.by_class.clear();
        }
        if let Some(class) = class {
            self.by_class.insert((key.0, key.1, class), visible);
        }
        self.decisions.insert(key, visible);
    }
}

pub struct PolicyInterceptor {
    store: Arc<PolicyStore>,
    mode: Enforcement,
    hide_reasons: bool,
    server: RegoValue,
    catalog: Arc<ToolCatalog>,
    metrics: Arc<Metrics>,
    visible_cache: Mutex<VisibleCache>,
    tasks: Mutex<TaskOrigins>,
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

/// The input deciding on one client message, in `frame`; `origin` is the tool that created the
/// task the message names, when known.
fn message_input(
    frame: &Frame,
    msg: &Message,
    origin: Option<&str>,
    tool: Option<RegoValue>,
) -> RegoValue {
    let arguments = msg.params().and_then(|p| p.get("arguments"));
    frame.message_from(
        msg.method().unwrap_or_default(),
        msg.item(),
        origin,
        arguments,
        tool,
    )
}

/// The answer to a request that names an item the caller cannot see: the one MCP servers give
/// for an item that does not exist, so a hidden item is revealed by no path.
fn not_found(item: Item<'_>) -> Verdict {
    let (code, message) = item.kind.not_found(item.name);
    Verdict::Deny {
        code,
        message,
        data: None,
    }
}

/// The list item standing for `item` when its visibility is decided.
fn list_item_of(list: List, name: &str) -> Value {
    json!({ list.item_field(): name })
}

impl PolicyInterceptor {
    /// An interceptor with a catalog of its own, pinned as `config` says.
    pub fn new(config: &PolicyConfig, store: Arc<PolicyStore>, metrics: Arc<Metrics>) -> Self {
        Self::with_catalog(config, store, metrics, Arc::new(config.tool_catalog()))
    }

    /// An interceptor that decides on the tool definitions of `catalog`, which the proxy and the
    /// sidecar's own listing share.
    pub fn with_catalog(
        config: &PolicyConfig,
        store: Arc<PolicyStore>,
        metrics: Arc<Metrics>,
        catalog: Arc<ToolCatalog>,
    ) -> Self {
        PolicyInterceptor {
            store,
            mode: config.enforcement,
            hide_reasons: config.hide_deny_reasons,
            server: config.server_value(),
            catalog,
            metrics,
            visible_cache: Mutex::new(VisibleCache::default()),
            tasks: Mutex::new(TaskOrigins::default()),
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
                limits: Vec::new(),
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

    /// The server's definition of the tool a message is about: the one it calls, or the one
    /// that created the task it names (`origin`).
    fn tool_view(&self, msg: &Message, origin: Option<&str>) -> Option<RegoValue> {
        let name = match msg.mcp {
            Method::ToolsCall => msg.target(),
            _ => origin,
        }?;
        self.catalog.view(name).map(|(view, _)| view)
    }

    /// Visibility of one tool of a list, from the cache when this caller has seen this
    /// definition under this bundle before. `frame_number` is the frame's number in the cache
    /// ([`VisibleCache::frame`]).
    fn tool_visible(
        &self,
        bundle: &CompiledBundle,
        frame: &Frame,
        frame_number: u64,
        item: &ListItem<'_>,
        (view, hash): &View,
    ) -> bool {
        let key = (bundle.generation(), frame_number, Arc::clone(hash));
        let class = match self.visible_cache.lock().get(&key) {
            Known::Decided(v) => return v,
            Known::Class(class) => class,
        };
        // Tools the bundle cannot tell apart share one decision ([`mcp_guard_policy::classes`]);
        // without classes each definition has its own. A definition's class is found once per
        // bundle.
        let class = class.or_else(|| bundle.tool_class(item.name(), view).map(Arc::from));
        if let Some(class) = &class
            && let Some(v) = self.visible_cache.lock().get_by_class(&key, class)
        {
            return v;
        }
        let visible = self.item_visible(
            bundle,
            frame.list_item(List::Tools, item.name(), Some(view.clone())),
        );
        self.visible_cache.lock().insert(key, class, visible);
        visible
    }

    /// Which items of a list stay, deciding each item on its own. `views` holds the policy view
    /// of each item of a `tools/list`.
    fn keep_items(
        &self,
        bundle: &CompiledBundle,
        frame: &Frame,
        list: List,
        items: &[ListItem<'_>],
        views: &[View],
    ) -> Vec<bool> {
        if list == List::Tools {
            // The key is built before the lock is taken: other listings wait only for the lookup.
            let key = bundle.frame_key(frame);
            let frame_number = self.visible_cache.lock().frame(key);
            return items
                .iter()
                .zip(views)
                .map(|(item, view)| self.tool_visible(bundle, frame, frame_number, item, view))
                .collect();
        }
        items
            .iter()
            .map(|item| self.item_visible(bundle, frame.list_item(list, item.name(), None)))
            .collect()
    }

    /// Whether the caller of `frame` may see `item` in its list, as the list's filter decides:
    /// the bundle's `visible_tools` for a tool when it has one, else `visible` (or a call of the
    /// item allowed). An item of no list (a task) counts as visible.
    fn named_item_visible(
        &self,
        bundle: &CompiledBundle,
        frame: &Frame,
        item: Item<'_>,
        tool: Option<RegoValue>,
    ) -> bool {
        let Some(list) = item.kind.list() else {
            return true;
        };
        if list == List::Tools && bundle.has_visible_tools {
            let (view, _) = self.catalog.view_of(&list_item_of(list, item.name));
            return self
                .visible_tools(bundle, frame, vec![view])
                .contains(item.name);
        }
        self.item_visible(bundle, frame.list_item(list, Some(item.name), tool))
    }

    /// The refusal of a governed request while no bundle ever compiled (fail closed).
    fn without_policy(&self, method: &str, name: &str, note: &mut DecisionNote) -> Verdict {
        note.reasons = vec!["no policy loaded".into()];
        tracing::warn!(
            method,
            name,
            "no policy loaded; refused (forwarded in shadow mode)"
        );
        let v = self.refuse(
            method,
            note,
            Verdict::Deny {
                code: code::DENIED,
                message: "mcp-guard has no valid policy loaded; the request is refused".into(),
                data: None,
            },
        );
        note.source = Some("no policy loaded");
        v
    }

    /// The answer to a request the policy denied, with its reasons unless they are hidden.
    fn denial(&self, bundle: &CompiledBundle, reasons: &[String]) -> Verdict {
        let (message, data) = if self.hide_reasons {
            ("denied by policy".to_owned(), None)
        } else {
            let message = match reasons {
                [] => "denied by policy".to_owned(),
                r => format!("denied by policy: {}", r.join("; ")),
            };
            (
                message,
                Some(json!({"reasons": reasons, "policy": &*bundle.hash})),
            )
        };
        Verdict::Deny {
            code: code::DENIED,
            message,
            data,
        }
    }

    /// A refusal: enforced, or in shadow mode noted and forwarded.
    fn refuse(&self, method: &str, note: &mut DecisionNote, verdict: Verdict) -> Verdict {
        note.source = Some("policy");
        if self.mode == Enforcement::Shadow {
            note.shadow_denied = true;
            self.metrics.shadow_denied(Some(method));
            return Verdict::Allow;
        }
        verdict
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
        // Plumbing passes; a list is decided item by item in its answer.
        if msg.mcp.class() != Class::Governed {
            return Verdict::Allow;
        }
        let item = msg.item();
        let name = item.map(|i| i.name).unwrap_or_default();
        let origin = item
            .filter(|i| i.kind == ItemKind::Task)
            .and_then(|i| self.tasks.lock().get(i.name));
        let Some(bundle) = self.store.current() else {
            return self.without_policy(method, name, note);
        };
        let frame = frame(ctx, &self.server);
        note.policy_hash = Some(Arc::clone(&bundle.hash));
        let subject = ctx.identity.map(|i| i.sub.as_str()).unwrap_or("anonymous");
        // A method that names an item without being its call (a completion, a subscription)
        // reaches only items the caller can see: a hidden one is answered as missing, whatever
        // the policy says of the method.
        // A task stems from a call of a tool: a caller who cannot see the tool cannot see it.
        let hidden_origin = origin.as_deref().is_some_and(|t| {
            let tool = Item {
                kind: ItemKind::Tool,
                name: t,
            };
            !self.named_item_visible(&bundle, &frame, tool, None)
        });
        if let Some(it) = item
            && !msg.mcp.is_item_call()
            && (hidden_origin || !self.named_item_visible(&bundle, &frame, it, None))
        {
            note.reasons = vec![format!("{name} is hidden from this caller")];
            tracing::info!(method, name, subject, policy_hash = %bundle.hash, "names a hidden item; refused as missing");
            return self.refuse(method, note, not_found(it));
        }
        let origin = origin.as_deref();
        let input = message_input(&frame, msg, origin, self.tool_view(msg, origin));
        let mut decision = self.decide(&bundle, input);
        note.redact = std::mem::take(&mut decision.redact);
        if decision.allowed() {
            // Counted by the proxy once every interceptor allowed the request.
            note.limits = std::mem::take(&mut decision.limits);
            return Verdict::Allow;
        }
        note.reasons.clone_from(&decision.reasons);
        if self.mode == Enforcement::Shadow {
            tracing::info!(method, name, subject, reasons = ?decision.reasons, policy_hash = %bundle.hash, "would deny (shadow)");
        } else {
            tracing::info!(method, name, subject, reasons = ?decision.reasons, policy_hash = %bundle.hash, "denied by policy");
        }
        // A caller who cannot see the item is told it does not exist.
        if let Some(it) = item
            && msg.mcp.is_item_call()
            && !self.named_item_visible(&bundle, &frame, it, self.tool_view(msg, None))
        {
            return self.refuse(method, note, not_found(it));
        }
        let denial = self.denial(&bundle, &decision.reasons);
        self.refuse(method, note, denial)
    }

    fn rewrites(&self, _list: List) -> bool {
        true
    }

    fn task_created(&self, task_id: &str, tool: &str) {
        self.tasks.lock().insert(task_id, tool);
    }

    fn filter_list(&self, ctx: &Context<'_>, answer: &mut ListAnswer<'_>) -> Filtered {
        let mut out = Filtered::default();
        let list = answer.list;
        let items = answer.items();
        let views = if list == List::Tools {
            crate::tools::record(&self.catalog, &self.metrics, items)
        } else {
            Vec::new()
        };
        let Some(bundle) = self.store.current() else {
            out.sources.push("no policy loaded");
            out.hidden = items.iter().map(ListItem::display_name).collect();
            if self.mode == Enforcement::Shadow {
                return out;
            }
            answer.clear();
            out.removed = !out.hidden.is_empty();
            tracing::warn!(
                method = list.as_str(),
                hidden = out.hidden.len(),
                "no policy loaded; list answered empty"
            );
            return out;
        };
        out.policy_hash = Some(Arc::clone(&bundle.hash));
        let frame = frame(ctx, &self.server);
        let keep = self.visible_items(&bundle, &frame, list, items, views);
        out.hidden = items
            .iter()
            .zip(&keep)
            .filter(|(_, k)| !**k)
            .map(|(i, _)| i.display_name())
            .collect();
        if !out.hidden.is_empty() {
            out.sources.push("policy");
            if self.mode == Enforcement::Shadow {
                tracing::info!(method = list.as_str(), hidden = out.hidden.len(), policy_hash = %bundle.hash, "would hide list items (shadow)");
            } else {
                answer.retain(keep);
                out.removed = true;
            }
        }
        // Visibility was decided for this caller: a result the server calls `public` (MCP
        // 2026-07-28 caching), or one that lost items, is this caller's view only. In shadow
        // mode every caller sees the same list, so the server's word stands.
        if self.mode == Enforcement::Enforce && (out.removed || answer.shared_by_server()) {
            answer.make_private();
            out.made_private = true;
        }
        out
    }
}

impl PolicyInterceptor {
    /// Which items of a list stay for the caller of `frame`.
    fn visible_items(
        &self,
        bundle: &CompiledBundle,
        frame: &Frame,
        list: List,
        items: &[ListItem<'_>],
        views: Vec<View>,
    ) -> Vec<bool> {
        if list == List::Tools && bundle.has_visible_tools {
            let views = views.into_iter().map(|(view, _)| view).collect();
            let names = self.visible_tools(bundle, frame, views);
            return items
                .iter()
                .map(|i| i.name().is_some_and(|n| names.contains(n)))
                .collect();
        }
        self.keep_items(bundle, frame, list, items, &views)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intercept::{ClientInfo, Transport, filter_result};
    use crate::jsonrpc::Payload;
    use crate::policy::PolicyStore;
    use mcp_guard_policy::input::ServerInfo;

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
            None,
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
        let item = frame.list_item(List::Prompts, Some("greet"), None);
        let item: Value = serde_json::from_str(&item.to_json_str().unwrap()).unwrap();
        assert_eq!(item["request"]["method"], "prompts/get");
        assert_eq!(item["request"]["prompt"], "greet");
        assert_eq!(item["request"]["list"], "prompts/list");
    }

    /// A policy interceptor over a bundle of one module, in `mode`.
    fn governed(rego: &str, mode: Enforcement) -> (PolicyInterceptor, std::path::PathBuf) {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("mcp-guard-gov-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("authz.rego"), rego).unwrap();
        let metrics = Arc::new(Metrics::new());
        let store = PolicyStore::new(&dir, Arc::clone(&metrics));
        assert!(store.reload().unwrap(), "the test bundle compiles");
        let mut config = <PolicyConfig as clap::FromArgMatches>::from_arg_matches(
            &<PolicyConfig as clap::Args>::augment_args(clap::Command::new("t"))
                .get_matches_from(["t"]),
        )
        .unwrap();
        config.enforcement = mode;
        (PolicyInterceptor::new(&config, store, metrics), dir)
    }

    fn msg(body: Value) -> Message {
        let Payload::Single(m) = Payload::parse(body.to_string().as_bytes()).unwrap() else {
            unreachable!()
        };
        m
    }

    const ANON: Context<'static> = Context {
        transport: Transport::StreamableHttp,
        session_id: None,
        identity: None,
        client: None,
    };

    /// Completions and subscriptions are allowed as methods, `secret` prompts and `file:///x`
    /// resources are hidden, `logging/setLevel` and vendor methods are not decided.
    const GOVERNANCE: &str = r#"package mcp.authz
import rego.v1
allow if input.request.method in {"tools/call", "prompts/get", "resources/read",
    "completion/complete", "resources/subscribe", "resources/unsubscribe", "tasks/get"}
deny contains "hidden prompt" if input.request.prompt == "secret"
deny contains "hidden resource" if startswith(input.request.uri, "file:///x")
deny contains "no task t-9" if input.request.task == "t-9"
"#;

    fn error_of(v: &Verdict) -> (i64, String) {
        match v {
            Verdict::Allow => (0, "allowed".into()),
            Verdict::Deny { code, message, .. } => (*code, message.clone()),
        }
    }

    #[test]
    fn every_method_but_plumbing_is_decided_and_undecided_ones_are_denied() {
        let (p, dir) = governed(GOVERNANCE, Enforcement::Enforce);
        let req = |method: &str, params: Value| {
            msg(json!({"jsonrpc":"2.0","id":1,"method":method,"params":params}))
        };
        for plumbing in ["initialize", "ping", "server/discover"] {
            assert_eq!(p.check(&ANON, &req(plumbing, json!({}))), Verdict::Allow);
        }
        let note = msg(json!({"jsonrpc":"2.0","method":"notifications/initialized"}));
        assert_eq!(p.check(&ANON, &note), Verdict::Allow);
        // Lists pass: their items are decided in the answer.
        assert_eq!(
            p.check(&ANON, &req("resources/templates/list", json!({}))),
            Verdict::Allow
        );
        for undecided in [
            "logging/setLevel",
            "vendor/secret",
            "tasks/list",
            "subscriptions/listen",
        ] {
            let mut n = DecisionNote::default();
            let v = p.check_noted(&ANON, &req(undecided, json!({"level": "debug"})), &mut n);
            assert_eq!(error_of(&v).0, code::DENIED, "{undecided}");
            assert_eq!(n.source, Some("policy"), "{undecided}");
            assert!(n.policy_hash.is_some());
        }
        let unknown_note = msg(json!({"jsonrpc":"2.0","method":"notifications/vendor"}));
        assert_ne!(p.check(&ANON, &unknown_note), Verdict::Allow);

        // A completion naming a hidden prompt or resource is answered as a request for it.
        let get = p.check(&ANON, &req("prompts/get", json!({"name": "secret"})));
        let complete = p.check(&ANON, &req("completion/complete", json!({
            "ref": {"type": "ref/prompt", "name": "secret"}, "argument": {"name": "a", "value": ""}})));
        assert_eq!(error_of(&complete), error_of(&get));
        assert_eq!(error_of(&get), (-32602, "Unknown prompt: secret".into()));
        let visible = req(
            "completion/complete",
            json!({
            "ref": {"type": "ref/prompt", "name": "greet"}, "argument": {"name": "a", "value": ""}}),
        );
        assert_eq!(p.check(&ANON, &visible), Verdict::Allow);
        let read = p.check(
            &ANON,
            &req("resources/read", json!({"uri": "file:///x/{id}"})),
        );
        let complete = p.check(&ANON, &req("completion/complete", json!({
            "ref": {"type": "ref/resource", "uri": "file:///x/{id}"}, "argument": {"name": "id", "value": ""}})));
        assert_eq!(error_of(&complete), error_of(&read));
        assert_eq!(error_of(&read).0, -32002);
        let unsub = p.check(
            &ANON,
            &req("resources/unsubscribe", json!({"uri": "file:///x/1"})),
        );
        assert_eq!(
            error_of(&unsub),
            (-32002, "Resource not found: file:///x/1".into())
        );
        // A task is decided by its id.
        assert_eq!(
            p.check(&ANON, &req("tasks/get", json!({"taskId": "t-1"}))),
            Verdict::Allow
        );
        assert_eq!(
            error_of(&p.check(&ANON, &req("tasks/get", json!({"taskId": "t-9"})))).0,
            code::DENIED
        );
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn a_task_is_decided_with_the_tool_that_created_it() {
        let policy = r#"package mcp.authz
import rego.v1
allow if input.request.method in {"tools/call", "tasks/get", "tasks/result"}
deny contains "no results of research tasks" if {
    input.request.method == "tasks/result"
    input.request.tool == "research"
}
deny contains "hidden" if input.request.tool == "secret"
"#;
        let (p, dir) = governed(policy, Enforcement::Enforce);
        let task = |method: &str, id: &str| {
            msg(json!({"jsonrpc":"2.0","id":1,"method":method,"params":{"taskId":id}}))
        };
        p.task_created("t1", "research");
        p.task_created("t2", "secret");
        let v = p.check(&ANON, &task("tasks/result", "t1"));
        assert_eq!(
            error_of(&v),
            (
                code::DENIED,
                "denied by policy: no results of research tasks".into()
            )
        );
        assert_eq!(p.check(&ANON, &task("tasks/get", "t1")), Verdict::Allow);
        // A task of a tool the caller cannot see does not exist for them.
        assert_eq!(
            error_of(&p.check(&ANON, &task("tasks/get", "t2"))),
            (-32602, "Unknown task: t2".into())
        );
        // A task the sidecar did not see created is decided by its id alone.
        assert_eq!(p.check(&ANON, &task("tasks/result", "t3")), Verdict::Allow);
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn shadow_forwards_what_it_would_refuse_and_says_so() {
        let (p, dir) = governed(GOVERNANCE, Enforcement::Shadow);
        let m = msg(
            json!({"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{
            "ref": {"type": "ref/prompt", "name": "secret"}, "argument": {"name": "a", "value": ""}}}),
        );
        let mut n = DecisionNote::default();
        assert_eq!(p.check_noted(&ANON, &m, &mut n), Verdict::Allow);
        assert!(n.shadow_denied);
        let mut list = json!({"prompts": [{"name": "secret"}, {"name": "greet"}]});
        let f = filter_result(&p, &ANON, List::Prompts, &mut list);
        assert_eq!(
            (f.hidden.as_slice(), f.removed),
            (&["secret".to_owned()][..], false)
        );
        assert_eq!(list["prompts"].as_array().map(Vec::len), Some(2));
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn filtering_names_what_it_hid_under_which_bundle() {
        let (p, dir) = governed(GOVERNANCE, Enforcement::Enforce);
        let mut list = json!({"resourceTemplates": [{"uriTemplate": "file:///x/{id}"}, {"uriTemplate": "note://{n}"}]});
        let f = filter_result(&p, &ANON, List::ResourceTemplates, &mut list);
        assert_eq!(f.hidden, ["file:///x/{id}"]);
        assert!(f.removed && f.policy_hash.is_some());
        assert_eq!(f.sources, ["policy"]);
        assert!(f.made_private);
        assert_eq!(
            list,
            json!({"resourceTemplates": [{"uriTemplate": "note://{n}"}], "cacheScope": "private"}),
            "a list cut for this caller is marked private"
        );
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn tool_visibility_is_shared_only_between_callers_the_policy_cannot_tell_apart() {
        let rego = r#"package mcp.authz
import rego.v1
allow if endswith(input.subject.email, "@example.com")
"#;
        let (p, dir) = governed(rego, Enforcement::Enforce);
        let caller = |sub: &str, email: &str, exp: u64| Identity {
            sub: sub.into(),
            iss: "https://idp".into(),
            email: Some(email.into()),
            roles: vec!["developer".into()],
            claims: serde_json::from_value(json!({"sub": sub, "exp": exp})).unwrap(),
            ..Default::default()
        };
        let sees = |who: &Identity| {
            let ctx = Context {
                identity: Some(who),
                ..ANON
            };
            let mut list = json!({"tools": [{"name": "echo", "inputSchema": {"type": "object"}}]});
            filter_result(&p, &ctx, List::Tools, &mut list);
            list["tools"].as_array().map_or(0, Vec::len) == 1
        };
        let frames = || p.visible_cache.lock().frames.len();
        assert!(sees(&caller("ana", "ana@example.com", 1)));
        // Ana with a refreshed token, Bo of the same email, and Dee of the same domain: the
        // policy reads neither `sub` nor `exp`, and the email only through `endswith` (a caller
        // term), so their decisions are Ana's.
        assert!(sees(&caller("ana", "ana@example.com", 2)));
        assert!(sees(&caller("bo", "ana@example.com", 3)));
        assert!(sees(&caller("dee", "dee@example.com", 4)));
        assert_eq!(
            frames(),
            1,
            "one key for callers the policy cannot tell apart"
        );
        // An email the policy reads differently is never served Ana's decisions.
        assert!(!sees(&caller("cy", "cy@elsewhere.org", 1)));
        assert_eq!(frames(), 2);
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn a_list_decided_per_caller_is_never_passed_on_as_public() {
        let (p, dir) = governed(GOVERNANCE, Enforcement::Enforce);
        // Nothing hidden for this caller, but another may see less: `public` does not stand.
        let mut list =
            json!({"prompts": [{"name": "greet"}], "cacheScope": "public", "ttlMs": 60000});
        let f = filter_result(&p, &ANON, List::Prompts, &mut list);
        assert!(f.hidden.is_empty() && f.changed());
        assert_eq!(list["cacheScope"], "private");
        assert_eq!(list["ttlMs"], 60000);
        // A private list with nothing hidden passes untouched (and is not re-serialized).
        let mut list = json!({"prompts": [{"name": "greet"}], "cacheScope": "private"});
        assert!(!filter_result(&p, &ANON, List::Prompts, &mut list).changed());
        // An older revision's list (no caching hints) is left without one.
        let mut list = json!({"prompts": [{"name": "greet"}]});
        assert!(!filter_result(&p, &ANON, List::Prompts, &mut list).changed());
        assert_eq!(list, json!({"prompts": [{"name": "greet"}]}));
        // In shadow mode every caller sees the whole list: the server's scope stands.
        let (shadow, shadow_dir) = governed(GOVERNANCE, Enforcement::Shadow);
        let mut list = json!({"prompts": [{"name": "secret"}], "cacheScope": "public"});
        assert!(!filter_result(&shadow, &ANON, List::Prompts, &mut list).changed());
        assert_eq!(list["cacheScope"], "public");
        std::fs::remove_dir_all(dir).ok();
        std::fs::remove_dir_all(shadow_dir).ok();
    }

    #[test]
    fn frames_are_told_apart_exactly_and_numbers_never_come_back() {
        let mut cache = VisibleCache::default();
        let a = cache.frame(r#"[{"sub":"a"}]"#.into());
        let b = cache.frame(r#"[{"sub":"b"}]"#.into());
        assert_ne!(a, b);
        assert_eq!(cache.frame(r#"[{"sub":"a"}]"#.into()), a);
        let hash: Arc<str> = "sha256:00".into();
        let class: Arc<str> = "class:x".into();
        cache.insert((1, a, Arc::clone(&hash)), Some(Arc::clone(&class)), true);
        assert_eq!(cache.get(&(1, a, Arc::clone(&hash))), Known::Decided(true));
        assert_eq!(
            cache.get(&(1, b, Arc::clone(&hash))),
            Known::Class(None),
            "another caller"
        );
        assert_eq!(
            cache.get(&(2, a, Arc::clone(&hash))),
            Known::Class(None),
            "another bundle"
        );
        // Another definition of the same class: the first one's decision, for the same frame
        // and bundle only; its class is remembered for the bundle.
        let other: Arc<str> = "sha256:01".into();
        assert_eq!(
            cache.get_by_class(&(1, a, Arc::clone(&other)), &class),
            Some(true)
        );
        assert_eq!(cache.get(&(1, a, Arc::clone(&other))), Known::Decided(true));
        assert_eq!(
            cache.get(&(1, b, Arc::clone(&other))),
            Known::Class(Some(Arc::clone(&class)))
        );
        assert_eq!(
            cache.get_by_class(&(1, b, Arc::clone(&other)), &class),
            None
        );
        assert_eq!(
            cache.get_by_class(&(2, a, Arc::clone(&other)), &class),
            None
        );
        assert_eq!(
            cache.get(&(1, b, Arc::clone(&other))),
            Known::Class(None),
            "classes of an earlier bundle are forgotten"
        );

        // Past the limit the cache starts over, and no number is given twice: a listing that
        // still holds `a` cannot fill in decisions for a frame numbered after the reset.
        let mut seen = std::collections::HashSet::from([a, b]);
        for i in 0..MAX_FRAMES + 5 {
            assert!(seen.insert(cache.frame(format!("[{i}]"))));
        }
        assert!(cache.frames.len() <= MAX_FRAMES);
        assert_eq!(
            cache.get(&(1, a, hash)),
            Known::Class(None),
            "forgotten with the reset"
        );
    }
}
