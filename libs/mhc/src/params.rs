//! The learned parameters of one mHC-lite module (N = 2 and N = 4) and their initialisation.
//!
//! Owns: the stream count ([`NStreams`]), the parameter structs ([`Mhc2`], [`Mhc4`], [`MhcParams`]),
//! their flat field order (the order of a `.mhc` module record) and the initial values with the
//! reasons for them. The matrices these parameters define are built in [`crate::mixing`].
//!
//! # Initialisation (the choice, and why)
//!
//! Module `m` (block `m / 2`, attention for even `m`, FFN for odd `m`) favours stream
//! `k = m mod n`. All `pre_logits` and `post_logits` start at 0; the biases carry the initial shape.
//!
//! | parameter | init | resulting matrix |
//! |---|---|---|
//! | N = 2 `alpha_logit` | [`INIT_ALPHA_LOGIT`] = ln 9 | a = 0.9: H_res = [[0.9, 0.1], [0.1, 0.9]] |
//! | N = 4 `res_logits` | [`INIT_RES_IDENTITY_LOGIT`] = ln 207 for the identity `S4[0]`, 0 for the other 23 | a_id = 0.9, every other permutation 0.1/23: diagonal ≈ 0.922, off-diagonal ≈ 0.026 |
//! | `pre_bias` | +1 on stream k, −1 elsewhere | h_pre = σ(±1) = 0.731 / 0.269 |
//! | `post_bias` | +1 on stream k, −1 elsewhere | h_post = 2σ(±1) = 1.462 / 0.538 |
//!
//! Why:
//! - **H_res identity-heavy but not saturated.** 90 % of the mass on the identity keeps each stream's
//!   content across depth, so the stack starts close to a plain residual network. The mHC-lite
//!   reference puts −8 on the other 23 logits (a_id ≈ 0.992): the other permutations then hold
//!   ~3·10⁻⁴ each and their logits get almost no gradient. Here the identity logit's own gradient
//!   factor is a_id·(1 − a_id) = 0.09 (the maximum is 0.25) and every other permutation keeps 0.1/23,
//!   so the mixing can be learned.
//! - **No bypass of the sub-layers.** Any doubly-stochastic H_res preserves the mean of the streams,
//!   so after [`crate::collapse`] the token embedding always reaches the output with weight exactly 1,
//!   whatever H_res is. What weighs the computation against that direct path is h_post. The known
//!   failure (the model learned to copy its input token) is the direct path winning: outputs
//!   added with a tiny gain, or sub-layers that read a stream holding little but the embedding.
//!   Here h_post is 1.46 on the favoured stream and 0.54 on the others (stream mean 1.0 for N = 2,
//!   0.77 for N = 4), so every sub-layer output lands in every stream with a gain of order one, and
//!   h_pre (0.73 on the favoured stream, 0.27 on the others) makes each sub-layer's input a real mix
//!   of all streams, which contain the outputs of the sub-layers before it.
//! - **Symmetry breaking.** [`crate::expand`] starts all streams equal; with equal h_pre, h_post and
//!   a permutation-symmetric H_res they would stay equal forever (and receive equal gradients), so
//!   n streams would be one. Favouring stream `m mod n` (as the mHC-lite reference does with its ±1
//!   biases) makes the streams differ from the first module on.

use crate::perm::S4_LEN;

/// Number of residual streams of an mHC-lite model: 2 or 4, nothing else.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NStreams {
    /// Two streams: H_res = a·I + (1 − a)·swap.
    Two,
    /// Four streams: H_res = a convex combination of the 24 permutation matrices of S4.
    Four,
}

impl NStreams {
    /// The stream count n.
    pub const fn count(self) -> usize {
        match self {
            NStreams::Two => 2,
            NStreams::Four => 4,
        }
    }

    /// The variant for a stream count, or `None` unless `n` is 2 or 4.
    pub const fn from_count(n: usize) -> Option<Self> {
        match n {
            2 => Some(NStreams::Two),
            4 => Some(NStreams::Four),
            _ => None,
        }
    }

    /// f32 parameters per module: 9 for N = 2, 40 for N = 4.
    pub const fn params_per_module(self) -> usize {
        match self {
            NStreams::Two => Mhc2::PARAMS,
            NStreams::Four => Mhc4::PARAMS,
        }
    }

    /// Bytes of one module record in a `.mhc` file: 36 for N = 2, 160 for N = 4.
    pub const fn module_bytes(self) -> usize {
        4 * self.params_per_module()
    }

    /// The name of flat parameter `index` (see [`Mhc2::to_flat`] / [`Mhc4::to_flat`]), e.g.
    /// `"pre_bias[1]"`; `alpha_logit` has no index. Used in error messages.
    pub fn field_name(self, index: usize) -> String {
        let layout: &[(&str, usize)] = match self {
            NStreams::Two => &[
                ("alpha_logit", 1),
                ("pre_logits", 2),
                ("pre_bias", 2),
                ("post_logits", 2),
                ("post_bias", 2),
            ],
            NStreams::Four => &[
                ("res_logits", S4_LEN),
                ("pre_logits", 4),
                ("pre_bias", 4),
                ("post_logits", 4),
                ("post_bias", 4),
            ],
        };
        let mut start = 0;
        for &(name, len) in layout {
            if index < start + len {
                return if len == 1 {
                    name.to_string()
                } else {
                    format!("{name}[{}]", index - start)
                };
            }
            start += len;
        }
        format!("parameter {index} (out of range)")
    }
}

/// N = 2 alpha logit at init: σ(ln 9) = 0.9, so H_res = 0.9·I + 0.1·swap.
pub const INIT_ALPHA_LOGIT: f32 = 2.197_224_6;

/// N = 4 logit of the identity permutation at init (every other permutation starts at 0):
/// e^L / (e^L + 23) = 0.9 with L = ln 207.
pub const INIT_RES_IDENTITY_LOGIT: f32 = 5.332_719;

/// Initial pre/post bias of the stream a module favours (`module_index mod n`).
pub const INIT_BIAS_FAVOURED: f32 = 1.0;

/// Initial pre/post bias of every other stream.
pub const INIT_BIAS_OTHER: f32 = -1.0;

/// The pre/post biases for module `module_index`: favoured stream +1, the rest −1.
fn init_bias<const N: usize>(module_index: usize) -> [f32; N] {
    let mut b = [INIT_BIAS_OTHER; N];
    b[module_index % N] = INIT_BIAS_FAVOURED;
    b
}

/// Parameters of one N = 2 mHC-lite module.
///
/// H_res = a·I + (1 − a)·swap with a = σ(alpha_logit); h_pre = σ(pre_logits + pre_bias);
/// h_post = 2·σ(post_logits + post_bias).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Mhc2 {
    /// Logit of the identity weight a of H_res.
    pub alpha_logit: f32,
    /// Learned part of the h_pre logits, one per stream.
    pub pre_logits: [f32; 2],
    /// Bias of the h_pre logits, one per stream.
    pub pre_bias: [f32; 2],
    /// Learned part of the h_post logits, one per stream.
    pub post_logits: [f32; 2],
    /// Bias of the h_post logits, one per stream.
    pub post_bias: [f32; 2],
}

impl Mhc2 {
    /// Number of f32 parameters (the record is 36 bytes).
    pub const PARAMS: usize = 9;

    /// The documented initialisation (module doc) for module `module_index` (2·block + 0 for
    /// attention, 2·block + 1 for the FFN).
    pub fn init(module_index: usize) -> Self {
        Mhc2 {
            alpha_logit: INIT_ALPHA_LOGIT,
            pre_logits: [0.0; 2],
            pre_bias: init_bias(module_index),
            post_logits: [0.0; 2],
            post_bias: init_bias(module_index),
        }
    }

    /// The parameters in file order: alpha_logit, pre_logits×2, pre_bias×2, post_logits×2,
    /// post_bias×2.
    pub fn to_flat(&self) -> [f32; Self::PARAMS] {
        let mut f = [0.0; Self::PARAMS];
        f[0] = self.alpha_logit;
        f[1..3].copy_from_slice(&self.pre_logits);
        f[3..5].copy_from_slice(&self.pre_bias);
        f[5..7].copy_from_slice(&self.post_logits);
        f[7..9].copy_from_slice(&self.post_bias);
        f
    }

    /// Inverse of [`Mhc2::to_flat`].
    pub fn from_flat(f: [f32; Self::PARAMS]) -> Self {
        Mhc2 {
            alpha_logit: f[0],
            pre_logits: [f[1], f[2]],
            pre_bias: [f[3], f[4]],
            post_logits: [f[5], f[6]],
            post_bias: [f[7], f[8]],
        }
    }
}

/// Parameters of one N = 4 mHC-lite module.
///
/// H_res = Σ_k softmax(res_logits)_k · P_k over the permutations [`crate::S4`] (in that order);
/// h_pre = σ(pre_logits + pre_bias); h_post = 2·σ(post_logits + post_bias).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Mhc4 {
    /// Logit of each permutation `S4[k]` in H_res.
    pub res_logits: [f32; S4_LEN],
    /// Learned part of the h_pre logits, one per stream.
    pub pre_logits: [f32; 4],
    /// Bias of the h_pre logits, one per stream.
    pub pre_bias: [f32; 4],
    /// Learned part of the h_post logits, one per stream.
    pub post_logits: [f32; 4],
    /// Bias of the h_post logits, one per stream.
    pub post_bias: [f32; 4],
}

impl Mhc4 {
    /// Number of f32 parameters (the record is 160 bytes).
    pub const PARAMS: usize = 40;

    /// The documented initialisation (module doc) for module `module_index` (2·block + 0 for
    /// attention, 2·block + 1 for the FFN).
    pub fn init(module_index: usize) -> Self {
        let mut res_logits = [0.0; S4_LEN];
        res_logits[0] = INIT_RES_IDENTITY_LOGIT;
        Mhc4 {
            res_logits,
            pre_logits: [0.0; 4],
            pre_bias: init_bias(module_index),
            post_logits: [0.0; 4],
            post_bias: init_bias(module_index),
        }
    }

    /// The parameters in file order: res_logits×24, pre_logits×4, pre_bias×4, post_logits×4,
    /// post_bias×4.
    pub fn to_flat(&self) -> [f32; Self::PARAMS] {
        let mut f = [0.0; Self::PARAMS];
        f[..24].copy_from_slice(&self.res_logits);
        f[24..28].copy_from_slice(&self.pre_logits);
        f[28..32].copy_from_slice(&self.pre_bias);
        f[32..36].copy_from_slice(&self.post_logits);
        f[36..40].copy_from_slice(&self.post_bias);
        f
    }

    /// Inverse of [`Mhc4::to_flat`].
    pub fn from_flat(f: [f32; Self::PARAMS]) -> Self {
        let quad = |at: usize| [f[at], f[at + 1], f[at + 2], f[at + 3]];
        let mut res_logits = [0.0; S4_LEN];
        res_logits.copy_from_slice(&f[..24]);
        Mhc4 {
            res_logits,
            pre_logits: quad(24),
            pre_bias: quad(28),
            post_logits: quad(32),
            post_bias: quad(36),
        }
    }
}

/// The parameters of one mHC module of either stream count.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum MhcParams {
    /// N = 2.
    Two(Mhc2),
    /// N = 4.
    Four(Mhc4),
}

impl MhcParams {
    /// The documented initialisation for module `module_index` of an `n`-stream model.
    pub fn init(n: NStreams, module_index: usize) -> Self {
        match n {
            NStreams::Two => MhcParams::Two(Mhc2::init(module_index)),
            NStreams::Four => MhcParams::Four(Mhc4::init(module_index)),
        }
    }

    /// The stream count of this module.
    pub fn n_streams(&self) -> NStreams {
        match self {
            MhcParams::Two(_) => NStreams::Two,
            MhcParams::Four(_) => NStreams::Four,
        }
    }

    /// The parameters in file order (9 or 40 values).
    pub fn to_flat(&self) -> Vec<f32> {
        match self {
            MhcParams::Two(p) => p.to_flat().to_vec(),
            MhcParams::Four(p) => p.to_flat().to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_constants_are_the_documented_logs() {
        assert!((INIT_ALPHA_LOGIT as f64 - 9f64.ln()).abs() < 1e-6);
        assert!((INIT_RES_IDENTITY_LOGIT as f64 - 207f64.ln()).abs() < 1e-6);
    }

    #[test]
    fn flat_round_trip_and_field_names() {
        let mut f2 = [0.0; Mhc2::PARAMS];
        f2.iter_mut().enumerate().for_each(|(i, v)| *v = i as f32);
        assert_eq!(Mhc2::from_flat(f2).to_flat(), f2);
        let mut f4 = [0.0; Mhc4::PARAMS];
        f4.iter_mut()
            .enumerate()
            .for_each(|(i, v)| *v = i as f32 - 7.5);
        assert_eq!(Mhc4::from_flat(f4).to_flat(), f4);
        assert_eq!(MhcParams::Four(Mhc4::from_flat(f4)).to_flat(), f4.to_vec());

        assert_eq!(NStreams::Two.field_name(0), "alpha_logit");
        assert_eq!(NStreams::Two.field_name(4), "pre_bias[1]");
        assert_eq!(NStreams::Two.field_name(8), "post_bias[1]");
        assert_eq!(NStreams::Four.field_name(23), "res_logits[23]");
        assert_eq!(NStreams::Four.field_name(24), "pre_logits[0]");
        assert_eq!(NStreams::Four.field_name(39), "post_bias[3]");
        assert_eq!(NStreams::Two.module_bytes(), 36);
        assert_eq!(NStreams::Four.module_bytes(), 160);
    }

    #[test]
    fn init_favours_stream_module_index_mod_n() {
        let p = Mhc4::init(6);
        assert_eq!(p.pre_bias, [-1.0, -1.0, 1.0, -1.0]);
        assert_eq!(p.post_bias, p.pre_bias);
        assert_eq!(p.res_logits[0], INIT_RES_IDENTITY_LOGIT);
        assert!(p.res_logits[1..].iter().all(|&l| l == 0.0));
        let p = Mhc2::init(3);
        assert_eq!(p.pre_bias, [-1.0, 1.0]);
        assert_eq!(MhcParams::init(NStreams::Two, 3), MhcParams::Two(p));
        assert_eq!(MhcParams::Two(p).n_streams(), NStreams::Two);
    }
}
