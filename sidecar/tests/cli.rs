#![allow(clippy::unwrap_used)] // a panic in a test is a failed test

//! The sidecar's commands as an operator or the kubelet runs them: `policy test` on the example
//! bundle (and on a broken expectation), `wait-started` (the postStart hook of a sidecar
//! injected as a regular container), and `run-app` (the wrapper of a Job's command).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use clap::Parser;
use mcp_guard_sidecar::ProxyConfig;

const BIN: &str = env!("CARGO_BIN_EXE_mcp-guard-sidecar");

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/policy-example")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn policy_test_passes_the_example_and_fails_a_wrong_expectation() {
    let out = Command::new(BIN)
        .args(["policy", "test"])
        .arg(example())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("PASS data.mcp.authz_test.test_admin_may_call_anything"),
        "{text}"
    );
    assert!(
        text.lines()
            .last()
            .unwrap_or_default()
            .ends_with(" passed, 0 failed"),
        "{text}"
    );

    // The same bundle with one expectation turned around must fail, naming the case.
    let dir = std::env::temp_dir().join(format!("mcp-guard-cli-{}", std::process::id()));
    let fixtures = dir.join("tests");
    std::fs::create_dir_all(&fixtures).unwrap();
    for f in ["authz.rego", "data.json"] {
        std::fs::copy(example().join(f), dir.join(f)).unwrap();
    }
    std::fs::copy(
        example().join("tests/analyst-read-only.input.json"),
        fixtures.join("analyst.input.json"),
    )
    .unwrap();
    std::fs::write(
        fixtures.join("analyst.expected.json"),
        r#"{"allow": false}"#,
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["policy", "test"])
        .arg(&dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("FAIL analyst: allow is true, expected false"),
        "{text}"
    );

    // A bundle that does not compile is a usage error (2) with the compiler's message.
    std::fs::write(dir.join("authz.rego"), "package mcp.authz\nallow if {\n").unwrap();
    let out = Command::new(BIN)
        .args(["policy", "test"])
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("authz.rego:"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[derive(Parser)]
struct W {
    #[command(flatten)]
    c: ProxyConfig,
}

/// A sidecar run in-process in front of `upstream_port` (where nothing need listen), with a
/// policy directory that does not exist yet. Returns its admin address and its task, which ends
/// when the sidecar has shut down.
fn start_sidecar(upstream_port: u16) -> (String, tokio::task::JoinHandle<()>) {
    let admin = format!("127.0.0.1:{}", free_port());
    let missing_policy = std::env::temp_dir().join(format!(
        "mcp-guard-cli-no-policy-{}-{upstream_port}",
        std::process::id()
    ));
    let cfg = W::try_parse_from([
        "x",
        "--listen",
        &format!("127.0.0.1:{}", free_port()),
        "--admin-listen",
        &admin,
        "--upstream-port",
        &upstream_port.to_string(),
        "--policy-dir",
        missing_policy.to_str().unwrap(),
        // The "server" below is a bare TCP listener: readiness is asked of the connection alone
        // (tests/tests/tool_pins.rs shows readiness waiting for a real server's tool listing).
        "--skip-tool-listing",
    ])
    .unwrap()
    .c;
    let task = tokio::spawn(async move {
        mcp_guard_sidecar::run_proxy(cfg, std::future::pending())
            .await
            .unwrap();
    });
    (admin, task)
}

async fn get(admin: &str, path: &str) -> (u16, String) {
    let resp = reqwest::get(format!("http://{admin}{path}")).await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

fn sidecar_cmd(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).output().unwrap()
}

async fn run(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || Command::new(BIN).args(&args).output().unwrap())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_started_returns_before_the_server_runs_and_fails_when_no_sidecar_does() {
    // Nothing listens: wait-started gives up after its timeout with exit 1. Port 1 (tcpmux),
    // not a port found free: one found free can be taken by the next test's sidecar before
    // wait-started looks.
    let nobody = "0.0.0.0:1";
    let started = Instant::now();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(["wait-started", "--timeout", "600ms"])
            .env("MCP_GUARD_ADMIN_LISTEN", nobody)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(started.elapsed() >= Duration::from_millis(600));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/startupz"));

    // A sidecar whose MCP server has not started (as in the regular-container form, where the
    // kubelet starts the server only after the sidecar's postStart hook returns) and whose
    // policy has not arrived: the hook returns at once; readiness still waits for the server.
    let upstream_port = free_port();
    let (admin, _task) = start_sidecar(upstream_port);
    for name in ["wait-started", "wait-ready"] {
        let admin = admin.clone();
        let out = tokio::task::spawn_blocking(move || {
            Command::new(BIN)
                .args([name, "--timeout", "20s"])
                .env("MCP_GUARD_ADMIN_LISTEN", admin)
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (code, body) = get(&admin, "/startupz").await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("no policy loaded yet"), "{body}");
    let (code, body) = get(&admin, "/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("does not accept connections"), "{body}");

    // The server comes up: the pod becomes ready.
    let upstream = tokio::net::TcpListener::bind(("127.0.0.1", upstream_port))
        .await
        .unwrap();
    let (code, body) = get(&admin, "/readyz").await;
    assert_eq!(code, 200, "{body}");
    drop(upstream);
}

/// Polls until the sidecar task has ended, for at most `limit`.
async fn stopped(task: &mut tokio::task::JoinHandle<()>, limit: Duration) -> bool {
    tokio::time::timeout(limit, task).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_app_ends_the_sidecar_when_the_command_exits_as_the_restart_policy_says() {
    let run_app = |admin: &str, on_failure: &str, script: &str| {
        [
            "run-app",
            "--admin",
            admin,
            "--on-failure",
            on_failure,
            "--",
            "sh",
            "-c",
            script,
        ]
        .map(String::from)
        .to_vec()
    };

    // restartPolicy Never, success: the command's code, and the sidecar is gone.
    let (admin, mut task) = start_sidecar(free_port());
    let out = run(run_app(&admin, "shutdown", "echo done; exit 0")).await;
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "done\n");
    assert!(stopped(&mut task, Duration::from_secs(30)).await);

    // restartPolicy OnFailure, failure: the code passes through and the sidecar stays for the
    // kubelet's restart of the command.
    let (admin, mut task) = start_sidecar(free_port());
    let out = run(run_app(&admin, "keep", "exit 3")).await;
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(get(&admin, "/livez").await.0, 200);
    assert!(!task.is_finished());
    // ... and its later success ends it.
    let out = run(run_app(&admin, "keep", "exit 0")).await;
    assert_eq!(out.status.code(), Some(0));
    assert!(stopped(&mut task, Duration::from_secs(30)).await);

    // restartPolicy Never, failure: ended as well; a command that cannot start is 127.
    let (admin, mut task) = start_sidecar(free_port());
    let out = run([
        "run-app",
        "--admin",
        &admin,
        "--",
        "/nonexistent/mcp-server",
    ]
    .map(String::from)
    .to_vec())
    .await;
    assert_eq!(out.status.code(), Some(127));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot start /nonexistent/mcp-server"));
    assert!(stopped(&mut task, Duration::from_secs(30)).await);

    // No command at all is a usage error.
    let out = sidecar_cmd(&["run-app", "--admin", "127.0.0.1:1"]);
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_app_passes_the_kubelets_sigterm_to_the_command() {
    let (admin, mut task) = start_sidecar(free_port());
    let marker = std::env::temp_dir().join(format!("mcp-guard-run-app-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    let script = format!(
        "trap 'exit 7' TERM; touch {}; while :; do sleep 0.05; done",
        marker.display()
    );
    let mut child = Command::new(BIN)
        .args(["run-app", "--admin", &admin, "--", "sh", "-c", &script])
        .spawn()
        .unwrap();
    // The command has set its trap once the marker exists.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !marker.exists() {
        assert!(Instant::now() < deadline, "the command never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    // 7 is the command's own answer to SIGTERM: the wrapper passed the signal on and did not
    // die of it itself (that would be 143 or a signal status).
    assert_eq!(status.code(), Some(7));
    assert!(stopped(&mut task, Duration::from_secs(30)).await);
    std::fs::remove_file(&marker).unwrap();
}
