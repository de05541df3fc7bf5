//! The inference model and its forward pass over a batch of sequences.
//!
//! Shapes: R = rows of the batch (tokens of every sequence, in order), C = dim, n = residual
//! streams, KV = kv_dim, F = ffn_dim, V = vocab. Per block l, with u = the sub-layer input
//! (mHC `prepare_input` of the streams, or the residual itself when n = 1):
//! ```text
//!   h = rmsnorm(u) · attn_norm           q|k|v = BitLinear_qkv(h)     rope(q, k) at each row's position
//!   a = softmax(q·kᵀ/√d, causal) · v     (grouped-query: head i reads kv head i / (heads/kv_heads))
//!   o = BitLinear_o(a)                   streams = mHC apply(streams, o)   (or x = x + o)
//!   h = rmsnorm(u) · ffn_norm            g|up = BitLinear_gate_up(h)
//!   d = BitLinear_down(silu(g) · up)     streams = mHC apply(streams, d)   (or x = x + d)
//! ```
//! Variants (`ModelConfig::variant`): the gated activation `relu(g)² · up` instead of SwiGLU,
//! and "sub-layer norms" (BitNet b1.58): `o = BitLinear_o(rmsnorm(a) · attn_sub_norm)` and
//! `d = BitLinear_down(rmsnorm(act) · ffn_sub_norm)`. The LM head may also be a dense
//! matrix (models imported from elsewhere), applied to the unquantized `h`.
//! then collapse (mean of the streams), rmsnorm · output_norm, and the LM head (a ternary
//! BitLinear, or the embedding table when tied: its f32, f16, bf16 or Q8_0 rows times the
//! unquantized `h`, Q8_0 dots in q8.rs's order). BitLinear(x) = ternary GEMM of the absmax-int8
//! quantized rows of x (libs/ternary's numerics). q, k, v share one fused weight (rows stacked in
//! that order), as do gate and up: the activation is quantized once and every output row is the
//! same as with separate weights.
//!
//! RMSNorm: `y_j = x_j · (1 / sqrt(mean(x²) + eps)) · w_j`. RoPE (rotate-half pairs (i, i + d/2)):
//! `θ_i = pos · theta^(−2i/d)`, `(x_i, x_{i+d/2}) → (x_i cos θ − x_{i+d/2} sin θ, x_i sin θ +
//! x_{i+d/2} cos θ)`. SiLU: `g / (1 + e^(−g))`. The training graph (libs/train) follows this text.

use half::f16;
use rayon::prelude::*;
use ternary::{Kernel, PlanarWeights, QuantizedBatch};

use crate::attention::{attend, dot, GroupView};
use crate::config::{FfnActivation, ModelConfig};
use crate::kv::KvCache;
use crate::q8::Q8Table;
use crate::vmath::{relu2_rows, swiglu_rows};

/// A `[V, C]` table as the file stores it (full precision, or ggml's 8-bit Q8_0 blocks): the
/// token embedding, or a dense LM head.
pub enum Embedding {
    F32(Vec<f32>),
    F16(Vec<f16>),
    Bf16(Vec<half::bf16>),
    Q8_0(Q8Table),
}

impl Embedding {
    /// Row `token` as f32 (16-bit tables widened with the CPU's conversion instructions, Q8_0
    /// rows dequantized: all exact).
    fn row_into(&self, token: usize, dim: usize, out: &mut [f32]) {
        use half::slice::HalfFloatSliceExt;
        let range = token * dim..(token + 1) * dim;
        match self {
            Embedding::F32(v) => out.copy_from_slice(&v[range]),
            Embedding::F16(v) => crate::vmath::widen_f16(&v[range], out),
            Embedding::Bf16(v) => v[range].convert_to_f32_slice(out),
            Embedding::Q8_0(table) => table.row_into(token, out),
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        match self {
            Embedding::F32(v) => 4 * v.len(),
            Embedding::F16(v) => 2 * v.len(),
            Embedding::Bf16(v) => 2 * v.len(),
            Embedding::Q8_0(table) => table.bytes(),
        }
    }

    /// `logits[b·V + t] = Σ_j h[b, j] · E[t, j]` for every token t and each row b of `h`
    /// (`[B, C]`): the tied or dense LM head (Q8_0 in the summation order q8.rs defines).
    /// Decoding streams the whole table every step, so each table row is read once for all B
    /// rows, in parallel chunks of rows.
    fn logits(&self, h: &[f32], dim: usize, logits: &mut [f32]) {
        const CHUNK: usize = 256;
        let batch = h.len() / dim;
        let vocab = logits.len() / batch.max(1);
        let chunks: Vec<Vec<f32>> = (0..vocab.div_ceil(CHUNK))
            .into_par_iter()
            .map(|chunk| {
                let tokens = chunk * CHUNK..((chunk + 1) * CHUNK).min(vocab);
                let mut out = Vec::with_capacity(tokens.len() * batch);
                if let Embedding::Q8_0(table) = self {
                    // Tiles of four rows, with one vector or two at a time (q8.rs).
                    table.dots(tokens, h, &mut out);
                    return out;
                }
                let mut row = vec![0.0f32; dim];
                for token in tokens {
                    match self {
                        // f16 (the usual table): widened in registers, not through memory, for
                        // two vectors at a time.
                        Embedding::F16(table) => {
                            let row = &table[token * dim..(token + 1) * dim];
                            let mut vectors = h.chunks_exact(dim);
                            while let Some(first) = vectors.next() {
                                match vectors.next() {
                                    Some(second) => {
                                        let (a, b) = crate::vmath::dot_f16_pair(row, first, second);
                                        out.extend([a, b]);
                                    }
                                    None => out.push(crate::vmath::dot_f16(row, first)),
                                }
                            }
                        }
                        _ => {
                            self.row_into(token, dim, &mut row);
                            let dots = h
                                .chunks_exact(dim)
                                .map(|hb| crate::vmath::dot_fma(&row, hb));
                            out.extend(dots);
                        }
                    }
                }
                out
            })
            .collect();
        for (chunk, values) in chunks.iter().enumerate() {
            for (i, row) in values.chunks_exact(batch).enumerate() {
                for (b, &value) in row.iter().enumerate() {
                    logits[b * vocab + chunk * CHUNK + i] = value;
                }
            }
        }
    }
}

/// One transformer block's weights.
pub struct Block {
    pub attn_norm: Vec<f32>,
    /// `[C + 2·KV, C]`: q rows, then k rows, then v rows.
    pub qkv: PlanarWeights,
    /// `[C, C]`.
    pub attn_output: PlanarWeights,
    pub ffn_norm: Vec<f32>,
    /// `[2·F, C]`: gate rows, then up rows.
    pub gate_up: PlanarWeights,
    /// `[C, F]`.
    pub ffn_down: PlanarWeights,
    /// The sub-layer norms' gains (`[C]` and `[F]`), when the variant has them.
    pub sub_norms: Option<SubNorms>,
}

/// BitNet's norms inside the sub-layers: on the attention output and on the gated FFN hidden.
pub struct SubNorms {
    pub attn: Vec<f32>,
    pub ffn: Vec<f32>,
}

/// The LM head.
pub enum Head {
    Ternary(PlanarWeights),
    /// Tied to the embedding (full precision).
    Tied,
    /// Its own full-precision `[V, C]` matrix.
    Dense(Embedding),
}

/// A loaded model, ready to run.
pub struct Model {
    pub config: ModelConfig,
    pub embedding: Embedding,
    pub blocks: Vec<Block>,
    pub output_norm: Vec<f32>,
    pub head: Head,
    /// Two per block (attention, FFN); empty for plain residuals.
    pub mixings: Vec<mhc::Mixing>,
    pub kernel: Kernel,
}

/// One sequence's part of a batch: its cache, the new tokens, and which logits it wants back.
pub struct SeqInput<'a> {
    pub cache: &'a mut KvCache,
    pub tokens: &'a [u32],
    pub logits: Logits,
}

/// Which rows' logits a sequence wants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    None,
    Last,
    All,
}

/// Scratch buffers of one batch.
struct Scratch {
    /// `[R, n·C]` residual streams (n = 1: the residual itself).
    streams: Vec<f32>,
    /// `[R, C]` sub-layer input, then its normalized form.
    u: Vec<f32>,
    h: Vec<f32>,
    /// `[R, C + 2·KV]`.
    qkv: Vec<f32>,
    /// `[R, C]`.
    attn: Vec<f32>,
    out: Vec<f32>,
    /// `[R, 2·F]` and `[R, F]`.
    gate_up: Vec<f32>,
    act: Vec<f32>,
    /// The quantized input of the next matrix product: `[R, C]` or `[R, F]`.
    q_dim: QuantizedBatch,
    q_ffn: QuantizedBatch,
}

/// Batches of at least this many rows split their per-row work (norms, mHC mixing, RoPE, SwiGLU,
/// quantization; the engine's sampling, per sequence) over the pool's threads; for fewer the
/// split costs more than it saves.
const PARALLEL_MIN_ROWS: usize = 4;

/// Rows per task of the per-row work: all of them on this thread below [`PARALLEL_MIN_ROWS`] or
/// on a one-thread pool, else an even share per thread.
pub(crate) fn rows_per_task(rows: usize) -> usize {
    let threads = rayon::current_num_threads();
    if rows < PARALLEL_MIN_ROWS || threads == 1 {
        rows.max(1)
    } else {
        rows.div_ceil(threads)
    }
}

impl Model {
    /// Runs the new tokens of every sequence through the model, appending them to the caches, and
    /// returns for each sequence the logits it asked for (`[rows, V]` row-major; empty for
    /// `Logits::None`).
    ///
    /// # Panics
    /// If a token is outside the vocabulary or a sequence would exceed the context (the engine
    /// checks both before calling).
    pub fn forward(&self, batch: &mut [SeqInput<'_>]) -> Vec<Vec<f32>> {
        crate::hot::with_hot_workers(|| self.forward_pass(batch))
    }

    /// [`Self::forward`] on the calling thread, its parallel regions on the current pool.
    fn forward_pass(&self, batch: &mut [SeqInput<'_>]) -> Vec<Vec<f32>> {
        let cfg = &self.config;
        let (c, kv, f) = (cfg.dim, cfg.kv_dim(), cfg.ffn_dim);
        let n = cfg.mhc_streams;
        // Row r of the batch belongs to sequence seq_of[r] at position pos_of[r].
        let mut seq_of = Vec::new();
        let mut pos_of = Vec::new();
        for (s, input) in batch.iter().enumerate() {
            let start = input.cache.len();
            assert!(
                start + input.tokens.len() <= cfg.context_length,
                "sequence {s} would exceed the context of {}",
                cfg.context_length
            );
            for i in 0..input.tokens.len() {
                seq_of.push(s);
                pos_of.push(start + i);
            }
        }
        let rows = seq_of.len();
        if rows == 0 {
            return batch.iter().map(|_| Vec::new()).collect();
        }
        let mut x = vec![0.0f32; rows * c];
        for (row, token) in x
            .chunks_exact_mut(c)
            .zip(batch.iter().flat_map(|b| b.tokens.iter()))
        {
            let token = *token as usize;
            assert!(
                token < cfg.vocab_size,
                "token {token} outside the vocabulary"
            );
            self.embedding.row_into(token, c, row);
        }
        let mut s = Scratch {
            streams: vec![0.0; rows * n * c],
            u: vec![0.0; rows * c],
            h: vec![0.0; rows * c],
            qkv: vec![0.0; rows * (c + 2 * kv)],
            attn: vec![0.0; rows * c],
            out: vec![0.0; rows * c],
            gate_up: vec![0.0; rows * 2 * f],
            act: vec![0.0; rows * f],
            q_dim: QuantizedBatch::zeroed(rows, c),
            q_ffn: QuantizedBatch::zeroed(rows, f),
        };
        let per_task = rows_per_task(rows);
        match self.config.streams() {
            Some(ns) => mhc::expand(ns, &x, c, &mut s.streams),
            None => s.streams.copy_from_slice(&x),
        }

        // RoPE angles depend on the position only: one (cos, sin) table for all layers and heads.
        let half = cfg.head_dim() / 2;
        let mut rotations = Vec::with_capacity(rows * half);
        for &pos in &pos_of {
            rotations.extend((0..half).map(|i| {
                let freq = cfg.rope_theta.powf(-2.0 * i as f32 / cfg.head_dim() as f32);
                let (sin, cos) = (pos as f32 * freq).sin_cos();
                (cos, sin)
            }));
        }

        for (l, block) in self.blocks.iter().enumerate() {
            // Attention (after the previous block's FFN output is added).
            let previous = l.checked_sub(1).map(|p| 2 * p + 1);
            self.enter_sublayer(previous, 2 * l, &block.attn_norm, per_task, &mut s);
            self.gemm(&block.qkv, &s.q_dim, &mut s.qkv);
            s.qkv
                .par_chunks_exact_mut(c + 2 * kv)
                .zip(rotations.par_chunks_exact(half))
                .with_min_len(per_task)
                .for_each(|(row, rot)| {
                    let (q, rest) = row.split_at_mut(c);
                    rope(q, rot);
                    rope(&mut rest[..kv], rot);
                });
            let mut row = 0;
            for input in batch.iter_mut() {
                for _ in input.tokens {
                    let qkv = &s.qkv[row * (c + 2 * kv)..(row + 1) * (c + 2 * kv)];
                    input
                        .cache
                        .push(l, &qkv[c..c + kv], &qkv[c + kv..c + 2 * kv]);
                    row += 1;
                }
            }
            self.attention(l, batch, &seq_of, &pos_of, &s.qkv, &mut s.attn);
            if let Some(norms) = &block.sub_norms {
                normalize_rows_in_place(&mut s.attn, &norms.attn, cfg.norm_eps, per_task);
            }
            self.gemm(
                &block.attn_output,
                &QuantizedBatch::quantize(&s.attn, c),
                &mut s.out,
            );

            // Feed-forward (after the attention output is added).
            self.enter_sublayer(Some(2 * l), 2 * l + 1, &block.ffn_norm, per_task, &mut s);
            self.gemm(&block.gate_up, &s.q_dim, &mut s.gate_up);
            let activation = cfg.variant.ffn_activation;
            let sub_norm = block.sub_norms.as_ref().map(|n| n.ffn.as_slice());
            s.gate_up
                .par_chunks_exact(2 * f)
                .zip(s.act.par_chunks_exact_mut(f))
                .zip(s.q_ffn.rows_mut())
                .with_min_len(per_task)
                .for_each(|((gate_up, act), slot)| {
                    match activation {
                        FfnActivation::Swiglu => swiglu_rows(gate_up, f, act),
                        FfnActivation::Relu2 => relu2_rows(gate_up, f, act),
                    }
                    if let Some(norm) = sub_norm {
                        rmsnorm_in_place(act, norm, cfg.norm_eps);
                    }
                    slot.quantize(act);
                });
            self.gemm(&block.ffn_down, &s.q_ffn, &mut s.out);
        }
        // The last block's FFN output.
        let last = 2 * self.blocks.len() - 1;
        s.streams
            .par_chunks_exact_mut(n * c)
            .zip(s.out.par_chunks_exact(c))
            .with_min_len(per_task)
            .for_each(|(streams, out)| self.residual_update(last, streams, out));
        for input in batch.iter_mut() {
            input.cache.commit(input.tokens.len());
        }

        match self.config.streams() {
            Some(ns) => mhc::collapse(ns, &s.streams, c, &mut x),
            None => x.copy_from_slice(&s.streams),
        }
        // Rows whose logits are wanted.
        let mut wanted = Vec::new();
        let mut first = 0;
        for input in batch.iter() {
            let t = input.tokens.len();
            match input.logits {
                Logits::None => {}
                Logits::Last if t > 0 => wanted.push(first + t - 1),
                Logits::Last => {}
                Logits::All => wanted.extend(first..first + t),
            }
            first += t;
        }
        let mut h = vec![0.0f32; wanted.len() * c];
        for (out, &r) in h.chunks_exact_mut(c).zip(&wanted) {
            out.copy_from_slice(&x[r * c..(r + 1) * c]);
        }
        let mut normed = vec![0.0f32; h.len()];
        rmsnorm_rows(&h, &self.output_norm, cfg.norm_eps, &mut normed);
        let v = cfg.vocab_size;
        let mut logits = vec![0.0f32; wanted.len() * v];
        if !wanted.is_empty() {
            match &self.head {
                Head::Ternary(w) => {
                    self.gemm(w, &QuantizedBatch::quantize(&normed, c), &mut logits)
                }
                Head::Tied => self.embedding.logits(&normed, c, &mut logits),
                Head::Dense(table) => table.logits(&normed, c, &mut logits),
            }
        }
        // Split back per sequence.
        let mut result = Vec::with_capacity(batch.len());
        let mut next = logits.chunks_exact(v);
        for input in batch.iter() {
            let count = match input.logits {
                Logits::None => 0,
                Logits::Last => usize::from(!input.tokens.is_empty()),
                Logits::All => input.tokens.len(),
            };
            let mut seq = Vec::with_capacity(count * v);
            for _ in 0..count {
                seq.extend_from_slice(next.next().expect("one logits row per wanted row"));
            }
            result.push(seq);
        }
        result
    }

    /// Bytes of a full-precision LM head (the tied embedding or a dense table) that one token's
    /// logits read; 0 for a ternary head (counted by [`Self::ternary_weight_bytes`]).
    pub fn head_table_bytes(&self) -> usize {
        match &self.head {
            Head::Ternary(_) => 0,
            Head::Tied => self.embedding.bytes(),
            Head::Dense(table) => table.bytes(),
        }
    }

    /// Bytes of planar codes and scales that one token's ternary matrix products read: every
    /// block's matrices and a ternary LM head (what decoding streams from memory per token).
    pub fn ternary_weight_bytes(&self) -> usize {
        let bytes = |w: &PlanarWeights| w.codes().len() + std::mem::size_of_val(w.scales());
        let blocks: usize = self
            .blocks
            .iter()
            .map(|b| bytes(&b.qkv) + bytes(&b.attn_output) + bytes(&b.gate_up) + bytes(&b.ffn_down))
            .sum();
        blocks
            + match &self.head {
                Head::Ternary(w) => bytes(w),
                Head::Tied | Head::Dense(_) => 0,
            }
    }

    /// Every row's way into sub-layer `module` (0, 1 for block 0's attention and FFN, ...):
    /// the output `s.out` of sub-layer `previous` added into its residual streams, the
    /// sub-layer input `u` taken from them, normalized by `norm`, quantized into `s.q_dim`. Rows
    /// are independent, so they run in parallel tasks of `per_task` rows.
    fn enter_sublayer(
        &self,
        previous: Option<usize>,
        module: usize,
        norm: &[f32],
        per_task: usize,
        s: &mut Scratch,
    ) {
        let (c, n) = (self.config.dim, self.config.mhc_streams);
        s.streams
            .par_chunks_exact_mut(n * c)
            .zip(s.out.par_chunks_exact(c))
            .zip(s.u.par_chunks_exact_mut(c))
            .zip(s.h.par_chunks_exact_mut(c))
            .zip(s.q_dim.rows_mut())
            .with_min_len(per_task)
            .for_each(|((((streams, out), u), h), slot)| {
                if let Some(previous) = previous {
                    self.residual_update(previous, streams, out);
                }
                match self.mixings.get(module) {
                    Some(m) => m.prepare_input(streams, c, u),
                    None => u.copy_from_slice(streams),
                }
                rmsnorm_rows(u, norm, self.config.norm_eps, h);
                slot.quantize(h);
            });
    }

    /// Adds sub-layer `module`'s output `out` into the residual streams of the same rows.
    fn residual_update(&self, module: usize, streams: &mut [f32], out: &[f32]) {
        match self.mixings.get(module) {
            Some(m) => m.apply(streams, out, self.config.dim),
            None => {
                for (x, &o) in streams.iter_mut().zip(out) {
                    *x += o;
                }
            }
        }
    }

    /// `y = W · q` for every quantized row of `q`, into `y` (`[R, W.rows]`).
    fn gemm(&self, w: &PlanarWeights, q: &QuantizedBatch, y: &mut [f32]) {
        let result = if rayon::current_num_threads() > 1 {
            ternary::kernels::par_gemm(self.kernel, w, q, y)
        } else {
            ternary::kernels::gemm(self.kernel, w, q, y)
        };
        result.expect("weights and buffers are shaped by the config");
    }

    /// Causal grouped-query attention of every row against its sequence's cache (which already
    /// holds the row's own key and value), into `out` (`[R, C]`).
    fn attention(
        &self,
        layer: usize,
        batch: &[SeqInput<'_>],
        seq_of: &[usize],
        pos_of: &[usize],
        qkv: &[f32],
        out: &mut [f32],
    ) {
        let cfg = &self.config;
        let (c, kv, d) = (cfg.dim, cfg.kv_dim(), cfg.head_dim());
        let group = cfg.n_heads / cfg.n_kv_heads;
        let scale = 1.0 / (d as f32).sqrt();
        let kv_heads = cfg.n_kv_heads;
        // One task per (row, key/value head): the query heads sharing a key/value head are
        // adjacent, so one task brings that head's keys and values into cache for all of them,
        // and a single decoding sequence still splits across threads.
        let work = |(task, out_group): (usize, &mut [f32])| {
            let (r, kv_head) = (task / kv_heads, task % kv_heads);
            let cache = &batch[seq_of[r]].cache;
            let len = pos_of[r] + 1;
            let q_row = &qkv[r * (c + 2 * kv)..r * (c + 2 * kv) + c];
            let queries = &q_row[kv_head * group * d..(kv_head + 1) * group * d];
            let mut weights = vec![0.0f32; group * len];
            let view = GroupView {
                queries,
                head_dim: d,
                cache: cache.layer(layer, len),
                stride: kv,
                offset: kv_head * d,
                scale,
            };
            attend(&view, &mut weights, out_group);
        };
        // Parallel once there is enough work to pay for the split: with the pool's workers kept
        // hot, from about 21 positions of one sequence (nano-125m).
        let total: usize = pos_of.iter().map(|p| p + 1).sum::<usize>() * c;
        if total >= 1 << 14 && rayon::current_num_threads() > 1 {
            out.par_chunks_exact_mut(group * d)
                .enumerate()
                .for_each(work);
        } else {
            out.chunks_exact_mut(group * d).enumerate().for_each(work);
        }
    }
}

/// RMSNorm of every row of `x` (`[R, C]`, C = weight.len()) into `out`.
fn rmsnorm_rows(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let c = weight.len();
    for (xr, or) in x.chunks_exact(c).zip(out.chunks_exact_mut(c)) {
        // Eight running sums (dot's), not one chain of dependent adds.
        let mean_sq = dot(xr, xr) / c as f32;
        let inv = 1.0 / (mean_sq + eps).sqrt();
        for ((o, &v), &w) in or.iter_mut().zip(xr).zip(weight) {
            *o = v * inv * w;
        }
    }
}

/// RMSNorm of every row of `x` (rows of `weight.len()` values) in place, rows in parallel tasks
/// of `per_task`.
fn normalize_rows_in_place(x: &mut [f32], weight: &[f32], eps: f32, per_task: usize) {
    x.par_chunks_exact_mut(weight.len())
        .with_min_len(per_task)
        .for_each(|row| rmsnorm_in_place(row, weight, eps));
}

/// [`rmsnorm_rows`] of one row, in place: the same operations, so the same bits.
fn rmsnorm_in_place(row: &mut [f32], weight: &[f32], eps: f32) {
    let inv = 1.0 / (dot(row, row) / row.len() as f32 + eps).sqrt();
    for (v, &w) in row.iter_mut().zip(weight) {
        *v = *v * inv * w;
    }
}

/// Rotary position embedding of every head of `x` (heads of `2 · rotations.len()` channels), with
/// the `(cos θ_i, sin θ_i)` of the row's position.
fn rope(x: &mut [f32], rotations: &[(f32, f32)]) {
    let half = rotations.len();
    for head in x.chunks_exact_mut(2 * half) {
        let (lo, hi) = head.split_at_mut(half);
        for ((a, b), &(cos, sin)) in lo.iter_mut().zip(hi.iter_mut()).zip(rotations) {
            let (x0, x1) = (*a, *b);
            *a = x0 * cos - x1 * sin;
            *b = x0 * sin + x1 * cos;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rmsnorm_of_a_constant_row_is_the_weight() {
        let mut out = [0.0; 4];
        rmsnorm_rows(&[3.0; 4], &[1.0, 2.0, 0.5, -1.0], 0.0, &mut out);
        assert_eq!(out, [1.0, 2.0, 0.5, -1.0]);
    }

    #[test]
    fn rope_keeps_norms_and_is_identity_at_position_zero() {
        let x: Vec<f32> = (0..16).map(|i| i as f32 - 7.5).collect();
        let mut y = x.clone();
        rope(&mut y, &[(1.0, 0.0); 4]);
        assert_eq!(x, y);
        let angles: Vec<(f32, f32)> = (0..4)
            .map(|i| {
                let (sin, cos) = (37.0 * 10_000f32.powf(-2.0 * i as f32 / 8.0)).sin_cos();
                (cos, sin)
            })
            .collect();
        rope(&mut y, &angles);
        for (hx, hy) in x.chunks(8).zip(y.chunks(8)) {
            let n = |v: &[f32]| v.iter().map(|a| a * a).sum::<f32>();
            assert!((n(hx) - n(hy)).abs() < 1e-3);
        }
        assert_ne!(x, y);
    }
}
