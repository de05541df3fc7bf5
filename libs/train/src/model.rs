//! The training model: libs/model's architecture as a differentiable candle graph over FP32 shadow
//! weights, with the straight-through estimators of [`crate::ops`] on every BitLinear.
//!
//! Shapes: B = batch, T = time, N = B·T rows, C = dim, n = residual streams, KV = kv_dim,
//! F = ffn_dim, V = vocab, H / Hkv = query / key-value heads, D = head dim. Per block l, with u the
//! sub-layer input (mHC `prepare` of the streams `[N, n, C]`, or the residual `[N, C]` when n = 1),
//! exactly the text of libs/model/src/model.rs:
//! ```text
//!   h = rmsnorm(u) · attn_norm          q|k|v = BitLinear(h)    rope(q, k)
//!   a = causal GQA attention(q, k, v)   o = BitLinear_o(a)      streams = mHC apply(streams, o)
//!   h = rmsnorm(u) · ffn_norm           g|up = BitLinear(h)     d = BitLinear_down(silu(g) · up)
//!   streams = mHC apply(streams, d)
//! ```
//! then collapse (mean of the streams), rmsnorm · output_norm, and the LM head: a BitLinear, or
//! the embedding when tied (full precision, no activation quantization, as libs/model does).
//! BitLinear(x) = int8_ste(x) · ternary_ste(W)ᵀ; with [`WeightMode::FullPrecision`] (the ablation)
//! both quantizers are skipped.
//!
//! Parameters are named as in GGUF (the checkpoint convention of [`crate::checkpoint`]); the mHC
//! parameters of a module are one vector `blk.l.attn_mhc` / `blk.l.ffn_mhc` in the .mhc file's
//! order (9 values for 2 streams, 40 for 4). Multi-token prediction heads (`mtp.k.*`, training
//! only, dropped at export) predict token t+1+k from the final hidden state.

use std::collections::HashMap;

use candle_core::{DType, Device, Result, Tensor, Var, D};
use mhc::{MhcParams, NStreams, S4};
use model::ModelConfig;

pub use crate::checkpoint::WeightMode;
use crate::data::Rng;
use crate::ops;

/// The options of the graph that are not part of the model's shape.
#[derive(Clone, Debug, PartialEq)]
pub struct GraphOptions {
    /// Ternary straight-through weights and int8 activations, or full precision (ablation).
    pub weights: WeightMode,
    /// Extra multi-token prediction heads (0 = next token only).
    pub mtp_heads: usize,
}

/// The training model: named variables in a fixed order.
pub struct TrainModel {
    config: ModelConfig,
    options: GraphOptions,
    params: Vec<(String, Var)>,
    index: HashMap<String, usize>,
    /// `[24, 16]`: row k is the permutation matrix S4[k] flattened (N = 4 only).
    permutations: Option<Tensor>,
    /// The RoPE tables `(cos, sin)` of each sequence length met so far (computed once: 8,192
    /// `sin_cos` calls for 256 positions were 1 % of a tiny-model step).
    rope: std::sync::Mutex<HashMap<usize, (Tensor, Tensor)>>,
}

/// The losses of one batch.
pub struct Losses {
    /// What the optimizer minimises: next-token cross-entropy + weighted MTP losses − entropy
    /// bonus.
    pub total: Tensor,
    /// Mean next-token cross-entropy (nats).
    pub next_token: Tensor,
}

impl TrainModel {
    /// A freshly initialised model (seeded): hidden weights N(0, 1/fan_in) (output projections
    /// also scaled by 1/√(2·layers)), norms 1, mHC at libs/mhc's documented initialisation.
    pub fn init(
        config: &ModelConfig,
        options: GraphOptions,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        check_supported(config)?;
        let mut rng = Rng::new(seed);
        let mut tensors = Vec::new();
        for (name, shape) in parameter_shapes(config, options.mtp_heads) {
            let len: usize = shape.iter().product();
            let values: Vec<f32> = if name.ends_with("_mhc") {
                let module = mhc_module_index(&name);
                let n = config
                    .streams()
                    .expect("mHC tensors only exist with streams");
                MhcParams::init(n, module).to_flat()
            } else if shape.len() == 1 {
                vec![1.0; len]
            } else {
                let std = init_std(config, &name, shape[1]);
                (0..len).map(|_| std * rng.normal() as f32).collect()
            };
            tensors.push((name, Tensor::from_vec(values, shape.as_slice(), device)?));
        }
        Self::from_tensors(config, options, tensors)
    }

    /// A model from named tensors (a checkpoint): every expected name present with its shape,
    /// nothing else.
    pub fn from_tensors(
        config: &ModelConfig,
        options: GraphOptions,
        tensors: Vec<(String, Tensor)>,
    ) -> Result<Self> {
        check_supported(config)?;
        let mut given: HashMap<String, Tensor> = tensors.into_iter().collect();
        let mut params = Vec::new();
        for (name, shape) in parameter_shapes(config, options.mtp_heads) {
            let tensor = given
                .remove(&name)
                .ok_or_else(|| candle_core::Error::Msg(format!("missing tensor {name}")))?;
            if tensor.dims() != shape.as_slice() {
                candle_core::bail!(
                    "tensor {name} has shape {:?}, the config needs {shape:?}",
                    tensor.dims()
                );
            }
            params.push((name, Var::from_tensor(&tensor.to_dtype(DType::F32)?)?));
        }
        if let Some(extra) = given.keys().min() {
            candle_core::bail!("unexpected tensor {extra} for this config");
        }
        let index = params
            .iter()
            .enumerate()
            .map(|(i, (n, _))| (n.clone(), i))
            .collect();
        let device = params[0].1.device().clone();
        let permutations = match config.streams() {
            Some(NStreams::Four) => Some(permutation_table(&device)?),
            _ => None,
        };
        Ok(TrainModel {
            config: config.clone(),
            options,
            params,
            index,
            permutations,
            rope: std::sync::Mutex::new(HashMap::new()),
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn options(&self) -> &GraphOptions {
        &self.options
    }

    /// The variables, named, in the fixed order of [`parameter_shapes`].
    pub fn parameters(&self) -> &[(String, Var)] {
        &self.params
    }

    /// The current values, named (for checkpoints).
    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        self.params
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
            .collect()
    }

    fn get(&self, name: &str) -> &Tensor {
        self.params[self.index[name]].1.as_tensor()
    }

    /// `x · Wᵀ` for `x` `[N, cols]` and a stack of weights (rows concatenated in order), each
    /// through the ternary estimator, the activation through the int8 estimator.
    fn bitlinear(&self, x: &Tensor, weights: &[&str]) -> Result<Tensor> {
        ops::bitlinear(x, &self.stacked(weights)?, self.quantized())
    }

    /// The weights named, their rows concatenated in order.
    fn stacked(&self, weights: &[&str]) -> Result<Tensor> {
        match weights {
            [one] => Ok(self.get(one).clone()),
            many => Tensor::cat(&many.iter().map(|w| self.get(w)).collect::<Vec<_>>(), 0),
        }
    }

    fn quantized(&self) -> bool {
        self.options.weights == WeightMode::Ternary
    }

    /// The mixing of module `name` (`blk.l.attn_mhc`): `(H_res [n, n], h_pre [n], h_post [n])`,
    /// differentiable, by libs/mhc's formulas.
    fn mixing(&self, name: &str) -> Result<(Tensor, Tensor, Tensor)> {
        let p = self.get(name);
        let n = self.config.mhc_streams;
        let (h_res, gates_at) = match self.config.streams() {
            Some(NStreams::Two) => {
                // a = σ(alpha_logit); H_res = [[a, 1 − a], [1 − a, a]].
                let a = candle_nn::ops::sigmoid(&p.narrow(0, 0, 1)?)?;
                let b = a.affine(-1.0, 1.0)?;
                (Tensor::cat(&[&a, &b, &b, &a], 0)?.reshape((2, 2))?, 1)
            }
            Some(NStreams::Four) => {
                // H_res = Σ_k softmax(res_logits)_k · P_k.
                let logits = p.narrow(0, 0, S4.len())?;
                let max = logits.max_keepdim(0)?.detach();
                let e = logits.broadcast_sub(&max)?.exp()?;
                let w = e.broadcast_div(&e.sum_keepdim(0)?)?;
                let table = self.permutations.as_ref().expect("N = 4 has the table");
                (w.unsqueeze(0)?.matmul(table)?.reshape((4, 4))?, S4.len())
            }
            None => candle_core::bail!("mixing of a plain-residual model"),
        };
        let part = |k: usize| p.narrow(0, gates_at + k * n, n);
        let h_pre = candle_nn::ops::sigmoid(&(part(0)? + part(1)?)?)?;
        let h_post = (candle_nn::ops::sigmoid(&(part(2)? + part(3)?)?)? * 2.0)?;
        Ok((h_res, h_pre, h_post))
    }

    /// The final hidden state (after collapse, before the output norm) `[N, C]` of `tokens`
    /// `[B, T]`.
    fn trunk(&self, tokens: &Tensor) -> Result<Tensor> {
        let cfg = &self.config;
        let (b, t) = tokens.dims2()?;
        let (c, d) = (cfg.dim, cfg.head_dim());
        let (h, h_kv) = (cfg.n_heads, cfg.n_kv_heads);
        let rows = b * t;
        let x = self
            .get("token_embd.weight")
            .index_select(&tokens.flatten_all()?, 0)?;
        let (cos, sin) = self.rope_tables(t)?;
        let shape = ops::AttentionShape {
            batch: b,
            time: t,
            heads: h,
            kv_heads: h_kv,
            head_dim: d,
        };
        let n = cfg.mhc_streams;
        // [N, n, C] streams, or the residual [N, C] itself.
        let mut streams = if n > 1 {
            x.unsqueeze(1)?.broadcast_as((rows, n, c))?.contiguous()?
        } else {
            x
        };
        for l in 0..cfg.n_layers {
            let name = |s: &str| format!("blk.{l}.{s}");
            // Attention.
            let (u, mix) = self.sublayer_input(&streams, &name("attn_mhc"))?;
            let hn = ops::rms_norm(&u, self.get(&name("attn_norm.weight")), cfg.norm_eps)?;
            let w_qkv = self.stacked(&[
                &name("attn_q.weight"),
                &name("attn_k.weight"),
                &name("attn_v.weight"),
            ])?;
            let w_o = self.get(&name("attn_output.weight"));
            let out =
                ops::attention_sublayer(&hn, &w_qkv, w_o, &cos, &sin, shape, self.quantized())?;
            streams = residual_update(&streams, mix, &out)?;

            // Feed-forward.
            let (u, mix) = self.sublayer_input(&streams, &name("ffn_mhc"))?;
            let hn = ops::rms_norm(&u, self.get(&name("ffn_norm.weight")), cfg.norm_eps)?;
            let w_gate_up = self.stacked(&[&name("ffn_gate.weight"), &name("ffn_up.weight")])?;
            let w_down = self.get(&name("ffn_down.weight"));
            let out = ops::ffn_sublayer(&hn, &w_gate_up, w_down, self.quantized())?;
            streams = residual_update(&streams, mix, &out)?;
        }
        if n > 1 {
            streams.sum(1)? * (1.0 / n as f64)
        } else {
            Ok(streams)
        }
    }

    /// [`ops::rope_tables`] of `t` positions, from the cache.
    fn rope_tables(&self, t: usize) -> Result<(Tensor, Tensor)> {
        let mut cache = self.rope.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tables) = cache.get(&t) {
            return Ok(tables.clone());
        }
        let cfg = &self.config;
        let device = self.params[0].1.device();
        let tables = ops::rope_tables(t, cfg.head_dim(), cfg.rope_theta, device)?;
        cache.insert(t, tables.clone());
        Ok(tables)
    }

    /// The sub-layer input and, for mHC, the module's mixing.
    fn sublayer_input(
        &self,
        streams: &Tensor,
        module: &str,
    ) -> Result<(Tensor, Option<(Tensor, Tensor)>)> {
        if self.config.mhc_streams == 1 {
            return Ok((streams.clone(), None));
        }
        let (h_res, h_pre, h_post) = self.mixing(module)?;
        Ok((ops::mhc_prepare(streams, &h_pre)?, Some((h_res, h_post))))
    }

    /// Logits `[N, V]` of a final hidden state `[N, C]`.
    fn head(&self, hidden: &Tensor) -> Result<Tensor> {
        let normed = ops::rms_norm(hidden, self.get("output_norm.weight"), self.config.norm_eps)?;
        if self.config.tied_embeddings {
            normed.matmul(&self.get("token_embd.weight").t()?)
        } else {
            self.bitlinear(&normed, &["output.weight"])
        }
    }

    /// The mean cross-entropy of the logits of a final hidden state `[N, C]` against `targets`
    /// `[N]`: [`Self::head`] then [`ops::cross_entropy`], as one node for a ternary (or
    /// full-precision) head.
    fn head_loss(&self, hidden: &Tensor, targets: &Tensor) -> Result<Tensor> {
        if self.config.tied_embeddings {
            return ops::cross_entropy(&self.head(hidden)?, targets);
        }
        let normed = ops::rms_norm(hidden, self.get("output_norm.weight"), self.config.norm_eps)?;
        ops::head_cross_entropy(
            &normed,
            self.get("output.weight"),
            targets,
            self.quantized(),
        )
    }

    /// Next-token logits `[B·T, V]` of `tokens` `[B, T]` (row b·T + t predicts token t + 1).
    pub fn logits(&self, tokens: &Tensor) -> Result<Tensor> {
        self.head(&self.trunk(tokens)?)
    }

    /// The losses of `inputs` / `targets` (`[B, T]`, targets = inputs shifted by one). MTP head k
    /// (weight `mtp_weight`) predicts the target k + 1 positions further on; `entropy_bonus` λ
    /// subtracts λ · mean entropy of the next-token distribution (0 = off).
    pub fn losses(
        &self,
        inputs: &Tensor,
        targets: &Tensor,
        mtp_weight: f64,
        entropy_bonus: f64,
    ) -> Result<Losses> {
        let (b, t) = inputs.dims2()?;
        let hidden = self.trunk(inputs)?;
        let flat_targets = targets.flatten_all()?;
        let (next_token, mut total) = if entropy_bonus == 0.0 {
            let loss = self.head_loss(&hidden, &flat_targets)?;
            (loss.clone(), loss)
        } else {
            // The entropy needs the logits themselves.
            let logits = self.head(&hidden)?;
            let loss = ops::cross_entropy(&logits, &flat_targets)?;
            let log_p = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
            let entropy = (log_p.exp()? * &log_p)?.sum(D::Minus1)?.mean_all()?.neg()?;
            let total = (&loss - (entropy * entropy_bonus)?)?;
            (loss, total)
        };
        for k in 0..self.options.mtp_heads {
            let shift = k + 1;
            if shift >= t {
                break;
            }
            let h = self.mtp_hidden(&hidden, k)?;
            // Position p of the head predicts targets[p + shift]: drop the last `shift` rows.
            let h = h
                .reshape((b, t, self.config.dim))?
                .narrow(1, 0, t - shift)?;
            let h = h.reshape((b * (t - shift), self.config.dim))?;
            let tg = targets.narrow(1, shift, t - shift)?.flatten_all()?;
            let loss = self.head_loss(&h, &tg)?;
            total = (total + (loss * mtp_weight)?)?;
        }
        Ok(Losses { total, next_token })
    }

    /// MTP head k's hidden state: `hidden + BitLinear_k(rmsnorm_k(hidden))`, then the shared head.
    fn mtp_hidden(&self, hidden: &Tensor, k: usize) -> Result<Tensor> {
        let normed = ops::rms_norm(
            hidden,
            self.get(&format!("mtp.{k}.norm.weight")),
            self.config.norm_eps,
        )?;
        hidden + self.bitlinear(&normed, &[&format!("mtp.{k}.proj.weight")])?
    }
}

/// The residual update of a sub-layer output: mHC apply, or `x + out`.
fn residual_update(
    streams: &Tensor,
    mix: Option<(Tensor, Tensor)>,
    out: &Tensor,
) -> Result<Tensor> {
    match mix {
        Some((h_res, h_post)) => ops::mhc_apply(streams, &h_res, &h_post, out),
        None => streams + out,
    }
}

/// The module index of `blk.l.attn_mhc` (2l) or `blk.l.ffn_mhc` (2l + 1).
fn mhc_module_index(name: &str) -> usize {
    let layer: usize = name
        .split('.')
        .nth(1)
        .and_then(|l| l.parse().ok())
        .expect("mHC tensor names are blk.<layer>.<kind>_mhc");
    2 * layer + usize::from(name.ends_with("ffn_mhc"))
}

/// Initial standard deviation of a 2-D weight with `fan_in` inputs.
fn init_std(config: &ModelConfig, name: &str, fan_in: usize) -> f32 {
    if name == "token_embd.weight" {
        // A tied head multiplies with the embedding: keep its logits near unit scale.
        return if config.tied_embeddings {
            1.0 / (config.dim as f32).sqrt()
        } else {
            1.0
        };
    }
    let base = 1.0 / (fan_in as f32).sqrt();
    if name.ends_with("attn_output.weight") || name.ends_with("ffn_down.weight") {
        base / (2.0 * config.n_layers as f32).sqrt()
    } else {
        base
    }
}

fn check_supported(config: &ModelConfig) -> Result<()> {
    config
        .validate()
        .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    if config.moe.is_some() {
        candle_core::bail!("training mixture-of-experts models is not supported");
    }
    if config.variant != model::Variant::default() {
        // The inference engine runs imported models' variants; the training graph has only
        // SwiGLU, no sub-layer norms, a tied or ternary head and per-group scales.
        candle_core::bail!(
            "training the architecture variant {:?} is not supported",
            config.variant
        );
    }
    Ok(())
}

/// Every parameter of the training model as `(name, shape)`, in a fixed order: the embedding,
/// per block its norms, weights and mHC vectors, the output norm, the LM head unless tied, then
/// the MTP heads.
pub fn parameter_shapes(config: &ModelConfig, mtp_heads: usize) -> Vec<(String, Vec<usize>)> {
    let (c, v) = (config.dim, config.vocab_size);
    let mut out = vec![("token_embd.weight".to_string(), vec![v, c])];
    let ternary = config.ternary_weights();
    let per_block = (ternary.len() - usize::from(!config.tied_embeddings)) / config.n_layers;
    for l in 0..config.n_layers {
        out.push((format!("blk.{l}.attn_norm.weight"), vec![c]));
        out.push((format!("blk.{l}.ffn_norm.weight"), vec![c]));
        for (name, rows, cols) in &ternary[l * per_block..(l + 1) * per_block] {
            out.push((name.clone(), vec![*rows, *cols]));
        }
        if let Some(n) = config.streams() {
            for kind in ["attn_mhc", "ffn_mhc"] {
                out.push((format!("blk.{l}.{kind}"), vec![n.params_per_module()]));
            }
        }
    }
    out.push(("output_norm.weight".to_string(), vec![c]));
    if !config.tied_embeddings {
        out.push(("output.weight".to_string(), vec![v, c]));
    }
    for k in 0..mtp_heads {
        out.push((format!("mtp.{k}.norm.weight"), vec![c]));
        out.push((format!("mtp.{k}.proj.weight"), vec![c, c]));
    }
    out
}

/// `[24, 16]`: row k is the permutation matrix of S4[k] flattened row-major
/// (`P_k[i][S4[k][i]] = 1`).
fn permutation_table(device: &Device) -> Result<Tensor> {
    let mut table = vec![0.0f32; S4.len() * 16];
    for (k, perm) in S4.iter().enumerate() {
        for (i, &j) in perm.iter().enumerate() {
            table[k * 16 + i * 4 + j] = 1.0;
        }
    }
    Tensor::from_vec(table, (S4.len(), 16), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn small_config(streams: usize, tied: bool) -> ModelConfig {
        ModelConfig {
            vocab_size: 64,
            dim: 32,
            n_layers: 2,
            n_heads: 4,
            n_kv_heads: 2,
            ffn_dim: 64,
            context_length: 16,
            rope_theta: 10_000.0,
            norm_eps: 1e-5,
            mhc_streams: streams,
            tied_embeddings: tied,
            moe: None,
            variant: Default::default(),
        }
    }

    fn options(weights: WeightMode, mtp_heads: usize) -> GraphOptions {
        GraphOptions { weights, mtp_heads }
    }

    /// Fine-tuning batches: an example's loss is the same alone and padded beside a longer one
    /// (causal attention keeps the padding, after its last token, out of its positions), and an
    /// example whose targets are all ignored adds nothing to the loss.
    #[test]
    fn padding_and_ignored_targets_leave_an_examples_loss_unchanged() {
        use crate::sft::{pad_batch, Example};
        let dev = Device::Cpu;
        let config = small_config(2, false);
        let model = TrainModel::init(&config, options(WeightMode::Ternary, 1), 3, &dev).unwrap();
        let short = Example {
            tokens: vec![5, 9, 12, 40, 41, 7],
            scored_from: 3,
        };
        let tokens: Vec<u32> = (0..15).map(|i| (i * 5 % 64) as u32).collect();
        let unscored = Example {
            scored_from: tokens.len(),
            tokens,
        };
        let loss = |examples: &[&Example]| {
            let (x, y, _) = pad_batch(examples, &dev).unwrap();
            let losses = model.losses(&x, &y, 0.3, 0.0).unwrap();
            let value = |t: Tensor| t.to_scalar::<f32>().unwrap();
            (value(losses.next_token), value(losses.total))
        };
        let alone = loss(&[&short]);
        let padded = loss(&[&short, &unscored]);
        for (a, b) in [(alone.0, padded.0), (alone.1, padded.1)] {
            assert!((a - b).abs() <= 1e-5 * a.abs(), "{a} alone, {b} padded");
        }
    }

    #[test]
    fn every_parameter_gets_a_gradient() {
        let dev = Device::Cpu;
        for (streams, tied, weights, mtp) in [
            (1, false, WeightMode::Ternary, 0),
            (2, true, WeightMode::Ternary, 1),
            (4, false, WeightMode::FullPrecision, 2),
        ] {
            let config = small_config(streams, tied);
            let model = TrainModel::init(&config, options(weights, mtp), 7, &dev).unwrap();
            let tokens: Vec<u32> = (0..2 * 9).map(|i| (i * 7 % 64) as u32).collect();
            let all = Tensor::from_vec(tokens, (2, 9), &dev).unwrap();
            let inputs = all.narrow(1, 0, 8).unwrap();
            let targets = all.narrow(1, 1, 8).unwrap();
            let logits = model.logits(&inputs).unwrap();
            assert_eq!(logits.dims(), &[16, 64]);
            let losses = model.losses(&inputs, &targets, 0.3, 0.01).unwrap();
            let loss = losses.next_token.to_scalar::<f32>().unwrap();
            // A fresh model is close to uniform over 64 tokens.
            assert!((loss - 64f32.ln()).abs() < 1.5, "{loss}");
            let grads = losses.total.backward().unwrap();
            for (name, var) in model.parameters() {
                let g = grads
                    .get(var.as_tensor())
                    .unwrap_or_else(|| panic!("{name}"));
                let norm = g
                    .sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                assert!(norm.is_finite() && norm > 0.0, "{name}: {norm}");
            }
        }
    }

    #[test]
    fn from_tensors_names_a_missing_or_misshaped_tensor() {
        let dev = Device::Cpu;
        let config = small_config(2, false);
        let opts = options(WeightMode::Ternary, 0);
        let model = TrainModel::init(&config, opts.clone(), 1, &dev).unwrap();
        let mut tensors = model.tensors();
        tensors.retain(|(n, _)| n != "blk.1.ffn_mhc");
        let err = TrainModel::from_tensors(&config, opts.clone(), tensors)
            .err()
            .unwrap();
        assert!(err.to_string().contains("blk.1.ffn_mhc"), "{err}");
        let mut tensors = model.tensors();
        tensors[3].1 = Tensor::zeros((3, 3), DType::F32, &dev).unwrap();
        let err = TrainModel::from_tensors(&config, opts, tensors)
            .err()
            .unwrap();
        assert!(err.to_string().contains("shape"), "{err}");
    }

    #[test]
    fn mixing_matrices_match_libs_mhc() {
        let dev = Device::Cpu;
        for streams in [2, 4] {
            let config = small_config(streams, false);
            let model =
                TrainModel::init(&config, options(WeightMode::Ternary, 0), 3, &dev).unwrap();
            for (name, var) in model
                .parameters()
                .iter()
                .filter(|(n, _)| n.ends_with("_mhc"))
            {
                // Perturb so the test sees more than the initialisation.
                let flat: Vec<f32> = ops::to_f32_vec(var.as_tensor())
                    .unwrap()
                    .iter()
                    .enumerate()
                    .map(|(i, v)| v + 0.3 * ((i as f32) * 1.7).sin())
                    .collect();
                var.set(&Tensor::new(flat.as_slice(), &dev).unwrap())
                    .unwrap();
                let (h_res, h_pre, h_post) = model.mixing(name).unwrap();
                let params = match config.streams().unwrap() {
                    NStreams::Two => MhcParams::Two(mhc::Mhc2::from_flat(flat.try_into().unwrap())),
                    NStreams::Four => {
                        MhcParams::Four(mhc::Mhc4::from_flat(flat.try_into().unwrap()))
                    }
                };
                let want = mhc::Mixing::from_params(&params);
                let close = |a: Vec<f32>, b: &[f32]| {
                    for (x, y) in a.iter().zip(b) {
                        assert!((x - y).abs() < 1e-6, "{name}: {x} vs {y}");
                    }
                };
                close(
                    ops::to_f32_vec(&h_res).unwrap(),
                    want.h_res().as_row_major(),
                );
                close(ops::to_f32_vec(&h_pre).unwrap(), want.h_pre());
                close(ops::to_f32_vec(&h_post).unwrap(), want.h_post());
            }
        }
    }
}
