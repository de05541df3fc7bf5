//! Function-level training data from a corpus of Rust sources (issue 26): documented functions
//! over std types as (doc + signature → body) pairs in the layout of the evaluation's prompts,
//! each compiling on its own, and their doc-comment examples as tests in the MultiPL-E layout,
//! prompts whose reward can be "the tests pass".
//!
//! It lives in libs/eval because everything it is checked against is here: the prompt layout and
//! how a program is assembled from prompt, body and tests ([`crate::extract`]), the sandboxed
//! rustc ([`crate::check`]), syn, and the evaluation-prompt rule ([`crate::contamination`]); a
//! crate of its own would depend on all of it. No printing, no exiting: `tokenize functions`
//! decides that.
//!
//! The steps, each dropping functions for a reason the summary counts:
//! 1. [`functions`], every file in parallel: the documented functions; dropped for a `self`
//!    receiver, a type in the signature that is not std's, or braces not where a prompt and body
//!    need them (layout: also a body that eval-compile would cut elsewhere).
//! 2. A body too short or too long, or one eval-compile would call trivial (`panic!`, `todo!()`);
//!    a function that holds an evaluation prompt; a duplicate (the whole function, whitespace
//!    collapsed; the first in walk order stays).
//! 3. [`batches`]: compiled many to a rustc run, each as `prompt + body` exactly as eval-compile
//!    builds it; rustc also says which of the module's std imports each one uses, and only those
//!    stay in its prompt.
//! 4. The kept functions' doc examples ([`examples`]) run as tests against the original body,
//!    batched the same way; a function with at least one passing example becomes a task.

mod batches;
mod examples;
mod functions;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;

use crate::check::Sandbox;
use crate::contamination::{normalize, EvalPrompts};
use crate::extract::{extract_body, library_program};
use crate::prompts::Task;
use crate::syntax::trivial_reason;
pub use examples::ExampleSkip;
use functions::{functions_in, Candidate, Found};

/// Why a documented function is not a pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dropped {
    SelfReceiver,
    NonStdTypes,
    Layout,
    BodyTooShort,
    BodyTooLong,
    /// A body eval-compile counts as no answer (`panic!`, `todo!()`, a lone literal...).
    Trivial,
    EvaluationPrompt,
    Duplicate,
    DoesNotCompile,
}

impl Dropped {
    pub const ALL: [Dropped; 9] = [
        Dropped::SelfReceiver,
        Dropped::NonStdTypes,
        Dropped::Layout,
        Dropped::BodyTooShort,
        Dropped::BodyTooLong,
        Dropped::Trivial,
        Dropped::EvaluationPrompt,
        Dropped::Duplicate,
        Dropped::DoesNotCompile,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Dropped::SelfReceiver => "self_receiver",
            Dropped::NonStdTypes => "non_std_types",
            Dropped::Layout => "layout",
            Dropped::BodyTooShort => "body_too_short",
            Dropped::BodyTooLong => "body_too_long",
            Dropped::Trivial => "trivial",
            Dropped::EvaluationPrompt => "evaluation_prompt",
            Dropped::Duplicate => "duplicate",
            Dropped::DoesNotCompile => "does_not_compile",
        }
    }
}

/// What became of a doc example run as a test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExampleVerdict {
    Passes,
    DoesNotCompile,
    /// Failed, crashed, or ran past the time limit.
    Fails,
}

/// A file to read, and how the output names it (`source` of a pair: `label:line`).
#[derive(Clone, Debug)]
pub struct SourceFile {
    pub path: PathBuf,
    pub label: String,
}

#[derive(Clone, Debug)]
pub struct HarvestOptions {
    /// Bounds on a body's non-blank lines.
    pub min_body_lines: usize,
    pub max_body_lines: usize,
    /// Functions per rustc run.
    pub batch_size: usize,
    /// Files read and batches checked at once.
    pub jobs: usize,
}

/// A training pair: the prompt as the evaluation lays it out (std imports, doc lines, signature
/// ending in `{\n`), the body up to and including the closing brace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Pair {
    pub name: String,
    pub prompt: String,
    pub completion: String,
    /// `file:line` of the signature.
    pub source: String,
}

/// The counts of a harvest (`summary.json`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct HarvestSummary {
    /// Files parsed.
    pub files: usize,
    /// Unreadable or not UTF-8.
    pub unreadable_files: usize,
    /// Not Rust that syn parses (or starting with a `#!` line).
    pub unparsed_files: usize,
    /// Documented free and associated functions.
    pub functions_found: usize,
    /// Per reason (see [`Dropped`]), the first that applies.
    pub dropped: BTreeMap<&'static str, usize>,
    pub pairs: usize,
    /// Code blocks in the docs of the pairs' functions.
    pub examples_found: usize,
    pub examples_dropped: BTreeMap<&'static str, usize>,
    /// Examples kept as tests.
    pub tests: usize,
    /// Functions with at least one test: the records of tests.jsonl.
    pub test_tasks: usize,
    pub compile_runs: usize,
    pub test_runs: usize,
    pub extract_seconds: f64,
    pub compile_seconds: f64,
    pub test_seconds: f64,
}

/// The pairs, the test tasks, and the counts.
pub struct Harvest {
    pub pairs: Vec<Pair>,
    pub tests: Vec<Task>,
    pub summary: HarvestSummary,
}

/// The long parts of a harvest, for progress display.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Reading,
    Compiling,
    Testing,
}

/// What [`harvest`] reports as it goes.
#[derive(Clone, Copy, Debug)]
pub enum Progress {
    /// A stage starts, with this many files or functions to go through.
    Start(Stage, usize),
    /// This many more done.
    Done(usize),
}

/// A candidate past the cheap checks, with where it came from.
struct Screened {
    candidate: Candidate,
    source: String,
}

/// Runs every step on `files`. `Err` only when the checker itself fails.
pub fn harvest(
    files: &[SourceFile],
    evaluation: &EvalPrompts,
    sandbox: &Sandbox,
    options: &HarvestOptions,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<Harvest, String> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(options.jobs.max(1))
        .build()
        .map_err(|e| format!("cannot start {} threads: {e}", options.jobs))?;
    let mut summary = HarvestSummary {
        dropped: Dropped::ALL.iter().map(|d| (d.as_str(), 0)).collect(),
        ..HarvestSummary::default()
    };

    let started = Instant::now();
    progress(Progress::Start(Stage::Reading, files.len()));
    let per_file: Vec<FileFunctions> = pool.install(|| {
        files
            .par_iter()
            .map(|file| {
                let found = read_functions(file);
                progress(Progress::Done(1));
                found
            })
            .collect()
    });
    let screened = screen(files, per_file, evaluation, options, &mut summary);
    summary.extract_seconds = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let tasks: Vec<Task> = screened.iter().map(|s| task_of(&s.candidate)).collect();
    let programs: Vec<String> = tasks
        .iter()
        .zip(&screened)
        .map(|(task, s)| library_program(task, body_of(&s.candidate)))
        .collect();
    progress(Progress::Start(Stage::Compiling, programs.len()));
    let (compiled, runs) = in_batches(&pool, &programs, options.batch_size, |batch, runs| {
        let batch: Vec<&str> = batch.iter().map(String::as_str).collect();
        let verdicts = batches::compile_batch(sandbox, &batch, runs);
        progress(Progress::Done(batch.len()));
        verdicts
    })?;
    summary.compile_runs = runs;
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut kept = Vec::new();
    for (s, verdict) in screened.into_iter().zip(compiled) {
        let Some(unused_lines) = verdict else {
            *summary
                .dropped
                .entry(Dropped::DoesNotCompile.as_str())
                .or_default() += 1;
            continue;
        };
        let mut candidate = s.candidate;
        // Import i is line i of the program: the prompt starts with them.
        candidate.imports = std::mem::take(&mut candidate.imports)
            .into_iter()
            .enumerate()
            .filter(|(line, _)| !unused_lines.contains(line))
            .map(|(_, import)| import)
            .collect();
        let count = names.entry(candidate.name.clone()).or_default();
        *count += 1;
        let name = match *count {
            1 => candidate.name.clone(),
            n => format!("{}_{n}", candidate.name),
        };
        let pair = Pair {
            name,
            prompt: prompt_of(&candidate),
            completion: candidate.body.clone(),
            source: s.source,
        };
        kept.push((pair, candidate.examples));
    }
    summary.pairs = kept.len();
    summary.compile_seconds = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let tests = test_examples(&pool, sandbox, &kept, options, progress, &mut summary)?;
    summary.test_seconds = started.elapsed().as_secs_f64();
    Ok(Harvest {
        pairs: kept.into_iter().map(|(pair, _)| pair).collect(),
        tests,
        summary,
    })
}

/// One file's documented functions, or why there are none to read.
enum FileFunctions {
    Unreadable,
    Unparsed,
    Found(Vec<Found>),
}

fn read_functions(file: &SourceFile) -> FileFunctions {
    let Ok(text) = std::fs::read_to_string(&file.path) else {
        return FileFunctions::Unreadable;
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    // syn drops a `#!` line before parsing, which would move every token position.
    if text.starts_with("#!") && !text.starts_with("#![") {
        return FileFunctions::Unparsed;
    }
    match functions_in(text) {
        Ok(found) => FileFunctions::Found(found),
        Err(_) => FileFunctions::Unparsed,
    }
}

/// Step 2 over every file's functions, in walk order: the candidates that pass, the rest counted.
fn screen(
    files: &[SourceFile],
    per_file: Vec<FileFunctions>,
    evaluation: &EvalPrompts,
    options: &HarvestOptions,
    summary: &mut HarvestSummary,
) -> Vec<Screened> {
    let mut seen = HashSet::new();
    let mut screened = Vec::new();
    for (file, functions) in files.iter().zip(per_file) {
        let found = match functions {
            FileFunctions::Unreadable => {
                summary.unreadable_files += 1;
                continue;
            }
            FileFunctions::Unparsed => {
                summary.unparsed_files += 1;
                continue;
            }
            FileFunctions::Found(found) => found,
        };
        summary.files += 1;
        for function in found {
            summary.functions_found += 1;
            let checked = function.outcome.and_then(|candidate| {
                let task = task_of(&candidate);
                let whole = format!("{}{}", task.prompt, candidate.body);
                let key = || {
                    let function = [&candidate.doc, &candidate.signature, &candidate.body];
                    normalize(&function.map(String::as_str).concat())
                };
                let extracted = extract_body(&task.prompt, &candidate.body, &task.stops());
                if extracted.body.trim_end() != body_of(&candidate).trim_end() {
                    Err(Dropped::Layout)
                } else if candidate.body_lines < options.min_body_lines {
                    Err(Dropped::BodyTooShort)
                } else if candidate.body_lines > options.max_body_lines {
                    Err(Dropped::BodyTooLong)
                } else if trivial_reason(body_of(&candidate)).is_some() {
                    Err(Dropped::Trivial)
                } else if evaluation.found_in(&whole).is_some() {
                    Err(Dropped::EvaluationPrompt)
                } else if !seen.insert(key()) {
                    Err(Dropped::Duplicate)
                } else {
                    Ok(candidate)
                }
            });
            match checked {
                Ok(candidate) => screened.push(Screened {
                    candidate,
                    source: format!("{}:{}", file.label, function.line),
                }),
                Err(reason) => *summary.dropped.entry(reason.as_str()).or_default() += 1,
            }
        }
    }
    screened
}

/// The prompt: the std imports (then a blank line), the doc lines, the signature.
fn prompt_of(candidate: &Candidate) -> String {
    let mut prompt = String::new();
    for import in &candidate.imports {
        prompt.push_str(import);
        prompt.push('\n');
    }
    if !candidate.imports.is_empty() {
        prompt.push('\n');
    }
    prompt.push_str(&candidate.doc);
    prompt.push_str(&candidate.signature);
    prompt
}

/// The body as eval-compile extracts it: the completion without its closing brace.
fn body_of(candidate: &Candidate) -> &str {
    candidate.body.strip_suffix('}').unwrap_or(&candidate.body)
}

fn task_of(candidate: &Candidate) -> Task {
    Task {
        name: candidate.name.clone(),
        prompt: prompt_of(candidate),
        tests: None,
        stop_tokens: Vec::new(),
    }
}

/// `check` on consecutive batches of `items`, batches in parallel on `pool`; the results in order
/// and the rustc runs of all of them.
fn in_batches<T: Sync, R: Send>(
    pool: &rayon::ThreadPool,
    items: &[T],
    batch_size: usize,
    check: impl Fn(&[T], &mut usize) -> Result<Vec<R>, String> + Sync,
) -> Result<(Vec<R>, usize), String> {
    let per_batch: Vec<(Vec<R>, usize)> = pool.install(|| {
        items
            .par_chunks(batch_size.max(1))
            .map(|batch| {
                let mut runs = 0;
                check(batch, &mut runs).map(|results| (results, runs))
            })
            .collect::<Result<_, _>>()
    })?;
    let runs = per_batch.iter().map(|(_, runs)| runs).sum();
    Ok((per_batch.into_iter().flat_map(|(r, _)| r).collect(), runs))
}

/// Step 4: the doc examples of the kept functions as tests; a task per function with one that
/// passes.
fn test_examples(
    pool: &rayon::ThreadPool,
    sandbox: &Sandbox,
    kept: &[(Pair, Vec<Result<String, ExampleSkip>>)],
    options: &HarvestOptions,
    progress: &(dyn Fn(Progress) + Sync),
    summary: &mut HarvestSummary,
) -> Result<Vec<Task>, String> {
    let mut dropped: BTreeMap<&'static str, usize> = BTreeMap::new();
    for skip in [
        ExampleSkip::NotRun,
        ExampleSkip::NoAssertion,
        ExampleSkip::HasMain,
        ExampleSkip::NonStdUse,
        ExampleSkip::DoesNotParse,
    ] {
        dropped.insert(skip.as_str(), 0);
    }
    dropped.insert("does_not_compile", 0);
    dropped.insert("fails", 0);
    let mut units = Vec::new();
    let mut owners = Vec::new();
    for (index, (pair, examples)) in kept.iter().enumerate() {
        summary.examples_found += examples.len();
        let mut codes = Vec::new();
        for example in examples {
            match example {
                Ok(code) => codes.push(code.as_str()),
                Err(skip) => *dropped.entry(skip.as_str()).or_default() += 1,
            }
        }
        if !codes.is_empty() {
            units.push(batches::TestUnit {
                prompt: &pair.prompt,
                body: pair
                    .completion
                    .strip_suffix('}')
                    .unwrap_or(&pair.completion),
                examples: codes,
            });
            owners.push(index);
        }
    }
    progress(Progress::Start(Stage::Testing, units.len()));
    let (verdicts, runs) = in_batches(pool, &units, options.batch_size, |batch, runs| {
        let verdicts = batches::test_batch(sandbox, batch, runs);
        progress(Progress::Done(batch.len()));
        verdicts
    })?;
    summary.test_runs = runs;
    let mut tasks = Vec::new();
    for ((unit, index), verdicts) in units.iter().zip(owners).zip(verdicts) {
        let mut passing = Vec::new();
        for (code, verdict) in unit.examples.iter().zip(verdicts) {
            match verdict {
                ExampleVerdict::Passes => passing.push(*code),
                ExampleVerdict::DoesNotCompile => {
                    *dropped.entry("does_not_compile").or_default() += 1
                }
                ExampleVerdict::Fails => *dropped.entry("fails").or_default() += 1,
            }
        }
        if passing.is_empty() {
            continue;
        }
        summary.tests += passing.len();
        let pair = &kept[index].0;
        tasks.push(Task {
            name: pair.name.clone(),
            prompt: pair.prompt.clone(),
            tests: Some(examples::tests_text(&passing)),
            stop_tokens: Vec::new(),
        });
    }
    summary.test_tasks = tasks.len();
    summary.examples_dropped = dropped;
    Ok(tasks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::CheckOptions;

    /// A fake crate: a documented function with a doc example (its crate path and import to drop),
    /// a method, an associated function over std types with a failing and a passing example, one
    /// over the crate's type, one that needs the crate to compile, a copy of the first in another
    /// file (reformatted), and an evaluation prompt.
    const LIB: &str = r#"use std::collections::HashMap;
use std::fmt;

/// Counts each word of `text`.
///
/// ```
/// use fake::word_counts;
/// let counts = fake::word_counts("a b a");
/// assert_eq!(counts["a"], 2);
/// ```
pub fn word_counts(text: &str) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for word in text.split_whitespace() {
        *counts.entry(word.to_string()).or_insert(0) += 1;
    }
    counts
}

pub struct Meters(f64);

impl Meters {
    /// The length in feet.
    pub fn feet(&self) -> f64 {
        let m = self.0;
        m * 3.28084
    }

    /// Parses meters.
    pub fn parse(text: &str) -> Option<Meters> {
        let value = text.parse().ok()?;
        Some(Meters(value))
    }

    /// Whether `n` is even.
    ///
    /// ```
    /// assert!(Meters::is_even(3));
    /// ```
    ///
    /// ```
    /// # use fake::Meters;
    /// assert!(!Meters::is_even(3));
    /// assert!(Meters::is_even(4));
    /// ```
    ///
    /// ```
    /// assert!(is_even(undefined));
    /// ```
    pub fn is_even(n: u32) -> bool {
        let half = n / 2;
        half * 2 == n
    }
}

/// Not written yet.
pub fn later(x: u8) -> u8 {
    // Some day.
    todo!()
}

/// Needs the crate.
pub fn helper_user(x: u8) -> u8 {
    let y = private_helper(x);
    y + 1
}

fn private_helper(x: u8) -> u8 {
    x
}

impl fmt::Display for Meters {
    /// Shows it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} m", self.0)
    }
}

/// Doubles `x`, the evaluation's task.
fn double(x: i32) -> i32 {
    let y = x;
    y * 2
}
"#;

    const COPY: &str = "use std::collections::HashMap;\n\n/// Counts each word of `text`.\n///\n/// ```\n/// use fake::word_counts;\n/// let counts = fake::word_counts(\"a b a\");\n/// assert_eq!(counts[\"a\"], 2);\n/// ```\npub fn word_counts(text: &str) -> HashMap<String, usize> {\n    let mut counts = HashMap::new();\n    for word in text.split_whitespace() { *counts.entry(word.to_string()).or_insert(0) += 1; }\n    counts\n}\n";

    const EVALUATION: &str = r#"{"name": "rs_double", "prompt": "/// Doubles `x`, the evaluation's task.\nfn double(x: i32) -> i32 {\n"}"#;

    fn sandbox() -> Sandbox {
        // The code compiled here is this test's own: unconfined is safe where bubblewrap is not.
        Sandbox::new(CheckOptions::default()).unwrap_or_else(|_| {
            Sandbox::new(CheckOptions {
                no_sandbox: true,
                ..CheckOptions::default()
            })
            .expect("rustc runs")
        })
    }

    #[test]
    fn a_fake_crate_gives_the_expected_pairs_and_tests() {
        let dir = tempfile::tempdir().unwrap();
        let files: Vec<SourceFile> = [("lib.rs", LIB), ("copy.rs", COPY), ("broken.rs", "fn (")]
            .iter()
            .map(|(name, text)| {
                let path = dir.path().join(name);
                std::fs::write(&path, text).unwrap();
                SourceFile {
                    path,
                    label: format!("fake/{name}"),
                }
            })
            .collect();
        let mut evaluation = EvalPrompts::default();
        evaluation.add_set("eval.jsonl", EVALUATION).unwrap();
        let options = HarvestOptions {
            min_body_lines: 2,
            max_body_lines: 40,
            batch_size: 100,
            jobs: 2,
        };
        let harvest = harvest(&files, &evaluation, &sandbox(), &options, &|_| {}).unwrap();

        let s = &harvest.summary;
        assert_eq!((s.files, s.unparsed_files, s.functions_found), (2, 1, 9));
        let dropped: Vec<(&str, usize)> = s.dropped.iter().map(|(k, v)| (*k, *v)).collect();
        assert_eq!(
            dropped,
            vec![
                ("body_too_long", 0),
                ("body_too_short", 0),
                ("does_not_compile", 1),
                ("duplicate", 1),
                ("evaluation_prompt", 1),
                ("layout", 0),
                ("non_std_types", 1),
                ("self_receiver", 2),
                ("trivial", 1),
            ]
        );
        let word_counts_doc = "/// Counts each word of `text`.\n///\n/// ```\n/// use fake::word_counts;\n/// let counts = fake::word_counts(\"a b a\");\n/// assert_eq!(counts[\"a\"], 2);\n/// ```\n";
        assert_eq!(
            harvest.pairs,
            vec![
                Pair {
                    name: "word_counts".into(),
                    prompt: format!(
                        "use std::collections::HashMap;\n\n{word_counts_doc}fn word_counts(text: &str) -> HashMap<String, usize> {{\n"
                    ),
                    completion: "    let mut counts = HashMap::new();\n    for word in text.split_whitespace() {\n        *counts.entry(word.to_string()).or_insert(0) += 1;\n    }\n    counts\n}".into(),
                    source: "fake/lib.rs:11".into(),
                },
                Pair {
                    name: "is_even".into(),
                    prompt: "/// Whether `n` is even.\n///\n/// ```\n/// assert!(Meters::is_even(3));\n/// ```\n///\n/// ```\n/// # use fake::Meters;\n/// assert!(!Meters::is_even(3));\n/// assert!(Meters::is_even(4));\n/// ```\n///\n/// ```\n/// assert!(is_even(undefined));\n/// ```\nfn is_even(n: u32) -> bool {\n".into(),
                    completion: "    let half = n / 2;\n    half * 2 == n\n}".into(),
                    source: "fake/lib.rs:49".into(),
                },
            ]
        );
        assert_eq!((s.examples_found, s.tests, s.test_tasks), (4, 2, 2));
        assert_eq!(s.examples_dropped["fails"], 1);
        assert_eq!(s.examples_dropped["does_not_compile"], 1);
        let tests: Vec<(&str, Option<&str>)> = harvest
            .tests
            .iter()
            .map(|t| (t.name.as_str(), t.tests.as_deref()))
            .collect();
        let word_counts_tests = examples::tests_text(&[
            "let counts = word_counts(\"a b a\");\nassert_eq!(counts[\"a\"], 2);",
        ]);
        let is_even_tests = examples::tests_text(&["assert!(!is_even(3));\nassert!(is_even(4));"]);
        assert_eq!(
            tests,
            vec![
                ("word_counts", Some(word_counts_tests.as_str())),
                ("is_even", Some(is_even_tests.as_str())),
            ]
        );
        assert_eq!(harvest.tests[0].prompt, harvest.pairs[0].prompt);
    }
}
