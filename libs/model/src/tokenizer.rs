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
//!
//! Models imported from elsewhere bring their own chat template instead ([`ChatSpec`]): a Jinja
//! template, as Hugging Face's `tokenizer_config.json` and GGUF's `tokenizer.chat_template` hold
//! it, rendered with minijinja (Jinja2 syntax with Python's string methods, e.g. `.strip()`),
//! given `messages`, `bos_token`, `eos_token` and `add_generation_prompt = true`; the text is then
//! tokenized with special tokens recognised, as Hugging Face's `apply_chat_template` does. (So
//! there, unlike the native template, message content that spells a special token becomes it.)

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
    #[error("token id {0} of the chat settings is not in the tokenizer")]
    UnknownToken(u32),
    #[error("chat template: {0}")]
    Template(String),
}

/// The chat settings of a model that brings its own template (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatSpec {
    /// The Jinja source.
    pub template: String,
    /// The beginning-of-sequence token, if the model has one.
    pub bos: Option<u32>,
    /// Whether prompts start with `bos` (plain completions; chat templates write it themselves).
    pub add_bos: bool,
    /// The end-of-sequence token (`eos_token` in the template).
    pub eos: u32,
    /// Every token that ends a reply (the eos token included).
    pub stop: Vec<u32>,
}

/// How chats become tokens.
enum ChatFormat {
    /// The project's own special tokens, and the tokenizer again with special-token strings
    /// encoded as plain text (message content).
    Native {
        system: u32,
        user: u32,
        assistant: u32,
        end: u32,
        literal: Box<tokenizers::Tokenizer>,
    },
    /// A model's own Jinja template, with the texts of its BOS and EOS tokens.
    Template {
        spec: ChatSpec,
        bos_text: String,
        eos_text: String,
    },
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
    json: String,
    end_of_text: u32,
    stop: Vec<u32>,
    chat: ChatFormat,
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
        let (end_of_text, end) = (id(END_OF_TEXT)?, id(END)?);
        let mut literal = inner.clone();
        literal.set_encode_special_tokens(true);
        let chat = ChatFormat::Native {
            system: id(SYSTEM)?,
            user: id(USER)?,
            assistant: id(ASSISTANT)?,
            end,
            literal: Box::new(literal),
        };
        Ok(Self::assemble(
            inner,
            json,
            end_of_text,
            vec![end, end_of_text],
            chat,
        ))
    }

    /// Loads a model's own `tokenizer.json` with its chat settings (no special tokens of the
    /// project required). The template is checked by rendering a short chat.
    pub fn with_chat(json: &str, spec: ChatSpec) -> Result<Self, TokenizerError> {
        let inner = json
            .parse::<tokenizers::Tokenizer>()
            .map_err(|e| TokenizerError::Load(e.to_string()))?;
        let text = |id: u32| {
            inner
                .id_to_token(id)
                .ok_or(TokenizerError::UnknownToken(id))
        };
        let bos_text = match spec.bos {
            Some(bos) => text(bos)?,
            None => String::new(),
        };
        let eos_text = text(spec.eos)?;
        for &id in &spec.stop {
            text(id)?;
        }
        let mut stop = spec.stop.clone();
        if !stop.contains(&spec.eos) {
            stop.push(spec.eos);
        }
        let eos = spec.eos;
        let chat = ChatFormat::Template {
            spec,
            bos_text,
            eos_text,
        };
        let tokenizer = Self::assemble(inner, json, eos, stop, chat);
        tokenizer.encode_chat(&[ChatMessage {
            role: "user".into(),
            content: "hello".into(),
        }])?;
        Ok(tokenizer)
    }

    fn assemble(
        inner: tokenizers::Tokenizer,
        json: &str,
        end_of_text: u32,
        stop: Vec<u32>,
        chat: ChatFormat,
    ) -> Self {
        Tokenizer {
            inner,
            json: json.to_string(),
            end_of_text,
            stop,
            chat,
        }
    }

    /// The chat settings of a model that brings its own template; `None` for the native one.
    pub fn chat_spec(&self) -> Option<&ChatSpec> {
        match &self.chat {
            ChatFormat::Template { spec, .. } => Some(spec),
            ChatFormat::Native { .. } => None,
        }
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

    /// Id of `<|endoftext|>` (a model's own end-of-sequence token for imported models).
    pub fn end_of_text(&self) -> u32 {
        self.end_of_text
    }

    /// Tokens that end a reply: `<|end|>` and `<|endoftext|>`, or an imported model's own.
    pub fn stop_tokens(&self) -> &[u32] {
        &self.stop
    }

    /// Token ids of a completion prompt: [`Self::encode`], after the beginning-of-sequence token
    /// for models that start every sequence with one.
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let mut ids = match &self.chat {
            ChatFormat::Template {
                spec:
                    ChatSpec {
                        bos: Some(bos),
                        add_bos: true,
                        ..
                    },
                ..
            } => vec![*bos],
            _ => Vec::new(),
        };
        ids.extend(self.encode(text)?);
        Ok(ids)
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
        let (system, user, assistant, end, literal) = match &self.chat {
            ChatFormat::Native {
                system,
                user,
                assistant,
                end,
                literal,
            } => (*system, *user, *assistant, *end, literal),
            ChatFormat::Template {
                spec,
                bos_text,
                eos_text,
            } => {
                let text = render_template(&spec.template, messages, bos_text, eos_text)?;
                return self.encode(&text);
            }
        };
        let mut ids = Vec::new();
        for m in messages {
            let role = match m.role.as_str() {
                "system" => system,
                "user" => user,
                "assistant" => assistant,
                other => return Err(TokenizerError::UnknownRole(other.to_string())),
            };
            ids.push(role);
            let content = literal
                .encode_fast(m.content.as_str(), false)
                .map_err(|e| TokenizerError::Codec(e.to_string()))?;
            ids.extend(content.get_ids());
            ids.push(end);
        }
        ids.push(assistant);
        Ok(ids)
    }
}

/// The text of a chat by a Jinja chat template, ending with the generation prompt.
pub fn render_template(
    template: &str,
    messages: &[ChatMessage],
    bos_token: &str,
    eos_token: &str,
) -> Result<String, TokenizerError> {
    let fail = |e: minijinja::Error| TokenizerError::Template(format!("{e:#}"));
    let mut env = minijinja::Environment::new();
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |message: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                message,
            ))
        },
    );
    env.add_template("chat", template).map_err(fail)?;
    let messages: Vec<minijinja::Value> = messages
        .iter()
        .map(|m| minijinja::context! { role => m.role.as_str(), content => m.content.as_str() })
        .collect();
    env.get_template("chat")
        .map_err(fail)?
        .render(minijinja::context! {
            messages => messages,
            bos_token => bos_token,
            eos_token => eos_token,
            add_generation_prompt => true,
        })
        .map_err(fail)
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
        assert!(t.chat_spec().is_none());
        assert_eq!(t.encode_prompt("ab").unwrap(), t.encode("ab").unwrap());
        let err = t.encode_chat(&[ChatMessage {
            role: "tool".into(),
            content: String::new(),
        }]);
        assert!(matches!(err, Err(TokenizerError::UnknownRole(_))));
    }

    /// Llama-3's template, as its tokenizer_config.json has it.
    const LLAMA3_TEMPLATE: &str = "{% set loop_messages = messages %}{% for message in loop_messages %}\
        {% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ \
        message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}\
        {% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}\
        {% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}";

    #[test]
    fn a_models_own_template_renders_and_tokenizes_its_special_tokens() {
        // The byte-level tokenizer's special tokens stand in for Llama-3's.
        let template = LLAMA3_TEMPLATE
            .replace("<|start_header_id|>", "<|user|>")
            .replace("<|end_header_id|>", "<|assistant|>")
            .replace("<|eot_id|>", "<|end|>");
        let spec = ChatSpec {
            template,
            bos: Some(1),
            add_bos: true,
            eos: 4,
            stop: vec![0],
        };
        let t = Tokenizer::with_chat(&byte_level_json(300), spec.clone()).unwrap();
        assert_eq!(t.chat_spec(), Some(&spec));
        assert_eq!(t.stop_tokens(), [0, 4]);
        let ids = t
            .encode_chat(&[ChatMessage {
                role: "user".into(),
                content: " hi ".into(),
            }])
            .unwrap();
        // <|system|> (bos), <|user|> "user" <|assistant|> \n\n "hi" <|end|>, then the prompt.
        let mut expected = vec![1, 2];
        expected.extend(t.encode("user").unwrap());
        expected.push(3);
        expected.extend(t.encode("\n\nhi").unwrap());
        expected.extend([4, 2]);
        expected.extend(t.encode("assistant").unwrap());
        expected.push(3);
        expected.extend(t.encode("\n\n").unwrap());
        assert_eq!(ids, expected);
        assert_eq!(
            t.encode_prompt("x").unwrap(),
            [1, t.encode("x").unwrap()[0]]
        );

        let broken = ChatSpec {
            template: "{% for m in messages %}".into(),
            ..spec.clone()
        };
        let err = Tokenizer::with_chat(&byte_level_json(300), broken).unwrap_err();
        assert!(matches!(err, TokenizerError::Template(_)), "{err}");
        let unknown = ChatSpec { eos: 999, ..spec };
        let err = Tokenizer::with_chat(&byte_level_json(300), unknown).unwrap_err();
        assert!(matches!(err, TokenizerError::UnknownToken(999)), "{err}");
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
