//! Model files with random weights, for tests and benchmarks before a trained model exists: the
//! same GGUF + .mhc layout `quantize-export` writes (tensor names, metadata, embedded tokenizer), so
//! they exercise the real loader. The tokenizer is byte-level without merges
//! ([`crate::tokenizer::byte_level_json`]); the mHC parameters are random, not the identity-like
//! initialisation, so stream mixing really happens.

use std::io;
use std::path::{Path, PathBuf};

use gguf::{GgmlType, GgufWriter, Layout};
use half::f16;
use mhc::{Mhc2, Mhc4, MhcFile, MhcParams, NStreams};
use ternary::synthetic::uniform_values;
use ternary::PlanarWeights;

use crate::config::ModelConfig;
use crate::metadata;
use crate::tokenizer::byte_level_json;

/// Storage type of the embedding in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EmbeddingType {
    F32,
    F16,
}

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
    let (c, v) = (config.dim, config.vocab_size);
    let gguf_path = dir.join(format!("{stem}.gguf"));

    let mut layout = Layout::new();
    let to_io = |e: gguf::WriteError| invalid(e.to_string());
    metadata::write_config(&mut layout, config).map_err(to_io)?;
    layout.set("general.name", stem).map_err(to_io)?;
    layout
        .set(metadata::TOKENIZER_KEY, byte_level_json(v))
        .map_err(to_io)?;
    let embd_type = match embedding {
        EmbeddingType::F32 => GgmlType::F32,
        EmbeddingType::F16 => GgmlType::F16,
    };
    layout
        .add_tensor("token_embd.weight", embd_type, &[v as u64, c as u64])
        .map_err(to_io)?;
    let ternary = config.ternary_weights();
    let norms = config.f32_tensors();
    // File order: the embedding, each block's norms and weights, the output norm and head.
    for (name, len) in &norms {
        layout
            .add_tensor(name.as_str(), GgmlType::F32, &[*len as u64])
            .map_err(to_io)?;
    }
    for (name, rows, cols) in &ternary {
        layout.add_ternary(name, *rows, *cols).map_err(to_io)?;
    }

    let mut writer = GgufWriter::create(&gguf_path, &layout).map_err(to_io)?;
    let embd = uniform_values(v * c, seed);
    match embedding {
        EmbeddingType::F32 => writer
            .write_f32("token_embd.weight", &embd)
            .map_err(to_io)?,
        EmbeddingType::F16 => {
            let bytes: Vec<u8> = embd
                .iter()
                .flat_map(|&x| f16::from_f32(x).to_le_bytes())
                .collect();
            writer
                .write_tensor("token_embd.weight", &bytes)
                .map_err(to_io)?;
        }
    }
    for (i, (name, len)) in norms.iter().enumerate() {
        // Norm gains around 1.
        let gains: Vec<f32> = uniform_values(*len, seed ^ (1000 + i as u64))
            .iter()
            .map(|u| 1.0 + 0.5 * u)
            .collect();
        writer.write_f32(name, &gains).map_err(to_io)?;
    }
    for (i, (name, rows, cols)) in ternary.iter().enumerate() {
        let values = uniform_values(rows * cols, seed ^ (2000 + i as u64));
        let weights =
            PlanarWeights::from_f32(*rows, *cols, &values).map_err(|e| invalid(e.to_string()))?;
        writer.write_ternary(name, &weights).map_err(to_io)?;
    }
    writer.finish().map_err(to_io)?;

    let mhc_path = match config.streams() {
        None => None,
        Some(n) => {
            let path = dir.join(format!("{stem}.mhc"));
            random_mhc(n, config.n_layers, seed)
                .write(&path)
                .map_err(|e| io::Error::other(e.to_string()))?;
            Some(path)
        }
    };
    Ok((gguf_path, mhc_path))
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
