//! The `mcp-guard.dev/*` annotations: their names, and the parsing and validation of per-pod
//! settings. An invalid value becomes an [`AnnotationError`] that names the annotation and what
//! it accepts, so the pod is refused with a message a person can act on.

use std::fmt;

use crate::config::InjectConfig;
use crate::resource_uri::Workload;
use crate::settings::{self, Layers, Level, Setting};
pub use crate::values::{
    AnnotationError, EXPECTED_URL, PortRef, check_special, is_absolute_url, is_dns_subdomain,
    is_port_name, is_url_path, quoted_words,
};
use crate::values::{parse_cpu, parse_memory, port_ref};

/// Opt-in / opt-out, on the pod template or on the namespace: `enabled` or `disabled`.
pub const INJECT: &str = "mcp-guard.dev/inject";
/// Written by the webhook on injected pods (JSON); its presence makes injection a no-op.
pub const STATUS: &str = "mcp-guard.dev/status";
/// The MCP server's port: a container port number or name.
pub const PORT: &str = "mcp-guard.dev/port";
/// The MCP endpoint path.
pub const PATH: &str = "mcp-guard.dev/path";
/// Traffic mode: `takeover`, `redirect` or `explicit`.
pub const TRAFFIC: &str = "mcp-guard.dev/traffic";
/// Name of the policy ConfigMap mounted into the sidecar.
pub const POLICY: &str = "mcp-guard.dev/policy";
/// `enforce` or `shadow`.
pub const ENFORCEMENT: &str = "mcp-guard.dev/enforcement";
/// The server's canonical resource URI (the token audience).
pub const RESOURCE_URI: &str = "mcp-guard.dev/resource-uri";
/// The accepted token issuer.
pub const ISSUER: &str = "mcp-guard.dev/issuer";
/// Sidecar resources.
pub const CPU_REQUEST: &str = "mcp-guard.dev/cpu-request";
pub const CPU_LIMIT: &str = "mcp-guard.dev/cpu-limit";
pub const MEMORY_REQUEST: &str = "mcp-guard.dev/memory-request";
pub const MEMORY_LIMIT: &str = "mcp-guard.dev/memory-limit";
/// Sidecar log level.
pub const LOG_LEVEL: &str = "mcp-guard.dev/log-level";
/// Sidecar log format, `json` or `text`.
pub const LOG_FORMAT: &str = "mcp-guard.dev/log-format";
/// `enabled`: the server's container runs its `command` under `mcp-guard-sidecar run-app`, which
/// ends the sidecar when the command exits, so a Job's pod can finish (regular-container form).
pub const SHUTDOWN_ON_EXIT: &str = "mcp-guard.dev/shutdown-on-exit";

/// Label on injected pods: what the distribution controller's NetworkPolicy selects.
pub const LABEL_INJECTED: &str = "mcp-guard.dev/injected";
/// Label on injected pods: the traffic mode (the NetworkPolicy covers `takeover` and `explicit`).
pub const LABEL_TRAFFIC: &str = "mcp-guard.dev/traffic";

/// The value of `mcp-guard.dev/inject`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InjectChoice {
    Enabled,
    Disabled,
}

/// Parses `mcp-guard.dev/inject`.
pub fn inject_choice(value: &str) -> Result<InjectChoice, AnnotationError> {
    match value {
        "enabled" => Ok(InjectChoice::Enabled),
        "disabled" => Ok(InjectChoice::Disabled),
        _ => Err(AnnotationError::new(
            INJECT,
            value,
            "allowed values are \"enabled\" and \"disabled\"",
        )),
    }
}

/// How clients' traffic reaches the sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Traffic {
    /// The sidecar takes the server port's name; Services with a named `targetPort` follow.
    Takeover,
    /// An init container redirects the server's port to the sidecar with iptables.
    Redirect,
    /// The sidecar listens on its own port; clients must dial it.
    Explicit,
}

impl Traffic {
    pub fn as_str(self) -> &'static str {
        match self {
            Traffic::Takeover => "takeover",
            Traffic::Redirect => "redirect",
            Traffic::Explicit => "explicit",
        }
    }
}

impl fmt::Display for Traffic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Per-pod settings: the annotations, with the webhook's defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub port: Option<PortRef>,
    pub path: String,
    pub traffic: Option<Traffic>,
    pub policy: String,
    pub enforcement: String,
    pub resource_uri: Option<String>,
    pub issuer: Option<String>,
    pub cpu_request: String,
    pub cpu_limit: String,
    pub memory_request: String,
    pub memory_limit: String,
    pub log_level: String,
    pub log_format: String,
    /// `mcp-guard.dev/shutdown-on-exit: enabled`.
    pub shutdown_on_exit: bool,
    /// The settings of [`settings::SETTINGS`] some level sets, in the table's order.
    pub sidecar: Vec<(&'static Setting, String)>,
}

impl Settings {
    /// Reads every `mcp-guard.dev/*` setting of `workload`'s pod from its three levels (pod,
    /// namespace, mesh; the webhook's own flags last); returns all invalid ones, not just the
    /// first, and every change of a locked setting.
    pub fn parse(
        layers: Layers<'_>,
        cfg: &InjectConfig,
        workload: Workload<'_>,
    ) -> Result<Self, Vec<AnnotationError>> {
        let mut errors = Vec::new();
        let get = |key: &str| layers.value(key.strip_prefix(settings::PREFIX).unwrap_or(key));
        let mut check = |r: Result<(), AnnotationError>| {
            if let Err(e) = r {
                errors.push(e);
            }
        };

        let port = match get(PORT) {
            None => None,
            Some(v) => match parse_port(v) {
                Ok(p) => Some(p),
                Err(e) => {
                    check(Err(e));
                    None
                }
            },
        };
        let path = get(PATH).unwrap_or(&cfg.default_path).to_string();
        let path_valid = validate_path(&path);
        let path_is_valid = path_valid.is_ok();
        check(path_valid);
        let traffic = match get(TRAFFIC) {
            None => None,
            Some("takeover") => Some(Traffic::Takeover),
            Some("redirect") => Some(Traffic::Redirect),
            Some("explicit") => Some(Traffic::Explicit),
            Some(v) => {
                check(Err(AnnotationError::new(
                    TRAFFIC,
                    v,
                    "allowed values are \"takeover\", \"redirect\" and \"explicit\"",
                )));
                None
            }
        };
        let mut special = |key: &str, default: &str| {
            let v = get(key).unwrap_or(default).to_string();
            let short = key.strip_prefix(settings::PREFIX).unwrap_or(key);
            check(check_special(short, &v).map_err(|e| AnnotationError::new(key, &v, e)));
            v
        };
        let policy = special(POLICY, &cfg.default_policy);
        let enforcement = special(ENFORCEMENT, &cfg.default_enforcement);
        let log_level = special(LOG_LEVEL, &cfg.default_log_level);
        let log_format = special(LOG_FORMAT, &cfg.sidecar_log_format);
        let cpu_request = special(CPU_REQUEST, &cfg.cpu_request);
        let cpu_limit = special(CPU_LIMIT, &cfg.cpu_limit);
        let memory_request = special(MEMORY_REQUEST, &cfg.memory_request);
        let memory_limit = special(MEMORY_LIMIT, &cfg.memory_limit);
        // The annotation, else the webhook's template expanded for this pod.
        let resource_uri = match (get(RESOURCE_URI), &cfg.default_resource_uri_template) {
            (Some(uri), _) => {
                check(validate_url(RESOURCE_URI, uri));
                Some(uri.to_string())
            }
            (None, Some(template)) => {
                let uri = template.expand(workload, &path);
                // An invalid path is reported on its own; the URI made from it says nothing new.
                if path_is_valid && !is_absolute_url(&uri) {
                    check(Err(AnnotationError::new(
                        RESOURCE_URI,
                        &uri,
                        format!(
                            "the pod sets no {RESOURCE_URI}, and the webhook's \
                             --default-resource-uri-template {:?} gives this for workload {:?} in \
                             namespace {:?}: {EXPECTED_URL}; set the annotation",
                            template.as_str(),
                            workload.name,
                            workload.namespace
                        ),
                    )));
                }
                Some(uri)
            }
            (None, None) => None,
        };
        let issuer = get(ISSUER)
            .map(str::to_string)
            .or_else(|| cfg.default_issuer.clone());
        if let Some(iss) = &issuer {
            let valid = validate_url(ISSUER, iss);
            let valid_issuer = valid.is_ok();
            check(valid);
            // Tokens are only accepted when audience-bound to this server's canonical URI; the
            // sidecar refuses to start without one, so the pod is refused here instead.
            if valid_issuer && resource_uri.is_none() {
                check(Err(AnnotationError::new(
                    RESOURCE_URI,
                    "",
                    format!(
                        "an issuer is set ({iss}), so tokens must name this server's canonical URI \
                         as their audience: set it, e.g. https://tickets.example.com/mcp, or give \
                         the webhook --default-resource-uri-template (chart value \
                         sidecar.resourceUriTemplate)"
                    ),
                )));
            }
        }
        let shutdown_on_exit = match get(SHUTDOWN_ON_EXIT) {
            None | Some("disabled") => false,
            Some("enabled") => true,
            Some(v) => {
                check(Err(AnnotationError::new(
                    SHUTDOWN_ON_EXIT,
                    v,
                    "allowed values are \"enabled\" and \"disabled\"",
                )));
                false
            }
        };
        if let (Some(r), Some(l)) = (parse_cpu(&cpu_request), parse_cpu(&cpu_limit))
            && r > l
        {
            check(Err(AnnotationError::new(
                CPU_REQUEST,
                &cpu_request,
                format!("must not exceed the CPU limit {cpu_limit}"),
            )));
        }
        if let (Some(r), Some(l)) = (parse_memory(&memory_request), parse_memory(&memory_limit))
            && r > l
        {
            check(Err(AnnotationError::new(
                MEMORY_REQUEST,
                &memory_request,
                format!("must not exceed the memory limit {memory_limit}"),
            )));
        }

        let mut sidecar = Vec::new();
        for setting in settings::SETTINGS {
            if let Some(v) = layers.value(setting.name) {
                match settings::check(setting.kind, v) {
                    Ok(()) => sidecar.push((setting, settings::normalize(setting.kind, v))),
                    // What should have been a Secret's name may be the secret itself: not echoed.
                    Err(e) => check(Err(AnnotationError::invalid(
                        &format!("{}{}", settings::PREFIX, setting.name),
                        if setting.kind.is_secret() {
                            "[REDACTED]"
                        } else {
                            v
                        },
                        e,
                    ))),
                }
            }
        }

        // A value the pod did not set itself comes from its namespace: say so.
        for e in &mut errors {
            let short = e.annotation.strip_prefix(settings::PREFIX).unwrap_or("");
            if let Some((_, Level::Namespace)) = layers.get(short) {
                e.expected.push_str(&format!(
                    " (the value is the annotation of namespace {:?})",
                    layers.namespace_name
                ));
            }
        }
        errors.extend(layers.lock_violations());
        if errors.is_empty() {
            Ok(Self {
                port,
                path,
                traffic,
                policy,
                enforcement,
                resource_uri,
                issuer,
                cpu_request,
                cpu_limit,
                memory_request,
                memory_limit,
                log_level,
                log_format,
                shutdown_on_exit,
                sidecar,
            })
        } else {
            Err(errors)
        }
    }
}

fn parse_port(v: &str) -> Result<PortRef, AnnotationError> {
    port_ref(v).map_err(|e| AnnotationError::new(PORT, v, e))
}

fn validate_path(v: &str) -> Result<(), AnnotationError> {
    check_special("path", v).map_err(|e| AnnotationError::new(PATH, v, e))
}

fn validate_url(key: &str, v: &str) -> Result<(), AnnotationError> {
    if is_absolute_url(v) {
        Ok(())
    } else {
        Err(AnnotationError::new(
            key,
            v,
            format!("{EXPECTED_URL}, such as https://mcp.example.com/mcp"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn quantities() {
        assert_eq!(parse_cpu("100m"), Some(100.0));
        assert_eq!(parse_cpu("0.5"), Some(500.0));
        assert_eq!(parse_cpu("1Gi"), None);
        assert_eq!(parse_memory("64Mi"), Some(64.0 * 1024.0 * 1024.0));
        assert_eq!(parse_memory("lots"), None);
        assert_eq!(parse_memory("1..2Mi"), None);
    }

    #[test]
    fn port_names() {
        assert!(is_port_name("http"));
        assert!(is_port_name("mcp-2"));
        assert!(!is_port_name("HTTP"));
        assert!(!is_port_name("123"));
        assert!(!is_port_name("a-very-long-port-name"));
        assert_eq!(parse_port("8080"), Ok(PortRef::Number(8080)));
        assert!(parse_port("70000").is_err());
        assert!(parse_port("0").is_err());
    }

    #[test]
    fn all_errors_reported() {
        let mut a = BTreeMap::new();
        a.insert(TRAFFIC.to_string(), "sideways".to_string());
        a.insert(MEMORY_LIMIT.to_string(), "lots".to_string());
        let errs = parse(&a, &InjectConfig::default()).unwrap_err();
        assert_eq!(errs.len(), 2);
        assert!(errs[0].to_string().contains(TRAFFIC));
    }

    const TOOLS: Workload<'static> = Workload {
        name: "tools",
        namespace: "team-a",
    };

    /// The pod's annotations alone (no namespace, no mesh settings).
    fn parse(
        a: &BTreeMap<String, String>,
        cfg: &InjectConfig,
    ) -> Result<Settings, Vec<AnnotationError>> {
        parse_for(a, cfg, TOOLS)
    }

    fn parse_for(
        a: &BTreeMap<String, String>,
        cfg: &InjectConfig,
        workload: Workload<'_>,
    ) -> Result<Settings, Vec<AnnotationError>> {
        let none = BTreeMap::new();
        let layers = Layers {
            pod: a,
            namespace: &none,
            namespace_name: workload.namespace,
            mesh: &cfg.mesh,
        };
        Settings::parse(layers, cfg, workload)
    }

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn with_template(template: Option<&str>, issuer: Option<&str>) -> InjectConfig {
        InjectConfig {
            default_resource_uri_template: template.map(|t| t.parse().unwrap()),
            default_issuer: issuer.map(str::to_string),
            ..InjectConfig::default()
        }
    }

    const TEMPLATE: &str = "https://{name}.{namespace}.svc.cluster.local{path}";

    #[test]
    fn the_template_gives_the_resource_uri_with_the_pods_path() {
        let cfg = with_template(Some(TEMPLATE), Some("https://idp.example.com"));
        let s = parse(&annotations(&[]), &cfg).unwrap();
        assert_eq!(
            s.resource_uri.as_deref(),
            Some("https://tools.team-a.svc.cluster.local/mcp")
        );
        let s = parse(&annotations(&[(PATH, "/v2/mcp")]), &cfg).unwrap();
        assert_eq!(
            s.resource_uri.as_deref(),
            Some("https://tools.team-a.svc.cluster.local/v2/mcp")
        );
        // Without an issuer too: the template is the annotation's default, like the annotation.
        let cfg = with_template(Some(TEMPLATE), None);
        let s = parse(&annotations(&[]), &cfg).unwrap();
        assert_eq!(
            s.resource_uri.as_deref(),
            Some("https://tools.team-a.svc.cluster.local/mcp")
        );
    }

    #[test]
    fn the_annotation_wins_over_the_template() {
        let cfg = with_template(Some(TEMPLATE), Some("https://idp.example.com"));
        let a = annotations(&[(RESOURCE_URI, "https://tools.example.com/mcp")]);
        let s = parse(&a, &cfg).unwrap();
        assert_eq!(
            s.resource_uri.as_deref(),
            Some("https://tools.example.com/mcp")
        );
        // And is still checked as the annotation.
        let a = annotations(&[(RESOURCE_URI, "tools.example.com")]);
        let errs = parse(&a, &cfg).unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(
            errs[0].to_string(),
            "annotation mcp-guard.dev/resource-uri: invalid value \"tools.example.com\": expected \
             an absolute http(s) URL without a fragment, such as https://mcp.example.com/mcp"
        );
    }

    #[test]
    fn an_issuer_without_annotation_or_template_is_refused() {
        let cfg = with_template(None, Some("https://idp.example.com"));
        let errs = parse(&annotations(&[]), &cfg).unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        let message = errs[0].to_string();
        assert!(
            message
                .starts_with("annotation mcp-guard.dev/resource-uri is required: an issuer is set")
                && message.contains("--default-resource-uri-template"),
            "{message}"
        );
        // No issuer, no template: nothing is required and no URI is set.
        let s = parse(&annotations(&[]), &InjectConfig::default()).unwrap();
        assert_eq!(s.resource_uri, None);
    }

    #[test]
    fn an_expansion_that_is_no_url_refuses_the_pod_naming_the_template() {
        // `inject -f` reads labels no API server has checked: a name with a space.
        let cfg = with_template(Some(TEMPLATE), Some("https://idp.example.com"));
        let odd = Workload {
            name: "my tools",
            namespace: "team-a",
        };
        let errs = parse_for(&annotations(&[]), &cfg, odd).unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        let message = errs[0].to_string();
        assert!(
            message.contains("\"https://my tools.team-a.svc.cluster.local/mcp\"")
                && message.contains(&format!("--default-resource-uri-template {TEMPLATE:?}"))
                && message.contains("set the annotation"),
            "{message}"
        );
        // An invalid path is reported once, as the path.
        let a = annotations(&[(PATH, "/a b")]);
        let errs = parse(&a, &cfg).unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].annotation, PATH);
    }
}
