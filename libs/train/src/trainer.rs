//! One training run: the model, its optimizer, the data and the schedule, stepped by the caller.
//!
//! Owns the run's settings ([`RunSpec`], saved in every checkpoint so `--resume` continues with
//! exactly the same ones), the step (forward, backward, gradient accumulation, clipping, the
//! optimizer update at the scheduled learning rate), validation (loss, bits per byte, the mHC
//! composite gain) and checkpoints. It prints nothing: `tools/train` shows progress and writes the
//! JSONL log.
//!
//! Exact resume: everything a step depends on is in the checkpoint (parameters, optimizer state,
//! the data loader's RNG state, the step number that drives the schedule), so a run stopped at
//! step k and resumed reaches bit-identical parameters at step n on the same machine and thread
//! count.
//!
//! Two kinds of run share the loop, the metrics and the checkpoints: pretraining on random windows
//! of a token file, and supervised fine-tuning ([`RunSpec::sft`]) that starts from a pretrained
//! checkpoint's weights and reads batches of whole (prompt → completion) examples ([`crate::sft`]),
//! the loss on the completion tokens only.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor};
use mhc::{Mhc2, Mhc4, MhcParams, Mixing, NStreams};
use model::ModelConfig;
use serde::{Deserialize, Serialize};
use tokens::TokenFile;

use crate::checkpoint::{self, Checkpoint, CheckpointRef, TrainerState, WeightMode};
use crate::data::{eval_batch, eval_windows, Batcher, TokenBytes};
use crate::model::{GraphOptions, TrainModel};
use crate::ops::IGNORED_TARGET;
use crate::optim::{default_group, OptimConfig, Optimizer};
use crate::schedule::Wsd;
use crate::sft::{self, ExampleBatcher, ExamplePools, Pair, SftSummary};

/// Everything that defines a run (and must not change across a resume).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunSpec {
    pub config: ModelConfig,
    pub weights: WeightMode,
    /// Extra multi-token prediction heads and the weight of each one's loss.
    pub mtp_heads: usize,
    pub mtp_weight: f64,
    /// λ of the entropy bonus (loss − λ · mean entropy); 0 = off.
    pub entropy_bonus: f64,
    /// Sequences per micro-batch, tokens per sequence, micro-batches per optimizer step.
    pub batch: usize,
    pub seq_len: usize,
    pub grad_accum: usize,
    /// Optimizer steps of the whole run (the schedule's length).
    pub steps: u64,
    pub schedule: Wsd,
    pub optim: OptimConfig,
    pub seed: u64,
    /// Tokens of the training data (the file, or the fine-tuning examples): a resume on other data
    /// is refused. Set by the trainer when a run starts.
    pub train_tokens: usize,
    /// Supervised fine-tuning on pairs; absent for pretraining.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sft: Option<SftSpec>,
}

/// The settings of a fine-tuning run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SftSpec {
    /// The checkpoint folder the weights came from, and its step (for the record).
    pub init: String,
    pub init_step: u64,
    /// Share of the drawn examples that are chat turns (the rest are plain completions).
    pub chat_share: f64,
    /// Share of the pairs held out for validation, by name hash.
    pub val_share: f64,
}

impl RunSpec {
    /// Checks the settings against each other.
    pub fn validate(&self) -> Result<(), String> {
        self.config.validate().map_err(|e| e.to_string())?;
        if self.batch == 0 || self.seq_len == 0 || self.grad_accum == 0 || self.steps == 0 {
            return Err("batch, seq-len, grad-accum and steps must be positive".into());
        }
        if self.seq_len > self.config.context_length {
            return Err(format!(
                "seq-len {} exceeds the model's context length {}",
                self.seq_len, self.config.context_length
            ));
        }
        if self.mtp_heads > 0 && self.mtp_heads >= self.seq_len {
            return Err("mtp heads must be fewer than seq-len".into());
        }
        if !self.mtp_weight.is_finite() || !self.entropy_bonus.is_finite() {
            return Err("mtp-weight and entropy-bonus must be finite".into());
        }
        if self.schedule.total_steps != self.steps {
            return Err("the schedule's length must equal the run's steps".into());
        }
        if let Some(sft) = &self.sft {
            for (what, share) in [("chat", sft.chat_share), ("validation", sft.val_share)] {
                if !(0.0..=1.0).contains(&share) {
                    return Err(format!("the {what} share must be in [0, 1], got {share}"));
                }
            }
        }
        self.schedule.validate()
    }

    /// The run settings saved in a checkpoint read from `dir`, checked against its config.
    pub fn of_checkpoint(ckpt: &Checkpoint, dir: &Path) -> Result<Self, TrainError> {
        let spec: RunSpec = serde_json::from_value(ckpt.state.run.clone()).map_err(|e| {
            TrainError::Input(format!(
                "{}: trainer_state.json has no usable run settings: {e}",
                dir.display()
            ))
        })?;
        if spec.config != ckpt.config {
            return Err(TrainError::Input(format!(
                "{}: config.json and the run settings disagree",
                dir.display()
            )));
        }
        Ok(spec)
    }

    /// Tokens one optimizer step trains on.
    pub fn tokens_per_step(&self) -> usize {
        self.batch * self.seq_len * self.grad_accum
    }
}

/// Why a run cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Bad settings or input files (exit 2 in the tool).
    #[error("{0}")]
    Input(String),
    /// The loss or the gradient became NaN or infinite; the parameters were not updated.
    #[error("step {step}: {what} is not finite ({value}); stopping (the last checkpoint is kept)")]
    NonFinite {
        step: u64,
        what: &'static str,
        value: f64,
    },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::CheckpointError),
}

/// What one optimizer step did.
#[derive(Clone, Debug, Serialize)]
pub struct StepRecord {
    /// The step just completed (1-based: the number of updates so far).
    pub step: u64,
    /// Mean training loss (total objective) over the step's micro-batches.
    pub loss: f64,
    /// Mean next-token cross-entropy (nats).
    pub next_token_loss: f64,
    pub lr_factor: f64,
    pub muon_lr: f64,
    pub lion_lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    pub tokens: u64,
    pub tokens_per_s: f64,
}

/// Validation figures. Fine-tuning scores the completion tokens of held-out pairs.
#[derive(Clone, Debug, Serialize)]
pub struct EvalRecord {
    pub step: u64,
    pub val_loss: f64,
    pub val_bpb: f64,
    /// Windows (fine-tuning: examples) and scored tokens evaluated.
    pub windows: usize,
    pub tokens: usize,
    /// Fine-tuning with chat turns: the loss on the answers of the held-out pairs as chats.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val_chat_loss: Option<f64>,
    /// Largest gain of the product of every layer's H_res (mHC; 1 for plain residuals).
    pub mhc_gain: f64,
}

/// What a run reads.
pub enum TrainData {
    /// Pretraining: random windows of a token file; validation windows of another.
    Tokens {
        train: TokenFile,
        val: Option<TokenFile>,
    },
    /// Fine-tuning ([`RunSpec::sft`]): the pairs of the file at `path`.
    Pairs { path: PathBuf, pairs: Vec<Pair> },
}

/// Where training batches come from.
enum Source {
    Windows(Batcher),
    Examples(ExampleBatcher),
}

impl Source {
    /// Inputs and targets `[B, T]` and the tokens read.
    fn next_batch(
        &mut self,
        batch: usize,
        device: &Device,
    ) -> candle_core::Result<(Tensor, Tensor, usize)> {
        match self {
            Source::Windows(b) => {
                let (inputs, targets) = b.next_batch(batch, device)?;
                let read = inputs.elem_count();
                Ok((inputs, targets, read))
            }
            Source::Examples(b) => b.next_batch(batch, device),
        }
    }

    /// The loader's state, saved in checkpoints: the windows' generator state, or the count of
    /// example batches drawn.
    fn state(&self) -> u64 {
        match self {
            Source::Windows(b) => b.rng_state(),
            Source::Examples(b) => b.batches_drawn(),
        }
    }

    fn set_state(&mut self, state: u64) {
        match self {
            Source::Windows(b) => b.set_rng_state(state),
            Source::Examples(b) => b.set_batches_drawn(state),
        }
    }
}

/// The fixed validation data.
enum Validation {
    Windows { file: TokenFile, starts: Vec<usize> },
    Examples(ExamplePools),
}

/// Summed loss over the scored targets of some batches.
#[derive(Default)]
struct Scored {
    nats: f64,
    targets: Vec<u32>,
}

impl Scored {
    fn mean(&self) -> f64 {
        self.nats / self.targets.len().max(1) as f64
    }
}

/// A run in progress.
pub struct Trainer {
    spec: RunSpec,
    model: TrainModel,
    optimizer: Optimizer,
    source: Source,
    val: Option<Validation>,
    /// What became of the pairs (fine-tuning only).
    sft_summary: Option<SftSummary>,
    token_bytes: TokenBytes,
    tokenizer_json: String,
    step: u64,
    tokens_seen: u64,
    device: Device,
}

impl Trainer {
    /// A fresh run: model initialised from `spec.seed`, loader seeded from it too.
    pub fn new(
        spec: RunSpec,
        data: TrainData,
        tokenizer_json: String,
        eval_windows_max: usize,
    ) -> Result<Self, TrainError> {
        Self::start(spec, None, data, tokenizer_json, eval_windows_max)
    }

    /// A run that starts from trained `weights` (fine-tuning a pretrained checkpoint's): a fresh
    /// optimizer state and the spec's own schedule.
    pub fn from_weights(
        spec: RunSpec,
        weights: Vec<(String, Tensor)>,
        data: TrainData,
        tokenizer_json: String,
        eval_windows_max: usize,
    ) -> Result<Self, TrainError> {
        Self::start(spec, Some(weights), data, tokenizer_json, eval_windows_max)
    }

    fn start(
        spec: RunSpec,
        weights: Option<Vec<(String, Tensor)>>,
        data: TrainData,
        tokenizer_json: String,
        eval_windows_max: usize,
    ) -> Result<Self, TrainError> {
        spec.validate().map_err(TrainError::Input)?;
        let options = graph_options(&spec);
        let model = match weights {
            None => TrainModel::init(&spec.config, options, spec.seed, &Device::Cpu)?,
            Some(weights) => TrainModel::from_tensors(&spec.config, options, weights)
                .map_err(|e| TrainError::Input(format!("the initial weights: {e}")))?,
        };
        let optimizer = new_optimizer(&model, &spec)?;
        Self::assemble(
            spec,
            model,
            optimizer,
            data,
            tokenizer_json,
            eval_windows_max,
            false,
        )
    }

    /// Continues the run saved in the checkpoint folder `dir` on the same data.
    pub fn resume(
        dir: &Path,
        data: TrainData,
        eval_windows_max: usize,
    ) -> Result<Self, TrainError> {
        let ckpt = checkpoint::load(dir, &Device::Cpu)?;
        let spec = RunSpec::of_checkpoint(&ckpt, dir)?;
        let model = TrainModel::from_tensors(&spec.config, graph_options(&spec), ckpt.model)
            .map_err(|e| TrainError::Input(format!("{}: {e}", dir.display())))?;
        let mut optimizer = new_optimizer(&model, &spec)?;
        let state: std::collections::HashMap<String, Tensor> = ckpt.optimizer.into_iter().collect();
        optimizer
            .load_state(&state)
            .map_err(|e| TrainError::Input(format!("{}: {e}", dir.display())))?;
        let mut trainer = Self::assemble(
            spec,
            model,
            optimizer,
            data,
            ckpt.tokenizer_json,
            eval_windows_max,
            true,
        )?;
        trainer.step = ckpt.state.step;
        trainer.tokens_seen = ckpt.state.tokens_seen;
        trainer.source.set_state(ckpt.state.data_rng);
        Ok(trainer)
    }

    /// The trainer around a model and optimizer: the data loaders for the spec's kind of run. A
    /// resumed run must read data of the recorded size; a fresh one records it.
    fn assemble(
        mut spec: RunSpec,
        model: TrainModel,
        optimizer: Optimizer,
        data: TrainData,
        tokenizer_json: String,
        eval_windows_max: usize,
        resuming: bool,
    ) -> Result<Self, TrainError> {
        let token_bytes = TokenBytes::from_tokenizer_json(&tokenizer_json)
            .map_err(|e| TrainError::Input(format!("tokenizer: {e}")))?;
        if token_bytes.vocab_size() > spec.config.vocab_size {
            return Err(TrainError::Input(format!(
                "the tokenizer has {} tokens, the model only {}",
                token_bytes.vocab_size(),
                spec.config.vocab_size
            )));
        }
        let (source, val, sft_summary, data_tokens, data_path) = match (data, &spec.sft) {
            (TrainData::Tokens { train, val }, None) => {
                let (tokens, path) = (train.len(), train.path().to_path_buf());
                let batcher = Batcher::new(train, spec.seq_len, spec.seed)
                    .map_err(|e| TrainError::Input(e.to_string()))?;
                let val = val.map(|file| {
                    let starts = eval_windows(&file, spec.seq_len, eval_windows_max);
                    Validation::Windows { file, starts }
                });
                (Source::Windows(batcher), val, None, tokens, path)
            }
            (TrainData::Pairs { path, pairs }, Some(sft)) => {
                let tokenizer = model::Tokenizer::from_json(&tokenizer_json)
                    .map_err(|e| TrainError::Input(format!("tokenizer: {e}")))?;
                let (train, val, summary) = sft::build_examples(
                    &pairs,
                    &tokenizer,
                    spec.seq_len,
                    sft.val_share,
                    sft.chat_share > 0.0,
                )
                .map_err(|e| TrainError::Input(format!("{}: {e}", path.display())))?;
                let tokens = train.token_count();
                let batcher = ExampleBatcher::new(train, sft.chat_share, spec.seed)
                    .map_err(|e| TrainError::Input(format!("{}: {e}", path.display())))?;
                let val = sft::validation_sample(val, eval_windows_max);
                let val = (!val.completions.is_empty()).then_some(Validation::Examples(val));
                (Source::Examples(batcher), val, Some(summary), tokens, path)
            }
            (TrainData::Tokens { .. }, Some(_)) => {
                return Err(TrainError::Input(
                    "this run fine-tunes on pairs, not on token files".into(),
                ))
            }
            (TrainData::Pairs { .. }, None) => {
                return Err(TrainError::Input(
                    "this run pretrains on token files, not on pairs".into(),
                ))
            }
        };
        if !resuming {
            spec.train_tokens = data_tokens;
        } else if data_tokens != spec.train_tokens {
            return Err(TrainError::Input(format!(
                "{}: {data_tokens} tokens, the run was started on {} (resume needs the same data)",
                data_path.display(),
                spec.train_tokens
            )));
        }
        Ok(Trainer {
            spec,
            model,
            optimizer,
            source,
            val,
            sft_summary,
            token_bytes,
            tokenizer_json,
            step: 0,
            tokens_seen: 0,
            device: Device::Cpu,
        })
    }

    pub fn spec(&self) -> &RunSpec {
        &self.spec
    }

    pub fn model(&self) -> &TrainModel {
        &self.model
    }

    /// What became of the pairs of a fine-tuning run (`None` when pretraining).
    pub fn sft_summary(&self) -> Option<&SftSummary> {
        self.sft_summary.as_ref()
    }

    /// Optimizer steps done so far.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    pub fn is_done(&self) -> bool {
        self.step >= self.spec.steps
    }

    /// One optimizer step over `grad_accum` micro-batches. It runs inside candle's thread pool,
    /// so candle's matmuls and this crate's fused kernels share one set of workers instead of two
    /// pools spinning against each other on the same cores.
    pub fn step(&mut self) -> Result<StepRecord, TrainError> {
        candle_core::utils::with_threadpool(|| self.step_in_pool())
    }

    fn step_in_pool(&mut self) -> Result<StepRecord, TrainError> {
        let start = Instant::now();
        let spec = &self.spec;
        let mut grads: Option<candle_core::backprop::GradStore> = None;
        let (mut loss_sum, mut next_sum) = (0.0, 0.0);
        let mut tokens = 0;
        let scale = 1.0 / spec.grad_accum as f64;
        for _ in 0..spec.grad_accum {
            let (inputs, targets, read) = self.source.next_batch(spec.batch, &self.device)?;
            tokens += read as u64;
            let losses =
                self.model
                    .losses(&inputs, &targets, spec.mtp_weight, spec.entropy_bonus)?;
            let loss = losses.total.to_scalar::<f32>()? as f64;
            if !loss.is_finite() {
                return Err(TrainError::NonFinite {
                    step: self.step + 1,
                    what: "the loss",
                    value: loss,
                });
            }
            loss_sum += loss;
            next_sum += losses.next_token.to_scalar::<f32>()? as f64;
            let objective = if spec.grad_accum == 1 {
                losses.total
            } else {
                (losses.total * scale)?
            };
            let micro = objective.backward()?;
            match grads.as_mut() {
                None => grads = Some(micro),
                Some(total) => total.extend(micro)?,
            }
        }
        let grads = grads.expect("grad_accum is at least 1");
        let lr_factor = spec.schedule.factor(self.step);
        let stats = self.optimizer.step(&grads, lr_factor)?;
        if stats.skipped || !stats.grad_norm.is_finite() {
            return Err(TrainError::NonFinite {
                step: self.step + 1,
                what: "the gradient norm",
                value: stats.grad_norm,
            });
        }
        self.step += 1;
        self.tokens_seen += tokens;
        Ok(StepRecord {
            step: self.step,
            loss: loss_sum * scale,
            next_token_loss: next_sum * scale,
            lr_factor,
            muon_lr: spec.optim.muon_lr * lr_factor,
            lion_lr: spec.optim.lion_lr * lr_factor,
            grad_norm: stats.grad_norm,
            tokens,
            tokens_per_s: tokens as f64 / start.elapsed().as_secs_f64(),
        })
    }

    /// Validation loss and bits per byte over the fixed validation windows, or the held-out
    /// pairs' completions (`None` without validation data), and the mHC composite gain.
    pub fn evaluate(&self) -> Result<Option<EvalRecord>, TrainError> {
        let Some(val) = &self.val else {
            return Ok(None);
        };
        let (seq_len, batch, device) = (self.spec.seq_len, self.spec.batch, &self.device);
        let (scored, windows, chat) = match val {
            Validation::Windows { file, starts } => {
                let batches = starts
                    .chunks(batch)
                    .map(|chunk| eval_batch(file, chunk, seq_len, device));
                (self.score(batches)?, starts.len(), None)
            }
            Validation::Examples(pools) => {
                let padded = |examples: &[sft::Example]| {
                    let rows: Vec<&sft::Example> = examples.iter().collect();
                    sft::pad_batch(&rows, device).map(|(x, y, _)| (x, y))
                };
                let completions = self.score(pools.completions.chunks(batch).map(padded))?;
                let chat = (!pools.chats.is_empty())
                    .then(|| self.score(pools.chats.chunks(batch).map(padded)))
                    .transpose()?;
                (completions, pools.completions.len(), chat)
            }
        };
        Ok(Some(EvalRecord {
            step: self.step,
            val_loss: scored.mean(),
            val_bpb: self.token_bytes.bits_per_byte(scored.nats, &scored.targets),
            windows,
            tokens: scored.targets.len(),
            val_chat_loss: chat.map(|c| c.mean()),
            mhc_gain: self.mhc_gain()?,
        }))
    }

    /// The loss summed over the scored targets of `batches` (inputs, targets).
    fn score(
        &self,
        batches: impl Iterator<Item = candle_core::Result<(Tensor, Tensor)>>,
    ) -> Result<Scored, TrainError> {
        let mut total = Scored::default();
        for batch in batches {
            let (inputs, targets) = batch?;
            let logits = self.model.logits(&inputs)?;
            let flat = targets.flatten_all()?;
            let mean = crate::ops::cross_entropy(&logits, &flat)?.to_scalar::<f32>()? as f64;
            let before = total.targets.len();
            let scored = flat.to_vec1::<u32>()?.into_iter();
            total
                .targets
                .extend(scored.filter(|&t| t != IGNORED_TARGET));
            total.nats += mean * (total.targets.len() - before) as f64;
        }
        Ok(total)
    }

    /// The composite gain of the product of every module's H_res (libs/mhc), 1 without mHC.
    pub fn mhc_gain(&self) -> Result<f64, TrainError> {
        let Some(n) = self.spec.config.streams() else {
            return Ok(1.0);
        };
        let mut matrices = Vec::new();
        for (name, var) in self.model.parameters() {
            if name.ends_with("_mhc") {
                let flat = crate::ops::to_f32_vec(var.as_tensor())?;
                matrices.push(*Mixing::from_params(&mhc_params(n, &flat)).h_res());
            }
        }
        Ok(mhc::composite_gain(&matrices))
    }

    /// Writes the checkpoint folder `dir` (atomically).
    pub fn save(&self, dir: &Path) -> Result<(), TrainError> {
        let run = serde_json::to_value(&self.spec)
            .map_err(|e| TrainError::Input(format!("run settings: {e}")))?;
        let state = TrainerState {
            step: self.step,
            tokens_seen: self.tokens_seen,
            data_rng: self.source.state(),
            weights: self.spec.weights,
            run,
            rl: None,
        };
        let model = self.model.tensors();
        let optimizer = self.optimizer.state_tensors();
        checkpoint::save(
            dir,
            &CheckpointRef {
                model: &model,
                optimizer: &optimizer,
                config: &self.spec.config,
                tokenizer_json: &self.tokenizer_json,
                state: &state,
            },
        )?;
        Ok(())
    }
}

fn graph_options(spec: &RunSpec) -> GraphOptions {
    GraphOptions {
        weights: spec.weights,
        mtp_heads: spec.mtp_heads,
    }
}

fn new_optimizer(model: &TrainModel, spec: &RunSpec) -> Result<Optimizer, TrainError> {
    let params = model
        .parameters()
        .iter()
        .map(|(name, var)| {
            let group = default_group(name, var.dims());
            (name.clone(), var.clone(), group)
        })
        .collect();
    Ok(Optimizer::new(params, spec.optim.clone())?)
}

/// The parameters of one module from its flat vector (the .mhc order).
pub fn mhc_params(n: NStreams, flat: &[f32]) -> MhcParams {
    match n {
        NStreams::Two => MhcParams::Two(Mhc2::from_flat(
            flat.try_into().expect("9 values, checked on load"),
        )),
        NStreams::Four => MhcParams::Four(Mhc4::from_flat(
            flat.try_into().expect("40 values, checked on load"),
        )),
    }
}
