//! The caller's terms of a bundle: the expressions that read nothing but the request's frame
//! (`input.subject`, `input.client`, `input.server`, `input.request.session_id`,
//! `input.request.transport`) and constants.
//!
//! [`crate::reads`] finds which parts of the frame a bundle reads, and two callers that agree on
//! all of them share every visibility decision. That is still finer than the rules need: a policy
//! that reads the email only as `endswith(input.subject.email, "@example.com")` tells two users of
//! that domain apart although no rule can. Here the bundle is parsed (by the policy engine's own
//! parser) and every largest expression built only from frame reads, constants, operators and
//! pure builtins is taken out as a *term*: `endswith(input.subject.email, "@example.com")`,
//! `"mcp:write" in input.subject.scopes`, `input.subject.claims.tier == "gold"`. A rule can see
//! such an expression only through its value (Rego has no side effects), and the value depends on
//! the frame alone; a term that is a whole statement (`input.subject.email`, `not ...`) is seen
//! only through whether it holds. So two callers who agree on the value (or truth) of every term,
//! and on every frame part read anywhere else, get the same answer to every decision that depends
//! on nothing else, such as a list item's visibility.
//!
//! What is read anywhere else is found by [`crate::reads`] on the source with every term replaced
//! by a name: anything the parse below does not understand stays in that source and counts as
//! read there, so the analysis can only ever fall back to the coarser reading, never miss a read.
//! A bundle that replaces parts of the input (`with`), or that names a rule or an import like one
//! of the builtins below, gets no terms at all.
//!
//! The terms are compiled into a rule of their own ([`FrameTerms::source`]), evaluated on the
//! frame alone; its value joins the frame's key. They call only deterministic builtins, so their
//! value is remembered by what they read of the frame ([`crate::memo`]): a listing of a caller seen
//! before evaluates nothing.

use regorus::unstable::{Expr, Literal, Module, Parser, Query, Rule, RuleHead};

use crate::builtins::DETERMINISTIC;
use crate::reads::InputReads;

/// The package of the rule the terms are compiled into (a macro, so that [`RULE`] is spelled
/// from it).
macro_rules! package {
    () => {
        "mcp_guard.frame_terms"
    };
}

/// The rule whose value is every term's value (or truth) for one frame.
pub const RULE: &str = concat!("data.", package!(), ".key");

/// What stands for a term in the source that [`crate::reads`] reads for the rest.
const PLACEHOLDER: &str = "__mcp_guard_term__";

/// How a rule sees a term.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Seen {
    /// Through its value.
    Value,
    /// As a statement of its own: only whether it holds (defined and not `false`).
    Truth,
}

/// The terms of a bundle, and what it reads besides them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameTerms {
    /// Each term once: how it is seen and its source text.
    terms: Vec<(Seen, String)>,
    /// The input the bundle reads outside its terms.
    rest: InputReads,
}

impl FrameTerms {
    /// The terms of the modules `(file name, source)` together, or `None` when they have none
    /// (or cannot be analysed: the reading of [`crate::reads`] then stands alone).
    pub fn of_modules<'a>(modules: impl IntoIterator<Item = (&'a str, &'a str)>) -> Option<Self> {
        let mut terms = Vec::new();
        let mut masked = Vec::new();
        for (file, text) in modules {
            let (found, rest) = module_terms(file, text)?;
            terms.extend(found);
            masked.push((file.to_owned(), rest));
        }
        if terms.is_empty() {
            return None;
        }
        terms.sort();
        terms.dedup();
        let rest =
            InputReads::of_modules(masked.iter().map(|(f, t)| (f.as_str(), t.as_str()))).ok()?;
        Some(FrameTerms { terms, rest })
    }

    /// What the bundle reads outside its terms.
    pub fn rest(&self) -> &InputReads {
        &self.rest
    }

    /// How many distinct terms the bundle has.
    pub fn len(&self) -> usize {
        self.terms.len()
    }

    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    /// The module of [`RULE`]: a set holding, for each term `i`, `[i, value]` when it is seen by
    /// its value and defined, or `[i, true]` when it is a statement and holds.
    pub fn source(&self) -> String {
        let mut out = String::from(concat!(
            "# mcp-guard: the caller's terms of the bundle in force.\npackage ",
            package!(),
            "\n\nimport rego.v1\n"
        ));
        for (i, (seen, text)) in self.terms.iter().enumerate() {
            match seen {
                Seen::Value => out.push_str(&format!(
                    "\nkey contains [{i}, v] if {{\n\tv := ({text})\n}}\n"
                )),
                Seen::Truth => {
                    out.push_str(&format!("\nkey contains [{i}, true] if {{\n\t{text}\n}}\n"))
                }
            }
        }
        out
    }
}

/// One module's terms, and its source with each of them replaced by [`PLACEHOLDER`].
type ModuleTerms = (Vec<(Seen, String)>, String);

/// The terms of one module; `None` when the module rules terms out (a `with`, a name that
/// shadows a builtin, a term whose text cannot be told exactly) or does not parse (the engine
/// has refused it then anyway).
fn module_terms(file: &str, text: &str) -> Option<ModuleTerms> {
    let (source, module) = parse(file, text)?;
    let shadowed = |name: &str| {
        DETERMINISTIC
            .iter()
            .any(|b| b.split('.').next() == Some(name))
    };
    for import in &module.imports {
        // `import future.keywords.contains` and `import rego.v1` name keywords, not functions.
        if matches!(root_name(&import.refr), Some("future" | "rego")) {
            continue;
        }
        let alias = import.r#as.as_ref().map(|s| s.text().to_owned());
        let last = import.span.text().rsplit('.').next().map(str::to_owned);
        if [alias, last].iter().flatten().any(|n| shadowed(n.trim())) {
            return None;
        }
    }
    let mut walk = Walk::default();
    for rule in &module.policy {
        match &**rule {
            Rule::Spec { head, bodies, .. } => {
                let (refr, value) = match head {
                    RuleHead::Compr { refr, assign, .. } | RuleHead::Func { refr, assign, .. } => {
                        (refr, assign.as_ref().map(|a| &a.value))
                    }
                    RuleHead::Set { refr, key, .. } => (refr, key.as_ref()),
                };
                if root_name(refr).is_some_and(shadowed) {
                    return None;
                }
                if let Some(v) = value {
                    walk.value(v);
                }
                for body in bodies {
                    if let Some(a) = &body.assign {
                        walk.value(&a.value);
                    }
                    walk.query(&body.query);
                }
            }
            Rule::Default { refr, value, .. } => {
                if root_name(refr).is_some_and(shadowed) {
                    return None;
                }
                walk.value(value);
            }
        }
    }
    if walk.with || walk.unsure {
        return None;
    }
    // The parser's spans index the text it read.
    let contents = source.contents();
    let mut spans = walk.spans;
    spans.sort_unstable();
    let mut rest = String::with_capacity(contents.len());
    let mut at = 0;
    for (start, end) in spans {
        // Terms never overlap; should two, the range runs backwards and the module gets none.
        rest.push_str(contents.get(at..start)?);
        rest.push_str(PLACEHOLDER);
        at = end;
    }
    rest.push_str(contents.get(at..)?);
    Some((walk.terms, rest))
}

/// One module parsed as the engine parses a bundle (Rego v1), with the source its spans index;
/// `None` when it does not parse (the engine has refused it then).
pub(crate) fn parse(file: &str, text: &str) -> Option<(regorus::Source, Module)> {
    let source = regorus::Source::from_contents(file.into(), text.into()).ok()?;
    let module = Parser::new(&source)
        .and_then(|mut p| {
            p.enable_rego_v1()?;
            p.parse()
        })
        .ok()?;
    Some((source, module))
}

/// The first name of a rule's head (`deny` of `deny contains ...`, `a` of `a.b := 1`).
pub(crate) fn root_name(e: &Expr) -> Option<&str> {
    match e {
        Expr::Var { span, .. } => Some(span.text()),
        Expr::RefDot { refr, .. } | Expr::RefBrack { refr, .. } => root_name(refr),
        _ => None,
    }
}

#[derive(Default)]
struct Walk {
    terms: Vec<(Seen, String)>,
    spans: Vec<(usize, usize)>,
    with: bool,
    /// A term's text could not be told exactly.
    unsure: bool,
}

impl Walk {
    fn take(&mut self, seen: Seen, e: &Expr) {
        let contents = e.span().source.contents();
        match extent(e).and_then(|(start, end)| Some((start, end, contents.get(start..end)?))) {
            Some((start, end, text)) => {
                self.terms.push((seen, text.to_owned()));
                self.spans.push((start, end));
            }
            None => self.unsure = true,
        }
    }

    fn query(&mut self, q: &Query) {
        for stmt in &q.stmts {
            if !stmt.with_mods.is_empty() {
                self.with = true;
            }
            match &stmt.literal {
                Literal::SomeVars { .. } => {}
                // The key and value are patterns; only the collection is read.
                Literal::SomeIn { collection, .. } => self.value(collection),
                Literal::Expr { expr, .. } | Literal::NotExpr { expr, .. } => {
                    if self.visit(expr) == Some(true) {
                        self.take(Seen::Truth, expr);
                    }
                }
                Literal::Every { domain, query, .. } => {
                    self.value(domain);
                    self.query(query);
                }
            }
        }
    }

    /// Takes `e` as a term seen by its value when it is one, else its largest terms.
    fn value(&mut self, e: &Expr) {
        if self.visit(e) == Some(true) {
            self.take(Seen::Value, e);
        }
    }

    /// Whether `e` is built only from frame reads, constants, operators and pure builtins:
    /// `Some(true)` when it reads the frame (the caller takes it, or a larger term holding it),
    /// `Some(false)` when it is a constant, `None` when it is not closed (a variable, another part
    /// of the input, `data`, a rule, another function), after taking the terms within it. Each
    /// node is visited once.
    fn visit(&mut self, e: &Expr) -> Option<bool> {
        match e {
            Expr::String { .. }
            | Expr::RawString { .. }
            | Expr::Number { .. }
            | Expr::Bool { .. }
            | Expr::Null { .. } => Some(false),
            Expr::RefDot { refr, .. } => {
                let mut path = Vec::new();
                if static_input_path(e, &mut path).is_some() {
                    return is_frame_path(&path).then_some(true);
                }
                self.parts([&**refr], true)
            }
            Expr::RefBrack { refr, index, .. } => {
                let mut path = Vec::new();
                if static_input_path(e, &mut path).is_some() {
                    return is_frame_path(&path).then_some(true);
                }
                self.parts([&**refr, &**index], true)
            }
            Expr::Array { items, .. } | Expr::Set { items, .. } => {
                self.parts(items.iter().map(|i| &**i), false)
            }
            Expr::Object { fields, .. } => {
                self.parts(fields.iter().flat_map(|(_, k, v)| [&**k, &**v]), false)
            }
            Expr::Call { fcn, params, .. } => {
                let pure = builtin_name(fcn).is_some_and(|n| DETERMINISTIC.contains(&n.as_str()));
                self.parts(params.iter().map(|p| &**p), !pure)
            }
            Expr::UnaryExpr { expr, .. } => self.parts([&**expr], false),
            Expr::BinExpr { lhs, rhs, .. }
            | Expr::BoolExpr { lhs, rhs, .. }
            | Expr::ArithExpr { lhs, rhs, .. } => self.parts([&**lhs, &**rhs], false),
            Expr::Membership {
                key,
                value,
                collection,
                ..
            } => self.parts(
                key.iter().map(|k| &**k).chain([&**value, &**collection]),
                false,
            ),
            Expr::AssignExpr { lhs, rhs, .. } => self.parts([&**lhs, &**rhs], true),
            Expr::ArrayCompr { term, query, .. } | Expr::SetCompr { term, query, .. } => {
                self.query(query);
                self.parts([&**term], true)
            }
            Expr::ObjectCompr {
                key, value, query, ..
            } => {
                self.query(query);
                self.parts([&**key, &**value], true)
            }
            // A variable (`input` alone included), or anything else: not a term, and whatever it
            // holds stays in the source, read there.
            _ => None,
        }
    }

    /// Visits the parts of one expression: closed when every part is and `opaque` is not set
    /// (a variable binding, a comprehension, a ref through something computed, a call of a
    /// function that is not a pure builtin); otherwise each part that is a term is taken.
    fn parts<'a>(
        &mut self,
        parts: impl IntoIterator<Item = &'a Expr>,
        opaque: bool,
    ) -> Option<bool> {
        let seen: Vec<(&Expr, Option<bool>)> =
            parts.into_iter().map(|p| (p, self.visit(p))).collect();
        if !opaque && seen.iter().all(|(_, c)| c.is_some()) {
            return Some(seen.iter().any(|(_, c)| *c == Some(true)));
        }
        for (part, c) in seen {
            if c == Some(true) {
                self.take(Seen::Value, part);
            }
        }
        None
    }
}

/// Where the text of a closed expression starts and ends. The parser's spans of string literals
/// leave out their quotes, and a compound expression's span ends where its last part's does, so
/// the extent is the union of the expression's span and its parts' extents, each string literal
/// widened by its quotes (checked in the source).
pub(crate) fn extent(e: &Expr) -> Option<(usize, usize)> {
    let span = e.span();
    let (start, end) = (span.start as usize, span.end as usize);
    match e {
        Expr::String { .. } | Expr::RawString { .. } => {
            let bytes = span.source.contents().as_bytes();
            let quote = if matches!(e, Expr::String { .. }) {
                b'"'
            } else {
                b'`'
            };
            let open = start.checked_sub(1)?;
            (bytes.get(open) == Some(&quote) && bytes.get(end) == Some(&quote))
                .then_some((open, end + 1))
        }
        Expr::Number { .. } | Expr::Bool { .. } | Expr::Null { .. } | Expr::Var { .. } => {
            Some((start, end))
        }
        Expr::RefDot { refr, .. } => joined((start, end), [&**refr]),
        Expr::RefBrack { refr, index, .. } => joined((start, end), [&**refr, &**index]),
        Expr::Array { items, .. } | Expr::Set { items, .. } => {
            joined((start, end), items.iter().map(|i| &**i))
        }
        Expr::Object { fields, .. } => joined(
            (start, end),
            fields.iter().flat_map(|(_, k, v)| [&**k, &**v]),
        ),
        Expr::Call { fcn, params, .. } => joined(
            (start, end),
            std::iter::once(&**fcn).chain(params.iter().map(|p| &**p)),
        ),
        Expr::UnaryExpr { expr, .. } => joined((start, end), [&**expr]),
        Expr::BinExpr { lhs, rhs, .. }
        | Expr::BoolExpr { lhs, rhs, .. }
        | Expr::ArithExpr { lhs, rhs, .. } => joined((start, end), [&**lhs, &**rhs]),
        Expr::Membership {
            key,
            value,
            collection,
            ..
        } => joined(
            (start, end),
            key.iter().map(|k| &**k).chain([&**value, &**collection]),
        ),
        _ => None,
    }
}

/// `own` widened by each of `parts`' extents.
fn joined<'a>(
    own: (usize, usize),
    parts: impl IntoIterator<Item = &'a Expr>,
) -> Option<(usize, usize)> {
    parts.into_iter().try_fold(own, |(a, b), p| {
        let (s, t) = extent(p)?;
        Some((a.min(s), b.max(t)))
    })
}

/// The field names of a chain `input.a["b"][0]` whose every step is a constant.
fn static_input_path(e: &Expr, path: &mut Vec<String>) -> Option<()> {
    match e {
        Expr::Var { span, .. } if span.text() == "input" => Some(()),
        Expr::RefDot { refr, field, .. } => {
            static_input_path(refr, path)?;
            path.push(field.0.text().to_owned());
            Some(())
        }
        Expr::RefBrack { refr, index, .. } => {
            static_input_path(refr, path)?;
            match &**index {
                Expr::String { value, .. } | Expr::RawString { value, .. } => {
                    path.push(value.as_string().ok()?.to_string());
                }
                Expr::Number { span, .. } => path.push(format!("#{}", span.text())),
                _ => return None,
            }
            Some(())
        }
        _ => None,
    }
}

/// Whether `path` lies in the request's frame: the parts of the input every decision of one
/// request shares, whatever item it is about.
fn is_frame_path(path: &[String]) -> bool {
    match path {
        [root, ..] if ["subject", "client", "server"].contains(&root.as_str()) => true,
        [request, field, ..] if request == "request" => {
            field == "session_id" || field == "transport"
        }
        _ => false,
    }
}

/// The dotted name of a called function (`regex.match`), when it is a plain name.
pub(crate) fn builtin_name(fcn: &Expr) -> Option<String> {
    match fcn {
        Expr::Var { span, .. } => Some(span.text().to_owned()),
        Expr::RefDot { refr, field, .. } => {
            Some(format!("{}.{}", builtin_name(refr)?, field.0.text()))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terms(text: &str) -> Option<(Vec<String>, Option<Vec<String>>)> {
        let t = FrameTerms::of_modules([("t.rego", text)])?;
        let texts = t.terms.iter().map(|(s, t)| format!("{s:?} {t}")).collect();
        let rest = t
            .rest
            .paths()
            .map(|p| p.iter().map(|path| path.join(".")).collect());
        Some((texts, rest))
    }

    #[test]
    fn frame_only_expressions_are_terms_and_the_rest_is_read_as_before() {
        let text = r#"package p
import rego.v1
allow if {
	input.subject.email
	not endswith(input.subject.email, "@example.com")
	input.tool.name == "x"
}
allow if "mcp:write" in input.subject.scopes
allow if input.subject.claims.tier == "gold"
allow if startswith(input.server.namespace, "prod")
allow if input.client.name in data.blocked
allow if {
	some r in input.subject.roles
	r == input.request.tool
}
"#;
        let (found, rest) = terms(text).expect("terms");
        // A rule body's statement is seen only by whether it holds; `input.client.name` is
        // compared with data (not a term), so its own value is the term.
        assert_eq!(
            found,
            [
                "Value input.client.name",
                "Value input.subject.roles",
                r#"Truth "mcp:write" in input.subject.scopes"#,
                r#"Truth endswith(input.subject.email, "@example.com")"#,
                r#"Truth input.subject.claims.tier == "gold""#,
                "Truth input.subject.email",
                r#"Truth startswith(input.server.namespace, "prod")"#,
            ]
        );
        assert_eq!(rest.expect("chains only"), ["request.tool", "tool.name"]);
    }

    #[test]
    fn a_replaced_input_or_a_shadowed_builtin_leaves_no_terms() {
        let with = "package p\nimport rego.v1\nallow if input.subject.a == 1\n\
                    test_x if allow with input.subject.a as 1\n";
        assert_eq!(terms(with), None);
        let shadow =
            "package p\nimport rego.v1\nlower(x) := x\nallow if lower(input.subject.a) == \"a\"\n";
        assert_eq!(terms(shadow), None);
        let import = "package p\nimport rego.v1\nimport data.lib.lower\nallow if lower(input.subject.a) == \"a\"\n";
        assert_eq!(terms(import), None);
        let keywords = "package p\nimport future.keywords.contains\nimport future.keywords.if\n\
                        deny contains \"x\" if contains(input.subject.a, \"b\")\n";
        assert_eq!(
            terms(keywords).expect("terms").0,
            [r#"Truth contains(input.subject.a, "b")"#]
        );
    }

    #[test]
    fn expressions_with_variables_rules_or_other_functions_are_not_terms() {
        let text = r#"package p
import rego.v1
roles := {r | some r in input.subject.roles}
allow if "admin" in roles
allow if time.now_ns() > input.subject.claims.exp
allow if input.subject.claims[k] == 1
"#;
        let (found, rest) = terms(text).expect("terms");
        assert_eq!(
            found,
            [
                "Value input.subject.claims",
                "Value input.subject.claims.exp",
                "Value input.subject.roles",
            ]
        );
        assert_eq!(rest.expect("chains only"), Vec::<String>::new());
    }

    #[test]
    fn a_module_without_frame_terms_has_none() {
        assert_eq!(
            terms("package p\nimport rego.v1\nallow if input.tool.name == \"a\"\n"),
            None
        );
    }

    #[test]
    fn the_terms_rule_names_each_term_once() {
        let t = FrameTerms::of_modules([(
            "t.rego",
            "package p\nimport rego.v1\nx := lower(input.subject.a) == \"a\"\ny := lower(input.subject.a) == \"a\"\n",
        )])
        .expect("terms");
        assert_eq!(t.len(), 1);
        assert!(
            t.source()
                .contains("v := (lower(input.subject.a) == \"a\")"),
            "{}",
            t.source()
        );
    }

    #[test]
    fn a_term_s_text_is_whole_whatever_it_starts_or_ends_with() {
        let text = r#"package p
import rego.v1
allow if "a" in input.subject.roles
allow if input.subject.x == `raw`
allow if input.subject.o == {"k": ["v", 1]}
allow if -1 < input.subject.n
allow if lower(concat("", ["a", input.subject.y])) == "a"
allow if regex.match(`^[a-z]+$`, input.subject.z)
"#;
        let t = FrameTerms::of_modules([("t.rego", text)]).expect("terms");
        let texts: Vec<&str> = t.terms.iter().map(|(_, t)| t.as_str()).collect();
        assert_eq!(
            texts,
            [
                r#""a" in input.subject.roles"#,
                "-1 < input.subject.n",
                r#"input.subject.o == {"k": ["v", 1]}"#,
                "input.subject.x == `raw`",
                r#"lower(concat("", ["a", input.subject.y])) == "a""#,
                "regex.match(`^[a-z]+$`, input.subject.z)",
            ]
        );
        // Every term compiles in the rule of its own.
        let mut engine = regorus::Engine::new();
        engine
            .add_policy("terms.rego".into(), t.source())
            .expect("the terms' rule parses");
    }
}
