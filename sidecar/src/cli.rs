//! The command line of `mcp-guard-sidecar`.

use std::process::ExitCode;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::ProxyConfig;
pub use crate::process::LogFormat;
use crate::process::{init_logging, terminated};

/// mcp-guard sidecar: governs the MCP server in its pod.
#[derive(Debug, Parser)]
#[command(
    name = "mcp-guard-sidecar",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub proxy: ProxyConfig,

    /// Log filter, in `tracing` EnvFilter syntax (e.g. `info`, `mcp_guard_sidecar=debug`).
    #[arg(long, env = "MCP_GUARD_LOG", default_value = "info")]
    pub log: String,

    /// Log line format.
    #[arg(long, env = "MCP_GUARD_LOG_FORMAT", value_enum, default_value = "json")]
    pub log_format: LogFormat,
}

/// Without a command, the sidecar runs the proxy.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Work with policy bundles offline.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Waits until the sidecar in this pod is ready (its admin `/readyz` answers 200), then exits
    /// 0; exits 1 when the time is up. Used as the postStart hook of a sidecar injected as a
    /// regular container, so the app container starts only once the sidecar serves. Reads the
    /// admin address from MCP_GUARD_ADMIN_LISTEN (a wildcard address means loopback).
    WaitReady {
        /// How long to wait.
        #[arg(long, default_value = "120s", value_parser = crate::config::parse_duration)]
        timeout: std::time::Duration,
    },
}

/// Asks `/readyz` on `addr` once; true on 200.
async fn ready_once(addr: std::net::SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(b"GET /readyz HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
            .await?;
        let mut head = [0u8; 12];
        s.read_exact(&mut head).await?;
        Ok::<bool, std::io::Error>(head.starts_with(b"HTTP/1.1 200"))
    };
    matches!(
        tokio::time::timeout(std::time::Duration::from_secs(2), attempt).await,
        Ok(Ok(true))
    )
}

fn wait_ready(admin: std::net::SocketAddr, timeout: std::time::Duration) -> ExitCode {
    let mut addr = admin;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mcp-guard-sidecar wait-ready: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if ready_once(addr).await {
                return ExitCode::SUCCESS;
            }
            if tokio::time::Instant::now() >= deadline {
                eprintln!(
                    "mcp-guard-sidecar wait-ready: http://{addr}/readyz not ready after {timeout:?}"
                );
                return ExitCode::FAILURE;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    })
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Decides on one input document and prints the decision as JSON.
    Eval {
        /// The bundle directory (`*.rego`, optional `data.json`).
        #[arg(long, short, default_value = ".")]
        policy: PathBuf,
        /// The input document (JSON, schema mcp-guard.dev/policy-input/v1).
        #[arg(long, short)]
        input: PathBuf,
        /// Evaluate this rule instead of the decision (e.g. `data.mcp.authz.visible`).
        #[arg(long)]
        rule: Option<String>,
    },
    /// Runs a bundle's tests: every `test_*` rule, and every fixture pair `NAME.input.json` /
    /// `NAME.expected.json` in DIR/tests (or --fixtures). Exits 1 when any fails.
    Test {
        /// The bundle directory.
        dir: PathBuf,
        /// Directory of input / expected-decision fixture pairs.
        #[arg(long)]
        fixtures: Option<PathBuf>,
    },
}

fn run_policy(cmd: PolicyCommand) -> ExitCode {
    use crate::policy::offline;
    match cmd {
        PolicyCommand::Eval {
            policy,
            input,
            rule,
        } => match offline::eval(&policy, &input, rule.as_deref()) {
            Ok(v) => {
                println!("{v:#}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("mcp-guard-sidecar policy eval: {e}");
                ExitCode::from(2)
            }
        },
        PolicyCommand::Test { dir, fixtures } => match offline::test(&dir, fixtures.as_deref()) {
            Ok(r) => {
                print!("{}", r.lines);
                println!("{} passed, {} failed", r.passed, r.failed);
                if r.failed == 0 && r.passed > 0 {
                    ExitCode::SUCCESS
                } else {
                    if r.passed + r.failed == 0 {
                        eprintln!("no test_* rule and no fixture found in {}", dir.display());
                    }
                    ExitCode::FAILURE
                }
            }
            Err(e) => {
                eprintln!("mcp-guard-sidecar policy test: {e}");
                ExitCode::from(2)
            }
        },
    }
}

/// The entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Policy(cmd)) => return run_policy(cmd),
        Some(Command::WaitReady { timeout }) => return wait_ready(cli.proxy.admin_listen, timeout),
        None => {}
    }
    if let Err(e) = init_logging(&cli.log, cli.log_format, "--log / MCP_GUARD_LOG") {
        eprintln!("mcp-guard-sidecar: {e}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mcp-guard-sidecar: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(crate::run_proxy(cli.proxy, terminated())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "mcp-guard sidecar failed");
            eprintln!("mcp-guard-sidecar: {e}");
            ExitCode::FAILURE
        }
    }
}
