//! A bundle's decisions remembered for the inputs that repeat.
//!
//! Rego has no side effects, and a bundle's data is fixed when it is loaded. So when every
//! function the bundle calls is deterministic (no clock, no randomness, no network, no runtime
//! environment, no output), a decision depends on the input document alone, and on the input
//! only through the subtrees the bundle reads ([`crate::reads`]). Two inputs that agree on every
//! one of them get the same decision: an agent calling a tool again with the same arguments,
//! with a refreshed token, in another session or under another name the rules never read, is
//! given the decision taken for the first call, without an evaluation.
//!
//! The key of an input is what each read sees of it, one line per read in the bundle's fixed
//! order of reads: the JSON of the value, or that there is none ([`Keys::of`]). Input documents
//! are built from JSON (no sets), so the JSON text of a value tells it from every other value a
//! rule could tell it from.
//!
//! In doubt, nothing is remembered: a bundle that calls any function not known
//! to be deterministic (`time.now_ns`, `rand.intn`, `http.send`, `print`, ...), or a function this
//! module cannot name, remembers nothing ([`impure_call`] says which call, and the `policy loaded`
//! log line says so). A failed evaluation is never remembered. The memo belongs to one compiled
//! bundle: a reload starts with none.

use std::collections::{BTreeSet, HashMap};

use parking_lot::Mutex;
use regorus::Value as RegoValue;
use regorus::unstable::{Rule, RuleHead};

use crate::builtins::{DETERMINISTIC, NOT_DETERMINISTIC};
use crate::reads::{self, InputReads};

/// Decisions remembered at most; the memo starts over when full.
pub const MAX_ENTRIES: usize = 1_024;

/// The longest key remembered, in bytes: an input whose reads are longer (a call with large
/// arguments, for a policy that reads them) is decided every time, so a few large inputs cannot
/// hold megabytes.
pub const MAX_KEY_BYTES: usize = 4_096;

/// Words that may stand before a parenthesis without naming a function.
const KEYWORDS: &[&str] = &[
    "as", "contains", "else", "every", "if", "in", "not", "some", "with",
];

/// The first call in `modules` that is not known to be deterministic, by the name it is called
/// with; `None` when every call is a pure builtin or a function the modules define themselves.
/// A module that cannot be read at all is named as such.
pub fn impure_call<'a>(
    modules: impl IntoIterator<Item = (&'a str, &'a str)> + Clone,
) -> Option<String> {
    let mut own = BTreeSet::new();
    for (file, text) in modules.clone() {
        match own_functions(file, text) {
            Some(names) => own.extend(names),
            None => return Some(format!("{file} (not parsed)")),
        }
    }
    let never = |name: &str| {
        NOT_DETERMINISTIC
            .iter()
            .any(|n| name == *n || (n.ends_with('.') && name.starts_with(n)))
    };
    let known = |name: &str| {
        let last = name.rsplit('.').next().unwrap_or_default();
        !never(name) && (DETERMINISTIC.contains(&name) || own.contains(last))
    };
    for (file, text) in modules {
        let Ok(names) = reads::names(file, text) else {
            return Some(format!("{file} (not parsed)"));
        };
        // Named at all, even without a call (`with f as time.now_ns`): not deterministic.
        if let Some(name) = names.mentioned.into_iter().find(|n| never(n)) {
            return Some(name);
        }
        let calls = names
            .calls
            .into_iter()
            .filter(|c| !KEYWORDS.contains(&c.as_str()));
        // A function replaced for one expression is replaced by a literal, or by a function
        // that must itself be known.
        let replacements = names.replacements.into_iter().flatten();
        if let Some(name) = calls.chain(replacements).find(|n| !known(n)) {
            return Some(name);
        }
    }
    None
}

/// The last name of every function (a rule with arguments) a module defines; `None` when it does
/// not parse (the engine has refused it then).
fn own_functions(file: &str, text: &str) -> Option<Vec<String>> {
    let (_, module) = crate::terms::parse(file, text)?;
    let mut names = Vec::new();
    for rule in &module.policy {
        if let Rule::Spec {
            head: RuleHead::Func { refr, .. },
            ..
        } = &**rule
        {
            let head = refr.span().text();
            names.push(head.rsplit('.').next().unwrap_or(head).trim().to_owned());
        }
    }
    Some(names)
}

/// What rules reading some parts of the input can see of an input document: the key two inputs
/// share exactly when no such rule can tell them apart. Built once per bundle: the reads as a tree
/// of field names, so that keying an input visits each field it needs once and writes JSON.
pub struct Keys {
    /// The reads from the document's root; `None`: the whole input is read.
    root: Option<Node>,
}

/// A field of the input some read goes through: the fields read below it, or none when a read
/// ends here (no read ends above another, [`InputReads`] keeps the shortest).
#[derive(Default)]
struct Node {
    fields: Vec<Field>,
    /// The reads that end at or below this node.
    reads: usize,
}

struct Field {
    name: Box<str>,
    /// The name as the engine's value, for a lookup in a large object.
    key: RegoValue,
    node: Node,
}

/// Objects up to this size are searched field by field; larger ones by the engine's lookup.
const SCAN: usize = 16;

impl Keys {
    pub fn new(reads: &InputReads) -> Self {
        let Some(paths) = reads.paths() else {
            return Keys { root: None };
        };
        let mut root = Node::default();
        for path in paths {
            let mut node = &mut root;
            node.reads += 1;
            for name in path {
                let at = match node.fields.iter().position(|f| *f.name == **name) {
                    Some(at) => at,
                    None => {
                        node.fields.push(Field {
                            name: name.as_str().into(),
                            key: RegoValue::from(name.as_str()),
                            node: Node::default(),
                        });
                        node.fields.len() - 1
                    }
                };
                node = &mut node.fields[at].node;
                node.reads += 1;
            }
        }
        Keys { root: Some(root) }
    }

    /// What each read sees of `input`: one line per read, in the fixed order of the reads, `=`
    /// and the JSON of the value where it ends, or `!` when there is none (a field on the way is
    /// missing or not an object: the read is undefined either way). Line `i` is read `i`'s, so
    /// two inputs have one key exactly when every read sees the same of both. `None` when it is
    /// longer than [`MAX_KEY_BYTES`].
    pub fn of(&self, input: &RegoValue) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(256);
        match &self.root {
            // A bundle that reads nothing of the input decides the same on every input.
            Some(root) if root.fields.is_empty() => {}
            Some(root) => seen(&mut out, Some(input), root)?,
            None => serde_json::to_writer(&mut out, input).ok()?,
        }
        (out.len() <= MAX_KEY_BYTES).then_some(out)
    }
}

/// Writes what each read below `node` sees of `value` (`None`: undefined), one line per read
/// (see [`Keys::of`]).
fn seen(out: &mut Vec<u8>, value: Option<&RegoValue>, node: &Node) -> Option<()> {
    if node.fields.is_empty() {
        match value {
            Some(v) => {
                out.push(b'=');
                serde_json::to_writer(&mut *out, v).ok()?;
            }
            None => out.push(b'!'),
        }
        out.push(b'\n');
    } else if let Some(object) = value.and_then(|v| v.as_object().ok()) {
        for field in &node.fields {
            let found = if object.len() <= SCAN {
                object
                    .iter()
                    .find(|(k, _)| k.as_string().is_ok_and(|k| **k == *field.name))
                    .map(|(_, v)| v)
            } else {
                object.get(&field.key)
            };
            seen(out, found, &field.node)?;
        }
    } else {
        for _ in 0..node.reads {
            out.extend_from_slice(b"!\n");
        }
    }
    (out.len() <= MAX_KEY_BYTES).then_some(())
}

/// Answers of one compiled bundle (decisions, the caller terms' values), by what the rules that
/// gave them read of their input.
pub(crate) struct Memo<V> {
    keys: Keys,
    entries: Mutex<HashMap<Vec<u8>, V>>,
}

impl<V: Clone> Memo<V> {
    /// A memo for rules that read `reads` and call only deterministic functions (for a bundle,
    /// the caller checks with [`impure_call`]).
    pub(crate) fn new(reads: &InputReads) -> Self {
        Memo {
            keys: Keys::new(reads),
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The answer remembered for an input the rules cannot tell from `input`, or else
    /// `evaluate`'s, remembered when it succeeds.
    pub(crate) fn get_or_evaluate<E>(
        &self,
        input: RegoValue,
        evaluate: impl FnOnce(RegoValue) -> Result<V, E>,
    ) -> Result<V, E> {
        let key = self.keys.of(&input);
        if let Some(value) = key.as_deref().and_then(|k| self.get(k)) {
            return Ok(value);
        }
        let value = evaluate(input)?;
        if let Some(key) = key {
            self.insert(key, &value);
        }
        Ok(value)
    }

    fn get(&self, key: &[u8]) -> Option<V> {
        self.entries.lock().get(key).cloned()
    }

    fn insert(&self, key: Vec<u8>, value: &V) {
        let mut entries = self.entries.lock();
        if entries.len() >= MAX_ENTRIES {
            entries.clear();
        }
        entries.insert(key, value.clone());
    }

    /// Answers remembered now.
    pub(crate) fn len(&self) -> usize {
        self.entries.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Decision;

    fn impure(text: &str) -> Option<String> {
        impure_call([("t.rego", text)])
    }

    #[test]
    fn pure_builtins_and_own_functions_are_deterministic() {
        let text = r#"package mcp.authz
import rego.v1
import data.lib
allow if startswith(input.request.tool, "ticket_")
allow if has_role("admin")
allow if lib.util.ok(input.subject)
has_role(r) if r in input.subject.roles
ok(x) := true if x
deny contains sprintf("%s", [input.request.tool]) if not (count(input.subject.roles) > 0)
# time.now_ns() in a comment is no call
deny contains "time.now_ns()" if false
"#;
        assert_eq!(impure(text), None);
    }

    #[test]
    fn a_clock_randomness_output_or_unknown_call_turns_remembering_off() {
        for (call, expected) in [
            ("time.now_ns()", "time.now_ns"),
            ("time.clock([0, \"UTC\"])", "time.clock"),
            ("rand.intn(\"x\", 10)", "rand.intn"),
            ("uuid.rfc4122(\"x\")", "uuid.rfc4122"),
            ("http.send({})", "http.send"),
            ("opa.runtime()", "opa.runtime"),
            ("print(1)", "print"),
            ("trace(\"x\")", "trace"),
            ("mystery(1)", "mystery"),
        ] {
            let text = format!("package mcp.authz\nimport rego.v1\nallow if {call}\n");
            assert_eq!(impure(&text).as_deref(), Some(expected), "{call}");
        }
        // A function of the bundle's own cannot stand in for one that is never deterministic.
        let text =
            "package mcp.authz\nimport rego.v1\nnow_ns(x) := x\nallow if time.now_ns() > 0\n";
        assert_eq!(impure(text).as_deref(), Some("time.now_ns"));
        let text = "package mcp.authz\nimport rego.v1\nprint(x) := x\nallow if print(1)\n";
        assert_eq!(impure(text).as_deref(), Some("print"));
    }

    #[test]
    fn a_function_replaced_for_one_expression_must_be_deterministic_too() {
        let bundle = |body: &str| {
            format!(
                "package mcp.authz\nimport rego.v1\nf(x) := x\ng(x) := x\nallow if {{\n\t{body}\n}}\n"
            )
        };
        for (body, expected) in [
            ("f(1) with f as time.now_ns", Some("time.now_ns")),
            ("f(1) with f as mystery", Some("mystery")),
            ("f(1) with f as g", None),
            ("f(1) with f as 2", None),
            ("input.a with input as {\"a\": 1}", None),
            ("input.a with input.subject as data.fixtures.alice", None),
        ] {
            assert_eq!(impure(&bundle(body)).as_deref(), expected, "{body}");
        }
    }

    #[test]
    fn keys_hold_what_the_reads_see_and_nothing_else() {
        let memo: Memo<Decision> = Memo::new(&InputReads::of_paths(vec![
            vec!["subject".into(), "roles".into()],
            vec!["request".into(), "arguments".into()],
        ]));
        let doc = |roles: &str, args: &str, sub: &str| {
            RegoValue::from_json_str(&format!(
                r#"{{"subject": {{"sub": "{sub}", "roles": {roles}}}, "request": {{"arguments": {args}, "session_id": "{sub}"}}}}"#
            ))
            .expect("json")
        };
        let a = memo.keys.of(&doc(r#"["x"]"#, r#"{"n": 1}"#, "alice"));
        assert!(a.is_some());
        assert_eq!(a, memo.keys.of(&doc(r#"["x"]"#, r#"{"n": 1}"#, "bob")));
        assert_ne!(a, memo.keys.of(&doc(r#"["y"]"#, r#"{"n": 1}"#, "alice")));
        assert_ne!(a, memo.keys.of(&doc(r#"["x"]"#, r#"{"n": "1"}"#, "alice")));
        assert_ne!(a, memo.keys.of(&doc(r#"["x"]"#, r#"{}"#, "alice")));
        // A bundle that reads nothing of the input decides alike on every input.
        let nothing = Keys::new(&InputReads::of_paths(Vec::new()));
        assert_eq!(
            nothing.of(&doc(r#"["x"]"#, r#"{}"#, "alice")),
            nothing.of(&doc(r#"["y"]"#, r#"{"n": 2}"#, "bob"))
        );
        let long = format!(r#"{{"text": "{}"}}"#, "x".repeat(MAX_KEY_BYTES));
        assert_eq!(memo.keys.of(&doc(r#"["x"]"#, &long, "alice")), None);
    }

    #[test]
    fn a_key_has_one_line_per_read_whatever_is_missing_on_the_way() {
        let keys = Keys::new(&InputReads::of_paths(vec![
            vec!["f".into(), "a".into()],
            vec!["f".into(), "b".into()],
            vec!["g".into()],
        ]));
        let key = |json: &str| {
            let k = keys.of(&RegoValue::from_json_str(json).expect("json"));
            String::from_utf8(k.expect("short")).expect("utf-8")
        };
        // `f.a` and `f.b` are undefined in all three: one key.
        let undefined = key(r#"{"g": 1}"#);
        assert_eq!(undefined, "!\n!\n=1\n");
        assert_eq!(key(r#"{"f": {}, "g": 1}"#), undefined);
        assert_eq!(key(r#"{"f": "text", "g": 1}"#), undefined);
        // Any read seeing something else is another key, however the lines would shift.
        assert_ne!(key(r#"{"f": {"b": 1}}"#), key(r#"{"f": {"a": 1}}"#));
        assert_ne!(
            key(r#"{"f": {"a": 1}, "g": 1}"#),
            key(r#"{"f": {"b": 1}, "g": 1}"#)
        );
        assert_eq!(key(r#"{"f": {"a": 1, "x": 2}}"#), "=1\n!\n!\n");
    }

    #[test]
    fn a_full_memo_starts_over() {
        let memo: Memo<Decision> = Memo::new(&InputReads::whole());
        let d = Decision {
            allow: true,
            reasons: Vec::new(),
            redact: Vec::new(),
            limits: Vec::new(),
        };
        for i in 0..MAX_ENTRIES {
            memo.insert(i.to_string().into_bytes(), &d);
        }
        assert_eq!(memo.len(), MAX_ENTRIES);
        memo.insert(b"one more".to_vec(), &d);
        assert_eq!(memo.len(), 1);
        assert_eq!(memo.get(b"one more"), Some(d));
        assert_eq!(memo.get(b"0"), None);
    }
}
