#![no_main]
//! See `mcp_guard_sidecar::fuzz::mcp_name` for the properties checked.
libfuzzer_sys::fuzz_target!(|data: &[u8]| mcp_guard_sidecar::fuzz::mcp_name(data));
