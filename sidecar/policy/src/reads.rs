//! Which parts of the input document a bundle can read, found in its source.
//!
//! Every read of the input in Rego starts with the name `input`, followed by a chain of field
//! names (`input.subject.roles`, `input["subject"]`) and then, perhaps, by something computed
//! (`input.subject.roles[i]`, `object.get(input.subject, k, d)`). The static part of each chain
//! names a subtree of the document; whatever the rule then does, it can only see that subtree.
//! So two inputs that agree on the subtree of every chain in the bundle get the same answer from
//! every rule: this is what lets the sidecar share a visibility decision between callers that
//! differ only in fields no rule reads (a refreshed token's `exp`, another user of the same
//! roles when the policy reads only roles).
//!
//! The bundle is read with the policy engine's own tokenizer, so comments and strings are told
//! apart from code exactly as the engine tells them apart. The analysis only ever widens: a bare
//! `input` (passed whole to a function, aliased by `import input as i`) makes the whole document
//! count as read, and a chain counts from its first computed step on as read in full.

use std::fmt::Write as _;

use regorus::Value as RegoValue;
use regorus::unstable::{Lexer, TokenKind};

use crate::PolicyError;

/// The subtrees of the input a bundle can read: `None` when it may read all of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputReads {
    paths: Option<Vec<Vec<String>>>,
}

/// One token, as much of it as the analysis needs.
#[derive(Debug, PartialEq)]
enum Tok {
    /// A name, keyword or not (`input`, `with`, `roles`).
    Name(String),
    /// A string literal's content (`"subject"`, `` `subject` ``); `None` when it has escapes,
    /// which the analysis does not decode.
    Text(Option<String>),
    Symbol(String),
    Other,
}

fn tokens(file: &str, text: &str) -> Result<Vec<Tok>, PolicyError> {
    let source = regorus::Source::from_contents(file.into(), text.into())
        .map_err(|e| PolicyError::Compile(e.to_string()))?;
    let mut lexer = Lexer::new(&source);
    let mut out = Vec::new();
    loop {
        let token = lexer
            .next_token()
            .map_err(|e| PolicyError::Compile(e.to_string()))?;
        let text = token.1.text();
        out.push(match token.0 {
            TokenKind::Eof => return Ok(out),
            TokenKind::Ident => Tok::Name(text.to_owned()),
            TokenKind::Symbol => Tok::Symbol(text.to_owned()),
            TokenKind::String => Tok::Text((!text.contains('\\')).then(|| text.to_owned())),
            TokenKind::RawString => Tok::Text(Some(text.to_owned())),
            _ => Tok::Other,
        });
    }
}

fn is_name(t: Option<&Tok>, name: &str) -> bool {
    matches!(t, Some(Tok::Name(n)) if n == name)
}

fn is_symbol(t: Option<&Tok>, symbol: &str) -> bool {
    matches!(t, Some(Tok::Symbol(s)) if s == symbol)
}

/// The field names that follow `input` from `tokens[at]` on, and where they end.
fn static_path(tokens: &[Tok], mut at: usize) -> (Vec<String>, usize) {
    let mut path = Vec::new();
    loop {
        match (tokens.get(at), tokens.get(at + 1), tokens.get(at + 2)) {
            (Some(Tok::Symbol(dot)), Some(Tok::Name(field)), _) if dot == "." => {
                path.push(field.clone());
                at += 2;
            }
            (Some(Tok::Symbol(open)), Some(Tok::Text(Some(field))), close)
                if open == "[" && is_symbol(close, "]") =>
            {
                path.push(field.clone());
                at += 3;
            }
            _ => return (path, at),
        }
    }
}

/// The input chains of one module; an empty chain is the whole document.
fn chains(tokens: &[Tok]) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    for (i, token) in tokens.iter().enumerate() {
        if !matches!(token, Tok::Name(n) if n == "input") {
            continue;
        }
        let before = i.checked_sub(1).and_then(|b| tokens.get(b));
        // `x.input` is a field of something else; `with input... as v` replaces the input for
        // one expression and reads nothing of it.
        if is_symbol(before, ".") || is_name(before, "with") {
            continue;
        }
        let (path, end) = static_path(tokens, i + 1);
        // `import input` alone adds no name: the rules still say `input`, and are read above.
        if is_name(before, "import") && path.is_empty() && !is_name(tokens.get(end), "as") {
            continue;
        }
        found.push(path);
    }
    found
}

/// `paths` sorted, each once, without those inside another's subtree (which add nothing).
fn minimal(mut paths: Vec<Vec<String>>) -> Vec<Vec<String>> {
    paths.sort();
    paths.dedup();
    // Sorted, a prefix comes before every path it holds.
    let mut kept: Vec<Vec<String>> = Vec::new();
    for path in paths {
        if !kept.iter().any(|k| path.starts_with(k)) {
            kept.push(path);
        }
    }
    kept
}

impl InputReads {
    /// A bundle that may read any part of the input.
    pub fn whole() -> Self {
        InputReads { paths: None }
    }

    /// Reads given path by path (each a chain of field names from the document's root); an
    /// empty path is the whole document.
    pub fn of_paths(paths: Vec<Vec<String>>) -> Self {
        if paths.iter().any(Vec::is_empty) {
            return Self::whole();
        }
        InputReads {
            paths: Some(minimal(paths)),
        }
    }

    /// The reads of the modules `(file name, source)` together.
    pub fn of_modules<'a>(
        modules: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, PolicyError> {
        let mut paths = Vec::new();
        for (file, text) in modules {
            for path in chains(&tokens(file, text)?) {
                if path.is_empty() {
                    return Ok(Self::whole());
                }
                paths.push(path);
            }
        }
        Ok(Self::of_paths(paths))
    }

    /// The subtrees read, each as its field names from the document's root; `None`: all of it.
    pub fn paths(&self) -> Option<&[Vec<String>]> {
        self.paths.as_deref()
    }
}

/// The names of one module, as far as telling whether it is deterministic needs them.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Names {
    /// Every function called, as written before its parenthesis (`startswith`, `time.now_ns`,
    /// `lib.util.ok`); a name reached through something computed (`x[0].f(`) starts with `?`.
    /// Words that stand before a parenthesis without calling (`not (`, `if (`) are among them;
    /// the caller tells them apart.
    pub calls: Vec<String>,
    /// Every dotted name written anywhere (`input.subject.roles`, `time.now_ns`), called or not.
    pub mentioned: Vec<String>,
    /// What a function is replaced by for one expression (`with f as g`, `with time.now_ns as
    /// t`): the name after `as` when the replaced one is neither `input` nor `data` (those are
    /// replaced by values). `None` for a replacement that is not a name (a literal).
    pub replacements: Vec<Option<String>>,
}

/// The dotted name starting at `tokens[at]` (a name not itself after a dot), and where it ends.
fn chain_at(tokens: &[Tok], at: usize) -> Option<(String, usize)> {
    let Some(Tok::Name(first)) = tokens.get(at) else {
        return None;
    };
    let mut name = first.clone();
    let mut end = at + 1;
    while is_symbol(tokens.get(end), ".") {
        let Some(Tok::Name(next)) = tokens.get(end + 1) else {
            break;
        };
        name.push('.');
        name.push_str(next);
        end += 2;
    }
    Some((name, end))
}

pub(crate) fn names(file: &str, text: &str) -> Result<Names, PolicyError> {
    let tokens = tokens(file, text)?;
    let mut names = Names::default();
    for i in 0..tokens.len() {
        let before = |back: usize| i.checked_sub(back).and_then(|b| tokens.get(b));
        // A name after a dot continues the name before it, unless something computed (`]`,
        // `)`) stands before the dot.
        let after_dot = is_symbol(before(1), ".");
        if after_dot && matches!(before(2), Some(Tok::Name(_))) {
            continue;
        }
        if let Some((name, end)) = chain_at(&tokens, i) {
            let name = if after_dot { format!("?.{name}") } else { name };
            if is_symbol(tokens.get(end), "(") {
                names.calls.push(name.clone());
            }
            if !after_dot {
                names.mentioned.push(name);
            }
        }
        if is_name(tokens.get(i), "with") {
            let target = chain_at(&tokens, i + 1);
            let replaces_a_function = target.as_ref().is_some_and(|(t, _)| {
                t != "input" && t != "data" && !t.starts_with("input.") && !t.starts_with("data.")
            });
            let as_at = target.map_or(i + 1, |(_, end)| end);
            if replaces_a_function && is_name(tokens.get(as_at), "as") {
                names
                    .replacements
                    .push(chain_at(&tokens, as_at + 1).map(|(n, _)| n));
            }
        }
    }
    Ok(names)
}

/// Writes, into `out`, what a read of `path` below `value` sees: the value at its end, or the
/// first value on the way that has no such field (a rule reading further sees nothing more).
pub(crate) fn write_read(out: &mut String, value: &RegoValue, path: &[String]) {
    let mut at = value;
    for (depth, field) in path.iter().enumerate() {
        let Ok(object) = at.as_object() else {
            let _ = write!(out, "@{depth}:{at}");
            return;
        };
        match object.get(&RegoValue::from(field.as_str())) {
            Some(next) => at = next,
            None => {
                let _ = write!(out, "@{depth}!");
                return;
            }
        }
    }
    let _ = write!(out, "={at}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reads(text: &str) -> Option<Vec<String>> {
        let reads = InputReads::of_modules([("t.rego", text)]).expect("tokenizes");
        reads
            .paths()
            .map(|p| p.iter().map(|path| path.join(".")).collect())
    }

    #[test]
    fn field_chains_are_read_up_to_their_first_computed_step() {
        let text = r#"package p
import rego.v1
# input.in_a_comment is not read
allow if "input.in_a_string" in input.subject.roles
allow if input["subject"]["email"] == "a"
allow if input.subject.claims[k] == 1
allow if input.tool.annotations.readOnlyHint
allow if data.x.input.y == 1
allow if input.subject.roles[0] == "x"
"#;
        assert_eq!(
            reads(text).expect("chains only"),
            [
                "subject.claims",
                "subject.email",
                "subject.roles",
                "tool.annotations.readOnlyHint"
            ]
        );
    }

    #[test]
    fn the_whole_input_counts_as_read_when_it_is_used_whole() {
        assert_eq!(reads("package p\nallow if count(input) > 1\n"), None);
        assert_eq!(reads("package p\nimport input as i\nallow if i.a\n"), None);
        assert_eq!(reads("package p\nallow if walk(input, [p, v])\n"), None);
        assert_eq!(
            reads("package p\nallow if input[\"a\\u0062\"]\n"),
            None,
            "an escaped field name is not decoded"
        );
    }

    #[test]
    fn replacing_or_importing_the_input_reads_nothing_by_itself() {
        let text = "package p\nimport input\nimport input.subject as s\n\
                    test_a if allow with input as {\"a\": 1}\n\
                    test_b if allow with input.subject.roles as []\n\
                    allow if s.roles\n";
        assert_eq!(reads(text).expect("chains only"), ["subject"]);
    }

    #[test]
    fn a_read_sees_the_value_at_its_end_or_where_the_path_stops() {
        let v = crate::value::to_rego(&serde_json::json!({"a": {"b": 1, "s": "x"}, "n": null}));
        let seen = |path: &[&str]| {
            let mut out = String::new();
            let path: Vec<String> = path.iter().map(|s| (*s).to_owned()).collect();
            write_read(&mut out, &v, &path);
            out
        };
        assert_eq!(seen(&["a", "b"]), "=1");
        assert_eq!(seen(&["a", "c"]), "@1!");
        assert_eq!(seen(&["a", "s", "t"]), "@2:\"x\"");
        assert_eq!(seen(&["n"]), "=null");
        assert_eq!(seen(&["m"]), "@0!");
    }
}
