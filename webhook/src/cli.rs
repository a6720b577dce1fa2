//! The command line of `mcp-guard-webhook`: `serve`, `inject` and `fleet`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
pub use mcp_guard_common::process::LogFormat;
use mcp_guard_common::process::init_logging;

use crate::offline::InjectArgs;
use crate::server::ServeArgs;

/// mcp-guard admission webhook: injects the mcp-guard sidecar into annotated pods.
#[derive(Debug, Parser)]
#[command(name = "mcp-guard-webhook", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Log filter, in `tracing` EnvFilter syntax.
    #[arg(
        long,
        global = true,
        env = "MCP_GUARD_WEBHOOK_LOG",
        default_value = "info"
    )]
    pub log: String,

    /// Log line format.
    #[arg(
        long,
        global = true,
        env = "MCP_GUARD_WEBHOOK_LOG_FORMAT",
        value_enum,
        default_value = "json"
    )]
    pub log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve `/mutate` and `/validate` over HTTPS for the API server; with `--controller`, also
    /// run the policy-distribution controller.
    Serve(Box<ServeArgs>),
    /// Inject manifests offline (YAML or JSON, several documents) and print them.
    Inject(Box<InjectArgs>),
    /// Show every injected pod: its server, the policy it enforces against the one distributed,
    /// its counters (from the controller's `/fleet`).
    Fleet(Box<crate::fleet::FleetArgs>),
}

/// Parses the command line and runs the command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = init_logging(&cli.log, cli.log_format, "--log / MCP_GUARD_WEBHOOK_LOG") {
        eprintln!("mcp-guard-webhook: {e}");
        return ExitCode::from(2);
    }
    match cli.command {
        Command::Inject(args) => match crate::offline::run(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("mcp-guard-webhook inject: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Fleet(args) => {
            let Some(runtime) = runtime() else {
                return ExitCode::FAILURE;
            };
            match runtime.block_on(crate::fleet::run_cli(&args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("mcp-guard-webhook fleet: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Serve(args) => {
            let Some(runtime) = runtime() else {
                return ExitCode::FAILURE;
            };
            match runtime.block_on(crate::server::serve(*args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "webhook failed");
                    eprintln!("mcp-guard-webhook serve: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => Some(r),
        Err(e) => {
            eprintln!("mcp-guard-webhook: cannot start the runtime: {e}");
            None
        }
    }
}
