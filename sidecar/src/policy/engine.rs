//! Compiling a bundle into a regorus engine once, and evaluating decisions with it.
//!
//! Evaluation needs a mutable engine (the input is set on it). Rather than clone the compiled
//! engine for every decision, each thread keeps its own copy of the current bundle's engine and
//! reuses it until the bundle changes: a clone per thread per reload, not per request
//! (`bench/` records both costs side by side).

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use regorus::{Engine, Value as RegoValue};
use serde_json::{Value, json};

use super::PolicyError;
use super::bundle::Bundle;

/// The package every bundle must define.
pub const ENTRY_PACKAGE: &str = "data.mcp.authz";

/// Glue that reads the operator's rules into one decision, so a decision is one evaluation.
/// Allowed means `allow` is true and no `deny` reason holds.
const GLUE: &str = r#"
package mcp_guard.internal
import rego.v1

default allow := false
allow if data.mcp.authz.allow == true

reasons contains r if {
    some r in data.mcp.authz.deny
}

decision := {"allow": allow, "deny": reasons}

default visible := false
visible if data.mcp.authz.visible == true
"#;
const DECISION_RULE: &str = "data.mcp_guard.internal.decision";
const VISIBLE_RULE: &str = "data.mcp_guard.internal.visible";

static GENERATION: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// This thread's engine for the bundle of the given generation.
    static LOCAL: RefCell<Option<(u64, Engine)>> = const { RefCell::new(None) };
}

/// What the policy decided on one input.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub allow: bool,
    /// Deny reasons, sorted.
    pub reasons: Vec<String>,
}

impl Decision {
    pub fn allowed(&self) -> bool {
        self.allow && self.reasons.is_empty()
    }

    pub fn to_json(&self) -> Value {
        json!({"allow": self.allowed(), "deny": self.reasons})
    }
}

/// A compiled bundle, shared by every request.
pub struct CompiledBundle {
    engine: Engine,
    generation: u64,
    pub hash: Arc<str>,
    /// Whether the bundle defines its own `visible` rule for list items.
    pub has_visible: bool,
}

impl std::fmt::Debug for CompiledBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledBundle")
            .field("hash", &self.hash)
            .field("has_visible", &self.has_visible)
            .finish_non_exhaustive()
    }
}

fn compile_error(e: impl std::fmt::Display) -> PolicyError {
    PolicyError::Compile(e.to_string())
}

impl CompiledBundle {
    /// Parses and prepares a bundle, and evaluates it once on `probe` so that a bundle that fails
    /// at evaluation (a conflict between rules, a builtin that does not exist) is refused now and
    /// not on the first request.
    pub fn compile(bundle: &Bundle, probe: &Value) -> Result<Self, PolicyError> {
        if bundle.is_empty() {
            return Err(PolicyError::Compile("the bundle has no .rego file".into()));
        }
        let mut engine = Engine::new();
        engine.set_strict_builtin_errors(true);
        for (name, text) in &bundle.modules {
            engine
                .add_policy(name.clone(), text.clone())
                .map_err(compile_error)?;
        }
        engine
            .add_policy("mcp-guard-glue.rego".into(), GLUE.into())
            .map_err(compile_error)?;
        if let Some(data) = &bundle.data {
            let v = RegoValue::from_json_str(data)
                .map_err(|e| PolicyError::Compile(format!("data.json: {e}")))?;
            if v.as_object().is_err() {
                return Err(PolicyError::Compile(
                    "data.json: the document must be a JSON object".into(),
                ));
            }
            engine
                .add_data(v)
                .map_err(|e| PolicyError::Compile(format!("data.json: {e}")))?;
        }
        let packages = engine.get_packages().map_err(compile_error)?;
        if !packages.iter().any(|p| p == ENTRY_PACKAGE) {
            return Err(PolicyError::Compile(format!(
                "no module declares `package mcp.authz` (found: {})",
                packages
                    .iter()
                    .filter(|p| !p.starts_with("data.mcp_guard.internal"))
                    .map(|p| p.trim_start_matches("data."))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let has_visible = bundle.modules.iter().any(|(name, _)| {
            engine
                .has_declared_rule_rooted_at(name, "visible")
                .unwrap_or(false)
        }) && bundle
            .modules
            .iter()
            .any(|(_, text)| declares_package(text, "mcp.authz"));
        let compiled = CompiledBundle {
            engine,
            generation: GENERATION.fetch_add(1, Ordering::Relaxed),
            hash: Arc::clone(&bundle.hash),
            has_visible,
        };
        compiled.decide(probe)?;
        if has_visible {
            compiled.visible(probe)?;
        }
        Ok(compiled)
    }

    fn eval(&self, input: &Value, rule: &str) -> Result<RegoValue, PolicyError> {
        let input = RegoValue::from(input.clone());
        LOCAL.with(|cell| {
            let mut slot = cell.borrow_mut();
            if slot.as_ref().is_none_or(|(g, _)| *g != self.generation) {
                *slot = Some((self.generation, self.engine.clone()));
            }
            let Some((_, engine)) = slot.as_mut() else {
                return Err(PolicyError::Eval("no engine".into()));
            };
            engine.set_input(input);
            engine
                .eval_rule(rule.to_owned())
                .map_err(|e| PolicyError::Eval(e.to_string()))
        })
    }

    /// Decides with a fresh clone of the compiled engine, the alternative to the per-thread
    /// engine that [`Self::decide`] reuses. Kept for the benchmark that compares the two.
    #[doc(hidden)]
    pub fn decide_on_fresh_clone(&self, input: &Value) -> Result<Decision, PolicyError> {
        let mut engine = self.engine.clone();
        engine.set_input(RegoValue::from(input.clone()));
        let v = engine
            .eval_rule(DECISION_RULE.to_owned())
            .map_err(|e| PolicyError::Eval(e.to_string()))?;
        Ok(Decision {
            allow: v["allow"].as_bool().copied().unwrap_or(false),
            reasons: match v["deny"].as_set() {
                Ok(set) => set.iter().map(reason_text).collect(),
                Err(_) => Vec::new(),
            },
        })
    }

    /// Decides on one input document.
    pub fn decide(&self, input: &Value) -> Result<Decision, PolicyError> {
        let v = self.eval(input, DECISION_RULE)?;
        let allow = v["allow"].as_bool().copied().unwrap_or(false);
        let mut reasons: Vec<String> = match v["deny"].as_set() {
            Ok(set) => set.iter().map(reason_text).collect(),
            Err(_) => Vec::new(),
        };
        reasons.sort();
        Ok(Decision { allow, reasons })
    }

    /// The bundle's own `visible` rule on one input.
    pub fn visible(&self, input: &Value) -> Result<bool, PolicyError> {
        let v = self.eval(input, VISIBLE_RULE)?;
        Ok(v.as_bool().copied().unwrap_or(false))
    }

    /// Evaluates any rule (for `policy eval` and the test runner).
    pub fn eval_rule(&self, input: &Value, rule: &str) -> Result<Value, PolicyError> {
        let v = self.eval(input, rule)?;
        if v == RegoValue::Undefined {
            return Ok(Value::Null);
        }
        let text = v
            .to_json_str()
            .map_err(|e| PolicyError::Eval(e.to_string()))?;
        serde_json::from_str(&text).map_err(|e| PolicyError::Eval(e.to_string()))
    }

    /// The rules named `test_*` in the bundle, by full path (`data.pkg.test_x`).
    pub fn test_rules(bundle: &Bundle) -> Vec<String> {
        let mut out = Vec::new();
        for (_, text) in &bundle.modules {
            let Some(pkg) = package_of(text) else {
                continue;
            };
            for line in text.lines() {
                let line = line.trim_start();
                if let Some(rest) = line.strip_prefix("test_") {
                    let name: String = rest
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    let full = format!("data.{pkg}.test_{name}");
                    if !out.contains(&full) {
                        out.push(full);
                    }
                }
            }
        }
        out
    }
}

fn reason_text(v: &RegoValue) -> String {
    match v.as_string() {
        Ok(s) => s.to_string(),
        Err(_) => v
            .to_json_str()
            .unwrap_or_else(|_| "(unprintable reason)".into()),
    }
}

fn package_of(text: &str) -> Option<String> {
    text.lines().find_map(|l| {
        l.trim()
            .strip_prefix("package ")
            .map(|p| p.trim().to_owned())
    })
}

fn declares_package(text: &str, pkg: &str) -> bool {
    package_of(text).as_deref() == Some(pkg)
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"
package mcp.authz
import rego.v1

default allow := false
allow if input.subject.roles[_] == "admin"
allow if input.request.tool == "echo"

deny contains "no deleting on fridays" if {
    input.request.tool == "delete"
    input.subject.claims.day == "friday"
}
"#;

    fn compiled(text: &str) -> Result<CompiledBundle, PolicyError> {
        let b = Bundle::from_parts(vec![("p.rego".into(), text.into())], None);
        CompiledBundle::compile(&b, &json!({}))
    }

    #[test]
    fn allow_and_reasons() {
        let c = compiled(POLICY).unwrap();
        let d = c.decide(&json!({"request":{"tool":"echo"}})).unwrap();
        assert!(d.allowed());
        let d = c.decide(&json!({"request":{"tool":"rm"}})).unwrap();
        assert!(!d.allowed());
        let d = c
            .decide(&json!({"request":{"tool":"delete"},"subject":{"roles":["admin"],"claims":{"day":"friday"}}}))
            .unwrap();
        assert!(d.allow && !d.allowed());
        assert_eq!(d.reasons, vec!["no deleting on fridays".to_owned()]);
        assert!(!c.has_visible);
    }

    #[test]
    fn compile_errors_name_the_file_and_line() {
        let e = compiled("package mcp.authz\nimport rego.v1\nallow if {\n  input.x ==\n}\n")
            .unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("p.rego:"), "{msg}");
        let e = compiled("package other\nallow := true\n").unwrap_err();
        assert!(e.to_string().contains("package mcp.authz"), "{e}");
    }

    #[test]
    fn visible_rule_is_detected() {
        let c =
            compiled("package mcp.authz\nimport rego.v1\nvisible if input.tool.name == \"a\"\n")
                .unwrap();
        assert!(c.has_visible);
        assert!(c.visible(&json!({"tool":{"name":"a"}})).unwrap());
        assert!(!c.visible(&json!({"tool":{"name":"b"}})).unwrap());
    }

    #[test]
    fn test_rules_are_found() {
        let b = Bundle::from_parts(
            vec![(
                "t.rego".into(),
                "package mcp.authz_test\ntest_a if true\ntest_b_2 := true\n".into(),
            )],
            None,
        );
        assert_eq!(
            CompiledBundle::test_rules(&b),
            vec!["data.mcp.authz_test.test_a", "data.mcp.authz_test.test_b_2"]
        );
    }
}
