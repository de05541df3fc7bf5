//! The one writer of a nanochat model: named f32 tensors in, GGUF + .mhc out, in exactly the layout
//! [`crate::load`] reads (docs/formats.md, "A nanochat model in GGUF"). `quantize-export` feeds it
//! a training checkpoint, [`crate::testmodel`] random values.
//!
//! The inputs are the tensors of a checkpoint, named as in the GGUF where they exist
//! ([`source_tensors`] lists them with their shapes): the embedding, the norms, every ternary
//! weight as f32 shadow weights `[rows, cols]`, and for 2 or 4 residual streams the flat mHC
//! parameters of each module, `blk.N.attn_mhc` and `blk.N.ffn_mhc` (9 or 40 values in the .mhc
//! record order, [`mhc::Mhc2::from_flat`] / [`mhc::Mhc4::from_flat`]). Ternary weights are
//! quantized by [`ternary::PlanarWeights::from_f32`], the function training's straight-through
//! estimator uses, so the file holds the model training saw.
//! The embedding (and a tied or dense head) is written as [`EmbeddingType`] says: F32, F16, BF16,
//! or Q8_0 quantized with llama.cpp's rule (`gguf::q8`), or kept block for block when the source
//! has Q8_0 blocks already ([`write_model_keeping_q8_0`], imports).
//!
//! ```no_run
//! use model::export::{write_model, EmbeddingType, ExportInput, F32Tensor};
//! # fn lookup(_: &str) -> Option<F32Tensor> { None }
//! let config = model::ModelConfig::preset("tiny")?;
//! let json = model::tokenizer::byte_level_json(config.vocab_size);
//! let input = ExportInput {
//!     config: &config,
//!     name: "tiny",
//!     tokenizer_json: &json,
//!     embedding: EmbeddingType::F16,
//!     tensors: &lookup,
//!     ternary: None,
//!     chat: None,
//! };
//! let summary = write_model("model.gguf".as_ref(), None, &input)?;
//! println!("{:.3} bits per ternary weight", summary.bits_per_ternary_weight);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Every input is checked before anything is renamed into place (shape, finiteness, the mHC
//! matrices doubly stochastic within the loader's tolerance, the tokenizer loading and fitting the
//! vocabulary), and each error names the tensor. Both files are written under temporary names
//! beside their targets and renamed at the very end, so a failure leaves neither a partial file
//! nor a new GGUF beside an old .mhc.

use std::io;
use std::path::{Path, PathBuf};

use gguf::{GgmlType, GgufWriter, Layout};
use half::f16;
use mhc::{Mhc2, Mhc4, MhcFile, MhcParams, NStreams};
use ternary::PlanarWeights;

use crate::config::ModelConfig;
use crate::load::{default_mhc_path, DOUBLY_STOCHASTIC_TOLERANCE};
use crate::metadata;
use crate::tokenizer::{ChatSpec, Tokenizer};

/// Storage type of the embedding (and of a tied or dense LM head) in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EmbeddingType {
    F32,
    F16,
    /// For models imported in BF16: the values as they are (training writes F32 or F16).
    Bf16,
    /// ggml's 8-bit blocks (`gguf::q8`: 32 values share an f16 scale, 8.5 bits a value),
    /// quantized with llama.cpp's rule, or kept as they are when the source has them
    /// ([`write_model_keeping_q8_0`]). A numerics change: each value moves by up to half its
    /// block's step (`max |x| / 254`); the dim must be a multiple of 32.
    Q8_0,
}

impl EmbeddingType {
    /// The ggml type written.
    pub fn ggml_type(self) -> GgmlType {
        match self {
            EmbeddingType::F32 => GgmlType::F32,
            EmbeddingType::F16 => GgmlType::F16,
            EmbeddingType::Bf16 => GgmlType::Bf16,
            EmbeddingType::Q8_0 => GgmlType::Q8_0,
        }
    }
}

/// The name of the embedding tensor.
pub const EMBEDDING: &str = "token_embd.weight";
/// The name of a dense (full-precision) LM head.
pub const DENSE_HEAD: &str = "output.weight";

/// One input tensor: its shape (outermost first) and its values, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct F32Tensor {
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

/// What an input tensor becomes in the output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TensorRole {
    /// `token_embd.weight`, or a dense LM head `output.weight`, stored as [`EmbeddingType`].
    Embedding,
    /// A norm gain, stored as F32.
    Norm,
    /// A weight matrix, quantized to a ternary pair.
    Ternary,
    /// The flat parameters of mHC module `module` (2·block + 0 attention, + 1 FFN) of the .mhc file.
    Mhc { module: usize },
}

/// An input tensor [`write_model`] asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceTensor {
    pub name: String,
    /// Outermost first.
    pub shape: Vec<usize>,
    pub role: TensorRole,
}

/// Every tensor [`write_model`] reads for `config`, in the order it reads them (the GGUF file
/// order, then the mHC modules in .mhc order). A checkpoint holding anything else holds tensors
/// this model does not have.
pub fn source_tensors(config: &ModelConfig) -> Vec<SourceTensor> {
    let tensor = |name: String, shape: Vec<usize>, role| SourceTensor { name, shape, role };
    let mut out = vec![tensor(
        EMBEDDING.to_string(),
        vec![config.vocab_size, config.dim],
        TensorRole::Embedding,
    )];
    out.extend(
        config
            .f32_tensors()
            .into_iter()
            .map(|(name, len)| tensor(name, vec![len], TensorRole::Norm)),
    );
    out.extend(
        config
            .ternary_weights()
            .into_iter()
            .map(|(name, rows, cols)| tensor(name, vec![rows, cols], TensorRole::Ternary)),
    );
    if config.has_dense_head() {
        out.push(tensor(
            DENSE_HEAD.to_string(),
            vec![config.vocab_size, config.dim],
            TensorRole::Embedding,
        ));
    }
    if let Some(n) = config.streams() {
        for layer in 0..config.n_layers {
            for (i, sublayer) in ["attn", "ffn"].into_iter().enumerate() {
                out.push(tensor(
                    format!("blk.{layer}.{sublayer}_mhc"),
                    vec![n.params_per_module()],
                    TensorRole::Mhc {
                        module: 2 * layer + i,
                    },
                ));
            }
        }
    }
    out
}

/// The ternary weights of a name, when they are ternary already.
pub type TernarySource<'a> = dyn Fn(&str) -> Option<PlanarWeights> + 'a;

/// What [`write_model`] writes, all borrowed.
pub struct ExportInput<'a> {
    pub config: &'a ModelConfig,
    /// `general.name`.
    pub name: &'a str,
    /// The `tokenizer.json` document, embedded verbatim.
    pub tokenizer_json: &'a str,
    pub embedding: EmbeddingType,
    /// The tensor of a name (one of [`source_tensors`]), `None` when there is none. Called once
    /// per tensor, in [`source_tensors`] order, so a large model is never held whole in memory.
    pub tensors: &'a dyn Fn(&str) -> Option<F32Tensor>,
    /// Ternary weights that are ternary already (imported models), written as they are; when
    /// `None`, ternary weights come from `tensors` as f32 and are quantized.
    pub ternary: Option<&'a TernarySource<'a>>,
    /// A model's own chat settings (imported models); `None` for the native template.
    pub chat: Option<&'a ChatSpec>,
}

/// The files written and their sizes.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ExportSummary {
    pub gguf_path: PathBuf,
    /// `None` for plain residuals (1 stream).
    pub mhc_path: Option<PathBuf>,
    pub gguf_bytes: u64,
    /// 0 when no .mhc file is written.
    pub mhc_bytes: u64,
    /// [`ModelConfig::parameter_count`].
    pub parameters: u64,
    /// Weights of every ternary matrix.
    pub ternary_weights: u64,
    /// Bytes of the ternary tensors in the GGUF: packed codes and f32 scales, no alignment padding.
    pub ternary_bytes: u64,
    /// `8 · ternary_bytes / ternary_weights`: 2 bits of code plus 32 bits of scale per group of
    /// 128, i.e. 2.25 when every row length is a multiple of 128; more when a row ends in a short
    /// group (its scale and code bytes are shared by fewer weights).
    pub bits_per_ternary_weight: f64,
    /// `8 · (gguf_bytes + mhc_bytes) / parameters`: both whole files (header, tokenizer, padding,
    /// the full-precision embedding and norms included) over all parameters.
    pub bits_per_parameter: f64,
}

/// Why a model could not be written; the message names the tensor, key or file.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("tensor {0:?} is missing")]
    Missing(String),
    #[error("tensor {name:?} has shape {found:?}, expected {expected:?}")]
    Shape {
        name: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("tensor {name:?} has {found} values, its shape {shape:?} needs {expected}")]
    Length {
        name: String,
        shape: Vec<usize>,
        found: usize,
        expected: usize,
    },
    #[error("tensor {name:?} has a non-finite value ({value}) at index {index}")]
    NonFinite {
        name: String,
        index: usize,
        value: f32,
    },
    #[error(
        "tensor {name:?}: value {value} at index {index} is out of F16 range (store the embedding as F32)"
    )]
    F16Range {
        name: String,
        index: usize,
        value: f32,
    },
    /// Q8_0 blocks that cannot be written: a block whose scale is not a finite f16, or stored
    /// blocks of the wrong length.
    #[error("tensor {name:?}: {message}")]
    Q8_0 { name: String, message: String },
    /// mHC parameters that do not give doubly-stochastic matrices.
    #[error("tensor {name:?}: {message}")]
    Mhc { name: String, message: String },
    /// An output path that cannot be used (the message names it).
    #[error("{}: {message}", path.display())]
    Output { path: PathBuf, message: String },
    /// Writing failed (the message names the file).
    #[error("{0}")]
    Write(String),
}

/// Writes `gguf_path` and, for 2 or 4 residual streams, the .mhc file (`mhc_path`, by default
/// beside the GGUF: [`default_mhc_path`]). Plain-residual models have no .mhc file, so a
/// `mhc_path` for one is an error. See the module documentation for the checks.
pub fn write_model(
    gguf_path: &Path,
    mhc_path: Option<&Path>,
    input: &ExportInput<'_>,
) -> Result<ExportSummary, ExportError> {
    write_model_keeping_q8_0(gguf_path, mhc_path, input, &|_| None)
}

/// Tables held as Q8_0 blocks already (imports), by name: the GGUF bytes of the whole `[V, C]`
/// table, row after row.
pub type Q8Source<'a> = dyn Fn(&str) -> Option<Vec<u8>> + 'a;

/// [`write_model`], where a table that `stored` has is written as those bytes when the output
/// type is [`EmbeddingType::Q8_0`] (every block and scale kept; checked for length and finite
/// scales); other tables, and every table for other types, come from `input.tensors`.
pub fn write_model_keeping_q8_0(
    gguf_path: &Path,
    mhc_path: Option<&Path>,
    input: &ExportInput<'_>,
    stored: &Q8Source<'_>,
) -> Result<ExportSummary, ExportError> {
    let config = input.config;
    config
        .validate()
        .map_err(|e| ExportError::Config(e.to_string()))?;
    if input.embedding == EmbeddingType::Q8_0 && config.dim % gguf::q8::BLOCK != 0 {
        return Err(ExportError::Config(format!(
            "a Q8_0 embedding needs rows of whole blocks of {} values; dim is {}",
            gguf::q8::BLOCK,
            config.dim
        )));
    }
    if config.moe.is_some() {
        // The loader refuses MoE files, so writing one would make a model nothing can run.
        return Err(ExportError::Config(
            "mixture-of-experts models are not supported".into(),
        ));
    }
    check_tokenizer(input.tokenizer_json, input.chat, config.vocab_size)?;
    let mhc_path = match (config.streams(), mhc_path) {
        (None, None) => None,
        (None, Some(path)) => {
            return Err(ExportError::Output {
                path: path.to_path_buf(),
                message: "the model has plain residuals (1 stream): no .mhc file is written".into(),
            })
        }
        (Some(_), path) => {
            Some(path.map_or_else(|| default_mhc_path(gguf_path), Path::to_path_buf))
        }
    };
    if mhc_path.as_deref() == Some(gguf_path) {
        return Err(ExportError::Output {
            path: gguf_path.to_path_buf(),
            message: "the GGUF and the .mhc file cannot be the same file".into(),
        });
    }

    let sources = source_tensors(config);
    // The mHC parameters are small and checked before the long part.
    let mhc = match config.streams() {
        Some(n) => Some(mhc_file(n, &sources, input.tensors)?),
        None => None,
    };

    let mut layout = Layout::new();
    let layout_error = |e: gguf::WriteError| ExportError::Write(e.to_string());
    metadata::write_config(&mut layout, config).map_err(layout_error)?;
    layout
        .set("general.name", input.name)
        .map_err(layout_error)?;
    layout
        .set(metadata::TOKENIZER_KEY, input.tokenizer_json)
        .map_err(layout_error)?;
    if let Some(chat) = input.chat {
        metadata::write_chat(&mut layout, chat).map_err(layout_error)?;
    }
    let shape = |t: &SourceTensor| t.shape.iter().map(|&d| d as u64).collect::<Vec<_>>();
    for t in &sources {
        match t.role {
            TensorRole::Embedding => {
                layout.add_tensor(t.name.as_str(), input.embedding.ggml_type(), &shape(t))
            }
            TensorRole::Norm => layout.add_tensor(t.name.as_str(), GgmlType::F32, &shape(t)),
            TensorRole::Ternary => layout.add_ternary(&t.name, t.shape[0], t.shape[1]),
            TensorRole::Mhc { .. } => continue,
        }
        .map_err(layout_error)?;
    }

    let staged_gguf = staging_path(gguf_path)?;
    let mut writer = GgufWriter::create(&staged_gguf, &layout).map_err(layout_error)?;
    let (mut ternary_weights, mut ternary_bytes) = (0u64, 0u64);
    for t in &sources {
        match t.role {
            TensorRole::Embedding => match (input.embedding, stored(&t.name)) {
                (EmbeddingType::Q8_0, Some(blocks)) => {
                    writer.write_tensor(&t.name, &checked_q8_0(t, blocks)?)
                }
                (embedding, _) => {
                    let values = fetch(input.tensors, t)?;
                    match embedding {
                        EmbeddingType::F32 => writer.write_f32(&t.name, &values),
                        EmbeddingType::F16 => {
                            writer.write_tensor(&t.name, &to_f16_bytes(t, &values)?)
                        }
                        EmbeddingType::Bf16 => {
                            writer.write_tensor(&t.name, &to_bf16_bytes(t, &values)?)
                        }
                        EmbeddingType::Q8_0 => {
                            let mut blocks = Vec::new();
                            gguf::q8::quantize_into(&values, &mut blocks);
                            writer.write_tensor(&t.name, &checked_q8_0(t, blocks)?)
                        }
                    }
                }
            },
            TensorRole::Norm => writer.write_f32(&t.name, &fetch(input.tensors, t)?),
            TensorRole::Ternary => {
                let (rows, cols) = (t.shape[0], t.shape[1]);
                let weights = match input.ternary {
                    Some(ternary) => fetch_ternary(ternary, t)?,
                    None => PlanarWeights::from_f32(rows, cols, &fetch(input.tensors, t)?)
                        .map_err(|e| ExportError::Config(format!("tensor {:?}: {e}", t.name)))?,
                };
                let [codes, scales] = gguf::ternary::pair_shapes(rows, cols);
                ternary_weights += (rows * cols) as u64;
                ternary_bytes += codes[0] * codes[1] + 4 * scales[0] * scales[1];
                writer.write_ternary(&t.name, &weights)
            }
            TensorRole::Mhc { .. } => continue,
        }
        .map_err(layout_error)?;
    }
    writer.finish().map_err(layout_error)?;
    let gguf_bytes = file_len(&staged_gguf)?;

    let staged_mhc = match (&mhc, &mhc_path) {
        (Some(file), Some(path)) => {
            let staged = staging_path(path)?;
            file.write(&staged)
                .map_err(|e| ExportError::Write(e.to_string()))?;
            Some((staged, path))
        }
        _ => None,
    };
    let mhc_bytes = match &staged_mhc {
        Some((staged, _)) => file_len(staged)?,
        None => 0,
    };
    // Both files are complete: rename them into place, the .mhc first, so the GGUF a loader opens
    // never appears before its .mhc.
    if let Some((staged, path)) = staged_mhc {
        persist(staged, path)?;
    }
    persist(staged_gguf, gguf_path)?;

    let parameters = config.parameter_count();
    Ok(ExportSummary {
        gguf_path: gguf_path.to_path_buf(),
        mhc_path,
        gguf_bytes,
        mhc_bytes,
        parameters,
        ternary_weights,
        ternary_bytes,
        bits_per_ternary_weight: 8.0 * ternary_bytes as f64 / ternary_weights as f64,
        bits_per_parameter: 8.0 * (gguf_bytes + mhc_bytes) as f64 / parameters as f64,
    })
}

/// The tokenizer must load as the loader loads it, and fit the model's vocabulary.
fn check_tokenizer(
    json: &str,
    chat: Option<&ChatSpec>,
    vocab_size: usize,
) -> Result<(), ExportError> {
    let tokenizer = match chat {
        Some(chat) => Tokenizer::with_chat(json, chat.clone()),
        None => Tokenizer::from_json(json),
    }
    .map_err(|e| ExportError::Tokenizer(e.to_string()))?;
    if tokenizer.vocab_size() > vocab_size {
        return Err(ExportError::Tokenizer(format!(
            "{} tokens, more than the model's vocabulary of {vocab_size}",
            tokenizer.vocab_size()
        )));
    }
    Ok(())
}

/// The values of `t`: present, of its shape, all finite.
fn fetch(
    tensors: &dyn Fn(&str) -> Option<F32Tensor>,
    t: &SourceTensor,
) -> Result<Vec<f32>, ExportError> {
    let found = tensors(&t.name).ok_or_else(|| ExportError::Missing(t.name.clone()))?;
    if found.shape != t.shape {
        return Err(ExportError::Shape {
            name: t.name.clone(),
            found: found.shape,
            expected: t.shape.clone(),
        });
    }
    let expected: usize = t.shape.iter().product();
    if found.values.len() != expected {
        return Err(ExportError::Length {
            name: t.name.clone(),
            shape: found.shape,
            found: found.values.len(),
            expected,
        });
    }
    if let Some(index) = found.values.iter().position(|v| !v.is_finite()) {
        return Err(ExportError::NonFinite {
            name: t.name.clone(),
            index,
            value: found.values[index],
        });
    }
    Ok(found.values)
}

/// Ternary weights that are ternary already: present and of the shape of `t` (their scales are
/// finite and non-negative by construction of `PlanarWeights`).
fn fetch_ternary(
    ternary: &TernarySource<'_>,
    t: &SourceTensor,
) -> Result<PlanarWeights, ExportError> {
    let w = ternary(&t.name).ok_or_else(|| ExportError::Missing(t.name.clone()))?;
    if [w.rows(), w.cols()] != t.shape[..] {
        return Err(ExportError::Shape {
            name: t.name.clone(),
            found: vec![w.rows(), w.cols()],
            expected: t.shape.clone(),
        });
    }
    Ok(w)
}

/// Q8_0 `blocks` of `t`, if they are as many as its shape needs and every scale is finite (the
/// loader's conditions): a block whose largest value is beyond 127 times the largest f16 has
/// none.
fn checked_q8_0(t: &SourceTensor, blocks: Vec<u8>) -> Result<Vec<u8>, ExportError> {
    let error = |message: String| ExportError::Q8_0 {
        name: t.name.clone(),
        message,
    };
    let values: usize = t.shape.iter().product();
    let expected = values / gguf::q8::BLOCK * gguf::q8::BLOCK_BYTES;
    if blocks.len() != expected {
        return Err(error(format!(
            "{} bytes of Q8_0 blocks, its shape {:?} needs {expected}",
            blocks.len(),
            t.shape
        )));
    }
    match gguf::q8::first_non_finite_scale(&blocks) {
        Some(block) => Err(error(format!(
            "block {block} (values {} to {}) has no finite f16 scale (store the table as F32)",
            block * gguf::q8::BLOCK,
            (block + 1) * gguf::q8::BLOCK - 1
        ))),
        None => Ok(blocks),
    }
}

/// Little-endian BF16 bytes; the values must be BF16 values already (an import keeps them).
fn to_bf16_bytes(t: &SourceTensor, values: &[f32]) -> Result<Vec<u8>, ExportError> {
    let mut bytes = Vec::with_capacity(2 * values.len());
    for (index, &value) in values.iter().enumerate() {
        let h = half::bf16::from_f32(value);
        if h.to_f32() != value {
            return Err(ExportError::Config(format!(
                "tensor {:?}: value {value} at index {index} is not a BF16 value",
                t.name
            )));
        }
        bytes.extend_from_slice(&h.to_le_bytes());
    }
    Ok(bytes)
}

/// Little-endian F16 bytes of the embedding; a value that would become infinite is an error.
fn to_f16_bytes(t: &SourceTensor, values: &[f32]) -> Result<Vec<u8>, ExportError> {
    let mut bytes = Vec::with_capacity(2 * values.len());
    for (index, &value) in values.iter().enumerate() {
        let h = f16::from_f32(value);
        if h.is_infinite() {
            return Err(ExportError::F16Range {
                name: t.name.clone(),
                index,
                value,
            });
        }
        bytes.extend_from_slice(&h.to_le_bytes());
    }
    Ok(bytes)
}

/// The .mhc file of the mHC tensors among `sources`, checked as the loader checks it.
fn mhc_file(
    n: NStreams,
    sources: &[SourceTensor],
    tensors: &dyn Fn(&str) -> Option<F32Tensor>,
) -> Result<MhcFile, ExportError> {
    let mhc_sources: Vec<&SourceTensor> = sources
        .iter()
        .filter(|t| matches!(t.role, TensorRole::Mhc { .. }))
        .collect();
    let mut modules = Vec::with_capacity(mhc_sources.len());
    for t in &mhc_sources {
        // `fetch` checked the length, so the conversions to arrays hold.
        let flat = fetch(tensors, t)?;
        modules.push(match n {
            NStreams::Two => {
                MhcParams::Two(Mhc2::from_flat(flat.try_into().expect("checked length")))
            }
            NStreams::Four => {
                MhcParams::Four(Mhc4::from_flat(flat.try_into().expect("checked length")))
            }
        });
    }
    let file = MhcFile::new(n, modules).map_err(|e| ExportError::Config(e.to_string()))?;
    file.check_doubly_stochastic(DOUBLY_STOCHASTIC_TOLERANCE)
        .map_err(|e| ExportError::Mhc {
            name: mhc_sources[e.module].name.clone(),
            message: e.to_string(),
        })?;
    Ok(file)
}

/// A new empty file beside `path` (same folder, so the final rename is atomic), removed when
/// dropped unless persisted.
fn staging_path(path: &Path) -> Result<tempfile::TempPath, ExportError> {
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map_or("model".into(), |n| n.to_string_lossy());
    tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".partial")
        .tempfile_in(folder)
        .map(tempfile::NamedTempFile::into_temp_path)
        .map_err(|e| write_error(path, e))
}

fn persist(staged: tempfile::TempPath, path: &Path) -> Result<(), ExportError> {
    staged.persist(path).map_err(|e| write_error(path, e.error))
}

fn file_len(path: &Path) -> Result<u64, ExportError> {
    std::fs::metadata(path)
        .map(|m| m.len())
        .map_err(|e| write_error(path, e))
}

fn write_error(path: &Path, e: io::Error) -> ExportError {
    ExportError::Write(format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::byte_level_json;
    use crate::Model;
    use std::collections::HashMap;
    use ternary::synthetic::uniform_values;

    /// 2 layers, dim 96 (rows of 96 weights: one short group), ffn 160 (ffn_down: one full group
    /// and one of 32).
    fn config(streams: usize, tied: bool) -> ModelConfig {
        ModelConfig {
            vocab_size: 300,
            dim: 96,
            n_layers: 2,
            n_heads: 4,
            n_kv_heads: 2,
            ffn_dim: 160,
            context_length: 64,
            rope_theta: 10_000.0,
            norm_eps: 1e-5,
            mhc_streams: streams,
            tied_embeddings: tied,
            moe: None,
            variant: Default::default(),
        }
    }

    /// Random values for every source tensor of `config`.
    fn checkpoint(config: &ModelConfig) -> HashMap<String, F32Tensor> {
        source_tensors(config)
            .into_iter()
            .enumerate()
            .map(|(i, t)| {
                let values = uniform_values(t.shape.iter().product(), i as u64 + 1);
                (
                    t.name,
                    F32Tensor {
                        shape: t.shape,
                        values,
                    },
                )
            })
            .collect()
    }

    fn export(
        dir: &Path,
        config: &ModelConfig,
        tensors: &HashMap<String, F32Tensor>,
    ) -> Result<ExportSummary, ExportError> {
        let json = byte_level_json(config.vocab_size);
        let lookup = |name: &str| tensors.get(name).cloned();
        let input = ExportInput {
            config,
            name: "unit",
            tokenizer_json: &json,
            embedding: EmbeddingType::F32,
            tensors: &lookup,
            ternary: None,
            chat: None,
        };
        write_model(&dir.join("m.gguf"), None, &input)
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn the_summary_counts_what_the_file_holds() {
        let dir = tempfile::tempdir().unwrap();
        for (streams, tied) in [(1, true), (2, false), (4, true)] {
            let config = config(streams, tied);
            let s = export(dir.path(), &config, &checkpoint(&config)).unwrap();
            let (c, kv, f, v) = (96u64, 48u64, 160u64, 300u64);
            let head = if tied { 0 } else { v * c };
            let per_layer = 2 * c * c + 2 * kv * c + 3 * f * c;
            assert_eq!(s.ternary_weights, 2 * per_layer + head);
            // A row of 96 weights: 24 code bytes + 1 scale = 28 bytes; ffn_down's rows of 160:
            // 40 bytes + 2 scales = 48 bytes.
            let rows_of_96 = 2 * (2 * c + 2 * kv + 2 * f) + if tied { 0 } else { v };
            assert_eq!(s.ternary_bytes, rows_of_96 * 28 + 2 * c * 48);
            let bits = 8.0 * s.ternary_bytes as f64 / s.ternary_weights as f64;
            assert_eq!(s.bits_per_ternary_weight, bits);
            // Short groups cost more than the 2 + 32/128 = 2.25 of full ones.
            assert!(bits > 2.25 && bits < 2.4, "{bits}");
            assert_eq!(s.gguf_bytes, std::fs::metadata(&s.gguf_path).unwrap().len());
            assert_eq!(s.mhc_bytes, config.bytes_mhc_file());
            assert_eq!(s.parameters, config.parameter_count());
            let (model, _) = Model::load(&s.gguf_path, None).unwrap();
            assert_eq!(model.config, config);
            let expected = if streams == 1 {
                vec!["m.gguf"]
            } else {
                vec!["m.gguf", "m.mhc"]
            };
            assert_eq!(files(dir.path()), expected, "no staging file left");
            std::fs::remove_file(&s.gguf_path).unwrap();
            if let Some(mhc) = &s.mhc_path {
                std::fs::remove_file(mhc).unwrap();
            }
        }
    }

    #[test]
    fn full_groups_cost_two_and_a_quarter_bits() {
        let dir = tempfile::tempdir().unwrap();
        let config = ModelConfig {
            dim: 128,
            ffn_dim: 256,
            ..config(1, true)
        };
        let s = export(dir.path(), &config, &checkpoint(&config)).unwrap();
        assert_eq!(s.bits_per_ternary_weight, 2.25);
    }

    #[test]
    fn bad_tensors_are_named_and_leave_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(2, false);
        let good = checkpoint(&config);
        let broken = |f: &dyn Fn(&mut HashMap<String, F32Tensor>)| {
            let mut t = good.clone();
            f(&mut t);
            let e = export(dir.path(), &config, &t).unwrap_err();
            assert!(files(dir.path()).is_empty(), "{e}: {:?}", files(dir.path()));
            e.to_string()
        };
        let e = broken(&|t| {
            t.remove("blk.1.ffn_up.weight");
        });
        assert_eq!(e, "tensor \"blk.1.ffn_up.weight\" is missing");
        let e = broken(&|t| {
            t.get_mut("blk.0.attn_k.weight").unwrap().shape = vec![96, 48];
        });
        assert_eq!(
            e,
            "tensor \"blk.0.attn_k.weight\" has shape [96, 48], expected [48, 96]"
        );
        let e = broken(&|t| {
            t.get_mut("output_norm.weight").unwrap().values[7] = f32::NAN;
        });
        assert_eq!(
            e,
            "tensor \"output_norm.weight\" has a non-finite value (NaN) at index 7"
        );
        let e = broken(&|t| {
            t.get_mut("blk.1.attn_mhc").unwrap().shape = vec![40];
        });
        assert!(e.starts_with("tensor \"blk.1.attn_mhc\" has shape [40], expected [9]"));
        let e = broken(&|t| {
            t.remove("output.weight");
        });
        assert!(e.contains("output.weight"), "{e}");
        // A huge mHC logit saturates the sigmoid into exact 0/1 entries: still doubly stochastic.
        let mut t = good.clone();
        t.get_mut("blk.0.ffn_mhc").unwrap().values[0] = 1e30;
        assert!(export(dir.path(), &config, &t).is_ok());
    }

    /// The raw bytes of tensor `name` in `path`.
    fn tensor_bytes(path: &Path, name: &str) -> (GgmlType, Vec<u8>) {
        let file = gguf::GgufFile::open(path).unwrap();
        let t = file.tensor(name).unwrap();
        (t.info.ggml_type(), t.data.to_vec())
    }

    #[test]
    fn q8_0_tables_are_quantized_with_llama_cpps_rule_or_kept_as_stored() {
        let dir = tempfile::tempdir().unwrap();
        for tied in [true, false] {
            let config = config(1, tied);
            let tensors = checkpoint(&config);
            let json = byte_level_json(config.vocab_size);
            let lookup = |name: &str| tensors.get(name).cloned();
            let input = ExportInput {
                config: &config,
                name: "unit",
                tokenizer_json: &json,
                embedding: EmbeddingType::Q8_0,
                tensors: &lookup,
                ternary: None,
                chat: None,
            };
            let gguf = dir.path().join("q.gguf");
            write_model(&gguf, None, &input).unwrap();
            let (ggml_type, bytes) = tensor_bytes(&gguf, EMBEDDING);
            assert_eq!(ggml_type, GgmlType::Q8_0);
            let mut expected = Vec::new();
            gguf::q8::quantize_into(&tensors[EMBEDDING].values, &mut expected);
            assert_eq!(bytes, expected);
            let (model, _) = Model::load(&gguf, None).unwrap();
            let crate::model::Embedding::Q8_0(table) = &model.embedding else {
                panic!("a Q8_0 embedding")
            };
            let mut row = vec![0.0; config.dim];
            table.row_into(7, &mut row);
            let mut values = Vec::new();
            gguf::q8::dequantize_into(&expected, &mut values);
            assert_eq!(row, values[7 * config.dim..8 * config.dim]);
            // Blocks already Q8_0 are kept even where the rule would write others (a block
            // whose largest code is 100, not 127).
            let mut stored = expected.clone();
            stored[2..34].fill(100);
            let keep = |name: &str| (name == EMBEDDING).then(|| stored.clone());
            write_model_keeping_q8_0(&gguf, None, &input, &keep).unwrap();
            assert_eq!(tensor_bytes(&gguf, EMBEDDING).1, stored);
            // Stored blocks are checked as the loader checks them.
            let short = |name: &str| (name == EMBEDDING).then(|| stored[1..].to_vec());
            let e = write_model_keeping_q8_0(&gguf, None, &input, &short).unwrap_err();
            assert!(e.to_string().contains("bytes of Q8_0 blocks"), "{e}");
            let mut nan = stored.clone();
            nan[34..36].copy_from_slice(&0x7e00u16.to_le_bytes());
            let nan = |name: &str| (name == EMBEDDING).then(|| nan.clone());
            let e = write_model_keeping_q8_0(&gguf, None, &input, &nan).unwrap_err();
            assert!(e.to_string().contains("block 1 (values 32 to 63)"), "{e}");
        }
    }

    #[test]
    fn q8_0_refuses_rows_of_partial_blocks_and_values_beyond_f16_scales() {
        let dir = tempfile::tempdir().unwrap();
        let config = ModelConfig {
            dim: 80,
            n_heads: 2,
            n_kv_heads: 1,
            ..config(1, true)
        };
        let tensors = checkpoint(&config);
        let json = byte_level_json(config.vocab_size);
        let lookup = |name: &str| tensors.get(name).cloned();
        let mut input = ExportInput {
            config: &config,
            name: "unit",
            tokenizer_json: &json,
            embedding: EmbeddingType::Q8_0,
            tensors: &lookup,
            ternary: None,
            chat: None,
        };
        let gguf = dir.path().join("q.gguf");
        let e = write_model(&gguf, None, &input).unwrap_err();
        assert!(e.to_string().contains("dim is 80"), "{e}");
        let config = self::config(1, true);
        let mut big = checkpoint(&config);
        big.get_mut(EMBEDDING).unwrap().values[40] = 1e7;
        let lookup = |name: &str| big.get(name).cloned();
        input.config = &config;
        input.tensors = &lookup;
        let e = write_model(&gguf, None, &input).unwrap_err();
        assert!(
            e.to_string()
                .contains("block 1 (values 32 to 63) has no finite f16 scale"),
            "{e}"
        );
        assert!(files(dir.path()).is_empty());
    }

    #[test]
    fn bad_outputs_and_tokenizers_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let plain = config(1, true);
        let tensors = checkpoint(&plain);
        let json = byte_level_json(400);
        let lookup = |name: &str| tensors.get(name).cloned();
        let mut input = ExportInput {
            config: &plain,
            name: "unit",
            tokenizer_json: &json,
            embedding: EmbeddingType::F16,
            tensors: &lookup,
            ternary: None,
            chat: None,
        };
        let gguf = dir.path().join("m.gguf");
        let e = write_model(&gguf, None, &input).unwrap_err();
        assert!(
            e.to_string().contains("400 tokens, more than") && e.to_string().contains("300"),
            "{e}"
        );
        let json = byte_level_json(300);
        input.tokenizer_json = &json;
        let e = write_model(&gguf, Some(&dir.path().join("m.mhc")), &input).unwrap_err();
        assert!(e.to_string().contains("plain residuals"), "{e}");
        let e = write_model(&dir.path().join("no/such/m.gguf"), None, &input).unwrap_err();
        assert!(matches!(e, ExportError::Write(_)), "{e}");
        assert!(files(dir.path()).is_empty());

        let mut big = tensors.clone();
        big.get_mut(EMBEDDING).unwrap().values[3] = 1e6;
        let lookup = |name: &str| big.get(name).cloned();
        input.tensors = &lookup;
        let e = write_model(&gguf, None, &input).unwrap_err();
        assert!(matches!(e, ExportError::F16Range { index: 3, .. }), "{e}");
        assert!(files(dir.path()).is_empty());
    }
}
