//! How the verified identity reaches the MCP server: identity headers, a JWT minted by the
//! sidecar, or an RFC 8693 token exchange at the provider. The client's token is never among
//! them.

use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use jsonwebtoken::jwk::{Jwk, JwkSet, ThumbprintHash};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Map, Value, json};

use super::AuthError;
use super::cache::{ExpiringCache, TokenHash, now_secs};
use crate::identity::Identity;

/// One identity field and the header that carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Sub,
    Iss,
    Email,
    Groups,
    Roles,
    Scopes,
    Client,
}

/// Parses `field=header` pairs.
pub fn parse_identity_headers(specs: &[String]) -> Result<Vec<(Field, HeaderName)>, AuthError> {
    let mut out = Vec::new();
    for spec in specs.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        let (f, h) = spec.split_once('=').ok_or_else(|| {
            AuthError::Config(format!("identity header {spec:?}: expected field=header"))
        })?;
        let field = match f.trim() {
            "sub" => Field::Sub,
            "iss" => Field::Iss,
            "email" => Field::Email,
            "groups" => Field::Groups,
            "roles" => Field::Roles,
            "scopes" => Field::Scopes,
            "client" => Field::Client,
            other => {
                return Err(AuthError::Config(format!(
                    "identity header field {other:?}: use sub, iss, email, groups, roles, scopes or client"
                )));
            }
        };
        let name = HeaderName::from_bytes(h.trim().to_ascii_lowercase().as_bytes())
            .map_err(|_| AuthError::Config(format!("identity header name {h:?} is invalid")))?;
        if name == http::header::AUTHORIZATION || name == http::header::HOST {
            return Err(AuthError::Config(format!(
                "identity header name {name} is reserved"
            )));
        }
        out.push((field, name));
    }
    Ok(out)
}

/// Percent-encodes what a header value cannot hold, and `%` and `,` (the list separator).
pub fn header_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' && b != b',' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The header values for one identity (fields it lacks are left out).
pub fn identity_header_values(
    names: &[(Field, HeaderName)],
    id: &Identity,
) -> Vec<(HeaderName, HeaderValue)> {
    let list = |v: &[String]| {
        v.iter()
            .map(|s| header_text(s))
            .collect::<Vec<_>>()
            .join(",")
    };
    names
        .iter()
        .filter_map(|(f, name)| {
            let text = match f {
                Field::Sub => Some(header_text(&id.sub)),
                Field::Iss => Some(header_text(&id.iss)),
                Field::Email => id.email.as_deref().map(header_text),
                Field::Groups => Some(list(&id.groups)),
                Field::Roles => Some(list(&id.roles)),
                Field::Scopes => Some(list(&id.scopes)),
                Field::Client => id.client_id.as_deref().map(header_text),
            }?;
            HeaderValue::from_str(&text).ok().map(|v| (name.clone(), v))
        })
        .collect()
}

/// The header that carries the signature of the identity headers.
pub const SIGNATURE_HEADER: HeaderName = HeaderName::from_static("x-mcp-guard-signature");

/// The signature of identity headers: HMAC-SHA256 with a shared key over
/// `"v1\n{t}\n"` followed by `"{name}:{value}\n"` for each header sent, in configuration order.
pub fn sign_headers(
    key: &[u8],
    t: u64,
    headers: &[(HeaderName, HeaderValue)],
) -> Option<HeaderValue> {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).ok()?;
    mac.update(format!("v1\n{t}\n").as_bytes());
    for (name, value) in headers {
        mac.update(name.as_str().as_bytes());
        mac.update(b":");
        mac.update(value.as_bytes());
        mac.update(b"\n");
    }
    let digest = mac.finalize().into_bytes();
    let hex = mcp_guard_policy::bundle::hex(&digest);
    HeaderValue::from_str(&format!("t={t},v1={hex}")).ok()
}

/// Mints short-lived tokens for the server, signed with a mounted key.
pub struct Minter {
    key: EncodingKey,
    alg: Algorithm,
    kid: String,
    issuer: String,
    audience: String,
    ttl: Duration,
    jwks: bytes::Bytes,
    cache: ExpiringCache<TokenHash, Arc<str>>,
}

impl Minter {
    pub fn from_pem(
        pem: &[u8],
        kid: Option<String>,
        issuer: String,
        audience: String,
        ttl: Duration,
        cache_size: usize,
    ) -> Result<Self, AuthError> {
        let bad = |e: jsonwebtoken::errors::Error| {
            AuthError::Config(format!("the mint key is not a usable PEM private key: {e}"))
        };
        let text = std::str::from_utf8(pem).unwrap_or_default();
        let (key, alg) = if text.contains("BEGIN EC PRIVATE KEY")
            || (text.contains("BEGIN PRIVATE KEY") && EncodingKey::from_ec_pem(pem).is_ok())
        {
            (
                EncodingKey::from_ec_pem(pem).map_err(bad)?,
                Algorithm::ES256,
            )
        } else {
            (
                EncodingKey::from_rsa_pem(pem).map_err(bad)?,
                Algorithm::RS256,
            )
        };
        let mut jwk = Jwk::from_encoding_key(&key, alg).map_err(bad)?;
        let kid = match kid {
            Some(k) => k,
            None => jwk.thumbprint(ThumbprintHash::SHA256).map_err(bad)?,
        };
        jwk.common.key_id = Some(kid.clone());
        jwk.common.public_key_use = Some(jsonwebtoken::jwk::PublicKeyUse::Signature);
        let set = JwkSet { keys: vec![jwk] };
        let jwks = serde_json::to_vec(&set)
            .map_err(|e| AuthError::Config(format!("cannot encode the mint JWKS: {e}")))?;
        Ok(Minter {
            key,
            alg,
            kid,
            issuer,
            audience,
            ttl,
            jwks: bytes::Bytes::from(jwks),
            cache: ExpiringCache::new(cache_size),
        })
    }

    /// The public JWKS of the minting key (served on the admin port).
    pub fn jwks(&self) -> bytes::Bytes {
        self.jwks.clone()
    }

    /// A token for the server, cached per client token until shortly before it expires.
    pub fn mint(&self, token_hash: &TokenHash, id: &Identity) -> Result<Arc<str>, AuthError> {
        let now = now_secs();
        if let Some(t) = self.cache.get(token_hash, now + 5) {
            return Ok(t);
        }
        let client_exp = id
            .claims
            .get("exp")
            .and_then(Value::as_u64)
            .unwrap_or(u64::MAX);
        let exp = (now + self.ttl.as_secs().max(1)).min(client_exp);
        let mut claims = Map::new();
        claims.insert("iss".into(), json!(self.issuer));
        claims.insert("sub".into(), json!(id.sub));
        claims.insert("aud".into(), json!(self.audience));
        claims.insert("iat".into(), json!(now));
        claims.insert("nbf".into(), json!(now));
        claims.insert("exp".into(), json!(exp));
        claims.insert("jti".into(), json!(uuid::Uuid::new_v4().to_string()));
        claims.insert("orig_iss".into(), json!(id.iss));
        if let Some(c) = &id.client_id {
            claims.insert("act".into(), json!({ "sub": c }));
            claims.insert("client_id".into(), json!(c));
        }
        if let Some(e) = &id.email {
            claims.insert("email".into(), json!(e));
        }
        claims.insert("groups".into(), json!(id.groups));
        claims.insert("roles".into(), json!(id.roles));
        if !id.scopes.is_empty() {
            claims.insert("scope".into(), json!(id.scopes.join(" ")));
        }
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        header.typ = Some("JWT".into());
        let t: Arc<str> = jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| AuthError::Passthrough(format!("cannot sign a minted token: {e}")))?
            .into();
        self.cache.insert(*token_hash, Arc::clone(&t), exp, now);
        Ok(t)
    }
}

/// RFC 8693 token exchange at the provider, cached per subject.
pub struct Exchanger {
    pub http: reqwest::Client,
    pub client_id: String,
    pub client_secret: String,
    pub audience: String,
    pub scope: Option<String>,
    pub cache: ExpiringCache<String, Arc<str>>,
    /// One exchange at a time per subject: concurrent first requests wait for it.
    pub inflight:
        parking_lot::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Exchanger {
    /// The cache key of a subject: issuer, subject and the agent acting for it.
    fn subject_key(id: &Identity) -> String {
        format!(
            "{}\u{0}{}\u{0}{}",
            id.iss,
            id.sub,
            id.client_id.as_deref().unwrap_or("")
        )
    }

    /// A token for the server in exchange for the client's.
    pub async fn exchange(
        &self,
        token_endpoint: &str,
        subject_token: &str,
        id: &Identity,
    ) -> Result<Arc<str>, AuthError> {
        let key = Self::subject_key(id);
        let now = now_secs();
        // Shortly before expiry, exchange again.
        if let Some(t) = self.cache.get(&key, now + 30) {
            return Ok(t);
        }
        let lock = Arc::clone(self.inflight.lock().entry(key.clone()).or_default());
        let result = {
            let _one = lock.lock().await;
            match self.cache.get(&key, now_secs() + 30) {
                Some(t) => Ok(t),
                None => {
                    self.exchange_now(token_endpoint, subject_token, key.clone())
                        .await
                }
            }
        };
        let mut inflight = self.inflight.lock();
        if Arc::strong_count(&lock) <= 2 {
            inflight.remove(&key);
        }
        result
    }

    async fn exchange_now(
        &self,
        token_endpoint: &str,
        subject_token: &str,
        key: String,
    ) -> Result<Arc<str>, AuthError> {
        let now = now_secs();
        let mut form = vec![
            (
                "grant_type",
                "urn:ietf:params:oauth:grant-type:token-exchange",
            ),
            ("subject_token", subject_token),
            (
                "subject_token_type",
                "urn:ietf:params:oauth:token-type:access_token",
            ),
            (
                "requested_token_type",
                "urn:ietf:params:oauth:token-type:access_token",
            ),
            ("audience", self.audience.as_str()),
        ];
        if let Some(s) = &self.scope {
            form.push(("scope", s.as_str()));
        }
        let resp = self
            .http
            .post(token_endpoint)
            .basic_auth(&self.client_id, Some(&self.client_secret))
            .form(&form)
            .send()
            .await
            .map_err(|e| AuthError::Passthrough(format!("token exchange: {e}")))?;
        let status = resp.status();
        let body: Value = resp
            .json()
            .await
            .map_err(|e| AuthError::Passthrough(format!("token exchange answer: {e}")))?;
        if !status.is_success() {
            let err = body.get("error").and_then(Value::as_str).unwrap_or("?");
            return Err(AuthError::Passthrough(format!(
                "token exchange refused: HTTP {status}, error {err}"
            )));
        }
        let token: Arc<str> = body
            .get("access_token")
            .and_then(Value::as_str)
            .ok_or_else(|| AuthError::Passthrough("token exchange: no access_token".into()))?
            .into();
        let expires_in = body.get("expires_in").and_then(Value::as_u64).unwrap_or(60);
        self.cache
            .insert(key, Arc::clone(&token), now + expires_in, now);
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_are_encoded() {
        assert_eq!(header_text("a b,c%d\u{e9}"), "a b%2Cc%25d%C3%A9");
        let names = parse_identity_headers(&["sub=X-User".into(), "groups=x-groups".into()])
            .expect("valid");
        let id = Identity {
            sub: "alice".into(),
            groups: vec!["a,b".into(), "c".into()],
            ..Identity::default()
        };
        let v = identity_header_values(&names, &id);
        assert_eq!(v[0].0.as_str(), "x-user");
        assert_eq!(v[1].1, "a%2Cb,c");
        assert!(parse_identity_headers(&["sub=authorization".into()]).is_err());
        assert!(parse_identity_headers(&["who=x".into()]).is_err());
        let sig = sign_headers(b"k", 7, &v).expect("signature");
        let again = sign_headers(b"k", 7, &v).expect("signature");
        assert_eq!(sig, again);
        // The same HMAC-SHA256 computed by Python's hmac module, so a server verifying with any
        // standard library agrees.
        assert_eq!(
            sig.to_str().unwrap_or(""),
            "t=7,v1=1c1b288959c8b857fbe9ce3d103dc737a6ea2d998950f38a856e30e8b12b53c9"
        );
        assert_ne!(sign_headers(b"other", 7, &v), Some(sig));
    }
}
