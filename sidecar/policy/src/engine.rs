//! Compiling a bundle once, and evaluating decisions with it.
//!
//! A bundle is parsed and checked by regorus's interpreter, then compiled to regorus's bytecode
//! (RVM), which decides about four times faster than the interpreter. Both need mutable state to
//! evaluate (the input is set on them), so each thread keeps its own VM (or interpreter engine)
//! for the bundle in force and reuses it until the bundle changes: one copy per thread per
//! reload, never one per request. `sidecar/benches/policy.rs` records the three costs side by
//! side (bytecode, reused interpreter, interpreter cloned per decision).
//!
//! At load, the bytecode's decision on a probe input is compared with the interpreter's; a
//! bundle the compiler cannot translate, or on which the two disagree, is evaluated by the
//! interpreter (logged), so a gap in the bytecode compiler costs speed, never correctness.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use regorus::languages::rego::compiler::Compiler;
use regorus::rvm::{Program, RegoVM};
use regorus::{Engine, Value as RegoValue};
use serde_json::{Value, json};

use crate::PolicyError;
use crate::bundle::Bundle;
use crate::classes::ToolClasses;
use crate::input::Frame;
use crate::limits::{self, Limit};
use crate::memo::{self, Memo};
use crate::reads::InputReads;
use crate::terms::{self, FrameTerms};

/// The package every bundle must define.
pub const ENTRY_PACKAGE: &str = "data.mcp.authz";

/// Glue that reads the operator's rules into one decision, so a decision is one evaluation.
/// Allowed means `allow` is true and no `deny` reason holds.
const GLUE: &str = include_str!("glue.rego");
/// The glue's file name, as errors and the analyses name it.
const GLUE_FILE: &str = "mcp-guard-glue.rego";
const DECISION_RULE: &str = "data.mcp_guard.internal.decision";
const VISIBLE_RULE: &str = "data.mcp_guard.internal.visible";
const VISIBLE_BY_CALL_RULE: &str = "data.mcp_guard.internal.visible_by_call";
const VISIBLE_TOOLS_RULE: &str = "data.mcp_guard.internal.visible_tools";

/// Bytecode instructions one evaluation may execute. regorus's default (25,000) is sized for
/// one small decision; a `visible_tools` rule walks a whole list, so the bound is raised to one
/// that still stops a runaway policy within tens of milliseconds.
const MAX_INSTRUCTIONS: usize = 5_000_000;

static GENERATION: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// This thread's interpreter for the bundle of the given generation.
    static LOCAL: RefCell<Option<(u64, Engine)>> = const { RefCell::new(None) };
    /// This thread's VMs for the bundle of the given generation.
    static LOCAL_VM: RefCell<Option<(u64, Vms)>> = const { RefCell::new(None) };
}

/// The rules a bundle is evaluated for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    Decision,
    Visible,
    VisibleTools,
    /// The caller terms' values ([`crate::terms`]).
    Terms,
}

/// The bytecode of a bundle.
struct Bytecode {
    decision: Arc<Program>,
    visible: Arc<Program>,
    visible_tools: Option<Arc<Program>>,
    /// The bundle's caller terms ([`crate::terms`]) and their rule's program, when it has any.
    terms: Option<Terms>,
    data: RegoValue,
}

/// A bundle's caller terms, compiled.
struct Terms {
    terms: FrameTerms,
    program: Arc<Program>,
    /// Their values (as JSON) by what the terms read of the frame: the terms call only
    /// deterministic builtins ([`crate::terms`]), so equal reads give equal values.
    values: Memo<Arc<str>>,
}

/// One thread's VMs for one bundle, one per entry rule.
struct Vms {
    decision: RegoVM,
    visible: RegoVM,
    visible_tools: Option<RegoVM>,
    terms: Option<RegoVM>,
}

impl Vms {
    fn new(bc: &Bytecode) -> Result<Vms, PolicyError> {
        Ok(Vms {
            decision: vm_for(&bc.decision, &bc.data)?,
            visible: vm_for(&bc.visible, &bc.data)?,
            visible_tools: match &bc.visible_tools {
                Some(p) => Some(vm_for(p, &bc.data)?),
                None => None,
            },
            terms: match &bc.terms {
                Some(t) => Some(vm_for(&t.program, &RegoValue::new_object())?),
                None => None,
            },
        })
    }
}

fn vm_for(program: &Arc<Program>, data: &RegoValue) -> Result<RegoVM, PolicyError> {
    let mut vm = RegoVM::new();
    vm.load_program(Arc::clone(program));
    vm.set_max_instructions(MAX_INSTRUCTIONS);
    vm.set_data(data.clone())
        .map_err(|e| PolicyError::Eval(e.to_string()))?;
    Ok(vm)
}

/// What the policy decided on one input.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub allow: bool,
    /// Deny reasons, sorted.
    pub reasons: Vec<String>,
    /// Argument paths the audit trail redacts (`redact` rule), sorted.
    pub redact: Vec<String>,
    /// The rate limits the request counts against (`limits` rule), each checked; a malformed
    /// one is a deny reason instead.
    pub limits: Vec<Limit>,
}

impl Decision {
    pub fn allowed(&self) -> bool {
        self.allow && self.reasons.is_empty()
    }

    pub fn to_json(&self) -> Value {
        let limits: Vec<Value> = self
            .limits
            .iter()
            .filter_map(|l| serde_json::from_str(&l.id).ok())
            .collect();
        json!({"allow": self.allowed(), "deny": self.reasons, "limits": limits})
    }
}

/// A compiled bundle, shared by every request.
pub struct CompiledBundle {
    engine: Engine,
    bytecode: Option<Bytecode>,
    generation: u64,
    pub hash: Arc<str>,
    /// Whether the bundle defines its own `visible` rule for list items.
    pub has_visible: bool,
    /// Whether the bundle defines `visible_tools`, the set of tool names a caller may see,
    /// decided for a whole `tools/list` in one evaluation.
    pub has_visible_tools: bool,
    /// The rule deciding list items: the glue's reading of `visible`, or, without one, whether a
    /// call of the item would be allowed.
    visible_rule: &'static str,
    /// The parts of the input the bundle's rules can read.
    reads: InputReads,
    /// Decisions remembered by what the rules read of their input ([`crate::memo`]); `Err`
    /// names the call that rules it out.
    memo: Result<Memo<Decision>, String>,
    /// How the bundle tells the tools of a list apart ([`crate::classes`]); `Err` says why it
    /// tells every tool from every other.
    tool_classes: Result<ToolClasses, String>,
}

impl std::fmt::Debug for CompiledBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledBundle")
            .field("hash", &self.hash)
            .field("has_visible", &self.has_visible)
            .field("bytecode", &self.bytecode.is_some())
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
        let mut engine = new_engine();
        for (name, text) in &bundle.modules {
            if let Some((line, col)) = crate::nesting::too_deep(text) {
                return Err(PolicyError::Compile(format!(
                    "{name}:{line}:{col}: brackets nested more than {} deep; the policy parser's \
                     time grows exponentially with nesting: flatten the rule or move deep data \
                     to data.json",
                    crate::nesting::MAX_DEPTH
                )));
            }
            engine
                .add_policy(name.clone(), text.clone())
                .map_err(compile_error)?;
        }
        engine
            .add_policy(GLUE_FILE.into(), GLUE.into())
            .map_err(compile_error)?;
        let data = match &bundle.data {
            Some(text) => {
                let v = RegoValue::from_json_str(text)
                    .map_err(|e| PolicyError::Compile(format!("data.json: {e}")))?;
                if v.as_object().is_err() {
                    return Err(PolicyError::Compile(
                        "data.json: the document must be a JSON object".into(),
                    ));
                }
                engine
                    .add_data(v.clone())
                    .map_err(|e| PolicyError::Compile(format!("data.json: {e}")))?;
                v
            }
            None => RegoValue::new_object(),
        };
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
        let declares = |rule: &str| {
            bundle.modules.iter().any(|(name, text)| {
                declares_package(text, "mcp.authz")
                    && engine
                        .has_declared_rule_rooted_at(name, rule)
                        .unwrap_or(false)
            })
        };
        let has_visible = declares("visible");
        let has_visible_tools = declares("visible_tools");
        // The engine parsed every module above, so its tokenizer reads them too; should it not,
        // the whole input counts as read (no decision is shared between callers).
        let reads = InputReads::of_modules(sources(bundle)).unwrap_or_else(|_| InputReads::whole());
        let mut compiled = CompiledBundle {
            engine,
            bytecode: None,
            generation: GENERATION.fetch_add(1, Ordering::Relaxed),
            hash: Arc::clone(&bundle.hash),
            has_visible,
            has_visible_tools,
            visible_rule: if has_visible {
                VISIBLE_RULE
            } else {
                VISIBLE_BY_CALL_RULE
            },
            reads,
            memo: Err("not yet compiled".into()),
            tool_classes: Err("not yet compiled".into()),
        };
        let tools_probe = tools_probe(probe);
        let by_interpreter = compiled.decide(probe)?;
        let visible_by_interpreter = compiled.visible(probe)?;
        let tools_by_interpreter = if has_visible_tools {
            Some(compiled.visible_tools(&tools_probe)?)
        } else {
            None
        };
        // The analyses below read the data document too (a shared reference, not a copy).
        let data_document = data.clone();
        match compiled.compile_bytecode(data) {
            Ok(mut bytecode) => {
                bytecode.terms = Self::compile_terms(bundle);
                compiled.bytecode = Some(bytecode);
                compiled.generation = GENERATION.fetch_add(1, Ordering::Relaxed);
                let same = compiled.decide(probe).ok() == Some(by_interpreter)
                    && compiled.visible(probe).ok() == Some(visible_by_interpreter)
                    && (!has_visible_tools
                        || compiled.visible_tools(&tools_probe).ok() == tools_by_interpreter);
                if !same {
                    tracing::warn!(policy_hash = %compiled.hash, "bytecode and interpreter disagree on this bundle; using the interpreter");
                    compiled.bytecode = None;
                }
            }
            Err(e) => {
                tracing::warn!(policy_hash = %compiled.hash, reason = %e, "bundle cannot be compiled to bytecode; using the interpreter");
            }
        }
        // Only now: the probes above must each be evaluated, not remembered.
        compiled.memo = match memo::impure_call(sources(bundle)) {
            None => Ok(Memo::new(&compiled.reads)),
            Some(call) => Err(call),
        };
        compiled.tool_classes = match (&compiled.memo, has_visible_tools) {
            (Err(call), _) => Err(format!("`{call}` may decide differently each time")),
            (Ok(_), true) => Err("`visible_tools` decides whole lists".into()),
            (Ok(_), false) => ToolClasses::of_bundle(
                bundle.modules.iter().map(|(n, t)| (n.as_str(), t.as_str())),
                &data_document,
                &compiled.reads,
            ),
        };
        Ok(compiled)
    }

    fn compile_bytecode(&mut self, data: RegoValue) -> Result<Bytecode, String> {
        let decision = program(&mut self.engine, DECISION_RULE)?;
        let visible = program(&mut self.engine, self.visible_rule)?;
        let visible_tools = if self.has_visible_tools {
            Some(program(&mut self.engine, VISIBLE_TOOLS_RULE)?)
        } else {
            None
        };
        Ok(Bytecode {
            decision,
            visible,
            visible_tools,
            terms: None,
            data,
        })
    }

    /// The bundle's caller terms, compiled: `None` when it has none, or when their rule does not
    /// compile to bytecode (visibility is then shared by [`crate::reads`] alone).
    fn compile_terms(bundle: &Bundle) -> Option<Terms> {
        const FILE: &str = "mcp-guard-frame-terms.rego";
        let terms = FrameTerms::of_modules(sources(bundle))?;
        let source = terms.source();
        let mut engine = new_engine();
        let compiled = engine
            .add_policy(FILE.into(), source.clone())
            .map_err(|e| e.to_string())
            .and_then(|_| program(&mut engine, terms::RULE))
            .and_then(|program| {
                let reads =
                    InputReads::of_modules([(FILE, source.as_str())]).map_err(|e| e.to_string())?;
                Ok((program, reads))
            });
        match compiled {
            Ok((program, reads)) => Some(Terms {
                terms,
                program,
                values: Memo::new(&reads),
            }),
            Err(e) => {
                tracing::warn!(policy_hash = %bundle.hash, reason = %e, "the bundle's caller terms do not compile; list visibility is shared by the input it reads alone");
                None
            }
        }
    }

    /// The caller terms' values for `frame`, as JSON: remembered by what the terms read of it,
    /// else evaluated (and remembered).
    fn terms_values(
        &self,
        bc: &Bytecode,
        t: &Terms,
        frame: &Frame,
    ) -> Result<Arc<str>, PolicyError> {
        t.values
            .get_or_evaluate(frame.document_of_frame(), |document| {
                Ok(self
                    .eval_bytecode(bc, document, Entry::Terms)?
                    .to_string()
                    .into())
            })
    }

    /// What of `frame` this bundle's rules can tell apart, as one text: two frames with the same
    /// text get the same answer to every decision that depends on nothing else (a list item's
    /// visibility). With caller terms ([`crate::terms`]), their values and the frame parts read
    /// outside them; else (or should the terms fail to evaluate) the frame parts the bundle
    /// reads ([`Frame::key_for`]).
    pub fn frame_key(&self, frame: &Frame) -> String {
        if let Some(bc) = &self.bytecode
            && let Some(t) = &bc.terms
        {
            match self.terms_values(bc, t, frame) {
                Ok(values) => {
                    // The values' length first: where they end is never in doubt.
                    let mut key = format!("terms:{}:{values}\n", values.len());
                    key.push_str(&frame.key_for(t.terms.rest()));
                    return key;
                }
                Err(e) => {
                    tracing::debug!(error = %e, policy_hash = %self.hash, "the caller terms failed; the frame is told apart by the input the bundle reads");
                }
            }
        }
        let mut key = String::from("reads:\n");
        key.push_str(&frame.key_for(&self.reads));
        key
    }

    /// The class of one tool of a `tools/list` ([`crate::classes`]): tools of one class are
    /// equally visible to any one caller. `None` when the bundle tells every tool apart.
    pub fn tool_class(&self, name: Option<&str>, view: &RegoValue) -> Option<String> {
        self.tool_classes.as_ref().ok().map(|c| c.key(name, view))
    }

    /// Why the bundle has no tool classes, when it has none.
    pub fn no_tool_classes(&self) -> Option<&str> {
        self.tool_classes.as_ref().err().map(String::as_str)
    }

    /// The bundle's caller terms ([`crate::terms`]), when its decisions use them.
    pub fn frame_terms(&self) -> Option<&FrameTerms> {
        self.bytecode
            .as_ref()
            .and_then(|bc| bc.terms.as_ref())
            .map(|t| &t.terms)
    }

    /// Whether decisions run on bytecode (else on the interpreter).
    pub fn uses_bytecode(&self) -> bool {
        self.bytecode.is_some()
    }

    fn rule_of(&self, entry: Entry) -> &'static str {
        match entry {
            Entry::Decision => DECISION_RULE,
            Entry::Visible => self.visible_rule,
            Entry::VisibleTools => VISIBLE_TOOLS_RULE,
            Entry::Terms => terms::RULE,
        }
    }

    fn eval(&self, input: RegoValue, entry: Entry) -> Result<RegoValue, PolicyError> {
        match &self.bytecode {
            Some(bc) => self.eval_bytecode(bc, input, entry),
            None => self.eval_interpreter_value(input, self.rule_of(entry)),
        }
    }

    fn eval_bytecode(
        &self,
        bc: &Bytecode,
        input: RegoValue,
        entry: Entry,
    ) -> Result<RegoValue, PolicyError> {
        guarded(&LOCAL_VM, || {
            LOCAL_VM.with(|cell| {
                let mut slot = cell.borrow_mut();
                if slot.as_ref().is_none_or(|(g, _)| *g != self.generation) {
                    *slot = Some((self.generation, Vms::new(bc)?));
                }
                let Some((_, vms)) = slot.as_mut() else {
                    return Err(PolicyError::Eval("no policy VM".into()));
                };
                let vm = match entry {
                    Entry::Decision => &mut vms.decision,
                    Entry::Visible => &mut vms.visible,
                    Entry::VisibleTools => vms
                        .visible_tools
                        .as_mut()
                        .ok_or_else(|| PolicyError::Eval("no `visible_tools` rule".into()))?,
                    Entry::Terms => vms
                        .terms
                        .as_mut()
                        .ok_or_else(|| PolicyError::Eval("no caller terms".into()))?,
                };
                vm.set_input(input);
                vm.execute().map_err(|e| PolicyError::Eval(e.to_string()))
            })
        })
    }

    fn eval_interpreter(&self, input: &Value, rule: &str) -> Result<RegoValue, PolicyError> {
        self.eval_interpreter_value(RegoValue::from(input.clone()), rule)
    }

    fn eval_interpreter_value(
        &self,
        input: RegoValue,
        rule: &str,
    ) -> Result<RegoValue, PolicyError> {
        guarded(&LOCAL, || {
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
        })
    }

    /// Decides with this thread's interpreter engine, whether or not the bundle has bytecode.
    /// For the benchmark and the equivalence test.
    #[doc(hidden)]
    pub fn decide_interpreted(&self, input: &Value) -> Result<Decision, PolicyError> {
        decision_of(&self.eval_interpreter(input, DECISION_RULE)?)
    }

    /// Decides with a fresh clone of the compiled interpreter engine, the alternative to reusing
    /// one per thread. Kept for the benchmark that compares them.
    #[doc(hidden)]
    pub fn decide_on_fresh_clone(&self, input: &Value) -> Result<Decision, PolicyError> {
        let mut engine = self.engine.clone();
        engine.set_input(RegoValue::from(input.clone()));
        let v = engine
            .eval_rule(DECISION_RULE.to_owned())
            .map_err(|e| PolicyError::Eval(e.to_string()))?;
        decision_of(&v)
    }

    /// Decides on one input document.
    pub fn decide(&self, input: &Value) -> Result<Decision, PolicyError> {
        self.decide_value(RegoValue::from(input.clone()))
    }

    /// Decides on one input document built as the engine's value (the request path): the
    /// decision remembered for an input the rules cannot tell from this one, or else a new one
    /// (remembered when it succeeds).
    pub fn decide_value(&self, input: RegoValue) -> Result<Decision, PolicyError> {
        match &self.memo {
            Ok(memo) => memo.get_or_evaluate(input, |input| self.evaluate_decision(input)),
            Err(_) => self.evaluate_decision(input),
        }
    }

    fn evaluate_decision(&self, input: RegoValue) -> Result<Decision, PolicyError> {
        decision_of(&self.eval(input, Entry::Decision)?)
    }

    /// Decides by evaluating the bundle, whatever it remembers. For the benchmark and the
    /// equivalence test.
    #[doc(hidden)]
    pub fn decide_evaluated(&self, input: RegoValue) -> Result<Decision, PolicyError> {
        self.evaluate_decision(input)
    }

    /// Whether decisions are remembered ([`crate::memo`]): `Err` names the call (not known to
    /// be deterministic) that rules it out.
    pub fn remembers_decisions(&self) -> Result<(), &str> {
        self.memo.as_ref().map(|_| ()).map_err(String::as_str)
    }

    /// How many decisions are remembered now.
    pub fn remembered(&self) -> usize {
        self.memo.as_ref().map_or(0, Memo::len)
    }

    /// Whether the list item of one input is visible: the bundle's own `visible` rule, or else
    /// whether a call of the item (the same input) would be allowed.
    pub fn visible(&self, input: &Value) -> Result<bool, PolicyError> {
        self.visible_value(RegoValue::from(input.clone()))
    }

    /// [`CompiledBundle::visible`] on an input built as the engine's value (the request path).
    pub fn visible_value(&self, input: RegoValue) -> Result<bool, PolicyError> {
        let v = self.eval(input, Entry::Visible)?;
        Ok(is_true(&v))
    }

    /// The tool names the bundle's `visible_tools` rule admits, for an input whose `tools` lists
    /// the server's definitions.
    pub fn visible_tools(&self, input: &Value) -> Result<BTreeSet<String>, PolicyError> {
        self.visible_tools_value(RegoValue::from(input.clone()))
    }

    /// [`CompiledBundle::visible_tools`] on an input built as the engine's value (the request path).
    pub fn visible_tools_value(&self, input: RegoValue) -> Result<BTreeSet<String>, PolicyError> {
        if !self.has_visible_tools {
            return Err(PolicyError::Eval(
                "the bundle has no `visible_tools` rule".into(),
            ));
        }
        names_of(&self.eval(input, Entry::VisibleTools)?)
    }

    /// [`CompiledBundle::visible_tools`] with this thread's interpreter. For the equivalence test.
    #[doc(hidden)]
    pub fn visible_tools_interpreted(
        &self,
        input: &Value,
    ) -> Result<BTreeSet<String>, PolicyError> {
        names_of(&self.eval_interpreter(input, VISIBLE_TOOLS_RULE)?)
    }

    /// [`CompiledBundle::visible`] with this thread's interpreter, whether or not the bundle has
    /// bytecode. For the equivalence test.
    #[doc(hidden)]
    pub fn visible_interpreted(&self, input: &Value) -> Result<bool, PolicyError> {
        let v = self.eval_interpreter(input, self.visible_rule)?;
        Ok(is_true(&v))
    }

    /// The parts of the input this bundle's rules can read ([`crate::reads`]).
    pub fn reads(&self) -> &InputReads {
        &self.reads
    }

    /// Which generation this bundle is: distinct for every compiled bundle in the process.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Evaluates any rule with the interpreter (for `policy eval` and the test runner).
    pub fn eval_rule(&self, input: &Value, rule: &str) -> Result<Value, PolicyError> {
        let v = self.eval_interpreter(input, rule)?;
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

/// An engine as every bundle is compiled with: a builtin's error fails the evaluation.
fn new_engine() -> Engine {
    let mut engine = Engine::new();
    engine.set_strict_builtin_errors(true);
    engine
}

/// A bundle's modules `(file name, source)` and the glue: what the engine compiles, and what the
/// analyses of what it reads ([`crate::reads`], [`crate::terms`]) read.
fn sources(bundle: &Bundle) -> impl Iterator<Item = (&str, &str)> + Clone {
    bundle
        .modules
        .iter()
        .map(|(name, text)| (name.as_str(), text.as_str()))
        .chain([(GLUE_FILE, GLUE)])
}

/// The bytecode program of one entry `rule` of a compiled engine.
fn program(engine: &mut Engine, rule: &str) -> Result<Arc<Program>, String> {
    let entry: Arc<str> = rule.into();
    let policy = engine
        .compile_with_entrypoint(&entry)
        .map_err(|e| e.to_string())?;
    Compiler::compile_from_policy(&policy, &[rule]).map_err(|e| e.to_string())
}

/// Runs an evaluation, turning a panic inside the engine into an error (the request is then
/// denied) and dropping this thread's engine, whose state the panic may have left half-changed.
fn guarded<T: 'static>(
    local: &'static std::thread::LocalKey<RefCell<Option<T>>>,
    eval: impl FnOnce() -> Result<RegoValue, PolicyError>,
) -> Result<RegoValue, PolicyError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(eval)) {
        Ok(r) => r,
        Err(_) => {
            let _ = local.try_with(|cell| cell.try_borrow_mut().map(|mut slot| *slot = None));
            Err(PolicyError::Eval("the policy engine panicked".into()))
        }
    }
}

// The values a decision is read from are matched on directly: regorus's `as_*` accessors build an
// error (and capture a backtrace when RUST_BACKTRACE is set) for every value of another type,
// which on the request path cost more than the decision itself.

/// `true` only for the boolean `true`.
fn is_true(v: &RegoValue) -> bool {
    matches!(v, RegoValue::Bool(true))
}

/// The members of a set or the items of an array; `None` for any other value.
fn members(v: &RegoValue) -> Option<Vec<&RegoValue>> {
    match v {
        RegoValue::Set(set) => Some(set.iter().collect()),
        RegoValue::Array(list) => Some(list.iter().collect()),
        _ => None,
    }
}

/// Reads the glue's `decision` object. A `deny` that is neither a set nor an array of reasons
/// is itself a reason, so a malformed policy denies.
fn decision_of(v: &RegoValue) -> Result<Decision, PolicyError> {
    let allow = is_true(&v["allow"]);
    let deny = &v["deny"];
    let mut reasons: Vec<String> = match members(deny) {
        Some(items) => items.into_iter().map(reason_text).collect(),
        None if *deny == RegoValue::Undefined => Vec::new(),
        None => vec![format!("malformed deny: {}", reason_text(deny))],
    };
    reasons.sort();
    let mut redact: Vec<String> = members(&v["redact"])
        .unwrap_or_default()
        .into_iter()
        .map(reason_text)
        .collect();
    redact.sort();
    let limits = limits_of(&v["limits"], &mut reasons);
    Ok(Decision {
        allow,
        reasons,
        redact,
        limits,
    })
}

/// The checked members of the decision's `limits`. A malformed limit (or a `limits` that is no
/// set) becomes a deny reason naming what is wrong, so such a policy refuses instead of counting
/// something other than what its author meant.
fn limits_of(v: &RegoValue, reasons: &mut Vec<String>) -> Vec<Limit> {
    let items = match members(v) {
        Some(items) => items,
        None if *v == RegoValue::Undefined => return Vec::new(),
        None => {
            reasons.push(format!(
                "malformed limits: `limits` must be a set of limit objects, not {}",
                reason_text(v)
            ));
            return Vec::new();
        }
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let json = item
            .to_json_str()
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok());
        match json.as_ref().map(limits::parse) {
            Some(Ok(l)) => {
                if !out.contains(&l) {
                    out.push(l);
                }
            }
            Some(Err(e)) => reasons.push(format!("malformed limit {}: {e}", reason_text(item))),
            None => reasons.push("malformed limit: not JSON".into()),
        }
    }
    reasons.sort();
    out
}

/// The names in a `visible_tools` result: a set (or array) of strings; anything else in it names
/// no tool.
fn names_of(v: &RegoValue) -> Result<BTreeSet<String>, PolicyError> {
    let items: Vec<&RegoValue> = match members(v) {
        Some(items) => items,
        None if *v == RegoValue::Undefined => Vec::new(),
        None => {
            return Err(PolicyError::Eval(format!(
                "`visible_tools` must be a set of tool names, not {}",
                reason_text(v)
            )));
        }
    };
    Ok(items
        .into_iter()
        .filter_map(|n| match n {
            RegoValue::String(s) => Some(s.to_string()),
            _ => None,
        })
        .collect())
}

/// The probe input of a `visible_tools` evaluation: the probe's frame, with its tool as the list.
fn tools_probe(probe: &Value) -> Value {
    let mut p = probe.clone();
    if let Some(obj) = p.as_object_mut() {
        let tool = obj
            .remove("tool")
            .unwrap_or_else(|| json!({"name": "probe"}));
        obj.insert("tools".into(), json!([tool]));
        if let Some(req) = obj.get_mut("request").and_then(Value::as_object_mut) {
            req.insert("method".into(), json!("tools/list"));
            req.insert("list".into(), json!("tools/list"));
            req.insert("name".into(), Value::Null);
            req.remove("tool");
        }
    }
    p
}

fn reason_text(v: &RegoValue) -> String {
    match v {
        RegoValue::String(s) => s.to_string(),
        _ => v
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

    #[test]
    fn a_decision_is_read_from_sets_or_arrays_and_anything_else_denies() {
        let read = |v: Value| decision_of(&RegoValue::from(v)).unwrap();
        let set = RegoValue::from(BTreeSet::from([RegoValue::from("b"), RegoValue::from("a")]));
        let mut doc = std::collections::BTreeMap::new();
        doc.insert(RegoValue::from("allow"), RegoValue::Bool(true));
        doc.insert(RegoValue::from("deny"), set);
        let d = decision_of(&RegoValue::from(doc)).unwrap();
        assert_eq!((d.allow, d.reasons), (true, vec!["a".into(), "b".into()]));

        let d = read(json!({"allow": true, "deny": ["x", 7], "redact": ["arguments.password"]}));
        assert_eq!(
            d.reasons,
            vec!["7", "x"],
            "a reason that is not a string is shown as JSON"
        );
        assert_eq!(d.redact, vec!["arguments.password"]);
        assert!(!d.allowed());

        let d = read(json!({"allow": true}));
        assert!(d.allowed(), "no deny at all is no reason");

        let d = read(json!({"allow": true, "deny": "not a set"}));
        assert_eq!(d.reasons, vec![r#"malformed deny: not a set"#]);
        assert!(!d.allowed());

        assert!(
            !read(json!({"allow": "true", "deny": []})).allowed(),
            "only `true` allows"
        );
        assert!(!read(json!({"allow": 1, "deny": []})).allowed());
    }

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
        assert!(c.uses_bytecode(), "this bundle runs on bytecode");
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

    /// A `visible_tools` rule decides a whole list in one evaluation, on bytecode as on the
    /// interpreter.
    #[test]
    fn visible_tools_names_the_tools_of_a_list() {
        let c = compiled(
            r#"package mcp.authz
import rego.v1
visible_tools contains t.name if {
    some t in input.tools
    t.annotations.readOnlyHint == true
}
visible_tools contains "echo" if "admin" in input.subject.roles
"#,
        )
        .unwrap();
        assert!(c.has_visible_tools && !c.has_visible);
        assert!(c.uses_bytecode());
        let input = json!({
            "subject": {"roles": ["admin"]},
            "request": {"method": "tools/list"},
            "tools": [
                {"name": "read", "annotations": {"readOnlyHint": true}},
                {"name": "write", "annotations": {}},
            ],
        });
        let want: BTreeSet<String> = ["echo", "read"].map(String::from).into();
        assert_eq!(c.visible_tools(&input).unwrap(), want);
        assert_eq!(c.visible_tools_interpreted(&input).unwrap(), want);
        let plain = compiled(POLICY).unwrap();
        assert!(!plain.has_visible_tools);
        assert!(plain.visible_tools(&input).is_err());
        // One that is not a collection of names is refused when the bundle loads.
        let e = compiled("package mcp.authz\nimport rego.v1\nvisible_tools := 3\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("visible_tools"), "{e}");
    }

    /// Without a `visible` rule, an item is visible exactly when a call of it would be allowed:
    /// `allow` holds and no `deny` reason does.
    #[test]
    fn visibility_by_call_needs_allow_and_no_reason() {
        let c = compiled(POLICY).unwrap();
        for (input, visible) in [
            (json!({"request": {"tool": "echo"}}), true),
            (json!({"request": {"tool": "rm"}}), false),
            (
                json!({"request": {"tool": "delete"}, "subject": {"roles": ["admin"], "claims": {"day": "friday"}}}),
                false,
            ),
            (
                json!({"request": {"tool": "delete"}, "subject": {"roles": ["admin"], "claims": {"day": "monday"}}}),
                true,
            ),
        ] {
            assert_eq!(c.visible(&input).unwrap(), visible, "{input}");
            assert_eq!(c.visible_interpreted(&input).unwrap(), visible, "{input}");
            assert_eq!(c.decide(&input).unwrap().allowed(), visible, "{input}");
        }
    }

    #[test]
    fn visible_rule_is_detected() {
        let c =
            compiled("package mcp.authz\nimport rego.v1\nvisible if input.tool.name == \"a\"\n")
                .unwrap();
        assert!(c.has_visible);
        assert!(c.uses_bytecode());
        assert!(c.visible(&json!({"tool":{"name":"a"}})).unwrap());
        assert!(!c.visible(&json!({"tool":{"name":"b"}})).unwrap());
    }

    /// The bytecode must decide as the interpreter does: every fixture input of the example
    /// bundle and of the benchmark, and variations of them.
    #[test]
    fn bytecode_agrees_with_the_interpreter() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let bundles = [
            Bundle::read_dir(&root.join("docs/policy-example")).unwrap(),
            Bundle::from_parts(
                vec![(
                    "realistic.rego".into(),
                    include_str!("../../benches/fixtures/realistic.rego").into(),
                )],
                Some(include_str!("../../benches/fixtures/realistic.json").into()),
            ),
        ];
        let mut inputs = Vec::new();
        for entry in std::fs::read_dir(root.join("docs/policy-example/tests")).unwrap() {
            let path = entry.unwrap().path();
            if path.to_string_lossy().ends_with(".input.json") {
                inputs.push(
                    serde_json::from_str::<Value>(&std::fs::read_to_string(path).unwrap()).unwrap(),
                );
            }
        }
        let base = inputs.clone();
        for (i, b) in base.iter().enumerate() {
            for roles in [
                json!([]),
                json!(["mcp-admin"]),
                json!(["analyst", "pii"]),
                json!(["operator"]),
            ] {
                let mut v = b.clone();
                v["subject"]["roles"] = roles;
                v["request"]["arguments"] = json!({"limit": 2000 * i, "table": "PII_users"});
                v["server"]["namespace"] = json!(if i % 2 == 0 { "prod-1" } else { "dev" });
                inputs.push(v);
            }
        }
        for bundle in &bundles {
            let c = CompiledBundle::compile(bundle, &input_probe()).unwrap();
            assert!(c.uses_bytecode(), "{}", bundle.hash);
            for input in &inputs {
                assert_eq!(
                    c.decide(input).unwrap(),
                    c.decide_interpreted(input).unwrap(),
                    "bundle {} on {input}",
                    bundle.hash
                );
                assert_eq!(
                    c.visible(input).unwrap(),
                    c.visible_interpreted(input).unwrap(),
                    "visibility, bundle {} on {input}",
                    bundle.hash
                );
            }
        }
    }

    #[test]
    fn an_engine_panic_denies_instead_of_crashing() {
        // regorus 0.14 panics on strings.count with an empty needle (see docs/policy-builtins.md).
        let c = compiled(
            "package mcp.authz\nimport rego.v1\nallow if strings.count(input.request.tool, input.x) > 0\n",
        )
        .unwrap();
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let r = c.decide(&json!({"request": {"tool": "abc"}, "x": ""}));
        std::panic::set_hook(hook);
        assert!(r.is_err(), "{r:?}");
        // The thread's engine was replaced and still decides.
        assert!(
            c.decide(&json!({"request": {"tool": "abc"}, "x": "b"}))
                .unwrap()
                .allowed()
        );
    }

    fn input_probe() -> Value {
        crate::input::probe()
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

    /// Limits come with the decision, on bytecode as on the interpreter; a malformed one denies
    /// with a reason naming what is wrong.
    #[test]
    fn limits_are_read_and_checked() {
        let c = compiled(
            r#"package mcp.authz
import rego.v1
allow := true
limits contains {"key": "subject", "tool": "search", "per": "1m", "requests": 60}
limits contains {"key": ["subject", "tool"], "per": "1h", "requests": 5} if input.request.tool == "b"
limits contains {"key": "user", "per": "1m", "requests": 1} if input.request.tool == "bad"
"#,
        )
        .unwrap();
        assert!(c.uses_bytecode());
        for d in [
            c.decide(&json!({"request": {"tool": "a"}})).unwrap(),
            c.decide_interpreted(&json!({"request": {"tool": "a"}}))
                .unwrap(),
        ] {
            assert!(d.allowed());
            assert_eq!(d.limits.len(), 1);
            assert_eq!(d.limits[0].name, "subject:search:60/1m");
        }
        assert_eq!(
            c.decide(&json!({"request": {"tool": "b"}}))
                .unwrap()
                .limits
                .len(),
            2
        );
        let d = c.decide(&json!({"request": {"tool": "bad"}})).unwrap();
        assert!(!d.allowed());
        assert_eq!(d.reasons.len(), 1, "{:?}", d.reasons);
        assert!(
            d.reasons[0].starts_with("malformed limit {"),
            "{:?}",
            d.reasons
        );
        assert!(
            d.reasons[0].contains("unknown key \"user\""),
            "{:?}",
            d.reasons
        );
        let plain = compiled(POLICY).unwrap();
        assert!(plain.decide(&json!({})).unwrap().limits.is_empty());
        let d = compiled("package mcp.authz\nallow := true\nlimits := 3\n")
            .unwrap()
            .decide(&json!({}))
            .unwrap();
        assert!(!d.allowed());
        assert!(
            d.reasons[0].contains("must be a set of limit objects"),
            "{:?}",
            d.reasons
        );
    }

    #[test]
    fn policy_names_paths_to_redact() {
        let text = "package mcp.authz\nimport rego.v1\nallow := true\n\
                    redact contains \"arguments.password\"\n\
                    redact contains \"arguments.card\" if input.request.tool == \"pay\"\n";
        let b = Bundle::from_parts(vec![("p.rego".into(), text.into())], None);
        let c = CompiledBundle::compile(&b, &crate::input::probe()).unwrap();
        assert!(c.uses_bytecode());
        let d = c.decide(&json!({"request": {"tool": "pay"}})).unwrap();
        assert!(d.allowed());
        assert_eq!(d.redact, ["arguments.card", "arguments.password"]);
        let plain = Bundle::from_parts(
            vec![("p.rego".into(), "package mcp.authz\nallow := true\n".into())],
            None,
        );
        let c = CompiledBundle::compile(&plain, &crate::input::probe()).unwrap();
        assert!(c.decide(&json!({})).unwrap().redact.is_empty());
    }
}
