#![no_main]
//! See `mcp_guard_sidecar::fuzz::sse_split` for the properties checked.
libfuzzer_sys::fuzz_target!(|data: &[u8]| mcp_guard_sidecar::fuzz::sse_split(data));
