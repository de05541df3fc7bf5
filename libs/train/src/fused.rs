//! CPU kernels of the training graph's hot operations, each one candle custom op with its own
//! backward: one pass over memory where the composed candle version (ops.rs `reference`) makes
//! five to ten, each allocating a tensor, with the rows spread over the rayon pool.
//!
//! Determinism: every reduction across rows (the gradients of norm weights and mHC matrices, the
//! mean loss) sums fixed blocks of rows into partials that are then added in block order, so the
//! result does not depend on how rayon split the work and a resumed run stays bit-identical.

use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Storage, Tensor,
    WithDType,
};
use rayon::prelude::*;

use crate::matmul::{matmul, View};
use crate::ops::IGNORED_TARGET;

/// Rows per block of a deterministic cross-row reduction.
const REDUCE_ROWS: usize = 64;

/// The elements of a contiguous input of a custom op.
pub(crate) fn input<'a, T: WithDType>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &str,
) -> Result<&'a [T]> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        bail!("{op}: the input must be contiguous");
    };
    Ok(&storage.as_slice::<T>()?[start..end])
}

/// Runs `f` on the elements of `t` in row-major order: straight from the CPU storage when
/// contiguous, through a copy otherwise.
pub(crate) fn with_slice<T: WithDType, R>(t: &Tensor, f: impl FnOnce(&[T]) -> R) -> Result<R> {
    {
        let (storage, layout) = t.storage_and_layout();
        if let (Storage::Cpu(cpu), Some((start, end))) = (&*storage, layout.contiguous_offsets()) {
            return Ok(f(&cpu.as_slice::<T>()?[start..end]));
        }
    }
    let values = t.flatten_all()?.to_vec1::<T>()?;
    Ok(f(&values))
}

fn tensor_like(values: Vec<f32>, like: &Tensor) -> Result<Tensor> {
    Tensor::from_vec(values, like.shape(), like.device())
}

/// Adds the per-block partial sums in block order.
fn sum_partials(partials: Vec<Vec<f32>>, len: usize) -> Vec<f32> {
    let mut total = vec![0.0f32; len];
    for part in partials {
        total.iter_mut().zip(&part).for_each(|(t, p)| *t += p);
    }
    total
}

/// `Σ a·b` with eight independent partial sums (vectorizes; a fixed order, so deterministic).
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

fn last_dim(layout: &Layout) -> Result<usize> {
    match layout.dims().last() {
        Some(&d) if d > 0 => Ok(d),
        _ => bail!("fused op: empty last dimension"),
    }
}

/// BitLinear `y = Q_act(x) · Q_w(w)ᵀ` for `x` `[N, K]` and `w` `[M, K]` in one node: the
/// fake-quantization of both operands (skipped by the full-precision ablation) and the matmul,
/// through [`Linear`]. The backward is the straight-through one, `dx = g · Q_w(w)` and
/// `dw = gᵀ · Q_act(x)`, each produced by one matmul in its final layout (no transposed
/// gradient copies, no separate estimator nodes to accumulate through). The quantized operands
/// of the forward are kept for the backward (computed again only for a second backward).
pub(crate) struct BitLinear {
    quantize: bool,
    saved: std::sync::Mutex<Option<Operands>>,
}

/// One BitLinear product on host slices: `y = Q_act(x) · Q_w(w)ᵀ` for `x` `[n, k]` and `w`
/// `[m, k]` (with `quantize`; `x · wᵀ` without), and its straight-through backward. The products
/// are the ones candle's matmul computes for the same operands (crate::matmul), bit for bit.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Linear {
    pub n: usize,
    pub k: usize,
    pub m: usize,
    pub quantize: bool,
}

/// The operands a [`Linear`] forward multiplied: quantized copies, or `None` where they are the
/// inputs themselves (full precision).
#[derive(Default)]
pub(crate) struct Operands {
    x: Option<Vec<f32>>,
    w: Option<Vec<f32>>,
}

impl Linear {
    fn check(&self, x: &[f32], w: &[f32]) -> Result<()> {
        if x.len() != self.n * self.k || w.len() != self.m * self.k {
            bail!(
                "bitlinear: {} inputs and {} weights for [{}, {}] x [{}, {}]ᵀ",
                x.len(),
                w.len(),
                self.n,
                self.k,
                self.m,
                self.k
            );
        }
        Ok(())
    }

    fn operands(&self, x: &[f32], w: &[f32]) -> Operands {
        Operands {
            x: self
                .quantize
                .then(|| map_rows(x, self.k, ternary::quant::fake_quantize_activation_row)),
            w: self
                .quantize
                .then(|| map_rows(w, self.k, ternary::quant::fake_quantize_weight_row)),
        }
    }

    /// `y` `[n, m]` and the operands it was multiplied from.
    pub(crate) fn forward(&self, x: &[f32], w: &[f32]) -> Result<(Vec<f32>, Operands)> {
        self.check(x, w)?;
        let (n, k, m) = (self.n, self.k, self.m);
        let ops = self.operands(x, w);
        let mut y = vec![0.0f32; n * m];
        matmul(
            &mut y,
            m,
            View::rows(ops.x.as_deref().unwrap_or(x), n, k, k),
            View::rows(ops.w.as_deref().unwrap_or(w), m, k, k).t(),
            false,
            true,
        );
        Ok((y, ops))
    }

    /// `(dx, dw)` of the output gradient `g` `[n, m]`: `g · Q_w(w)` and `gᵀ · Q_act(x)`, with the
    /// forward's operands (computed again from `x` and `w` when `None`).
    pub(crate) fn backward(
        &self,
        g: &[f32],
        x: &[f32],
        w: &[f32],
        ops: Option<Operands>,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let ops = match ops {
            Some(ops) => ops,
            None => {
                self.check(x, w)?;
                self.operands(x, w)
            }
        };
        self.backward_with(g, x, w, ops)
    }

    /// [`Self::backward`] with the forward's operands; `x` and `w` are read only where an
    /// operand is the input itself (full precision), so a caller holding the quantized operands
    /// may pass empty slices for the inputs.
    pub(crate) fn backward_with(
        &self,
        g: &[f32],
        x: &[f32],
        w: &[f32],
        ops: Operands,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let (n, k, m) = (self.n, self.k, self.m);
        let x = ops.x.as_deref().unwrap_or(x);
        let w = ops.w.as_deref().unwrap_or(w);
        self.check(x, w)?;
        if g.len() != n * m {
            bail!("bitlinear: a gradient of {} values for [{n}, {m}]", g.len());
        }
        let gv = View::rows(g, n, m, m);
        let mut dx = vec![0.0f32; n * k];
        matmul(&mut dx, k, gv, View::rows(w, m, k, k), false, true);
        let mut dw = vec![0.0f32; m * k];
        matmul(&mut dw, k, gv.t(), View::rows(x, n, k, k), false, true);
        Ok((dx, dw))
    }
}

/// The rows of `x` (width `cols`) through `row`, in parallel.
fn map_rows(x: &[f32], cols: usize, row: fn(&[f32], &mut [f32])) -> Vec<f32> {
    let mut out = vec![0.0f32; x.len()];
    out.par_chunks_mut(cols)
        .zip(x.par_chunks(cols))
        .for_each(|(o, r)| row(r, o));
    out
}

impl BitLinear {
    pub(crate) fn new(quantize: bool) -> Self {
        BitLinear {
            quantize,
            saved: std::sync::Mutex::new(None),
        }
    }
}

impl CustomOp2 for BitLinear {
    fn name(&self) -> &'static str {
        "bitlinear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = input::<f32>(s1, l1, "bitlinear")?;
        let w = input::<f32>(s2, l2, "bitlinear")?;
        let (n, k) = l1.shape().dims2()?;
        let (m, k2) = l2.shape().dims2()?;
        if k != k2 {
            bail!("bitlinear: x is [{n}, {k}], w is [{m}, {k2}]");
        }
        let linear = Linear {
            n,
            k,
            m,
            quantize: self.quantize,
        };
        let (y, ops) = linear.forward(x, w)?;
        *self.saved.lock().unwrap_or_else(|e| e.into_inner()) = Some(ops);
        Ok((CpuStorage::F32(y), Shape::from((n, m))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let ops = self.saved.lock().unwrap_or_else(|e| e.into_inner()).take();
        let (n, k) = x.dims2()?;
        let linear = Linear {
            n,
            k,
            m: w.dim(0)?,
            quantize: self.quantize,
        };
        let (dx, dw) = with_slice(x, |xv: &[f32]| {
            with_slice(w, |wv: &[f32]| {
                with_slice(grad, |g: &[f32]| linear.backward(g, xv, wv, ops))
            })
        })????;
        Ok((Some(tensor_like(dx, x)?), Some(tensor_like(dw, w)?)))
    }
}

/// RMSNorm of `x` `[.., C]` with weight `[C]`: `y = x · w / sqrt(mean(x²) + eps)`.
pub(crate) struct RmsNorm {
    pub eps: f32,
}

fn inv_rms(row: &[f32], eps: f32) -> f32 {
    let mean_sq = row.iter().map(|v| v * v).sum::<f32>() / row.len() as f32;
    1.0 / (mean_sq + eps).sqrt()
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = input::<f32>(s1, l1, "rms-norm")?;
        let w = input::<f32>(s2, l2, "rms-norm")?;
        let c = w.len();
        if last_dim(l1)? != c {
            bail!("rms-norm: x has {} channels, the weight {c}", last_dim(l1)?);
        }
        let mut out = vec![0.0f32; x.len()];
        out.par_chunks_mut(c)
            .zip(x.par_chunks(c))
            .for_each(|(o, row)| {
                let r = inv_rms(row, self.eps);
                for ((o, &v), &w) in o.iter_mut().zip(row).zip(w) {
                    *o = v * r * w;
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    /// `dx_j = r·g_j·w_j − x_j·r³·(Σ_k g_k·w_k·x_k)/C`, `dw_j = Σ_rows g_j·x_j·r`.
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw) = with_slice(x, |x: &[f32]| {
            with_slice(w, |w: &[f32]| {
                with_slice(grad, |g: &[f32]| {
                    let c = w.len();
                    let mut dx = vec![0.0f32; x.len()];
                    let block = REDUCE_ROWS * c;
                    let partials: Vec<Vec<f32>> = dx
                        .par_chunks_mut(block)
                        .zip(x.par_chunks(block).zip(g.par_chunks(block)))
                        .map(|(dx, (x, g))| {
                            let mut dw = vec![0.0f32; c];
                            for ((dx, x), g) in dx.chunks_mut(c).zip(x.chunks(c)).zip(g.chunks(c)) {
                                let r = inv_rms(x, self.eps);
                                let dot: f32 =
                                    g.iter().zip(w).zip(x).map(|((g, w), x)| g * w * x).sum();
                                let k = r * r * r * dot / c as f32;
                                for j in 0..c {
                                    dx[j] = r * g[j] * w[j] - x[j] * k;
                                    dw[j] += g[j] * x[j] * r;
                                }
                            }
                            dw
                        })
                        .collect();
                    (dx, sum_partials(partials, c))
                })
            })
        })???;
        Ok((Some(tensor_like(dx, x)?), Some(tensor_like(dw, w)?)))
    }
}

/// SwiGLU of `[N, 2F]` (gate then up): `[N, F]` of `silu(g) · u`.
pub(crate) struct Swiglu;

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// `silu(g) · u` of every row of `x` `[n, 2f]` (gate then up): `[n, f]`.
pub(crate) fn swiglu_forward(x: &[f32], f: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; x.len() / 2];
    out.par_chunks_mut(f)
        .zip(x.par_chunks(2 * f))
        .for_each(|(o, row)| {
            let (gate, up) = row.split_at(f);
            for ((o, &g), &u) in o.iter_mut().zip(gate).zip(up) {
                // silu written as g / (1 + e^(−g)), as libs/model and candle write it.
                *o = g / (1.0 + (-g).exp()) * u;
            }
        });
    out
}

/// The gradient `[n, 2f]` of [`swiglu_forward`]'s input `x` for the output gradient `dh`
/// `[n, f]`: `dg = dh·u·σ(g)·(1 + g·(1 − σ(g)))`, `du = dh·g·σ(g)`.
pub(crate) fn swiglu_backward(x: &[f32], dh: &[f32], f: usize) -> Vec<f32> {
    let mut d = vec![0.0f32; x.len()];
    d.par_chunks_mut(2 * f)
        .zip(x.par_chunks(2 * f).zip(dh.par_chunks(f)))
        .for_each(|(d, (row, dh))| {
            let (gate, up) = row.split_at(f);
            let (dg, du) = d.split_at_mut(f);
            for j in 0..f {
                let s = sigmoid(gate[j]);
                dg[j] = dh[j] * up[j] * s * (1.0 + gate[j] * (1.0 - s));
                du[j] = dh[j] * gate[j] * s;
            }
        });
    d
}

impl CustomOp1 for Swiglu {
    fn name(&self) -> &'static str {
        "swiglu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = input::<f32>(storage, layout, "swiglu")?;
        let (n, two_f) = layout.shape().dims2()?;
        if two_f % 2 != 0 {
            bail!("swiglu: odd width {two_f}");
        }
        let out = swiglu_forward(x, two_f / 2);
        Ok((CpuStorage::F32(out), Shape::from((n, two_f / 2))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let f = arg.dim(1)? / 2;
        let d = with_slice(arg, |x: &[f32]| {
            with_slice(grad, |g: &[f32]| swiglu_backward(x, g, f))
        })??;
        Ok(Some(tensor_like(d, arg)?))
    }
}

/// Causal softmax of attention scores `[.., R, T]` whose row r holds the query at position
/// `r mod T` (grouped heads stack their queries along R): `p_j = softmax_j(scale · s_j)` over
/// `j ≤ position`, 0 beyond.
pub(crate) struct CausalSoftmax {
    pub scale: f32,
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "causal-softmax"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let s = input::<f32>(storage, layout, "causal-softmax")?;
        let t = last_dim(layout)?;
        let mut out = vec![0.0f32; s.len()];
        out.par_chunks_mut(t)
            .zip(s.par_chunks(t))
            .enumerate()
            .for_each(|(row, (p, s))| {
                let visible = row % t + 1;
                let max = s[..visible]
                    .iter()
                    .fold(f32::NEG_INFINITY, |m, &v| m.max(v * self.scale));
                let mut sum = 0.0f32;
                for (p, &v) in p[..visible].iter_mut().zip(s) {
                    *p = (v * self.scale - max).exp();
                    sum += *p;
                }
                let inv = 1.0 / sum;
                p[..visible].iter_mut().for_each(|p| *p *= inv);
            });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    /// `ds_j = scale · p_j · (g_j − Σ_k g_k · p_k)`.
    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let t = res.dim(candle_core::D::Minus1)?;
        let d = with_slice(res, |p: &[f32]| {
            with_slice(grad, |g: &[f32]| {
                let mut d = vec![0.0f32; p.len()];
                d.par_chunks_mut(t)
                    .zip(p.par_chunks(t).zip(g.par_chunks(t)))
                    .enumerate()
                    .for_each(|(row, (d, (p, g)))| {
                        let visible = row % t + 1;
                        let dot = dot(&p[..visible], &g[..visible]);
                        for j in 0..visible {
                            d[j] = self.scale * p[j] * (g[j] - dot);
                        }
                    });
                d
            })
        })??;
        Ok(Some(tensor_like(d, res)?))
    }
}

/// Rotate-half RoPE of one head's vector `x` (`D` values) at a position with tables `cos`, `sin`
/// (`D/2` values): `(x_i, x_{i+D/2}) → (x_i c − x_{i+D/2} s, x_i s + x_{i+D/2} c)` with
/// `s = sign · sin` (`sign` −1: the inverse rotation, RoPE's backward).
pub(crate) fn rope_row(x: &[f32], out: &mut [f32], cos: &[f32], sin: &[f32], sign: f32) {
    let half = cos.len();
    let (lo, hi) = x.split_at(half);
    let (o_lo, o_hi) = out.split_at_mut(half);
    for i in 0..half {
        let s = sign * sin[i];
        o_lo[i] = lo[i] * cos[i] - hi[i] * s;
        o_hi[i] = lo[i] * s + hi[i] * cos[i];
    }
}

/// Rotate-half RoPE of `x` `[B, H, T, D]` with tables `cos`, `sin` `[T, D/2]` (`inverse`
/// rotates by −θ: the backward of the forward rotation).
pub(crate) struct Rope {
    pub inverse: bool,
}

impl CustomOp3 for Rope {
    fn name(&self) -> &'static str {
        "rope"
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
        let x = input::<f32>(s1, l1, "rope")?;
        let cos = input::<f32>(s2, l2, "rope")?;
        let sin = input::<f32>(s3, l3, "rope")?;
        let (_, _, t, d) = l1.shape().dims4()?;
        let half = d / 2;
        if d % 2 != 0 || l2.shape().dims2()? != (t, half) || l3.shape().dims2()? != (t, half) {
            bail!("rope: tables do not fit x {:?}", l1.dims());
        }
        let sign = if self.inverse { -1.0 } else { 1.0 };
        let mut out = vec![0.0f32; x.len()];
        out.par_chunks_mut(d)
            .zip(x.par_chunks(d))
            .enumerate()
            .for_each(|(row, (o, x))| {
                let pos = row % t;
                rope_row(
                    x,
                    o,
                    &cos[pos * half..][..half],
                    &sin[pos * half..][..half],
                    sign,
                );
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let inverse = Rope {
            inverse: !self.inverse,
        };
        let dx = grad.contiguous()?.apply_op3_no_bwd(cos, sin, &inverse)?;
        Ok((Some(dx), None, None))
    }
}

/// mHC `prepare_input`: streams `[R, n, C]` and `h_pre` `[n]` → `[R, C]` of `Σ_s h_pre[s]·x[s]`.
pub(crate) struct MhcPrepare;

impl CustomOp2 for MhcPrepare {
    fn name(&self) -> &'static str {
        "mhc-prepare"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = input::<f32>(s1, l1, "mhc-prepare")?;
        let h = input::<f32>(s2, l2, "mhc-prepare")?;
        let (rows, n, c) = l1.shape().dims3()?;
        if h.len() != n {
            bail!("mhc-prepare: {n} streams, {} weights", h.len());
        }
        let mut out = vec![0.0f32; rows * c];
        out.par_chunks_mut(c)
            .zip(x.par_chunks(n * c))
            .for_each(|(o, x)| {
                for (s, stream) in x.chunks(c).enumerate() {
                    o.iter_mut().zip(stream).for_each(|(o, v)| *o += h[s] * v);
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((rows, c))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        h: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (_, n, c) = x.dims3()?;
        let (dx, dh) = with_slice(x, |x: &[f32]| {
            with_slice(h, |h: &[f32]| {
                with_slice(grad, |g: &[f32]| {
                    let mut dx = vec![0.0f32; x.len()];
                    let partials: Vec<Vec<f32>> = dx
                        .par_chunks_mut(REDUCE_ROWS * n * c)
                        .zip(x.par_chunks(REDUCE_ROWS * n * c))
                        .zip(g.par_chunks(REDUCE_ROWS * c))
                        .map(|((dx, x), g)| {
                            let mut dh = vec![0.0f32; n];
                            for ((dx, x), g) in
                                dx.chunks_mut(n * c).zip(x.chunks(n * c)).zip(g.chunks(c))
                            {
                                for s in 0..n {
                                    let dxs = &mut dx[s * c..][..c];
                                    dxs.iter_mut().zip(g).for_each(|(d, &g)| *d = h[s] * g);
                                    dh[s] += dot(g, &x[s * c..][..c]);
                                }
                            }
                            dh
                        })
                        .collect();
                    (dx, sum_partials(partials, n))
                })
            })
        })???;
        Ok((Some(tensor_like(dx, x)?), Some(tensor_like(dh, h)?)))
    }
}

/// mHC `apply`: streams `x` `[R, n, C]`, sub-layer output `y` `[R, C]` and `mix` `[n, n + 1]`
/// (H_res beside h_post as the last column) → `x'[r, i] = Σ_s H_res[i, s]·x[r, s] + h_post[i]·y[r]`.
pub(crate) struct MhcApply;

impl CustomOp3 for MhcApply {
    fn name(&self) -> &'static str {
        "mhc-apply"
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
        let x = input::<f32>(s1, l1, "mhc-apply")?;
        let y = input::<f32>(s2, l2, "mhc-apply")?;
        let mix = input::<f32>(s3, l3, "mhc-apply")?;
        let (rows, n, c) = l1.shape().dims3()?;
        if l2.shape().dims2()? != (rows, c) || l3.shape().dims2()? != (n, n + 1) {
            bail!(
                "mhc-apply: shapes {:?} {:?} {:?}",
                l1.dims(),
                l2.dims(),
                l3.dims()
            );
        }
        let mut out = vec![0.0f32; x.len()];
        out.par_chunks_mut(n * c)
            .zip(x.par_chunks(n * c).zip(y.par_chunks(c)))
            .for_each(|(o, (x, y))| {
                // Stream by stream over whole rows (vectorizes); per element the sum keeps
                // libs/mhc's order: H[i,0]·x0 + H[i,1]·x1 + … + h_post[i]·y.
                for (i, o) in o.chunks_mut(c).enumerate() {
                    let m = &mix[i * (n + 1)..][..n + 1];
                    o.iter_mut().zip(&x[..c]).for_each(|(o, &v)| *o = m[0] * v);
                    for s in 1..n {
                        let xs = &x[s * c..][..c];
                        o.iter_mut().zip(xs).for_each(|(o, &v)| *o += m[s] * v);
                    }
                    o.iter_mut().zip(y).for_each(|(o, &v)| *o += m[n] * v);
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        y: &Tensor,
        mix: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (_, n, c) = x.dims3()?;
        let w = n + 1;
        let (dx, dy, dmix) = with_slice(x, |x: &[f32]| {
            with_slice(y, |y: &[f32]| {
                with_slice(mix, |mix: &[f32]| {
                    with_slice(grad, |g: &[f32]| {
                        let mut dx = vec![0.0f32; x.len()];
                        let mut dy = vec![0.0f32; y.len()];
                        let partials: Vec<Vec<f32>> = dx
                            .par_chunks_mut(REDUCE_ROWS * n * c)
                            .zip(dy.par_chunks_mut(REDUCE_ROWS * c))
                            .zip(x.par_chunks(REDUCE_ROWS * n * c))
                            .zip(y.par_chunks(REDUCE_ROWS * c))
                            .zip(g.par_chunks(REDUCE_ROWS * n * c))
                            .map(|((((dx, dy), x), y), g)| {
                                let mut dm = vec![0.0f32; n * w];
                                let rows = dx
                                    .chunks_mut(n * c)
                                    .zip(dy.chunks_mut(c))
                                    .zip(x.chunks(n * c).zip(y.chunks(c)))
                                    .zip(g.chunks(n * c));
                                for (((dx, dy), (x, y)), g) in rows {
                                    for i in 0..n {
                                        let gi = &g[i * c..][..c];
                                        let m = &mix[i * w..][..w];
                                        for s in 0..n {
                                            let dxs = &mut dx[s * c..][..c];
                                            dxs.iter_mut()
                                                .zip(gi)
                                                .for_each(|(d, &g)| *d += m[s] * g);
                                            dm[i * w + s] += dot(gi, &x[s * c..][..c]);
                                        }
                                        dy.iter_mut().zip(gi).for_each(|(d, &g)| *d += m[n] * g);
                                        dm[i * w + n] += dot(gi, y);
                                    }
                                }
                                dm
                            })
                            .collect();
                        (dx, dy, sum_partials(partials, n * w))
                    })
                })
            })
        })????;
        Ok((
            Some(tensor_like(dx, x)?),
            Some(tensor_like(dy, y)?),
            Some(tensor_like(dmix, mix)?),
        ))
    }
}

/// Mean cross-entropy of `logits` `[N, V]` against `targets` `[N]` (u32) over the rows whose
/// target is not [`IGNORED_TARGET`]: a scalar. The forward keeps the softmax it computed for the
/// backward, so each logit goes through `exp` once.
#[derive(Default)]
pub(crate) struct CrossEntropy {
    probs: std::sync::Mutex<Option<Vec<f32>>>,
}

/// Rows that count in the loss.
fn scored_rows(targets: &[u32]) -> usize {
    targets.iter().filter(|&&t| t != IGNORED_TARGET).count()
}

/// Turns each row of `logits` into its softmax, in place, and returns the row's
/// `logsumexp − logit[target]` (as `softmax_row` into another buffer would).
fn softmax_row_in_place(row: &mut [f32], target: usize) -> f32 {
    let picked = row[target];
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut sum = 0.0f32;
    for p in row.iter_mut() {
        *p = (*p - max).exp();
        sum += *p;
    }
    let inv = 1.0 / sum;
    row.iter_mut().for_each(|p| *p *= inv);
    max + sum.ln() - picked
}

/// The checks and the forward of the cross-entropy: `logits` `[n, v]` become the softmax (rows of
/// ignored targets all zero: their gradient is zero), and the mean loss over the scored rows.
fn cross_entropy_forward(logits: &mut [f32], targets: &[u32], v: usize) -> Result<f32> {
    let n = targets.len();
    if n == 0 || logits.len() != n * v {
        bail!(
            "cross-entropy: {} logits of {v} for {n} targets",
            logits.len()
        );
    }
    if let Some(&bad) = targets
        .iter()
        .find(|&&t| t != IGNORED_TARGET && t as usize >= v)
    {
        bail!("cross-entropy: target {bad} outside the vocabulary of {v}");
    }
    let scored = scored_rows(targets);
    if scored == 0 {
        bail!("cross-entropy: every one of the {n} targets is ignored");
    }
    let per_row: Vec<f64> = logits
        .par_chunks_mut(v)
        .zip(targets.par_iter())
        .map(|(row, &t)| match t {
            IGNORED_TARGET => {
                row.fill(0.0);
                0.0
            }
            t => softmax_row_in_place(row, t as usize) as f64,
        })
        .collect();
    Ok((per_row.iter().sum::<f64>() / scored as f64) as f32)
}

/// The forward's softmax `probs` becomes `d logits = g / scored · (softmax − onehot(target))`,
/// zero on ignored rows, for the loss gradient `g`.
fn cross_entropy_backward(probs: &mut [f32], targets: &[u32], v: usize, g: f32) {
    let scale = g / scored_rows(targets) as f32;
    probs
        .par_chunks_mut(v)
        .zip(targets.par_iter())
        .for_each(|(d, &t)| match t {
            IGNORED_TARGET => d.fill(0.0),
            t => {
                d.iter_mut().for_each(|d| *d *= scale);
                d[t as usize] -= scale;
            }
        });
}

impl CustomOp2 for CrossEntropy {
    fn name(&self) -> &'static str {
        "cross-entropy"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let logits = input::<f32>(s1, l1, "cross-entropy")?;
        let targets = input::<u32>(s2, l2, "cross-entropy")?;
        let (_, v) = l1.shape().dims2()?;
        let mut probs = logits.to_vec();
        let mean = cross_entropy_forward(&mut probs, targets, v)?;
        *self.probs.lock().unwrap_or_else(|e| e.into_inner()) = Some(probs);
        Ok((CpuStorage::F32(vec![mean]), Shape::from(())))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let v = logits.dim(1)?;
        let g = grad.to_scalar::<f32>()?;
        let kept = self.probs.lock().unwrap_or_else(|e| e.into_inner()).take();
        let d = with_slice(targets, |t: &[u32]| -> Result<Vec<f32>> {
            let mut d = match kept {
                Some(probs) => probs,
                // A second backward through the same graph: compute the softmax again.
                None => {
                    let mut p = with_slice(logits, <[f32]>::to_vec)?;
                    cross_entropy_forward(&mut p, t, v)?;
                    p
                }
            };
            cross_entropy_backward(&mut d, t, v, g);
            Ok(d)
        })??;
        Ok((Some(tensor_like(d, logits)?), None))
    }
}

/// The LM head and the loss in one node: the mean cross-entropy of the logits
/// `Q_act(x) · Q_w(w)ᵀ` (a [`Linear`] `[N, C] × [V, C]ᵀ`) against `targets` `[N]`, as a
/// [`BitLinear`] node followed by a [`CrossEntropy`] node computes it, bit for bit (tested),
/// without the logits (`[N, V]`, 32 MiB for the tiny model) as a candle tensor: its softmax is
/// computed in place and becomes the logits' gradient in place, which goes straight into the
/// product's backward.
pub(crate) struct HeadCrossEntropy {
    quantize: bool,
    saved: std::sync::Mutex<Option<(Vec<f32>, Operands)>>,
}

impl HeadCrossEntropy {
    pub(crate) fn new(quantize: bool) -> Self {
        HeadCrossEntropy {
            quantize,
            saved: std::sync::Mutex::new(None),
        }
    }

    fn linear(&self, x: &[usize], w: &[usize]) -> Result<Linear> {
        match (x, w) {
            ([n, c], [v, c2]) if c == c2 => Ok(Linear {
                n: *n,
                k: *c,
                m: *v,
                quantize: self.quantize,
            }),
            _ => bail!("head cross-entropy: x {x:?}, w {w:?}"),
        }
    }
}

impl CustomOp3 for HeadCrossEntropy {
    fn name(&self) -> &'static str {
        "head-cross-entropy"
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
        let linear = self.linear(l1.dims(), l2.dims())?;
        let x = input::<f32>(s1, l1, "head cross-entropy")?;
        let w = input::<f32>(s2, l2, "head cross-entropy")?;
        let targets = input::<u32>(s3, l3, "head cross-entropy")?;
        if targets.len() != linear.n {
            bail!(
                "head cross-entropy: {} rows, {} targets",
                linear.n,
                targets.len()
            );
        }
        let (mut probs, ops) = linear.forward(x, w)?;
        let mean = cross_entropy_forward(&mut probs, targets, linear.m)?;
        *self.saved.lock().unwrap_or_else(|e| e.into_inner()) = Some((probs, ops));
        Ok((CpuStorage::F32(vec![mean]), Shape::from(())))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        targets: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let linear = self.linear(x.dims(), w.dims())?;
        let g = grad.to_scalar::<f32>()?;
        let saved = self.saved.lock().unwrap_or_else(|e| e.into_inner()).take();
        let (dx, dw) = with_slice(x, |xv: &[f32]| {
            with_slice(w, |wv: &[f32]| {
                with_slice(targets, |t: &[u32]| -> Result<_> {
                    let (mut d, ops) = match saved {
                        Some(kept) => kept,
                        // A second backward through the same graph: the forward again.
                        None => {
                            let (mut p, ops) = linear.forward(xv, wv)?;
                            cross_entropy_forward(&mut p, t, linear.m)?;
                            (p, ops)
                        }
                    };
                    cross_entropy_backward(&mut d, t, linear.m, g);
                    linear.backward_with(&d, xv, wv, ops)
                })
            })
        })????;
        Ok((Some(tensor_like(dx, x)?), Some(tensor_like(dw, w)?), None))
    }
}
