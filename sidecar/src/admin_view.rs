//! The admin port's view of the sidecar, for the controller's dashboard: the role sets of the
//! callers and the last [`DENIES`] refusals with their reasons. [`Watch`] wraps the interception
//! point and only records; it never changes a verdict or a list. The admin port serves `GET
//! /access` (each tool of the sidecar's catalog, and for every role set seen whether the policy
//! in force lets it see and call the tool) and `GET /denies` ([`access`], [`denies`]). Everything
//! here is bounded, so a busy or hostile caller cannot grow it. Not to be confused with
//! [`crate::observe`], the record of each request that audit, spans and metrics consume.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::{Mutex, RwLock};
use regorus::Value as RegoValue;
use serde::Serialize;
use serde_json::{Value, json};

use mcp_guard_policy::catalog::ToolCatalog;
use mcp_guard_policy::input::Frame;
use mcp_guard_policy::mcp::{Class, Item, ItemKind, List};

use crate::intercept::{Context, DecisionNote, Filtered, Interceptor, Verdict};
use crate::jsonrpc::Message;
use crate::list_answer::ListAnswer;
use crate::policy::{PolicyConfig, PolicyStore};

/// Refusals kept, newest first.
pub const DENIES: usize = 50;
/// Distinct role sets kept; past it, new ones are not recorded.
pub const ROLE_SETS: usize = 16;
/// Longest text kept of a reason.
const TEXT: usize = 200;

/// One refusal (or, in shadow mode, one that would have been).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Deny {
    pub time: String,
    pub method: String,
    /// The tool, prompt or resource the request named.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The caller's `sub`, or `anonymous`.
    pub subject: String,
    pub roles: Vec<String>,
    pub reasons: Vec<String>,
    /// What refused: `policy`, `--deny-tools`, `no policy loaded`, ...
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_hash: Option<String>,
    /// Shadow mode: decided as a denial, forwarded anyway.
    pub shadow: bool,
}

/// The callers' role sets: one representative subject per set (`None`: anonymous).
type RoleSet = (Option<Vec<String>>, Option<RegoValue>);

/// What one sidecar has seen.
pub struct Seen {
    policy: Option<Arc<PolicyStore>>,
    server: RegoValue,
    /// The server's tools, as the interception point and the sidecar's own listing share them.
    catalog: Arc<ToolCatalog>,
    roles: RwLock<Vec<RoleSet>>,
    denies: Mutex<VecDeque<Deny>>,
}

fn clip(s: &str) -> String {
    match s.char_indices().nth(TEXT) {
        Some((end, _)) => format!("{}…", &s[..end]),
        None => s.to_owned(),
    }
}

impl Seen {
    pub fn new(
        config: &PolicyConfig,
        policy: Option<Arc<PolicyStore>>,
        catalog: Arc<ToolCatalog>,
    ) -> Arc<Self> {
        Arc::new(Seen {
            policy,
            server: config.server_value(),
            catalog,
            roles: RwLock::default(),
            denies: Mutex::default(),
        })
    }

    /// Records the caller's role set, if new. On the request path: a known set (the usual
    /// case) costs a shared lock and a comparison, no allocation.
    fn caller(&self, ctx: &Context<'_>) {
        let roles = ctx.identity.map(|i| i.roles.as_slice());
        let known = |seen: &[RoleSet]| {
            seen.len() >= ROLE_SETS || seen.iter().any(|(r, _)| r.as_deref() == roles)
        };
        if known(&self.roles.read()) {
            return;
        }
        let mut seen = self.roles.write();
        if known(&seen) {
            return;
        }
        let subject = ctx.identity.map(|i| i.policy_subject());
        seen.push((roles.map(<[String]>::to_vec), subject));
    }

    fn denied(&self, ctx: &Context<'_>, msg: &Message, note: &DecisionNote, verdict: &Verdict) {
        let mut reasons: Vec<String> = note.reasons.iter().map(|r| clip(r)).collect();
        if reasons.is_empty()
            && let Verdict::Deny { message, .. } = verdict
        {
            reasons.push(clip(message));
        }
        let deny = Deny {
            time: crate::time::rfc3339(SystemTime::now(), false),
            method: clip(msg.method().unwrap_or_default()),
            target: msg.target().map(clip),
            subject: ctx
                .identity
                .map_or_else(|| "anonymous".to_owned(), |i| clip(&i.sub)),
            roles: ctx.identity.map(|i| i.roles.clone()).unwrap_or_default(),
            reasons,
            source: note.source,
            policy_hash: note.policy_hash.as_deref().map(str::to_owned),
            shadow: note.shadow_denied,
        };
        let mut denies = self.denies.lock();
        if denies.len() >= DENIES {
            denies.pop_back();
        }
        denies.push_front(deny);
    }
}

/// The interception point, recording what passes through it ([`Seen`]).
pub struct Watch {
    inner: Arc<dyn Interceptor>,
    seen: Arc<Seen>,
}

/// Wraps what `build_interceptor` returns: the interceptor to use, the policy store, and what
/// the admin port shows of it; `catalog` is the sidecar's shared tool catalog.
pub fn watch(
    (inner, policy): (Arc<dyn Interceptor>, Option<Arc<PolicyStore>>),
    config: &PolicyConfig,
    catalog: &Arc<ToolCatalog>,
) -> (Arc<dyn Interceptor>, Option<Arc<PolicyStore>>, Arc<Seen>) {
    let seen = Seen::new(config, policy.clone(), Arc::clone(catalog));
    let watch: Arc<dyn Interceptor> = Arc::new(Watch {
        inner,
        seen: Arc::clone(&seen),
    });
    (watch, policy, seen)
}

impl Interceptor for Watch {
    fn check(&self, ctx: &Context<'_>, msg: &Message) -> Verdict {
        self.check_noted(ctx, msg, &mut DecisionNote::default())
    }

    fn check_noted(&self, ctx: &Context<'_>, msg: &Message, note: &mut DecisionNote) -> Verdict {
        let verdict = self.inner.check_noted(ctx, msg, note);
        if msg.mcp.class() == Class::Governed {
            self.seen.caller(ctx);
        }
        if verdict != Verdict::Allow || note.shadow_denied {
            self.seen.denied(ctx, msg, note, &verdict);
        }
        verdict
    }

    fn rewrites(&self, list: List) -> bool {
        self.inner.rewrites(list)
    }

    fn filter_list(&self, ctx: &Context<'_>, answer: &mut ListAnswer<'_>) -> Filtered {
        if answer.list == List::Tools {
            self.seen.caller(ctx);
        }
        self.inner.filter_list(ctx, answer)
    }

    fn task_created(&self, task_id: &str, tool: &str) {
        self.inner.task_created(task_id, tool);
    }
}

/// `GET /denies`: the last refusals, newest first.
pub fn denies(seen: &Seen) -> Value {
    let denies: Vec<Deny> = seen.denies.lock().iter().cloned().collect();
    json!({ "denies": denies })
}

/// `GET /access`: every tool of the catalog with its definition hash, its pin and whether it
/// changed since, and for each role set seen whether the policy in force shows the tool in a
/// list (`visible`) and allows a call of it without arguments (`callable`). Without a policy
/// both are `null`.
pub fn access(seen: &Seen) -> Value {
    let bundle = seen.policy.as_ref().and_then(|p| p.current());
    let roles: Vec<RoleSet> = seen.roles.read().clone();
    let pins = seen.catalog.pins();
    let frames: Vec<Frame> = roles
        .iter()
        .map(|(_, subject)| {
            Frame::new(subject.clone(), None, &seen.server, None, "streamable-http")
        })
        .collect();
    let views: Vec<RegoValue> = pins
        .iter()
        .map(|p| {
            seen.catalog
                .view(&p.name)
                .map_or(RegoValue::Null, |(view, _)| view)
        })
        .collect();
    // With `visible_tools`, one evaluation per role set says which tools it sees.
    let listed: Vec<Option<std::collections::BTreeSet<String>>> = frames
        .iter()
        .map(|f| {
            let b = bundle.as_ref().filter(|b| b.has_visible_tools)?;
            b.visible_tools_value(f.tool_list(views.clone())).ok()
        })
        .collect();
    let items: Vec<Value> = pins
        .iter()
        .zip(&views)
        .map(|(pin, view)| {
            let name = pin.name.as_str();
            let access: Vec<Value> = roles
                .iter()
                .zip(&frames)
                .zip(&listed)
                .map(|(((r, _), frame), listed)| {
                    let (visible, callable) = match &bundle {
                        None => (None, None),
                        Some(b) => {
                            let tool = Item {
                                kind: ItemKind::Tool,
                                name,
                            };
                            let visible = match listed {
                                Some(set) => set.contains(name),
                                None => b
                                    .visible_value(frame.list_item(
                                        List::Tools,
                                        Some(name),
                                        Some(view.clone()),
                                    ))
                                    .unwrap_or(false),
                            };
                            let callable = b
                                .decide_value(frame.message(
                                    "tools/call",
                                    Some(tool),
                                    None,
                                    Some(view.clone()),
                                ))
                                .is_ok_and(|d| d.allowed());
                            (Some(visible), Some(callable))
                        }
                    };
                    json!({"roles": r, "visible": visible, "callable": callable})
                })
                .collect();
            json!({
                "name": name,
                "hash": pin.hash,
                "pinnedHash": pin.pinned_hash,
                "changed": pin.changed,
                "access": access,
            })
        })
        .collect();
    json!({
        "policyHash": bundle.as_ref().map(|b| &*b.hash),
        "tools": items,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intercept::filter_result;
    use crate::intercept::{StaticToolFilter, Transport};

    /// An anonymous caller's request of `method`, naming `tool`.
    fn request(method: &str, tool: &str) -> (Context<'static>, Message) {
        let ctx = Context {
            transport: Transport::Sse,
            session_id: Some("s"),
            identity: None,
            client: None,
        };
        let body = json!({"jsonrpc": "2.0", "id": 7, "method": method, "params": {"name": tool}});
        let msg = match crate::jsonrpc::Payload::parse(body.to_string().as_bytes()) {
            Ok(crate::jsonrpc::Payload::Single(m)) => m,
            other => panic!("{other:?}"),
        };
        (ctx, msg)
    }

    fn config() -> PolicyConfig {
        use clap::Parser;
        #[derive(Parser)]
        struct A {
            #[command(flatten)]
            p: PolicyConfig,
        }
        A::parse_from(["x"]).p
    }

    #[test]
    fn refusals_and_tools_are_recorded_without_changing_anything() {
        let inner: Arc<dyn Interceptor> = Arc::new(StaticToolFilter::new(&[], &["rm".into()]));
        let (w, _, seen) = watch((inner, None), &config(), &Arc::default());
        let (ctx, echo) = request("tools/call", "echo");
        assert_eq!(w.check(&ctx, &echo), Verdict::Allow);
        let (_, rm) = request("tools/call", "rm");
        assert_ne!(w.check(&ctx, &rm), Verdict::Allow);
        let d = denies(&seen);
        assert_eq!(d["denies"].as_array().unwrap().len(), 1, "{d}");
        assert_eq!(d["denies"][0]["target"], "rm");
        assert_eq!(d["denies"][0]["source"], "--deny-tools");
        assert_eq!(d["denies"][0]["subject"], "anonymous");

        let mut list = json!({"tools":[{"name":"echo"},{"name":"rm"}]});
        seen.catalog.record(list["tools"].as_array().unwrap());
        let f = filter_result(&*w, &ctx, List::Tools, &mut list);
        assert_eq!(f.hidden, ["rm"]);
        assert_eq!(list, json!({"tools":[{"name":"echo"}]}));
        let t = access(&seen);
        let names: Vec<&str> = t["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["echo", "rm"], "every tool of the catalog: {t}");
        assert_eq!(t["tools"][0]["changed"], false);
        assert_eq!(t["tools"][0]["access"][0]["roles"], Value::Null);
        assert_eq!(t["tools"][0]["access"][0]["visible"], Value::Null, "{t}");
    }

    #[test]
    fn the_ring_keeps_the_newest_refusals() {
        let inner: Arc<dyn Interceptor> = Arc::new(StaticToolFilter::new(&[], &["rm".into()]));
        let (w, _, seen) = watch((inner, None), &config(), &Arc::default());
        let (ctx, rm) = request("tools/call", "rm");
        for _ in 0..(DENIES + 5) {
            let _ = w.check(&ctx, &rm);
        }
        assert_eq!(seen.denies.lock().len(), DENIES);
        assert_eq!(clip(&"x".repeat(TEXT + 5)).chars().count(), TEXT + 1);
    }

    #[test]
    fn each_role_set_seen_gets_the_policy_decisions_for_each_tool() {
        let dir = std::env::temp_dir().join(format!("mcp-guard-admin-view-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("p.rego"),
            "package mcp.authz\nimport rego.v1\ndefault allow := false\n\
             allow if input.request.tool == \"echo\"\n\
             allow if \"admin\" in input.subject.roles\n",
        )
        .unwrap();
        let store = PolicyStore::new(&dir, Arc::new(crate::metrics::Metrics::new()));
        assert!(store.reload().unwrap());
        let inner: Arc<dyn Interceptor> = Arc::new(StaticToolFilter::new(&[], &[]));
        let (w, _, seen) = watch((inner, Some(store)), &config(), &Arc::default());
        let admin = crate::identity::Identity {
            sub: "ana".into(),
            roles: vec!["admin".into()],
            ..Default::default()
        };
        let (anonymous, _) = request("tools/list", "");
        let as_admin = Context {
            identity: Some(&admin),
            ..anonymous.clone()
        };
        let mut list = json!({"tools": [{"name": "echo"}, {"name": "rm"}]});
        seen.catalog.record(list["tools"].as_array().unwrap());
        filter_result(&*w, &anonymous, List::Tools, &mut list.clone());
        filter_result(&*w, &as_admin, List::Tools, &mut list);
        let t = access(&seen);
        assert!(t["policyHash"].is_string(), "{t}");
        let decided = |tool: usize, who: usize| {
            let a = &t["tools"][tool]["access"][who];
            (a["visible"].clone(), a["callable"].clone())
        };
        assert_eq!(t["tools"][1]["name"], "rm");
        assert_eq!(t["tools"][1]["access"][1]["roles"], json!(["admin"]));
        assert_eq!(decided(0, 0), (json!(true), json!(true)), "{t}");
        assert_eq!(decided(1, 0), (json!(false), json!(false)), "{t}");
        assert_eq!(decided(1, 1), (json!(true), json!(true)), "{t}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
