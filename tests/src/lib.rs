//! Shared harness for mcp-guard's end-to-end suites.
//!
//! The suites run the real sidecar binary (`target/debug/mcp-guard-sidecar`, built by
//! `cargo build --workspace --bins`) in front of real MCP servers, and drive it with real MCP
//! clients. Nobody on this project wrote those peers; `tests/scripts/install-peers.sh` installs
//! them (cached) and writes `$MCP_GUARD_CACHE/peers/env.sh`, which [`peers`] reads:
//!
//! * `@modelcontextprotocol/server-everything` on Node 22 ([`Everything`]), `streamableHttp` or
//!   `sse` transport;
//! * a PyPI `mcp` 2.x `MCPServer` (`tests/scripts/py/server.py`, [`PyServer`]) answering JSON
//!   or SSE;
//! * the `@modelcontextprotocol/inspector` CLI ([`inspector`]) and the PyPI `mcp` client
//!   (`tests/scripts/py/client.py`, [`py_client`]);
//! * raw HTTP through `reqwest` ([`post`], [`EventStream`]) for what no client would send.
//!
//! Every child process is killed (with its process group) when its handle drops, every wait is
//! bounded, and every port is picked free at run time, so suites can run in parallel threads.
//! When a test panics, the logs of the processes it started are printed.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
pub mod apiserver;
pub mod chromium;
pub mod node;
pub mod oidc;
pub mod otlp;
pub mod redis;
pub mod suite;
pub mod volume;

/// How long a peer or the sidecar may take to start on a slow, busy 2-core machine.
pub const START_TIMEOUT: Duration = Duration::from_secs(45);
/// How long one external client run (Inspector, Python client) may take.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);
/// Timeout of one raw HTTP exchange.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// The newest protocol revision, session-less.
pub const PROTOCOL_2026: &str = "2026-07-28";
/// A handshake-era revision every peer here speaks.
pub const PROTOCOL_2025: &str = "2025-06-18";

const INSTALL_HINT: &str = "run `tests/scripts/install-peers.sh` first (it installs Node 22, \
     server-everything, the Inspector CLI and PyPI mcp under $MCP_GUARD_CACHE/peers, \
     default ~/.cache/mcp-guard/peers)";

// ---------------------------------------------------------------------------------------------
// Locations
// ---------------------------------------------------------------------------------------------

/// The workspace root (the parent of this crate's manifest directory).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| manifest.join(".."))
}

/// Cargo's target directory: `CARGO_TARGET_DIR` (relative to the workspace root when
/// relative) or `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                workspace_root().join(dir)
            }
        }
        _ => workspace_root().join("target"),
    }
}

fn built_binary(name: &str) -> PathBuf {
    let path = target_dir().join("debug").join(name);
    if !path.is_file() {
        panic!(
            "{} not found: run `cargo build --workspace --bins` first",
            path.display()
        );
    }
    path
}

/// `target/debug/mcp-guard-sidecar`; panics with the build command when it is missing.
pub fn sidecar_bin() -> PathBuf {
    built_binary("mcp-guard-sidecar")
}

/// `target/debug/mcp-guard-example-server`; panics with the build command when it is missing.
pub fn example_server_bin() -> PathBuf {
    built_binary("mcp-guard-example-server")
}

/// The rmcp example server in `--stateless-json` mode (MCP 2026-07-28, JSON answers) on a free
/// loopback port: (process, port).
pub fn start_example_server() -> (Proc, u16) {
    start_example_server_with(&["--stateless-json"])
}

/// The program `key` names in `$MCP_GUARD_CACHE/<dir>/env.sh`, written by
/// `tests/scripts/<script>`; panics naming the script when it is not installed.
pub fn installed_bin(dir: &str, key: &str, script: &str) -> PathBuf {
    let env_file = cache_dir().join(dir).join("env.sh");
    let text = std::fs::read_to_string(&env_file).unwrap_or_else(|e| {
        panic!(
            "{dir} is not installed ({}: {e}): run tests/scripts/{script}",
            env_file.display()
        )
    });
    let prefix = format!("{key}=");
    let bin = text
        .lines()
        .find_map(|l| l.trim().strip_prefix(prefix.as_str()))
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("{} has no {key}", env_file.display()));
    assert!(
        bin.exists(),
        "{} does not exist: run tests/scripts/{script}",
        bin.display()
    );
    bin
}

/// `${MCP_GUARD_CACHE:-$HOME/.cache/mcp-guard}`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("MCP_GUARD_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache").join("mcp-guard")
}

/// `tests/scripts/py/<name>`.
pub fn py_script(name: &str) -> PathBuf {
    workspace_root()
        .join("tests")
        .join("scripts")
        .join("py")
        .join(name)
}

/// The installed real peers, read from `$MCP_GUARD_CACHE/peers/env.sh`.
#[derive(Debug, Clone)]
pub struct Peers {
    /// A Node 22 binary.
    pub node22: PathBuf,
    /// `@modelcontextprotocol/server-everything`'s `dist/index.js`.
    pub everything_js: PathBuf,
    /// `@modelcontextprotocol/inspector`'s `mcp-inspector` launcher.
    pub inspector_bin: PathBuf,
    /// The Python of a venv holding PyPI `mcp` 2.x.
    pub python: PathBuf,
    /// Every `KEY=VALUE` of the env file (versions included).
    pub vars: HashMap<String, String>,
}

/// The installed peers. Panics, naming `tests/scripts/install-peers.sh`, when they are missing:
/// a suite never skips silently.
pub fn peers() -> &'static Peers {
    static PEERS: OnceLock<Result<Peers, String>> = OnceLock::new();
    match PEERS.get_or_init(load_peers) {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    }
}

fn load_peers() -> Result<Peers, String> {
    let env_file = cache_dir().join("peers").join("env.sh");
    let text = fs::read_to_string(&env_file).map_err(|e| {
        format!(
            "real MCP peers are not installed ({}: {e}): {INSTALL_HINT}",
            env_file.display()
        )
    })?;
    let vars: HashMap<String, String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let path = |key: &str| -> Result<PathBuf, String> {
        let value = vars
            .get(key)
            .ok_or_else(|| format!("{} has no {key}: {INSTALL_HINT}", env_file.display()))?;
        let p = PathBuf::from(value);
        if !p.exists() {
            return Err(format!(
                "{key}={} (from {}) does not exist: {INSTALL_HINT}",
                p.display(),
                env_file.display()
            ));
        }
        Ok(p)
    };
    Ok(Peers {
        node22: path("NODE22")?,
        everything_js: path("EVERYTHING_JS")?,
        inspector_bin: path("INSPECTOR_BIN")?,
        python: path("PYTHON")?,
        vars,
    })
}

// ---------------------------------------------------------------------------------------------
// Temporary directories, ports
// ---------------------------------------------------------------------------------------------

/// A directory removed on drop (kept when the test panicked, for its logs).
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates a fresh directory under the system temp dir.
    pub fn new(tag: &str) -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "mcp-guard-tests-{}-{n}-{nanos}-{tag}",
            std::process::id()
        ));
        if let Err(e) = fs::create_dir_all(&dir) {
            panic!("cannot create {}: {e}", dir.display());
        }
        TempDir(dir)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

/// Whether something accepts TCP connections on 127.0.0.1:`port`.
pub fn port_open(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok()
}

/// A non-loopback IPv4 address of this machine (to reach a listener on 0.0.0.0 from outside
/// loopback), if it has one.
pub fn non_loopback_ipv4() -> Option<std::net::Ipv4Addr> {
    // Connecting a UDP socket sends nothing; it only picks the source address of the route.
    for probe in ["192.0.2.1:9", "10.255.255.255:9", "8.8.8.8:53"] {
        if let Ok(sock) = UdpSocket::bind("0.0.0.0:0")
            && sock.connect(probe).is_ok()
            && let Ok(SocketAddr::V4(a)) = sock.local_addr()
            && !a.ip().is_loopback()
            && !a.ip().is_unspecified()
        {
            return Some(*a.ip());
        }
    }
    let out = Command::new("hostname").arg("-I").output().ok()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|s| s.parse::<std::net::Ipv4Addr>().ok())
        .find(|ip| !ip.is_loopback())
}

// ---------------------------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------------------------

/// A child process in its own process group, logging to files; killed (group and all) on drop.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
    _dir: TempDir,
}

impl Proc {
    /// Spawns `cmd` with stdin closed and stdout/stderr captured to files.
    pub fn spawn(name: &str, cmd: &mut Command) -> Proc {
        let dir = TempDir::new(name);
        let stdout = dir.path().join("stdout.log");
        let stderr = dir.path().join("stderr.log");
        let out = File::create(&stdout).expect("create stdout log");
        let err = File::create(&stderr).expect("create stderr log");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        Proc {
            name: name.to_owned(),
            child,
            stdout,
            stderr,
            _dir: dir,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the process wrote to stdout so far.
    pub fn stdout(&self) -> String {
        fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// What the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Both logs, labelled.
    pub fn logs(&self) -> String {
        format!(
            "--- {} stdout ---\n{}\n--- {} stderr ---\n{}",
            self.name,
            tail(&self.stdout(), 8000),
            self.name,
            tail(&self.stderr(), 8000)
        )
    }

    /// The exit status, if the process has exited.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_status() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGKILL to the process group and reaps the child.
    pub fn kill(&mut self) {
        signal_group(self.child.id(), "KILL");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends a signal (e.g. `TERM`) to the process alone.
    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn signal_group(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg("--")
        .arg(format!("-{pid}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        self.kill();
    }
}

/// The last `max` bytes of `s` (at a character boundary).
pub fn tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// The result of a finished one-shot command.
#[derive(Debug, Clone)]
pub struct Output {
    /// Exit status (`None` when killed on timeout).
    pub status: Option<ExitStatus>,
    /// Captured stdout.
    pub stdout: String,
    /// Captured stderr.
    pub stderr: String,
    /// Wall time taken.
    pub elapsed: Duration,
}

impl Output {
    /// Exited with status 0.
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }
}

/// Runs `cmd` to completion, killing its process group after `timeout`.
pub fn run_bounded(name: &str, cmd: &mut Command, timeout: Duration) -> Output {
    let start = Instant::now();
    let mut p = Proc::spawn(name, cmd);
    let status = p.wait_exit(timeout);
    if status.is_none() {
        p.kill();
    }
    Output {
        status,
        stdout: p.stdout(),
        stderr: p.stderr(),
        elapsed: start.elapsed(),
    }
}

fn wait_for_port(proc: &mut Proc, port: u16, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        if port_open(port) {
            return Ok(());
        }
        if let Some(s) = proc.try_status() {
            return Err(format!(
                "{} exited ({s}) before listening on {port}\n{}",
                proc.name,
                proc.logs()
            ));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{} did not listen on {port} within {timeout:?}\n{}",
                proc.name,
                proc.logs()
            ));
        }
        std::thread::sleep(Duration::from_millis(30));
    }
}

/// Starts a server on a free port, retrying on a new port when it dies before listening
/// (another test may have taken the port in between).
fn start_on_free_port<T>(
    what: &str,
    mut start: impl FnMut(u16) -> Proc,
    mut ready: impl FnMut(&mut Proc, u16) -> Result<(), String>,
    wrap: impl FnOnce(Proc, u16) -> T,
) -> T {
    let mut last = String::new();
    for _ in 0..3 {
        let port = free_port();
        let mut proc = start(port);
        match ready(&mut proc, port) {
            Ok(()) => return wrap(proc, port),
            Err(e) => {
                proc.kill();
                last = e;
            }
        }
    }
    panic!("{what} did not start: {last}");
}

/// A blocking `GET`/`POST` over a fresh TCP connection; returns (status, body). For admin
/// endpoints and readiness polls, where an async client is not needed.
pub fn http_blocking(
    addr: SocketAddr,
    method: &str,
    path: &str,
    timeout: Duration,
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {text:?}")))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

// ---------------------------------------------------------------------------------------------
// Servers
// ---------------------------------------------------------------------------------------------

/// Transport of `server-everything`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EverythingTransport {
    /// `node dist/index.js streamableHttp`: POST/GET/DELETE `/mcp`, always SSE answers.
    StreamableHttp,
    /// `node dist/index.js sse`: `GET /sse`, `POST /message?sessionId=`.
    Sse,
}

/// `@modelcontextprotocol/server-everything` on Node 22.
#[derive(Debug)]
pub struct Everything {
    /// The server process.
    pub proc: Proc,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Its transport.
    pub transport: EverythingTransport,
}

impl Everything {
    /// Starts it on a free port: `PORT=<port> node dist/index.js streamableHttp|sse`.
    pub fn start(transport: EverythingTransport) -> Everything {
        let p = peers();
        let arg = match transport {
            EverythingTransport::StreamableHttp => "streamableHttp",
            EverythingTransport::Sse => "sse",
        };
        start_on_free_port(
            "server-everything",
            |port| {
                Proc::spawn(
                    &format!("server-everything-{arg}"),
                    Command::new(&p.node22)
                        .arg(&p.everything_js)
                        .arg(arg)
                        .env("PORT", port.to_string()),
                )
            },
            |proc, port| wait_for_port(proc, port, START_TIMEOUT),
            |proc, port| Everything {
                proc,
                port,
                transport,
            },
        )
    }
}

/// How the Python server answers POSTs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PyAnswers {
    /// `json_response=True`.
    Json,
    /// `json_response=False`: SSE streams.
    Sse,
    /// The older HTTP+SSE transport (`GET /sse`, `POST /messages/?session_id=`).
    LegacySse,
}

/// The PyPI `mcp` `MCPServer` of `tests/scripts/py/server.py`.
#[derive(Debug)]
pub struct PyServer {
    /// The server process.
    pub proc: Proc,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Where `secret_tool` leaves its marker file.
    pub marker_dir: TempDir,
    /// JSON or SSE answers.
    pub answers: PyAnswers,
}

impl PyServer {
    /// Starts it on a free port.
    pub fn start(answers: PyAnswers) -> PyServer {
        Self::start_with(answers, &[])
    }

    /// Starts it on a free port with more of `server.py`'s flags (e.g. `--public-cache`).
    pub fn start_with(answers: PyAnswers, extra: &[&str]) -> PyServer {
        let marker_dir = TempDir::new("py-markers");
        let marker = marker_dir.path().to_path_buf();
        start_on_free_port(
            "python mcp server",
            |port| Self::spawn(answers, &marker, port, extra),
            |proc, port| wait_for_port(proc, port, START_TIMEOUT),
            |proc, port| PyServer {
                proc,
                port,
                marker_dir,
                answers,
            },
        )
    }

    /// Starts it on a given port (e.g. to bring back an upstream the sidecar already points at).
    pub fn start_on(answers: PyAnswers, port: u16) -> PyServer {
        Self::start_on_with(answers, port, &[])
    }

    /// [`PyServer::start_on`] with more of `server.py`'s flags.
    pub fn start_on_with(answers: PyAnswers, port: u16, extra: &[&str]) -> PyServer {
        let marker_dir = TempDir::new("py-markers");
        let mut proc = Self::spawn(answers, marker_dir.path(), port, extra);
        if let Err(e) = wait_for_port(&mut proc, port, START_TIMEOUT) {
            panic!("python mcp server did not start on {port}: {e}");
        }
        PyServer {
            proc,
            port,
            marker_dir,
            answers,
        }
    }

    fn spawn(answers: PyAnswers, marker: &Path, port: u16, extra: &[&str]) -> Proc {
        let p = peers();
        let mode = match answers {
            PyAnswers::Json => "--json-response",
            PyAnswers::Sse => "--sse-response",
            PyAnswers::LegacySse => "--legacy-sse",
        };
        Proc::spawn(
            "python-mcp-server",
            Command::new(&p.python)
                .arg(py_script("server.py"))
                .arg("--port")
                .arg(port.to_string())
                .arg(mode)
                .arg("--marker-dir")
                .arg(marker)
                .args(extra)
                .env("PYTHONUNBUFFERED", "1"),
        )
    }

    /// Whether `secret_tool` ever ran on this server.
    pub fn secret_tool_ran(&self) -> bool {
        self.marker_dir.path().join("secret_tool.ran").exists()
            || self.proc.stderr().contains("SECRET_TOOL_RAN")
    }
}

/// The example MCP server (`mcp-guard-example-server`, rmcp) on a free port, with `extra` flags
/// (`--stateless-json`: session-less JSON answers, the fastest upstream; without it, sessions
/// and SSE answers). Returns the process and its port.
pub fn start_example_server_with(extra: &[&str]) -> (Proc, u16) {
    let bin = example_server_bin();
    start_on_free_port(
        "mcp-guard-example-server",
        |port| {
            Proc::spawn(
                "mcp-guard-example-server",
                Command::new(&bin)
                    .arg("--listen")
                    .arg(format!("127.0.0.1:{port}"))
                    .args(extra),
            )
        },
        |proc, port| wait_for_port(proc, port, START_TIMEOUT),
        |proc, port| (proc, port),
    )
}

/// The sidecar binary in front of an upstream on 127.0.0.1.
#[derive(Debug)]
pub struct Sidecar {
    /// The sidecar process.
    pub proc: Proc,
    /// The proxy port on 127.0.0.1.
    pub port: u16,
    /// The admin port.
    pub admin_port: u16,
    /// The admin listen address it was given.
    pub admin_addr: SocketAddr,
}

impl Sidecar {
    /// Starts `mcp-guard-sidecar --listen 127.0.0.1:P --admin-listen 127.0.0.1:A
    /// --upstream-port <upstream_port> <extra...>` and waits for `/livez`.
    pub fn start(upstream_port: u16, extra: &[&str]) -> Sidecar {
        Self::start_with_admin_host(upstream_port, extra, [127, 0, 0, 1].into())
    }

    /// As [`Sidecar::start`], with the admin server on `admin_ip` (e.g. 0.0.0.0).
    pub fn start_with_admin_host(
        upstream_port: u16,
        extra: &[&str],
        admin_ip: std::net::IpAddr,
    ) -> Sidecar {
        Self::start_with_env(upstream_port, extra, admin_ip, &[])
    }

    /// As [`Sidecar::start_with_admin_host`], with these environment variables (a rendered pod's:
    /// the addresses on the command line win over theirs).
    pub fn start_with_env(
        upstream_port: u16,
        extra: &[&str],
        admin_ip: std::net::IpAddr,
        env: &[(String, String)],
    ) -> Sidecar {
        let bin = sidecar_bin();
        let mut last = String::new();
        for _ in 0..3 {
            let port = free_port();
            let admin_port = free_port();
            if admin_port == port {
                continue;
            }
            let admin_addr = SocketAddr::new(admin_ip, admin_port);
            let mut proc = Proc::spawn(
                "mcp-guard-sidecar",
                Command::new(&bin)
                    .arg("--listen")
                    .arg(format!("127.0.0.1:{port}"))
                    .arg("--admin-listen")
                    .arg(admin_addr.to_string())
                    .arg("--upstream-port")
                    .arg(upstream_port.to_string())
                    .args(extra)
                    .envs(env.iter().map(|(k, v)| (k, v)))
                    .env("RUST_LOG", "info")
                    .env("NO_COLOR", "1"),
            );
            let probe = SocketAddr::from(([127, 0, 0, 1], admin_port));
            match wait_http_ok(&mut proc, probe, "/livez", START_TIMEOUT) {
                Ok(()) => {
                    if let Err(e) = wait_for_port(&mut proc, port, START_TIMEOUT) {
                        last = e;
                        proc.kill();
                        continue;
                    }
                    return Sidecar {
                        proc,
                        port,
                        admin_port,
                        admin_addr,
                    };
                }
                Err(e) => {
                    proc.kill();
                    last = e;
                }
            }
        }
        panic!("mcp-guard-sidecar did not start: {last}");
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// `http://127.0.0.1:<admin_port><path>`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin_port)
    }

    /// A blocking request to the admin port over loopback: (status, body).
    pub fn admin(&self, method: &str, path: &str) -> (u16, String) {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.admin_port));
        http_blocking(addr, method, path, HTTP_TIMEOUT)
            .unwrap_or_else(|e| panic!("admin {method} {path}: {e}\n{}", self.proc.logs()))
    }

    /// Waits until `/readyz` answers 200, as the kubelet's readiness probe would (the sidecar
    /// is ready once its server has answered the sidecar's own listing of its tools); panics
    /// with the last answer and the logs when it does not within the start timeout.
    pub fn wait_ready(&mut self) {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.admin_port));
        if let Err(e) = wait_http_ok(&mut self.proc, addr, "/readyz", START_TIMEOUT) {
            let (status, body) = self.admin("GET", "/readyz");
            panic!("the sidecar is not ready ({status} {body}): {e}");
        }
    }

    /// Panics (with its logs) when the sidecar process has exited.
    pub fn assert_alive(&mut self) {
        if let Some(s) = self.proc.try_status() {
            panic!("the sidecar exited ({s})\n{}", self.proc.logs());
        }
        let (status, _) = self.admin("GET", "/livez");
        assert_eq!(status, 200, "sidecar /livez after the test");
    }
}

fn wait_http_ok(
    proc: &mut Proc,
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok((200, _)) = http_blocking(addr, "GET", path, Duration::from_secs(2)) {
            return Ok(());
        }
        if let Some(s) = proc.try_status() {
            return Err(format!(
                "{} exited ({s}) before {path} answered 200\n{}",
                proc.name,
                proc.logs()
            ));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{}: {path} did not answer 200 within {timeout:?}\n{}",
                proc.name,
                proc.logs()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------------------
// External clients
// ---------------------------------------------------------------------------------------------

/// Runs the Inspector CLI: `mcp-inspector --cli <url> --transport <transport> <args...>`
/// (transport `http` or `sse`) on Node 22.
pub fn inspector(url: &str, transport: &str, args: &[&str]) -> Output {
    let p = peers();
    let node_dir = p.node22.parent().map(Path::to_path_buf).unwrap_or_default();
    let path = format!(
        "{}:{}",
        node_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    run_bounded(
        "inspector-cli",
        Command::new(&p.node22)
            .arg(&p.inspector_bin)
            .arg("--cli")
            .arg(url)
            .arg("--transport")
            .arg(transport)
            .args(args)
            .env("PATH", path)
            .env("CI", "true")
            .env("NO_COLOR", "1"),
        CLIENT_TIMEOUT,
    )
}

/// Runs the Inspector CLI and parses its JSON output; panics when it fails.
pub fn inspector_json(url: &str, transport: &str, args: &[&str]) -> Value {
    let out = inspector(url, transport, args);
    assert!(
        out.success(),
        "inspector {args:?} against {url} failed ({:?}):\nstdout: {}\nstderr: {}",
        out.status,
        out.stdout,
        out.stderr
    );
    serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "inspector output is not JSON ({e}):\n{}\nstderr: {}",
            out.stdout, out.stderr
        )
    })
}

/// Runs `tests/scripts/py/client.py` (the PyPI `mcp` client) and returns its JSON document.
/// `transport` is `http` or `sse`; `mode` is `auto` (2026-07-28 when the server offers it) or
/// `legacy`. See the script for the operations.
pub fn py_client(url: &str, transport: &str, mode: &str, ops: &Value) -> Value {
    try_py_client(url, transport, mode, ops).unwrap_or_else(|e| panic!("{e}"))
}

/// [`py_client`], with a client that could not connect as an error rather than a panic: for a
/// wait that polls through a Service whose endpoints are changing.
pub fn try_py_client(url: &str, transport: &str, mode: &str, ops: &Value) -> Result<Value, String> {
    let p = peers();
    let out = run_bounded(
        "python-mcp-client",
        Command::new(&p.python)
            .arg(py_script("client.py"))
            .arg("--url")
            .arg(url)
            .arg("--transport")
            .arg(transport)
            .arg("--mode")
            .arg(mode)
            .arg("--ops")
            .arg(ops.to_string())
            .arg("--timeout")
            .arg("20")
            .env("PYTHONUNBUFFERED", "1"),
        CLIENT_TIMEOUT,
    );
    let doc: Value = serde_json::from_str(out.stdout.trim()).map_err(|e| {
        format!(
            "python client ({mode}, {url}) gave no JSON ({e}; status {:?}):\nstdout: {}\nstderr: {}",
            out.status,
            out.stdout,
            tail(&out.stderr, 6000)
        )
    })?;
    if !out.success() || doc.get("connect_error").is_some() {
        return Err(format!(
            "python client ({mode}, {url}) could not connect: {doc}\nstderr: {}",
            tail(&out.stderr, 6000)
        ));
    }
    Ok(doc)
}

/// The `results` array of a [`py_client`] document.
pub fn py_results(doc: &Value) -> Vec<Value> {
    doc.get("results")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// Tool names of a `tools/list` result (`{"tools": [{"name": ..}, ..]}`).
pub fn tool_names(result: &Value) -> Vec<String> {
    result
        .get("tools")
        .and_then(Value::as_array)
        .map(|tools| {
            tools
                .iter()
                .filter_map(|t| t.get("name").and_then(Value::as_str).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP
// ---------------------------------------------------------------------------------------------

/// A reqwest client that never uses a proxy and times out every exchange.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(HTTP_TIMEOUT)
        .connect_timeout(Duration::from_secs(5))
        .build()
        .expect("reqwest client")
}

/// A reqwest client without an overall timeout (for long streams; bound reads yourself).
pub fn streaming_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(5))
        .build()
        .expect("reqwest client")
}

/// One Server-Sent Event.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SseEvent {
    /// `event:` (None = the default `message`).
    pub event: Option<String>,
    /// `id:`.
    pub id: Option<String>,
    /// `retry:`.
    pub retry: Option<String>,
    /// The `data:` lines joined by `\n` (may be empty: a priming event).
    pub data: String,
    /// When the event was complete, counted from the start of the request.
    pub at: Duration,
}

impl SseEvent {
    /// The data as JSON, if it is JSON.
    pub fn json(&self) -> Option<Value> {
        if self.data.trim().is_empty() {
            return None;
        }
        serde_json::from_str(&self.data).ok()
    }
}

/// An incremental `text/event-stream` parser: feed it the body's bytes as they arrive and it
/// yields each event once its blank line has come.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    cur: SseEvent,
    has_field: bool,
    data_lines: Vec<String>,
}

impl SseParser {
    /// Parses `bytes`, appending every event they complete to `out`, stamped with `at`.
    pub fn push(&mut self, bytes: &[u8], at: Duration, out: &mut Vec<SseEvent>) {
        self.buf.extend_from_slice(bytes);
        while let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
            let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let line = String::from_utf8_lossy(&line).into_owned();
            if line.is_empty() {
                if self.has_field {
                    let mut ev = std::mem::take(&mut self.cur);
                    ev.data = std::mem::take(&mut self.data_lines).join("\n");
                    ev.at = at;
                    out.push(ev);
                }
                self.has_field = false;
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f.to_owned(), v.strip_prefix(' ').unwrap_or(v).to_owned()),
                None => (line.clone(), String::new()),
            };
            self.has_field = true;
            match field.as_str() {
                "data" => self.data_lines.push(value),
                "event" => self.cur.event = Some(value),
                "id" => self.cur.id = Some(value),
                "retry" => self.cur.retry = Some(value),
                _ => {}
            }
        }
    }
}

/// Parses a whole `text/event-stream` body.
pub fn parse_sse(body: &str) -> Vec<SseEvent> {
    let mut p = SseParser::default();
    let mut out = Vec::new();
    p.push(body.as_bytes(), Duration::ZERO, &mut out);
    p.push(b"\n\n", Duration::ZERO, &mut out);
    out
}

/// A whole HTTP answer to a POST, with its JSON-RPC messages pulled out of either a JSON body
/// or an SSE stream.
#[derive(Debug, Clone)]
pub struct McpResponse {
    /// HTTP status.
    pub status: u16,
    /// Response headers.
    pub headers: reqwest::header::HeaderMap,
    /// The body as text.
    pub body: String,
    /// SSE events (empty for a JSON answer).
    pub events: Vec<SseEvent>,
    /// JSON-RPC messages: the JSON body (each element of a batch), or each event's JSON data.
    pub messages: Vec<Value>,
}

impl McpResponse {
    /// A response header as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }

    /// `Content-Type`, lowercased.
    pub fn content_type(&self) -> String {
        self.header("content-type")
            .unwrap_or_default()
            .to_lowercase()
    }

    /// The JSON-RPC response with this `id` (not a notification or a request).
    pub fn response(&self, id: &Value) -> Option<&Value> {
        self.messages.iter().find(|m| {
            m.get("id") == Some(id) && (m.get("result").is_some() || m.get("error").is_some())
        })
    }

    /// As [`McpResponse::response`], panicking with the whole answer when absent.
    pub fn expect_response(&self, id: &Value) -> &Value {
        self.response(id).unwrap_or_else(|| {
            panic!(
                "no JSON-RPC response with id {id} in the answer (status {}):\n{}",
                self.status, self.body
            )
        })
    }

    /// The body as one JSON value.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_str(&self.body).ok()
    }
}

/// Default headers of a Streamable HTTP POST.
pub fn mcp_headers() -> Vec<(String, String)> {
    vec![
        ("content-type".into(), "application/json".into()),
        (
            "accept".into(),
            "application/json, text/event-stream".into(),
        ),
    ]
}

/// POSTs `body` (any bytes) to `url` with the default MCP headers plus `extra`, reads the whole
/// answer, and pulls out its JSON-RPC messages.
pub async fn post_raw(
    url: &str,
    body: impl Into<reqwest::Body>,
    extra: &[(&str, &str)],
) -> McpResponse {
    let client = http_client();
    let mut req = client.post(url);
    for (k, v) in mcp_headers() {
        if !extra.iter().any(|(ek, _)| ek.eq_ignore_ascii_case(&k)) {
            req = req.header(k, v);
        }
    }
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    let resp = req
        .body(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    read_response(resp).await
}

/// POSTs a JSON value (see [`post_raw`]).
pub async fn post(url: &str, body: &Value, extra: &[(&str, &str)]) -> McpResponse {
    post_raw(url, body.to_string(), extra).await
}

/// Sends any request with the given headers and reads the answer (see [`post_raw`]).
pub async fn request(method: reqwest::Method, url: &str, extra: &[(&str, &str)]) -> McpResponse {
    let mut req = http_client().request(method.clone(), url);
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    read_response(resp).await
}

/// Reads a whole response into an [`McpResponse`].
pub async fn read_response(resp: reqwest::Response) -> McpResponse {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .text()
        .await
        .unwrap_or_else(|e| panic!("reading a {status} answer: {e}"));
    let is_sse = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.to_lowercase().starts_with("text/event-stream"));
    let (events, messages) = if is_sse {
        let events = parse_sse(&body);
        let messages = events.iter().filter_map(SseEvent::json).collect();
        (events, messages)
    } else {
        let messages = match serde_json::from_str::<Value>(&body) {
            Ok(Value::Array(items)) => items,
            Ok(v) => vec![v],
            Err(_) => Vec::new(),
        };
        (Vec::new(), messages)
    };
    McpResponse {
        status,
        headers,
        body,
        events,
        messages,
    }
}

/// An open response read event by event, each stamped with its arrival time.
#[derive(Debug)]
pub struct EventStream {
    resp: reqwest::Response,
    parser: SseParser,
    ready: std::collections::VecDeque<SseEvent>,
    start: Instant,
    ended: bool,
    /// HTTP status.
    pub status: u16,
    /// Response headers.
    pub headers: reqwest::header::HeaderMap,
}

/// What [`EventStream::next`] saw.
#[derive(Debug)]
pub enum Next {
    /// One complete event.
    Event(SseEvent),
    /// The stream ended (cleanly or by a reset).
    End,
    /// Nothing arrived in time.
    Timeout,
}

impl EventStream {
    /// Sends `req` and returns the open stream (the start time is taken before sending).
    pub async fn open(req: reqwest::RequestBuilder) -> EventStream {
        let start = Instant::now();
        let resp = req.send().await.unwrap_or_else(|e| panic!("request: {e}"));
        EventStream {
            status: resp.status().as_u16(),
            headers: resp.headers().clone(),
            resp,
            parser: SseParser::default(),
            ready: Default::default(),
            start,
            ended: false,
        }
    }

    /// POSTs a JSON-RPC body with the default MCP headers plus `extra` and opens the answer.
    pub async fn post(url: &str, body: &Value, extra: &[(&str, &str)]) -> EventStream {
        let mut req = streaming_client().post(url).body(body.to_string());
        for (k, v) in mcp_headers() {
            req = req.header(k, v);
        }
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        Self::open(req).await
    }

    /// GETs an event stream (`Accept: text/event-stream`) with `extra` headers.
    pub async fn get(url: &str, extra: &[(&str, &str)]) -> EventStream {
        let mut req = streaming_client()
            .get(url)
            .header("accept", "text/event-stream");
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        Self::open(req).await
    }

    /// Time since the request was sent.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// `Content-Type`, lowercased.
    pub fn content_type(&self) -> String {
        self.headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_lowercase()
    }

    /// The next complete event, waiting at most `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Next {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(ev) = self.ready.pop_front() {
                return Next::Event(ev);
            }
            if self.ended {
                return Next::End;
            }
            match tokio::time::timeout_at(deadline, self.resp.chunk()).await {
                Err(_) => return Next::Timeout,
                Ok(Ok(Some(bytes))) => {
                    let at = self.start.elapsed();
                    let mut out = Vec::new();
                    self.parser.push(&bytes, at, &mut out);
                    self.ready.extend(out);
                }
                Ok(Ok(None)) | Ok(Err(_)) => {
                    let at = self.start.elapsed();
                    let mut out = Vec::new();
                    self.parser.push(b"\n\n", at, &mut out);
                    self.ready.extend(out);
                    self.ended = true;
                }
            }
        }
    }

    /// The next event that carries JSON data, skipping priming events.
    pub async fn next_json(&mut self, timeout: Duration) -> Option<(Value, SseEvent)> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await {
                Next::Event(ev) => {
                    if let Some(v) = ev.json() {
                        return Some((v, ev));
                    }
                }
                Next::End | Next::Timeout => return None,
            }
        }
    }

    /// Reads everything until the stream ends or `timeout` passes; returns the events and
    /// whether the stream ended.
    pub async fn collect(&mut self, timeout: Duration) -> (Vec<SseEvent>, bool) {
        let deadline = Instant::now() + timeout;
        let mut evs = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await {
                Next::Event(ev) => evs.push(ev),
                Next::End => return (evs, true),
                Next::Timeout => return (evs, false),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// JSON-RPC bodies
// ---------------------------------------------------------------------------------------------

/// `params._meta` of a 2026-07-28 request.
pub fn meta_2026() -> Value {
    json!({
        "io.modelcontextprotocol/protocolVersion": PROTOCOL_2026,
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "mcp-guard-tests", "version": "0"},
    })
}

/// An `initialize` request.
pub fn initialize_body(id: i64, protocol: &str) -> Value {
    json!({
        "jsonrpc": "2.0", "id": id, "method": "initialize",
        "params": {
            "protocolVersion": protocol,
            "capabilities": {},
            "clientInfo": {"name": "mcp-guard-tests", "version": "0"}
        }
    })
}

/// A `tools/list` request.
pub fn list_body(id: i64) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/list", "params": {}})
}

/// A `tools/call` request.
pub fn call_body(id: i64, name: &str, args: Value) -> Value {
    json!({
        "jsonrpc": "2.0", "id": id, "method": "tools/call",
        "params": {"name": name, "arguments": args}
    })
}

/// A `tools/call` request asking for progress with `token`.
pub fn call_with_progress_body(id: i64, name: &str, args: Value, token: &str) -> Value {
    json!({
        "jsonrpc": "2.0", "id": id, "method": "tools/call",
        "params": {"name": name, "arguments": args, "_meta": {"progressToken": token}}
    })
}

/// Adds the 2026-07-28 `_meta` envelope to a request body.
pub fn with_meta_2026(mut body: Value) -> Value {
    if let Some(obj) = body.as_object_mut() {
        let params = obj.entry("params").or_insert_with(|| json!({}));
        if let Some(p) = params.as_object_mut() {
            let meta = p.entry("_meta").or_insert_with(|| json!({}));
            if let (Some(m), Value::Object(add)) = (meta.as_object_mut(), meta_2026()) {
                m.extend(add);
            }
        }
    }
    body
}

/// A handshake-era session over Streamable HTTP (raw HTTP): `initialize`, then
/// `notifications/initialized`; later requests carry `Mcp-Session-Id` and the protocol version.
#[derive(Debug, Clone)]
pub struct Session {
    /// The endpoint URL.
    pub url: String,
    /// The session id the server gave (None for a stateless server).
    pub id: Option<String>,
    /// The negotiated protocol version.
    pub protocol: String,
}

impl Session {
    /// Initializes a session at `url`, panicking when the server does not accept it.
    pub async fn initialize(url: &str, protocol: &str) -> Session {
        let init = post(url, &initialize_body(0, protocol), &[]).await;
        assert_eq!(
            init.status, 200,
            "initialize at {url}: status {} body {}",
            init.status, init.body
        );
        let result = init.expect_response(&json!(0));
        assert!(
            result.get("result").is_some(),
            "initialize failed: {result}"
        );
        let negotiated = result["result"]["protocolVersion"]
            .as_str()
            .unwrap_or(protocol)
            .to_owned();
        let session = Session {
            url: url.to_owned(),
            id: init.header("mcp-session-id"),
            protocol: negotiated,
        };
        let ack = session
            .post(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .await;
        assert!(
            ack.status == 202 || ack.status == 200,
            "notifications/initialized: status {} body {}",
            ack.status,
            ack.body
        );
        session
    }

    /// The headers every request of this session carries.
    pub fn headers(&self) -> Vec<(&str, &str)> {
        let mut h = vec![("mcp-protocol-version", self.protocol.as_str())];
        if let Some(id) = &self.id {
            h.push(("mcp-session-id", id.as_str()));
        }
        h
    }

    /// POSTs a body within the session.
    pub async fn post(&self, body: &Value) -> McpResponse {
        post(&self.url, body, &self.headers()).await
    }

    /// DELETEs the session.
    pub async fn delete(&self) -> McpResponse {
        request(reqwest::Method::DELETE, &self.url, &self.headers()).await
    }
}

/// The `endpoint` announced by an old-transport (HTTP+SSE) stream, with the open stream.
pub async fn open_legacy_sse(base: &str, sse_path: &str) -> (EventStream, String) {
    let mut stream = EventStream::get(&format!("{base}{sse_path}"), &[]).await;
    assert_eq!(
        stream.status, 200,
        "GET {base}{sse_path}: status {}",
        stream.status
    );
    loop {
        match stream.next(Duration::from_secs(15)).await {
            Next::Event(ev) if ev.event.as_deref() == Some("endpoint") => {
                let ep = ev.data.trim().to_owned();
                let url = if ep.starts_with("http://") || ep.starts_with("https://") {
                    ep
                } else {
                    format!("{base}{ep}")
                };
                return (stream, url);
            }
            Next::Event(_) => continue,
            other => panic!("no endpoint event on {base}{sse_path}: {other:?}"),
        }
    }
}

/// Waits on an old-transport stream for the response with `id`, collecting what came before.
pub async fn await_on_stream(
    stream: &mut EventStream,
    id: &Value,
    timeout: Duration,
) -> (Option<Value>, Vec<(Value, SseEvent)>) {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match stream.next_json(left).await {
            Some((v, ev)) => {
                if v.get("id") == Some(id)
                    && (v.get("result").is_some() || v.get("error").is_some())
                {
                    return (Some(v), seen);
                }
                seen.push((v, ev));
            }
            None => return (None, seen),
        }
    }
}

/// The `mcp-guard.audit/v1` lines of a sidecar's stdout. Every line that starts like JSON must
/// be JSON: a torn or interleaved audit line fails the test.
pub fn audit_lines(out: &str) -> Vec<Value> {
    out.lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| {
            serde_json::from_str::<Value>(l)
                .unwrap_or_else(|e| panic!("an audit line is not JSON ({e}): {l}"))
        })
        .filter(|v| v["schema"] == "mcp-guard.audit/v1")
        .collect()
}

/// POSTs one 2026-07-28 request (session-less) with the `Mcp-Method` / `Mcp-Name` headers it
/// mirrors; returns the status and the answer: the JSON body, or the response event of an SSE
/// answer (`Null` when there is none). Panics when no answer arrives.
pub async fn send_2026(client: &reqwest::Client, url: &str, body: &Value) -> (u16, Value) {
    match try_send_2026(client, url, body).await {
        Ok(answer) => answer,
        Err(e) => panic!("POST {url}: {e}"),
    }
}

/// As [`send_2026`], returning the transport error (refused, reset, cut) instead of panicking.
pub async fn try_send_2026(
    client: &reqwest::Client,
    url: &str,
    body: &Value,
) -> Result<(u16, Value), reqwest::Error> {
    let mut req = client
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", PROTOCOL_2026);
    if let Some(m) = body["method"].as_str() {
        req = req.header("mcp-method", m);
    }
    if let Some(n) = body["params"]["name"].as_str() {
        req = req.header("mcp-name", n);
    }
    let resp = req.body(body.to_string()).send().await?;
    let status = resp.status().as_u16();
    let sse = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.to_lowercase().starts_with("text/event-stream"));
    let text = resp.text().await?;
    let answer = if sse {
        parse_sse(&text)
            .iter()
            .filter_map(SseEvent::json)
            .find(|m| m.get("result").is_some() || m.get("error").is_some())
            .unwrap_or(Value::Null)
    } else {
        serde_json::from_str(&text).unwrap_or(Value::Null)
    };
    Ok((status, answer))
}

/// Asserts that `msg` is a JSON-RPC error whose message (or data) names `tool`.
pub fn assert_denied(msg: &Value, tool: &str) {
    let err = msg
        .get("error")
        .unwrap_or_else(|| panic!("expected a JSON-RPC error for {tool}, got {msg}"));
    assert!(
        msg.get("result").is_none(),
        "denied call has a result: {msg}"
    );
    let text = format!(
        "{} {}",
        err.get("message")
            .and_then(Value::as_str)
            .unwrap_or_default(),
        err.get("data").map(Value::to_string).unwrap_or_default()
    );
    assert!(
        text.contains(tool),
        "the error for a denied call should name {tool}: {msg}"
    );
}

/// Asserts that a body is a JSON-RPC error object (`{"jsonrpc":"2.0","error":{"code":..}}`),
/// optionally with the given code, and returns it.
pub fn assert_jsonrpc_error(body: &str, code: Option<i64>) -> Value {
    let v: Value = serde_json::from_str(body)
        .unwrap_or_else(|e| panic!("error body is not JSON ({e}): {body:?}"));
    assert_eq!(v.get("jsonrpc"), Some(&json!("2.0")), "not JSON-RPC: {v}");
    let c = v
        .pointer("/error/code")
        .and_then(Value::as_i64)
        .unwrap_or_else(|| panic!("no error.code: {v}"));
    assert!(
        v.pointer("/error/message")
            .and_then(Value::as_str)
            .is_some_and(|m| !m.is_empty()),
        "no error.message: {v}"
    );
    if let Some(code) = code {
        assert_eq!(c, code, "JSON-RPC error code: {v}");
    }
    v
}

/// Asserts that arrival gaps between consecutive timestamps are each at least `min_gap`, and
/// that the whole run spans at least `(n-1) * min_gap` (progress was streamed, not bunched).
pub fn assert_spaced(times: &[Duration], min_gap: Duration, what: &str) {
    assert!(
        times.len() >= 2,
        "{what}: fewer than two arrivals: {times:?}"
    );
    for w in times.windows(2) {
        let gap = w[1].saturating_sub(w[0]);
        assert!(
            gap >= min_gap,
            "{what}: arrivals {:?} are bunched (gap {gap:?} < {min_gap:?}); the proxy buffered the stream",
            times
        );
    }
}

/// A container's environment as the kubelet would give it: plain values (a path under the pod's
/// `/etc/mcp-guard/` moved under `root` when given, where a test puts the mounted files), the
/// downward API's field as `field:<fieldPath>`, a Secret's key as `secret:<name>/<key>`.
pub fn container_env(container: &Value, root: Option<&Path>) -> Vec<(String, String)> {
    let field = |v: &Value, k: &str| v[k].as_str().unwrap_or_default().to_owned();
    container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let name = field(e, "name");
            let from = &e["valueFrom"];
            let value = if let Some(v) = e["value"].as_str() {
                match (v.strip_prefix("/etc/mcp-guard/"), root) {
                    (Some(rest), Some(root)) => root.join(rest).display().to_string(),
                    _ => v.to_owned(),
                }
            } else if from.get("fieldRef").is_some() {
                format!("field:{}", field(&from["fieldRef"], "fieldPath"))
            } else if from.get("secretKeyRef").is_some() {
                let r = &from["secretKeyRef"];
                format!("secret:{}/{}", field(r, "name"), field(r, "key"))
            } else {
                String::new()
            };
            (name, value)
        })
        .collect()
}

#[cfg(test)]
mod sse_parser_tests {
    use super::*;

    #[test]
    fn parses_priming_multiline_crlf_and_split_chunks() {
        let body = "id: p0\nretry: 3000\ndata:\n\n: comment\r\nevent: message\r\ndata: {\"a\":\r\ndata: 1}\r\nid: e1\r\n\r\n";
        let evs = parse_sse(body);
        assert_eq!(evs.len(), 2, "{evs:?}");
        assert_eq!(evs[0].id.as_deref(), Some("p0"));
        assert_eq!(evs[0].retry.as_deref(), Some("3000"));
        assert_eq!(evs[0].data, "");
        assert_eq!(evs[0].json(), None);
        assert_eq!(evs[1].event.as_deref(), Some("message"));
        assert_eq!(evs[1].json(), Some(json!({"a": 1})));

        let mut p = SseParser::default();
        let mut out = Vec::new();
        for chunk in ["da", "ta: {\"b\"", ":2}\r", "\n", "\r\n"] {
            p.push(chunk.as_bytes(), Duration::from_millis(5), &mut out);
        }
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].json(), Some(json!({"b": 2})));
    }
}
