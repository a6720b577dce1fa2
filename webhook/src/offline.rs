//! `mcp-guard-webhook inject -f FILE|-`: the webhook's injection applied offline to manifests
//! (Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, Job, CronJob; YAML or JSON; several
//! documents; `kind: List`), for GitOps and for clusters without the webhook. Other documents
//! pass through unchanged; a Namespace among them gives its annotations (opt-in, settings) to the
//! workloads of that namespace, as the webhook reads them in a cluster.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;

use clap::{Args, ValueEnum};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::annotations;
use crate::config::{InjectConfig, InjectorArgs};
use crate::inject::{self, Outcome, PodContext};
use crate::registry::{self, Catalog, Verdict};

/// Flags of `inject`.
#[derive(Debug, Clone, Args)]
pub struct InjectArgs {
    /// Manifest file, or `-` for stdin.
    #[arg(short = 'f', long = "filename", env = "MCP_GUARD_WEBHOOK_INJECT_FILE")]
    pub filename: PathBuf,

    /// Namespace assumed for documents that name none.
    #[arg(
        long,
        env = "MCP_GUARD_WEBHOOK_INJECT_NAMESPACE",
        default_value = "default"
    )]
    pub namespace: String,

    /// Only inject pod templates that carry `mcp-guard.dev/inject: enabled` themselves. Without
    /// it every template not opted out is injected, as if its namespace had opted in.
    #[arg(long, env = "MCP_GUARD_WEBHOOK_INJECT_REQUIRE_ANNOTATION")]
    pub require_annotation: bool,

    /// Output format; `auto` answers in the input's format.
    #[arg(
        short = 'o',
        long,
        env = "MCP_GUARD_WEBHOOK_INJECT_OUTPUT",
        value_enum,
        default_value = "auto"
    )]
    pub output: Output,

    /// The catalog of approved servers (`ApprovedServer` documents, YAML or JSON): every
    /// workload is checked against it in its namespace's mode (`--approval-mode`, or the
    /// `mcp-guard.dev/approval` label of a Namespace document in the input); `enforce` fails the
    /// run, `warn` and `audit` print a warning. Without it, no approval check.
    #[arg(long, env = "MCP_GUARD_WEBHOOK_INJECT_APPROVED_SERVERS")]
    pub approved_servers: Option<PathBuf>,

    #[command(flatten)]
    pub injector: InjectorArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Auto,
    Yaml,
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing YAML: {0}")]
    Yaml(#[from] serde_yaml_ng::Error),
    #[error("parsing JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("document {index} ({kind} {name}): {message}")]
    Invalid {
        index: usize,
        kind: String,
        name: String,
        message: String,
    },
    #[error("{path}: {message}")]
    Catalog { path: PathBuf, message: String },
    #[error("document {index}: applying the patch: {source}")]
    Patch {
        index: usize,
        source: json_patch::PatchError,
    },
}

/// Where a workload keeps its pod template.
fn template_pointer(kind: &str) -> Option<&'static str> {
    match kind {
        "Pod" => Some(""),
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "ReplicationController"
        | "Job" => Some("/spec/template"),
        "CronJob" => Some("/spec/jobTemplate/spec/template"),
        _ => None,
    }
}

/// Options of one offline run.
#[derive(Debug, Clone)]
pub struct Offline {
    pub config: InjectConfig,
    pub namespace: String,
    pub require_annotation: bool,
    /// The annotations and labels of the Namespace documents of the input, by name.
    pub namespaces: BTreeMap<String, NamespaceMeta>,
    /// The approved servers to check workloads against (`--approved-servers`).
    pub catalog: Option<Catalog>,
}

/// A Namespace document's annotations and labels.
#[derive(Debug, Clone, Default)]
pub struct NamespaceMeta {
    pub annotations: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
}

/// The annotations and labels of every Namespace in `docs` (also inside `kind: List`), by name.
fn namespace_annotations(docs: &[Value]) -> BTreeMap<String, NamespaceMeta> {
    let mut out = BTreeMap::new();
    for doc in docs {
        match doc.get("kind").and_then(Value::as_str) {
            Some("Namespace") => {
                if let Some(name) = doc.pointer("/metadata/name").and_then(Value::as_str) {
                    out.insert(
                        name.to_string(),
                        NamespaceMeta {
                            annotations: crate::selection::string_map(doc, "/metadata/annotations"),
                            labels: crate::selection::string_map(doc, "/metadata/labels"),
                        },
                    );
                }
            }
            Some("List") => {
                if let Some(items) = doc.get("items").and_then(Value::as_array) {
                    out.extend(namespace_annotations(items));
                }
            }
            _ => {}
        }
    }
    out
}

/// What happened to one document, for the summary on stderr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DocResult {
    Injected(String),
    Skipped(String),
    Untouched,
}

impl Offline {
    /// A run with `config`, `namespace` for documents that name none, and whether templates
    /// must opt in themselves; no Namespace documents known yet and no approval check.
    pub fn new(config: InjectConfig, namespace: &str, require_annotation: bool) -> Offline {
        Offline {
            config,
            namespace: namespace.to_string(),
            require_annotation,
            namespaces: BTreeMap::new(),
            catalog: None,
        }
    }

    /// Injects one document in place.
    pub fn document(&self, index: usize, doc: &mut Value) -> Result<DocResult, OfflineError> {
        let kind = doc
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if kind == "List" {
            let mut last = DocResult::Untouched;
            if let Some(items) = doc.get_mut("items").and_then(Value::as_array_mut) {
                for item in items {
                    let r = self.document(index, item)?;
                    if r != DocResult::Untouched {
                        last = r;
                    }
                }
            }
            return Ok(last);
        }
        let Some(pointer) = template_pointer(&kind) else {
            return Ok(DocResult::Untouched);
        };
        let name = doc
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let namespace = doc
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or(&self.namespace)
            .to_string();
        let Some(template) = doc.pointer_mut(pointer) else {
            return Ok(DocResult::Untouched);
        };
        let mut pod = if pointer.is_empty() {
            template.clone()
        } else {
            json!({
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": template.get("metadata").cloned().unwrap_or_else(|| json!({})),
                "spec": template.get("spec").cloned().unwrap_or_else(|| json!({})),
            })
        };
        let ns = self.namespaces.get(&namespace).cloned().unwrap_or_default();
        let mut ns_annotations = ns.annotations;
        if !self.require_annotation {
            ns_annotations
                .entry(annotations::INJECT.to_string())
                .or_insert_with(|| "enabled".to_string());
        }
        let mut runs_as = None;
        if let Some(catalog) = &self.catalog {
            let subject = registry::Subject {
                pod: &pod,
                namespace: &namespace,
                namespace_annotations: &ns_annotations,
                namespace_labels: &ns.labels,
                own_namespace: &self.config.own_namespace,
            };
            let (verdict, label) =
                registry::admit(Some(catalog), subject, self.config.approval_mode);
            runs_as = label;
            match verdict {
                Verdict::Pass => {}
                Verdict::Refuse(message) => {
                    return Err(OfflineError::Invalid {
                        index,
                        kind,
                        name,
                        message,
                    });
                }
                Verdict::Warn(message) | Verdict::Record(message) => {
                    eprintln!("warning: document {index} ({kind} {name}): {message}");
                }
            }
        }
        let ctx = PodContext {
            pod: &pod,
            namespace: &namespace,
            namespace_annotations: &ns_annotations,
            workload_name: (!pointer.is_empty() && !name.is_empty()).then_some(name.as_str()),
        };
        match inject::mutate(&self.config, ctx) {
            Outcome::Injected { mut patch, .. } => {
                if let Some(r) = runs_as {
                    r.apply(&mut patch);
                }
                json_patch::patch(&mut pod, &patch)
                    .map_err(|source| OfflineError::Patch { index, source })?;
                if pointer.is_empty() {
                    *template = pod;
                } else if let (Some(t), Some(p)) = (template.as_object_mut(), pod.as_object_mut()) {
                    for field in ["metadata", "spec"] {
                        if let Some(v) = p.remove(field) {
                            t.insert(field.to_string(), v);
                        }
                    }
                }
                Ok(DocResult::Injected(format!("{kind} {name}")))
            }
            Outcome::Skipped(reason) => Ok(DocResult::Skipped(format!("{kind} {name}: {reason}"))),
            Outcome::Invalid(message) => Err(OfflineError::Invalid {
                index,
                kind,
                name,
                message,
            }),
        }
    }

    /// Injects every document of `input` (YAML or JSON) and renders the result.
    pub fn run(
        &self,
        input: &str,
        output: Output,
    ) -> Result<(String, Vec<DocResult>), OfflineError> {
        let trimmed = input.trim_start();
        let is_json = trimmed.starts_with('{') || trimmed.starts_with('[');
        let mut docs: Vec<Value> = if is_json {
            serde_json::Deserializer::from_str(input)
                .into_iter::<Value>()
                .collect::<Result<_, _>>()?
        } else {
            let mut docs = Vec::new();
            for d in serde_yaml_ng::Deserializer::from_str(input) {
                let v = Value::deserialize(d)?;
                if !v.is_null() {
                    docs.push(v);
                }
            }
            docs
        };
        let mut this = self.clone();
        this.namespaces.extend(namespace_annotations(&docs));
        let mut results = Vec::new();
        for (i, doc) in docs.iter_mut().enumerate() {
            results.push(this.document(i + 1, doc)?);
        }
        let json_out = match output {
            Output::Auto => is_json,
            Output::Json => true,
            Output::Yaml => false,
        };
        let mut out = String::new();
        for (i, doc) in docs.iter().enumerate() {
            if json_out {
                out.push_str(&serde_json::to_string_pretty(doc)?);
                out.push('\n');
            } else {
                if i > 0 {
                    out.push_str("---\n");
                }
                out.push_str(&serde_yaml_ng::to_string(doc)?);
            }
        }
        Ok((out, results))
    }
}

/// Runs the `inject` command: reads, injects, writes to stdout; a summary goes to stderr.
pub fn run(args: &InjectArgs) -> Result<(), OfflineError> {
    let mut input = String::new();
    if args.filename.as_os_str() == "-" {
        std::io::stdin()
            .read_to_string(&mut input)
            .map_err(|source| OfflineError::Read {
                path: args.filename.clone(),
                source,
            })?;
    } else {
        input = std::fs::read_to_string(&args.filename).map_err(|source| OfflineError::Read {
            path: args.filename.clone(),
            source,
        })?;
    }
    let catalog = match &args.approved_servers {
        None => None,
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| OfflineError::Read {
                path: path.clone(),
                source,
            })?;
            Some(
                Catalog::from_documents(&text).map_err(|message| OfflineError::Catalog {
                    path: path.clone(),
                    message,
                })?,
            )
        }
    };
    let offline = Offline {
        catalog,
        ..Offline::new(
            InjectConfig::from_args(&args.injector, true),
            &args.namespace,
            args.require_annotation,
        )
    };
    let (out, results) = offline.run(&input, args.output)?;
    for r in results {
        match r {
            DocResult::Injected(what) => eprintln!("injected: {what}"),
            DocResult::Skipped(what) => eprintln!("skipped: {what}"),
            DocResult::Untouched => {}
        }
    }
    print!("{out}");
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const MANIFESTS: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata: {name: tools}
spec:
  template:
    metadata: {annotations: {mcp-guard.dev/inject: enabled}}
    spec:
      containers: [{name: server, image: s, ports: [{name: mcp, containerPort: 3000}]}]
---
apiVersion: v1
kind: Service
metadata: {name: tools}
spec: {ports: [{port: 80, targetPort: mcp}]}
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: nightly}
spec:
  jobTemplate:
    spec:
      template:
        spec:
          containers: [{name: job, image: j, ports: [{containerPort: 8080}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: off, annotations: {mcp-guard.dev/inject: disabled}}
spec: {containers: [{name: c, image: c}]}
";

    fn offline(require_annotation: bool) -> Offline {
        Offline::new(InjectConfig::default(), "default", require_annotation)
    }

    fn sidecar_env(out: &str) -> BTreeMap<String, Value> {
        let docs: Vec<Value> = serde_yaml_ng::Deserializer::from_str(out)
            .map(|d| Value::deserialize(d).unwrap())
            .collect();
        let pod = docs
            .iter()
            .find(|d| d["kind"] == "Deployment")
            .expect("the Deployment");
        let sidecar = &pod["spec"]["template"]["spec"]["initContainers"][0];
        assert_eq!(sidecar["name"], "mcp-guard");
        sidecar["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let v = e.get("value").or(e.get("valueFrom")).cloned().unwrap();
                (e["name"].as_str().unwrap().to_string(), v)
            })
            .collect()
    }

    #[test]
    fn a_namespace_document_gives_its_settings_and_the_pod_wins() {
        let input = "\
apiVersion: v1
kind: Namespace
metadata:
  name: team-a
  annotations:
    mcp-guard.dev/required-scopes: tickets:read
    mcp-guard.dev/hide-deny-reasons: \"true\"
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: tools, namespace: team-a}
spec:
  template:
    metadata:
      annotations:
        mcp-guard.dev/hide-deny-reasons: \"false\"
        mcp-guard.dev/otel-headers-secret: otlp-auth
    spec:
      containers: [{name: server, image: s, ports: [{name: mcp, containerPort: 3000}]}]
";
        let mut o = offline(false);
        o.config.mesh = r#"{"settings": {"otel-endpoint": "http://otel.observability:4318"}}"#
            .parse()
            .unwrap();
        let (out, _) = o.run(input, Output::Yaml).unwrap();
        let env = sidecar_env(&out);
        // The same input against a catalog that approves nothing, in enforce mode: refused.
        let mut strict = o.clone();
        strict.catalog = Some(Catalog::default());
        strict.config.approval_mode = registry::Mode::Enforce;
        let err = strict.run(input, Output::Yaml).unwrap_err().to_string();
        assert!(
            err.contains("\"s\"") && err.contains("ApprovedServer"),
            "{err}"
        );
        assert_eq!(env["MCP_GUARD_REQUIRED_SCOPES"], "tickets:read");
        assert_eq!(env["MCP_GUARD_HIDE_DENY_REASONS"], "false");
        assert_eq!(
            env["MCP_GUARD_OTLP_ENDPOINT"],
            "http://otel.observability:4318"
        );
        assert_eq!(
            env["OTEL_EXPORTER_OTLP_HEADERS"],
            json!({"secretKeyRef": {"name": "otlp-auth", "key": "headers"}})
        );

        // Locked mesh-wide: the namespace's other value refuses the workload, naming both.
        o.config.mesh =
            r#"{"settings": {"required-scopes": "mcp"}, "locked": ["required-scopes"]}"#
                .parse()
                .unwrap();
        let err = o.run(input, Output::Yaml).unwrap_err().to_string();
        assert!(
            err.contains("mcp-guard.dev/required-scopes")
                && err.contains("locked by the operator to the mesh-wide value \"mcp\"")
                && err.contains("namespace \"team-a\""),
            "{err}"
        );
    }

    #[test]
    fn injects_workloads_and_is_idempotent() {
        let (out, results) = offline(false).run(MANIFESTS, Output::Auto).unwrap();
        assert_eq!(
            results,
            vec![
                DocResult::Injected("Deployment tools".into()),
                DocResult::Untouched,
                DocResult::Injected("CronJob nightly".into()),
                DocResult::Skipped("Pod off: opted_out".into()),
            ]
        );
        assert!(out.contains("MCP_GUARD_SERVER_NAME"));
        let (again, _) = offline(false).run(&out, Output::Auto).unwrap();
        assert_eq!(again, out, "a second run changes nothing");
        let (_, strict) = offline(true).run(MANIFESTS, Output::Json).unwrap();
        assert_eq!(
            strict[2],
            DocResult::Skipped("CronJob nightly: not_enabled".into())
        );
    }

    #[test]
    fn invalid_annotation_names_the_document() {
        let bad = "apiVersion: v1\nkind: Pod\nmetadata: {name: p, annotations: {mcp-guard.dev/traffic: nope}}\nspec: {containers: [{name: c, image: c}]}\n";
        let err = offline(false)
            .run(bad, Output::Auto)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("document 1 (Pod p)") && err.contains("mcp-guard.dev/traffic"),
            "{err}"
        );
    }

    #[test]
    fn json_in_json_out() {
        let input = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p"},"spec":{"containers":[{"name":"c","image":"c","ports":[{"name":"http","containerPort":80}]}]}}"#;
        let (out, _) = offline(false).run(input, Output::Auto).unwrap();
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["spec"]["initContainers"][0]["name"], "mcp-guard");
    }
}
