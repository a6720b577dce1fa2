#![no_main]
//! The injection decision on any pod: it never panics; a patch it returns applies to the pod it
//! was made for (the API server would refuse one that does not); and the injected pod, seen a
//! second time, is left alone (a reinvocation changes nothing).
use mcp_guard_webhook::config::InjectConfig;
use mcp_guard_webhook::inject::{Outcome, PodContext, mutate};
use mcp_guard_webhook::selection::SkipReason;
use serde_json::Value;
use std::collections::BTreeMap;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&flags, json)) = data.split_first() else {
        return;
    };
    let Ok(mut pod) = serde_json::from_slice::<Value>(json) else {
        return;
    };
    let cfg = InjectConfig {
        native_sidecar: flags & 1 == 1,
        ..InjectConfig::default()
    };
    let mut ns = BTreeMap::new();
    if flags & 2 == 2 {
        ns.insert("mcp-guard.dev/inject".to_owned(), "enabled".to_owned());
    }
    let ctx = PodContext {
        pod: &pod,
        namespace: "tools",
        namespace_annotations: &ns,
        workload_name: None,
    };
    if let Outcome::Injected { patch, .. } = mutate(&cfg, ctx) {
        json_patch::patch(&mut pod, &patch).expect("the patch applies to its own pod");
        let again = PodContext {
            pod: &pod,
            namespace: "tools",
            namespace_annotations: &ns,
            workload_name: None,
        };
        match mutate(&cfg, again) {
            Outcome::Skipped(SkipReason::AlreadyInjected) => {}
            other => panic!("a second pass changed the injected pod: {other:?}"),
        }
    }
});
