//! Model files with random weights, for tests and benchmarks before a trained model exists.

use std::path::{Path, PathBuf};

use crate::config::ModelConfig;

/// Writes `<dir>/<stem>.gguf` (and `<stem>.mhc` when `config.mhc_streams` > 1) with random
/// weights drawn from `seed` and a byte-level tokenizer; returns the two paths.
pub fn write_random_model(
    dir: &Path,
    stem: &str,
    config: &ModelConfig,
    seed: u64,
) -> std::io::Result<(PathBuf, Option<PathBuf>)> {
    let _ = (dir, stem, config, seed);
    todo!("random model writer")
}
