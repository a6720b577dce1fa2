//! The command line of `mcp-guard-sidecar`.

use std::process::ExitCode;

use clap::{Parser, ValueEnum};

use crate::config::ProxyConfig;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

/// mcp-guard sidecar: governs the MCP server in its pod.
#[derive(Debug, Parser)]
#[command(name = "mcp-guard-sidecar", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub proxy: ProxyConfig,

    /// Log filter, in `tracing` EnvFilter syntax (e.g. `info`, `mcp_guard_sidecar=debug`).
    #[arg(long, env = "MCP_GUARD_LOG", default_value = "info")]
    pub log: String,

    /// Log line format.
    #[arg(long, env = "MCP_GUARD_LOG_FORMAT", value_enum, default_value = "json")]
    pub log_format: LogFormat,
}

fn init_logging(cli: &Cli) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log)
        .map_err(|e| format!("invalid --log / MCP_GUARD_LOG {:?}: {e}", cli.log))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
    Ok(())
}

async fn terminated() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                    _ = tokio::signal::ctrl_c() => tracing::info!("interrupt received"),
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM; only an interrupt stops the sidecar");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = init_logging(&cli) {
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
