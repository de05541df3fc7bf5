//! A GGUF file's `tokenizer.ggml.*` arrays rebuilt into a Hugging Face `tokenizer.json`.
//!
//! Supported: `tokenizer.ggml.model = "gpt2"` (byte-level BPE: `tokens`, `merges`, `token_type`)
//! with the pre-tokenizers `llama-bpe` (Llama 3's split pattern, merges ignored for whole-word
//! vocabulary hits, as its own tokenizer.json says) and `default` / `gpt-2` (GPT-2's pattern).
//! Control tokens (type 3) become special added tokens, user-defined ones (type 4) plain added
//! tokens; the rest form the BPE vocabulary. Other models (`llama`: SentencePiece) and other
//! pre-tokenizers are refused by name.

use gguf::{Array, Gguf, Value};
use serde_json::{json, Map, Value as Json};

/// Token types of `tokenizer.ggml.token_type` (llama.cpp's `llama_token_type`).
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;

/// Llama 3's pre-tokenizer split pattern (as its tokenizer.json states it).
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Why the vocabulary could not be rebuilt: the message names the key.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum VocabError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Unsupported(String),
}

/// The `tokenizer.json` document of the file's vocabulary.
pub fn tokenizer_json<B: AsRef<[u8]>>(file: &Gguf<B>) -> Result<String, VocabError> {
    let string = |key: &str| file.get(key).and_then(Value::as_str);
    let model = string("tokenizer.ggml.model").ok_or_else(|| {
        VocabError::Invalid("no tokenizer.ggml.model: the file carries no tokenizer".into())
    })?;
    if model != "gpt2" {
        return Err(VocabError::Unsupported(format!(
            "tokenizer.ggml.model {model:?} is not supported (only \"gpt2\", byte-level BPE)"
        )));
    }
    let pre = string("tokenizer.ggml.pre").unwrap_or("default");
    let (pre_tokenizer, ignore_merges) = match pre {
        "llama-bpe" | "llama3" => (
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": LLAMA3_PATTERN}, "behavior": "Isolated",
                 "invert": false},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
                 "use_regex": false}
            ]}),
            true,
        ),
        "default" | "gpt-2" | "gpt2" => (
            json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
                   "use_regex": true}),
            false,
        ),
        other => {
            return Err(VocabError::Unsupported(format!(
                "tokenizer.ggml.pre {other:?} is not supported (known: \"llama-bpe\", \"default\", \"gpt-2\")"
            )))
        }
    };
    let tokens = match file.get("tokenizer.ggml.tokens") {
        Some(Value::Array(Array::String(tokens))) => tokens,
        _ => {
            return Err(VocabError::Invalid(
                "tokenizer.ggml.tokens is missing or not an array of strings".into(),
            ))
        }
    };
    let types: Vec<i32> = match file.get("tokenizer.ggml.token_type") {
        None => vec![1; tokens.len()],
        Some(Value::Array(Array::I32(types))) if types.len() == tokens.len() => types.clone(),
        Some(_) => {
            return Err(VocabError::Invalid(format!(
                "tokenizer.ggml.token_type is not an array of {} i32",
                tokens.len()
            )))
        }
    };
    let merges = match file.get("tokenizer.ggml.merges") {
        Some(Value::Array(Array::String(merges))) => merges.clone(),
        None => Vec::new(),
        Some(_) => {
            return Err(VocabError::Invalid(
                "tokenizer.ggml.merges is not an array of strings".into(),
            ))
        }
    };
    let mut vocab = Map::new();
    let mut added = Vec::new();
    for (id, (token, &kind)) in tokens.iter().zip(&types).enumerate() {
        if kind == CONTROL || kind == USER_DEFINED {
            added.push(json!({"id": id, "content": token, "single_word": false,
                              "lstrip": false, "rstrip": false, "normalized": false,
                              "special": kind == CONTROL}));
        } else if vocab.insert(token.clone(), json!(id)).is_some() {
            return Err(VocabError::Invalid(format!(
                "tokenizer.ggml.tokens holds {token:?} twice"
            )));
        }
    }
    let document = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true,
                    "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
                  "continuing_subword_prefix": null, "end_of_word_suffix": null,
                  "fuse_unk": false, "byte_fallback": false, "ignore_merges": ignore_merges,
                  "vocab": Json::Object(vocab), "merges": merges}
    })
    .to_string();
    // The document must load as every tool will load it.
    document
        .parse::<tokenizers::Tokenizer>()
        .map_err(|e| VocabError::Invalid(format!("the rebuilt tokenizer does not load: {e}")))?;
    Ok(document)
}
