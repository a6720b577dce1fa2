//! Policy bundles as the controller and the validating webhook see them: a policy ConfigMap's
//! `data` (`*.rego` files, optional `data.json`) compiled with the compiler every sidecar uses
//! ([`mcp_guard_policy::engine::CompiledBundle::compile`]), so the webhook, the
//! controller and every sidecar reach one verdict on one bundle, with one hash.
//!
//! `/validate` answers `AdmissionReview` v1 for ConfigMaps labelled [`POLICY_LABEL`]: a bundle
//! that does not compile is refused with the compiler's message.

use std::collections::BTreeMap;

use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use mcp_guard_policy::bundle::Bundle;
use mcp_guard_policy::engine::CompiledBundle;
use serde_json::Value;

use crate::selection::string_map;

/// Label that makes a ConfigMap in mcp-guard's namespace a policy source.
pub const POLICY_LABEL: &str = "mcp-guard.dev/policy";

/// The sidecar's bundle from a ConfigMap's `data`: every `*.rego` key is a module, `data.json`
/// is the data document; other keys are ignored (as the sidecar ignores them on disk).
pub fn bundle_of(data: &BTreeMap<String, String>) -> Bundle {
    let modules = data
        .iter()
        .filter(|(k, _)| k.ends_with(".rego") && !k.starts_with('.'))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Bundle::from_parts(modules, data.get("data.json").cloned())
}

/// Compiles a ConfigMap's `data` as the sidecar would. `Ok(hash)` (`sha256:…`, the value the
/// sidecar reports in `mcp_guard_policy_info{hash}`), or the compiler's message.
pub fn compile(data: &BTreeMap<String, String>) -> Result<String, String> {
    let bundle = bundle_of(data);
    let probe = mcp_guard_policy::input::probe();
    match CompiledBundle::compile(&bundle, &probe) {
        Ok(_) => Ok(bundle.hash.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

/// What `/validate` decides for one review body. Errors are a malformed review.
pub fn review(body: &[u8]) -> Result<AdmissionResponse, String> {
    let mut raw: Value =
        serde_json::from_slice(body).map_err(|e| format!("not an AdmissionReview: {e}"))?;
    let object = raw
        .pointer_mut("/request/object")
        .map(Value::take)
        .unwrap_or(Value::Null);
    let old = raw
        .pointer_mut("/request/oldObject")
        .map(Value::take)
        .unwrap_or(Value::Null);
    let review: AdmissionReview<DynamicObject> =
        serde_json::from_value(raw).map_err(|e| format!("not an AdmissionReview: {e}"))?;
    let req: AdmissionRequest<DynamicObject> = review
        .try_into()
        .map_err(|e| format!("not an AdmissionReview request: {e}"))?;
    let resp = AdmissionResponse::from(&req);
    Ok(decide(resp, &req, &object, &old))
}

fn decide(
    resp: AdmissionResponse,
    req: &AdmissionRequest<DynamicObject>,
    object: &Value,
    old: &Value,
) -> AdmissionResponse {
    if !matches!(req.operation, Operation::Create | Operation::Update)
        || req.kind.kind != "ConfigMap"
        || req.sub_resource.is_some()
        || !string_map(object, "/metadata/labels").contains_key(POLICY_LABEL)
    {
        return resp;
    }
    let data = string_map(object, "/data");
    // An update that leaves the files alone (the controller writing status, a label edit) is
    // never refused: the bundle was judged when its files last changed.
    if req.operation == Operation::Update
        && string_map(old, "/metadata/labels").contains_key(POLICY_LABEL)
        && string_map(old, "/data") == data
    {
        return resp;
    }
    let name = object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    match compile(&data) {
        Ok(hash) => {
            tracing::info!(configmap = name, %hash, "policy bundle accepted");
            resp
        }
        Err(message) => {
            tracing::info!(configmap = name, %message, "policy bundle refused");
            resp.deny(format!(
                "mcp-guard: policy ConfigMap {name:?} ({POLICY_LABEL}) refused: {message}"
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn review_body(op: &str, data: Value, old: Option<Value>) -> Vec<u8> {
        let cm = |d: Value| {
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "p", "namespace": "mcp-guard",
                    "labels": {"mcp-guard.dev/policy": "true"}},
                "data": d})
        };
        let mut req = json!({
            "uid": "u1",
            "kind": {"group": "", "version": "v1", "kind": "ConfigMap"},
            "resource": {"group": "", "version": "v1", "resource": "configmaps"},
            "name": "p", "namespace": "mcp-guard", "operation": op,
            "userInfo": {"username": "admin"},
            "object": cm(data),
        });
        if let Some(o) = old {
            req["oldObject"] = cm(o);
        }
        serde_json::to_vec(&json!({"apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview", "request": req}))
        .unwrap_or_default()
    }

    const GOOD: &str = "package mcp.authz\n\ndefault allow := false\n";
    const BAD: &str = "package mcp.authz\n\nallow if {\n  input.x ==\n}\n";

    #[test]
    fn good_bundle_compiles_with_the_sidecar_hash() {
        let data: BTreeMap<_, _> = [("authz.rego".to_string(), GOOD.to_string())].into();
        let hash = compile(&data).expect("compiles");
        assert!(hash.starts_with("sha256:"));
        assert_eq!(hash, bundle_of(&data).hash.to_string());
    }

    #[test]
    fn broken_bundle_is_refused_with_file_and_line() {
        let body = review_body("CREATE", json!({"authz.rego": BAD}), None);
        let resp = review(&body).expect("review");
        assert!(!resp.allowed);
        let msg = resp.result.message;
        assert!(msg.contains("authz.rego"), "{msg}");
        assert!(msg.contains(":5") || msg.contains("line"), "{msg}");
    }

    #[test]
    fn empty_bundle_is_refused_and_status_only_update_is_allowed() {
        let resp = review(&review_body("CREATE", json!({}), None)).expect("review");
        assert!(!resp.allowed);
        let same = json!({"authz.rego": BAD});
        let resp = review(&review_body("UPDATE", same.clone(), Some(same))).expect("review");
        assert!(resp.allowed);
        let resp = review(&review_body(
            "UPDATE",
            json!({"authz.rego": BAD}),
            Some(json!({"authz.rego": GOOD})),
        ))
        .expect("review");
        assert!(!resp.allowed);
        let resp = review(&review_body("UPDATE", json!({"authz.rego": GOOD}), None)).expect("r");
        assert!(resp.allowed);
    }
}
