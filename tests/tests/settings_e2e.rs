//! Sidecar settings end to end, from the webhook's rendering to real peers: a pod is injected by
//! the webhook's own code with settings at all three levels — mesh-wide OpenTelemetry export,
//! required scopes on its namespace, minted-JWT passthrough with the key from a Secret on the pod
//! — and the real sidecar binary runs with exactly the environment and files the kubelet would
//! give it (the Secret's key at the mounted path), between a real OpenID provider (npm
//! `oidc-provider`), a real MCP server (PyPI `mcp`, `identity_server.py`) and a real OTLP
//! receiver. Until the single-node suite plays this in a pod, this is the proof that a setting
//! chosen in values or annotations governs the sidecar.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use mcp_guard_sidecar::auth::jsonwebtoken::jwk::JwkSet;
use mcp_guard_sidecar::auth::jsonwebtoken::{self as jwt, Algorithm, DecodingKey, Validation};
use mcp_guard_tests::oidc::{
    IdentityServer, Provider, RESOURCE, gen_key, jwt_parts, probe, whoami,
};
use mcp_guard_tests::otlp::Receiver;
use mcp_guard_tests::{Sidecar, TempDir, container_env, workspace_root};
use mcp_guard_webhook::config::InjectConfig;
use mcp_guard_webhook::inject::{PodContext, injected, sidecar_of};
use serde_json::{Value, json};

/// The injected sidecar container of a pod with `annotations` in a namespace with `ns`.
fn rendered_sidecar(
    cfg: &InjectConfig,
    annotations: &[(&str, &str)],
    ns: &[(&str, &str)],
) -> Value {
    let map = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "tools-0", "labels": {"app.kubernetes.io/name": "tools"}, "annotations": map(annotations)},
        "spec": {"containers": [{"name": "server", "image": "s", "ports": [{"name": "mcp", "containerPort": 3000}]}]},
    });
    let ns = map(ns);
    let ctx = PodContext {
        pod: &pod,
        namespace: "tickets",
        namespace_annotations: &ns,
        workload_name: None,
    };
    let mutated = injected(cfg, ctx).unwrap_or_else(|o| panic!("not injected: {o:?}"));
    let rendered = mutated.to_string();
    assert!(
        !rendered.contains("BEGIN") && !rendered.contains("PRIVATE KEY"),
        "a key in the pod spec"
    );
    sidecar_of(&mutated).cloned().expect("the sidecar")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_from_values_namespace_and_pod_govern_the_sidecar() {
    let keys = TempDir::new("idp-keys");
    let k1 = gen_key(keys.path(), "k1");
    let provider = Provider::start(&[&k1]);
    let server = IdentityServer::start();
    let receiver = Receiver::start();
    let otlp = format!("http://127.0.0.1:{}", receiver.port);

    // The three levels: values (mesh), the namespace, the pod.
    let mesh = json!({"settings": {"otel-endpoint": otlp, "log-format": "text"}, "locked": ["otel-endpoint"]});
    let cfg = InjectConfig {
        mesh: mesh.to_string().parse().unwrap(),
        ..InjectConfig::default()
    };
    let issuer = provider.issuer();
    let pod = [
        ("mcp-guard.dev/inject", "enabled"),
        ("mcp-guard.dev/issuer", issuer.as_str()),
        ("mcp-guard.dev/resource-uri", RESOURCE),
        ("mcp-guard.dev/identity-passthrough", "jwt"),
        ("mcp-guard.dev/mint-key-secret", "tools-minting"),
        ("mcp-guard.dev/upstream-audience", "urn:mcp:upstream"),
    ];
    let namespace = [("mcp-guard.dev/required-scopes", "mcp:admin")];
    let sidecar = rendered_sidecar(&cfg, &pod, &namespace);

    // What the kubelet mounts: the policy ConfigMap and the Secret's key.
    let root = TempDir::new("pod-files");
    let policy = root.path().join("policy");
    std::fs::create_dir_all(&policy).unwrap();
    std::fs::write(
        policy.join("authz.rego"),
        "package mcp.authz\n\nimport rego.v1\n\ndefault allow := true\n",
    )
    .unwrap();
    let secret_dir = root.path().join("secrets/mint-key-secret");
    std::fs::create_dir_all(&secret_dir).unwrap();
    let key_pem = workspace_root().join("sidecar/tests/fixtures/auth/ec1.pem");
    std::fs::copy(&key_pem, secret_dir.join("key.pem")).unwrap();
    let env = container_env(&sidecar, Some(root.path()));
    assert!(
        env.iter().all(|(_, v)| !v.starts_with("secret:")),
        "no Secret-backed variable expected: {env:?}"
    );
    let mut sc = Sidecar::start_with_env(server.port, &[], [127, 0, 0, 1].into(), &env);
    let url = sc.url("/mcp");

    // Namespace level: a token without the required scope is refused by the sidecar ...
    let reader = provider.reader_token().await;
    let (status, challenge) = probe(&url, &[("authorization", &format!("Bearer {reader}"))]).await;
    assert_eq!(status, 403, "{challenge}");
    assert!(challenge.contains("insufficient_scope"), "{challenge}");
    // ... though the same server answers it without mcp-guard.
    let direct = format!("http://127.0.0.1:{}/mcp", server.port);
    let seen = whoami(&direct, &reader).await;
    assert!(seen["authorization"].as_str().is_some(), "{seen}");

    // Pod level: the admin token (with the scope) reaches the server as a JWT the sidecar minted
    // with the Secret's key, which verifies with the sidecar's JWKS.
    let admin = provider.admin_token().await;
    let seen = whoami(&url, &admin).await;
    let minted = seen["authorization"]
        .as_str()
        .and_then(|a| a.strip_prefix("Bearer "))
        .expect("a minted token")
        .to_owned();
    assert_ne!(minted, admin, "the client's token was forwarded");
    let (status, body) = sc.admin("GET", "/.well-known/jwks.json");
    assert_eq!(status, 200, "{body}");
    let set: JwkSet = serde_json::from_str(&body).unwrap();
    let (header, _) = jwt_parts(&minted);
    let jwk = set
        .find(header["kid"].as_str().unwrap())
        .expect("kid in the JWKS");
    let mut v = Validation::new(Algorithm::ES256);
    v.set_audience(&["urn:mcp:upstream"]);
    v.set_issuer(&[RESOURCE]);
    let claims = jwt::decode::<Value>(&minted, &DecodingKey::from_jwk(jwk).unwrap(), &v)
        .expect("the minted token verifies with the sidecar's JWKS")
        .claims;
    assert_eq!(claims["sub"], "agent-admin");

    // Mesh level: the call's server span reaches the receiver the values named.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let spans = receiver.spans();
        if spans.iter().any(|s| {
            s["attributes"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|a| a["key"] == "mcp.method.name" && a["value"]["stringValue"] == "tools/call")
        }) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no tools/call span reached the receiver: {spans:?}\n{}",
            sc.proc.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // No secret in the sidecar's output (its log and audit lines): not the key, no token.
    let logs = sc.proc.logs();
    let key_text = std::fs::read_to_string(&key_pem).unwrap();
    let key_body = key_text.lines().nth(1).unwrap_or_default();
    for secret in [key_body, admin.as_str(), reader.as_str(), minted.as_str()] {
        assert!(
            !secret.is_empty() && !logs.contains(secret),
            "a secret in the sidecar's output"
        );
    }
    sc.assert_alive();
}
