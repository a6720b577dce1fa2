#![allow(clippy::unwrap_used)]
//! Conformance check: runs regorus, built exactly as the sidecar builds it (same crate version,
//! same feature list, `Engine::new()` + `set_strict_builtin_errors`), on OPA's own public test
//! cases for the builtins that `docs/policy-builtins.md` recommends.
//!
//! The cases live in `tests/fixtures/opa/<builtin>.json`: each one is a verbatim conversion (YAML
//! to JSON) of files under `v1/test/cases/testdata/` of `open-policy-agent/opa`, with the source
//! path and commit kept next to the cases. Every case of every file kept is run.
//!
//! A case is *passed* when regorus gives OPA's expected result (or, when OPA expects an error,
//! when regorus reports an error too: the wording of error messages is not compared). A case
//! listed in [`UNSUPPORTED`] is *skipped* and must really fail, so that the table stays true. The
//! test fails on any failed case of a supported builtin, and on any unsupported case that passes.
//!
//! Run: `cargo test -p mcp-guard-sidecar --test opa_conformance -- --nocapture`

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use regorus::{Engine, Value as RegoValue};
use serde_json::Value as Json;

/// Cases regorus, as the sidecar configures it, cannot run. `(fixture, note prefix, reason)`:
/// every case of `fixture` whose note starts with the prefix is expected to fail.
const UNSUPPORTED: &[(&str, &str, &str)] = &[
    (
        "base64url",
        "base64urlbuiltins/",
        "base64url.* is behind regorus' `base64url` feature, which the sidecar does not enable",
    ),
    (
        "walk",
        "walkbuiltin/",
        "walk is behind regorus' `graph` feature, which the sidecar does not enable",
    ),
    (
        "json",
        "jsonbuiltins/yaml",
        "yaml.* is behind regorus' `yaml` feature, which the sidecar does not enable",
    ),
    // Deviations of regorus 0.14.1 found by this check (the builtin is compiled in).
    (
        "json",
        "jsonbuiltins/json is_valid not string",
        "DEVIATION: regorus raises a type error for a non-string argument, where OPA returns false",
    ),
    (
        "glob_match",
        "globmatch/empty pattern alternative",
        "DEVIATION: regorus does not match `{**/,}x` against `x` (an empty alternative), OPA does",
    ),
    (
        "strings_count",
        "strings/count_empty_string",
        "DEVIATION: regorus PANICS when the substring is empty (`window size must be non-zero`)",
    ),
    (
        "strings_count",
        "strings/count_odd_even_case",
        "DEVIATION: regorus counts overlapping matches (4 for `11` in `11111`), OPA counts 2",
    ),
];

struct Outcome {
    passed: usize,
    failed: Vec<String>,
    skipped: Vec<String>,
}

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/opa")
}

fn unsupported_reason(builtin: &str, note: &str) -> Option<&'static str> {
    UNSUPPORTED
        .iter()
        .find(|(b, prefix, _)| *b == builtin && note.starts_with(prefix))
        .map(|(_, _, reason)| *reason)
}

fn rego_to_json(v: &RegoValue) -> Result<Json, String> {
    let text = v.to_json_str().map_err(|e| e.to_string())?;
    serde_json::from_str(&text).map_err(|e| e.to_string())
}

/// Builds the engine the way `sidecar/policy/src/engine.rs` does, then loads the case.
fn engine_for(case: &Json) -> Result<Engine, String> {
    let mut engine = Engine::new();
    // The sidecar always runs with strict builtin errors. OPA's cases say per case whether they
    // expect strict mode (`strict_error: true`); without it OPA turns builtin errors into
    // "undefined", so the flag follows the case.
    let strict = case
        .get("strict_error")
        .and_then(Json::as_bool)
        .unwrap_or(false);
    engine.set_strict_builtin_errors(strict);
    if let Some(modules) = case.get("modules").and_then(Json::as_array) {
        for (i, m) in modules.iter().enumerate() {
            let text = m.as_str().ok_or("module is not a string")?;
            engine
                .add_policy(format!("test-{i}.rego"), text.to_string())
                .map_err(|e| format!("add_policy: {e}"))?;
        }
    }
    if let Some(data) = case.get("data") {
        let v = RegoValue::from_json_str(&data.to_string()).map_err(|e| e.to_string())?;
        engine.add_data(v).map_err(|e| format!("add_data: {e}"))?;
    }
    if let Some(input) = case.get("input") {
        let v = RegoValue::from_json_str(&input.to_string()).map_err(|e| e.to_string())?;
        engine.set_input(v);
    }
    if let Some(term) = case.get("input_term").and_then(Json::as_str) {
        let r = engine
            .eval_query(term.to_string(), false)
            .map_err(|e| format!("input_term: {e}"))?;
        let v = r
            .result
            .last()
            .and_then(|q| q.expressions.last())
            .map(|e| e.value.clone())
            .ok_or("input_term has no value")?;
        engine.set_input(v);
    }
    Ok(engine)
}

/// Evaluates the case's query; the result is OPA's shape: a list with, per result, the bindings
/// (or the expression's value when the query binds nothing).
fn run_case(case: &Json) -> Result<Json, String> {
    let mut engine = engine_for(case)?;
    let query = case.get("query").and_then(Json::as_str).ok_or("no query")?;
    let results = engine
        .eval_query(query.to_string(), false)
        .map_err(|e| format!("eval: {e}"))?;
    let mut out = Vec::new();
    for r in &results.result {
        let bindings = r.bindings.as_object().map_err(|e| e.to_string())?;
        if bindings.is_empty() {
            match r.expressions.last() {
                Some(e) => out.push(rego_to_json(&e.value)?),
                None => out.push(Json::Null),
            }
        } else {
            out.push(rego_to_json(&r.bindings)?);
        }
    }
    Ok(Json::Array(out))
}

/// OPA's `sort_bindings`: the arrays bound to variables are compared as sorted.
fn sort_binding_arrays(v: &mut Json) {
    if let Json::Array(results) = v {
        for r in results {
            if let Json::Object(bindings) = r {
                for b in bindings.values_mut() {
                    if let Json::Array(items) = b {
                        items.sort_by_key(|x| x.to_string());
                    }
                }
            }
        }
    }
}

/// JSON equality where numbers compare by value (`1` equals `1.0`).
fn same(a: &Json, b: &Json) -> bool {
    match (a, b) {
        (Json::Number(x), Json::Number(y)) => {
            if let (Some(x), Some(y)) = (x.as_i64(), y.as_i64()) {
                return x == y;
            }
            if let (Some(x), Some(y)) = (x.as_u64(), y.as_u64()) {
                return x == y;
            }
            x.as_f64() == y.as_f64()
        }
        (Json::Array(x), Json::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
        }
        (Json::Object(x), Json::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

/// `Ok(())` when regorus agrees with OPA on the case, else a description of the difference.
fn check(case: &Json) -> Result<(), String> {
    let wants_error = case.get("want_error").is_some() || case.get("want_error_code").is_some();
    // A panic inside regorus is a failure of the case, never an expected error.
    let got = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_case(case))) {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            return Err(format!("regorus PANICKED: {msg}"));
        }
    };
    if wants_error {
        return match got {
            Err(_) => Ok(()),
            Ok(v) => Err(format!(
                "OPA expects an error ({}), regorus gave {v}",
                case.get("want_error")
                    .or_else(|| case.get("want_error_code"))
                    .unwrap()
            )),
        };
    }
    let mut got = got?;
    let mut want = case
        .get("want_result")
        .cloned()
        .unwrap_or(Json::Array(vec![]));
    if case.get("sort_bindings").and_then(Json::as_bool) == Some(true) {
        sort_binding_arrays(&mut got);
        sort_binding_arrays(&mut want);
    }
    if same(&got, &want) {
        Ok(())
    } else {
        Err(format!("want {want}, got {got}"))
    }
}

fn run_fixture(builtin: &str, doc: &Json) -> Outcome {
    let mut o = Outcome {
        passed: 0,
        failed: vec![],
        skipped: vec![],
    };
    for file in doc["files"].as_array().unwrap() {
        let path = file["path"].as_str().unwrap();
        for case in file["cases"].as_array().unwrap() {
            let note = case["note"].as_str().unwrap_or("?");
            let result = check(case);
            match (unsupported_reason(builtin, note), result) {
                (None, Ok(())) => o.passed += 1,
                (None, Err(e)) => o.failed.push(format!("{note} ({path}): {e}")),
                (Some(reason), Err(_)) => o.skipped.push(format!("{note}: {reason}")),
                (Some(_), Ok(())) => o.failed.push(format!(
                    "{note} ({path}): listed in UNSUPPORTED but passes; update the table"
                )),
            }
        }
    }
    o
}

#[test]
fn opa_conformance() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(fixtures_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no fixtures found");

    // Panics are caught and reported per case; keep the default hook from printing each one.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut outcomes = BTreeMap::new();
    for f in &files {
        let builtin = f.file_stem().unwrap().to_string_lossy().into_owned();
        let doc: Json = serde_json::from_str(&std::fs::read_to_string(f).unwrap()).unwrap();
        assert_eq!(doc["builtin"].as_str(), Some(builtin.as_str()), "{f:?}");
        outcomes.insert(builtin.clone(), run_fixture(&builtin, &doc));
    }
    std::panic::set_hook(hook);
    for (b, _, _) in UNSUPPORTED {
        assert!(
            outcomes.contains_key(*b),
            "UNSUPPORTED names `{b}`, which has no fixture"
        );
    }

    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    for (builtin, o) in &outcomes {
        let status = if !o.failed.is_empty() {
            "FAIL"
        } else if o.passed == 0 {
            "UNSUPPORTED"
        } else if !o.skipped.is_empty() {
            "PARTIAL"
        } else {
            "OK"
        };
        println!(
            "{builtin:28} {status:12} {} passed, {} failed, {} skipped",
            o.passed,
            o.failed.len(),
            o.skipped.len()
        );
        for s in &o.skipped {
            println!("    skipped: {s}");
        }
        for f in &o.failed {
            println!("    FAILED: {f}");
        }
        passed += o.passed;
        failed += o.failed.len();
        skipped += o.skipped.len();
    }
    println!("{passed} passed, {failed} failed, {skipped} skipped");
    assert_eq!(failed, 0, "OPA conformance cases failed (see above)");
}
