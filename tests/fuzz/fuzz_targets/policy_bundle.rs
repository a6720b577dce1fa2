#![no_main]
//! A policy bundle as files (a `.rego` module, then optionally `data.json` after a NUL byte):
//! reading and compiling never panic, a bundle that does not compile is an error, and one that
//! compiles decides the same way compiled to bytecode as interpreted, on a call and on a list.
use mcp_guard_policy::bundle::Bundle;
use mcp_guard_policy::engine::CompiledBundle;
use serde_json::json;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let (module, data_json) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], Some(&data[i + 1..])),
        None => (data, None),
    };
    let Ok(module) = std::str::from_utf8(module) else {
        return;
    };
    let data_json = data_json.and_then(|d| std::str::from_utf8(d).ok().map(str::to_owned));
    let bundle = Bundle::from_parts(vec![("fuzz.rego".to_owned(), module.to_owned())], data_json);
    let call = json!({
        "subject": {"sub": "alice", "roles": ["analyst"], "groups": [], "scopes": [], "claims": {}},
        "client": {"name": "fuzz", "version": "1"},
        "server": {"name": "tickets", "namespace": "tools", "pod": "tickets-0"},
        "request": {"method": "tools/call", "tool": "search", "arguments": {"q": "x"}},
        "tool": {"name": "search", "annotations": {"readOnlyHint": true}},
    });
    let Ok(compiled) = CompiledBundle::compile(&bundle, &call) else {
        return;
    };
    if compiled.uses_bytecode() {
        let fast = compiled.decide(&call).ok();
        let slow = compiled.decide_interpreted(&call).ok();
        assert_eq!(
            fast, slow,
            "bytecode and interpreter disagree on {module:?}"
        );
    }
    let _ = compiled.visible(&call);
});
