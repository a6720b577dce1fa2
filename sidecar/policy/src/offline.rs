//! Policy work without a running sidecar: `policy eval` decides on one input document, and
//! `policy test` runs a bundle's own tests, so operators test policy in their CI before it ships.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::PolicyError;
use crate::bundle::Bundle;
use crate::engine::CompiledBundle;
use crate::input;

fn read_json(path: &Path) -> Result<Value, PolicyError> {
    let text = std::fs::read_to_string(path).map_err(|e| PolicyError::Read {
        path: path.to_path_buf(),
        source: e,
    })?;
    serde_json::from_str(&text)
        .map_err(|e| PolicyError::Eval(format!("{}: not valid JSON: {e}", path.display())))
}

fn compile(dir: &Path) -> Result<(Bundle, CompiledBundle), PolicyError> {
    let bundle = Bundle::read_dir(dir)?;
    let compiled = CompiledBundle::compile(&bundle, &input::probe())?;
    Ok((bundle, compiled))
}

/// Decides on the input in `input_file` with the bundle in `dir`; with `rule`, evaluates that
/// rule instead (e.g. `data.mcp.authz.visible`).
pub fn eval(dir: &Path, input_file: &Path, rule: Option<&str>) -> Result<Value, PolicyError> {
    let (_, compiled) = compile(dir)?;
    let input = read_json(input_file)?;
    Ok(match rule {
        Some(r) => {
            json!({"rule": r, "value": compiled.eval_rule(&input, r)?, "policy": &*compiled.hash})
        }
        None => {
            let d = compiled.decide(&input)?;
            let mut out = d.to_json();
            out["policy"] = json!(&*compiled.hash);
            out
        }
    })
}

/// The outcome of `policy test`.
#[derive(Debug, Default)]
pub struct TestReport {
    pub passed: usize,
    pub failed: usize,
    pub lines: String,
}

/// Runs every `test_*` rule of the bundle in `dir` (each must be true) and every fixture pair
/// `NAME.input.json` / `NAME.expected.json` in `fixtures` (default `DIR/tests`), whose expected
/// document is `{"allow": bool}` and optionally `"deny": [reasons]`.
pub fn test(dir: &Path, fixtures: Option<&Path>) -> Result<TestReport, PolicyError> {
    let (bundle, compiled) = compile(dir)?;
    let mut report = TestReport::default();
    let mut record = |ok: bool, name: &str, detail: &str| {
        if ok {
            report.passed += 1;
            let _ = writeln!(report.lines, "PASS {name}");
        } else {
            report.failed += 1;
            let _ = writeln!(report.lines, "FAIL {name}: {detail}");
        }
    };
    for rule in CompiledBundle::test_rules(&bundle) {
        match compiled.eval_rule(&json!({}), &rule) {
            Ok(Value::Bool(true)) => record(true, &rule, ""),
            Ok(v) => record(false, &rule, &format!("evaluated to {v}, expected true")),
            Err(e) => record(false, &rule, &e.to_string()),
        }
    }
    let fixtures: PathBuf = fixtures.map_or_else(|| dir.join("tests"), Path::to_path_buf);
    if fixtures.is_dir() {
        let mut inputs: Vec<PathBuf> = std::fs::read_dir(&fixtures)
            .map_err(|e| PolicyError::Read {
                path: fixtures.clone(),
                source: e,
            })?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.to_string_lossy().ends_with(".input.json"))
            .collect();
        inputs.sort();
        for input_path in inputs {
            let stem = input_path
                .to_string_lossy()
                .trim_end_matches(".input.json")
                .to_owned();
            let name = Path::new(&stem)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let expected_path = PathBuf::from(format!("{stem}.expected.json"));
            let outcome = read_json(&input_path).and_then(|input| {
                let expected = read_json(&expected_path)?;
                let d = compiled.decide(&input)?;
                Ok((expected, d))
            });
            match outcome {
                Err(e) => record(false, &name, &e.to_string()),
                Ok((expected, d)) => {
                    let mut problems = Vec::new();
                    match expected.get("allow").and_then(Value::as_bool) {
                        Some(a) if a == d.allowed() => {}
                        Some(a) => problems.push(format!("allow is {}, expected {a}", d.allowed())),
                        None => problems.push("expected document has no boolean \"allow\"".into()),
                    }
                    if let Some(want) = expected.get("deny") {
                        let got = json!(d.reasons);
                        let mut want_sorted: Vec<Value> =
                            want.as_array().cloned().unwrap_or_default();
                        want_sorted.sort_by_key(|v| v.to_string());
                        if json!(want_sorted) != got {
                            problems.push(format!("deny is {got}, expected {want}"));
                        }
                    }
                    record(problems.is_empty(), &name, &problems.join("; "));
                }
            }
        }
    }
    Ok(report)
}
