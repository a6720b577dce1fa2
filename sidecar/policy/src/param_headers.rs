//! The tool arguments MCP 2026-07-28 mirrors into `Mcp-Param-{Name}` request headers: a tool's
//! `inputSchema` marks a property with `"x-mcp-header": "Region"`, and a client calling the tool
//! sends the argument's value as `Mcp-Param-Region` too, so that an intermediary can route on it
//! without reading the body. Whoever acts on the body must check that the two agree.
//!
//! The rules, as the transport specification states them:
//! * an annotation counts only on a property reached from the schema's root through `properties`
//!   keys alone, of type `string`, `integer` or `boolean`, with an HTTP token as its name, unique
//!   ignoring case; a schema with any other annotation is invalid (clients drop the tool) and
//!   nothing of it is enforced;
//! * an absent or `null` argument has no header; a present one must have it;
//! * a value wrapped as `=?base64?…?=` is decoded before it is compared; integers compare as
//!   numbers (`42` and `42.0` agree).
//!
//! This module reads schemas and compares values; reading the headers is the proxy's part.

use std::sync::Arc;

use serde_json::{Map, Value};

/// The JSON type of an annotated property.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamType {
    String,
    Integer,
    Boolean,
}

/// One annotated property: the header it is mirrored into, and where its value sits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamHeader {
    /// The header's name as the schema writes it after `Mcp-Param-` (e.g. `Region`).
    pub name: String,
    /// The full header name, lower-cased as HTTP/2 and `http::HeaderMap` carry it.
    pub header: String,
    /// The `properties` keys from the arguments object to the value.
    pub path: Vec<String>,
    pub ty: ParamType,
}

/// What a tool's schema declares: its mirrored parameters, or why its annotations are invalid.
pub type ParamHeaders = Result<Arc<[ParamHeader]>, Arc<str>>;

/// The annotated properties of an `inputSchema`, or why one of its annotations is invalid.
pub fn declared(input_schema: Option<&Value>) -> ParamHeaders {
    let mut found = Vec::new();
    if let Some(schema) = input_schema {
        walk(schema, Some(Vec::new()), &mut found, 0).map_err(Arc::<str>::from)?;
    }
    let mut seen: Vec<&str> = Vec::with_capacity(found.len());
    for p in &found {
        if seen.contains(&p.header.as_str()) {
            return Err(format!(
                "x-mcp-header {:?} is declared twice (ignoring case)",
                p.name
            )
            .into());
        }
        seen.push(&p.header);
    }
    Ok(found.into())
}

/// Schema keywords whose value is one subschema, a list of them, or a map of them. Crossing any
/// of them leaves the chain of `properties` keys: an annotation below is invalid.
const ONE: [&str; 11] = [
    "items",
    "contains",
    "unevaluatedItems",
    "additionalProperties",
    "propertyNames",
    "unevaluatedProperties",
    "not",
    "if",
    "then",
    "else",
    "contentSchema",
];
const LIST: [&str; 4] = ["allOf", "anyOf", "oneOf", "prefixItems"];
const MAP: [&str; 4] = [
    "patternProperties",
    "dependentSchemas",
    "$defs",
    "definitions",
];

/// Deepest schema nesting looked at; a deeper schema is refused as invalid rather than walked.
const MAX_DEPTH: usize = 64;

/// Walks one schema position; `path` is its chain of `properties` keys, `None` once off it.
fn walk(
    schema: &Value,
    path: Option<Vec<String>>,
    found: &mut Vec<ParamHeader>,
    depth: usize,
) -> Result<(), String> {
    let Value::Object(s) = schema else {
        return Ok(());
    };
    if depth > MAX_DEPTH {
        return Err(format!("the schema nests deeper than {MAX_DEPTH} levels"));
    }
    if let Some(name) = s.get("x-mcp-header") {
        found.push(annotation(s, name, path.as_deref())?);
    }
    if let Some(Value::Object(props)) = s.get("properties") {
        for (key, sub) in props {
            let below = path.as_ref().map(|p| {
                let mut p = p.clone();
                p.push(key.clone());
                p
            });
            walk(sub, below, found, depth + 1)?;
        }
    }
    for key in ONE {
        if let Some(sub) = s.get(key) {
            walk(sub, None, found, depth + 1)?;
        }
    }
    for key in LIST {
        if let Some(Value::Array(subs)) = s.get(key) {
            for sub in subs {
                walk(sub, None, found, depth + 1)?;
            }
        }
    }
    for key in MAP {
        if let Some(Value::Object(subs)) = s.get(key) {
            for sub in subs.values() {
                walk(sub, None, found, depth + 1)?;
            }
        }
    }
    Ok(())
}

/// One `x-mcp-header` annotation, checked.
fn annotation(
    s: &Map<String, Value>,
    name: &Value,
    path: Option<&[String]>,
) -> Result<ParamHeader, String> {
    let path = match path {
        Some(p) if !p.is_empty() => p,
        _ => {
            return Err(
                "x-mcp-header sits where no chain of `properties` keys reaches it".to_owned(),
            );
        }
    };
    let at = path.join(".");
    let Value::String(name) = name else {
        return Err(format!("property {at:?}: x-mcp-header must be a string"));
    };
    if name.is_empty() || !name.bytes().all(is_tchar) {
        return Err(format!(
            "property {at:?}: x-mcp-header {name:?} is not an HTTP token"
        ));
    }
    let ty = match s.get("type").and_then(Value::as_str) {
        Some("string") => ParamType::String,
        Some("integer") => ParamType::Integer,
        Some("boolean") => ParamType::Boolean,
        other => {
            return Err(format!(
                "property {at:?}: x-mcp-header is only allowed on string, integer or boolean properties, not {}",
                other.unwrap_or("a property without one type")
            ));
        }
    };
    Ok(ParamHeader {
        header: format!("mcp-param-{}", name.to_ascii_lowercase()),
        name: name.clone(),
        path: path.to_vec(),
        ty,
    })
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The argument at `path`, when present and not `null`.
pub fn argument<'a>(arguments: Option<&'a Value>, path: &[String]) -> Option<&'a Value> {
    let mut node = arguments?;
    for key in path {
        node = node.as_object()?.get(key)?;
    }
    (!node.is_null()).then_some(node)
}

/// Whether a decoded header value agrees with the argument it mirrors.
pub fn agrees(ty: ParamType, argument: &Value, header: &str) -> bool {
    match argument {
        Value::String(s) => s == header,
        Value::Bool(b) => header == if *b { "true" } else { "false" },
        Value::Number(n) if ty == ParamType::Integer => same_integer(n, header),
        Value::Number(n) => n.to_string() == header,
        _ => false,
    }
}

/// Whether a number of the body and a decimal header value are the same integer: `42`, `42.0`
/// and `42.000` agree; `4.2e1` and `42.5` do not. Compared as digits, never through a float.
fn same_integer(n: &serde_json::Number, header: &str) -> bool {
    let Some(body) = integral_digits(&n.to_string()) else {
        return false;
    };
    integral_digits(header).is_some_and(|h| h == body)
}

/// A canonical decimal's integer part (sign kept, leading zeros dropped) when its fraction is
/// all zeros; `None` otherwise (an exponent, a bare `42.`).
fn integral_digits(s: &str) -> Option<String> {
    let (neg, digits) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    if whole.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !fraction.bytes().all(|b| b == b'0')
        || (digits.contains('.') && fraction.is_empty())
    {
        return None;
    }
    let whole = whole.trim_start_matches('0');
    let whole = if whole.is_empty() { "0" } else { whole };
    Some(if neg && whole != "0" {
        format!("-{whole}")
    } else {
        whole.to_owned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn names(h: &ParamHeaders) -> Vec<(String, Vec<String>)> {
        h.as_ref()
            .unwrap()
            .iter()
            .map(|p| (p.header.clone(), p.path.clone()))
            .collect()
    }

    #[test]
    fn annotations_on_properties_chains_are_found() {
        let schema = json!({"type": "object", "properties": {
            "region": {"type": "string", "x-mcp-header": "Region"},
            "n": {"type": "integer"},
            "opts": {"type": "object", "properties": {"dry": {"type": "boolean", "x-mcp-header": "Dry-Run"}}}
        }});
        let got = names(&declared(Some(&schema)));
        assert_eq!(
            got,
            vec![
                (
                    "mcp-param-dry-run".to_owned(),
                    vec!["opts".into(), "dry".into()]
                ),
                ("mcp-param-region".to_owned(), vec!["region".into()]),
            ]
        );
        assert_eq!(names(&declared(None)), vec![]);
    }

    #[test]
    fn invalid_annotations_make_the_schema_invalid() {
        for (schema, why) in [
            (
                json!({"type": "object", "x-mcp-header": "Root"}),
                "no chain",
            ),
            (
                json!({"properties": {"xs": {"type": "array", "items": {"type": "string", "x-mcp-header": "X"}}}}),
                "under items",
            ),
            (
                json!({"anyOf": [{"properties": {"a": {"type": "string", "x-mcp-header": "A"}}}]}),
                "under anyOf",
            ),
            (
                json!({"properties": {"a": {"type": "number", "x-mcp-header": "A"}}}),
                "number",
            ),
            (
                json!({"properties": {"a": {"type": "string", "x-mcp-header": "A B"}}}),
                "not a token",
            ),
            (
                json!({"properties": {"a": {"type": "string", "x-mcp-header": "Same"}, "b": {"type": "string", "x-mcp-header": "same"}}}),
                "duplicate",
            ),
            (
                json!({"properties": {"a": {"type": "string", "x-mcp-header": 7}}}),
                "not a string",
            ),
        ] {
            assert!(declared(Some(&schema)).is_err(), "{why}: {schema}");
        }
    }

    #[test]
    fn values_agree_as_the_specification_says() {
        use ParamType::*;
        assert!(agrees(String, &json!("us-west1"), "us-west1"));
        assert!(!agrees(String, &json!("us-west1"), "eu-west1"));
        assert!(agrees(Boolean, &json!(true), "true"));
        assert!(!agrees(Boolean, &json!(true), "True"));
        assert!(agrees(Integer, &json!(42), "42"));
        assert!(agrees(Integer, &json!(42), "42.0"));
        assert!(agrees(Integer, &json!(42.0), "42"));
        assert!(agrees(Integer, &json!(-7), "-7"));
        assert!(agrees(Integer, &json!(0), "-0"));
        assert!(!agrees(Integer, &json!(42), "42.5"));
        assert!(!agrees(Integer, &json!(42), "4.2e1"));
        assert!(!agrees(Integer, &json!(42), "42."));
        assert!(!agrees(Integer, &json!(42), "43"));
        assert!(
            agrees(Integer, &json!(u64::MAX), "18446744073709551615"),
            "compared as digits, not through a float"
        );
        assert!(!agrees(Integer, &json!(u64::MAX), "18446744073709551616"));
        assert!(!agrees(String, &json!({"a": 1}), "{\"a\":1}"));
    }

    #[test]
    fn arguments_are_found_by_path_and_null_is_absent() {
        let args = json!({"region": "eu", "opts": {"dry": true}, "gone": null});
        assert_eq!(
            argument(Some(&args), &["region".into()]),
            Some(&json!("eu"))
        );
        assert_eq!(
            argument(Some(&args), &["opts".into(), "dry".into()]),
            Some(&json!(true))
        );
        assert_eq!(argument(Some(&args), &["gone".into()]), None);
        assert_eq!(argument(Some(&args), &["region".into(), "x".into()]), None);
        assert_eq!(argument(None, &["region".into()]), None);
    }
}
