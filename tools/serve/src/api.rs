//! The OpenAI API as pure functions: a request body becomes a validated [`Job`] (or an
//! [`ApiError`] naming the field), an [`Outcome`] becomes a `chat.completion` / `text_completion`
//! object, stream steps become `chat.completion.chunk` / `text_completion` chunks. No sockets here
//! (server.rs does HTTP), no model (backend.rs).
//!
//! Request fields read: `messages` (chat) or `prompt` (a string or an array of one string),
//! `max_completion_tokens` / `max_tokens`, `temperature` (0..=2, default 1), `top_p` (0<..=1),
//! `top_k` (≥ 0, non-standard), `repetition_penalty` (> 0, non-standard), `seed`, `stop` (a string
//! or up to 4), `stream`, `stream_options.include_usage`, `n` (1 only), `model` (a string, not
//! checked against the loaded model). Other fields are ignored; `null` counts as absent.
//! `max_tokens` above the server's cap is refused; below it, it is cut to the room the context
//! leaves after the prompt (finish reason `length` when that ends the reply).

use std::fmt::Display;

use serde_json::{json, Map, Value};

use crate::backend::{Backend, Outcome, Usage};
use model::{ChatMessage, GenerationRequest, SamplingParams, SubmitError, TokenizerError};

/// An error answer: HTTP status and the OpenAI error object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    /// OpenAI's `type`: `invalid_request_error` or `server_error`.
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    /// 400 invalid_request_error.
    pub fn invalid(param: Option<&str>, message: impl Into<String>) -> Self {
        ApiError {
            status: 400,
            message: message.into(),
            kind: "invalid_request_error",
            param: param.map(str::to_string),
            code: None,
        }
    }

    /// Another status, still an invalid_request_error (404, 405, 413).
    pub fn request(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code: Some(code),
            ..ApiError::invalid(None, message)
        }
    }

    /// A failure of the server or the engine (500, 503).
    pub fn server(status: u16, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: None,
        }
    }

    /// `{"error": {"message", "type", "param", "code"}}`.
    pub fn to_json(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }

    /// The refusal of a submitted request.
    pub fn from_submit(e: &SubmitError, param: &str) -> Self {
        match e {
            SubmitError::ShuttingDown => ApiError::server(503, e.to_string()),
            SubmitError::PromptTooLong { prompt, context } => {
                context_exceeded(param, prompt, *context)
            }
            SubmitError::EmptyPrompt | SubmitError::BadToken(_) => {
                ApiError::invalid(Some(param), e.to_string())
            }
            SubmitError::BadSampling(_) => ApiError::invalid(None, e.to_string()),
        }
    }
}

/// `prompt_tokens`: the count, or "at least" one for a prompt refused before it was tokenized
/// whole.
fn context_exceeded(param: &str, prompt_tokens: impl Display, context: usize) -> ApiError {
    ApiError {
        code: Some("context_length_exceeded"),
        ..ApiError::invalid(
            Some(param),
            format!(
                "this model's maximum context length is {context} tokens, and the prompt has \
                 {prompt_tokens}: shorten it"
            ),
        )
    }
}

/// Which API a request came through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// /v1/chat/completions
    Chat,
    /// /v1/completions
    Text,
}

impl Endpoint {
    /// The request field holding the prompt.
    pub fn prompt_param(self) -> &'static str {
        match self {
            Endpoint::Chat => "messages",
            Endpoint::Text => "prompt",
        }
    }
}

/// A validated request, ready to submit.
#[derive(Clone, Debug)]
pub struct Job {
    pub endpoint: Endpoint,
    pub request: GenerationRequest,
    pub stream: bool,
    /// Streaming only: end with a chunk carrying the token usage.
    pub include_usage: bool,
}

/// Reads typed optional fields of a JSON object; wrong types are errors naming the field.
struct Fields<'a>(&'a Map<String, Value>);

impl Fields<'_> {
    /// The field, `None` if absent or null.
    fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name).filter(|v| !v.is_null())
    }

    fn number(&self, name: &str) -> Result<Option<f64>, ApiError> {
        self.get(name)
            .map(|v| {
                v.as_f64().ok_or_else(|| {
                    ApiError::invalid(Some(name), format!("'{name}' must be a number"))
                })
            })
            .transpose()
    }

    fn integer(&self, name: &str) -> Result<Option<i128>, ApiError> {
        self.get(name)
            .map(|v| {
                v.as_i64()
                    .map(i128::from)
                    .or_else(|| v.as_u64().map(i128::from))
                    .ok_or_else(|| {
                        ApiError::invalid(Some(name), format!("'{name}' must be an integer"))
                    })
            })
            .transpose()
    }

    fn boolean(&self, name: &str) -> Result<Option<bool>, ApiError> {
        self.get(name)
            .map(|v| {
                v.as_bool().ok_or_else(|| {
                    ApiError::invalid(Some(name), format!("'{name}' must be a boolean"))
                })
            })
            .transpose()
    }
}

/// Checks sampling settings (shared with the CLI flags): temperature 0..=2, top_p in (0, 1],
/// repetition_penalty > 0, all finite.
pub fn check_sampling(s: &SamplingParams) -> Result<(), ApiError> {
    let bad = |name: &str, rule: &str, value: f32| {
        Err(ApiError::invalid(
            Some(name),
            format!("'{name}' must be {rule}, got {value}"),
        ))
    };
    if !(0.0..=2.0).contains(&s.temperature) {
        return bad("temperature", "between 0 and 2", s.temperature);
    }
    if !(s.top_p > 0.0 && s.top_p <= 1.0) {
        return bad("top_p", "above 0 and at most 1", s.top_p);
    }
    if !(s.repetition_penalty > 0.0 && s.repetition_penalty.is_finite()) {
        return bad(
            "repetition_penalty",
            "a finite number above 0",
            s.repetition_penalty,
        );
    }
    Ok(())
}

/// Checks that `prompt` leaves room in the context and returns the completion budget:
/// `requested` (default `cap`) cut to the room after the prompt.
pub fn budget(
    param: &str,
    prompt: &[u32],
    requested: Option<usize>,
    cap: usize,
    context: usize,
) -> Result<usize, ApiError> {
    if prompt.is_empty() {
        return Err(ApiError::invalid(
            Some(param),
            format!("'{param}' must not be empty"),
        ));
    }
    if prompt.len() >= context {
        return Err(context_exceeded(param, prompt.len(), context));
    }
    Ok(requested.unwrap_or(cap).min(context - prompt.len()))
}

/// Parses and validates a request body for `endpoint`, tokenizing its prompt with `backend`.
/// `max_tokens_cap` bounds `max_tokens`; `seed` is used when the request gives none.
pub fn parse_job(
    endpoint: Endpoint,
    body: &[u8],
    backend: &dyn Backend,
    max_tokens_cap: usize,
    seed: u64,
) -> Result<Job, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(None, format!("the request body is not valid JSON: {e}")))?;
    let Value::Object(object) = value else {
        return Err(ApiError::invalid(
            None,
            "the request body must be a JSON object",
        ));
    };
    let f = Fields(&object);

    if f.get("model").is_some_and(|m| !m.is_string()) {
        return Err(ApiError::invalid(Some("model"), "'model' must be a string"));
    }
    if let Some(n) = f.integer("n")? {
        if n != 1 {
            return Err(ApiError::invalid(
                Some("n"),
                format!("only n = 1 is supported, got {n}"),
            ));
        }
    }
    let stream = f.boolean("stream")?.unwrap_or(false);
    let include_usage = match f.get("stream_options") {
        None => false,
        Some(Value::Object(o)) => Fields(o)
            .boolean("include_usage")
            .map_err(|_| {
                ApiError::invalid(
                    Some("stream_options"),
                    "'stream_options.include_usage' must be a boolean",
                )
            })?
            .unwrap_or(false),
        Some(_) => {
            return Err(ApiError::invalid(
                Some("stream_options"),
                "'stream_options' must be an object",
            ))
        }
    };

    let max_name = if f.get("max_completion_tokens").is_some() {
        "max_completion_tokens"
    } else {
        "max_tokens"
    };
    let max_tokens = match f.integer(max_name)? {
        None => None,
        Some(m) if m < 1 => {
            return Err(ApiError::invalid(
                Some(max_name),
                format!("'{max_name}' must be at least 1"),
            ))
        }
        Some(m) if m > max_tokens_cap as i128 => {
            return Err(ApiError::invalid(
                Some(max_name),
                format!("'{max_name}' is {m}, above this server's limit of {max_tokens_cap}"),
            ))
        }
        Some(m) => Some(m as usize),
    };

    let sampling = SamplingParams {
        temperature: f.number("temperature")?.unwrap_or(1.0) as f32,
        top_k: match f.integer("top_k")? {
            Some(k) if k < 0 => {
                return Err(ApiError::invalid(
                    Some("top_k"),
                    "'top_k' must be 0 or more",
                ))
            }
            Some(k) => usize::try_from(k).unwrap_or(usize::MAX),
            None => 0,
        },
        top_p: f.number("top_p")?.unwrap_or(1.0) as f32,
        repetition_penalty: f.number("repetition_penalty")?.unwrap_or(1.0) as f32,
        // A negative seed (some clients send one) is used as its two's-complement bits.
        seed: f.integer("seed")?.map_or(seed, |s| s as u64),
    };
    check_sampling(&sampling)?;
    let stop = parse_stop(f.get("stop"))?;

    let param = endpoint.prompt_param();
    let context = backend.context_length();
    let tokenizer_error = |e: TokenizerError| match e {
        TokenizerError::TooLong { at_least } => {
            context_exceeded(param, format_args!("at least {at_least}"), context)
        }
        e => ApiError::invalid(Some(param), e.to_string()),
    };
    // A prompt that cannot fit is refused before it is tokenized whole: tokenizing costs memory
    // in proportion to the text (~200 MB for 1 MB).
    let prompt = match endpoint {
        Endpoint::Chat => backend
            .encode_chat_within(&parse_messages(f.get("messages"))?, context)
            .map_err(tokenizer_error)?,
        Endpoint::Text => backend
            .encode_prompt_within(parse_prompt(f.get("prompt"))?, context)
            .map_err(tokenizer_error)?,
    };
    let max_tokens = budget(param, &prompt, max_tokens, max_tokens_cap, context)?;
    Ok(Job {
        endpoint,
        request: GenerationRequest {
            prompt,
            max_tokens,
            sampling,
            stop,
        },
        stream,
        include_usage: stream && include_usage,
    })
}

/// `stop`: a string or an array of up to 4 strings (empty ones dropped).
fn parse_stop(value: Option<&Value>) -> Result<Vec<String>, ApiError> {
    let bad = || {
        ApiError::invalid(
            Some("stop"),
            "'stop' must be a string or an array of up to 4 strings",
        )
    };
    let stops: Vec<String> = match value {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) if items.len() <= 4 => items
            .iter()
            .map(|v| v.as_str().map(str::to_string).ok_or_else(bad))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(bad()),
    };
    Ok(stops.into_iter().filter(|s| !s.is_empty()).collect())
}

/// `prompt`: a string or an array of exactly one string.
fn parse_prompt(value: Option<&Value>) -> Result<&str, ApiError> {
    match value {
        Some(Value::String(s)) => Ok(s),
        Some(Value::Array(items)) if items.len() == 1 && items[0].is_string() => {
            Ok(items[0].as_str().unwrap_or_default())
        }
        None => Err(ApiError::invalid(Some("prompt"), "'prompt' is required")),
        Some(_) => Err(ApiError::invalid(
            Some("prompt"),
            "'prompt' must be a string or an array of one string",
        )),
    }
}

/// `messages`: a non-empty array of {role, content}; content is a string, null, or an array of
/// `{"type": "text", "text": ...}` parts (joined). Role "developer" is OpenAI's new name for
/// "system".
fn parse_messages(value: Option<&Value>) -> Result<Vec<ChatMessage>, ApiError> {
    let items = match value {
        Some(Value::Array(items)) if !items.is_empty() => items,
        None => {
            return Err(ApiError::invalid(
                Some("messages"),
                "'messages' is required",
            ))
        }
        Some(_) => {
            return Err(ApiError::invalid(
                Some("messages"),
                "'messages' must be a non-empty array",
            ))
        }
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let bad =
                |what: &str| ApiError::invalid(Some("messages"), format!("'messages[{i}]{what}"));
            let Value::Object(m) = item else {
                return Err(bad("' must be an object"));
            };
            let role = match m.get("role") {
                Some(Value::String(r)) if r == "developer" => "system".to_string(),
                Some(Value::String(r)) => r.clone(),
                _ => return Err(bad(".role' must be a string")),
            };
            let content = match m.get("content") {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(parts)) => parts
                    .iter()
                    .map(|p| match (p.get("type"), p.get("text")) {
                        (Some(t), Some(Value::String(text))) if t == "text" => Ok(text.as_str()),
                        _ => Err(bad(
                            ".content' parts must be {\"type\": \"text\", \"text\": ...}",
                        )),
                    })
                    .collect::<Result<String, _>>()?,
                Some(_) => return Err(bad(".content' must be a string or an array of text parts")),
            };
            Ok(ChatMessage { role, content })
        })
        .collect()
}

/// What every response of one request shares.
#[derive(Clone, Debug)]
pub struct Meta {
    pub endpoint: Endpoint,
    pub id: String,
    /// Unix seconds.
    pub created: u64,
    pub model: String,
}

fn usage_json(u: Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
    })
}

/// The non-streaming answer: a `chat.completion` or `text_completion` object.
pub fn completion_json(meta: &Meta, outcome: &Outcome) -> Value {
    let finish = outcome.finish_reason.as_str();
    let (object, choice) = match meta.endpoint {
        Endpoint::Chat => (
            "chat.completion",
            json!({"index": 0, "message": {"role": "assistant", "content": outcome.text},
                   "logprobs": null, "finish_reason": finish}),
        ),
        Endpoint::Text => (
            "text_completion",
            json!({"index": 0, "text": outcome.text, "logprobs": null, "finish_reason": finish}),
        ),
    };
    json!({
        "id": meta.id,
        "object": object,
        "created": meta.created,
        "model": meta.model,
        "choices": [choice],
        "usage": usage_json(outcome.usage),
    })
}

/// One step of a stream.
#[derive(Clone, Copy, Debug)]
pub enum Chunk<'a> {
    /// Chat only: the first chunk, `delta: {role: "assistant", content: ""}`.
    Start,
    Text(&'a str),
    /// The last choice chunk: empty delta / text and the finish reason.
    Finish(&'a str),
    /// After `Finish` when `include_usage`: no choices, the usage.
    Usage(Usage),
}

/// A streamed chunk. With `include_usage`, every chunk carries `"usage": null` except the final
/// usage chunk, as OpenAI sends them.
pub fn chunk_json(meta: &Meta, chunk: Chunk<'_>, include_usage: bool) -> Value {
    let choice = |content: Value, finish: Option<&str>| match meta.endpoint {
        Endpoint::Chat => {
            json!({"index": 0, "delta": content, "logprobs": null, "finish_reason": finish})
        }
        Endpoint::Text => {
            json!({"index": 0, "text": content, "logprobs": null, "finish_reason": finish})
        }
    };
    let text = |t: &str| match meta.endpoint {
        Endpoint::Chat => json!({"content": t}),
        Endpoint::Text => json!(t),
    };
    let (choices, usage) = match chunk {
        Chunk::Start => (
            vec![choice(json!({"role": "assistant", "content": ""}), None)],
            Value::Null,
        ),
        Chunk::Text(t) => (vec![choice(text(t), None)], Value::Null),
        Chunk::Finish(reason) => {
            let empty = match meta.endpoint {
                Endpoint::Chat => json!({}),
                Endpoint::Text => json!(""),
            };
            (vec![choice(empty, Some(reason))], Value::Null)
        }
        Chunk::Usage(u) => (Vec::new(), usage_json(u)),
    };
    let mut value = json!({
        "id": meta.id,
        "object": match meta.endpoint {
            Endpoint::Chat => "chat.completion.chunk",
            Endpoint::Text => "text_completion",
        },
        "created": meta.created,
        "model": meta.model,
        "choices": choices,
    });
    if include_usage {
        value["usage"] = usage;
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::EchoBackend;
    use model::FinishReason;
    use std::time::Duration;

    fn echo() -> EchoBackend {
        EchoBackend::new(32, Duration::ZERO)
    }

    fn parse(endpoint: Endpoint, body: &str) -> Result<Job, ApiError> {
        parse_job(endpoint, body.as_bytes(), &echo(), 16, 7)
    }

    fn error(endpoint: Endpoint, body: &str) -> (Option<String>, String) {
        let e = parse(endpoint, body).unwrap_err();
        assert_eq!(e.status, 400, "{e:?}");
        (e.param, e.message)
    }

    #[test]
    fn chat_request_with_every_field() {
        let job = parse(
            Endpoint::Chat,
            r#"{"model":"x","messages":[{"role":"developer","content":"s"},
                {"role":"user","content":[{"type":"text","text":"h"},{"type":"text","text":"i"}]}],
                "max_tokens":5,"temperature":0,"top_p":0.5,"top_k":3,"repetition_penalty":1.1,
                "seed":-1,"stop":["a",""],"stream":true,"stream_options":{"include_usage":true},
                "n":1,"unknown":{"x":1},"user":null}"#,
        )
        .unwrap();
        let r = &job.request;
        // [system] s [end] [user] h i [end] [assistant]
        assert_eq!(r.prompt, vec![256, 115, 259, 257, 104, 105, 259, 258]);
        assert_eq!(r.max_tokens, 5);
        assert_eq!(r.sampling.temperature, 0.0);
        assert_eq!(r.sampling.top_p, 0.5);
        assert_eq!(r.sampling.top_k, 3);
        assert_eq!(r.sampling.seed, u64::MAX);
        assert_eq!(r.stop, vec!["a".to_string()]);
        assert!(job.stream && job.include_usage);
    }

    #[test]
    fn defaults_and_the_context_budget() {
        let job = parse(Endpoint::Text, r#"{"prompt":["hello"]}"#).unwrap();
        assert_eq!(job.request.prompt.len(), 5);
        assert_eq!(job.request.max_tokens, 16, "the cap when absent");
        assert_eq!(job.request.sampling.temperature, 1.0);
        assert_eq!(
            job.request.sampling.seed, 7,
            "the server's seed when absent"
        );
        assert!(!job.stream && !job.include_usage);
        // Room left in the 32-token context cuts both the default and a request.
        let long = format!(r#"{{"prompt":"{}","max_tokens":16}}"#, "x".repeat(20));
        assert_eq!(parse(Endpoint::Text, &long).unwrap().request.max_tokens, 12);
        let job = parse(
            Endpoint::Text,
            r#"{"prompt":"a","max_completion_tokens":2,"max_tokens":99}"#,
        );
        assert_eq!(job.unwrap().request.max_tokens, 2);
    }

    #[test]
    fn bad_fields_are_named() {
        let cases = [
            (Endpoint::Chat, r#"{"messages":"hi"}"#, "messages"),
            (Endpoint::Chat, r#"{"messages":[]}"#, "messages"),
            (Endpoint::Chat, r#"{}"#, "messages"),
            (Endpoint::Chat, r#"{"messages":[{"role":1}]}"#, "messages"),
            (
                Endpoint::Chat,
                r#"{"messages":[{"role":"tool","content":"x"}]}"#,
                "messages",
            ),
            (
                Endpoint::Chat,
                r#"{"messages":[{"role":"user","content":[{"type":"image"}]}]}"#,
                "messages",
            ),
            (Endpoint::Text, r#"{"prompt":["a","b"]}"#, "prompt"),
            (Endpoint::Text, r#"{"prompt":""}"#, "prompt"),
            (
                Endpoint::Text,
                r#"{"prompt":"a","temperature":"hot"}"#,
                "temperature",
            ),
            (
                Endpoint::Text,
                r#"{"prompt":"a","temperature":2.5}"#,
                "temperature",
            ),
            (Endpoint::Text, r#"{"prompt":"a","top_p":0}"#, "top_p"),
            (Endpoint::Text, r#"{"prompt":"a","top_k":-1}"#, "top_k"),
            (
                Endpoint::Text,
                r#"{"prompt":"a","repetition_penalty":0}"#,
                "repetition_penalty",
            ),
            (
                Endpoint::Text,
                r#"{"prompt":"a","max_tokens":17}"#,
                "max_tokens",
            ),
            (
                Endpoint::Text,
                r#"{"prompt":"a","max_tokens":0}"#,
                "max_tokens",
            ),
            (
                Endpoint::Text,
                r#"{"prompt":"a","max_tokens":1.5}"#,
                "max_tokens",
            ),
            (
                Endpoint::Text,
                r#"{"prompt":"a","max_completion_tokens":99}"#,
                "max_completion_tokens",
            ),
            (
                Endpoint::Text,
                r#"{"prompt":"a","stop":["1","2","3","4","5"]}"#,
                "stop",
            ),
            (Endpoint::Text, r#"{"prompt":"a","stop":[1]}"#, "stop"),
            (Endpoint::Text, r#"{"prompt":"a","stream":"yes"}"#, "stream"),
            (
                Endpoint::Text,
                r#"{"prompt":"a","stream_options":true}"#,
                "stream_options",
            ),
            (Endpoint::Text, r#"{"prompt":"a","n":2}"#, "n"),
            (Endpoint::Text, r#"{"prompt":"a","seed":"1"}"#, "seed"),
            (Endpoint::Text, r#"{"prompt":"a","model":3}"#, "model"),
        ];
        for (endpoint, body, param) in cases {
            let (got, message) = error(endpoint, body);
            assert_eq!(got.as_deref(), Some(param), "{body}: {message}");
        }
        assert_eq!(error(Endpoint::Text, "{").0, None);
        assert_eq!(error(Endpoint::Text, "[1]").0, None);
    }

    #[test]
    fn prompt_over_the_context_is_context_length_exceeded() {
        let body = format!(r#"{{"prompt":"{}"}}"#, "x".repeat(32));
        let e = parse(Endpoint::Text, &body).unwrap_err();
        assert_eq!(e.code, Some("context_length_exceeded"));
        assert_eq!(e.param.as_deref(), Some("prompt"));
        let e = ApiError::from_submit(
            &SubmitError::PromptTooLong {
                prompt: 9,
                context: 8,
            },
            "messages",
        );
        assert_eq!((e.status, e.code), (400, Some("context_length_exceeded")));
        assert_eq!(
            ApiError::from_submit(&SubmitError::ShuttingDown, "prompt").status,
            503
        );
        let json = e.to_json();
        assert_eq!(json["error"]["type"], "invalid_request_error");
        assert_eq!(json["error"]["param"], "messages");
    }

    /// A text and a chat request whose prompt is `text` (a user message in the chat).
    fn prompt_requests(text: &str) -> [(Endpoint, String); 2] {
        [
            (Endpoint::Text, json!({ "prompt": text }).to_string()),
            (
                Endpoint::Chat,
                json!({"messages": [{"role": "user", "content": text}]}).to_string(),
            ),
        ]
    }

    /// A megabyte prompt is refused with context_length_exceeded before it is tokenized whole
    /// (what the tokenizer is then given is tested in libs/model's tokenizer.rs); one just under
    /// the context passes with the tokens it had before.
    #[test]
    fn a_prompt_that_cannot_fit_is_refused_before_it_is_tokenized() {
        let dir = tempfile::tempdir().unwrap();
        let config = model::ModelConfig {
            n_layers: 1,
            context_length: 256,
            ..model::ModelConfig::preset("tiny").unwrap()
        };
        let (gguf, mhc) =
            model::testmodel::write_random_model(dir.path(), "t", &config, 5).unwrap();
        let engine =
            model::load_engine(&gguf, mhc.as_deref(), model::EngineOptions::default()).unwrap();
        // The lower bounds the refusals give for the text and the chat. Echo: a token per byte,
        // and a chat adds a marker before and after the message and one at the end. Engine:
        // byte-level tokens, the longest "<|unused4095|>" (14 bytes), so 1 MB is at least
        // 71,429 tokens, and the chat markers are tokens of their own.
        let backends: [(&dyn Backend, [usize; 2]); 2] = [
            (&echo(), [1_000_000, 1_000_003]),
            (&engine, [71_429, 71_432]),
        ];
        let megabyte = "fn main() { let x = 1; }\n".repeat(40_000);
        for (backend, at_least) in backends {
            let context = backend.context_length();
            for ((endpoint, body), at_least) in prompt_requests(&megabyte).into_iter().zip(at_least)
            {
                let e = parse_job(endpoint, body.as_bytes(), backend, 16, 7).unwrap_err();
                assert_eq!(e.code, Some("context_length_exceeded"), "{e:?}");
                let expected = format!(
                    "maximum context length is {context} tokens, and the prompt has at least \
                     {at_least}:"
                );
                assert!(e.message.contains(&expected), "{}", e.message);
            }

            let under = "x".repeat(context - 1);
            let [(endpoint, body), _] = prompt_requests(&under);
            let job = parse_job(endpoint, body.as_bytes(), backend, 16, 7).unwrap();
            let tokens = backend.encode_prompt(&under).unwrap();
            assert_eq!((job.request.prompt, job.request.max_tokens), (tokens, 1));
            let messages = [ChatMessage {
                role: "user".into(),
                content: "x".repeat(context - 4),
            }];
            let [_, (endpoint, body)] = prompt_requests(&messages[0].content);
            let job = parse_job(endpoint, body.as_bytes(), backend, 16, 7).unwrap();
            let tokens = backend.encode_chat(&messages).unwrap();
            assert_eq!((job.request.prompt, job.request.max_tokens), (tokens, 1));
        }
        engine.shutdown();
    }

    #[test]
    fn response_and_chunk_shapes() {
        let meta = |endpoint| Meta {
            endpoint,
            id: "id-1".into(),
            created: 5,
            model: "m".into(),
        };
        let outcome = Outcome {
            text: "hi".into(),
            finish_reason: FinishReason::Length,
            usage: Usage {
                prompt_tokens: 3,
                completion_tokens: 2,
            },
            timed_out: false,
        };
        let chat = completion_json(&meta(Endpoint::Chat), &outcome);
        assert_eq!(chat["object"], "chat.completion");
        assert_eq!(chat["choices"][0]["message"]["content"], "hi");
        assert_eq!(chat["choices"][0]["finish_reason"], "length");
        assert_eq!(chat["usage"]["total_tokens"], 5);
        let text = completion_json(&meta(Endpoint::Text), &outcome);
        assert_eq!(
            (&text["object"], &text["choices"][0]["text"]),
            (&json!("text_completion"), &json!("hi"))
        );

        let m = meta(Endpoint::Chat);
        let start = chunk_json(&m, Chunk::Start, false);
        assert_eq!(start["object"], "chat.completion.chunk");
        assert_eq!(start["choices"][0]["delta"]["role"], "assistant");
        assert!(start["choices"][0]["finish_reason"].is_null());
        assert!(start.get("usage").is_none());
        let t = chunk_json(&m, Chunk::Text("a"), true);
        assert_eq!(t["choices"][0]["delta"], json!({"content": "a"}));
        assert!(t["usage"].is_null() && t.get("usage").is_some());
        let end = chunk_json(&m, Chunk::Finish("stop"), false);
        assert_eq!(end["choices"][0]["delta"], json!({}));
        assert_eq!(end["choices"][0]["finish_reason"], "stop");
        let usage = chunk_json(&m, Chunk::Usage(outcome.usage), true);
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(usage["usage"]["completion_tokens"], 2);
        let t = chunk_json(&meta(Endpoint::Text), Chunk::Text("a"), false);
        assert_eq!(
            (&t["object"], &t["choices"][0]["text"]),
            (&json!("text_completion"), &json!("a"))
        );
    }
}
