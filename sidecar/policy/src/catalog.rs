//! The server's own tool definitions, as its `tools/list` answers showed them: policy reads a
//! tool's annotations (`readOnlyHint`, `destructiveHint`) from here, the proxy the arguments a
//! call mirrors into `Mcp-Param-*` headers, and each definition is pinned by hash so a tool that
//! changes under the same name is noticed.
//!
//! A pin is either *of record*, given at start (the approved definitions of the server's
//! `ApprovedServer` entry, the same for every replica and every restart), or, when none are
//! given, the first definition this sidecar saw. With pins of record, a tool they do not name is
//! unpinned: the policy sees it as changed, like a changed one.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use parking_lot::RwLock;
use regorus::Value as RegoValue;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::param_headers::{self, ParamHeaders};
use crate::value::{Keys, convert, object};

/// Tools remembered at most; a server with more is unusual. Past it a new name cannot be pinned,
/// and its view says so the way that fails closed: `pinned_hash` empty and `changed` true, so a
/// server cannot list its way past pinning.
const MAX_TOOLS: usize = 10_000;

/// Definitions kept to be compared with the next listing's, at most: a definition equal to the
/// one kept under its name has that one's hash, and is not serialized and hashed again (most of
/// what a listing cost). Past this many tools each listing hashes the rest, as before, so a
/// server with very many tools cannot make the sidecar hold them all twice.
const MAX_KEPT: usize = 1_000;

/// The `pinned_hash` of a tool the catalog had no room to pin.
const UNPINNED: &str = "";

#[derive(Debug, Clone)]
struct Entry {
    hash: Arc<str>,
    /// The pin of record for this name, or else the hash first seen (pinned for the life of
    /// the sidecar); empty when unpinned.
    pinned: Arc<str>,
    /// The definition as the policy sees it, converted once per definition.
    view: RegoValue,
    /// The arguments this definition mirrors into `Mcp-Param-*` headers.
    params: ParamHeaders,
    /// The definition `hash` is of, while fewer than [`MAX_KEPT`] are kept.
    definition: Option<Kept>,
}

/// A definition kept to compare the next listing's with: the server's text when the listing
/// gave one (compared byte for byte, nothing parsed), else the parsed definition.
#[derive(Debug, Clone)]
enum Kept {
    Text(Box<str>),
    Value(Value),
}

impl Kept {
    fn of(def: &impl Definition) -> Kept {
        match def.text() {
            Some(t) => Kept::Text(t.into()),
            None => Kept::Value(def.value().clone()),
        }
    }

    /// Whether `def` is this definition. The same text is the same definition; a text not
    /// the same may still be (spaces, key order), and is then hashed again, which finds so.
    fn is(&self, def: &impl Definition) -> bool {
        match (self, def.text()) {
            (Kept::Text(kept), Some(text)) => **kept == *text,
            (Kept::Text(_), None) => false,
            (Kept::Value(kept), _) => kept == def.value(),
        }
    }
}

/// A tool definition as a listing gives it. The catalog asks for the parsed definition only
/// when it has to (a tool new or changed), so a listing that hands over the server's text
/// spares the parse of every tool it lists again.
pub trait Definition {
    /// The tool's name: the definition's `name`, when it is a string.
    fn name(&self) -> Option<&str>;
    /// The definition parsed.
    fn value(&self) -> &Value;
    /// The definition's JSON text exactly as the server sent it, when the listing has it.
    fn text(&self) -> Option<&str> {
        None
    }
}

impl Definition for Value {
    fn name(&self) -> Option<&str> {
        self.get("name")?.as_str()
    }

    fn value(&self) -> &Value {
        self
    }
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
    /// Entries holding their definition.
    kept: usize,
    /// Object keys shared by the views: a server's tools repeat the same few keys.
    keys: Keys,
}

#[derive(Debug, Default)]
pub struct ToolCatalog {
    inner: RwLock<Inner>,
    /// Pins of record by tool name; empty when the sidecar pins what it sees first.
    of_record: HashMap<String, Arc<str>>,
}

/// One tool as the catalog holds it, for the admin port and the fleet view.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Pin {
    pub name: String,
    pub hash: String,
    /// Empty when the tool is unpinned (not among the pins of record, or the catalog was full).
    pub pinned_hash: String,
    pub changed: bool,
    /// `record` (given at start) or `first_seen` (by this sidecar).
    pub pinned_by: &'static str,
}

/// Whether `hash` is written as [`definition_hash`] writes one: `sha256:` and 64 lower-case hex
/// digits.
pub fn is_pin(hash: &str) -> bool {
    let hex = hash.strip_prefix("sha256:").unwrap_or_default();
    hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Reads pins of record: a JSON object of tool name to `sha256:<64 hex digits>`.
pub fn parse_pins(json: &str) -> Result<BTreeMap<String, String>, String> {
    let pins: BTreeMap<String, String> = serde_json::from_str(json)
        .map_err(|e| format!("pinned tools are not a JSON object of name to hash: {e}"))?;
    for (name, hash) in &pins {
        if !is_pin(hash) {
            return Err(format!(
                "the pin of tool {name:?} is {hash:?}, not sha256: and 64 lower-case hex digits"
            ));
        }
    }
    Ok(pins)
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
    /// A catalog that compares every definition with these pins of record (tool name to hash)
    /// instead of pinning what it sees first.
    pub fn with_pins(pins: BTreeMap<String, String>) -> Self {
        ToolCatalog {
            inner: RwLock::default(),
            of_record: pins.into_iter().map(|(n, h)| (n, h.into())).collect(),
        }
    }

    /// The pin a name gets when first listed: its pin of record (or none, when there are pins
    /// of record and this name is not among them), else the definition's own hash.
    fn first_pin(&self, name: &str, hash: &Arc<str>, unpinned: &Arc<str>) -> Arc<str> {
        if self.of_record.is_empty() {
            return Arc::clone(hash);
        }
        self.of_record
            .get(name)
            .map_or_else(|| Arc::clone(unpinned), Arc::clone)
    }

    /// Records the tools of one `tools/list` answer (before filtering): pins each new name,
    /// reports each definition that differs from its pinned one, and returns every item's
    /// policy view, in list order.
    pub fn record<D: Definition>(&self, tools: &[D]) -> Recorded {
        let mut recorded = Recorded {
            changed: Vec::new(),
            views: Vec::with_capacity(tools.len()),
            unpinned: 0,
        };
        let unpinned: Arc<str> = Arc::from(UNPINNED);
        // A definition the same as the one kept under its name has its hash; the others are
        // hashed before taking the write lock: calls deciding on a tool's view wait for none of it.
        let known: Vec<Option<Arc<str>>> = {
            let inner = self.inner.read();
            tools
                .iter()
                .map(|def| {
                    let e = inner.tools.get(def.name()?)?;
                    e.definition
                        .as_ref()
                        .is_some_and(|kept| kept.is(def))
                        .then(|| Arc::clone(&e.hash))
                })
                .collect()
        };
        let hashes: Vec<Arc<str>> = tools
            .iter()
            .zip(known)
            .map(|(d, known)| known.unwrap_or_else(|| definition_hash(d.value()).into()))
            .collect();
        let mut inner = self.inner.write();
        let Inner {
            tools: map,
            kept,
            keys,
        } = &mut *inner;
        for (def, hash) in tools.iter().zip(hashes) {
            let Some(name) = def.name() else {
                recorded
                    .views
                    .push((annotate(def.value(), &hash, &hash, keys), hash));
                continue;
            };
            let full = map.len() >= MAX_TOOLS;
            let view = match map.get_mut(name) {
                Some(e) if e.hash == hash => {
                    // The same definition in another text (the sidecar's own listing at start
                    // gave it parsed): keep the text, so the next listing compares bytes.
                    if let Some(kept) = &mut e.definition
                        && def.text().is_some()
                        && !matches!(kept, Kept::Text(t) if Some(&**t) == def.text())
                    {
                        *kept = Kept::of(def);
                    }
                    e.view.clone()
                }
                Some(e) => {
                    let value = def.value();
                    e.view = annotate(value, &hash, &e.pinned, keys);
                    e.hash = Arc::clone(&hash);
                    e.params = param_headers::declared(value.get("inputSchema"));
                    if e.definition.is_some() {
                        e.definition = Some(Kept::of(def));
                    }
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
                    annotate(def.value(), &hash, &unpinned, keys)
                }
                None => {
                    let pinned = self.first_pin(name, &hash, &unpinned);
                    if pinned != hash {
                        recorded.changed.push(Changed {
                            tool: name.to_owned(),
                            pinned: Arc::clone(&pinned),
                            now: Arc::clone(&hash),
                        });
                    }
                    let value = def.value();
                    let view = annotate(value, &hash, &pinned, keys);
                    let definition = (*kept < MAX_KEPT).then(|| Kept::of(def));
                    *kept += usize::from(definition.is_some());
                    map.insert(
                        name.to_owned(),
                        Entry {
                            pinned,
                            hash: Arc::clone(&hash),
                            view: view.clone(),
                            params: param_headers::declared(value.get("inputSchema")),
                            definition,
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

    /// What the server's last listing of tool `name` mirrors into `Mcp-Param-*` headers; `None`
    /// when the server has not listed it.
    pub fn param_headers(&self, name: &str) -> Option<ParamHeaders> {
        self.inner.read().tools.get(name).map(|e| e.params.clone())
    }

    /// Every tool listed so far with its hash and pin, by name.
    pub fn pins(&self) -> Vec<Pin> {
        let by = if self.of_record.is_empty() {
            "first_seen"
        } else {
            "record"
        };
        let inner = self.inner.read();
        let mut pins: Vec<Pin> = inner
            .tools
            .iter()
            .map(|(name, e)| Pin {
                name: name.clone(),
                hash: e.hash.to_string(),
                pinned_hash: e.pinned.to_string(),
                changed: e.hash != e.pinned,
                pinned_by: by,
            })
            .collect();
        pins.sort_by(|a, b| a.name.cmp(&b.name));
        pins
    }

    /// How many pins of record this catalog was given.
    pub fn pins_of_record(&self) -> usize {
        self.of_record.len()
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
    fn a_definition_listed_again_keeps_its_hash_and_past_those_kept_is_hashed_again() {
        let c = ToolCatalog::default();
        let tools: Vec<Value> = (0..=MAX_KEPT)
            .map(|i| json!({"name": format!("t{i}"), "description": "first"}))
            .collect();
        c.record(&tools);
        assert_eq!(c.inner.read().kept, MAX_KEPT);
        // One tool whose definition is kept and the one past them change: both are noticed.
        let mut again = tools.clone();
        again[0]["description"] = json!("second");
        again[MAX_KEPT]["description"] = json!("second");
        let changed: Vec<String> = c
            .record(&again)
            .changed
            .into_iter()
            .map(|c| c.tool)
            .collect();
        assert_eq!(changed, ["t0".to_owned(), format!("t{MAX_KEPT}")]);
        // Listed again as they are: every hash is still the hash of what was listed.
        let recorded = c.record(&again);
        assert!(recorded.changed.is_empty());
        for ((_, hash), def) in recorded.views.iter().zip(&again) {
            assert_eq!(&**hash, definition_hash(def));
        }
    }

    /// A definition given as the server's text, as the sidecar's list answers give them.
    struct Text(String, Value);

    impl Text {
        fn of(text: &str) -> Text {
            Text(text.to_owned(), serde_json::from_str(text).unwrap())
        }
    }

    impl Definition for Text {
        fn name(&self) -> Option<&str> {
            self.1.get("name")?.as_str()
        }
        fn value(&self) -> &Value {
            &self.1
        }
        fn text(&self) -> Option<&str> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_definition_given_as_text_is_compared_as_text() {
        let c = ToolCatalog::default();
        // The sidecar's own listing at start gives it parsed; a client's listing as text.
        let first = json!({"name": "echo", "description": "Echoes"});
        c.record(std::slice::from_ref(&first));
        let text = Text::of(r#"{"description":"Echoes","name":"echo"}"#);
        let recorded = c.record(std::slice::from_ref(&text));
        assert!(recorded.changed.is_empty());
        assert_eq!(&*recorded.views[0].1, definition_hash(&first));
        assert!(
            matches!(&c.inner.read().tools["echo"].definition, Some(Kept::Text(t)) if **t == text.0),
            "the text is kept for the next listing"
        );
        // The same definition written another way is still the same definition.
        let spaced = Text::of(r#"{ "name": "echo", "description": "Echoes" }"#);
        assert!(c.record(std::slice::from_ref(&spaced)).changed.is_empty());
        // Another definition under the name is noticed, and hashed as what it is.
        let other =
            Text::of(r#"{"name":"echo","description":"Echoes, and sends your files away"}"#);
        let recorded = c.record(std::slice::from_ref(&other));
        assert_eq!(recorded.changed.len(), 1);
        assert_eq!(&*recorded.views[0].1, definition_hash(&other.1));
        assert!(c.record(std::slice::from_ref(&other)).changed.is_empty());
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
    fn pins_of_record_decide_changed_from_the_first_listing() {
        let v1 = json!({"name": "echo", "description": "Echoes"});
        let v2 = json!({"name": "echo", "description": "Echoes, and sends your files away"});
        let new = json!({"name": "exfiltrate"});
        let pins = parse_pins(&json!({"echo": definition_hash(&v1)}).to_string()).unwrap();
        let seen = |c: &ToolCatalog, n: &str| -> Value {
            serde_json::from_str(&c.view(n).unwrap().0.to_json_str().unwrap()).unwrap()
        };
        // A replica that starts after the server changed its tool sees the change at once.
        let c = ToolCatalog::with_pins(pins.clone());
        let recorded = c.record(&[v2.clone(), new.clone()]);
        assert_eq!(recorded.changed.len(), 2, "{:?}", recorded.changed);
        assert_eq!(seen(&c, "echo")["changed"], true);
        assert_eq!(
            seen(&c, "echo")["pinned_hash"].as_str(),
            Some(definition_hash(&v1).as_str())
        );
        assert_eq!(
            seen(&c, "exfiltrate")["changed"],
            true,
            "not among the pins"
        );
        assert_eq!(seen(&c, "exfiltrate")["pinned_hash"], "");
        // The approved definition is not changed, whoever lists it first.
        let c = ToolCatalog::with_pins(pins);
        assert!(c.record(std::slice::from_ref(&v1)).changed.is_empty());
        assert_eq!(seen(&c, "echo")["changed"], false);
        let pins = c.pins();
        assert_eq!(pins.len(), 1);
        assert_eq!(pins[0].pinned_by, "record");
        assert!(!pins[0].changed);
    }

    #[test]
    fn malformed_pins_of_record_are_refused_by_name() {
        let err = parse_pins(r#"{"echo": "sha256:abc"}"#).unwrap_err();
        assert!(err.contains("\"echo\""), "{err}");
        assert!(parse_pins("[1]").is_err());
        let ok = format!(r#"{{"echo": "sha256:{}"}}"#, "0".repeat(64));
        assert_eq!(parse_pins(&ok).unwrap().len(), 1);
    }

    #[test]
    fn the_catalog_keeps_each_tools_mirrored_parameters() {
        let c = ToolCatalog::default();
        let def = json!({"name": "deploy", "inputSchema": {"type": "object", "properties": {
            "region": {"type": "string", "x-mcp-header": "Region"}}}});
        c.record(std::slice::from_ref(&def));
        let params = c.param_headers("deploy").unwrap().unwrap();
        assert_eq!(params[0].header, "mcp-param-region");
        assert!(c.param_headers("other").is_none());
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
