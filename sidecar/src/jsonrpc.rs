//! The typed model of MCP's JSON-RPC messages: what the proxy needs to know of each message
//! (kind, method, id, target name) without losing anything it forwards.

use mcp_guard_policy::mcp::{Item, Method};
use serde_json::{Map, Value};

/// JSON-RPC error codes the sidecar answers with.
pub mod code {
    /// The body is not JSON.
    pub const PARSE_ERROR: i64 = -32700;
    /// The body is JSON but not a JSON-RPC 2.0 message or batch.
    pub const INVALID_REQUEST: i64 = -32600;
    /// Invalid params; MCP uses it for an unknown tool, which is what a hidden tool is.
    pub const INVALID_PARAMS: i64 = -32602;
    /// `Mcp-Method` / `Mcp-Name` headers disagree with the body (MCP 2026-07-28).
    pub const HEADER_MISMATCH: i64 = -32020;
    /// A governed request refused by mcp-guard.
    pub const DENIED: i64 = -32003;
    /// The MCP server behind the sidecar could not be reached or failed.
    pub const UPSTREAM_UNAVAILABLE: i64 = -32004;
    /// The request body exceeds the configured limit.
    pub const TOO_LARGE: i64 = -32005;
    /// Anything else that went wrong inside the sidecar.
    pub const INTERNAL: i64 = -32603;
    /// A request refused by a rate limit of the policy. Outside the range JSON-RPC reserves
    /// (-32768 to -32000), so no revision of MCP or JSON-RPC can give it another meaning; 429 as
    /// in the HTTP status that comes with it.
    pub const RATE_LIMITED: i64 = -31429;
}

/// What a message is, by the JSON-RPC 2.0 rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Request,
    Notification,
    Response,
}

/// One JSON-RPC message, parsed. The original JSON is kept so that it can be forwarded as is.
#[derive(Debug, Clone)]
pub struct Message {
    pub kind: Kind,
    /// The MCP method, parsed once ([`Method::Other`] for a response or an unknown method).
    pub mcp: Method,
    /// The full message object.
    pub raw: Map<String, Value>,
}

/// A body: one message, or a batch (MCP 2025-03-26).
#[derive(Debug, Clone)]
pub enum Payload {
    Single(Message),
    Batch(Vec<Message>),
}

/// Why a body was refused.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("the body is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("not a JSON-RPC 2.0 message: {0}")]
    Invalid(String),
}

impl ParseError {
    pub fn code(&self) -> i64 {
        match self {
            ParseError::Json(_) => code::PARSE_ERROR,
            ParseError::Invalid(_) => code::INVALID_REQUEST,
        }
    }
}

impl Payload {
    /// Parses a request or response body.
    pub fn parse(body: &[u8]) -> Result<Self, ParseError> {
        match serde_json::from_slice::<Value>(body)? {
            Value::Array(items) => {
                if items.is_empty() {
                    return Err(ParseError::Invalid("empty batch".into()));
                }
                let msgs = items
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| {
                        Message::from_value(v)
                            .map_err(|e| ParseError::Invalid(format!("batch item {i}: {e}")))
                    })
                    .collect::<Result<_, _>>()?;
                Ok(Payload::Batch(msgs))
            }
            v => Ok(Payload::Single(
                Message::from_value(v).map_err(ParseError::Invalid)?,
            )),
        }
    }

    pub fn messages(&self) -> &[Message] {
        match self {
            Payload::Single(m) => std::slice::from_ref(m),
            Payload::Batch(ms) => ms,
        }
    }
}

impl Message {
    /// Validates a JSON value as a JSON-RPC 2.0 message.
    pub fn from_value(v: Value) -> Result<Self, String> {
        let Value::Object(raw) = v else {
            return Err("expected a JSON object".into());
        };
        if raw.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
            return Err("\"jsonrpc\" must be \"2.0\"".into());
        }
        let has_id = match raw.get("id") {
            None => false,
            Some(Value::String(_) | Value::Number(_)) => true,
            Some(Value::Null) if !raw.contains_key("method") => true,
            Some(_) => return Err("\"id\" must be a string or a number".into()),
        };
        let (kind, mcp) = match raw.get("method") {
            Some(Value::String(m)) if has_id => (Kind::Request, Method::parse(m)),
            Some(Value::String(m)) => (Kind::Notification, Method::parse(m)),
            Some(_) => return Err("\"method\" must be a string".into()),
            None if has_id && (raw.contains_key("result") || raw.contains_key("error")) => {
                (Kind::Response, Method::Other)
            }
            None => return Err("neither a request (\"method\") nor a response (\"result\" or \"error\" with \"id\")".into()),
        };
        if let Some(p) = raw.get("params")
            && !(p.is_object() || p.is_array())
        {
            return Err("\"params\" must be an object or an array".into());
        }
        Ok(Message { kind, mcp, raw })
    }

    pub fn method(&self) -> Option<&str> {
        self.raw.get("method").and_then(Value::as_str)
    }

    pub fn id(&self) -> Option<&Value> {
        self.raw.get("id")
    }

    pub fn params(&self) -> Option<&Map<String, Value>> {
        self.raw.get("params").and_then(Value::as_object)
    }

    pub fn result(&self) -> Option<&Value> {
        self.raw.get("result")
    }

    /// The item the message names (the tool of `tools/call`, a completion's prompt, a task),
    /// as [`Method::item`] reads it.
    pub fn item(&self) -> Option<Item<'_>> {
        if self.kind == Kind::Response {
            return None;
        }
        self.mcp.item(self.params())
    }

    /// The name of the item the message names; see [`Self::item`].
    pub fn target(&self) -> Option<&str> {
        self.item().map(|i| i.name)
    }

    /// The value the MCP 2026-07-28 `Mcp-Name` header mirrors: `params.name`, `params.uri` or
    /// `params.taskId`, by method.
    pub fn mirrored_name(&self) -> Option<&str> {
        let field = self.mcp.mirrored_field()?;
        self.params()?.get(field)?.as_str()
    }

    /// The tool of a task-augmented `tools/call` (one with `params.task`): its answer creates a
    /// task rather than a result.
    pub fn task_call(&self) -> Option<&str> {
        if self.kind != Kind::Request || self.mcp != Method::ToolsCall {
            return None;
        }
        self.params()?.get("task")?;
        self.target()
    }

    /// The MCP protocol version a 2026-07-28 request carries in `params._meta`, if any.
    pub fn meta_protocol_version(&self) -> Option<&str> {
        self.params()?
            .get("_meta")?
            .get("io.modelcontextprotocol/protocolVersion")?
            .as_str()
    }

    pub fn into_value(self) -> Value {
        Value::Object(self.raw)
    }
}

/// A key for a JSON-RPC id that can be hashed: its compact JSON text (so `1` and `"1"` differ).
pub fn id_key(id: &Value) -> String {
    id.to_string()
}

/// A JSON value written out as a body. Written straight into bytes: `Value::to_string` goes
/// through the formatting machinery token by token, and grows its string as it goes (on a listing
/// of a few tools, about 7 % of what the sidecar spent on it). `size` is the expected length.
pub fn to_body(value: &Value, size: usize) -> bytes::Bytes {
    let mut out = Vec::with_capacity(size);
    // Writing a `Value` into a `Vec` cannot fail.
    let _ = serde_json::to_writer(&mut out, value);
    bytes::Bytes::from(out)
}

/// Builds a JSON-RPC error response.
pub fn error_response(id: Option<&Value>, code: i64, message: &str, data: Option<Value>) -> Value {
    let mut error = Map::with_capacity(3);
    error.insert("code".into(), code.into());
    error.insert("message".into(), message.into());
    if let Some(d) = data {
        error.insert("data".into(), d);
    }
    let mut m = Map::with_capacity(3);
    m.insert("jsonrpc".into(), "2.0".into());
    m.insert("id".into(), id.cloned().unwrap_or(Value::Null));
    m.insert("error".into(), Value::Object(error));
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<Payload, ParseError> {
        Payload::parse(v.to_string().as_bytes())
    }

    #[test]
    fn kinds() {
        let req =
            parse(json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"}}))
                .unwrap();
        let m = &req.messages()[0];
        assert_eq!(m.kind, Kind::Request);
        assert_eq!(m.target(), Some("echo"));
        let n = parse(json!({"jsonrpc":"2.0","method":"notifications/initialized"})).unwrap();
        assert_eq!(n.messages()[0].kind, Kind::Notification);
        let r = parse(json!({"jsonrpc":"2.0","id":"a","result":{}})).unwrap();
        assert_eq!(r.messages()[0].kind, Kind::Response);
        let e = parse(json!({"jsonrpc":"2.0","id":null,"error":{"code":1,"message":"x"}})).unwrap();
        assert_eq!(e.messages()[0].kind, Kind::Response);
    }

    #[test]
    fn targets() {
        let r = parse(
            json!({"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"file:///a"}}),
        )
        .unwrap();
        assert_eq!(r.messages()[0].target(), Some("file:///a"));
        let p = parse(json!({"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{"name":"p"}}))
            .unwrap();
        assert_eq!(p.messages()[0].target(), Some("p"));
        let l = parse(json!({"jsonrpc":"2.0","id":1,"method":"tools/list"})).unwrap();
        assert_eq!(l.messages()[0].target(), None);
        assert_eq!(l.messages()[0].mcp, Method::ToolsList);
        let c = parse(
            json!({"jsonrpc":"2.0","id":1,"method":"completion/complete",
            "params":{"ref":{"type":"ref/prompt","name":"p"},"argument":{"name":"a","value":""}}}),
        )
        .unwrap();
        assert_eq!(c.messages()[0].target(), Some("p"));
        assert_eq!(
            c.messages()[0].mirrored_name(),
            None,
            "Mcp-Name mirrors no ref"
        );
        let v = parse(json!({"jsonrpc":"2.0","id":1,"method":"vendor/x","params":{"name":"n"}}))
            .unwrap();
        assert_eq!(
            (v.messages()[0].mcp, v.messages()[0].target()),
            (Method::Other, None)
        );
    }

    #[test]
    fn batches() {
        let b = parse(json!([
            {"jsonrpc":"2.0","id":1,"method":"tools/list"},
            {"jsonrpc":"2.0","method":"notifications/initialized"}
        ]))
        .unwrap();
        assert_eq!(b.messages().len(), 2);
        assert!(matches!(parse(json!([])), Err(ParseError::Invalid(_))));
        let err = parse(json!([{"jsonrpc":"2.0","id":1,"method":"x"}, 3])).unwrap_err();
        assert!(err.to_string().contains("batch item 1"), "{err}");
    }

    #[test]
    fn refusals() {
        assert_eq!(
            Payload::parse(b"{not json").unwrap_err().code(),
            code::PARSE_ERROR
        );
        for bad in [
            json!({"id":1,"method":"x"}),
            json!({"jsonrpc":"1.0","id":1,"method":"x"}),
            json!({"jsonrpc":"2.0","id":{},"method":"x"}),
            json!({"jsonrpc":"2.0","id":1,"method":5}),
            json!({"jsonrpc":"2.0","id":1}),
            json!({"jsonrpc":"2.0","id":1,"method":"x","params":"s"}),
            json!("hello"),
        ] {
            let e = parse(bad.clone()).unwrap_err();
            assert_eq!(e.code(), code::INVALID_REQUEST, "{bad}");
        }
    }

    #[test]
    fn error_shape() {
        let e = error_response(Some(&json!(7)), code::DENIED, "no", None);
        assert_eq!(
            e,
            json!({"jsonrpc":"2.0","id":7,"error":{"code":-32003,"message":"no"}})
        );
    }
}
