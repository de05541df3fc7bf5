//! `tokenize functions`: function-level data from the corpus (issue 26). Every documented function
//! over std types becomes a (doc + signature → body) pair in the evaluation's prompt layout, kept
//! when it compiles on its own, is not a duplicate and holds no evaluation prompt; its doc
//! examples that pass against it become a task with tests (libs/eval `harvest` does the work, with
//! the sandboxed rustc eval-compile uses). Writes DIR/pairs.jsonl, DIR/tests.jsonl and
//! DIR/summary.json, each atomically, pairs.jsonl (the pipeline's target) last.

use crate::train::{list, walk_corpus};
use crate::{print_json, Failure};
use eval::contamination::EvalPrompts;
use eval::harvest::{harvest, HarvestOptions, HarvestSummary, Progress, SourceFile, Stage};
use eval::{CheckOptions, Sandbox};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const HELP: &str = "\
Example (the pipeline's, `make functions`):
  tokenize functions --input runs/tiny/corpus --out runs/tiny/functions --prompts \\
      data/prompts/rust_tasks.jsonl data/prompts/rl_train.jsonl data/prompts/rl_warmup.jsonl

Every documented free or associated function (a `///` comment, no `self`, only std types in its
signature: primitives, String, Vec, Option, Result, Box, what its module imports from std, generic
parameters) whose body has --min-body-lines to --max-body-lines lines becomes a pair, written to
DIR/pairs.jsonl as {\"name\", \"prompt\", \"completion\", \"source\"}: the prompt as the
evaluation lays it out (the std imports the function uses, its doc lines, its signature ending in
`{`), the completion its body through the closing brace, the source `file:line`. A pair is kept
when it compiles on its own (rustc inside bubblewrap, --batch-size functions a run), is not a
duplicate (the whole function, whitespace collapsed) and holds no prompt of --prompts (its
signature and every doc line: scripts/corpus.py's rule, so nothing the corpus step excludes
comes back here).

Doc examples (``` blocks rustdoc would run, with assert!/assert_eq!/assert_ne!, using only std and
the function) run as #[test]s against the original body; those that pass make DIR/tests.jsonl, a
prompt set in the MultiPL-E layout ({\"name\", \"prompt\", \"tests\"}) that eval-compile and
maxrl read. Check it: eval-compile --prompts DIR/tests.jsonl --completions DIR/pairs.jsonl passes
every task. DIR/summary.json counts the functions found, kept and dropped by reason, and the
examples kept and dropped. Files appear whole or not at all; pairs.jsonl is written last.

Exit status: 0 ok, 1 the job failed, 2 bad usage or bad input (one line on stderr).";

/// Extract documented std-only functions as training pairs and their doc examples as tests.
#[derive(Debug, clap::Args)]
#[command(after_help = HELP)]
pub struct FunctionsArgs {
    /// Folders (or single files) whose .rs files are read.
    ///
    /// Example: --input runs/tiny/corpus
    #[arg(long, value_name = "DIR", num_args = 1.., required = true)]
    input: Vec<PathBuf>,

    /// Prompt sets (JSONL, any record with a "prompt") whose functions must never be in the
    /// output: every set the model is evaluated on. The rule is scripts/corpus.py's.
    ///
    /// Example: --prompts data/prompts/rust_tasks.jsonl ../shared/benchmarks/humaneval_rs.jsonl
    #[arg(long, value_name = "FILE", num_args = 1.., required = true)]
    prompts: Vec<PathBuf>,

    /// Folder for pairs.jsonl, tests.jsonl and summary.json (made if missing).
    ///
    /// Example: --out runs/tiny/functions
    #[arg(long, value_name = "DIR")]
    out: PathBuf,

    /// Fewest non-blank lines of a body.
    #[arg(long, value_name = "N", default_value_t = 3)]
    min_body_lines: usize,

    /// Most non-blank lines of a body.
    #[arg(long, value_name = "N", default_value_t = 40)]
    max_body_lines: usize,

    /// Functions compiled (or tested) per rustc run.
    #[arg(long, value_name = "N", default_value_t = 100)]
    batch_size: usize,

    /// Files read and batches checked at once (default: one per core).
    #[arg(long, value_name = "N")]
    jobs: Option<usize>,

    /// Leave out files whose path contains this text, or matches it as a glob when it has * or ?
    /// (* also matches /). Repeatable.
    ///
    /// Example: --exclude '*/tests/*'
    #[arg(long, value_name = "PATTERN")]
    exclude: Vec<String>,

    /// The bubblewrap binary that confines compiles and test runs (default: $NANOCHAT_BWRAP,
    /// the project's .tools/usr/bin/bwrap from `make sandbox`, or bwrap on the PATH).
    #[arg(long, value_name = "PATH")]
    bwrap: Option<PathBuf>,

    /// Compile and run the corpus's code UNCONFINED where bubblewrap cannot run.
    #[arg(long)]
    no_sandbox: bool,

    /// Also print the summary as one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

/// A batch file of 100 functions takes rustc about a second, its test build a few: room for a
/// slow machine. A test binary runs one example after another; a hang costs the limit once, then
/// the batch runs again without it.
const BATCH_COMPILE_TIMEOUT: Duration = Duration::from_secs(120);
const BATCH_RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// summary.json: the run's settings and the harvest's counts.
#[derive(Debug, serde::Serialize)]
struct FunctionsSummary<'a> {
    inputs: Vec<String>,
    prompt_sets: Vec<String>,
    evaluation_prompts: usize,
    min_body_lines: usize,
    max_body_lines: usize,
    batch_size: usize,
    sandbox: String,
    #[serde(flatten)]
    harvest: &'a HarvestSummary,
    seconds: f64,
}

pub fn run(args: &FunctionsArgs) -> Result<(), Failure> {
    if args.batch_size == 0 || args.min_body_lines > args.max_body_lines {
        return Err(Failure::Input(format!(
            "--batch-size must be at least 1 and --min-body-lines ({}) at most --max-body-lines ({})",
            args.min_body_lines, args.max_body_lines
        )));
    }
    if args.out.exists() && !args.out.is_dir() {
        return Err(Failure::Input(format!(
            "{}: --out is a file, expected a folder",
            args.out.display()
        )));
    }
    let start = Instant::now();
    let evaluation = EvalPrompts::load(&args.prompts).map_err(Failure::Input)?;
    let corpus = walk_corpus(&args.input, &args.exclude)?;
    let sandbox = Sandbox::new(CheckOptions {
        compile_timeout: BATCH_COMPILE_TIMEOUT,
        run_timeout: BATCH_RUN_TIMEOUT,
        bwrap: args.bwrap.clone(),
        no_sandbox: args.no_sandbox,
        ..CheckOptions::default()
    })
    .map_err(Failure::Input)?;
    std::fs::create_dir_all(&args.out).map_err(|e| {
        Failure::Input(format!(
            "{}: cannot make the folder: {e}",
            args.out.display()
        ))
    })?;
    let files: Vec<SourceFile> = corpus
        .files
        .iter()
        .map(|f| SourceFile {
            path: f.path.clone(),
            label: f.path.display().to_string(),
        })
        .collect();
    let options = HarvestOptions {
        min_body_lines: args.min_body_lines,
        max_body_lines: args.max_body_lines,
        batch_size: args.batch_size,
        jobs: args.jobs.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get)
        }),
    };
    eprintln!(
        "tokenize functions: {} files under {}, {} evaluation prompts to keep out",
        files.len(),
        list(&args.input),
        evaluation.len()
    );
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{prefix:>10} [{bar:30}] {pos}/{len} {elapsed} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let progress = |event: Progress| match event {
        Progress::Start(stage, total) => {
            bar.set_prefix(match stage {
                Stage::Reading => "reading",
                Stage::Compiling => "compiling",
                Stage::Testing => "testing",
            });
            bar.set_length(total as u64);
            bar.set_position(0);
        }
        Progress::Done(n) => bar.inc(n as u64),
    };
    let harvested =
        harvest(&files, &evaluation, &sandbox, &options, &progress).map_err(Failure::Job)?;
    bar.finish_and_clear();

    let summary = FunctionsSummary {
        inputs: args.input.iter().map(|p| p.display().to_string()).collect(),
        prompt_sets: args
            .prompts
            .iter()
            .map(|p| p.display().to_string())
            .collect(),
        evaluation_prompts: evaluation.len(),
        min_body_lines: args.min_body_lines,
        max_body_lines: args.max_body_lines,
        batch_size: args.batch_size,
        sandbox: sandbox.isolation_summary(),
        harvest: &harvested.summary,
        seconds: start.elapsed().as_secs_f64(),
    };
    write_jsonl(&args.out.join("tests.jsonl"), &harvested.tests)?;
    let json = serde_json::to_string_pretty(&summary)
        .map_err(|e| Failure::Job(format!("cannot serialize the summary: {e}")))?;
    write(
        &args.out.join("summary.json"),
        format!("{json}\n").as_bytes(),
    )?;
    write_jsonl(&args.out.join("pairs.jsonl"), &harvested.pairs)?;
    eprintln!("{}", describe(&summary, &args.out));
    if args.json {
        print_json(&summary)?;
    }
    Ok(())
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), Failure> {
    tokens::write_atomic(path, bytes)
        .map_err(|e| Failure::Job(format!("{}: cannot write: {e}", path.display())))
}

/// One JSON object a line.
fn write_jsonl<T: serde::Serialize>(path: &Path, records: &[T]) -> Result<(), Failure> {
    let mut text = String::new();
    for record in records {
        let line = serde_json::to_string(record)
            .map_err(|e| Failure::Job(format!("cannot serialize a record: {e}")))?;
        text.push_str(&line);
        text.push('\n');
    }
    write(path, text.as_bytes())
}

/// `reason 12, other 0` of some counts.
fn counts(map: &std::collections::BTreeMap<&'static str, usize>) -> String {
    let parts: Vec<String> = map
        .iter()
        .map(|(reason, n)| format!("{} {n}", reason.replace('_', " ")))
        .collect();
    parts.join(", ")
}

/// The summary in a few lines of text.
fn describe(s: &FunctionsSummary, out: &Path) -> String {
    let h = s.harvest;
    format!(
        "tokenize functions: {} files read ({} unparsed, {} unreadable), {} documented functions -> {} pairs\n  \
         dropped: {}\n  \
         {} doc examples of the pairs -> {} tests in {} tasks; dropped: {}\n  \
         {:.1} s reading, {:.1} s compiling ({} rustc runs), {:.1} s testing ({} runs), {:.1} s in all -> {}",
        h.files,
        h.unparsed_files,
        h.unreadable_files,
        h.functions_found,
        h.pairs,
        counts(&h.dropped),
        h.examples_found,
        h.tests,
        h.test_tasks,
        counts(&h.examples_dropped),
        h.extract_seconds,
        h.compile_seconds,
        h.compile_runs,
        h.test_seconds,
        h.test_runs,
        s.seconds,
        out.display()
    )
}
