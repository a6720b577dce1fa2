//! Browser sessions of the dashboard. The login form's token is reviewed once (TokenReview); the
//! browser then carries only a random session id in a cookie (`HttpOnly`, `Secure`,
//! `SameSite=Strict`, expiring after [`TTL`]). The server keeps, per session, the caller the API
//! server named, keyed by the id's SHA-256, never the id or the token itself; each page is still
//! authorised through SubjectAccessReview for that caller. Bounded: past [`CAPACITY`] sessions,
//! expired ones go, and if none has, the oldest.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use sha2::{Digest, Sha256};

use crate::access::Caller;

/// How long a session lasts after login.
pub const TTL: Duration = Duration::from_secs(30 * 60);
/// Sessions kept at most.
const CAPACITY: usize = 1024;
/// The cookie's name.
pub const COOKIE: &str = "mcp-guard-session";

#[derive(Default)]
pub struct Sessions {
    by_hash: Mutex<HashMap<[u8; 32], (Instant, Caller)>>,
}

fn key(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

impl Sessions {
    /// Starts a session for `caller`: its id (64 hex digits from the OS's random source).
    pub fn create(&self, caller: Caller) -> Result<String, String> {
        let mut bytes = [0u8; 32];
        getrandom::getrandom(&mut bytes).map_err(|e| format!("no random source: {e}"))?;
        let id = mcp_guard_policy::bundle::hex(&bytes);
        let mut map = self.by_hash.lock();
        if map.len() >= CAPACITY {
            map.retain(|_, (at, _)| at.elapsed() < TTL);
            if map.len() >= CAPACITY
                && let Some(oldest) = map.iter().min_by_key(|(_, (at, _))| *at).map(|(k, _)| *k)
            {
                map.remove(&oldest);
            }
        }
        map.insert(key(&id), (Instant::now(), caller));
        Ok(id)
    }

    /// The caller of a live session.
    pub fn get(&self, id: &str) -> Option<Caller> {
        let k = key(id);
        let mut map = self.by_hash.lock();
        match map.get(&k) {
            Some((at, caller)) if at.elapsed() < TTL => Some(caller.clone()),
            Some(_) => {
                map.remove(&k);
                None
            }
            None => None,
        }
    }

    /// Ends a session (logout).
    pub fn remove(&self, id: &str) {
        self.by_hash.lock().remove(&key(id));
    }
}

/// The `Set-Cookie` value that gives the browser session `id`.
pub fn set_cookie(id: &str) -> String {
    format!(
        "{COOKIE}={id}; Path=/dashboard; Max-Age={}; HttpOnly; Secure; SameSite=Strict",
        TTL.as_secs()
    )
}

/// The `Set-Cookie` value that makes the browser forget its session.
pub fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/dashboard; Max-Age=0; HttpOnly; Secure; SameSite=Strict")
}

/// The session id in a `Cookie` header, if any.
pub fn from_cookie_header(header: &str) -> Option<&str> {
    header
        .split(';')
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(name: &str) -> Caller {
        Caller {
            username: name.into(),
            uid: None,
            groups: vec![],
            extra: Default::default(),
        }
    }

    #[test]
    fn a_session_names_its_caller_until_it_ends() {
        let s = Sessions::default();
        let id = s.create(caller("ana")).unwrap();
        assert_eq!(id.len(), 64);
        assert_ne!(id, s.create(caller("ana")).unwrap(), "ids are random");
        assert_eq!(s.get(&id).unwrap().username, "ana");
        assert!(s.get("0000").is_none());
        s.remove(&id);
        assert!(s.get(&id).is_none());
    }

    #[test]
    fn sessions_expire_and_stay_bounded() {
        let s = Sessions::default();
        let id = s.create(caller("ana")).unwrap();
        if let Some(e) = s.by_hash.lock().get_mut(&key(&id)) {
            e.0 = Instant::now() - TTL;
        }
        assert!(s.get(&id).is_none());
        for i in 0..(CAPACITY + 3) {
            s.create(caller(&i.to_string())).unwrap();
        }
        assert!(s.by_hash.lock().len() <= CAPACITY);
    }

    #[test]
    fn the_cookie_is_strict_and_read_back() {
        let c = set_cookie("abc");
        for attr in ["HttpOnly", "Secure", "SameSite=Strict", "Max-Age=1800"] {
            assert!(c.contains(attr), "{c}");
        }
        assert_eq!(
            from_cookie_header(&format!("a=b; {COOKIE}=abc; c=d")),
            Some("abc")
        );
        assert_eq!(from_cookie_header("a=b"), None);
        assert_eq!(from_cookie_header(&format!("{COOKIE}=")), None);
    }
}
