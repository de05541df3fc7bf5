//! A GGUF file's `tokenizer.ggml.*` arrays rebuilt into a Hugging Face `tokenizer.json`.
//!
//! Supported:
//! - `tokenizer.ggml.model = "gpt2"` (byte-level BPE: `tokens`, `merges`, `token_type`) with the
//!   pre-tokenizers `llama-bpe` (Llama 3's split pattern, merges ignored for whole-word
//!   vocabulary hits, as its own tokenizer.json says) and `default` / `gpt-2` (GPT-2's pattern).
//!   Control tokens (type 3) become special added tokens, user-defined ones (type 4) plain added
//!   tokens; the rest form the BPE vocabulary.
//! - `tokenizer.ggml.model = "llama"` (SentencePiece BPE, as Llama 2 has: `tokens`, `scores`,
//!   `token_type`): spaces become `▁` after a leading one (`add_space_prefix`, default on), bytes
//!   without a piece fall back to the `<0xNN>` tokens, and the merges are rebuilt from the
//!   scores: every split of a piece into two pieces, ranked by the piece's score (highest
//!   first; SentencePiece merges the best-scoring pair first).
//!
//! Other models and other pre-tokenizers are refused by name.

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

/// A rebuilt `tokenizer.json` document and the number of tokens it defines.
pub struct RebuiltTokenizer {
    pub json: String,
    pub tokens: usize,
}

/// The `tokenizer.json` document of the file's vocabulary.
pub fn tokenizer_json<B: AsRef<[u8]>>(file: &Gguf<B>) -> Result<RebuiltTokenizer, VocabError> {
    let string = |key: &str| file.get(key).and_then(Value::as_str);
    let model = string("tokenizer.ggml.model").ok_or_else(|| {
        VocabError::Invalid("no tokenizer.ggml.model: the file carries no tokenizer".into())
    })?;
    match model {
        "gpt2" => {}
        "llama" => return sentencepiece_json(file),
        other => {
            return Err(VocabError::Unsupported(format!(
                "tokenizer.ggml.model {other:?} is not supported (supported: \"gpt2\", byte-level \
                 BPE, and \"llama\", SentencePiece BPE)"
            )))
        }
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
    let (tokens, types) = tokens_and_types(file)?;
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
    checked(document)
}

/// The document, if it loads as every tool will load it, with its token count.
fn checked(json: String) -> Result<RebuiltTokenizer, VocabError> {
    let tokens = json
        .parse::<tokenizers::Tokenizer>()
        .map_err(|e| VocabError::Invalid(format!("the rebuilt tokenizer does not load: {e}")))?
        .get_vocab_size(true);
    Ok(RebuiltTokenizer { json, tokens })
}

/// `tokenizer.ggml.tokens` and `tokenizer.ggml.token_type` (all normal when absent).
fn tokens_and_types<B: AsRef<[u8]>>(file: &Gguf<B>) -> Result<(&[String], Vec<i32>), VocabError> {
    let tokens = match file.get("tokenizer.ggml.tokens") {
        Some(Value::Array(Array::String(tokens))) => tokens,
        _ => {
            return Err(VocabError::Invalid(
                "tokenizer.ggml.tokens is missing or not an array of strings".into(),
            ))
        }
    };
    let types = match file.get("tokenizer.ggml.token_type") {
        None => vec![1; tokens.len()],
        Some(Value::Array(Array::I32(types))) if types.len() == tokens.len() => types.clone(),
        Some(_) => {
            return Err(VocabError::Invalid(format!(
                "tokenizer.ggml.token_type is not an array of {} i32",
                tokens.len()
            )))
        }
    };
    Ok((tokens, types))
}

/// Token type of an unknown-token piece (llama.cpp's `llama_token_type`).
const UNKNOWN: i32 = 2;

/// The SentencePiece BPE vocabulary (`tokenizer.ggml.model = "llama"`) as a tokenizer.json.
fn sentencepiece_json<B: AsRef<[u8]>>(file: &Gguf<B>) -> Result<RebuiltTokenizer, VocabError> {
    let (tokens, types) = tokens_and_types(file)?;
    let scores = match file.get("tokenizer.ggml.scores") {
        Some(Value::Array(Array::F32(scores))) if scores.len() == tokens.len() => scores,
        _ => {
            return Err(VocabError::Invalid(format!(
                "tokenizer.ggml.scores is missing or not an array of {} f32",
                tokens.len()
            )))
        }
    };
    let space_prefix = !matches!(
        file.get("tokenizer.ggml.add_space_prefix"),
        Some(Value::Bool(false))
    );
    let ids: std::collections::HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .map(|(id, t)| (t.as_str(), id))
        .collect();
    // Every split of a normal piece into two pieces, the pairs of one piece by their ids, then
    // all of them by the merged piece's score, best first (a stable sort keeps the rest).
    let mut merges: Vec<(f32, &str, &str)> = Vec::new();
    for (token, (&kind, &score)) in tokens.iter().zip(types.iter().zip(scores.iter())) {
        if kind != 1 {
            continue;
        }
        let mut splits: Vec<(usize, usize, &str, &str)> = token
            .char_indices()
            .skip(1)
            .filter_map(|(at, _)| {
                let (left, right) = token.split_at(at);
                Some((*ids.get(left)?, *ids.get(right)?, left, right))
            })
            .collect();
        splits.sort_unstable();
        merges.extend(splits.into_iter().map(|(_, _, l, r)| (score, l, r)));
    }
    merges.sort_by(|a, b| b.0.total_cmp(&a.0));
    let merges: Vec<Json> = merges.iter().map(|(_, l, r)| json!([l, r])).collect();
    let mut vocab = Map::new();
    let mut added = Vec::new();
    let mut unk = None;
    for (id, (token, &kind)) in tokens.iter().zip(&types).enumerate() {
        vocab.insert(token.clone(), json!(id));
        if kind == UNKNOWN {
            unk.get_or_insert(token.clone());
        }
        if kind == CONTROL || kind == UNKNOWN || kind == USER_DEFINED {
            added.push(json!({"id": id, "content": token, "single_word": false,
                              "lstrip": false, "rstrip": false, "normalized": false,
                              "special": kind != USER_DEFINED}));
        }
    }
    let mut normalizers = Vec::new();
    if space_prefix {
        normalizers.push(json!({"type": "Prepend", "prepend": "\u{2581}"}));
    }
    normalizers.push(json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"}));
    let mut decoders = vec![
        json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}),
        json!({"type": "ByteFallback"}),
        json!({"type": "Fuse"}),
    ];
    if space_prefix {
        decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    checked(
        json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": {"type": "Sequence", "normalizers": normalizers},
            "pre_tokenizer": null,
            "post_processor": null,
            "decoder": {"type": "Sequence", "decoders": decoders},
            "model": {"type": "BPE", "dropout": null, "unk_token": unk,
                      "continuing_subword_prefix": null, "end_of_word_suffix": null,
                      "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                      "vocab": Json::Object(vocab), "merges": merges}
        })
        .to_string(),
    )
}
