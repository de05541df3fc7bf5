//! The GGUF metadata of a nanochat model: the keys `quantize-export` writes and the loader reads.
//!
//! The file's ternary tensors record only `ceil(cols / 4)` code bytes per row, so the shapes come
//! from these hyper-parameters, and every tensor is checked against them on load.

use gguf::{Array, Gguf, Layout, Value, WriteError};

use crate::tokenizer::ChatSpec;

use crate::config::{FfnActivation, ModelConfig, MoeConfig, ScaleGranularity, Variant};

/// `general.architecture` of every nanochat file.
pub const ARCHITECTURE: &str = "nanochat";
/// The tokenizer's `tokenizer.json` document.
pub const TOKENIZER_KEY: &str = "tokenizer.huggingface.json";

const VOCAB: &str = "nanochat.vocab_size";
const DIM: &str = "nanochat.embedding_length";
const LAYERS: &str = "nanochat.block_count";
const HEADS: &str = "nanochat.attention.head_count";
const KV_HEADS: &str = "nanochat.attention.head_count_kv";
const FFN: &str = "nanochat.feed_forward_length";
const CONTEXT: &str = "nanochat.context_length";
const ROPE_THETA: &str = "nanochat.rope.freq_base";
const NORM_EPS: &str = "nanochat.attention.layer_norm_rms_epsilon";
const STREAMS: &str = "nanochat.mhc.stream_count";
const TIED: &str = "nanochat.tied_embeddings";
const EXPERTS: &str = "nanochat.expert_count";
const EXPERTS_USED: &str = "nanochat.expert_used_count";
// The architecture variants (crate::config::Variant): written only when not the default, so a
// file without them is what `train` makes.
const FFN_ACTIVATION: &str = "nanochat.ffn_activation";
const SUB_NORMS: &str = "nanochat.sub_norms";
const DENSE_HEAD: &str = "nanochat.dense_head";
const WEIGHT_SCALES: &str = "nanochat.weight_scale_granularity";

// The chat settings of a model with its own template (crate::tokenizer::ChatSpec): the GGUF
// standard keys, and the stop tokens (GGUF has a key per kind of end token; one list here).
const CHAT_TEMPLATE: &str = "tokenizer.chat_template";
const BOS_ID: &str = "tokenizer.ggml.bos_token_id";
const ADD_BOS: &str = "tokenizer.ggml.add_bos_token";
const EOS_ID: &str = "tokenizer.ggml.eos_token_id";
const STOP_IDS: &str = "nanochat.stop_token_ids";

/// Writes a model's own chat settings.
pub fn write_chat(layout: &mut Layout, chat: &ChatSpec) -> Result<(), WriteError> {
    layout.set(CHAT_TEMPLATE, chat.template.as_str())?;
    if let Some(bos) = chat.bos {
        layout.set(BOS_ID, bos)?;
    }
    layout.set(ADD_BOS, chat.add_bos)?;
    layout.set(EOS_ID, chat.eos)?;
    layout.set(STOP_IDS, Value::Array(Array::U32(chat.stop.clone())))?;
    Ok(())
}

/// The chat settings, `None` for a model with the native template (no `tokenizer.chat_template`).
pub fn read_chat<B: AsRef<[u8]>>(gguf: &Gguf<B>) -> Result<Option<ChatSpec>, String> {
    let Some(template) = gguf.get(CHAT_TEMPLATE) else {
        return Ok(None);
    };
    let template = template
        .as_str()
        .ok_or_else(|| format!("metadata {CHAT_TEMPLATE} is not a string"))?;
    let id = |key: &str| -> Result<Option<u32>, String> {
        gguf.get(key)
            .map(|v| {
                v.as_u64()
                    .and_then(|v| u32::try_from(v).ok())
                    .ok_or_else(|| format!("metadata {key} is not a token id"))
            })
            .transpose()
    };
    let eos = id(EOS_ID)?.ok_or_else(|| format!("metadata {EOS_ID} is missing"))?;
    let stop = match gguf.get(STOP_IDS) {
        None => vec![eos],
        Some(Value::Array(Array::U32(ids))) => ids.clone(),
        Some(_) => return Err(format!("metadata {STOP_IDS} is not an array of u32")),
    };
    let add_bos = match gguf.get(ADD_BOS) {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(format!("metadata {ADD_BOS} is not a bool")),
    };
    Ok(Some(ChatSpec {
        template: template.to_string(),
        bos: id(BOS_ID)?,
        add_bos,
        eos,
        stop,
    }))
}

/// Sets the architecture and every hyper-parameter of `config` in `layout`.
pub fn write_config(layout: &mut Layout, config: &ModelConfig) -> Result<(), WriteError> {
    layout.set("general.architecture", ARCHITECTURE)?;
    for (key, value) in [
        (VOCAB, config.vocab_size),
        (DIM, config.dim),
        (LAYERS, config.n_layers),
        (HEADS, config.n_heads),
        (KV_HEADS, config.n_kv_heads),
        (FFN, config.ffn_dim),
        (CONTEXT, config.context_length),
        (STREAMS, config.mhc_streams),
    ] {
        layout.set(key, value as u32)?;
    }
    layout.set(ROPE_THETA, config.rope_theta)?;
    layout.set(NORM_EPS, config.norm_eps)?;
    layout.set(TIED, config.tied_embeddings)?;
    if let Some(moe) = config.moe {
        layout.set(EXPERTS, moe.n_experts as u32)?;
        layout.set(EXPERTS_USED, moe.experts_per_token as u32)?;
    }
    let variant = config.variant;
    let default = Variant::default();
    if variant.ffn_activation != default.ffn_activation {
        layout.set(FFN_ACTIVATION, variant.ffn_activation.name())?;
    }
    if variant.sub_norms {
        layout.set(SUB_NORMS, true)?;
    }
    if variant.dense_head {
        layout.set(DENSE_HEAD, true)?;
    }
    if variant.weight_scales != default.weight_scales {
        layout.set(WEIGHT_SCALES, variant.weight_scales.name())?;
    }
    Ok(())
}

/// The variant keys; absent keys are the default, unknown values are named.
fn read_variant<B: AsRef<[u8]>>(gguf: &Gguf<B>) -> Result<Variant, String> {
    let flag = |key: &str| match gguf.get(key) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(format!("metadata {key} is not a bool")),
    };
    let name = |key: &str| match gguf.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_str()
            .map(Some)
            .ok_or_else(|| format!("metadata {key} is not a string")),
    };
    let ffn_activation = match name(FFN_ACTIVATION)? {
        None => FfnActivation::default(),
        Some(n) => FfnActivation::from_name(n).ok_or_else(|| {
            format!("metadata {FFN_ACTIVATION} is {n:?}: this engine runs \"swiglu\" and \"relu2\"")
        })?,
    };
    let weight_scales = match name(WEIGHT_SCALES)? {
        None => ScaleGranularity::default(),
        Some(n) => ScaleGranularity::from_name(n).ok_or_else(|| {
            format!(
                "metadata {WEIGHT_SCALES} is {n:?}: known are \"group128\", \"block256\" and \"tensor\""
            )
        })?,
    };
    Ok(Variant {
        ffn_activation,
        sub_norms: flag(SUB_NORMS)?,
        dense_head: flag(DENSE_HEAD)?,
        weight_scales,
    })
}

/// Reads and validates the hyper-parameters; the error names the missing or bad key.
pub fn read_config<B: AsRef<[u8]>>(gguf: &Gguf<B>) -> Result<ModelConfig, String> {
    match gguf.get("general.architecture").and_then(Value::as_str) {
        Some(ARCHITECTURE) => {}
        Some(other) => {
            return Err(format!(
                "general.architecture is {other:?}, not {ARCHITECTURE:?}: not a nanochat model"
            ))
        }
        None => return Err("no general.architecture: not a nanochat model file".into()),
    }
    let int = |key: &str| -> Result<usize, String> {
        gguf.get(key)
            .and_then(Value::as_u64)
            .and_then(|v| usize::try_from(v).ok())
            .ok_or_else(|| format!("metadata {key} is missing or not an unsigned integer"))
    };
    let float = |key: &str| -> Result<f32, String> {
        match gguf.get(key) {
            Some(Value::F32(v)) => Ok(*v),
            Some(Value::F64(v)) => Ok(*v as f32),
            _ => Err(format!("metadata {key} is missing or not a float")),
        }
    };
    let tied = match gguf.get(TIED) {
        Some(Value::Bool(b)) => *b,
        _ => return Err(format!("metadata {TIED} is missing or not a bool")),
    };
    let moe = match gguf.get(EXPERTS) {
        None => None,
        Some(_) => Some(MoeConfig {
            n_experts: int(EXPERTS)?,
            experts_per_token: int(EXPERTS_USED)?,
        }),
    };
    let config = ModelConfig {
        vocab_size: int(VOCAB)?,
        dim: int(DIM)?,
        n_layers: int(LAYERS)?,
        n_heads: int(HEADS)?,
        n_kv_heads: int(KV_HEADS)?,
        ffn_dim: int(FFN)?,
        context_length: int(CONTEXT)?,
        rope_theta: float(ROPE_THETA)?,
        norm_eps: float(NORM_EPS)?,
        mhc_streams: int(STREAMS)?,
        tied_embeddings: tied,
        moe,
        variant: read_variant(gguf)?,
    };
    config
        .validate()
        .map_err(|e| format!("hyper-parameters: {e}"))?;
    Ok(config)
}

/// The embedded tokenizer document.
pub fn read_tokenizer_json<B: AsRef<[u8]>>(gguf: &Gguf<B>) -> Result<&str, String> {
    gguf.get(TOKENIZER_KEY)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("no {TOKENIZER_KEY} string in the file (export embeds it)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(layout: &Layout) -> Gguf<Vec<u8>> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        gguf::GgufWriter::create(&path, layout)
            .unwrap()
            .finish()
            .unwrap();
        Gguf::parse(std::fs::read(&path).unwrap()).unwrap()
    }

    #[test]
    fn every_preset_round_trips_through_metadata() {
        for name in crate::config::PRESETS {
            let config = ModelConfig::preset(name).unwrap();
            let mut layout = Layout::new();
            write_config(&mut layout, &config).unwrap();
            assert_eq!(read_config(&parse(&layout)).unwrap(), config, "{name}");
        }
    }

    #[test]
    fn variants_round_trip_and_unknown_ones_are_named() {
        let mut config = ModelConfig::preset("tiny").unwrap();
        config.variant = Variant {
            ffn_activation: FfnActivation::Relu2,
            sub_norms: true,
            dense_head: true,
            weight_scales: ScaleGranularity::Tensor,
        };
        let mut layout = Layout::new();
        write_config(&mut layout, &config).unwrap();
        assert_eq!(read_config(&parse(&layout)).unwrap(), config);

        layout.set(FFN_ACTIVATION, "gelu").unwrap();
        let err = read_config(&parse(&layout)).unwrap_err();
        assert!(
            err.contains("gelu") && err.contains(FFN_ACTIVATION),
            "{err}"
        );
        let mut layout = Layout::new();
        write_config(&mut layout, &config).unwrap();
        layout.set(WEIGHT_SCALES, "row").unwrap();
        let err = read_config(&parse(&layout)).unwrap_err();
        assert!(err.contains("\"row\""), "{err}");
    }

    #[test]
    fn missing_or_wrong_keys_are_named() {
        let config = ModelConfig::preset("tiny").unwrap();
        let mut layout = Layout::new();
        write_config(&mut layout, &config).unwrap();
        layout.set(FFN, "wide").unwrap();
        let err = read_config(&parse(&layout)).unwrap_err();
        assert!(err.contains(FFN), "{err}");

        let mut layout = Layout::new();
        write_config(&mut layout, &config).unwrap();
        layout.set(HEADS, 3u32).unwrap();
        let err = read_config(&parse(&layout)).unwrap_err();
        assert!(err.contains("n_heads"), "{err}");

        let mut layout = Layout::new();
        layout.set("general.architecture", "llama").unwrap();
        assert!(read_config(&parse(&layout)).unwrap_err().contains("llama"));
        assert!(read_tokenizer_json(&parse(&layout)).is_err());
    }
}
