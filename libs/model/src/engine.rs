//! Generation requests and the scheduler that runs them: several sequences decode together, one
//! weight pass per step for all of them (continuous batching).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use rayon::prelude::*;

use crate::config::ModelConfig;
use crate::kv::{KvCache, KvPrecision};
use crate::model::{rows_per_task, Logits, Model, SeqInput};
use crate::sampling::Sampler;
pub use crate::sampling::SamplingParams;
use crate::stream::{Delta, Detokenizer, TextStream};
use crate::tokenizer::Tokenizer;

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
    /// How each sequence's KV cache stores keys and values.
    pub kv_precision: KvPrecision,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            max_batch: 16,
            prefill_chunk: 256,
            kv_precision: KvPrecision::default(),
        }
    }
}

/// A snapshot of the scheduler's load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EngineStats {
    pub active: usize,
    pub queued: usize,
    pub max_batch: usize,
    /// Positions held in the running sequences' KV caches after the last step.
    pub kv_tokens: usize,
    /// Positions the KV caches can hold at most: every slot at the full context.
    pub kv_capacity_tokens: usize,
}

/// The running model: a scheduler thread that owns it, and a handle to submit requests.
///
/// Each step of the scheduler runs one forward pass over every active sequence: the next chunk
/// of a prompt being prefilled, or the last sampled token of a sequence being decoded. Requests
/// that arrive while others run join at the next step (continuous batching).
pub struct Engine {
    config: ModelConfig,
    tokenizer: Arc<Tokenizer>,
    name: String,
    max_batch: usize,
    inbox: Mutex<Option<Sender<Job>>>,
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// State the scheduler and the handle both see.
struct Shared {
    active: AtomicUsize,
    queued: AtomicUsize,
    kv_tokens: AtomicUsize,
    stopping: AtomicBool,
}

struct Job {
    request: GenerationRequest,
    events: Sender<GenerationEvent>,
}

impl Engine {
    /// Starts the scheduler thread on `model`.
    pub fn start(model: Model, tokenizer: Tokenizer, name: String, options: EngineOptions) -> Self {
        let config = model.config.clone();
        let tokenizer = Arc::new(tokenizer);
        let (inbox, jobs) = mpsc::channel();
        let shared = Arc::new(Shared {
            active: AtomicUsize::new(0),
            queued: AtomicUsize::new(0),
            kv_tokens: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
        });
        let max_batch = options.max_batch.max(1);
        let scheduler = Scheduler {
            jobs,
            model,
            tokenizer: Arc::clone(&tokenizer),
            shared: Arc::clone(&shared),
            max_batch,
            prefill_chunk: options.prefill_chunk.max(1),
            kv_precision: options.kv_precision,
            waiting: VecDeque::new(),
            running: Vec::new(),
        };
        let thread = std::thread::Builder::new()
            .name("nanochat-scheduler".into())
            .spawn(move || scheduler.run())
            .expect("spawning the scheduler thread");
        Engine {
            config,
            tokenizer,
            name,
            max_batch,
            inbox: Mutex::new(Some(inbox)),
            shared,
            thread: Mutex::new(Some(thread)),
        }
    }

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
        if request.prompt.is_empty() {
            return Err(SubmitError::EmptyPrompt);
        }
        if request.prompt.len() >= self.config.context_length {
            return Err(SubmitError::PromptTooLong {
                prompt: request.prompt.len(),
                context: self.config.context_length,
            });
        }
        if let Some(&bad) = request
            .prompt
            .iter()
            .find(|&&t| t as usize >= self.config.vocab_size)
        {
            return Err(SubmitError::BadToken(bad));
        }
        if request.max_tokens == 0 {
            return Err(SubmitError::BadSampling(
                "max_tokens must be at least 1".into(),
            ));
        }
        Sampler::validate(&request.sampling).map_err(SubmitError::BadSampling)?;
        let (events, receiver) = mpsc::channel();
        let inbox = self.inbox.lock().unwrap_or_else(|e| e.into_inner());
        let inbox = inbox.as_ref().ok_or(SubmitError::ShuttingDown)?;
        self.shared.queued.fetch_add(1, Ordering::SeqCst);
        inbox
            .send(Job { request, events })
            .map_err(|_| SubmitError::ShuttingDown)?;
        Ok(receiver)
    }

    pub fn stats(&self) -> EngineStats {
        EngineStats {
            active: self.shared.active.load(Ordering::SeqCst),
            queued: self.shared.queued.load(Ordering::SeqCst),
            max_batch: self.max_batch,
            kv_tokens: self.shared.kv_tokens.load(Ordering::SeqCst),
            kv_capacity_tokens: self.max_batch * self.config.context_length,
        }
    }

    /// Stops the scheduler: running and queued requests end with an error event, new ones are
    /// refused. Returns once the scheduler thread has finished.
    pub fn shutdown(&self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        drop(self.inbox.lock().unwrap_or_else(|e| e.into_inner()).take());
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = thread {
            // A panic in the scheduler already ended its requests (their senders dropped).
            let _ = thread.join();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// One request being served.
struct Sequence {
    request: GenerationRequest,
    events: Sender<GenerationEvent>,
    cache: KvCache,
    sampler: Sampler,
    /// Prompt tokens already in the cache.
    prefilled: usize,
    generated: Vec<u32>,
    detokenizer: Detokenizer,
    text: TextStream,
}

struct Scheduler {
    jobs: Receiver<Job>,
    model: Model,
    tokenizer: Arc<Tokenizer>,
    shared: Arc<Shared>,
    max_batch: usize,
    prefill_chunk: usize,
    kv_precision: KvPrecision,
    waiting: VecDeque<Job>,
    running: Vec<Sequence>,
}

impl Scheduler {
    fn run(mut self) {
        while !self.shared.stopping.load(Ordering::SeqCst) {
            // Idle: block for work.
            if self.running.is_empty() && self.waiting.is_empty() {
                match self.jobs.recv() {
                    Ok(job) => self.waiting.push_back(job),
                    Err(_) => break,
                }
            }
            // Busy: the steps run on a worker of the rayon pool, the pool's other workers kept
            // hot, until nothing is left to run. The dozens of parallel kernel calls of a
            // forward pass then split with cheap joins instead of each being injected from this
            // thread and waited for through a lock (which cost half of a single stream's decode
            // speed), and no worker falls asleep between two steps (waking it took 10-50 µs).
            rayon::scope(|_| crate::hot::with_hot_workers(|| self.run_while_busy()));
        }
        let reason = "the server is shutting down".to_string();
        for seq in self.running.drain(..) {
            let _ = seq.events.send(GenerationEvent::Error(reason.clone()));
        }
        for job in self.waiting.drain(..).chain(self.jobs.try_iter()) {
            let _ = job.events.send(GenerationEvent::Error(reason.clone()));
        }
        self.shared.active.store(0, Ordering::SeqCst);
        self.shared.queued.store(0, Ordering::SeqCst);
        self.shared.kv_tokens.store(0, Ordering::SeqCst);
    }

    /// Takes new requests and steps until no sequence runs or waits, or the engine stops.
    fn run_while_busy(&mut self) {
        while !self.shared.stopping.load(Ordering::SeqCst) {
            // Take what arrived without waiting.
            while let Ok(job) = self.jobs.try_recv() {
                self.waiting.push_back(job);
            }
            self.admit();
            if self.running.is_empty() {
                return;
            }
            self.step();
        }
    }

    /// Moves waiting jobs into free slots.
    fn admit(&mut self) {
        while self.running.len() < self.max_batch {
            let Some(job) = self.waiting.pop_front() else {
                break;
            };
            self.shared.queued.fetch_sub(1, Ordering::SeqCst);
            let cfg = &self.model.config;
            self.running.push(Sequence {
                cache: KvCache::with_precision(cfg.n_layers, cfg.kv_dim(), self.kv_precision),
                sampler: Sampler::new(job.request.sampling.clone()),
                prefilled: 0,
                generated: Vec::new(),
                detokenizer: Detokenizer::default(),
                text: TextStream::new(&job.request.stop),
                request: job.request,
                events: job.events,
            });
        }
    }

    /// One forward pass over every running sequence, then sampling and events.
    fn step(&mut self) {
        let chunk = self.prefill_chunk;
        let mut inputs: Vec<SeqInput<'_>> = self
            .running
            .iter_mut()
            .map(|seq| {
                let prompt = &seq.request.prompt;
                if seq.prefilled < prompt.len() {
                    let end = (seq.prefilled + chunk).min(prompt.len());
                    let tokens = &prompt[seq.prefilled..end];
                    seq.prefilled = end;
                    SeqInput {
                        cache: &mut seq.cache,
                        tokens,
                        logits: if end == prompt.len() {
                            Logits::Last
                        } else {
                            Logits::None
                        },
                    }
                } else {
                    SeqInput {
                        cache: &mut seq.cache,
                        tokens: std::slice::from_ref(
                            seq.generated
                                .last()
                                .expect("decoding follows a sampled token"),
                        ),
                        logits: Logits::Last,
                    }
                }
            })
            .collect();
        let logits = self.model.forward(&mut inputs);
        drop(inputs);

        // Sequences sample independently (each its own seeded stream): in parallel when there
        // are several, as the softmax over the vocabulary costs tens of microseconds each.
        let per_task = rows_per_task(self.running.len());
        let tokens: Vec<Option<u32>> = self
            .running
            .par_iter_mut()
            .zip(logits)
            .with_min_len(per_task)
            .map(|(seq, mut row)| {
                if row.is_empty() {
                    return None; // still prefilling
                }
                Some(if seq.request.sampling.repetition_penalty == 1.0 {
                    seq.sampler.sample(&mut row, &[])
                } else {
                    let history: Vec<u32> =
                        [seq.request.prompt.as_slice(), seq.generated.as_slice()].concat();
                    seq.sampler.sample(&mut row, &history)
                })
            })
            .collect();
        let mut tokens = tokens.into_iter();
        let mut endings = Vec::new();
        self.running.retain_mut(|seq| {
            let token = tokens
                .next()
                .expect("one sampled token or none per sequence");
            let Some(token) = token else {
                return true; // still prefilling
            };
            match advance(
                seq,
                token,
                &self.tokenizer,
                self.model.config.context_length,
            ) {
                Advance::Continue => true,
                Advance::End(last) => {
                    endings.push((seq.events.clone(), last));
                    false
                }
            }
        });
        // The slots are counted free before their requests hear they are over, so a client that
        // asks /health after its answer never finds its own sequence still active.
        self.shared
            .active
            .store(self.running.len(), Ordering::SeqCst);
        let kv_tokens = self.running.iter().map(|seq| seq.cache.len()).sum();
        self.shared.kv_tokens.store(kv_tokens, Ordering::SeqCst);
        for (events, last) in endings {
            for event in last {
                let _ = events.send(event);
            }
        }
    }
}

/// What a sampled token did to its sequence.
enum Advance {
    /// The sequence goes on.
    Continue,
    /// The sequence is over (finished, failed, or its receiver gone); these are its last events,
    /// for the caller to send once the slot is counted free.
    End(Vec<GenerationEvent>),
}

/// Takes the sampled `token` into `seq` and sends the text it adds.
fn advance(seq: &mut Sequence, token: u32, tokenizer: &Tokenizer, context: usize) -> Advance {
    let finish = |seq: &mut Sequence, reason: FinishReason, tail: String| {
        let done = GenerationEvent::Done(Completion {
            finish_reason: reason,
            prompt_tokens: seq.request.prompt.len(),
            completion_tokens: seq.generated.len(),
        });
        let tail = (!tail.is_empty()).then_some(GenerationEvent::Text(tail));
        Advance::End(tail.into_iter().chain([done]).collect())
    };
    let whole_text = |seq: &Sequence| seq.detokenizer.finish(tokenizer, &seq.generated);
    if tokenizer.stop_tokens().contains(&token) {
        let tail = match whole_text(seq) {
            Ok(text) => seq.text.flush(&text),
            Err(e) => return fail(e.to_string()),
        };
        return finish(seq, FinishReason::Stop, tail);
    }
    seq.generated.push(token);
    if let Err(e) = seq.detokenizer.update(tokenizer, &seq.generated) {
        return fail(e.to_string());
    }
    match seq.text.update(seq.detokenizer.text()) {
        Delta::Stopped(before) => finish(seq, FinishReason::Stop, before),
        Delta::More(delta) => {
            if !delta.is_empty() && seq.events.send(GenerationEvent::Text(delta)).is_err() {
                return Advance::End(Vec::new()); // the client went away: free the slot
            }
            // Prompt and completion together never exceed the context.
            let total = seq.request.prompt.len() + seq.generated.len();
            if seq.generated.len() >= seq.request.max_tokens || total >= context {
                let tail = match whole_text(seq) {
                    Ok(text) => seq.text.flush(&text),
                    Err(e) => return fail(e.to_string()),
                };
                return finish(seq, FinishReason::Length, tail);
            }
            Advance::Continue
        }
    }
}

fn fail(message: String) -> Advance {
    Advance::End(vec![GenerationEvent::Error(message)])
}
