//! Identity: the sidecar as an OAuth 2.1 resource server (MCP authorization spec). Verifies the
//! bearer JWT of each request on the MCP paths, serves RFC 9728 protected resource metadata,
//! answers 401/403 with `WWW-Authenticate`, and passes the verified identity on to the server
//! without ever forwarding the client's token (unless explicitly told to).
//!
//! The hot path is one SHA-256 of the token and a read-locked map lookup: verified tokens are
//! cached until they expire ([`cache`]); keys are refreshed in the background ([`keys`]).

pub mod cache;
pub mod config;
pub mod keys;
pub mod passthrough;

use std::collections::HashSet;
use std::sync::{Arc, Weak};

use axum::body::Body;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value, json};

pub use config::{AuthConfig, PassthroughMode};
/// Re-exported for tests that forge tokens with the same library.
pub use jsonwebtoken;

use crate::identity::Identity;
use crate::jsonrpc;
use crate::metrics::Metrics;
use cache::{ExpiringCache, TokenHash, now_secs};
use keys::{KeySource, KeyStore};
use passthrough::{Exchanger, Field, Minter};

/// JSON-RPC code of the sidecar's 401/403 answers.
pub const UNAUTHORIZED: i64 = -32001;
/// Where RFC 9728 metadata lives.
pub const METADATA_PATH: &str = "/.well-known/oauth-protected-resource";
/// Longest token considered.
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Errors of the identity layer's setup and of its calls to the provider.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("identity configuration: {0}")]
    Config(String),
    #[error("identity provider keys: {0}")]
    Keys(String),
    #[error("identity passthrough: {0}")]
    Passthrough(String),
}

/// Why a request was refused. Descriptions are fixed texts: nothing of the token is echoed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// No bearer token (401, no error code: RFC 6750 §3.1).
    Missing,
    /// A malformed request: several Authorization headers, a token in the query string (400).
    InvalidRequest(&'static str),
    /// The token is not acceptable (401 `invalid_token`).
    InvalidToken(&'static str),
    /// The token lacks required scopes (403 `insufficient_scope`).
    InsufficientScope,
    /// No key has ever been loaded: cannot decide (503).
    Unavailable,
    /// The identity could not be passed on (token exchange failed; 502).
    Passthrough,
}

/// The caller of a request, put in its extensions by [`Authenticator::admit`].
#[derive(Debug, Clone, Default)]
pub struct Caller(pub Option<Arc<Identity>>);

struct Verifier {
    issuer: String,
    validations: Vec<(Algorithm, Validation)>,
    require_at_jwt: bool,
    required_scopes: Vec<String>,
    allow_anonymous: bool,
    keys: Arc<KeyStore>,
    cache: Arc<ExpiringCache<TokenHash, Arc<Identity>>>,
    refresh: std::time::Duration,
    min_refetch: std::time::Duration,
}

struct Metadata {
    paths: Vec<String>,
    body: Bytes,
    /// Absolute URL of the metadata, for `resource_metadata`.
    url: String,
    /// Scopes for `scope` in `WWW-Authenticate`.
    scope: String,
}

/// Authentication and identity passthrough; one per sidecar, shared by every request.
pub struct Authenticator {
    verifier: Option<Verifier>,
    metadata: Option<Metadata>,
    mode: PassthroughMode,
    header_names: Vec<(Field, HeaderName)>,
    /// Shared key signing the identity headers (`x-mcp-guard-signature`), if configured.
    header_key: Option<Vec<u8>>,
    minter: Option<Minter>,
    exchanger: Option<Exchanger>,
    token_endpoint: Option<String>,
}

fn parse_algorithms(names: &[String]) -> Result<Vec<Algorithm>, AuthError> {
    let mut out = Vec::new();
    for n in names.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        let alg: Algorithm = n
            .parse()
            .map_err(|_| AuthError::Config(format!("unknown JWT algorithm {n:?}")))?;
        if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
            return Err(AuthError::Config(format!(
                "JWT algorithm {n} is symmetric; only asymmetric algorithms are accepted"
            )));
        }
        if !out.contains(&alg) {
            out.push(alg);
        }
    }
    if out.is_empty() {
        return Err(AuthError::Config("no JWT algorithm allowed".into()));
    }
    Ok(out)
}

fn quote(s: &str) -> String {
    s.replace(['"', '\\'], "")
}

/// The issuer tokens must come from and the resource they must name as their audience (this
/// server's canonical URI, absolute, without a fragment).
struct Resource {
    issuer: String,
    uri: String,
    parsed: Uri,
}

impl Resource {
    fn from_config(cfg: &AuthConfig) -> Result<Self, AuthError> {
        let issuer = cfg
            .issuer
            .clone()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| AuthError::Config("--issuer (MCP_GUARD_ISSUER) is required".into()))?;
        let uri = cfg
            .resource_uri
            .clone()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                AuthError::Config("--resource-uri (MCP_GUARD_RESOURCE_URI) is required".into())
            })?;
        let parsed: Uri = uri
            .parse()
            .map_err(|_| AuthError::Config(format!("resource URI {uri:?} is invalid")))?;
        if parsed.scheme_str().is_none() || parsed.authority().is_none() {
            return Err(AuthError::Config(format!(
                "resource URI {uri:?} must be absolute (https://host/path)"
            )));
        }
        if uri.contains('#') {
            return Err(AuthError::Config("the resource URI has no fragment".into()));
        }
        Ok(Resource {
            issuer,
            uri,
            parsed,
        })
    }
}

impl Verifier {
    /// The token checks, the verified-token cache and the key store (nothing fetched yet).
    fn from_config(
        cfg: &AuthConfig,
        resource: &Resource,
        http: reqwest::Client,
        metrics: &Arc<Metrics>,
    ) -> Result<Self, AuthError> {
        let issuer = resource.issuer.clone();
        let validations = parse_algorithms(&cfg.jwt_algorithms)?
            .into_iter()
            .map(|alg| {
                let mut v = Validation::new(alg);
                v.set_issuer(&[issuer.as_str()]);
                v.set_audience(&[resource.uri.as_str()]);
                v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
                v.leeway = cfg.jwt_leeway.as_secs();
                v.validate_nbf = true;
                (alg, v)
            })
            .collect();
        let cache: Arc<ExpiringCache<TokenHash, Arc<Identity>>> =
            Arc::new(ExpiringCache::new(cfg.token_cache_size));
        let source = match (&cfg.jwks_file, &cfg.jwks_uri) {
            (Some(f), _) => KeySource::File(f.clone()),
            (None, Some(u)) => KeySource::Uri(u.clone()),
            (None, None) => KeySource::Discovery {
                issuer: issuer.clone(),
            },
        };
        // A key the provider withdrew takes the tokens it verified with it.
        let on_revoke = {
            let cache = Arc::downgrade(&cache);
            Box::new(move || {
                if let Some(c) = cache.upgrade() {
                    c.clear();
                }
            })
        };
        let keys = KeyStore::new(
            source,
            http,
            cfg.jwks_min_refetch_interval,
            on_revoke,
            Arc::clone(metrics),
        );
        Ok(Verifier {
            issuer,
            validations,
            require_at_jwt: cfg.require_at_jwt,
            required_scopes: cfg.required_scopes.clone(),
            allow_anonymous: cfg.allow_anonymous,
            keys: Arc::new(keys),
            cache,
            refresh: cfg.jwks_refresh_interval,
            min_refetch: cfg.jwks_min_refetch_interval,
        })
    }
}

impl Metadata {
    /// The RFC 9728 document, at the root and at the resource's path, and what the 401's
    /// `WWW-Authenticate` says of it.
    fn new(cfg: &AuthConfig, resource: &Resource) -> Self {
        let uri = &resource.parsed;
        let path = uri.path().trim_end_matches('/');
        let mut paths = vec![METADATA_PATH.to_owned()];
        if !path.is_empty() {
            paths.push(format!("{METADATA_PATH}{path}"));
        }
        let scheme = uri.scheme_str().unwrap_or_default();
        let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
        let url = format!("{scheme}://{authority}{METADATA_PATH}{path}");
        let scopes_supported = if cfg.scopes_supported.is_empty() {
            cfg.required_scopes.clone()
        } else {
            cfg.scopes_supported.clone()
        };
        let servers = if cfg.authorization_servers.is_empty() {
            vec![resource.issuer.clone()]
        } else {
            cfg.authorization_servers.clone()
        };
        let mut doc = json!({
            "resource": resource.uri,
            "authorization_servers": servers,
            "bearer_methods_supported": ["header"],
        });
        if !scopes_supported.is_empty() {
            doc["scopes_supported"] = json!(scopes_supported);
        }
        let scope = if cfg.required_scopes.is_empty() {
            scopes_supported.join(" ")
        } else {
            cfg.required_scopes.join(" ")
        };
        Metadata {
            paths,
            body: Bytes::from(doc.to_string()),
            url,
            scope,
        }
    }
}

/// The shared key that signs the identity headers, when configured (at least 16 bytes).
fn read_header_key(cfg: &AuthConfig) -> Result<Option<Vec<u8>>, AuthError> {
    let Some(f) = &cfg.identity_headers_signing_key_file else {
        return Ok(None);
    };
    let k = std::fs::read(f)
        .map_err(|e| AuthError::Config(format!("cannot read {}: {e}", f.display())))?;
    let k = k.trim_ascii().to_vec();
    if k.len() < 16 {
        return Err(AuthError::Config(
            "the identity header signing key must hold at least 16 bytes".into(),
        ));
    }
    Ok(Some(k))
}

/// The minter of the `jwt` passthrough mode, from its key file.
fn minter(cfg: &AuthConfig, resource: &str) -> Result<Option<Minter>, AuthError> {
    if cfg.identity_passthrough != PassthroughMode::Jwt {
        return Ok(None);
    }
    let Some(f) = &cfg.mint_key_file else {
        return Err(AuthError::Config(
            "--identity-passthrough jwt needs --mint-key-file".into(),
        ));
    };
    let pem = std::fs::read(f)
        .map_err(|e| AuthError::Config(format!("cannot read {}: {e}", f.display())))?;
    let audience = cfg
        .upstream_audience
        .clone()
        .unwrap_or_else(|| resource.to_owned());
    Ok(Some(Minter::from_pem(
        &pem,
        cfg.mint_key_id.clone(),
        cfg.mint_issuer
            .clone()
            .unwrap_or_else(|| resource.to_owned()),
        audience,
        cfg.mint_ttl,
        cfg.token_cache_size,
    )?))
}

/// The RFC 8693 client of the `token-exchange` passthrough mode.
fn exchanger(cfg: &AuthConfig, http: reqwest::Client) -> Result<Option<Exchanger>, AuthError> {
    if cfg.identity_passthrough != PassthroughMode::TokenExchange {
        return Ok(None);
    }
    let client_id = cfg
        .exchange_client_id
        .clone()
        .ok_or_else(|| AuthError::Config("token exchange needs --exchange-client-id".into()))?;
    let secret_file = cfg.exchange_client_secret_file.as_ref().ok_or_else(|| {
        AuthError::Config("token exchange needs --exchange-client-secret-file".into())
    })?;
    let secret = std::fs::read_to_string(secret_file)
        .map_err(|e| AuthError::Config(format!("cannot read {}: {e}", secret_file.display())))?;
    let audience = cfg
        .upstream_audience
        .clone()
        .ok_or_else(|| AuthError::Config("token exchange needs --upstream-audience".into()))?;
    Ok(Some(Exchanger {
        http,
        client_id,
        client_secret: secret.trim().to_owned(),
        audience,
        scope: cfg.exchange_scope.clone(),
        cache: ExpiringCache::new(cfg.token_cache_size),
        inflight: parking_lot::Mutex::default(),
    }))
}

impl Authenticator {
    /// No verification; incoming identity headers and Authorization are still stripped.
    pub fn disabled() -> Self {
        Authenticator {
            verifier: None,
            metadata: None,
            mode: PassthroughMode::None,
            header_names: passthrough::parse_identity_headers(&default_header_specs())
                .unwrap_or_default(),
            header_key: None,
            minter: None,
            exchanger: None,
            token_endpoint: None,
        }
    }

    /// Builds from flags (reads the mounted key and secret files; fetches nothing yet). Key
    /// fetches are counted in `metrics` (`mcp_guard_key_refreshes_total`).
    pub fn from_config(cfg: &AuthConfig, metrics: &Arc<Metrics>) -> Result<Self, AuthError> {
        let header_names = passthrough::parse_identity_headers(&cfg.identity_headers)?;
        let http = reqwest::Client::builder()
            .timeout(cfg.idp_timeout)
            .connect_timeout(cfg.idp_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| AuthError::Config(format!("HTTP client: {e}")))?;
        if !cfg.enabled() {
            return Self::without_verification(cfg, header_names);
        }
        let resource = Resource::from_config(cfg)?;
        let verifier = Verifier::from_config(cfg, &resource, http.clone(), metrics)?;
        let metadata = Metadata::new(cfg, &resource);
        let header_key = read_header_key(cfg)?;
        let minter = minter(cfg, &resource.uri)?;
        let exchanger = exchanger(cfg, http)?;
        Ok(Authenticator {
            verifier: Some(verifier),
            metadata: Some(metadata),
            mode: cfg.identity_passthrough,
            header_names,
            header_key,
            minter,
            exchanger,
            token_endpoint: cfg.token_endpoint.clone(),
        })
    }

    /// No issuer and no key file: nothing is verified, which `--auth-required` refuses. Only the
    /// explicit passthrough of the client's token survives; every other mode needs a verified
    /// identity to pass on.
    fn without_verification(
        cfg: &AuthConfig,
        header_names: Vec<(Field, HeaderName)>,
    ) -> Result<Self, AuthError> {
        if cfg.auth_required {
            return Err(AuthError::Config(
                "--auth-required is set but neither --issuer nor --jwks-file is".into(),
            ));
        }
        let mut a = Authenticator::disabled();
        a.header_names = header_names;
        a.mode = match cfg.identity_passthrough {
            PassthroughMode::UnsafeForwardToken => PassthroughMode::UnsafeForwardToken,
            _ => PassthroughMode::None,
        };
        Ok(a)
    }

    /// Whether tokens are verified.
    pub fn enabled(&self) -> bool {
        self.verifier.is_some()
    }

    /// The JWKS of the minting key, when the sidecar mints tokens.
    pub fn minted_jwks(&self) -> Option<Bytes> {
        self.minter.as_ref().map(Minter::jwks)
    }

    /// Logs what the identity layer does, loudly when it does not protect anything.
    pub fn log_startup(&self) {
        match &self.verifier {
            None => tracing::warn!(
                "AUTHENTICATION IS DISABLED: no --issuer / --jwks-file (MCP_GUARD_ISSUER / \
                 MCP_GUARD_JWKS_FILE) configured, every caller is anonymous"
            ),
            Some(v) => {
                tracing::info!(
                    issuer = %v.issuer,
                    resource_metadata = self.metadata.as_ref().map(|m| m.url.as_str()).unwrap_or(""),
                    passthrough = ?self.mode,
                    anonymous = v.allow_anonymous,
                    "authentication enabled"
                );
                if v.allow_anonymous {
                    tracing::warn!(
                        "anonymous access is allowed: requests without a token pass as anonymous"
                    );
                }
            }
        }
        if self.mode == PassthroughMode::UnsafeForwardToken {
            tracing::warn!(
                "UNSAFE: the client's bearer token is forwarded to the MCP server \
                 (--identity-passthrough unsafe-forward-token); the server can replay it"
            );
        }
    }

    /// Loads keys once (a failure is logged; requests fail closed until keys arrive), then
    /// keeps refreshing them in the background.
    pub async fn start(self: &Arc<Self>) {
        let Some(v) = &self.verifier else { return };
        let first_ok = match v.keys.refresh().await {
            Ok(n) => {
                tracing::info!(keys = n, "signing keys loaded");
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot load signing keys yet; requests with tokens are refused until they load");
                false
            }
        };
        let weak: Weak<Self> = Arc::downgrade(self);
        let (refresh, retry) = (
            v.refresh,
            v.min_refetch.max(std::time::Duration::from_secs(1)),
        );
        tokio::spawn(async move {
            let mut ok = first_ok;
            loop {
                // The provider's own max-age, within [retry, refresh].
                let wait = match (ok, weak.upgrade()) {
                    (true, Some(me)) => me
                        .verifier
                        .as_ref()
                        .and_then(|v| v.keys.max_age())
                        .map_or(refresh, |m| m.clamp(retry, refresh.max(retry))),
                    (true, None) => return,
                    (false, _) => retry,
                };
                tokio::time::sleep(wait).await;
                let Some(me) = weak.upgrade() else { return };
                let Some(v) = &me.verifier else { return };
                match v.keys.refresh().await {
                    Ok(_) => ok = true,
                    Err(e) => {
                        ok = false;
                        tracing::warn!(error = %e, "key refresh failed; keeping the last good keys");
                    }
                }
            }
        });
    }

    /// Verifies a bearer token (the cache first).
    pub async fn verify(&self, token: &str) -> Result<Arc<Identity>, Rejection> {
        let Some(v) = &self.verifier else {
            return Err(Rejection::InvalidToken("authentication is not configured"));
        };
        v.verify(token, &cache::hash(token)).await
    }

    /// Serves metadata (non-MCP paths) or authenticates a request on an MCP path and rewrites
    /// its headers for the server. `Some` is the answer to send instead of forwarding.
    pub async fn admit<B>(&self, req: &mut Request<B>, mcp_path: bool) -> Option<Response<Body>> {
        if !mcp_path {
            return self.metadata_response(req.method(), req.uri().path());
        }
        match self.authenticate(req).await {
            Ok(()) => None,
            Err(r) => Some(self.reject(&r)),
        }
    }

    fn metadata_response(&self, method: &Method, path: &str) -> Option<Response<Body>> {
        let m = self.metadata.as_ref()?;
        if !m.paths.iter().any(|p| p == path) {
            return None;
        }
        if method != Method::GET && method != Method::HEAD {
            let mut resp = Response::new(Body::empty());
            *resp.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET"));
            return Some(resp);
        }
        let mut resp = Response::new(Body::from(m.body.clone()));
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("max-age=300"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
        Some(resp)
    }

    async fn authenticate<B>(&self, req: &mut Request<B>) -> Result<(), Rejection> {
        let mut identity = None;
        let mut token_hash = None;
        let mut token_text: Option<String> = None;
        if let Some(v) = &self.verifier {
            if query_has_token(req.uri()) {
                return Err(Rejection::InvalidRequest(
                    "access tokens are accepted only in the Authorization header",
                ));
            }
            match bearer(req.headers())? {
                None if v.allow_anonymous => {}
                None => return Err(Rejection::Missing),
                Some(token) => {
                    let h = cache::hash(token);
                    let id = v.verify(token, &h).await?;
                    if !v.required_scopes.iter().all(|s| id.scopes.contains(s)) {
                        return Err(Rejection::InsufficientScope);
                    }
                    if self.mode == PassthroughMode::TokenExchange {
                        token_text = Some(token.to_owned());
                    }
                    token_hash = Some(h);
                    identity = Some(id);
                }
            }
        }
        let headers = req.headers_mut();
        if self.mode != PassthroughMode::UnsafeForwardToken {
            headers.remove(header::AUTHORIZATION);
        }
        for (_, name) in &self.header_names {
            headers.remove(name);
        }
        headers.remove(passthrough::SIGNATURE_HEADER);
        if let (Some(id), Some(h)) = (&identity, &token_hash) {
            match self.mode {
                PassthroughMode::Headers => {
                    let values = id.header_values(|id| {
                        passthrough::identity_header_values(&self.header_names, id)
                    });
                    if let Some(key) = &self.header_key
                        && let Some(sig) = passthrough::sign_headers(key, now_secs(), &values)
                    {
                        headers.insert(passthrough::SIGNATURE_HEADER, sig);
                    }
                    for (name, value) in values.iter() {
                        headers.insert(name.clone(), value.clone());
                    }
                }
                PassthroughMode::Jwt => {
                    let minter = self.minter.as_ref().ok_or(Rejection::Passthrough)?;
                    let t = minter.mint(h, id).map_err(|e| {
                        tracing::error!(error = %e, "minting a token for the server failed");
                        Rejection::Passthrough
                    })?;
                    headers.insert(header::AUTHORIZATION, bearer_value(&t)?);
                }
                PassthroughMode::TokenExchange => {
                    let t = self
                        .exchange(token_text.as_deref().unwrap_or_default(), id)
                        .await?;
                    headers.insert(header::AUTHORIZATION, bearer_value(&t)?);
                }
                PassthroughMode::None | PassthroughMode::UnsafeForwardToken => {}
            }
        }
        req.extensions_mut().insert(Caller(identity));
        Ok(())
    }

    async fn exchange(&self, token: &str, id: &Identity) -> Result<Arc<str>, Rejection> {
        let (Some(ex), Some(v)) = (&self.exchanger, &self.verifier) else {
            return Err(Rejection::Passthrough);
        };
        let endpoint = match &self.token_endpoint {
            Some(e) => e.clone(),
            None => v.keys.token_endpoint().await.map_err(|e| {
                tracing::error!(error = %e, "no token endpoint for token exchange");
                Rejection::Passthrough
            })?,
        };
        ex.exchange(&endpoint, token, id).await.map_err(|e| {
            tracing::warn!(error = %e, sub = %id.sub, "token exchange failed");
            Rejection::Passthrough
        })
    }

    /// The answer to a refused request.
    pub fn reject(&self, r: &Rejection) -> Response<Body> {
        let (status, error, desc) = match r {
            Rejection::Missing => (StatusCode::UNAUTHORIZED, None, "a bearer token is required"),
            Rejection::InvalidRequest(d) => (StatusCode::BAD_REQUEST, Some("invalid_request"), *d),
            Rejection::InvalidToken(d) => (StatusCode::UNAUTHORIZED, Some("invalid_token"), *d),
            Rejection::InsufficientScope => (
                StatusCode::FORBIDDEN,
                Some("insufficient_scope"),
                "the token lacks a required scope",
            ),
            Rejection::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                None,
                "the identity provider's keys are not available yet",
            ),
            Rejection::Passthrough => (
                StatusCode::BAD_GATEWAY,
                None,
                "the caller's identity could not be passed on to the MCP server",
            ),
        };
        if *r == Rejection::Missing {
            // Clients probe without a token first (to find the metadata): not worth a log line.
            tracing::debug!(
                status = status.as_u16(),
                reason = desc,
                "request without a token"
            );
        } else {
            tracing::info!(
                status = status.as_u16(),
                reason = desc,
                "request refused by authentication"
            );
        }
        let body = jsonrpc::error_response(None, UNAUTHORIZED, desc, None).to_string();
        let mut resp = Response::new(Body::from(body));
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(m) = &self.metadata
            && matches!(
                status,
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::BAD_REQUEST
            )
        {
            let mut parts = Vec::new();
            if let Some(e) = error {
                parts.push(format!("error=\"{e}\""));
                parts.push(format!("error_description=\"{}\"", quote(desc)));
            }
            parts.push(format!("resource_metadata=\"{}\"", quote(&m.url)));
            if !m.scope.is_empty() {
                parts.push(format!("scope=\"{}\"", quote(&m.scope)));
            }
            if let Ok(v) = HeaderValue::from_str(&format!("Bearer {}", parts.join(", "))) {
                h.insert(header::WWW_AUTHENTICATE, v);
            }
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            h.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        resp
    }
}

fn default_header_specs() -> Vec<String> {
    [
        "sub=x-mcp-guard-sub",
        "iss=x-mcp-guard-iss",
        "email=x-mcp-guard-email",
        "groups=x-mcp-guard-groups",
        "roles=x-mcp-guard-roles",
        "scopes=x-mcp-guard-scopes",
        "client=x-mcp-guard-client-id",
    ]
    .map(str::to_owned)
    .to_vec()
}

fn bearer_value(token: &str) -> Result<HeaderValue, Rejection> {
    HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| Rejection::Passthrough)
}

/// Whether the query string carries an `access_token` (RFC 6750 §2.3, refused here).
fn query_has_token(uri: &Uri) -> bool {
    uri.query().is_some_and(|q| {
        q.split('&').any(|kv| {
            kv.split('=')
                .next()
                .is_some_and(|k| k.eq_ignore_ascii_case("access_token"))
        })
    })
}

/// The bytes of RFC 6750's `b64token` before its trailing `=`: a table, because every request's
/// token (a thousand bytes is common) is checked byte by byte.
const TOKEN68: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~' | b'+' | b'/');
        b += 1;
    }
    t
};

/// The bearer token of the Authorization header; `None` when there is no bearer credential.
pub(crate) fn bearer(headers: &HeaderMap) -> Result<Option<&str>, Rejection> {
    let mut all = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = all.next() else {
        return Ok(None);
    };
    if all.next().is_some() {
        return Err(Rejection::InvalidRequest(
            "more than one Authorization header",
        ));
    }
    let value = value
        .to_str()
        .map_err(|_| Rejection::InvalidToken("the Authorization header is not ASCII"))?;
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        // Another scheme (Basic, DPoP, ...) carries no bearer token.
        return Ok(None);
    }
    let token = rest.trim();
    if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
        return Err(Rejection::InvalidToken("malformed bearer token"));
    }
    let b64token = token
        .trim_end_matches('=')
        .bytes()
        .all(|b| TOKEN68[usize::from(b)]);
    if !b64token {
        return Err(Rejection::InvalidToken("malformed bearer token"));
    }
    Ok(Some(token))
}

impl Verifier {
    async fn verify(&self, token: &str, h: &TokenHash) -> Result<Arc<Identity>, Rejection> {
        let now = now_secs();
        if let Some(id) = self.cache.get(h, now) {
            return Ok(id);
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| Rejection::InvalidToken("malformed token"))?;
        let Some((_, validation)) = self.validations.iter().find(|(a, _)| *a == header.alg) else {
            return Err(Rejection::InvalidToken("signature algorithm not allowed"));
        };
        let typ_ok = match header.typ.as_deref().map(str::to_ascii_lowercase) {
            None => !self.require_at_jwt,
            Some(t) if t == "at+jwt" || t == "application/at+jwt" => true,
            Some(t) if t == "jwt" => !self.require_at_jwt,
            Some(_) => false,
        };
        if !typ_ok {
            return Err(Rejection::InvalidToken("not an access token (typ)"));
        }
        let key = match self.keys.find(header.kid.as_deref()).await {
            Some(k) => k,
            None if self.keys.current().is_empty() => return Err(Rejection::Unavailable),
            None => return Err(Rejection::InvalidToken("unknown signing key")),
        };
        if key.alg.is_some_and(|a| a != header.alg) || key.decoding.family() != header.alg.family()
        {
            return Err(Rejection::InvalidToken("key and algorithm do not match"));
        }
        use jsonwebtoken::errors::ErrorKind as K;
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.decoding, validation)
            .map_err(|e| {
                Rejection::InvalidToken(match e.kind() {
                    K::InvalidSignature => "bad signature",
                    K::ExpiredSignature => "token expired",
                    K::ImmatureSignature => "token not yet valid",
                    K::InvalidIssuer => "wrong issuer",
                    K::InvalidAudience => "wrong audience",
                    K::MissingRequiredClaim(_) => "a required claim is missing",
                    K::InvalidAlgorithm => "algorithm mismatch",
                    _ => "invalid token",
                })
            })?;
        let claims = data.claims;
        let id = Arc::new(
            identity_from_claims(claims)
                .ok_or(Rejection::InvalidToken("sub or iss is not a string"))?,
        );
        if let Some(exp) = id.claims.get("exp").and_then(Value::as_u64) {
            self.cache.insert(*h, Arc::clone(&id), exp, now);
        }
        Ok(id)
    }
}

fn strings(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
        _ => Vec::new(),
    }
}

/// The identity of verified claims.
pub fn identity_from_claims(claims: Map<String, Value>) -> Option<Identity> {
    let s = |k: &str| claims.get(k).and_then(Value::as_str).map(str::to_owned);
    let sub = s("sub")?;
    let iss = s("iss")?;
    let mut scopes = strings(claims.get("scope"));
    if scopes.is_empty() {
        scopes = strings(claims.get("scp"));
    }
    let mut seen = HashSet::new();
    scopes.retain(|x| seen.insert(x.clone()));
    Some(Identity {
        sub,
        iss,
        email: s("email"),
        groups: strings(claims.get("groups")),
        roles: strings(claims.get("roles")),
        scopes,
        client_id: s("client_id").or_else(|| s("azp")),
        claims,
        derived: Default::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bearer_of(value: &[u8]) -> Result<Option<String>, Rejection> {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_bytes(value).expect("a header value"),
        );
        bearer(&h).map(|t| t.map(str::to_owned))
    }

    #[test]
    fn the_token_table_is_rfc_6750s_b64token() {
        for b in 0..=255u8 {
            let rule = b.is_ascii_alphanumeric() || b"-._~+/".contains(&b);
            assert_eq!(TOKEN68[usize::from(b)], rule, "byte {b:#04x}");
        }
    }

    #[test]
    fn bearer_takes_a_b64token_and_refuses_anything_else() {
        assert_eq!(
            bearer_of(b"Bearer aZ09-._~+/==").ok().flatten().as_deref(),
            Some("aZ09-._~+/==")
        );
        assert_eq!(
            bearer_of(b"bearer  abc ").ok().flatten().as_deref(),
            Some("abc")
        );
        assert!(matches!(bearer_of(b"Basic dXNlcjpwdw=="), Ok(None)));
        for bad in [
            &b"Bearer a=b"[..],
            b"Bearer a,b",
            b"Bearer a b",
            b"Bearer ",
            b"Bearer \xe9",
        ] {
            assert!(
                bearer_of(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
