//! The request headers MCP 2026-07-28 mirrors from the body (`Mcp-Method`, `Mcp-Name`, and a
//! tool's `Mcp-Param-*` arguments), checked against the body they claim to describe.

use http::HeaderMap;
use mcp_guard_policy::catalog::ToolCatalog;
use mcp_guard_policy::mcp::Method;
use mcp_guard_policy::param_headers::{self, ParamHeader};

use crate::jsonrpc::{Message, Payload};

/// The protocol revision that mirrors arguments into headers; a client that speaks it must send
/// them, so a missing one is refused.
const MIRRORING_REVISION: &str = "2026-07-28";

/// Checks the `Mcp-Method`, `Mcp-Name` and `Mcp-Param-*` headers of MCP 2026-07-28 against the body. They let
/// intermediaries route without reading the body, so a request whose headers say one thing and
/// whose body says another is refused: the server must not be told something else than what
/// mcp-guard decided on.
///
/// The arguments a tool mirrors into `Mcp-Param-*` headers are read from `catalog`, the server's
/// own definitions of its tools.
pub(crate) fn check_mirrored_headers(
    headers: &HeaderMap,
    payload: &Payload,
    catalog: &ToolCatalog,
) -> Result<(), String> {
    let method_h = headers.get("mcp-method");
    let name_h = headers.get("mcp-name");
    let params_h = headers.keys().any(|k| k.as_str().starts_with("mcp-param-"));
    if method_h.is_none() && name_h.is_none() && !params_h {
        return Ok(());
    }
    let Payload::Single(msg) = payload else {
        return Err("Mcp-Method / Mcp-Name / Mcp-Param-* headers cannot describe a batch".into());
    };
    check_param_headers(headers, msg, catalog)?;
    if let Some(h) = method_h {
        let v = h
            .to_str()
            .map_err(|_| "the Mcp-Method header is not visible ASCII".to_owned())?;
        if Some(v) != msg.method() {
            return Err(format!(
                "the Mcp-Method header {v:?} does not match the body's method {:?}",
                msg.method().unwrap_or("(none)")
            ));
        }
    }
    if let Some(h) = name_h {
        let raw = h
            .to_str()
            .map_err(|_| "the Mcp-Name header is not visible ASCII".to_owned())?;
        let v = decode_header_value(raw).map_err(|e| format!("the Mcp-Name header: {e}"))?;
        if Some(v.as_ref()) != msg.mirrored_name() {
            return Err(format!(
                "the Mcp-Name header {v:?} does not match the body's name {:?}",
                msg.mirrored_name().unwrap_or("(none)")
            ));
        }
    }
    Ok(())
}

/// Checks a `tools/call`'s `Mcp-Param-*` headers against the arguments the tool's definition
/// says they mirror: present together and equal, or absent together (`null` is absent). A client
/// of an older revision mirrors nothing, so only a disagreement is refused from it; a 2026-07-28
/// client must also send every header its arguments call for.
fn check_param_headers(
    headers: &HeaderMap,
    msg: &Message,
    catalog: &ToolCatalog,
) -> Result<(), String> {
    if msg.mcp != Method::ToolsCall {
        return Ok(());
    }
    let sent: Vec<&str> = headers
        .keys()
        .map(|k| k.as_str())
        .filter(|k| k.starts_with("mcp-param-"))
        .collect();
    let modern = headers.contains_key("mcp-method")
        || headers
            .get("mcp-protocol-version")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v >= MIRRORING_REVISION);
    if sent.is_empty() && !modern {
        return Ok(());
    }
    let tool = msg.target().unwrap_or_default();
    let declared = match catalog.param_headers(tool) {
        Some(Ok(declared)) => declared,
        // Conforming clients drop a tool whose annotations are invalid; nothing of it is enforced.
        Some(Err(_)) => return Ok(()),
        None if sent.is_empty() => return Ok(()),
        None => {
            return Err(format!(
                "the {} header cannot be checked: the server has not listed tool {tool:?}",
                sent[0]
            ));
        }
    };
    let arguments = msg.params().and_then(|p| p.get("arguments"));
    for p in declared.iter() {
        check_param(headers, p, arguments, modern)?;
    }
    Ok(())
}

/// One mirrored argument against its header.
fn check_param(
    headers: &HeaderMap,
    p: &ParamHeader,
    arguments: Option<&serde_json::Value>,
    modern: bool,
) -> Result<(), String> {
    let name = format!("Mcp-Param-{}", p.name);
    let at = p.path.join(".");
    let mut values = headers.get_all(p.header.as_str()).iter();
    let raw = values.next();
    if values.next().is_some() {
        return Err(format!("the {name} header appears more than once"));
    }
    let argument = param_headers::argument(arguments, &p.path);
    let (raw, argument) = match (raw, argument) {
        (None, None) => return Ok(()),
        (Some(_), None) => {
            return Err(format!(
                "the {name} header is present but the body has no argument {at:?}"
            ));
        }
        (None, Some(_)) if !modern => return Ok(()),
        (None, Some(_)) => {
            return Err(format!(
                "the {name} header is missing but the body has argument {at:?}"
            ));
        }
        (Some(raw), Some(argument)) => (raw, argument),
    };
    let raw = raw
        .to_str()
        .map_err(|_| format!("the {name} header is not visible ASCII"))?;
    let value = decode_header_value(raw).map_err(|e| format!("the {name} header: {e}"))?;
    if !param_headers::agrees(p.ty, argument, &value) {
        return Err(format!(
            "the {name} header {value:?} does not match the body's argument {at:?} ({argument})"
        ));
    }
    Ok(())
}

/// A mirrored header value as MCP 2026-07-28 writes it: plain, or `=?base64?<base64>?=` for a
/// value that is not plain printable ASCII (a tool named `grüßen`, a URI with `é`).
pub(crate) fn decode_header_value(raw: &str) -> Result<std::borrow::Cow<'_, str>, String> {
    use base64::Engine as _;
    let Some(inner) = raw
        .strip_prefix("=?base64?")
        .and_then(|r| r.strip_suffix("?="))
    else {
        return Ok(std::borrow::Cow::Borrowed(raw));
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(inner)
        .map_err(|e| format!("{raw:?} is not valid base64: {e}"))?;
    String::from_utf8(bytes)
        .map(std::borrow::Cow::Owned)
        .map_err(|_| format!("{raw:?} does not decode to UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn catalog() -> ToolCatalog {
        let c = ToolCatalog::default();
        c.record(&[
            json!({"name": "deploy", "inputSchema": {"type": "object", "properties": {
                "region": {"type": "string", "x-mcp-header": "Region"},
                "replicas": {"type": "integer", "x-mcp-header": "Replicas"},
                "note": {"type": "string"}
            }}}),
        ]);
        c
    }

    fn check(headers: &[(&str, &str)], args: serde_json::Value) -> Result<(), String> {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "deploy", "arguments": args}});
        let payload = Payload::parse(body.to_string().as_bytes()).unwrap();
        check_mirrored_headers(&h, &payload, &catalog())
    }

    const MODERN: (&str, &str) = ("mcp-protocol-version", "2026-07-28");

    #[test]
    fn mirrored_arguments_must_agree_with_the_body() {
        let args = json!({"region": "eu-west1", "replicas": 3});
        assert_eq!(
            check(
                &[
                    MODERN,
                    ("mcp-param-region", "eu-west1"),
                    ("Mcp-Param-Replicas", "3")
                ],
                args.clone()
            ),
            Ok(())
        );
        let e = check(
            &[
                MODERN,
                ("mcp-param-region", "us-east1"),
                ("mcp-param-replicas", "3"),
            ],
            args.clone(),
        )
        .unwrap_err();
        assert!(
            e.contains("Mcp-Param-Region") && e.contains("region"),
            "{e}"
        );
        let e = check(&[MODERN, ("mcp-param-region", "eu-west1")], args.clone()).unwrap_err();
        assert!(e.contains("missing"), "{e}");
        let e = check(
            &[
                MODERN,
                ("mcp-param-region", "eu-west1"),
                ("mcp-param-region", "eu-west1"),
                ("mcp-param-replicas", "3"),
            ],
            args.clone(),
        )
        .unwrap_err();
        assert!(e.contains("more than once"), "{e}");
    }

    #[test]
    fn base64_values_decode_and_absent_arguments_have_no_header() {
        // "zürich", as a client wraps a value that is not plain ASCII.
        let wrapped = "=?base64?esO8cmljaA==?=";
        assert_eq!(
            check(
                &[MODERN, ("mcp-param-region", wrapped)],
                json!({"region": "zürich"})
            ),
            Ok(())
        );
        assert_eq!(check(&[MODERN], json!({"region": null})), Ok(()));
        let e = check(&[MODERN, ("mcp-param-region", "eu")], json!({})).unwrap_err();
        assert!(e.contains("no argument"), "{e}");
        let e = check(
            &[MODERN, ("mcp-param-region", "=?base64?!!?=")],
            json!({"region": "x"}),
        )
        .unwrap_err();
        assert!(e.contains("base64"), "{e}");
    }

    #[test]
    fn an_older_client_mirrors_nothing_but_may_not_disagree() {
        let args = json!({"region": "eu-west1"});
        assert_eq!(check(&[], args.clone()), Ok(()));
        assert!(check(&[("mcp-param-region", "us-east1")], args).is_err());
    }

    #[test]
    fn a_header_for_a_tool_the_server_never_listed_is_refused() {
        let mut h = HeaderMap::new();
        h.insert("mcp-param-region", "eu".parse().unwrap());
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "unknown", "arguments": {"region": "eu"}}});
        let payload = Payload::parse(body.to_string().as_bytes()).unwrap();
        let e = check_mirrored_headers(&h, &payload, &catalog()).unwrap_err();
        assert!(e.contains("has not listed tool \"unknown\""), "{e}");
    }
}
