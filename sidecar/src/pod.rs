//! What the sidecar binary does in its pod besides proxying: the startup wait of the
//! regular-container form's postStart hook (`wait-started`), and, for pods that finish (Jobs),
//! the copy of this binary into a volume shared with the app (`copy-binary`) and the wrapper the
//! app's command runs under there (`run-app`), which ends the sidecar when the command exits.
//!
//! Each talks to the sidecar's admin port over loopback with one plain HTTP/1.1 request: no
//! client library, since these run in containers that hold nothing but this binary.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Where the sidecar's admin endpoints listen when the configuration says "every address".
pub fn loopback(mut admin: SocketAddr) -> SocketAddr {
    if admin.ip().is_unspecified() {
        admin.set_ip(if admin.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    admin
}

/// Sends one bodiless request to the admin port and returns the status code.
async fn admin_request(addr: SocketAddr, method: &str, path: &str) -> std::io::Result<u16> {
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        let req = format!(
            "{method} {path} HTTP/1.1\r\nhost: localhost\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await?;
        let mut head = [0u8; 12];
        s.read_exact(&mut head).await?;
        // "HTTP/1.1 200"
        std::str::from_utf8(&head[9..12])
            .ok()
            .and_then(|code| code.parse::<u16>().ok())
            .ok_or_else(|| std::io::Error::other("not an HTTP/1.1 status line"))
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

fn current_thread_runtime(command: &str) -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("mcp-guard-sidecar {command}: cannot start the runtime: {e}");
            None
        }
    }
}

/// `wait-started`: polls `/startupz` until it answers 200 (exit 0) or `timeout` passes (exit 1).
/// It never waits for the MCP server: in the regular-container form the kubelet starts the
/// server's container only after this hook returns.
pub fn wait_started(admin: SocketAddr, timeout: Duration) -> ExitCode {
    let addr = loopback(admin);
    let Some(runtime) = current_thread_runtime("wait-started") else {
        return ExitCode::FAILURE;
    };
    runtime.block_on(async {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if matches!(admin_request(addr, "GET", "/startupz").await, Ok(200)) {
                return ExitCode::SUCCESS;
            }
            if tokio::time::Instant::now() >= deadline {
                eprintln!(
                    "mcp-guard-sidecar wait-started: http://{addr}/startupz did not answer 200 within {timeout:?}"
                );
                return ExitCode::FAILURE;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

/// The file name `copy-binary` writes and the injected app command runs.
pub const BINARY_NAME: &str = "mcp-guard-sidecar";

/// `copy-binary DIR`: copies this (static) binary to `DIR/mcp-guard-sidecar`, executable by
/// every user, through a temporary file and a rename so a running copy is never overwritten.
pub fn copy_binary(dir: &Path) -> ExitCode {
    let result = (|| {
        use std::os::unix::fs::PermissionsExt;
        let exe = std::env::current_exe()?;
        let tmp = dir.join(format!(".{BINARY_NAME}.tmp"));
        std::fs::copy(&exe, &tmp)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
        std::fs::rename(&tmp, dir.join(BINARY_NAME))
    })();
    match result {
        Ok(()) => {
            println!("copied mcp-guard-sidecar to {}", dir.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "mcp-guard-sidecar copy-binary: cannot copy this binary into {}: {e}",
                dir.display()
            );
            ExitCode::FAILURE
        }
    }
}

/// What `run-app` does with the sidecar when the command fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnFailure {
    /// End the sidecar whatever the exit code (pods with `restartPolicy: Never`).
    Shutdown,
    /// End the sidecar only after a successful exit: the kubelet restarts a failed command
    /// (`restartPolicy: OnFailure`), and it must find its sidecar still there.
    Keep,
}

/// Signals the wrapper passes on to the command: what the kubelet and `kubectl` send PID 1.
const FORWARDED: [nix::sys::signal::Signal; 6] = [
    nix::sys::signal::Signal::SIGTERM,
    nix::sys::signal::Signal::SIGINT,
    nix::sys::signal::Signal::SIGHUP,
    nix::sys::signal::Signal::SIGQUIT,
    nix::sys::signal::Signal::SIGUSR1,
    nix::sys::signal::Signal::SIGUSR2,
];

/// `run-app -- COMMAND...`: runs the app's command as a child, passes the container's signals on
/// to it, and when it exits asks the sidecar to shut down (`POST /shutdown` on loopback) as
/// `on_failure` says, then exits with the command's exit code (128 + signal when it was killed).
/// A command that cannot be started exits 127, as a shell would.
pub fn run_app(admin: SocketAddr, on_failure: OnFailure, command: &[OsString]) -> ExitCode {
    let Some(runtime) = current_thread_runtime("run-app") else {
        return ExitCode::FAILURE;
    };
    runtime.block_on(async {
        let code = run_child(command).await;
        if code == 0 || on_failure == OnFailure::Shutdown {
            shutdown_sidecar(loopback(admin)).await;
        } else {
            eprintln!(
                "mcp-guard-sidecar run-app: the command exited {code}; the sidecar keeps running for the kubelet's restart"
            );
        }
        ExitCode::from(u8::try_from(code).unwrap_or(1))
    })
}

/// Runs the command to its end and returns its exit code.
async fn run_child(command: &[OsString]) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    let Some((program, args)) = command.split_first() else {
        eprintln!("mcp-guard-sidecar run-app: no command given after --");
        return 127;
    };
    let mut child = match tokio::process::Command::new(program).args(args).spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "mcp-guard-sidecar run-app: cannot start {}: {e}",
                program.to_string_lossy()
            );
            return 127;
        }
    };
    let pid = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .map(nix::unistd::Pid::from_raw);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for sig in FORWARDED {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::from_raw(sig as i32)) {
            Ok(mut stream) => {
                let tx = tx.clone();
                tokio::spawn(async move {
                    while stream.recv().await.is_some() {
                        if tx.send(sig).is_err() {
                            break;
                        }
                    }
                });
            }
            Err(e) => eprintln!("mcp-guard-sidecar run-app: cannot watch {sig}: {e}"),
        }
    }
    drop(tx);
    loop {
        tokio::select! {
            status = child.wait() => {
                return match status {
                    Ok(s) => s.code().or_else(|| s.signal().map(|n| 128 + n)).unwrap_or(1),
                    Err(e) => {
                        eprintln!("mcp-guard-sidecar run-app: lost the command: {e}");
                        1
                    }
                };
            }
            Some(sig) = rx.recv() => {
                if let Some(pid) = pid
                    && let Err(e) = nix::sys::signal::kill(pid, sig)
                {
                    eprintln!("mcp-guard-sidecar run-app: cannot pass {sig} on: {e}");
                }
            }
        }
    }
}

/// Asks the sidecar to drain and exit. It may be restarting; a few seconds of retries cover that.
/// A sidecar that is not there has nothing to end: that is said, not failed on.
async fn shutdown_sidecar(addr: SocketAddr) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match admin_request(addr, "POST", "/shutdown").await {
            Ok(200) => return,
            Ok(code) => {
                eprintln!(
                    "mcp-guard-sidecar run-app: http://{addr}/shutdown answered {code}; the sidecar keeps running"
                );
                return;
            }
            Err(e) if tokio::time::Instant::now() >= deadline => {
                eprintln!("mcp-guard-sidecar run-app: cannot reach the sidecar at {addr}: {e}");
                return;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn loopback_replaces_only_the_wildcard() {
        let any: SocketAddr = "0.0.0.0:15020".parse().unwrap();
        assert_eq!(loopback(any).to_string(), "127.0.0.1:15020");
        let any6: SocketAddr = "[::]:15020".parse().unwrap();
        assert_eq!(loopback(any6).to_string(), "[::1]:15020");
        let pod: SocketAddr = "10.1.2.3:15020".parse().unwrap();
        assert_eq!(loopback(pod), pod);
    }
}
