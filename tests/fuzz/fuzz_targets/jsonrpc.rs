#![no_main]
//! See `mcp_guard_sidecar::fuzz::jsonrpc` for the properties checked.
libfuzzer_sys::fuzz_target!(|data: &[u8]| mcp_guard_sidecar::fuzz::jsonrpc(data));
