//! The identity layer on fixtures: a JWKS file, keys from `tests/fixtures/auth`, a loopback
//! upstream that records what it received, and the proxy driven in-process. The same suite runs
//! against a real provider in `tests/tests/identity_*.rs`.

// Fixture helpers: a failure here is a broken fixture, and panicking is the test's answer.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::Parser;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use mcp_guard_sidecar::ProxyConfig;
use mcp_guard_sidecar::auth::Authenticator;
use mcp_guard_sidecar::auth::jsonwebtoken::jwk::{Jwk, JwkSet};
use mcp_guard_sidecar::auth::jsonwebtoken::{self as jwt, Algorithm, EncodingKey, Header};
use mcp_guard_sidecar::intercept::StaticToolFilter;
use mcp_guard_sidecar::metrics::Metrics;
use mcp_guard_sidecar::proxy::Proxy;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ISS: &str = "https://idp.example.test";
const RESOURCE: &str = "https://mcp.example.test/mcp";

fn fixture(name: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/auth")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn jwk(pem: &str, kid: &str) -> Jwk {
    let key = EncodingKey::from_rsa_pem(&fixture(pem)).unwrap();
    let mut j = Jwk::from_encoding_key(&key, Algorithm::RS256).unwrap();
    j.common.key_id = Some(kid.into());
    j
}

fn write_jwks(path: &std::path::Path, keys: Vec<Jwk>) {
    std::fs::write(path, serde_json::to_vec(&JwkSet { keys }).unwrap()).unwrap();
}

fn claims() -> Value {
    json!({
        "iss": ISS, "aud": RESOURCE, "sub": "alice", "exp": now() + 300, "iat": now(),
        "client_id": "agent-1", "scope": "mcp:tools", "roles": ["admin"], "groups": ["ops"],
        "email": "alice@example.test"
    })
}

fn sign(pem: &str, kid: Option<&str>, claims: &Value) -> String {
    let mut h = Header::new(Algorithm::RS256);
    h.kid = kid.map(str::to_owned);
    h.typ = Some("at+jwt".into());
    jwt::encode(
        &h,
        claims,
        &EncodingKey::from_rsa_pem(&fixture(pem)).unwrap(),
    )
    .unwrap()
}

fn b64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for c in data.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=c.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// A loopback HTTP server that answers every request with a JSON-RPC result holding the raw
/// request head it received.
async fn recording_upstream() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = s.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..i]).to_string();
                        let body =
                            json!({"jsonrpc":"2.0","id":1,"result":{"head": head}}).to_string();
                        let resp = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = s.write_all(resp.as_bytes()).await;
                        return;
                    }
                }
            });
        }
    });
    port
}

struct Fx {
    proxy: Proxy,
    jwks: PathBuf,
    _dir: TempDir,
}

struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn setup(extra: &[&str]) -> Fx {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "mcp-guard-auth-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let jwks = dir.join("jwks.json");
    write_jwks(&jwks, vec![jwk("rsa1.pem", "k1")]);
    let port = recording_upstream().await;
    #[derive(Parser)]
    struct W {
        #[command(flatten)]
        c: ProxyConfig,
    }
    let port_s = port.to_string();
    let jwks_s = jwks.display().to_string();
    let mut args = vec![
        "x",
        "--upstream-port",
        &port_s,
        "--issuer",
        ISS,
        "--resource-uri",
        RESOURCE,
        "--jwks-file",
        &jwks_s,
    ];
    args.extend_from_slice(extra);
    let cfg = W::parse_from(args).c;
    let auth = Arc::new(Authenticator::from_config(&cfg.auth, &Arc::new(Metrics::new())).unwrap());
    auth.start().await;
    let proxy = Proxy::new(
        &cfg,
        Arc::new(StaticToolFilter::new(&[], &[])),
        Arc::new(mcp_guard_sidecar::limits::Limiter::local_only(
            16,
            Arc::new(Metrics::new()),
        )),
        Arc::new(Metrics::new()),
        auth,
        None,
        Arc::default(),
    )
    .unwrap();
    Fx {
        proxy,
        jwks,
        _dir: TempDir(dir),
    }
}

struct Answer {
    status: StatusCode,
    www: String,
    body: Value,
}

impl Answer {
    fn upstream_head(&self) -> String {
        self.body["result"]["head"]
            .as_str()
            .unwrap_or("")
            .to_ascii_lowercase()
    }
}

async fn call(fx: &Fx, uri: &str, headers: &[(&str, &str)]) -> Answer {
    let mut req = Request::post(uri)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;
    let resp = fx
        .proxy
        .handle(req.body(Full::new(Bytes::from(body))).unwrap())
        .await;
    let status = resp.status();
    let www = resp
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        www,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}

async fn with_token(fx: &Fx, token: &str) -> Answer {
    call(fx, "/mcp", &[("authorization", &format!("Bearer {token}"))]).await
}

#[tokio::test]
async fn adversarial_tokens_are_refused() {
    let fx = setup(&[]).await;
    let mut ran = 0;
    let mut check = |what: &str, a: Answer, status: u16, error: Option<&str>| {
        ran += 1;
        assert_eq!(a.status.as_u16(), status, "{what}: {:?}", a.body);
        assert!(
            a.www.starts_with("Bearer ")
                && a.www.contains(
                    "resource_metadata=\"https://mcp.example.test/.well-known/oauth-protected-resource/mcp\""
                ),
            "{what}: WWW-Authenticate {:?}",
            a.www
        );
        match error {
            Some(e) => assert!(
                a.www.contains(&format!("error=\"{e}\"")),
                "{what}: {}",
                a.www
            ),
            None => assert!(!a.www.contains("error="), "{what}: {}", a.www),
        }
        assert!(a.upstream_head().is_empty(), "{what} reached the server");
    };

    check("missing", call(&fx, "/mcp", &[]).await, 401, None);
    check(
        "basic scheme",
        call(&fx, "/mcp", &[("authorization", "Basic YTpi")]).await,
        401,
        None,
    );
    check(
        "malformed",
        with_token(&fx, "not-a-jwt").await,
        401,
        Some("invalid_token"),
    );
    check(
        "garbage chars",
        with_token(&fx, "a.b.c\"").await,
        401,
        Some("invalid_token"),
    );
    let good = sign("rsa1.pem", Some("k1"), &claims());
    let mut parts: Vec<&str> = good.split('.').collect();
    let other = sign("rsa2.pem", Some("k1"), &claims());
    let other_sig = other.rsplit('.').next().unwrap().to_owned();
    parts[2] = &other_sig;
    check(
        "bad signature",
        with_token(&fx, &parts.join(".")).await,
        401,
        Some("invalid_token"),
    );
    let mut tampered_claims = claims();
    tampered_claims["sub"] = json!("mallory");
    let tampered = format!(
        "{}.{}.{}",
        good.split('.').next().unwrap(),
        b64(tampered_claims.to_string().as_bytes()),
        good.rsplit('.').next().unwrap()
    );
    check(
        "tampered payload",
        with_token(&fx, &tampered).await,
        401,
        Some("invalid_token"),
    );
    let none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"at+jwt","kid":"k1"}"#),
        b64(claims().to_string().as_bytes())
    );
    check(
        "alg none",
        with_token(&fx, &none).await,
        401,
        Some("invalid_token"),
    );
    let none_upper = format!(
        "{}.{}.",
        b64(br#"{"alg":"NONE","kid":"k1"}"#),
        b64(claims().to_string().as_bytes())
    );
    check(
        "alg NONE",
        with_token(&fx, &none_upper).await,
        401,
        Some("invalid_token"),
    );
    for secret in [
        fixture("rsa1.pub.pem"),
        serde_json::to_vec(&jwk("rsa1.pem", "k1")).unwrap(),
    ] {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("k1".into());
        let hs = jwt::encode(&h, &claims(), &EncodingKey::from_secret(&secret)).unwrap();
        check(
            "HS256 with the public key",
            with_token(&fx, &hs).await,
            401,
            Some("invalid_token"),
        );
    }
    check(
        "unknown kid",
        with_token(&fx, &sign("rsa2.pem", Some("made-up"), &claims())).await,
        401,
        Some("invalid_token"),
    );
    let mut c = claims();
    c["iss"] = json!("https://evil.example.test");
    check(
        "wrong issuer",
        with_token(&fx, &sign("rsa1.pem", Some("k1"), &c)).await,
        401,
        Some("invalid_token"),
    );
    let mut c = claims();
    c["aud"] = json!("https://other.example.test/mcp");
    check(
        "wrong audience",
        with_token(&fx, &sign("rsa1.pem", Some("k1"), &c)).await,
        401,
        Some("invalid_token"),
    );
    let mut c = claims();
    c.as_object_mut().unwrap().remove("aud");
    check(
        "no audience",
        with_token(&fx, &sign("rsa1.pem", Some("k1"), &c)).await,
        401,
        Some("invalid_token"),
    );
    let mut c = claims();
    c["exp"] = json!(now() - 120);
    check(
        "expired",
        with_token(&fx, &sign("rsa1.pem", Some("k1"), &c)).await,
        401,
        Some("invalid_token"),
    );
    let mut c = claims();
    c["nbf"] = json!(now() + 120);
    check(
        "not yet valid",
        with_token(&fx, &sign("rsa1.pem", Some("k1"), &c)).await,
        401,
        Some("invalid_token"),
    );
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some("k1".into());
    h.typ = Some("dpop+jwt".into());
    let wrong_typ = jwt::encode(
        &h,
        &claims(),
        &EncodingKey::from_rsa_pem(&fixture("rsa1.pem")).unwrap(),
    )
    .unwrap();
    check(
        "wrong typ",
        with_token(&fx, &wrong_typ).await,
        401,
        Some("invalid_token"),
    );
    check(
        "token in the query string",
        call(&fx, &format!("/mcp?access_token={good}"), &[]).await,
        400,
        Some("invalid_request"),
    );
    check(
        "two Authorization headers",
        call(
            &fx,
            "/mcp",
            &[
                ("authorization", &format!("Bearer {good}")),
                ("authorization", &format!("Bearer {good}")),
            ],
        )
        .await,
        400,
        Some("invalid_request"),
    );
    check(
        "spoofed identity headers without a token",
        call(
            &fx,
            "/mcp",
            &[("x-mcp-guard-sub", "root"), ("x-mcp-guard-roles", "admin")],
        )
        .await,
        401,
        None,
    );

    // Spoofed identity headers next to a valid token: replaced by the verified values.
    let a = call(
        &fx,
        "/mcp",
        &[
            ("authorization", &format!("Bearer {good}")),
            ("x-mcp-guard-sub", "root"),
            ("x-mcp-guard-roles", "superuser"),
        ],
    )
    .await;
    ran += 1;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    let head = a.upstream_head();
    assert!(head.contains("x-mcp-guard-sub: alice"), "{head}");
    assert!(head.contains("x-mcp-guard-roles: admin"), "{head}");
    assert!(
        !head.contains("root") && !head.contains("superuser"),
        "{head}"
    );
    assert!(
        !head.contains("authorization"),
        "the client's token reached the server: {head}"
    );
    assert!(!head.contains(&good.to_ascii_lowercase()[..40]), "{head}");
    println!("adversarial token cases run: {ran}");
}

#[tokio::test]
async fn valid_tokens_pass_with_identity_and_metadata_is_served() {
    let fx = setup(&["--required-scopes", "mcp:tools"]).await;
    let good = sign("rsa1.pem", Some("k1"), &claims());
    for _ in 0..2 {
        let a = with_token(&fx, &good).await;
        assert_eq!(a.status, StatusCode::OK);
        let head = a.upstream_head();
        for h in [
            "x-mcp-guard-sub: alice",
            "x-mcp-guard-iss: https://idp.example.test",
            "x-mcp-guard-email: alice@example.test",
            "x-mcp-guard-groups: ops",
            "x-mcp-guard-scopes: mcp:tools",
            "x-mcp-guard-client-id: agent-1",
        ] {
            assert!(head.contains(h), "{h} missing in {head}");
        }
    }
    // A kid-less token verifies against the only key.
    assert_eq!(
        with_token(&fx, &sign("rsa1.pem", None, &claims()))
            .await
            .status,
        StatusCode::OK
    );

    let mut c = claims();
    c["scope"] = json!("other");
    let a = with_token(&fx, &sign("rsa1.pem", Some("k1"), &c)).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert!(
        a.www.contains("error=\"insufficient_scope\"") && a.www.contains("scope=\"mcp:tools\""),
        "{}",
        a.www
    );

    for path in [
        "/.well-known/oauth-protected-resource",
        "/.well-known/oauth-protected-resource/mcp",
    ] {
        let resp = fx
            .proxy
            .handle(Request::get(path).body(Full::new(Bytes::new())).unwrap())
            .await;
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        let v: Value =
            serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
        assert_eq!(v["resource"], RESOURCE);
        assert_eq!(v["authorization_servers"], json!([ISS]));
        assert_eq!(v["bearer_methods_supported"], json!(["header"]));
        assert_eq!(v["scopes_supported"], json!(["mcp:tools"]));
    }
}

#[tokio::test]
async fn key_rotation_in_the_jwks_file_is_picked_up_and_rate_limited() {
    let fx = setup(&["--jwks-min-refetch-interval", "0s"]).await;
    let new_token = sign("rsa2.pem", Some("k2"), &claims());
    assert_eq!(
        with_token(&fx, &new_token).await.status,
        StatusCode::UNAUTHORIZED
    );
    write_jwks(&fx.jwks, vec![jwk("rsa2.pem", "k2"), jwk("rsa1.pem", "k1")]);
    assert_eq!(with_token(&fx, &new_token).await.status, StatusCode::OK);

    // With a long refetch interval, an unknown kid does not reread the keys.
    let fx = setup(&["--jwks-min-refetch-interval", "1m"]).await;
    assert_eq!(
        with_token(&fx, &sign("rsa1.pem", Some("k9"), &claims()))
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    write_jwks(&fx.jwks, vec![jwk("rsa2.pem", "k2"), jwk("rsa1.pem", "k1")]);
    assert_eq!(
        with_token(&fx, &new_token).await.status,
        StatusCode::UNAUTHORIZED
    );
    // Retiring a key drops tokens verified with it from the cache.
    let fx = setup(&["--jwks-min-refetch-interval", "0s"]).await;
    let old = sign("rsa1.pem", Some("k1"), &claims());
    assert_eq!(with_token(&fx, &old).await.status, StatusCode::OK);
    write_jwks(&fx.jwks, vec![jwk("rsa2.pem", "k2")]);
    assert_eq!(with_token(&fx, &new_token).await.status, StatusCode::OK);
    assert_eq!(with_token(&fx, &old).await.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn anonymous_only_when_allowed_and_config_is_checked() {
    let fx = setup(&["--allow-anonymous"]).await;
    let a = call(&fx, "/mcp", &[("x-mcp-guard-sub", "root")]).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(
        !a.upstream_head().contains("x-mcp-guard-sub"),
        "{}",
        a.upstream_head()
    );
    // A token that is present must still be valid.
    assert_eq!(
        with_token(&fx, "x.y.z").await.status,
        StatusCode::UNAUTHORIZED
    );

    #[derive(Parser)]
    struct W {
        #[command(flatten)]
        c: ProxyConfig,
    }
    let bad = |args: &[&str]| {
        let mut v = vec!["x"];
        v.extend_from_slice(args);
        Authenticator::from_config(&W::parse_from(v).c.auth, &Arc::new(Metrics::new())).is_err()
    };
    assert!(bad(&["--issuer", ISS]), "no resource URI");
    assert!(
        bad(&["--issuer", ISS, "--resource-uri", "/mcp"]),
        "relative resource URI"
    );
    assert!(bad(&[
        "--issuer",
        ISS,
        "--resource-uri",
        RESOURCE,
        "--jwt-algorithms",
        "HS256"
    ]));
    assert!(bad(&["--auth-required"]));
    assert!(bad(&[
        "--issuer",
        ISS,
        "--resource-uri",
        RESOURCE,
        "--identity-passthrough",
        "jwt"
    ]));
    assert!(!bad(&[]), "no auth configured is allowed (disabled)");
}

#[tokio::test]
async fn every_mcp_path_and_method_needs_a_token() {
    let fx = setup(&[]).await;
    for (m, path) in [
        ("GET", "/mcp"),
        ("DELETE", "/mcp"),
        ("GET", "/sse"),
        ("PUT", "/mcp"),
    ] {
        let req = Request::builder()
            .method(m)
            .uri(path)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = fx.proxy.handle(req).await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{m} {path}");
        assert!(
            resp.headers().contains_key("www-authenticate"),
            "{m} {path}"
        );
    }
}

#[tokio::test]
async fn identity_headers_can_be_signed() {
    use http::header::{HeaderName, HeaderValue};
    let key_file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/auth/hmac.key");
    let key_s = key_file.display().to_string();
    let fx = setup(&["--identity-headers-signing-key-file", &key_s]).await;
    let good = sign("rsa1.pem", Some("k1"), &claims());
    let a = call(
        &fx,
        "/mcp",
        &[
            ("authorization", &format!("Bearer {good}")),
            ("x-mcp-guard-signature", "t=1,v1=forged"),
        ],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    let head = a.body["result"]["head"].as_str().unwrap().to_owned();
    let get = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .map(str::to_owned)
    };
    let sig = get("x-mcp-guard-signature").expect("signature header");
    assert!(!sig.contains("forged"), "{sig}");
    let t: u64 = sig
        .strip_prefix("t=")
        .and_then(|r| r.split(',').next())
        .and_then(|t| t.parse().ok())
        .unwrap();
    let order = [
        "x-mcp-guard-sub",
        "x-mcp-guard-iss",
        "x-mcp-guard-email",
        "x-mcp-guard-groups",
        "x-mcp-guard-roles",
        "x-mcp-guard-scopes",
        "x-mcp-guard-client-id",
    ];
    let values: Vec<(HeaderName, HeaderValue)> = order
        .iter()
        .filter_map(|n| {
            get(n).map(|v| {
                (
                    HeaderName::from_static(n),
                    HeaderValue::from_str(&v).unwrap(),
                )
            })
        })
        .collect();
    assert_eq!(values.len(), 7);
    let key = std::fs::read(&key_file).unwrap();
    let expected =
        mcp_guard_sidecar::auth::passthrough::sign_headers(key.trim_ascii(), t, &values).unwrap();
    assert_eq!(expected.to_str().unwrap(), sig);
}

#[tokio::test]
async fn the_cache_makes_a_repeated_token_cheap() {
    let fx = setup(&[]).await;
    let auth = {
        let cfg_args = [
            "x",
            "--issuer",
            ISS,
            "--resource-uri",
            RESOURCE,
            "--jwks-file",
            fx.jwks.to_str().unwrap(),
        ];
        #[derive(Parser)]
        struct W {
            #[command(flatten)]
            c: ProxyConfig,
        }
        let a = Arc::new(
            Authenticator::from_config(&W::parse_from(cfg_args).c.auth, &Arc::new(Metrics::new()))
                .unwrap(),
        );
        a.start().await;
        a
    };
    let tokens: Vec<String> = (0..20)
        .map(|i| {
            let mut c = claims();
            c["jti"] = json!(format!("t{i}"));
            sign("rsa1.pem", Some("k1"), &c)
        })
        .collect();
    // The first verification of each token checks its signature and builds its identity; every
    // later one is the cached identity itself (the same allocation), not a second verification.
    // What that saves per request is measured in bench/, not asserted here.
    let mut first = Vec::new();
    for t in &tokens {
        first.push(auth.verify(t).await.unwrap());
    }
    for _ in 0..10 {
        for (t, id) in tokens.iter().zip(&first) {
            let again = auth.verify(t).await.unwrap();
            assert!(Arc::ptr_eq(id, &again), "token {t} was verified again");
        }
    }
    // Distinct tokens are distinct entries, even for the same subject.
    assert!(!Arc::ptr_eq(&first[0], &first[1]));
}
