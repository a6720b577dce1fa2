//! Flags of the sidecar's identity layer (OAuth 2.1 resource server and identity passthrough).
//! Every flag has an `MCP_GUARD_*` variable; the webhook sets `MCP_GUARD_ISSUER` and
//! `MCP_GUARD_RESOURCE_URI` from the pod's annotations.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

use mcp_guard_common::duration::parse_duration;
use mcp_guard_common::env;

/// How the verified identity reaches the MCP server. The client's own token never does, except
/// with the explicit `unsafe-forward-token` opt-in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PassthroughMode {
    /// Identity headers (`--identity-headers`); incoming copies are always stripped.
    Headers,
    /// A short-lived JWT minted by the sidecar (`--mint-key-file`), `act` = the OAuth client.
    Jwt,
    /// RFC 8693 token exchange at the provider for `--upstream-audience`.
    TokenExchange,
    /// Nothing: the server sees no identity at all.
    None,
    /// Forwards the client's own token unchanged. Unsafe (the server could replay it); warned
    /// about at startup.
    UnsafeForwardToken,
}

/// Identity flags, flattened into the proxy's.
#[derive(Debug, Clone, Args)]
pub struct AuthConfig {
    /// Issuer of accepted access tokens (`iss`); keys come from its OIDC discovery document
    /// unless `--jwks-uri` or `--jwks-file` is set. Setting it (or `--jwks-file`) turns
    /// authentication on.
    #[arg(long, env = env::ISSUER)]
    pub issuer: Option<String>,

    /// Canonical URI of this MCP server (RFC 8707): tokens must carry it in `aud`; it is the
    /// `resource` of the protected resource metadata.
    #[arg(long, env = env::RESOURCE_URI)]
    pub resource_uri: Option<String>,

    /// JWKS URL, instead of the one named by discovery.
    #[arg(long, env = env::JWKS_URI)]
    pub jwks_uri: Option<String>,

    /// A JWKS file (e.g. a mounted Secret), instead of fetching keys; re-read on refresh and on
    /// an unknown key id.
    #[arg(long, env = env::JWKS_FILE)]
    pub jwks_file: Option<PathBuf>,

    /// Refuse to start unless authentication is configured.
    #[arg(long, env = env::AUTH_REQUIRED)]
    pub auth_required: bool,

    /// Accept requests without any token, as anonymous callers (a token that is present must
    /// still be valid).
    #[arg(long, env = env::ALLOW_ANONYMOUS)]
    pub allow_anonymous: bool,

    /// Accepted signature algorithms; only asymmetric ones (HS* and `none` are refused).
    #[arg(
        long,
        env = env::JWT_ALGORITHMS,
        value_delimiter = ',',
        default_value = "RS256,RS384,RS512,PS256,PS384,PS512,ES256,ES384,EdDSA"
    )]
    pub jwt_algorithms: Vec<String>,

    /// Clock skew allowed on `exp` and `nbf`.
    #[arg(long, env = env::JWT_LEEWAY, default_value = "30s", value_parser = parse_duration)]
    pub jwt_leeway: Duration,

    /// Accept only tokens typed `at+jwt` (RFC 9068); otherwise `JWT` or no `typ` pass too.
    #[arg(long, env = env::REQUIRE_AT_JWT)]
    pub require_at_jwt: bool,

    /// Scopes every token must carry; a token without them gets 403 `insufficient_scope`.
    #[arg(long, env = env::REQUIRED_SCOPES, value_delimiter = ',')]
    pub required_scopes: Vec<String>,

    /// Scopes advertised in the protected resource metadata (default: the required ones).
    #[arg(long, env = env::SCOPES_SUPPORTED, value_delimiter = ',')]
    pub scopes_supported: Vec<String>,

    /// Authorization servers advertised in the metadata (default: the issuer).
    #[arg(long, env = env::AUTHORIZATION_SERVERS, value_delimiter = ',')]
    pub authorization_servers: Vec<String>,

    /// How often keys are refreshed in the background.
    #[arg(long, env = env::JWKS_REFRESH_INTERVAL, default_value = "5m", value_parser = parse_duration)]
    pub jwks_refresh_interval: Duration,

    /// Least time between two refetches caused by unknown key ids (so made-up key ids cannot
    /// hammer the provider).
    #[arg(long, env = env::JWKS_MIN_REFETCH_INTERVAL, default_value = "10s", value_parser = parse_duration)]
    pub jwks_min_refetch_interval: Duration,

    /// Timeout of each call to the provider (discovery, JWKS, token exchange).
    #[arg(long, env = env::IDP_TIMEOUT, default_value = "5s", value_parser = parse_duration)]
    pub idp_timeout: Duration,

    /// Verified tokens kept in memory (each until it expires).
    #[arg(long, env = env::TOKEN_CACHE_SIZE, default_value_t = 10_000)]
    pub token_cache_size: usize,

    /// How the verified identity reaches the MCP server.
    #[arg(
        long,
        env = env::IDENTITY_PASSTHROUGH,
        value_enum,
        default_value = "headers"
    )]
    pub identity_passthrough: PassthroughMode,

    /// Identity header names, `field=header` (fields: sub, iss, email, groups, roles, scopes,
    /// client). Incoming headers of these names are always removed.
    #[arg(
        long,
        env = env::IDENTITY_HEADERS,
        value_delimiter = ',',
        default_value = "sub=x-mcp-guard-sub,iss=x-mcp-guard-iss,email=x-mcp-guard-email,groups=x-mcp-guard-groups,roles=x-mcp-guard-roles,scopes=x-mcp-guard-scopes,client=x-mcp-guard-client-id"
    )]
    pub identity_headers: Vec<String>,

    /// A file holding a shared secret: with it, `headers` mode adds `x-mcp-guard-signature`
    /// (`t=<unix time>,v1=<hex HMAC-SHA256>`) over the identity headers, so the server can check
    /// that they come from the sidecar.
    #[arg(long, env = env::IDENTITY_HEADERS_SIGNING_KEY_FILE)]
    pub identity_headers_signing_key_file: Option<PathBuf>,

    /// Audience of the token the server receives (`jwt` and `token-exchange` modes); default
    /// for `jwt`: the resource URI.
    #[arg(long, env = env::UPSTREAM_AUDIENCE)]
    pub upstream_audience: Option<String>,

    /// PEM private key (RSA or EC P-256) the sidecar signs minted tokens with (`jwt` mode).
    #[arg(long, env = env::MINT_KEY_FILE)]
    pub mint_key_file: Option<PathBuf>,

    /// `kid` of the minting key (default: its RFC 7638 thumbprint).
    #[arg(long, env = env::MINT_KEY_ID)]
    pub mint_key_id: Option<String>,

    /// `iss` of minted tokens (default: the resource URI).
    #[arg(long, env = env::MINT_ISSUER)]
    pub mint_issuer: Option<String>,

    /// Lifetime of minted tokens (never beyond the client token's own `exp`).
    #[arg(long, env = env::MINT_TTL, default_value = "60s", value_parser = parse_duration)]
    pub mint_ttl: Duration,

    /// Token endpoint for token exchange (default: from discovery).
    #[arg(long, env = env::TOKEN_ENDPOINT)]
    pub token_endpoint: Option<String>,

    /// The sidecar's OAuth client id at the provider (token exchange).
    #[arg(long, env = env::EXCHANGE_CLIENT_ID)]
    pub exchange_client_id: Option<String>,

    /// File holding that client's secret (a mounted Secret).
    #[arg(long, env = env::EXCHANGE_CLIENT_SECRET_FILE)]
    pub exchange_client_secret_file: Option<PathBuf>,

    /// Scope requested in token exchange.
    #[arg(long, env = env::EXCHANGE_SCOPE)]
    pub exchange_scope: Option<String>,
}

impl AuthConfig {
    /// Whether tokens are verified at all.
    pub fn enabled(&self) -> bool {
        self.issuer.as_deref().is_some_and(|s| !s.is_empty()) || self.jwks_file.is_some()
    }
}
