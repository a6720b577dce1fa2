// The static musl build (the images) allocates with mimalloc instead of musl's allocator, which
// costs 14 % more instructions per governed request and more system calls; the glibc build keeps
// glibc's (bench/results/2026-12-07-allocator-musl.md). `.cargo/config.toml` has mimalloc commit
// memory as it is used.
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    mcp_guard_sidecar::cli::main()
}
