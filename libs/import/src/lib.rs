//! Ternary models made elsewhere, read into the project's own model form so that the rest of the
//! pipeline (serve, eval-compile, gguf-inspect, verify-triangle) runs them unchanged:
//!
//! - [`hf`]: a Hugging Face folder (`config.json`, `*.safetensors`, `tokenizer.json`,
//!   `tokenizer_config.json`) of a BitNet b1.58 model (packed 2-bit weights with their
//!   `weight_scale`, or bf16/f32 master weights quantized with BitNet's own rule: absmean per
//!   tensor) or of a Llama model whose weights are ternary already;
//! - [`llamacpp`]: a llama.cpp GGUF file of architecture `llama` with TQ1_0 / TQ2_0 weights,
//!   every trit and every block scale kept; its `tokenizer.ggml.*` arrays rebuilt into a
//!   `tokenizer.json` by [`vocab`].
//!
//! Both give an [`Imported`] model: the configuration (with its architecture variant), the
//! embedding, head and norms (full precision, or llama.cpp's Q8_0 blocks as stored), the ternary
//! matrices in planar form with the source's scales
//! repeated onto the per-group-of-128 grid (exact: every source granularity is coarser), the
//! tokenizer and the chat settings. [`Imported::write`] writes it through `model::export`, the
//! one writer of model files. Nothing here prints or exits.

pub mod hf;
pub mod llamacpp;
pub mod vocab;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use model::export::{
    write_model_keeping_q8_0, EmbeddingType, ExportError, ExportInput, ExportSummary, F32Tensor,
};
use model::tokenizer::ChatSpec;
use model::ModelConfig;
use ternary::{groups_for, PlanarWeights, GROUP_SIZE};

/// A model read from elsewhere, ready to be written as the project's GGUF.
pub struct Imported {
    /// `general.name`.
    pub name: String,
    /// What was read, for the summary: "Hugging Face BitNet (packed 2-bit)", ...
    pub source_kind: String,
    pub config: ModelConfig,
    /// The type the embedding (and a dense head) is written in: by default the source's own.
    pub embedding: EmbeddingType,
    /// The embedding, the norms and a dense head, as f32 (exact for every type read), except
    /// those in `q8_0`.
    pub tables: HashMap<String, F32Tensor>,
    /// Tables the source stores as Q8_0 (llama.cpp files): shape `[V, C]` and the GGUF bytes,
    /// written as they are when `embedding` is Q8_0, dequantized (exactly) otherwise.
    pub q8_0: HashMap<String, (Vec<usize>, Vec<u8>)>,
    /// Every ternary matrix by its GGUF name.
    pub ternary: HashMap<String, PlanarWeights>,
    pub tokenizer_json: String,
    pub chat: ChatSpec,
}

impl Imported {
    /// Writes the model as GGUF (plain residuals: no .mhc file).
    pub fn write(&self, gguf_path: &Path) -> Result<ExportSummary, ExportError> {
        let tables = |name: &str| {
            self.tables.get(name).cloned().or_else(|| {
                let (shape, blocks) = self.q8_0.get(name)?;
                let mut values = Vec::new();
                gguf::q8::dequantize_into(blocks, &mut values);
                Some(F32Tensor {
                    shape: shape.clone(),
                    values,
                })
            })
        };
        let ternary = |name: &str| self.ternary.get(name).cloned();
        let stored = |name: &str| self.q8_0.get(name).map(|(_, blocks)| blocks.clone());
        write_model_keeping_q8_0(
            gguf_path,
            None,
            &ExportInput {
                config: &self.config,
                name: &self.name,
                tokenizer_json: &self.tokenizer_json,
                embedding: self.embedding,
                tensors: &tables,
                ternary: Some(&ternary),
                chat: Some(&self.chat),
            },
            &stored,
        )
    }
}

/// Why a model could not be imported; the message names the file and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The input is malformed or inconsistent (a missing tensor, a wrong shape, a truncated file).
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
    /// The input is well formed but uses something this engine does not run (named).
    #[error("{}: {message}", path.display())]
    Unsupported { path: PathBuf, message: String },
    /// A file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl ImportError {
    pub(crate) fn invalid(path: &Path, message: impl Into<String>) -> Self {
        ImportError::Invalid {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }

    pub(crate) fn unsupported(path: &Path, message: impl Into<String>) -> Self {
        ImportError::Unsupported {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }
}

/// Planar weights from row-major trits whose scale is one per `scale_block` weights of a row
/// (`block_scales`: `[rows, cols / scale_block]`), or one for the whole matrix when
/// `scale_block` is `None` (`block_scales`: one value). Each group of 128 takes the scale of the
/// block it lies in, so the product is the same number for every weight.
pub(crate) fn planar_from_blocks(
    rows: usize,
    cols: usize,
    trits: &[i8],
    block_scales: &[f32],
    scale_block: Option<usize>,
) -> Result<PlanarWeights, String> {
    let groups = groups_for(cols);
    let mut scales = Vec::with_capacity(rows * groups);
    for row in 0..rows {
        for group in 0..groups {
            scales.push(match scale_block {
                None => block_scales[0],
                Some(block) => {
                    debug_assert_eq!(block % GROUP_SIZE, 0, "blocks are whole groups");
                    block_scales[row * cols.div_ceil(block) + group * GROUP_SIZE / block]
                }
            });
        }
    }
    PlanarWeights::from_trits(rows, cols, trits, &scales).map_err(|e| e.to_string())
}

/// f32 values of 16-bit floats (f16 or bf16, by `convert`) stored little-endian.
pub(crate) fn widen_le16(data: &[u8], convert: impl Fn(u16) -> f32) -> Vec<f32> {
    data.chunks_exact(2)
        .map(|b| convert(u16::from_le_bytes([b[0], b[1]])))
        .collect()
}

/// Row `i` of the result is row `source_row(i)` of `values` (`[rows, cols]` row-major).
pub(crate) fn permute_rows<T: Copy>(
    values: &[T],
    cols: usize,
    source_row: impl Fn(usize) -> usize,
) -> Vec<T> {
    let rows = values.len() / cols;
    let mut out = Vec::with_capacity(values.len());
    for row in 0..rows {
        let from = source_row(row);
        out.extend_from_slice(&values[from * cols..(from + 1) * cols]);
    }
    out
}

/// llama.cpp stores the q and k projections of `llama` models with each head's rows
/// interleaved for its pairwise RoPE ((2i, 2i+1) rotate together); this engine rotates halves
/// ((i, i + d/2)), as Hugging Face does. Row `half · d/2 + i` of a head (ours) is row
/// `2i + half` of the same head in the file.
pub(crate) fn rotate_half_source_row(row: usize, head_dim: usize) -> usize {
    let (head, within) = (row / head_dim, row % head_dim);
    let (half, i) = (within / (head_dim / 2), within % (head_dim / 2));
    head * head_dim + 2 * i + half
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rope_row_map_is_a_permutation_that_undoes_llama_cpps_interleave() {
        let d = 8;
        let map: Vec<usize> = (0..2 * d).map(|r| rotate_half_source_row(r, d)).collect();
        // Ours: x0 x1 x2 x3 | y0 y1 y2 y3 (pairs (i, i+4)); file: x0 y0 x1 y1 x2 y2 x3 y3.
        assert_eq!(&map[..d], &[0, 2, 4, 6, 1, 3, 5, 7]);
        assert_eq!(&map[d..], &[8, 10, 12, 14, 9, 11, 13, 15]);
        let mut sorted = map.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..2 * d).collect::<Vec<_>>());
    }

    #[test]
    fn coarse_scales_repeat_onto_every_group_of_their_block() {
        let (rows, cols) = (2, 512);
        let trits: Vec<i8> = (0..rows * cols).map(|i| (i % 3) as i8 - 1).collect();
        let w = planar_from_blocks(rows, cols, &trits, &[1.0, 2.0, 3.0, 4.0], Some(256)).unwrap();
        let per_group: Vec<f32> = (0..rows)
            .flat_map(|r| (0..4).map(move |g| (r, g)))
            .map(|(r, g)| w.scale(r, g))
            .collect();
        assert_eq!(per_group, [1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 4.0, 4.0]);
        let w = planar_from_blocks(rows, cols, &trits, &[0.5], None).unwrap();
        assert!((0..rows).all(|r| (0..4).all(|g| w.scale(r, g) == 0.5)));
        assert_eq!(w.dequantize_row(1)[..3], [0.5, -0.5, 0.0]);
    }
}
