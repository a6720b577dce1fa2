//! The request headers MCP 2026-07-28 mirrors from the body (`Mcp-Method`, `Mcp-Name`), checked
//! against the body they claim to describe.

use http::HeaderMap;

use crate::jsonrpc::Payload;

/// Checks the `Mcp-Method` and `Mcp-Name` headers of MCP 2026-07-28 against the body. They let
/// intermediaries route without reading the body, so a request whose headers say one thing and
/// whose body says another is refused: the server must not be told something else than what
/// mcp-guard decided on.
pub(crate) fn check_mirrored_headers(headers: &HeaderMap, payload: &Payload) -> Result<(), String> {
    let method_h = headers.get("mcp-method");
    let name_h = headers.get("mcp-name");
    if method_h.is_none() && name_h.is_none() {
        return Ok(());
    }
    let Payload::Single(msg) = payload else {
        return Err("Mcp-Method / Mcp-Name headers cannot describe a batch".into());
    };
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
        let v = decode_header_value(raw)?;
        if Some(v.as_ref()) != msg.mirrored_name() {
            return Err(format!(
                "the Mcp-Name header {v:?} does not match the body's name {:?}",
                msg.mirrored_name().unwrap_or("(none)")
            ));
        }
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
        .map_err(|e| format!("the Mcp-Name header {raw:?} is not valid base64: {e}"))?;
    String::from_utf8(bytes)
        .map(std::borrow::Cow::Owned)
        .map_err(|_| format!("the Mcp-Name header {raw:?} does not decode to UTF-8"))
}
