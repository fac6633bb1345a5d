//! The source layer's pre-filter: reads a file's tokens with rustc's own lexer
//! (`ra-ap-rustc_lexer`) and decides whether `syn` must parse it, and which of its doc comments
//! hold doc-tests worth scanning.
//!
//! A file is parsed exactly when a token could produce a fact in [`crate::source`]'s scanner:
//!
//! - a watched crate name (or a renamed dependency's name, raw identifiers unraw'd) **in path
//!   position**: followed by `::`, preceded by `::`, after `crate` (`extern crate x`), or anywhere
//!   inside a `use` item;
//! - a watched function's name as any identifier (calls, imports, pointers, method calls);
//! - a string literal whose value contains a watched name (`#[serde(with = "krate::f")]`) or
//!   matches a string-literal pattern; the value is unescaped first, so `"\u{6b}rate"` counts;
//! - a doc comment matching a string-literal pattern (inside a macro body it is a literal);
//! - when a rule watches the package, `path = "..."` (a `#[path]` attribute, `cfg_attr`
//!   included) or `include!`, `include_str!`, `include_bytes!`.
//!
//! Nothing here depends on file or directory names, or on which other rules exist: a rule's
//! text patterns are matched on their own and never make a file parsed. That is what makes the
//! filter *sound*: a file it skips would give no fact if parsed, which `guardrails selftest`
//! checks on every mutant (findings with the filter equal findings with every file parsed) and
//! on a copy of the workspace in a directory named after a forbidden crate.

use std::collections::HashSet;

use ra_ap_rustc_lexer::{FrontmatterAllowed, LiteralKind, TokenKind};
use regex::Regex;

/// What one package's files are checked for.
#[derive(Debug)]
pub struct Prefilter {
    /// Crate names as code writes them (renames included).
    crate_names: HashSet<String>,
    /// Last segments of watched functions.
    functions: HashSet<String>,
    /// Whether `#[path]` and `include!` matter (the package watches directories).
    includes: bool,
    /// Any watched name, searched in literal values and doc comments.
    needles: Option<Regex>,
    /// Cheap checks before hashing an identifier: bit `n` is set when some watched name is `n`
    /// bytes long (63 stands for any longer one), and which first bytes watched names have.
    lengths: u64,
    first_bytes: [bool; 256],
}

/// A doc-test: one fenced Rust code block of a doc comment, with hidden lines (`# `) shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocTest {
    /// The code, one line per doc line.
    pub code: String,
    /// For each line of `code`, the byte offset in the file where that line's text starts.
    pub line_starts: Vec<usize>,
}

/// What the pre-filter found in one file.
#[derive(Debug, Default)]
pub struct Lexed {
    /// Whether `syn` must parse the file.
    pub parse: bool,
    /// Doc-tests whose text contains a watched name or matches a string-literal pattern (every
    /// doc-test when `all_doc_tests`).
    pub doc_tests: Vec<DocTest>,
}

impl Prefilter {
    /// A pre-filter for `crate_names` (as written, renames included), `functions` (last path
    /// segments) and, when `includes`, `#[path]`/`include!`.
    pub fn new(
        crate_names: impl IntoIterator<Item = String>,
        functions: impl IntoIterator<Item = String>,
        includes: bool,
    ) -> Self {
        let crate_names: HashSet<String> = crate_names.into_iter().collect();
        let functions: HashSet<String> = functions.into_iter().collect();
        let mut all: Vec<&String> = crate_names.iter().chain(&functions).collect();
        all.sort();
        all.dedup();
        let needles = (!all.is_empty()).then(|| {
            Regex::new(&all.iter().map(|n| regex::escape(n)).collect::<Vec<_>>().join("|"))
                .expect("escaped literals form a valid regex")
        });
        let mut lengths = 0u64;
        let mut first_bytes = [false; 256];
        for name in crate_names.iter().chain(&functions) {
            lengths |= 1 << name.len().min(63);
            if let Some(&first) = name.as_bytes().first() {
                first_bytes[usize::from(first)] = true;
            }
        }
        Prefilter {
            crate_names,
            functions,
            includes,
            needles,
            lengths,
            first_bytes,
        }
    }

    /// Whether `name` may be watched (false means it is not; true means look it up).
    fn may_watch(&self, name: &str) -> bool {
        self.lengths & (1 << name.len().min(63)) != 0
            && name
                .as_bytes()
                .first()
                .is_some_and(|&first| self.first_bytes[usize::from(first)])
    }

    fn text_hit(&self, value: &str, patterns: &[&Regex]) -> bool {
        self.needles.as_ref().is_some_and(|needles| needles.is_match(value))
            || patterns.iter().any(|pattern| pattern.is_match(value))
    }

    /// Reads `text`'s tokens. `literal_patterns` are the string-literal pattern rules;
    /// `doc_tests` says whether to look for doc-tests at all (library files only), and
    /// `all_doc_tests` whether to keep those that hold nothing watched (to prove the filter).
    pub fn lex(&self, text: &str, literal_patterns: &[&Regex], doc_tests: bool, all_doc_tests: bool) -> Lexed {
        let mut lexed = Lexed::default();
        let start = ra_ap_rustc_lexer::strip_shebang(text).unwrap_or(0);
        let mut offset = start;
        // The last significant token: what a watched name's path position depends on.
        #[derive(Clone, Copy, PartialEq, Eq)]
        enum Last {
            Other,
            /// An identifier; `true` for the keyword `crate`.
            Ident(bool),
            /// The first `:` of a possible `::`.
            Colon,
            PathSep,
        }
        let mut last = Last::Other;
        // A watched crate name was the last significant token (is it followed by `::`?).
        let mut name_pending = false;
        let mut name_before_colon = false;
        let mut bang_pending = false;
        let mut eq_pending = false;
        let mut in_use = false;
        // `path =` was seen: a string literal next is a `#[path]` (or a `cfg_attr` one).
        let mut literal_pending = false;
        let mut previous_was_colon = false;
        let mut doc_run: Vec<(usize, usize)> = Vec::new();
        let mut doc_run_hit = false;

        for token in ra_ap_rustc_lexer::tokenize(&text[start..], FrontmatterAllowed::Yes) {
            let token_start = offset;
            offset += token.len as usize;
            let slice = &text[token_start..offset];
            let was_colon = std::mem::replace(&mut previous_was_colon, false);
            match token.kind {
                TokenKind::Whitespace => continue,
                TokenKind::LineComment { doc_style: None } | TokenKind::BlockComment { doc_style: None, .. } => {
                    continue;
                }
                TokenKind::LineComment { doc_style: Some(_) } => {
                    let content = &slice[3..];
                    if self.text_hit(content, literal_patterns) {
                        doc_run_hit = true;
                        if literal_patterns.iter().any(|pattern| pattern.is_match(content)) {
                            lexed.parse = true;
                        }
                    }
                    if doc_tests {
                        doc_run.push((token_start + 3, offset));
                    }
                    continue;
                }
                TokenKind::BlockComment { doc_style: Some(_), .. } => {
                    let content = slice.get(3..slice.len().saturating_sub(2)).unwrap_or("");
                    if literal_patterns.iter().any(|pattern| pattern.is_match(content)) {
                        lexed.parse = true;
                    }
                    if doc_tests && (all_doc_tests || self.text_hit(content, literal_patterns)) {
                        flush(
                            text,
                            &mut doc_run,
                            &mut doc_run_hit,
                            all_doc_tests,
                            &mut lexed.doc_tests,
                        );
                        block_doc_tests(
                            text,
                            token_start + 3,
                            token_start + 3 + content.len(),
                            &mut lexed.doc_tests,
                        );
                    }
                    continue;
                }
                _ => {}
            }
            if !doc_run.is_empty() {
                flush(
                    text,
                    &mut doc_run,
                    &mut doc_run_hit,
                    all_doc_tests,
                    &mut lexed.doc_tests,
                );
            }
            doc_run_hit = false;
            let pending_name = std::mem::replace(&mut name_pending, false);
            let before_colon = std::mem::replace(&mut name_before_colon, false);
            let bang = std::mem::replace(&mut bang_pending, false);
            let eq = std::mem::replace(&mut eq_pending, false);
            let path_literal = std::mem::replace(&mut literal_pending, false);
            match token.kind {
                TokenKind::Ident | TokenKind::RawIdent => {
                    let name = slice.strip_prefix("r#").unwrap_or(slice);
                    let watched = self.may_watch(name);
                    if watched && self.crate_names.contains(name) {
                        if last == Last::PathSep || last == Last::Ident(true) || in_use {
                            lexed.parse = true;
                        }
                        name_pending = true;
                    }
                    if watched && self.functions.contains(name) {
                        lexed.parse = true;
                    }
                    if token.kind == TokenKind::Ident {
                        match name {
                            "use" => in_use = true,
                            "include" | "include_str" | "include_bytes" if self.includes => bang_pending = true,
                            "path" if self.includes => eq_pending = true,
                            _ => {}
                        }
                    }
                    last = Last::Ident(token.kind == TokenKind::Ident && name == "crate");
                }
                TokenKind::Colon => {
                    if was_colon && last == Last::Colon {
                        if before_colon {
                            lexed.parse = true;
                        }
                        last = Last::PathSep;
                    } else {
                        name_before_colon = pending_name;
                        last = Last::Colon;
                    }
                    previous_was_colon = true;
                }
                TokenKind::Bang => {
                    if bang {
                        lexed.parse = true;
                    }
                    last = Last::Other;
                }
                TokenKind::Eq => {
                    if eq {
                        literal_pending = true;
                    }
                    last = Last::Other;
                }
                TokenKind::Semi => {
                    in_use = false;
                    last = Last::Other;
                }
                TokenKind::Literal { kind, suffix_start } => {
                    let body = &slice[..suffix_start as usize];
                    let value = match kind {
                        LiteralKind::Str { .. } => {
                            body.get(1..body.len().saturating_sub(1)).map(|inner| unescape(inner))
                        }
                        LiteralKind::RawStr { n_hashes: Some(hashes) } => {
                            let hashes = usize::from(hashes);
                            body.get(2 + hashes..body.len().saturating_sub(1 + hashes))
                                .map(std::borrow::Cow::Borrowed)
                        }
                        _ => None,
                    };
                    if path_literal && value.is_some() {
                        lexed.parse = true;
                    }
                    if let Some(value) = value
                        && self.text_hit(&value, literal_patterns)
                    {
                        lexed.parse = true;
                    }
                    last = Last::Other;
                }
                _ => last = Last::Other,
            }
            if lexed.parse && !doc_tests {
                return lexed;
            }
        }
        if !doc_run.is_empty() {
            flush(
                text,
                &mut doc_run,
                &mut doc_run_hit,
                all_doc_tests,
                &mut lexed.doc_tests,
            );
        }
        lexed
    }
}

/// Ends a run of consecutive doc line comments: its doc-tests are kept when the run mentions a
/// watched name or pattern (or always, with `all`).
fn flush(text: &str, run: &mut Vec<(usize, usize)>, hit: &mut bool, all: bool, out: &mut Vec<DocTest>) {
    if *hit || all {
        code_blocks(text, run, out);
    }
    run.clear();
    *hit = false;
}

/// The lines of a block doc comment (`/** .. */`), with a leading ` * ` decoration removed.
fn block_doc_tests(text: &str, start: usize, end: usize, out: &mut Vec<DocTest>) {
    let mut lines = Vec::new();
    let mut line_start = start;
    for (index, byte) in text.as_bytes()[start..end].iter().enumerate() {
        if *byte == b'\n' {
            lines.push((line_start, start + index));
            line_start = start + index + 1;
        }
    }
    lines.push((line_start, end));
    for line in &mut lines {
        let content = &text[line.0..line.1];
        let trimmed = content.trim_start();
        if let Some(rest) = trimmed.strip_prefix('*') {
            line.0 = line.1 - rest.len();
        }
    }
    code_blocks(text, &lines, out);
}

/// The fenced Rust code blocks among doc `lines` (byte ranges of each line's content), as
/// rustdoc reads them: a block is Rust unless its info string names another language, and an
/// `ignore` block is never compiled, so never a reference. Hidden lines (`# code`) are code.
fn code_blocks(text: &str, lines: &[(usize, usize)], out: &mut Vec<DocTest>) {
    let mut open: Option<(char, usize, bool, DocTest)> = None;
    for &(start, end) in lines {
        let content = text[start..end].trim_end_matches(['\r', '\n']);
        let trimmed = content.trim_start();
        let indent = content.len() - trimmed.len();
        let fence_char = trimmed.chars().next().filter(|c| *c == '`' || *c == '~');
        let fence_len = fence_char.map_or(0, |c| trimmed.chars().take_while(|x| *x == c).count());
        if let Some((char_open, len_open, rust, block)) = &mut open {
            if fence_char == Some(*char_open) && fence_len >= *len_open && trimmed[fence_len..].trim().is_empty() {
                if *rust {
                    out.push(std::mem::replace(
                        block,
                        DocTest {
                            code: String::new(),
                            line_starts: Vec::new(),
                        },
                    ));
                }
                open = None;
                continue;
            }
            // rustdoc's hidden lines: `# code` and a lone `#` are code; `##` is a literal `#`.
            let (shown, skipped) = if trimmed == "#" {
                ("", content.len())
            } else if let Some(rest) = trimmed.strip_prefix("# ") {
                (rest, indent + 2)
            } else if trimmed.starts_with("##") {
                (&trimmed[1..], indent + 1)
            } else {
                (content, 0)
            };
            block.code.push_str(shown);
            block.code.push('\n');
            block.line_starts.push(start + skipped);
            continue;
        }
        if fence_len >= 3 && indent <= 3 {
            let info = trimmed[fence_len..].trim();
            open = Some((
                fence_char.unwrap_or('`'),
                fence_len,
                is_rust(info),
                DocTest {
                    code: String::new(),
                    line_starts: Vec::new(),
                },
            ));
        }
    }
    // An unclosed block runs to the end of the comment (as in Markdown).
    if let Some((_, _, true, block)) = open
        && !block.code.is_empty()
    {
        out.push(block);
    }
}

/// Whether a code block's info string makes it a compiled doc-test (rustdoc's `LangString`).
fn is_rust(info: &str) -> bool {
    let mut seen_rust = false;
    let mut seen_other = false;
    for word in info.split([',', ' ', '\t']).map(str::trim).filter(|w| !w.is_empty()) {
        let word = word
            .trim_start_matches('{')
            .trim_end_matches('}')
            .trim_start_matches('.');
        match word {
            "ignore" => return false,
            w if w.starts_with("ignore-") => {}
            "rust" | "should_panic" | "no_run" | "compile_fail" | "test_harness" | "standalone_crate"
            | "allow_fail" => {
                seen_rust = true;
            }
            w if w.starts_with("edition") => seen_rust = true,
            w if w.len() == 5 && w.starts_with('E') && w[1..].chars().all(|c| c.is_ascii_digit()) => seen_rust = true,
            _ => seen_other = true,
        }
    }
    seen_rust || !seen_other
}

/// A string literal's value: the escapes rustc reads (`\n`, `\x41`, `\u{6b}`, a line
/// continuation), so that a name spelled through escapes is still seen. Borrowed when there is
/// no backslash; an invalid escape is kept as written.
pub fn unescape(inner: &str) -> std::borrow::Cow<'_, str> {
    if !inner.contains('\\') {
        return std::borrow::Cow::Borrowed(inner);
    }
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('t') => out.push('\t'),
            Some('0') => out.push('\0'),
            Some('\\') => out.push('\\'),
            Some('\'') => out.push('\''),
            Some('"') => out.push('"'),
            Some('x') => {
                let hex: String = chars.by_ref().take(2).collect();
                match u8::from_str_radix(&hex, 16) {
                    Ok(byte) if byte < 0x80 => out.push(char::from(byte)),
                    _ => {
                        out.push_str("\\x");
                        out.push_str(&hex);
                    }
                }
            }
            Some('u') => {
                let mut code = String::new();
                if chars.peek() == Some(&'{') {
                    chars.next();
                    for c in chars.by_ref() {
                        if c == '}' {
                            break;
                        }
                        code.push(c);
                    }
                }
                match u32::from_str_radix(&code.replace('_', ""), 16)
                    .ok()
                    .and_then(char::from_u32)
                {
                    Some(decoded) => out.push(decoded),
                    None => {
                        out.push_str("\\u{");
                        out.push_str(&code);
                        out.push('}');
                    }
                }
            }
            Some('\n') | Some('\r') => {
                while chars.peek().is_some_and(|c| c.is_whitespace()) {
                    chars.next();
                }
            }
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter() -> Prefilter {
        Prefilter::new(
            ["engine".to_owned(), "eng".to_owned()],
            ["system_login".to_owned()],
            true,
        )
    }

    fn parses(text: &str) -> bool {
        filter().lex(text, &[], false, false).parse
    }

    #[test]
    fn a_crate_name_counts_only_in_path_position() {
        assert!(parses("fn f() { engine::start(); }"));
        assert!(parses("fn f() { engine :: start(); }"));
        assert!(parses("fn f() { ::engine::start(); }"));
        assert!(parses("use engine;"));
        assert!(parses("use {std::fmt, engine as e};"));
        assert!(parses("extern crate engine;"));
        assert!(parses("fn f() { r#engine::start(); }"));
        assert!(parses("#[derive(engine::Thing)] struct S;"));
        assert!(!parses("fn f(engine: u32) -> u32 { engine + 1 }"));
        assert!(!parses("struct S { engine: Engine }"));
        assert!(!parses("// engine::start() in a comment\nfn f() {}"));
        assert!(!parses("fn f() { let s = 'e'; x.engine; }"));
        // `: :` is not a path separator.
        assert!(!parses("fn f() { match x { engine : :y => {} } }"));
    }

    #[test]
    fn strings_count_by_value_escapes_included() {
        assert!(parses(r#"#[serde(with = "engine::codec")] struct S;"#));
        assert!(parses(r#"const X: &str = "\u{65}ngine";"#));
        assert!(parses(r##"const X: &str = r#"engine"#;"##));
        assert!(!parses(r#"const X: &[u8] = b"nothing here";"#));
    }

    #[test]
    fn functions_count_anywhere_and_includes_only_when_watched() {
        assert!(parses("fn f() { let p = system_login; }"));
        assert!(parses(r#"#[path = "x.rs"] mod m;"#));
        assert!(parses(r#"#[cfg_attr(unix, path = "x.rs")] mod m;"#));
        assert!(parses(r#"const X: &str = include_str!("x.txt");"#));
        let no_dirs = Prefilter::new(["engine".to_owned()], [], false);
        assert!(!no_dirs.lex(r#"#[path = "x.rs"] mod m;"#, &[], false, false).parse);
    }

    #[test]
    fn doc_tests_are_found_with_hidden_lines_and_offsets() {
        let text = "/// Starts.\n///\n/// ```\n/// # use engine::start;\n/// start();\n/// ```\n/// ```text\n/// engine::no\n/// ```\npub fn f() {}\n";
        let lexed = filter().lex(text, &[], true, false);
        assert!(!lexed.parse);
        assert_eq!(lexed.doc_tests.len(), 1);
        let test = &lexed.doc_tests[0];
        assert_eq!(test.code, "use engine::start;\n start();\n");
        assert_eq!(&text[test.line_starts[0]..test.line_starts[0] + 3], "use");
        let quiet = "/// ```\n/// let x = 1;\n/// ```\nfn f() {}\n";
        assert!(filter().lex(quiet, &[], true, false).doc_tests.is_empty());
        assert_eq!(filter().lex(quiet, &[], true, true).doc_tests.len(), 1);
    }

    #[test]
    fn info_strings_follow_rustdoc() {
        assert!(is_rust(""));
        assert!(is_rust("rust"));
        assert!(is_rust("no_run"));
        assert!(is_rust("should_panic,edition2021"));
        assert!(is_rust("rust,foo"));
        assert!(!is_rust("text"));
        assert!(!is_rust("ignore"));
        assert!(!is_rust("toml"));
    }
}
