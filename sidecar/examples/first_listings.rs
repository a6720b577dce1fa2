//! First listings of 1,000 tools, each by a caller of a kind never seen: what
//! `bench/results/*-tool-classes.md` counts with callgrind, where instructions are repeatable on
//! a busy machine. The realistic policy of `sidecar/benches/fixtures/` (per-tool, no
//! `visible_tools`) decides a `tools/list` result of 1,000 definitions, first for a developer
//! (the sidecar's first listing: every definition pinned), then for `N` callers of role `ROLE`
//! and one more role of their own, which no earlier caller had. One listing costs the
//! difference between `N` and 0 divided by `N`:
//!
//! ```sh
//! cargo build --release -p mcp-guard-sidecar --example first_listings
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null target/release/examples/first_listings 0
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null target/release/examples/first_listings 10
//! ```
//!
//! It prints how many tools the listings kept in all (so two builds can be checked to decide
//! alike) and, on stderr, each listing's wall time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use mcp_guard_policy::mcp::List;
use mcp_guard_sidecar::identity::Identity;
use mcp_guard_sidecar::intercept::{Context, Transport, filter_result};
use mcp_guard_sidecar::metrics::Metrics;
use mcp_guard_sidecar::policy::{PolicyConfig, PolicyInterceptor, PolicyStore};
use serde_json::{Value, json};

const REGO: &str = include_str!("../benches/fixtures/realistic.rego");
const DATA: &str = include_str!("../benches/fixtures/realistic.json");

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map_or(10, |s| s.parse().expect("N, a number"));
    let role = args.next().unwrap_or_else(|| "analyst".into());

    let metrics = Arc::new(Metrics::new());
    let dir = std::env::temp_dir().join(format!("mcp-guard-first-listings-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("realistic.rego"), REGO).unwrap();
    std::fs::write(dir.join("data.json"), DATA).unwrap();
    let store = PolicyStore::new(&dir, Arc::clone(&metrics));
    store.reload().unwrap();
    std::fs::remove_dir_all(&dir).ok();
    let config = <PolicyConfig as clap::FromArgMatches>::from_arg_matches(
        &<PolicyConfig as clap::Args>::augment_args(clap::Command::new("first_listings"))
            .get_matches_from(["first_listings"]),
    )
    .unwrap();
    let interceptor = PolicyInterceptor::new(&config, store, metrics);

    // The benchmark's 1,000 tools: 50 names the policy's data mentions, the others not.
    let tools: Vec<Value> = (0..1000)
        .map(|i| {
            json!({"name": format!("tool_{:02}", i % 50 + (i / 50) * 100),
                   "description": "A tool that does a thing with a thing",
                   "inputSchema": {"type": "object", "properties": {"q": {"type": "string"}}},
                   "annotations": {"readOnlyHint": i % 3 == 0}})
        })
        .collect();
    let list = json!({"tools": tools});

    let mut kept = 0;
    for i in 0..=n {
        let first = if i == 0 { "developer" } else { role.as_str() };
        let identity = Identity {
            sub: format!("u{i}"),
            iss: "https://idp".into(),
            email: Some(format!("u{i}@example.com")),
            roles: vec![first.into(), format!("role-{i}")],
            groups: vec!["eng".into()],
            scopes: vec!["mcp:read".into()],
            client_id: Some("agent".into()),
            claims: serde_json::from_value(json!({"tier": "silver"})).unwrap(),
            ..Default::default()
        };
        let ctx = Context {
            transport: Transport::StreamableHttp,
            session_id: None,
            identity: Some(&identity),
            client: None,
        };
        let mut result = list.clone();
        let started = std::time::Instant::now();
        filter_result(&interceptor, &ctx, List::Tools, &mut result);
        eprintln!("listing {i} ({first}): {:?}", started.elapsed());
        kept += result["tools"].as_array().map_or(0, Vec::len);
    }
    println!("kept {kept}");
}
