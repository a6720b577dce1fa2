//! The sidecar settings an operator chooses per workload, at three levels as in a mesh: mesh-wide
//! defaults (the webhook's `--sidecar-settings`, rendered by the chart from `sidecar.settings`),
//! namespace defaults (annotations on the Namespace) and the pod's own annotations; the nearest
//! level wins. An operator can lock a setting mesh-wide (`sidecar.locked`): a pod or namespace
//! that sets it to another value is refused with a message naming it.
//!
//! [`SETTINGS`] is the table of the settings that map to one sidecar environment variable each;
//! the ones with more logic (port, path, traffic, policy, issuer, resource URI, resources, log
//! level and format, shutdown on exit) are parsed in [`crate::annotations`] through the same
//! [`Layers`]. Secrets are never values: a `*-secret` setting names a Kubernetes Secret (`NAME` or
//! `NAME/KEY`) in the pod's namespace, which the kubelet mounts read-only into the sidecar alone,
//! or hands to it as a `secretKeyRef`.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

use mcp_guard_common::duration::parse_duration;
use mcp_guard_common::env;
use serde::Deserialize;

use crate::values::{self, AnnotationError};

/// The prefix of every setting's annotation.
pub const PREFIX: &str = "mcp-guard.dev/";

/// What a setting's value must look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Any non-empty text of printable ASCII.
    Text,
    /// An absolute http(s) URL.
    Url,
    /// A duration such as `500ms`, `30s`, `5m`.
    Duration,
    /// `true` or `false`.
    Bool,
    /// A positive whole number.
    Count,
    /// A number from 0 to 1.
    Ratio,
    /// An absolute URL path.
    Path,
    /// One of these words.
    OneOf(&'static [&'static str]),
    /// A comma-separated list of items of this kind.
    List(Item),
    /// `key=value,key=value`.
    KeyValues,
    /// A Secret (`NAME` or `NAME/KEY`, default key `key`) mounted read-only into the sidecar; the
    /// variable gets the file's path.
    SecretFile { key: &'static str },
    /// A Secret's key (`NAME` or `NAME/KEY`, default key `key`) the variable takes its value
    /// from (`secretKeyRef`): never in the pod spec.
    SecretEnv { key: &'static str },
}

impl Kind {
    /// A Secret reference: its value is never echoed in an error, in case it is the secret.
    pub fn is_secret(self) -> bool {
        matches!(self, Kind::SecretFile { .. } | Kind::SecretEnv { .. })
    }
}

/// What each item of a [`Kind::List`] must look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Item {
    /// Printable ASCII without spaces or commas.
    Word,
    /// An absolute http(s) URL.
    Url,
    /// One of these words.
    OneOf(&'static [&'static str]),
    /// `field=header`, field one of the identity fields.
    FieldHeader,
}

/// One setting: its name (annotation `mcp-guard.dev/<name>`, key of `sidecar.settings`), the
/// sidecar variable it becomes, what it accepts, and a line of documentation.
#[derive(Debug, PartialEq, Eq)]
pub struct Setting {
    pub name: &'static str,
    pub env: &'static str,
    pub kind: Kind,
    pub help: &'static str,
}

const JWT_ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];
const IDENTITY_FIELDS: &[&str] = &["sub", "iss", "email", "groups", "roles", "scopes", "client"];

/// Every setting that maps to one sidecar variable, grouped as the docs group them.
pub const SETTINGS: &[Setting] = &[
    // OpenTelemetry.
    Setting {
        name: "otel-endpoint",
        env: env::OTLP_ENDPOINT,
        kind: Kind::Url,
        help: "OTLP endpoint spans and metrics are exported to (http://collector:4318 for http/protobuf, :4317 for grpc); unset: no export",
    },
    Setting {
        name: "otel-protocol",
        env: env::OTLP_PROTOCOL,
        kind: Kind::OneOf(&["http/protobuf", "grpc"]),
        help: "OTLP protocol",
    },
    Setting {
        name: "otel-headers-secret",
        env: env::OTEL_EXPORTER_OTLP_HEADERS,
        kind: Kind::SecretEnv { key: "headers" },
        help: "Secret whose key (default `headers`) holds the export's headers, `key=value,key=value` (collector credentials)",
    },
    Setting {
        name: "otel-sampling-ratio",
        env: env::OTLP_SAMPLING_RATIO,
        kind: Kind::Ratio,
        help: "share of new traces recorded, 0 to 1 (a caller's own sampling decision is followed)",
    },
    Setting {
        name: "otel-resource-attributes",
        env: env::OTEL_RESOURCE_ATTRIBUTES,
        kind: Kind::KeyValues,
        help: "resource attributes of every span and metric, `key=value,key=value`",
    },
    // Identity.
    Setting {
        name: "jwks-uri",
        env: env::JWKS_URI,
        kind: Kind::Url,
        help: "JWKS URL, instead of the one the issuer's discovery document names",
    },
    Setting {
        name: "auth-required",
        env: env::AUTH_REQUIRED,
        kind: Kind::Bool,
        help: "the sidecar refuses to start unless token verification is configured",
    },
    Setting {
        name: "allow-anonymous",
        env: env::ALLOW_ANONYMOUS,
        kind: Kind::Bool,
        help: "requests without a token pass as anonymous callers (a token that is present must still be valid)",
    },
    Setting {
        name: "required-scopes",
        env: env::REQUIRED_SCOPES,
        kind: Kind::List(Item::Word),
        help: "scopes every token must carry; a token without them gets 403 insufficient_scope",
    },
    Setting {
        name: "scopes-supported",
        env: env::SCOPES_SUPPORTED,
        kind: Kind::List(Item::Word),
        help: "scopes advertised in the protected resource metadata (default: the required ones)",
    },
    Setting {
        name: "authorization-servers",
        env: env::AUTHORIZATION_SERVERS,
        kind: Kind::List(Item::Url),
        help: "authorization servers advertised in the protected resource metadata (default: the issuer)",
    },
    Setting {
        name: "jwt-algorithms",
        env: env::JWT_ALGORITHMS,
        kind: Kind::List(Item::OneOf(JWT_ALGORITHMS)),
        help: "accepted token signature algorithms (asymmetric only)",
    },
    Setting {
        name: "jwt-leeway",
        env: env::JWT_LEEWAY,
        kind: Kind::Duration,
        help: "clock skew allowed on exp and nbf",
    },
    Setting {
        name: "require-at-jwt",
        env: env::REQUIRE_AT_JWT,
        kind: Kind::Bool,
        help: "accept only tokens typed at+jwt (RFC 9068)",
    },
    Setting {
        name: "idp-timeout",
        env: env::IDP_TIMEOUT,
        kind: Kind::Duration,
        help: "timeout of each call to the identity provider",
    },
    Setting {
        name: "jwks-refresh-interval",
        env: env::JWKS_REFRESH_INTERVAL,
        kind: Kind::Duration,
        help: "how often the provider's keys are refreshed in the background",
    },
    Setting {
        name: "jwks-min-refetch-interval",
        env: env::JWKS_MIN_REFETCH_INTERVAL,
        kind: Kind::Duration,
        help: "least time between two key refetches caused by unknown key ids",
    },
    Setting {
        name: "token-cache-size",
        env: env::TOKEN_CACHE_SIZE,
        kind: Kind::Count,
        help: "verified tokens kept in memory (each until it expires)",
    },
    Setting {
        name: "identity-passthrough",
        env: env::IDENTITY_PASSTHROUGH,
        kind: Kind::OneOf(&["headers", "jwt", "token-exchange", "none"]),
        help: "how the verified identity reaches the server: identity headers, a JWT the sidecar mints, an RFC 8693 token exchange, or nothing (the client's own token is never forwarded)",
    },
    Setting {
        name: "identity-headers",
        env: env::IDENTITY_HEADERS,
        kind: Kind::List(Item::FieldHeader),
        help: "identity header names, `field=header` (fields: sub, iss, email, groups, roles, scopes, client)",
    },
    Setting {
        name: "identity-headers-signing-key-secret",
        env: env::IDENTITY_HEADERS_SIGNING_KEY_FILE,
        kind: Kind::SecretFile { key: "signing-key" },
        help: "Secret (default key `signing-key`) with the shared key that signs the identity headers (x-mcp-guard-signature)",
    },
    Setting {
        name: "upstream-audience",
        env: env::UPSTREAM_AUDIENCE,
        kind: Kind::Text,
        help: "audience of the token the server receives (jwt and token-exchange modes)",
    },
    Setting {
        name: "mint-key-secret",
        env: env::MINT_KEY_FILE,
        kind: Kind::SecretFile { key: "key.pem" },
        help: "Secret (default key `key.pem`) with the PEM private key minted tokens are signed with (jwt mode); its public half is served at the admin port's /.well-known/jwks.json",
    },
    Setting {
        name: "mint-key-id",
        env: env::MINT_KEY_ID,
        kind: Kind::Text,
        help: "kid of the minting key (default: its RFC 7638 thumbprint)",
    },
    Setting {
        name: "mint-issuer",
        env: env::MINT_ISSUER,
        kind: Kind::Url,
        help: "iss of minted tokens (default: the resource URI)",
    },
    Setting {
        name: "mint-ttl",
        env: env::MINT_TTL,
        kind: Kind::Duration,
        help: "lifetime of minted tokens (never beyond the client token's own exp)",
    },
    Setting {
        name: "token-endpoint",
        env: env::TOKEN_ENDPOINT,
        kind: Kind::Url,
        help: "token endpoint for token exchange (default: from discovery)",
    },
    Setting {
        name: "exchange-client-id",
        env: env::EXCHANGE_CLIENT_ID,
        kind: Kind::Text,
        help: "the sidecar's OAuth client id for token exchange",
    },
    Setting {
        name: "exchange-client-secret",
        env: env::EXCHANGE_CLIENT_SECRET_FILE,
        kind: Kind::SecretFile {
            key: "client-secret",
        },
        help: "Secret (default key `client-secret`) with that client's secret",
    },
    Setting {
        name: "exchange-scope",
        env: env::EXCHANGE_SCOPE,
        kind: Kind::Text,
        help: "scope requested in token exchange",
    },
    // Policy.
    Setting {
        name: "hide-deny-reasons",
        env: env::HIDE_DENY_REASONS,
        kind: Kind::Bool,
        help: "refusals say only that the request was denied (the audit trail keeps the reason)",
    },
    Setting {
        name: "policy-poll-interval",
        env: env::POLICY_POLL_INTERVAL,
        kind: Kind::Duration,
        help: "how often the mounted policy is checked for a new version",
    },
    Setting {
        name: "allow-tools",
        env: env::ALLOW_TOOLS,
        kind: Kind::List(Item::Word),
        help: "static allow-list of tool names, before the policy",
    },
    Setting {
        name: "deny-tools",
        env: env::DENY_TOOLS,
        kind: Kind::List(Item::Word),
        help: "static deny-list of tool names, before the policy",
    },
    // Audit.
    Setting {
        name: "audit-disabled",
        env: env::AUDIT_DISABLED,
        kind: Kind::Bool,
        help: "turn the audit trail off (lock it to false to keep every workload audited)",
    },
    Setting {
        name: "audit-redact",
        env: env::AUDIT_REDACT,
        kind: Kind::List(Item::Word),
        help: "argument paths whose values never reach the audit trail (`arguments.password,arguments.*.token`)",
    },
    Setting {
        name: "audit-max-argument-bytes",
        env: env::AUDIT_MAX_ARGUMENT_BYTES,
        kind: Kind::Count,
        help: "largest arguments recorded, in bytes of JSON after redaction",
    },
    Setting {
        name: "audit-queue",
        env: env::AUDIT_QUEUE,
        kind: Kind::Count,
        help: "requests whose records may wait for the writer; beyond that records are dropped (counted and logged), never waited for",
    },
    Setting {
        name: "call-metrics-disabled",
        env: env::CALL_METRICS_DISABLED,
        kind: Kind::Bool,
        help: "leave the per-call metrics (`mcp_guard_calls_total`, `mcp_guard_call_duration_seconds`) out of the sidecar's `/metrics`",
    },
    // Rate limits (the limits themselves come from the policy).
    Setting {
        name: "rate-limit-redis-url",
        env: env::RATE_LIMIT_REDIS_URL,
        kind: Kind::Text,
        help: "Redis that counts fleet-wide rate limits for every replica, `redis://HOST:PORT[/DB]` (no password in it: use rate-limit-redis-password-secret); unset: limits are counted per replica",
    },
    Setting {
        name: "rate-limit-redis-password-secret",
        env: env::RATE_LIMIT_REDIS_PASSWORD_FILE,
        kind: Kind::SecretFile { key: "password" },
        help: "Secret (default key `password`) with the Redis password",
    },
    Setting {
        name: "rate-limit-redis-timeout",
        env: env::RATE_LIMIT_REDIS_TIMEOUT,
        kind: Kind::Duration,
        help: "how long a fleet-wide check may wait for Redis before the limit falls back to the replica's own bucket (or refuses, where the limit says `fallback: deny`)",
    },
    Setting {
        name: "rate-limit-max-buckets",
        env: env::RATE_LIMIT_MAX_BUCKETS,
        kind: Kind::Count,
        help: "rate-limit buckets a replica keeps at most (idle ones are evicted; a new caller finding the table full of busy buckets is refused)",
    },
    // Limits and timeouts.
    Setting {
        name: "sse-path",
        env: env::SSE_PATH,
        kind: Kind::Path,
        help: "path of the legacy HTTP+SSE transport",
    },
    Setting {
        name: "max-body-bytes",
        env: env::MAX_BODY_BYTES,
        kind: Kind::Count,
        help: "largest request body accepted",
    },
    Setting {
        name: "max-list-bytes",
        env: env::MAX_LIST_BYTES,
        kind: Kind::Count,
        help: "largest list answer the sidecar filters",
    },
    Setting {
        name: "max-sessions",
        env: env::MAX_SESSIONS,
        kind: Kind::Count,
        help: "MCP sessions the sidecar tracks; past it the oldest is evicted and refused afterwards",
    },
    Setting {
        name: "header-timeout",
        env: env::HEADER_TIMEOUT,
        kind: Kind::Duration,
        help: "time a client has to send its request headers",
    },
    Setting {
        name: "upstream-timeout",
        env: env::UPSTREAM_TIMEOUT,
        kind: Kind::Duration,
        help: "time the server has to answer with response headers",
    },
    Setting {
        name: "idle-timeout",
        env: env::IDLE_TIMEOUT,
        kind: Kind::Duration,
        help: "idle time after which pooled upstream connections close",
    },
    Setting {
        name: "drain-timeout",
        env: env::DRAIN_TIMEOUT,
        kind: Kind::Duration,
        help: "on SIGTERM, how long open requests and streams may take to finish",
    },
    Setting {
        name: "skip-tool-listing",
        env: env::SKIP_TOOL_LISTING,
        kind: Kind::Bool,
        help: "the sidecar does not list the server's tools at start (by default it does, and readiness waits for the answer)",
    },
];

/// Settings that only make sense for one workload: not accepted mesh-wide, ignored on a
/// namespace (a namespace-wide audience or port would be wrong for all but one server).
pub const POD_ONLY: &[&str] = &["port", "resource-uri", "shutdown-on-exit"];

/// The names of the settings parsed in [`crate::annotations`], in the docs' order.
pub const SPECIAL: &[&str] = &[
    "port",
    "path",
    "traffic",
    "policy",
    "enforcement",
    "issuer",
    "resource-uri",
    "log-level",
    "log-format",
    "cpu-request",
    "cpu-limit",
    "memory-request",
    "memory-limit",
    "shutdown-on-exit",
];

/// The table entry named `name`.
pub fn find(name: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.name == name)
}

/// Every setting's name: the special ones, then the table's.
pub fn names() -> impl Iterator<Item = &'static str> {
    SPECIAL
        .iter()
        .copied()
        .chain(SETTINGS.iter().map(|s| s.name))
}

/// A Secret reference, `NAME` or `NAME/KEY`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRef {
    pub name: String,
    pub key: String,
}

impl SecretRef {
    pub fn parse(value: &str, default_key: &str) -> Option<SecretRef> {
        let (name, key) = value.split_once('/').unwrap_or((value, default_key));
        let key_ok = !key.is_empty()
            && key.len() <= 253
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && key != "."
            && key != "..";
        (values::is_dns_subdomain(name) && key_ok).then(|| SecretRef {
            name: name.to_string(),
            key: key.to_string(),
        })
    }
}

/// Checks `value` against `kind`; the error says what is expected.
pub fn check(kind: Kind, value: &str) -> Result<(), String> {
    let ok = match kind {
        Kind::Text => !value.is_empty() && value.bytes().all(|b| b.is_ascii_graphic() || b == b' '),
        Kind::Url => values::is_absolute_url(value),
        Kind::Duration => parse_duration(value).is_ok(),
        Kind::Bool => matches!(value, "true" | "false"),
        Kind::Count => value.parse::<u64>().is_ok_and(|n| n > 0),
        Kind::Ratio => value.parse::<f64>().is_ok_and(|r| (0.0..=1.0).contains(&r)),
        Kind::Path => values::is_url_path(value),
        Kind::OneOf(words) => words.contains(&value),
        Kind::List(item) => {
            !value.is_empty() && value.split(',').all(|i| check_item(item, i.trim()))
        }
        Kind::KeyValues => {
            !value.is_empty()
                && value.split(',').all(|kv| {
                    kv.split_once('=').is_some_and(|(k, v)| {
                        !k.trim().is_empty()
                            && k.bytes().all(|b| b.is_ascii_graphic())
                            && v.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
                    })
                })
        }
        Kind::SecretFile { key } | Kind::SecretEnv { key } => {
            SecretRef::parse(value, key).is_some()
        }
    };
    if ok { Ok(()) } else { Err(expected(kind)) }
}

fn check_item(item: Item, v: &str) -> bool {
    match item {
        Item::Word => !v.is_empty() && v.bytes().all(|b| b.is_ascii_graphic() && b != b','),
        Item::Url => values::is_absolute_url(v),
        Item::OneOf(words) => words.contains(&v),
        Item::FieldHeader => v.split_once('=').is_some_and(|(f, h)| {
            IDENTITY_FIELDS.contains(&f.trim())
                && !h.trim().is_empty()
                && h.trim()
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        }),
    }
}

/// The value as the sidecar gets it: list items without the spaces around them (the sidecar
/// splits at commas and takes every byte in between).
pub fn normalize(kind: Kind, value: &str) -> String {
    match kind {
        Kind::List(_) | Kind::KeyValues => value
            .split(',')
            .map(str::trim)
            .collect::<Vec<_>>()
            .join(","),
        _ => value.trim().to_string(),
    }
}

/// What `kind` accepts, in words.
pub fn expected(kind: Kind) -> String {
    let words = values::quoted_words;
    match kind {
        Kind::Text => "expected non-empty printable text".into(),
        Kind::Url => format!(
            "{}, such as https://mcp.example.com/mcp",
            values::EXPECTED_URL
        ),
        Kind::Duration => "expected a duration such as 500ms, 30s or 5m".into(),
        Kind::Bool => "allowed values are \"true\" and \"false\"".into(),
        Kind::Count => "expected a positive whole number".into(),
        Kind::Ratio => "expected a number from 0 to 1, such as 0.25".into(),
        Kind::Path => "expected an absolute URL path such as /sse (no query, no spaces)".into(),
        Kind::OneOf(w) => format!("allowed values are {}", words(w)),
        Kind::List(Item::Word) => "expected a comma-separated list of names".into(),
        Kind::List(Item::Url) => format!(
            "expected a comma-separated list of URLs ({})",
            values::EXPECTED_URL
        ),
        Kind::List(Item::OneOf(w)) => format!("expected a comma-separated list of {}", words(w)),
        Kind::List(Item::FieldHeader) => format!(
            "expected a comma-separated list of field=header, fields {}",
            words(IDENTITY_FIELDS)
        ),
        Kind::KeyValues => "expected key=value pairs separated by commas".into(),
        Kind::SecretFile { key } | Kind::SecretEnv { key } => format!(
            "expected the name of a Secret in the pod's namespace, as NAME or NAME/KEY (default key {key:?}); never the secret itself"
        ),
    }
}

/// The mesh level: defaults for every workload and the settings workloads may not change
/// (`--sidecar-settings`, JSON `{"settings": {NAME: VALUE}, "locked": [NAME]}`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MeshSettings {
    pub settings: BTreeMap<String, String>,
    pub locked: BTreeSet<String>,
}

/// [`MeshSettings`] as written: values may be strings, numbers or booleans (Helm values).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMeshSettings {
    #[serde(default)]
    settings: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    locked: BTreeSet<String>,
}

impl FromStr for MeshSettings {
    type Err = String;

    /// Parses and checks the JSON: every name known, every value valid; every problem named.
    fn from_str(s: &str) -> Result<Self, String> {
        if s.trim().is_empty() {
            return Ok(MeshSettings::default());
        }
        let raw: RawMeshSettings = serde_json::from_str(s).map_err(|e| {
            format!("expected JSON {{\"settings\": {{NAME: VALUE}}, \"locked\": [NAME]}}: {e}")
        })?;
        let mut errors = Vec::new();
        let mut mesh = MeshSettings {
            settings: BTreeMap::new(),
            locked: raw.locked,
        };
        for (name, value) in raw.settings {
            let text = match value {
                serde_json::Value::String(s) => s.trim().to_string(),
                serde_json::Value::Bool(b) => b.to_string(),
                serde_json::Value::Number(n) => n.to_string(),
                other => {
                    errors.push(format!(
                        "settings.{name}: expected a string, number or boolean, not {other}"
                    ));
                    continue;
                }
            };
            mesh.settings.insert(name, text);
        }
        for (name, value) in &mesh.settings {
            if let Err(e) = check_mesh_name(name) {
                errors.push(format!("settings.{name}: {e}"));
            } else if let Err(e) = check_value(name, value) {
                errors.push(format!("settings.{name}: invalid value {value:?}: {e}"));
            }
        }
        for name in &mesh.locked {
            if let Err(e) = check_mesh_name(name) {
                errors.push(format!("locked: {name}: {e}"));
            }
        }
        if errors.is_empty() {
            Ok(mesh)
        } else {
            Err(errors.join("; "))
        }
    }
}

fn check_mesh_name(name: &str) -> Result<(), String> {
    if POD_ONLY.contains(&name) {
        return Err("is set per workload only (a pod annotation)".into());
    }
    if names().any(|n| n == name) {
        Ok(())
    } else {
        Err(format!(
            "no such setting; the settings are: {}",
            names()
                .filter(|n| !POD_ONLY.contains(n))
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }
}

/// Checks one setting's value, whichever level it comes from.
pub fn check_value(name: &str, value: &str) -> Result<(), String> {
    match find(name) {
        Some(s) => check(s.kind, value),
        None => values::check_special(name, value),
    }
}

/// Which level a value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Pod,
    Namespace,
    Mesh,
}

/// The three levels of one pod's settings.
#[derive(Debug, Clone, Copy)]
pub struct Layers<'a> {
    pub pod: &'a BTreeMap<String, String>,
    pub namespace: &'a BTreeMap<String, String>,
    pub namespace_name: &'a str,
    pub mesh: &'a MeshSettings,
}

impl<'a> Layers<'a> {
    /// The value of setting `name` (without the prefix) and its level, the nearest level
    /// winning; a pod-only setting is read from the pod alone.
    pub fn get(&self, name: &str) -> Option<(&'a str, Level)> {
        let key = format!("{PREFIX}{name}");
        if let Some(v) = self.pod.get(&key) {
            return Some((v.trim(), Level::Pod));
        }
        if POD_ONLY.contains(&name) {
            return None;
        }
        if let Some(v) = self.namespace.get(&key) {
            return Some((v.trim(), Level::Namespace));
        }
        self.mesh
            .settings
            .get(name)
            .map(|v| (v.as_str(), Level::Mesh))
    }

    /// The value of setting `name`, if any level sets it.
    pub fn value(&self, name: &str) -> Option<&'a str> {
        self.get(name).map(|(v, _)| v)
    }

    /// A pod or namespace annotation that changes a locked setting.
    pub fn lock_violations(&self) -> Vec<AnnotationError> {
        let mut errors = Vec::new();
        for name in &self.mesh.locked {
            let key = format!("{PREFIX}{name}");
            let mesh = self.mesh.settings.get(name).map(String::as_str);
            let locked_to = match mesh {
                Some(v) => format!("the mesh-wide value {v:?}"),
                None => "its default".to_string(),
            };
            let levels = [
                (self.pod.get(&key), "remove it from the pod".to_string()),
                (
                    self.namespace.get(&key),
                    format!(
                        "it is set on namespace {:?}: remove it there",
                        self.namespace_name
                    ),
                ),
            ];
            for (value, fix) in levels {
                if let Some(v) = value
                    && Some(v.trim()) != mesh
                {
                    errors.push(AnnotationError::invalid(
                        &key,
                        v,
                        format!("this setting is locked by the operator to {locked_to}; {fix}"),
                    ));
                }
            }
        }
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_every_table_variable_is_the_sidecars() {
        let all: Vec<_> = names().collect();
        let unique: BTreeSet<_> = all.iter().collect();
        assert_eq!(all.len(), unique.len(), "{all:?}");
        for s in SETTINGS {
            assert!(
                s.env.starts_with("MCP_GUARD_") || env::OTEL_STANDARD.contains(&s.env),
                "{}",
                s.name
            );
        }
    }

    /// The settings the mesh level accepts, as the chart's schema and the docs must list them.
    fn mesh_names() -> Vec<&'static str> {
        names().filter(|n| !POD_ONLY.contains(n)).collect()
    }

    #[test]
    fn the_charts_schema_and_the_docs_list_every_setting() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let schema: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(root.join("charts/mcp-guard/values.schema.json")).unwrap(),
        )
        .unwrap();
        let sidecar = &schema["properties"]["sidecar"]["properties"];
        for enumeration in [
            &sidecar["settings"]["propertyNames"]["enum"],
            &sidecar["locked"]["items"]["enum"],
        ] {
            let listed: Vec<&str> = enumeration
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect();
            assert_eq!(listed, mesh_names(), "values.schema.json");
        }
        let docs = std::fs::read_to_string(root.join("docs/annotations.md")).unwrap();
        let missing: Vec<_> = names()
            .filter(|n| !docs.contains(&format!("`{PREFIX}{n}`")))
            .collect();
        assert!(
            missing.is_empty(),
            "docs/annotations.md does not list {missing:?}"
        );
    }

    #[test]
    fn values_are_checked_by_kind() {
        assert!(check_value("otel-sampling-ratio", "0.5").is_ok());
        assert!(check_value("otel-sampling-ratio", "2").is_err());
        assert!(check_value("required-scopes", "a:read, b:write").is_ok());
        assert!(check_value("jwt-algorithms", "RS256,HS256").is_err());
        assert!(check_value("identity-headers", "sub=x-user,roles=x-roles").is_ok());
        assert!(check_value("identity-headers", "who=x-user").is_err());
        assert!(check_value("identity-passthrough", "unsafe-forward-token").is_err());
        assert!(check_value("mint-key-secret", "minting/tls.key").is_ok());
        assert!(check_value("mint-key-secret", "-----BEGIN PRIVATE KEY-----").is_err());
        assert!(check_value("otel-resource-attributes", "team=a,tier=gold").is_ok());
        assert!(check_value("otel-resource-attributes", "team").is_err());
        assert!(check_value("drain-timeout", "30s").is_ok());
        assert!(check_value("enforcement", "shadow").is_ok());
        assert!(check_value("enforcement", "maybe").is_err());
        assert_eq!(
            SecretRef::parse("minting", "key.pem"),
            Some(SecretRef {
                name: "minting".into(),
                key: "key.pem".into()
            })
        );
    }

    #[test]
    fn mesh_settings_name_every_problem() {
        let m: MeshSettings =
            r#"{"settings": {"otel-endpoint": " http://c:4318 "}, "locked": ["otel-endpoint"]}"#
                .parse()
                .unwrap();
        assert_eq!(m.settings["otel-endpoint"], "http://c:4318");
        let e = r#"{"settings": {"otel-endpoint": "c:4318", "port": "8080", "colour": "red"}, "locked": ["nope"]}"#
            .parse::<MeshSettings>()
            .unwrap_err();
        for part in [
            "settings.otel-endpoint: invalid value \"c:4318\"",
            "settings.port: is set per workload only",
            "settings.colour: no such setting",
            "locked: nope: no such setting",
        ] {
            assert!(e.contains(part), "{part} not in {e}");
        }
        assert!("{\"setting\": {}}".parse::<MeshSettings>().is_err());
        let m: MeshSettings =
            r#"{"settings": {"hide-deny-reasons": true, "otel-sampling-ratio": 0.5}}"#
                .parse()
                .unwrap();
        assert_eq!(m.settings["hide-deny-reasons"], "true");
        assert_eq!(m.settings["otel-sampling-ratio"], "0.5");
        assert_eq!("".parse::<MeshSettings>(), Ok(MeshSettings::default()));
    }

    #[test]
    fn the_nearest_level_wins_and_locks_hold() {
        let map = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (format!("{PREFIX}{k}"), v.to_string()))
                .collect()
        };
        let mesh: MeshSettings = r#"{"settings": {"required-scopes": "mesh", "otel-endpoint": "http://c:4318"}, "locked": ["otel-endpoint", "audit-disabled"]}"#
            .parse()
            .unwrap();
        let pod = map(&[
            ("required-scopes", "pod"),
            ("resource-uri", "https://a/mcp"),
        ]);
        let ns = map(&[
            ("required-scopes", "ns"),
            ("hide-deny-reasons", "true"),
            ("resource-uri", "https://ns/mcp"),
            ("otel-endpoint", "http://c:4318"),
        ]);
        let l = Layers {
            pod: &pod,
            namespace: &ns,
            namespace_name: "team-a",
            mesh: &mesh,
        };
        assert_eq!(l.get("required-scopes"), Some(("pod", Level::Pod)));
        assert_eq!(l.get("hide-deny-reasons"), Some(("true", Level::Namespace)));
        assert_eq!(
            l.get("otel-endpoint"),
            Some(("http://c:4318", Level::Namespace))
        );
        assert_eq!(l.get("resource-uri"), Some(("https://a/mcp", Level::Pod)));
        // Same value as the lock: no violation.
        assert!(l.lock_violations().is_empty());

        let pod = map(&[("audit-disabled", "true")]);
        let ns = map(&[("otel-endpoint", "http://elsewhere:4318")]);
        let l = Layers {
            pod: &pod,
            namespace: &ns,
            namespace_name: "team-a",
            mesh: &mesh,
        };
        let errors: Vec<String> = l.lock_violations().iter().map(|e| e.to_string()).collect();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[0].contains("mcp-guard.dev/audit-disabled")
                && errors[0].contains("its default")
                && errors[0].contains("remove it from the pod"),
            "{errors:?}"
        );
        assert!(
            errors[1].contains("mcp-guard.dev/otel-endpoint")
                && errors[1].contains("\"http://c:4318\"")
                && errors[1].contains("namespace \"team-a\""),
            "{errors:?}"
        );
    }
}
