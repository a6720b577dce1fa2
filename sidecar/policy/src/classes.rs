//! Tool classes: the tools of a list that no rule of a bundle can tell apart.
//!
//! A caller's first listing evaluates the bundle once per tool ([`crate::engine`]'s visibility
//! rule on each item's input), and [`crate::reads`], [`crate::terms`] share those decisions only
//! between *callers*: every tool has a name and a hash of its own, so a list of 1,000 tools costs
//! 1,000 evaluations for each caller the policy has not seen the like of. Yet most rules read a
//! tool's name only to look it up: `tool in data.role_tools[role]`, `tool == "run_query"`,
//! `object.get(data.approved, tool, [])`, `startswith(tool, "ticket_")`. A name that appears
//! nowhere in the bundle's data or its literals is found by no such lookup, and two such names
//! that agree on every prefix, suffix and substring test the rules make are, to those rules, the
//! same name. Here a bundle is analysed (by the engine's own parser) for that: when every use of a
//! tool's *identity strings* (its name, at `input.request.name`, `input.request.tool` and
//! `input.tool.name`, and its `hash` and `pinned_hash`) is one of the shapes below, a tool's
//! visibility depends on each identity string only through its *class*: the string itself when
//! the bundle mentions it (a literal, or a key or value anywhere in `data.json`), else the results
//! of the bundle's string tests on it. The rest of what the bundle reads of the tool
//! (`input.tool.annotations.readOnlyHint`, ...) joins the class as it is. Tools of one class
//! share one decision per caller: the first of them is evaluated, the others are not.
//!
//! The shapes, `s` an identity string (a read of it, or a rule that is nothing but one, such as
//! `tool := input.request.tool`), `D` a value drawn from the data document or literals
//! (`data.x[...]` where `x` is a key of `data.json` and no package's name, a literal, a
//! collection of those, `object.get(D, _, D)`):
//!
//! | shape | why an unmentioned string cannot change its value |
//! |---|---|
//! | `s == D`, `s != D`, `D == s`, `D != s` | `D` holds only mentioned strings |
//! | `s in D`, `not s in D` | the same |
//! | `D[s]`, `object.get(D, s, d)` | `D`'s keys are mentioned strings: undefined (or `d`) |
//! | `startswith(s, "lit")`, `endswith(s, "lit")`, `contains(s, "lit")` | its result is in the class |
//! | `s` alone as a statement | a string always holds |
//! | `sprintf("...", [..., s, ...])` as the whole key of a `deny contains` head | visibility sees only whether a reason holds, and no rule of the bundle reads `deny` |
//!
//! Anything else (a string test with the name second, `count(s)`, `s` bound to a variable,
//! compared with anything from the input, passed to a function, a `with`, `input.tool` or
//! `input.request` read whole, an import, `data` read through a computed key where a rule could
//! be) and the bundle gets no classes: every tool is decided on its own, as before. Each shape
//! yields the same value for two strings of one class, and an identity string reaches the
//! evaluation through nothing else, so the evaluation of two tools of one class is the same
//! evaluation. `tests/` proves it by decisions: tools of random names, hashes and annotations, for
//! callers of random roles, each decided on its own, and compared with their class.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

use regorus::Value as RegoValue;
use regorus::unstable::{BoolOp, Expr, Literal, Module, Query, Rule, RuleHead};

use crate::reads::InputReads;

/// The identity strings of a tool item's input: read anywhere else, a bundle has no classes.
const IDENTITY: &[&[&str]] = &[
    &["request", "name"],
    &["request", "tool"],
    &["tool", "name"],
    &["tool", "hash"],
    &["tool", "pinned_hash"],
];

/// The builtins the shapes name (`object` of `object.get`).
const SHAPE_BUILTINS: &[&str] = &["startswith", "endswith", "contains", "object", "sprintf"];

/// The entry package's rule whose reasons may hold an identity string (see the table above).
const DENY: &[&str] = &["mcp", "authz", "deny"];

/// A string test a bundle makes on an identity string, with its literal.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Test {
    StartsWith(String),
    EndsWith(String),
    Contains(String),
}

impl Test {
    fn holds(&self, s: &str) -> bool {
        match self {
            Test::StartsWith(l) => s.starts_with(l.as_str()),
            Test::EndsWith(l) => s.ends_with(l.as_str()),
            Test::Contains(l) => s.contains(l.as_str()),
        }
    }
}

/// How a bundle tells tools apart: built once per bundle that has classes.
#[derive(Debug)]
pub struct ToolClasses {
    /// Every string the bundle mentions (its literals, and every key and string of its data),
    /// numbered.
    mentioned: HashMap<Box<str>, usize>,
    /// The string tests the bundle makes on identity strings.
    tests: Vec<Test>,
    /// Whether the bundle reads the item's name from `input.request`.
    reads_request_name: bool,
    /// What the bundle reads below `input.tool`.
    tool_reads: Vec<ToolRead>,
}

/// One read below `input.tool`.
#[derive(Debug)]
struct ToolRead {
    /// Its path, as the key names it (`tool.annotations.readOnlyHint`).
    label: String,
    /// The field names from `input.tool`.
    keys: Vec<RegoValue>,
    /// Whether it reads an identity string (`tool.name`, `tool.hash`) or below one.
    identity: bool,
}

impl ToolClasses {
    /// The classes of a bundle of `modules` `(file name, source)` with `data` (its `data.json`,
    /// as the engine holds it) that reads `reads`; `Err` says what rules them out.
    pub fn of_bundle<'a>(
        modules: impl IntoIterator<Item = (&'a str, &'a str)>,
        data: &RegoValue,
        reads: &InputReads,
    ) -> Result<Self, String> {
        let Some(paths) = reads.paths() else {
            return Err("the bundle reads the whole input".into());
        };
        let mut parsed = Vec::new();
        for (file, text) in modules {
            let (_, module) =
                crate::terms::parse(file, text).ok_or_else(|| format!("{file} does not parse"))?;
            parsed.push((file, module));
        }
        let mut bundle = Bundle::of(&parsed, data)?;
        for (file, module) in &parsed {
            bundle.module(module).map_err(|e| format!("{file}: {e}"))?;
        }
        if bundle.deny_holds_identity && bundle.deny_read {
            return Err(format!(
                "a `deny` reason holds a tool's name or hash, and `{}` is read by a rule",
                DENY.join(".")
            ));
        }
        let mut mentioned = bundle.literals;
        strings_of(data, &mut mentioned);
        let mut tests = bundle.tests;
        tests.sort();
        tests.dedup();
        let under = |root: &'static str| {
            paths
                .iter()
                .filter(move |p| p.first().is_some_and(|r| r == root))
                .map(|p| p[1..].to_vec())
        };
        Ok(ToolClasses {
            mentioned: mentioned
                .into_iter()
                .enumerate()
                .map(|(i, s)| (s, i))
                .collect(),
            tests,
            reads_request_name: under("request")
                .any(|p| p.first().is_some_and(|f| f == "name" || f == "tool")),
            tool_reads: under("tool")
                .map(|path| ToolRead {
                    label: format!("tool.{}", path.join(".")),
                    identity: path
                        .first()
                        .is_some_and(|f| IDENTITY.iter().any(|p| p[0] == "tool" && p[1] == f)),
                    keys: path.iter().map(|f| RegoValue::from(f.as_str())).collect(),
                })
                .collect(),
        })
    }

    /// The class of a tool of a `tools/list`: `name` is the item's name, `view` its policy view
    /// (`input.tool`). Two tools of one class get the same visibility from the bundle, for any
    /// one caller. One line per read: its path, then what it sees.
    pub fn key(&self, name: Option<&str>, view: &RegoValue) -> String {
        let mut out = String::with_capacity(128);
        out.push_str("class:");
        if self.reads_request_name {
            out.push_str("request.name");
            match name {
                Some(n) => self.write_string(&mut out, n),
                None => out.push_str("=null"),
            }
            out.push('\n');
        }
        for read in &self.tool_reads {
            out.push_str(&read.label);
            let mut at = view;
            let mut seen = true;
            for (depth, key) in read.keys.iter().enumerate() {
                let next = match at {
                    RegoValue::Object(o) => o.get(key),
                    // Below a string (`input.tool.name.x`) a read sees nothing, whatever the
                    // string; below anything else, the value shows.
                    RegoValue::String(_) if read.identity => {
                        out.push_str("@string");
                        seen = false;
                        break;
                    }
                    _ => {
                        let _ = write!(out, "@{depth}:{at}");
                        seen = false;
                        break;
                    }
                };
                match next {
                    Some(n) => at = n,
                    None => {
                        let _ = write!(out, "@{depth}!");
                        seen = false;
                        break;
                    }
                }
            }
            if seen {
                match at {
                    RegoValue::String(s) if read.identity && read.keys.len() == 1 => {
                        self.write_string(&mut out, s)
                    }
                    RegoValue::Bool(true) => out.push_str("=true"),
                    RegoValue::Bool(false) => out.push_str("=false"),
                    RegoValue::Null => out.push_str("=null"),
                    _ => {
                        let _ = write!(out, "={at}");
                    }
                }
            }
            out.push('\n');
        }
        out
    }

    /// An identity string's class: which mentioned string it is, else its tests' results.
    fn write_string(&self, out: &mut String, s: &str) {
        match self.mentioned.get(s) {
            Some(i) => {
                let _ = write!(out, "=#{i}");
            }
            None => {
                out.push('?');
                out.extend(
                    self.tests
                        .iter()
                        .map(|t| if t.holds(s) { '1' } else { '0' }),
                );
            }
        }
    }

    /// How many string tests tell unmentioned identity strings apart.
    pub fn tests(&self) -> usize {
        self.tests.len()
    }
}

/// Every key and string of a value of the data document.
fn strings_of(v: &RegoValue, out: &mut HashSet<Box<str>>) {
    match v {
        RegoValue::String(s) => {
            out.insert(s.as_ref().into());
        }
        RegoValue::Array(items) => items.iter().for_each(|i| strings_of(i, out)),
        RegoValue::Set(items) => items.iter().for_each(|i| strings_of(i, out)),
        RegoValue::Object(fields) => {
            for (k, v) in fields.iter() {
                strings_of(k, out);
                strings_of(v, out);
            }
        }
        _ => {}
    }
}

/// What an expression is, as far as identity strings go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// An identity string.
    Identity,
    /// A value drawn from the data document and literals alone: it holds mentioned strings only.
    Data,
    /// Anything else, holding no identity string.
    Other,
}

/// One step of a reference chain.
enum Step<'a> {
    Field(String),
    Index(&'a Expr),
}

/// The root of a reference chain and its steps, outermost last.
fn chain(e: &Expr) -> (&Expr, Vec<Step<'_>>) {
    let mut steps = Vec::new();
    let mut at = e;
    loop {
        match at {
            Expr::RefDot { refr, field, .. } => {
                steps.push(Step::Field(field.0.text().to_owned()));
                at = refr;
            }
            Expr::RefBrack { refr, index, .. } => {
                let step = match &**index {
                    Expr::String { value, .. } | Expr::RawString { value, .. } => value
                        .as_string()
                        .map(|s| Step::Field(s.to_string()))
                        .unwrap_or(Step::Index(index)),
                    _ => Step::Index(index),
                };
                steps.push(step);
                at = refr;
            }
            _ => break,
        }
    }
    steps.reverse();
    (at, steps)
}

/// The leading fields of a chain, up to its first computed step.
fn fields<'s>(steps: &'s [Step<'_>]) -> Vec<&'s str> {
    steps
        .iter()
        .map_while(|s| match s {
            Step::Field(f) => Some(f.as_str()),
            Step::Index(_) => None,
        })
        .collect()
}

fn var_name(e: &Expr) -> Option<&str> {
    match e {
        Expr::Var { span, .. } => Some(span.text()),
        _ => None,
    }
}

/// A package's path (`mcp.authz`), or a dotted head's.
fn dotted(e: &Expr) -> Option<Vec<String>> {
    let (root, steps) = chain(e);
    let mut path = vec![var_name(root)?.to_owned()];
    for s in steps {
        match s {
            Step::Field(f) => path.push(f),
            Step::Index(_) => return None,
        }
    }
    Some(path)
}

/// The bundle as the analysis walks it.
struct Bundle<'d> {
    data: &'d RegoValue,
    /// The first name of every package (`mcp` of `mcp.authz`): `data.<it>` may be a rule.
    package_roots: HashSet<String>,
    /// Rules that are nothing but an identity string, each by its path below `data` (package
    /// path and rule name).
    aliases: Vec<Vec<String>>,
    literals: HashSet<Box<str>>,
    tests: Vec<Test>,
    deny_holds_identity: bool,
    deny_read: bool,
    /// The module being walked: its package path.
    package: Vec<String>,
}

/// Why a bundle has no classes, naming the expression.
fn refuse(e: &Expr, why: &str) -> String {
    let span = e.span();
    // The whole expression's text (a string literal's span leaves its quotes out).
    let text = crate::terms::extent(e)
        .and_then(|(start, end)| span.source.contents().get(start..end))
        .unwrap_or(span.text());
    format!("line {}: `{text}` {why}", span.line)
}

impl<'d> Bundle<'d> {
    fn of(parsed: &[(&str, Module)], data: &'d RegoValue) -> Result<Self, String> {
        let mut package_roots: HashSet<String> = HashSet::from(["mcp_guard".to_owned()]);
        let mut aliases = Vec::new();
        // Every rule's path below `data` (package path and first name).
        let mut defined: Vec<Vec<String>> = Vec::new();
        for (file, module) in parsed {
            let package =
                dotted(&module.package.refr).ok_or_else(|| format!("{file}: package not read"))?;
            package_roots.insert(package[0].clone());
            for import in &module.imports {
                let root = dotted(&import.refr).and_then(|p| p.first().cloned());
                if !matches!(root.as_deref(), Some("rego" | "future")) {
                    return Err(format!(
                        "{file}: line {}: imports are not analysed",
                        import.span.line
                    ));
                }
            }
            for rule in &module.policy {
                let (refr, alias) = match &**rule {
                    Rule::Spec {
                        head: RuleHead::Compr { refr, assign, .. },
                        bodies,
                        ..
                    } => {
                        let alias =
                            assign
                                .as_ref()
                                .filter(|_| bodies.is_empty())
                                .is_some_and(|a| {
                                    let (root, steps) = chain(&a.value);
                                    let path = fields(&steps);
                                    var_name(root) == Some("input")
                                        && path.len() == steps.len()
                                        && IDENTITY.contains(&path.as_slice())
                                });
                        (refr, alias)
                    }
                    Rule::Spec {
                        head: RuleHead::Set { refr, .. } | RuleHead::Func { refr, .. },
                        ..
                    }
                    | Rule::Default { refr, .. } => (refr, false),
                };
                let name = crate::terms::root_name(refr).unwrap_or_default();
                let path: Vec<String> = package.iter().cloned().chain([name.to_owned()]).collect();
                if alias && var_name(refr).is_some() {
                    aliases.push(path.clone());
                }
                defined.push(path);
            }
        }
        // A rule named like a builtin the shapes rely on would change what they mean.
        if let Some(name) = defined
            .iter()
            .filter_map(|p| p.last())
            .find(|n| SHAPE_BUILTINS.contains(&n.as_str()))
        {
            return Err(format!("a rule is named `{name}`, like a builtin"));
        }
        for alias in &aliases {
            if defined.iter().filter(|d| *d == alias).count() != 1 {
                return Err(format!("`{}` is defined more than once", alias.join(".")));
            }
        }
        Ok(Bundle {
            data,
            package_roots,
            aliases,
            literals: HashSet::new(),
            tests: Vec::new(),
            deny_holds_identity: false,
            deny_read: false,
            package: Vec::new(),
        })
    }

    fn module(&mut self, module: &Module) -> Result<(), String> {
        self.package = dotted(&module.package.refr).unwrap_or_default();
        for rule in &module.policy {
            match &**rule {
                Rule::Spec { head, bodies, .. } => {
                    match head {
                        RuleHead::Compr { refr, assign, .. } => {
                            if self.is_alias_definition(refr) {
                                continue;
                            }
                            self.head(refr, &[])?;
                            if let Some(a) = assign {
                                self.no_identity(&a.value, "is a rule's value")?;
                            }
                        }
                        RuleHead::Set { refr, key, .. } => {
                            self.head(refr, &[])?;
                            if let Some(k) = key {
                                self.set_key(refr, k)?;
                            }
                        }
                        RuleHead::Func {
                            refr, args, assign, ..
                        } => {
                            self.head(refr, args)?;
                            if let Some(a) = assign {
                                self.no_identity(&a.value, "is a function's value")?;
                            }
                        }
                    }
                    for body in bodies {
                        if let Some(a) = &body.assign {
                            self.no_identity(&a.value, "is a rule's value")?;
                        }
                        self.query(&body.query)?;
                    }
                }
                Rule::Default {
                    refr, args, value, ..
                } => {
                    self.head(refr, args)?;
                    self.no_identity(value, "is a rule's value")?;
                }
            }
        }
        Ok(())
    }

    fn is_alias_definition(&self, refr: &Expr) -> bool {
        var_name(refr).is_some_and(|n| self.is_alias(n))
    }

    /// Whether `name`, in the module being walked, is a rule that is an identity string.
    fn is_alias(&self, name: &str) -> bool {
        self.aliases.iter().any(|a| {
            a.split_last()
                .is_some_and(|(n, p)| n == name && p == self.package.as_slice())
        })
    }

    fn in_entry_package(&self) -> bool {
        self.package == DENY[..2]
    }

    /// A rule's head reference and a function's arguments: its computed keys and the arguments
    /// are checked; it may not redefine an alias.
    fn head(&mut self, refr: &Expr, args: &[regorus::unstable::Ref<Expr>]) -> Result<(), String> {
        let (root, steps) = chain(refr);
        if var_name(root).is_some_and(|n| self.is_alias(n)) {
            return Err(refuse(refr, "redefines a rule that is a tool's name"));
        }
        for s in &steps {
            if let Step::Index(i) = s {
                self.no_identity(i, "is a rule's key")?;
            }
        }
        for a in args {
            self.no_identity(a, "is a function's argument")?;
        }
        Ok(())
    }

    /// The key of a `contains` rule: only `deny`'s may hold identity strings, inside `sprintf`.
    fn set_key(&mut self, refr: &Expr, key: &Expr) -> Result<(), String> {
        let is_deny = self.in_entry_package() && var_name(refr) == Some(DENY[2]);
        if is_deny
            && let Expr::Call { fcn, params, .. } = key
            && crate::terms::builtin_name(fcn).as_deref() == Some("sprintf")
            && let [format, Expr::Array { items, .. }] =
                params.iter().map(|p| &**p).collect::<Vec<_>>()[..]
            && matches!(format, Expr::String { .. } | Expr::RawString { .. })
        {
            self.expr(format)?;
            for item in items {
                if self.expr(item)? == Kind::Identity {
                    self.deny_holds_identity = true;
                }
            }
            return Ok(());
        }
        self.no_identity(key, "is a rule's key").map(|_| ())
    }

    /// Checks `e`, which may not be an identity string itself.
    fn no_identity(&mut self, e: &Expr, why: &str) -> Result<Kind, String> {
        match self.expr(e)? {
            Kind::Identity => Err(refuse(e, &format!("is a tool's name or hash and {why}"))),
            k => Ok(k),
        }
    }

    fn query(&mut self, q: &Query) -> Result<(), String> {
        for stmt in &q.stmts {
            if let Some(w) = stmt.with_mods.first() {
                return Err(refuse(&w.refr, "is replaced with `with`"));
            }
            match &stmt.literal {
                Literal::SomeVars { vars, .. } => {
                    if let Some(v) = vars.iter().find(|v| self.is_alias(v.text())) {
                        return Err(format!(
                            "line {}: `{}` declares a variable named as a tool's name",
                            v.line,
                            v.text()
                        ));
                    }
                }
                Literal::SomeIn {
                    key,
                    value,
                    collection,
                    ..
                } => {
                    for pattern in key.iter().chain([value]) {
                        self.no_identity(pattern, "is bound by `some`")?;
                    }
                    self.no_identity(collection, "is iterated")?;
                }
                // A statement holds when its value is defined and not false: a string always does.
                Literal::Expr { expr, .. } | Literal::NotExpr { expr, .. } => {
                    self.expr(expr)?;
                }
                Literal::Every {
                    key,
                    value,
                    domain,
                    query,
                    ..
                } => {
                    if let Some(k) = key
                        && self.is_alias(k.text())
                    {
                        return Err(format!("line {}: `every` binds `{}`", k.line, k.text()));
                    }
                    if self.is_alias(value.text()) {
                        return Err(format!(
                            "line {}: `every` binds `{}`",
                            value.line,
                            value.text()
                        ));
                    }
                    self.no_identity(domain, "is iterated")?;
                    self.query(query)?;
                }
            }
        }
        Ok(())
    }

    /// What `e` is, after checking every identity string within it stands in an allowed shape.
    fn expr(&mut self, e: &Expr) -> Result<Kind, String> {
        match e {
            Expr::String { value, .. } | Expr::RawString { value, .. } => {
                if let Ok(s) = value.as_string() {
                    self.literals.insert(s.as_ref().into());
                }
                Ok(Kind::Data)
            }
            Expr::Number { .. } | Expr::Bool { .. } | Expr::Null { .. } => Ok(Kind::Data),
            Expr::Var { .. } | Expr::RefDot { .. } | Expr::RefBrack { .. } => self.reference(e),
            Expr::Array { items, .. } | Expr::Set { items, .. } => {
                let mut all_data = true;
                for i in items {
                    all_data &= self.no_identity(i, "is put in a collection")? == Kind::Data;
                }
                Ok(if all_data { Kind::Data } else { Kind::Other })
            }
            Expr::Object { fields, .. } => {
                let mut all_data = true;
                for (_, k, v) in fields {
                    all_data &= self.no_identity(k, "is put in a collection")? == Kind::Data;
                    all_data &= self.no_identity(v, "is put in a collection")? == Kind::Data;
                }
                Ok(if all_data { Kind::Data } else { Kind::Other })
            }
            Expr::Call { fcn, params, .. } => self.call(e, fcn, params),
            Expr::UnaryExpr { expr, .. } => {
                self.no_identity(expr, "is negated")?;
                Ok(Kind::Other)
            }
            Expr::BinExpr { lhs, rhs, .. } => {
                let l = self.no_identity(lhs, "is combined")?;
                let r = self.no_identity(rhs, "is combined")?;
                Ok(if l == Kind::Data && r == Kind::Data {
                    Kind::Data
                } else {
                    Kind::Other
                })
            }
            Expr::ArithExpr { lhs, rhs, .. } => {
                self.no_identity(lhs, "is computed with")?;
                self.no_identity(rhs, "is computed with")?;
                Ok(Kind::Other)
            }
            Expr::BoolExpr { op, lhs, rhs, .. } => {
                let l = self.expr(lhs)?;
                let r = self.expr(rhs)?;
                let equality = matches!(op, BoolOp::Eq | BoolOp::Ne);
                match (l, r) {
                    (Kind::Identity, Kind::Data) | (Kind::Data, Kind::Identity) if equality => {
                        Ok(Kind::Other)
                    }
                    (Kind::Identity, _) | (_, Kind::Identity) => Err(refuse(
                        e,
                        "compares a tool's name or hash with something not from data or literals",
                    )),
                    _ => Ok(Kind::Other),
                }
            }
            Expr::AssignExpr { lhs, rhs, .. } => {
                self.no_identity(lhs, "is assigned")?;
                self.no_identity(rhs, "is assigned")?;
                Ok(Kind::Other)
            }
            Expr::Membership {
                key,
                value,
                collection,
                ..
            } => {
                if let Some(k) = key {
                    self.no_identity(k, "is a membership's key")?;
                }
                let v = self.expr(value)?;
                let c = self.no_identity(collection, "is a collection")?;
                if v == Kind::Identity && (key.is_some() || c != Kind::Data) {
                    return Err(refuse(
                        e,
                        "looks a tool's name or hash up in something not from data or literals",
                    ));
                }
                Ok(Kind::Other)
            }
            Expr::ArrayCompr { term, query, .. } | Expr::SetCompr { term, query, .. } => {
                self.query(query)?;
                self.no_identity(term, "is collected")?;
                Ok(Kind::Other)
            }
            Expr::ObjectCompr {
                key, value, query, ..
            } => {
                self.query(query)?;
                self.no_identity(key, "is collected")?;
                self.no_identity(value, "is collected")?;
                Ok(Kind::Other)
            }
            #[allow(unreachable_patterns)]
            _ => Err(refuse(e, "is not analysed")),
        }
    }

    fn call(
        &mut self,
        e: &Expr,
        fcn: &Expr,
        params: &[regorus::unstable::Ref<Expr>],
    ) -> Result<Kind, String> {
        let name = crate::terms::builtin_name(fcn).unwrap_or_default();
        let kinds = params
            .iter()
            .map(|p| self.expr(p))
            .collect::<Result<Vec<_>, _>>()?;
        let literal = |i: usize| match params.get(i).map(|p| &**p) {
            Some(Expr::String { value, .. } | Expr::RawString { value, .. }) => {
                value.as_string().ok().map(|s| s.to_string())
            }
            _ => None,
        };
        match (name.as_str(), kinds.as_slice()) {
            ("startswith" | "endswith" | "contains", [Kind::Identity, Kind::Data]) => {
                let Some(l) = literal(1) else {
                    return Err(refuse(
                        e,
                        "tests a tool's name or hash against a non-literal",
                    ));
                };
                self.tests.push(match name.as_str() {
                    "startswith" => Test::StartsWith(l),
                    "endswith" => Test::EndsWith(l),
                    _ => Test::Contains(l),
                });
                Ok(Kind::Other)
            }
            ("object.get", [Kind::Data, _, Kind::Data]) => Ok(Kind::Data),
            (_, kinds) if kinds.contains(&Kind::Identity) => {
                Err(refuse(e, "passes a tool's name or hash to a function"))
            }
            _ => Ok(Kind::Other),
        }
    }

    /// A variable or a reference chain.
    fn reference(&mut self, e: &Expr) -> Result<Kind, String> {
        let (root, steps) = chain(e);
        let lead = fields(&steps);
        let whole = lead.len() == steps.len();
        let kind = match var_name(root) {
            Some("input") => {
                if whole && IDENTITY.contains(&lead.as_slice()) {
                    return Ok(Kind::Identity);
                }
                // `input`, `input.tool`, `input.request` whole, or through a computed key at or
                // above an identity string, or a step below one.
                let hides = IDENTITY
                    .iter()
                    .any(|p| p.starts_with(&lead) || lead.starts_with(p));
                if hides && !(whole && lead.len() > 2) {
                    return Err(refuse(e, "reads a tool's name or hash with the rest"));
                }
                Kind::Other
            }
            Some("data") => {
                if self.aliases.iter().any(|a| *a == lead) {
                    if whole {
                        return Ok(Kind::Identity);
                    }
                    return Err(refuse(e, "reads into a tool's name"));
                }
                if lead.starts_with(DENY) {
                    self.deny_read = true;
                }
                // A path above an alias or `deny` (`data.mcp.authz`), read whole or through a
                // computed key.
                let above = |p: &[&str]| lead.len() < p.len() && p.starts_with(&lead);
                let alias_paths = self
                    .aliases
                    .iter()
                    .map(|a| a.iter().map(String::as_str).collect::<Vec<_>>());
                if above(DENY) || alias_paths.into_iter().any(|a| above(&a)) {
                    return Err(refuse(e, "reads rules whole that hold a tool's name"));
                }
                let is_data = lead.first().is_some_and(|f| {
                    !self.package_roots.contains(*f)
                        && self
                            .data
                            .as_object()
                            .is_ok_and(|o| o.get(&RegoValue::from(*f)).is_some())
                });
                if is_data { Kind::Data } else { Kind::Other }
            }
            Some(name) => {
                if self.is_alias(name) {
                    if steps.is_empty() {
                        return Ok(Kind::Identity);
                    }
                    return Err(refuse(e, "reads into a tool's name"));
                }
                if name == DENY[2] && self.in_entry_package() {
                    self.deny_read = true;
                }
                Kind::Other
            }
            None => {
                self.no_identity(root, "is read into")?;
                Kind::Other
            }
        };
        for s in &steps {
            if let Step::Index(i) = s {
                let k = self.expr(i)?;
                // A computed key into data still reads data: the kind stays.
                if k == Kind::Identity && kind != Kind::Data {
                    return Err(refuse(
                        e,
                        "looks a tool's name or hash up in something not from data or literals",
                    ));
                }
            }
        }
        Ok(kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const REALISTIC: &str = include_str!("../../benches/fixtures/realistic.rego");
    const REALISTIC_DATA: &str = include_str!("../../benches/fixtures/realistic.json");

    fn classes(rego: &str, data: Option<&str>) -> Result<ToolClasses, String> {
        let reads = InputReads::of_modules([("p.rego", rego)]).expect("reads");
        let data = RegoValue::from_json_str(data.unwrap_or("{}")).expect("data");
        ToolClasses::of_bundle([("p.rego", rego)], &data, &reads)
    }

    fn policy(rules: &str) -> String {
        format!("package mcp.authz\nimport rego.v1\n\ntool := input.request.tool\n\n{rules}\n")
    }

    fn view(name: &str, hash: &str, read_only: bool) -> RegoValue {
        RegoValue::from(json!({
            "name": name, "description": "d", "inputSchema": {"type": "object"},
            "annotations": {"readOnlyHint": read_only},
            "hash": hash, "pinned_hash": hash, "changed": false,
        }))
    }

    fn key(c: &ToolClasses, name: &str, hash: &str, read_only: bool) -> String {
        c.key(Some(name), &view(name, hash, read_only))
    }

    #[test]
    fn the_realistic_policy_tells_tools_apart_by_what_it_looks_up() {
        let c = classes(REALISTIC, Some(REALISTIC_DATA)).expect("the realistic policy has classes");
        // Names no rule mentions, of the same annotations: one class, whatever the hash.
        let a = key(&c, "tool_100", "sha256:aa", false);
        assert_eq!(a, key(&c, "billing_export", "sha256:bb", false));
        // A name the data lists, or one the rules test (`ticket_`), or other annotations: another.
        assert_ne!(a, key(&c, "tool_15", "sha256:aa", false));
        assert_ne!(a, key(&c, "ticket_77", "sha256:aa", false));
        assert_eq!(
            key(&c, "ticket_77", "sha256:aa", false),
            key(&c, "ticket_x", "sha256:cc", false)
        );
        assert_ne!(a, key(&c, "tool_100", "sha256:aa", true));
        assert_eq!(c.tests(), 1);
    }

    #[test]
    fn the_benchmark_s_thousand_tools_make_fifty_two_classes() {
        // `sidecar/benches/policy.rs`'s list: 50 names the realistic data mentions, 950 others
        // (read-only or not), each of a hash of its own.
        let c = classes(REALISTIC, Some(REALISTIC_DATA)).expect("classes");
        let keys: HashSet<String> = (0..1000)
            .map(|i| {
                let name = format!("tool_{:02}", i % 50 + (i / 50) * 100);
                key(&c, &name, &format!("sha256:{i:064x}"), i % 3 == 0)
            })
            .collect();
        assert_eq!(keys.len(), 52);
    }

    #[test]
    fn every_allowed_shape_keeps_classes() {
        for rules in [
            "allow if tool in data.tools",
            "allow if not tool in data.tools",
            "allow if tool == \"a\"",
            "allow if \"a\" != input.tool.name",
            "allow if tool in {\"a\", \"b\"}",
            "allow if data.by_tool[tool].ok",
            "allow if object.get(data.by_tool, tool, false)",
            "allow if not input.tool.hash in object.get(data.approved, tool, [])",
            "allow if startswith(tool, \"ticket_\")",
            "allow if endswith(input.tool.name, \"_9\")",
            "allow if contains(input.request.name, \"admin\")",
            "allow if tool",
            "allow if data.tools[input.subject.roles[0]][_] == tool",
            "deny contains sprintf(\"%s changed (%s)\", [tool, input.tool.hash]) if input.tool.changed",
            "allow if { some r in input.subject.roles; tool in data.role_tools[r] }",
        ] {
            let c = classes(
                &policy(rules),
                Some(r#"{"tools": ["a"], "by_tool": {}, "approved": {}, "role_tools": {}}"#),
            );
            assert!(c.is_ok(), "{rules}: {:?}", c.err());
        }
    }

    #[test]
    fn any_other_use_of_a_name_or_hash_leaves_no_classes() {
        for (rules, names) in [
            ("allow if count(tool) > 3", "count(tool)"),
            (
                "allow if tool in input.subject.claims.tools",
                "tool in input.subject.claims.tools",
            ),
            (
                "allow if { t := input.request.tool; t == \"a\" }",
                "`input.request.tool` is a tool's name or hash and is assigned",
            ),
            (
                "allow if contains(\"abcdef\", tool)",
                "contains(\"abcdef\", tool)",
            ),
            (
                "allow if startswith(tool, input.subject.sub)",
                "startswith(tool, input.subject.sub)",
            ),
            ("allow if lower(tool) == \"a\"", "lower(tool)"),
            ("allow if regex.match(\"^a\", tool)", "regex.match"),
            (
                "allow if tool == input.subject.sub",
                "tool == input.subject.sub",
            ),
            ("allow if tool < \"m\"", "tool < \"m\""),
            (
                "allow if object.get(input.tool, \"name\", \"\") == \"a\"",
                "`input.tool` reads",
            ),
            (
                "allow if { some k; input.request[k] == \"a\" }",
                "input.request[k]",
            ),
            (
                "allow if { x := input; x.request.tool == \"a\" }",
                "the whole input",
            ),
            (
                "allow if { some tool in data.tools }",
                "`tool` is a tool's name or hash and is bound by `some`",
            ),
            ("allow if data.x with input.request.tool as \"a\"", "with"),
            (
                "allow if { some x; data.mcp.authz[x] == \"a\" }",
                "data.mcp.authz[x]",
            ),
            (
                "allow if tool in allowed\nallowed := input.subject.claims.tools",
                "tool in allowed",
            ),
            ("allow if tool[0] == \"a\"", "tool[0]"),
            ("names contains tool", "is a rule's key"),
            (
                "allow if concat(\"/\", [tool]) == \"a\"",
                "put in a collection",
            ),
            (
                "deny contains sprintf(\"%s\", [tool]) if true\nallow if count(deny) == 0",
                "`mcp.authz.deny` is read",
            ),
            (
                "deny contains msg if { msg := sprintf(\"%s\", [tool]) }",
                "put in a collection",
            ),
            ("f(x) := x\nallow if f(tool) == \"a\"", "f(tool)"),
            (
                "startswith(a, b) := true\nallow if startswith(tool, \"x\")",
                "`startswith`, like a builtin",
            ),
        ] {
            let why = classes(&policy(rules), Some(r#"{"tools": ["a"]}"#))
                .err()
                .unwrap_or_else(|| panic!("{rules}: classes kept"));
            assert!(why.contains(names), "{rules}: {why}");
        }
        let why = classes(
            "package mcp.authz\nimport rego.v1\nimport input.request\nallow if request.tool == \"a\"\n",
            None,
        )
        .expect_err("an import leaves no classes");
        assert!(why.contains("import"), "{why}");
    }
}
