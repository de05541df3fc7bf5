//! `--model FILE.gguf`: the ternary tensors of a model file instead of the generated cases.
//!
//! A ternary tensor is found by the pair convention of libs/gguf (an I8 tensor `NAME` with an F32
//! sibling `NAME.scale`, checked by `gguf::ternary_pair`), loaded with `gguf::read_ternary` and
//! handed to [`verify::verify_weights`] with activations generated from the seed(s)
//! ([`cases::model_inputs`]). The file records `ceil(K / 4)` bytes per row, not K: a tensor is
//! verified at `K = 4 × ceil(K / 4)` (`TernaryPair::max_cols`), which is the real K whenever it
//! is a multiple of 4 and otherwise only adds the padding codes of each row.
//!
//! A file that cannot be read, a broken pair (a `.scale` sibling of the wrong shape, NaN scales)
//! or a file without ternary tensors is a [`UsageError`] (exit code 2), one line naming the file.

use crate::verify::{self, Candidate, Label, SelfCheck, Tally};
use crate::{cases, progress_bar, Config, Report, UsageError, JOBS_PER_ROUND};
use gguf::{ternary::scale_name, GgmlType, Gguf};
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use std::time::Instant;
use ternary::{quantize_activations, reference, PlanarWeights};

/// A ternary tensor of the file: its name and the shape it is verified at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorEntry {
    pub name: String,
    pub rows: usize,
    /// `4 × ceil(K / 4)`: see the module documentation.
    pub cols: usize,
}

/// What was verified on one tensor, over all seeds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorResult {
    pub name: String,
    pub rows: usize,
    pub cols: usize,
    /// Comparisons of a kernel path with the reference on this tensor.
    pub comparisons: u64,
    /// Kernels with at least one failing comparison on this tensor.
    pub failing: Vec<String>,
    /// Kernels not run on this tensor because earlier failures stopped them.
    pub skipped: Vec<String>,
    /// Whether a self-check of the reference failed on this tensor.
    pub self_check_failed: bool,
}

impl TensorResult {
    pub fn ok(&self) -> bool {
        self.failing.is_empty() && !self.self_check_failed
    }

    /// `ok`, `FAIL (faulty)`, `ok (faulty not run: stopped after earlier failures)`, ...
    pub fn result(&self) -> String {
        let mut result = if self.ok() {
            "ok".to_string()
        } else {
            let mut what = self.failing.clone();
            if self.self_check_failed {
                what.push("reference self-check".to_string());
            }
            format!("FAIL ({})", what.join(", "))
        };
        if !self.skipped.is_empty() {
            result.push_str(&format!(
                " ({} not run: stopped after earlier failures)",
                self.skipped.join(", ")
            ));
        }
        result
    }
}

/// What a `--model` run verified.
#[derive(Clone, Debug)]
pub struct ModelReport {
    pub file: PathBuf,
    /// In the file's order.
    pub tensors: Vec<TensorResult>,
}

fn file_error(path: &Path, error: impl std::fmt::Display) -> UsageError {
    UsageError(format!("{}: {error}", path.display()))
}

/// Every ternary tensor of `gguf`, in the file's order: each I8 tensor with an F32 `.scale`
/// sibling, which must then form a valid pair (`gguf::ternary_pair`; its error otherwise).
pub fn find_tensors<B: AsRef<[u8]>>(gguf: &Gguf<B>) -> Result<Vec<TensorEntry>, String> {
    let mut found = Vec::new();
    for info in gguf.tensor_infos() {
        if info.ggml_type() != GgmlType::I8 {
            continue;
        }
        let has_scales = gguf
            .tensor(&scale_name(info.name()))
            .is_some_and(|scales| scales.info.ggml_type() == GgmlType::F32);
        if !has_scales {
            continue;
        }
        let pair = gguf::ternary_pair(gguf, info.name()).map_err(|e| e.to_string())?;
        let (Ok(rows), Ok(cols)) = (usize::try_from(pair.rows), usize::try_from(pair.max_cols()))
        else {
            return Err(format!(
                "ternary tensor {:?}: shape too large for this machine",
                info.name()
            ));
        };
        found.push(TensorEntry {
            name: info.name().to_string(),
            rows,
            cols,
        });
    }
    Ok(found)
}

/// Loads tensor `entry` of `gguf` into planar form.
pub fn load<B: AsRef<[u8]>>(gguf: &Gguf<B>, entry: &TensorEntry) -> Result<PlanarWeights, String> {
    gguf::read_ternary(gguf, &entry.name, entry.rows, entry.cols).map_err(|e| e.to_string())
}

/// One tensor with one seed.
#[derive(Clone, Copy, Debug)]
struct Job {
    tensor: usize,
    seed: u64,
}

/// Verifies `w` (tensor `name`) with the activations of `seed` on every candidate, with the
/// reference's zero-activation self-check.
pub fn verify_tensor(
    name: &str,
    w: &PlanarWeights,
    seed: u64,
    candidates: &[&dyn Candidate],
    tally: &mut Tally,
) {
    let label = Label {
        case: cases::MODEL_CASE.to_string(),
        seed: Some(seed),
        tensor: Some(name.to_string()),
    };
    let zeros = quantize_activations(&vec![0f32; w.cols()]);
    let mut y = vec![0f32; w.rows()];
    reference::gemv(w, &zeros, &mut y);
    let expected = vec![0f32; w.rows()];
    tally.record_self_check(SelfCheck::ZeroActivations, w, 1, &label, &y, &expected);
    let inputs = cases::model_inputs(seed, name, w.cols());
    verify::verify_weights(candidates, w, &inputs, &label, tally);
}

/// Runs the selected kernels on every ternary tensor of `path`; progress on stderr (drawn only
/// when stderr is a terminal). `Err`: the file cannot be read, a pair is broken, or there is no
/// ternary tensor (exit code 2).
pub fn run(config: &Config, path: &Path) -> Result<Report, UsageError> {
    let start = Instant::now();
    if path.is_dir() {
        return Err(file_error(path, "is a directory, not a GGUF file"));
    }
    let gguf = Gguf::open(path).map_err(|e| file_error(path, e))?;
    let tensors = find_tensors(&gguf).map_err(|e| file_error(path, e))?;
    if tensors.is_empty() {
        return Err(UsageError(format!(
            "no ternary tensors in {} (an I8 tensor NAME with an F32 NAME.scale)",
            path.display()
        )));
    }
    let jobs: Vec<Job> = (0..config.seeds)
        .flat_map(|i| {
            (0..tensors.len()).map(move |tensor| Job {
                tensor,
                seed: config.first_seed.wrapping_add(i),
            })
        })
        .collect();
    // Weights × vectors through the reference: 3 GEMV vectors, the largest batch once.
    let work = |t: &TensorEntry| {
        let vectors = 3 + cases::MODEL_BATCHES.iter().max().copied().unwrap_or(0);
        (t.rows * t.cols * vectors) as u64
    };
    let progress = progress_bar(jobs.iter().map(|j| work(&tensors[j.tensor])).sum());
    let candidates: Vec<&dyn Candidate> = config
        .selection
        .verified
        .iter()
        .map(|k| k as &dyn Candidate)
        .collect();
    let mut tally = Tally::new(candidates.iter().map(|c| c.name()));
    let mut results: Vec<TensorResult> = tensors
        .iter()
        .map(|t| TensorResult {
            name: t.name.clone(),
            rows: t.rows,
            cols: t.cols,
            comparisons: 0,
            failing: Vec::new(),
            skipped: Vec::new(),
            self_check_failed: false,
        })
        .collect();
    // As in `crate::run`: rounds of jobs side by side, merged in plan order, so the report does
    // not depend on the number of threads.
    for round in jobs.chunks(JOBS_PER_ROUND) {
        let parts: Vec<Result<Tally, UsageError>> = round
            .par_iter()
            .map(|job| {
                let entry = &tensors[job.tensor];
                progress.set_message(format!(
                    "{} {}x{} seed {}",
                    entry.name, entry.rows, entry.cols, job.seed
                ));
                let w = load(&gguf, entry).map_err(|e| file_error(path, e))?;
                let mut part = tally.fresh();
                verify_tensor(&entry.name, &w, job.seed, &candidates, &mut part);
                progress.inc(work(entry));
                Ok(part)
            })
            .collect();
        for (job, part) in round.iter().zip(parts) {
            let part = match part {
                Ok(part) => part,
                Err(error) => {
                    progress.finish_and_clear();
                    return Err(error);
                }
            };
            let result = &mut results[job.tensor];
            for kernel in &part.kernels {
                result.comparisons += kernel.paths.iter().map(|p| p.cases).sum::<u64>();
                let add = |list: &mut Vec<String>| {
                    if !list.contains(&kernel.name) {
                        list.push(kernel.name.clone());
                    }
                };
                if kernel.paths.iter().any(|p| p.failed > 0) {
                    add(&mut result.failing);
                } else if kernel.stopped && kernel.paths.iter().all(|p| p.cases == 0) {
                    add(&mut result.skipped);
                }
            }
            result.self_check_failed |= part.self_checks.iter().any(|s| s.failed > 0);
            tally.merge(part);
        }
    }
    progress.finish_and_clear();
    Ok(Report {
        first_seed: config.first_seed,
        seeds: config.seeds,
        not_verified: config.selection.not_verified.clone(),
        tally,
        threads: rayon::current_num_threads(),
        elapsed: start.elapsed(),
        model: Some(ModelReport {
            file: path.to_path_buf(),
            tensors: results,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use gguf::{GgufWriter, Layout};
    use ternary::Kernel;

    fn weights(rows: usize, cols: usize) -> PlanarWeights {
        let w: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 7919 % 1013) as f32 - 506.0) / 300.0)
            .collect();
        PlanarWeights::from_f32(rows, cols, &w).unwrap()
    }

    fn model_file(dir: &Path) -> PathBuf {
        let (a, b) = (weights(9, 300), weights(3, 128));
        let mut layout = Layout::new();
        layout.add_ternary("blk.0.a", 9, 300).unwrap();
        layout
            .add_tensor("norm", GgmlType::F32, &[128])
            .unwrap()
            .add_tensor("lonely", GgmlType::I8, &[2, 8])
            .unwrap();
        layout.add_ternary("blk.0.b", 3, 128).unwrap();
        let path = dir.join("m.gguf");
        let mut writer = GgufWriter::create(&path, &layout).unwrap();
        writer.write_ternary("blk.0.a", &a).unwrap();
        writer.write_f32("norm", &[1.0; 128]).unwrap();
        writer.write_tensor("lonely", &[0; 16]).unwrap();
        writer.write_ternary("blk.0.b", &b).unwrap();
        writer.finish().unwrap();
        path
    }

    fn config(model: &Path) -> Config {
        Config {
            first_seed: 1,
            seeds: 2,
            selection: crate::Selection {
                verified: vec![Kernel::Reference, Kernel::Scalar],
                not_verified: Vec::new(),
            },
            json: false,
            model: Some(model.to_path_buf()),
        }
    }

    #[test]
    fn ternary_pairs_are_found_and_verified_in_file_order() {
        let dir =
            std::env::temp_dir().join(format!("verify-triangle-model-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = model_file(&dir);
        let gguf = Gguf::open(&path).unwrap();
        let found = find_tensors(&gguf).unwrap();
        let names: Vec<_> = found
            .iter()
            .map(|t| (t.name.as_str(), t.rows, t.cols))
            .collect();
        assert_eq!(names, [("blk.0.a", 9, 300), ("blk.0.b", 3, 128)]);
        assert_eq!(
            load(&gguf, &found[0]).unwrap().codes(),
            weights(9, 300).codes()
        );

        let report = run(&config(&path), &path).unwrap();
        assert!(report.ok());
        let model = report.model.as_ref().unwrap();
        assert_eq!(model.tensors.len(), 2);
        for tensor in &model.tensors {
            assert_eq!(tensor.result(), "ok");
            // 2 seeds × 2 kernels × (3 vectors × 2 paths + 2 batches × 2 paths).
            assert_eq!(tensor.comparisons, 2 * 2 * (6 + 4));
        }
        assert!(report.tally.self_check(SelfCheck::ZeroActivations).cases >= 4);

        let error = run(&config(&dir), &dir).unwrap_err();
        assert!(error.0.contains("directory"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn model_inputs_are_a_function_of_the_seed() {
        let a = cases::model_inputs(3, "w", 300);
        let b = cases::model_inputs(3, "w", 300);
        assert_eq!(a.vectors().len(), 3);
        assert_eq!(a.batches(), cases::MODEL_BATCHES);
        assert_eq!(a.vectors()[0].values(), b.vectors()[0].values());
        assert!(a.vectors()[1].values().iter().all(|v| v.abs() == 127));
        assert!(a.vectors()[2].values().iter().all(|&v| v == 0));
        let c = cases::model_inputs(4, "w", 300);
        assert_ne!(a.vectors()[0].values(), c.vectors()[0].values());
    }
}
