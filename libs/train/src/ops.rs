//! The operations of the training graph, each differentiable, with the forward values of
//! libs/model's inference forward (model.rs) and the quantizers of libs/ternary.
//!
//! Shapes: B = batch, H = query heads, Hkv = key/value heads, T = time, D = head dim, C = channels.
//! Every tensor is f32 on the CPU.
//!
//! Straight-through estimators: [`ternary_ste`] and [`int8_act_ste`] return the fake-quantized
//! values in the forward pass and pass the gradient through unchanged (BitNet b1.58's detach trick
//! `x + (Q(x) − x).detach()`).

use candle_core::{DType, Device, Result, Tensor};

use crate::fused;

/// Ternary weight fake-quantization per row of the last dimension, groups of 128 along it
/// (`q · s`, libs/ternary `fake_quantize_weight_row`); gradient passed straight through. The CPU
/// graph gets this inside [`bitlinear`]'s fused node; this composed form is the other devices'
/// path and the definition that node is tested against.
pub fn ternary_ste(w: &Tensor) -> Result<Tensor> {
    reference::straight_through(w, ternary::quant::fake_quantize_weight_row)
}

/// Per-row (last dimension) absmax int8 fake-quantization of activations (`x_q · a/127`,
/// libs/ternary `fake_quantize_activation_row`); gradient passed straight through (composed, as
/// [`ternary_ste`]).
pub fn int8_act_ste(x: &Tensor) -> Result<Tensor> {
    reference::straight_through(x, ternary::quant::fake_quantize_activation_row)
}

/// BitLinear `x · Wᵀ` for `x` `[N, K]` and `w` `[M, K]`: with `quantize`, the weight through the
/// ternary estimator and the activation through the int8 estimator (the gradient passes straight
/// through both); without, a plain full-precision linear layer (the ablation).
pub fn bitlinear(x: &Tensor, w: &Tensor, quantize: bool) -> Result<Tensor> {
    if x.device().is_cpu() {
        x.contiguous()?
            .apply_op2(&w.contiguous()?, fused::BitLinear::new(quantize))
    } else if quantize {
        int8_act_ste(x)?.matmul(&ternary_ste(w)?.t()?)
    } else {
        x.matmul(&w.t()?)
    }
}

/// RMSNorm over the last dimension: `y_j = x_j · (1 / sqrt(mean(x²) + eps)) · w_j`; `w` is `[C]`.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
    if x.device().is_cpu() {
        x.contiguous()?
            .apply_op2(&w.contiguous()?, fused::RmsNorm { eps })
    } else {
        reference::rms_norm(x, w, eps)
    }
}

/// SwiGLU of the gate and up projections side by side, `[N, 2F]` → `[N, F]`: `silu(g) · u` with
/// `silu(g) = g / (1 + e^(−g))`.
pub fn swiglu(gate_up: &Tensor) -> Result<Tensor> {
    if gate_up.device().is_cpu() {
        gate_up.contiguous()?.apply_op1(fused::Swiglu)
    } else {
        reference::swiglu(gate_up)
    }
}

/// The RoPE tables `(cos, sin)`, each `[T, D/2]`, of positions `0..t`:
/// `θ_i = pos · theta^(−2i/D)` computed in f32 exactly as libs/model does.
pub fn rope_tables(
    t: usize,
    head_dim: usize,
    theta: f32,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let half = head_dim / 2;
    let mut cos = Vec::with_capacity(t * half);
    let mut sin = Vec::with_capacity(t * half);
    for pos in 0..t {
        for i in 0..half {
            let freq = theta.powf(-2.0 * i as f32 / head_dim as f32);
            let (s, c) = (pos as f32 * freq).sin_cos();
            cos.push(c);
            sin.push(s);
        }
    }
    Ok((
        Tensor::from_vec(cos, (t, half), device)?,
        Tensor::from_vec(sin, (t, half), device)?,
    ))
}

/// Rotate-half RoPE of `x` `[B, H, T, D]` with tables `[T, D/2]`:
/// `(x_i, x_{i+D/2}) → (x_i cos θ − x_{i+D/2} sin θ, x_i sin θ + x_{i+D/2} cos θ)`.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() {
        x.contiguous()?
            .apply_op3(cos, sin, fused::Rope { inverse: false })
    } else {
        reference::rope(x, cos, sin)
    }
}

/// Causal softmax attention with grouped-query heads: `q` `[B, H, T, D]`, `k` and `v`
/// `[B, Hkv, T, D]` (query head h reads kv head `h / (H / Hkv)`); returns `[B, H, T, D]`.
/// `softmax(q·kᵀ/√D + causal mask) · v`. The queries of the heads that share a kv head are
/// stacked into one `[group · T, D]` matrix, so keys and values are never repeated.
pub fn causal_attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    let (b, h, t, d) = q.dims4()?;
    let h_kv = k.dim(1)?;
    let group = h / h_kv;
    let q = q.contiguous()?.reshape((b, h_kv, group * t, d))?;
    let scale = 1.0 / (d as f32).sqrt();
    let scores = q.matmul(&k.t()?)?;
    let probs = if q.device().is_cpu() {
        scores.apply_op1(fused::CausalSoftmax { scale })?
    } else {
        reference::causal_softmax(&scores, t, scale)?
    };
    probs.matmul(v)?.reshape((b, h, t, d))
}

/// The shape of one attention call: batch, time, query heads, key/value heads, head dim.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionShape {
    pub batch: usize,
    pub time: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

/// Causal self-attention from the stacked projection `qkv` `[B·T, C + 2·KV]` (q of every head,
/// then k, then v, heads in order): RoPE on q and k with tables `[T, D/2]`, then
/// [`causal_attention`]; returns `[B·T, C]`, row `b·T + t` holding head h's output at columns
/// `h·D..(h+1)·D`. One fused node on the CPU (attention.rs), [`attention_composed`] elsewhere:
/// the same values, bit for bit (tested).
pub fn attention(
    qkv: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    shape: AttentionShape,
) -> Result<Tensor> {
    if qkv.device().is_cpu() {
        let op = crate::attention::Attention::new(shape);
        qkv.contiguous()?
            .apply_op3(&cos.contiguous()?, &sin.contiguous()?, op)
    } else {
        attention_composed(qkv, cos, sin, shape)
    }
}

/// [`attention`] composed of candle ops and this module's RoPE and attention.
pub fn attention_composed(
    qkv: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    shape: AttentionShape,
) -> Result<Tensor> {
    let AttentionShape {
        batch: b,
        time: t,
        heads: h,
        kv_heads: h_kv,
        head_dim: d,
    } = shape;
    let (c, kv) = (h * d, h_kv * d);
    let heads = |x: Tensor, count: usize| -> Result<Tensor> {
        x.reshape((b, t, count, d))?.transpose(1, 2)?.contiguous()
    };
    let q = heads(qkv.narrow(1, 0, c)?, h)?;
    let k = heads(qkv.narrow(1, c, kv)?, h_kv)?;
    let v = heads(qkv.narrow(1, c + kv, kv)?, h_kv)?;
    let q = rope(&q, cos, sin)?;
    let k = rope(&k, cos, sin)?;
    causal_attention(&q, &k, &v)?
        .transpose(1, 2)?
        .reshape((b * t, c))
}

/// The attention sub-layer between its norm and its residual update:
/// `BitLinear_o(attention(BitLinear_qkv(h)))` for `h` `[B·T, C]`, the stacked q|k|v weights
/// `w_qkv` `[C + 2·KV, C]` and `w_o` `[C, C]` (with `quantize`, ternary weights and int8
/// activations straight through, as [`bitlinear`]). One node on the CPU (sublayer.rs),
/// [`attention_sublayer_composed`] elsewhere: the same values, bit for bit (tested).
pub fn attention_sublayer(
    h: &Tensor,
    w_qkv: &Tensor,
    w_o: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    shape: AttentionShape,
    quantize: bool,
) -> Result<Tensor> {
    if h.device().is_cpu() {
        let attention = crate::attention::Attention::new(shape);
        let op = crate::sublayer::AttentionSublayer::new(
            attention,
            to_f32_vec(cos)?,
            to_f32_vec(sin)?,
            quantize,
        );
        h.contiguous()?
            .apply_op3(&w_qkv.contiguous()?, &w_o.contiguous()?, op)
    } else {
        attention_sublayer_composed(h, w_qkv, w_o, cos, sin, shape, quantize)
    }
}

/// [`attention_sublayer`] as three nodes: [`bitlinear`], [`attention`], [`bitlinear`].
pub fn attention_sublayer_composed(
    h: &Tensor,
    w_qkv: &Tensor,
    w_o: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    shape: AttentionShape,
    quantize: bool,
) -> Result<Tensor> {
    let qkv = bitlinear(h, w_qkv, quantize)?;
    bitlinear(&attention(&qkv, cos, sin, shape)?, w_o, quantize)
}

/// The feed-forward sub-layer between its norm and its residual update:
/// `BitLinear_down(swiglu(BitLinear_gate|up(h)))` for `h` `[N, C]`, the stacked gate and up
/// weights `w_gate_up` `[2F, C]` and `w_down` `[C, F]`. One node on the CPU (sublayer.rs),
/// [`ffn_sublayer_composed`] elsewhere: the same values, bit for bit (tested).
pub fn ffn_sublayer(
    h: &Tensor,
    w_gate_up: &Tensor,
    w_down: &Tensor,
    quantize: bool,
) -> Result<Tensor> {
    if h.device().is_cpu() {
        h.contiguous()?.apply_op3(
            &w_gate_up.contiguous()?,
            &w_down.contiguous()?,
            crate::sublayer::FfnSublayer::new(quantize),
        )
    } else {
        ffn_sublayer_composed(h, w_gate_up, w_down, quantize)
    }
}

/// [`ffn_sublayer`] as three nodes: [`bitlinear`], [`swiglu`], [`bitlinear`].
pub fn ffn_sublayer_composed(
    h: &Tensor,
    w_gate_up: &Tensor,
    w_down: &Tensor,
    quantize: bool,
) -> Result<Tensor> {
    bitlinear(
        &swiglu(&bitlinear(h, w_gate_up, quantize)?)?,
        w_down,
        quantize,
    )
}

/// mHC `prepare_input`: `u[b, j] = Σ_s h_pre[s] · x[b, s, j]` for streams `x` `[N, n, C]` and
/// `h_pre` `[n]`; returns `[N, C]` (libs/mhc `Mixing::prepare_input`).
pub fn mhc_prepare(x: &Tensor, h_pre: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() {
        x.contiguous()?
            .apply_op2(&h_pre.contiguous()?, fused::MhcPrepare)
    } else {
        reference::mhc_prepare(x, h_pre)
    }
}

/// mHC `apply`: `x'[b, i, j] = Σ_s h_res[i, s] · x[b, s, j] + h_post[i] · y[b, j]` for streams
/// `x` `[N, n, C]`, `h_res` `[n, n]`, `h_post` `[n]` and the sub-layer output `y` `[N, C]`;
/// returns the new streams `[N, n, C]` (libs/mhc `Mixing::apply`).
pub fn mhc_apply(x: &Tensor, h_res: &Tensor, h_post: &Tensor, y: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() {
        let mix = Tensor::cat(&[h_res, &h_post.unsqueeze(1)?], 1)?;
        x.contiguous()?
            .apply_op3(&y.contiguous()?, &mix, fused::MhcApply)
    } else {
        reference::mhc_apply(x, h_res, h_post, y)
    }
}

/// The target of a position that takes no part in the loss: it adds nothing to the loss or to
/// the gradient, and the mean is over the other positions (fine-tuning's prompt and padding).
pub const IGNORED_TARGET: u32 = u32::MAX;

/// Cross-entropy of `logits` `[N, V]` against `targets` `[N]` (u32), mean over the rows whose
/// target is not [`IGNORED_TARGET`] (an error when every one is).
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    if logits.device().is_cpu() {
        logits
            .contiguous()?
            .apply_op2(&targets.contiguous()?, fused::CrossEntropy::default())
    } else {
        reference::cross_entropy(logits, targets)
    }
}

/// [`cross_entropy`] of the logits `bitlinear(x, w, quantize)`: one node on the CPU
/// (fused.rs `HeadCrossEntropy`, the logits never a tensor), the two nodes elsewhere; the same
/// values bit for bit (tested).
pub fn head_cross_entropy(
    x: &Tensor,
    w: &Tensor,
    targets: &Tensor,
    quantize: bool,
) -> Result<Tensor> {
    if x.device().is_cpu() {
        x.contiguous()?.apply_op3(
            &w.contiguous()?,
            &targets.contiguous()?,
            fused::HeadCrossEntropy::new(quantize),
        )
    } else {
        cross_entropy(&bitlinear(x, w, quantize)?, targets)
    }
}

/// A tensor's values as f32 (a convenience for tests and metrics).
pub fn to_f32_vec(x: &Tensor) -> Result<Vec<f32>> {
    x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()
}

/// The same operations composed from candle's own ops: the path on other devices, and the
/// definition the fused CPU kernels are tested against (values and gradients).
mod reference {
    use candle_core::{DType, Result, Tensor, D};

    use super::IGNORED_TARGET;

    pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
        let scored = targets.ne(IGNORED_TARGET)?;
        // Ignored rows pick any valid column (0); their weight of 0 drops them.
        let picked_targets = scored.where_cond(targets, &targets.zeros_like()?)?;
        let weights = scored.to_dtype(DType::F32)?;
        let count = weights.sum_all()?.to_scalar::<f32>()?;
        if count == 0.0 {
            candle_core::bail!("cross-entropy: every target is ignored");
        }
        let log_p = candle_nn::ops::log_softmax(logits, D::Minus1)?;
        let picked = log_p.gather(&picked_targets.unsqueeze(1)?, 1)?.squeeze(1)?;
        (picked * weights)?
            .sum_all()?
            .affine(-1.0 / count as f64, 0.0)
    }

    pub fn straight_through(x: &Tensor, row: fn(&[f32], &mut [f32])) -> Result<Tensor> {
        let cols = x.dim(D::Minus1)?;
        let data = x.flatten_all()?.to_vec1::<f32>()?;
        let mut out = vec![0.0f32; data.len()];
        for (r, o) in data.chunks(cols).zip(out.chunks_mut(cols)) {
            row(r, o);
        }
        let quantized = Tensor::from_vec(out, x.shape(), x.device())?;
        x + (quantized - x)?.detach()
    }

    pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
        let inv_rms = (x.sqr()?.mean_keepdim(D::Minus1)? + eps as f64)?
            .sqrt()?
            .recip()?;
        x.broadcast_mul(&inv_rms)?.broadcast_mul(w)
    }

    pub fn swiglu(gate_up: &Tensor) -> Result<Tensor> {
        let f = gate_up.dim(D::Minus1)? / 2;
        gate_up.narrow(D::Minus1, 0, f)?.silu()? * gate_up.narrow(D::Minus1, f, f)?
    }

    pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let half = x.dim(D::Minus1)? / 2;
        let lo = x.narrow(D::Minus1, 0, half)?;
        let hi = x.narrow(D::Minus1, half, half)?;
        let new_lo = (lo.broadcast_mul(cos)? - hi.broadcast_mul(sin)?)?;
        let new_hi = (lo.broadcast_mul(sin)? + hi.broadcast_mul(cos)?)?;
        Tensor::cat(&[new_lo, new_hi], D::Minus1)
    }

    /// Scores `[.., R, T]` with row r at query position `r mod T`.
    pub fn causal_softmax(scores: &Tensor, t: usize, scale: f32) -> Result<Tensor> {
        let rows = scores.dim(D::Minus2)?;
        let mask: Vec<f32> = (0..rows)
            .flat_map(|r| (0..t).map(move |j| if j <= r % t { 0.0 } else { f32::NEG_INFINITY }))
            .collect();
        let mask = Tensor::from_vec(mask, (rows, t), scores.device())?;
        let scores = (scores * scale as f64)?.broadcast_add(&mask)?;
        let max = scores.max_keepdim(D::Minus1)?.detach();
        let exp = scores.broadcast_sub(&max)?.exp()?;
        exp.broadcast_div(&exp.sum_keepdim(D::Minus1)?)
    }

    pub fn mhc_prepare(x: &Tensor, h_pre: &Tensor) -> Result<Tensor> {
        let n = h_pre.dim(0)?;
        x.broadcast_mul(&h_pre.reshape((1, n, 1))?)?.sum(1)
    }

    pub fn mhc_apply(x: &Tensor, h_res: &Tensor, h_post: &Tensor, y: &Tensor) -> Result<Tensor> {
        let (rows, n, _) = x.dims3()?;
        let mixed = h_res.broadcast_left(rows)?.matmul(x)?;
        let written = y.unsqueeze(1)?.broadcast_mul(&h_post.reshape((1, n, 1))?)?;
        mixed + written
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    #[test]
    fn ternary_ste_forward_is_the_dequantized_weight_and_gradient_passes_through() {
        let values = ternary::synthetic::uniform_values(3 * 200, 5);
        let w = Var::from_vec(values.clone(), (3, 200), &Device::Cpu).unwrap();
        let y = ternary_ste(w.as_tensor()).unwrap();
        let got = to_f32_vec(&y).unwrap();
        let planar = ternary::PlanarWeights::from_f32(3, 200, &values).unwrap();
        for r in 0..3 {
            let row = planar.dequantize_row(r);
            for (a, b) in got[r * 200..(r + 1) * 200].iter().zip(&row) {
                assert!((a - b).abs() <= 1e-6 * b.abs().max(1.0), "{a} vs {b}");
            }
        }
        let grads = (y * 3.0).unwrap().sum_all().unwrap().backward().unwrap();
        let g = to_f32_vec(grads.get(w.as_tensor()).unwrap()).unwrap();
        assert!(g.iter().all(|&x| x == 3.0));
    }

    #[test]
    fn mhc_ops_match_libs_mhc() {
        let (rows, c) = (3, 5);
        for n in [mhc::NStreams::Two, mhc::NStreams::Four] {
            let k = n.count();
            let mixing = mhc::Mixing::from_params(&mhc::MhcParams::init(n, 1));
            let xs = ternary::synthetic::uniform_values(rows * k * c, 1);
            let ys = ternary::synthetic::uniform_values(rows * c, 2);
            let dev = Device::Cpu;
            let x = Tensor::from_vec(xs.clone(), (rows, k, c), &dev).unwrap();
            let y = Tensor::from_vec(ys.clone(), (rows, c), &dev).unwrap();
            let h_pre = Tensor::new(mixing.h_pre(), &dev).unwrap();
            let h_post = Tensor::new(mixing.h_post(), &dev).unwrap();
            let h_res = Tensor::from_slice(mixing.h_res().as_row_major(), (k, k), &dev).unwrap();

            let mut u = vec![0.0; rows * c];
            mixing.prepare_input(&xs, c, &mut u);
            close(&to_f32_vec(&mhc_prepare(&x, &h_pre).unwrap()).unwrap(), &u);

            let mut streams = xs.clone();
            mixing.apply(&mut streams, &ys, c);
            let got = mhc_apply(&x, &h_res, &h_post, &y).unwrap();
            close(&to_f32_vec(&got).unwrap(), &streams);
        }
    }

    fn close(a: &[f32], b: &[f32]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= 1e-6, "{x} vs {y}");
        }
    }

    /// Values and gradients (of `Σ out · R` for a fixed random R) of `fused` and `composed` over
    /// the same inputs agree to `tol` relative to the largest magnitude.
    fn check_against_reference(
        name: &str,
        shapes: &[&[usize]],
        fused: impl Fn(&[Tensor]) -> Tensor,
        composed: impl Fn(&[Tensor]) -> Tensor,
        tol: f32,
    ) {
        let dev = Device::Cpu;
        let vars: Vec<Var> = shapes
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let n = s.iter().product();
                let v = ternary::synthetic::uniform_values(n, 10 + i as u64);
                Var::from_vec(v, *s, &dev).unwrap()
            })
            .collect();
        let inputs: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let (a, b) = (fused(&inputs), composed(&inputs));
        assert_eq!(a.dims(), b.dims(), "{name}");
        let n = a.elem_count();
        let weights =
            Tensor::from_vec(ternary::synthetic::uniform_values(n, 99), a.shape(), &dev).unwrap();
        close_rel(
            name,
            &to_f32_vec(&a).unwrap(),
            &to_f32_vec(&b).unwrap(),
            tol,
        );
        let ga = (a * &weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let gb = (b * &weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for (i, v) in vars.iter().enumerate() {
            let x = to_f32_vec(ga.get(v.as_tensor()).expect("fused gradient")).unwrap();
            let y = to_f32_vec(gb.get(v.as_tensor()).expect("composed gradient")).unwrap();
            close_rel(&format!("{name}: gradient of input {i}"), &x, &y, tol);
        }
    }

    fn close_rel(name: &str, a: &[f32], b: &[f32], tol: f32) {
        assert_eq!(a.len(), b.len(), "{name}");
        let scale = b.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= tol * scale,
                "{name}[{i}]: {x} vs {y} (scale {scale})"
            );
        }
    }

    #[test]
    fn fused_kernels_match_the_composed_ops_in_value_and_gradient() {
        let tol = 1e-5;
        check_against_reference(
            "rms_norm",
            &[&[6, 40], &[40]],
            |t| rms_norm(&t[0], &t[1], 1e-5).unwrap(),
            |t| reference::rms_norm(&t[0], &t[1], 1e-5).unwrap(),
            tol,
        );
        check_against_reference(
            "swiglu",
            &[&[5, 24]],
            |t| swiglu(&t[0]).unwrap(),
            |t| reference::swiglu(&t[0]).unwrap(),
            tol,
        );
        let (cos, sin) = rope_tables(7, 8, 10_000.0, &Device::Cpu).unwrap();
        check_against_reference(
            "rope",
            &[&[2, 3, 7, 8]],
            |t| rope(&t[0], &cos, &sin).unwrap(),
            |t| reference::rope(&t[0], &cos, &sin).unwrap(),
            tol,
        );
        check_against_reference(
            "causal softmax",
            &[&[2, 3, 14, 7]],
            |t| t[0].apply_op1(fused::CausalSoftmax { scale: 0.7 }).unwrap(),
            |t| reference::causal_softmax(&t[0], 7, 0.7).unwrap(),
            tol,
        );
        for n in [2, 4] {
            check_against_reference(
                "mhc_prepare",
                &[&[150, n, 9], &[n]],
                |t| mhc_prepare(&t[0], &t[1]).unwrap(),
                |t| reference::mhc_prepare(&t[0], &t[1]).unwrap(),
                tol,
            );
            check_against_reference(
                "mhc_apply",
                &[&[150, n, 9], &[n, n], &[n], &[150, 9]],
                |t| mhc_apply(&t[0], &t[1], &t[2], &t[3]).unwrap(),
                |t| reference::mhc_apply(&t[0], &t[1], &t[2], &t[3]).unwrap(),
                tol,
            );
        }
        for quantize in [true, false] {
            check_against_reference(
                "bitlinear",
                &[&[9, 200], &[5, 200]],
                |t| bitlinear(&t[0], &t[1], quantize).unwrap(),
                |t| {
                    if quantize {
                        let x = reference::straight_through(
                            &t[0],
                            ternary::quant::fake_quantize_activation_row,
                        )
                        .unwrap();
                        let w = reference::straight_through(
                            &t[1],
                            ternary::quant::fake_quantize_weight_row,
                        )
                        .unwrap();
                        x.matmul(&w.t().unwrap()).unwrap()
                    } else {
                        t[0].matmul(&t[1].t().unwrap()).unwrap()
                    }
                },
                tol,
            );
        }
        let targets = Tensor::new(&[3u32, 0, 9, 9, 1], &Device::Cpu).unwrap();
        check_against_reference(
            "cross_entropy",
            &[&[5, 10]],
            |t| cross_entropy(&t[0], &targets).unwrap(),
            |t| candle_nn::loss::cross_entropy(&t[0], &targets).unwrap(),
            tol,
        );
        let partly_ignored =
            Tensor::new(&[IGNORED_TARGET, 0, 9, IGNORED_TARGET, 1], &Device::Cpu).unwrap();
        check_against_reference(
            "cross_entropy with ignored targets",
            &[&[5, 10]],
            |t| cross_entropy(&t[0], &partly_ignored).unwrap(),
            |t| reference::cross_entropy(&t[0], &partly_ignored).unwrap(),
            tol,
        );
    }

    /// The loss mask of fine-tuning: rows with an ignored target get exactly zero gradient, their
    /// logits do not move the loss, and the loss is the mean over the scored rows alone.
    #[test]
    fn ignored_targets_take_no_part_in_the_loss_or_its_gradient() {
        let dev = Device::Cpu;
        let (rows, vocab) = (6, 7);
        let values = ternary::synthetic::uniform_values(rows * vocab, 4);
        let targets = [IGNORED_TARGET, 2, IGNORED_TARGET, 5, 0, IGNORED_TARGET];
        let scored = [1usize, 3, 4];
        let loss_of = |values: &[f32]| {
            let logits = Var::from_slice(values, (rows, vocab), &dev).unwrap();
            let t = Tensor::new(&targets, &dev).unwrap();
            let loss = cross_entropy(logits.as_tensor(), &t).unwrap();
            let grad = loss.backward().unwrap();
            let grad = to_f32_vec(grad.get(logits.as_tensor()).unwrap()).unwrap();
            (loss.to_scalar::<f32>().unwrap(), grad)
        };
        let (loss, grad) = loss_of(&values);
        for (r, &t) in targets.iter().enumerate() {
            let row = &grad[r * vocab..(r + 1) * vocab];
            if t == IGNORED_TARGET {
                assert!(row.iter().all(|&g| g == 0.0), "row {r}: {row:?}");
            } else {
                // softmax − onehot sums to 0 and is negative only at the target.
                assert!(row[t as usize] < 0.0 && row.iter().sum::<f32>().abs() < 1e-6);
            }
        }
        // The loss is the mean over the scored rows, computed here by hand.
        let by_hand = scored
            .iter()
            .map(|&r| {
                let row = &values[r * vocab..(r + 1) * vocab];
                let lse = row.iter().map(|v| v.exp()).sum::<f32>().ln();
                lse - row[targets[r] as usize]
            })
            .sum::<f32>()
            / scored.len() as f32;
        assert!((loss - by_hand).abs() < 1e-5, "{loss} vs {by_hand}");
        // Any change to an ignored row's logits leaves the loss as it was, bit for bit.
        let mut moved = values.clone();
        for r in [0, 2, 5] {
            moved[r * vocab..(r + 1) * vocab]
                .iter_mut()
                .for_each(|v| *v = *v * 9.0 - 4.0);
        }
        assert_eq!(loss_of(&moved).0.to_bits(), loss.to_bits());
        // Nothing to score is an error, not a division by zero.
        let none = Tensor::new(&[IGNORED_TARGET; 6], &dev).unwrap();
        let logits = Tensor::new(values.as_slice(), &dev)
            .unwrap()
            .reshape((rows, vocab))
            .unwrap();
        assert!(cross_entropy(&logits, &none).is_err());
        assert!(reference::cross_entropy(&logits, &none).is_err());
    }

    /// The fused attention node against its composition from candle ops: the same values and
    /// q|k|v gradients, bit for bit (zeros of either sign equal) where the products are larger
    /// than gemm's 16 × 16 kernel, within rounding below.
    #[test]
    fn fused_attention_is_the_composed_graph_bit_for_bit() {
        let dev = Device::Cpu;
        for (batch, time, heads, kv_heads, head_dim, exact) in [
            (2, 128, 4, 2, 64, true),
            (1, 100, 4, 1, 32, true),
            (2, 70, 2, 2, 16, true),
            (1, 7, 4, 2, 8, false),
        ] {
            let shape = AttentionShape {
                batch,
                time,
                heads,
                kv_heads,
                head_dim,
            };
            let width = (heads + 2 * kv_heads) * head_dim;
            let n = batch * time * width;
            let values: Vec<f32> = ternary::synthetic::uniform_values(n, time as u64)
                .iter()
                .map(|v| v * 3.0)
                .collect();
            let qkv = Var::from_vec(values, (batch * time, width), &dev).unwrap();
            let (cos, sin) = rope_tables(time, head_dim, 10_000.0, &dev).unwrap();
            let out_len = batch * time * heads * head_dim;
            let r = Tensor::from_vec(
                ternary::synthetic::uniform_values(out_len, 5),
                (batch * time, heads * head_dim),
                &dev,
            )
            .unwrap();
            let run = |fused: bool| {
                let out = if fused {
                    attention(qkv.as_tensor(), &cos, &sin, shape)
                } else {
                    attention_composed(qkv.as_tensor(), &cos, &sin, shape)
                }
                .unwrap();
                let grads = (&out * &r).unwrap().sum_all().unwrap().backward().unwrap();
                let g = to_f32_vec(grads.get(qkv.as_tensor()).unwrap()).unwrap();
                (to_f32_vec(&out).unwrap(), g)
            };
            let (out, grad) = run(true);
            let (want_out, want_grad) = run(false);
            let name = format!("{shape:?}");
            if exact {
                for (what, a, b) in [("value", &out, &want_out), ("gradient", &grad, &want_grad)] {
                    let differ = a.iter().zip(b.iter()).filter(|(x, y)| x != y).count();
                    assert_eq!(differ, 0, "{name}: {differ} {what}s differ");
                }
            } else {
                close_rel(&name, &out, &want_out, 1e-5);
                close_rel(&name, &grad, &want_grad, 1e-5);
            }
        }
    }

    /// Values and the gradients of every input of `fused` and `composed` (of `Σ out · R` for a
    /// fixed random R) over the same inputs: equal, zeros of either sign equal.
    fn same_values_and_gradients(
        name: &str,
        inputs: &[Vec<f32>],
        shapes: &[&[usize]],
        fused: impl Fn(&[Tensor]) -> Tensor,
        composed: impl Fn(&[Tensor]) -> Tensor,
    ) {
        let dev = Device::Cpu;
        let vars: Vec<Var> = inputs
            .iter()
            .zip(shapes)
            .map(|(v, s)| Var::from_vec(v.clone(), *s, &dev).unwrap())
            .collect();
        let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let run = |f: &dyn Fn(&[Tensor]) -> Tensor| {
            let out = f(&tensors);
            let r = Tensor::from_vec(
                ternary::synthetic::uniform_values(out.elem_count(), 77),
                out.shape(),
                &dev,
            )
            .unwrap();
            let grads = (&out * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let mut all = vec![to_f32_vec(&out).unwrap()];
            for v in &vars {
                all.push(to_f32_vec(grads.get(v.as_tensor()).unwrap()).unwrap());
            }
            all
        };
        let (a, b) = (run(&fused), run(&composed));
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            let what = if i == 0 {
                "value".to_string()
            } else {
                format!("gradient of input {}", i - 1)
            };
            let differ = x.iter().zip(y).filter(|(p, q)| p != q).count();
            assert_eq!(differ, 0, "{name}: {differ} of {} {what}s differ", x.len());
        }
    }

    #[test]
    fn fused_sublayers_are_their_composed_nodes_bit_for_bit() {
        let (batch, time, heads, kv_heads, head_dim) = (2, 96, 4, 2, 32);
        let (c, f) = (heads * head_dim, 192);
        let width = c + 2 * kv_heads * head_dim;
        let n = batch * time;
        let shape = AttentionShape {
            batch,
            time,
            heads,
            kv_heads,
            head_dim,
        };
        let (cos, sin) = rope_tables(time, head_dim, 10_000.0, &Device::Cpu).unwrap();
        let v = |len: usize, seed: u64| ternary::synthetic::uniform_values(len, seed);
        for quantize in [true, false] {
            same_values_and_gradients(
                &format!("attention sub-layer, quantize {quantize}"),
                &[v(n * c, 1), v(width * c, 2), v(c * c, 3)],
                &[&[n, c], &[width, c], &[c, c]],
                |t| attention_sublayer(&t[0], &t[1], &t[2], &cos, &sin, shape, quantize).unwrap(),
                |t| {
                    attention_sublayer_composed(&t[0], &t[1], &t[2], &cos, &sin, shape, quantize)
                        .unwrap()
                },
            );
            same_values_and_gradients(
                &format!("feed-forward sub-layer, quantize {quantize}"),
                &[v(n * c, 4), v(2 * f * c, 5), v(c * f, 6)],
                &[&[n, c], &[2 * f, c], &[c, f]],
                |t| ffn_sublayer(&t[0], &t[1], &t[2], quantize).unwrap(),
                |t| ffn_sublayer_composed(&t[0], &t[1], &t[2], quantize).unwrap(),
            );
        }
    }

    #[test]
    fn head_cross_entropy_is_the_two_nodes_bit_for_bit() {
        let (n, c, v) = (70, 128, 300);
        let dev = Device::Cpu;
        let mut targets: Vec<u32> = (0..n as u32).map(|i| (i * 37) % v as u32).collect();
        for i in [3, 10, 11] {
            targets[i] = IGNORED_TARGET;
        }
        let targets = Tensor::new(targets.as_slice(), &dev).unwrap();
        let inputs = [
            ternary::synthetic::uniform_values(n * c, 8),
            ternary::synthetic::uniform_values(v * c, 9),
        ];
        for quantize in [true, false] {
            same_values_and_gradients(
                &format!("head cross-entropy, quantize {quantize}"),
                &inputs,
                &[&[n, c], &[v, c]],
                |t| head_cross_entropy(&t[0], &t[1], &targets, quantize).unwrap(),
                |t| cross_entropy(&bitlinear(&t[0], &t[1], quantize).unwrap(), &targets).unwrap(),
            );
        }
    }

    #[test]
    fn attention_of_the_first_position_is_its_own_value() {
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1.0, (1, 4, 5, 8), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (1, 2, 5, 8), &dev).unwrap();
        let v = Tensor::randn(0f32, 1.0, (1, 2, 5, 8), &dev).unwrap();
        let out = causal_attention(&q, &k, &v).unwrap();
        for head in 0..4 {
            let got = to_f32_vec(&out.get(0).unwrap().get(head).unwrap().get(0).unwrap()).unwrap();
            let want =
                to_f32_vec(&v.get(0).unwrap().get(head / 2).unwrap().get(0).unwrap()).unwrap();
            for (a, b) in got.iter().zip(&want) {
                assert!((a - b).abs() < 1e-6);
            }
        }
    }
}
