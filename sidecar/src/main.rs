fn main() -> std::process::ExitCode {
    mcp_guard_sidecar::cli::main()
}
