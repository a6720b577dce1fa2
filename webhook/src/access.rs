//! Who is calling, and what they may read: the API server decides, through a TokenReview (the
//! caller's bearer token, as `kubectl` would send it) and a SubjectAccessReview (Kubernetes
//! RBAC), so the webhook's HTTP endpoints for people (the registry API) follow the same roles as
//! `kubectl get`. The webhook never sees a password and keeps no user list of its own.
//!
//! Both answers are cached for [`TTL`], keyed by the token's SHA-256 (never the token itself)
//! and by the user and the object: a burst of pages costs the API server two reviews, and a
//! revoked binding takes effect within the TTL. A token the API server refused is remembered as
//! refused for the same time, so repeating it does not repeat the review. A review the API
//! server cannot answer is not cached and fails closed (the caller gets 503, not the data).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};
use parking_lot::Mutex;
use sha2::{Digest, Sha256};

/// How long an authentication or an authorization decision is reused.
pub const TTL: Duration = Duration::from_secs(10);
/// Entries kept per cache; past it, expired entries go, and if none has, the cache starts over.
const CAPACITY: usize = 4096;

/// A caller the API server authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub username: String,
    pub uid: Option<String>,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

/// Why a request gets no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No bearer token, or one the API server does not accept: 401.
    #[error("{0}")]
    Unauthenticated(String),
    /// The API server could not be asked: 503 (fail closed).
    #[error("{0}")]
    Unavailable(String),
}

/// A resource of the API, as a SubjectAccessReview names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Resource {
    pub group: &'static str,
    pub resource: &'static str,
    pub verb: &'static str,
    /// The namespace, or `None` for all namespaces (and for cluster-scoped resources).
    pub namespace: Option<String>,
    /// One object, or `None` for the whole collection.
    pub name: Option<String>,
}

struct Cache<K, V> {
    entries: HashMap<K, (Instant, V)>,
}

impl<K: std::hash::Hash + Eq, V: Clone> Cache<K, V> {
    fn get(&self, key: &K) -> Option<V> {
        self.entries
            .get(key)
            .filter(|(at, _)| at.elapsed() < TTL)
            .map(|(_, v)| v.clone())
    }

    fn put(&mut self, key: K, value: V) {
        if self.entries.len() >= CAPACITY {
            self.entries.retain(|_, (at, _)| at.elapsed() < TTL);
            if self.entries.len() >= CAPACITY {
                self.entries.clear();
            }
        }
        self.entries.insert(key, (Instant::now(), value));
    }
}

impl<K, V> Default for Cache<K, V> {
    fn default() -> Self {
        Self {
            entries: HashMap::new(),
        }
    }
}

/// A decision's key: user name, groups, and what was asked.
type DecisionKey = (String, Vec<String>, Resource);

/// The API server's answers to "who is this" and "may they", cached.
pub struct Access {
    client: kube::Client,
    /// Per token hash: who it is, or why the API server refused it.
    callers: Mutex<Cache<[u8; 32], Result<Caller, String>>>,
    decisions: Mutex<Cache<DecisionKey, bool>>,
}

impl Access {
    pub fn new(client: kube::Client) -> Self {
        Self {
            client,
            callers: Mutex::default(),
            decisions: Mutex::default(),
        }
    }

    /// The caller behind an `Authorization` header value.
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Caller, Refusal> {
        let token = bearer(authorization)?;
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(known) = self.callers.lock().get(&key) {
            return known.map_err(Refusal::Unauthenticated);
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_string(),
                audiences: None,
            },
            ..TokenReview::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| Refusal::Unavailable(format!("cannot review the token: {e}")))?;
        let status = answer.status.unwrap_or_default();
        let user = status.user.unwrap_or_default();
        let username = user.username.unwrap_or_default();
        if status.authenticated != Some(true) || username.is_empty() {
            let why = status.error.unwrap_or_else(|| "not authenticated".into());
            let refusal = format!("the API server does not accept the bearer token: {why}");
            self.callers.lock().put(key, Err(refusal.clone()));
            return Err(Refusal::Unauthenticated(refusal));
        }
        let caller = Caller {
            username,
            uid: user.uid,
            groups: user.groups.unwrap_or_default(),
            extra: user.extra.unwrap_or_default(),
        };
        self.callers.lock().put(key, Ok(caller.clone()));
        Ok(caller)
    }

    /// Whether RBAC lets `caller` do `what`.
    pub async fn allowed(&self, caller: &Caller, what: &Resource) -> Result<bool, Refusal> {
        let key = (caller.username.clone(), caller.groups.clone(), what.clone());
        if let Some(d) = self.decisions.lock().get(&key) {
            return Ok(d);
        }
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(caller.username.clone()),
                uid: caller.uid.clone(),
                groups: Some(caller.groups.clone()),
                extra: Some(caller.extra.clone()),
                resource_attributes: Some(ResourceAttributes {
                    group: Some(what.group.to_string()),
                    resource: Some(what.resource.to_string()),
                    verb: Some(what.verb.to_string()),
                    namespace: what.namespace.clone(),
                    name: what.name.clone(),
                    ..ResourceAttributes::default()
                }),
                ..SubjectAccessReviewSpec::default()
            },
            ..SubjectAccessReview::default()
        };
        let api: Api<SubjectAccessReview> = Api::all(self.client.clone());
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| Refusal::Unavailable(format!("cannot review the access: {e}")))?;
        let allowed = answer
            .status
            .is_some_and(|s| s.allowed && s.denied != Some(true));
        self.decisions.lock().put(key, allowed);
        Ok(allowed)
    }
}

/// The token of `Authorization: Bearer TOKEN`.
fn bearer(authorization: Option<&str>) -> Result<&str, Refusal> {
    let value = authorization.ok_or_else(|| {
        Refusal::Unauthenticated(
            "no Authorization header: send a Kubernetes bearer token (kubectl create token)".into(),
        )
    })?;
    let (scheme, token) = value
        .trim()
        .split_once(' ')
        .ok_or_else(|| Refusal::Unauthenticated("Authorization is not `Bearer TOKEN`".into()))?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(Refusal::Unauthenticated(
            "Authorization is not `Bearer TOKEN`".into(),
        ));
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_read_and_others_refused_by_name() {
        assert_eq!(bearer(Some("Bearer abc")), Ok("abc"));
        assert_eq!(bearer(Some("bearer  abc ")), Ok("abc"));
        for bad in [Some("Basic abc"), Some("Bearer "), Some("abc")] {
            assert!(
                matches!(bearer(bad), Err(Refusal::Unauthenticated(m)) if m.contains("Bearer TOKEN")),
                "{bad:?}"
            );
        }
        assert!(
            matches!(bearer(None), Err(Refusal::Unauthenticated(m)) if m.contains("no Authorization"))
        );
    }

    #[test]
    fn the_cache_forgets_after_the_ttl_and_stays_bounded() {
        let mut c: Cache<u32, bool> = Cache::default();
        c.put(1, true);
        assert_eq!(c.get(&1), Some(true));
        for i in 0..(CAPACITY as u32 + 10) {
            c.put(i, false);
        }
        assert!(c.entries.len() <= CAPACITY);
        c.entries.insert(7, (Instant::now() - TTL, true));
        assert_eq!(c.get(&7), None);
    }
}
