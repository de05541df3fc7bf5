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
    /// Refused before it was tokenized whole ([`Tokenizer::encode_prompt_within`]).
    #[error("the prompt has at least {at_least} tokens")]
    TooLong { at_least: usize },
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
    /// See [`Tokenizer::longest_token_bytes`].
    longest_token_bytes: Option<usize>,
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
        let tokenizer = Self::assemble(inner, eos, stop, chat);
        tokenizer.encode_chat(&[ChatMessage {
            role: "user".into(),
            content: "hello".into(),
        }])?;
        Ok(tokenizer)
    }

    fn assemble(
        inner: tokenizers::Tokenizer,
        end_of_text: u32,
        stop: Vec<u32>,
        chat: ChatFormat,
    ) -> Self {
        Tokenizer {
            longest_token_bytes: longest_token_bytes(&inner),
            inner,
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
        self.encode_prompt_within(text, usize::MAX)
    }

    /// [`Self::encode_prompt`], refused with [`TokenizerError::TooLong`] before the text is
    /// tokenized whole when the prompt certainly has `limit` tokens or more (see
    /// [`refuse_certainly_too_long`]).
    pub fn encode_prompt_within(
        &self,
        text: &str,
        limit: usize,
    ) -> Result<Vec<u32>, TokenizerError> {
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
        self.refuse_if_too_long(&self.inner, &[text], ids.len(), limit)?;
        ids.extend(self.encode(text)?);
        Ok(ids)
    }

    /// [`refuse_certainly_too_long`] for a prompt of `fixed_tokens` tokens and `texts` tokenized
    /// each by `encoder`.
    fn refuse_if_too_long(
        &self,
        encoder: &tokenizers::Tokenizer,
        texts: &[&str],
        fixed_tokens: usize,
        limit: usize,
    ) -> Result<(), TokenizerError> {
        refuse_certainly_too_long(
            texts,
            fixed_tokens,
            limit,
            self.longest_token_bytes,
            COUNT_PIECE_BYTES,
            |piece| {
                encoder
                    .encode_fast(piece, false)
                    .map(|e| e.len())
                    .map_err(codec_error)
            },
        )
    }

    /// The most bytes of text one token can stand for, when the tokenizer bounds it: a text of
    /// n bytes has at least n / this many tokens. The longest token string of the vocabulary
    /// (its UTF-8 length is at least the bytes it stands for: a byte-level symbol is 1 or 2 bytes
    /// for one byte, `▁` 3 for a space, `<0x0A>` 6 for one byte); `None` where the tokenizer may
    /// drop or shorten text before it makes tokens (a normalizer, truncation, an added token
    /// that swallows the whitespace beside it, a pre-tokenizer that removes what it splits on,
    /// an unknown-token that covers any run of unknown characters).
    pub fn longest_token_bytes(&self) -> Option<usize> {
        self.longest_token_bytes
    }

    /// Token ids of plain text (special-token strings in the text become their tokens).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        self.inner
            .encode_fast(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(codec_error)
    }

    /// Text of token ids, special tokens left out.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        self.inner.decode(ids, true).map_err(codec_error)
    }

    /// The prompt of a chat (see the module docs), ending with `<|assistant|>` so the model writes
    /// the assistant's reply.
    pub fn encode_chat(&self, messages: &[ChatMessage]) -> Result<Vec<u32>, TokenizerError> {
        self.encode_chat_within(messages, usize::MAX)
    }

    /// [`Self::encode_chat`], refused with [`TokenizerError::TooLong`] before the chat is
    /// tokenized whole when it certainly has `limit` tokens or more (see
    /// [`refuse_certainly_too_long`]).
    pub fn encode_chat_within(
        &self,
        messages: &[ChatMessage],
        limit: usize,
    ) -> Result<Vec<u32>, TokenizerError> {
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
                // The rendered text, not the messages: a template may trim or leave out content.
                let text = render_template(&spec.template, messages, bos_text, eos_text)?;
                self.refuse_if_too_long(&self.inner, &[&text], 0, limit)?;
                return self.encode(&text);
            }
        };
        let contents: Vec<&str> = messages.iter().map(|m| m.content.as_str()).collect();
        // A role and an end token per message, and <|assistant|> at the end.
        self.refuse_if_too_long(literal, &contents, 2 * messages.len() + 1, limit)?;
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
                .map_err(codec_error)?;
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

fn codec_error(e: tokenizers::Error) -> TokenizerError {
    TokenizerError::Codec(e.to_string())
}

/// [`Tokenizer::longest_token_bytes`] of a tokenizer.
fn longest_token_bytes(tokenizer: &tokenizers::Tokenizer) -> Option<usize> {
    use tokenizers::{ModelWrapper, PreTokenizerWrapper as Pre, SplitDelimiterBehavior::Removed};
    fn keeps_every_byte(pre: &Pre) -> bool {
        match pre {
            Pre::ByteLevel(_)
            | Pre::Metaspace(_)
            | Pre::Digits(_)
            | Pre::UnicodeScripts(_)
            | Pre::FixedLength(_) => true,
            Pre::Split(split) => split.behavior != Removed,
            Pre::Punctuation(punctuation) => punctuation.behavior != Removed,
            Pre::Sequence(sequence) => sequence.as_ref().iter().all(keeps_every_byte),
            Pre::BertPreTokenizer(_)
            | Pre::Delimiter(_)
            | Pre::Whitespace(_)
            | Pre::WhitespaceSplit(_) => false,
        }
    }
    let unknowns_bounded = match tokenizer.get_model() {
        ModelWrapper::BPE(bpe) => bpe.unk_token.is_none() || bpe.byte_fallback || !bpe.fuse_unk,
        _ => false,
    };
    let bounded = unknowns_bounded
        && tokenizer.get_normalizer().is_none()
        && tokenizer.get_truncation().is_none()
        && tokenizer.get_pre_tokenizer().is_none_or(keeps_every_byte)
        && !tokenizer
            .get_added_tokens_decoder()
            .values()
            .any(|t| t.lstrip || t.rstrip);
    if !bounded {
        return None;
    }
    let longest = tokenizer.get_vocab(true).keys().map(String::len).max()?;
    // An unknown token that is not fused stands for one character: up to 4 bytes.
    Some(longest.max(4))
}

/// Bytes of prompt text tokenized at once when a long prompt's tokens are counted: the
/// tokenizers crate holds ~200 bytes of memory per byte of text while it encodes.
const COUNT_PIECE_BYTES: usize = 64 * 1024;

/// How many more tokens the two pieces of a text cut for counting may have than the whole text
/// has there. A cut before a space that follows a non-space is a boundary of the pre-tokens of
/// byte-level tokenizers (GPT-2's and Llama-3's split patterns), so both sides tokenize as in
/// the whole; a cut inside a long run without spaces (where BPE may merge across it), a special
/// token's text cut in two, or a prefix a normalizer adds to each piece changes in practice only
/// a few tokens beside the cut. 64 covers that with room to spare, and is small beside the
/// thousands of tokens of a 64 KiB piece.
const CUT_SLACK_TOKENS: usize = 64;

/// Refuses, with [`TokenizerError::TooLong`], a prompt of `fixed_tokens` tokens plus the tokens
/// of `texts` (each tokenized on its own; `count` gives a text's token count) that certainly has
/// `limit` tokens or more, without tokenizing a long text whole, so that an oversized prompt
/// costs no more memory than a piece of `piece_bytes`:
/// 1. by bytes alone, when `longest_token_bytes` bounds the bytes a token stands for;
/// 2. for prompts over `piece_bytes` and of at least `limit` bytes (a shorter one costs no more
///    to tokenize whole than a prompt that fits), by counting tokens piece by piece and stopping
///    once the count, less [`CUT_SLACK_TOKENS`] per cut, reaches the limit.
///
/// `Ok` means the prompt may fit: the caller tokenizes it whole and checks the exact count.
fn refuse_certainly_too_long(
    texts: &[&str],
    fixed_tokens: usize,
    limit: usize,
    longest_token_bytes: Option<usize>,
    piece_bytes: usize,
    mut count: impl FnMut(&str) -> Result<usize, TokenizerError>,
) -> Result<(), TokenizerError> {
    let too_long = |at_least: usize| Err(TokenizerError::TooLong { at_least });
    if let Some(longest) = longest_token_bytes {
        let at_least = fixed_tokens
            + texts
                .iter()
                .map(|t| t.len().div_ceil(longest))
                .sum::<usize>();
        if at_least >= limit {
            return too_long(at_least);
        }
    }
    let bytes: usize = texts.iter().map(|t| t.len()).sum();
    if bytes <= piece_bytes || bytes < limit {
        return Ok(());
    }
    let (mut counted, mut cuts) = (fixed_tokens, 0);
    for text in texts {
        let mut rest = *text;
        while !rest.is_empty() {
            let (piece, after) = rest.split_at(piece_end(rest, piece_bytes));
            counted += count(piece)?;
            cuts += usize::from(!after.is_empty());
            let at_least = counted.saturating_sub(cuts * CUT_SLACK_TOKENS);
            if at_least >= limit {
                return too_long(at_least);
            }
            rest = after;
        }
    }
    Ok(())
}

/// Where the next piece of `text` to count ends, at most `max` bytes in: before the last space
/// that follows a non-space in the second half of that span (see [`CUT_SLACK_TOKENS`]), else at
/// the last character boundary (after the first character if `max` is shorter than it).
fn piece_end(text: &str, max: usize) -> usize {
    if text.len() <= max {
        return text.len();
    }
    let bytes = text.as_bytes();
    let before_a_space = (max / 2 + 1..=max)
        .rev()
        .find(|&i| bytes[i] == b' ' && !bytes[i - 1].is_ascii_whitespace());
    before_a_space
        .or_else(|| (1..=max).rev().find(|&i| text.is_char_boundary(i)))
        .unwrap_or_else(|| text.chars().next().map_or(text.len(), char::len_utf8))
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

    fn user(content: &str) -> Vec<ChatMessage> {
        vec![ChatMessage {
            role: "user".into(),
            content: content.into(),
        }]
    }

    fn too_long(result: Result<Vec<u32>, TokenizerError>) -> usize {
        match result {
            Err(TokenizerError::TooLong { at_least }) => at_least,
            other => panic!("expected TooLong, got {other:?}"),
        }
    }

    /// The byte-level tokenizer's longest tokens are 13 bytes ("<|assistant|>",
    /// "<|unused299|>"), so 1 MB has at least 76,924 tokens: refused from its length alone.
    #[test]
    fn a_prompt_longer_than_its_bytes_allow_is_refused_by_length() {
        let t = byte_tokenizer();
        assert_eq!(t.longest_token_bytes(), Some(13));
        let megabyte = "fn main() { let x = 1; }\n".repeat(40_000);
        assert_eq!(megabyte.len(), 1_000_000);
        let at_least = 1_000_000usize.div_ceil(13);
        assert_eq!(too_long(t.encode_prompt_within(&megabyte, 256)), at_least);
        // <|user|> content <|end|> <|assistant|>
        let chat = t.encode_chat_within(&user(&megabyte), 256);
        assert_eq!(too_long(chat), at_least + 3);
        let spec = ChatSpec {
            template: "{% for m in messages %}<|user|>{{ m.content }}<|end|>{% endfor %}".into(),
            bos: None,
            add_bos: false,
            eos: 4,
            stop: vec![],
        };
        let templated = Tokenizer::with_chat(&byte_level_json(300), spec).unwrap();
        assert!(too_long(templated.encode_chat_within(&user(&megabyte), 256)) >= at_least);

        // Just under the context: the same tokens as without a limit.
        let fits = "x".repeat(255);
        assert_eq!(
            t.encode_prompt_within(&fits, 256).unwrap(),
            t.encode(&fits).unwrap()
        );
        let fits = user(&"x".repeat(252));
        let ids = t.encode_chat_within(&fits, 256).unwrap();
        assert_eq!((ids.len(), ids), (255, t.encode_chat(&fits).unwrap()));
    }

    /// A byte-level tokenizer with merges up to "xxxx": "xxxx" repeated is a token per 4 bytes.
    fn merging_tokenizer() -> Tokenizer {
        let mut json: serde_json::Value = serde_json::from_str(&byte_level_json(300)).unwrap();
        json["model"]["vocab"]["xx"] = 300.into();
        json["model"]["vocab"]["xxxx"] = 301.into();
        json["model"]["merges"] = serde_json::json!(["x x", "xx xx"]);
        Tokenizer::from_json(&json.to_string()).unwrap()
    }

    /// 100,000 bytes, 25,000 tokens: more bytes than the limit and over a piece, so counted in
    /// pieces (65,536 bytes, then the rest, cut without a space), then tokenized whole when it
    /// fits.
    #[test]
    fn a_long_prompt_is_counted_in_pieces_and_tokenized_whole_when_it_fits() {
        let t = merging_tokenizer();
        let text = "xxxx".repeat(25_000);
        let whole = t.encode(&text).unwrap();
        assert_eq!(whole.len(), 25_000);
        assert_eq!(t.encode_prompt_within(&text, 25_001).unwrap(), whole);
        // Over by less than the slack of its one cut: left to the exact count.
        assert_eq!(t.encode_prompt_within(&text, 24_990).unwrap(), whole);
        // The first piece alone (16,384 tokens, less 64 for its cut) is over 12,000.
        assert_eq!(too_long(t.encode_prompt_within(&text, 12_000)), 16_384 - 64);
    }

    /// [`refuse_certainly_too_long`] counting a token per space; also the pieces it counted.
    fn count_spaces(
        texts: &[&str],
        limit: usize,
        longest_token_bytes: Option<usize>,
        piece_bytes: usize,
    ) -> (Result<(), TokenizerError>, Vec<String>) {
        let mut pieces = Vec::new();
        let result =
            refuse_certainly_too_long(texts, 3, limit, longest_token_bytes, piece_bytes, |p| {
                pieces.push(p.to_string());
                Ok(p.matches(' ').count())
            });
        (result, pieces)
    }

    /// Counting stops at the first piece that proves the prompt too long: a megabyte costs the
    /// tokenizer one piece, never the whole text.
    #[test]
    fn counting_in_pieces_stops_as_soon_as_the_prompt_is_certainly_too_long() {
        // 7 spaces in 25 bytes: 280,000 "tokens".
        let text = "fn main() { let x = 1; }\n".repeat(40_000);
        let (result, pieces) = count_spaces(&[&text], 4096, None, COUNT_PIECE_BYTES);
        assert_eq!(pieces.len(), 1);
        let first = pieces[0].len();
        let counted = 3 + pieces[0].matches(' ').count() - CUT_SLACK_TOKENS;
        assert!(matches!(result, Err(TokenizerError::TooLong { at_least }) if at_least == counted));
        assert!(first <= COUNT_PIECE_BYTES && first > COUNT_PIECE_BYTES / 2);
        assert!(text[first..].starts_with(' '), "cut before a space");
        // With a bound on token length, nothing is tokenized at all.
        let (result, pieces) = count_spaces(&[&text], 4096, Some(64), COUNT_PIECE_BYTES);
        assert!(matches!(
            result,
            Err(TokenizerError::TooLong { at_least: 15_628 })
        ));
        assert!(pieces.is_empty());
        // A prompt that may fit is counted to its end, every piece bounded, then left to the
        // exact count; small prompts are not counted.
        let (result, pieces) = count_spaces(&[&text, "hello"], 280_004, None, 4096);
        assert!(result.is_ok());
        assert!(pieces.concat() == text + "hello", "every byte counted once");
        assert!(pieces.iter().all(|p| p.len() <= 4096));
        let (result, pieces) = count_spaces(&["a b c d"], 2, None, 4096);
        assert!(result.is_ok() && pieces.is_empty());
    }

    #[test]
    fn pieces_end_before_a_space_or_at_a_character_boundary() {
        for (text, max, end, why) in [
            ("abc def", 100, 7, "all of it"),
            ("abcd efgh ijkl", 11, 9, "before the last space in reach"),
            ("abcdefgh  ijk", 10, 8, "not inside a run of spaces"),
            ("ab  cdefghijk", 10, 10, "no space in the second half"),
            ("日本語日本語", 7, 6, "at a character boundary"),
            ("日本語", 2, 3, "at least one character"),
        ] {
            assert_eq!(piece_end(text, max), end, "{text:?}: {why}");
        }
    }

    /// Where text may be dropped before tokens are made, bytes bound nothing.
    #[test]
    fn tokenizers_that_may_drop_text_have_no_byte_bound() {
        let changed = |change: fn(&mut serde_json::Value)| {
            let mut json = serde_json::from_str(&byte_level_json(300)).unwrap();
            change(&mut json);
            Tokenizer::from_json(&json.to_string()).unwrap()
        };
        let strips = changed(|json| {
            json["normalizer"] =
                serde_json::json!({"type": "Strip", "strip_left": true, "strip_right": true});
        });
        assert_eq!(strips.longest_token_bytes(), None);
        let splits = changed(|json| {
            json["pre_tokenizer"] = serde_json::json!({"type": "WhitespaceSplit"});
        });
        assert_eq!(splits.longest_token_bytes(), None);
        let swallows = changed(|json| json["added_tokens"][4]["lstrip"] = true.into());
        assert_eq!(swallows.longest_token_bytes(), None);
    }
}
