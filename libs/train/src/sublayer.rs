//! The two sub-layers of a block between their norm and their residual update, each one CPU op
//! with its own backward:
//! - attention: `BitLinear_o(attention(BitLinear_qkv(h)))`, `h` `[N, C]` → `[N, C]`;
//! - feed-forward: `BitLinear_down(swiglu(BitLinear_gate|up(h)))`, `h` `[N, C]` → `[N, C]`.
//!
//! As separate nodes (ops.rs `attention_sublayer_composed`, `ffn_sublayer_composed`) each intermediate —
//! q|k|v `[N, C + 2·KV]`, the attention output `[N, C]`, gate|up `[N, 2F]` (12 MiB for the tiny
//! model), the SwiGLU output `[N, F]` — is a candle tensor whose gradient candle builds by adding
//! into a zeroed tensor of its size. Inside one node the intermediate gradients are plain buffers
//! handed from one step of the backward to the next. The arithmetic is the separate nodes',
//! bit for bit (the same [`Linear`] products, attention and SwiGLU code; tested), so only the
//! sign of a zero gradient can differ (candle's `0 + g` turns −0 into +0).

use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

use crate::attention::{self, Attention};
use crate::fused::{input, swiglu_backward, swiglu_forward, with_slice, Linear, Operands};

fn take<T>(slot: &std::sync::Mutex<Option<T>>) -> Option<T> {
    slot.lock().unwrap_or_else(|e| e.into_inner()).take()
}

fn keep<T>(slot: &std::sync::Mutex<Option<T>>, value: T) {
    *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(value);
}

/// The attention sub-layer: inputs `h` `[N, C]`, `w_qkv` `[C + 2·KV, C]`, `w_o` `[C, C]`.
pub(crate) struct AttentionSublayer {
    attention: Attention,
    cos: Vec<f32>,
    sin: Vec<f32>,
    quantize: bool,
    saved: std::sync::Mutex<Option<AttentionSaved>>,
}

struct AttentionSaved {
    qkv: Vec<f32>,
    qkv_ops: Operands,
    attention: attention::Saved,
    /// The attention output, kept only where the output projection did not quantize it.
    out: Option<Vec<f32>>,
    o_ops: Operands,
}

impl AttentionSublayer {
    /// `cos`, `sin`: the RoPE tables `[T, D/2]` (row-major).
    pub(crate) fn new(attention: Attention, cos: Vec<f32>, sin: Vec<f32>, quantize: bool) -> Self {
        AttentionSublayer {
            attention,
            cos,
            sin,
            quantize,
            saved: std::sync::Mutex::new(None),
        }
    }

    /// The two products' shapes: q|k|v of `h`, the output projection of the attention.
    fn linears(&self, h: &Layout, w_qkv: &Layout, w_o: &Layout) -> Result<(Linear, Linear)> {
        let (n, c) = h.shape().dims2()?;
        let (width, c2) = w_qkv.shape().dims2()?;
        let (c3, c4) = w_o.shape().dims2()?;
        if c2 != c || c3 != c || c4 != c {
            bail!(
                "attention sub-layer: h {:?}, w_qkv {:?}, w_o {:?}",
                h.dims(),
                w_qkv.dims(),
                w_o.dims()
            );
        }
        let tables = (self.cos.len(), self.sin.len());
        let d = self.attention.head_dim();
        let t = self.attention.time();
        if d == 0 || tables != (t * d / 2, t * d / 2) {
            bail!("attention sub-layer: RoPE tables of {tables:?} values");
        }
        self.attention.check((n, width), (t, d / 2), (t, d / 2))?;
        let linear = |n, k, m| Linear {
            n,
            k,
            m,
            quantize: self.quantize,
        };
        Ok((linear(n, c, width), linear(n, c, c)))
    }
}

impl CustomOp3 for AttentionSublayer {
    fn name(&self) -> &'static str {
        "attention-sublayer"
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
        let (qkv_linear, o_linear) = self.linears(l1, l2, l3)?;
        let h = input::<f32>(s1, l1, "attention sub-layer")?;
        let w_qkv = input::<f32>(s2, l2, "attention sub-layer")?;
        let w_o = input::<f32>(s3, l3, "attention sub-layer")?;
        let (qkv, qkv_ops) = qkv_linear.forward(h, w_qkv)?;
        let (out, attention) = self.attention.forward(&qkv, &self.cos, &self.sin);
        let (y, o_ops) = o_linear.forward(&out, w_o)?;
        let out = (!self.quantize).then_some(out);
        keep(
            &self.saved,
            AttentionSaved {
                qkv,
                qkv_ops,
                attention,
                out,
                o_ops,
            },
        );
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        h: &Tensor,
        w_qkv: &Tensor,
        w_o: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let saved = match take(&self.saved) {
            Some(s) => s,
            // A second backward through the same graph: run the forward again for its values.
            None => {
                h.contiguous()?.apply_op3_no_bwd(w_qkv, w_o, self)?;
                take(&self.saved).expect("the forward keeps its values")
            }
        };
        let (qkv_linear, o_linear) = self.linears(h.layout(), w_qkv.layout(), w_o.layout())?;
        let AttentionSaved {
            qkv,
            qkv_ops,
            attention,
            out,
            o_ops,
        } = saved;
        let (dh, dw_qkv, dw_o) = with_slice(h, |h: &[f32]| {
            with_slice(w_qkv, |w_qkv: &[f32]| {
                with_slice(w_o, |w_o: &[f32]| {
                    with_slice(grad, |g: &[f32]| -> Result<_> {
                        let out = out.as_deref().unwrap_or(&[]);
                        let x = if self.quantize { &[][..] } else { out };
                        let (d_out, dw_o) = o_linear.backward_with(g, x, w_o, o_ops)?;
                        let dqkv = self
                            .attention
                            .backward(&qkv, &self.cos, &self.sin, &d_out, &attention)?;
                        let (dh, dw_qkv) = qkv_linear.backward_with(&dqkv, h, w_qkv, qkv_ops)?;
                        Ok((dh, dw_qkv, dw_o))
                    })
                })
            })
        })?????;
        Ok((
            Some(Tensor::from_vec(dh, h.shape(), h.device())?),
            Some(Tensor::from_vec(dw_qkv, w_qkv.shape(), w_qkv.device())?),
            Some(Tensor::from_vec(dw_o, w_o.shape(), w_o.device())?),
        ))
    }
}

/// The feed-forward sub-layer: inputs `h` `[N, C]`, `w_gate_up` `[2F, C]` (gate rows, then up),
/// `w_down` `[C, F]`.
pub(crate) struct FfnSublayer {
    quantize: bool,
    saved: std::sync::Mutex<Option<FfnSaved>>,
}

struct FfnSaved {
    gate_up: Vec<f32>,
    gate_up_ops: Operands,
    /// The SwiGLU output, kept only where the down projection did not quantize it.
    act: Option<Vec<f32>>,
    down_ops: Operands,
}

impl FfnSublayer {
    pub(crate) fn new(quantize: bool) -> Self {
        FfnSublayer {
            quantize,
            saved: std::sync::Mutex::new(None),
        }
    }

    fn linears(&self, h: &Layout, w_gate_up: &Layout, w_down: &Layout) -> Result<(Linear, Linear)> {
        let (n, c) = h.shape().dims2()?;
        let (two_f, c2) = w_gate_up.shape().dims2()?;
        let (c3, f) = w_down.shape().dims2()?;
        if c2 != c || c3 != c || two_f != 2 * f {
            bail!(
                "feed-forward sub-layer: h {:?}, w_gate_up {:?}, w_down {:?}",
                h.dims(),
                w_gate_up.dims(),
                w_down.dims()
            );
        }
        let linear = |n, k, m| Linear {
            n,
            k,
            m,
            quantize: self.quantize,
        };
        Ok((linear(n, c, two_f), linear(n, f, c)))
    }
}

impl CustomOp3 for FfnSublayer {
    fn name(&self) -> &'static str {
        "ffn-sublayer"
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
        let (gate_up_linear, down_linear) = self.linears(l1, l2, l3)?;
        let h = input::<f32>(s1, l1, "feed-forward sub-layer")?;
        let w_gate_up = input::<f32>(s2, l2, "feed-forward sub-layer")?;
        let w_down = input::<f32>(s3, l3, "feed-forward sub-layer")?;
        let (gate_up, gate_up_ops) = gate_up_linear.forward(h, w_gate_up)?;
        let act = swiglu_forward(&gate_up, down_linear.k);
        let (y, down_ops) = down_linear.forward(&act, w_down)?;
        let act = (!self.quantize).then_some(act);
        keep(
            &self.saved,
            FfnSaved {
                gate_up,
                gate_up_ops,
                act,
                down_ops,
            },
        );
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        h: &Tensor,
        w_gate_up: &Tensor,
        w_down: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let saved = match take(&self.saved) {
            Some(s) => s,
            None => {
                h.contiguous()?.apply_op3_no_bwd(w_gate_up, w_down, self)?;
                take(&self.saved).expect("the forward keeps its values")
            }
        };
        let (gate_up_linear, down_linear) =
            self.linears(h.layout(), w_gate_up.layout(), w_down.layout())?;
        let FfnSaved {
            gate_up,
            gate_up_ops,
            act,
            down_ops,
        } = saved;
        let (dh, dw_gate_up, dw_down) = with_slice(h, |h: &[f32]| {
            with_slice(w_gate_up, |w_gate_up: &[f32]| {
                with_slice(w_down, |w_down: &[f32]| {
                    with_slice(grad, |g: &[f32]| -> Result<_> {
                        let x = act.as_deref().unwrap_or(&[]);
                        let (d_act, dw_down) = down_linear.backward_with(g, x, w_down, down_ops)?;
                        let d_gate_up = swiglu_backward(&gate_up, &d_act, down_linear.k);
                        let (dh, dw_gate_up) =
                            gate_up_linear.backward_with(&d_gate_up, h, w_gate_up, gate_up_ops)?;
                        Ok((dh, dw_gate_up, dw_down))
                    })
                })
            })
        })?????;
        Ok((
            Some(Tensor::from_vec(dh, h.shape(), h.device())?),
            Some(Tensor::from_vec(
                dw_gate_up,
                w_gate_up.shape(),
                w_gate_up.device(),
            )?),
            Some(Tensor::from_vec(dw_down, w_down.shape(), w_down.device())?),
        ))
    }
}
