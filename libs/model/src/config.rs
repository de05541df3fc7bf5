//! Model hyper-parameters, the named presets, and the sizes they imply.
//!
//! One `ModelConfig` describes both the training graph (libs/train) and the inference model of this
//! crate: the same shapes, the same tensor names, the same GGUF metadata keys. Sizes are computed
//! from the shapes alone, so `bytes_gguf_tensors` is exact for the tensor data of an exported file
//! (checked against real files in tests) and `bytes_runtime` is the memory the inference model of
//! this crate allocates for weights plus the KV cache of one sequence.

use crate::kv::KvPrecision;
use serde::{Deserialize, Serialize};
use ternary::{groups_for, trit, GROUP_SIZE};

/// Rows of planar weights are padded to this many (libs/ternary's row tile).
const PLANAR_ROW_TILE: usize = 8;

/// Mixture-of-experts shape of the FFN (presets moe-25b and moe-80b). The inference model of this
/// crate runs dense models only; MoE presets exist for their sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoeConfig {
    /// Experts per layer, each a SwiGLU FFN of `ffn_dim`.
    pub n_experts: usize,
    /// Experts each token is routed to.
    pub experts_per_token: usize,
}

/// The FFN's gated activation: `act(gate) · up`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FfnActivation {
    /// `silu(g) · up` (SwiGLU), what `train` trains.
    #[default]
    Swiglu,
    /// `relu(g)² · up` (squared ReLU, gated), as BitNet b1.58 2B4T.
    Relu2,
}

impl FfnActivation {
    /// The name in GGUF metadata and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            FfnActivation::Swiglu => "swiglu",
            FfnActivation::Relu2 => "relu2",
        }
    }

    /// The activation of a name, `None` when unknown.
    pub fn from_name(name: &str) -> Option<Self> {
        [FfnActivation::Swiglu, FfnActivation::Relu2]
            .into_iter()
            .find(|a| a.name() == name)
    }
}

/// How many weights of a ternary matrix share one scale in the model's source. Every
/// granularity maps exactly onto the per-group-of-128 scales of the file (a coarser scale is
/// repeated over its groups), so the format is unchanged; the loader stores each shared scale
/// once in the planar runtime form (`PlanarWeights::share_scales`, an error if the file's scales
/// are not that uniform), so decoding reads 2.125 (block256) or about 2.0 (tensor) bits a weight
/// instead of 2.25, with the same results from every kernel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScaleGranularity {
    /// One scale per group of 128 weights of a row (absmean per group: what `train` makes).
    #[default]
    Group128,
    /// One scale per block of 256 weights of a row (llama.cpp's TQ1_0 / TQ2_0, an f16 scale).
    Block256,
    /// One scale per matrix (BitNet b1.58's absmean per tensor).
    Tensor,
}

impl ScaleGranularity {
    /// The name in GGUF metadata.
    pub fn name(self) -> &'static str {
        match self {
            ScaleGranularity::Group128 => "group128",
            ScaleGranularity::Block256 => "block256",
            ScaleGranularity::Tensor => "tensor",
        }
    }

    /// The `scale_shift` of planar weights with this granularity (`PlanarWeights::share_scales`):
    /// groups sharing one scale are 2^shift.
    pub fn scale_shift(self) -> u32 {
        match self {
            ScaleGranularity::Group128 => 0,
            ScaleGranularity::Block256 => 1,
            ScaleGranularity::Tensor => ternary::planar::ROW_SCALE_SHIFT,
        }
    }

    /// The granularity of a name, `None` when unknown.
    pub fn from_name(name: &str) -> Option<Self> {
        [
            ScaleGranularity::Group128,
            ScaleGranularity::Block256,
            ScaleGranularity::Tensor,
        ]
        .into_iter()
        .find(|g| g.name() == name)
    }
}

/// The architecture variants beyond the nanochat shape, for models trained elsewhere (BitNet
/// b1.58, llama.cpp's ternary Llama models). The default is what `train` trains; files without
/// the metadata keys of a variant are the default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Variant {
    pub ffn_activation: FfnActivation,
    /// BitNet's "subln": an RMSNorm (gains `blk.N.attn_sub_norm.weight`, `[C]`) on the attention
    /// output before the output projection, and one (`blk.N.ffn_sub_norm.weight`, `[F]`) on the
    /// gated FFN hidden before the down projection.
    pub sub_norms: bool,
    /// An untied full-precision LM head (`output.weight`, stored as the embedding is) instead of
    /// a ternary one; ignored when the embeddings are tied.
    pub dense_head: bool,
    pub weight_scales: ScaleGranularity,
}

/// The shape of a nanochat model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// Tokens in the vocabulary (rows of the embedding and of the LM head).
    pub vocab_size: usize,
    /// Hidden size C.
    pub dim: usize,
    /// Transformer blocks.
    pub n_layers: usize,
    /// Query heads; head_dim = dim / n_heads.
    pub n_heads: usize,
    /// Key/value heads (grouped-query attention); divides n_heads.
    pub n_kv_heads: usize,
    /// Hidden size of the SwiGLU FFN (of each expert for MoE).
    pub ffn_dim: usize,
    /// Longest sequence (prompt + completion) the model runs.
    pub context_length: usize,
    /// RoPE base frequency.
    pub rope_theta: f32,
    /// RMSNorm epsilon.
    pub norm_eps: f32,
    /// Residual streams: 1 = plain residual (no .mhc file), 2 or 4 = mHC-lite.
    pub mhc_streams: usize,
    /// LM head tied to the token embedding (full precision) instead of its own ternary weight.
    pub tied_embeddings: bool,
    /// Mixture-of-experts FFN, if any.
    pub moe: Option<MoeConfig>,
    /// Architecture variants (all default for models `train` makes).
    #[serde(default)]
    pub variant: Variant,
}

/// Why a configuration is unusable.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("unknown preset {0:?} (known: {known})", known = PRESETS.join(", "))]
    UnknownPreset(String),
    #[error("{0}")]
    Invalid(String),
}

/// Names of the presets, smallest first.
pub const PRESETS: [&str; 6] = ["tiny", "nano-125m", "d20", "7b", "moe-25b", "moe-80b"];

impl ModelConfig {
    /// A named preset (see [`PRESETS`]).
    pub fn preset(name: &str) -> Result<Self, ConfigError> {
        let dense =
            |vocab_size, dim, n_layers, n_heads, n_kv_heads, ffn_dim, context_length| ModelConfig {
                vocab_size,
                dim,
                n_layers,
                n_heads,
                n_kv_heads,
                ffn_dim,
                context_length,
                rope_theta: 10_000.0,
                norm_eps: 1e-5,
                mhc_streams: 2,
                tied_embeddings: false,
                moe: None,
                variant: Variant::default(),
            };
        let config = match name {
            // CPU demo: ~5M parameters, trains in minutes on 2 cores.
            "tiny" => dense(4096, 256, 4, 4, 2, 768, 512),
            // GPT-2-small sized: 12 × 768, SwiGLU 2048 (8/3 · 768), GQA 12 → 4.
            "nano-125m" => dense(32768, 768, 12, 12, 4, 2048, 2048),
            // nanochat's d20 depth (20 layers × 1280), ~560M with a 64k vocabulary.
            "d20" => dense(65536, 1280, 20, 10, 10, 3456, 2048),
            // Mistral-7B shape: GQA 32 → 8, SwiGLU 14336.
            "7b" => dense(32768, 4096, 32, 32, 8, 14336, 4096),
            "moe-25b" => ModelConfig {
                moe: Some(MoeConfig {
                    n_experts: 16,
                    experts_per_token: 2,
                }),
                ..dense(32768, 4096, 32, 32, 8, 3584, 4096)
            },
            "moe-80b" => ModelConfig {
                moe: Some(MoeConfig {
                    n_experts: 64,
                    experts_per_token: 8,
                }),
                ..dense(32768, 4096, 48, 32, 8, 2048, 4096)
            },
            other => return Err(ConfigError::UnknownPreset(other.to_string())),
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks that the shapes fit together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |msg: String| Err(ConfigError::Invalid(msg));
        let positive = [
            ("vocab_size", self.vocab_size),
            ("dim", self.dim),
            ("n_layers", self.n_layers),
            ("n_heads", self.n_heads),
            ("n_kv_heads", self.n_kv_heads),
            ("ffn_dim", self.ffn_dim),
            ("context_length", self.context_length),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return fail(format!("{name} must be positive"));
        }
        if self.dim % self.n_heads != 0 {
            return fail(format!(
                "dim {} is not divisible by n_heads {}",
                self.dim, self.n_heads
            ));
        }
        if self.head_dim() % 2 != 0 {
            return fail(format!("head_dim {} must be even (RoPE)", self.head_dim()));
        }
        if self.n_heads % self.n_kv_heads != 0 {
            return fail(format!(
                "n_heads {} is not a multiple of n_kv_heads {}",
                self.n_heads, self.n_kv_heads
            ));
        }
        if ![1, 2, 4].contains(&self.mhc_streams) {
            return fail(format!(
                "mhc_streams must be 1 (plain residual), 2 or 4, not {}",
                self.mhc_streams
            ));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 1.0) {
            return fail(format!("rope_theta {} must be above 1", self.rope_theta));
        }
        if !(self.norm_eps.is_finite() && self.norm_eps > 0.0) {
            return fail(format!("norm_eps {} must be positive", self.norm_eps));
        }
        if self.vocab_size > u32::MAX as usize {
            return fail("vocab_size does not fit token ids of 32 bits".into());
        }
        if let Some(moe) = self.moe {
            if moe.n_experts == 0
                || moe.experts_per_token == 0
                || moe.experts_per_token > moe.n_experts
            {
                return fail(format!(
                    "MoE needs 1 <= experts_per_token ({}) <= n_experts ({})",
                    moe.experts_per_token, moe.n_experts
                ));
            }
        }
        Ok(())
    }

    /// Channels of one head.
    pub fn head_dim(&self) -> usize {
        self.dim / self.n_heads
    }

    /// Channels of all key (or value) heads of one token.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim()
    }

    /// Every ternary weight of the model as `(name, rows, cols)`, in file order: per block q, k, v,
    /// output, gate, up, down (experts: `blk.N.ffn_gate.E.weight`, ...), then the LM head.
    pub fn ternary_weights(&self) -> Vec<(String, usize, usize)> {
        let (c, kv, f) = (self.dim, self.kv_dim(), self.ffn_dim);
        let mut out = Vec::new();
        for layer in 0..self.n_layers {
            let name = |t: &str| format!("blk.{layer}.{t}.weight");
            out.push((name("attn_q"), c, c));
            out.push((name("attn_k"), kv, c));
            out.push((name("attn_v"), kv, c));
            out.push((name("attn_output"), c, c));
            match self.moe {
                None => {
                    out.push((name("ffn_gate"), f, c));
                    out.push((name("ffn_up"), f, c));
                    out.push((name("ffn_down"), c, f));
                }
                Some(moe) => {
                    for e in 0..moe.n_experts {
                        let expert = |t: &str| format!("blk.{layer}.{t}.{e}.weight");
                        out.push((expert("ffn_gate"), f, c));
                        out.push((expert("ffn_up"), f, c));
                        out.push((expert("ffn_down"), c, f));
                    }
                }
            }
        }
        if self.has_ternary_head() {
            out.push(("output.weight".to_string(), self.vocab_size, c));
        }
        out
    }

    /// The LM head is a ternary matrix (neither tied to the embedding nor dense).
    pub fn has_ternary_head(&self) -> bool {
        !self.tied_embeddings && !self.variant.dense_head
    }

    /// The LM head is its own full-precision matrix `output.weight`, stored as the embedding.
    pub fn has_dense_head(&self) -> bool {
        !self.tied_embeddings && self.variant.dense_head
    }

    /// Every full-precision (f32) tensor except the embedding, as `(name, length)`: the norms and
    /// the MoE routers.
    pub fn f32_tensors(&self) -> Vec<(String, usize)> {
        let mut out = Vec::new();
        for layer in 0..self.n_layers {
            out.push((format!("blk.{layer}.attn_norm.weight"), self.dim));
            out.push((format!("blk.{layer}.ffn_norm.weight"), self.dim));
            if self.variant.sub_norms {
                out.push((format!("blk.{layer}.attn_sub_norm.weight"), self.dim));
                out.push((format!("blk.{layer}.ffn_sub_norm.weight"), self.ffn_dim));
            }
            if let Some(moe) = self.moe {
                out.push((
                    format!("blk.{layer}.ffn_gate_inp.weight"),
                    moe.n_experts * self.dim,
                ));
            }
        }
        out.push(("output_norm.weight".to_string(), self.dim));
        out
    }

    /// Parameters of the model (ternary weights, embedding, norms, routers and mHC parameters).
    pub fn parameter_count(&self) -> u64 {
        let dense: u64 = self.f32_tensors().iter().map(|(_, n)| *n as u64).sum();
        self.ternary_weight_count()
            + dense
            + self.embedding_len() as u64
            + self.mhc_parameter_count()
    }

    /// Parameters a token passes through (MoE: only its routed experts, and the router).
    pub fn active_parameter_count(&self) -> u64 {
        self.parameter_count() - self.idle_expert_weights()
    }

    /// Weights a decoded token multiplies through ternary GEMVs (the "weight operations" of the
    /// efficiency figure are twice this: one multiply and one add each).
    pub fn ternary_macs_per_token(&self) -> u64 {
        self.ternary_weight_count() - self.idle_expert_weights()
    }

    /// Weights of every ternary matrix.
    fn ternary_weight_count(&self) -> u64 {
        self.ternary_weights()
            .iter()
            .map(|(_, r, c)| (r * c) as u64)
            .sum()
    }

    /// Weights of the experts a token is not routed to, over all layers (0 for dense models).
    fn idle_expert_weights(&self) -> u64 {
        self.moe.map_or(0, |moe| {
            let per_expert = 3 * (self.dim * self.ffn_dim) as u64;
            self.n_layers as u64 * (moe.n_experts - moe.experts_per_token) as u64 * per_expert
        })
    }

    /// Values of the token embedding table, and of a dense LM head (stored alike).
    pub fn embedding_len(&self) -> usize {
        let tables = if self.has_dense_head() { 2 } else { 1 };
        tables * self.vocab_size * self.dim
    }

    /// mHC-lite parameters (0 for plain residuals): two modules per block.
    pub fn mhc_parameter_count(&self) -> u64 {
        self.streams()
            .map_or(0, |n| (2 * self.n_layers * n.params_per_module()) as u64)
    }

    /// The mHC stream count, or `None` for plain residuals.
    pub fn streams(&self) -> Option<mhc::NStreams> {
        mhc::NStreams::from_count(self.mhc_streams)
    }

    /// Bytes of tensor data in the GGUF file (excluding its header, metadata and alignment
    /// padding), with the embedding stored as `embedding_bytes_per_value` (2 for F16, 4 for F32).
    pub fn bytes_gguf_tensors(&self, embedding_bytes_per_value: usize) -> u64 {
        let ternary: u64 = self
            .ternary_weights()
            .iter()
            .map(|(_, r, c)| (r * trit::packed_len(*c) + 4 * r * groups_for(*c)) as u64)
            .sum();
        let dense: u64 = self.f32_tensors().iter().map(|(_, n)| 4 * *n as u64).sum();
        ternary + dense + (self.embedding_len() * embedding_bytes_per_value) as u64
    }

    /// Bytes of the .mhc file (0 for plain residuals).
    pub fn bytes_mhc_file(&self) -> u64 {
        self.streams().map_or(0, |n| {
            (mhc::file::HEADER_BYTES + 2 * self.n_layers * n.module_bytes()) as u64
        })
    }

    /// Bytes of the planar runtime weights (codes and scales, with row padding), the embedding as
    /// stored (`embedding_bytes_per_value`), and the norms.
    pub fn bytes_runtime_weights(&self, embedding_bytes_per_value: usize) -> u64 {
        let planar: u64 = self
            .ternary_weights()
            .iter()
            .map(|(_, rows, cols)| {
                let tiles = rows.div_ceil(PLANAR_ROW_TILE);
                // Codes: 32 bytes per group of 128 weights, rows contiguous; scales: one f32
                // per row and group.
                let code_stride = groups_for(*cols) * GROUP_SIZE / 4;
                let tile_floats = PLANAR_ROW_TILE * groups_for(*cols);
                (tiles * PLANAR_ROW_TILE * code_stride + 4 * tiles * tile_floats) as u64
            })
            .sum();
        let dense: u64 = self.f32_tensors().iter().map(|(_, n)| 4 * *n as u64).sum();
        planar + dense + (self.embedding_len() * embedding_bytes_per_value) as u64
    }

    /// Bytes of the KV cache of one sequence of `tokens` tokens.
    pub fn bytes_kv_cache(&self, tokens: usize, precision: KvPrecision) -> u64 {
        (2 * self.n_layers * tokens * self.kv_dim() * precision.bytes_per_value()) as u64
    }

    /// Human summary: parameters, file size and run-time memory at full context.
    pub fn describe(&self) -> String {
        let mb = |b: u64| b as f64 / 1e6;
        let mut s = format!(
            "{} params ({:.1}M), dim {}, {} layers, {} heads ({} kv), ffn {}, vocab {}, context {}, \
             mHC {}, LM head {}",
            self.parameter_count(),
            self.parameter_count() as f64 / 1e6,
            self.dim,
            self.n_layers,
            self.n_heads,
            self.n_kv_heads,
            self.ffn_dim,
            self.vocab_size,
            self.context_length,
            match self.mhc_streams {
                1 => "off (plain residual)".to_string(),
                n => format!("N={n}"),
            },
            if self.tied_embeddings {
                "tied"
            } else {
                "ternary"
            },
        );
        if let Some(moe) = self.moe {
            s += &format!(
                ", MoE {} experts top-{} ({:.1}M active)",
                moe.n_experts,
                moe.experts_per_token,
                self.active_parameter_count() as f64 / 1e6
            );
        }
        s += &format!(
            "; GGUF tensors {:.1} MB (f16 embedding), run time {:.1} MB weights + {:.1} MB f16 KV cache \
             per sequence at {} tokens",
            mb(self.bytes_gguf_tensors(2)),
            mb(self.bytes_runtime_weights(2)),
            mb(self.bytes_kv_cache(self.context_length, KvPrecision::default())),
            self.context_length
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_is_valid_and_sized_as_named() {
        let expect_millions = [
            ("tiny", 4.0, 7.0),
            ("nano-125m", 115.0, 140.0),
            ("d20", 540.0, 580.0),
            ("7b", 7_000.0, 7_500.0),
            ("moe-25b", 23_500.0, 26_000.0),
            ("moe-80b", 78_000.0, 82_000.0),
        ];
        for (name, lo, hi) in expect_millions {
            let c = ModelConfig::preset(name).unwrap();
            let m = c.parameter_count() as f64 / 1e6;
            assert!(m > lo && m < hi, "{name}: {m}M parameters");
            assert!(c.active_parameter_count() <= c.parameter_count());
            assert!(c.describe().contains("params"));
        }
        let moe = ModelConfig::preset("moe-25b").unwrap();
        assert!(moe.active_parameter_count() * 4 < moe.parameter_count());
    }

    #[test]
    fn unknown_preset_and_bad_shapes_are_rejected() {
        assert!(matches!(
            ModelConfig::preset("huge"),
            Err(ConfigError::UnknownPreset(_))
        ));
        let good = ModelConfig::preset("tiny").unwrap();
        let cases = [
            ModelConfig {
                dim: 250,
                ..good.clone()
            },
            ModelConfig {
                n_kv_heads: 3,
                ..good.clone()
            },
            ModelConfig {
                mhc_streams: 3,
                ..good.clone()
            },
            ModelConfig {
                n_layers: 0,
                ..good.clone()
            },
            ModelConfig {
                norm_eps: 0.0,
                ..good.clone()
            },
        ];
        for bad in cases {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn nano_sizes_follow_from_the_shapes() {
        let c = ModelConfig::preset("nano-125m").unwrap();
        // 12 blocks of (2·768² + 2·256·768 + 3·768·2048) plus a 32768 × 768 ternary head.
        let per_block = 2 * 768 * 768 + 2 * 256 * 768 + 3 * 768 * 2048;
        assert_eq!(
            c.ternary_macs_per_token(),
            12 * per_block as u64 + 32768 * 768
        );
        // 2-bit codes: a quarter byte per weight, plus one f32 scale per 128.
        let ternary_bytes = c.ternary_macs_per_token() / 4 + c.ternary_macs_per_token() / 32;
        assert_eq!(
            c.bytes_gguf_tensors(2),
            ternary_bytes + 2 * 32768 * 768 + 4 * (25 * 768)
        );
        assert_eq!(
            c.bytes_kv_cache(100, KvPrecision::F16),
            2 * 12 * 100 * 256 * 2
        );
        assert_eq!(
            c.bytes_kv_cache(100, KvPrecision::F32),
            2 * c.bytes_kv_cache(100, KvPrecision::F16)
        );
    }
}
