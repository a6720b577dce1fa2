//! Identity end to end: the real sidecar binary between a real OpenID provider (npm
//! `oidc-provider`, two agents of different roles) and a real PyPI `mcp` server that records the
//! headers of every request it receives. Needs `tests/scripts/install-peers.sh` and
//! `tests/scripts/install-oidc.sh`, and `cargo build --workspace --bins`.

use std::time::{Duration, Instant};

use mcp_guard_sidecar::auth::jsonwebtoken::jwk::JwkSet;
use mcp_guard_sidecar::auth::jsonwebtoken::{
    self as jwt, Algorithm, DecodingKey, EncodingKey, Header, Validation,
};
use mcp_guard_tests::oidc::{
    IdentityServer, Provider, RESOURCE, b64url, b64url_decode, gen_key, jwt_parts, probe, whoami,
};
use mcp_guard_tests::{PROTOCOL_2025, Sidecar, TempDir, initialize_body, post, workspace_root};
use serde_json::{Value, json};

/// `mcp_guard_key_refreshes_total{result}` from the admin port's metrics.
fn key_count(metrics: &str, result: &str) -> f64 {
    let series = format!("mcp_guard_key_refreshes_total{{result=\"{result}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series.as_str()))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Every fetch of the provider's keys so far, successful or not.
fn key_fetches(metrics: &str) -> f64 {
    key_count(metrics, "success") + key_count(metrics, "failure")
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// (what, headers, URL, expected status, expected `error=` in WWW-Authenticate).
type Case = (
    &'static str,
    Vec<(String, String)>,
    String,
    u16,
    Option<&'static str>,
);

fn sidecar(provider: &Provider, server: &IdentityServer, extra: &[&str]) -> Sidecar {
    let issuer = provider.issuer();
    let mut args = vec![
        "--issuer",
        issuer.as_str(),
        "--resource-uri",
        RESOURCE,
        "--log-format",
        "text",
    ];
    args.extend_from_slice(extra);
    Sidecar::start(server.port, &args)
}

/// No request the server ever received carried any of `tokens`, nor an Authorization header
/// (unless `allow_authorization`, for the modes that send the server its own token).
fn assert_server_never_saw(server: &IdentityServer, tokens: &[&str], allow_authorization: bool) {
    let reqs = server.requests();
    assert!(!reqs.is_empty(), "the server received nothing");
    for r in &reqs {
        let text = r.to_string();
        for t in tokens {
            assert!(
                !text.contains(*t),
                "the client's token reached the server: {r}"
            );
        }
        if !allow_authorization {
            assert!(r["headers"].get("authorization").is_none(), "{r}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_headers_reach_the_server_and_the_token_never_does() {
    let dir = TempDir::new("idp-keys");
    let k1 = gen_key(dir.path(), "k1");
    let provider = Provider::start(&[&k1]);
    let server = IdentityServer::start();
    let mut sc = sidecar(&provider, &server, &["--required-scopes", "mcp:tools"]);
    let url = sc.url("/mcp");

    let admin = provider.admin_token().await;
    let reader = provider.reader_token().await;
    let seen = whoami(&url, &admin).await;
    assert_eq!(seen["x-mcp-guard-sub"], "agent-admin", "{seen}");
    assert_eq!(seen["x-mcp-guard-roles"], "mcp-admin");
    assert_eq!(seen["x-mcp-guard-groups"], "ops,dev");
    assert_eq!(seen["x-mcp-guard-client-id"], "agent-admin");
    assert_eq!(seen["x-mcp-guard-iss"], provider.issuer());
    assert_eq!(seen["x-mcp-guard-email"], "admin-agent@example.test");
    let seen = whoami(&url, &reader).await;
    assert_eq!(seen["x-mcp-guard-sub"], "agent-reader", "{seen}");
    assert_eq!(seen["x-mcp-guard-roles"], "mcp-reader");
    assert_eq!(seen["x-mcp-guard-groups"], "dev");
    assert_eq!(seen["x-mcp-guard-scopes"], "mcp:tools");
    assert!(seen.get("authorization").is_none(), "{seen}");

    // Spoofed identity headers beside a valid token are replaced, never merged.
    let call = mcp_guard_tests::post(
        &url,
        &mcp_guard_tests::initialize_body(0, mcp_guard_tests::PROTOCOL_2025),
        &[
            ("authorization", &format!("Bearer {reader}")),
            ("x-mcp-guard-sub", "agent-admin"),
            ("x-mcp-guard-roles", "mcp-admin"),
        ],
    )
    .await;
    assert_eq!(call.status, 200);
    let last = server.requests().pop().expect("a request");
    assert_eq!(last["headers"]["x-mcp-guard-sub"], "agent-reader", "{last}");
    assert_eq!(last["headers"]["x-mcp-guard-roles"], "mcp-reader", "{last}");
    assert_server_never_saw(&server, &[&admin, &reader], false);

    // RFC 9728 metadata, root and path-suffixed.
    for path in [
        "/.well-known/oauth-protected-resource",
        "/.well-known/oauth-protected-resource/mcp",
    ] {
        let v: Value = reqwest::get(sc.url(path))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["resource"], RESOURCE, "{path}");
        assert_eq!(v["authorization_servers"], json!([provider.issuer()]));
    }
    sc.assert_alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adversarial_tokens_against_the_real_provider() {
    let dir = TempDir::new("idp-keys");
    let k1 = gen_key(dir.path(), "k1");
    let other_key = gen_key(dir.path(), "k-other");
    let provider = Provider::start(&[&k1]);
    let stranger = Provider::start(&[&other_key]);
    let server = IdentityServer::start();
    let mut sc = sidecar(&provider, &server, &["--jwt-leeway", "0s"]);
    let url = sc.url("/mcp");

    let good = provider.reader_token().await;
    let (h, claims) = jwt_parts(&good);
    assert_eq!(h["typ"], "at+jwt");
    assert_eq!(h["alg"], "RS256");
    assert_eq!(claims["aud"], RESOURCE);
    let pem = std::fs::read(dir.path().join("k1.pem")).unwrap();
    let real_key = EncodingKey::from_rsa_pem(&pem).unwrap();
    let forge = |c: &Value, kid: &str| {
        let mut h = Header::new(Algorithm::RS256);
        h.kid = Some(kid.into());
        h.typ = Some("at+jwt".into());
        jwt::encode(&h, c, &real_key).unwrap()
    };
    let jwks = provider.jwks().await;
    let jwk_text = jwks["keys"][0].to_string();

    let mut cases: Vec<Case> = Vec::new();
    let bearer = |t: &str| vec![("authorization".to_owned(), format!("Bearer {t}"))];
    cases.push(("missing", vec![], url.clone(), 401, None));
    cases.push((
        "malformed",
        bearer("abc.def"),
        url.clone(),
        401,
        Some("invalid_token"),
    ));
    let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
    // Flip one bit of the decoded signature: editing the base64 text instead can leave the
    // decoded bytes unchanged (the old "replace the last two characters with AA" did for one
    // token in 256), and the forged token would then verify.
    let mut signature = b64url_decode(&parts[2]).expect("the provider's signature is base64url");
    signature[0] ^= 0x01;
    parts[2] = b64url(&signature);
    cases.push((
        "bad signature",
        bearer(&parts.join(".")),
        url.clone(),
        401,
        Some("invalid_token"),
    ));
    let none = format!(
        "{}.{}.",
        b64url(br#"{"alg":"none","typ":"at+jwt","kid":"k1"}"#),
        good.split('.').nth(1).unwrap()
    );
    cases.push((
        "alg none",
        bearer(&none),
        url.clone(),
        401,
        Some("invalid_token"),
    ));
    let mut hs = Header::new(Algorithm::HS256);
    hs.kid = Some("k1".into());
    let hs_token =
        jwt::encode(&hs, &claims, &EncodingKey::from_secret(jwk_text.as_bytes())).unwrap();
    cases.push((
        "HS256 with the RSA public key",
        bearer(&hs_token),
        url.clone(),
        401,
        Some("invalid_token"),
    ));
    cases.push((
        "unknown kid",
        bearer(&forge(&claims, "made-up-kid")),
        url.clone(),
        401,
        Some("invalid_token"),
    ));
    let strangers = stranger
        .token("agent-admin", "admin-secret", RESOURCE, "mcp:tools")
        .await;
    cases.push((
        "another provider's token",
        bearer(&strangers),
        url.clone(),
        401,
        Some("invalid_token"),
    ));
    let mut c = claims.clone();
    c["iss"] = json!("https://evil.example.test");
    cases.push((
        "wrong issuer",
        bearer(&forge(&c, "k1")),
        url.clone(),
        401,
        Some("invalid_token"),
    ));
    let other_aud = provider
        .token(
            "agent-reader",
            "reader-secret",
            "https://other.example.test/mcp",
            "mcp:tools",
        )
        .await;
    cases.push((
        "wrong audience (real token for another resource)",
        bearer(&other_aud),
        url.clone(),
        401,
        Some("invalid_token"),
    ));
    let mut c = claims.clone();
    c["exp"] = json!(now() - 5);
    cases.push((
        "expired",
        bearer(&forge(&c, "k1")),
        url.clone(),
        401,
        Some("invalid_token"),
    ));
    let mut c = claims.clone();
    c["nbf"] = json!(now() + 600);
    cases.push((
        "not yet valid",
        bearer(&forge(&c, "k1")),
        url.clone(),
        401,
        Some("invalid_token"),
    ));
    cases.push((
        "token in the query string",
        vec![],
        format!("{url}?access_token={good}"),
        400,
        Some("invalid_request"),
    ));
    cases.push((
        "spoofed identity headers, no token",
        vec![
            ("x-mcp-guard-sub".into(), "agent-admin".into()),
            ("x-mcp-guard-roles".into(), "mcp-admin".into()),
        ],
        url.clone(),
        401,
        None,
    ));

    let before = server.client_requests().len();
    for (what, headers, target, status, error) in &cases {
        let h: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let (got, www) = probe(target, &h).await;
        assert_eq!(got, *status, "{what}");
        assert!(
            www.starts_with("Bearer ") && www.contains("resource_metadata=\"https://mcp.example.test/.well-known/oauth-protected-resource/mcp\""),
            "{what}: {www}"
        );
        match error {
            Some(e) => assert!(www.contains(&format!("error=\"{e}\"")), "{what}: {www}"),
            None => assert!(!www.contains("error="), "{what}: {www}"),
        }
    }
    assert_eq!(
        server.client_requests().len(),
        before,
        "a refused request reached the server"
    );
    // And the real token still works.
    assert_eq!(whoami(&url, &good).await["x-mcp-guard-sub"], "agent-reader");
    println!(
        "adversarial token cases run against oidc-provider: {}",
        cases.len()
    );
    sc.assert_alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_exchange_at_the_provider() {
    let dir = TempDir::new("idp-keys");
    let k1 = gen_key(dir.path(), "k1");
    let provider = Provider::start(&[&k1]);
    let server = IdentityServer::start();
    let secret = dir.path().join("sidecar-secret");
    std::fs::write(&secret, "sidecar-secret\n").unwrap();
    let secret_s = secret.display().to_string();
    let mut sc = sidecar(
        &provider,
        &server,
        &[
            "--identity-passthrough",
            "token-exchange",
            "--exchange-client-id",
            "mcp-guard-sidecar",
            "--exchange-client-secret-file",
            &secret_s,
            "--upstream-audience",
            "urn:mcp:upstream",
        ],
    );
    let url = sc.url("/mcp");
    let reader = provider.reader_token().await;
    let seen = whoami(&url, &reader).await;
    let auth = seen["authorization"].as_str().expect("exchanged token");
    let exchanged = auth.strip_prefix("Bearer ").expect("bearer");
    assert_ne!(exchanged, reader);
    let (h, c) = jwt_parts(exchanged);
    assert_eq!(h["typ"], "at+jwt");
    assert_eq!(c["aud"], "urn:mcp:upstream");
    assert_eq!(c["sub"], "agent-reader");
    assert_eq!(c["act"]["sub"], "mcp-guard-sidecar");
    assert_eq!(c["act"]["act"]["sub"], "agent-reader");
    assert_eq!(c["iss"], provider.issuer());
    assert_eq!(c["roles"], json!(["mcp-reader"]));
    assert!(seen.get("x-mcp-guard-sub").is_none());
    // initialize, initialized and the call: one exchange, cached for the subject.
    assert_eq!(provider.stats().await["exchanges"], 1);
    assert_server_never_saw(&server, &[&reader], true);
    sc.assert_alive();

    // A failed exchange (the provider refuses the sidecar's client) never reaches the server.
    let wrong = dir.path().join("wrong-secret");
    std::fs::write(&wrong, "not-the-secret").expect("write");
    let wrong_s = wrong.display().to_string();
    let mut bad = sidecar(
        &provider,
        &server,
        &[
            "--identity-passthrough",
            "token-exchange",
            "--exchange-client-id",
            "mcp-guard-sidecar",
            "--exchange-client-secret-file",
            &wrong_s,
            "--upstream-audience",
            "urn:mcp:upstream",
        ],
    );
    let before = server.client_requests().len();
    let (status, _) = probe(
        &bad.url("/mcp"),
        &[("authorization", &format!("Bearer {reader}"))],
    )
    .await;
    assert_eq!(status, 502);
    assert_eq!(server.client_requests().len(), before);
    bad.assert_alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minted_jwt_with_act_and_jwks_on_the_admin_port() {
    let dir = TempDir::new("idp-keys");
    let k1 = gen_key(dir.path(), "k1");
    let provider = Provider::start(&[&k1]);
    let server = IdentityServer::start();
    let key = workspace_root().join("sidecar/tests/fixtures/auth/ec1.pem");
    let key_s = key.display().to_string();
    let mut sc = sidecar(
        &provider,
        &server,
        &[
            "--identity-passthrough",
            "jwt",
            "--mint-key-file",
            &key_s,
            "--upstream-audience",
            "urn:mcp:upstream",
        ],
    );
    let admin = provider.admin_token().await;
    let seen = whoami(&sc.url("/mcp"), &admin).await;
    let minted = seen["authorization"]
        .as_str()
        .and_then(|a| a.strip_prefix("Bearer "))
        .expect("minted token")
        .to_owned();
    let (status, body) = sc.admin("GET", "/.well-known/jwks.json");
    assert_eq!(status, 200, "{body}");
    let set: JwkSet = serde_json::from_str(&body).unwrap();
    let (h, _) = jwt_parts(&minted);
    let jwk = set
        .find(h["kid"].as_str().unwrap())
        .expect("kid in the admin JWKS");
    let mut v = Validation::new(Algorithm::ES256);
    v.set_audience(&["urn:mcp:upstream"]);
    v.set_issuer(&[RESOURCE]);
    let data = jwt::decode::<Value>(&minted, &DecodingKey::from_jwk(jwk).unwrap(), &v)
        .expect("minted token verifies with the admin JWKS");
    let c = data.claims;
    assert_eq!(c["sub"], "agent-admin");
    assert_eq!(c["act"]["sub"], "agent-admin");
    assert_eq!(c["roles"], json!(["mcp-admin"]));
    assert!(c["exp"].as_u64().unwrap() <= now() + 61);
    assert_server_never_saw(&server, &[&admin], true);
    sc.assert_alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_and_provider_outage() {
    let dir = TempDir::new("idp-keys");
    let k1 = gen_key(dir.path(), "k1");
    let k2 = gen_key(dir.path(), "k2");
    let mut provider = Provider::start(&[&k1]);
    let port = provider.port;
    let server = IdentityServer::start();
    let mut sc = sidecar(&provider, &server, &["--jwks-min-refetch-interval", "1s"]);
    let url = sc.url("/mcp");
    let old = provider.reader_token().await;
    assert_eq!(whoami(&url, &old).await["x-mcp-guard-sub"], "agent-reader");

    // Rotation: the provider now signs with k2 and still publishes k1.
    provider.proc.kill();
    drop(provider);
    let mut provider = Provider::start_on(port, &[&k2, &k1]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let new = provider.admin_token().await;
    assert_eq!(jwt_parts(&new).0["kid"], "k2");
    assert_eq!(whoami(&url, &new).await["x-mcp-guard-sub"], "agent-admin");
    assert_eq!(whoami(&url, &old).await["x-mcp-guard-sub"], "agent-reader");

    // Outage: cached keys keep valid tokens working, without stalls; nothing invalid passes.
    provider.proc.kill();
    drop(provider);
    let pem = std::fs::read(dir.path().join("k2.pem")).unwrap();
    let (_, claims) = jwt_parts(&new);
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some("k3-unknown".into());
    let unknown_kid = jwt::encode(&h, &claims, &EncodingKey::from_rsa_pem(&pem).unwrap()).unwrap();
    let mut c = claims.clone();
    c["sub"] = json!("agent-root");
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some("k2".into());
    let other = gen_key(dir.path(), "k2-impostor");
    let impostor = jwt::encode(
        &h,
        &c,
        &EncodingKey::from_rsa_pem(&std::fs::read(other.with_extension("pem")).unwrap()).unwrap(),
    )
    .unwrap();
    // A token the sidecar has never seen, signed with the (cached) current key: as the provider
    // would have issued it just before going down.
    let mut fresh_claims = claims.clone();
    fresh_claims["jti"] = json!("issued-just-before-the-outage");
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some("k2".into());
    h.typ = Some("at+jwt".into());
    let fresh = jwt::encode(
        &h,
        &fresh_claims,
        &EncodingKey::from_rsa_pem(&pem).expect("k2 pem"),
    )
    .expect("sign");
    // "No stall" is a property, not a time: a valid token signed with a cached key never makes
    // the sidecar go to the provider (the fetch counter does not move), and a token with an
    // unknown key makes it try at most once per --jwks-min-refetch-interval (1 s) elapsed.
    let (_, metrics) = sc.admin("GET", "/metrics");
    let before = key_fetches(&metrics);
    assert!(
        key_count(&metrics, "success") >= 2.0,
        "the start and the rotation fetched keys: {metrics}"
    );
    for round in 0..5 {
        for t in [&old, &new, &fresh] {
            // initialize: what the server answers 200 to without a session.
            let r = post(
                &url,
                &initialize_body(0, PROTOCOL_2025),
                &[("authorization", &format!("Bearer {t}"))],
            )
            .await;
            assert_eq!(
                r.status, 200,
                "round {round}: a valid token was refused during the outage: {}",
                r.body
            );
        }
    }
    let (_, metrics) = sc.admin("GET", "/metrics");
    assert_eq!(
        key_fetches(&metrics),
        before,
        "a token signed with a cached key sent the sidecar to the provider: {metrics}"
    );
    let bad_started = Instant::now();
    for _round in 0..5 {
        for (what, t) in [("unknown kid", &unknown_kid), ("impostor key", &impostor)] {
            let (s, www) = probe(&url, &[("authorization", &format!("Bearer {t}"))]).await;
            assert_eq!(s, 401, "{what} during the outage");
            assert!(www.contains("invalid_token"), "{www}");
        }
    }
    // Past the refetch rate limit an unknown kid makes the sidecar try the provider again, which
    // is down: counted as a failure.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (s, _) = probe(&url, &[("authorization", &format!("Bearer {unknown_kid}"))]).await;
    assert_eq!(s, 401);
    let (_, metrics) = sc.admin("GET", "/metrics");
    let tries = key_fetches(&metrics) - before;
    let allowed = 1.0 + bad_started.elapsed().as_secs_f64().floor();
    assert!(
        (1.0..=allowed).contains(&tries),
        "{tries} key fetches for unknown key ids in {:?}: at least one, at most one per second elapsed\n{metrics}",
        bad_started.elapsed()
    );
    assert!(key_count(&metrics, "failure") >= 1.0, "{metrics}");
    sc.assert_alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_and_scopes_of_the_two_agents_differ() {
    let dir = TempDir::new("idp-keys");
    let k1 = gen_key(dir.path(), "k1");
    let provider = Provider::start(&[&k1]);
    let server = IdentityServer::start();
    let mut sc = sidecar(&provider, &server, &["--required-scopes", "mcp:admin"]);
    let url = sc.url("/mcp");
    let admin = provider.admin_token().await;
    let reader = provider.reader_token().await;
    assert_eq!(whoami(&url, &admin).await["x-mcp-guard-roles"], "mcp-admin");
    let (status, www) = probe(&url, &[("authorization", &format!("Bearer {reader}"))]).await;
    assert_eq!(status, 403);
    assert!(
        www.contains("error=\"insufficient_scope\"") && www.contains("scope=\"mcp:admin\""),
        "{www}"
    );
    assert_server_never_saw(&server, &[&admin, &reader], false);
    sc.assert_alive();
}
