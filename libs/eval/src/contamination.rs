//! Which texts hold an evaluation prompt: the rule of `scripts/corpus.py` (`prompt_signatures` and
//! its file test), ported so that the function-level data of [`crate::harvest`] is kept out of the
//! evaluation by the same key as the corpus is. A prompt's key is the function it asks for (the
//! last `fn` of the prompt): its signature up to the opening brace and every `///` line before it,
//! each with whitespace runs collapsed. A text holds the prompt when it declares a function of that
//! name and, collapsed the same way, contains the signature and every doc line (the signature alone
//! is not enough: `fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result` is in hundreds of files).
//!
//! Python's `\s`, `\b` and `strip()` are matched character for character where Rust's definitions
//! differ; a test runs corpus.py itself on the same texts and compares the verdicts.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

/// One evaluation prompt's key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PromptKey {
    /// The function the prompt asks for.
    pub function: String,
    /// Its signature from `fn` up to (not including) the opening brace, normalized.
    pub signature: String,
    /// The text of each `///` line before it (after the slashes), normalized; empty lines left out.
    pub docs: Vec<String>,
    /// The task's name (`path:line` when it has none), to say which prompt a text holds.
    pub task: String,
}

/// The keys of every prompt of some prompt sets, by function name.
#[derive(Clone, Debug, Default)]
pub struct EvalPrompts {
    by_function: HashMap<String, Vec<PromptKey>>,
    count: usize,
}

impl EvalPrompts {
    /// Reads JSONL prompt sets (any record with a string `prompt`; blank lines skipped). Errors name
    /// the file and line, as corpus.py's do.
    pub fn load(paths: &[impl AsRef<Path>]) -> Result<EvalPrompts, String> {
        let mut prompts = EvalPrompts::default();
        for path in paths {
            let path = path.as_ref();
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
            prompts.add_set(&path.display().to_string(), &text)?;
        }
        Ok(prompts)
    }

    /// Adds the prompts of one JSONL set, `label` naming it in errors and unnamed tasks.
    pub fn add_set(&mut self, label: &str, text: &str) -> Result<(), String> {
        for (index, line) in text.lines().enumerate() {
            let number = index + 1;
            if line.chars().all(is_python_space) {
                continue;
            }
            let record: serde_json::Value = serde_json::from_str(line)
                .map_err(|e| format!("{label}:{number}: not a prompt record ({e})"))?;
            let Some(prompt) = record.get("prompt").and_then(|p| p.as_str()) else {
                return Err(format!(
                    "{label}:{number}: not a prompt record (no string \"prompt\")"
                ));
            };
            let task = match record.get("name") {
                Some(serde_json::Value::String(name)) => name.clone(),
                Some(other) => other.to_string(),
                None => format!("{label}:{number}"),
            };
            if let Some(key) = prompt_key(prompt, task) {
                self.count += 1;
                self.by_function
                    .entry(key.function.clone())
                    .or_default()
                    .push(key);
            }
        }
        Ok(())
    }

    /// Prompts with a key (those that declare a function).
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The task of the first prompt (by function name, then in load order) that `text` holds.
    pub fn found_in(&self, text: &str) -> Option<&str> {
        let names: BTreeSet<&str> = function_names(text)
            .map(|(_, name)| name)
            .filter(|name| self.by_function.contains_key(*name))
            .collect();
        if names.is_empty() {
            return None;
        }
        let flat = normalize(text);
        names
            .into_iter()
            .flat_map(|name| &self.by_function[name])
            .find(|key| {
                flat.contains(&key.signature) && key.docs.iter().all(|d| flat.contains(d.as_str()))
            })
            .map(|key| key.task.as_str())
    }
}

/// The key of the last function `prompt` declares, `None` when it declares none.
fn prompt_key(prompt: &str, task: String) -> Option<PromptKey> {
    let (start, function) = function_names(prompt).last()?;
    let end = prompt[start..]
        .find('{')
        .map_or(prompt.len(), |brace| start + brace);
    let docs = python_lines(&prompt[..start])
        .map(|line| line.trim_matches(is_python_space))
        .filter(|line| line.starts_with("///") && line.chars().count() > 3)
        .map(|line| normalize(&line[3..]))
        .collect();
    Some(PromptKey {
        function: function.to_string(),
        signature: normalize(&prompt[start..end]),
        docs,
        task,
    })
}

/// Whitespace runs as one space, none at either end (corpus.py's `normalize`).
pub fn normalize(text: &str) -> String {
    text.split(is_python_space)
        .filter(|word| !word.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Python's `str.isspace` (what `\s` and `strip()` match): Unicode whitespace and the four
/// information separators U+001C-U+001F, which Rust does not count.
fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `\w`.
fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Every match of corpus.py's `\bfn\s+([A-Za-z_][A-Za-z0-9_]*)`, left to right and not
/// overlapping, as `re.finditer` gives them: (byte offset of `fn`, name).
fn function_names(text: &str) -> impl Iterator<Item = (usize, &str)> {
    let mut resume = 0;
    text.match_indices("fn").filter_map(move |(at, _)| {
        if at < resume || text[..at].chars().next_back().is_some_and(is_word) {
            return None;
        }
        let after = &text[at + 2..];
        let name_start = after.trim_start_matches(is_python_space);
        if name_start.len() == after.len() {
            return None;
        }
        let length = name_start
            .bytes()
            .enumerate()
            .take_while(|&(i, b)| {
                b == b'_' || b.is_ascii_alphabetic() || (i > 0 && b.is_ascii_digit())
            })
            .count();
        if length == 0 {
            return None;
        }
        let name_at = text.len() - name_start.len();
        resume = name_at + length;
        Some((at, &text[name_at..resume]))
    })
}

/// Python's `str.splitlines()`: also splits at \r, \v, \f, U+001C-U+001E, U+0085, U+2028, U+2029.
fn python_lines(text: &str) -> impl Iterator<Item = &str> {
    let is_break = |c: char| {
        matches!(
            c,
            '\n' | '\r'
                | '\u{b}'
                | '\u{c}'
                | '\u{1c}'
                | '\u{1d}'
                | '\u{1e}'
                | '\u{85}'
                | '\u{2028}'
                | '\u{2029}'
        )
    };
    // "\r\n" is one break: the empty piece between its two characters is not a line.
    let mut previous_cr = false;
    text.split_inclusive(is_break).filter_map(move |piece| {
        let after_cr = std::mem::replace(&mut previous_cr, piece.ends_with('\r'));
        let line = piece.strip_suffix(is_break).unwrap_or(piece);
        (!(after_cr && piece == "\n")).then_some(line)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::process::Command;

    const SET: &str = concat!(
        r#"{"name": "rs_count_vowels", "prompt": "use std::fmt;\n\n/// Counts the vowels in `s`.\n///\n///   All  others are ignored.\nfn count_vowels(s: &str) -> usize {\n"}"#,
        "\n\n",
        r#"{"name": "rs_get", "prompt": "struct S(u8);\n/// A struct.\nimpl S {\n    /// Returns the value.\n    fn get(&self) -> u8 {\n"}"#,
        "\n",
        r#"{"prompt": "/// Unnamed.\nfn unnamed() -> u8 {\n"}"#,
        "\n",
        r#"{"name": "no_function", "prompt": "struct Only;\n"}"#,
        "\n"
    );

    fn prompts() -> EvalPrompts {
        let mut prompts = EvalPrompts::default();
        prompts.add_set("set.jsonl", SET).unwrap();
        prompts
    }

    /// Texts with the verdict the rule gives (checked against corpus.py below).
    fn cases() -> Vec<(&'static str, Option<&'static str>)> {
        vec![
            (
                "/// Counts the vowels in `s`.\n/// All others are ignored.\npub fn count_vowels(s: &str) -> usize {\n    0\n}\n",
                Some("rs_count_vowels"),
            ),
            (
                "mod m {\n    ///   Counts the vowels   in `s`.\n    // All others are ignored.\n    fn count_vowels(s: &str)\n        -> usize { 0 }\n}\n",
                Some("rs_count_vowels"),
            ),
            ("fn count_vowels(s: &str) -> usize { 0 }\n", None),
            (
                "/// Counts the vowels in `s`.\n/// All others are ignored.\nfn count_vowels(\n    s: &str,\n) -> usize { 0 }\n",
                None,
            ),
            ("/// Counts the vowels in `s`.\n/// All others are ignored.\nfn count_vowels(s: &[u8]) -> usize { 0 }\n", None),
            ("/// Counts the vowels in `s`. All others are ignored.\nfn xcount_vowels(s: &str) -> usize { 0 } fn count_vowels(s: &str) -> usize\n", Some("rs_count_vowels")),
            ("/// Returns the value.\n/// A struct.\nimpl T { fn get(&self) -> u8 { 0 } }\n", Some("rs_get")),
            ("/// Returns the value.\nimpl T { fn get(&self) -> u8 { 0 } }\n", None),
            ("/// Unnamed.\nfn\tunnamed()->u8{1}\nfn unnamed() -> u8 {}\n", Some("set.jsonl:4")),
            ("/// Unnamed.\r\n fn unnamed() -> u8 { 2 }\u{2028}", Some("set.jsonl:4")),
            ("fn größe() {} // Unnamed.\nfn unnamed() -> u8 {", Some("set.jsonl:4")),
        ]
    }

    #[test]
    fn keys_follow_the_last_function_and_its_doc_lines() {
        let prompts = prompts();
        assert_eq!(prompts.len(), 3, "the prompt without a function has no key");
        let key = &prompts.by_function["count_vowels"][0];
        assert_eq!(key.signature, "fn count_vowels(s: &str) -> usize");
        assert_eq!(
            key.docs,
            vec!["Counts the vowels in `s`.", "All others are ignored."]
        );
        let key = &prompts.by_function["get"][0];
        assert_eq!(key.signature, "fn get(&self) -> u8");
        assert_eq!(key.docs, vec!["A struct.", "Returns the value."]);
        for (text, expected) in cases() {
            assert_eq!(prompts.found_in(text), expected, "{text:?}");
        }
    }

    #[test]
    fn python_string_rules() {
        assert_eq!(normalize(" a \t\n b\u{1f}c\u{a0} "), "a b c");
        let text = "fn a() x_fn b fn\u{3000}_c9 fn 9 fnd fn größe fn fn y";
        let names: Vec<(usize, &str)> = function_names(text).collect();
        assert_eq!(names, vec![(0, "a"), (14, "_c9"), (32, "gr"), (43, "fn")]);
        let lines: Vec<&str> = python_lines("a\r\nb\rc\n\nd\u{2028}e").collect();
        assert_eq!(lines, vec!["a", "b", "c", "", "d", "e"]);
    }

    #[test]
    fn bad_records_name_their_line() {
        let mut prompts = EvalPrompts::default();
        let error = prompts
            .add_set(
                "x.jsonl",
                "{\"prompt\": \"fn a() {\"}\n\n{\"name\": \"b\"}\n",
            )
            .unwrap_err();
        assert!(
            error.starts_with("x.jsonl:3: not a prompt record"),
            "{error}"
        );
        assert!(prompts
            .add_set("y.jsonl", "[1]")
            .unwrap_err()
            .starts_with("y.jsonl:1:"));
        assert!(prompts
            .add_set("z.jsonl", "{oops")
            .unwrap_err()
            .starts_with("z.jsonl:1:"));
    }

    /// corpus.py, run on the same prompt set and the same texts (one file each), excludes exactly
    /// the files this port finds a prompt in, naming the same prompt.
    #[test]
    fn corpus_py_agrees() {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
        let dir = tempfile::tempdir().unwrap();
        let set = dir.path().join("set.jsonl");
        std::fs::write(&set, SET).unwrap();
        let sources = dir.path().join("src");
        std::fs::create_dir(&sources).unwrap();
        let cases = cases();
        for (i, (text, _)) in cases.iter().enumerate() {
            std::fs::write(sources.join(format!("case{i:02}.rs")), text).unwrap();
        }
        let out = dir.path().join("corpus");
        let status = Command::new("python3")
            .arg(root.join("scripts/corpus.py"))
            .arg("--out")
            .arg(&out)
            .arg("--source")
            .arg(&sources)
            .arg("--prompts")
            .arg(&set)
            .status()
            .expect("python3 runs scripts/corpus.py");
        assert!(status.success());
        let excluded = std::fs::read_to_string(out.join("excluded.tsv")).unwrap();
        let by_python: HashMap<String, String> = excluded
            .lines()
            .skip(1)
            .filter_map(|line| line.split_once('\t'))
            .map(|(file, task)| {
                let name = Path::new(file).file_name().unwrap().to_string_lossy();
                (name.into_owned(), task.to_string())
            })
            .collect();
        let prompts = EvalPrompts::load(&[&set]).unwrap();
        let label = set.display().to_string();
        for (i, (text, _)) in cases.iter().enumerate() {
            let python = by_python.get(&format!("case{i:02}.rs")).cloned();
            let rust = prompts
                .found_in(text)
                .map(|task| task.replace(&label, "set.jsonl"));
            let python = python.map(|task| task.replace(&label, "set.jsonl"));
            assert_eq!(rust, python, "case {i}: {text:?}");
        }
    }
}
