//! A bound on how deeply a module nests brackets, checked before the module reaches the Rego
//! parser. regorus's parser takes time exponential in the nesting of `[` and `{` (found by the
//! `policy_bundle` fuzz target: 22 levels took minutes), and a policy is parsed by the
//! validating webhook, the controller and every sidecar: one ConfigMap edit must not pin them.
//! Real policies nest a handful of levels; deep data belongs in `data.json`.

/// The deepest `[` / `{` nesting a module may have.
pub const MAX_DEPTH: usize = 12;

/// Where a module first nests deeper than [`MAX_DEPTH`], as `line:column` (1-based), or `None`.
/// Strings (`"..."` with escapes, `` `...` ``) and comments (`#` to the end of the line) do not
/// count; parentheses do not either (they cost the parser nothing).
pub fn too_deep(text: &str) -> Option<(usize, usize)> {
    let (mut depth, mut line, mut col) = (0usize, 1usize, 0usize);
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        col += 1;
        match c {
            '\n' => {
                line += 1;
                col = 0;
            }
            '#' => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        line += 1;
                        col = 0;
                        break;
                    }
                }
            }
            '"' => {
                let mut escaped = false;
                for c in chars.by_ref() {
                    col += 1;
                    match c {
                        '\\' if !escaped => escaped = true,
                        '"' if !escaped => break,
                        '\n' => break, // an unterminated string: the parser reports it
                        _ => escaped = false,
                    }
                }
            }
            '`' => {
                for c in chars.by_ref() {
                    col += 1;
                    if c == '\n' {
                        line += 1;
                        col = 0;
                    }
                    if c == '`' {
                        break;
                    }
                }
            }
            '[' | '{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Some((line, col));
                }
            }
            ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_brackets_outside_strings_and_comments() {
        let ok = format!(
            "package p\n# {open}\nx := \"{open}\\\"\"\ny := `{open}`\nz := {deep}1{close}\n",
            open = "[".repeat(40),
            deep = "[{".repeat(MAX_DEPTH / 2),
            close = "}]".repeat(MAX_DEPTH / 2),
        );
        assert_eq!(too_deep(&ok), None);
        let deep = format!("package p\nx := {}1", "[".repeat(MAX_DEPTH + 1));
        assert_eq!(too_deep(&deep), Some((2, 6 + MAX_DEPTH)));
        // Closed brackets free their level again.
        let wide = format!("package p\n{}", "[{}]".repeat(100));
        assert_eq!(too_deep(&wide), None);
    }
}
