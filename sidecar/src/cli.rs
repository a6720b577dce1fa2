//! The command line of `mcp-guard-sidecar`.

use std::process::ExitCode;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::ProxyConfig;
use mcp_guard_common::env;
pub use mcp_guard_common::process::LogFormat;
use mcp_guard_common::process::{init_logging, terminated};

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
    #[arg(long, env = env::LOG, default_value = "info")]
    pub log: String,

    /// Log line format.
    #[arg(long, env = env::LOG_FORMAT, value_enum, default_value = "json")]
    pub log_format: LogFormat,
}

/// Without a command, the sidecar runs the proxy.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Work with policy bundles offline.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Waits until the sidecar in this pod can serve (its admin `/startupz` answers 200), then
    /// exits 0; exits 1 when the time is up. It does not wait for the MCP server. Used as the
    /// postStart hook of a sidecar injected as a regular container, so the app container starts
    /// behind a serving sidecar. Reads the admin address from MCP_GUARD_ADMIN_LISTEN (a wildcard
    /// address means loopback). `wait-ready`, the name pods injected by 0.1 call, is an alias.
    #[command(alias = "wait-ready")]
    WaitStarted {
        /// How long to wait.
        #[arg(long, default_value = "120s", value_parser = mcp_guard_common::duration::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Copies this binary into DIR (an emptyDir the app container mounts), so the app's command
    /// can run under `run-app`. The init container of pods annotated
    /// `mcp-guard.dev/shutdown-on-exit: enabled` runs it.
    CopyBinary {
        /// The directory to copy into.
        dir: PathBuf,
    },
    /// Runs COMMAND, passing the container's signals on to it; when it exits, ends the sidecar in
    /// this pod (`POST /shutdown` on the admin port, loopback) and exits with COMMAND's exit code.
    /// The injected wrapper of a Job's app container.
    RunApp {
        /// The sidecar's admin address.
        #[arg(long, default_value = "127.0.0.1:15020")]
        admin: std::net::SocketAddr,
        /// Whether a failed COMMAND also ends the sidecar (`restartPolicy: Never`) or keeps it for
        /// the kubelet's restart of COMMAND (`restartPolicy: OnFailure`).
        #[arg(long, value_enum, default_value = "shutdown")]
        on_failure: crate::pod::OnFailure,
        /// The app's command and arguments.
        #[arg(last = true, required = true)]
        command: Vec<std::ffi::OsString>,
    },
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
    use mcp_guard_policy::offline;
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
        Some(Command::WaitStarted { timeout }) => {
            return crate::pod::wait_started(cli.proxy.admin_listen, timeout);
        }
        Some(Command::CopyBinary { dir }) => return crate::pod::copy_binary(&dir),
        Some(Command::RunApp {
            admin,
            on_failure,
            command,
        }) => return crate::pod::run_app(admin, on_failure, &command),
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
