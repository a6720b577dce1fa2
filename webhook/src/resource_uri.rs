//! The default resource URI (`--default-resource-uri-template`): a URL with the variables
//! `{name}`, `{namespace}` and `{path}` that gives each injected pod without an
//! `mcp-guard.dev/resource-uri` annotation its canonical URI, the audience its tokens must carry.
//! The template is checked when the flag is parsed, so a bad one stops the webhook at startup
//! instead of refusing every pod that has an issuer.

use std::fmt;
use std::str::FromStr;

use crate::values::{EXPECTED_URL, is_absolute_url};

/// What a template is checked with at startup: an ordinary workload.
const SAMPLE: Workload<'static> = Workload {
    name: "example",
    namespace: "default",
};
const SAMPLE_PATH: &str = "/mcp";

/// The pod a template is expanded for.
#[derive(Debug, Clone, Copy)]
pub struct Workload<'a> {
    /// The workload's name, as the sidecar gets it in `MCP_GUARD_SERVER_NAME`.
    pub name: &'a str,
    /// The namespace from the admission request.
    pub namespace: &'a str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Name,
    Namespace,
    Path,
}

/// A parsed `--default-resource-uri-template`, known to expand to an absolute http(s) URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceUriTemplate {
    source: String,
    parts: Vec<Part>,
}

/// Why a template is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("the template is empty: leave it unset for no default resource URI")]
    Empty,
    #[error("unknown variable {{{0}}}: the template may use {{name}}, {{namespace}} and {{path}}")]
    UnknownVariable(String),
    #[error("the '{{' at byte {0} is not closed by '}}'")]
    Unclosed(usize),
    #[error("the '}}' at byte {0} closes no variable")]
    Unopened(usize),
    #[error(
        "it expands to {expanded:?} for workload {} in namespace {} with path {}: {}, such as \
         https://{{name}}.{{namespace}}.svc.cluster.local{{path}}",
        SAMPLE.name,
        SAMPLE.namespace,
        SAMPLE_PATH,
        EXPECTED_URL
    )]
    NotUrl { expanded: String },
}

impl ResourceUriTemplate {
    /// Parses and checks a template: known variables only, and a result that is an absolute
    /// http(s) URL.
    pub fn parse(source: &str) -> Result<Self, TemplateError> {
        let source = source.trim();
        if source.is_empty() {
            return Err(TemplateError::Empty);
        }
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = source.char_indices();
        while let Some((at, c)) = rest.next() {
            match c {
                '{' => {
                    let tail = &source[at + 1..];
                    let end = tail.find('}').ok_or(TemplateError::Unclosed(at))?;
                    let var = &tail[..end];
                    let part = match var {
                        "name" => Part::Name,
                        "namespace" => Part::Namespace,
                        "path" => Part::Path,
                        _ if var.contains('{') => return Err(TemplateError::Unclosed(at)),
                        _ => return Err(TemplateError::UnknownVariable(var.to_string())),
                    };
                    if !literal.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut literal)));
                    }
                    parts.push(part);
                    // Skip the variable's name and its closing brace.
                    for _ in 0..=var.chars().count() {
                        rest.next();
                    }
                }
                '}' => return Err(TemplateError::Unopened(at)),
                _ => literal.push(c),
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        let template = Self {
            source: source.to_string(),
            parts,
        };
        let expanded = template.expand(SAMPLE, SAMPLE_PATH);
        if !is_absolute_url(&expanded) {
            return Err(TemplateError::NotUrl { expanded });
        }
        Ok(template)
    }

    /// The URI of one pod: `path` is the MCP path in force for it.
    pub fn expand(&self, workload: Workload<'_>, path: &str) -> String {
        let mut out = String::with_capacity(self.source.len() + 32);
        for part in &self.parts {
            out.push_str(match part {
                Part::Literal(s) => s,
                Part::Name => workload.name,
                Part::Namespace => workload.namespace,
                Part::Path => path,
            });
        }
        out
    }

    /// The template as given.
    pub fn as_str(&self) -> &str {
        &self.source
    }
}

impl FromStr for ResourceUriTemplate {
    type Err = TemplateError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for ResourceUriTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const TOOLS: Workload<'static> = Workload {
        name: "tools",
        namespace: "team-a",
    };

    #[test]
    fn expands_every_variable() {
        let t = ResourceUriTemplate::parse("https://{name}.{namespace}.svc.cluster.local{path}")
            .unwrap();
        assert_eq!(
            t.expand(TOOLS, "/mcp"),
            "https://tools.team-a.svc.cluster.local/mcp"
        );
        assert_eq!(
            t.expand(TOOLS, "/v2/mcp"),
            "https://tools.team-a.svc.cluster.local/v2/mcp"
        );
        let fixed =
            ResourceUriTemplate::parse("https://mcp.example.com/{namespace}/{name}").unwrap();
        assert_eq!(
            fixed.expand(TOOLS, "/mcp"),
            "https://mcp.example.com/team-a/tools"
        );
        assert_eq!(fixed.as_str(), "https://mcp.example.com/{namespace}/{name}");
    }

    #[test]
    fn refuses_bad_templates_with_the_reason() {
        for (template, error) in [
            ("", TemplateError::Empty),
            ("  ", TemplateError::Empty),
            (
                "https://{name}.{ns}.svc{path}",
                TemplateError::UnknownVariable("ns".into()),
            ),
            (
                "https://{}.example.com",
                TemplateError::UnknownVariable(String::new()),
            ),
            ("https://{name.example.com", TemplateError::Unclosed(8)),
            ("https://{na{name}}", TemplateError::Unclosed(8)),
            ("https://name}.example.com", TemplateError::Unopened(12)),
            (
                "{name}.{namespace}.svc{path}",
                TemplateError::NotUrl {
                    expanded: "example.default.svc/mcp".into(),
                },
            ),
            (
                "https://{path}",
                TemplateError::NotUrl {
                    expanded: "https:///mcp".into(),
                },
            ),
            (
                "https://{name}.example.com{path}#top",
                TemplateError::NotUrl {
                    expanded: "https://example.example.com/mcp#top".into(),
                },
            ),
        ] {
            assert_eq!(
                ResourceUriTemplate::parse(template),
                Err(error),
                "{template:?}"
            );
        }
        let message = ResourceUriTemplate::parse("https://{name}.{ns}{path}")
            .unwrap_err()
            .to_string();
        assert_eq!(
            message,
            "unknown variable {ns}: the template may use {name}, {namespace} and {path}"
        );
        let message = ResourceUriTemplate::parse("{name}{path}")
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("\"example/mcp\"") && message.contains("absolute http(s) URL"),
            "{message}"
        );
    }
}
