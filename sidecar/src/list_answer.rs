//! One list answer (`tools/list`, `prompts/list`, `resources/list`, `resources/templates/list`)
//! as the filters see it: its items in order, each with its name and its definition, and whether
//! the result must be marked private.
//!
//! An answer is read from the server's bytes without building it as a tree ([`Read`]): each
//! item is kept as the server's text and its name read alone; the definition is parsed only when
//! a filter needs it (a tool the catalog does not know in this text), and a filtered answer is
//! written from the server's own text of the items kept. A message of another shape (a batch, a
//! member given twice, a list that is not an array) is parsed whole, and its list taken out of
//! the parsed result ([`ListAnswer::take`]); both ways hand the filters
//! (`Interceptor::filter_list`) the same [`ListAnswer`].

use std::borrow::Cow;
use std::cell::OnceCell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::jsonrpc::id_key;
use mcp_guard_policy::catalog::Definition;
use mcp_guard_policy::mcp::List;

/// One item of a list answer.
pub struct ListItem<'a> {
    /// The member naming the item: `name`, or `uri` / `uriTemplate` for resources.
    field: &'static str,
    /// The item as the server wrote it, when read from its bytes.
    text: Option<&'a RawValue>,
    /// The name, read from `text` (an item given parsed has it in `value`).
    name: Option<Cow<'a, str>>,
    /// The item parsed: given, or parsed from `text` when first asked for.
    value: OnceCell<Value>,
}

impl<'a> ListItem<'a> {
    /// An item already parsed.
    pub fn parsed(list: List, value: Value) -> ListItem<'a> {
        ListItem {
            field: list.item_field(),
            text: None,
            name: None,
            value: OnceCell::from(value),
        }
    }

    /// The item's name (URI for resources), when it is a string.
    pub fn name(&self) -> Option<&str> {
        match self.text {
            Some(_) => self.name.as_deref(),
            None => self.value.get()?.get(self.field)?.as_str(),
        }
    }

    /// The name as the audit trail records it.
    pub fn display_name(&self) -> String {
        self.name().unwrap_or("(unnamed)").to_owned()
    }

    /// The item parsed.
    pub fn value(&self) -> &Value {
        self.value.get_or_init(|| {
            // The text was read as JSON and holds nothing a parse refuses (`needs_whole_parse`),
            // so it parses; `Null` is never reached.
            self.text
                .and_then(|t| serde_json::from_str(t.get()).ok())
                .unwrap_or(Value::Null)
        })
    }

    fn into_value(mut self) -> Value {
        self.value();
        self.value.take().unwrap_or(Value::Null)
    }
}

/// A tool of a `tools/list` answer, as the catalog records it.
impl Definition for ListItem<'_> {
    fn name(&self) -> Option<&str> {
        ListItem::name(self)
    }

    fn value(&self) -> &Value {
        ListItem::value(self)
    }

    fn text(&self) -> Option<&str> {
        self.text.map(RawValue::get)
    }
}

/// The items of one list answer, which filters remove items from, and what else they change.
pub struct ListAnswer<'a> {
    pub list: List,
    items: Vec<ListItem<'a>>,
    /// The server gave the result a `cacheScope` other than `"private"`.
    shared: bool,
    /// A filter asked for the result to be marked `cacheScope: "private"`.
    private: bool,
}

impl<'a> ListAnswer<'a> {
    /// `cache_scope` is the result's `cacheScope`, as the server gave it.
    fn new(list: List, items: Vec<ListItem<'a>>, cache_scope: Option<&Value>) -> Self {
        ListAnswer {
            list,
            items,
            shared: cache_scope.is_some_and(|s| s.as_str() != Some("private")),
            private: false,
        }
    }

    /// The items still in the answer, in order.
    pub fn items(&self) -> &[ListItem<'a>] {
        &self.items
    }

    /// Keeps the items whose flag is true (an item without a flag goes).
    pub fn retain(&mut self, keep: impl IntoIterator<Item = bool>) {
        let mut keep = keep.into_iter();
        self.items.retain(|_| keep.next().unwrap_or(false));
    }

    /// Removes every item.
    pub fn clear(&mut self) {
        self.items.clear();
    }

    /// Whether the server marked the result as one any caller may be served
    /// (`cacheScope` present and not `"private"`, MCP 2026-07-28).
    pub fn shared_by_server(&self) -> bool {
        self.shared
    }

    /// Marks the result `cacheScope: "private"`: it was decided for this caller.
    pub fn make_private(&mut self) {
        self.private = true;
    }
}

impl ListAnswer<'static> {
    /// The items of `list` taken out of a parsed `result`; `None` when it holds no such list (as
    /// an array). [`ListAnswer::restore`] puts what the filters left back.
    pub fn take(list: List, result: &mut Value) -> Option<ListAnswer<'static>> {
        let obj = result.as_object_mut()?;
        let scope = obj.get("cacheScope").cloned();
        let Value::Array(items) = obj.get_mut(list.field())? else {
            return None;
        };
        let items = std::mem::take(items)
            .into_iter()
            .map(|v| ListItem::parsed(list, v))
            .collect();
        Some(ListAnswer::new(list, items, scope.as_ref()))
    }

    /// Puts the items left back into the `result` they were taken from, and marks it private
    /// when a filter asked.
    pub fn restore(self, result: &mut Value) {
        let Some(obj) = result.as_object_mut() else {
            return;
        };
        if let Some(Value::Array(items)) = obj.get_mut(self.list.field()) {
            *items = self.items.into_iter().map(ListItem::into_value).collect();
        }
        if self.private {
            obj.insert("cacheScope".into(), Value::from("private"));
        }
    }
}

/// Members more than this in the message or its result and the message is parsed whole: each
/// member is checked against the others for a second of its name.
const MAX_MEMBERS: usize = 64;

/// A JSON-RPC answer read one level into its `result`: every member's text, in order; the
/// members of `result` that can hold a list, item by item. `None` from [`Read::of`] when the
/// message is of another shape; it is then parsed whole.
pub struct Read<'a> {
    members: Vec<(Cow<'a, str>, Member<'a>)>,
}

enum Member<'a> {
    Text(&'a RawValue),
    Result(Vec<(Cow<'a, str>, Member<'a>)>),
    /// A list of a result, with each item's name.
    Items(List, Vec<(&'a RawValue, Option<Cow<'a, str>>)>),
}

impl<'a> Read<'a> {
    /// Reads a single message whose `result` is an object, each member given once, each list
    /// member an array whose items name themselves once. `None` for anything else.
    pub fn of(body: &'a [u8]) -> Option<Read<'a>> {
        if needs_whole_parse(body) {
            return None;
        }
        let mut de = serde_json::Deserializer::from_slice(body);
        let members = Object { top: true }.deserialize(&mut de).ok()?;
        de.end().ok()?;
        Some(Read { members })
    }

    fn member(&self, key: &str) -> Option<&Member<'a>> {
        self.members
            .iter()
            .find_map(|(k, m)| (k == key).then_some(m))
    }

    /// The key of the request this answers ([`id_key`]), when it is an answer (a `result` or
    /// an `error`) with an id.
    pub fn answered(&self) -> Option<String> {
        let Some(Member::Text(id)) = self.member("id") else {
            return None;
        };
        if self.member("result").is_none() && self.member("error").is_none() {
            return None;
        }
        serde_json::from_str::<Value>(id.get())
            .ok()
            .map(|v| id_key(&v))
    }

    fn result(&self) -> Option<&[(Cow<'a, str>, Member<'a>)]> {
        match self.member("result")? {
            Member::Result(r) => Some(r),
            _ => None,
        }
    }

    /// The list a result is an answer to by its shape, as [`List::by_shape`] finds it.
    pub fn by_shape(&self) -> Option<List> {
        let result = self.result()?;
        List::ALL.into_iter().find(|l| {
            result
                .iter()
                .any(|(_, m)| matches!(m, Member::Items(found, _) if found == l))
        })
    }

    /// Whether the message has a `result`.
    pub fn has_result(&self) -> bool {
        self.result().is_some()
    }

    /// The items of `list` in the result, to be filtered; `None` when the result holds no such
    /// list.
    pub fn answer(&self, list: List) -> Option<ListAnswer<'a>> {
        let (items, scope) = result_parts(self.result()?, list)?;
        Some(ListAnswer::new(list, items, scope.as_ref()))
    }

    /// The message again, its list holding the items `answer` has left.
    pub fn write(&self, answer: &ListAnswer<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        write_members(&mut out, &self.members, answer, false);
        out
    }
}

/// Whether `body` may hold what reading it leaves unchecked but a whole parse refuses, and so
/// refuses the answer: a number beyond `f64`'s range (written with an exponent, or 309 digits in
/// a row) or an escaped UTF-16 surrogate (`\uD800` to `\uDFFF`, which must come in pairs). An
/// item holding one would be read with a definition that does not parse; such a body is parsed
/// whole instead, which decides it as before. The look is conservative (text inside a string
/// that looks like such a number counts too): a false alarm only costs the whole parse.
fn needs_whole_parse(body: &[u8]) -> bool {
    const RUN: usize = 309;
    // A digit followed by `e` or `E` anywhere: every pair looked at, no early exit, so that the
    // loop runs on vector instructions (an `e` in text is too common to search for one by one).
    // Most listings have none; those with one (a hash, a UUID in a string) are looked at closer.
    let mut digit_e = false;
    for (a, b) in body.iter().zip(body.iter().skip(1)) {
        digit_e |= a.is_ascii_digit() & ((b | 0x20) == b'e');
    }
    let exponent = digit_e && memchr::memchr2_iter(b'e', b'E', body).any(|i| is_exponent(body, i));
    let surrogate = memchr::memchr_iter(b'\\', body).any(|i| {
        body.get(i + 1) == Some(&b'u')
            && matches!(body.get(i + 2), Some(b'd' | b'D'))
            && matches!(
                body.get(i + 3),
                Some(b'8'..=b'9' | b'a'..=b'f' | b'A'..=b'F')
            )
    });
    // Every run of RUN digits covers one position `RUN - 1` more than a multiple of RUN.
    exponent
        || surrogate
        || (RUN - 1..body.len()).step_by(RUN).any(|i| {
            let left = body[..i]
                .iter()
                .rev()
                .take_while(|b| b.is_ascii_digit())
                .count();
            let right = body[i..].iter().take_while(|b| b.is_ascii_digit()).count();
            left + right >= RUN
        })
}

/// Whether the `e` at `i` is the exponent of a number written as JSON writes one: digits (with
/// a fraction, a sign) after a delimiter, the `e`, a sign, digits, then a delimiter. So `4e5d`
/// in a UUID or `3e` in a hash is not one.
fn is_exponent(body: &[u8], i: usize) -> bool {
    let delimiter = |b: Option<&u8>| {
        b.is_none_or(|b| {
            matches!(b, b':' | b',' | b'[' | b']' | b'{' | b'}') || b.is_ascii_whitespace()
        })
    };
    let digits = |bytes: &mut dyn Iterator<Item = &u8>| {
        let mut n = 0;
        let mut next = None;
        for b in bytes {
            if b.is_ascii_digit() {
                n += 1;
            } else {
                next = Some(*b);
                break;
            }
        }
        (n, next)
    };
    // Back: digits, maybe `.` and digits, maybe `-`, then a delimiter.
    let mut back = body[..i].iter().rev();
    let (n, mut before) = digits(&mut back);
    if n == 0 {
        return false;
    }
    if before == Some(b'.') {
        let (m, b) = digits(&mut back);
        if m == 0 {
            return false;
        }
        before = b;
    }
    if before == Some(b'-') {
        before = back.next().copied();
    }
    if !delimiter(before.as_ref()) {
        return false;
    }
    // Forward: maybe a sign, digits, then a delimiter.
    let mut ahead = body[i + 1..].iter().peekable();
    let _sign = ahead.next_if(|b| matches!(b, b'+' | b'-'));
    let (n, after) = digits(&mut ahead);
    n > 0 && delimiter(after.as_ref())
}

/// The items of `list` in a result, and the result's `cacheScope`.
fn result_parts<'a>(
    result: &[(Cow<'a, str>, Member<'a>)],
    list: List,
) -> Option<(Vec<ListItem<'a>>, Option<Value>)> {
    let mut items = None;
    let mut scope = None;
    for (key, member) in result {
        match member {
            Member::Items(l, found) if *l == list => {
                items = Some(
                    found
                        .iter()
                        .map(|(text, name)| ListItem {
                            field: list.item_field(),
                            text: Some(text),
                            name: name.clone(),
                            value: OnceCell::new(),
                        })
                        .collect(),
                );
            }
            Member::Text(t) if key == "cacheScope" => scope = serde_json::from_str(t.get()).ok(),
            _ => {}
        }
    }
    Some((items?, scope))
}

/// Writes an object's members again: in the result (`in_result`), the list holding the items
/// of `answer`, and `cacheScope` made `"private"` when a filter asked.
fn write_members(
    out: &mut Vec<u8>,
    members: &[(Cow<'_, str>, Member<'_>)],
    answer: &ListAnswer,
    in_result: bool,
) {
    let private = in_result && answer.private;
    let mut scope_written = false;
    out.push(b'{');
    for (i, (k, member)) in members.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_key(out, k);
        match member {
            Member::Text(_) if private && k == "cacheScope" => {
                scope_written = true;
                out.extend_from_slice(b"\"private\"");
            }
            Member::Text(t) => out.extend_from_slice(t.get().as_bytes()),
            Member::Result(r) => write_members(out, r, answer, true),
            Member::Items(l, _) if *l == answer.list => {
                out.push(b'[');
                for (i, item) in answer.items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    match item.text {
                        Some(t) => out.extend_from_slice(t.get().as_bytes()),
                        // Writing a `Value` into a `Vec` cannot fail.
                        None => {
                            let _ = serde_json::to_writer(&mut *out, item.value());
                        }
                    }
                }
                out.push(b']');
            }
            Member::Items(_, items) => {
                out.push(b'[');
                for (i, (t, _)) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    out.extend_from_slice(t.get().as_bytes());
                }
                out.push(b']');
            }
        }
    }
    if private && !scope_written {
        if !members.is_empty() {
            out.push(b',');
        }
        write_key(out, "cacheScope");
        out.extend_from_slice(b"\"private\"");
    }
    out.push(b'}');
}

fn write_key(out: &mut Vec<u8>, key: &str) {
    // Writing a string into a `Vec` cannot fail.
    let _ = serde_json::to_writer(&mut *out, key);
    out.push(b':');
}

/// A key or string, borrowed from the input unless it had escapes.
struct Str<'a>(Cow<'a, str>);

impl<'de> de::Deserialize<'de> for Str<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Str<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

/// An object's members, each once. The message (`top`) has its `result` read one level
/// further; in the result, each member that can hold a list is read item by item.
struct Object {
    top: bool,
}

impl<'de> DeserializeSeed<'de> for Object {
    type Value = Vec<(Cow<'de, str>, Member<'de>)>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Object {
    type Value = Vec<(Cow<'de, str>, Member<'de>)>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut members: Self::Value = Vec::new();
        while let Some(Str(key)) = map.next_key()? {
            if members.len() >= MAX_MEMBERS || members.iter().any(|(k, _)| *k == key) {
                return Err(de::Error::custom(
                    "a member given twice, or too many members",
                ));
            }
            let list = (!self.top)
                .then(|| List::ALL.into_iter().find(|l| l.field() == key))
                .flatten();
            let member = if self.top && key == "result" {
                Member::Result(map.next_value_seed(Object { top: false })?)
            } else if let Some(list) = list {
                Member::Items(list, map.next_value_seed(Items(list))?)
            } else {
                Member::Text(map.next_value()?)
            };
            members.push((key, member));
        }
        Ok(members)
    }
}

/// A list's items, each with its name.
struct Items(List);

impl<'de> DeserializeSeed<'de> for Items {
    type Value = Vec<(&'de RawValue, Option<Cow<'de, str>>)>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Items {
    type Value = Vec<(&'de RawValue, Option<Cow<'de, str>>)>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(text) = seq.next_element::<&'de RawValue>()? {
            let name = name_of(text, self.0.item_field()).map_err(de::Error::custom)?;
            items.push((text, name));
        }
        Ok(items)
    }
}

/// The string member `field` of an item; `None` when the item is not an object or the member
/// is missing or not a string. An item naming itself twice is refused: it is parsed whole.
fn name_of<'de>(item: &'de RawValue, field: &'static str) -> Result<Option<Cow<'de, str>>, String> {
    struct Name(&'static str);
    impl<'de> Visitor<'de> for Name {
        type Value = Option<Cow<'de, str>>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a list item")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut name: Option<Option<Cow<'de, str>>> = None;
            while let Some(Str(key)) = map.next_key()? {
                if key != self.0 {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
                if name.is_some() {
                    return Err(de::Error::custom("an item names itself twice"));
                }
                let value: &'de RawValue = map.next_value()?;
                name = Some(
                    serde_json::from_str::<Str<'de>>(value.get())
                        .ok()
                        .map(|s| s.0),
                );
            }
            Ok(name.flatten())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(None)
        }
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }
    let mut de = serde_json::Deserializer::from_str(item.get());
    de.deserialize_any(Name(field)).map_err(|e| e.to_string())
}

/// For tests and fuzzing: whether two answers are the same message to a JSON reader. As `==`,
/// but a number written again may read back one rounding step off: serde_json reads long
/// numbers quickly rather than exactly, so the parsed answer written again can differ in the
/// last place from the server's own text, which a read answer passes on.
#[cfg(any(test, feature = "fuzzing"))]
pub fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            x == y
                || x.as_f64().zip(y.as_f64()).is_some_and(|(x, y)| {
                    (x - y).abs() <= 4.0 * f64::EPSILON * x.abs().max(y.abs())
                })
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_json(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => a == b,
    }
}

/// For tests and fuzzing: [`same_json`] on two rewrites of one answer (`None`: passed on as it
/// came), either of which may not be JSON (then compared as bytes).
#[cfg(any(test, feature = "fuzzing"))]
pub fn same_rewrite(a: Option<&[u8]>, b: Option<&[u8]>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => match (
            serde_json::from_slice::<Value>(a),
            serde_json::from_slice::<Value>(b),
        ) {
            (Ok(x), Ok(y)) => same_json(&x, &y),
            _ => a == b,
        },
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_only_a_whole_parse_checks_is_looked_for_closely() {
        let whole = [
            r#"{"x":1e400}"#,
            r#"{"x": -2.5E+400 }"#,
            r#"{"x":[1,2e-3]}"#,
            r#"{"d":"\ud800"}"#,
            // Conservative: text in a string written like a number.
            r#"{"d":"limit: 1e5, or less"}"#,
        ];
        for body in whole {
            assert!(needs_whole_parse(body.as_bytes()), "{body}");
        }
        let read = [
            r#"{"id":"3f2e4e5d-8c1b-4e2a-9d3e-0a1b2c3d4e5f","x":1.5,"y":-3}"#,
            r#"{"description":"Echoes the text, 2 entries, v2e","pin":"sha256:9e3e"}"#,
            r#"{"d":"\ud83d\ude00","e":"\\ud800 is written with its backslash escaped"}"#,
        ];
        for body in read {
            let escaped_backslash = body.contains(r"\\ud8");
            assert_eq!(
                needs_whole_parse(body.as_bytes()),
                escaped_backslash,
                "{body}"
            );
        }
    }
}
