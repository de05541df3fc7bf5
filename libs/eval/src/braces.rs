//! Code braces of Rust text: a small lexer that skips comments (nested block comments too),
//! string, raw-string, byte-string and char literals. Prompts (how deep their function opens)
//! and the extraction of a generated body (where it closes) both count braces with it.

/// Calls `on_brace(byte_offset, opens)` for every `{` and `}` of `text` that is code (not in a
/// comment or literal), until it returns false.
pub(crate) fn scan_braces(text: &str, mut on_brace: impl FnMut(usize, bool) -> bool) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
