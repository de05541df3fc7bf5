//! A Hugging Face model folder: `config.json`, one or more `*.safetensors`, `tokenizer.json`,
//! `tokenizer_config.json` (chat template, BOS/EOS), optionally `generation_config.json`.
//!
//! Architectures (`config.json` `model_type`):
//! - `bitnet` (BitNet b1.58, transformers' `BitNetForCausalLM`): sub-layer norms, the
//!   `hidden_act` of the config (`relu2` or `silu`), one scale per matrix. Its projections are
//!   either packed (U8 `[out/4, in]`: byte `[r, c]` holds row `i·out/4 + r` in bits `2i..2i+1`
//!   as value + 1; the F32/BF16 `weight_scale` is `1/mean|W|` for `linear_class` "bitlinear",
//!   `mean|W|` for "autobitlinear" offline) or full-precision master weights quantized here with
//!   BitNet's own rule: `s = 1/max(mean|W|, 1e-5)`, `w = clamp(round(W·s), -1, 1)`, scale `1/s`.
//! - `llama` with weights that are ternary already: each matrix's values must be `{-a, 0, a}`
//!   for one `a` (its scale); anything else is refused, naming the tensor and the value.
//!
//! Weights stay as they are; the embedding and a dense head keep their type (F32/F16/BF16).

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use model::export::{EmbeddingType, F32Tensor};
use model::tokenizer::ChatSpec;
use model::{FfnActivation, ModelConfig, ScaleGranularity, Variant};
use safetensors::{Dtype, SafeTensors};
use serde_json::Value as Json;
use ternary::PlanarWeights;

use crate::{planar_from_blocks, widen_le16, ImportError, Imported};

/// Each block's projections: Hugging Face's module name, this project's GGUF name.
pub const PROJECTIONS: [(&str, &str); 7] = [
    ("self_attn.q_proj", "attn_q"),
    ("self_attn.k_proj", "attn_k"),
    ("self_attn.v_proj", "attn_v"),
    ("self_attn.o_proj", "attn_output"),
    ("mlp.gate_proj", "ffn_gate"),
    ("mlp.up_proj", "ffn_up"),
    ("mlp.down_proj", "ffn_down"),
];

/// BitNet's lower bound on a matrix's mean |W| before inverting it.
const ABSMEAN_EPS: f32 = 1e-5;

/// The model types read.
const MODEL_TYPES: [&str; 2] = ["bitnet", "llama"];

/// How the projections are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Projections {
    /// Packed 2-bit codes with `weight_scale` = 1 / mean|W| (transformers' `BitLinear`).
    PackedInverseScale,
    /// Packed (or unpacked ternary) codes with `weight_scale` = mean|W| (`AutoBitLinear` offline).
    PackedScale,
    /// Full-precision master weights, quantized with absmean per tensor.
    Master,
    /// Values that are ternary already (one magnitude per tensor).
    Ternary,
}

/// Reads the folder `dir`.
pub fn import(dir: &Path) -> Result<Imported, ImportError> {
    let config_path = dir.join("config.json");
    let hf = read_json(&config_path)?;
    let invalid = |m: String| ImportError::invalid(&config_path, m);
    let unsupported = |m: String| ImportError::unsupported(&config_path, m);
    let model_type = hf["model_type"]
        .as_str()
        .ok_or_else(|| invalid("no \"model_type\"".into()))?;
    if !MODEL_TYPES.contains(&model_type) {
        return Err(unsupported(format!(
            "model_type {model_type:?} is not supported (supported: {})",
            MODEL_TYPES.join(", ")
        )));
    }
    let bitnet = model_type == "bitnet";
    let int = |key: &str| -> Result<usize, ImportError> {
        hf[key]
            .as_u64()
            .map(|v| v as usize)
            .ok_or_else(|| invalid(format!("\"{key}\" is missing or not an integer")))
    };
    let activation = match hf["hidden_act"].as_str().unwrap_or("silu") {
        "silu" => FfnActivation::Swiglu,
        "relu2" => FfnActivation::Relu2,
        other => {
            return Err(unsupported(format!(
                "hidden_act {other:?} is not supported (supported: silu, relu2)"
            )))
        }
    };
    let rope_theta = hf["rope_parameters"]["rope_theta"]
        .as_f64()
        .or_else(|| hf["rope_theta"].as_f64())
        .unwrap_or(if bitnet { 500_000.0 } else { 10_000.0 });
    for key in ["rope_scaling", "rope_parameters"] {
        let kind = hf[key]["rope_type"].as_str().or(hf[key]["type"].as_str());
        if let Some(kind) = kind.filter(|k| *k != "default") {
            return Err(unsupported(format!(
                "RoPE scaling {kind:?} ({key}) is not supported"
            )));
        }
    }
    let projections = if bitnet {
        let quant = &hf["quantization_config"];
        match (
            quant["linear_class"].as_str(),
            quant["quantization_mode"].as_str(),
        ) {
            (None, _) | (_, Some("online")) => Projections::Master,
            (Some("bitlinear"), _) => Projections::PackedInverseScale,
            (Some("autobitlinear"), _) => Projections::PackedScale,
            (Some(other), _) => {
                return Err(unsupported(format!(
                    "quantization_config.linear_class {other:?} is not supported \
                     (supported: bitlinear, autobitlinear)"
                )))
            }
        }
    } else {
        Projections::Ternary
    };

    let weights = Weights::open(dir)?;
    let tied =
        hf["tie_word_embeddings"].as_bool().unwrap_or(false) || !weights.has("lm_head.weight");
    let n_heads = int("num_attention_heads")?;
    let config = ModelConfig {
        vocab_size: int("vocab_size")?,
        dim: int("hidden_size")?,
        n_layers: int("num_hidden_layers")?,
        n_heads,
        n_kv_heads: hf["num_key_value_heads"]
            .as_u64()
            .map_or(n_heads, |v| v as usize),
        ffn_dim: int("intermediate_size")?,
        context_length: int("max_position_embeddings")?,
        rope_theta: rope_theta as f32,
        norm_eps: hf["rms_norm_eps"].as_f64().unwrap_or(1e-5) as f32,
        mhc_streams: 1,
        tied_embeddings: tied,
        moe: None,
        variant: Variant {
            ffn_activation: activation,
            sub_norms: bitnet,
            dense_head: !tied,
            weight_scales: ScaleGranularity::Tensor,
        },
    };
    config.validate().map_err(|e| invalid(e.to_string()))?;

    let (embedding_values, embedding) = weights.float("model.embed_tokens.weight")?;
    let mut tables = HashMap::new();
    tables.insert("token_embd.weight".to_string(), embedding_values);
    if !tied {
        let (head, head_type) = weights.float("lm_head.weight")?;
        if head_type != embedding {
            return Err(weights.invalid(
                "lm_head.weight",
                "is stored in another type than the embedding",
            ));
        }
        tables.insert("output.weight".to_string(), head);
    }
    tables.insert(
        "output_norm.weight".to_string(),
        weights.float("model.norm.weight")?.0,
    );
    let mut ternary = HashMap::new();
    for l in 0..config.n_layers {
        let hf_name = |part: &str| format!("model.layers.{l}.{part}");
        let ours = |part: &str| format!("blk.{l}.{part}.weight");
        let mut norms = vec![
            ("input_layernorm", "attn_norm"),
            ("post_attention_layernorm", "ffn_norm"),
        ];
        if bitnet {
            norms.extend([
                ("self_attn.attn_sub_norm", "attn_sub_norm"),
                ("mlp.ffn_sub_norm", "ffn_sub_norm"),
            ]);
        }
        for (theirs, ours_name) in norms {
            let values = weights.float(&format!("{}.weight", hf_name(theirs)))?.0;
            tables.insert(ours(ours_name), values);
        }
        for (theirs, ours_name) in PROJECTIONS {
            let w = weights.projection(&hf_name(theirs), projections)?;
            ternary.insert(ours(ours_name), w);
        }
    }

    let (tokenizer_json, chat) = tokenizer(dir, &hf)?;
    let name = dir
        .file_name()
        .map_or("imported".into(), |n| n.to_string_lossy().into_owned());
    Ok(Imported {
        name,
        source_kind: format!(
            "Hugging Face {model_type} ({})",
            match projections {
                Projections::PackedInverseScale => "packed 2-bit, BitLinear",
                Projections::PackedScale => "packed 2-bit, AutoBitLinear offline",
                Projections::Master => "master weights quantized absmean per tensor",
                Projections::Ternary => "ternary values",
            }
        ),
        config,
        embedding,
        tables,
        q8_0: HashMap::new(),
        ternary,
        tokenizer_json,
        chat,
    })
}

fn read_json(path: &Path) -> Result<Json, ImportError> {
    let text = std::fs::read_to_string(path).map_err(|source| ImportError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| ImportError::invalid(path, e.to_string()))
}

/// The tokenizer document as it is, and the chat settings from tokenizer_config.json, the
/// model's config.json and generation_config.json (every `eos_token_id` named is a stop token).
fn tokenizer(dir: &Path, hf: &Json) -> Result<(String, ChatSpec), ImportError> {
    let json_path = dir.join("tokenizer.json");
    let json = std::fs::read_to_string(&json_path).map_err(|source| ImportError::Io {
        path: json_path.clone(),
        source,
    })?;
    let tokenizer = json
        .parse::<tokenizers::Tokenizer>()
        .map_err(|e| ImportError::invalid(&json_path, e.to_string()))?;
    let config_path = dir.join("tokenizer_config.json");
    let tc = read_json(&config_path)?;
    let invalid = |m: String| ImportError::invalid(&config_path, m);
    let template = match &tc["chat_template"] {
        Json::String(t) => t.clone(),
        Json::Array(named) => named
            .iter()
            .find(|t| t["name"] == "default")
            .and_then(|t| t["template"].as_str())
            .ok_or_else(|| invalid("chat_template has no template named \"default\"".into()))?
            .to_string(),
        _ => return Err(invalid("no chat_template".into())),
    };
    let token_id = |key: &str| -> Result<Option<u32>, ImportError> {
        let text = match &tc[key] {
            Json::Null => return Ok(None),
            Json::String(s) => s.as_str(),
            other => other["content"]
                .as_str()
                .ok_or_else(|| invalid(format!("{key} is neither a string nor a token")))?,
        };
        tokenizer
            .token_to_id(text)
            .map(Some)
            .ok_or_else(|| invalid(format!("{key} {text:?} is not a token of tokenizer.json")))
    };
    let bos = token_id("bos_token")?;
    let eos = token_id("eos_token")?.ok_or_else(|| invalid("no eos_token".into()))?;
    let mut stop = vec![eos];
    let generation = dir.join("generation_config.json");
    let generation = if generation.exists() {
        read_json(&generation)?
    } else {
        Json::Null
    };
    for value in [&hf["eos_token_id"], &generation["eos_token_id"]] {
        let ids: Vec<u64> = match value {
            Json::Array(ids) => ids.iter().filter_map(Json::as_u64).collect(),
            other => other.as_u64().into_iter().collect(),
        };
        for id in ids {
            let id = id as u32;
            if tokenizer.id_to_token(id).is_some() && !stop.contains(&id) {
                stop.push(id);
            }
        }
    }
    // A tokenizer whose post-processor starts sequences with BOS wants prompts to start with it.
    let add_bos = match (bos, tokenizer.encode("a", true)) {
        (Some(bos), Ok(e)) => e.get_ids().first() == Some(&bos),
        _ => false,
    } || tc["add_bos_token"].as_bool() == Some(true);
    Ok((
        json,
        ChatSpec {
            template,
            bos,
            add_bos,
            eos,
            stop,
        },
    ))
}

/// The folder's safetensors files, memory-mapped, and where each tensor lies (its header is
/// parsed once, when the file is opened).
struct Weights {
    files: Vec<(PathBuf, memmap2::Mmap)>,
    index: HashMap<String, TensorAt>,
}

/// A tensor of a safetensors file: which file, its dtype and shape, and its bytes in the map.
struct TensorAt {
    file: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: std::ops::Range<usize>,
}

impl Weights {
    fn open(dir: &Path) -> Result<Self, ImportError> {
        let listing = std::fs::read_dir(dir).map_err(|source| ImportError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let mut paths: Vec<PathBuf> = listing
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
            .collect();
        paths.sort();
        if paths.is_empty() {
            return Err(ImportError::invalid(
                dir,
                "no *.safetensors file in the folder",
            ));
        }
        let mut files = Vec::new();
        let mut index = HashMap::new();
        for path in paths {
            let io = |source| ImportError::Io {
                path: path.clone(),
                source,
            };
            let file = File::open(&path).map_err(io)?;
            // SAFETY: the map is read-only; the folder is the user's input, which nothing of
            // ours writes while importing (a file changed under us can give wrong values, not
            // unsafety in what follows: every read goes through safetensors' checked parser).
            let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
            let tensors = SafeTensors::deserialize(&map)
                .map_err(|e| ImportError::invalid(&path, e.to_string()))?;
            for (name, view) in tensors.tensors() {
                // The view's bytes lie within the map (the parser checked their range).
                let start = view.data().as_ptr() as usize - map.as_ptr() as usize;
                let at = TensorAt {
                    file: files.len(),
                    dtype: view.dtype(),
                    shape: view.shape().to_vec(),
                    bytes: start..start + view.data().len(),
                };
                index.insert(name, at);
            }
            files.push((path, map));
        }
        Ok(Weights { files, index })
    }

    fn has(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// The file holding the tensors (the first one when a tensor is missing, for messages).
    fn path(&self, name: &str) -> &Path {
        &self.files[self.index.get(name).map_or(0, |at| at.file)].0
    }

    fn invalid(&self, name: &str, what: &str) -> ImportError {
        ImportError::invalid(self.path(name), format!("tensor {name:?} {what}"))
    }

    /// The tensor's dtype, shape and bytes.
    fn raw(&self, name: &str) -> Result<(Dtype, &[usize], &[u8]), ImportError> {
        let at = self
            .index
            .get(name)
            .ok_or_else(|| self.invalid(name, "is missing"))?;
        Ok((
            at.dtype,
            &at.shape,
            &self.files[at.file].1[at.bytes.clone()],
        ))
    }

    /// A float tensor as f32 values, with the storage type it had.
    fn float(&self, name: &str) -> Result<(F32Tensor, EmbeddingType), ImportError> {
        let (dtype, shape, bytes) = self.raw(name)?;
        let (values, kind): (Vec<f32>, _) = match dtype {
            Dtype::F32 => (
                bytes
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
                EmbeddingType::F32,
            ),
            Dtype::F16 => (
                widen_le16(bytes, gguf::types::f16_to_f32),
                EmbeddingType::F16,
            ),
            Dtype::BF16 => (
                widen_le16(bytes, gguf::types::bf16_to_f32),
                EmbeddingType::Bf16,
            ),
            other => {
                return Err(ImportError::unsupported(
                    self.path(name),
                    format!("tensor {name:?} is {other:?}: supported here are F32, F16 and BF16"),
                ))
            }
        };
        let shape = shape.to_vec();
        Ok((F32Tensor { shape, values }, kind))
    }

    /// The projection `prefix.weight` (and `prefix.weight_scale`) as planar ternary weights.
    fn projection(&self, prefix: &str, kind: Projections) -> Result<PlanarWeights, ImportError> {
        let name = format!("{prefix}.weight");
        let (dtype, shape, bytes) = self.raw(&name)?;
        if shape.len() != 2 {
            return Err(self.invalid(&name, &format!("has shape {shape:?}, expected a matrix")));
        }
        let (rows, cols) = match dtype {
            Dtype::U8 => (4 * shape[0], shape[1]),
            _ => (shape[0], shape[1]),
        };
        let not_ternary = |what: String| self.invalid(&name, &what);
        let (trits, scale) = match kind {
            Projections::PackedInverseScale | Projections::PackedScale => {
                let trits = match dtype {
                    Dtype::U8 => unpack_rows(bytes, shape[0], cols).map_err(|index| {
                        not_ternary(format!(
                            "has the code 3 at byte {index}, not a ternary value"
                        ))
                    })?,
                    // AutoBitLinear checkpoints may hold the ternary values unpacked.
                    _ => self
                        .float(&name)?
                        .0
                        .values
                        .iter()
                        .map(|&v| match v {
                            -1.0 => Ok(-1),
                            0.0 => Ok(0),
                            1.0 => Ok(1),
                            _ => Err(not_ternary(format!("holds {v}, not a ternary value"))),
                        })
                        .collect::<Result<Vec<i8>, _>>()?,
                };
                let stored = self.scalar(&format!("{prefix}.weight_scale"))?;
                let scale = match kind {
                    Projections::PackedInverseScale => 1.0 / stored,
                    _ => stored,
                };
                (trits, scale)
            }
            Projections::Master => absmean_per_tensor(&self.float(&name)?.0.values),
            Projections::Ternary => {
                ternary_values(&self.float(&name)?.0.values).map_err(|(index, v)| {
                    not_ternary(format!(
                        "is not ternary: value {v} at index {index} is neither 0 nor ± the \
                         largest magnitude"
                    ))
                })?
            }
        };
        // A non-finite or negative scale is refused by the planar form (named below).
        planar_from_blocks(rows, cols, &trits, &[scale], None).map_err(|e| self.invalid(&name, &e))
    }

    /// A one-value tensor (a `weight_scale`) as f32.
    fn scalar(&self, name: &str) -> Result<f32, ImportError> {
        let (values, _) = self.float(name)?;
        match values.values.as_slice() {
            [v] => Ok(*v),
            other => Err(self.invalid(name, &format!("has {} values, expected one", other.len()))),
        }
    }
}

/// transformers' packed layout: `packed` is `[rows4, cols]`; byte `[r, c]` holds row `i·rows4 + r`
/// of the `[4·rows4, cols]` matrix in bits `2i..2i+1`, as value + 1. Err: the byte holding a 3.
fn unpack_rows(packed: &[u8], rows4: usize, cols: usize) -> Result<Vec<i8>, usize> {
    let mut trits = vec![0i8; 4 * rows4 * cols];
    for (index, &byte) in packed.iter().enumerate() {
        let (r, c) = (index / cols, index % cols);
        for i in 0..4 {
            let code = (byte >> (2 * i)) & 3;
            if code == 3 {
                return Err(index);
            }
            trits[(i * rows4 + r) * cols + c] = code as i8 - 1;
        }
    }
    Ok(trits)
}

/// BitNet's per-tensor quantization: `s = 1/max(mean|W|, 1e-5)`, trits
/// `clamp(round_ties_even(W·s), -1, 1)` (torch.round), the scale `1/s` that dequantizes them.
fn absmean_per_tensor(values: &[f32]) -> (Vec<i8>, f32) {
    let sum: f64 = values.iter().map(|v| f64::from(v.abs())).sum();
    let mean = ((sum / values.len().max(1) as f64) as f32).max(ABSMEAN_EPS);
    let inverse = 1.0 / mean;
    let trits = values
        .iter()
        .map(|&v| (v * inverse).round_ties_even().clamp(-1.0, 1.0) as i8)
        .collect();
    (trits, 1.0 / inverse)
}

/// Values that are ternary already: every one 0 or ± the largest magnitude `a` (the scale).
/// Err: the first value that is not.
fn ternary_values(values: &[f32]) -> Result<(Vec<i8>, f32), (usize, f32)> {
    let scale = values.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let trits = values
        .iter()
        .enumerate()
        .map(|(i, &v)| match v {
            _ if v == 0.0 => Ok(0),
            _ if v == scale => Ok(1),
            _ if v == -scale => Ok(-1),
            _ => Err((i, v)),
        })
        .collect::<Result<Vec<i8>, _>>()?;
    Ok((trits, scale))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_rows_come_in_blocks_of_a_quarter() {
        // 8 rows x 1 col: byte r holds rows r, r+2, r+4, r+6.
        let values: [i8; 8] = [1, -1, 0, 1, -1, -1, 0, 0];
        let mut packed = [0u8; 2];
        for (row, &v) in values.iter().enumerate() {
            packed[row % 2] |= ((v + 1) as u8) << (2 * (row / 2));
        }
        assert_eq!(unpack_rows(&packed, 2, 1).unwrap(), values);
        assert_eq!(unpack_rows(&[0b11], 1, 1), Err(0));
    }

    #[test]
    fn ternary_values_need_one_magnitude() {
        assert_eq!(
            ternary_values(&[0.5, -0.5, 0.0]).unwrap(),
            (vec![1, -1, 0], 0.5)
        );
        assert_eq!(ternary_values(&[0.5, 0.25]), Err((1, 0.25)));
    }

    #[test]
    fn absmean_rounds_half_to_even_like_torch() {
        // mean |W| = 1: 0.5 rounds to 0 (ties to even), 1.5 to 2 then clamps to 1.
        let (trits, scale) = absmean_per_tensor(&[0.5, -1.5, 1.0, 1.0]);
        assert_eq!((trits, scale), (vec![0, -1, 1, 1], 1.0));
    }
}
