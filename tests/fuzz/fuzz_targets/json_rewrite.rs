#![no_main]
//! See `mcp_guard_sidecar::fuzz::json_rewrite` for the properties checked.
libfuzzer_sys::fuzz_target!(|data: &[u8]| mcp_guard_sidecar::fuzz::json_rewrite(data));
