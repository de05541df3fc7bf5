//! What the HTTP layer needs from a model, as a trait: tokenize, submit a generation, report load,
//! shut down. [`model::Engine`] implements it; so does [`EchoBackend`], a stand-in that echoes the
//! prompt back (`serve --echo-backend`, and the tests of the HTTP layer, which need no model file).
//!
//! [`follow`] consumes a request's event stream for every caller (streaming and non-streaming HTTP
//! responses, the CLI mode): it enforces the wall-time deadline, calls back on each text delta and
//! on idle ticks (where the server writes a heartbeat, so a vanished client is noticed even while
//! the request waits in the queue), and drops the receiver on any exit, which cancels the request
//! and frees its engine slot.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use model::{
    ChatMessage, Completion, EngineStats, FinishReason, GenerationEvent, GenerationRequest,
    SubmitError, TokenizerError,
};

/// A model the server can run requests on.
pub trait Backend: Send + Sync {
    /// The name /v1/models reports and responses carry.
    fn model_id(&self) -> &str;
    /// Longest sequence (prompt + completion) in tokens.
    fn context_length(&self) -> usize;
    /// Token ids of plain text.
    fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError>;
    /// Token ids of a completion prompt: the text after the model's beginning-of-sequence token
    /// where the model starts every sequence with one. Refused with [`TokenizerError::TooLong`]
    /// before the text is tokenized whole (which costs memory in proportion) when the prompt
    /// certainly has `limit` tokens or more.
    fn encode_prompt_within(&self, text: &str, limit: usize) -> Result<Vec<u32>, TokenizerError>;
    /// [`Backend::encode_prompt_within`] with no limit.
    fn encode_prompt(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        self.encode_prompt_within(text, usize::MAX)
    }
    /// Token ids of a chat, ending where the assistant's reply starts; refused as
    /// [`Backend::encode_prompt_within`] refuses.
    fn encode_chat_within(
        &self,
        messages: &[ChatMessage],
        limit: usize,
    ) -> Result<Vec<u32>, TokenizerError>;
    /// [`Backend::encode_chat_within`] with no limit.
    fn encode_chat(&self, messages: &[ChatMessage]) -> Result<Vec<u32>, TokenizerError> {
        self.encode_chat_within(messages, usize::MAX)
    }
    /// Queues a request; dropping the receiver cancels it.
    fn submit(&self, request: GenerationRequest) -> Result<Receiver<GenerationEvent>, SubmitError>;
    /// Running and queued requests.
    fn stats(&self) -> EngineStats;
    /// Ends running requests with an error event and refuses new ones.
    fn shutdown(&self);
}

impl Backend for model::Engine {
    fn model_id(&self) -> &str {
        self.model_name()
    }

    fn context_length(&self) -> usize {
        self.config().context_length
    }

    fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        self.tokenizer().encode(text)
    }

    fn encode_prompt_within(&self, text: &str, limit: usize) -> Result<Vec<u32>, TokenizerError> {
        self.tokenizer().encode_prompt_within(text, limit)
    }

    fn encode_chat_within(
        &self,
        messages: &[ChatMessage],
        limit: usize,
    ) -> Result<Vec<u32>, TokenizerError> {
        self.tokenizer().encode_chat_within(messages, limit)
    }

    fn submit(&self, request: GenerationRequest) -> Result<Receiver<GenerationEvent>, SubmitError> {
        model::Engine::submit(self, request)
    }

    fn stats(&self) -> EngineStats {
        model::Engine::stats(self)
    }

    fn shutdown(&self) {
        model::Engine::shutdown(self)
    }
}

/// Token ids of the echo backend: bytes are 0..=255, then the chat template's markers.
const ECHO_SYSTEM: u32 = 256;
const ECHO_USER: u32 = 257;
const ECHO_ASSISTANT: u32 = 258;
const ECHO_END: u32 = 259;
const ECHO_VOCAB: u32 = 260;

/// A stand-in model for testing the HTTP layer: one token per byte, and the "completion" is the
/// last user message of a chat (or the whole prompt of a text completion), one character per
/// event after `delay`. It honours max_tokens (in bytes), the context length and stop strings,
/// runs every request at once (max_batch 0 in its stats: no limit), counts the requests whose
/// receiver is still alive as `active`, and stops a request as soon as its receiver is dropped.
pub struct EchoBackend {
    context_length: usize,
    delay: Duration,
    active: Arc<AtomicUsize>,
    stopping: Arc<AtomicBool>,
}

impl EchoBackend {
    pub fn new(context_length: usize, delay: Duration) -> Self {
        EchoBackend {
            context_length,
            delay,
            active: Arc::new(AtomicUsize::new(0)),
            stopping: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The text to echo: the last user message, else every byte of the prompt.
    fn reply(prompt: &[u32]) -> String {
        let from = prompt
            .iter()
            .rposition(|&t| t == ECHO_USER)
            .map_or(0, |i| i + 1);
        let bytes: Vec<u8> = prompt[from..]
            .iter()
            .take_while(|&&t| t != ECHO_END)
            .filter_map(|&t| u8::try_from(t).ok())
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// The echo backend's early refusal: its token counts are exact before it encodes.
fn refuse_if_at_limit(tokens: usize, limit: usize) -> Result<(), TokenizerError> {
    if tokens >= limit {
        return Err(TokenizerError::TooLong { at_least: tokens });
    }
    Ok(())
}

/// Decrements the active count when dropped: before the last event, or when a generation thread
/// ends early.
struct ActiveGuard(Arc<AtomicUsize>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Backend for EchoBackend {
    fn model_id(&self) -> &str {
        "echo"
    }

    fn context_length(&self) -> usize {
        self.context_length
    }

    fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        Ok(text.bytes().map(u32::from).collect())
    }

    fn encode_prompt_within(&self, text: &str, limit: usize) -> Result<Vec<u32>, TokenizerError> {
        refuse_if_at_limit(text.len(), limit)?;
        self.encode(text)
    }

    fn encode_chat_within(
        &self,
        messages: &[ChatMessage],
        limit: usize,
    ) -> Result<Vec<u32>, TokenizerError> {
        // A role and an end marker per message, and the assistant's marker at the end.
        let tokens = messages.iter().map(|m| m.content.len() + 2).sum::<usize>() + 1;
        refuse_if_at_limit(tokens, limit)?;
        let mut ids = Vec::new();
        for m in messages {
            ids.push(match m.role.as_str() {
                "system" => ECHO_SYSTEM,
                "user" => ECHO_USER,
                "assistant" => ECHO_ASSISTANT,
                other => return Err(TokenizerError::UnknownRole(other.to_string())),
            });
            ids.extend(m.content.bytes().map(u32::from));
            ids.push(ECHO_END);
        }
        ids.push(ECHO_ASSISTANT);
        Ok(ids)
    }

    fn submit(&self, request: GenerationRequest) -> Result<Receiver<GenerationEvent>, SubmitError> {
        if self.stopping.load(Ordering::SeqCst) {
            return Err(SubmitError::ShuttingDown);
        }
        let prompt_tokens = request.prompt.len();
        if prompt_tokens == 0 {
            return Err(SubmitError::EmptyPrompt);
        }
        if prompt_tokens >= self.context_length {
            return Err(SubmitError::PromptTooLong {
                prompt: prompt_tokens,
                context: self.context_length,
            });
        }
        if let Some(&bad) = request.prompt.iter().find(|&&t| t >= ECHO_VOCAB) {
            return Err(SubmitError::BadToken(bad));
        }
        let mut text = Self::reply(&request.prompt);
        let mut finish_reason = FinishReason::Stop;
        if let Some(cut) = request
            .stop
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| text.find(s.as_str()))
            .min()
        {
            text.truncate(cut);
        }
        let limit = request.max_tokens.min(self.context_length - prompt_tokens);
        if text.len() > limit {
            let mut cut = limit;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
            finish_reason = FinishReason::Length;
        }

        let (tx, rx) = mpsc::channel();
        self.active.fetch_add(1, Ordering::SeqCst);
        let guard = ActiveGuard(Arc::clone(&self.active));
        let stopping = Arc::clone(&self.stopping);
        let delay = self.delay;
        thread::spawn(move || {
            for ch in text.chars() {
                thread::sleep(delay);
                if stopping.load(Ordering::SeqCst) {
                    drop(guard);
                    let _ = tx.send(GenerationEvent::Error(
                        SubmitError::ShuttingDown.to_string(),
                    ));
                    return;
                }
                if tx.send(GenerationEvent::Text(ch.to_string())).is_err() {
                    return; // cancelled: the receiver is gone (the guard frees the slot)
                }
            }
            // The slot is free before the last event, as in an engine that retires a sequence.
            drop(guard);
            let _ = tx.send(GenerationEvent::Done(Completion {
                finish_reason,
                prompt_tokens,
                completion_tokens: text.len(),
            }));
        });
        Ok(rx)
    }

    fn stats(&self) -> EngineStats {
        EngineStats {
            active: self.active.load(Ordering::SeqCst),
            queued: 0,
            max_batch: 0,
            kv_tokens: 0,
            kv_capacity_tokens: 0,
        }
    }

    fn shutdown(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }
}

/// How often [`follow`] calls back with `None` while no event arrives.
pub const IDLE_TICK: Duration = Duration::from_secs(2);

/// Token counts of a finished request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

/// A finished request: its whole text, why it ended, its token counts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub text: String,
    pub finish_reason: FinishReason,
    pub usage: Usage,
    /// The wall-time deadline ended it (then `finish_reason` is `Length`).
    pub timed_out: bool,
}

/// Why [`follow`] stopped without an outcome.
#[derive(Debug)]
pub enum FollowError {
    /// The engine reported an error (or ended the stream without a result).
    Engine(String),
    /// The callback failed (the client is gone); the request was cancelled.
    Callback(io::Error),
}

/// Consumes a request's events until it is done, fails, or `deadline` passes. `on_event` gets
/// `Some(delta)` for each text delta and `None` after each [`IDLE_TICK`] without an event; an
/// error from it cancels the request. At the deadline the request is cancelled and the outcome
/// has finish reason `Length`, with the completion tokens counted by encoding the text so far.
pub fn follow(
    backend: &dyn Backend,
    prompt_tokens: usize,
    events: Receiver<GenerationEvent>,
    deadline: Option<Instant>,
    mut on_event: impl FnMut(Option<&str>) -> io::Result<()>,
) -> Result<Outcome, FollowError> {
    let mut text = String::new();
    loop {
        let wait = match deadline {
            Some(d) => d.saturating_duration_since(Instant::now()).min(IDLE_TICK),
            None => IDLE_TICK,
        };
        let event = match events.recv_timeout(wait) {
            Ok(event) => event,
            Err(RecvTimeoutError::Timeout) if deadline.is_some_and(|d| Instant::now() >= d) => {
                let completion_tokens = backend.encode(&text).map_or(0, |ids| ids.len());
                return Ok(Outcome {
                    text,
                    finish_reason: FinishReason::Length,
                    usage: Usage {
                        prompt_tokens,
                        completion_tokens,
                    },
                    timed_out: true,
                });
            }
            Err(RecvTimeoutError::Timeout) => {
                on_event(None).map_err(FollowError::Callback)?;
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => {
                return Err(FollowError::Engine(
                    "the engine ended the request without a result".to_string(),
                ))
            }
        };
        match event {
            GenerationEvent::Text(delta) => {
                on_event(Some(&delta)).map_err(FollowError::Callback)?;
                text.push_str(&delta);
            }
            GenerationEvent::Done(c) => {
                return Ok(Outcome {
                    text,
                    finish_reason: c.finish_reason,
                    usage: Usage {
                        prompt_tokens: c.prompt_tokens,
                        completion_tokens: c.completion_tokens,
                    },
                    timed_out: false,
                })
            }
            GenerationEvent::Error(message) => return Err(FollowError::Engine(message)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::SamplingParams;

    fn request(prompt: Vec<u32>, max_tokens: usize, stop: &[&str]) -> GenerationRequest {
        GenerationRequest {
            prompt,
            max_tokens,
            sampling: SamplingParams::default(),
            stop: stop.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn run(backend: &EchoBackend, r: GenerationRequest) -> Outcome {
        let n = r.prompt.len();
        let rx = backend.submit(r).unwrap();
        follow(backend, n, rx, None, |_| Ok(())).unwrap()
    }

    fn chat(b: &EchoBackend, content: &str) -> Vec<u32> {
        b.encode_chat(&[
            ChatMessage {
                role: "system".into(),
                content: "sys".into(),
            },
            ChatMessage {
                role: "user".into(),
                content: content.into(),
            },
        ])
        .unwrap()
    }

    #[test]
    fn echo_replies_with_the_last_user_message_and_honours_limits() {
        let b = EchoBackend::new(64, Duration::ZERO);
        let out = run(&b, request(chat(&b, "héllo world"), 100, &[]));
        assert_eq!(out.text, "héllo world");
        assert_eq!(out.finish_reason, FinishReason::Stop);
        assert_eq!(out.usage.completion_tokens, 12);

        let out = run(
            &b,
            request(b.encode("abc STOP def").unwrap(), 100, &["STOP", "x"]),
        );
        assert_eq!(
            (out.text.as_str(), out.finish_reason),
            ("abc ", FinishReason::Stop)
        );

        // max_tokens counts bytes and never splits a character.
        let out = run(&b, request(chat(&b, "héllo"), 2, &[]));
        assert_eq!(
            (out.text.as_str(), out.finish_reason),
            ("h", FinishReason::Length)
        );

        assert_eq!(
            b.submit(request(vec![1; 64], 1, &[])).unwrap_err(),
            SubmitError::PromptTooLong {
                prompt: 64,
                context: 64
            }
        );
        assert_eq!(
            b.submit(request(vec![], 1, &[])).unwrap_err(),
            SubmitError::EmptyPrompt
        );
        assert_eq!(b.stats().active, 0);
        b.shutdown();
        assert_eq!(
            b.submit(request(vec![1], 1, &[])).unwrap_err(),
            SubmitError::ShuttingDown
        );
    }

    #[test]
    fn follow_times_out_with_length_and_dropping_the_receiver_frees_the_slot() {
        let b = EchoBackend::new(64, Duration::from_millis(50));
        let prompt = b.encode("abcdefghij").unwrap();
        let rx = b.submit(request(prompt, 100, &[])).unwrap();
        assert_eq!(b.stats().active, 1);
        let deadline = Instant::now() + Duration::from_millis(120);
        let out = follow(&b, 10, rx, Some(deadline), |_| Ok(())).unwrap();
        assert!(out.timed_out);
        assert_eq!(out.finish_reason, FinishReason::Length);
        assert!(out.text.len() < 10, "{:?}", out.text);
        assert_eq!(out.usage.completion_tokens, out.text.len());
        let t = Instant::now();
        while b.stats().active > 0 {
            assert!(t.elapsed() < Duration::from_secs(2), "slot not freed");
            thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn follow_reports_engine_errors_and_callback_failures() {
        let b = EchoBackend::new(64, Duration::ZERO);
        let (tx, rx) = mpsc::channel();
        tx.send(GenerationEvent::Text("a".into())).unwrap();
        tx.send(GenerationEvent::Error("boom".into())).unwrap();
        assert!(matches!(
            follow(&b, 1, rx, None, |_| Ok(())),
            Err(FollowError::Engine(m)) if m == "boom"
        ));
        let (tx, rx) = mpsc::channel::<GenerationEvent>();
        drop(tx);
        assert!(matches!(
            follow(&b, 1, rx, None, |_| Ok(())),
            Err(FollowError::Engine(_))
        ));
        let rx = b.submit(request(vec![97; 5], 5, &[])).unwrap();
        let failed = follow(&b, 5, rx, None, |_| Err(io::ErrorKind::BrokenPipe.into()));
        assert!(matches!(failed, Err(FollowError::Callback(_))));
    }
}
