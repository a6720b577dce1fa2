//! Identity peers for the `identity_*` suites: a real OpenID provider (npm `oidc-provider`,
//! `tests/scripts/oidc/provider.mjs`, installed by `tests/scripts/install-oidc.sh`) and a real
//! PyPI `mcp` server that records the headers of every request it receives
//! (`tests/scripts/py/identity_server.py`), plus helpers to forge hostile tokens.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{
    Proc, START_TIMEOUT, TempDir, cache_dir, free_port, http_client, peers, port_open, run_bounded,
    workspace_root,
};

const INSTALL_HINT: &str = "run `tests/scripts/install-oidc.sh` first (it installs npm \
     oidc-provider on Node 22 under $MCP_GUARD_CACHE/oidc, default ~/.cache/mcp-guard/oidc)";

/// The canonical resource URI the suites give the sidecar (`--resource-uri`).
pub const RESOURCE: &str = "https://mcp.example.test/mcp";

/// The installed provider: (node binary, provider.mjs). Runs `tests/scripts/install-oidc.sh`
/// once per test process (idempotent and cached, so a second run returns at once), so a fresh
/// clone needs no extra step.
pub fn oidc_install() -> (PathBuf, PathBuf) {
    static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();
    let installed = INSTALLED.get_or_init(|| {
        let script = workspace_root().join("tests/scripts/install-oidc.sh");
        let out = run_bounded(
            "install-oidc",
            Command::new("bash").arg(&script),
            Duration::from_secs(600),
        );
        if out.success() {
            Ok(())
        } else {
            Err(format!("{} failed:\n{}", script.display(), out.stderr))
        }
    });
    if let Err(e) = installed {
        panic!("{e}\n{INSTALL_HINT}");
    }
    let env_file = cache_dir().join("oidc").join("env.sh");
    let text = fs::read_to_string(&env_file)
        .unwrap_or_else(|e| panic!("{}: {e}: {INSTALL_HINT}", env_file.display()));
    let vars: HashMap<&str, &str> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .collect();
    let get = |k: &str| {
        let p = PathBuf::from(
            vars.get(k)
                .unwrap_or_else(|| panic!("{} has no {k}: {INSTALL_HINT}", env_file.display())),
        );
        assert!(p.exists(), "{} does not exist: {INSTALL_HINT}", p.display());
        p
    };
    (get("OIDC_NODE"), get("OIDC_APP"))
}

fn wait_ready(proc: &mut Proc, host: &str, port: u16) -> Result<(), String> {
    let deadline = Instant::now() + START_TIMEOUT;
    let open = || match format!("{host}:{port}").parse::<std::net::SocketAddr>() {
        Ok(addr) => std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok(),
        Err(_) => port_open(port),
    };
    loop {
        if proc.stdout().contains("READY") && open() {
            return Ok(());
        }
        if let Some(s) = proc.try_status() {
            return Err(format!("exited ({s})\n{}", proc.logs()));
        }
        if Instant::now() > deadline {
            return Err(format!("not ready in {START_TIMEOUT:?}\n{}", proc.logs()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Generates a private RSA JWK with `kid` (through the provider's own `genkey` command).
pub fn gen_key(dir: &Path, kid: &str) -> PathBuf {
    let (node, app) = oidc_install();
    let out = dir.join(format!("{kid}.json"));
    let st = Command::new(node)
        .arg(app)
        .arg("genkey")
        .arg(&out)
        .arg(kid)
        .status()
        .expect("run genkey");
    assert!(st.success(), "genkey failed");
    out
}

/// The running provider.
#[derive(Debug)]
pub struct Provider {
    pub proc: Proc,
    pub port: u16,
    /// The address it listens on (and names in its issuer).
    pub host: String,
}

impl Provider {
    /// Starts it on a free port, signing with the first of `keys` and publishing all.
    pub fn start(keys: &[&Path]) -> Provider {
        let mut last = String::new();
        for _ in 0..3 {
            let port = free_port();
            match Self::try_start_on("127.0.0.1", port, keys, None) {
                Ok(p) => return p,
                Err(e) => last = e,
            }
        }
        panic!("oidc-provider did not start: {last}");
    }

    /// Starts it on `host` (an address of this machine, e.g. a node's bridge so that pods reach
    /// it) and a free port; the issuer is `http://HOST:PORT`.
    pub fn start_on_host(host: &str, keys: &[&Path]) -> Provider {
        let mut last = String::new();
        for _ in 0..3 {
            match Self::try_start_on(host, free_port(), keys, None) {
                Ok(p) => return p,
                Err(e) => last = e,
            }
        }
        panic!("oidc-provider did not start on {host}: {last}");
    }

    /// Starts it on `port` (a restart of the same issuer).
    pub fn start_on(port: u16, keys: &[&Path]) -> Provider {
        Self::try_start_on("127.0.0.1", port, keys, None)
            .unwrap_or_else(|e| panic!("oidc-provider did not start on {port}: {e}"))
    }

    /// As [`Provider::start`], issuing tokens that live `ttl_secs` (default 300).
    pub fn start_with_ttl(keys: &[&Path], ttl_secs: u64) -> Provider {
        let mut last = String::new();
        for _ in 0..3 {
            match Self::try_start_on("127.0.0.1", free_port(), keys, Some(ttl_secs)) {
                Ok(p) => return p,
                Err(e) => last = e,
            }
        }
        panic!("oidc-provider did not start: {last}");
    }

    fn try_start_on(
        host: &str,
        port: u16,
        keys: &[&Path],
        ttl_secs: Option<u64>,
    ) -> Result<Provider, String> {
        let (node, app) = oidc_install();
        let keys = keys
            .iter()
            .map(|k| k.display().to_string())
            .collect::<Vec<_>>()
            .join(",");
        let mut proc = Proc::spawn(
            "oidc-provider",
            Command::new(node)
                .arg(app)
                .arg("--port")
                .arg(port.to_string())
                .arg("--keys")
                .arg(keys)
                .arg("--host")
                .arg(host)
                .args(
                    ttl_secs
                        .into_iter()
                        .flat_map(|t| ["--ttl".to_owned(), t.to_string()]),
                ),
        );
        wait_ready(&mut proc, host, port)?;
        Ok(Provider {
            proc,
            port,
            host: host.to_owned(),
        })
    }

    /// `http://HOST:PORT` (HOST 127.0.0.1 unless started with [`Provider::start_on_host`]).
    pub fn issuer(&self) -> String {
        format!("http://{}:{}", self.host, self.port)
    }

    /// A client-credentials access token for `resource`.
    pub async fn token(&self, client: &str, secret: &str, resource: &str, scope: &str) -> String {
        let resp = http_client()
            .post(format!("{}/token", self.issuer()))
            .basic_auth(client, Some(secret))
            .form(&[
                ("grant_type", "client_credentials"),
                ("resource", resource),
                ("scope", scope),
            ])
            .send()
            .await
            .expect("token request");
        let status = resp.status();
        let v: Value = resp.json().await.expect("token answer");
        assert!(status.is_success(), "token request failed: {status} {v}");
        v["access_token"].as_str().expect("access_token").to_owned()
    }

    /// The admin agent's token (roles mcp-admin, groups ops+dev).
    pub async fn admin_token(&self) -> String {
        self.token(
            "agent-admin",
            "admin-secret",
            RESOURCE,
            "mcp:tools mcp:admin",
        )
        .await
    }

    /// The reader agent's token (role mcp-reader, group dev).
    pub async fn reader_token(&self) -> String {
        self.token("agent-reader", "reader-secret", RESOURCE, "mcp:tools")
            .await
    }

    /// `GET /test/stats`.
    pub async fn stats(&self) -> Value {
        http_client()
            .get(format!("{}/test/stats", self.issuer()))
            .send()
            .await
            .expect("stats")
            .json()
            .await
            .expect("stats json")
    }

    /// The provider's public JWKS document.
    pub async fn jwks(&self) -> Value {
        http_client()
            .get(format!("{}/jwks", self.issuer()))
            .send()
            .await
            .expect("jwks")
            .json()
            .await
            .expect("jwks json")
    }
}

/// The PyPI `mcp` server that logs the headers of every request.
#[derive(Debug)]
pub struct IdentityServer {
    pub proc: Proc,
    pub port: u16,
    dir: TempDir,
}

impl IdentityServer {
    pub fn start() -> IdentityServer {
        let dir = TempDir::new("identity-server");
        let mut last = String::new();
        for _ in 0..3 {
            let port = free_port();
            let mut proc = Proc::spawn(
                "identity-server",
                Command::new(&peers().python)
                    .arg(crate::py_script("identity_server.py"))
                    .arg("--port")
                    .arg(port.to_string())
                    .arg("--log")
                    .arg(dir.path().join("requests.jsonl"))
                    .env("PYTHONUNBUFFERED", "1"),
            );
            match wait_ready(&mut proc, "127.0.0.1", port) {
                Ok(()) => return IdentityServer { proc, port, dir },
                Err(e) => last = e,
            }
        }
        panic!("identity server did not start: {last}");
    }

    /// The requests of clients (through the sidecar): [`Self::requests`] but the sidecar's own
    /// listing of the server's tools at start (sent with its own `User-Agent`).
    pub fn client_requests(&self) -> Vec<Value> {
        self.requests()
            .into_iter()
            .filter(|r| r["headers"]["user-agent"] != mcp_guard_sidecar::tools::USER_AGENT)
            .collect()
    }

    /// Every request the server received so far: `{"method", "path", "headers"}`.
    pub fn requests(&self) -> Vec<Value> {
        fs::read_to_string(self.dir.path().join("requests.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

/// Base64url without padding.
pub fn b64url(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// Base64url decoding (padding optional); `None` on a bad character.
pub fn b64url_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            _ => return None,
        } as u32)
    };
    let bytes: Vec<u8> = s.bytes().filter(|b| *b != b'=').collect();
    let mut out = Vec::new();
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= val(*c)? << (18 - 6 * i);
        }
        for i in 0..chunk.len().saturating_sub(1) {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    Some(out)
}

/// The (header, claims) of a JWT, unverified.
pub fn jwt_parts(token: &str) -> (Value, Value) {
    let mut it = token.split('.');
    let mut next = || -> Value {
        it.next()
            .and_then(b64url_decode)
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null)
    };
    let h = next();
    let c = next();
    (h, c)
}

/// A token with the given header and claims and an arbitrary signature part.
pub fn unsigned(header: &Value, claims: &Value, signature: &str) -> String {
    format!(
        "{}.{}.{signature}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    )
}

/// Opens a session at `url` as the bearer of `token` (`initialize`, then
/// `notifications/initialized`); returns the session id (empty for a session-less server).
/// Panics on any refusal.
pub async fn open_session(url: &str, token: &str) -> String {
    let auth = format!("Bearer {token}");
    let init = crate::post(
        url,
        &crate::initialize_body(0, crate::PROTOCOL_2025),
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(init.status, 200, "initialize: {}", init.body);
    let sid = init.header("mcp-session-id").unwrap_or_default();
    let h = [
        ("authorization", auth.as_str()),
        ("mcp-session-id", sid.as_str()),
        ("mcp-protocol-version", crate::PROTOCOL_2025),
    ];
    let ack = crate::post(
        url,
        &serde_json::json!({"jsonrpc":"2.0","method":"notifications/initialized"}),
        &h,
    )
    .await;
    assert!(
        ack.status == 202 || ack.status == 200,
        "initialized: {}",
        ack.body
    );
    sid
}

/// Initializes a session at `url` with `token`, calls the identity server's `whoami` tool, and
/// returns the request headers the server saw on that call. Panics on any refusal.
pub async fn whoami(url: &str, token: &str) -> Value {
    let auth = format!("Bearer {token}");
    let sid = open_session(url, token).await;
    let h = [
        ("authorization", auth.as_str()),
        ("mcp-session-id", sid.as_str()),
        ("mcp-protocol-version", crate::PROTOCOL_2025),
    ];
    let call = crate::post(
        url,
        &crate::call_body(1, "whoami", serde_json::json!({})),
        &h,
    )
    .await;
    assert_eq!(call.status, 200, "whoami: {}", call.body);
    let r = call.expect_response(&serde_json::json!(1));
    let text = r["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("whoami answer: {r}"));
    serde_json::from_str(text).expect("whoami JSON")
}

/// The request's status and `WWW-Authenticate` for a `tools/list` POST with `headers`.
pub async fn probe(url: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let r = crate::post(url, &crate::list_body(1), headers).await;
    (r.status, r.header("www-authenticate").unwrap_or_default())
}
