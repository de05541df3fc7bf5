//! A generated Rust corpus for tests that train a model: fixed by its seed, so what a test trains
//! on (and every float rounding that follows from it) does not move when the project's own source
//! changes. Tests that trained on `libs/` broke on unrelated commits: a test comparing two
//! implementations of the same numbers up to rounding saw a different trained model each time.
//!
//! The text is syntactically plausible Rust (documented functions, structs and impls, loops,
//! matches, arithmetic), varied enough to train a byte-level BPE and a small model on.

use std::fmt::Write as _;
use std::path::Path;

use model::rng::SplitMix64;

const NOUNS: &[&str] = &[
    "count", "total", "index", "value", "buffer", "offset", "limit", "state", "label", "width",
    "height", "score", "weight", "item", "entry", "node", "edge", "token", "chunk", "window",
];
const VERBS: &[&str] = &[
    "compute", "merge", "scan", "split", "render", "collect", "update", "measure", "resolve",
    "encode", "decode", "visit", "fold", "clamp", "shift",
];
const TYPES: &[&str] = &["u32", "u64", "i64", "usize", "f64", "i32"];
const OPS: &[&str] = &["+", "-", "*", "^", "|", "&"];
const DOCS: &[&str] = &[
    "Returns the sum of the values seen so far.",
    "Folds every entry into one figure, keeping the order.",
    "Clamps the input to the window and reports how far it moved.",
    "Walks the nodes once and returns the last one that matched.",
    "Counts the items above the limit.",
    "Shifts each value by the offset, wrapping at the width.",
];

/// Writes `files` Rust files of about `lines_per_file` lines each into `dir`.
pub fn write_rust_corpus(dir: &Path, files: usize, lines_per_file: usize, seed: u64) {
    std::fs::create_dir_all(dir).unwrap();
    let mut rng = SplitMix64::new(seed);
    for f in 0..files {
        let mut text = String::new();
        while text.lines().count() < lines_per_file {
            match rng.below(3) {
                0 => struct_with_impl(&mut rng, &mut text),
                _ => function(&mut rng, &mut text),
            }
            text.push('\n');
        }
        std::fs::write(dir.join(format!("module_{f:03}.rs")), text).unwrap();
    }
}

fn pick<'a>(rng: &mut SplitMix64, words: &[&'a str]) -> &'a str {
    words[rng.below(words.len() as u64) as usize]
}

fn name(rng: &mut SplitMix64) -> String {
    format!("{}_{}", pick(rng, VERBS), pick(rng, NOUNS))
}

fn function(rng: &mut SplitMix64, out: &mut String) {
    let ty = pick(rng, TYPES);
    let (a, b) = (pick(rng, NOUNS), pick(rng, NOUNS));
    let b = if a == b { "other" } else { b };
    writeln!(out, "/// {}", pick(rng, DOCS)).unwrap();
    writeln!(
        out,
        "pub fn {}({a}: {ty}, {b}: &[{ty}]) -> {ty} {{",
        name(rng)
    )
    .unwrap();
    writeln!(out, "    let mut acc = {a};").unwrap();
    match rng.below(3) {
        0 => {
            writeln!(out, "    for x in {b}.iter() {{").unwrap();
            writeln!(out, "        acc = acc {} *x;", pick(rng, &OPS[..3])).unwrap();
            writeln!(out, "    }}").unwrap();
        }
        1 => {
            writeln!(out, "    match {b}.len() {{").unwrap();
            writeln!(out, "        0 => return {a},").unwrap();
            writeln!(out, "        1 => acc = {b}[0],").unwrap();
            writeln!(out, "        n => acc = {b}[n - 1],").unwrap();
            writeln!(out, "    }}").unwrap();
        }
        _ => {
            writeln!(out, "    let mut i = 0;").unwrap();
            writeln!(out, "    while i < {b}.len() && {b}[i] > acc {{").unwrap();
            writeln!(out, "        acc = {b}[i];").unwrap();
            writeln!(out, "        i += 1;").unwrap();
            writeln!(out, "    }}").unwrap();
        }
    }
    if !ty.starts_with('f') {
        let op = pick(rng, OPS);
        writeln!(out, "    acc {op} {}", rng.below(64)).unwrap();
    } else {
        writeln!(out, "    acc * {}.5", rng.below(9)).unwrap();
    }
    writeln!(out, "}}").unwrap();
}

fn struct_with_impl(rng: &mut SplitMix64, out: &mut String) {
    let ty = pick(rng, TYPES);
    let noun = pick(rng, NOUNS);
    let mut title = noun.to_string();
    title[..1].make_ascii_uppercase();
    let field = pick(rng, NOUNS);
    writeln!(out, "#[derive(Clone, Debug, Default)]").unwrap();
    writeln!(out, "pub struct {title} {{").unwrap();
    writeln!(out, "    {field}: {ty},").unwrap();
    writeln!(out, "    items: Vec<{ty}>,").unwrap();
    writeln!(out, "}}\n").unwrap();
    writeln!(out, "impl {title} {{").unwrap();
    writeln!(out, "    pub fn new({field}: {ty}) -> Self {{").unwrap();
    writeln!(out, "        Self {{ {field}, items: Vec::new() }}").unwrap();
    writeln!(out, "    }}\n").unwrap();
    writeln!(out, "    /// {}", pick(rng, DOCS)).unwrap();
    writeln!(out, "    pub fn {}(&mut self, x: {ty}) {{", name(rng)).unwrap();
    writeln!(out, "        if x > self.{field} {{").unwrap();
    writeln!(out, "            self.items.push(x);").unwrap();
    writeln!(out, "        }} else {{").unwrap();
    writeln!(out, "            self.{field} = x;").unwrap();
    writeln!(out, "        }}").unwrap();
    writeln!(out, "    }}").unwrap();
    writeln!(out, "}}").unwrap();
}
