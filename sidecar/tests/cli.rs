#![allow(clippy::unwrap_used)] // a panic in a test is a failed test

//! The sidecar's commands as an operator or the kubelet runs them: `policy test` on the example
//! bundle (and on a broken expectation), and `wait-ready` (the postStart hook of a sidecar
//! injected as a regular container).

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_ready_returns_once_the_sidecar_is_ready_and_fails_when_it_never_is() {
    // Nothing listens: wait-ready gives up after its timeout with exit 1.
    let admin = format!("0.0.0.0:{}", free_port());
    let started = Instant::now();
    let out = tokio::task::spawn_blocking({
        let admin = admin.clone();
        move || {
            Command::new(BIN)
                .args(["wait-ready", "--timeout", "600ms"])
                .env("MCP_GUARD_ADMIN_LISTEN", admin)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(started.elapsed() >= Duration::from_millis(600));

    // A sidecar whose server accepts connections: wait-ready returns 0.
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_port = upstream.local_addr().unwrap().port();
    let cfg = W::try_parse_from([
        "x",
        "--listen",
        &format!("127.0.0.1:{}", free_port()),
        "--admin-listen",
        &admin,
        "--upstream-port",
        &upstream_port.to_string(),
    ])
    .unwrap()
    .c;
    let (_stop, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(mcp_guard_sidecar::run_proxy(cfg, async {
        let _ = rx.await;
    }));
    let out = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(["wait-ready", "--timeout", "20s"])
            .env("MCP_GUARD_ADMIN_LISTEN", admin)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(upstream);
}
