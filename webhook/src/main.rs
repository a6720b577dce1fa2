fn main() -> std::process::ExitCode {
    mcp_guard_webhook::cli::main()
}
