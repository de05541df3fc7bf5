//! verify-triangle: the "triangle of truth" (docs/ARCHITECTURE.md, "The triangle of truth"). Every
//! kernel path compiled into the binary — `gemv`, `par_gemv`, `gemm`, `par_gemm` of every
//! [`Kernel`] — is compared with the Rust reference (`ternary::reference::gemv` / `gemm`) bit for
//! bit, on generated cases.
//!
//! Where things live: [`cli`] the flags, [`cases`] what is generated (shapes, kinds, seeds),
//! [`verify`] the comparison engine ([`verify::verify_weights`] takes any `PlanarWeights`, so
//! verifying the tensors of a model file is one more caller), [`compare`] the bitwise comparison,
//! [`report`] the table and the JSON, [`rng`] the reproducible random numbers, [`model`] the
//! `--model` run (the ternary tensors of a GGUF file instead of the generated cases). The binary
//! (main.rs) only parses, calls [`run`], prints and returns the exit code. No printing here
//! except the progress bar on stderr.

pub mod cases;
pub mod cli;
pub mod compare;
pub mod model;
pub mod report;
pub mod rng;
pub mod verify;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rayon::prelude::*;
use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use ternary::{reference, Kernel, KernelError};
use verify::{Candidate, FailureKind, Label, SelfCheck, Tally};

/// Jobs that run side by side before their results are merged (see [`run`]).
const JOBS_PER_ROUND: usize = 16;

/// Exit code: every runnable kernel matches the reference.
pub const EXIT_OK: u8 = 0;
/// Exit code: a mismatch (or a kernel refused a call, or a self-check of the reference failed).
pub const EXIT_MISMATCH: u8 = 1;
/// Exit code: bad usage (also a `--model` file that cannot be read or has no ternary tensors).
pub const EXIT_USAGE: u8 = 2;

/// A usage error, printed as one line (exit code [`EXIT_USAGE`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Which kernels a run compares, and which compiled ones it cannot run on this CPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// Verified, in `Kernel::compiled()` order (the fault-injection kernel last).
    pub verified: Vec<Kernel>,
    /// Compiled but not runnable on this CPU: listed, never silently skipped.
    pub not_verified: Vec<Kernel>,
}

fn names(kernels: &[Kernel]) -> String {
    kernels
        .iter()
        .map(|k| k.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The kernels to verify: every compiled one (split by whether this CPU runs it), or only
/// `only`, which must be compiled in and runnable here.
pub fn select_kernels(only: Option<&str>, include_faulty: bool) -> Result<Selection, UsageError> {
    let compiled = Kernel::compiled();
    let mut selection = match only {
        None => {
            let (verified, not_verified) = compiled.iter().partition(|k| k.is_supported());
            Selection {
                verified,
                not_verified,
            }
        }
        Some(name) => {
            let kernel = Kernel::from_name(name).map_err(|error| {
                UsageError(match error {
                    KernelError::NotCompiled(_) => format!(
                        "--kernel {name}: not compiled into this binary (compiled: {})",
                        names(&compiled)
                    ),
                    _ => format!(
                        "--kernel {name:?}: unknown kernel (compiled into this binary: {})",
                        names(&compiled)
                    ),
                })
            })?;
            if !kernel.is_supported() {
                return Err(UsageError(format!(
                    "--kernel {name}: compiled, NOT verified on this CPU (needs {}); this CPU runs: {}",
                    kernel.requirements(),
                    names(&Kernel::available())
                )));
            }
            Selection {
                verified: vec![kernel],
                not_verified: Vec::new(),
            }
        }
    };
    if include_faulty {
        add_faulty_kernel(&mut selection.verified);
    }
    Ok(selection)
}

#[cfg(feature = "fault-injection")]
fn add_faulty_kernel(kernels: &mut Vec<Kernel>) {
    if !kernels.contains(&Kernel::Faulty) {
        kernels.push(Kernel::Faulty);
    }
}

#[cfg(not(feature = "fault-injection"))]
fn add_faulty_kernel(_: &mut Vec<Kernel>) {
    unreachable!("--include-faulty-kernel exists only with the fault-injection feature")
}

/// A validated run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub first_seed: u64,
    pub seeds: u64,
    pub selection: Selection,
    pub json: bool,
    /// `--model`: verify the ternary tensors of this GGUF file instead of the generated cases.
    pub model: Option<PathBuf>,
}

impl Config {
    pub fn from_args(args: &cli::Args) -> Result<Self, UsageError> {
        let default_seeds = if args.model.is_some() {
            cli::DEFAULT_MODEL_SEEDS
        } else {
            cli::DEFAULT_SEEDS
        };
        Ok(Self {
            first_seed: args.seed,
            seeds: args.seeds.unwrap_or(default_seeds),
            selection: select_kernels(args.kernel.as_deref(), args.include_faulty_kernel())?,
            json: args.json,
            model: args.model.clone(),
        })
    }
}

/// The outcome of a run: what was compared and what failed.
#[derive(Debug, Clone)]
pub struct Report {
    pub first_seed: u64,
    pub seeds: u64,
    pub not_verified: Vec<Kernel>,
    pub tally: Tally,
    pub threads: usize,
    pub elapsed: Duration,
    /// What a `--model` run verified, tensor by tensor (`None` for the generated cases).
    pub model: Option<model::ModelReport>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.tally.ok()
    }

    pub fn exit_code(&self) -> u8 {
        if self.ok() {
            EXIT_OK
        } else {
            EXIT_MISMATCH
        }
    }
}

/// The progress bar of a run: on stderr, drawn only when stderr is a terminal.
pub(crate) fn progress_bar(total_work: u64) -> ProgressBar {
    let progress = ProgressBar::with_draw_target(Some(total_work), ProgressDrawTarget::stderr());
    progress.set_style(
        ProgressStyle::with_template("verify-triangle {elapsed:>4} [{bar:30}] {percent:>3}% {msg}")
            .expect("valid progress template")
            .progress_chars("=> "),
    );
    progress
}

/// Runs every generated case on the selected kernels; progress on stderr (drawn only when stderr
/// is a terminal).
pub fn run(config: &Config) -> Report {
    let start = Instant::now();
    let jobs = cases::plan(config.first_seed, config.seeds);
    let progress = progress_bar(jobs.iter().map(cases::Job::work).sum());
    let candidates: Vec<&dyn Candidate> = config
        .selection
        .verified
        .iter()
        .map(|k| k as &dyn Candidate)
        .collect();
    let mut tally = Tally::new(candidates.iter().map(|c| c.name()));
    // Jobs run side by side in rounds of a fixed size, merged in plan order after each round, so
    // the report (which failures are listed, when a failing kernel stops) does not depend on
    // the number of threads or on timing.
    for round in jobs.chunks(JOBS_PER_ROUND) {
        let parts: Vec<Tally> = round
            .par_iter()
            .map(|job| {
                progress.set_message(format!(
                    "{} {}x{} seed {}",
                    job.kind.name(),
                    job.rows,
                    job.cols,
                    job.seed
                ));
                let mut part = tally.fresh();
                run_job(job, &candidates, &mut part);
                progress.inc(job.work());
                part
            })
            .collect();
        for part in parts {
            tally.merge(part);
        }
    }
    progress.finish_and_clear();
    Report {
        first_seed: config.first_seed,
        seeds: config.seeds,
        not_verified: config.selection.not_verified.clone(),
        tally,
        threads: rayon::current_num_threads(),
        elapsed: start.elapsed(),
        model: None,
    }
}

/// Builds one case, runs the reference self-checks it calls for, and verifies every candidate.
pub fn run_job(job: &cases::Job, candidates: &[&dyn Candidate], tally: &mut Tally) {
    let case = cases::build(job);
    let label = Label {
        case: job.kind.name().to_string(),
        seed: Some(job.seed),
        tensor: None,
    };
    let w = &case.weights;
    let rows = w.rows();
    let largest = case.inputs.batches().iter().copied().max();
    // The reference outputs of this case on every vector and on the largest batch.
    let reference_outputs = |weights: &ternary::PlanarWeights| {
        let mut outputs: Vec<(usize, Vec<f32>)> = Vec::new();
        for x in case.inputs.vectors() {
            let mut y = vec![0f32; rows];
            reference::gemv(weights, x, &mut y);
            outputs.push((1, y));
        }
        if let Some(n) = largest {
            let mut y = vec![0f32; rows * n];
            reference::gemm(weights, &case.inputs.batch(n), &mut y);
            outputs.push((n, y));
        }
        outputs
    };
    if let Some((twin, injected)) = &case.zeroed_twin {
        let found = w.histogram().invalid;
        let left = twin.histogram().invalid;
        let survived = (found != *injected || left != 0).then(|| {
            FailureKind::Check(format!(
                "{injected} invalid codes injected, from_packed kept {found}, the zeroed twin has {left}"
            ))
        });
        tally.record_self_check_outcome(SelfCheck::InvalidIsZero, w, 1, &label, survived);
        for ((batch, got), (_, expected)) in
            reference_outputs(w).iter().zip(reference_outputs(twin))
        {
            tally.record_self_check(SelfCheck::InvalidIsZero, w, *batch, &label, got, &expected);
        }
    }
    if job.kind == cases::CaseKind::ZeroActivations {
        for (batch, got) in reference_outputs(w) {
            let zeros = vec![0f32; got.len()];
            tally.record_self_check(SelfCheck::ZeroActivations, w, batch, &label, &got, &zeros);
        }
    }
    verify::verify_weights(candidates, w, &case.inputs, &label, tally);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_selection_lists_every_compiled_kernel_once() {
        let selection = select_kernels(None, false).unwrap();
        let mut all = selection.verified.clone();
        all.extend(&selection.not_verified);
        all.sort_by_key(|k| Kernel::name(*k));
        let mut compiled = Kernel::compiled();
        compiled.sort_by_key(|k| Kernel::name(*k));
        assert_eq!(all, compiled);
        assert!(selection.verified.contains(&Kernel::Reference));
        assert!(selection.verified.contains(&Kernel::Scalar));
        assert!(selection.not_verified.iter().all(|k| !k.is_supported()));
    }

    #[test]
    fn unknown_and_unrunnable_kernels_are_usage_errors() {
        let error = select_kernels(Some("nosuch"), false).unwrap_err();
        assert!(error.0.contains("unknown kernel") && error.0.contains("reference"));
        assert!(!error.0.contains('\n'));
        for kernel in Kernel::compiled().into_iter().filter(|k| !k.is_supported()) {
            let error = select_kernels(Some(kernel.name()), false).unwrap_err();
            assert!(error.0.contains("NOT verified on this CPU"), "{error}");
        }
        assert_eq!(
            select_kernels(Some("scalar"), false).unwrap().verified,
            vec![Kernel::Scalar]
        );
    }

    #[test]
    fn a_small_run_of_every_kind_passes_with_the_reference_kernel() {
        let candidates: Vec<&dyn Candidate> = vec![&Kernel::Reference, &Kernel::Scalar];
        let mut tally = Tally::new(candidates.iter().map(|c| c.name()));
        for kind in cases::CaseKind::ALL {
            for op in [cases::Op::Gemv, cases::Op::Gemm] {
                let job = cases::Job {
                    kind,
                    op,
                    rows: 9,
                    cols: 300,
                    seed: 7,
                };
                run_job(&job, &candidates, &mut tally);
            }
        }
        assert!(tally.ok(), "{:?}", tally.kernels);
        for check in SelfCheck::ALL {
            assert!(tally.self_check(check).cases > 0, "{check:?} never ran");
        }
    }
}
