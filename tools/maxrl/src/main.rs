//! maxrl: reinforcement learning from compiler feedback on a training checkpoint.
//!
//! Each iteration exports the current weights to the ternary inference model (the model that
//! will be served), samples `--samples` completions for each of `--batch-prompts` prompts, judges
//! them with libs/eval (reward 1: passes its tests when the task has tests, else compiles and is
//! not trivial; `--compile-credit` rewards compiling answers that fail their tests in part;
//! `--reward compile` ignores the tests), and takes one optimizer step on the weighted log-likelihood of the correct
//! samples: MaxRL (per prompt, the mean over its correct samples) or rejection-sampling
//! fine-tuning (all correct samples pooled). Prompts with no correct sample give no gradient.
//! With `--warmup FILE`, supervised steps on reference solutions of the training prompts come
//! first, so that a base model too weak to ever compile gets rewards to learn from.
//! Exit codes: 0 done; 1 the run failed (non-finite loss, checker failure); 2 bad usage/input.

// The training graph allocates and frees large buffers every step.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use eval::extract::extract_body;
use eval::{
    evaluate, load_prompts, CheckOptions, EvalSettings, FromFile, InProcess, Sampling, Sandbox,
    Task,
};
use model::rng::SplitMix64;
use train::policy::{sample_weights, Estimator, Policy, WeightedSequence};

const EXAMPLES: &str = "\
Examples:
  maxrl --checkpoint runs/tiny/ckpt --prompts data/prompts/rl_train.jsonl --out runs/tiny/rl
  maxrl --checkpoint ckpt --prompts rl.jsonl --heldout data/prompts/rust_tasks.jsonl \\
        --iterations 30 --samples 8 --estimator rft --out runs/rft
  maxrl --checkpoint runs/tiny/ckpt --prompts data/prompts/rl_train.jsonl \\
        --warmup-prompts data/prompts/rl_warmup.jsonl \\
        --warmup data/prompts/rl_warmup.solutions.jsonl --warmup-steps 120 \\
        --heldout data/prompts/rust_tasks.jsonl --out runs/tiny/rl

Writes --out as a checkpoint folder (the layout train writes; quantize-export reads it), with
rl.jsonl (one line per iteration: reward rate, share of prompts with a success, loss, tokens/s)
and summary.json (the held-out greedy compile rate before and after, with --heldout; with
--warmup also after the warm-up, where RL starts). The held-out prompts are never trained on,
not even by the warm-up.

Exit status: 0 done, 1 the run failed, 2 bad usage or bad input.";

/// Reinforcement from compiler feedback: learn from the samples that compile.
#[derive(Debug, Parser)]
#[command(version, about, after_help = EXAMPLES)]
struct Cli {
    /// The checkpoint folder to start from (train's output).
    #[arg(long, value_name = "DIR")]
    checkpoint: PathBuf,
    /// Prompts to learn on (JSONL, the eval-compile layout); repeat the flag to join sets.
    #[arg(long, value_name = "FILE", required = true)]
    prompts: Vec<PathBuf>,
    /// What earns reward 1: `tests` (the task's tests pass; a task without tests: it compiles
    /// and is not trivial) or `compile` (it compiles and is not trivial, tests or not).
    #[arg(long, value_name = "KIND", value_enum, default_value_t = Reward::Tests)]
    reward: Reward,
    /// With --reward tests: the reward of an answer that compiles (not trivial) but fails its
    /// tests, in [0, 1). Each prompt learns from its best answers only: those that pass when any
    /// does, else those that compile, weighted by this credit against the prompts that pass.
    #[arg(long, value_name = "F", default_value_t = 0.0)]
    compile_credit: f32,
    /// Prompts never trained on: greedy compile rate before and after.
    #[arg(long, value_name = "FILE")]
    heldout: Option<PathBuf>,
    /// The checkpoint folder to write.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Iterations (one optimizer step each).
    #[arg(long, value_name = "N", default_value_t = 20)]
    iterations: usize,
    /// Prompts sampled per iteration (cycling through the set in a seeded order).
    #[arg(long, value_name = "N", default_value_t = 16)]
    batch_prompts: usize,
    /// Completions per prompt.
    #[arg(long, value_name = "N", default_value_t = 8)]
    samples: usize,
    #[arg(long, value_name = "T", default_value_t = 1.0)]
    temperature: f32,
    #[arg(long, value_name = "N", default_value_t = 96)]
    max_tokens: usize,
    /// maxrl (per-prompt mean of correct samples) or rft (pooled).
    #[arg(long, value_name = "NAME", value_enum, default_value_t = EstimatorName::Maxrl)]
    estimator: EstimatorName,
    /// Multiplies the run's peak learning rates.
    #[arg(long, value_name = "F", default_value_t = 0.3)]
    lr_factor: f64,
    /// Sequences per forward/backward pass.
    #[arg(long, value_name = "N", default_value_t = 16)]
    micro_batch: usize,
    #[arg(long, value_name = "N", default_value_t = 1)]
    seed: u64,
    /// Checks at once (default: the number of cores).
    #[arg(long, value_name = "N")]
    jobs: Option<usize>,
    /// Reference solutions (JSONL of {"name", "body"}, as data/prompts/rl_warmup.solutions.jsonl):
    /// --warmup-steps supervised steps on them before RL.
    #[arg(long, value_name = "FILE", requires = "warmup_steps")]
    warmup: Option<PathBuf>,
    /// The prompts the --warmup solutions answer (default: --prompts). A set apart from
    /// --prompts keeps RL learning on prompts whose answers it has never been shown.
    #[arg(long, value_name = "FILE", requires = "warmup")]
    warmup_prompts: Option<PathBuf>,
    /// Supervised warm-up steps (--batch-prompts solutions each, seeded order).
    #[arg(long, value_name = "N", requires = "warmup")]
    warmup_steps: Option<usize>,
    /// The bubblewrap binary that confines the samples' compiles and test runs (default:
    /// $NANOCHAT_BWRAP, the project's .tools/usr/bin/bwrap from `make sandbox`, or the PATH).
    #[arg(long, value_name = "PATH")]
    bwrap: Option<PathBuf>,
    /// Run the samples UNCONFINED where bubblewrap cannot run (said in summary.json).
    #[arg(long)]
    no_sandbox: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
enum Reward {
    Tests,
    Compile,
}

impl Reward {
    /// The reward of one answer.
    fn of(self, verdict: eval::Verdict, compile_credit: f32) -> f32 {
        match self {
            Reward::Tests if verdict.success() => 1.0,
            Reward::Tests if verdict.compiled() => compile_credit,
            Reward::Compile if verdict.compiled() => 1.0,
            _ => 0.0,
        }
    }
}

/// The training weight of each answer of each prompt (`rewards[p][i]`): per prompt, the answers
/// at its best reward level are its correct ones (`sample_weights`' estimator over them), and a
/// prompt's weight is scaled by that level; the weights are then normalized to sum to 1 again.
/// Muon and Lion take the same step whatever the loss's scale, so the credit of a partial answer
/// acts only through this weighting against the prompts whose answers pass.
fn reward_weights(rewards: &[Vec<f32>], estimator: Estimator) -> Vec<Vec<f32>> {
    let best: Vec<f32> = rewards
        .iter()
        .map(|r| r.iter().copied().fold(0.0, f32::max))
        .collect();
    let correct: Vec<Vec<bool>> = rewards
        .iter()
        .zip(&best)
        .map(|(r, &top)| r.iter().map(|&x| top > 0.0 && x == top).collect())
        .collect();
    let mut weights = sample_weights(&correct, estimator);
    for (w, &level) in weights.iter_mut().zip(&best) {
        w.iter_mut().for_each(|x| *x *= level);
    }
    let total: f32 = weights.iter().flatten().sum();
    if total > 0.0 {
        weights.iter_mut().flatten().for_each(|x| *x /= total);
    }
    weights
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
enum EstimatorName {
    Maxrl,
    Rft,
}

fn main() -> ExitCode {
    let cli: Cli = match cli::parse("maxrl") {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    // See tools/train: candle's barrier pool must not spin against the rayon workers.
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "100");
    }
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, message)) => {
            eprintln!("maxrl: {message}");
            ExitCode::from(code)
        }
    }
}

type Failure = (u8, String);

fn usage(message: impl std::fmt::Display) -> Failure {
    (2, message.to_string())
}

fn failed(message: impl std::fmt::Display) -> Failure {
    (1, message.to_string())
}

/// The tasks of every set, in order; a name in two sets is refused (the rewards and the logs go
/// by name).
fn load_prompt_sets(paths: &[PathBuf]) -> Result<Vec<Task>, Failure> {
    let mut tasks: Vec<Task> = Vec::new();
    let mut names = std::collections::HashSet::new();
    for path in paths {
        for task in load_prompts(path).map_err(usage)? {
            if !names.insert(task.name.clone()) {
                return Err(usage(format!(
                    "{}: task {} is already in an earlier --prompts set",
                    path.display(),
                    task.name
                )));
            }
            tasks.push(task);
        }
    }
    Ok(tasks)
}

/// Greedy compile and success rates of the policy on `tasks`.
fn greedy_rates(
    policy: &Policy,
    tasks: &[Task],
    scratch: &Path,
    sandbox: &Sandbox,
    jobs: usize,
    max_tokens: usize,
) -> Result<(f64, f64), Failure> {
    let engine = policy_engine(policy, scratch)?;
    let settings = EvalSettings {
        samples: 1,
        sampling: Sampling {
            temperature: 0.0,
            top_p: 1.0,
            max_tokens,
        },
        seed: 0,
        jobs,
    };
    let evaluation = evaluate(tasks, &engine, settings, sandbox, &|_, _| {}).map_err(failed)?;
    engine.engine.shutdown();
    Ok((
        evaluation.summary.compile_success_rate,
        evaluation.summary.success_rate,
    ))
}

fn policy_engine(policy: &Policy, scratch: &Path) -> Result<InProcess, Failure> {
    let gguf = scratch.join("policy.gguf");
    policy.export(&gguf, "policy").map_err(failed)?;
    let engine =
        model::load_engine(&gguf, None, model::EngineOptions::default()).map_err(failed)?;
    Ok(InProcess { engine })
}

/// Prompt + completion tokens of a correct answer: the body as extracted and the line closing
/// the function, ending where generation should stop.
fn answer_sequence(
    tokenizer: &model::Tokenizer,
    task: &Task,
    body: &str,
    weight: f32,
) -> Result<WeightedSequence, Failure> {
    let prompt = tokenizer.encode_prompt(&task.prompt).map_err(failed)?;
    let indent = "    ".repeat(task.depth().saturating_sub(1));
    let text = format!("{}\n{indent}}}\n", body.trim_end());
    let completion = tokenizer.encode(&text).map_err(failed)?;
    let completion_start = prompt.len();
    let mut tokens = prompt;
    tokens.extend(completion);
    Ok(WeightedSequence {
        tokens,
        completion_start,
        weight,
    })
}

/// Task indices in a seeded order, reshuffled at each pass over the set.
struct PromptOrder {
    rng: SplitMix64,
    len: usize,
    pending: Vec<usize>,
}

impl PromptOrder {
    fn new(seed: u64, len: usize) -> Self {
        PromptOrder {
            rng: SplitMix64::new(seed),
            len,
            pending: Vec::new(),
        }
    }

    /// The next `n` indices (at most the set's size, never one twice in a batch of a pass).
    fn batch(&mut self, n: usize) -> Vec<usize> {
        let mut batch = Vec::new();
        while batch.len() < n.min(self.len) {
            if self.pending.is_empty() {
                self.pending = (0..self.len).collect();
                for i in (1..self.len).rev() {
                    self.pending.swap(i, self.rng.below(i as u64 + 1) as usize);
                }
            }
            batch.extend(self.pending.pop());
        }
        batch
    }
}

/// Supervised steps on the reference solutions of `tasks`; one rl.jsonl line per step.
fn warm_up(
    cli: &Cli,
    policy: &mut Policy,
    tokenizer: &model::Tokenizer,
    tasks: &[Task],
    solutions: &FromFile,
    steps: usize,
    log: &mut std::fs::File,
) -> Result<(), Failure> {
    // Every solution tokenized once, its body cut by the extraction generated samples go through.
    let answers = tasks
        .iter()
        .filter_map(|task| solutions.completion(&task.name).map(|c| (task, c)))
        .map(|(task, completion)| {
            let body = extract_body(&task.prompt, completion, &task.stops()).body;
            answer_sequence(tokenizer, task, &body, 1.0)
        })
        .collect::<Result<Vec<_>, _>>()?;
    if answers.is_empty() {
        return Err(usage(
            "--warmup: no solution names a task of the warm-up prompts",
        ));
    }
    let mut order = PromptOrder::new(cli.seed ^ 0x5741_524d, answers.len());
    let started = Instant::now();
    for step in 1..=steps {
        let batch = order.batch(cli.batch_prompts);
        let weight = 1.0 / batch.len() as f32;
        let sequences: Vec<WeightedSequence> = batch
            .iter()
            .map(|&i| WeightedSequence {
                weight,
                ..answers[i].clone()
            })
            .collect();
        let stats = policy
            .update(&sequences, cli.micro_batch, cli.lr_factor)
            .map_err(failed)?;
        let record = serde_json::json!({
            "phase": "warmup",
            "step": step,
            "loss": stats.loss,
            "nll_per_token": stats.nll_per_token,
            "trained_sequences": sequences.len(),
            "elapsed_seconds": started.elapsed().as_secs_f64(),
        });
        writeln!(log, "{record}").map_err(|e| failed(format!("rl.jsonl: {e}")))?;
        eprintln!(
            "warm-up {step:>3}/{steps}: nll/token {:.3}  {:.0} s",
            stats.nll_per_token,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

fn run(cli: &Cli) -> Result<(), Failure> {
    if cli.iterations == 0 || cli.batch_prompts == 0 || cli.samples == 0 || cli.max_tokens == 0 {
        return Err(usage(
            "--iterations, --batch-prompts, --samples and --max-tokens must be at least 1",
        ));
    }
    let estimator = match cli.estimator {
        EstimatorName::Maxrl => Estimator::MaxRl,
        EstimatorName::Rft => Estimator::Rft,
    };
    if !(0.0..1.0).contains(&cli.compile_credit)
        || (cli.compile_credit > 0.0 && cli.reward != Reward::Tests)
    {
        return Err(usage(
            "--compile-credit must be in [0, 1), and goes with --reward tests",
        ));
    }
    let tasks = load_prompt_sets(&cli.prompts)?;
    let solutions = match &cli.warmup {
        Some(path) => Some(FromFile::load(path).map_err(usage)?),
        None => None,
    };
    let warmup_tasks = match &cli.warmup_prompts {
        Some(path) => load_prompts(path).map_err(usage)?,
        None => tasks.clone(),
    };
    let heldout = match &cli.heldout {
        Some(path) => Some(load_prompts(path).map_err(usage)?),
        None => None,
    };
    let mut policy = Policy::load(&cli.checkpoint).map_err(usage)?;
    let sandbox = Sandbox::new(CheckOptions {
        bwrap: cli.bwrap.clone(),
        no_sandbox: cli.no_sandbox,
        ..CheckOptions::default()
    })
    .map_err(usage)?;
    let jobs = cli.jobs.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get)
    });
    let scratch = tempfile::tempdir().map_err(|e| failed(format!("temporary folder: {e}")))?;
    let tokenizer = model::Tokenizer::from_json(policy.tokenizer_json()).map_err(usage)?;
    std::fs::create_dir_all(&cli.out).map_err(|e| failed(format!("{}: {e}", cli.out.display())))?;
    let log_path = cli.out.join("rl.jsonl");
    let mut log = std::fs::File::create(&log_path)
        .map_err(|e| failed(format!("{}: {e}", log_path.display())))?;

    let before = match &heldout {
        Some(h) => Some(greedy_rates(
            &policy,
            h,
            scratch.path(),
            &sandbox,
            jobs,
            cli.max_tokens,
        )?),
        None => None,
    };
    if let Some((compile, success)) = before {
        eprintln!(
            "held-out greedy before: compile {:.1} %, success {:.1} %",
            100.0 * compile,
            100.0 * success
        );
    }

    let started = Instant::now();
    let mut after_warmup = None;
    if let Some(solutions) = &solutions {
        let steps = cli.warmup_steps.unwrap_or(0);
        warm_up(
            cli,
            &mut policy,
            &tokenizer,
            &warmup_tasks,
            solutions,
            steps,
            &mut log,
        )?;
        if let Some(h) = &heldout {
            let rates = greedy_rates(&policy, h, scratch.path(), &sandbox, jobs, cli.max_tokens)?;
            eprintln!(
                "held-out greedy after the warm-up: compile {:.1} %, success {:.1} %",
                100.0 * rates.0,
                100.0 * rates.1
            );
            after_warmup = Some(rates);
        }
    }

    let mut order = PromptOrder::new(cli.seed, tasks.len());
    for iteration in 1..=cli.iterations {
        let batch: Vec<Task> = order
            .batch(cli.batch_prompts)
            .into_iter()
            .map(|i| tasks[i].clone())
            .collect();
        let engine = policy_engine(&policy, scratch.path())?;
        let settings = EvalSettings {
            samples: cli.samples,
            sampling: Sampling {
                temperature: cli.temperature,
                top_p: 1.0,
                max_tokens: cli.max_tokens,
            },
            seed: cli.seed.wrapping_add(iteration as u64 * 7919),
            jobs,
        };
        let evaluation =
            evaluate(&batch, &engine, settings, &sandbox, &|_, _| {}).map_err(failed)?;
        engine.engine.shutdown();
        let rewards: Vec<Vec<f32>> = evaluation
            .samples
            .chunks(cli.samples)
            .map(|group| {
                group
                    .iter()
                    .map(|s| cli.reward.of(s.verdict, cli.compile_credit))
                    .collect()
            })
            .collect();
        let weights = reward_weights(&rewards, estimator);
        let mut sequences = Vec::new();
        for (t, task) in batch.iter().enumerate() {
            for (i, sample) in evaluation.samples[t * cli.samples..(t + 1) * cli.samples]
                .iter()
                .enumerate()
            {
                if weights[t][i] != 0.0 {
                    sequences.push(answer_sequence(
                        &tokenizer,
                        task,
                        &sample.body,
                        weights[t][i],
                    )?);
                }
            }
        }
        let summary = &evaluation.summary;
        let reward_rate = rewards.iter().flatten().map(|&r| f64::from(r)).sum::<f64>()
            / summary.samples.max(1) as f64;
        let with_success = rewards.iter().filter(|r| r.contains(&1.0)).count();
        let update_start = Instant::now();
        let update = if sequences.is_empty() {
            None
        } else {
            Some(
                policy
                    .update(&sequences, cli.micro_batch, cli.lr_factor)
                    .map_err(failed)?,
            )
        };
        let record = serde_json::json!({
            "phase": "rl",
            "iteration": iteration,
            "estimator": cli.estimator,
            "reward": cli.reward,
            "samples": summary.samples,
            "reward_rate": reward_rate,
            "success_rate": summary.success_rate,
            "compile_rate": summary.compile_success_rate,
            "trivial_rate": summary.trivial_rate,
            "prompts_with_success": with_success as f64 / batch.len() as f64,
            "loss": update.map(|u| u.loss),
            "nll_per_token": update.map(|u| u.nll_per_token),
            "trained_sequences": sequences.len(),
            "tokens_per_s": summary.tokens_per_second,
            "update_seconds": update_start.elapsed().as_secs_f64(),
            "elapsed_seconds": started.elapsed().as_secs_f64(),
        });
        writeln!(log, "{record}").map_err(|e| failed(format!("{}: {e}", log_path.display())))?;
        eprintln!(
            "iter {iteration:>3}/{}: reward {:.3}  prompts with a success {:.2}  trained on {}  gen {:.0} tok/s  {:.0} s",
            cli.iterations,
            reward_rate,
            with_success as f64 / batch.len() as f64,
            sequences.len(),
            summary.tokens_per_second,
            started.elapsed().as_secs_f64()
        );
    }
    let after = match &heldout {
        Some(h) => Some(greedy_rates(
            &policy,
            h,
            scratch.path(),
            &sandbox,
            jobs,
            cli.max_tokens,
        )?),
        None => None,
    };
    let rl = serde_json::json!({
        "from": cli.checkpoint.display().to_string(),
        "estimator": cli.estimator,
        "reward": cli.reward,
        "compile_credit": cli.compile_credit,
        "prompts": cli.prompts.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "sandbox": sandbox.isolation_summary(),
        "iterations": cli.iterations,
        "batch_prompts": cli.batch_prompts,
        "samples": cli.samples,
        "temperature": cli.temperature,
        "lr_factor": cli.lr_factor,
        "seed": cli.seed,
        "warmup": cli.warmup.as_ref().map(|p| p.display().to_string()),
        "warmup_prompts": cli.warmup_prompts.as_ref().map(|p| p.display().to_string()),
        "warmup_steps": cli.warmup_steps,
    });
    policy.save(&cli.out, rl.clone()).map_err(failed)?;
    let summary = serde_json::json!({
        "run": rl,
        "heldout_greedy_compile_rate_before": before.map(|b| b.0),
        "heldout_greedy_compile_rate_after_warmup": after_warmup.map(|w| w.0),
        "heldout_greedy_compile_rate_after": after.map(|a| a.0),
        "heldout_greedy_success_rate_before": before.map(|b| b.1),
        "heldout_greedy_success_rate_after_warmup": after_warmup.map(|w| w.1),
        "heldout_greedy_success_rate_after": after.map(|a| a.1),
        "seconds": started.elapsed().as_secs_f64(),
    });
    std::fs::write(cli.out.join("summary.json"), format!("{summary:#}\n"))
        .map_err(|e| failed(format!("{}: {e}", cli.out.display())))?;
    if let (Some(b), Some(a)) = (before, after) {
        eprintln!(
            "held-out greedy compile rate: {:.1} % -> {:.1} %",
            100.0 * b.0,
            100.0 * a.0
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use eval::Verdict;

    #[test]
    fn rewards_follow_the_chosen_kind() {
        let tests = |v| Reward::Tests.of(v, 0.25);
        assert_eq!(tests(Verdict::TestsPass), 1.0);
        assert_eq!(tests(Verdict::Compiles), 1.0, "a task without tests");
        assert_eq!(tests(Verdict::TestsFail), 0.25);
        assert_eq!(tests(Verdict::CompileError), 0.0);
        assert_eq!(tests(Verdict::Trivial), 0.0);
        assert_eq!(Reward::Compile.of(Verdict::TestsFail, 0.0), 1.0);
        assert_eq!(Reward::Compile.of(Verdict::Trivial, 0.0), 0.0);
    }

    #[test]
    fn each_prompt_learns_from_its_best_answers_weighted_by_their_level() {
        // Prompt 0: one pass, one compile-only; prompt 1: compile-only twice; prompt 2: nothing.
        let rewards = vec![vec![1.0, 0.25, 0.0], vec![0.25, 0.0, 0.25], vec![0.0; 3]];
        let w = reward_weights(&rewards, Estimator::MaxRl);
        // Before scaling: prompt 0's pass 1/2, prompt 1's two 1/4 each; scaled by 1 and 0.25,
        // then normalized over 0.5 + 0.125.
        let expect = [
            [0.5 / 0.625, 0.0, 0.0],
            [0.0625 / 0.625, 0.0, 0.0625 / 0.625],
            [0.0; 3],
        ];
        for (row, want) in w.iter().zip(expect) {
            for (a, b) in row.iter().zip(want) {
                assert!((a - b).abs() < 1e-6, "{w:?}");
            }
        }
        // Binary rewards: exactly the estimator's weights.
        let binary = vec![vec![1.0, 0.0], vec![1.0, 1.0]];
        let as_bools: Vec<Vec<bool>> = binary
            .iter()
            .map(|r| r.iter().map(|&x| x == 1.0).collect())
            .collect();
        assert_eq!(
            reward_weights(&binary, Estimator::Rft),
            sample_weights(&as_bools, Estimator::Rft)
        );
        assert_eq!(
            reward_weights(&[vec![0.0, 0.0]], Estimator::MaxRl),
            vec![vec![0.0, 0.0]]
        );
    }
}
