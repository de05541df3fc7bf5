//! The documented functions of one source file, read by syn: free functions and the associated
//! functions of impl blocks (a module's inline `mod`s too, not functions nested in bodies or
//! trait definitions), each cut out of the file's own text by token positions, so a prompt and
//! body are the author's, not a reprint: the `///` lines, the signature from `fn` (or `const`,
//! `unsafe`...) to its opening brace, and the body to its closing brace, dedented to column 0.
//!
//! A function is a candidate when it has no `self` receiver and its signature names only std:
//! primitives, the prelude (`String`, `Vec`, `Option`, `Result`, `Box` and the prelude's traits),
//! what its module imports from std, core or alloc, paths rooted there, and its own generic
//! parameters. The module's std imports travel with it, one a line; which it needs, rustc says
//! later (see [`super::batches`]).

use std::collections::HashSet;

use proc_macro2::Span;
use syn::spanned::Spanned;
use syn::visit::Visit;
use syn::{Attribute, Block, ImplItem, Item, Signature, UseTree};

use super::examples::{doc_examples, ExampleSkip};
use super::Dropped;

/// A documented function of a file, and whether it is a candidate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// Line of the signature, 1-based.
    pub line: usize,
    pub outcome: Result<Candidate, Dropped>,
}

/// A documented std-only function, cut out of its file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub name: String,
    /// `use std::...;` lines of its module, one import a line.
    pub imports: Vec<String>,
    /// The `///` lines, each ending in `\n`.
    pub doc: String,
    /// From `fn` (or its qualifiers) to the opening brace, then `\n`.
    pub signature: String,
    /// The lines after the opening brace up to and including the closing brace.
    pub body: String,
    /// Non-blank lines between the braces.
    pub body_lines: usize,
    /// Each code block of the doc comment as a test's code, or why it is none.
    pub examples: Vec<Result<String, ExampleSkip>>,
}

/// The primitive types.
const PRIMITIVES: &[&str] = &[
    "bool", "char", "str", "u8", "u16", "u32", "u64", "u128", "usize", "i8", "i16", "i32", "i64",
    "i128", "isize", "f32", "f64",
];

/// Types and traits of the 2021 prelude, usable without an import.
const PRELUDE: &[&str] = &[
    "String",
    "Vec",
    "Option",
    "Result",
    "Box",
    "Clone",
    "Copy",
    "Send",
    "Sync",
    "Sized",
    "Unpin",
    "Drop",
    "Fn",
    "FnMut",
    "FnOnce",
    "From",
    "Into",
    "TryFrom",
    "TryInto",
    "AsRef",
    "AsMut",
    "Default",
    "Eq",
    "PartialEq",
    "Ord",
    "PartialOrd",
    "Iterator",
    "IntoIterator",
    "DoubleEndedIterator",
    "ExactSizeIterator",
    "Extend",
    "FromIterator",
    "ToOwned",
    "ToString",
];

/// Path roots that are std.
const STD_ROOTS: [&str; 3] = ["std", "core", "alloc"];

/// What a module's items see: its std imports and the names its own items and other imports take.
#[derive(Default)]
struct Scope {
    /// `use std::...;` lines, one import each (`alloc::` written as `std::`, which re-exports it).
    imports: Vec<String>,
    /// Names the std imports bring in (`HashMap`, `fmt`, an `as` name).
    std_names: HashSet<String>,
    /// Names of the module's own types, traits and modules and of its other imports: they hide
    /// a prelude name (`use crate::Result;`).
    own_names: HashSet<String>,
}

impl Scope {
    fn of(items: &[Item]) -> Scope {
        let mut scope = Scope::default();
        for item in items {
            let own = match item {
                Item::Use(u) => {
                    scope.add_use(&u.tree, &mut Vec::new());
                    continue;
                }
                Item::Struct(i) => &i.ident,
                Item::Enum(i) => &i.ident,
                Item::Union(i) => &i.ident,
                Item::Type(i) => &i.ident,
                Item::Trait(i) => &i.ident,
                Item::TraitAlias(i) => &i.ident,
                Item::Mod(i) => &i.ident,
                _ => continue,
            };
            scope.own_names.insert(own.to_string());
        }
        scope
    }

    fn add_use(&mut self, tree: &UseTree, prefix: &mut Vec<String>) {
        let std_path = |prefix: &[String]| {
            let mut path = prefix.to_vec();
            if path.first().map(String::as_str) == Some("alloc") {
                path[0] = "std".into();
            }
            path.join("::")
        };
        let is_std = |prefix: &[String]| {
            prefix
                .first()
                .is_some_and(|root| STD_ROOTS.contains(&root.as_str()))
        };
        let (name, line) = match tree {
            UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.add_use(&p.tree, prefix);
                prefix.pop();
                return;
            }
            UseTree::Group(g) => {
                g.items.iter().for_each(|t| self.add_use(t, prefix));
                return;
            }
            UseTree::Name(n) if n.ident == "self" => match prefix.last() {
                Some(module) => (module.clone(), format!("use {};", std_path(prefix))),
                None => return,
            },
            UseTree::Name(n) => {
                let name = n.ident.to_string();
                let line = format!(
                    "use {};",
                    std_path(&[prefix.as_slice(), std::slice::from_ref(&name)].concat())
                );
                (name, line)
            }
            UseTree::Rename(r) => {
                let path = std_path(&[prefix.as_slice(), &[r.ident.to_string()]].concat());
                (r.rename.to_string(), format!("use {path} as {};", r.rename))
            }
            UseTree::Glob(_) if is_std(prefix) => {
                self.imports.push(format!("use {}::*;", std_path(prefix)));
                return;
            }
            UseTree::Glob(_) => return,
        };
        if is_std(prefix) {
            self.std_names.insert(name);
            self.imports.push(line);
        } else {
            self.own_names.insert(name);
        }
    }
}

/// The documented functions of `text` (a whole file, BOM already removed) in file order; `Err`
/// when syn cannot parse it.
pub fn functions_in(text: &str) -> syn::Result<Vec<Found>> {
    let result = syn::parse_file(text).map(|file| {
        let mut found = Vec::new();
        collect(&file.items, text, &mut found);
        found
    });
    // Token positions live in a per-thread table that grows with every file parsed.
    proc_macro2::extra::invalidate_current_thread_spans();
    result
}

fn collect(items: &[Item], text: &str, found: &mut Vec<Found>) {
    let scope = Scope::of(items);
    for item in items {
        match item {
            Item::Fn(f) => {
                let function = Function {
                    attrs: &f.attrs,
                    sig: &f.sig,
                    block: &f.block,
                    owner: None,
                };
                consider(&function, text, &scope, found);
            }
            Item::Impl(block) => {
                let owner = match &*block.self_ty {
                    syn::Type::Path(p) => p.path.segments.last().map(|s| s.ident.to_string()),
                    _ => None,
                };
                for inner in &block.items {
                    if let ImplItem::Fn(f) = inner {
                        let function = Function {
                            attrs: &f.attrs,
                            sig: &f.sig,
                            block: &f.block,
                            owner: owner.as_deref(),
                        };
                        consider(&function, text, &scope, found);
                    }
                }
            }
            Item::Mod(m) => {
                if let Some((_, items)) = &m.content {
                    collect(items, text, found);
                }
            }
            _ => {}
        }
    }
}

/// A function item's parts: free (`owner` none) or in the impl block of type `owner`.
struct Function<'a> {
    attrs: &'a [Attribute],
    sig: &'a Signature,
    block: &'a Block,
    owner: Option<&'a str>,
}

fn consider(function: &Function, text: &str, scope: &Scope, found: &mut Vec<Found>) {
    let sig = function.sig;
    let doc_attrs: Vec<&Attribute> = function
        .attrs
        .iter()
        .filter(|a| a.path().is_ident("doc") && text[start(a.span())..].starts_with("///"))
        .collect();
    if doc_attrs.is_empty() {
        return;
    }
    let line = sig.fn_token.span.start().line;
    let outcome = if sig.receiver().is_some() {
        Err(Dropped::SelfReceiver)
    } else if !names_only_std(sig, scope) {
        Err(Dropped::NonStdTypes)
    } else {
        cut(function, &doc_attrs, text, scope).ok_or(Dropped::Layout)
    };
    found.push(Found { line, outcome });
}

fn start(span: Span) -> usize {
    span.byte_range().start
}

/// The candidate's text, `None` when the braces do not stand where a prompt and body need them:
/// the opening brace last on its line, the closing one first on its own.
fn cut(
    function: &Function,
    doc_attrs: &[&Attribute],
    text: &str,
    scope: &Scope,
) -> Option<Candidate> {
    let (sig, block) = (function.sig, function.block);
    let sig_start = start(sig.span());
    let open = block.brace_token.span.open().byte_range();
    let close = block.brace_token.span.close().byte_range();
    let line_start = |at: usize| text[..at].rfind('\n').map_or(0, |i| i + 1);
    let line_end = |at: usize| text[at..].find('\n').map_or(text.len(), |i| at + i);
    let indent = &text[line_start(sig_start)..sig_start];
    let indent = &indent[..indent.len() - indent.trim_start().len()];
    let after_open = &text[open.end..line_end(open.end)];
    let before_close = &text[line_start(close.start)..close.start];
    if !after_open.trim().is_empty() || !before_close.trim().is_empty() {
        return None;
    }
    let mut doc = String::new();
    let mut doc_values = Vec::new();
    for attr in doc_attrs {
        let at = start(attr.span());
        doc.push_str(text[at..line_end(at)].trim_end());
        doc.push('\n');
        if let syn::Meta::NameValue(syn::MetaNameValue {
            value:
                syn::Expr::Lit(syn::ExprLit {
                    lit: syn::Lit::Str(s),
                    ..
                }),
            ..
        }) = &attr.meta
        {
            doc_values.push(s.value());
        }
    }
    let signature = format!("{}\n", dedent(&text[sig_start..open.end], indent));
    let body_start = (line_end(open.end) + 1).min(close.start);
    let body = dedent(&text[body_start..close.end], indent);
    let body_lines = text[body_start..close.start]
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count();
    let name = sig.ident.to_string();
    Some(Candidate {
        examples: doc_examples(&doc_values, &name, function.owner),
        name,
        imports: scope.imports.clone(),
        doc,
        signature,
        body,
        body_lines,
    })
}

/// `text` with `indent` taken off the start of every line that has it; blank lines emptied.
fn dedent(text: &str, indent: &str) -> String {
    text.split('\n')
        .map(|line| match line {
            _ if line.trim().is_empty() => "",
            _ => line.strip_prefix(indent).unwrap_or(line),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Whether every type and trait the signature names is std's or a generic parameter's.
fn names_only_std(sig: &Signature, scope: &Scope) -> bool {
    let generics = sig
        .generics
        .params
        .iter()
        .filter_map(|p| match p {
            syn::GenericParam::Type(t) => Some(t.ident.to_string()),
            syn::GenericParam::Const(c) => Some(c.ident.to_string()),
            syn::GenericParam::Lifetime(_) => None,
        })
        .collect();
    let mut check = StdOnly {
        scope,
        generics,
        ok: true,
    };
    check.visit_signature(sig);
    check.ok
}

struct StdOnly<'a> {
    scope: &'a Scope,
    generics: HashSet<String>,
    ok: bool,
}

impl StdOnly<'_> {
    fn is_std_root(&self, name: &str, alone: bool) -> bool {
        let scope = self.scope;
        let prelude = (PRIMITIVES.contains(&name) || PRELUDE.contains(&name))
            && !scope.own_names.contains(name);
        self.generics.contains(name)
            || scope.std_names.contains(name)
            || if alone {
                prelude
            } else {
                STD_ROOTS.contains(&name) || prelude
            }
    }
}

impl<'ast> Visit<'ast> for StdOnly<'_> {
    fn visit_path(&mut self, path: &'ast syn::Path) {
        let Some(first) = path.segments.first() else {
            return;
        };
        let root = first.ident.to_string();
        let rooted = path.leading_colon.is_some();
        let std = if rooted {
            STD_ROOTS.contains(&root.as_str())
        } else {
            self.is_std_root(&root, path.segments.len() == 1)
        };
        self.ok &= std;
        syn::visit::visit_path(self, path);
    }

    /// Attributes on parameters (`#[cfg(..)]`) name no type.
    fn visit_attribute(&mut self, _: &'ast Attribute) {}

    fn visit_type_macro(&mut self, _: &'ast syn::TypeMacro) {
        self.ok = false;
    }

    fn visit_type(&mut self, ty: &'ast syn::Type) {
        if matches!(ty, syn::Type::Verbatim(_)) {
            self.ok = false;
        }
        syn::visit::visit_type(self, ty);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcomes(text: &str) -> Vec<(usize, Result<String, Dropped>)> {
        functions_in(text)
            .unwrap()
            .into_iter()
            .map(|f| (f.line, f.outcome.map(|c| c.name)))
            .collect()
    }

    #[test]
    fn std_only_signatures_without_receivers_are_candidates() {
        let text = r#"
use std::collections::{HashMap, hash_map::Entry as E};
use std::fmt::{self, Write as _};
use crate::Thing;
use alloc::borrow::Cow;

type Result<T> = std::result::Result<T, ()>;

/// Counts.
pub fn counts(words: &[&str]) -> HashMap<String, usize> {
    HashMap::new()
}

fn undocumented(x: u8) -> u8 { x }

/// Uses the crate.
fn thing(t: Thing) -> u8 {
    0
}

/// Generic.
fn largest<T: PartialOrd + Copy, I>(items: I) -> Option<T>
where
    I: IntoIterator<Item = T>,
{
    None
}

/// Formats.
fn show(f: &mut fmt::Formatter<'_>, c: Cow<'_, str>) -> fmt::Result {
    Ok(())
}

/// Hidden prelude name.
fn own(x: u8) -> Result<u8> {
    Ok(x)
}

/// A closure and an array.
fn apply(f: impl Fn(u8) -> [u8; 2], g: &dyn Fn() -> ::core::primitive::u8) -> (u8, bool) {
    (0, true)
}

impl Thing {
    /// A method.
    pub fn get(&self) -> u8 {
        0
    }

    /// Returns Self.
    pub fn new() -> Self {
        Thing
    }

    /// Standalone.
    pub fn parse_hex(s: &str) -> Option<u32> {
        u32::from_str_radix(s, 16).ok()
    }

    /// One line.
    fn one(x: u8) -> u8 { x }
}

mod inner {
    /// No HashMap import here.
    fn inner(m: HashMap<u8, u8>) -> usize {
        m.len()
    }
}
"#;
        assert_eq!(
            outcomes(text),
            vec![
                (10, Ok("counts".into())),
                (17, Err(Dropped::NonStdTypes)),
                (22, Ok("largest".into())),
                (30, Ok("show".into())),
                (35, Err(Dropped::NonStdTypes)),
                (40, Ok("apply".into())),
                (46, Err(Dropped::SelfReceiver)),
                (51, Err(Dropped::NonStdTypes)),
                (56, Ok("parse_hex".into())),
                (61, Err(Dropped::Layout)),
                (66, Err(Dropped::NonStdTypes)),
            ]
        );
        let found = functions_in(text).unwrap();
        let Ok(counts) = &found[0].outcome else {
            panic!()
        };
        assert_eq!(
            counts.imports,
            vec![
                "use std::collections::HashMap;",
                "use std::collections::hash_map::Entry as E;",
                "use std::fmt;",
                "use std::fmt::Write as _;",
                "use std::borrow::Cow;",
            ]
        );
        assert_eq!(counts.doc, "/// Counts.\n");
        assert_eq!(
            counts.signature,
            "fn counts(words: &[&str]) -> HashMap<String, usize> {\n"
        );
        assert_eq!(counts.body, "    HashMap::new()\n}");
        assert_eq!(counts.body_lines, 1);
        let Ok(largest) = &found[2].outcome else {
            panic!()
        };
        assert_eq!(
            largest.signature,
            "fn largest<T: PartialOrd + Copy, I>(items: I) -> Option<T>\nwhere\n    I: IntoIterator<Item = T>,\n{\n"
        );
        let Ok(parse_hex) = &found[8].outcome else {
            panic!()
        };
        assert_eq!(parse_hex.doc, "/// Standalone.\n");
        assert_eq!(
            parse_hex.signature,
            "fn parse_hex(s: &str) -> Option<u32> {\n"
        );
        assert_eq!(parse_hex.body, "    u32::from_str_radix(s, 16).ok()\n}");
    }

    #[test]
    fn docs_are_the_triple_slash_lines_and_examples_come_from_them() {
        let text = "    /// Doubles.\n    ///\n    #[inline]\n    /// ```\n    /// assert_eq!(double(2), 4);\n    /// ```\n    #[doc = \"not a line\"]\n    pub(crate) const fn double(\n        x: i32,\n    ) -> i32 {\n        let y = x;\n\n        y * 2\n    } // done\n";
        let found = functions_in(text).unwrap();
        let Ok(double) = &found[0].outcome else {
            panic!("{found:?}")
        };
        assert_eq!(
            double.doc,
            "/// Doubles.\n///\n/// ```\n/// assert_eq!(double(2), 4);\n/// ```\n"
        );
        assert_eq!(
            double.signature,
            "const fn double(\n    x: i32,\n) -> i32 {\n"
        );
        assert_eq!(double.body, "    let y = x;\n\n    y * 2\n}");
        assert_eq!(double.body_lines, 2);
        assert_eq!(
            double.examples,
            vec![Ok("assert_eq!(double(2), 4);".into())]
        );
        assert!(functions_in("fn broken( {").is_err());
    }
}
