//! The input document a policy decides on: schema `mcp-guard.dev/policy-input/v2`, documented in
//! `docs/policy.md`. Fields are only ever added within a version; v2 is v1 with every method but
//! the plumbing ones decided ([`crate::mcp`]), and `request.task`.
//!
//! The document is built directly as the policy engine's value type. The parts that stay the same
//! for every decision of a request (the caller, the client, the server) are converted once per
//! request — the caller once per verified token — and shared by reference, so filtering a long
//! list converts only each item.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use regorus::Value as RegoValue;
use serde_json::{Map, Value, json};

use crate::mcp::{Item, List};
use crate::reads::{InputReads, write_read};
use crate::value::to_rego;

/// The version string every input carries.
pub const INPUT_VERSION: &str = "mcp-guard.dev/policy-input/v2";

/// The MCP server this sidecar governs (from the pod, through the downward API).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ServerInfo {
    pub name: String,
    pub namespace: String,
    pub pod: String,
}

impl ServerInfo {
    pub fn to_value(&self) -> RegoValue {
        to_rego(&json!({"name": self.name, "namespace": self.namespace, "pod": self.pod}))
    }
}

/// The MCP client as it introduced itself (`initialize`, or `params._meta` in 2026-07-28): the
/// input's `client`.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct ClientInfo {
    pub name: Option<String>,
    pub version: Option<String>,
    pub protocol_version: Option<String>,
}

/// A verified caller as the input's `subject` shows it, borrowed from whoever verified the token
/// (the sidecar's identity), so this crate needs no notion of tokens.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub sub: &'a str,
    pub iss: &'a str,
    pub email: Option<&'a str>,
    pub groups: &'a [String],
    pub roles: &'a [String],
    pub scopes: &'a [String],
    pub client_id: Option<&'a str>,
    pub claims: &'a Map<String, Value>,
}

/// The `subject` part of the input, as JSON; `None` is the anonymous caller.
pub fn subject_json(subject: Option<&Subject<'_>>) -> Value {
    match subject {
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

/// The `subject` part of the input, as the engine's value. Worth converting once per verified
/// token and keeping ([`Frame::new`] takes the result).
pub fn subject_value(subject: Option<&Subject<'_>>) -> RegoValue {
    to_rego(&subject_json(subject))
}

/// The document's own keys, made once: building an input allocates no key, and an item of a long
/// list costs only its own values.
struct Names {
    version: RegoValue,
    subject: RegoValue,
    client: RegoValue,
    server: RegoValue,
    request: RegoValue,
    method: RegoValue,
    name: RegoValue,
    arguments: RegoValue,
    session_id: RegoValue,
    transport: RegoValue,
    list: RegoValue,
    protocol_version: RegoValue,
    tool: RegoValue,
    tools: RegoValue,
    prompt: RegoValue,
    uri: RegoValue,
    task: RegoValue,
    input_version: RegoValue,
    anonymous: RegoValue,
}

impl Names {
    /// The key `name` (`tool`, `tools`, `prompt`, `uri`, `task`: the keys that vary with the
    /// message).
    fn key(&self, name: &str) -> RegoValue {
        match name {
            "tool" => self.tool.clone(),
            "tools" => self.tools.clone(),
            "prompt" => self.prompt.clone(),
            "uri" => self.uri.clone(),
            "task" => self.task.clone(),
            other => RegoValue::from(other),
        }
    }
}

static NAMES: LazyLock<Names> = LazyLock::new(|| Names {
    version: RegoValue::from("version"),
    subject: RegoValue::from("subject"),
    client: RegoValue::from("client"),
    server: RegoValue::from("server"),
    request: RegoValue::from("request"),
    method: RegoValue::from("method"),
    name: RegoValue::from("name"),
    arguments: RegoValue::from("arguments"),
    session_id: RegoValue::from("session_id"),
    transport: RegoValue::from("transport"),
    list: RegoValue::from("list"),
    protocol_version: RegoValue::from("protocol_version"),
    tool: RegoValue::from("tool"),
    tools: RegoValue::from("tools"),
    prompt: RegoValue::from("prompt"),
    uri: RegoValue::from("uri"),
    task: RegoValue::from("task"),
    input_version: RegoValue::from(INPUT_VERSION),
    anonymous: subject_value(None),
});

/// The input's `client`: what the client said of itself in `initialize`.
fn client_value(client: Option<&ClientInfo>) -> RegoValue {
    let n = &*NAMES;
    let field = |v: Option<&String>| v.map_or(RegoValue::Null, |s| RegoValue::from(s.as_str()));
    let mut c = BTreeMap::new();
    c.insert(n.name.clone(), field(client.and_then(|c| c.name.as_ref())));
    c.insert(
        n.version.clone(),
        field(client.and_then(|c| c.version.as_ref())),
    );
    c.insert(
        n.protocol_version.clone(),
        field(client.and_then(|c| c.protocol_version.as_ref())),
    );
    RegoValue::from(c)
}

fn text(s: Option<&str>) -> RegoValue {
    s.map_or(RegoValue::Null, RegoValue::from)
}

/// What every decision of one request shares.
pub struct Frame {
    subject: RegoValue,
    client: RegoValue,
    server: RegoValue,
    session_id: RegoValue,
    transport: RegoValue,
}

impl Frame {
    /// The frame of a request. `subject` is the caller's [`subject_value`] (`None`: anonymous),
    /// `server` is converted once per sidecar ([`ServerInfo::to_value`]), `transport` is the
    /// transport's name (`streamable-http`, `sse`).
    pub fn new(
        subject: Option<RegoValue>,
        client: Option<&ClientInfo>,
        server: &RegoValue,
        session_id: Option<&str>,
        transport: &str,
    ) -> Frame {
        Frame {
            subject: subject.unwrap_or_else(|| NAMES.anonymous.clone()),
            client: client_value(client),
            server: server.clone(),
            session_id: text(session_id),
            transport: RegoValue::from(transport),
        }
    }

    /// Everything in the frame, as one JSON text: two frames have the same key exactly when a
    /// decision that depends on nothing else (list visibility) is the same for both.
    pub fn key(&self) -> String {
        format!(
            "[{},{},{},{},{}]",
            self.subject, self.client, self.server, self.session_id, self.transport
        )
    }

    /// What of the frame a bundle that reads `reads` can see, as one text: two frames with the
    /// same text get the same answer to any decision that depends on nothing else (a list item's
    /// visibility), since what differs between them is read by no rule. With `reads` of the
    /// whole input it is [`Self::key`].
    pub fn key_for(&self, reads: &InputReads) -> String {
        let Some(paths) = reads.paths() else {
            return self.key();
        };
        let mut out = String::new();
        for path in paths {
            let (root, rest) = path
                .split_first()
                .map_or(("", &[][..]), |(r, rest)| (r.as_str(), rest));
            let part = match (root, rest.split_first()) {
                ("subject", _) => Some((&self.subject, rest)),
                ("client", _) => Some((&self.client, rest)),
                ("server", _) => Some((&self.server, rest)),
                ("request", None) => {
                    out.push_str("request.session_id");
                    write_read(&mut out, &self.session_id, &[]);
                    out.push_str("\nrequest.transport");
                    write_read(&mut out, &self.transport, &[]);
                    out.push('\n');
                    None
                }
                ("request", Some((field, below))) if field == "session_id" => {
                    Some((&self.session_id, below))
                }
                ("request", Some((field, below))) if field == "transport" => {
                    Some((&self.transport, below))
                }
                // `version`, `tool`, `tools` and the rest of `request` are the same for every
                // caller of one item.
                _ => None,
            };
            if let Some((value, below)) = part {
                out.push_str(&path.join("."));
                write_read(&mut out, value, below);
                out.push('\n');
            }
        }
        out
    }

    /// The frame alone as an input document (`request` holds only the session and transport):
    /// what a bundle's caller terms ([`crate::terms`]) are evaluated on.
    pub fn document_of_frame(&self) -> RegoValue {
        let n = &*NAMES;
        let mut request = BTreeMap::new();
        request.insert(n.session_id.clone(), self.session_id.clone());
        request.insert(n.transport.clone(), self.transport.clone());
        self.document(RegoValue::from(request), None)
    }

    /// The document: the frame, `request`, and one more field (`tool` or `tools`) when given.
    fn document(&self, request: RegoValue, extra: Option<(&str, RegoValue)>) -> RegoValue {
        let n = &*NAMES;
        let mut doc = BTreeMap::new();
        doc.insert(n.version.clone(), n.input_version.clone());
        doc.insert(n.subject.clone(), self.subject.clone());
        doc.insert(n.client.clone(), self.client.clone());
        doc.insert(n.server.clone(), self.server.clone());
        doc.insert(n.request.clone(), request);
        if let Some((key, value)) = extra {
            doc.insert(n.key(key), value);
        }
        RegoValue::from(doc)
    }

    fn request(
        &self,
        method: &str,
        key: Option<&str>,
        name: RegoValue,
        arguments: RegoValue,
    ) -> BTreeMap<RegoValue, RegoValue> {
        let n = &*NAMES;
        let mut r = BTreeMap::new();
        r.insert(n.method.clone(), RegoValue::from(method));
        r.insert(n.name.clone(), name.clone());
        if let Some(k) = key {
            r.insert(n.key(k), name);
        }
        r.insert(n.arguments.clone(), arguments);
        r.insert(n.session_id.clone(), self.session_id.clone());
        r.insert(n.transport.clone(), self.transport.clone());
        r
    }

    /// The input for a decision on one client message: its `method` (as the client wrote it, so
    /// a vendor method reaches the policy by its name), the item it names and its
    /// `params.arguments`. `tool` is the policy view of the server's own definition of the tool
    /// the message names.
    pub fn message(
        &self,
        method: &str,
        item: Option<Item<'_>>,
        arguments: Option<&Value>,
        tool: Option<RegoValue>,
    ) -> RegoValue {
        self.message_from(method, item, None, arguments, tool)
    }

    /// As [`Self::message`], for a request about a task the server created for a call of
    /// `origin_tool` (`tasks/get`, `tasks/result`, ...): `request.tool` names that tool.
    pub fn message_from(
        &self,
        method: &str,
        item: Option<Item<'_>>,
        origin_tool: Option<&str>,
        arguments: Option<&Value>,
        tool: Option<RegoValue>,
    ) -> RegoValue {
        let arguments = arguments.map_or_else(RegoValue::new_object, to_rego);
        let key = item.map(|i| i.kind.input_key());
        let mut request = self.request(method, key, text(item.map(|i| i.name)), arguments);
        if let Some(t) = origin_tool {
            request.insert(NAMES.tool.clone(), RegoValue::from(t));
        }
        self.document(RegoValue::from(request), tool.map(|t| ("tool", t)))
    }

    /// The input deciding whether one item of a list answer is visible: the same as a call of
    /// that item with no arguments (`tools/call`, `prompts/get`, `resources/read`), with
    /// `request.list` naming the list. `name` is the item's `name` (`uri`, `uriTemplate`), when a string.
    pub fn list_item(&self, list: List, name: Option<&str>, tool: Option<RegoValue>) -> RegoValue {
        let method = list.item_call().name().unwrap_or_default();
        let key = list.item_kind().input_key();
        let name = text(name);
        let mut request = self.request(method, Some(key), name, RegoValue::new_object());
        request.insert(NAMES.list.clone(), RegoValue::from(list.as_str()));
        self.document(RegoValue::from(request), tool.map(|t| ("tool", t)))
    }

    /// The input of a `visible_tools` decision: `request` is the `tools/list` itself and `tools`
    /// holds the policy view of each tool it lists.
    pub fn tool_list(&self, tools: Vec<RegoValue>) -> RegoValue {
        let mut request =
            self.request("tools/list", None, RegoValue::Null, RegoValue::new_object());
        request.insert(NAMES.list.clone(), RegoValue::from("tools/list"));
        self.document(
            RegoValue::from(request),
            Some(("tools", RegoValue::from(tools))),
        )
    }
}

/// An input used to try a new bundle once before it is put in force.
pub fn probe() -> Value {
    json!({
        "version": INPUT_VERSION,
        "subject": subject_json(None),
        "client": {"name": "mcp-guard-probe", "version": null, "protocol_version": null},
        "server": {"name": "", "namespace": "", "pod": ""},
        "request": {"method": "tools/call", "name": "probe", "tool": "probe", "arguments": {}, "session_id": null, "transport": "streamable-http"},
        "tool": {"name": "probe", "inputSchema": {"type": "object"}, "annotations": {}, "hash": "", "pinned_hash": "", "changed": false},
    })
}
