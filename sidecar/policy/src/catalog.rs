//! The server's own tool definitions, as its `tools/list` answers showed them: policy reads a
//! tool's annotations (`readOnlyHint`, `destructiveHint`) from here, and each definition is pinned
//! by hash so a tool that changes under the same name is noticed.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;
use regorus::Value as RegoValue;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::value::{Keys, convert, object};

/// Tools remembered at most; a server with more is unusual. Past it a new name cannot be pinned,
/// and its view says so the way that fails closed: `pinned_hash` empty and `changed` true, so a
/// server cannot list its way past pinning.
const MAX_TOOLS: usize = 10_000;

/// The `pinned_hash` of a tool the catalog had no room to pin.
const UNPINNED: &str = "";

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

/// A definition as the policy sees it ([`annotate`]), with its hash.
pub type View = (RegoValue, Arc<str>);

/// One `tools/list` answer, recorded: the definitions that changed, and every item's policy view
/// in list order.
#[derive(Debug, Default)]
pub struct Recorded {
    pub changed: Vec<Changed>,
    pub views: Vec<View>,
    /// Tools of this list the full catalog could not pin.
    pub unpinned: usize,
}

#[derive(Debug, Default)]
struct Inner {
    tools: HashMap<String, Entry>,
    /// Object keys shared by the views: a server's tools repeat the same few keys.
    keys: Keys,
}

#[derive(Debug, Default)]
pub struct ToolCatalog {
    inner: RwLock<Inner>,
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
    /// Records the tools of one `tools/list` answer (before filtering): pins each new name,
    /// reports each definition that differs from its pinned one, and returns every item's
    /// policy view, in list order.
    pub fn record(&self, tools: &[Value]) -> Recorded {
        let mut recorded = Recorded {
            changed: Vec::new(),
            views: Vec::with_capacity(tools.len()),
            unpinned: 0,
        };
        let unpinned: Arc<str> = Arc::from(UNPINNED);
        // Hashed before taking the lock: calls deciding on a tool's view wait for none of it.
        let hashes: Vec<Arc<str>> = tools.iter().map(|d| definition_hash(d).into()).collect();
        let mut inner = self.inner.write();
        let Inner { tools: map, keys } = &mut *inner;
        for (def, hash) in tools.iter().zip(hashes) {
            let Some(name) = def.get("name").and_then(Value::as_str) else {
                recorded
                    .views
                    .push((annotate(def, &hash, &hash, keys), hash));
                continue;
            };
            let full = map.len() >= MAX_TOOLS;
            let view = match map.get_mut(name) {
                Some(e) if e.hash == hash => e.view.clone(),
                Some(e) => {
                    e.view = annotate(def, &hash, &e.pinned, keys);
                    e.hash = Arc::clone(&hash);
                    if e.pinned != hash {
                        recorded.changed.push(Changed {
                            tool: name.to_owned(),
                            pinned: Arc::clone(&e.pinned),
                            now: Arc::clone(&hash),
                        });
                    }
                    e.view.clone()
                }
                None if full => {
                    recorded.unpinned += 1;
                    annotate(def, &hash, &unpinned, keys)
                }
                None => {
                    let view = annotate(def, &hash, &hash, keys);
                    map.insert(
                        name.to_owned(),
                        Entry {
                            pinned: Arc::clone(&hash),
                            hash: Arc::clone(&hash),
                            view: view.clone(),
                        },
                    );
                    view
                }
            };
            recorded.views.push((view, hash));
        }
        recorded
    }

    /// The policy view of tool `name`: the server's definition plus `hash`, `pinned_hash` and
    /// `changed`, with the definition's hash. `None` when the server has not listed it yet.
    pub fn view(&self, name: &str) -> Option<View> {
        let inner = self.inner.read();
        let e = inner.tools.get(name)?;
        Some((e.view.clone(), Arc::clone(&e.hash)))
    }

    /// The policy view of a definition: the recorded one, or (for a tool the server has not
    /// listed) one made now.
    pub fn view_of(&self, def: &Value) -> View {
        let name = def.get("name").and_then(Value::as_str).unwrap_or_default();
        if let Some(v) = self.view(name) {
            return v;
        }
        let hash: Arc<str> = definition_hash(def).into();
        (annotate(def, &hash, &hash, &mut Keys::unshared()), hash)
    }
}

/// The policy view of a definition: the definition as the server gave it, plus `hash`,
/// `pinned_hash`, `changed` and (when the server gave none) empty `annotations`.
fn annotate(def: &Value, hash: &Arc<str>, pinned: &Arc<str>, keys: &mut Keys) -> RegoValue {
    let Some(fields) = def.as_object() else {
        return convert(def, keys);
    };
    // Built field by field from the borrowed definition and frozen into the engine's value once;
    // the hashes are the catalog's own strings, shared, not copied.
    let mut view = object(fields, keys);
    view.insert(keys.key("hash"), RegoValue::String(Arc::clone(hash)));
    view.insert(
        keys.key("pinned_hash"),
        RegoValue::String(Arc::clone(pinned)),
    );
    view.insert(keys.key("changed"), RegoValue::Bool(hash != pinned));
    view.entry(keys.key("annotations"))
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
        assert!(c.record(std::slice::from_ref(&v1)).changed.is_empty());
        assert_eq!(seen(&c)["changed"], false);
        let changed = c.record(std::slice::from_ref(&v2)).changed;
        assert_eq!(changed.len(), 1);
        assert_eq!(changed[0].tool, "echo");
        let seen = seen(&c);
        assert_eq!(seen["changed"], true);
        assert_eq!(seen["description"], v2["description"]);
        assert_eq!(seen["pinned_hash"].as_str().unwrap(), definition_hash(&v1));
        assert!(
            c.record(std::slice::from_ref(&v2)).changed.is_empty(),
            "reported once"
        );
    }

    #[test]
    fn recording_gives_every_items_view_in_list_order() {
        let c = ToolCatalog::default();
        let list = [
            json!({"name": "b", "annotations": {"readOnlyHint": true}}),
            json!({"description": "no name"}),
            json!({"name": "a"}),
        ];
        let recorded = c.record(&list);
        assert_eq!(recorded.views.len(), 3);
        for ((view, hash), def) in recorded.views.iter().zip(&list) {
            assert_eq!(&**hash, definition_hash(def));
            let view: Value = serde_json::from_str(&view.to_json_str().unwrap()).unwrap();
            assert_eq!(view["description"], def["description"]);
            assert_eq!(view["name"], def["name"]);
            assert_eq!(view["hash"].as_str(), Some(&**hash));
            assert_eq!(view["changed"], false);
        }
        // The recorded view is the one later calls of the tool are decided on.
        assert_eq!(c.view("a").unwrap().0, recorded.views[2].0);
        assert!(
            c.view("").is_none(),
            "a definition without a name is not pinned"
        );
    }

    #[test]
    fn past_its_capacity_the_catalog_shows_new_tools_as_changed() {
        let c = ToolCatalog::default();
        let filler: Vec<Value> = (0..MAX_TOOLS)
            .map(|i| json!({"name": format!("t{i}")}))
            .collect();
        let recorded = c.record(&filler);
        assert_eq!(recorded.unpinned, 0);
        let late = json!({"name": "late", "description": "listed once the catalog is full"});
        let recorded = c.record(&[filler[0].clone(), late.clone()]);
        assert_eq!(recorded.unpinned, 1);
        let seen =
            |v: &RegoValue| -> Value { serde_json::from_str(&v.to_json_str().unwrap()).unwrap() };
        assert_eq!(
            seen(&recorded.views[0].0)["changed"],
            false,
            "pinned before"
        );
        let late_view = seen(&recorded.views[1].0);
        assert_eq!(late_view["changed"], true, "{late_view}");
        assert_eq!(late_view["pinned_hash"], "");
        assert_eq!(
            late_view["hash"].as_str(),
            Some(definition_hash(&late).as_str())
        );
        assert!(c.view("late").is_none(), "not pinned");
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
