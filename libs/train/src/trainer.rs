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

use std::path::Path;
use std::time::Instant;

use candle_core::{Device, Tensor};
use mhc::{Mhc2, Mhc4, MhcParams, Mixing, NStreams};
use model::ModelConfig;
use serde::{Deserialize, Serialize};
use tokens::TokenFile;

use crate::checkpoint::{self, CheckpointRef, TrainerState, WeightMode};
use crate::data::{eval_batch, eval_windows, Batcher, TokenBytes};
use crate::model::{GraphOptions, TrainModel};
use crate::optim::{default_group, OptimConfig, Optimizer};
use crate::schedule::Wsd;

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
    /// Tokens of the training file (a resume on other data is refused).
    pub train_tokens: usize,
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
        self.schedule.validate()
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

/// Validation figures.
#[derive(Clone, Debug, Serialize)]
pub struct EvalRecord {
    pub step: u64,
    pub val_loss: f64,
    pub val_bpb: f64,
    /// Windows and tokens evaluated.
    pub windows: usize,
    pub tokens: usize,
    /// Largest gain of the product of every layer's H_res (mHC; 1 for plain residuals).
    pub mhc_gain: f64,
}

/// A run in progress.
pub struct Trainer {
    spec: RunSpec,
    model: TrainModel,
    optimizer: Optimizer,
    batcher: Batcher,
    val: Option<(TokenFile, Vec<usize>)>,
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
        train: TokenFile,
        val: Option<TokenFile>,
        tokenizer_json: String,
        eval_windows_max: usize,
    ) -> Result<Self, TrainError> {
        spec.validate().map_err(TrainError::Input)?;
        let device = Device::Cpu;
        let model = TrainModel::init(&spec.config, graph_options(&spec), spec.seed, &device)?;
        let optimizer = new_optimizer(&model, &spec)?;
        Self::assemble(
            spec,
            model,
            optimizer,
            train,
            val,
            tokenizer_json,
            eval_windows_max,
            device,
        )
    }

    /// Continues the run saved in the checkpoint folder `dir` on the same data.
    pub fn resume(
        dir: &Path,
        train: TokenFile,
        val: Option<TokenFile>,
        eval_windows_max: usize,
    ) -> Result<Self, TrainError> {
        let device = Device::Cpu;
        let ckpt = checkpoint::load(dir, &device)?;
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
            train,
            val,
            ckpt.tokenizer_json,
            eval_windows_max,
            device,
        )?;
        trainer.step = ckpt.state.step;
        trainer.tokens_seen = ckpt.state.tokens_seen;
        trainer.batcher.set_rng_state(ckpt.state.data_rng);
        Ok(trainer)
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        spec: RunSpec,
        model: TrainModel,
        optimizer: Optimizer,
        train: TokenFile,
        val: Option<TokenFile>,
        tokenizer_json: String,
        eval_windows_max: usize,
        device: Device,
    ) -> Result<Self, TrainError> {
        if train.len() != spec.train_tokens {
            return Err(TrainError::Input(format!(
                "{}: {} tokens, the run was started on {} (resume needs the same data)",
                train.path().display(),
                train.len(),
                spec.train_tokens
            )));
        }
        let token_bytes = TokenBytes::from_tokenizer_json(&tokenizer_json)
            .map_err(|e| TrainError::Input(format!("tokenizer: {e}")))?;
        if token_bytes.vocab_size() > spec.config.vocab_size {
            return Err(TrainError::Input(format!(
                "the tokenizer has {} tokens, the model only {}",
                token_bytes.vocab_size(),
                spec.config.vocab_size
            )));
        }
        let batcher = Batcher::new(train, spec.seq_len, spec.seed)
            .map_err(|e| TrainError::Input(e.to_string()))?;
        let val = val.map(|file| {
            let windows = eval_windows(&file, spec.seq_len, eval_windows_max);
            (file, windows)
        });
        Ok(Trainer {
            spec,
            model,
            optimizer,
            batcher,
            val,
            token_bytes,
            tokenizer_json,
            step: 0,
            tokens_seen: 0,
            device,
        })
    }

    pub fn spec(&self) -> &RunSpec {
        &self.spec
    }

    pub fn model(&self) -> &TrainModel {
        &self.model
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
        let scale = 1.0 / spec.grad_accum as f64;
        for _ in 0..spec.grad_accum {
            let (inputs, targets) = self.batcher.next_batch(spec.batch, &self.device)?;
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
        let tokens = spec.tokens_per_step() as u64;
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

    /// Validation loss and bits per byte over the fixed windows of the validation file (`None`
    /// without one), and the mHC composite gain.
    pub fn evaluate(&self) -> Result<Option<EvalRecord>, TrainError> {
        let Some((file, windows)) = &self.val else {
            return Ok(None);
        };
        let (mut nats, mut count) = (0.0f64, 0usize);
        let mut bytes_of_targets = Vec::new();
        for chunk in windows.chunks(self.spec.batch) {
            let (inputs, targets) = eval_batch(file, chunk, self.spec.seq_len, &self.device)?;
            let logits = self.model.logits(&inputs)?;
            let flat = targets.flatten_all()?;
            let loss = crate::ops::cross_entropy(&logits, &flat)?.to_scalar::<f32>()? as f64;
            let n = flat.dim(0)?;
            nats += loss * n as f64;
            count += n;
            bytes_of_targets.extend(flat.to_vec1::<u32>()?);
        }
        Ok(Some(EvalRecord {
            step: self.step,
            val_loss: nats / count.max(1) as f64,
            val_bpb: self.token_bytes.bits_per_byte(nats, &bytes_of_targets),
            windows: windows.len(),
            tokens: count,
            mhc_gain: self.mhc_gain()?,
        }))
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
            data_rng: self.batcher.rng_state(),
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
