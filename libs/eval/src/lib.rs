//! Judging generated Rust by the Rust compiler.
//!
//! - [`prompts`]: prompt sets (JSONL, the MultiPL-E layout).
//! - [`generate`]: completions from a model in process or an OpenAI-compatible server.
//! - [`extract`]: the generated function's body, and the programs built from it.
//! - [`syntax`]: trivial answers (`todo!()`, a lone literal...) and code metrics, by syn.
//! - [`check`]: compiling and running each sample in its own sandboxed temporary folder.
//! - [`metrics`]: the unbiased pass@k estimator.
//! - [`contamination`]: which texts hold an evaluation prompt (the corpus step's rule).
//! - [`harvest`]: function-level training data and tests from a corpus, checked by the same rustc.
//!
//! [`evaluate`] runs them in that order and returns every sample's verdict and the summary.
//! No printing, no exiting: eval-compile and maxrl decide that.

pub mod braces;
pub mod check;
pub mod contamination;
pub mod extract;
pub mod generate;
pub mod harvest;
pub mod metrics;
pub mod prompts;
pub mod syntax;

use std::collections::HashMap;
use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;

pub use check::{CheckOptions, CompileOutcome, Sandbox, TestOutcome};
pub use generate::{Backend, FromFile, Generated, InProcess, Job, Sampling, Server};
pub use prompts::{load_prompts, Task};
pub use syntax::CodeMetrics;

/// What became of one sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Compiles, the task has no tests.
    Compiles,
    /// Compiles and its tests pass.
    TestsPass,
    /// A degenerate body (`todo!()`, a lone literal, ...): a failure, whatever the compiler says.
    Trivial,
    CompileError,
    /// rustc ran past its time limit.
    CompileTimeout,
    /// Compiles, but its tests fail (or crash, or do not compile with the body).
    TestsFail,
    /// Compiles, but the tests were still running at the time limit: killed.
    TestTimeout,
    /// The backend returned no completion.
    GenerationError,
}

impl Verdict {
    /// The reward of reinforcement learning and the success of every rate: compiles and is not
    /// trivial, and passes its tests when the task has tests.
    pub fn success(self) -> bool {
        matches!(self, Verdict::Compiles | Verdict::TestsPass)
    }

    /// Compiles as a library and is not trivial (the tests may still fail).
    pub fn compiled(self) -> bool {
        matches!(
            self,
            Verdict::Compiles | Verdict::TestsPass | Verdict::TestsFail | Verdict::TestTimeout
        )
    }

    pub const ALL: [Verdict; 8] = [
        Verdict::Compiles,
        Verdict::TestsPass,
        Verdict::Trivial,
        Verdict::CompileError,
        Verdict::CompileTimeout,
        Verdict::TestsFail,
        Verdict::TestTimeout,
        Verdict::GenerationError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Compiles => "compiles",
            Verdict::TestsPass => "tests_pass",
            Verdict::Trivial => "trivial",
            Verdict::CompileError => "compile_error",
            Verdict::CompileTimeout => "compile_timeout",
            Verdict::TestsFail => "tests_fail",
            Verdict::TestTimeout => "test_timeout",
            Verdict::GenerationError => "generation_error",
        }
    }
}

/// One sample and its verdict (a line of the samples JSONL).
#[derive(Clone, Debug, Serialize)]
pub struct SampleRecord {
    pub task: String,
    pub sample: usize,
    pub seed: u64,
    /// The completion as generated.
    pub completion: String,
    /// The function body extracted from it.
    pub body: String,
    pub body_end: extract::BodyEnd,
    pub verdict: Verdict,
    /// 1 for a success, else 0.
    pub reward: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trivial: Option<&'static str>,
    /// Compiler errors: codes, or blanked messages for errors without one.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// Why the tests failed, or why generation did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// `None` when the body does not parse.
    pub metrics: Option<CodeMetrics>,
    pub tokens: usize,
}

/// How a run samples.
#[derive(Clone, Copy, Debug)]
pub struct EvalSettings {
    /// Samples per prompt.
    pub samples: usize,
    pub sampling: Sampling,
    /// Sample `s` of task `t` uses a seed derived from this, `t` and `s`.
    pub seed: u64,
    /// Checks run at once.
    pub jobs: usize,
}

/// The summary (eval.json).
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub model: String,
    pub prompts: usize,
    pub prompts_with_tests: usize,
    pub samples_per_prompt: usize,
    pub samples: usize,
    pub temperature: f32,
    pub top_p: f32,
    pub max_tokens: usize,
    pub seed: u64,
    /// Samples that compile and are not trivial, over all samples.
    pub compile_success_rate: f64,
    /// Successes (see [`Verdict::success`]) over all samples.
    pub success_rate: f64,
    /// Trivial bodies over all samples (each also a failure).
    pub trivial_rate: f64,
    /// Samples per verdict.
    pub verdicts: HashMap<&'static str, usize>,
    /// Trivial samples per kind (todo, panic, loop, literal, default, empty).
    pub trivial_kinds: HashMap<&'static str, usize>,
    /// Over the tasks with tests, unbiased estimator; keys are k. Empty without tests.
    pub pass_at_k: HashMap<String, f64>,
    /// The same over all tasks with compiling (non-trivial) as the success.
    pub compile_at_k: HashMap<String, f64>,
    /// Means over the non-trivial samples whose body parses.
    pub parsed_samples: usize,
    pub mean_lines: Option<f64>,
    pub mean_functions: Option<f64>,
    pub mean_cyclomatic: Option<f64>,
    pub completion_tokens: usize,
    pub generation_seconds: f64,
    pub tokens_per_second: f64,
    pub check_seconds: f64,
    /// The most common compiler errors (each counted once per sample), most frequent first.
    pub top_errors: Vec<(String, usize)>,
    /// What confined the generated code ([`Sandbox::isolation_summary`]).
    pub sandbox: String,
    pub compile_timeout_seconds: f64,
    pub run_timeout_seconds: f64,
    pub memory_limit_mb: u64,
}

/// A finished evaluation.
pub struct Evaluation {
    pub summary: Summary,
    pub samples: Vec<SampleRecord>,
}

/// Which part of a run [`evaluate`]'s progress callback reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Generating,
    Checking,
}

/// The seed of sample `sample` of task `task`.
pub fn sample_seed(seed: u64, task: usize, sample: usize) -> u64 {
    let mut rng = model::rng::SplitMix64::new(
        seed ^ (task as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (sample as u64) << 40,
    );
    rng.next_u64()
}

/// Generates `settings.samples` completions for every task, then judges them. `Err` when the
/// checker itself fails (not when a sample does).
pub fn evaluate(
    tasks: &[Task],
    backend: &dyn Backend,
    settings: EvalSettings,
    sandbox: &Sandbox,
    progress: &(dyn Fn(Phase, usize) + Sync),
) -> Result<Evaluation, String> {
    let n = settings.samples;
    let jobs: Vec<Job> = tasks
        .iter()
        .enumerate()
        .flat_map(|(t, task)| {
            (0..n).map(move |s| Job {
                task: task.name.clone(),
                prompt: task.prompt.clone(),
                stops: task.stops(),
                seed: sample_seed(settings.seed, t, s),
            })
        })
        .collect();
    let started = Instant::now();
    let generated = backend.generate(&jobs, settings.sampling, &|| progress(Phase::Generating, 1));
    let generation_seconds = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(settings.jobs.max(1))
        .build()
        .map_err(|e| format!("cannot start the checker threads: {e}"))?;
    let samples: Vec<SampleRecord> = pool.install(|| {
        generated
            .into_par_iter()
            .enumerate()
            .map(|(index, result)| {
                let record = judge(&tasks[index / n], index % n, &jobs[index], result, sandbox);
                progress(Phase::Checking, 1);
                record
            })
            .collect::<Result<_, _>>()
    })?;
    let check_seconds = started.elapsed().as_secs_f64();
    let summary = summarize(
        tasks,
        &samples,
        backend.describe(),
        settings,
        sandbox,
        generation_seconds,
        check_seconds,
    );
    Ok(Evaluation { summary, samples })
}

/// Extracts, classifies and checks one sample.
pub fn judge(
    task: &Task,
    sample: usize,
    job: &Job,
    generated: Result<Generated, String>,
    sandbox: &Sandbox,
) -> Result<SampleRecord, String> {
    let mut record = SampleRecord {
        task: task.name.clone(),
        sample,
        seed: job.seed,
        completion: String::new(),
        body: String::new(),
        body_end: extract::BodyEnd::Truncated,
        verdict: Verdict::GenerationError,
        reward: 0.0,
        trivial: None,
        errors: Vec::new(),
        detail: None,
        metrics: None,
        tokens: 0,
    };
    let generated = match generated {
        Ok(g) => g,
        Err(e) => {
            record.detail = Some(e);
            return Ok(record);
        }
    };
    let extraction = extract::extract_body(&task.prompt, &generated.text, &job.stops);
    record.completion = generated.text;
    record.tokens = generated.tokens;
    record.body_end = extraction.end;
    record.body = extraction.body;
    record.trivial = syntax::trivial_reason(&record.body);
    record.metrics = syntax::code_metrics(&record.body);
    record.verdict = if record.trivial.is_some() {
        Verdict::Trivial
    } else {
        let result = sandbox.check(task, &record.body)?;
        match (result.compile, result.tests) {
            (CompileOutcome::Error(codes), _) => {
                record.errors = codes;
                Verdict::CompileError
            }
            (CompileOutcome::Timeout, _) => Verdict::CompileTimeout,
            (CompileOutcome::Ok, None) => Verdict::Compiles,
            (CompileOutcome::Ok, Some(TestOutcome::Pass)) => Verdict::TestsPass,
            (CompileOutcome::Ok, Some(TestOutcome::Fail(detail))) => {
                record.detail = Some(detail);
                Verdict::TestsFail
            }
            (CompileOutcome::Ok, Some(TestOutcome::Timeout)) => Verdict::TestTimeout,
        }
    };
    record.reward = if record.verdict.success() { 1.0 } else { 0.0 };
    Ok(record)
}

fn mean(values: impl Iterator<Item = usize>) -> Option<f64> {
    let (sum, count) = values.fold((0usize, 0usize), |(s, c), v| (s + v, c + 1));
    (count > 0).then(|| sum as f64 / count as f64)
}

fn summarize(
    tasks: &[Task],
    samples: &[SampleRecord],
    model: String,
    settings: EvalSettings,
    sandbox: &Sandbox,
    generation_seconds: f64,
    check_seconds: f64,
) -> Summary {
    let total = samples.len().max(1) as f64;
    let rate =
        |f: &dyn Fn(&SampleRecord) -> bool| samples.iter().filter(|s| f(s)).count() as f64 / total;
    let mut verdicts: HashMap<&'static str, usize> =
        Verdict::ALL.iter().map(|v| (v.as_str(), 0)).collect();
    let mut trivial_kinds = HashMap::new();
    let mut errors: HashMap<&str, usize> = HashMap::new();
    for sample in samples {
        *verdicts.entry(sample.verdict.as_str()).or_default() += 1;
        if let Some(kind) = sample.trivial {
            *trivial_kinds.entry(kind).or_default() += 1;
        }
        let mut seen: Vec<&str> = sample.errors.iter().map(String::as_str).collect();
        seen.sort_unstable();
        seen.dedup();
        for code in seen {
            *errors.entry(code).or_default() += 1;
        }
    }
    let mut top_errors: Vec<(String, usize)> = errors
        .into_iter()
        .map(|(c, n)| (c.to_string(), n))
        .collect();
    top_errors.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    top_errors.truncate(10);

    // Per task: (samples, successes) and (samples, compiled).
    let n = settings.samples;
    let per_task = |f: fn(Verdict) -> bool, with_tests_only: bool| -> Vec<(usize, usize)> {
        tasks
            .iter()
            .enumerate()
            .filter(|(_, t)| !with_tests_only || t.tests.is_some())
            .map(|(i, _)| {
                let ok = samples[i * n..(i + 1) * n]
                    .iter()
                    .filter(|s| f(s.verdict))
                    .count();
                (n, ok)
            })
            .collect()
    };
    let at_k = |groups: Vec<(usize, usize)>| -> HashMap<String, f64> {
        metrics::reported_ks(n)
            .into_iter()
            .filter_map(|k| metrics::mean_pass_at_k(&groups, k).map(|p| (k.to_string(), p)))
            .collect()
    };
    let parsed: Vec<&CodeMetrics> = samples
        .iter()
        .filter(|s| s.trivial.is_none() && s.verdict != Verdict::GenerationError)
        .filter_map(|s| s.metrics.as_ref())
        .collect();
    let completion_tokens: usize = samples.iter().map(|s| s.tokens).sum();
    let options = &sandbox.options;
    Summary {
        model,
        prompts: tasks.len(),
        prompts_with_tests: tasks.iter().filter(|t| t.tests.is_some()).count(),
        samples_per_prompt: n,
        samples: samples.len(),
        temperature: settings.sampling.temperature,
        top_p: settings.sampling.top_p,
        max_tokens: settings.sampling.max_tokens,
        seed: settings.seed,
        compile_success_rate: rate(&|s| s.verdict.compiled()),
        success_rate: rate(&|s| s.verdict.success()),
        trivial_rate: rate(&|s| s.verdict == Verdict::Trivial),
        verdicts,
        trivial_kinds,
        pass_at_k: at_k(per_task(Verdict::success, true)),
        compile_at_k: at_k(per_task(Verdict::compiled, false)),
        parsed_samples: parsed.len(),
        mean_lines: mean(parsed.iter().map(|m| m.lines)),
        mean_functions: mean(parsed.iter().map(|m| m.functions)),
        mean_cyclomatic: mean(parsed.iter().map(|m| m.cyclomatic)),
        completion_tokens,
        generation_seconds,
        tokens_per_second: completion_tokens as f64 / generation_seconds.max(1e-9),
        check_seconds,
        top_errors,
        sandbox: sandbox.isolation_summary(),
        compile_timeout_seconds: options.compile_timeout.as_secs_f64(),
        run_timeout_seconds: options.run_timeout.as_secs_f64(),
        memory_limit_mb: options.memory_limit_mb,
    }
}
