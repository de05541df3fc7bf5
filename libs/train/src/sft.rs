//! Supervised fine-tuning data (issue 26, item 3): (prompt → completion) pairs of documented
//! functions, turned into training examples whose loss covers the answer only.
//!
//! A pairs file is JSONL, one record a line: `{"name", "prompt", "completion"}` (other fields,
//! such as `"source"`, are ignored). The prompt is the evaluation's prompt format (doc comment,
//! signature, opening brace), the completion the body through the closing brace.
//!
//! Each pair gives two examples:
//! - a completion: the prompt's tokens as `encode_prompt` makes them (what eval-compile and
//!   `serve --prompt` feed the model), then the completion's and `<|endoftext|>`, so the model
//!   learns to stop after the function; scored on the completion and the end token.
//! - a chat turn, tokenized exactly as serve's `/v1/chat/completions` does it
//!   (`Tokenizer::encode_chat`): the user asks for the function (the doc comment's summary as a
//!   request), the assistant answers with the whole function in a ```` ```rust ```` block, then
//!   `<|end|>`; scored on the answer and `<|end|>`.
//!
//! Validation pairs are chosen by a hash of the name (`tokens::corpus::is_validation`, the split
//! tokenize uses for files), so pairs that share a name fall on the same side.

use std::path::Path;

use candle_core::{Device, Result, Tensor};
use model::{ChatMessage, Tokenizer, TokenizerError};

use crate::data::{spread, Rng};
use crate::ops::IGNORED_TARGET;

/// One record of a pairs file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pair {
    pub name: String,
    pub prompt: String,
    pub completion: String,
    /// What the user of a chat asks for to get this function (see [`chat_request`]).
    pub request: String,
}

/// Why a pairs file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PairsError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: line {line}: {message}")]
    BadRecord {
        path: String,
        line: usize,
        message: String,
    },
    #[error("{path}: no pairs")]
    Empty { path: String },
}

/// Every pair of the JSONL file at `path` (blank lines skipped); the first bad record refuses the
/// whole file, naming its line.
pub fn read_pairs(path: &Path) -> std::result::Result<Vec<Pair>, PairsError> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| PairsError::Io {
        path: shown.clone(),
        source,
    })?;
    let mut pairs = Vec::new();
    for (index, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let bad = |message: String| PairsError::BadRecord {
            path: shown.clone(),
            line: index + 1,
            message,
        };
        let line = std::str::from_utf8(line).map_err(|_| bad("not UTF-8".into()))?;
        if line.trim().is_empty() {
            continue;
        }
        pairs.push(parse_pair(line).map_err(bad)?);
    }
    if pairs.is_empty() {
        return Err(PairsError::Empty { path: shown });
    }
    Ok(pairs)
}

/// One record, checked: the three fields are non-empty strings, the prompt is a signature that
/// ends with its opening brace, the completion ends with the closing one.
fn parse_pair(line: &str) -> std::result::Result<Pair, String> {
    let value: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    if !value.is_object() {
        return Err("not a JSON object".into());
    }
    let field = |key: &str| match value.get(key) {
        Some(serde_json::Value::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
        Some(serde_json::Value::String(_)) => Err(format!("\"{key}\" is empty")),
        Some(_) => Err(format!("\"{key}\" is not a string")),
        None => Err(format!("no \"{key}\"")),
    };
    let (name, prompt, completion) = (field("name")?, field("prompt")?, field("completion")?);
    if !prompt.trim_end().ends_with('{') {
        return Err("the prompt does not end with the function's opening brace".into());
    }
    if !completion.trim_end().ends_with('}') {
        return Err("the completion does not end with the function's closing brace".into());
    }
    let parts = prompt_parts(&prompt).ok_or("the prompt has no `fn` signature")?;
    let request = chat_request(&parts, &name);
    Ok(Pair {
        name,
        prompt,
        completion,
        request,
    })
}

/// What a chat request is made of: the doc comment's first paragraph, the signature on one line
/// (without the brace) and the function's name. The prompt's other lines (`use` declarations,
/// attributes, comments) are left out.
#[derive(Debug, PartialEq, Eq)]
struct PromptParts {
    summary: String,
    signature: String,
    name: String,
}

fn prompt_parts(prompt: &str) -> Option<PromptParts> {
    let mut doc = Vec::new();
    let mut code = Vec::new();
    for line in prompt.lines().map(str::trim) {
        if let Some(text) = line.strip_prefix("///") {
            doc.push(text.strip_prefix(' ').unwrap_or(text).trim_end());
        } else if !(line.is_empty()
            || ["#[", "//", "use ", "pub use ", "extern crate "]
                .iter()
                .any(|p| line.starts_with(p)))
        {
            code.push(line);
        }
    }
    // The summary ends at the first blank doc line, heading or code fence.
    let summary = doc
        .iter()
        .take_while(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with("```"))
        .copied()
        .collect::<Vec<_>>()
        .join(" ");
    let code = code.join(" ");
    let signature = code
        .trim_end()
        .strip_suffix('{')?
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let after_fn = signature.split_once("fn ")?.1;
    let name: String = after_fn
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    if name.is_empty() {
        return None;
    }
    Some(PromptParts {
        summary,
        signature,
        name,
    })
}

/// The user's request for a function: "Write a Rust function `SIGNATURE` that returns ...".
/// A summary that starts with a verb in the third person ("Returns") follows "that", one that
/// starts with an imperative ("Compute") follows "to"; any other is appended as its own sentence.
/// One pair in three names the signature, one only the name and one neither, chosen by a hash of
/// the name: people on the chat page ask "Write a Rust function that ..." without one.
fn chat_request(parts: &PromptParts, pair_name: &str) -> String {
    let PromptParts {
        summary,
        signature,
        name,
    } = parts;
    if summary.is_empty() {
        return format!("Write a Rust function `{signature}`.");
    }
    let mut sentence = summary.clone();
    if !sentence.ends_with(['.', '!', '?']) {
        sentence.push('.');
    }
    match request_clause(&sentence) {
        Some(clause) => match tokens::corpus::seeded_hash(REQUEST_WORDING_SEED, pair_name) % 3 {
            0 => format!("Write a Rust function `{signature}` {clause}"),
            1 => format!("Write a Rust function `{name}` {clause}"),
            _ => format!("Write a Rust function {clause}"),
        },
        None => format!("Write a Rust function `{signature}`. {sentence}"),
    }
}

/// The seed of the hash that picks a request's wording (apart from the validation split's).
const REQUEST_WORDING_SEED: u64 = 0x5eed_c4a7;

/// Capitalised words that start a doc sentence without being its verb.
const NOT_VERBS: [&str; 16] = [
    "A", "An", "As", "At", "By", "For", "If", "In", "Is", "It", "On", "The", "This", "That",
    "When", "Whether",
];

/// The sentence as the end of a request: "Returns the sum." → "that returns the sum.", "Compute
/// the sum." → "to compute the sum."; `None` when its first word does not read as a verb (a
/// capitalised word, lower case after, not a word of [`NOT_VERBS`]).
fn request_clause(sentence: &str) -> Option<String> {
    let first = sentence.split_whitespace().next()?;
    let mut chars = first.chars();
    let initial = chars.next()?;
    let rest = chars.as_str();
    let word_like = initial.is_ascii_uppercase()
        && !rest.is_empty()
        && rest.chars().all(|c| c.is_ascii_lowercase())
        && !NOT_VERBS.contains(&first);
    if !word_like {
        return None;
    }
    let lowered = format!("{}{}", initial.to_ascii_lowercase(), &sentence[1..]);
    // "Returns" is third person; "Process" ends in s and is not.
    let third_person = rest.ends_with('s') && !rest.ends_with("ss");
    Some(if third_person {
        format!("that {lowered}")
    } else {
        format!("to {lowered}")
    })
}

/// The assistant's answer: the whole function, doc comment included, in a Rust code block.
fn chat_answer(pair: &Pair) -> String {
    format!(
        "```rust\n{}{}\n```",
        pair.prompt,
        pair.completion.trim_end()
    )
}

/// A training sequence: every token is read, the loss covers `tokens[scored_from..]` (the
/// answer), each token given the ones before it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Example {
    pub tokens: Vec<u32>,
    /// At least 1: the first token has nothing before it to be predicted from.
    pub scored_from: usize,
}

/// The pair as a plain completion (see the module docs).
pub fn completion_example(
    tokenizer: &Tokenizer,
    pair: &Pair,
) -> std::result::Result<Example, TokenizerError> {
    let mut tokens = tokenizer.encode_prompt(&pair.prompt)?;
    let scored_from = tokens.len();
    tokens.extend(tokenizer.encode(&pair.completion)?);
    tokens.push(tokenizer.end_of_text());
    Ok(Example {
        tokens,
        scored_from,
    })
}

/// The pair as a chat turn (see the module docs).
pub fn chat_example(
    tokenizer: &Tokenizer,
    pair: &Pair,
) -> std::result::Result<Example, TokenizerError> {
    let request = ChatMessage {
        role: "user".into(),
        content: pair.request.clone(),
    };
    let answer = ChatMessage {
        role: "assistant".into(),
        content: chat_answer(pair),
    };
    // What serve feeds the model: the request, ending with <|assistant|>.
    let scored_from = tokenizer.encode_chat(std::slice::from_ref(&request))?.len();
    // The same tokens, then the answer and <|end|>; the template's trailing <|assistant|> (the
    // prompt for a next turn) is not part of the example.
    let mut tokens = tokenizer.encode_chat(&[request, answer])?;
    tokens.pop();
    Ok(Example {
        tokens,
        scored_from,
    })
}

/// Examples of one split, by format.
#[derive(Clone, Debug, Default)]
pub struct ExamplePools {
    pub completions: Vec<Example>,
    pub chats: Vec<Example>,
}

impl ExamplePools {
    /// Tokens of every example (the fingerprint a resumed run checks its data by).
    pub fn token_count(&self) -> usize {
        self.completions
            .iter()
            .chain(&self.chats)
            .map(|e| e.tokens.len())
            .sum()
    }
}

/// What became of a pairs file's records.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SftSummary {
    pub pairs: usize,
    pub train_pairs: usize,
    pub val_pairs: usize,
    /// Examples longer than seq-len + 1 tokens, skipped (a cut one would teach a function that
    /// never ends).
    pub too_long_completions: usize,
    pub too_long_chats: usize,
}

/// The pairs as examples: split by name hash (`val_share` of them held out), tokenized, those of
/// more than `seq_len + 1` tokens skipped and counted; chat turns only when `with_chat`.
pub fn build_examples(
    pairs: &[Pair],
    tokenizer: &Tokenizer,
    seq_len: usize,
    val_share: f64,
    with_chat: bool,
) -> std::result::Result<(ExamplePools, ExamplePools, SftSummary), TokenizerError> {
    let (mut train, mut val) = (ExamplePools::default(), ExamplePools::default());
    let mut summary = SftSummary {
        pairs: pairs.len(),
        ..SftSummary::default()
    };
    let fits = |e: &Example| e.tokens.len() <= seq_len + 1;
    for pair in pairs {
        let (pools, count) = if tokens::corpus::is_validation(&pair.name, val_share) {
            (&mut val, &mut summary.val_pairs)
        } else {
            (&mut train, &mut summary.train_pairs)
        };
        *count += 1;
        let completion = completion_example(tokenizer, pair)?;
        if fits(&completion) {
            pools.completions.push(completion);
        } else {
            summary.too_long_completions += 1;
        }
        if with_chat {
            let chat = chat_example(tokenizer, pair)?;
            if fits(&chat) {
                pools.chats.push(chat);
            } else {
                summary.too_long_chats += 1;
            }
        }
    }
    Ok((train, val, summary))
}

/// Inputs and targets `[B, L]` of `examples`, L the longest one's length − 1: each row is an
/// example's tokens (inputs) and the same shifted by one (targets), padded at the end with
/// token 0. Targets before `scored_from` and in the padding are [`IGNORED_TARGET`]. Causal
/// attention keeps the padding, which comes after every real token, from changing them; with
/// one example a row no attention mask is needed. Also returns the tokens read (padding not
/// counted).
pub fn pad_batch(examples: &[&Example], device: &Device) -> Result<(Tensor, Tensor, usize)> {
    let len = examples
        .iter()
        .map(|e| e.tokens.len().saturating_sub(1))
        .max()
        .unwrap_or(0);
    if len == 0 {
        candle_core::bail!("a batch needs an example of at least two tokens");
    }
    let mut inputs = vec![0u32; examples.len() * len];
    let mut targets = vec![IGNORED_TARGET; examples.len() * len];
    let mut read = 0;
    for (row, example) in examples.iter().enumerate() {
        let tokens = &example.tokens;
        let n = tokens.len().saturating_sub(1);
        let at = row * len;
        inputs[at..at + n].copy_from_slice(&tokens[..n]);
        for t in example.scored_from.max(1)..tokens.len() {
            targets[at + t - 1] = tokens[t];
        }
        read += n;
    }
    Ok((
        Tensor::from_vec(inputs, (examples.len(), len), device)?,
        Tensor::from_vec(targets, (examples.len(), len), device)?,
        read,
    ))
}

/// Up to `max` examples of `pools`, spread evenly over each format (the same ones at every
/// evaluation, so the figures of one run compare).
pub fn validation_sample(pools: ExamplePools, max: usize) -> ExamplePools {
    let pick = |examples: Vec<Example>| -> Vec<Example> {
        spread(examples.len(), max)
            .into_iter()
            .map(|i| examples[i].clone())
            .collect()
    };
    ExamplePools {
        completions: pick(pools.completions),
        chats: pick(pools.chats),
    }
}

/// Batches drawn together and grouped by length (see [`ExampleBatcher`]).
pub const BATCHES_PER_GROUP: u64 = 16;

/// Random training batches of whole examples. Every [`BATCHES_PER_GROUP`] batches are drawn
/// together: that many batches' worth of examples, each slot a chat turn with probability
/// `chat_share`, else a completion, drawn uniformly from its pool (with replacement), then sorted
/// by length, cut into batches and served in a shuffled order. Examples of like length share a
/// batch, so padding to the longest wastes little: on the extractor's pairs, real tokens are 53 %
/// of the padded positions of random batches of 8, 94 % of grouped ones. A group is a function of
/// the seed and its number, so the loader's whole state is the count of batches drawn and a
/// resumed run draws what an uninterrupted one would.
pub struct ExampleBatcher {
    pools: ExamplePools,
    chat_share: f64,
    seed: u64,
    drawn: u64,
}

impl ExampleBatcher {
    /// Refuses an empty pool that `chat_share` would draw from.
    pub fn new(
        pools: ExamplePools,
        chat_share: f64,
        seed: u64,
    ) -> std::result::Result<Self, String> {
        if chat_share < 1.0 && pools.completions.is_empty() {
            return Err("no training pair fits as a completion".into());
        }
        if chat_share > 0.0 && pools.chats.is_empty() {
            return Err("no training pair fits as a chat turn".into());
        }
        Ok(ExampleBatcher {
            pools,
            chat_share,
            seed,
            drawn: 0,
        })
    }

    /// The next `batch` examples (the same `batch` at every call), padded (see [`pad_batch`]).
    pub fn next_batch(&mut self, batch: usize, device: &Device) -> Result<(Tensor, Tensor, usize)> {
        let (group, position) = (
            self.drawn / BATCHES_PER_GROUP,
            self.drawn % BATCHES_PER_GROUP,
        );
        self.drawn += 1;
        // The group's own generator, seeded by a draw of one seeded by the run's seed and the
        // group's number, so that groups do not share a stream.
        let mut rng = Rng::new(Rng::new(self.seed.wrapping_add(group)).next_u64());
        let mut chosen: Vec<&Example> = (0..BATCHES_PER_GROUP as usize * batch)
            .map(|_| {
                let chat = match self.chat_share {
                    s if s <= 0.0 => false,
                    s if s >= 1.0 => true,
                    s => f64::from(rng.next_f32()) < s,
                };
                let pool = if chat {
                    &self.pools.chats
                } else {
                    &self.pools.completions
                };
                &pool[rng.below(pool.len() as u64) as usize]
            })
            .collect();
        chosen.sort_by_key(|e| e.tokens.len());
        let mut order: Vec<usize> = (0..BATCHES_PER_GROUP as usize).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i as u64 + 1) as usize);
        }
        let first = order[position as usize] * batch;
        pad_batch(&chosen[first..first + batch], device)
    }

    /// Batches drawn so far: the loader's state, saved in checkpoints.
    pub fn batches_drawn(&self) -> u64 {
        self.drawn
    }

    pub fn set_batches_drawn(&mut self, drawn: u64) {
        self.drawn = drawn;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer() -> Tokenizer {
        Tokenizer::from_json(&model::tokenizer::byte_level_json(300)).unwrap()
    }

    fn pair(name: &str, prompt: &str, completion: &str) -> Pair {
        let line = serde_json::json!({"name": name, "prompt": prompt, "completion": completion});
        parse_pair(&line.to_string()).unwrap()
    }

    fn multiple_of_three() -> Pair {
        pair(
            "multiple_of_three",
            "/// Returns true if n is a multiple of three.\nfn is_multiple_of_three(n: i32) -> bool {\n",
            "    n % 3 == 0\n}\n",
        )
    }

    #[test]
    fn bad_records_are_refused_with_their_line() {
        let dir = tempfile::tempdir().unwrap();
        let good =
            r#"{"name":"f","prompt":"fn f() -> u8 {\n","completion":"    1\n}\n","source":"x"}"#;
        for (bad, needle) in [
            ("{", "not JSON"),
            ("[1]", "not a JSON object"),
            (r#"{"prompt":"fn f() {\n","completion":"}"}"#, "no \"name\""),
            (
                r#"{"name":"f","prompt":"fn f() {\n","completion":3}"#,
                "\"completion\" is not a string",
            ),
            (
                r#"{"name":" ","prompt":"fn f() {\n","completion":"}"}"#,
                "\"name\" is empty",
            ),
            (
                r#"{"name":"f","prompt":"fn f()","completion":"}"}"#,
                "opening brace",
            ),
            (
                r#"{"name":"f","prompt":"fn f() {\n","completion":"    1\n"}"#,
                "closing brace",
            ),
            (
                r#"{"name":"f","prompt":"/// Doc.\nstruct S {\n","completion":"}"}"#,
                "no `fn` signature",
            ),
        ] {
            let path = dir.path().join("pairs.jsonl");
            std::fs::write(&path, format!("{good}\n\n{bad}\n{good}\n")).unwrap();
            let err = read_pairs(&path).unwrap_err().to_string();
            assert!(err.contains("line 3: ") && err.contains(needle), "{err}");
        }
        let path = dir.path().join("bytes.jsonl");
        std::fs::write(&path, b"\xff\xfe\n").unwrap();
        assert!(read_pairs(&path)
            .unwrap_err()
            .to_string()
            .contains("line 1: not UTF-8"));
        std::fs::write(&path, "\n \n").unwrap();
        assert!(read_pairs(&path)
            .unwrap_err()
            .to_string()
            .contains("no pairs"));
        std::fs::write(&path, format!("{good}\n{good}")).unwrap();
        assert_eq!(read_pairs(&path).unwrap().len(), 2);
        assert!(read_pairs(&dir.path().join("missing.jsonl")).is_err());
    }

    #[test]
    fn requests_reword_the_doc_summary() {
        let parts = prompt_parts(
            "use std::cmp::Ord;\n\n/// Returns the largest of three numbers.\n///\n/// # Examples\n\
             #[inline]\npub fn max_of_three(a: i32, b: i32,\n    c: i32) -> i32 {\n",
        )
        .unwrap();
        assert_eq!(
            parts,
            PromptParts {
                summary: "Returns the largest of three numbers.".into(),
                signature: "pub fn max_of_three(a: i32, b: i32, c: i32) -> i32".into(),
                name: "max_of_three".into(),
            }
        );
        // The three wordings, each chosen by some name.
        let wordings: std::collections::BTreeSet<String> = (0..30)
            .map(|i| chat_request(&parts, &format!("pair{i}")))
            .collect();
        let clause = "that returns the largest of three numbers.";
        assert_eq!(
            wordings.into_iter().collect::<Vec<_>>(),
            vec![
                format!("Write a Rust function `max_of_three` {clause}"),
                format!("Write a Rust function `pub fn max_of_three(a: i32, b: i32, c: i32) -> i32` {clause}"),
                format!("Write a Rust function {clause}"),
            ]
        );
        // A summary that is not a verb phrase stays a sentence of its own, with its period.
        let noun =
            prompt_parts("/// The answer\n/// to everything\nfn answer() -> u32 {\n").unwrap();
        assert_eq!(
            chat_request(&noun, "x"),
            "Write a Rust function `fn answer() -> u32`. The answer to everything."
        );
        for first in [
            "This function adds.",
            "Is it?",
            "UTF8s it.",
            "`x` is it.",
            "X.",
        ] {
            assert_eq!(request_clause(first), None, "{first}");
        }
        for (sentence, clause) in [
            ("Checks x.", "that checks x."),
            ("Compute the sum.", "to compute the sum."),
            ("Process it.", "to process it."),
        ] {
            assert_eq!(request_clause(sentence).as_deref(), Some(clause));
        }
        let bare = prompt_parts("fn f<T: Copy>(x: T) -> T {").unwrap();
        assert_eq!(
            chat_request(&bare, "f"),
            "Write a Rust function `fn f<T: Copy>(x: T) -> T`."
        );
        assert_eq!(bare.name, "f");
    }

    #[test]
    fn completion_examples_score_the_body_and_the_end_only() {
        let t = tokenizer();
        let p = multiple_of_three();
        let e = completion_example(&t, &p).unwrap();
        let prompt = t.encode_prompt(&p.prompt).unwrap();
        assert_eq!(e.scored_from, prompt.len());
        assert_eq!(&e.tokens[..e.scored_from], &prompt[..]);
        assert_eq!(*e.tokens.last().unwrap(), t.end_of_text());
        assert_eq!(
            t.decode(&e.tokens[e.scored_from..]).unwrap(),
            "    n % 3 == 0\n}\n"
        );
    }

    #[test]
    fn chat_examples_are_what_serve_feeds_then_the_function_in_a_code_block() {
        let t = tokenizer();
        let p = multiple_of_three();
        let e = chat_example(&t, &p).unwrap();
        let request = ChatMessage {
            role: "user".into(),
            content: p.request.clone(),
        };
        // The prompt part is exactly serve's encoding of the request (ending with <|assistant|>).
        let served = t.encode_chat(&[request]).unwrap();
        assert_eq!(&e.tokens[..e.scored_from], &served[..]);
        let end = t.inner().token_to_id(model::tokenizer::END).unwrap();
        assert_eq!(*e.tokens.last().unwrap(), end);
        let answer = t.decode(&e.tokens[e.scored_from..]).unwrap();
        assert_eq!(
            answer,
            "```rust\n/// Returns true if n is a multiple of three.\nfn is_multiple_of_three(n: i32) -> bool {\n    n % 3 == 0\n}\n```"
        );
        assert!(
            p.request.starts_with("Write a Rust function"),
            "{}",
            p.request
        );
        assert!(
            p.request
                .ends_with("that returns true if n is a multiple of three."),
            "{}",
            p.request
        );
    }

    #[test]
    fn batches_pad_to_the_longest_and_mask_prompt_and_padding() {
        let short = Example {
            tokens: vec![10, 11, 12],
            scored_from: 2,
        };
        let long = Example {
            tokens: vec![20, 21, 22, 23, 24, 25],
            scored_from: 3,
        };
        let (x, y, read) = pad_batch(&[&short, &long], &Device::Cpu).unwrap();
        assert_eq!(read, 2 + 5);
        let ig = IGNORED_TARGET;
        assert_eq!(
            x.to_vec2::<u32>().unwrap(),
            vec![vec![10, 11, 0, 0, 0], vec![20, 21, 22, 23, 24]]
        );
        assert_eq!(
            y.to_vec2::<u32>().unwrap(),
            vec![vec![ig, 12, ig, ig, ig], vec![ig, ig, 23, 24, 25]]
        );
        assert!(pad_batch(&[], &Device::Cpu).is_err());
    }

    #[test]
    fn the_split_is_by_name_and_long_examples_are_skipped() {
        let t = tokenizer();
        let pairs: Vec<Pair> = (0..40)
            .map(|i| {
                let body = "    1\n".repeat(i % 5 * 10);
                pair(
                    &format!("f{i}"),
                    "/// Returns one.\nfn f() -> u8 {\n",
                    &format!("{body}    1\n}}\n"),
                )
            })
            .collect();
        let (train, val, summary) = build_examples(&pairs, &t, 120, 0.25, true).unwrap();
        assert_eq!(summary.pairs, 40);
        assert_eq!(summary.train_pairs + summary.val_pairs, 40);
        assert!(summary.val_pairs > 0 && summary.train_pairs > summary.val_pairs);
        for (name, pair) in pairs.iter().map(|p| (&p.name, p)) {
            let held_out = tokens::corpus::is_validation(name, 0.25);
            let e = completion_example(&t, pair).unwrap();
            let pool = if held_out { &val } else { &train };
            assert_eq!(
                pool.completions.contains(&e),
                e.tokens.len() <= 121,
                "{name}"
            );
        }
        assert!(summary.too_long_completions > 0 && summary.too_long_chats > 0);
        let kept = train.completions.len() + val.completions.len();
        assert_eq!(kept + summary.too_long_completions, 40);

        let sample = validation_sample(val.clone(), 2);
        assert_eq!(sample.completions.len(), 2.min(val.completions.len()));
        let (no_chat, _, _) = build_examples(&pairs, &t, 120, 0.25, false).unwrap();
        assert!(no_chat.chats.is_empty());
    }

    #[test]
    fn the_batcher_mixes_formats_by_share_and_resumes_exactly() {
        let completion = Example {
            tokens: vec![1, 2, 3],
            scored_from: 1,
        };
        let chat = Example {
            tokens: vec![7, 8, 9, 9],
            scored_from: 2,
        };
        let pools = ExamplePools {
            completions: vec![completion],
            chats: vec![chat],
        };
        // Chat turns among the 400 examples of a group of batches of 25.
        let chats_in = |share: f64| {
            let mut b = ExampleBatcher::new(pools.clone(), share, 4).unwrap();
            let mut chats = 0;
            for _ in 0..BATCHES_PER_GROUP {
                let (x, _, _) = b.next_batch(25, &Device::Cpu).unwrap();
                let rows = x.to_vec2::<u32>().unwrap();
                chats += rows.iter().filter(|row| row[0] == 7).count();
            }
            chats
        };
        assert_eq!(BATCHES_PER_GROUP * 25, 400);
        assert_eq!(chats_in(0.0), 0);
        assert_eq!(chats_in(1.0), 400);
        let half = chats_in(0.5);
        assert!((150..250).contains(&half), "{half}");

        let next = |b: &mut ExampleBatcher| {
            let (x, _, _) = b.next_batch(8, &Device::Cpu).unwrap();
            x.to_vec2::<u32>().unwrap()
        };
        let mut b = ExampleBatcher::new(pools.clone(), 0.5, 9).unwrap();
        for _ in 0..5 {
            next(&mut b);
        }
        let state = b.batches_drawn();
        let first: Vec<_> = (0..20).map(|_| next(&mut b)).collect();
        let mut resumed = ExampleBatcher::new(pools.clone(), 0.5, 9).unwrap();
        resumed.set_batches_drawn(state);
        let again: Vec<_> = (0..20).map(|_| next(&mut resumed)).collect();
        assert_eq!(first, again);

        let no_chats = ExamplePools {
            chats: Vec::new(),
            ..pools
        };
        assert!(ExampleBatcher::new(no_chats.clone(), 0.5, 0).is_err());
        assert!(ExampleBatcher::new(no_chats, 0.0, 0).is_ok());
    }

    #[test]
    fn batches_hold_examples_of_like_length() {
        // Lengths 2 to 201 drawn at random: grouped, a batch's padding is a few tokens.
        let completions = (2..202)
            .map(|n| Example {
                tokens: vec![1; n],
                scored_from: 1,
            })
            .collect();
        let pools = ExamplePools {
            completions,
            chats: Vec::new(),
        };
        let mut b = ExampleBatcher::new(pools, 0.0, 3).unwrap();
        let (mut read, mut padded) = (0, 0);
        let mut longest = Vec::new();
        for _ in 0..2 * BATCHES_PER_GROUP {
            let (x, _, tokens) = b.next_batch(8, &Device::Cpu).unwrap();
            read += tokens;
            padded += x.elem_count();
            longest.push(x.dim(1).unwrap());
        }
        let filled = read as f64 / padded as f64;
        assert!(filled > 0.9, "{filled}");
        // Served in a shuffled order, not shortest first.
        assert!(longest.windows(2).any(|w| w[1] < w[0]), "{longest:?}");
    }
}
