//! Rate limits as the policy decides them: the `limits` set of `package mcp.authz`, read from a
//! decision and checked here, so a malformed limit is refused with a reason that names what is
//! wrong (and the request is denied: fail closed), never half understood.
//!
//! A limit is an object such as
//! `{"key": "subject", "tool": "search", "per": "1m", "requests": 60}`. The sidecar counts the
//! requests each limit applies to in buckets: one per limit and per value of its key.

use std::fmt;
use std::time::Duration;

use serde_json::{Map, Value};

/// Requests a limit may allow per period at most.
pub const MAX_REQUESTS: u64 = 1_000_000_000;
/// The longest period of a limit: 31 days.
pub const MAX_PER: Duration = Duration::from_secs(31 * 24 * 3600);

/// What a bucket is kept per: the parts of a limit's `key`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KeyPart {
    /// The verified caller (`iss` and `sub`); every anonymous caller shares one bucket.
    Subject,
    /// The OAuth client the caller's token was issued to (`client_id` or `azp`).
    Client,
    /// The item the request names (the tool of a `tools/call`), else its method.
    Tool,
    /// The governed server as a whole: one bucket for every caller.
    Server,
}

impl KeyPart {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyPart::Subject => "subject",
            KeyPart::Client => "client",
            KeyPart::Tool => "tool",
            KeyPart::Server => "server",
        }
    }

    fn parse(s: &str) -> Option<KeyPart> {
        Some(match s {
            "subject" => KeyPart::Subject,
            "client" => KeyPart::Client,
            "tool" => KeyPart::Tool,
            "server" => KeyPart::Server,
            _ => return None,
        })
    }
}

/// Where a limit is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Across every replica of the server, through the fleet store (Redis), when the sidecar has
    /// one; in this replica alone otherwise. The default.
    Fleet,
    /// In this replica alone, even when a fleet store is configured.
    Local,
}

/// What a fleet limit does while the fleet store cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fallback {
    /// Count in this replica's bucket instead (fail open to the local limit). The default.
    Local,
    /// Refuse the request (fail closed).
    Deny,
}

/// One rate limit of a decision, checked.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Limit {
    /// The limit's name in audit records, metrics and the client's error: the policy's `name`,
    /// or one made of the other fields (`subject:search:60/1m`).
    pub name: String,
    /// What a bucket is kept per, in the order written; never empty.
    pub key: Vec<KeyPart>,
    /// Only calls of this tool count (and are refused); `None`: every request the limit is
    /// decided for.
    pub tool: Option<String>,
    /// The period.
    pub per: Duration,
    /// Requests allowed per period, all of them at once if they come at once (the bucket's size).
    pub requests: u64,
    pub scope: Scope,
    pub fallback: Fallback,
    /// The limit written out canonically: two limits with the same text share their buckets.
    pub id: String,
}

impl Limit {
    /// Whether the limit counts a request for `method` naming `item`.
    pub fn applies(&self, method: &str, item: Option<&str>) -> bool {
        match &self.tool {
            None => true,
            Some(t) => method == "tools/call" && item == Some(t.as_str()),
        }
    }

    /// The time one request's token takes to come back, in nanoseconds (at least 1).
    pub fn interval_nanos(&self) -> u64 {
        let per = u64::try_from(self.per.as_nanos()).unwrap_or(u64::MAX);
        (per / self.requests.max(1)).max(1)
    }

    /// The period in nanoseconds, as the buckets count it: exactly `requests` intervals, so
    /// that a full bucket holds exactly `requests` tokens.
    pub fn period_nanos(&self) -> u64 {
        self.interval_nanos().saturating_mul(self.requests)
    }
}

/// Why a limit object was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitError(pub String);

impl fmt::Display for LimitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn err<T>(msg: impl Into<String>) -> Result<T, LimitError> {
    Err(LimitError(msg.into()))
}

const FIELDS: &str = "key, per, requests, tool, name, scope, fallback";

/// Reads one member of the policy's `limits` set.
pub fn parse(v: &Value) -> Result<Limit, LimitError> {
    let Some(obj) = v.as_object() else {
        return err(format!(
            "a limit must be an object such as {{\"key\": \"subject\", \"per\": \"1m\", \
             \"requests\": 60}}, not {v}"
        ));
    };
    for k in obj.keys() {
        if !FIELDS.split(", ").any(|f| f == k) {
            return err(format!("unknown field {k:?} (a limit has {FIELDS})"));
        }
    }
    let key = key_of(obj)?;
    let per = match obj.get("per") {
        Some(Value::String(s)) => parse_period(s)?,
        Some(other) => {
            return err(format!(
                "\"per\" must be a period such as \"1m\", not {other}"
            ));
        }
        None => return err("\"per\" is missing (a period such as \"1s\", \"1m\", \"1h\", \"1d\")"),
    };
    let requests = match obj.get("requests") {
        Some(n) => match n.as_u64() {
            Some(r) if (1..=MAX_REQUESTS).contains(&r) => r,
            _ => {
                return err(format!(
                    "\"requests\" must be a whole number from 1 to {MAX_REQUESTS}, not {n}"
                ));
            }
        },
        None => return err("\"requests\" is missing (how many requests per period)"),
    };
    let tool = match obj.get("tool") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(other) => return err(format!("\"tool\" must be a tool name, not {other}")),
    };
    let scope = match obj.get("scope").map(|s| (s, s.as_str())) {
        None | Some((_, Some("fleet"))) => Scope::Fleet,
        Some((_, Some("local"))) => Scope::Local,
        Some((other, _)) => {
            return err(format!(
                "\"scope\" must be \"fleet\" or \"local\", not {other}"
            ));
        }
    };
    let fallback = match obj.get("fallback").map(|s| (s, s.as_str())) {
        None | Some((_, Some("local"))) => Fallback::Local,
        Some((_, Some("deny"))) => Fallback::Deny,
        Some((other, _)) => {
            return err(format!(
                "\"fallback\" must be \"local\" or \"deny\", not {other}"
            ));
        }
    };
    let key_text = key.iter().map(|k| k.as_str()).collect::<Vec<_>>().join("+");
    let per_text = obj.get("per").and_then(Value::as_str).unwrap_or_default();
    let name = match obj.get("name") {
        None => format!(
            "{key_text}:{}:{requests}/{per_text}",
            tool.as_deref().unwrap_or("*")
        ),
        Some(Value::String(s)) if valid_name(s) => s.clone(),
        Some(other) => {
            return err(format!(
                "\"name\" must be 1 to 64 letters, digits or `-_.:/`, not {other}"
            ));
        }
    };
    // serde_json's maps are sorted, so the text is canonical.
    let id = Value::Object(obj.clone()).to_string();
    Ok(Limit {
        name,
        key,
        tool,
        per,
        requests,
        scope,
        fallback,
        id,
    })
}

fn valid_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:/".contains(c))
}

fn key_of(obj: &Map<String, Value>) -> Result<Vec<KeyPart>, LimitError> {
    let parts: Vec<&Value> = match obj.get("key") {
        Some(Value::String(_)) => obj.get("key").into_iter().collect(),
        Some(Value::Array(items)) if !items.is_empty() => items.iter().collect(),
        Some(other) => {
            return err(format!(
                "\"key\" must be one of subject, client, tool, server, or a list of them, not {other}"
            ));
        }
        None => {
            return err("\"key\" is missing (subject, client, tool, server, or a list of them)");
        }
    };
    let mut key = Vec::with_capacity(parts.len());
    for p in parts {
        match p.as_str().and_then(KeyPart::parse) {
            Some(k) if !key.contains(&k) => key.push(k),
            Some(k) => return err(format!("\"key\" names {} twice", k.as_str())),
            None => {
                return err(format!(
                    "unknown key {p} (a key is subject, client, tool or server)"
                ));
            }
        }
    }
    Ok(key)
}

/// A period: a whole number and a unit (`30s`, `1m`, `1h`, `1d`), within 1 second and 31 days.
pub fn parse_period(s: &str) -> Result<Duration, LimitError> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = match num.parse() {
        Ok(n) if n > 0 => n,
        _ => {
            return err(format!(
                "\"per\" must be a period such as \"30s\", \"1m\", \"1h\", \"1d\", not {s:?}"
            ));
        }
    };
    let unit_secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => {
            return err(format!(
                "\"per\" {s:?} has no unit: use s, m, h or d (\"1m\")"
            ));
        }
    };
    let secs = n.saturating_mul(unit_secs);
    let d = Duration::from_secs(secs);
    if d > MAX_PER {
        return err(format!("\"per\" {s:?} is longer than 31 days"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_limit_reads_with_its_defaults() {
        let l = parse(&json!({"key": "subject", "tool": "search", "per": "1m", "requests": 60}))
            .unwrap();
        assert_eq!(l.key, vec![KeyPart::Subject]);
        assert_eq!(l.tool.as_deref(), Some("search"));
        assert_eq!(l.per, Duration::from_secs(60));
        assert_eq!(
            (l.requests, l.scope, l.fallback),
            (60, Scope::Fleet, Fallback::Local)
        );
        assert_eq!(l.name, "subject:search:60/1m");
        assert_eq!(l.interval_nanos(), 1_000_000_000);
        assert_eq!(l.period_nanos(), 60_000_000_000);
        assert!(l.applies("tools/call", Some("search")));
        assert!(!l.applies("tools/call", Some("other")));
        assert!(!l.applies("prompts/get", Some("search")));

        let l = parse(
            &json!({"key": ["subject", "tool"], "per": "1h", "requests": 5,
            "scope": "local", "fallback": "deny", "name": "per-tool"}),
        )
        .unwrap();
        assert_eq!(l.key, vec![KeyPart::Subject, KeyPart::Tool]);
        assert_eq!(
            (l.scope, l.fallback, l.name.as_str()),
            (Scope::Local, Fallback::Deny, "per-tool")
        );
        assert!(l.applies("resources/read", None));
    }

    #[test]
    fn the_same_limit_written_twice_is_one_limit() {
        let a = parse(&json!({"key": "subject", "per": "1m", "requests": 60})).unwrap();
        let b = parse(&json!({"requests": 60, "per": "1m", "key": "subject"})).unwrap();
        assert_eq!(a.id, b.id);
        let c = parse(&json!({"key": "subject", "per": "1m", "requests": 61})).unwrap();
        assert_ne!(a.id, c.id);
    }

    #[test]
    fn malformed_limits_say_what_is_wrong() {
        for (v, says) in [
            (json!("60/m"), "must be an object"),
            (
                json!({"key": "subject", "per": "1m"}),
                "\"requests\" is missing",
            ),
            (
                json!({"key": "subject", "per": "1m", "requests": 0}),
                "whole number from 1",
            ),
            (
                json!({"key": "subject", "per": "1m", "requests": 2.5}),
                "whole number",
            ),
            (
                json!({"key": "subject", "per": "1m", "requests": "60"}),
                "whole number",
            ),
            (
                json!({"key": "subject", "requests": 1}),
                "\"per\" is missing",
            ),
            (
                json!({"key": "subject", "per": "1 minute", "requests": 1}),
                "no unit",
            ),
            (
                json!({"key": "subject", "per": "0s", "requests": 1}),
                "such as",
            ),
            (
                json!({"key": "subject", "per": 60, "requests": 1}),
                "\"per\" must be a period",
            ),
            (
                json!({"key": "subject", "per": "32d", "requests": 1}),
                "31 days",
            ),
            (
                json!({"key": "user", "per": "1m", "requests": 1}),
                "unknown key \"user\"",
            ),
            (
                json!({"key": [], "per": "1m", "requests": 1}),
                "\"key\" must be",
            ),
            (
                json!({"key": ["tool", "tool"], "per": "1m", "requests": 1}),
                "twice",
            ),
            (json!({"per": "1m", "requests": 1}), "\"key\" is missing"),
            (
                json!({"key": "subject", "per": "1m", "request": 1}),
                "unknown field \"request\"",
            ),
            (
                json!({"key": "subject", "per": "1m", "requests": 1, "scope": "global"}),
                "\"scope\"",
            ),
            (
                json!({"key": "subject", "per": "1m", "requests": 1, "fallback": "open"}),
                "\"fallback\"",
            ),
            (
                json!({"key": "subject", "per": "1m", "requests": 1, "name": "a b"}),
                "\"name\"",
            ),
            (
                json!({"key": "subject", "per": "1m", "requests": 1, "tool": 3}),
                "\"tool\"",
            ),
        ] {
            let e = parse(&v).unwrap_err().to_string();
            assert!(e.contains(says), "{v}: {e}");
        }
    }
}
