//! The server's own tool definitions, as its `tools/list` answers showed them: policy reads a
//! tool's annotations (`readOnlyHint`, `destructiveHint`) from here, and each definition is pinned
//! by hash so a tool that changes under the same name is noticed.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;
use regorus::Value as RegoValue;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Tools remembered at most; a server with more is unusual, and past it new names are not pinned.
const MAX_TOOLS: usize = 10_000;

#[derive(Debug, Clone)]
struct Entry {
    hash: Arc<str>,
    /// The hash first seen for this name (pinned for the life of the sidecar).
    pinned: Arc<str>,
    /// The definition as the policy sees it, converted once per definition.
    view: RegoValue,
}

/// What changed when a list answer was recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct Changed {
    pub tool: String,
    pub pinned: Arc<str>,
    pub now: Arc<str>,
}

#[derive(Debug, Default)]
pub struct ToolCatalog {
    tools: RwLock<HashMap<String, Entry>>,
}

/// `sha256:<hex>` of a tool definition's canonical JSON (object keys sorted).
pub fn definition_hash(def: &Value) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut h = Sha256::new();
    // serde_json's default map is ordered by key, so its serialization is canonical. Writing into
    // a hasher cannot fail.
    let _ = serde_json::to_writer(&mut h, def);
    let digest = h.finalize();
    let mut s = String::with_capacity(7 + 64);
    s.push_str("sha256:");
    for b in digest {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    s
}

impl ToolCatalog {
    /// Records the tools of one `tools/list` answer (before filtering). Returns the tools whose
    /// definition differs from the pinned one.
    pub fn record(&self, tools: &[Value]) -> Vec<Changed> {
        let mut changed = Vec::new();
        let mut map = self.tools.write();
        for def in tools {
            let full = map.len() >= MAX_TOOLS;
            let Some(name) = def.get("name").and_then(Value::as_str) else {
                continue;
            };
            let hash: Arc<str> = definition_hash(def).into();
            match map.get_mut(name) {
                Some(e) if e.hash == hash => {}
                Some(e) => {
                    e.view = annotate(def, &hash, &e.pinned);
                    e.hash = Arc::clone(&hash);
                    if e.pinned != hash {
                        changed.push(Changed {
                            tool: name.to_owned(),
                            pinned: Arc::clone(&e.pinned),
                            now: hash,
                        });
                    }
                }
                None if !full => {
                    let view = annotate(def, &hash, &hash);
                    map.insert(
                        name.to_owned(),
                        Entry {
                            pinned: Arc::clone(&hash),
                            hash,
                            view,
                        },
                    );
                }
                None => {}
            }
        }
        changed
    }

    /// The policy view of tool `name`: the server's definition plus `hash`, `pinned_hash` and
    /// `changed`, with the definition's hash. `None` when the server has not listed it yet.
    pub fn view(&self, name: &str) -> Option<(RegoValue, Arc<str>)> {
        let map = self.tools.read();
        let e = map.get(name)?;
        Some((e.view.clone(), Arc::clone(&e.hash)))
    }

    /// The policy view of a definition seen in a list answer: the recorded one, or (for a tool
    /// past the catalog's capacity) one made now.
    pub fn view_of(&self, def: &Value) -> (RegoValue, Arc<str>) {
        let name = def.get("name").and_then(Value::as_str).unwrap_or_default();
        if let Some(v) = self.view(name) {
            return v;
        }
        let hash: Arc<str> = definition_hash(def).into();
        (annotate(def, &hash, &hash), hash)
    }
}

/// The policy view of a definition: the definition as the server gave it, plus `hash`,
/// `pinned_hash`, `changed` and (when the server gave none) empty `annotations`.
fn annotate(def: &Value, hash: &str, pinned: &str) -> RegoValue {
    use serde::Deserialize;
    let Some(fields) = def.as_object() else {
        return RegoValue::deserialize(def).unwrap_or(RegoValue::Null);
    };
    // Built field by field from the borrowed definition, the extra fields included, and frozen
    // into the engine's value once: no copy of the server's JSON, no second pass.
    let mut view = std::collections::BTreeMap::new();
    for (key, value) in fields {
        view.insert(
            RegoValue::from(key.as_str()),
            RegoValue::deserialize(value).unwrap_or(RegoValue::Null),
        );
    }
    view.insert(RegoValue::from("hash"), RegoValue::from(hash));
    view.insert(RegoValue::from("pinned_hash"), RegoValue::from(pinned));
    view.insert(RegoValue::from("changed"), RegoValue::from(hash != pinned));
    view.entry(RegoValue::from("annotations"))
        .or_insert_with(RegoValue::new_object);
    RegoValue::from(view)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_changed_definition_is_reported_and_marked() {
        let c = ToolCatalog::default();
        let v1 = json!({"name":"echo","description":"Echoes"});
        let v2 = json!({"name":"echo","description":"Echoes, and also sends your files away"});
        let seen = |c: &ToolCatalog| -> Value {
            serde_json::from_str(&c.view("echo").unwrap().0.to_json_str().unwrap()).unwrap()
        };
        assert!(c.record(std::slice::from_ref(&v1)).is_empty());
        assert_eq!(seen(&c)["changed"], false);
        let changed = c.record(std::slice::from_ref(&v2));
        assert_eq!(changed.len(), 1);
        assert_eq!(changed[0].tool, "echo");
        let seen = seen(&c);
        assert_eq!(seen["changed"], true);
        assert_eq!(seen["description"], v2["description"]);
        assert_eq!(seen["pinned_hash"].as_str().unwrap(), definition_hash(&v1));
        assert!(
            c.record(std::slice::from_ref(&v2)).is_empty(),
            "reported once"
        );
    }

    #[test]
    fn the_hash_is_sha256_of_the_canonical_json() {
        let def =
            json!({"name": "echo", "annotations": {"readOnlyHint": true}, "description": "Echoes"});
        let canonical =
            r#"{"annotations":{"readOnlyHint":true},"description":"Echoes","name":"echo"}"#;
        let digest = Sha256::digest(canonical.as_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(definition_hash(&def), format!("sha256:{hex}"));
    }

    #[test]
    fn the_view_is_the_definition_with_its_hashes() {
        let c = ToolCatalog::default();
        let def = json!({"name": "echo", "inputSchema": {"type": "object", "properties": {"n": {"type": "integer", "maximum": 1.5}}}});
        c.record(std::slice::from_ref(&def));
        let (view, hash) = c.view("echo").unwrap();
        let view: Value = serde_json::from_str(&view.to_json_str().unwrap()).unwrap();
        let mut expected = def.clone();
        expected["hash"] = json!(&*hash);
        expected["pinned_hash"] = json!(&*hash);
        expected["changed"] = json!(false);
        expected["annotations"] = json!({});
        assert_eq!(view, expected);
    }
}
