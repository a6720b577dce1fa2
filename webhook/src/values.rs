//! Values of the `mcp-guard.dev/*` settings, checked the same way at every level (pod, namespace,
//! mesh): the error type that names an annotation and what it accepts, and the checks of URLs,
//! paths, names, ports and quantities. A leaf: it knows no other module of the webhook.

use std::fmt;

/// An annotation whose value the webhook does not accept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnotationError {
    pub annotation: String,
    pub value: String,
    /// What the annotation accepts, in words.
    pub expected: String,
    /// The annotation is set (possibly to an empty value); otherwise it is missing.
    pub present: bool,
}

impl fmt::Display for AnnotationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.present {
            write!(
                f,
                "annotation {} is required: {}",
                self.annotation, self.expected
            )
        } else {
            write!(
                f,
                "annotation {}: invalid value {:?}: {}",
                self.annotation, self.value, self.expected
            )
        }
    }
}

impl std::error::Error for AnnotationError {}

impl AnnotationError {
    /// An invalid value; an empty `value` means the annotation is missing and required.
    pub fn new(annotation: &str, value: &str, expected: impl Into<String>) -> Self {
        Self {
            annotation: annotation.to_string(),
            value: value.to_string(),
            expected: expected.into(),
            present: !value.is_empty(),
        }
    }

    /// An invalid value, even an empty one.
    pub fn invalid(annotation: &str, value: &str, expected: impl Into<String>) -> Self {
        Self {
            present: true,
            ..Self::new(annotation, value, expected)
        }
    }
}

/// `mcp-guard.dev/port`: a number or a container port name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortRef {
    Number(u16),
    Name(String),
}

/// `mcp-guard.dev/port`'s value; the error says what is expected.
pub fn port_ref(v: &str) -> Result<PortRef, &'static str> {
    const EXPECTED: &str = "expected a container port number (1-65535) or a port name \
         (1-15 lowercase letters, digits and '-', with at least one letter)";
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        return match v.parse::<u16>() {
            Ok(n) if n > 0 => Ok(PortRef::Number(n)),
            _ => Err(EXPECTED),
        };
    }
    if is_port_name(v) {
        Ok(PortRef::Name(v.to_string()))
    } else {
        Err(EXPECTED)
    }
}

/// Kubernetes' IANA_SVC_NAME: 1-15 chars of `[a-z0-9-]`, a letter somewhere, no leading,
/// trailing or doubled `-`.
pub fn is_port_name(v: &str) -> bool {
    (1..=15).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && v.bytes().any(|b| b.is_ascii_lowercase())
        && !v.starts_with('-')
        && !v.ends_with('-')
        && !v.contains("--")
}

/// A DNS subdomain (RFC 1123): what Kubernetes accepts as a ConfigMap or Secret name.
pub fn is_dns_subdomain(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 253
        && v.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// An absolute URL path without query or fragment, such as `/mcp`.
pub fn is_url_path(v: &str) -> bool {
    v.starts_with('/')
        && v.len() <= 1024
        && v.bytes().all(|b| b.is_ascii_graphic())
        && !v.contains(['?', '#'])
}

/// `"a", "b" and "c"`.
pub fn quoted_words(words: &[&str]) -> String {
    let quoted: Vec<String> = words.iter().map(|w| format!("{w:?}")).collect();
    match quoted.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
        _ => quoted.concat(),
    }
}

/// Checks a value of one of the settings this module parses (`path`, `policy`, ...); the error
/// says what is expected. The same check applies at every level.
pub fn check_special(name: &str, v: &str) -> Result<(), String> {
    let one_of = |words: &[&str]| {
        if words.contains(&v) {
            Ok(())
        } else {
            Err(format!("allowed values are {}", quoted_words(words)))
        }
    };
    match name {
        "path" => is_url_path(v).then_some(()).ok_or_else(|| {
            "expected an absolute URL path such as /mcp (no query, no spaces)".into()
        }),
        "traffic" => one_of(&["takeover", "redirect", "explicit"]),
        "policy" => is_dns_subdomain(v).then_some(()).ok_or_else(|| {
            "expected a ConfigMap name (lowercase letters, digits, '-' and '.')".into()
        }),
        "enforcement" => one_of(&["enforce", "shadow"]),
        "issuer" | "resource-uri" => is_absolute_url(v)
            .then_some(())
            .ok_or_else(|| format!("{EXPECTED_URL}, such as https://mcp.example.com/mcp")),
        "log-level" => one_of(&["trace", "debug", "info", "warn", "error"]),
        "log-format" => one_of(&["json", "text"]),
        "cpu-request" | "cpu-limit" => parse_cpu(v)
            .map(|_| ())
            .ok_or_else(|| "expected a CPU quantity such as 100m, 0.5 or 2".into()),
        "memory-request" | "memory-limit" => parse_memory(v)
            .map(|_| ())
            .ok_or_else(|| "expected a memory quantity such as 64Mi, 1Gi or 500M".into()),
        "shutdown-on-exit" => one_of(&["enabled", "disabled"]),
        "port" => port_ref(v).map(|_| ()).map_err(str::to_string),
        other => Err(format!("no such setting: {other}")),
    }
}

/// What [`is_absolute_url`] accepts, in words.
pub const EXPECTED_URL: &str = "expected an absolute http(s) URL without a fragment";

/// An absolute `http`/`https` URL with a host, no fragment and no spaces or control characters:
/// what the sidecar accepts as an issuer or a resource URI.
pub fn is_absolute_url(v: &str) -> bool {
    let rest = v
        .strip_prefix("https://")
        .or_else(|| v.strip_prefix("http://"));
    match rest {
        Some(rest) => {
            let host = rest.split(['/', '?', '#']).next().unwrap_or("");
            !host.is_empty() && !v.contains('#') && v.bytes().all(|b| b.is_ascii_graphic())
        }
        None => false,
    }
}

/// Splits a quantity into its positive decimal number and suffix.
fn split_quantity(v: &str) -> Option<(f64, &str)> {
    let end = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let (num, suffix) = v.split_at(end);
    if num.is_empty() || num.starts_with('.') || num.ends_with('.') || num.matches('.').count() > 1
    {
        return None;
    }
    let n: f64 = num.parse().ok()?;
    (n > 0.0).then_some((n, suffix))
}

/// CPU in millicores.
pub fn parse_cpu(v: &str) -> Option<f64> {
    let (n, suffix) = split_quantity(v)?;
    match suffix {
        "" => Some(n * 1000.0),
        "m" => Some(n),
        _ => None,
    }
}

/// Memory in bytes.
pub fn parse_memory(v: &str) -> Option<f64> {
    let (n, suffix) = split_quantity(v)?;
    let mult: f64 = match suffix {
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    Some(n * mult)
}

/// What admission does with a pod that runs images no `ApprovedServer` approves (the namespace
/// label `mcp-guard.dev/approval`, the webhook's `--approval-mode`; see `crate::registry`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ApprovalMode {
    /// Refuse the pod.
    Enforce,
    /// Admit it with an admission warning (kubectl prints it).
    Warn,
    /// Admit it and record the finding as an audit annotation.
    Audit,
    /// No check.
    Disabled,
}

impl ApprovalMode {
    pub fn parse(v: &str) -> Option<ApprovalMode> {
        match v {
            "enforce" => Some(ApprovalMode::Enforce),
            "warn" => Some(ApprovalMode::Warn),
            "audit" => Some(ApprovalMode::Audit),
            "disabled" => Some(ApprovalMode::Disabled),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalMode::Enforce => "enforce",
            ApprovalMode::Warn => "warn",
            ApprovalMode::Audit => "audit",
            ApprovalMode::Disabled => "disabled",
        }
    }
}

impl fmt::Display for ApprovalMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
