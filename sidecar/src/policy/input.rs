//! The input document a policy decides on: schema `mcp-guard.dev/policy-input/v1`, documented in
//! `docs/policy.md`. Fields are only ever added within a version.

use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::identity::Identity;
pub use crate::intercept::ClientInfo;
use crate::intercept::Context;
use crate::jsonrpc::Message;

/// The version string every input carries.
pub const INPUT_VERSION: &str = "mcp-guard.dev/policy-input/v1";

/// The MCP server this sidecar governs (from the pod, through the downward API).
#[derive(Debug, Clone, Default, Serialize)]
pub struct ServerInfo {
    pub name: String,
    pub namespace: String,
    pub pod: String,
}

fn subject(identity: Option<&Identity>) -> Value {
    match identity {
        None => {
            json!({"authenticated": false, "groups": [], "roles": [], "scopes": [], "claims": {}})
        }
        Some(id) => json!({
            "authenticated": true,
            "sub": id.sub,
            "iss": id.iss,
            "email": id.email,
            "groups": id.groups,
            "roles": id.roles,
            "scopes": id.scopes,
            "client_id": id.client_id,
            "claims": id.claims,
        }),
    }
}

/// The input for a decision on one client message. `tool` is the server's own definition of the
/// tool the message names (from its last `tools/list`), with the sidecar's `hash` and `changed`
/// added.
pub fn for_message(
    ctx: &Context<'_>,
    server: &ServerInfo,
    msg: &Message,
    tool: Option<Value>,
) -> Value {
    let method = msg.method().unwrap_or_default();
    let params = msg.params();
    let arguments = params
        .and_then(|p| p.get("arguments"))
        .cloned()
        .unwrap_or_else(|| Value::Object(Map::new()));
    let target = msg.target();
    let mut request = Map::new();
    request.insert("method".into(), method.into());
    request.insert("name".into(), target.into());
    match method {
        "tools/call" => {
            request.insert("tool".into(), target.into());
        }
        "prompts/get" => {
            request.insert("prompt".into(), target.into());
        }
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
            request.insert("uri".into(), target.into());
        }
        _ => {}
    }
    request.insert("arguments".into(), arguments);
    request.insert("session_id".into(), ctx.session_id.into());
    request.insert("transport".into(), ctx.transport.as_str().into());
    build(ctx, server, Value::Object(request), tool)
}

/// The input deciding whether one item of a list answer is visible: the same as a call of that
/// item with no arguments (`tools/call`, `prompts/get`, `resources/read`).
pub fn for_list_item(
    ctx: &Context<'_>,
    server: &ServerInfo,
    list_method: &str,
    item: &Value,
    tool: Option<Value>,
) -> Value {
    let (method, key, field) = match list_method {
        "tools/list" => ("tools/call", "tool", "name"),
        "prompts/list" => ("prompts/get", "prompt", "name"),
        "resources/list" => ("resources/read", "uri", "uri"),
        _ => ("resources/read", "uri", "uriTemplate"),
    };
    let name = item.get(field).cloned().unwrap_or(Value::Null);
    let request = json!({
        "method": method,
        "name": name,
        key: name,
        "arguments": {},
        "session_id": ctx.session_id,
        "transport": ctx.transport.as_str(),
        "list": list_method,
    });
    build(ctx, server, request, tool)
}

fn build(ctx: &Context<'_>, server: &ServerInfo, request: Value, tool: Option<Value>) -> Value {
    let client = ctx.client.cloned().unwrap_or_default();
    let mut doc = Map::with_capacity(6);
    doc.insert("version".into(), INPUT_VERSION.into());
    doc.insert("subject".into(), subject(ctx.identity));
    doc.insert(
        "client".into(),
        json!({"name": client.name, "version": client.version, "protocol_version": client.protocol_version}),
    );
    doc.insert(
        "server".into(),
        json!({"name": server.name, "namespace": server.namespace, "pod": server.pod}),
    );
    doc.insert("request".into(), request);
    if let Some(t) = tool {
        doc.insert("tool".into(), t);
    }
    Value::Object(doc)
}

/// An input used to try a new bundle once before it is put in force.
pub fn probe() -> Value {
    json!({
        "version": INPUT_VERSION,
        "subject": subject(None),
        "client": {"name": "mcp-guard-probe", "version": null, "protocol_version": null},
        "server": {"name": "", "namespace": "", "pod": ""},
        "request": {"method": "tools/call", "name": "probe", "tool": "probe", "arguments": {}, "session_id": null, "transport": "streamable-http"},
        "tool": {"name": "probe", "inputSchema": {"type": "object"}, "annotations": {}, "hash": "", "changed": false},
    })
}
