//! Policy decision and list-filtering costs (criterion). `bench/policy.sh` runs it and records
//! the figures in `bench/results/`.
//!
//! Side by side in one run: a decision with the per-thread reused engine (what the sidecar does)
//! and with a fresh engine clone per decision (the alternative), so the ratio holds on a noisy
//! machine.

#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use mcp_guard_policy::bundle::Bundle;
use mcp_guard_policy::engine::CompiledBundle;
use mcp_guard_policy::input;
use mcp_guard_policy::mcp::List;
use mcp_guard_sidecar::intercept::{Context, Interceptor, Transport, Verdict, filter_result};
use mcp_guard_sidecar::metrics::Metrics;
use mcp_guard_sidecar::policy::{PolicyConfig, PolicyInterceptor, PolicyStore};
use serde_json::{Value, json};

const REGO: &str = include_str!("fixtures/realistic.rego");
const DATA: &str = include_str!("fixtures/realistic.json");
/// The same policy's list visibility as one `visible_tools` rule.
const VISIBLE_TOOLS: &str = include_str!("fixtures/realistic_visible_tools.rego");

fn call_input(tool: &str) -> Value {
    json!({
        "version": input::INPUT_VERSION,
        "subject": {"authenticated": true, "sub": "u1", "iss": "https://idp", "email": "u1@example.com",
                    "roles": ["developer"], "groups": ["eng"], "scopes": ["mcp:read"], "client_id": "agent",
                    "claims": {"tier": "silver"}},
        "client": {"name": "agent", "version": "1.0", "protocol_version": "2026-07-28"},
        "server": {"name": "warehouse", "namespace": "analytics", "pod": "warehouse-0"},
        "request": {"method": "tools/call", "name": tool, "tool": tool, "arguments": {"limit": 10, "table": "orders"},
                    "session_id": null, "transport": "streamable-http"},
        "tool": {"name": tool, "annotations": {"readOnlyHint": false}, "hash": "sha256:a", "pinned_hash": "sha256:a", "changed": false},
    })
}

fn bundle() -> Bundle {
    Bundle::from_parts(
        vec![("realistic.rego".into(), REGO.into())],
        Some(DATA.into()),
    )
}

fn decisions(c: &mut Criterion) {
    let compiled = CompiledBundle::compile(&bundle(), &input::probe()).unwrap();
    let allowed = call_input("tool_15");
    let denied = call_input("tool_45");
    assert!(compiled.decide(&allowed).unwrap().allowed());
    assert!(!compiled.decide(&denied).unwrap().allowed());
    assert!(compiled.uses_bytecode());
    let mut g = c.benchmark_group("decision");
    // Evaluated every time (the bundle's memo left aside), then remembered.
    let evaluate = |input: &Value| compiled.decide_evaluated(regorus::Value::from(input.clone()));
    g.bench_function("bytecode_reused_vm/allow", |b| {
        b.iter(|| black_box(evaluate(black_box(&allowed)).unwrap()))
    });
    g.bench_function("bytecode_reused_vm/deny", |b| {
        b.iter(|| black_box(evaluate(black_box(&denied)).unwrap()))
    });
    assert!(compiled.remembers_decisions().is_ok());
    g.bench_function("remembered/allow", |b| {
        b.iter(|| black_box(compiled.decide(black_box(&allowed)).unwrap()))
    });
    g.bench_function("interpreter_reused_engine/allow", |b| {
        b.iter(|| black_box(compiled.decide_interpreted(black_box(&allowed)).unwrap()))
    });
    g.bench_function("interpreter_clone_per_decision/allow", |b| {
        b.iter(|| black_box(compiled.decide_on_fresh_clone(black_box(&allowed)).unwrap()))
    });
    g.bench_function("input_conversion_only", |b| {
        b.iter(|| black_box(regorus::Value::from(black_box(&allowed).clone())))
    });
    g.finish();
}

/// A policy store loaded from a bundle directory holding `files`.
fn store_of(name: &str, files: &[(&str, &str)], metrics: &Arc<Metrics>) -> Arc<PolicyStore> {
    let dir = std::env::temp_dir().join(format!("mcp-guard-bench-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (file, text) in files {
        std::fs::write(dir.join(file), text).unwrap();
    }
    let store = PolicyStore::new(&dir, Arc::clone(metrics));
    store.reload().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    store
}

/// Filtering `list` for `ctx` with an interceptor made by `make`: `cold` on a sidecar that never
/// saw the list (its tool definitions are pinned during the measured listing); then, for each
/// `(name, other)` of `before`, on one that listed it for `other` before (definitions known):
/// `new_caller` after a caller the policy tells apart (another role: every decision is
/// evaluated), `new_caller_same_terms` after another user whom no rule can tell apart (same
/// roles, another email of the same domain: the caller terms, sidecar/policy/src/terms.rs, are
/// equal, so the decisions are shared), `new_caller_alike` after one who differs only in fields
/// no rule reads (a refreshed token's `exp`: shared by what the bundle reads alone).
fn bench_first_listings(
    c: &mut Criterion,
    prefix: &str,
    make: &dyn Fn() -> PolicyInterceptor,
    ctx: &Context<'_>,
    before: &[(&str, &Context<'_>)],
    list: &Value,
) {
    c.bench_function(&format!("{prefix}/cold"), |b| {
        b.iter_batched(
            || (make(), list.clone()),
            |(interceptor, mut result)| {
                filter_result(&interceptor, ctx, List::Tools, &mut result);
                // Returned, so the interceptor (which lives as long as the sidecar) is dropped
                // outside the measurement.
                black_box((interceptor, result))
            },
            criterion::BatchSize::LargeInput,
        )
    });
    for &(name, other) in before {
        c.bench_function(&format!("{prefix}/{name}"), |b| {
            b.iter_batched(
                || {
                    let interceptor = make();
                    filter_result(&interceptor, other, List::Tools, &mut list.clone());
                    (interceptor, list.clone())
                },
                |(interceptor, mut result)| {
                    filter_result(&interceptor, ctx, List::Tools, &mut result);
                    // Returned, so the interceptor (which lives as long as the sidecar) is dropped
                    // outside the measurement.
                    black_box((interceptor, result))
                },
                criterion::BatchSize::LargeInput,
            )
        });
    }
}

fn filtering(c: &mut Criterion) {
    let metrics = Arc::new(Metrics::new());
    let store = store_of(
        "per-item",
        &[("realistic.rego", REGO), ("data.json", DATA)],
        &metrics,
    );
    let batch_store = store_of(
        "visible-tools",
        &[
            ("realistic.rego", REGO),
            ("visible.rego", VISIBLE_TOOLS),
            ("data.json", DATA),
        ],
        &metrics,
    );
    assert!(batch_store.current().unwrap().has_visible_tools);
    let config = <PolicyConfig as clap::FromArgMatches>::from_arg_matches(
        &<PolicyConfig as clap::Args>::augment_args(clap::Command::new("b"))
            .get_matches_from(["b"]),
    )
    .unwrap();
    let new_interceptor =
        || PolicyInterceptor::new(&config, Arc::clone(&store), Arc::clone(&metrics));
    let tools: Vec<Value> = (0..1000)
        .map(|i| {
            json!({"name": format!("tool_{:02}", i % 50 + (i / 50) * 100), "description": "A tool that does a thing with a thing",
                   "inputSchema": {"type": "object", "properties": {"q": {"type": "string"}}},
                   "annotations": {"readOnlyHint": i % 3 == 0}})
        })
        .collect();
    let list = json!({"tools": tools});
    let identity = mcp_guard_sidecar::identity::Identity {
        sub: "u1".into(),
        iss: "https://idp".into(),
        email: Some("u1@example.com".into()),
        roles: vec!["developer".into()],
        groups: vec!["eng".into()],
        scopes: vec!["mcp:read".into()],
        client_id: Some("agent".into()),
        claims: serde_json::from_value(json!({"tier": "silver", "sub": "u1"})).unwrap(),
        ..Default::default()
    };
    let ctx = Context {
        transport: Transport::StreamableHttp,
        session_id: None,
        identity: Some(&identity),
        client: None,
    };

    // The request path of one tools/call: input frame (caller converted once per token) + VM.
    let warm = new_interceptor();
    filter_result(&warm, &ctx, List::Tools, &mut list.clone());
    let call_with = |tool: &str, arguments: Value| {
        let body = json!({"jsonrpc":"2.0","id":1,"method":"tools/call",
                          "params":{"name": tool, "arguments": arguments}});
        match mcp_guard_sidecar::jsonrpc::Payload::parse(body.to_string().as_bytes()).unwrap() {
            mcp_guard_sidecar::jsonrpc::Payload::Single(m) => m,
            mcp_guard_sidecar::jsonrpc::Payload::Batch(_) => unreachable!(),
        }
    };
    let call = |tool: &str| call_with(tool, json!({"limit": 10, "table": "orders"}));
    let allowed = call("tool_15");
    let denied = call("tool_45");
    assert_eq!(warm.check(&ctx, &allowed), Verdict::Allow);
    assert_ne!(warm.check(&ctx, &denied), Verdict::Allow);
    c.bench_function("decision/request_path_check/allow", |b| {
        b.iter(|| black_box(warm.check(black_box(&ctx), black_box(&allowed))))
    });
    c.bench_function("decision/request_path_check/deny", |b| {
        b.iter(|| black_box(warm.check(black_box(&ctx), black_box(&denied))))
    });
    // Every call with arguments of its own: no decision repeats, each is evaluated (and
    // remembered, the memo starting over when full).
    let distinct: Vec<_> = (0..4096)
        .map(|page| {
            call_with(
                "tool_15",
                json!({"limit": 10, "table": "orders", "page": page}),
            )
        })
        .collect();
    assert!(
        distinct
            .iter()
            .all(|m| warm.check(&ctx, m) == Verdict::Allow)
    );
    let mut next = distinct.iter().cycle();
    c.bench_function("decision/request_path_check/distinct", |b| {
        b.iter(|| {
            let msg = next.next().unwrap();
            black_box(warm.check(black_box(&ctx), black_box(msg)))
        })
    });

    // Another user of another role: the policy tells the two apart.
    let stranger = mcp_guard_sidecar::identity::Identity {
        sub: "u3".into(),
        email: Some("u3@example.com".into()),
        roles: vec!["analyst".into()],
        ..identity.clone()
    };
    let stranger_ctx = Context {
        identity: Some(&stranger),
        ..ctx
    };
    // Another user of the same roles, scopes and email domain: the policy reads the email only
    // as `endswith(input.subject.email, "@example.com")` (and whether there is one), so no rule
    // can tell the two apart.
    let colleague = mcp_guard_sidecar::identity::Identity {
        sub: "u2".into(),
        email: Some("u2@example.com".into()),
        ..identity.clone()
    };
    let colleague_ctx = Context {
        identity: Some(&colleague),
        ..ctx
    };
    // The same user with a refreshed token (another `exp`), or anyone alike in every field the
    // policy reads.
    let mut alike = identity.clone();
    alike
        .claims
        .insert("exp".into(), serde_json::Value::from(4_102_444_800_u64));
    let alike_ctx = Context {
        identity: Some(&alike),
        ..ctx
    };
    bench_first_listings(
        c,
        "filter/tools_list_1000",
        &new_interceptor,
        &ctx,
        &[
            ("new_caller", &stranger_ctx),
            ("new_caller_same_terms", &colleague_ctx),
            ("new_caller_alike", &alike_ctx),
        ],
        &list,
    );
    c.bench_function("filter/tools_list_1000/warm", |b| {
        b.iter_batched(
            || list.clone(),
            |mut result| {
                filter_result(&warm, &ctx, List::Tools, &mut result);
                black_box(result)
            },
            criterion::BatchSize::LargeInput,
        )
    });

    // The same visibility from the policy's `visible_tools` rule: one evaluation per list. It is
    // compared like with like: for callers of every role, both show exactly the same tools.
    let new_batch =
        || PolicyInterceptor::new(&config, Arc::clone(&batch_store), Arc::clone(&metrics));
    for (roles, scopes, email, namespace) in [
        (
            vec!["developer"],
            vec!["mcp:read"],
            "u1@example.com",
            "analytics",
        ),
        (
            vec!["developer"],
            vec!["mcp:write"],
            "u1@elsewhere.org",
            "analytics",
        ),
        (vec!["analyst"], vec![], "a@example.com", "prod-eu"),
        (
            vec!["support"],
            vec!["mcp:write"],
            "s@example.com",
            "analytics",
        ),
        (vec!["mcp-admin"], vec![], "x@elsewhere.org", "prod-us"),
        (
            vec!["operator", "analyst"],
            vec!["mcp:write"],
            "o@example.com",
            "dev",
        ),
        (vec![], vec![], "n@example.com", "analytics"),
    ] {
        let caller = mcp_guard_sidecar::identity::Identity {
            sub: "eq".into(),
            email: Some(email.into()),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            ..Default::default()
        };
        let caller_ctx = Context {
            identity: Some(&caller),
            ..ctx
        };
        let mut cfg = config.clone();
        cfg.pod_namespace = namespace.into();
        let (mut per_item, mut batch) = (list.clone(), list.clone());
        filter_result(
            &PolicyInterceptor::new(&cfg, Arc::clone(&store), Arc::clone(&metrics)),
            &caller_ctx,
            List::Tools,
            &mut per_item,
        );
        filter_result(
            &PolicyInterceptor::new(&cfg, Arc::clone(&batch_store), Arc::clone(&metrics)),
            &caller_ctx,
            List::Tools,
            &mut batch,
        );
        assert_eq!(
            per_item, batch,
            "visible_tools differs for {roles:?} {scopes:?} {email} {namespace}"
        );
    }
    bench_first_listings(
        c,
        "filter/tools_list_1000/visible_tools",
        &new_batch,
        &ctx,
        &[
            ("new_caller", &stranger_ctx),
            ("new_caller_same_terms", &colleague_ctx),
            ("new_caller_alike", &alike_ctx),
        ],
        &list,
    );
}

criterion_group!(benches, decisions, filtering);
criterion_main!(benches);
