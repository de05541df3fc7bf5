//! Causal grouped-query self-attention of the training graph as one CPU op with its own backward,
//! from the stacked q|k|v projection `[B·T, C + 2·KV]` to the attention output `[B·T, C]` (the
//! layout the output projection reads): the split into heads, RoPE on q and k, the scores, the
//! causal softmax and the weighted sum of the values. Composed from candle ops (ops.rs
//! `attention_composed`) that is some twenty nodes a layer, each allocating its output and, in
//! the backward, a zeroed gradient to add into, with the masked half of every product computed.
//!
//! Here the queries of the heads sharing a kv head are stacked into one `[G·T, D]` matrix as
//! before, and each head's rows go in blocks of [`BLOCK`] positions: a block's scores stop at its
//! last position's column, its weighted sum at that many values, the backward's products at the
//! same bounds, and the key and value gradients skip the query rows that see none of their
//! columns. Every value computed is the one the composed graph computes, bit for bit: the same
//! products through the same gemm kernels (matmul.rs), summed over k in the same order with only
//! terms that are exactly zero left out (masked probabilities and their gradients), the same
//! RoPE and softmax arithmetic (fused.rs). A test holds the two equal, values and gradients.

use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::fused::{dot, input, rope_row, with_slice};
use crate::matmul::{matmul, View};

/// Query positions per block of the causal products.
const BLOCK: usize = 64;

/// The op: shapes, and what the forward keeps for the backward.
pub(crate) struct Attention {
    batch: usize,
    time: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    saved: std::sync::Mutex<Option<Saved>>,
}

/// RoPE'd queries `[B, Hkv, G·T, D]` and keys `[B, Hkv, T, D]`, and the probabilities
/// `[B, Hkv, G·T, T]` (exact zeros where masked).
pub(crate) struct Saved {
    q: Vec<f32>,
    k: Vec<f32>,
    probs: Vec<f32>,
}

/// `[start, end)` blocks of positions `0..t`.
fn blocks(t: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..t)
        .step_by(BLOCK)
        .map(move |p0| (p0, (p0 + BLOCK).min(t)))
}

impl Attention {
    pub(crate) fn new(shape: crate::ops::AttentionShape) -> Self {
        let crate::ops::AttentionShape {
            batch,
            time,
            heads,
            kv_heads,
            head_dim,
        } = shape;
        Attention {
            batch,
            time,
            heads,
            kv_heads,
            head_dim,
            saved: std::sync::Mutex::new(None),
        }
    }

    pub(crate) fn time(&self) -> usize {
        self.time
    }

    pub(crate) fn head_dim(&self) -> usize {
        self.head_dim
    }

    fn group(&self) -> usize {
        self.heads / self.kv_heads
    }

    /// Width of a q|k|v row.
    fn width(&self) -> usize {
        (self.heads + 2 * self.kv_heads) * self.head_dim
    }

    /// Column of kv head `g`'s keys (values: `+ kv_heads · head_dim`) in a q|k|v row.
    fn key_column(&self, g: usize) -> usize {
        (self.heads + g) * self.head_dim
    }

    fn value_column(&self, g: usize) -> usize {
        (self.heads + self.kv_heads + g) * self.head_dim
    }

    /// The q (its group's heads stacked) and k of one (batch, kv head) pair `p`, RoPE'd.
    fn rope_pair(
        &self,
        qkv: &[f32],
        p: usize,
        cos: &[f32],
        sin: &[f32],
        q: &mut [f32],
        k: &mut [f32],
    ) {
        let (t, d, g) = (self.time, self.head_dim, self.group());
        let (b, kv) = (p / self.kv_heads, p % self.kv_heads);
        let w = self.width();
        let half = d / 2;
        for pos in 0..t {
            let row = &qkv[(b * t + pos) * w..][..w];
            let (c, s) = (&cos[pos * half..][..half], &sin[pos * half..][..half]);
            for j in 0..g {
                let h = kv * g + j;
                rope_row(
                    &row[h * d..][..d],
                    &mut q[(j * t + pos) * d..][..d],
                    c,
                    s,
                    1.0,
                );
            }
            let kc = self.key_column(kv);
            rope_row(&row[kc..][..d], &mut k[pos * d..][..d], c, s, 1.0);
        }
    }

    /// Refuses a q|k|v `[rows, width]` or tables (`[T, D/2]` each) that do not fit the shape.
    pub(crate) fn check(
        &self,
        qkv: (usize, usize),
        cos: (usize, usize),
        sin: (usize, usize),
    ) -> Result<()> {
        let (t, d) = (self.time, self.head_dim);
        if self.kv_heads == 0
            || self.heads % self.kv_heads != 0
            || d % 2 != 0
            || qkv != (self.batch * t, self.width())
            || cos != (t, d / 2)
            || sin != (t, d / 2)
        {
            bail!(
                "attention: q|k|v {qkv:?}, tables {cos:?} {sin:?} do not fit {} x {t} positions, {} heads, {} kv heads of {d}",
                self.batch,
                self.heads,
                self.kv_heads
            );
        }
        Ok(())
    }
}

/// `p ← softmax(scale · s)` over the first `visible` values of a row of scores, in place, as
/// fused.rs's `CausalSoftmax` computes it; `p[visible..end]` ← 0.
fn softmax_row(row: &mut [f32], visible: usize, end: usize, scale: f32) {
    let max = row[..visible]
        .iter()
        .fold(f32::NEG_INFINITY, |m, &v| m.max(v * scale));
    let mut sum = 0.0f32;
    for p in &mut row[..visible] {
        *p = (*p * scale - max).exp();
        sum += *p;
    }
    let inv = 1.0 / sum;
    row[..visible].iter_mut().for_each(|p| *p *= inv);
    row[visible..end].fill(0.0);
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "causal-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.check(
            l1.shape().dims2()?,
            l2.shape().dims2()?,
            l3.shape().dims2()?,
        )?;
        let qkv = input::<f32>(s1, l1, "attention")?;
        let cos = input::<f32>(s2, l2, "attention")?;
        let sin = input::<f32>(s3, l3, "attention")?;
        let (out, saved) = self.forward(qkv, cos, sin);
        *self.saved.lock().unwrap_or_else(|e| e.into_inner()) = Some(saved);
        let rows = self.batch * self.time;
        Ok((
            CpuStorage::F32(out),
            Shape::from((rows, self.heads * self.head_dim)),
        ))
    }

    fn bwd(
        &self,
        qkv: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let saved = self.saved.lock().unwrap_or_else(|e| e.into_inner()).take();
        let saved = match saved {
            Some(s) => s,
            // A second backward through the same graph: run the forward again for its values.
            None => {
                qkv.contiguous()?.apply_op3_no_bwd(cos, sin, self)?;
                self.saved
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take()
                    .expect("the forward keeps its values")
            }
        };
        let dqkv = with_slice(qkv, |qkv: &[f32]| {
            with_slice(cos, |cos: &[f32]| {
                with_slice(sin, |sin: &[f32]| {
                    with_slice(grad, |grad: &[f32]| {
                        self.backward(qkv, cos, sin, grad, &saved)
                    })
                })
            })
        })?????;
        Ok((
            Some(Tensor::from_vec(dqkv, qkv.shape(), qkv.device())?),
            None,
            None,
        ))
    }
}

impl Attention {
    /// The output `[B·T, C]` of q|k|v `[B·T, C + 2·KV]` (checked by the caller) with RoPE tables
    /// `[T, D/2]`, and what the backward needs.
    pub(crate) fn forward(&self, qkv: &[f32], cos: &[f32], sin: &[f32]) -> (Vec<f32>, Saved) {
        let (t, d, g, w) = (self.time, self.head_dim, self.group(), self.width());
        let pairs = self.batch * self.kv_heads;
        let scale = 1.0 / (d as f32).sqrt();
        let mut q = vec![0.0f32; pairs * g * t * d];
        let mut k = vec![0.0f32; pairs * t * d];
        let mut probs = vec![0.0f32; pairs * g * t * t];
        // Per head: [T, D] of the weighted sums, in the stacked order of q.
        let mut o = vec![0.0f32; pairs * g * t * d];
        q.par_chunks_mut(g * t * d)
            .zip(k.par_chunks_mut(t * d))
            .zip(
                probs
                    .par_chunks_mut(g * t * t)
                    .zip(o.par_chunks_mut(g * t * d)),
            )
            .enumerate()
            .for_each(|(p, ((q, k), (probs, o)))| {
                self.rope_pair(qkv, p, cos, sin, q, k);
                let b = p / self.kv_heads;
                let v = &qkv[b * t * w + self.value_column(p % self.kv_heads)..];
                for j in 0..g {
                    let (q, probs, o) = (
                        &q[j * t * d..][..t * d],
                        &mut probs[j * t * t..][..t * t],
                        &mut o[j * t * d..][..t * d],
                    );
                    for (p0, p1) in blocks(t) {
                        let scores = &mut probs[p0 * t..];
                        matmul(
                            scores,
                            t,
                            View::rows(&q[p0 * d..], p1 - p0, d, d),
                            View::rows(k, p1, d, d).t(),
                            false,
                            false,
                        );
                        for (i, row) in scores.chunks_mut(t).take(p1 - p0).enumerate() {
                            softmax_row(row, p0 + i + 1, p1, scale);
                        }
                        matmul(
                            &mut o[p0 * d..],
                            d,
                            View::rows(&probs[p0 * t..], p1 - p0, p1, t),
                            View::rows(v, p1, d, w),
                            false,
                            false,
                        );
                    }
                }
            });
        // out[b·T + pos, h·D ..] = o of head h at pos.
        let c = self.heads * d;
        let mut out = vec![0.0f32; self.batch * t * c];
        out.par_chunks_mut(c).enumerate().for_each(|(row, out)| {
            let (b, pos) = (row / t, row % t);
            for (h, out) in out.chunks_mut(d).enumerate() {
                let p = b * self.kv_heads + h / g;
                out.copy_from_slice(&o[((p * g + h % g) * t + pos) * d..][..d]);
            }
        });
        (out, Saved { q, k, probs })
    }

    /// The gradient of q|k|v, as the composed graph computes it.
    pub(crate) fn backward(
        &self,
        qkv: &[f32],
        cos: &[f32],
        sin: &[f32],
        grad: &[f32],
        saved: &Saved,
    ) -> Result<Vec<f32>> {
        let (t, d, g, w) = (self.time, self.head_dim, self.group(), self.width());
        let (c, pairs) = (self.heads * d, self.batch * self.kv_heads);
        let scale = 1.0 / (d as f32).sqrt();
        if grad.len() != self.batch * t * c {
            bail!(
                "attention: gradient of {} values, the output has {}",
                grad.len(),
                self.batch * t * c
            );
        }
        let half = d / 2;
        // Per pair: dq [G·T, D], dk [T, D], dv [T, D] (RoPE'd back), then scattered into q|k|v.
        let mut dq = vec![0.0f32; pairs * g * t * d];
        let mut dk = vec![0.0f32; pairs * t * d];
        let mut dv = vec![0.0f32; pairs * t * d];
        dq.par_chunks_mut(g * t * d)
            .zip(dk.par_chunks_mut(t * d).zip(dv.par_chunks_mut(t * d)))
            .enumerate()
            .for_each(|(p, (dq, (dk, dv)))| {
                let (b, kv) = (p / self.kv_heads, p % self.kv_heads);
                let q = &saved.q[p * g * t * d..][..g * t * d];
                let k = &saved.k[p * t * d..][..t * d];
                let probs = &saved.probs[p * g * t * t..][..g * t * t];
                let v = &qkv[b * t * w + self.value_column(kv)..];
                // The output gradient of the pair's heads, stacked as q.
                let mut d_out = vec![0.0f32; g * t * d];
                for (r, row) in d_out.chunks_mut(d).enumerate() {
                    let (j, pos) = (r / t, r % t);
                    row.copy_from_slice(&grad[(b * t + pos) * c + (kv * g + j) * d..][..d]);
                }
                // Score gradients: exact zeros where masked (the key and value products below
                // sum over them).
                let mut ds = vec![0.0f32; g * t * t];
                for j in 0..g {
                    let rows = j * t;
                    for (p0, p1) in blocks(t) {
                        let block = &mut ds[(rows + p0) * t..];
                        matmul(
                            block,
                            t,
                            View::rows(&d_out[(rows + p0) * d..], p1 - p0, d, d),
                            View::rows(v, p1, d, w).t(),
                            false,
                            false,
                        );
                        // ds = scale · p · (dp − Σ p·dp) over the visible columns.
                        for (i, row) in block.chunks_mut(t).take(p1 - p0).enumerate() {
                            let visible = p0 + i + 1;
                            let p = &probs[(rows + p0 + i) * t..][..visible];
                            let dot = dot(p, &row[..visible]);
                            for (x, &p) in row[..visible].iter_mut().zip(p) {
                                *x = scale * p * (*x - dot);
                            }
                            row[visible..p1].fill(0.0);
                        }
                        // dq = ds · k over the block's visible keys.
                        matmul(
                            &mut dq[(rows + p0) * d..],
                            d,
                            View::rows(&ds[(rows + p0) * t..], p1 - p0, p1, t),
                            View::rows(k, p1, d, d),
                            false,
                            false,
                        );
                    }
                }
                // dk = dsᵀ · q and dv = pᵀ · d_out, each over the stacked query rows from the
                // block's first key on (the rows before it see none of the block's keys).
                for (k0, k1) in blocks(t) {
                    let span = g * t - k0;
                    matmul(
                        &mut dk[k0 * d..],
                        d,
                        View::new(&ds[k0 * t + k0..], k1 - k0, span, 1, t),
                        View::rows(&q[k0 * d..], span, d, d),
                        false,
                        false,
                    );
                    matmul(
                        &mut dv[k0 * d..],
                        d,
                        View::new(&probs[k0 * t + k0..], k1 - k0, span, 1, t),
                        View::rows(&d_out[k0 * d..], span, d, d),
                        false,
                        false,
                    );
                }
                // RoPE's backward: the inverse rotation.
                let mut back = vec![0.0f32; d];
                for (r, row) in dq.chunks_mut(d).enumerate() {
                    let pos = r % t;
                    back.copy_from_slice(row);
                    rope_row(
                        &back,
                        row,
                        &cos[pos * half..][..half],
                        &sin[pos * half..][..half],
                        -1.0,
                    );
                }
                for (pos, row) in dk.chunks_mut(d).enumerate() {
                    back.copy_from_slice(row);
                    rope_row(
                        &back,
                        row,
                        &cos[pos * half..][..half],
                        &sin[pos * half..][..half],
                        -1.0,
                    );
                }
            });
        let mut dqkv = vec![0.0f32; self.batch * t * w];
        dqkv.par_chunks_mut(w).enumerate().for_each(|(row, out)| {
            let (b, pos) = (row / t, row % t);
            for h in 0..self.heads {
                let p = b * self.kv_heads + h / g;
                out[h * d..][..d].copy_from_slice(&dq[((p * g + h % g) * t + pos) * d..][..d]);
            }
            for kv in 0..self.kv_heads {
                let p = b * self.kv_heads + kv;
                out[self.key_column(kv)..][..d].copy_from_slice(&dk[(p * t + pos) * d..][..d]);
                out[self.value_column(kv)..][..d].copy_from_slice(&dv[(p * t + pos) * d..][..d]);
            }
        });
        Ok(dqkv)
    }
}
