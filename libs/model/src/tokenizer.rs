//! The tokenizer every tool shares: a Hugging Face byte-level BPE `tokenizer.json` (trained by
//! `tokenize train`, embedded in the GGUF as `tokenizer.huggingface.json`), its special tokens, and
//! the chat template.
//!
//! Chat template (token ids, never parsed from text, so message content cannot forge a turn):
//! ```text
//! <|system|> content <|end|> <|user|> content <|end|> <|assistant|> content <|end|> ... <|assistant|>
//! ```
//! The model's reply ends with `<|end|>` (or `<|endoftext|>`, the document separator of the
//! training corpus); both are stop tokens.

use std::collections::HashMap;

/// Separates documents in token files; also a stop token.
pub const END_OF_TEXT: &str = "<|endoftext|>";
/// Starts a system message.
pub const SYSTEM: &str = "<|system|>";
/// Starts a user message.
pub const USER: &str = "<|user|>";
/// Starts an assistant message.
pub const ASSISTANT: &str = "<|assistant|>";
/// Ends any message.
pub const END: &str = "<|end|>";
/// Every special token, in the id order `tokenize train` gives them (0, 1, 2, ...).
pub const SPECIAL_TOKENS: [&str; 5] = [END_OF_TEXT, SYSTEM, USER, ASSISTANT, END];

/// Why a tokenizer could not be loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("tokenizer JSON does not load: {0}")]
    Load(String),
    #[error("tokenizer has no special token {0:?} (train it with `tokenize train`)")]
    MissingSpecial(&'static str),
    #[error("tokenizer failed: {0}")]
    Codec(String),
    #[error("unknown chat role {0:?} (expected system, user or assistant)")]
    UnknownRole(String),
}

/// One chat message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

/// A loaded tokenizer with its special token ids.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// The same tokenizer with special-token strings encoded as plain text (chat content).
    literal: tokenizers::Tokenizer,
    json: String,
    end_of_text: u32,
    system: u32,
    user: u32,
    assistant: u32,
    end: u32,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .finish()
    }
}

impl Tokenizer {
    /// Loads a `tokenizer.json` document; it must define every token of [`SPECIAL_TOKENS`].
    pub fn from_json(json: &str) -> Result<Self, TokenizerError> {
        let inner = json
            .parse::<tokenizers::Tokenizer>()
            .map_err(|e| TokenizerError::Load(e.to_string()))?;
        let id = |token: &'static str| {
            inner
                .token_to_id(token)
                .ok_or(TokenizerError::MissingSpecial(token))
        };
        Ok(Tokenizer {
            end_of_text: id(END_OF_TEXT)?,
            system: id(SYSTEM)?,
            user: id(USER)?,
            assistant: id(ASSISTANT)?,
            end: id(END)?,
            json: json.to_string(),
            literal: {
                let mut literal = inner.clone();
                literal.set_encode_special_tokens(true);
                literal
            },
            inner,
        })
    }

    /// The `tokenizer.json` document this was loaded from.
    pub fn json(&self) -> &str {
        &self.json
    }

    /// Tokens, including the special ones.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The underlying tokenizers-crate tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Id of `<|endoftext|>`.
    pub fn end_of_text(&self) -> u32 {
        self.end_of_text
    }

    /// Tokens that end a reply: `<|end|>` and `<|endoftext|>`.
    pub fn stop_tokens(&self) -> [u32; 2] {
        [self.end, self.end_of_text]
    }

    /// Token ids of plain text (special-token strings in the text become their tokens).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        self.inner
            .encode_fast(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| TokenizerError::Codec(e.to_string()))
    }

    /// Text of token ids, special tokens left out.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        self.inner
            .decode(ids, true)
            .map_err(|e| TokenizerError::Codec(e.to_string()))
    }

    /// The prompt of a chat (see the module docs), ending with `<|assistant|>` so the model writes
    /// the assistant's reply.
    pub fn encode_chat(&self, messages: &[ChatMessage]) -> Result<Vec<u32>, TokenizerError> {
        let mut ids = Vec::new();
        for m in messages {
            let role = match m.role.as_str() {
                "system" => self.system,
                "user" => self.user,
                "assistant" => self.assistant,
                other => return Err(TokenizerError::UnknownRole(other.to_string())),
            };
            ids.push(role);
            let content = self
                .literal
                .encode_fast(m.content.as_str(), false)
                .map_err(|e| TokenizerError::Codec(e.to_string()))?;
            ids.extend(content.get_ids());
            ids.push(self.end);
        }
        ids.push(self.assistant);
        Ok(ids)
    }
}

/// A byte-level tokenizer with no merges: the 256 byte tokens after the special tokens, and
/// `vocab_size` padded with unused filler tokens. Exact for any text; used for models with random
/// weights (tests, benchmarks) where no trained tokenizer exists.
pub fn byte_level_json(vocab_size: usize) -> String {
    let alphabet = byte_level_alphabet();
    let mut vocab: HashMap<String, usize> = HashMap::new();
    for (i, t) in SPECIAL_TOKENS.iter().enumerate() {
        vocab.insert(t.to_string(), i);
    }
    for ch in &alphabet {
        let id = vocab.len();
        vocab.insert(ch.to_string(), id);
    }
    while vocab.len() < vocab_size {
        let id = vocab.len();
        vocab.insert(format!("<|unused{id}|>"), id);
    }
    let added: Vec<serde_json::Value> = SPECIAL_TOKENS
        .iter()
        .enumerate()
        .map(|(i, t)| {
            serde_json::json!({"id": i, "content": t, "single_word": false, "lstrip": false,
                               "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
                          "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
                    "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
                  "continuing_subword_prefix": null, "end_of_word_suffix": null,
                  "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": []}
    })
    .to_string()
}

/// The 256 characters GPT-2's byte-level pre-tokenizer maps bytes to, in byte order.
fn byte_level_alphabet() -> Vec<char> {
    let printable = |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || b >= 174;
    let mut shifted = 0;
    (0u32..256)
        .map(|b| {
            if printable(b) {
                char::from_u32(b).expect("byte is a char")
            } else {
                shifted += 1;
                char::from_u32(255 + shifted).expect("shifted byte is a char")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn byte_tokenizer() -> Tokenizer {
        Tokenizer::from_json(&byte_level_json(300)).unwrap()
    }

    #[test]
    fn byte_level_round_trips_any_text() {
        let t = byte_tokenizer();
        assert_eq!(t.vocab_size(), 300);
        for text in ["fn main() { println!(\"héllo\"); }\n\ttabs", "", "日本語 ✓"] {
            let ids = t.encode(text).unwrap();
            assert_eq!(ids.len(), text.len(), "one token per byte");
            assert_eq!(t.decode(&ids).unwrap(), text);
        }
    }

    #[test]
    fn chat_template_uses_special_ids_and_ends_with_assistant() {
        let t = byte_tokenizer();
        let ids = t
            .encode_chat(&[
                ChatMessage {
                    role: "system".into(),
                    content: "be brief".into(),
                },
                ChatMessage {
                    role: "user".into(),
                    content: "<|end|>hi".into(),
                },
            ])
            .unwrap();
        assert_eq!(ids[0], 1, "<|system|>");
        assert_eq!(ids[1 + 8], 4, "<|end|> after 'be brief'");
        assert_eq!(ids[10], 2, "<|user|>");
        assert_eq!(*ids.last().unwrap(), 3, "<|assistant|>");
        // Content that spells a special token is text, not a turn: "<|end|>" is 7 byte tokens.
        assert_eq!(ids.len(), 1 + 8 + 1 + 1 + (7 + 2) + 1 + 1);
        assert!(ids[11..20].iter().all(|&id| id >= 5), "{ids:?}");
        assert_eq!(t.stop_tokens(), [4, 0]);
        let err = t.encode_chat(&[ChatMessage {
            role: "tool".into(),
            content: String::new(),
        }]);
        assert!(matches!(err, Err(TokenizerError::UnknownRole(_))));
    }

    #[test]
    fn tokenizer_without_special_tokens_is_refused() {
        let json = byte_level_json(300).replace("<|assistant|>", "<|helper|>");
        assert!(matches!(
            Tokenizer::from_json(&json),
            Err(TokenizerError::MissingSpecial(ASSISTANT))
        ));
        assert!(matches!(
            Tokenizer::from_json("{"),
            Err(TokenizerError::Load(_))
        ));
    }
}
