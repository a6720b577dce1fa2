//! Golden files: `tests/golden/<case>.yaml` (an optional `kind: GoldenCase` document with the
//! namespace and webhook options, then the pod) → `<case>.patch.json` (the expected JSON patch;
//! `[]` when the pod is skipped) and `<case>.pod.yaml` (the injected pod, to read), or
//! `<case>.error.txt` (the expected refusal); a case with `approvedServers` also records the
//! approval verdict in `<case>.approval.txt`.
//!
//! Every injected case is run a second time over its own output, which must yield no patch.
//! The mutated pods are written under the target directory and, when `kubernetes-validate` is
//! installed (`tests/scripts/install-kube.sh`), validated with `--strict` against the 1.29
//! schema and the newest one. `UPDATE_GOLDEN=1 cargo test -p mcp-guard-webhook --test golden`
//! rewrites the expected files.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use mcp_guard_webhook::config::InjectConfig;
use mcp_guard_webhook::inject::{Outcome, PodContext, mutate};
use mcp_guard_webhook::registry::{Catalog, Subject, Verdict, admit};
use mcp_guard_webhook::selection::SkipReason;
use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct CaseOptions {
    namespace: Option<String>,
    namespace_annotations: BTreeMap<String, String>,
    native_sidecar: Option<bool>,
    /// `--default-issuer`.
    default_issuer: Option<String>,
    /// `--default-resource-uri-template`.
    default_resource_uri_template: Option<String>,
    /// `--sidecar-settings` (mesh-wide settings and locks), as YAML.
    sidecar_settings: Option<Value>,
    /// The namespace's labels (`mcp-guard.dev/approval`).
    namespace_labels: BTreeMap<String, String>,
    /// The catalog of approved servers, as `ApprovedServer` objects: with it, the case also
    /// records the approval verdict in `<case>.approval.txt`.
    approved_servers: Option<Vec<Value>>,
    /// `false` for inputs that deliberately carry fields no schema knows.
    validate: Option<bool>,
}

struct Case {
    name: String,
    options: CaseOptions,
    pod: Value,
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn load_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    let mut entries: Vec<_> = fs::read_dir(golden_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        // `<case>.pod.yaml` is an expected output, not a case.
        .filter(|p| !p.to_string_lossy().ends_with(".pod.yaml"))
        .collect();
    entries.sort();
    for path in entries {
        let text = fs::read_to_string(&path).unwrap();
        let mut options = CaseOptions::default();
        let mut pod = None;
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let v = Value::deserialize(doc).unwrap();
            if v.get("kind").and_then(Value::as_str) == Some("GoldenCase") {
                options = serde_json::from_value(v).unwrap();
            } else if !v.is_null() {
                assert!(pod.is_none(), "{}: more than one pod", path.display());
                pod = Some(v);
            }
        }
        cases.push(Case {
            name: path.file_stem().unwrap().to_string_lossy().into_owned(),
            options,
            pod: pod.unwrap_or_else(|| panic!("{}: no pod", path.display())),
        });
    }
    cases
}

fn config(options: &CaseOptions) -> InjectConfig {
    InjectConfig {
        image: "ghcr.io/mcp-guard/sidecar:golden".to_string(),
        redirect_image: "ghcr.io/mcp-guard/redirect:golden".to_string(),
        native_sidecar: options.native_sidecar.unwrap_or(true),
        default_issuer: options.default_issuer.clone(),
        default_resource_uri_template: options
            .default_resource_uri_template
            .as_deref()
            .map(|t| t.parse().expect("defaultResourceUriTemplate")),
        mesh: options
            .sidecar_settings
            .as_ref()
            .map(|m| m.to_string().parse().expect("sidecarSettings"))
            .unwrap_or_default(),
        ..InjectConfig::default()
    }
}

/// The status annotation carries the crate version; pin it so a version bump does not touch
/// every golden file.
fn normalize(s: &str) -> String {
    s.replace(
        &format!("\\\"version\\\":\\\"{}\\\"", env!("CARGO_PKG_VERSION")),
        "\\\"version\\\":\\\"VERSION\\\"",
    )
}

fn check_expected(path: &Path, actual: &str, failures: &mut Vec<String>) {
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        fs::write(path, actual).unwrap();
        return;
    }
    match fs::read_to_string(path) {
        Ok(expected) if expected == actual => {}
        Ok(expected) => failures.push(format!(
            "{}: differs\n--- expected\n{expected}\n--- actual\n{actual}",
            path.display()
        )),
        Err(_) => failures.push(format!(
            "{}: missing (run with UPDATE_GOLDEN=1)\n--- actual\n{actual}",
            path.display()
        )),
    }
}

#[test]
fn golden() {
    let cases = load_cases();
    assert!(cases.len() >= 20, "expected the full golden corpus");
    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("golden-mutated");
    let _ = fs::remove_dir_all(&out_dir);
    fs::create_dir_all(&out_dir).unwrap();
    let mut failures = Vec::new();
    let mut to_validate = Vec::new();

    for case in &cases {
        let cfg = config(&case.options);
        let namespace = case.options.namespace.as_deref().unwrap_or("default");
        let ctx = PodContext {
            pod: &case.pod,
            namespace,
            namespace_annotations: &case.options.namespace_annotations,
            workload_name: None,
        };
        // What admission adds to an approved pod it injects: the label its egress policy selects,
        // and the entry's pinned tools in the sidecar's env.
        let mut runs_as = None;
        if let Some(objects) = &case.options.approved_servers {
            let catalog = Catalog {
                entries: objects.iter().map(|o| Catalog::entry(o).unwrap()).collect(),
            };
            let subject = Subject {
                pod: &case.pod,
                namespace,
                namespace_annotations: &case.options.namespace_annotations,
                namespace_labels: &case.options.namespace_labels,
                own_namespace: &cfg.own_namespace,
            };
            let (verdict, entry) = admit(Some(&catalog), subject, cfg.approval_mode);
            runs_as = entry;
            let verdict = match verdict {
                Verdict::Pass => "pass".to_string(),
                Verdict::Refuse(m) => format!("refuse: {m}"),
                Verdict::Warn(m) => format!("warn: {m}"),
                Verdict::Record(m) => format!("record: {m}"),
            };
            let path = golden_dir().join(format!("{}.approval.txt", case.name));
            check_expected(&path, &format!("{verdict}\n"), &mut failures);
        }
        let patch_path = golden_dir().join(format!("{}.patch.json", case.name));
        let error_path = golden_dir().join(format!("{}.error.txt", case.name));
        match mutate(&cfg, ctx) {
            Outcome::Invalid(message) => {
                if std::env::var_os("UPDATE_GOLDEN").is_some() {
                    let _ = fs::remove_file(&patch_path);
                } else {
                    assert!(
                        !patch_path.exists(),
                        "{}: refused, but a patch is expected: {message}",
                        case.name
                    );
                }
                check_expected(&error_path, &format!("{message}\n"), &mut failures);
            }
            Outcome::Skipped(_) => {
                if std::env::var_os("UPDATE_GOLDEN").is_some() {
                    let _ = fs::remove_file(&error_path);
                }
                check_expected(&patch_path, "[]\n", &mut failures);
            }
            Outcome::Injected { mut patch, .. } => {
                if let Some(r) = runs_as {
                    r.apply(&mut patch);
                }
                if std::env::var_os("UPDATE_GOLDEN").is_some() {
                    let _ = fs::remove_file(&error_path);
                }
                let text = normalize(&serde_json::to_string_pretty(&patch).unwrap()) + "\n";
                check_expected(&patch_path, &text, &mut failures);
                let mut mutated = case.pod.clone();
                json_patch::patch(&mut mutated, &patch)
                    .unwrap_or_else(|e| panic!("{}: patch does not apply: {e}", case.name));
                // The pod as the API server stores it, for a reviewer to read beside the patch.
                let pod_path = golden_dir().join(format!("{}.pod.yaml", case.name));
                let pod_text = normalize(&serde_yaml_ng::to_string(&mutated).unwrap()).replace(
                    &format!("\"version\":\"{}\"", env!("CARGO_PKG_VERSION")),
                    "\"version\":\"VERSION\"",
                );
                check_expected(&pod_path, &pod_text, &mut failures);
                // Second pass over its own output: nothing more to do.
                let again = PodContext {
                    pod: &mutated,
                    namespace,
                    namespace_annotations: &case.options.namespace_annotations,
                    workload_name: None,
                };
                match mutate(&cfg, again) {
                    Outcome::Skipped(SkipReason::AlreadyInjected) => {}
                    other => failures.push(format!("{}: second pass gave {other:?}", case.name)),
                }
                // Unknown fields survive: everything of the input is still there.
                assert_contains(&case.name, &case.pod, &mutated);
                if case.options.validate.unwrap_or(true) {
                    let file = out_dir.join(format!("{}.json", case.name));
                    // The API server fills in a generated name; the validator wants one.
                    if mutated.pointer("/metadata/name").is_none() {
                        mutated["metadata"]["name"] = Value::String(format!("{}-x", case.name));
                    }
                    fs::write(&file, serde_json::to_string_pretty(&mutated).unwrap()).unwrap();
                    to_validate.push(file);
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    validate(&to_validate);
}

/// Every object key of `before` is still in `after` (arrays: each element of `before` appears
/// in `after`, possibly with changes to renamed port names / probe ports).
fn assert_contains(case: &str, before: &Value, after: &Value) {
    match (before, after) {
        (Value::Object(b), Value::Object(a)) => {
            for (k, v) in b {
                let Some(av) = a.get(k) else {
                    panic!("{case}: field {k} lost");
                };
                assert_contains(case, v, av);
            }
        }
        (Value::Array(b), Value::Array(a)) => {
            assert!(a.len() >= b.len(), "{case}: array shrank");
        }
        _ => {}
    }
}

fn kube_validate_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("KUBE_VALIDATE") {
        return Some(PathBuf::from(p));
    }
    let cache = std::env::var_os("MCP_GUARD_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/mcp-guard")))?;
    let env = fs::read_to_string(cache.join("kube/env.sh")).ok()?;
    env.lines()
        .find_map(|l| l.strip_prefix("KUBE_VALIDATE="))
        .map(PathBuf::from)
        .filter(|p| p.exists())
}

/// `kubernetes-validate --strict` against the first version with native sidecars and the
/// newest the tool knows.
fn validate(files: &[PathBuf]) {
    let Some(bin) = kube_validate_bin() else {
        assert!(
            std::env::var_os("MCP_GUARD_REQUIRE_KUBE").is_none(),
            "kubernetes-validate not installed (tests/scripts/install-kube.sh)"
        );
        eprintln!("golden: kubernetes-validate not installed; schema validation skipped");
        return;
    };
    for version in ["1.29.0", "1.37.0"] {
        let out = Command::new(&bin)
            .args(["--strict", "--quiet", "-k", version])
            .args(files)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kubernetes-validate -k {version} --strict failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
