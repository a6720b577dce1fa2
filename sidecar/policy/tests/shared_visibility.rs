//! A visibility decision may be shared between two callers exactly when no rule of the bundle can
//! tell them apart: [`Frame::key_for`] over the bundle's [`InputReads`], and, finer,
//! [`CompiledBundle::frame_key`] over its caller terms (`mcp_guard_policy::terms`). Proved on
//! random callers: whenever two frames get the same key, every tool's visibility is the same for
//! both, decided one by one. And the proof can fail: with any one of the reads that matter left
//! out, or the terms' values left out of the key, the same random callers show two frames of one
//! key that see different tools.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;

use mcp_guard_policy::bundle::Bundle;
use mcp_guard_policy::catalog::{self, ToolCatalog};
use mcp_guard_policy::engine::{CompiledBundle, Decision};
use mcp_guard_policy::input::{self, ClientInfo, Frame, ServerInfo, Subject};
use mcp_guard_policy::mcp::{Item, ItemKind, List};
use mcp_guard_policy::memo;
use mcp_guard_policy::reads::InputReads;
use serde_json::{Map, Value, json};

const REALISTIC: &str = include_str!("../../benches/fixtures/realistic.rego");
const REALISTIC_DATA: &str = include_str!("../../benches/fixtures/realistic.json");

/// Reads of other shapes: a whole object iterated, a field looked up by a computed key, the
/// session and the transport, the client's version.
const WIDE: &str = r#"package mcp.authz
import rego.v1

default allow := false

allow if {
	input.request.transport == "sse"
	input.request.session_id != null
	startswith(input.request.tool, "tool_0")
}

allow if {
	object.get(input.subject.claims, "dept", "") == "ops"
	input.tool.annotations.readOnlyHint
}

allow if {
	some k, v in input.subject
	k == "client_id"
	v == "agent"
	endswith(input.request.tool, "7")
}

allow if {
	input.client.version == "2.0"
	input.request.tool == "tool_11"
}

deny contains "late" if {
	input.subject.claims.after_hours == true
	input.tool.changed
}
"#;

/// SplitMix64: enough randomness for a test, reproducible from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn pick<'a, T>(&mut self, from: &'a [T]) -> &'a T {
        &from[(self.next() % from.len() as u64) as usize]
    }
}

/// A caller as one choice per field, each from a small pool ([`POOLS`]).
type Choices = [usize; 15];

/// How many values each field of [`Choices`] takes.
const POOLS: Choices = [6, 2, 2, 3, 3, 3, 3, 2, 5, 3, 2, 2, 2, 3, 2];

/// Random callers, half of them an earlier caller with one field drawn again: so that callers
/// meet, and many of them differ in exactly one field (what a key must tell apart, or may not).
fn random_callers(rng: &mut Rng, n: usize) -> Vec<Choices> {
    let mut callers: Vec<Choices> = Vec::with_capacity(n);
    for _ in 0..n {
        let caller = if callers.is_empty() || rng.next().is_multiple_of(2) {
            POOLS.map(|size| (rng.next() % size as u64) as usize)
        } else {
            let mut caller = *rng.pick(&callers);
            let field = (rng.next() % POOLS.len() as u64) as usize;
            caller[field] = (rng.next() % POOLS[field] as u64) as usize;
            caller
        };
        callers.push(caller);
    }
    callers
}

/// The frame of one caller.
fn frame_of(c: &Choices, server: &regorus::Value) -> Frame {
    let list = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let roles = [
        list(&[]),
        list(&["developer"]),
        list(&["analyst"]),
        list(&["support"]),
        list(&["mcp-admin"]),
        list(&["developer", "pii"]),
    ];
    let groups = [list(&[]), list(&["ops"])];
    let scopes = [list(&["mcp:read"]), list(&["mcp:read", "mcp:write"])];
    let mut claims = Map::new();
    for (field, (claim, values)) in [
        ("tier", [json!("gold"), json!("silver")]),
        ("after_hours", [json!(true), json!(false)]),
        ("dept", [json!("ops"), json!("eng")]),
        ("exp", [json!(1), json!(2)]),
    ]
    .into_iter()
    .enumerate()
    {
        // The last choice of a claim's pool leaves the claim out.
        if let Some(v) = values.get(c[3 + field]) {
            claims.insert(claim.into(), v.clone());
        }
    }
    let subject = Subject {
        sub: ["u1", "u2"][c[7]],
        iss: "https://idp",
        email: [
            Some("a@example.com"),
            Some("b@elsewhere.org"),
            None,
            Some("c@example.com"),
            Some("Dana@Example.com"),
        ][c[8]],
        groups: &groups[c[1]],
        roles: &roles[c[0]],
        scopes: &scopes[c[2]],
        client_id: [Some("agent"), Some("cli"), None][c[9]],
        claims: &claims,
    };
    let subject = (c[10] == 0).then(|| input::subject_value(Some(&subject)));
    let client = ClientInfo {
        name: Some(["agent", "evil-agent"][c[11]].into()),
        version: Some(["1.0", "2.0"][c[12]].into()),
        protocol_version: Some("2026-07-28".into()),
    };
    let session = [None, Some("s-1"), Some("s-2")][c[13]];
    let transport = ["streamable-http", "sse"][c[14]];
    Frame::new(subject, Some(&client), server, session, transport)
}

/// The server every message is decided for.
fn server() -> regorus::Value {
    ServerInfo {
        name: "warehouse".into(),
        namespace: "prod-eu".into(),
        pod: "warehouse-0".into(),
    }
    .to_value()
}

/// A definition of tool `name`: one of `kinds` descriptions, read-only or not, destructive one
/// time in `kinds`.
fn definition(rng: &mut Rng, name: &str, kinds: u64) -> Value {
    json!({"name": name, "description": format!("d{}", rng.next() % kinds),
           "inputSchema": {"type": "object"},
           "annotations": {"readOnlyHint": rng.next().is_multiple_of(2),
                           "destructiveHint": rng.next().is_multiple_of(kinds)}})
}

/// Definitions of many kinds: tools the policies name, read-only or not, destructive or not.
fn tools(rng: &mut Rng) -> Vec<Value> {
    let mut names: Vec<String> = (0..50).map(|i| format!("tool_{i:02}")).collect();
    names.extend(["ticket_1", "ticket_9", "run_query"].map(String::from));
    names.iter().map(|name| definition(rng, name, 2)).collect()
}

fn compiled(rego: &str, data: Option<&str>) -> CompiledBundle {
    let bundle = Bundle::from_parts(
        vec![("policy.rego".into(), rego.into())],
        data.map(Into::into),
    );
    CompiledBundle::compile(&bundle, &input::probe()).expect("compiles")
}

/// The policy view of each tool, as the catalog records a listing of them against pins of
/// record that match every other tool's definition: half of the tools count as changed, so rules
/// reading `input.tool.changed` decide. (A name listed twice is pinned by its first definition.)
fn views(tools: &[Value]) -> Vec<regorus::Value> {
    let mut pins = std::collections::BTreeMap::new();
    for (i, def) in tools.iter().enumerate() {
        let hash = if i % 2 == 0 {
            catalog::definition_hash(def)
        } else {
            format!("sha256:{}", "0".repeat(64))
        };
        pins.entry(def["name"].as_str().expect("named").to_owned())
            .or_insert(hash);
    }
    let views: Vec<regorus::Value> = ToolCatalog::with_pins(pins)
        .record(tools)
        .views
        .into_iter()
        .map(|(view, _)| view)
        .collect();
    let changed = views
        .iter()
        .filter(|v| v["changed"] == regorus::Value::Bool(true))
        .count();
    assert!(
        changed > 0 && changed < views.len(),
        "{changed} of {} tools changed: `changed` would decide nothing",
        views.len()
    );
    views
}

/// Each frame's visibility of every tool, decided one by one (no sharing).
fn visibility(
    bundle: &CompiledBundle,
    frame: &Frame,
    tools: &[Value],
    views: &[regorus::Value],
) -> Vec<bool> {
    tools
        .iter()
        .zip(views)
        .map(|(def, view)| {
            bundle
                .visible_value(frame.list_item(
                    List::Tools,
                    def["name"].as_str(),
                    Some(view.clone()),
                ))
                .expect("evaluates")
        })
        .collect()
}

/// Items grouped by `key_of` (`None`: shared with no other); the number of pairs compared and
/// the first pair of one key that got different answers, if any.
fn disagreement<T, A: PartialEq>(
    key_of: impl Fn(&T) -> Option<String>,
    items: &[(T, A)],
) -> (usize, Option<(usize, usize)>) {
    let mut first_of_key: HashMap<String, usize> = HashMap::new();
    let mut compared = 0;
    for (i, (item, answer)) in items.iter().enumerate() {
        let Some(key) = key_of(item) else {
            continue;
        };
        match first_of_key.get(&key) {
            Some(&j) => {
                compared += 1;
                if items[j].1 != *answer {
                    return (compared, Some((j, i)));
                }
            }
            None => {
                first_of_key.insert(key, i);
            }
        }
    }
    (compared, None)
}

/// `reads` without the path `drop`.
fn without(reads: &InputReads, drop: &[&str]) -> InputReads {
    let paths = reads.paths().expect("chains only");
    assert!(
        paths.iter().any(|p| p == drop),
        "{drop:?} is one of the reads {paths:?}"
    );
    InputReads::of_paths(
        paths
            .iter()
            .filter(|p| *p != drop)
            .cloned()
            .collect::<Vec<_>>(),
    )
}

fn check(rego: &str, data: Option<&str>, seed: u64, matter: &[&[&str]]) {
    let bundle = compiled(rego, data);
    let mut rng = Rng(seed);
    let server = server();
    let tools = tools(&mut rng);
    let views = views(&tools);
    let frames: Vec<(Frame, Vec<bool>)> = random_callers(&mut rng, 600)
        .iter()
        .map(|caller| {
            let frame = frame_of(caller, &server);
            let seen = visibility(&bundle, &frame, &tools, &views);
            (frame, seen)
        })
        .collect();
    let (compared, differ) = disagreement(|f| Some(f.key_for(bundle.reads())), &frames);
    assert_eq!(
        differ,
        None,
        "two frames of one key saw different tools (reads {:?})",
        bundle.reads()
    );
    assert!(
        compared >= 100,
        "only {compared} frames shared a key: the test would prove little"
    );
    for path in matter {
        let narrowed = without(bundle.reads(), path);
        assert!(
            disagreement(|f| Some(f.key_for(&narrowed)), &frames)
                .1
                .is_some(),
            "leaving out {path:?} went unnoticed"
        );
    }
    // The finer key, with the caller terms: again no two frames of one key see different tools,
    // and more of them share one.
    let terms = bundle.frame_terms().expect("the policy has caller terms");
    let (shared, differ) = disagreement(|f: &Frame| Some(bundle.frame_key(f)), &frames);
    assert_eq!(
        differ, None,
        "two frames of one terms key saw different tools (terms {terms:?})"
    );
    assert!(
        shared > compared,
        "the terms shared no more decisions ({shared}) than the reads ({compared})"
    );
    assert!(
        disagreement(|f| Some(f.key_for(terms.rest())), &frames)
            .1
            .is_some(),
        "leaving the terms' values out of the key went unnoticed"
    );
}

#[test]
fn callers_of_one_key_see_the_same_tools_under_the_realistic_policy() {
    let reads = compiled(REALISTIC, Some(REALISTIC_DATA)).reads().clone();
    let subject_reads: Vec<String> = reads
        .paths()
        .expect("the realistic policy reads fields, not the whole input")
        .iter()
        .filter(|p| p[0] == "subject")
        .map(|p| p.join("."))
        .collect();
    // Neither `sub`, `iss` nor `claims.exp`: callers differing only there share decisions.
    assert_eq!(
        subject_reads,
        [
            "subject.claims.after_hours",
            "subject.claims.tier",
            "subject.email",
            "subject.groups",
            "subject.roles",
            "subject.scopes"
        ]
    );
    check(
        REALISTIC,
        Some(REALISTIC_DATA),
        7,
        &[
            &["subject", "roles"],
            &["subject", "email"],
            &["subject", "claims", "tier"],
            &["subject", "scopes"],
            &["client", "name"],
        ],
    );
}

#[test]
fn callers_of_one_key_see_the_same_tools_under_whole_objects_and_computed_keys() {
    check(
        WIDE,
        None,
        11,
        &[
            &["request", "transport"],
            &["request", "session_id"],
            &["subject"],
            &["client", "version"],
        ],
    );
}

/// Terms of every shape: a builtin over a field, a membership, a comparison, a statement and its
/// negation, a value compared with data (the field's own value is the term), a whole object, an
/// array's element, and an expression that mixes the caller and the tool (not a term: only the
/// caller's field in it is).
const TERMS: &str = r#"package mcp.authz
import rego.v1

default allow := false

allow if {
	endswith(lower(input.subject.email), "@example.com")
	not "mcp-admin" in input.subject.roles
	startswith(input.request.tool, "tool_1")
}

allow if {
	regex.match(`^[a-c]@`, object.get(input.subject, "email", ""))
	input.tool.annotations.readOnlyHint
}

allow if {
	input.subject.claims.tier == "gold"
	input.subject.claims.after_hours
	input.request.tool in data.gold
}

allow if {
	input.subject.roles[0] == "developer"
	count(input.subject.scopes) > 1
	not input.tool.annotations.destructiveHint
}

allow if {
	input.client.name in data.trusted
	input.request.transport == "sse"
	endswith(input.request.tool, "3")
}

allow if concat("/", [input.subject.claims.dept, input.request.tool]) == "ops/tool_05"

deny contains "after hours" if {
	input.subject.claims.after_hours == true
	input.tool.changed
}
"#;

#[test]
fn callers_of_one_key_see_the_same_tools_under_terms_of_every_shape() {
    let data = r#"{"gold": ["tool_02", "tool_04", "run_query"], "trusted": ["agent"]}"#;
    check(
        TERMS,
        Some(data),
        23,
        // `object.get(input.subject, ...)` reads the whole subject, as far as the reads can tell.
        &[&["subject"], &["client", "name"], &["request", "transport"]],
    );
}

/// One message of a random caller: the caller, the tool it names, its arguments and its method.
type Call = (Choices, usize, usize, usize);

/// The arguments calls carry: none, a limit either side of the realistic policy's bound, a table
/// named with and without `pii`, a long text, a number where a string is expected.
fn arguments() -> Vec<Value> {
    vec![
        json!({}),
        json!({"limit": 10}),
        json!({"limit": 5000}),
        json!({"table": "orders"}),
        json!({"table": "PII_users", "limit": 10}),
        json!({"text": "x".repeat(10_001)}),
        json!({"limit": "10"}),
    ]
}

const METHODS: [&str; 2] = ["tools/call", "prompts/get"];

/// Random messages, half of them an earlier one with one part drawn again (a caller's field, the
/// tool, the arguments or the method): so that inputs repeat, and many differ in one part only.
fn random_calls(rng: &mut Rng, n: usize, tools: usize, args: usize) -> Vec<Call> {
    let callers = random_callers(rng, n);
    let mut calls: Vec<Call> = Vec::with_capacity(n);
    for caller in callers {
        let call = if calls.is_empty() || rng.next().is_multiple_of(2) {
            let tool = (rng.next() % tools as u64) as usize;
            let arg = (rng.next() % args as u64) as usize;
            let method = usize::from(rng.next().is_multiple_of(8));
            (caller, tool, arg, method)
        } else {
            let (mut c, mut tool, mut arg, mut method) = *rng.pick(&calls);
            match rng.next() % 6 {
                0 => tool = (rng.next() % tools as u64) as usize,
                1 => arg = (rng.next() % args as u64) as usize,
                2 => method = 1 - method,
                _ => {
                    let field = (rng.next() % POOLS.len() as u64) as usize;
                    c[field] = (rng.next() % POOLS[field] as u64) as usize;
                }
            }
            (c, tool, arg, method)
        };
        calls.push(call);
    }
    calls
}

/// A bundle's decisions remembered ([`mcp_guard_policy::memo`]) are the decisions it evaluates:
/// every random message decided through the bundle's memo gets what an evaluation of its own
/// input gives, the memo answers many of them, and leaving any one of the reads that matter out
/// of the key is caught on the same messages.
fn check_decisions(rego: &str, data: Option<&str>, seed: u64, matter: &[&[&str]]) {
    let bundle = compiled(rego, data);
    assert_eq!(bundle.remembers_decisions(), Ok(()));
    let mut rng = Rng(seed);
    let server = server();
    let tools = tools(&mut rng);
    let views = views(&tools);
    let args = arguments();
    let calls = random_calls(&mut rng, 2_000, tools.len(), args.len());
    let decided: Vec<(regorus::Value, Decision)> = calls
        .iter()
        .map(|(caller, tool, arg, method)| {
            let frame = frame_of(caller, &server);
            let name = tools[*tool]["name"].as_str().expect("named");
            let kind = [ItemKind::Tool, ItemKind::Prompt][*method];
            let item = Item { kind, name };
            let view = (kind == ItemKind::Tool).then(|| views[*tool].clone());
            let input = frame.message(METHODS[*method], Some(item), Some(&args[*arg]), view);
            let evaluated = bundle.decide_evaluated(input.clone()).expect("evaluates");
            (input, evaluated)
        })
        .collect();
    let allowed = decided.iter().filter(|(_, d)| d.allowed()).count();
    assert!(
        allowed > 50 && decided.len() - allowed > 50,
        "{allowed} of {} allowed: the messages would prove little",
        decided.len()
    );
    for (i, (input, evaluated)) in decided.iter().enumerate() {
        let remembered = bundle.decide_value(input.clone()).expect("decides");
        assert_eq!(&remembered, evaluated, "message {i}: {:?}", calls[i]);
    }
    let served = decided.len() - bundle.remembered();
    assert!(
        served >= 100,
        "the memo answered only {served} messages: the test would prove little"
    );
    let reads = bundle.reads();
    let keys = memo::Keys::new(reads);
    let key = |keys: &memo::Keys, input: &regorus::Value| {
        keys.of(input).map(|k| String::from_utf8(k).expect("JSON"))
    };
    assert_eq!(
        disagreement(|i| key(&keys, i), &decided).1,
        None,
        "two inputs of one key were decided differently"
    );
    for path in matter {
        let narrowed = memo::Keys::new(&without(reads, path));
        assert!(
            disagreement(|i| key(&narrowed, i), &decided).1.is_some(),
            "leaving out {path:?} went unnoticed"
        );
    }
}

#[test]
fn remembered_decisions_are_evaluated_decisions_under_the_realistic_policy() {
    check_decisions(
        REALISTIC,
        Some(REALISTIC_DATA),
        31,
        &[
            // Not `request.tool`, `request.method` nor `tool.changed`: the tool's definition hash,
            // read too, names the tool as well, and is there for a call only.
            &["request", "arguments"],
            &["subject", "roles"],
            &["subject", "scopes"],
            &["client", "name"],
            &["subject", "claims", "tier"],
        ],
    );
}

#[test]
fn remembered_decisions_are_evaluated_decisions_under_whole_objects_and_computed_keys() {
    check_decisions(
        WIDE,
        None,
        37,
        &[
            &["request", "transport"],
            &["subject"],
            &["request", "tool"],
        ],
    );
}

#[test]
fn a_bundle_reading_the_clock_remembers_nothing() {
    let rego = "package mcp.authz\nimport rego.v1\nallow if time.now_ns() > 0\n";
    let bundle = compiled(rego, None);
    assert_eq!(bundle.remembers_decisions(), Err("time.now_ns"));
    let frame = frame_of(&[0; 15], &ServerInfo::default().to_value());
    for _ in 0..3 {
        let d = bundle
            .decide_value(frame.message("tools/call", None, None, None))
            .expect("decides");
        assert!(d.allowed());
    }
    assert_eq!(bundle.remembered(), 0);
}

/// Every shape of use that keeps tool classes (`mcp_guard_policy::classes`): a name looked up in
/// data (an object's key, a list, `object.get`), compared with literals, tested by prefix,
/// suffix and substring, a hash looked up in data, both written into a `deny` reason.
const CLASSES: &str = r#"package mcp.authz
import rego.v1

tool := input.request.tool

default allow := false

allow if data.owners[tool] == input.subject.sub

allow if {
	"analyst" in input.subject.roles
	tool in {"tool_03", "tool_04", "zz_9"}
}

allow if {
	"support" in input.subject.roles
	startswith(tool, "ticket_")
	not endswith(input.tool.name, "_9")
}

allow if {
	"developer" in input.subject.roles
	contains(tool, "_1")
	object.get(data.limits, tool, 0) < 5
}

allow if {
	input.subject.claims.tier == "gold"
	tool != "run_query"
	input.tool.annotations.readOnlyHint
}

deny contains sprintf("%s is not approved (%s)", [tool, input.tool.hash]) if {
	input.tool.changed
	not input.tool.hash in object.get(data.approved, tool, [])
}

deny contains "destructive in production" if {
	input.tool.annotations.destructiveHint
	startswith(input.server.namespace, "prod")
}
"#;

/// Definitions whose names the policies mention (in data or literals) and names they do not, many
/// of them alike to the rules' string tests (`ticket_`, `_9`, `_1`), some repeated with other
/// annotations.
fn class_tools(rng: &mut Rng) -> Vec<Value> {
    let mut names: Vec<String> = (0..50).step_by(3).map(|i| format!("tool_{i:02}")).collect();
    names.extend(["ticket_1", "ticket_9", "run_query", "zz_9"].map(String::from));
    for i in 0..100 {
        let n = rng.next() % 1000;
        names.push(match i % 8 {
            0 => format!("tool_{}", 100 + n),
            1 => format!("ticket_{n}"),
            2 => format!("x{n}_9"),
            3 => format!("ticket_{n}_9"),
            4 => format!("a_1{n}"),
            5 => format!("run_query_{n}"),
            6 => format!("export-{n}"),
            _ => format!("Tool_{n:02}"),
        });
    }
    names
        .iter()
        .flat_map(|name| [name, name])
        .map(|name| definition(rng, name, 3))
        .collect()
}

/// `data` with some tools' definitions approved (`data.approved`, by name: those names are
/// mentioned then).
fn with_approvals(data: &str, tools: &[Value]) -> String {
    let mut data: Value = serde_json::from_str(data).expect("JSON");
    let approved: Map<String, Value> = tools
        .iter()
        .skip(1)
        .step_by(7)
        .map(|def| {
            let name = def["name"].as_str().expect("named").to_owned();
            (name, json!([catalog::definition_hash(def)]))
        })
        .collect();
    data["approved"] = Value::Object(approved);
    data.to_string()
}

/// A key of tool classes with part of what it tells left out: `blind` rewrites one line.
fn narrowed_class(key: &str, blind: impl Fn(&str) -> String) -> String {
    key.lines().map(|l| blind(l) + "\n").collect()
}

/// Tools of one class are equally visible: for random callers, every tool decided on its own
/// gets what the first tool of its class got (for a caller of the same frame key). And the proof
/// can fail: a class blind to the rules' string tests, or to which mentioned name a tool has,
/// is caught on the same callers and tools.
fn check_classes(rego: &str, data: &str, seed: u64) {
    let mut rng = Rng(seed);
    let tools = class_tools(&mut rng);
    let data = with_approvals(data, &tools);
    let bundle = compiled(rego, Some(&data));
    assert_eq!(bundle.no_tool_classes(), None);
    let server = server();
    let views = views(&tools);
    let mut decided = Vec::new();
    for caller in random_callers(&mut rng, 120) {
        let frame = frame_of(&caller, &server);
        let frame_key = bundle.frame_key(&frame);
        for (seen, (def, view)) in visibility(&bundle, &frame, &tools, &views)
            .into_iter()
            .zip(tools.iter().zip(&views))
        {
            let class = bundle
                .tool_class(def["name"].as_str(), view)
                .expect("the bundle has classes");
            decided.push(((frame_key.clone(), class), seen));
        }
    }
    let shown = decided.iter().filter(|(_, seen)| *seen).count();
    assert!(
        shown > 200 && decided.len() - shown > 200,
        "{shown} of {} shown: the tools would prove little",
        decided.len()
    );
    let (_, differ) = disagreement(
        |(f, c): &(String, String)| Some(format!("{f}\0{c}")),
        &decided,
    );
    assert_eq!(
        differ.map(|(a, b)| (&decided[a], &decided[b])),
        None,
        "two tools of one class were decided differently"
    );
    // Decisions shared between tools (not only between callers): pairs of different tools of
    // one class, for one frame key.
    let mut tools_of: HashMap<&(String, String), std::collections::BTreeSet<usize>> =
        HashMap::new();
    for (i, (key, _)) in decided.iter().enumerate() {
        tools_of.entry(key).or_default().insert(i % tools.len());
    }
    let between_tools: usize = tools_of.values().map(|t| t.len() - 1).sum();
    let pairs: usize = tools_of.values().map(std::collections::BTreeSet::len).sum();
    assert!(
        between_tools > pairs / 4,
        "only {between_tools} of {pairs} decisions (tool and frame key) shared between tools of \
         one class: the test would prove little"
    );
    let blind_to_tests = |l: &str| {
        l.split_once('?')
            .map_or(l.to_owned(), |(path, _)| format!("{path}?"))
    };
    let blind_to_mentioned = |l: &str| match l.split_once('=') {
        Some((path, _)) if path.ends_with("name") => format!("{path}=mentioned"),
        _ => l.to_owned(),
    };
    for (what, blind) in [
        (
            "the string tests",
            &blind_to_tests as &dyn Fn(&str) -> String,
        ),
        ("which mentioned name", &blind_to_mentioned),
    ] {
        assert!(
            disagreement(
                |(f, c): &(String, String)| Some(format!("{f}\0{}", narrowed_class(c, blind))),
                &decided
            )
            .1
            .is_some(),
            "a class blind to {what} went unnoticed"
        );
    }
}

#[test]
fn tools_of_one_class_are_equally_visible_under_the_realistic_policy() {
    check_classes(REALISTIC, REALISTIC_DATA, 41);
}

#[test]
fn tools_of_one_class_are_equally_visible_under_every_shape_that_keeps_classes() {
    let data = r#"{"owners": {"tool_06": "u1", "ticket_1": "u2", "nobody": "u1"},
                   "limits": {"tool_12": 3, "tool_15": 9, "ticket_1": 1}}"#;
    check_classes(CLASSES, data, 43);
}

#[test]
fn a_bundle_that_reads_names_otherwise_tells_every_tool_apart() {
    // `concat` over the caller and the tool's name: a name no rule mentions can still matter.
    let bundle = compiled(TERMS, Some(r#"{"gold": [], "trusted": []}"#));
    let why = bundle.no_tool_classes().expect("no classes");
    assert!(why.contains("input.request.tool"), "{why}");
    assert_eq!(
        bundle.tool_class(Some("tool_05"), &regorus::Value::new_object()),
        None
    );
}
