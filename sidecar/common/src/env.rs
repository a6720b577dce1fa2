//! The sidecar's environment contract: every sidecar flag reads one of these variables (its clap
//! `env`), and the webhook configures an injected sidecar by writing them into the container's
//! `env`. Both sides name them through these constants, so a rename cannot leave one side behind.
//! What each variable means is documented on its flag (`mcp-guard-sidecar --help`).

// The proxy (`ProxyConfig`).
pub const LISTEN: &str = "MCP_GUARD_LISTEN";
pub const ADMIN_LISTEN: &str = "MCP_GUARD_ADMIN_LISTEN";
pub const UPSTREAM_HOST: &str = "MCP_GUARD_UPSTREAM_HOST";
pub const UPSTREAM_PORT: &str = "MCP_GUARD_UPSTREAM_PORT";
pub const PATH: &str = "MCP_GUARD_PATH";
pub const SSE_PATH: &str = "MCP_GUARD_SSE_PATH";
pub const ALLOW_TOOLS: &str = "MCP_GUARD_ALLOW_TOOLS";
pub const DENY_TOOLS: &str = "MCP_GUARD_DENY_TOOLS";
pub const MAX_BODY_BYTES: &str = "MCP_GUARD_MAX_BODY_BYTES";
pub const MAX_LIST_BYTES: &str = "MCP_GUARD_MAX_LIST_BYTES";
pub const MAX_SESSIONS: &str = "MCP_GUARD_MAX_SESSIONS";
pub const HEADER_TIMEOUT: &str = "MCP_GUARD_HEADER_TIMEOUT";
pub const UPSTREAM_TIMEOUT: &str = "MCP_GUARD_UPSTREAM_TIMEOUT";
pub const IDLE_TIMEOUT: &str = "MCP_GUARD_IDLE_TIMEOUT";
pub const DRAIN_TIMEOUT: &str = "MCP_GUARD_DRAIN_TIMEOUT";
pub const SKIP_TOOL_LISTING: &str = "MCP_GUARD_SKIP_TOOL_LISTING";
pub const THREADS: &str = "MCP_GUARD_THREADS";

// Logging (the sidecar's command line).
/// Log filter, in `tracing` EnvFilter syntax.
pub const LOG: &str = "MCP_GUARD_LOG";
pub const LOG_FORMAT: &str = "MCP_GUARD_LOG_FORMAT";

// Identity: token verification and how the identity reaches the server (`AuthConfig`).
pub const ISSUER: &str = "MCP_GUARD_ISSUER";
pub const RESOURCE_URI: &str = "MCP_GUARD_RESOURCE_URI";
pub const JWKS_URI: &str = "MCP_GUARD_JWKS_URI";
pub const JWKS_FILE: &str = "MCP_GUARD_JWKS_FILE";
pub const AUTH_REQUIRED: &str = "MCP_GUARD_AUTH_REQUIRED";
pub const ALLOW_ANONYMOUS: &str = "MCP_GUARD_ALLOW_ANONYMOUS";
pub const JWT_ALGORITHMS: &str = "MCP_GUARD_JWT_ALGORITHMS";
pub const JWT_LEEWAY: &str = "MCP_GUARD_JWT_LEEWAY";
pub const REQUIRE_AT_JWT: &str = "MCP_GUARD_REQUIRE_AT_JWT";
pub const REQUIRED_SCOPES: &str = "MCP_GUARD_REQUIRED_SCOPES";
pub const SCOPES_SUPPORTED: &str = "MCP_GUARD_SCOPES_SUPPORTED";
pub const AUTHORIZATION_SERVERS: &str = "MCP_GUARD_AUTHORIZATION_SERVERS";
pub const JWKS_REFRESH_INTERVAL: &str = "MCP_GUARD_JWKS_REFRESH_INTERVAL";
pub const JWKS_MIN_REFETCH_INTERVAL: &str = "MCP_GUARD_JWKS_MIN_REFETCH_INTERVAL";
pub const IDP_TIMEOUT: &str = "MCP_GUARD_IDP_TIMEOUT";
pub const TOKEN_CACHE_SIZE: &str = "MCP_GUARD_TOKEN_CACHE_SIZE";
pub const IDENTITY_PASSTHROUGH: &str = "MCP_GUARD_IDENTITY_PASSTHROUGH";
pub const IDENTITY_HEADERS: &str = "MCP_GUARD_IDENTITY_HEADERS";
pub const IDENTITY_HEADERS_SIGNING_KEY_FILE: &str = "MCP_GUARD_IDENTITY_HEADERS_SIGNING_KEY_FILE";
pub const UPSTREAM_AUDIENCE: &str = "MCP_GUARD_UPSTREAM_AUDIENCE";
pub const MINT_KEY_FILE: &str = "MCP_GUARD_MINT_KEY_FILE";
pub const MINT_KEY_ID: &str = "MCP_GUARD_MINT_KEY_ID";
pub const MINT_ISSUER: &str = "MCP_GUARD_MINT_ISSUER";
pub const MINT_TTL: &str = "MCP_GUARD_MINT_TTL";
pub const TOKEN_ENDPOINT: &str = "MCP_GUARD_TOKEN_ENDPOINT";
pub const EXCHANGE_CLIENT_ID: &str = "MCP_GUARD_EXCHANGE_CLIENT_ID";
pub const EXCHANGE_CLIENT_SECRET_FILE: &str = "MCP_GUARD_EXCHANGE_CLIENT_SECRET_FILE";
pub const EXCHANGE_SCOPE: &str = "MCP_GUARD_EXCHANGE_SCOPE";

// Policy and the pod it governs (`PolicyConfig`).
pub const POLICY_DIR: &str = "MCP_GUARD_POLICY_DIR";
pub const ENFORCEMENT: &str = "MCP_GUARD_ENFORCEMENT";
pub const HIDE_DENY_REASONS: &str = "MCP_GUARD_HIDE_DENY_REASONS";
pub const POLICY_POLL_INTERVAL: &str = "MCP_GUARD_POLICY_POLL_INTERVAL";
pub const SERVER_NAME: &str = "MCP_GUARD_SERVER_NAME";
pub const POD_NAMESPACE: &str = "MCP_GUARD_POD_NAMESPACE";
pub const POD_NAME: &str = "MCP_GUARD_POD_NAME";
/// Pins of record: a JSON object of tool name to `sha256:<hex>` (the webhook writes it from the
/// pod's `ApprovedServer` entry).
pub const PINNED_TOOLS: &str = "MCP_GUARD_PINNED_TOOLS";

// Rate limits (`LimitsConfig`).
pub const RATE_LIMIT_REDIS_URL: &str = "MCP_GUARD_RATE_LIMIT_REDIS_URL";
pub const RATE_LIMIT_REDIS_PASSWORD_FILE: &str = "MCP_GUARD_RATE_LIMIT_REDIS_PASSWORD_FILE";
pub const RATE_LIMIT_REDIS_TIMEOUT: &str = "MCP_GUARD_RATE_LIMIT_REDIS_TIMEOUT";
pub const RATE_LIMIT_MAX_BUCKETS: &str = "MCP_GUARD_RATE_LIMIT_MAX_BUCKETS";

// The audit trail (`AuditConfig`).
pub const AUDIT_DISABLED: &str = "MCP_GUARD_AUDIT_DISABLED";
pub const AUDIT_FILE: &str = "MCP_GUARD_AUDIT_FILE";
pub const AUDIT_REDACT: &str = "MCP_GUARD_AUDIT_REDACT";
pub const AUDIT_MAX_ARGUMENT_BYTES: &str = "MCP_GUARD_AUDIT_MAX_ARGUMENT_BYTES";
pub const AUDIT_QUEUE: &str = "MCP_GUARD_AUDIT_QUEUE";

// The Prometheus call metrics (`ProxyConfig`).
pub const CALL_METRICS_DISABLED: &str = "MCP_GUARD_CALL_METRICS_DISABLED";

// OpenTelemetry export (`TelemetryConfig`).
pub const OTLP_ENDPOINT: &str = "MCP_GUARD_OTLP_ENDPOINT";
pub const OTLP_PROTOCOL: &str = "MCP_GUARD_OTLP_PROTOCOL";
pub const OTLP_SAMPLING_RATIO: &str = "MCP_GUARD_OTLP_SAMPLING_RATIO";

// Standard OpenTelemetry variables the sidecar hands to the OpenTelemetry SDK (no flag reads
// them); the webhook writes the first two, the others are listed so that the sidecar's own
// check of its environment knows them.
/// Headers of every OTLP export, `key=value,key=value` (an injected sidecar gets it from a Secret).
pub const OTEL_EXPORTER_OTLP_HEADERS: &str = "OTEL_EXPORTER_OTLP_HEADERS";
/// Resource attributes of every span and metric, `key=value,key=value`.
pub const OTEL_RESOURCE_ATTRIBUTES: &str = "OTEL_RESOURCE_ATTRIBUTES";
pub const OTEL_SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
pub const OTEL_SDK_DISABLED: &str = "OTEL_SDK_DISABLED";
pub const OTEL_METRICS_EXPORTER: &str = "OTEL_METRICS_EXPORTER";
pub const OTEL_EXPORTER_OTLP_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
pub const OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
pub const OTEL_EXPORTER_OTLP_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
pub const OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL";
/// Milliseconds an export may take, every signal's (default 10,000).
pub const OTEL_EXPORTER_OTLP_TIMEOUT: &str = "OTEL_EXPORTER_OTLP_TIMEOUT";
pub const OTEL_EXPORTER_OTLP_TRACES_TIMEOUT: &str = "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT";
pub const OTEL_EXPORTER_OTLP_METRICS_TIMEOUT: &str = "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT";
/// Spans per export (the sidecar's default 128, the specification's 512).
pub const OTEL_BSP_MAX_EXPORT_BATCH_SIZE: &str = "OTEL_BSP_MAX_EXPORT_BATCH_SIZE";

/// Every `OTEL_*` variable above.
pub const OTEL_STANDARD: &[&str] = &[
    OTEL_EXPORTER_OTLP_HEADERS,
    OTEL_RESOURCE_ATTRIBUTES,
    OTEL_SERVICE_NAME,
    OTEL_SDK_DISABLED,
    OTEL_METRICS_EXPORTER,
    OTEL_EXPORTER_OTLP_ENDPOINT,
    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
    OTEL_EXPORTER_OTLP_PROTOCOL,
    OTEL_EXPORTER_OTLP_TRACES_PROTOCOL,
    OTEL_EXPORTER_OTLP_TIMEOUT,
    OTEL_EXPORTER_OTLP_TRACES_TIMEOUT,
    OTEL_EXPORTER_OTLP_METRICS_TIMEOUT,
    OTEL_BSP_MAX_EXPORT_BATCH_SIZE,
];
