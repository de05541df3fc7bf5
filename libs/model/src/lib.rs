//! The nanochat ternary inference model.
//!
//! - [`config`]: hyper-parameters, presets and the sizes they imply.
//! - [`tokenizer`]: the shared tokenizer, special tokens and chat template.
//! - [`engine`]: requests, sampling parameters and the continuous-batching scheduler.
//! - [`export`]: the one writer of model files (GGUF + .mhc) from named f32 tensors.
//!
//! No printing, no exiting: the tools (serve, eval-compile, maxrl) decide that.

mod attention;
pub mod bench;
pub mod config;
pub mod engine;
pub mod export;
mod hot;
pub mod kv;
pub mod load;
pub mod metadata;
pub mod model;
pub mod q8;
pub mod rng;
pub mod sampling;
pub mod stream;
pub mod testmodel;
pub mod tokenizer;
mod vmath;

pub use config::{
    ConfigError, FfnActivation, ModelConfig, MoeConfig, ScaleGranularity, Variant, PRESETS,
};
pub use engine::{
    Completion, Engine, EngineOptions, EngineStats, FinishReason, GenerationEvent,
    GenerationRequest, SamplingParams, SubmitError,
};
pub use kv::{KvCache, KvPrecision};
pub use load::{load_engine, LoadError};
pub use model::{Logits, Model, SeqInput};
pub use tokenizer::{ChatMessage, Tokenizer, TokenizerError};
