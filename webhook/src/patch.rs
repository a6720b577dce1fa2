//! JSON Patch (RFC 6902) building on raw `serde_json::Value`: the webhook never round-trips the
//! pod through typed structs, so fields our Kubernetes types do not know survive untouched.
//! Operations are explicit (`add` / `replace` at known paths) rather than a diff, which keeps
//! the patch small and the golden files readable.

use std::collections::BTreeMap;

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, PatchOperation, ReplaceOperation};
use serde_json::Value;

/// Escapes one JSON Pointer reference token (RFC 6901).
pub fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// A patch that cannot be built: a path that is not a JSON Pointer (a bug in the caller), or a
/// pod that holds something other than an object where the patch adds to one.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot patch {path:?}: {reason}")]
pub struct PatchError {
    pub path: String,
    pub reason: String,
}

/// Collects patch operations in order, as json-patch's own types (no round trip through
/// `Value`, which would deep-copy every added container).
#[derive(Debug, Default, Clone)]
pub struct PatchBuilder {
    ops: Vec<PatchOperation>,
    error: Option<PatchError>,
    /// Containers (objects) this builder's own operations created, by pointer: later operations
    /// below them must not create them again (an `add` would replace what is there).
    created: Vec<String>,
}

impl PatchBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    fn pointer(&mut self, path: String) -> Option<PointerBuf> {
        match PointerBuf::parse(&path) {
            Ok(p) => Some(p),
            Err(e) => {
                self.error.get_or_insert(PatchError {
                    path,
                    reason: e.to_string(),
                });
                None
            }
        }
    }

    /// `add` at `path`.
    pub fn add(&mut self, path: impl Into<String>, value: Value) {
        if let Some(path) = self.pointer(path.into()) {
            self.ops
                .push(PatchOperation::Add(AddOperation { path, value }));
        }
    }

    /// `replace` at `path`.
    pub fn replace(&mut self, path: impl Into<String>, value: Value) {
        if let Some(path) = self.pointer(path.into()) {
            self.ops
                .push(PatchOperation::Replace(ReplaceOperation { path, value }));
        }
    }

    /// `add` of `value` at `pointer`, which `doc` lacks. Missing parents come with it, in one
    /// `add` at the first missing level (a pod without `metadata` still gets its annotations).
    /// A parent that is there but holds no object cannot be added to: that is an error.
    fn add_missing(&mut self, doc: &Value, pointer: &str, mut value: Value) {
        let mut path = pointer.to_owned();
        while let Some((parent, token)) = path.rsplit_once('/') {
            if parent.is_empty() || self.created.iter().any(|c| c == parent) {
                break;
            }
            if let Some(existing) = doc.pointer(parent) {
                if !existing.is_object() {
                    self.error.get_or_insert(PatchError {
                        path: parent.to_owned(),
                        reason: "the pod has a value there that is not an object".to_owned(),
                    });
                }
                break;
            }
            let key = token.replace("~1", "/").replace("~0", "~");
            value = Value::Object(std::iter::once((key, value)).collect());
            path = parent.to_owned();
        }
        let mut created = pointer;
        while created.len() >= path.len() {
            self.created.push(created.to_owned());
            match created.rsplit_once('/') {
                Some((parent, _)) => created = parent,
                None => break,
            }
        }
        self.add(path, value);
    }

    /// Adds string entries to the map at `pointer` of `doc` (annotations, labels): one `add` per
    /// key when the map exists, one `add` of the whole map (and of missing parents) when not.
    pub fn add_map_entries(
        &mut self,
        doc: &Value,
        pointer: &str,
        entries: &BTreeMap<String, String>,
    ) {
        if entries.is_empty() {
            return;
        }
        if doc.pointer(pointer).is_some_and(Value::is_object) {
            for (k, v) in entries {
                self.add(format!("{pointer}/{}", escape(k)), Value::String(v.clone()));
            }
        } else {
            let map: serde_json::Map<String, Value> = entries
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect();
            self.add_missing(doc, pointer, Value::Object(map));
        }
    }

    /// Inserts `items` at the front of the array at `pointer` (created when missing), keeping
    /// their order.
    pub fn prepend(&mut self, doc: &Value, pointer: &str, items: Vec<Value>) {
        if items.is_empty() {
            return;
        }
        if doc.pointer(pointer).is_some_and(Value::is_array) {
            for item in items.into_iter().rev() {
                self.add(format!("{pointer}/0"), item);
            }
        } else {
            self.add_missing(doc, pointer, Value::Array(items));
        }
    }

    /// Appends `items` to the array at `pointer` (created when missing).
    pub fn append(&mut self, doc: &Value, pointer: &str, items: Vec<Value>) {
        if items.is_empty() {
            return;
        }
        if doc.pointer(pointer).is_some_and(Value::is_array) {
            for item in items {
                self.add(format!("{pointer}/-"), item);
            }
        } else {
            self.add_missing(doc, pointer, Value::Array(items));
        }
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The typed patch kube's `AdmissionResponse::with_patch` takes.
    pub fn into_patch(self) -> Result<json_patch::Patch, PatchError> {
        match self.error {
            Some(e) => Err(e),
            None => Ok(json_patch::Patch(self.ops)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn escapes_tokens() {
        assert_eq!(escape("mcp-guard.dev/status"), "mcp-guard.dev~1status");
        assert_eq!(escape("a~b"), "a~0b");
    }

    #[test]
    fn map_entries_and_arrays_apply() {
        let mut doc = json!({"metadata": {}, "spec": {"containers": [{"name": "a"}]}});
        let mut b = PatchBuilder::new();
        let mut m = BTreeMap::new();
        m.insert("x/y".to_string(), "1".to_string());
        b.add_map_entries(&doc, "/metadata/annotations", &m);
        b.prepend(
            &doc,
            "/spec/containers",
            vec![json!({"name": "s"}), json!({"name": "t"})],
        );
        b.append(&doc, "/spec/volumes", vec![json!({"name": "v"})]);
        let patch = b.into_patch().unwrap();
        json_patch::patch(&mut doc, &patch).unwrap();
        assert_eq!(doc["metadata"]["annotations"]["x/y"], "1");
        assert_eq!(doc["spec"]["containers"][0]["name"], "s");
        assert_eq!(doc["spec"]["containers"][1]["name"], "t");
        assert_eq!(doc["spec"]["containers"][2]["name"], "a");
        assert_eq!(doc["spec"]["volumes"][0]["name"], "v");
    }

    #[test]
    fn missing_parents_are_added_once() {
        // Found by the `admission` fuzz target: a pod without `metadata` got a patch that did
        // not apply to it.
        let mut doc = json!({"spec": {"containers": [{"name": "a"}]}});
        let mut b = PatchBuilder::new();
        let one = |k: &str| BTreeMap::from([(k.to_string(), "1".to_string())]);
        b.add_map_entries(&doc, "/metadata/annotations", &one("a"));
        b.add_map_entries(&doc, "/metadata/labels", &one("l"));
        b.append(&doc, "/spec/volumes", vec![json!({"name": "v"})]);
        let patch = b.into_patch().unwrap();
        json_patch::patch(&mut doc, &patch).unwrap();
        assert_eq!(
            doc,
            json!({
                "metadata": {"annotations": {"a": "1"}, "labels": {"l": "1"}},
                "spec": {"containers": [{"name": "a"}], "volumes": [{"name": "v"}]},
            })
        );

        // A parent that holds something else is an error, not a patch that cannot apply.
        let doc = json!({"metadata": "web"});
        let mut b = PatchBuilder::new();
        b.add_map_entries(&doc, "/metadata/annotations", &one("a"));
        let e = b.into_patch().unwrap_err();
        assert_eq!(e.path, "/metadata");
    }
}
