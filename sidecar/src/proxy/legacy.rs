//! The older HTTP+SSE transport (MCP 2024-11-05): the client opens `GET /sse`, the server
//! announces a message endpoint in an `endpoint` event, the client POSTs there and every answer
//! arrives on the GET stream. The sidecar learns each session's endpoint from that event, so it
//! can match answers on the stream to the requests it saw, and answer denied requests on the
//! stream itself.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use tokio::sync::mpsc;

use mcp_guard_policy::mcp::List;

use super::clients::Owner;
use super::rewrite::{EndpointHook, PendingRequests};
use crate::identity::Identity;

/// How many answers the sidecar may have queued on one stream before a POST waits.
const INJECT_QUEUE: usize = 64;
/// Requests awaiting an answer per session; beyond this the oldest knowledge is dropped (answers
/// are still filtered by their shape).
const MAX_PENDING: usize = 10_000;

/// One open GET stream.
pub struct Session {
    pending: Mutex<HashMap<String, List>>,
    inject: mpsc::Sender<Bytes>,
    /// The verified caller who opened the stream; only they may post to it.
    owner: Option<Owner>,
}

impl Session {
    /// Whether `identity` may post to this session.
    pub fn may_use(&self, identity: Option<&Identity>) -> bool {
        self.owner == Owner::of(identity)
    }

    /// Notes that the answer to request `id` must be rewritten as an answer to `method`.
    pub fn expect(&self, id: String, method: List) {
        let mut p = self.pending.lock();
        if p.len() >= MAX_PENDING {
            p.clear();
        }
        p.insert(id, method);
    }

    /// Sends an event on the session's stream (an answer the sidecar gives itself).
    pub async fn inject(&self, event: Bytes) -> bool {
        self.inject.send(event).await.is_ok()
    }
}

struct SharedPending(Arc<Session>);

impl PendingRequests for SharedPending {
    fn take(&mut self, id: &str) -> Option<List> {
        self.0.pending.lock().remove(id)
    }
    fn is_empty(&self) -> bool {
        self.0.pending.lock().is_empty()
    }
}

/// Every open session, keyed by its endpoint (`path?query`), and the message paths learned.
#[derive(Default)]
pub struct Sessions {
    by_endpoint: RwLock<HashMap<String, Arc<Session>>>,
    paths: RwLock<HashSet<String>>,
}

/// What the proxy needs to serve one new GET stream.
pub struct NewStream {
    pub pending: Box<dyn PendingRequests>,
    pub hook: EndpointHook,
    pub injected: mpsc::Receiver<Bytes>,
    /// Forgets the session when the stream ends.
    pub guard: Box<dyn Send + Sync>,
}

struct Guard {
    sessions: Arc<Sessions>,
    key: Arc<Mutex<Option<String>>>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(k) = self.key.lock().take() {
            self.sessions.by_endpoint.write().remove(&k);
            tracing::debug!(endpoint = %k, "SSE session closed");
        }
    }
}

impl Sessions {
    /// Prepares a GET stream: its session is registered when the server announces its endpoint.
    pub fn open(self: &Arc<Self>, upstream_authority: String, owner: Option<Owner>) -> NewStream {
        let (tx, rx) = mpsc::channel(INJECT_QUEUE);
        let session = Arc::new(Session {
            pending: Mutex::new(HashMap::new()),
            inject: tx,
            owner,
        });
        let key = Arc::new(Mutex::new(None));
        let hook = {
            let sessions = Arc::clone(self);
            let session = Arc::clone(&session);
            let key = Arc::clone(&key);
            Box::new(move |announced: &str| {
                let local = local_endpoint(announced, &upstream_authority);
                let path = local.split('?').next().unwrap_or_default().to_owned();
                sessions.paths.write().insert(path);
                sessions
                    .by_endpoint
                    .write()
                    .insert(local.clone(), Arc::clone(&session));
                if let Some(old) = key.lock().replace(local.clone()) {
                    sessions.by_endpoint.write().remove(&old);
                }
                tracing::debug!(endpoint = %local, "SSE session opened");
                local
            }) as EndpointHook
        };
        NewStream {
            pending: Box::new(SharedPending(session)),
            hook,
            injected: rx,
            guard: Box::new(Guard {
                sessions: Arc::clone(self),
                key,
            }),
        }
    }

    /// Whether `path` is a message endpoint some server announced.
    pub fn is_message_path(&self, path: &str) -> bool {
        self.paths.read().contains(path)
    }

    /// The open session behind an endpoint (`path?query`).
    pub fn get(&self, endpoint: &str) -> Option<Arc<Session>> {
        self.by_endpoint.read().get(endpoint).cloned()
    }
}

/// The endpoint as the client must see it: a path on the sidecar. An absolute URL pointing at the
/// server itself is cut down to its path, so the client keeps talking to the sidecar.
fn local_endpoint(announced: &str, upstream_authority: &str) -> String {
    let announced = announced.trim();
    for scheme in ["http://", "https://"] {
        if let Some(rest) = announced.strip_prefix(scheme) {
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            if authority != upstream_authority {
                tracing::warn!(
                    announced,
                    "SSE endpoint names another host; sending the client to the sidecar instead"
                );
            }
            return if path.is_empty() {
                "/".into()
            } else {
                path.into()
            };
        }
    }
    if announced.starts_with('/') {
        announced.into()
    } else {
        format!("/{announced}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_become_local_paths() {
        assert_eq!(
            local_endpoint("/message?sessionId=1", "127.0.0.1:8"),
            "/message?sessionId=1"
        );
        assert_eq!(
            local_endpoint("http://127.0.0.1:8/messages/?session_id=ab", "127.0.0.1:8"),
            "/messages/?session_id=ab"
        );
        assert_eq!(local_endpoint("messages?x=1", "h:1"), "/messages?x=1");
    }

    #[test]
    fn session_lives_as_long_as_its_stream() {
        let sessions = Arc::new(Sessions::default());
        let mut s = sessions.open("127.0.0.1:8".into(), None);
        assert_eq!((s.hook)("/message?sessionId=9"), "/message?sessionId=9");
        assert!(sessions.is_message_path("/message"));
        let sess = sessions.get("/message?sessionId=9").unwrap();
        sess.expect("1".into(), List::Tools);
        assert_eq!(s.pending.take("1"), Some(List::Tools));
        drop(s.guard);
        assert!(sessions.get("/message?sessionId=9").is_none());
    }
}
