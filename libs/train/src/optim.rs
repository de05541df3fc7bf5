//! The optimizers of a training run (docs/ARCHITECTURE.md, "Training methods": the update rules
//! and their sources).
//!
//! Owns [`Optimizer`]: one update over named parameters, each in a [`ParamGroup`] — Muon
//! (Newton–Schulz orthogonalised Nesterov momentum, for the 2-D hidden weights) or Lion (sign of
//! an interpolated momentum, for embeddings, the LM head, norms, mHC and the rest) — with optional
//! global-norm gradient clipping, a skip on a non-finite gradient, and its state as named tensors
//! for bit-exact resume ([`Optimizer::state_tensors`], [`Optimizer::load_state`]).
//!
//! The per-element arithmetic runs in plain f32 loops over the tensors' storage (one pass, one
//! new parameter buffer per step); the optimizer moments are host vectors updated in place. Only
//! Newton–Schulz goes through candle, for its matmuls.

use std::collections::{HashMap, HashSet};

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::matmul::{matmul, View};

/// Which optimizer updates a parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamGroup {
    Muon,
    Lion,
}

/// Muon for the 2-D weights of the blocks and MTP heads (`blk.*.weight`, `mtp.*.weight`), Lion
/// for everything else: the embedding, the LM head, norms, mHC vectors.
pub fn default_group(name: &str, shape: &[usize]) -> ParamGroup {
    let hidden = name.starts_with("blk.") || name.starts_with("mtp.");
    if shape.len() == 2 && hidden && name.ends_with(".weight") {
        ParamGroup::Muon
    } else {
        ParamGroup::Lion
    }
}

/// Learning rates and hyper-parameters of both groups.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OptimConfig {
    pub muon_lr: f64,
    /// β of Muon's Nesterov momentum.
    pub muon_momentum: f64,
    /// Decoupled weight decay (θ ← θ·(1 − lr·wd)).
    pub muon_weight_decay: f64,
    pub lion_lr: f64,
    pub lion_beta1: f64,
    pub lion_beta2: f64,
    pub lion_weight_decay: f64,
    /// Largest global gradient norm; larger gradients are scaled down to it. `None` = no clipping.
    pub grad_clip: Option<f64>,
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            muon_lr: 0.02,
            muon_momentum: 0.95,
            muon_weight_decay: 0.0,
            lion_lr: 3e-4,
            lion_beta1: 0.9,
            lion_beta2: 0.99,
            lion_weight_decay: 0.0,
            grad_clip: Some(1.0),
        }
    }
}

impl OptimConfig {
    fn validate(&self) -> Result<(), String> {
        let non_negative = [
            ("muon lr", self.muon_lr),
            ("muon weight decay", self.muon_weight_decay),
            ("lion lr", self.lion_lr),
            ("lion weight decay", self.lion_weight_decay),
        ];
        for (what, v) in non_negative {
            if !(v.is_finite() && v >= 0.0) {
                return Err(format!("{what} {v} must be finite and non-negative"));
            }
        }
        let betas = [
            ("muon momentum", self.muon_momentum),
            ("lion beta1", self.lion_beta1),
            ("lion beta2", self.lion_beta2),
        ];
        for (what, v) in betas {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("{what} {v} is not in [0, 1]"));
            }
        }
        match self.grad_clip {
            Some(c) if !(c.is_finite() && c > 0.0) => {
                Err(format!("gradient clip {c} must be finite and positive"))
            }
            _ => Ok(()),
        }
    }
}

/// What one [`Optimizer::step`] did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepStats {
    /// Global L2 norm of all gradients, before clipping.
    pub grad_norm: f64,
    /// True when the norm was not finite and nothing was updated.
    pub skipped: bool,
}

/// Why optimizer state could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum OptimError {
    #[error("optimizer state: tensor {name} is missing")]
    Missing { name: String },
    #[error("optimizer state: tensor {name} is {found}, expected {expected}")]
    Mismatch {
        name: String,
        expected: String,
        found: String,
    },
    #[error("optimizer state: unexpected tensor {name} (no such parameter in this model)")]
    Unexpected { name: String },
    #[error("optimizer state: tensor {name}: {source}")]
    Read {
        name: String,
        source: candle_core::Error,
    },
}

/// Newton–Schulz quintic coefficients (KellerJordan's muon.py).
const NS_COEFFS: (f64, f64, f64) = (3.4445, -4.7750, 2.0315);
const NS_STEPS: usize = 5;

struct Param {
    name: String,
    var: Var,
    group: ParamGroup,
    /// Muon's momentum or Lion's m, same element order as the parameter. Zero from the start so
    /// that a checkpoint taken before the first step has it too.
    state: Vec<f32>,
}

impl Param {
    fn state_name(&self) -> String {
        match self.group {
            ParamGroup::Muon => format!("{}.muon_momentum", self.name),
            ParamGroup::Lion => format!("{}.lion_m", self.name),
        }
    }
}

/// Muon + Lion over named parameters.
pub struct Optimizer {
    params: Vec<Param>,
    config: OptimConfig,
}

impl Optimizer {
    /// Takes `(name, variable, group)` triples. Errors on a duplicate name or variable, a
    /// non-f32 parameter, a Muon parameter that is not 2-D, or unusable settings.
    pub fn new(
        params: Vec<(String, Var, ParamGroup)>,
        config: OptimConfig,
    ) -> candle_core::Result<Self> {
        config.validate().map_err(candle_core::Error::msg)?;
        let mut names = HashSet::new();
        let mut ids = HashSet::new();
        let mut out = Vec::with_capacity(params.len());
        for (name, var, group) in params {
            if !names.insert(name.clone()) {
                candle_core::bail!("optimizer: parameter {name} is given twice");
            }
            if !ids.insert(var.id()) {
                candle_core::bail!("optimizer: parameter {name} is a variable already given");
            }
            if var.dtype() != DType::F32 {
                candle_core::bail!("optimizer: parameter {name} is {:?}, not f32", var.dtype());
            }
            if group == ParamGroup::Muon && var.rank() != 2 {
                candle_core::bail!(
                    "optimizer: Muon parameter {name} has shape {:?}, Muon needs a matrix",
                    var.dims()
                );
            }
            let state = vec![0.0; var.elem_count()];
            out.push(Param {
                name,
                var,
                group,
                state,
            });
        }
        Ok(Optimizer {
            params: out,
            config,
        })
    }

    pub fn config(&self) -> &OptimConfig {
        &self.config
    }

    /// One update: clip by the global norm, then Muon or Lion on each parameter that has a
    /// gradient in `grads`, at the group's learning rate times `lr_factor`. Parameters without a
    /// gradient keep their values and state. A non-finite norm updates nothing.
    pub fn step(&mut self, grads: &GradStore, lr_factor: f64) -> candle_core::Result<StepStats> {
        let mut present = Vec::with_capacity(self.params.len());
        let mut sum_sq = 0.0f64;
        for p in &self.params {
            let g = grads.get(p.var.as_tensor());
            if let Some(g) = g {
                if g.dims() != p.var.dims() || g.dtype() != DType::F32 {
                    candle_core::bail!(
                        "optimizer: gradient of {} is {:?} {:?}, the parameter f32 {:?}",
                        p.name,
                        g.dtype(),
                        g.dims(),
                        p.var.dims()
                    );
                }
                sum_sq += with_f32(g, sum_of_squares)?;
            }
            present.push(g);
        }
        let grad_norm = sum_sq.sqrt();
        if !grad_norm.is_finite() {
            return Ok(StepStats {
                grad_norm,
                skipped: true,
            });
        }
        let scale = match self.config.grad_clip {
            Some(clip) => (clip / (grad_norm + 1e-6)).min(1.0),
            None => 1.0,
        } as f32;
        // Parameters update independently: Newton–Schulz of several matrices at once keeps both
        // cores busy where one small matmul cannot (each update is the same whatever the order).
        let config = &self.config;
        self.params
            .par_iter_mut()
            .zip(present)
            .try_for_each(|(p, g)| match (g, p.group) {
                (None, _) => Ok(()),
                (Some(g), ParamGroup::Muon) => muon_update(p, g, scale, lr_factor, config),
                (Some(g), ParamGroup::Lion) => lion_update(p, g, scale, lr_factor, config),
            })?;
        Ok(StepStats {
            grad_norm,
            skipped: false,
        })
    }

    /// The state as named tensors (`<param>.muon_momentum`, `<param>.lion_m`), in parameter
    /// order, each shaped like its parameter.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        self.params
            .iter()
            .map(|p| {
                let t = Tensor::from_slice(&p.state, p.var.shape(), p.var.device())
                    .expect("the state has the parameter's element count");
                (p.state_name(), t)
            })
            .collect()
    }

    /// Replaces the state with `tensors` (as written by [`Self::state_tensors`]). Every expected
    /// tensor must be there with its parameter's shape, and nothing else; on an error the state is
    /// left as it was.
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>) -> Result<(), OptimError> {
        let mut loaded = Vec::with_capacity(self.params.len());
        let mut expected = HashSet::with_capacity(self.params.len());
        for p in &self.params {
            let name = p.state_name();
            let Some(t) = tensors.get(&name) else {
                return Err(OptimError::Missing { name });
            };
            if t.dtype() != DType::F32 || t.dims() != p.var.dims() {
                return Err(OptimError::Mismatch {
                    expected: format!("f32 {:?}", p.var.dims()),
                    found: format!("{:?} {:?}", t.dtype(), t.dims()),
                    name,
                });
            }
            let values = t
                .flatten_all()
                .and_then(|f| f.to_vec1::<f32>())
                .map_err(|source| OptimError::Read {
                    name: name.clone(),
                    source,
                })?;
            loaded.push(values);
            expected.insert(name);
        }
        let mut unexpected: Vec<&String> =
            tensors.keys().filter(|k| !expected.contains(*k)).collect();
        unexpected.sort();
        if let Some(name) = unexpected.first() {
            return Err(OptimError::Unexpected {
                name: (*name).clone(),
            });
        }
        for (p, values) in self.params.iter_mut().zip(loaded) {
            p.state = values;
        }
        Ok(())
    }
}

fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> candle_core::Result<R> {
    crate::fused::with_slice(t, f)
}

/// Σ x² in f64, with independent partial sums so the loop pipelines.
fn sum_of_squares(x: &[f32]) -> f64 {
    let mut acc = [0.0f64; 8];
    let chunks = x.chunks_exact(8);
    let tail: f64 = chunks
        .remainder()
        .iter()
        .map(|&v| v as f64 * v as f64)
        .sum();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += v as f64 * v as f64;
        }
    }
    acc.iter().sum::<f64>() + tail
}

/// Replaces the parameter's values with `values` (same element count).
fn set_values(var: &Var, values: Vec<f32>) -> candle_core::Result<()> {
    var.set(&Tensor::from_vec(values, var.shape(), var.device())?)
}

/// Lion: c = β1·m + (1−β1)·g; θ ← θ·(1 − lr·wd) − lr·sign(c); m ← β2·m + (1−β2)·g.
fn lion_update(
    p: &mut Param,
    g: &Tensor,
    scale: f32,
    lr_factor: f64,
    cfg: &OptimConfig,
) -> candle_core::Result<()> {
    let lr = cfg.lion_lr * lr_factor;
    let decay = (1.0 - lr * cfg.lion_weight_decay) as f32;
    let lr = lr as f32;
    let (b1, b2) = (cfg.lion_beta1 as f32, cfg.lion_beta2 as f32);
    let state = &mut p.state;
    let values = with_f32(p.var.as_tensor(), |theta| {
        with_f32(g, |grad| {
            theta
                .iter()
                .zip(grad)
                .zip(state.iter_mut())
                .map(|((&t, &g), m)| {
                    let g = g * scale;
                    let c = b1 * *m + (1.0 - b1) * g;
                    *m = b2 * *m + (1.0 - b2) * g;
                    t * decay - lr * sign(c)
                })
                .collect::<Vec<f32>>()
        })
    })??;
    set_values(&p.var, values)
}

/// sign with sign(0) = 0 (torch.sign), unlike `f32::signum`.
fn sign(x: f32) -> f32 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        0.0
    }
}

/// Muon: m ← lerp(m, g, 1−β), u = lerp(g, m, β), X = NS5(u/(‖u‖_F + 1e-7)),
/// θ ← θ·(1 − lr·wd) − lr·max(1, rows/cols)^½·X.
fn muon_update(
    p: &mut Param,
    g: &Tensor,
    scale: f32,
    lr_factor: f64,
    cfg: &OptimConfig,
) -> candle_core::Result<()> {
    let (rows, cols) = p.var.dims2()?;
    let beta = cfg.muon_momentum as f32;
    let state = &mut p.state;
    let (mut u, norm_sq) = with_f32(g, |grad| {
        let mut sq = 0.0f64;
        let u: Vec<f32> = grad
            .iter()
            .zip(state.iter_mut())
            .map(|(&g, m)| {
                let g = g * scale;
                *m += (1.0 - beta) * (g - *m);
                let u = g + beta * (*m - g);
                sq += u as f64 * u as f64;
                u
            })
            .collect();
        (u, sq)
    })?;
    let inv_norm = (1.0 / (norm_sq.sqrt() + 1e-7)) as f32;
    u.iter_mut().for_each(|x| *x *= inv_norm);
    let o = newton_schulz(u, rows, cols);
    let lr = cfg.muon_lr * lr_factor;
    let decay = (1.0 - lr * cfg.muon_weight_decay) as f32;
    let step = (lr * (rows as f64 / cols as f64).max(1.0).sqrt()) as f32;
    let values = with_f32(p.var.as_tensor(), |theta| {
        theta
            .iter()
            .zip(&o)
            .map(|(&t, &o)| t * decay - step * o)
            .collect::<Vec<f32>>()
    })?;
    set_values(&p.var, values)
}

/// Five quintic Newton–Schulz steps towards the orthogonal polar factor of `x` (`rows × cols`,
/// row-major, Frobenius norm at most 1): A = X Xᵀ, B = b·A + c·A², X ← a·X + B·X. A tall `x`
/// (rows > cols) is worked on as its transpose — written here as A = XᵀX, X ← a·X + X·B, which is
/// the same iteration without materialising the transposes — so the Gram matrix is always the
/// smaller side.
///
/// The arithmetic of the candle ops it replaced, bit for bit (tested against them): the same gemm
/// products (crate::matmul), `b·A` and `c·A²` each as candle's `affine(m, 0)` computes it
/// (`v·m + 0`), then added, and `a·X + 0` added to the product. A and A² are symmetric exactly
/// (each entry and its mirror are the same products summed in the same order), so only the
/// panels on and above the diagonal are multiplied and the rest is copied across: about 70 % of
/// their work.
fn newton_schulz(x: Vec<f32>, rows: usize, cols: usize) -> Vec<f32> {
    let (a, b, c) = (NS_COEFFS.0 as f32, NS_COEFFS.1 as f32, NS_COEFFS.2 as f32);
    let tall = rows > cols;
    let s = rows.min(cols);
    let mut x = x;
    let mut next = vec![0.0f32; rows * cols];
    let mut gram = vec![0.0f32; s * s];
    let mut poly = vec![0.0f32; s * s];
    for _ in 0..NS_STEPS {
        let xv = View::rows(&x, rows, cols, cols);
        // The smaller side's Gram matrix: X Xᵀ, or XᵀX for a tall X.
        let side = if tall { xv.t() } else { xv };
        symmetric_product(&mut gram, s, side, side.t());
        let g = View::rows(&gram, s, s, s);
        symmetric_product(&mut poly, s, g, g);
        for (p, &g) in poly.iter_mut().zip(&gram) {
            *p = (*p * c + 0.0) + (g * b + 0.0);
        }
        let pv = View::rows(&poly, s, s, s);
        if tall {
            matmul(&mut next, cols, xv, pv, false, true);
        } else {
            matmul(&mut next, cols, pv, xv, false, true);
        }
        for (n, &v) in next.iter_mut().zip(&x) {
            *n += v * a + 0.0;
        }
        std::mem::swap(&mut x, &mut next);
    }
    x
}

/// Rows per panel of [`symmetric_product`]; the last panel is this and the rest (64 to 191
/// rows), so no panel takes gemm's small-product path, whose depth blocks differ.
const PANEL: usize = 64;

/// `out` (`s × s`) = `l · r` for a product known to be symmetric: the panels of rows
/// `[i0, i1)` against the columns from `i0` on, then each entry below the diagonal copied from
/// its mirror.
fn symmetric_product(out: &mut [f32], s: usize, l: View, r: View) {
    let mut i0 = 0;
    while i0 < s {
        let i1 = if s - i0 < 3 * PANEL { s } else { i0 + PANEL };
        matmul(
            &mut out[i0 * s + i0..],
            s,
            l.sub_rows(i0, i1),
            r.sub_cols(i0, s),
            false,
            true,
        );
        i0 = i1;
    }
    for i in 1..s {
        for j in 0..i {
            out[i * s + j] = out[j * s + i];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Deterministic pseudo-random values in [-1, 1) (SplitMix64).
    fn values(seed: u64, n: usize) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = s;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                z ^= z >> 31;
                ((z >> 40) as f32 / (1u64 << 23) as f32) - 1.0
            })
            .collect()
    }

    fn var(seed: u64, dims: &[usize]) -> Var {
        let n = dims.iter().product();
        Var::from_tensor(&Tensor::from_vec(values(seed, n), dims, &Device::Cpu).unwrap()).unwrap()
    }

    fn flat(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    fn normalised(t: &Tensor) -> Tensor {
        let norm = t
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            .sqrt();
        t.affine(1.0 / (norm as f64 + 1e-7), 0.0).unwrap()
    }

    /// Gradients of Σ w ⊙ target for each (var, target): exactly `target`.
    fn linear_grads(pairs: &[(&Var, &Tensor)]) -> GradStore {
        let mut loss: Option<Tensor> = None;
        for (v, t) in pairs {
            let term = (v.as_tensor() * *t).unwrap().sum_all().unwrap();
            loss = Some(match loss {
                None => term,
                Some(l) => (l + term).unwrap(),
            });
        }
        loss.unwrap().backward().unwrap()
    }

    #[test]
    fn default_groups() {
        assert_eq!(
            default_group("blk.0.attn_q.weight", &[64, 64]),
            ParamGroup::Muon
        );
        assert_eq!(
            default_group("mtp.1.proj.weight", &[64, 64]),
            ParamGroup::Muon
        );
        assert_eq!(
            default_group("blk.0.attn_norm.weight", &[64]),
            ParamGroup::Lion
        );
        assert_eq!(default_group("blk.0.attn_mhc", &[9]), ParamGroup::Lion);
        assert_eq!(
            default_group("token_embd.weight", &[256, 64]),
            ParamGroup::Lion
        );
        assert_eq!(default_group("output.weight", &[256, 64]), ParamGroup::Lion);
    }

    /// Newton–Schulz as it was written with candle ops: the definition the direct version keeps.
    fn newton_schulz_composed(x: &Tensor) -> Tensor {
        let (a, b, c) = NS_COEFFS;
        let (rows, cols) = x.dims2().unwrap();
        let tall = rows > cols;
        let mut x = x.clone();
        for _ in 0..NS_STEPS {
            let gram = if tall {
                x.t().unwrap().matmul(&x).unwrap()
            } else {
                x.matmul(&x.t().unwrap()).unwrap()
            };
            let poly = (gram.matmul(&gram).unwrap().affine(c, 0.0).unwrap()
                + gram.affine(b, 0.0).unwrap())
            .unwrap();
            let mixed = if tall {
                x.matmul(&poly).unwrap()
            } else {
                poly.matmul(&x).unwrap()
            };
            x = (mixed + x.affine(a, 0.0).unwrap()).unwrap();
        }
        x
    }

    #[test]
    fn newton_schulz_is_the_composed_one_bit_for_bit() {
        // The shapes of the tiny model's hidden matrices (wide, tall, square) and small ones.
        for dims in [
            (512, 256),
            (256, 256),
            (1536, 256),
            (256, 768),
            (24, 16),
            (16, 40),
        ] {
            let g = Tensor::from_vec(values(5, dims.0 * dims.1), dims, &Device::Cpu).unwrap();
            let x = normalised(&g);
            let want = flat(&newton_schulz_composed(&x));
            let got = newton_schulz(flat(&x), dims.0, dims.1);
            let differ = got.iter().zip(&want).filter(|(a, b)| a != b).count();
            assert_eq!(
                differ,
                0,
                "{dims:?}: {differ} of {} values differ",
                got.len()
            );
        }
    }

    #[test]
    fn newton_schulz_gives_singular_values_near_one() {
        for dims in [(32, 64), (64, 32)] {
            let g = Tensor::from_vec(values(3, dims.0 * dims.1), dims, &Device::Cpu).unwrap();
            let x = newton_schulz(flat(&normalised(&g)), dims.0, dims.1);
            let x = Tensor::from_vec(x, dims, &Device::Cpu).unwrap();
            // The Gram matrix on the smaller side: its diagonal holds Σ σ² shares near 1.
            let gram = if dims.0 <= dims.1 {
                x.matmul(&x.t().unwrap()).unwrap()
            } else {
                x.t().unwrap().matmul(&x).unwrap()
            };
            let n = dims.0.min(dims.1);
            let gram = gram.to_vec2::<f32>().unwrap();
            for (i, row) in gram.iter().enumerate() {
                assert!(
                    (0.4..=1.6).contains(&row[i]),
                    "{dims:?}: diag {i} = {}",
                    row[i]
                );
            }
            let off: f32 = (0..n)
                .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
                .map(|(i, j)| gram[i][j].abs())
                .fold(0.0, f32::max);
            assert!(off < 0.5, "{dims:?}: off-diagonal {off}");
        }
    }

    #[test]
    fn lion_step_matches_hand_computation() {
        let w = Var::from_slice(&[1.0f32, -2.0, 0.5, 3.0], 4, &Device::Cpu).unwrap();
        let target = Tensor::new(&[0.5f32, -1.0, 0.0, 2.0], &Device::Cpu).unwrap();
        let cfg = OptimConfig {
            lion_lr: 0.1,
            lion_weight_decay: 0.5,
            grad_clip: None,
            ..OptimConfig::default()
        };
        let mut opt = Optimizer::new(vec![("w".into(), w.clone(), ParamGroup::Lion)], cfg).unwrap();
        let stats = opt.step(&linear_grads(&[(&w, &target)]), 0.5).unwrap();
        assert!(!stats.skipped);
        assert!((stats.grad_norm - 5.25f64.sqrt()).abs() < 1e-6);
        // lr = 0.05, decay 1 − 0.05·0.5 = 0.975; m = 0, so sign(c) = sign(g).
        let want = [
            1.0 * 0.975 - 0.05,
            -2.0 * 0.975 + 0.05,
            0.5 * 0.975,
            3.0 * 0.975 - 0.05,
        ];
        for (got, want) in flat(&w).iter().zip(want) {
            assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        }
        // m = 0.01·g.
        let m = flat(&opt.state_tensors()[0].1);
        for (m, g) in m.iter().zip([0.5f32, -1.0, 0.0, 2.0]) {
            assert!((m - 0.01 * g).abs() < 1e-7);
        }
        // Second step with gradient −g: c = 0.9·0.01·g − 0.1·g = −0.091·g, so sign(c) = −sign(g).
        let before = flat(&w);
        let neg = target.neg().unwrap();
        opt.step(&linear_grads(&[(&w, &neg)]), 0.5).unwrap();
        for ((got, b), g) in flat(&w).iter().zip(before).zip([0.5f32, -1.0, 0.0, 2.0]) {
            let want = b * 0.975 + 0.05 * sign(g);
            assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        }
    }

    #[test]
    fn muon_decreases_a_quadratic_loss() {
        let w = var(1, &[24, 16]);
        let target = Tensor::from_vec(values(2, 24 * 16), (24, 16), &Device::Cpu).unwrap();
        let loss = |w: &Var| {
            (w.as_tensor() - &target)
                .unwrap()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
        };
        let cfg = OptimConfig {
            muon_lr: 0.05,
            grad_clip: None,
            ..OptimConfig::default()
        };
        let mut opt = Optimizer::new(
            vec![("blk.0.w.weight".into(), w.clone(), ParamGroup::Muon)],
            cfg,
        )
        .unwrap();
        let first = loss(&w).to_scalar::<f32>().unwrap();
        for _ in 0..60 {
            let grads = loss(&w).backward().unwrap();
            opt.step(&grads, 1.0).unwrap();
        }
        let last = loss(&w).to_scalar::<f32>().unwrap();
        assert!(last < 0.1 * first, "loss {first} -> {last}");
    }

    #[test]
    fn clipping_scales_the_gradient_to_the_clip_norm() {
        // With m = 0 after one Lion step, m = (1−β2)·scale·g reveals the scale.
        let w = Var::from_slice(&[0.0f32; 2], 2, &Device::Cpu).unwrap();
        let target = Tensor::new(&[3.0f32, 4.0], &Device::Cpu).unwrap();
        for (clip, scale) in [
            (Some(1.0), 1.0 / (5.0 + 1e-6)),
            (Some(10.0), 1.0),
            (None, 1.0),
        ] {
            let cfg = OptimConfig {
                grad_clip: clip,
                ..OptimConfig::default()
            };
            let mut opt =
                Optimizer::new(vec![("w".into(), w.clone(), ParamGroup::Lion)], cfg).unwrap();
            let stats = opt.step(&linear_grads(&[(&w, &target)]), 1.0).unwrap();
            assert!((stats.grad_norm - 5.0).abs() < 1e-9, "norm before clipping");
            let m = flat(&opt.state_tensors()[0].1);
            for (m, g) in m.iter().zip([3.0, 4.0]) {
                let want = (0.01 * scale * g) as f32;
                assert!((m - want).abs() < 1e-7, "clip {clip:?}: {m} vs {want}");
            }
        }
    }

    #[test]
    fn clipping_uses_the_norm_over_all_parameters() {
        let a = Var::from_slice(&[0.0f32], 1, &Device::Cpu).unwrap();
        let b = Var::from_slice(&[0.0f32], 1, &Device::Cpu).unwrap();
        let ta = Tensor::new(&[3.0f32], &Device::Cpu).unwrap();
        let tb = Tensor::new(&[4.0f32], &Device::Cpu).unwrap();
        let params = vec![
            ("a".into(), a.clone(), ParamGroup::Lion),
            ("b".into(), b.clone(), ParamGroup::Lion),
        ];
        let mut opt = Optimizer::new(params, OptimConfig::default()).unwrap();
        let stats = opt
            .step(&linear_grads(&[(&a, &ta), (&b, &tb)]), 1.0)
            .unwrap();
        assert!((stats.grad_norm - 5.0).abs() < 1e-9);
        let state = opt.state_tensors();
        let ma = flat(&state[0].1)[0];
        let mb = flat(&state[1].1)[0];
        assert!((ma - 0.01 * 3.0 / 5.0).abs() < 1e-7 && (mb - 0.01 * 4.0 / 5.0).abs() < 1e-7);
    }

    #[test]
    fn params_without_gradients_are_untouched() {
        let used = var(1, &[8, 4]);
        let unused = var(2, &[8, 4]);
        let unused_lion = var(3, &[5]);
        let params = vec![
            ("blk.0.a.weight".into(), used.clone(), ParamGroup::Muon),
            ("blk.0.b.weight".into(), unused.clone(), ParamGroup::Muon),
            ("n".into(), unused_lion.clone(), ParamGroup::Lion),
        ];
        let mut opt = Optimizer::new(params, OptimConfig::default()).unwrap();
        let before = (flat(&used), flat(&unused), flat(&unused_lion));
        let target = Tensor::ones((8, 4), DType::F32, &Device::Cpu).unwrap();
        opt.step(&linear_grads(&[(&used, &target)]), 1.0).unwrap();
        assert_ne!(flat(&used), before.0);
        assert_eq!(flat(&unused), before.1);
        assert_eq!(flat(&unused_lion), before.2);
        let state = opt.state_tensors();
        assert!(flat(&state[0].1).iter().any(|&m| m != 0.0));
        assert!(flat(&state[1].1).iter().all(|&m| m == 0.0));
        assert!(flat(&state[2].1).iter().all(|&m| m == 0.0));
    }

    #[test]
    fn non_finite_gradient_skips_the_step() {
        let w = var(1, &[4, 4]);
        let n = var(2, &[3]);
        let params = vec![
            ("blk.0.w.weight".into(), w.clone(), ParamGroup::Muon),
            ("n".into(), n.clone(), ParamGroup::Lion),
        ];
        let mut opt = Optimizer::new(params, OptimConfig::default()).unwrap();
        let before = (flat(&w), flat(&n));
        let ok = Tensor::ones((4, 4), DType::F32, &Device::Cpu).unwrap();
        let bad = Tensor::new(&[1.0f32, f32::NAN, 0.0], &Device::Cpu).unwrap();
        let stats = opt
            .step(&linear_grads(&[(&w, &ok), (&n, &bad)]), 1.0)
            .unwrap();
        assert!(stats.skipped);
        assert!(!stats.grad_norm.is_finite());
        assert_eq!((flat(&w), flat(&n)), before);
        assert!(opt
            .state_tensors()
            .iter()
            .all(|(_, t)| flat(t).iter().all(|&m| m == 0.0)));
    }

    /// A small two-group model: loss = Σ (W x − y)² + Σ (n − 1)².
    struct Toy {
        w: Var,
        n: Var,
    }

    impl Toy {
        fn new(w: &[f32], n: &[f32]) -> Toy {
            let dev = Device::Cpu;
            Toy {
                w: Var::from_tensor(&Tensor::from_slice(w, (12, 6), &dev).unwrap()).unwrap(),
                n: Var::from_tensor(&Tensor::from_slice(n, 6, &dev).unwrap()).unwrap(),
            }
        }

        fn optimizer(&self) -> Optimizer {
            let params = vec![
                ("blk.0.w.weight".into(), self.w.clone(), ParamGroup::Muon),
                ("blk.0.n.weight".into(), self.n.clone(), ParamGroup::Lion),
            ];
            let cfg = OptimConfig {
                muon_weight_decay: 0.01,
                lion_weight_decay: 0.1,
                ..OptimConfig::default()
            };
            Optimizer::new(params, cfg).unwrap()
        }

        fn train(&self, opt: &mut Optimizer, steps: std::ops::Range<u64>) {
            let dev = Device::Cpu;
            for s in steps {
                let x = Tensor::from_vec(values(100 + s, 6 * 4), (6, 4), &dev).unwrap();
                let y = Tensor::from_vec(values(200 + s, 12 * 4), (12, 4), &dev).unwrap();
                let fit = (self.w.as_tensor().matmul(&x).unwrap() - y)
                    .unwrap()
                    .sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap();
                let reg = (self.n.as_tensor() - 1.0)
                    .unwrap()
                    .sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap();
                let grads = (fit + reg).unwrap().backward().unwrap();
                opt.step(&grads, 1.0 - s as f64 / 20.0).unwrap();
            }
        }
    }

    #[test]
    fn state_round_trip_resumes_bit_exactly() {
        let (w0, n0) = (values(7, 72), values(8, 6));
        let straight = Toy::new(&w0, &n0);
        let mut opt = straight.optimizer();
        straight.train(&mut opt, 0..10);

        let first = Toy::new(&w0, &n0);
        let mut opt1 = first.optimizer();
        first.train(&mut opt1, 0..4);
        let saved: HashMap<String, Tensor> = opt1.state_tensors().into_iter().collect();
        assert_eq!(saved.len(), 2);
        assert!(saved.contains_key("blk.0.w.weight.muon_momentum"));
        assert!(saved.contains_key("blk.0.n.weight.lion_m"));
        // Fresh variables holding the same values, a fresh optimizer, the saved state.
        let resumed = Toy::new(&flat(&first.w), &flat(&first.n));
        let mut opt2 = resumed.optimizer();
        opt2.load_state(&saved).unwrap();
        resumed.train(&mut opt2, 4..10);

        assert_eq!(flat(&resumed.w), flat(&straight.w));
        assert_eq!(flat(&resumed.n), flat(&straight.n));
        let a = opt.state_tensors();
        let b = opt2.state_tensors();
        for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
            assert_eq!(na, nb);
            assert_eq!(flat(ta), flat(tb));
        }
    }

    #[test]
    fn state_before_the_first_step_is_saved_and_loads() {
        let toy = Toy::new(&values(1, 72), &values(2, 6));
        let opt = toy.optimizer();
        let state = opt.state_tensors();
        assert_eq!(state[0].1.dims(), &[12, 6]);
        assert_eq!(state[1].1.dims(), &[6]);
        let map: HashMap<String, Tensor> = state.into_iter().collect();
        toy.optimizer().load_state(&map).unwrap();
    }

    #[test]
    fn load_state_rejects_missing_mis_shaped_and_unexpected_tensors() {
        let toy = Toy::new(&values(1, 72), &values(2, 6));
        let mut opt = toy.optimizer();
        let good: HashMap<String, Tensor> = opt.state_tensors().into_iter().collect();

        let mut missing = good.clone();
        missing.remove("blk.0.n.weight.lion_m");
        let e = opt.load_state(&missing).unwrap_err();
        assert!(matches!(e, OptimError::Missing { .. }));
        assert!(e.to_string().contains("blk.0.n.weight.lion_m"), "{e}");

        let mut shaped = good.clone();
        let wrong = Tensor::zeros((6, 12), DType::F32, &Device::Cpu).unwrap();
        shaped.insert("blk.0.w.weight.muon_momentum".into(), wrong);
        let e = opt.load_state(&shaped).unwrap_err();
        assert!(matches!(e, OptimError::Mismatch { .. }));
        assert!(
            e.to_string().contains("blk.0.w.weight.muon_momentum"),
            "{e}"
        );

        let mut typed = good.clone();
        let wrong = Tensor::zeros(6, DType::F64, &Device::Cpu).unwrap();
        typed.insert("blk.0.n.weight.lion_m".into(), wrong);
        assert!(matches!(
            opt.load_state(&typed),
            Err(OptimError::Mismatch { .. })
        ));

        let mut extra = good.clone();
        extra.insert(
            "blk.9.x.weight.lion_m".into(),
            Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap(),
        );
        let e = opt.load_state(&extra).unwrap_err();
        assert!(matches!(e, OptimError::Unexpected { .. }));
        assert!(e.to_string().contains("blk.9.x.weight.lion_m"), "{e}");

        opt.load_state(&good).unwrap();
    }

    #[test]
    fn new_rejects_bad_parameters_and_settings() {
        let w = var(1, &[4, 4]);
        let cfg = OptimConfig::default;
        let dup = vec![
            ("a".into(), var(2, &[4]), ParamGroup::Lion),
            ("a".into(), var(3, &[4]), ParamGroup::Lion),
        ];
        assert!(Optimizer::new(dup, cfg()).is_err());
        let same_var = vec![
            ("a".into(), w.clone(), ParamGroup::Lion),
            ("b".into(), w.clone(), ParamGroup::Lion),
        ];
        assert!(Optimizer::new(same_var, cfg()).is_err());
        let muon_1d = vec![("blk.0.n.weight".into(), var(2, &[4]), ParamGroup::Muon)];
        assert!(Optimizer::new(muon_1d, cfg()).is_err());
        let bad_clip = OptimConfig {
            grad_clip: Some(0.0),
            ..cfg()
        };
        assert!(Optimizer::new(vec![], bad_clip).is_err());
        let bad_beta = OptimConfig {
            lion_beta1: 1.5,
            ..cfg()
        };
        assert!(Optimizer::new(vec![], bad_beta).is_err());
    }
}
