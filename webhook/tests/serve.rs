//! `mcp-guard-webhook serve` as a process (without cluster access, `--no-kube`): `/mutate`
//! answers AdmissionReview v1, the body limit holds, and a rotated serving certificate is
//! served without a restart.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use serde_json::{Value, json};

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(cn: &str) -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, cn);
        Ca {
            issuer: CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// Writes a serving pair for 127.0.0.1 to `cert` / `key`; returns the certificate (DER).
    fn issue(&self, cert: &Path, key: &Path) -> Vec<u8> {
        let k = KeyPair::generate().unwrap();
        let p =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        let c = p.signed_by(&k, &self.issuer).unwrap();
        // Write the key first and the cert last, as a rotation would: in between, the files
        // hold a key and a certificate that do not belong together.
        std::fs::write(key, k.serialize_pem()).unwrap();
        std::fs::write(cert, c.pem()).unwrap();
        c.der().to_vec()
    }
}

fn client(ca_pem: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `serve --no-kube` with the pair in `dir`, plus `env`.
fn start(dir: &Path, env: &[(&str, &str)]) -> (Kill, u16) {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_mcp-guard-webhook"))
        .envs(env.iter().copied())
        .arg("serve")
        .arg("--no-kube")
        .arg(format!("--listen=127.0.0.1:{port}"))
        .arg(format!("--tls-cert={}", dir.join("tls.crt").display()))
        .arg(format!("--tls-key={}", dir.join("tls.key").display()))
        .arg("--tls-reload-interval=1s")
        .arg("--log-format=text")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    (Kill(child), port)
}

async fn wait_ok(client: &reqwest::Client, url: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(r) = client.get(url).send().await
            && r.status() == 200
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// The webhook's `/metrics` text.
async fn metrics_text(client: &reqwest::Client, base: &str) -> String {
    client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn review(pod: Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "apps",
            "operation": "CREATE",
            "userInfo": {"username": "admin"},
            "object": pod,
            "oldObject": null,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
        }
    })
}

/// `POST /mutate` with `review`: the AdmissionReview answered.
async fn post_review(client: &reqwest::Client, base: &str, review: &Value) -> Value {
    client
        .post(format!("{base}/mutate"))
        .json(review)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The JSON patch of an allowed AdmissionReview answer (base64, as the API server's `[]byte`).
fn answered_patch(r: &Value) -> Value {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(r["response"]["patch"].as_str().unwrap())
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

fn pod(annotations: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web", "namespace": "apps", "annotations": annotations},
        "spec": {"containers": [{"name": "server", "image": "example.com/s:1",
            "ports": [{"name": "http", "containerPort": 8080}]}]}
    })
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mcp-guard-webhook-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[tokio::test]
async fn mutate_limits_and_certificate_rotation() {
    let dir = tmpdir("serve");
    let ca1 = Ca::new("ca-one");
    ca1.issue(&dir.join("tls.crt"), &dir.join("tls.key"));
    let (_proc, port) = start(&dir, &[]);
    let base = format!("https://127.0.0.1:{port}");
    let c1 = client(&ca1.pem());
    assert!(wait_ok(&c1, &format!("{base}/readyz"), Duration::from_secs(30)).await);
    assert!(wait_ok(&c1, &format!("{base}/livez"), Duration::from_secs(1)).await);

    // Annotated pod: allowed with a JSON patch.
    let r = post_review(
        &c1,
        &base,
        &review(pod(json!({"mcp-guard.dev/inject": "enabled"}))),
    )
    .await;
    assert_eq!(r["kind"], "AdmissionReview");
    assert_eq!(r["response"]["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
    assert_eq!(r["response"]["allowed"], true);
    assert_eq!(r["response"]["patchType"], "JSONPatch");
    // The patch travels as base64, as the API server's `[]byte` field expects.
    let patch = answered_patch(&r);
    assert!(
        patch
            .as_array()
            .is_some_and(|ops| ops.iter().any(|op| op["path"] == "/spec/initContainers")),
        "{patch:#}"
    );

    // Plain pod: allowed, no patch.
    let r = post_review(&c1, &base, &review(pod(json!({})))).await;
    assert_eq!(r["response"]["allowed"], true);
    assert!(r["response"]["patch"].is_null());

    // Invalid annotation: refused, naming it.
    let r = post_review(
        &c1,
        &base,
        &review(pod(json!({
            "mcp-guard.dev/inject": "enabled",
            "mcp-guard.dev/enforcement": "maybe"
        }))),
    )
    .await;
    assert_eq!(r["response"]["allowed"], false);
    let msg = r["response"]["status"]["message"].as_str().unwrap();
    assert!(
        msg.contains("mcp-guard.dev/enforcement") && msg.contains("shadow"),
        "{msg}"
    );

    // Not an AdmissionReview; and a body over the limit.
    let r = c1
        .post(format!("{base}/mutate"))
        .body("{}")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // (A client of its own: the server closes that connection without reading the body.)
    let r = client(&ca1.pem())
        .post(format!("{base}/mutate"))
        .body(vec![b' '; 7 * 1024 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);

    let metrics = metrics_text(&c1, &base).await;
    assert!(
        metrics.contains("mcp_guard_webhook_injected_total{traffic=\"takeover\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("mcp_guard_webhook_skipped_total{reason=\"not_enabled\"} 1"));
    assert!(metrics.contains("mcp_guard_webhook_denied_total 1"));
    assert!(metrics.contains("mcp_guard_webhook_errors_total{kind=\"bad_request\"} 1"));

    // A broken file does not replace the good pair.
    std::fs::write(dir.join("tls.crt"), "not a certificate").unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        wait_ok(
            &client(&ca1.pem()),
            &format!("{base}/livez"),
            Duration::from_secs(2)
        )
        .await
    );

    // Rotation to a pair from another CA: served without a restart.
    let ca2 = Ca::new("ca-two");
    ca2.issue(&dir.join("tls.crt"), &dir.join("tls.key"));
    let c2 = client(&ca2.pem());
    assert!(
        wait_ok(&c2, &format!("{base}/livez"), Duration::from_secs(10)).await,
        "rotated certificate not served"
    );
    let old = client(&ca1.pem()).get(format!("{base}/livez")).send().await;
    assert!(old.is_err(), "the old certificate is still served");
    let metrics = metrics_text(&c2, &base).await;
    assert!(
        metrics.contains("mcp_guard_webhook_tls_reloads_total{result=\"ok\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("mcp_guard_webhook_tls_reloads_total{result=\"error\"}"),
        "{metrics}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The certificate rotated twenty times (same CA, a new key each time, as cert-manager renews)
/// while admission reviews keep arriving on fresh connections: every review is answered with
/// its patch, none meets a handshake failure or a mismatched key, and the last pair written is
/// the one served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_rotated_under_admission_traffic_drops_no_review() {
    let dir = tmpdir("rotate-under-load");
    let ca = Ca::new("ca-rotating");
    ca.issue(&dir.join("tls.crt"), &dir.join("tls.key"));
    let (_kill, port) = start(&dir, &[]);
    let base = format!("https://127.0.0.1:{port}");
    let fresh = || {
        reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap())
            .pool_max_idle_per_host(0)
            .tls_info(true)
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap()
    };
    assert!(wait_ok(&fresh(), &format!("{base}/livez"), Duration::from_secs(30)).await);
    let rv = review(pod(json!({"mcp-guard.dev/inject": "enabled"})));

    let rotating = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let traffic = {
        let (client, base, rv, rotating) = (fresh(), base.clone(), rv.clone(), rotating.clone());
        tokio::spawn(async move {
            let (mut answered, mut failures) = (0usize, Vec::new());
            while rotating.load(std::sync::atomic::Ordering::Relaxed) || answered < 20 {
                match client.post(format!("{base}/mutate")).json(&rv).send().await {
                    Ok(r) if r.status() == 200 => {
                        let v: Value = r.json().await.unwrap();
                        if v["response"]["allowed"] == true && !answered_patch(&v).is_null() {
                            answered += 1;
                        } else {
                            failures.push(format!("review not answered with a patch: {v}"));
                        }
                    }
                    Ok(r) => failures.push(format!("status {}", r.status())),
                    Err(e) => failures.push(format!("{e:?}")),
                }
            }
            (answered, failures)
        })
    };
    let mut last = Vec::new();
    for _ in 0..20 {
        last = ca.issue(&dir.join("tls.crt"), &dir.join("tls.key"));
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    // The last pair is served (the reload follows file events, with a 1 s poll besides).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = fresh().get(format!("{base}/livez")).send().await.unwrap();
        let served = r
            .extensions()
            .get::<reqwest::tls::TlsInfo>()
            .and_then(|t| t.peer_certificate())
            .map(<[u8]>::to_vec);
        if served.as_deref() == Some(last.as_slice()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the last certificate is never served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    rotating.store(false, std::sync::atomic::Ordering::Relaxed);
    let (answered, failures) = traffic.await.unwrap();
    assert!(
        failures.is_empty(),
        "{} of {} reviews failed during the rotations, e.g. {:?}",
        failures.len(),
        answered + failures.len(),
        &failures[..failures.len().min(3)]
    );
    assert!(answered >= 20, "{answered}");
    let metrics = metrics_text(&fresh(), &base).await;
    assert!(
        metrics.contains("mcp_guard_webhook_tls_reloads_total{result=\"ok\"}"),
        "{metrics}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A resource-URI template from the environment (as the chart passes it) gives a pod with an
/// issuer but no `mcp-guard.dev/resource-uri` its URI, with the namespace of the admission
/// request (the pod object of a CREATE often names none).
#[tokio::test]
async fn the_resource_uri_template_fills_in_the_audience() {
    let dir = tmpdir("template");
    let ca = Ca::new("ca-template");
    ca.issue(&dir.join("tls.crt"), &dir.join("tls.key"));
    let (_proc, port) = start(
        &dir,
        &[
            (
                "MCP_GUARD_WEBHOOK_DEFAULT_RESOURCE_URI_TEMPLATE",
                "https://{name}.{namespace}.svc.cluster.local{path}",
            ),
            (
                "MCP_GUARD_WEBHOOK_DEFAULT_ISSUER",
                "https://idp.example.com",
            ),
        ],
    );
    let base = format!("https://127.0.0.1:{port}");
    let c = client(&ca.pem());
    assert!(wait_ok(&c, &format!("{base}/readyz"), Duration::from_secs(30)).await);
    let mut request = review(pod(json!({
        "mcp-guard.dev/inject": "enabled",
        "mcp-guard.dev/path": "/v1/mcp",
    })));
    request["request"]["object"]["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("namespace");
    let r = post_review(&c, &base, &request).await;
    assert_eq!(r["response"]["allowed"], true, "{r:#}");
    let patch = answered_patch(&r);
    let env = patch
        .as_array()
        .unwrap()
        .iter()
        .find(|op| op["path"] == "/spec/initContainers")
        .map(|op| op["value"][0]["env"].clone())
        .unwrap_or_else(|| panic!("no sidecar in {patch:#}"));
    let value = |name: &str| {
        env.as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .map(|e| e["value"].clone())
    };
    assert_eq!(
        value("MCP_GUARD_RESOURCE_URI"),
        Some(json!("https://web.apps.svc.cluster.local/v1/mcp")),
        "{env:#}"
    );
    assert_eq!(
        value("MCP_GUARD_ISSUER"),
        Some(json!("https://idp.example.com"))
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A bad template stops `serve` before it listens, naming the flag and what is wrong, whether
/// it comes from the flag or from the environment.
#[test]
fn a_bad_resource_uri_template_stops_the_webhook() {
    for (args, env, problem) in [
        (
            vec!["--default-resource-uri-template=https://{name}.{ns}.svc{path}"],
            None,
            "unknown variable {ns}: the template may use {name}, {namespace} and {path}",
        ),
        (
            vec![],
            Some("{name}.{namespace}.svc{path}"),
            "it expands to \"example.default.svc/mcp\"",
        ),
    ] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mcp-guard-webhook"));
        cmd.args(["serve", "--no-kube", "--listen=127.0.0.1:0"])
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(t) = env {
            cmd.env("MCP_GUARD_WEBHOOK_DEFAULT_RESOURCE_URI_TEMPLATE", t);
        }
        let mut child = Kill(cmd.spawn().unwrap());
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = child.0.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "{args:?} {env:?}: still running");
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.0.stderr.take().unwrap(), &mut stderr).unwrap();
        assert!(!status.success(), "{args:?} {env:?}: exited {status}");
        assert!(
            stderr.contains("'--default-resource-uri-template <TEMPLATE>'")
                && stderr.contains(problem),
            "{args:?} {env:?}: {stderr}"
        );
    }
}
