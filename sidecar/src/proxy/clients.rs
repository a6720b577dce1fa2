//! Who the MCP client says it is: learned from `initialize` (kept per session) or read from each
//! request's `params._meta` (MCP 2026-07-28, which has no sessions); and who owns each session:
//! a session opened through the sidecar by one verified caller cannot be used by another.
//!
//! The table is bounded: past its capacity the oldest session is evicted, one at a time, and a
//! request that names an evicted session is refused ([`Refusal::Evicted`]), so ownership never
//! lapses: no session ever becomes one "the sidecar did not see opened".

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::BuildHasher;
use std::sync::Arc;

use http::HeaderMap;
use parking_lot::RwLock;
use serde_json::{Map, Value};

use crate::identity::Identity;
use crate::intercept::ClientInfo;
use crate::jsonrpc::{Message, Payload};

/// Sessions remembered at most by default (`--max-sessions`); past it the oldest is evicted.
pub const MAX_SESSIONS: usize = 50_000;

/// Evicted sessions remembered (as keyed 64-bit hashes, 16 bytes each with the queue), per
/// session of capacity. Past that the oldest tombstone is dropped, and from then on a session the
/// table does not know is refused too (see [`ClientTable::may_use`]).
const TOMBSTONES_PER_SESSION: usize = 4;

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
    /// When it was opened, in the table's count: tells a live entry of `order` from a stale one.
    seq: u64,
}

/// Why a request may not use a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Another caller opened it.
    NotOwner,
    /// It was evicted from a full table; the client must initialize a new session.
    Evicted,
}

impl Refusal {
    /// The message the client reads.
    pub fn message(self, capacity: usize) -> String {
        match self {
            Refusal::NotOwner => "session not found".into(),
            Refusal::Evicted => format!(
                "session expired: mcp-guard keeps at most {capacity} sessions and evicted this                  one, the oldest; initialize a new session"
            ),
        }
    }
}

struct Table {
    by_session: HashMap<String, Entry>,
    /// Session ids in the order they were opened, oldest first (with stale ids of sessions
    /// since forgotten, skipped and compacted away).
    order: VecDeque<(u64, String)>,
    next_seq: u64,
    /// Keyed hashes of evicted sessions, and their order, oldest first.
    tombstones: HashSet<u64>,
    tombstone_order: VecDeque<u64>,
    /// Whether a tombstone was ever dropped: from then on an unknown session may be an evicted
    /// one, so unknown sessions are refused.
    tombstones_lost: bool,
}

/// The session table.
pub struct ClientTable {
    capacity: usize,
    hasher: RandomState,
    table: RwLock<Table>,
}

impl Default for ClientTable {
    fn default() -> Self {
        ClientTable::with_capacity(MAX_SESSIONS)
    }
}

impl ClientTable {
    /// A table of at most `capacity` sessions (at least one).
    pub fn with_capacity(capacity: usize) -> Self {
        ClientTable {
            capacity: capacity.max(1),
            hasher: RandomState::new(),
            table: RwLock::new(Table {
                by_session: HashMap::new(),
                order: VecDeque::new(),
                next_seq: 0,
                tombstones: HashSet::new(),
                tombstone_order: VecDeque::new(),
                tombstones_lost: false,
            }),
        }
    }

    /// The table's capacity.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn tombstone(&self, session: &str) -> u64 {
        self.hasher.hash_one(session)
    }

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
        let known = Arc::clone(&self.table.read().by_session.get(session?)?.client);
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

    /// Remembers the client and the owner of a session the server just opened, evicting the
    /// oldest sessions while the table is full.
    pub fn remember(&self, session: &str, client: Arc<ClientInfo>, owner: Option<Owner>) {
        let mut t = self.table.write();
        let t = &mut *t;
        if !t.by_session.contains_key(session) {
            while t.by_session.len() >= self.capacity {
                let Some((seq, oldest)) = t.order.pop_front() else {
                    break;
                };
                if t.by_session.get(&oldest).is_some_and(|e| e.seq == seq) {
                    t.by_session.remove(&oldest);
                    self.bury(t, &oldest);
                    tracing::warn!(
                        capacity = self.capacity,
                        "session table full: evicted the oldest session; it is refused from now on"
                    );
                }
            }
        }
        let seq = t.next_seq;
        t.next_seq += 1;
        t.order.push_back((seq, session.to_owned()));
        t.by_session
            .insert(session.to_owned(), Entry { client, owner, seq });
        // Forgotten sessions leave stale ids in `order`; keep it within twice the capacity.
        if t.order.len() > 2 * self.capacity {
            let live = &t.by_session;
            t.order
                .retain(|(seq, id)| live.get(id).is_some_and(|e| e.seq == *seq));
        }
    }

    /// Records an evicted session, dropping the oldest record past the bound.
    fn bury(&self, t: &mut Table, session: &str) {
        let h = self.tombstone(session);
        if t.tombstones.insert(h) {
            t.tombstone_order.push_back(h);
        }
        while t.tombstone_order.len() > self.capacity.saturating_mul(TOMBSTONES_PER_SESSION) {
            if let Some(old) = t.tombstone_order.pop_front() {
                t.tombstones.remove(&old);
                t.tombstones_lost = true;
            }
        }
    }

    /// Whether `identity` may use `session`. A session opened through this sidecar belongs to
    /// the caller who opened it; an evicted one is refused. A session the sidecar did not see
    /// opened (it restarted, say) is left to the server, until evictions may have been
    /// forgotten: then it is refused too, since it might be an evicted one.
    pub fn may_use(&self, session: &str, identity: Option<&Identity>) -> Result<(), Refusal> {
        let t = self.table.read();
        match t.by_session.get(session) {
            Some(e) if e.owner == Owner::of(identity) => Ok(()),
            Some(_) => Err(Refusal::NotOwner),
            None if t.tombstones_lost || t.tombstones.contains(&self.tombstone(session)) => {
                Err(Refusal::Evicted)
            }
            None => Ok(()),
        }
    }

    /// Forgets a session (DELETE).
    pub fn forget(&self, session: &str) {
        self.table.write().by_session.remove(session);
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
        assert!(t.may_use("s1", Some(&ana)).is_ok());
        assert_eq!(t.may_use("s1", Some(&bob)), Err(Refusal::NotOwner));
        assert!(
            t.may_use("s1", None).is_err(),
            "an anonymous caller cannot take over a caller's session"
        );
        assert!(t.may_use("unknown", Some(&bob)).is_ok());
        t.remember("s2", Arc::default(), None);
        assert!(t.may_use("s2", None).is_ok());
        assert!(t.may_use("s2", Some(&bob)).is_err());
    }

    #[test]
    fn past_capacity_the_oldest_is_evicted_alone_and_refused_afterwards() {
        let t = ClientTable::with_capacity(3);
        let ana = Identity {
            sub: "ana".into(),
            ..Default::default()
        };
        let bob = Identity {
            sub: "bob".into(),
            ..Default::default()
        };
        t.remember("a1", Arc::default(), Owner::of(Some(&ana)));
        t.remember("a2", Arc::default(), Owner::of(Some(&ana)));
        t.remember("b1", Arc::default(), Owner::of(Some(&bob)));
        t.forget("a2");
        t.remember("b2", Arc::default(), Owner::of(Some(&bob)));
        assert!(
            t.may_use("a1", Some(&ana)).is_ok(),
            "a forgotten session made room"
        );
        // Full: bob's next session evicts the oldest (a1), and only it.
        t.remember("b3", Arc::default(), Owner::of(Some(&bob)));
        assert_eq!(t.may_use("a1", Some(&bob)), Err(Refusal::Evicted));
        assert_eq!(t.may_use("a1", Some(&ana)), Err(Refusal::Evicted));
        assert!(t.may_use("b1", Some(&bob)).is_ok());
        assert_eq!(t.may_use("b1", Some(&ana)), Err(Refusal::NotOwner));
        assert!(t.may_use("never-seen", None).is_ok(), "left to the server");
        assert!(Refusal::Evicted.message(3).contains("at most 3 sessions"));

        // Thousands of sessions later, every owner still holds: no evicted session is free.
        for i in 0..10_000 {
            t.remember(&format!("x{i}"), Arc::default(), Owner::of(Some(&bob)));
            assert!(t.table.read().by_session.len() <= 3);
            assert!(t.table.read().order.len() <= 6);
        }
        for id in ["a1", "b1", "x0", "x9000"] {
            assert_eq!(t.may_use(id, Some(&ana)), Err(Refusal::Evicted), "{id}");
        }
        assert_eq!(t.may_use("x9999", Some(&ana)), Err(Refusal::NotOwner));
        assert!(t.table.read().tombstones.len() <= 12);
        assert_eq!(
            t.may_use("never-seen", None),
            Err(Refusal::Evicted),
            "once evictions were forgotten, an unknown session may be one"
        );
    }
}
