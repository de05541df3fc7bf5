//! The generated function: where a completion ends (a stop string, or the brace that closes the
//! function the prompt opened), and the programs assembled from it.
//!
//! Braces are counted by a small Rust lexer that skips comments, string, raw-string and char
//! literals, so `"{"` or `'}'` in generated code does not end the function early.

use crate::prompts::Task;

/// Calls `on_brace(byte_offset, opens)` for every `{` and `}` of `text` that is code (not in a
/// comment or literal), until it returns false.
fn scan_braces(text: &str, mut on_brace: impl FnMut(usize, bool) -> bool) {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                // Block comments nest in Rust.
                let mut depth = 1;
                i += 2;
                while i < bytes.len() && depth > 0 {
                    if bytes[i] == b'/' && bytes.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if bytes[i] == b'*' && bytes.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                    } else {
                        i += 1;
                    }
                }
                continue;
            }
            b'r' | b'b' if raw_string_start(bytes, i).is_some() => {
                let (hashes, body_start) = raw_string_start(bytes, i).unwrap_or((0, i + 1));
                i = body_start;
                let closing: Vec<u8> = std::iter::once(b'"')
                    .chain(std::iter::repeat_n(b'#', hashes))
                    .collect();
                while i < bytes.len() && !bytes[i..].starts_with(&closing) {
                    i += 1;
                }
                i += closing.len();
                continue;
            }
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'\'' => {
                // A char literal ('x', '\n', '\u{..}', '{') or a lifetime ('a): a literal closes
                // with a quote right after one (escaped) character.
                if bytes.get(i + 1) == Some(&b'\\') {
                    let mut j = i + 2;
                    while j < bytes.len() && bytes[j] != b'\'' && bytes[j] != b'\n' {
                        j += 1;
                    }
                    i = j;
                } else if let Some(c) = text[i + 1..].chars().next() {
                    if text[i + 1 + c.len_utf8()..].starts_with('\'') {
                        i += c.len_utf8() + 1;
                    }
                }
            }
            b'{' | b'}' if !on_brace(i, bytes[i] == b'{') => return,
            _ => {}
        }
        i += 1;
    }
}

/// For `r"`, `r#"`, `br"`, `br#"` at `i` (not inside an identifier): the number of `#` and the
/// offset just after the opening quote.
fn raw_string_start(bytes: &[u8], i: usize) -> Option<(usize, usize)> {
    if i > 0 && (bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_') {
        return None;
    }
    let mut j = i;
    if bytes[j] == b'b' {
        j += 1;
    }
    if bytes.get(j) != Some(&b'r') {
        return None;
    }
    j += 1;
    let hashes = bytes[j..].iter().take_while(|&&b| b == b'#').count();
    j += hashes;
    (bytes.get(j) == Some(&b'"')).then_some((hashes, j + 1))
}

/// Braces left open at the end of `text` (code braces only).
pub fn open_braces(text: &str) -> usize {
    let mut depth = 0usize;
    scan_braces(text, |_, opens| {
        depth = if opens {
            depth + 1
        } else {
            depth.saturating_sub(1)
        };
        true
    });
    depth
}

/// How a completion's body ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BodyEnd {
    /// At a stop string.
    Stop,
    /// At the brace that closes the function.
    Brace,
    /// The completion ran out first: the body is incomplete.
    Truncated,
}

/// The body of the function, as the model wrote it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Extraction {
    /// The text between the prompt and the function's closing brace.
    pub body: String,
    pub end: BodyEnd,
}

/// Cuts `completion` at the first of `stops` or at the brace that closes the function `prompt`
/// opened, whichever comes first.
pub fn extract_body(prompt: &str, completion: &str, stops: &[String]) -> Extraction {
    let stop_at = stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| completion.find(s.as_str()))
        .min();
    let text = format!("{prompt}{completion}");
    let function_depth = open_braces(prompt);
    let mut depth = 0usize;
    let mut brace_at = None;
    scan_braces(&text, |offset, opens| {
        if opens {
            depth += 1;
        } else if offset >= prompt.len() && depth == function_depth {
            // This brace closes the prompt's innermost open block: the function.
            brace_at = Some(offset - prompt.len());
            return false;
        } else {
            depth = depth.saturating_sub(1);
        }
        true
    });
    let (cut, end) = match (stop_at, brace_at) {
        (Some(s), Some(b)) if b < s => (b, BodyEnd::Brace),
        (Some(s), _) => (s, BodyEnd::Stop),
        (None, Some(b)) => (b, BodyEnd::Brace),
        (None, None) => (completion.len(), BodyEnd::Truncated),
    };
    // The closing brace's own indentation is not part of the body.
    let body = completion[..cut].trim_end_matches([' ', '\t']);
    Extraction {
        body: body.to_string(),
        end,
    }
}

/// The program checked for compiling: the prompt, the body and the braces the prompt left open.
pub fn library_program(task: &Task, body: &str) -> String {
    let mut program = format!("{}{}\n", task.prompt, body.trim_end());
    for _ in 0..task.depth() {
        program.push_str("}\n");
    }
    program
}

/// The program with the task's tests, `None` when it has none.
pub fn test_program(task: &Task, body: &str) -> Option<String> {
    let tests = task.tests.as_ref()?;
    Some(format!("{}{}\n{tests}", task.prompt, body.trim_end()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(prompt: &str) -> Task {
        Task {
            name: "t".into(),
            prompt: prompt.into(),
            tests: None,
            stop_tokens: vec![],
        }
    }

    #[test]
    fn braces_in_literals_and_comments_do_not_count() {
        assert_eq!(open_braces("fn a() {\n"), 1);
        assert_eq!(open_braces("impl S {\n    fn a(&self) {\n"), 2);
        assert_eq!(open_braces("fn a() { let s = \"{{\"; // }\n"), 1);
        assert_eq!(open_braces("fn a() { let c = '{'; /* } /* } */ } */"), 1);
        assert_eq!(
            open_braces("fn a<'a>(x: &'a str) { let r = r#\"}\"#; '\\u{7d}';"),
            1
        );
        assert_eq!(open_braces("fn a() { b'}'; br\"}\"; }"), 0);
    }

    #[test]
    fn the_body_ends_at_the_functions_closing_brace() {
        let prompt = "fn abs(x: i32) -> i32 {\n";
        let got = extract_body(
            prompt,
            "    if x < 0 { -x } else { x }\n}\n\nfn other() {}",
            &[],
        );
        assert_eq!(got.body, "    if x < 0 { -x } else { x }\n");
        assert_eq!(got.end, BodyEnd::Brace);
        let got = extract_body(prompt, "    x.abs()\n}", &["\n}".to_string()]);
        assert_eq!((got.body.as_str(), got.end), ("    x.abs()", BodyEnd::Stop));
        let got = extract_body(prompt, "    let s = \"}\";\n    match x {", &[]);
        assert_eq!(got.end, BodyEnd::Truncated);
    }

    #[test]
    fn a_method_ends_at_its_own_brace_not_the_impls() {
        let prompt = "struct S(u8);\nimpl S {\n    fn get(&self) -> u8 {\n";
        let got = extract_body(prompt, "        self.0\n    }\n}\n", &[]);
        assert_eq!(got.body, "        self.0\n");
        let t = task(prompt);
        assert_eq!(
            library_program(&t, &got.body),
            format!("{prompt}        self.0\n}}\n}}\n")
        );
        assert_eq!(test_program(&t, &got.body), None);
    }
}
