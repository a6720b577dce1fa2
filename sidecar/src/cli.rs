//! The command line of `mcp-guard-sidecar`.

use std::process::ExitCode;

use std::path::PathBuf;

use clap::{ArgAction, CommandFactory, Parser, Subcommand};

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
        /// The input document (JSON, schema mcp-guard.dev/policy-input/v2).
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

/// How the sidecar reads one environment variable.
enum EnvReader {
    /// Through the flag `--long` (`switch`: a flag without a value, set by `true`).
    Flag { long: String, switch: bool },
    /// Handed to the OpenTelemetry SDK (a standard `OTEL_*` variable).
    OpenTelemetry,
}

/// Which part of the sidecar reads the environment variable `name`, if any.
fn env_reader(name: &str) -> Option<EnvReader> {
    if env::OTEL_STANDARD.contains(&name) {
        return Some(EnvReader::OpenTelemetry);
    }
    Cli::command()
        .get_arguments()
        .find(|a| a.get_env().is_some_and(|e| e == name))
        .and_then(|a| {
            Some(EnvReader::Flag {
                long: a.get_long()?.to_owned(),
                switch: matches!(a.get_action(), ArgAction::SetTrue),
            })
        })
}

/// Every environment variable a flag of the sidecar reads.
pub fn flag_env_names() -> Vec<String> {
    Cli::command()
        .get_arguments()
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect()
}

/// Parses `vars` exactly as the sidecar reads them from its environment, each variable through
/// the flag that names it, and fails on a variable nothing in the sidecar reads: the contract
/// the webhook's injected `env` is tested against. The standard `OTEL_*` variables the SDK reads
/// are accepted and not parsed here. (Flags without a variable in `vars` keep their defaults, or
/// the process environment's value.)
pub fn parse_env<'a>(vars: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Cli, String> {
    let mut args = vec!["mcp-guard-sidecar".to_owned()];
    for (name, value) in vars {
        match env_reader(name) {
            None => return Err(format!("no part of the sidecar reads {name}")),
            Some(EnvReader::OpenTelemetry) => {}
            Some(EnvReader::Flag { long, switch: true }) => match value {
                "true" => args.push(format!("--{long}")),
                "false" => {}
                other => {
                    return Err(format!(
                        "{name}={other:?}: the flag --{long} takes \"true\" or \"false\""
                    ));
                }
            },
            Some(EnvReader::Flag { long, .. }) => args.push(format!("--{long}={value}")),
        }
    }
    Cli::try_parse_from(args).map_err(|e| e.to_string())
}

/// `MCP_GUARD_*` variables of this process that no flag reads (a misspelt setting would
/// otherwise be ignored without a word).
fn unread_env() -> Vec<String> {
    std::env::vars_os()
        .filter_map(|(k, _)| k.into_string().ok())
        .filter(|k| k.starts_with("MCP_GUARD_") && env_reader(k).is_none())
        .collect()
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
    for name in unread_env() {
        tracing::warn!(variable = %name, "no sidecar flag reads this environment variable; it is ignored (see mcp-guard-sidecar --help)");
    }
    // The proxy's connections are served on threads of their own (`--threads`); this runtime
    // accepts them and runs the admin server and the background work (keys, policy, listing) on
    // the main thread, which has nothing else to do (blocking work goes to its blocking pool).
    let runtime = match tokio::runtime::Builder::new_current_thread()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_is_parsed_through_the_flags_that_name_it() {
        let cli = parse_env([
            (env::LISTEN, "0.0.0.0:15001"),
            (env::REQUIRED_SCOPES, "tickets:read,tickets:write"),
            (env::HIDE_DENY_REASONS, "true"),
            (env::AUTH_REQUIRED, "false"),
            (env::OTEL_RESOURCE_ATTRIBUTES, "team=a"),
        ])
        .unwrap();
        assert_eq!(cli.proxy.listen.port(), 15001);
        assert_eq!(
            cli.proxy.auth.required_scopes,
            ["tickets:read", "tickets:write"]
        );
        assert!(cli.proxy.policy.hide_deny_reasons);
        assert!(!cli.proxy.auth.auth_required);
    }

    #[test]
    fn env_nothing_reads_or_a_bad_value_is_named() {
        let e = parse_env([("MCP_GUARD_TRAFIC", "takeover")]).unwrap_err();
        assert!(e.contains("MCP_GUARD_TRAFIC"), "{e}");
        let e = parse_env([(env::AUTH_REQUIRED, "yes")]).unwrap_err();
        assert!(e.contains("--auth-required"), "{e}");
        let e = parse_env([(env::JWT_LEEWAY, "soon")]).unwrap_err();
        assert!(e.contains("soon"), "{e}");
    }
}
