//! A llama.cpp GGUF file of architecture `llama` or `bitnet` whose weight matrices are TQ1_0 or
//! TQ2_0.
//!
//! Tensor names are llama.cpp's, which are this project's too. Every ternary matrix keeps its
//! trits and its f16 block scales (one per 256 weights of a row, repeated onto the two groups of
//! 128 it covers). `llama` rotates pairs (2i, 2i+1) in RoPE: its q and k rows are reordered to
//! the rotate-half layout ([`crate::rotate_half_source_row`]), which moves rows whole, blocks
//! included. `bitnet` (llama.cpp's BitNet b1.58 graph) already rotates halves, has BitNet's
//! sub-layer norms with a SiLU-gated FFN, and always uses the embedding as its output.
//! The embedding and an untied output head stay in their type (F32, F16, BF16, or Q8_0 with
//! every block kept as stored; both F32 if they differ); an output head in TQ1_0/TQ2_0 stays
//! ternary. Any other type is refused by name.

use std::collections::HashMap;
use std::path::Path;

use gguf::{tq, GgmlType, GgufFile, Value};
use model::export::{EmbeddingType, F32Tensor};
use model::tokenizer::ChatSpec;
use model::{FfnActivation, ModelConfig, ScaleGranularity, Variant};

use crate::{planar_from_blocks, rotate_half_source_row, widen_le16, ImportError, Imported};

/// Architectures read.
const ARCHITECTURES: [&str; 2] = ["llama", "bitnet"];

/// Reads `path`.
pub fn import(path: &Path) -> Result<Imported, ImportError> {
    let invalid = |m: String| ImportError::invalid(path, m);
    let unsupported = |m: String| ImportError::unsupported(path, m);
    let file = GgufFile::open(path).map_err(|e| invalid(e.to_string()))?;
    let arch = file
        .get("general.architecture")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("no general.architecture".into()))?;
    if !ARCHITECTURES.contains(&arch) {
        return Err(unsupported(format!(
            "architecture {arch:?} is not supported (supported: {})",
            ARCHITECTURES.join(", ")
        )));
    }
    let key = |k: &str| format!("{arch}.{k}");
    let int = |k: &str| -> Result<Option<usize>, ImportError> {
        file.get(&key(k))
            .map(|v| {
                v.as_u64()
                    .map(|v| v as usize)
                    .ok_or_else(|| invalid(format!("metadata {} is not an integer", key(k))))
            })
            .transpose()
    };
    let required =
        |k: &str| int(k)?.ok_or_else(|| invalid(format!("metadata {} is missing", key(k))));
    let float = |k: &str, default: f32| match file.get(&key(k)) {
        None => Ok(default),
        Some(Value::F32(v)) => Ok(*v),
        Some(Value::F64(v)) => Ok(*v as f32),
        Some(_) => Err(invalid(format!("metadata {} is not a float", key(k)))),
    };
    if let Some(scaling) = file.get(&key("rope.scaling.type")).and_then(Value::as_str) {
        if scaling != "none" {
            return Err(unsupported(format!(
                "RoPE scaling {scaling:?} is not supported"
            )));
        }
    }

    let tokenizer = crate::vocab::tokenizer_json(&file).map_err(|e| match e {
        crate::vocab::VocabError::Invalid(m) => invalid(m),
        crate::vocab::VocabError::Unsupported(m) => unsupported(m),
    })?;
    let n_tokens = tokenizer.tokens;

    let dim = required("embedding_length")?;
    let n_heads = required("attention.head_count")?;
    let bitnet = arch == "bitnet";
    let embd = file
        .tensor("token_embd.weight")
        .ok_or_else(|| invalid("tensor \"token_embd.weight\" is missing".into()))?;
    let vocab_size = embd.info.shape()[0] as usize;
    let output = file.tensor("output.weight");
    if bitnet && output.is_some() {
        return Err(invalid(
            "tensor \"output.weight\": llama.cpp's bitnet reads its output from the embedding, \
             so the file should not have one"
                .into(),
        ));
    }
    if let Some(t) = file
        .tensor_infos()
        .iter()
        .find(|t| t.name().ends_with(".scale"))
    {
        return Err(unsupported(format!(
            "tensor {:?}: separate per-matrix scale tensors are not supported (TQ1_0/TQ2_0 \
             blocks carry their scales)",
            t.name()
        )));
    }
    let ternary_head = output.is_some_and(|t| tq::is_ternary_type(t.info.ggml_type()));
    let mut config = ModelConfig {
        vocab_size,
        dim,
        n_layers: required("block_count")?,
        n_heads,
        n_kv_heads: int("attention.head_count_kv")?.unwrap_or(n_heads),
        ffn_dim: required("feed_forward_length")?,
        context_length: required("context_length")?,
        rope_theta: float("rope.freq_base", 10_000.0)?,
        norm_eps: float("attention.layer_norm_rms_epsilon", 1e-5)?,
        mhc_streams: 1,
        tied_embeddings: output.is_none(),
        moe: None,
        variant: Variant {
            ffn_activation: FfnActivation::Swiglu,
            sub_norms: bitnet,
            dense_head: output.is_some() && !ternary_head,
            weight_scales: ScaleGranularity::Block256,
        },
    };
    config.validate().map_err(|e| invalid(e.to_string()))?;
    if let Some(rotated) = int("rope.dimension_count")? {
        if rotated != config.head_dim() {
            return Err(unsupported(format!(
                "RoPE on {rotated} of {} channels per head is not supported (only all of them)",
                config.head_dim()
            )));
        }
    }
    if n_tokens > vocab_size {
        return Err(invalid(format!(
            "the tokenizer has {n_tokens} tokens, the embedding {vocab_size} rows"
        )));
    }

    // Tables: the embedding and a dense head in one storage type.
    let table_types: Vec<GgmlType> = std::iter::once(embd.info.ggml_type())
        .chain(output.filter(|_| !ternary_head).map(|t| t.info.ggml_type()))
        .collect();
    let embedding = match table_types.as_slice() {
        [GgmlType::F16] | [GgmlType::F16, GgmlType::F16] => EmbeddingType::F16,
        [GgmlType::Bf16] | [GgmlType::Bf16, GgmlType::Bf16] => EmbeddingType::Bf16,
        [GgmlType::Q8_0] | [GgmlType::Q8_0, GgmlType::Q8_0] => EmbeddingType::Q8_0,
        _ => EmbeddingType::F32,
    };
    let mut tables = HashMap::new();
    let mut q8_0 = HashMap::new();
    let mut ternary = HashMap::new();
    // llama.cpp's conversion of a BitNet model repeats its one scale per matrix in every block:
    // then the model's granularity is the matrix, which the loader stores in fewer bytes.
    let mut one_scale_per_matrix = true;
    let head_dim = config.head_dim();
    let matrices: std::collections::HashSet<String> = config
        .ternary_weights()
        .into_iter()
        .map(|(name, ..)| name)
        .collect();
    for t in file.tensors() {
        let name = t.info.name();
        let ggml_type = t.info.ggml_type();
        if matrices.contains(name) && !tq::is_ternary_type(ggml_type) {
            return Err(unsupported(format!(
                "tensor {name:?} is {ggml_type}: weight matrices must be TQ1_0 or TQ2_0"
            )));
        }
        if tq::is_ternary_type(ggml_type) {
            let decoded = tq::decode(&t).map_err(|e| invalid(e.to_string()))?;
            let (rows, cols) = (decoded.rows, decoded.cols);
            let first = decoded.block_scales[0].to_bits();
            one_scale_per_matrix &= decoded.block_scales.iter().all(|s| s.to_bits() == first);
            let (trits, scales) = if !bitnet && is_rope_projection(name) {
                let source = |row| rotate_half_source_row(row, head_dim);
                (
                    crate::permute_rows(&decoded.trits, cols, source),
                    crate::permute_rows(&decoded.block_scales, cols / tq::BLOCK, source),
                )
            } else {
                (decoded.trits, decoded.block_scales)
            };
            let w = planar_from_blocks(rows, cols, &trits, &scales, Some(tq::BLOCK))
                .map_err(|e| invalid(format!("tensor {name:?}: {e}")))?;
            ternary.insert(name.to_string(), w);
            continue;
        }
        let shape: Vec<usize> = t.info.shape().iter().map(|&d| d as usize).collect();
        let table = name == "token_embd.weight" || name == "output.weight";
        let values: Vec<f32> = match ggml_type {
            GgmlType::F32 => t.f32_values().expect("F32").into_owned(),
            GgmlType::F16 => widen_le16(t.data, gguf::types::f16_to_f32),
            GgmlType::Bf16 => widen_le16(t.data, gguf::types::bf16_to_f32),
            // Kept as stored (the reader checked the length; the writer checks the scales).
            GgmlType::Q8_0 if table => {
                q8_0.insert(name.to_string(), (shape, t.data.to_vec()));
                continue;
            }
            other => {
                let role = if table {
                    "supported types here: F32, F16, BF16, Q8_0"
                } else if name.ends_with("norm.weight") {
                    "supported types here: F32, F16, BF16"
                } else {
                    "weight matrices must be TQ1_0 or TQ2_0"
                };
                return Err(unsupported(format!("tensor {name:?} is {other}: {role}")));
            }
        };
        tables.insert(name.to_string(), F32Tensor { shape, values });
    }
    if one_scale_per_matrix {
        config.variant.weight_scales = ScaleGranularity::Tensor;
    }
    let name = file
        .get("general.name")
        .and_then(Value::as_str)
        .unwrap_or("imported")
        .to_string();
    Ok(Imported {
        name,
        source_kind: format!("llama.cpp GGUF ({arch}, {})", weight_types(&file)),
        config,
        embedding,
        tables,
        q8_0,
        ternary,
        chat: chat_spec(&file, path)?,
        tokenizer_json: tokenizer.json,
    })
}

/// Whether a tensor is a q or k projection (rows in llama.cpp's interleaved RoPE order).
fn is_rope_projection(name: &str) -> bool {
    name.ends_with(".attn_q.weight") || name.ends_with(".attn_k.weight")
}

/// The ternary types the file's matrices use, for the summary ("TQ2_0", "TQ1_0 + TQ2_0").
fn weight_types(file: &GgufFile) -> String {
    let mut types: Vec<&str> = file
        .tensor_infos()
        .iter()
        .map(|t| t.ggml_type())
        .filter(|&t| tq::is_ternary_type(t))
        .map(GgmlType::name)
        .collect();
    types.sort_unstable();
    types.dedup();
    types.join(" + ")
}

/// The chat settings: the file's template (or a plain "role: content" one when it has none,
/// said in the template itself), its BOS/EOS ids, and the end-of-turn token as a stop token.
fn chat_spec(file: &GgufFile, path: &Path) -> Result<ChatSpec, ImportError> {
    let id = |key: &str| -> Option<u32> { file.get(key)?.as_u64().map(|v| v as u32) };
    let eos = id("tokenizer.ggml.eos_token_id")
        .ok_or_else(|| ImportError::invalid(path, "no tokenizer.ggml.eos_token_id"))?;
    let mut stop = vec![eos];
    if let Some(eot) = id("tokenizer.ggml.eot_token_id") {
        if eot != eos {
            stop.push(eot);
        }
    }
    let template = file
        .get("tokenizer.chat_template")
        .and_then(Value::as_str)
        .unwrap_or(PLAIN_TEMPLATE)
        .to_string();
    let add_bos = match file.get("tokenizer.ggml.add_bos_token") {
        Some(Value::Bool(b)) => *b,
        _ => true,
    };
    Ok(ChatSpec {
        template,
        bos: id("tokenizer.ggml.bos_token_id"),
        add_bos,
        eos,
        stop,
    })
}

/// The template of a file that carries none.
const PLAIN_TEMPLATE: &str = "{# no chat template in the source file #}{{ bos_token }}\
    {% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}assistant:";
