//! Generation requests and the scheduler that runs them: several sequences decode together, one
//! weight pass per step for all of them (continuous batching).

use std::sync::mpsc::Receiver;

use crate::config::ModelConfig;
use crate::tokenizer::Tokenizer;

/// How the next token is chosen.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 = greedy (argmax); otherwise logits are divided by it before the softmax.
    pub temperature: f32,
    /// Keep only the k most likely tokens (0 = all).
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches top_p (1 = all).
    pub top_p: f32,
    /// > 1 discourages tokens already in the prompt or the completion (1 = off).
    pub repetition_penalty: f32,
    /// Seed of this request's random stream.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            repetition_penalty: 1.0,
            seed: 0,
        }
    }
}

/// One generation job.
#[derive(Clone, Debug)]
pub struct GenerationRequest {
    /// Prompt token ids (at least one).
    pub prompt: Vec<u32>,
    /// Most tokens to generate.
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Text that ends the completion when generated (not included in the output).
    pub stop: Vec<String>,
}

/// Why a completion ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop token or stop string.
    Stop,
    /// max_tokens reached, or the context is full.
    Length,
}

impl FinishReason {
    /// The OpenAI API's name.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// The end of a completion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion {
    pub finish_reason: FinishReason,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

/// What a request's receiver gets, in order: any number of `Text` deltas, then one `Done` or one
/// `Error`. Dropping the receiver cancels the request and frees its slot.
#[derive(Clone, Debug, PartialEq)]
pub enum GenerationEvent {
    /// New completion text (never part of a stop string; UTF-8 complete).
    Text(String),
    Done(Completion),
    Error(String),
}

/// Why a request was refused before it started.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SubmitError {
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("the prompt has {prompt} tokens, the model's context is {context}")]
    PromptTooLong { prompt: usize, context: usize },
    #[error("token id {0} is outside the vocabulary")]
    BadToken(u32),
    #[error("{0}")]
    BadSampling(String),
    #[error("the engine is shutting down")]
    ShuttingDown,
}

/// Scheduler settings.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// Sequences decoded together in one step; further requests wait in a queue.
    pub max_batch: usize,
    /// Prompt tokens prefilled per step and sequence (long prompts take several steps, so running
    /// streams keep decoding).
    pub prefill_chunk: usize,
}

/// A snapshot of the scheduler's load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EngineStats {
    pub active: usize,
    pub queued: usize,
    pub max_batch: usize,
}

/// The running model: a scheduler thread that owns it, and a handle to submit requests.
pub struct Engine {
    config: ModelConfig,
    tokenizer: Tokenizer,
    name: String,
}

impl Engine {
    /// Name reported by /v1/models.
    pub fn model_name(&self) -> &str {
        &self.name
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Queues a request; its events arrive on the returned receiver.
    pub fn submit(
        &self,
        request: GenerationRequest,
    ) -> Result<Receiver<GenerationEvent>, SubmitError> {
        let _ = request;
        todo!("scheduler")
    }

    pub fn stats(&self) -> EngineStats {
        todo!("scheduler")
    }

    /// Stops the scheduler: running requests end with an error event, new ones are refused.
    pub fn shutdown(&self) {
        todo!("scheduler")
    }
}
