//! Approved servers: the catalog of `ApprovedServer` objects (`mcp-guard.dev/v1alpha1`,
//! cluster-scoped) and the admission check against it. A pod that opts into mcp-guard, or labels
//! itself an MCP server (`mcp-guard.dev/server: "true"`), must run only images some entry approves
//! for its namespace. What happens otherwise is the namespace's mode, as PodSecurity does it:
//! `enforce` refuses the pod, `warn` admits it with an admission warning, `audit` admits it and
//! records the finding in the API server's audit log; the label `mcp-guard.dev/approval` chooses
//! it per namespace, the webhook's `--approval-mode` everywhere else.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use crate::annotations::STATUS;
use crate::selection::{self, Selection};
pub use crate::values::ApprovalMode as Mode;

/// API group and version of the catalog.
pub const GROUP: &str = "mcp-guard.dev";
pub const VERSION: &str = "v1alpha1";
pub const KIND: &str = "ApprovedServer";
pub const PLURAL: &str = "approvedservers";
/// Namespace label choosing the mode.
pub const MODE_LABEL: &str = "mcp-guard.dev/approval";
/// Pod label by which a pod that does not opt into mcp-guard declares itself an MCP server.
pub const SERVER_LABEL: &str = "mcp-guard.dev/server";
/// Pod label set at admission: the `ApprovedServer` whose images the pod runs (what the entry's
/// egress NetworkPolicy selects).
pub const APPROVED_LABEL: &str = "mcp-guard.dev/approved-server";
/// Audit annotation (`auditAnnotations`) of a pod admitted in `audit` mode.
pub const AUDIT_KEY: &str = "unapproved-images";

/// An image an entry approves: a repository, and optionally the one digest or a tag pattern
/// (`*` matches any run of characters) it must carry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImageRule {
    pub repository: String,
    #[serde(default)]
    pub digest: Option<String>,
    #[serde(default)]
    pub tag: Option<String>,
}

/// `spec` of an `ApprovedServer`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApprovedServerSpec {
    /// The server's name in the MCP registry's reverse-DNS form, e.g. `io.example/tickets`.
    pub name: String,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    /// The team that owns it.
    #[serde(default)]
    pub owner: Option<String>,
    pub images: Vec<ImageRule>,
    /// Namespaces it may run in; empty: all.
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// The isolation the server must run in: its pods must name this RuntimeClass (a sandboxed
    /// or microVM runtime, for example). Unset: any.
    #[serde(default)]
    pub runtime_class_name: Option<String>,
    /// The version developer tools show (the registry API's `version`); default [`DEFAULT_VERSION`].
    #[serde(default)]
    pub version: Option<String>,
    /// Where clients reach the server (the registry API's `remotes`).
    #[serde(default)]
    pub remotes: Vec<Remote>,
    /// The server's homepage or documentation (the registry API's `websiteUrl`).
    #[serde(default)]
    pub website_url: Option<String>,
    /// What the server's pods may reach (NetworkPolicy egress rules); absent: not restricted.
    /// The controller keeps an egress NetworkPolicy with these rules plus DNS.
    #[serde(default)]
    pub egress: Option<Vec<k8s_openapi::api::networking::v1::NetworkPolicyEgressRule>>,
    /// The pinned tool definitions of record: admission hands them to the sidecar of every pod
    /// that runs as this entry, so every replica and restart compares the server's tools with
    /// the same approved hashes. Empty: each sidecar pins what it sees first.
    #[serde(default)]
    pub tools: Vec<PinnedTool>,
}

/// One pinned tool definition of record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct PinnedTool {
    pub name: String,
    /// `sha256:<hex>` of the definition, as the sidecar hashes it (its admin `/tools`).
    pub hash: String,
}

/// The version of an entry that names none.
pub const DEFAULT_VERSION: &str = "1.0.0";

/// A URL clients reach the server at, as the MCP registry's `remotes` name it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Remote {
    /// `streamable-http` or `sse`.
    #[serde(rename = "type")]
    pub transport: String,
    pub url: String,
}

impl ApprovedServerSpec {
    /// The entry's version, or [`DEFAULT_VERSION`].
    pub fn version(&self) -> &str {
        self.version.as_deref().unwrap_or(DEFAULT_VERSION)
    }

    /// What the CRD's schema cannot say; the message names the field.
    fn check(&self) -> Result<(), String> {
        let version = self.version();
        if version == "latest" || version.is_empty() || version.len() > 255 {
            return Err(format!(
                "spec.version {version:?}: must be a specific version (not \"latest\"), at most 255 characters"
            ));
        }
        if version.starts_with(['^', '~', '>', '<', '=']) || version.contains('*') {
            return Err(format!(
                "spec.version {version:?}: a version range; name one version (1.2.3)"
            ));
        }
        for t in &self.tools {
            if t.name.is_empty() || !mcp_guard_policy::catalog::is_pin(&t.hash) {
                return Err(format!(
                    "spec.tools {:?}: needs a name and a hash sha256:<64 lower-case hex digits>, not {:?}",
                    t.name, t.hash
                ));
            }
        }
        for r in &self.remotes {
            if !matches!(r.transport.as_str(), "streamable-http" | "sse") {
                return Err(format!(
                    "spec.remotes type {:?}: must be streamable-http or sse",
                    r.transport
                ));
            }
            if !(r.url.starts_with("https://") || r.url.starts_with("http://"))
                || r.url.contains(char::is_whitespace)
            {
                return Err(format!(
                    "spec.remotes url {:?}: must be an http(s) URL",
                    r.url
                ));
            }
        }
        Ok(())
    }
}

/// One catalog entry: the object's name, its spec and when it was created and last changed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Entry {
    pub object: String,
    pub spec: ApprovedServerSpec,
    /// `metadata.creationTimestamp` (RFC 3339), when the object came from an API server.
    pub created: Option<String>,
    /// The latest `metadata.managedFields[].time`: the last write to the object.
    pub updated: Option<String>,
}

impl Entry {
    /// Whether this entry approves `image` in `namespace` (whatever runtime class it requires).
    pub fn approves(&self, image: &str, namespace: &str) -> bool {
        let image = ImageRef::parse(image);
        (self.spec.namespaces.is_empty() || self.spec.namespaces.iter().any(|n| n == namespace))
            && self.spec.images.iter().any(|rule| image.matches(rule))
    }
}

/// The approved servers known to the webhook.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Catalog {
    pub entries: Vec<Entry>,
}

impl Catalog {
    /// Reads an `ApprovedServer` object (as the API server returns it); the error names it.
    pub fn entry(object: &Value) -> Result<Entry, String> {
        let name = object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let spec = object.get("spec").cloned().unwrap_or(Value::Null);
        let spec: ApprovedServerSpec = serde_json::from_value(spec)
            .map_err(|e| format!("ApprovedServer {name:?}: invalid spec: {e}"))?;
        spec.check()
            .map_err(|e| format!("ApprovedServer {name:?}: invalid {e}"))?;
        let time = |v: &Value| v.as_str().map(str::to_string);
        let created = object.pointer("/metadata/creationTimestamp").and_then(time);
        // RFC 3339 UTC timestamps of one format order as strings.
        let updated = object
            .pointer("/metadata/managedFields")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|f| f.get("time").and_then(time))
            .max()
            .or_else(|| created.clone());
        Ok(Entry {
            object: name,
            spec,
            created,
            updated,
        })
    }

    /// Every `ApprovedServer` of a YAML or JSON stream (other documents are ignored), for
    /// `inject --approved-servers FILE`.
    pub fn from_documents(text: &str) -> Result<Catalog, String> {
        let mut entries = Vec::new();
        for doc in serde_yaml_ng::Deserializer::from_str(text) {
            let v = Value::deserialize(doc).map_err(|e| format!("not YAML: {e}"))?;
            let items = match v.get("kind").and_then(Value::as_str) {
                Some("List") | Some("ApprovedServerList") => {
                    v["items"].as_array().cloned().unwrap_or_default()
                }
                _ => vec![v],
            };
            for item in items {
                if item.get("kind").and_then(Value::as_str) == Some(KIND) {
                    entries.push(Catalog::entry(&item)?);
                }
            }
        }
        Ok(Catalog { entries })
    }

    /// The entries that approve `image` in `namespace`, whatever runtime class they require.
    pub fn approving<'a>(
        &'a self,
        image: &'a str,
        namespace: &'a str,
    ) -> impl Iterator<Item = &'a Entry> {
        self.entries
            .iter()
            .filter(move |e| e.approves(image, namespace))
    }

    /// Whether some entry approves `image` in `namespace` for a pod of `runtime_class`.
    pub fn approves(&self, image: &str, namespace: &str, runtime_class: Option<&str>) -> bool {
        self.approving(image, namespace).any(|e| {
            e.spec.runtime_class_name.is_none()
                || e.spec.runtime_class_name.as_deref() == runtime_class
        })
    }
}

/// The entry a pod runs as: the first (by object name) that approves every image of the pod for
/// `namespace` and its RuntimeClass, else the first that approves its first container's image;
/// `None` when no entry approves that one.
pub fn entry_for<'a>(catalog: &'a Catalog, pod: &Value, namespace: &str) -> Option<&'a Entry> {
    let runtime_class = pod
        .pointer("/spec/runtimeClassName")
        .and_then(Value::as_str);
    let images: Vec<&str> = ["containers", "initContainers"]
        .iter()
        .filter_map(|f| pod.pointer(&format!("/spec/{f}")).and_then(Value::as_array))
        .flatten()
        .filter_map(|c| c.get("image").and_then(Value::as_str))
        .collect();
    let first = *images.first()?;
    let mut entries: Vec<&Entry> = catalog
        .entries
        .iter()
        .filter(|e| {
            e.spec.runtime_class_name.is_none()
                || e.spec.runtime_class_name.as_deref() == runtime_class
        })
        .collect();
    entries.sort_by(|a, b| a.object.cmp(&b.object));
    entries
        .iter()
        .find(|e| images.iter().all(|i| e.approves(i, namespace)))
        .or_else(|| entries.iter().find(|e| e.approves(first, namespace)))
        .copied()
}

/// What an injected pod takes from the entry it runs as: the label its egress NetworkPolicy
/// selects, and the entry's pinned tools for its sidecar.
#[derive(Debug, Clone)]
pub struct RunsAs {
    label: Option<json_patch::PatchOperation>,
    /// The pins of record as the sidecar reads them (`MCP_GUARD_PINNED_TOOLS`), when the entry
    /// names any.
    pins: Option<String>,
}

impl RunsAs {
    fn of(entry: &Entry) -> RunsAs {
        let pins = (!entry.spec.tools.is_empty()).then(|| {
            let map: BTreeMap<&str, &str> = entry
                .spec
                .tools
                .iter()
                .map(|t| (t.name.as_str(), t.hash.as_str()))
                .collect();
            serde_json::to_string(&map).unwrap_or_default()
        });
        RunsAs {
            label: label_op(&entry.object),
            pins,
        }
    }

    /// Adds them to the injection patch (which has made sure the pod has labels).
    pub fn apply(self, patch: &mut json_patch::Patch) {
        if let Some(pins) = self.pins {
            crate::inject::add_sidecar_env(patch, mcp_guard_common::env::PINNED_TOOLS, &pins);
        }
        patch.0.extend(self.label);
    }
}

/// [`assess`], and for a pod that passes, what it takes from the entry it runs as
/// ([`entry_for`], [`RunsAs`]): the caller applies it to the injection patch.
pub fn admit(
    catalog: Option<&Catalog>,
    subject: Subject<'_>,
    default: Mode,
) -> (Verdict, Option<RunsAs>) {
    let (pod, namespace) = (subject.pod, subject.namespace);
    let verdict = assess(catalog, subject, default);
    let runs_as = match (&verdict, catalog) {
        (Verdict::Pass, Some(c)) => entry_for(c, pod, namespace).map(RunsAs::of),
        _ => None,
    };
    (verdict, runs_as)
}

/// The operation that labels a pod with the entry it runs as ([`APPROVED_LABEL`]), appended to
/// the injection patch (which has made sure the pod has labels).
pub fn label_op(object: &str) -> Option<json_patch::PatchOperation> {
    let path = format!("/metadata/labels/{}", crate::patch::escape(APPROVED_LABEL));
    let path = json_patch::jsonptr::PointerBuf::parse(&path).ok()?;
    Some(json_patch::PatchOperation::Add(json_patch::AddOperation {
        path,
        value: Value::String(object.to_string()),
    }))
}

/// An image reference split as a registry reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ImageRef<'a> {
    repository: &'a str,
    tag: Option<&'a str>,
    digest: Option<&'a str>,
}

impl<'a> ImageRef<'a> {
    fn parse(image: &'a str) -> ImageRef<'a> {
        let (rest, digest) = match image.split_once('@') {
            Some((r, d)) => (r, Some(d)),
            None => (image, None),
        };
        // A tag follows the last ':' after the last '/' (a registry's port is not a tag).
        let slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (repository, tag) = match rest[slash..].rfind(':') {
            Some(i) => (&rest[..slash + i], Some(&rest[slash + i + 1..])),
            None => (rest, None),
        };
        ImageRef {
            repository,
            tag,
            digest,
        }
    }

    fn matches(&self, rule: &ImageRule) -> bool {
        if self.repository != rule.repository {
            return false;
        }
        if let Some(d) = &rule.digest
            && self.digest != Some(d.as_str())
        {
            return false;
        }
        match &rule.tag {
            // A digest pins the content whatever the tag says.
            Some(pattern) if self.digest.is_none() || rule.digest.is_none() => {
                glob(pattern, self.tag.unwrap_or("latest"))
            }
            _ => true,
        }
    }
}

/// `*` matches any run of characters; everything else itself.
fn glob(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for p in middle {
        match rest.find(p) {
            Some(i) => rest = &rest[i + p.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// A pod that runs images no entry approves for its namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub namespace: String,
    pub images: Vec<String>,
    /// Entries that would approve an image if the pod ran in their RuntimeClass: (entry,
    /// runtime class).
    pub runtime_classes: Vec<(String, String)>,
}

impl Finding {
    /// What admission says: the images, and what to add.
    pub fn message(&self) -> String {
        if let Some((entry, class)) = self.runtime_classes.first() {
            return format!(
                "mcp-guard: image(s) {} approved for namespace {:?} only in RuntimeClass {class:?} \
                 (ApprovedServer {entry:?}): set spec.runtimeClassName: {class} in the pod \
                 template, see docs/registry.md",
                self.quoted_images(),
                self.namespace
            );
        }
        let first = self.images.first().map(String::as_str).unwrap_or_default();
        let repository = ImageRef::parse(first).repository;
        format!(
            "mcp-guard: image(s) {} approved by no ApprovedServer for namespace {:?}: add an \
             entry (kubectl apply an ApprovedServer with spec.images [{{repository: {repository}}}] \
             and spec.namespaces [{}], or no namespaces for all), see docs/registry.md",
            self.quoted_images(),
            self.namespace,
            self.namespace
        )
    }

    fn quoted_images(&self) -> String {
        self.images
            .iter()
            .map(|i| format!("{i:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Whether the pod is the registry's business: it opts into mcp-guard or declares itself an
/// MCP server, and it is not injected already (its images were checked then).
pub fn applies(
    pod: &Value,
    namespace: &str,
    namespace_annotations: &BTreeMap<String, String>,
    own_namespace: &str,
) -> bool {
    let annotations = selection::string_map(pod, "/metadata/annotations");
    if annotations.contains_key(STATUS) {
        return false;
    }
    let labels = selection::string_map(pod, "/metadata/labels");
    if labels.get(SERVER_LABEL).map(String::as_str) == Some("true") {
        return true;
    }
    matches!(
        selection::select(pod, namespace, namespace_annotations, own_namespace),
        Ok(Selection::Inject(_))
    )
}

/// The pod's images that no entry approves for `namespace` (regular, init and ephemeral
/// containers), or `None` when every one is approved.
pub fn check(catalog: &Catalog, pod: &Value, namespace: &str) -> Option<Finding> {
    let runtime_class = pod
        .pointer("/spec/runtimeClassName")
        .and_then(Value::as_str);
    let mut images = Vec::new();
    let mut runtime_classes = Vec::new();
    for field in ["containers", "initContainers", "ephemeralContainers"] {
        for c in pod
            .pointer(&format!("/spec/{field}"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let image = c.get("image").and_then(Value::as_str).unwrap_or_default();
            if !catalog.approves(image, namespace, runtime_class)
                && !images.iter().any(|i| i == image)
            {
                images.push(image.to_string());
                runtime_classes.extend(
                    catalog.approving(image, namespace).filter_map(|e| {
                        Some((e.object.clone(), e.spec.runtime_class_name.clone()?))
                    }),
                );
            }
        }
    }
    (!images.is_empty()).then(|| Finding {
        namespace: namespace.to_string(),
        images,
        runtime_classes,
    })
}

/// The namespace's mode: its `mcp-guard.dev/approval` label, else `default`. An invalid label
/// value counts as `enforce` (fail closed) and is named in the message.
pub fn mode(namespace_labels: &BTreeMap<String, String>, default: Mode) -> Result<Mode, String> {
    match namespace_labels.get(MODE_LABEL) {
        None => Ok(default),
        Some(v) => Mode::parse(v.trim()).ok_or_else(|| {
            format!(
                "namespace label {MODE_LABEL}: invalid value {v:?}: allowed values are \
                 \"enforce\", \"warn\", \"audit\" and \"disabled\" (treated as enforce)"
            )
        }),
    }
}

/// What admission does about the catalog for one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Not the registry's business, approved, or the check is off.
    Pass,
    /// `enforce`: refuse the pod with this message.
    Refuse(String),
    /// `warn`: admit it with this admission warning.
    Warn(String),
    /// `audit`: admit it and record this as the audit annotation `mcp-guard.dev/unapproved-images`.
    Record(String),
}

/// The pod and what the webhook knows about its namespace.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub pod: &'a Value,
    pub namespace: &'a str,
    pub namespace_annotations: &'a BTreeMap<String, String>,
    pub namespace_labels: &'a BTreeMap<String, String>,
    pub own_namespace: &'a str,
}

/// Checks `subject` against `catalog` (`None`: not known, e.g. the CRD is not installed) in its
/// namespace's mode (`default` where the namespace has no label).
pub fn assess(catalog: Option<&Catalog>, subject: Subject<'_>, default: Mode) -> Verdict {
    if !applies(
        subject.pod,
        subject.namespace,
        subject.namespace_annotations,
        subject.own_namespace,
    ) {
        return Verdict::Pass;
    }
    let (mode, label_problem) = match mode(subject.namespace_labels, default) {
        Ok(m) => (m, None),
        Err(e) => (Mode::Enforce, Some(e)),
    };
    if mode == Mode::Disabled {
        return Verdict::Pass;
    }
    let message = match catalog {
        None => format!(
            "mcp-guard: the catalog of approved servers is not available (is the ApprovedServer \
             CRD installed?), so the images of this pod in namespace {:?} cannot be checked; see \
             docs/registry.md",
            subject.namespace
        ),
        Some(c) => match check(c, subject.pod, subject.namespace) {
            None => return Verdict::Pass,
            Some(f) => f.message(),
        },
    };
    let message = match label_problem {
        Some(p) => format!("{message} ({p})"),
        None => message,
    };
    match mode {
        Mode::Enforce => Verdict::Refuse(message),
        Mode::Warn => Verdict::Warn(message),
        Mode::Audit => Verdict::Record(message),
        Mode::Disabled => Verdict::Pass,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn catalog() -> Catalog {
        Catalog::from_documents(
            "\
apiVersion: mcp-guard.dev/v1alpha1
kind: ApprovedServer
metadata: {name: tickets}
spec:
  name: io.example/tickets
  images:
  - {repository: registry.example.com:5000/mcp/tickets, tag: \"1.*\"}
  namespaces: [tickets]
---
apiVersion: mcp-guard.dev/v1alpha1
kind: ApprovedServer
metadata: {name: git}
spec:
  name: io.example/git
  images:
  - {repository: example.com/git, digest: \"sha256:aa\"}
",
        )
        .unwrap()
    }

    #[test]
    fn images_match_by_repository_tag_pattern_and_digest() {
        let c = catalog();
        assert!(c.approves("registry.example.com:5000/mcp/tickets:1.4", "tickets", None));
        assert!(!c.approves("registry.example.com:5000/mcp/tickets:2.0", "tickets", None));
        assert!(!c.approves("registry.example.com:5000/mcp/tickets:1.4", "other", None));
        assert!(!c.approves("registry.example.com:5000/mcp/tickets", "tickets", None));
        assert!(c.approves("example.com/git@sha256:aa", "anywhere", None));
        assert!(c.approves("example.com/git:v2@sha256:aa", "anywhere", None));
        assert!(!c.approves("example.com/git:v2", "anywhere", None));
        assert!(!c.approves("example.com/gitx@sha256:aa", "anywhere", None));
    }

    #[test]
    fn an_entry_that_requires_a_runtime_class_approves_only_pods_in_it() {
        let c = Catalog::from_documents(
            "kind: ApprovedServer\nmetadata: {name: sandboxed}\nspec:\n  name: io.example/shell\n  runtimeClassName: kata\n  images: [{repository: example.com/shell}]\n",
        )
        .unwrap();
        let pod = |class: Option<&str>| {
            let mut p =
                json!({"spec": {"containers": [{"name": "s", "image": "example.com/shell:1"}]}});
            if let Some(c) = class {
                p["spec"]["runtimeClassName"] = json!(c);
            }
            p
        };
        assert_eq!(check(&c, &pod(Some("kata")), "tools"), None);
        let f = check(&c, &pod(None), "tools").unwrap();
        assert_eq!(
            f.runtime_classes,
            [("sandboxed".to_string(), "kata".to_string())]
        );
        let m = f.message();
        assert!(
            m.contains("only in RuntimeClass \"kata\"") && m.contains("runtimeClassName: kata"),
            "{m}"
        );
        assert!(check(&c, &pod(Some("runc")), "tools").is_some());
    }

    #[test]
    fn globs() {
        assert!(glob("1.*", "1.4.2"));
        assert!(glob("*", ""));
        assert!(glob("v*-alpine", "v1.2-alpine"));
        assert!(!glob("v*-alpine", "v1.2-alpine3"));
        assert!(glob("exact", "exact"));
        assert!(!glob("exact", "exactly"));
        assert!(!glob("a*a", "a"));
    }

    #[test]
    fn the_finding_names_each_unapproved_image_and_what_to_add() {
        let pod = json!({"spec": {
            "initContainers": [{"name": "init", "image": "busybox:1"}],
            "containers": [
                {"name": "server", "image": "registry.example.com:5000/mcp/tickets:1.4"},
                {"name": "proxy", "image": "example.com/proxy:3"},
            ],
        }});
        assert_eq!(
            check(&catalog(), &pod, "tickets").map(|f| f.images),
            Some(vec![
                "example.com/proxy:3".to_string(),
                "busybox:1".to_string()
            ])
        );
        let f = check(&catalog(), &pod, "other").unwrap();
        let m = f.message();
        assert!(
            m.contains("\"registry.example.com:5000/mcp/tickets:1.4\"")
                && m.contains("namespace \"other\""),
            "{m}"
        );
        assert!(
            m.contains("repository: registry.example.com:5000/mcp/tickets"),
            "{m}"
        );
    }

    #[test]
    fn modes_come_from_the_namespace_label() {
        let mut labels = BTreeMap::new();
        assert_eq!(mode(&labels, Mode::Warn), Ok(Mode::Warn));
        labels.insert(MODE_LABEL.to_string(), "enforce".to_string());
        assert_eq!(mode(&labels, Mode::Warn), Ok(Mode::Enforce));
        labels.insert(MODE_LABEL.to_string(), "strict".to_string());
        assert!(
            mode(&labels, Mode::Warn)
                .unwrap_err()
                .contains("\"strict\"")
        );
    }

    #[test]
    fn each_mode_gives_its_verdict_and_approval_lets_the_pod_in() {
        let pod = json!({
            "metadata": {"annotations": {"mcp-guard.dev/inject": "enabled"}},
            "spec": {"containers": [{"name": "server", "image": "example.com/rogue:1"}]},
        });
        let none = BTreeMap::new();
        let subject = |labels: &'static [(&str, &str)]| -> BTreeMap<String, String> {
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let run = |c: Option<&Catalog>, labels: &BTreeMap<String, String>, default| {
            assess(
                c,
                Subject {
                    pod: &pod,
                    namespace: "tickets",
                    namespace_annotations: &none,
                    namespace_labels: labels,
                    own_namespace: "mcp-guard",
                },
                default,
            )
        };
        let c = catalog();
        assert!(
            matches!(run(Some(&c), &none, Mode::Warn), Verdict::Warn(m) if m.contains("example.com/rogue:1"))
        );
        let enforce = subject(&[(MODE_LABEL, "enforce")]);
        assert!(matches!(
            run(Some(&c), &enforce, Mode::Warn),
            Verdict::Refuse(_)
        ));
        let audit = subject(&[(MODE_LABEL, "audit")]);
        assert!(matches!(
            run(Some(&c), &audit, Mode::Warn),
            Verdict::Record(_)
        ));
        let off = subject(&[(MODE_LABEL, "disabled")]);
        assert_eq!(run(Some(&c), &off, Mode::Enforce), Verdict::Pass);
        let bad = subject(&[(MODE_LABEL, "strict")]);
        assert!(
            matches!(run(Some(&c), &bad, Mode::Warn), Verdict::Refuse(m) if m.contains("\"strict\""))
        );
        assert!(
            matches!(run(None, &enforce, Mode::Warn), Verdict::Refuse(m) if m.contains("not available"))
        );
        let mut approved = c.clone();
        approved.entries.push(Entry {
            object: "rogue".into(),
            spec: ApprovedServerSpec {
                name: "io.example/rogue".into(),
                images: vec![ImageRule {
                    repository: "example.com/rogue".into(),
                    ..ImageRule::default()
                }],
                ..ApprovedServerSpec::default()
            },
            ..Entry::default()
        });
        assert_eq!(run(Some(&approved), &enforce, Mode::Warn), Verdict::Pass);
        // A pod that neither opts in nor declares itself a server is not checked.
        let plain =
            json!({"spec": {"containers": [{"name": "x", "image": "example.com/rogue:1"}]}});
        assert!(!applies(&plain, "tickets", &none, "mcp-guard"));
        let labelled =
            json!({"metadata": {"labels": {SERVER_LABEL: "true"}}, "spec": plain["spec"]});
        assert!(applies(&labelled, "tickets", &none, "mcp-guard"));
    }

    #[test]
    fn an_invalid_entry_is_named() {
        let e =
            Catalog::from_documents("kind: ApprovedServer\nmetadata: {name: x}\nspec: {name: y}\n")
                .unwrap_err();
        assert!(
            e.contains("ApprovedServer \"x\"") && e.contains("images"),
            "{e}"
        );
    }

    #[test]
    fn versions_and_remotes_are_checked() {
        let doc = |extra: &str| {
            format!(
                "kind: ApprovedServer\nmetadata: {{name: x, creationTimestamp: '2026-12-01T10:00:00Z', \
                 managedFields: [{{time: '2026-12-02T10:00:00Z'}}, {{time: '2026-12-03T10:00:00Z'}}]}}\n\
                 spec: {{name: io.example/x, images: [{{repository: r}}]{extra}}}\n"
            )
        };
        let ok = Catalog::from_documents(&doc(
            ", version: 2.1.0, remotes: [{type: streamable-http, url: 'https://x.example/mcp'}]",
        ))
        .unwrap();
        let e = &ok.entries[0];
        assert_eq!(e.spec.version(), "2.1.0");
        assert_eq!(e.created.as_deref(), Some("2026-12-01T10:00:00Z"));
        assert_eq!(e.updated.as_deref(), Some("2026-12-03T10:00:00Z"));
        let plain = Catalog::from_documents(&doc("")).unwrap();
        assert_eq!(plain.entries[0].spec.version(), DEFAULT_VERSION);
        for (extra, named) in [
            (", version: latest", "spec.version \"latest\""),
            (", version: ^1.2.0", "a version range"),
            (", remotes: [{type: stdio, url: 'https://x'}]", "\"stdio\""),
            (", remotes: [{type: sse, url: 'ftp://x'}]", "\"ftp://x\""),
        ] {
            let e = Catalog::from_documents(&doc(extra)).unwrap_err();
            assert!(
                e.contains("ApprovedServer \"x\"") && e.contains(named),
                "{e}"
            );
        }
    }

    #[test]
    fn a_pod_runs_as_the_entry_that_approves_all_its_images() {
        let entry = |object: &str, repos: &[&str]| Entry {
            object: object.into(),
            spec: ApprovedServerSpec {
                name: format!("io.example/{object}"),
                images: repos
                    .iter()
                    .map(|r| ImageRule {
                        repository: (*r).into(),
                        ..ImageRule::default()
                    })
                    .collect(),
                ..ApprovedServerSpec::default()
            },
            ..Entry::default()
        };
        let c = Catalog {
            entries: vec![
                entry("b-server-only", &["example.com/server"]),
                entry("a-tools", &["example.com/tools"]),
                entry("c-both", &["example.com/server", "example.com/helper"]),
            ],
        };
        let pod = |images: &[&str]| {
            let containers: Vec<Value> = images
                .iter()
                .map(|i| serde_json::json!({"name": "x", "image": i}))
                .collect();
            serde_json::json!({"spec": {"containers": containers}})
        };
        let runs_as = |p: &Value| entry_for(&c, p, "apps").map(|e| e.object.as_str());
        assert_eq!(
            runs_as(&pod(&["example.com/server:1", "example.com/helper:1"])),
            Some("c-both")
        );
        assert_eq!(
            runs_as(&pod(&["example.com/server:1"])),
            Some("b-server-only")
        );
        assert_eq!(
            runs_as(&pod(&["example.com/server:1", "example.com/other:1"])),
            Some("b-server-only"),
            "none approves all: the one that approves the first container"
        );
        assert_eq!(runs_as(&pod(&["example.com/other:1"])), None);
        assert!(label_op("c-both").is_some());
    }
}
