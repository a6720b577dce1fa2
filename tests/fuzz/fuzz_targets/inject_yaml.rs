#![no_main]
//! `mcp-guard-webhook inject -f`: any text, YAML or JSON, is read, injected and written back
//! without a panic; what it writes reads again.
use mcp_guard_webhook::config::InjectConfig;
use mcp_guard_webhook::offline::{Offline, Output};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let offline = Offline::new(InjectConfig::default(), "default", false);
    if let Ok((out, _)) = offline.run(text, Output::Yaml) {
        let again = offline.run(&out, Output::Yaml);
        assert!(
            again.is_ok(),
            "the output does not read again: {again:?}\n{out}"
        );
    }
});
