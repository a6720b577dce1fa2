//! The provider's signing keys: fetched from OIDC discovery, a JWKS URL or a file; refreshed in
//! the background; refetched on an unknown key id at most once per `min_refetch`. The last good
//! key set is kept while the provider is down.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use parking_lot::RwLock;
use serde_json::Value;

use super::AuthError;

/// Largest discovery or JWKS document accepted.
const MAX_DOC_BYTES: usize = 1024 * 1024;

/// Where keys come from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// `{issuer}/.well-known/openid-configuration` (or `oauth-authorization-server`).
    Discovery { issuer: String },
    /// A JWKS URL.
    Uri(String),
    /// A JWKS file.
    File(PathBuf),
}

/// One verification key.
pub struct Key {
    pub decoding: DecodingKey,
    /// The `alg` the JWK is restricted to, if any.
    pub alg: Option<Algorithm>,
}

/// One fetched key set.
#[derive(Default)]
pub struct KeySet {
    by_kid: HashMap<String, Arc<Key>>,
    without_kid: Vec<Arc<Key>>,
}

impl KeySet {
    /// Parses a JWKS document; keys that cannot be used for signatures (encryption keys,
    /// symmetric keys, unknown types) are skipped, never fatal.
    pub fn parse(doc: &[u8]) -> Result<KeySet, AuthError> {
        let v: Value = serde_json::from_slice(doc)
            .map_err(|e| AuthError::Keys(format!("the JWKS is not JSON: {e}")))?;
        let keys = v
            .get("keys")
            .and_then(Value::as_array)
            .ok_or_else(|| AuthError::Keys("the JWKS has no \"keys\" array".into()))?;
        let mut set = KeySet::default();
        for k in keys {
            let Ok(jwk) = serde_json::from_value::<Jwk>(k.clone()) else {
                continue;
            };
            if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
                continue;
            }
            if matches!(
                jwk.algorithm,
                jsonwebtoken::jwk::AlgorithmParameters::OctetKey(_)
            ) {
                // Symmetric keys never verify anything here (no HS/RS confusion).
                continue;
            }
            let alg = match jwk.common.key_algorithm {
                Some(a) => match Algorithm::try_from(a) {
                    Ok(a) => Some(a),
                    Err(_) => continue,
                },
                None => None,
            };
            let Ok(decoding) = DecodingKey::from_jwk(&jwk) else {
                continue;
            };
            let key = Arc::new(Key { decoding, alg });
            match jwk.common.key_id {
                Some(kid) => {
                    set.by_kid.insert(kid, key);
                }
                None => set.without_kid.push(key),
            }
        }
        Ok(set)
    }

    pub fn len(&self) -> usize {
        self.by_kid.len() + self.without_kid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The key for a token header: by `kid`, or the only kid-less key when the token has none.
    pub fn find(&self, kid: Option<&str>) -> Option<Arc<Key>> {
        match kid {
            Some(kid) => self.by_kid.get(kid).cloned(),
            None if self.without_kid.len() == 1 => self.without_kid.first().cloned(),
            None if self.without_kid.is_empty() && self.by_kid.len() == 1 => {
                self.by_kid.values().next().cloned()
            }
            None => None,
        }
    }

    fn kids(&self) -> impl Iterator<Item = &String> {
        self.by_kid.keys()
    }
}

/// The provider's endpoints learned from discovery.
#[derive(Debug, Clone, Default)]
struct Endpoints {
    jwks_uri: Option<String>,
    token_endpoint: Option<String>,
}

struct FetchState {
    last_attempt: Option<Instant>,
    endpoints: Endpoints,
}

/// The key cache.
pub struct KeyStore {
    source: KeySource,
    http: reqwest::Client,
    current: RwLock<Arc<KeySet>>,
    /// Serialises fetches (single flight) and rate-limits them.
    fetch: tokio::sync::Mutex<FetchState>,
    min_refetch: Duration,
    /// Called after a fetch that removed a key id (cached verified tokens must go).
    on_revoke: Box<dyn Fn() + Send + Sync>,
    /// `Cache-Control: max-age` of the last document fetched, if it had one.
    max_age: parking_lot::Mutex<Option<Duration>>,
    /// Where fetches are counted.
    metrics: Arc<crate::metrics::Metrics>,
}

impl KeyStore {
    pub fn new(
        source: KeySource,
        http: reqwest::Client,
        min_refetch: Duration,
        on_revoke: Box<dyn Fn() + Send + Sync>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Self {
        KeyStore {
            source,
            http,
            current: RwLock::new(Arc::default()),
            fetch: tokio::sync::Mutex::new(FetchState {
                last_attempt: None,
                endpoints: Endpoints::default(),
            }),
            min_refetch,
            on_revoke,
            max_age: parking_lot::Mutex::new(None),
            metrics,
        }
    }

    /// How long the provider said its keys may be cached (`Cache-Control: max-age`).
    pub fn max_age(&self) -> Option<Duration> {
        *self.max_age.lock()
    }

    /// The key set now (possibly empty before the first fetch).
    pub fn current(&self) -> Arc<KeySet> {
        Arc::clone(&self.current.read())
    }

    /// A key by id; on a miss, refetches unless a fetch happened within `min_refetch`.
    pub async fn find(&self, kid: Option<&str>) -> Option<Arc<Key>> {
        if let Some(k) = self.current().find(kid) {
            return Some(k);
        }
        let seen = Arc::clone(&self.current.read());
        let mut state = self.fetch.lock().await;
        // Another request may have refetched while this one waited.
        let now_set = self.current();
        if !Arc::ptr_eq(&seen, &now_set) {
            return now_set.find(kid);
        }
        if state
            .last_attempt
            .is_some_and(|t| t.elapsed() < self.min_refetch)
        {
            return None;
        }
        if let Err(e) = self.fetch_counted(&mut state).await {
            tracing::warn!(error = %e, "refetching keys for an unknown key id failed");
        }
        self.current().find(kid)
    }

    /// Fetches now (startup, background refresh). Keeps the last good set on failure.
    pub async fn refresh(&self) -> Result<usize, AuthError> {
        let mut state = self.fetch.lock().await;
        self.fetch_counted(&mut state).await
    }

    async fn fetch_counted(&self, state: &mut FetchState) -> Result<usize, AuthError> {
        let r = self.fetch_locked(state).await;
        self.metrics.key_refreshed(r.is_ok());
        r
    }

    /// The token endpoint from discovery (fetching discovery if needed).
    pub async fn token_endpoint(&self) -> Result<String, AuthError> {
        let mut state = self.fetch.lock().await;
        if let Some(t) = &state.endpoints.token_endpoint {
            return Ok(t.clone());
        }
        if let KeySource::Discovery { issuer } = &self.source {
            state.endpoints = self.discover(issuer).await?;
        }
        state
            .endpoints
            .token_endpoint
            .clone()
            .ok_or_else(|| AuthError::Config("no token endpoint: set --token-endpoint".into()))
    }

    async fn fetch_locked(&self, state: &mut FetchState) -> Result<usize, AuthError> {
        state.last_attempt = Some(Instant::now());
        let doc = match &self.source {
            KeySource::File(path) => {
                let path = path.clone();
                let read = tokio::task::spawn_blocking(move || std::fs::read(&path)).await;
                match read {
                    Ok(Ok(b)) => b,
                    Ok(Err(e)) => return Err(AuthError::Keys(format!("cannot read JWKS: {e}"))),
                    Err(e) => return Err(AuthError::Keys(format!("cannot read JWKS: {e}"))),
                }
            }
            KeySource::Uri(uri) => self.get(uri).await?,
            KeySource::Discovery { issuer } => {
                if state.endpoints.jwks_uri.is_none() {
                    state.endpoints = self.discover(issuer).await?;
                }
                let Some(uri) = state.endpoints.jwks_uri.clone() else {
                    return Err(AuthError::Keys("discovery names no jwks_uri".into()));
                };
                match self.get(&uri).await {
                    Ok(d) => d,
                    Err(e) => {
                        // The provider may have moved its keys: rediscover next time.
                        state.endpoints.jwks_uri = None;
                        return Err(e);
                    }
                }
            }
        };
        let set = KeySet::parse(&doc)?;
        if set.is_empty() {
            return Err(AuthError::Keys(
                "the JWKS holds no usable signing key".into(),
            ));
        }
        let n = set.len();
        let old = {
            let mut cur = self.current.write();
            std::mem::replace(&mut *cur, Arc::new(set))
        };
        let new = self.current();
        let revoked = old.kids().any(|k| new.find(Some(k)).is_none());
        let added = new.kids().filter(|k| old.find(Some(k)).is_none()).count();
        if revoked {
            (self.on_revoke)();
        }
        if revoked || added > 0 {
            tracing::info!(keys = n, added, revoked, "signing keys updated");
        }
        Ok(n)
    }

    async fn discover(&self, issuer: &str) -> Result<Endpoints, AuthError> {
        let base = issuer.trim_end_matches('/');
        let mut last = None;
        for wk in ["openid-configuration", "oauth-authorization-server"] {
            let url = format!("{base}/.well-known/{wk}");
            match self.get(&url).await {
                Ok(doc) => {
                    let v: Value = serde_json::from_slice(&doc)
                        .map_err(|e| AuthError::Keys(format!("{url} is not JSON: {e}")))?;
                    // Mix-up protection: the document must be the configured issuer's.
                    if v.get("issuer").and_then(Value::as_str) != Some(issuer) {
                        return Err(AuthError::Keys(format!(
                            "{url} names another issuer than {issuer}"
                        )));
                    }
                    let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
                    return Ok(Endpoints {
                        jwks_uri: s("jwks_uri"),
                        token_endpoint: s("token_endpoint"),
                    });
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| AuthError::Keys("discovery failed".into())))
    }

    async fn get(&self, url: &str) -> Result<Vec<u8>, AuthError> {
        let resp = self
            .http
            .get(url)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| AuthError::Keys(format!("GET {url}: {e}")))?;
        if !resp.status().is_success() {
            return Err(AuthError::Keys(format!(
                "GET {url}: HTTP {}",
                resp.status()
            )));
        }
        if resp
            .content_length()
            .is_some_and(|n| n > MAX_DOC_BYTES as u64)
        {
            return Err(AuthError::Keys(format!("GET {url}: answer too large")));
        }
        *self.max_age.lock() = resp
            .headers()
            .get(reqwest::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_max_age);
        let body = resp
            .bytes()
            .await
            .map_err(|e| AuthError::Keys(format!("GET {url}: {e}")))?;
        if body.len() > MAX_DOC_BYTES {
            return Err(AuthError::Keys(format!("GET {url}: answer too large")));
        }
        Ok(body.to_vec())
    }
}

/// `max-age` of a Cache-Control value (`no-store` / `no-cache` count as 0).
pub fn parse_max_age(v: &str) -> Option<Duration> {
    v.split(',').map(str::trim).find_map(|d| {
        let d = d.to_ascii_lowercase();
        if d == "no-store" || d == "no-cache" {
            return Some(Duration::ZERO);
        }
        d.strip_prefix("max-age=")
            .and_then(|n| n.trim_matches('"').parse::<u64>().ok())
            .map(Duration::from_secs)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_age() {
        assert_eq!(
            parse_max_age("public, max-age=600"),
            Some(Duration::from_secs(600))
        );
        assert_eq!(parse_max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(parse_max_age("public"), None);
    }

    #[test]
    fn jwks_parsing_skips_what_cannot_verify() {
        let doc = br#"{"keys":[
            {"kty":"oct","k":"c2VjcmV0","kid":"hmac"},
            {"kty":"RSA","use":"enc","n":"sXch","e":"AQAB","kid":"enc"},
            {"kty":"weird","kid":"w"},
            {"kty":"EC","crv":"P-256","kid":"ec","x":"MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4","y":"4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM"}
        ]}"#;
        let set = KeySet::parse(doc).expect("parses");
        assert_eq!(set.len(), 1);
        assert!(set.find(Some("hmac")).is_none());
        assert!(set.find(Some("ec")).is_some());
        assert!(KeySet::parse(b"{}").is_err());
        assert!(KeySet::parse(b"nope").is_err());
    }
}
