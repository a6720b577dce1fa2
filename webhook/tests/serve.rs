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

    /// Writes a serving pair for 127.0.0.1 to `cert` / `key`.
    fn issue(&self, cert: &Path, key: &Path) {
        let k = KeyPair::generate().unwrap();
        let p =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        let c = p.signed_by(&k, &self.issuer).unwrap();
        // Write the key first and the cert last, as a rotation would.
        std::fs::write(key, k.serialize_pem()).unwrap();
        std::fs::write(cert, c.pem()).unwrap();
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

fn start(dir: &Path) -> (Kill, u16) {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_mcp-guard-webhook"))
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
    let (_proc, port) = start(&dir);
    let base = format!("https://127.0.0.1:{port}");
    let c1 = client(&ca1.pem());
    assert!(wait_ok(&c1, &format!("{base}/readyz"), Duration::from_secs(30)).await);
    assert!(wait_ok(&c1, &format!("{base}/livez"), Duration::from_secs(1)).await);

    // Annotated pod: allowed with a JSON patch.
    let r: Value = c1
        .post(format!("{base}/mutate"))
        .json(&review(pod(json!({"mcp-guard.dev/inject": "enabled"}))))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["kind"], "AdmissionReview");
    assert_eq!(r["response"]["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
    assert_eq!(r["response"]["allowed"], true);
    assert_eq!(r["response"]["patchType"], "JSONPatch");
    // The patch travels as base64, as the API server's `[]byte` field expects.
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(r["response"]["patch"].as_str().unwrap())
        .unwrap();
    let patch: Value = serde_json::from_slice(&bytes).unwrap();
    assert!(
        patch
            .as_array()
            .is_some_and(|ops| ops.iter().any(|op| op["path"] == "/spec/initContainers")),
        "{patch:#}"
    );

    // Plain pod: allowed, no patch.
    let r: Value = c1
        .post(format!("{base}/mutate"))
        .json(&review(pod(json!({}))))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["response"]["allowed"], true);
    assert!(r["response"]["patch"].is_null());

    // Invalid annotation: refused, naming it.
    let r: Value = c1
        .post(format!("{base}/mutate"))
        .json(&review(pod(json!({
            "mcp-guard.dev/inject": "enabled",
            "mcp-guard.dev/enforcement": "maybe"
        }))))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
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

    let metrics = c1
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
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
    let metrics = c2
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
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
