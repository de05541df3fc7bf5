//! Doc-comment examples as tests. A code block of a doc comment that rustdoc would run (no info
//! string, or only `rust` and edition tags), that asserts something and uses nothing but std and
//! the documented function becomes the body of a `#[test]` function, the way rustdoc reads it:
//! the doc unindented, hidden lines (`# `) kept as code, `##` unescaped. The crate's own
//! imports of the function or of the type it belongs to (`use my_crate::f;`, `use
//! my_crate::Type;`) are dropped and its qualified calls (`my_crate::f(..)`, `Type::f(..)`) made
//! plain, since the test sits beside the function.

use proc_macro2::{TokenStream, TokenTree};
use syn::{Item, Stmt, UseTree};

/// Why a doc example is not a test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ExampleSkip {
    /// rustdoc does not run it: `ignore`, `no_run`, `should_panic`, `compile_fail`, `text`,
    /// another language.
    NotRun,
    /// No `assert!`, `assert_eq!` or `assert_ne!`: it would pass whatever the function does.
    NoAssertion,
    /// It has its own `fn main`, which a test would never call.
    HasMain,
    /// It imports something other than std and the function (`extern crate` included).
    NonStdUse,
    /// It is not Rust syntax.
    DoesNotParse,
}

impl ExampleSkip {
    pub fn as_str(self) -> &'static str {
        match self {
            ExampleSkip::NotRun => "not_run",
            ExampleSkip::NoAssertion => "no_assertion",
            ExampleSkip::HasMain => "has_main",
            ExampleSkip::NonStdUse => "non_std_use",
            ExampleSkip::DoesNotParse => "does_not_parse",
        }
    }
}

/// Path roots that name std (or its parts), not the crate.
const STD_ROOTS: [&str; 3] = ["std", "core", "alloc"];

/// The code of each code block of a doc comment (`doc`: the text of each `///` line, as rustdoc
/// sees it), made into a test of `function` (of the impl block of type `owner`, if any), or why
/// not.
pub fn doc_examples(
    doc: &[String],
    function: &str,
    owner: Option<&str>,
) -> Vec<Result<String, ExampleSkip>> {
    code_blocks(doc)
        .into_iter()
        .map(|(info, code)| {
            if !runs_as_rust(&info) {
                return Err(ExampleSkip::NotRun);
            }
            example_test(&code, function, owner)
        })
        .collect()
}

/// (info string, code) of each fenced block, after rustdoc's unindenting and hidden lines.
fn code_blocks(doc: &[String]) -> Vec<(String, String)> {
    let indent = doc
        .iter()
        .filter(|line| !line.trim().is_empty())
        .map(|line| line.chars().take_while(|c| c.is_whitespace()).count())
        .min()
        .unwrap_or(0);
    let mut blocks = Vec::new();
    let mut open: Option<(usize, String, Vec<String>)> = None;
    for line in doc {
        let line = unindent(line, indent);
        let trimmed = line.trim_start();
        let fence = trimmed.starts_with("```");
        match open.take() {
            None if fence => {
                let info = trimmed.trim_start_matches('`').trim().to_string();
                let fence_indent = line.chars().take_while(|c| c.is_whitespace()).count();
                open = Some((fence_indent, info, Vec::new()));
            }
            None => {}
            Some((_, info, lines)) if fence => blocks.push((info, lines.join("\n"))),
            Some((fence_indent, info, mut lines)) => {
                // Content is unindented by the fence's own indentation, as far as it goes.
                lines.push(shown_line(unindent(line, fence_indent)));
                open = Some((fence_indent, info, lines));
            }
        }
    }
    // An unclosed block runs to the end of the comment, as in Markdown.
    if let Some((_, info, lines)) = open {
        blocks.push((info, lines.join("\n")));
    }
    blocks
}

/// `line` without up to `n` leading whitespace characters.
fn unindent(line: &str, n: usize) -> &str {
    let cut = line
        .char_indices()
        .take(n)
        .take_while(|(_, c)| c.is_whitespace())
        .last()
        .map_or(0, |(i, c)| i + c.len_utf8());
    &line[cut..]
}

/// rustdoc's hidden lines: `# code` and `#` are code it does not show; `##` stands for `#`.
fn shown_line(line: &str) -> String {
    let trimmed = line.trim();
    if trimmed.starts_with("##") {
        line.replacen("##", "#", 1)
    } else if let Some(hidden) = trimmed.strip_prefix("# ") {
        hidden.to_string()
    } else if trimmed == "#" {
        String::new()
    } else {
        line.to_string()
    }
}

/// rustdoc compiles and runs a block whose info string is empty or only says `rust` and an
/// edition.
fn runs_as_rust(info: &str) -> bool {
    info.split([',', ' ', '\t'])
        .filter(|word| !word.is_empty())
        .all(|word| word == "rust" || word.starts_with("edition"))
}

fn example_test(code: &str, function: &str, owner: Option<&str>) -> Result<String, ExampleSkip> {
    if !["assert!", "assert_eq!", "assert_ne!"]
        .iter()
        .any(|m| code.contains(m))
    {
        return Err(ExampleSkip::NoAssertion);
    }
    let code = without_own_imports(code, function, owner)?;
    let code = unqualified_calls(&code, function)?;
    let code = code.trim_matches('\n').to_string();
    Ok(code)
}

/// `code` without its `use` items of the function or its owner; `Err` for any other import that
/// is not std's, and for a `fn main`.
fn without_own_imports(
    code: &str,
    function: &str,
    owner: Option<&str>,
) -> Result<String, ExampleSkip> {
    // Parsed as a block: one byte of `{` before the code, so token offsets are shifted by one.
    let block: syn::Block =
        syn::parse_str(&format!("{{{code}\n}}")).map_err(|_| ExampleSkip::DoesNotParse)?;
    let mut removed = Vec::new();
    for stmt in &block.stmts {
        match stmt {
            Stmt::Item(Item::Fn(f)) if f.sig.ident == "main" => return Err(ExampleSkip::HasMain),
            Stmt::Item(Item::ExternCrate(_)) => return Err(ExampleSkip::NonStdUse),
            Stmt::Item(Item::Use(item)) => {
                let mut leaves = Vec::new();
                use_leaves(&item.tree, &mut Vec::new(), &mut leaves);
                if leaves
                    .iter()
                    .all(|path| STD_ROOTS.contains(&path[0].as_str()))
                {
                    continue;
                }
                let own = |name: Option<&String>| {
                    name.is_some_and(|name| name == function || Some(name.as_str()) == owner)
                };
                if !leaves.iter().all(|path| own(path.last())) {
                    return Err(ExampleSkip::NonStdUse);
                }
                let range = item_range(item);
                removed.push(range.start - 1..range.end - 1);
            }
            _ => {}
        }
    }
    let mut code = code.to_string();
    for range in removed.into_iter().rev() {
        code.replace_range(range, "");
    }
    Ok(code)
}

/// The byte range of a `use` item in the text it was parsed from.
fn item_range(item: &syn::ItemUse) -> std::ops::Range<usize> {
    let start = item
        .attrs
        .first()
        .map_or(item.use_token.span, |a| a.pound_token.span)
        .byte_range()
        .start;
    start..item.semi_token.span.byte_range().end
}

/// Each path a use tree imports, as segments (`self` leaves as their module's path, globs and
/// renames by their path).
fn use_leaves(tree: &UseTree, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    match tree {
        UseTree::Path(p) => {
            prefix.push(p.ident.to_string());
            use_leaves(&p.tree, prefix, out);
            prefix.pop();
        }
        UseTree::Name(n) if n.ident == "self" => out.push(prefix.clone()),
        UseTree::Name(n) => out.push([prefix.as_slice(), &[n.ident.to_string()]].concat()),
        UseTree::Rename(r) => out.push([prefix.as_slice(), &[r.ident.to_string()]].concat()),
        UseTree::Glob(_) => out.push([prefix.as_slice(), &["*".to_string()]].concat()),
        UseTree::Group(g) => g.items.iter().for_each(|t| use_leaves(t, prefix, out)),
    }
}

/// `my_crate::module::function` and `Type::function` as plain `function`, inside macro
/// arguments too (most examples are `assert_eq!(..)`): a token scan, not a syntax tree.
fn unqualified_calls(code: &str, function: &str) -> Result<String, ExampleSkip> {
    let tokens: TokenStream = code.parse().map_err(|_| ExampleSkip::DoesNotParse)?;
    let mut paths = Vec::new();
    qualified_paths(tokens, function, &mut paths);
    let mut code = code.to_string();
    for range in paths.into_iter().rev() {
        code.replace_range(range, function);
    }
    Ok(code)
}

/// Byte ranges of the paths `a::b::function` (not rooted in std) in `tokens`, in order.
fn qualified_paths(tokens: TokenStream, function: &str, out: &mut Vec<std::ops::Range<usize>>) {
    let tokens: Vec<TokenTree> = tokens.into_iter().collect();
    let is_path_sep = |i: usize| {
        matches!((tokens.get(i), tokens.get(i + 1)),
            (Some(TokenTree::Punct(a)), Some(TokenTree::Punct(b)))
                if a.as_char() == ':' && b.as_char() == ':')
    };
    // `a::b` goes on a path; a `::` after anything else (or nothing) roots one.
    let continues_path = |i: usize| {
        i >= 3
            && is_path_sep(i - 2)
            && match &tokens[i - 3] {
                TokenTree::Ident(_) => true,
                TokenTree::Punct(p) => p.as_char() == '>',
                _ => false,
            }
    };
    let mut i = 0;
    while i < tokens.len() {
        match &tokens[i] {
            TokenTree::Group(g) => {
                qualified_paths(g.stream(), function, out);
                i += 1;
            }
            TokenTree::Ident(first) if !continues_path(i) => {
                // The longest `ident (:: ident)*` from here.
                let mut last = i;
                while is_path_sep(last + 1)
                    && matches!(tokens.get(last + 3), Some(TokenTree::Ident(_)))
                {
                    last += 3;
                }
                let root = first.to_string();
                let qualified = last > i
                    && tokens[last].to_string() == function
                    && !STD_ROOTS.contains(&root.as_str());
                if qualified {
                    // A leading `::` belongs to the path too.
                    let start = if i >= 2 && is_path_sep(i - 2) {
                        i - 2
                    } else {
                        i
                    };
                    out.push(
                        tokens[start].span().byte_range().start
                            ..tokens[last].span().byte_range().end,
                    );
                }
                i = last + 1;
            }
            _ => i += 1,
        }
    }
}

/// The `tests` field of a task (the MultiPL-E layout of data/prompts/rust_tasks.jsonl): the
/// function's closing brace, then a test module with one `#[test]` per example.
pub fn tests_text(examples: &[&str]) -> String {
    let mut text = String::from("}\n\n#[cfg(test)]\nmod tests {\n    use super::*;\n");
    for (i, code) in examples.iter().enumerate() {
        text.push_str(&format!(
            "\n    #[test]\n    fn doc_example_{}() {{\n",
            i + 1
        ));
        for line in code.lines() {
            if !line.trim().is_empty() {
                text.push_str("        ");
                text.push_str(line);
            }
            text.push('\n');
        }
        text.push_str("    }\n");
    }
    text.push_str("}\n");
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(text: &str) -> Vec<String> {
        text.lines().map(|l| format!(" {l}")).collect()
    }

    #[test]
    fn runnable_asserting_std_only_blocks_become_tests() {
        let comment = doc(concat!(
            "Adds one.\n",
            "\n",
            "```\n",
            "# use my_crate::{add_one, Adder};\n",
            "use std::collections::HashMap;\n",
            "let m: HashMap<u8, u8> = HashMap::new();\n",
            "assert_eq!(my_crate::math::add_one(1), 2);\n",
            "assert_eq!(::my_crate::add_one(m.len() as i32), Adder::add_one(0));\n",
            "##[derive(Debug)]\n",
            "struct Shown;\n",
            "```\n",
            "```rust,ignore\nassert!(false);\n```\n",
            "```text\nassert!(x)\n```\n",
            "```\nlet x = add_one(1);\n```\n",
            "```\nfn main() { assert!(true) }\n```\n",
            "```rust\nuse other::thing;\nassert!(thing(add_one(1)));\n```\n",
            "```\nassert!(add_one(1) == 2\n```\n",
            "  ```edition2021\n  assert_eq!(std::i32::MAX, add_one(i32::MAX - 1));\n  ```\n",
        ));
        let examples = doc_examples(&comment, "add_one", Some("Adder"));
        assert_eq!(
            examples,
            vec![
                Ok(concat!(
                    "\nuse std::collections::HashMap;\n",
                    "let m: HashMap<u8, u8> = HashMap::new();\n",
                    "assert_eq!(add_one(1), 2);\n",
                    "assert_eq!(add_one(m.len() as i32), add_one(0));\n",
                    "#[derive(Debug)]\n",
                    "struct Shown;"
                )
                .trim_start_matches('\n')
                .to_string()),
                Err(ExampleSkip::NotRun),
                Err(ExampleSkip::NotRun),
                Err(ExampleSkip::NoAssertion),
                Err(ExampleSkip::HasMain),
                Err(ExampleSkip::NonStdUse),
                Err(ExampleSkip::DoesNotParse),
                Ok("assert_eq!(std::i32::MAX, add_one(i32::MAX - 1));".to_string()),
            ]
        );
    }

    #[test]
    fn tests_follow_the_prompt_sets_layout() {
        assert_eq!(
            tests_text(&["let x = 1;\n\nassert_eq!(f(x), 2);", "assert!(g());"]),
            concat!(
                "}\n\n#[cfg(test)]\nmod tests {\n    use super::*;\n",
                "\n    #[test]\n    fn doc_example_1() {\n",
                "        let x = 1;\n\n        assert_eq!(f(x), 2);\n    }\n",
                "\n    #[test]\n    fn doc_example_2() {\n        assert!(g());\n    }\n}\n"
            )
        );
    }
}
