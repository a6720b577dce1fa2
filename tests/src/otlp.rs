//! A real OTLP receiver (PyPI `opentelemetry-proto`, `tests/scripts/otlp_receiver.py`, installed
//! by `tests/scripts/install-otlp.sh`) that writes every export it receives as a JSON line.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{Proc, TempDir, cache_dir, free_port, workspace_root};

/// The Python holding `opentelemetry-proto`, from `$MCP_GUARD_CACHE/otlp/env.sh`.
pub fn otlp_python() -> std::path::PathBuf {
    let env_file = cache_dir().join("otlp").join("env.sh");
    let text = std::fs::read_to_string(&env_file).unwrap_or_else(|e| {
        panic!(
            "the OTLP receiver is not installed ({}: {e}): run tests/scripts/install-otlp.sh",
            env_file.display()
        )
    });
    let python = text
        .lines()
        .find_map(|l| l.strip_prefix("OTLP_PYTHON="))
        .map(|p| std::path::PathBuf::from(p.trim()))
        .filter(|p| p.exists());
    python.unwrap_or_else(|| {
        panic!(
            "{} names no OTLP_PYTHON that exists: run tests/scripts/install-otlp.sh",
            env_file.display()
        )
    })
}

pub struct Receiver {
    pub proc: Proc,
    pub port: u16,
    pub out: std::path::PathBuf,
    _dir: TempDir,
}

impl Receiver {
    pub fn start() -> Receiver {
        Self::start_on_host("127.0.0.1")
    }

    /// As [`Receiver::start`], bound to `host` (e.g. the node's bridge gateway, for pods).
    pub fn start_on_host(host: &str) -> Receiver {
        let dir = TempDir::new("otlp-receiver");
        let out = dir.path().join("otlp.jsonl");
        let port = free_port();
        let mut proc = Proc::spawn(
            "otlp-receiver",
            Command::new(otlp_python())
                .arg(workspace_root().join("tests/scripts/otlp_receiver.py"))
                .arg("--host")
                .arg(host)
                .arg("--port")
                .arg(port.to_string())
                .arg("--out")
                .arg(&out),
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        let open = || {
            format!("{host}:{port}")
                .parse::<std::net::SocketAddr>()
                .is_ok_and(|a| {
                    std::net::TcpStream::connect_timeout(&a, Duration::from_secs(1)).is_ok()
                })
        };
        while !(proc.stdout().contains("READY") && open()) {
            assert!(
                proc.try_status().is_none() && Instant::now() < deadline,
                "OTLP receiver did not start\n{}",
                proc.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Receiver {
            proc,
            port,
            out,
            _dir: dir,
        }
    }

    /// The body of every export of `signal` (`metrics`, `traces`) received so far, in order.
    pub fn bodies(&self, signal: &str) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        text.lines()
            .map(|line| {
                serde_json::from_str::<Value>(line).expect("the receiver writes JSON lines")
            })
            .filter(|doc| doc["signal"] == signal)
            .map(|mut doc| doc["body"].take())
            .collect()
    }

    /// Every metric received so far (the last export of each name last).
    pub fn metrics(&self) -> Vec<Value> {
        let mut out = Vec::new();
        for body in self.bodies("metrics") {
            for rm in body["resourceMetrics"].as_array().into_iter().flatten() {
                for sm in rm["scopeMetrics"].as_array().into_iter().flatten() {
                    out.extend(sm["metrics"].as_array().into_iter().flatten().cloned());
                }
            }
        }
        out.reverse();
        out
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Value> {
        let mut spans = Vec::new();
        for body in self.bodies("traces") {
            for rs in body["resourceSpans"].as_array().into_iter().flatten() {
                for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                    for s in ss["spans"].as_array().into_iter().flatten() {
                        let mut s = s.clone();
                        s["resource"] = rs["resource"].clone();
                        spans.push(s);
                    }
                }
            }
        }
        spans
    }
}
