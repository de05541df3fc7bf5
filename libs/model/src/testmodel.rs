//! Model files with random weights, for tests and benchmarks before a trained model exists, written
//! by the writer `quantize-export` uses ([`crate::export::write_model`]), so they have its exact
//! GGUF + .mhc layout and exercise the real loader. The tokenizer is byte-level without merges
//! ([`crate::tokenizer::byte_level_json`]); the mHC parameters are random, not the identity-like
//! initialisation, so stream mixing really happens.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

use mhc::{Mhc2, Mhc4, MhcFile, MhcParams, NStreams};
use ternary::synthetic::uniform_values;

use crate::config::ModelConfig;
pub use crate::export::EmbeddingType;
use crate::export::{self, ExportInput, F32Tensor, TensorRole, EMBEDDING};
use crate::tokenizer::byte_level_json;

/// Writes `<dir>/<stem>.gguf` (and `<stem>.mhc` when `config.mhc_streams` > 1) with random
/// weights drawn from `seed`, an F16 embedding and a byte-level tokenizer; returns the two paths.
pub fn write_random_model(
    dir: &Path,
    stem: &str,
    config: &ModelConfig,
    seed: u64,
) -> io::Result<(PathBuf, Option<PathBuf>)> {
    write_random_model_with(dir, stem, config, seed, EmbeddingType::F16)
}

/// [`write_random_model`] with the embedding's storage type chosen.
pub fn write_random_model_with(
    dir: &Path,
    stem: &str,
    config: &ModelConfig,
    seed: u64,
    embedding: EmbeddingType,
) -> io::Result<(PathBuf, Option<PathBuf>)> {
    let invalid = |e: String| io::Error::new(io::ErrorKind::InvalidInput, e);
    config.validate().map_err(|e| invalid(e.to_string()))?;
    if config.moe.is_some() {
        return Err(invalid("random MoE models are not supported".into()));
    }
    // Every tensor has a seed of its own, as before the writer was shared with quantize-export,
    // so the same seed still gives the same file.
    let mut seeds: HashMap<String, u64> = HashMap::from([(EMBEDDING.to_string(), seed)]);
    for (i, (name, _)) in config.f32_tensors().into_iter().enumerate() {
        seeds.insert(name, seed ^ (1000 + i as u64));
    }
    for (i, (name, _, _)) in config.ternary_weights().into_iter().enumerate() {
        seeds.insert(name, seed ^ (2000 + i as u64));
    }
    let mhc = config
        .streams()
        .map(|n| random_mhc(n, config.n_layers, seed));
    let sources = export::source_tensors(config);
    // Drawn when the writer asks for it: a large model is never held whole.
    let lookup = |name: &str| {
        let t = sources.iter().find(|t| t.name == name)?;
        let len = t.shape.iter().product();
        let values = match t.role {
            TensorRole::Embedding | TensorRole::Ternary => uniform_values(len, seeds[name]),
            // Norm gains around 1.
            TensorRole::Norm => uniform_values(len, seeds[name])
                .iter()
                .map(|u| 1.0 + 0.5 * u)
                .collect(),
            TensorRole::Mhc { module } => mhc.as_ref()?.modules()[module].to_flat(),
        };
        Some(F32Tensor {
            shape: t.shape.clone(),
            values,
        })
    };
    let tokenizer_json = byte_level_json(config.vocab_size);
    let input = ExportInput {
        config,
        name: stem,
        tokenizer_json: &tokenizer_json,
        embedding,
        tensors: &lookup,
        ternary: None,
        chat: None,
    };
    let gguf_path = dir.join(format!("{stem}.gguf"));
    let mhc_path = mhc.as_ref().map(|_| dir.join(format!("{stem}.mhc")));
    let summary = export::write_model(&gguf_path, mhc_path.as_deref(), &input)
        .map_err(|e| invalid(e.to_string()))?;
    Ok((summary.gguf_path, summary.mhc_path))
}

/// mHC parameters with every logit and bias drawn from [-2, 2).
pub fn random_mhc(n: NStreams, n_layers: usize, seed: u64) -> MhcFile {
    let modules = (0..2 * n_layers)
        .map(|m| {
            let u = uniform_values(n.params_per_module(), seed ^ (3000 + m as u64));
            let flat: Vec<f32> = u.iter().map(|x| 4.0 * x).collect();
            match n {
                NStreams::Two => MhcParams::Two(Mhc2::from_flat(
                    flat.try_into().expect("N=2 parameter count"),
                )),
                NStreams::Four => MhcParams::Four(Mhc4::from_flat(
                    flat.try_into().expect("N=4 parameter count"),
                )),
            }
        })
        .collect();
    MhcFile::new(n, modules).expect("random parameters are finite and complete")
}
