//! Shared harness for mcp-guard's end-to-end suites.
