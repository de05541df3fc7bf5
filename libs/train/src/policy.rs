//! A checkpoint as a policy for reinforcement learning (tools/maxrl): export it to the inference
//! model so samples come from exactly the ternary model that will be served, and update it with a
//! weighted log-likelihood of chosen sequences, with the run's own optimizer settings.

use std::path::Path;

use candle_core::{DType, Device, Tensor, D};
use model::export::{write_model, EmbeddingType, ExportInput, ExportSummary, F32Tensor};
use model::ModelConfig;

use crate::checkpoint::{self, CheckpointRef, TrainerState, WeightMode};
use crate::model::{GraphOptions, TrainModel};
use crate::ops::to_f32_vec;
use crate::optim::{default_group, Optimizer};
use crate::trainer::{RunSpec, TrainError};

/// A sequence to raise the likelihood of: `tokens[completion_start..]` given the tokens before
/// them, with `weight` (the estimator's per-sample weight).
#[derive(Clone, Debug, PartialEq)]
pub struct WeightedSequence {
    pub tokens: Vec<u32>,
    /// Index of the first completion token (at least 1).
    pub completion_start: usize,
    pub weight: f32,
}

/// What one [`Policy::update`] did.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct UpdateStats {
    /// −Σ weight · log π(completion) over the batch (the objective minimised).
    pub loss: f64,
    /// Mean negative log-likelihood per completion token (nats).
    pub nll_per_token: f64,
    pub completion_tokens: usize,
    pub grad_norm: f64,
}

/// The model and optimizer of a checkpoint, updated in place.
pub struct Policy {
    spec: RunSpec,
    model: TrainModel,
    optimizer: Optimizer,
    tokenizer_json: String,
    state: TrainerState,
    device: Device,
}

impl Policy {
    /// Reads the checkpoint folder `dir` train (or maxrl) wrote. The optimizer starts from the
    /// checkpoint's state.
    pub fn load(dir: &Path) -> Result<Self, TrainError> {
        let device = Device::Cpu;
        let ckpt = checkpoint::load(dir, &device)?;
        let spec = RunSpec::of_checkpoint(&ckpt, dir)?;
        if spec.weights != WeightMode::Ternary {
            return Err(TrainError::Input(format!(
                "{}: a full-precision checkpoint is not the ternary model that samples would come from",
                dir.display()
            )));
        }
        let options = GraphOptions {
            weights: spec.weights,
            mtp_heads: spec.mtp_heads,
        };
        let model = TrainModel::from_tensors(&spec.config, options, ckpt.model)
            .map_err(|e| TrainError::Input(format!("{}: {e}", dir.display())))?;
        let params = model
            .parameters()
            .iter()
            .map(|(name, var)| (name.clone(), var.clone(), default_group(name, var.dims())))
            .collect();
        let mut optimizer = Optimizer::new(params, spec.optim.clone())?;
        let state: std::collections::HashMap<String, Tensor> = ckpt.optimizer.into_iter().collect();
        optimizer
            .load_state(&state)
            .map_err(|e| TrainError::Input(format!("{}: {e}", dir.display())))?;
        Ok(Policy {
            spec,
            model,
            optimizer,
            tokenizer_json: ckpt.tokenizer_json,
            state: ckpt.state,
            device,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.spec.config
    }

    pub fn tokenizer_json(&self) -> &str {
        &self.tokenizer_json
    }

    /// Writes the current weights as `gguf_path` (+ the .mhc beside it), quantized as
    /// quantize-export does.
    pub fn export(&self, gguf_path: &Path, name: &str) -> Result<ExportSummary, TrainError> {
        let tensors: std::collections::HashMap<String, Tensor> =
            self.model.tensors().into_iter().collect();
        let lookup = |tensor_name: &str| {
            let t = tensors.get(tensor_name)?;
            Some(F32Tensor {
                shape: t.dims().to_vec(),
                values: to_f32_vec(t).ok()?,
            })
        };
        write_model(
            gguf_path,
            None,
            &ExportInput {
                config: &self.spec.config,
                name,
                tokenizer_json: &self.tokenizer_json,
                embedding: EmbeddingType::F32,
                tensors: &lookup,
                ternary: None,
                chat: None,
            },
        )
        .map_err(|e| TrainError::Input(format!("export: {e}")))
    }

    /// One optimizer step on −Σ_i weight_i · log π(completion_i | prompt_i), the batch split
    /// into micro-batches of `micro_batch` sequences (gradients summed). Sequences longer than
    /// the context are cut at its end.
    pub fn update(
        &mut self,
        batch: &[WeightedSequence],
        micro_batch: usize,
        lr_factor: f64,
    ) -> Result<UpdateStats, TrainError> {
        candle_core::utils::with_threadpool(|| self.update_in_pool(batch, micro_batch, lr_factor))
    }

    fn update_in_pool(
        &mut self,
        batch: &[WeightedSequence],
        micro_batch: usize,
        lr_factor: f64,
    ) -> Result<UpdateStats, TrainError> {
        if batch.is_empty() {
            return Err(TrainError::Input(
                "an update needs at least one sequence".into(),
            ));
        }
        let context = self.spec.config.context_length;
        let mut grads: Option<candle_core::backprop::GradStore> = None;
        let (mut loss, mut nll, mut tokens) = (0.0, 0.0, 0usize);
        for chunk in batch.chunks(micro_batch.max(1)) {
            let (inputs, targets, weights, unit, count) = self.micro_batch(chunk, context)?;
            let logits = self.model.logits(&inputs)?;
            let log_probs = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
            let picked = log_probs
                .gather(&targets.flatten_all()?.unsqueeze(1)?, 1)?
                .squeeze(1)?;
            let objective = (picked.mul(&weights)?.sum_all()? * -1.0)?;
            loss += objective.to_scalar::<f32>()? as f64;
            nll -= picked.mul(&unit)?.sum_all()?.to_scalar::<f32>()? as f64;
            tokens += count;
            let micro = objective.backward()?;
            match grads.as_mut() {
                None => grads = Some(micro),
                Some(total) => total.extend(micro)?,
            }
        }
        if !loss.is_finite() {
            return Err(TrainError::NonFinite {
                step: self.state.step,
                what: "the reinforcement loss",
                value: loss,
            });
        }
        let grads = grads.expect("the batch is not empty");
        let stats = self.optimizer.step(&grads, lr_factor)?;
        if stats.skipped || !stats.grad_norm.is_finite() {
            return Err(TrainError::NonFinite {
                step: self.state.step,
                what: "the gradient norm",
                value: stats.grad_norm,
            });
        }
        Ok(UpdateStats {
            loss,
            nll_per_token: nll / tokens.max(1) as f64,
            completion_tokens: tokens,
            grad_norm: stats.grad_norm,
        })
    }

    /// Inputs and targets `[B, L]` (padded with token 0), the per-position weights `[B·L]`, a
    /// 0/1 mask of the completion positions, and how many there are.
    fn micro_batch(
        &self,
        chunk: &[WeightedSequence],
        context: usize,
    ) -> Result<(Tensor, Tensor, Tensor, Tensor, usize), TrainError> {
        let len = chunk
            .iter()
            .map(|s| s.tokens.len().min(context + 1) - 1)
            .max()
            .unwrap_or(0);
        if len == 0 {
            return Err(TrainError::Input(
                "a sequence needs at least two tokens".into(),
            ));
        }
        let rows = chunk.len();
        let mut inputs = vec![0u32; rows * len];
        let mut targets = vec![0u32; rows * len];
        let mut weights = vec![0f32; rows * len];
        let mut unit = vec![0f32; rows * len];
        let mut count = 0;
        for (r, seq) in chunk.iter().enumerate() {
            if seq.completion_start == 0 {
                return Err(TrainError::Input(
                    "a completion cannot start at token 0".into(),
                ));
            }
            let tokens = &seq.tokens[..seq.tokens.len().min(context + 1)];
            for t in 0..tokens.len() - 1 {
                inputs[r * len + t] = tokens[t];
                targets[r * len + t] = tokens[t + 1];
                if t + 1 >= seq.completion_start {
                    weights[r * len + t] = seq.weight;
                    unit[r * len + t] = 1.0;
                    count += 1;
                }
            }
        }
        let device = &self.device;
        Ok((
            Tensor::from_vec(inputs, (rows, len), device)?,
            Tensor::from_vec(targets, (rows, len), device)?,
            Tensor::from_vec(weights, rows * len, device)?.to_dtype(DType::F32)?,
            Tensor::from_vec(unit, rows * len, device)?,
            count,
        ))
    }

    /// Writes the checkpoint folder `dir` (atomically, the layout train writes): the updated
    /// weights and optimizer state, the run settings unchanged, and `rl` (what maxrl did) in
    /// trainer_state.json.
    pub fn save(&self, dir: &Path, rl: serde_json::Value) -> Result<(), TrainError> {
        let mut state = self.state.clone();
        state.rl = Some(rl);
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

/// How the correct samples of a batch are weighted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Estimator {
    /// Maximum-likelihood RL: per prompt, the mean of its K correct samples' log-likelihood
    /// gradients (weight 1/K), averaged over the prompts with K ≥ 1. Unbiased for the gradient
    /// of the order-N truncation of log pass-rate; hard prompts weigh as much as easy ones.
    MaxRl,
    /// Rejection-sampling fine-tuning: every correct sample weighs the same (1 / all correct),
    /// so a prompt weighs in proportion to its K: the gradient of the pass rate, biased to easy
    /// prompts.
    Rft,
}

/// The weight of each sample of each prompt (`successes[p][i]`: sample i of prompt p is
/// correct); incorrect samples and prompts with no correct sample get 0. The weights sum to 1
/// when any sample is correct.
pub fn sample_weights(successes: &[Vec<bool>], estimator: Estimator) -> Vec<Vec<f32>> {
    let correct: Vec<usize> = successes
        .iter()
        .map(|s| s.iter().filter(|&&ok| ok).count())
        .collect();
    let prompts_with_success = correct.iter().filter(|&&k| k > 0).count();
    let total: usize = correct.iter().sum();
    successes
        .iter()
        .zip(&correct)
        .map(|(samples, &k)| {
            samples
                .iter()
                .map(|&ok| match (ok, estimator) {
                    (false, _) => 0.0,
                    (true, Estimator::MaxRl) => 1.0 / (k * prompts_with_success) as f32,
                    (true, Estimator::Rft) => 1.0 / total as f32,
                })
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maxrl_averages_per_prompt_and_rft_pools() {
        // Prompt 0: 3 of 4 correct (easy); prompt 1: 1 of 4 (hard); prompt 2: none.
        let s = vec![
            vec![true, true, true, false],
            vec![false, true, false, false],
            vec![false; 4],
        ];
        let maxrl = sample_weights(&s, Estimator::MaxRl);
        assert_eq!(maxrl[0], vec![1.0 / 6.0, 1.0 / 6.0, 1.0 / 6.0, 0.0]);
        assert_eq!(maxrl[1], vec![0.0, 0.5, 0.0, 0.0]);
        assert_eq!(maxrl[2], vec![0.0; 4]);
        // Each prompt with a success weighs the same: 1/2.
        let rft = sample_weights(&s, Estimator::Rft);
        assert_eq!(rft[0], vec![0.25, 0.25, 0.25, 0.0]);
        assert_eq!(rft[1], vec![0.0, 0.25, 0.0, 0.0]);
        for w in [&maxrl, &rft] {
            let sum: f32 = w.iter().flatten().sum();
            assert!((sum - 1.0).abs() < 1e-6);
        }
        assert_eq!(
            sample_weights(&[vec![false, false]], Estimator::MaxRl),
            vec![vec![0.0, 0.0]]
        );
    }
}
