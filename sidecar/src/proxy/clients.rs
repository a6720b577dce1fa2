//! Who the MCP client says it is: learned from `initialize` (kept per session) or read from each
//! request's `params._meta` (MCP 2026-07-28, which has no sessions); and who owns each session:
//! a session opened through the sidecar by one verified caller cannot be used by another.

use std::collections::HashMap;
use std::sync::Arc;

use http::HeaderMap;
use parking_lot::RwLock;
use serde_json::{Map, Value};

use crate::identity::Identity;
use crate::intercept::ClientInfo;
use crate::jsonrpc::{Message, Payload};

/// Sessions remembered at most; past it the table starts over (clients then show as unknown
/// until they initialize again, which only affects the `client` part of the policy input).
const MAX_SESSIONS: usize = 50_000;

const META_CLIENT: &str = "io.modelcontextprotocol/clientInfo";
const META_VERSION: &str = "io.modelcontextprotocol/protocolVersion";

fn text(v: Option<&Value>) -> Option<String> {
    v.and_then(Value::as_str).map(str::to_owned)
}

fn from_fields(info: Option<&Map<String, Value>>, version: Option<&Value>) -> ClientInfo {
    ClientInfo {
        name: text(info.and_then(|i| i.get("name"))),
        version: text(info.and_then(|i| i.get("version"))),
        protocol_version: text(version),
    }
}

/// The client of an `initialize` request, if the message is one.
pub fn from_initialize(msg: &Message) -> Option<ClientInfo> {
    if msg.method() != Some("initialize") {
        return None;
    }
    let p = msg.params()?;
    Some(from_fields(
        p.get("clientInfo").and_then(Value::as_object),
        p.get("protocolVersion"),
    ))
}

/// The client named in a request's `params._meta`.
fn from_meta(msg: &Message) -> Option<ClientInfo> {
    let meta = msg.params()?.get("_meta")?.as_object()?;
    let info = meta.get(META_CLIENT).and_then(Value::as_object);
    let version = meta.get(META_VERSION);
    (info.is_some() || version.is_some()).then(|| from_fields(info, version))
}

/// The verified caller that opened a session: issuer and subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    iss: String,
    sub: String,
}

impl Owner {
    /// The owner a caller would be; `None` for an anonymous caller.
    pub fn of(identity: Option<&Identity>) -> Option<Owner> {
        identity.map(|i| Owner {
            iss: i.iss.clone(),
            sub: i.sub.clone(),
        })
    }
}

struct Entry {
    client: Arc<ClientInfo>,
    owner: Option<Owner>,
}

#[derive(Default)]
pub struct ClientTable {
    by_session: RwLock<HashMap<String, Entry>>,
}

impl ClientTable {
    /// The client behind a request: `_meta`, else `initialize` itself, else its session's.
    pub fn lookup(
        &self,
        payload: &Payload,
        headers: &HeaderMap,
        session: Option<&str>,
    ) -> Option<Arc<ClientInfo>> {
        let first = payload.messages().first()?;
        if let Some(c) = from_meta(first).or_else(|| from_initialize(first)) {
            return Some(Arc::new(c));
        }
        let known = Arc::clone(&self.by_session.read().get(session?)?.client);
        let header_version = headers
            .get("mcp-protocol-version")
            .and_then(|v| v.to_str().ok());
        match header_version {
            Some(v) if known.protocol_version.as_deref() != Some(v) => Some(Arc::new(ClientInfo {
                protocol_version: Some(v.to_owned()),
                ..(*known).clone()
            })),
            _ => Some(known),
        }
    }

    /// Remembers the client and the owner of a session the server just opened.
    pub fn remember(&self, session: &str, client: Arc<ClientInfo>, owner: Option<Owner>) {
        let mut map = self.by_session.write();
        if map.len() >= MAX_SESSIONS {
            map.clear();
        }
        map.insert(session.to_owned(), Entry { client, owner });
    }

    /// Whether `identity` may use `session`. A session opened through this sidecar belongs to
    /// the caller who opened it; a session the sidecar did not see opened (it restarted, say)
    /// is left to the server.
    pub fn may_use(&self, session: &str, identity: Option<&Identity>) -> bool {
        match self.by_session.read().get(session) {
            Some(e) => e.owner == Owner::of(identity),
            None => true,
        }
    }

    /// Forgets a session (DELETE).
    pub fn forget(&self, session: &str) {
        self.by_session.write().remove(session);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn payload(v: Value) -> Payload {
        Payload::parse(v.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn initialize_then_session_then_meta() {
        let t = ClientTable::default();
        let init = payload(
            json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{
            "protocolVersion":"2025-06-18","clientInfo":{"name":"agent","version":"1.2"},"capabilities":{}}}),
        );
        let c = t.lookup(&init, &HeaderMap::new(), None).unwrap();
        assert_eq!(c.name.as_deref(), Some("agent"));
        t.remember("s1", c, None);
        let call =
            payload(json!({"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"x"}}));
        let c = t.lookup(&call, &HeaderMap::new(), Some("s1")).unwrap();
        assert_eq!(
            (c.name.as_deref(), c.protocol_version.as_deref()),
            (Some("agent"), Some("2025-06-18"))
        );
        assert!(t.lookup(&call, &HeaderMap::new(), Some("other")).is_none());
        let stateless = payload(
            json!({"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"x",
            "_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientInfo":{"name":"py","version":"2"}}}}),
        );
        let c = t.lookup(&stateless, &HeaderMap::new(), None).unwrap();
        assert_eq!(
            (c.name.as_deref(), c.protocol_version.as_deref()),
            (Some("py"), Some("2026-07-28"))
        );
        t.forget("s1");
        assert!(t.lookup(&call, &HeaderMap::new(), Some("s1")).is_none());
    }

    #[test]
    fn a_session_belongs_to_whoever_opened_it() {
        let t = ClientTable::default();
        let ana = Identity {
            sub: "ana".into(),
            iss: "https://idp".into(),
            ..Default::default()
        };
        let bob = Identity {
            sub: "bob".into(),
            iss: "https://idp".into(),
            ..Default::default()
        };
        t.remember("s1", Arc::default(), Owner::of(Some(&ana)));
        assert!(t.may_use("s1", Some(&ana)));
        assert!(!t.may_use("s1", Some(&bob)));
        assert!(
            !t.may_use("s1", None),
            "an anonymous caller cannot take over a caller's session"
        );
        assert!(t.may_use("unknown", Some(&bob)));
        t.remember("s2", Arc::default(), None);
        assert!(t.may_use("s2", None));
        assert!(!t.may_use("s2", Some(&bob)));
    }
}
