//! The contract between the two binaries: every sidecar setting the webhook accepts, rendered into
//! an injected pod, is read by the sidecar's own configuration parser — no variable one side
//! writes and the other ignores, no value the webhook accepts and the sidecar refuses.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use mcp_guard_common::env;
use mcp_guard_sidecar::cli::{Cli, flag_env_names, parse_env};
use mcp_guard_webhook::config::InjectConfig;
use mcp_guard_webhook::inject::{PodContext, injected, sidecar_of};
use mcp_guard_webhook::settings::{Item, Kind, PREFIX, SETTINGS};
use serde_json::{Value, json};

/// A valid value of `kind` that is not the sidecar's default.
fn example(kind: Kind) -> String {
    match kind {
        Kind::Text => "urn:example".into(),
        Kind::Url => "https://example.com/x".into(),
        Kind::Duration => "7s".into(),
        Kind::Bool => "true".into(),
        Kind::Count => "1234".into(),
        Kind::Ratio => "0.5".into(),
        Kind::Path => "/events".into(),
        // The last word: never the first, which is where the sidecar's defaults sit.
        Kind::OneOf(words) => words[words.len() - 1].into(),
        Kind::List(Item::Word) => "a.b,c".into(),
        Kind::List(Item::Url) => "https://a.example.com,https://b.example.com".into(),
        Kind::List(Item::OneOf(words)) => words[..2].join(","),
        Kind::List(Item::FieldHeader) => "sub=x-user,roles=x-roles".into(),
        Kind::KeyValues => "team=a,tier=gold".into(),
        Kind::SecretFile { .. } | Kind::SecretEnv { .. } => "a-secret/a-key".into(),
    }
}

/// Injects a pod with these annotations; returns the sidecar container.
fn render(annotations: &[(String, String)]) -> Value {
    let mut a: BTreeMap<String, String> = annotations.iter().cloned().collect();
    a.insert(format!("{PREFIX}inject"), "enabled".into());
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "tools", "annotations": a},
        "spec": {"containers": [{"name": "server", "image": "s", "ports": [{"name": "mcp", "containerPort": 3000}]}]},
    });
    let none = BTreeMap::new();
    let ctx = PodContext {
        pod: &pod,
        namespace: "team-a",
        namespace_annotations: &none,
        workload_name: None,
    };
    let pod = injected(&InjectConfig::default(), ctx)
        .unwrap_or_else(|o| panic!("{annotations:?}: not injected: {o:?}"));
    sidecar_of(&pod).cloned().expect("the sidecar")
}

fn environment(sidecar: &Value) -> Vec<(String, String)> {
    mcp_guard_tests::container_env(sidecar, None)
}

fn parse(vars: &[(String, String)]) -> Result<Cli, String> {
    parse_env(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
}

#[test]
fn every_setting_reaches_the_sidecars_parser_and_changes_its_configuration() {
    let base = environment(&render(&[]));
    let before = format!(
        "{:?}",
        parse(&base).expect("the plain sidecar parses").proxy
    );
    for setting in SETTINGS {
        let value = example(setting.kind);
        let sidecar = render(&[(format!("{PREFIX}{}", setting.name), value.clone())]);
        let vars = environment(&sidecar);
        assert!(
            vars.iter().any(|(k, _)| k == setting.env),
            "{}: the webhook did not write {}",
            setting.name,
            setting.env
        );
        let cli = parse(&vars).unwrap_or_else(|e| {
            panic!(
                "{} = {value:?}: the sidecar refuses what the webhook wrote: {e}",
                setting.name
            )
        });
        if env::OTEL_STANDARD.contains(&setting.env) {
            // Read by the OpenTelemetry SDK, not by a flag.
            continue;
        }
        assert_ne!(
            format!("{:?}", cli.proxy),
            before,
            "{} = {value:?} changed nothing in the sidecar's configuration",
            setting.name
        );
        if setting.kind.is_secret() {
            let path = &vars.iter().find(|(k, _)| k == setting.env).unwrap().1;
            let mount = sidecar["volumeMounts"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| path.starts_with(m["mountPath"].as_str().unwrap()))
                .unwrap_or_else(|| panic!("{}: {path} is on no mount", setting.name));
            assert_eq!(mount["readOnly"], true, "{}", setting.name);
            assert!(path.ends_with("/a-key"), "{path}");
        }
    }
}

#[test]
fn the_settings_arrive_as_the_sidecar_means_them() {
    let annotations: Vec<(String, String)> = [
        ("issuer", "https://idp.example.com"),
        ("resource-uri", "https://tools.example.com/mcp"),
        ("required-scopes", "tickets:read, tickets:write"),
        ("identity-passthrough", "jwt"),
        ("mint-key-secret", "minting"),
        ("otel-sampling-ratio", "0.25"),
        ("hide-deny-reasons", "true"),
        ("audit-disabled", "false"),
        ("drain-timeout", "45s"),
        ("log-format", "text"),
        ("enforcement", "shadow"),
    ]
    .iter()
    .map(|(k, v)| (format!("{PREFIX}{k}"), v.to_string()))
    .collect();
    let cli = parse(&environment(&render(&annotations))).unwrap();
    let p = &cli.proxy;
    assert_eq!(p.auth.issuer.as_deref(), Some("https://idp.example.com"));
    // Spaces after the commas are the annotation's, not part of the scopes.
    assert_eq!(p.auth.required_scopes, ["tickets:read", "tickets:write"]);
    assert_eq!(
        p.auth.mint_key_file.as_deref(),
        Some(std::path::Path::new(
            "/etc/mcp-guard/secrets/mint-key-secret/key.pem"
        ))
    );
    assert_eq!(p.telemetry.otlp_sampling_ratio, Some(0.25));
    assert!(p.policy.hide_deny_reasons);
    assert!(!p.audit.audit_disabled);
    assert_eq!(p.drain_timeout, std::time::Duration::from_secs(45));
    assert_eq!(format!("{:?}", cli.log_format), "Text");
}

/// The sidecar's flags that no workload chooses, and why. Every other flag must be reachable
/// from the cluster (a setting, or written by the webhook itself).
const NOT_PER_WORKLOAD: &[(&str, &str)] = &[
    (
        env::UPSTREAM_HOST,
        "the server shares the pod's network: always loopback",
    ),
    (
        env::JWKS_FILE,
        "keys come from the issuer (jwks-uri overrides its discovery)",
    ),
    (
        env::AUDIT_FILE,
        "the sidecar's root filesystem is read-only: the trail goes to stdout",
    ),
    (
        env::THREADS,
        "follows the sidecar's CPU limit (mcp-guard.dev/cpu-limit): one serving thread per whole \
         CPU of it",
    ),
    (
        env::PINNED_TOOLS,
        "admission writes it from the pod's ApprovedServer entry (spec.tools); a workload never \
         chooses its own pins",
    ),
];

#[test]
fn every_sidecar_flag_is_reachable_from_the_cluster() {
    let mut all: Vec<(String, String)> = SETTINGS
        .iter()
        .map(|s| (format!("{PREFIX}{}", s.name), example(s.kind)))
        .collect();
    all.push((format!("{PREFIX}issuer"), "https://idp.example.com".into()));
    all.push((
        format!("{PREFIX}resource-uri"),
        "https://tools.example.com/mcp".into(),
    ));
    let written: Vec<String> = environment(&render(&all))
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    let unreachable: Vec<String> = flag_env_names()
        .into_iter()
        .filter(|e| !written.contains(e) && !NOT_PER_WORKLOAD.iter().any(|(n, _)| n == e))
        .collect();
    assert!(
        unreachable.is_empty(),
        "sidecar flags no annotation or value reaches (add a setting in webhook/src/settings.rs, \
         or a reason to NOT_PER_WORKLOAD): {unreachable:?}"
    );
}
