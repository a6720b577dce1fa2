//! JSON into the policy engine's value type, directly.
//!
//! The engine's serde path copies every string twice and builds each object through a sorted
//! temporary; converting a server's tool definitions that way was most of the cost of a sidecar's
//! first `tools/list`. Here each string is one allocation, each object is built from serde_json's
//! already sorted map, and object keys can be shared through [`Keys`]: the keys of tool
//! definitions (`type`, `properties`, `description`, ...) repeat across every tool of a server.

use std::collections::{BTreeMap, HashSet};

use regorus::{Rc, Value as RegoValue};
use serde::Deserialize;
use serde_json::Value;

/// Distinct keys shared at most: past it, keys are allocated per object (a server cannot make the
/// table grow without bound).
const MAX_KEYS: usize = 4096;

/// Object keys shared between the values converted through this table (the default), or, for a
/// one-off conversion where sharing would only cost lookups, not shared ([`Keys::unshared`]).
#[derive(Debug)]
pub struct Keys {
    seen: HashSet<Rc<str>>,
    limit: usize,
}

impl Default for Keys {
    fn default() -> Self {
        Keys {
            seen: HashSet::new(),
            limit: MAX_KEYS,
        }
    }
}

impl Keys {
    /// A table that shares nothing: each key is allocated where it is used.
    pub fn unshared() -> Self {
        Keys {
            seen: HashSet::new(),
            limit: 0,
        }
    }

    /// The engine's string value for `key`, shared with every earlier use of the same key.
    pub fn key(&mut self, key: &str) -> RegoValue {
        if self.limit == 0 {
            return RegoValue::from(key);
        }
        if let Some(k) = self.seen.get(key) {
            return RegoValue::String(Rc::clone(k));
        }
        let k: Rc<str> = Rc::from(key);
        if self.seen.len() < self.limit {
            self.seen.insert(Rc::clone(&k));
        }
        RegoValue::String(k)
    }
}

/// `value` as the engine's value, keys shared through `keys`.
pub fn convert(value: &Value, keys: &mut Keys) -> RegoValue {
    match value {
        Value::Null => RegoValue::Null,
        Value::Bool(b) => RegoValue::Bool(*b),
        // The engine's own reading of a number (its precision rules, non-finite refused).
        Value::Number(_) => RegoValue::deserialize(value).unwrap_or(RegoValue::Null),
        Value::String(s) => RegoValue::String(Rc::from(s.as_str())),
        Value::Array(items) => {
            RegoValue::from(items.iter().map(|v| convert(v, keys)).collect::<Vec<_>>())
        }
        Value::Object(fields) => RegoValue::from(object(fields, keys)),
    }
}

/// The fields of a JSON object as the engine's map, keys shared through `keys`: the start of an
/// object a caller adds fields to before freezing it with `RegoValue::from`.
pub fn object(
    fields: &serde_json::Map<String, Value>,
    keys: &mut Keys,
) -> BTreeMap<RegoValue, RegoValue> {
    let mut map = BTreeMap::new();
    for (k, v) in fields {
        map.insert(keys.key(k), convert(v, keys));
    }
    map
}

/// `value` as the engine's value, for a one-off conversion (a request's arguments: no keys worth
/// sharing).
pub fn to_rego(value: &Value) -> RegoValue {
    convert(value, &mut Keys::unshared())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn converts_like_the_engines_own_reading() {
        let samples = [
            json!(null),
            json!(true),
            json!(-3),
            json!(18446744073709551615u64),
            json!(1.5),
            json!(1e300),
            json!("ünïcode ✓"),
            json!([]),
            json!({}),
            json!({"b": [1, {"z": null, "a": "x"}], "a": {"n": 0.1}, "": false}),
        ];
        for v in samples {
            let engine = RegoValue::deserialize(&v).unwrap();
            assert_eq!(to_rego(&v), engine, "{v}");
            assert_eq!(
                serde_json::from_str::<Value>(&to_rego(&v).to_json_str().unwrap()).unwrap(),
                v
            );
        }
    }

    #[test]
    fn keys_are_shared_up_to_the_limit() {
        let mut keys = Keys::default();
        let a = convert(&json!({"type": "object"}), &mut keys);
        let b = convert(&json!({"type": "string"}), &mut keys);
        let key_of = |v: &RegoValue| match v.as_object().unwrap().keys().next().unwrap() {
            RegoValue::String(s) => Rc::clone(s),
            other => panic!("not a string key: {other:?}"),
        };
        assert!(Rc::ptr_eq(&key_of(&a), &key_of(&b)));
        for i in 0..MAX_KEYS + 10 {
            keys.key(&format!("k{i}"));
        }
        assert_eq!(keys.seen.len(), MAX_KEYS);
        assert_eq!(
            keys.key("beyond the limit"),
            RegoValue::from("beyond the limit")
        );

        let mut none = Keys::unshared();
        assert_eq!(none.key("type"), RegoValue::from("type"));
        assert!(none.seen.is_empty(), "a one-off conversion keeps no table");
    }
}
