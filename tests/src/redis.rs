//! A real Redis (Debian's `redis-server`, installed by `tests/scripts/install-redis.sh`) on a
//! free loopback port, without persistence, for the fleet-wide rate-limit suites. It can be
//! stopped and started again on the same port, as an outage.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::{Proc, free_port, port_open};

/// A redis-server process.
#[derive(Debug)]
pub struct Redis {
    proc: Option<Proc>,
    pub port: u16,
    password: String,
}

/// `REDIS_SERVER` from `$MCP_GUARD_CACHE/redis/env.sh`; panics naming the install script.
pub fn redis_server_bin() -> PathBuf {
    crate::installed_bin("redis", "REDIS_SERVER", "install-redis.sh")
}

impl Redis {
    /// Starts redis-server on a free loopback port, requiring `password`.
    pub fn start(password: &str) -> Redis {
        let mut r = Redis {
            proc: None,
            port: free_port(),
            password: password.to_owned(),
        };
        r.restart();
        r
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Stops the server (an outage); its data goes with it.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while port_open(self.port) {
            assert!(
                Instant::now() < deadline,
                "redis on {} did not stop",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the server (again) on its port, empty.
    pub fn restart(&mut self) {
        self.stop();
        let mut proc = Proc::spawn(
            "redis-server",
            Command::new(redis_server_bin())
                .args(["--bind", "127.0.0.1", "--port"])
                .arg(self.port.to_string())
                .args([
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--protected-mode",
                    "yes",
                ])
                .args(["--requirepass", &self.password]),
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while !port_open(self.port) {
            if let Some(s) = proc.try_status() {
                panic!("redis-server exited ({s})\n{}", proc.logs());
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not listen on {}\n{}",
                self.port,
                proc.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.proc = Some(proc);
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }
}
