//! The mHC-lite matrices (H_res, h_pre, h_post) and the four batch operations on residual streams.
//!
//! Owns the definition that the inference model and the candle training graph both follow: how the
//! parameters become matrices ([`Mixing::from_params`]) and the exact formulas and operation order of
//! [`expand`], [`Mixing::prepare_input`], [`Mixing::apply`] and [`collapse`]. Plain f32 arithmetic
//! throughout, separate multiplies and adds (no fused multiply-add), sums in increasing stream order.
//!
//! Shapes: B = batch rows (tokens), C = hidden size, n = stream count. A single activation batch is
//! `[B, C]` row-major. The streams are `[B, n·C]` row-major, stream-major inside a row: element
//! (b, s, j) of stream s lives at index `b·n·C + s·C + j` (a `[B, n, C]` tensor, in candle terms).
//!
//! One sub-layer F (attention or FFN) wrapped by one module, per row b and channel j:
//! ```text
//!   u[b, j]           = Σ_s h_pre[s] · x[b, s, j]                        prepare_input
//!   y                 = F(u)                                              (the caller)
//!   x'[b, i, j]       = Σ_s H_res[i][s] · x[b, s, j]  +  h_post[i] · y[b, j]   apply
//! ```
//! Whole model: `x = expand(embedding)`, one module per sub-layer, `out = collapse(x)`.

use crate::numerics::{sigmoid, softmax};
use crate::params::{Mhc2, Mhc4, MhcParams, NStreams};
use crate::perm::{S4, S4_LEN};

/// Largest stream count (storage size of the fixed arrays below).
const MAX_N: usize = 4;

/// An n×n residual mixing matrix (n = 2 or 4), f32, row-major.
///
/// Row i holds the weights stream i takes from every stream: `x'_i = Σ_s H[i][s]·x_s`. (The
/// mHC-lite reference code applies the transpose; for a doubly-stochastic matrix both are valid,
/// but this crate, the model and the training graph all use rows as written here.)
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ResMatrix {
    n: NStreams,
    /// The first n·n entries are the matrix, row-major; the rest stay 0.
    data: [f32; MAX_N * MAX_N],
}

impl ResMatrix {
    /// A matrix from its `n·n` row-major entries.
    ///
    /// # Panics
    /// If `entries.len() != n·n`.
    pub fn from_row_major(n: NStreams, entries: &[f32]) -> Self {
        let len = n.count() * n.count();
        assert_eq!(
            entries.len(),
            len,
            "ResMatrix needs {len} entries for {n:?} streams"
        );
        let mut data = [0.0; MAX_N * MAX_N];
        data[..len].copy_from_slice(entries);
        ResMatrix { n, data }
    }

    /// The stream count n.
    pub fn n_streams(&self) -> NStreams {
        self.n
    }

    /// Entry (row i, column j).
    ///
    /// # Panics
    /// If i or j is not below n.
    pub fn get(&self, i: usize, j: usize) -> f32 {
        let n = self.n.count();
        assert!(
            i < n && j < n,
            "ResMatrix index ({i}, {j}) out of range for n = {n}"
        );
        self.data[i * n + j]
    }

    /// The n·n entries, row-major.
    pub fn as_row_major(&self) -> &[f32] {
        &self.data[..self.n.count() * self.n.count()]
    }
}

/// The matrices of one mHC-lite module, computed once from its parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Mixing {
    h_res: ResMatrix,
    /// h_pre[s] = σ(pre_logits[s] + pre_bias[s]); entries ≥ n stay 0.
    h_pre: [f32; MAX_N],
    /// h_post[s] = 2·σ(post_logits[s] + post_bias[s]); entries ≥ n stay 0.
    h_post: [f32; MAX_N],
}

/// h_pre and h_post from logits and biases: σ(l + b) and 2·σ(l + b), stream by stream.
fn gates<const N: usize>(
    pre_logits: &[f32; N],
    pre_bias: &[f32; N],
    post_logits: &[f32; N],
    post_bias: &[f32; N],
) -> ([f32; MAX_N], [f32; MAX_N]) {
    let mut h_pre = [0.0; MAX_N];
    let mut h_post = [0.0; MAX_N];
    for s in 0..N {
        h_pre[s] = sigmoid(pre_logits[s] + pre_bias[s]);
        h_post[s] = 2.0 * sigmoid(post_logits[s] + post_bias[s]);
    }
    (h_pre, h_post)
}

impl Mixing {
    /// The matrices of a module of either stream count.
    pub fn from_params(params: &MhcParams) -> Self {
        match params {
            MhcParams::Two(p) => Self::from_mhc2(p),
            MhcParams::Four(p) => Self::from_mhc4(p),
        }
    }

    /// N = 2: a = σ(alpha_logit), b = 1 − a, H_res = [[a, b], [b, a]] (= a·I + (1 − a)·swap).
    pub fn from_mhc2(p: &Mhc2) -> Self {
        let a = sigmoid(p.alpha_logit);
        let b = 1.0 - a;
        let (h_pre, h_post) = gates(&p.pre_logits, &p.pre_bias, &p.post_logits, &p.post_bias);
        Mixing {
            h_res: ResMatrix::from_row_major(NStreams::Two, &[a, b, b, a]),
            h_pre,
            h_post,
        }
    }

    /// N = 4: w = softmax(res_logits) ([`crate::numerics::softmax`]); starting from H = 0, for
    /// k = 0..24 in order and each row i, `H[i][S4[k][i]] += w[k]`. So
    /// H_res = Σ_k w_k·P_k exactly as a convex combination of permutation matrices: every entry is
    /// a sum of 6 non-negative weights and every row and column sums to Σ_k w_k = 1 up to rounding.
    pub fn from_mhc4(p: &Mhc4) -> Self {
        let mut w = [0.0; S4_LEN];
        softmax(&p.res_logits, &mut w);
        let mut h = [0.0f32; 16];
        for (perm, &wk) in S4.iter().zip(&w) {
            for (i, &j) in perm.iter().enumerate() {
                h[i * 4 + j] += wk;
            }
        }
        let (h_pre, h_post) = gates(&p.pre_logits, &p.pre_bias, &p.post_logits, &p.post_bias);
        Mixing {
            h_res: ResMatrix::from_row_major(NStreams::Four, &h),
            h_pre,
            h_post,
        }
    }

    /// The stream count n.
    pub fn n_streams(&self) -> NStreams {
        self.h_res.n
    }

    /// The residual mixing matrix H_res.
    pub fn h_res(&self) -> &ResMatrix {
        &self.h_res
    }

    /// h_pre, one non-negative weight per stream (length n).
    pub fn h_pre(&self) -> &[f32] {
        &self.h_pre[..self.n_streams().count()]
    }

    /// h_post, one gain in (0, 2) per stream (length n).
    pub fn h_post(&self) -> &[f32] {
        &self.h_post[..self.n_streams().count()]
    }

    /// The sub-layer input: `out[b, j] = Σ_s h_pre[s] · streams[b, s, j]`, accumulated as
    /// `acc = h_pre[0]·x_0; acc = acc + h_pre[1]·x_1; ...` in stream order.
    ///
    /// `streams` is `[B, n·C]`, `out` is `[B, C]`.
    ///
    /// # Panics
    /// If `c == 0`, `out.len()` is not a multiple of `c`, or `streams.len() != n·out.len()`.
    pub fn prepare_input(&self, streams: &[f32], c: usize, out: &mut [f32]) {
        let n = self.n_streams().count();
        check_shapes(n, c, out.len(), streams.len());
        for (row, out_row) in streams.chunks_exact(n * c).zip(out.chunks_exact_mut(c)) {
            // A pass over the channels per stream, each a plain zip that vectorizes (indexing
            // the streams inside one pass did not); the sums keep the stream order.
            let (first, rest) = row.split_at(c);
            for (o, &x) in out_row.iter_mut().zip(first) {
                *o = self.h_pre[0] * x;
            }
            for (stream, &h) in rest.chunks_exact(c).zip(&self.h_pre[1..]) {
                for (o, &x) in out_row.iter_mut().zip(stream) {
                    *o += h * x;
                }
            }
        }
    }

    /// The module's residual update, in place:
    /// `streams'[b, i, j] = Σ_s H_res[i][s] · streams[b, s, j] + h_post[i] · layer_out[b, j]`,
    /// accumulated as `acc = H[i][0]·x_0; acc = acc + H[i][1]·x_1; ...; acc = acc + h_post[i]·y`
    /// (every product from the old streams, never from an already updated one).
    ///
    /// `streams` is `[B, n·C]`, `layer_out` (the sub-layer's output F(u)) is `[B, C]`.
    ///
    /// # Panics
    /// If `c == 0`, `layer_out.len()` is not a multiple of `c`, or
    /// `streams.len() != n·layer_out.len()`.
    pub fn apply(&self, streams: &mut [f32], layer_out: &[f32], c: usize) {
        let n = self.n_streams();
        check_shapes(n.count(), c, layer_out.len(), streams.len());
        let h = self.h_res.as_row_major();
        for (row, y) in streams
            .chunks_exact_mut(n.count() * c)
            .zip(layer_out.chunks_exact(c))
        {
            // Each stream a slice of its own, so the compiler knows they do not overlap and
            // vectorizes along the channels.
            match n {
                NStreams::Two => {
                    let (s0, s1) = row.split_at_mut(c);
                    apply_two(h, &self.h_post, s0, s1, y);
                }
                NStreams::Four => {
                    let (s01, s23) = row.split_at_mut(2 * c);
                    let ((s0, s1), (s2, s3)) = (s01.split_at_mut(c), s23.split_at_mut(c));
                    apply_four(h, &self.h_post, [s0, s1, s2, s3], y);
                }
            }
        }
    }
}

/// [`Mixing::apply`] on one row of two streams.
fn apply_two(h: &[f32], post: &[f32], s0: &mut [f32], s1: &mut [f32], y: &[f32]) {
    let (h, post): ([f32; 4], [f32; 2]) = (
        h[..4].try_into().expect("H_res is 2x2"),
        post[..2].try_into().expect("two h_post"),
    );
    for ((a, b), &y) in s0.iter_mut().zip(s1.iter_mut()).zip(y) {
        let (x0, x1) = (*a, *b);
        *a = h[0] * x0 + h[1] * x1 + post[0] * y;
        *b = h[2] * x0 + h[3] * x1 + post[1] * y;
    }
}

/// [`Mixing::apply`] on one row of four streams.
fn apply_four(h: &[f32], post: &[f32], streams: [&mut [f32]; 4], y: &[f32]) {
    let (h, post): ([f32; 16], [f32; 4]) = (
        h[..16].try_into().expect("H_res is 4x4"),
        post[..4].try_into().expect("four h_post"),
    );
    let [s0, s1, s2, s3] = streams;
    for ((((a, b), c), d), &y) in s0
        .iter_mut()
        .zip(s1.iter_mut())
        .zip(s2.iter_mut())
        .zip(s3.iter_mut())
        .zip(y)
    {
        let x = [*a, *b, *c, *d];
        let mix = |i: usize| {
            h[4 * i] * x[0]
                + h[4 * i + 1] * x[1]
                + h[4 * i + 2] * x[2]
                + h[4 * i + 3] * x[3]
                + post[i] * y
        };
        (*a, *b, *c, *d) = (mix(0), mix(1), mix(2), mix(3));
    }
}

/// Panics unless `c > 0`, `batch_len` (a `[B, C]` buffer) is a multiple of `c` and `streams_len`
/// (the `[B, n·C]` buffer) is `n·batch_len`.
fn check_shapes(n: usize, c: usize, batch_len: usize, streams_len: usize) {
    assert!(c > 0, "mhc: hidden size C must be positive");
    assert!(
        batch_len % c == 0,
        "mhc: [B, C] buffer of {batch_len} values is not a multiple of C = {c}"
    );
    assert_eq!(
        streams_len,
        n * batch_len,
        "mhc: stream buffer must hold n·B·C = {n}·{batch_len} values"
    );
}

/// Copies each row of `x` (`[B, C]`) into every stream: `out[b, s, j] = x[b, j]` (`out` is
/// `[B, n·C]`).
///
/// # Panics
/// If `c == 0`, `x.len()` is not a multiple of `c`, or `out.len() != n·x.len()`.
pub fn expand(n: NStreams, x: &[f32], c: usize, out: &mut [f32]) {
    let n = n.count();
    check_shapes(n, c, x.len(), out.len());
    for (x_row, out_row) in x.chunks_exact(c).zip(out.chunks_exact_mut(n * c)) {
        for stream in out_row.chunks_exact_mut(c) {
            stream.copy_from_slice(x_row);
        }
    }
}

/// The average of the streams: `out[b, j] = (Σ_s streams[b, s, j]) · (1/n)`, with the sum taken
/// pairwise: `x_0 + x_1` for n = 2, `(x_0 + x_1) + (x_2 + x_3)` for n = 4. Since n is a power of
/// two, `collapse(expand(x)) == x` bit for bit (for |x| below f32::MAX / n).
///
/// `streams` is `[B, n·C]`, `out` is `[B, C]`.
///
/// # Panics
/// If `c == 0`, `out.len()` is not a multiple of `c`, or `streams.len() != n·out.len()`.
pub fn collapse(n: NStreams, streams: &[f32], c: usize, out: &mut [f32]) {
    let count = n.count();
    check_shapes(count, c, out.len(), streams.len());
    let inv_n = 1.0 / count as f32;
    for (row, out_row) in streams.chunks_exact(count * c).zip(out.chunks_exact_mut(c)) {
        for (j, o) in out_row.iter_mut().enumerate() {
            let sum = match n {
                NStreams::Two => row[j] + row[c + j],
                NStreams::Four => (row[j] + row[c + j]) + (row[2 * c + j] + row[3 * c + j]),
            };
            *o = sum * inv_n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::{INIT_ALPHA_LOGIT, INIT_RES_IDENTITY_LOGIT};
    use proptest::prelude::*;

    fn mhc2(alpha_logit: f32, pre: [f32; 2], post: [f32; 2]) -> Mhc2 {
        Mhc2 {
            alpha_logit,
            pre_logits: pre,
            pre_bias: [0.0; 2],
            post_logits: post,
            post_bias: [0.0; 2],
        }
    }

    #[test]
    fn n2_matrices_follow_the_formulas() {
        let p = Mhc2 {
            alpha_logit: 1.5,
            pre_logits: [0.5, -2.0],
            pre_bias: [0.25, 1.0],
            post_logits: [-0.5, 3.0],
            post_bias: [0.0, -1.0],
        };
        let m = Mixing::from_mhc2(&p);
        let a = 1.0 / (1.0 + (-1.5f64).exp());
        let want = [a, 1.0 - a, 1.0 - a, a];
        for (got, want) in m.h_res().as_row_major().iter().zip(want) {
            assert!((*got as f64 - want).abs() < 1e-7);
        }
        let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
        assert!((m.h_pre()[0] as f64 - sig(0.75)).abs() < 1e-7);
        assert!((m.h_pre()[1] as f64 - sig(-1.0)).abs() < 1e-7);
        assert!((m.h_post()[0] as f64 - 2.0 * sig(-0.5)).abs() < 1e-6);
        assert!((m.h_post()[1] as f64 - 2.0 * sig(2.0)).abs() < 1e-6);
    }

    #[test]
    fn n4_one_hot_logits_give_that_permutation_matrix() {
        for (k, perm) in S4.iter().enumerate() {
            let mut p = Mhc4::init(0);
            p.res_logits = [-200.0; S4_LEN];
            p.res_logits[k] = 200.0;
            let h = *Mixing::from_mhc4(&p).h_res();
            for (i, &target) in perm.iter().enumerate() {
                for j in 0..4 {
                    assert_eq!(h.get(i, j), if target == j { 1.0 } else { 0.0 }, "k={k}");
                }
            }
        }
    }

    #[test]
    fn n4_matches_a_naive_sum_of_permutation_matrices() {
        let mut p = Mhc4::init(1);
        for (k, l) in p.res_logits.iter_mut().enumerate() {
            *l = (k as f32 * 0.37).sin() * 3.0;
        }
        let z: f64 = p.res_logits.iter().map(|&l| (l as f64).exp()).sum();
        let h = *Mixing::from_mhc4(&p).h_res();
        for i in 0..4 {
            for j in 0..4 {
                let want: f64 = S4
                    .iter()
                    .zip(&p.res_logits)
                    .filter(|(perm, _)| perm[i] == j)
                    .map(|(_, &l)| (l as f64).exp() / z)
                    .sum();
                assert!((h.get(i, j) as f64 - want).abs() < 1e-6, "({i}, {j})");
            }
        }
    }

    #[test]
    fn init_is_near_identity_as_documented() {
        let m2 = Mixing::from_params(&MhcParams::init(NStreams::Two, 0));
        assert!((m2.h_res().get(0, 0) - 0.9).abs() < 1e-6);
        assert!((m2.h_res().get(0, 1) - 0.1).abs() < 1e-6);
        assert!((sigmoid(INIT_ALPHA_LOGIT) - 0.9).abs() < 1e-6);

        let m4 = Mixing::from_params(&MhcParams::init(NStreams::Four, 5));
        let off = 0.1 / 23.0 * 6.0;
        for i in 0..4 {
            for j in 0..4 {
                let want = if i == j { 0.9 + 0.1 / 23.0 * 5.0 } else { off };
                assert!((m4.h_res().get(i, j) - want).abs() < 1e-6, "({i}, {j})");
            }
        }
        let mut w = [0.0; S4_LEN];
        let mut l = [0.0; S4_LEN];
        l[0] = INIT_RES_IDENTITY_LOGIT;
        softmax(&l, &mut w);
        assert!((w[0] - 0.9).abs() < 1e-6);

        // Module 5 favours stream 1: h_pre 0.731 there and 0.269 elsewhere, h_post twice that.
        for s in 0..4 {
            let (pre, post) = if s == 1 {
                (0.731_058_6, 1.462_117_2)
            } else {
                (0.268_941_4, 0.537_882_8)
            };
            assert!((m4.h_pre()[s] - pre).abs() < 1e-6);
            assert!((m4.h_post()[s] - post).abs() < 1e-6);
        }
        // Mean output gain over the streams: 1.0 for N = 2, 0.77 for N = 4 (module doc).
        assert!((m2.h_post().iter().sum::<f32>() / 2.0 - 1.0).abs() < 1e-6);
        assert!((m4.h_post().iter().sum::<f32>() / 4.0 - 0.769_4).abs() < 1e-3);
    }

    #[test]
    fn prepare_input_and_apply_match_a_hand_computation_n2() {
        // a = σ(0) = 0.5, h_pre = σ(0) = 0.5 on both streams, h_post = 2σ(0) = 1 on both.
        let m = Mixing::from_mhc2(&mhc2(0.0, [0.0, 0.0], [0.0, 0.0]));
        // B = 2, C = 2; row 0: stream0 = [1, 2], stream1 = [3, 4]; row 1: [-1, 0], [5, 8].
        let mut x = vec![1.0, 2.0, 3.0, 4.0, -1.0, 0.0, 5.0, 8.0];
        let mut u = vec![0.0; 4];
        m.prepare_input(&x, 2, &mut u);
        assert_eq!(u, [2.0, 3.0, 2.0, 4.0]);
        let y = [10.0, 20.0, 100.0, 200.0];
        m.apply(&mut x, &y, 2);
        // Each new stream = 0.5·s0 + 0.5·s1 + y.
        assert_eq!(x, [12.0, 23.0, 12.0, 23.0, 102.0, 204.0, 102.0, 204.0]);
    }

    #[test]
    fn prepare_input_and_apply_match_a_naive_computation_n4() {
        let mut p = Mhc4::init(2);
        for (k, l) in p.res_logits.iter_mut().enumerate() {
            *l = (k as f32 * 1.3).cos();
        }
        p.pre_logits = [0.3, -0.2, 0.9, -1.1];
        p.post_logits = [-0.4, 0.6, 0.1, 0.0];
        let m = Mixing::from_mhc4(&p);
        let (b, c) = (3, 5);
        let x: Vec<f32> = (0..b * 4 * c).map(|i| (i as f32 * 0.7).sin()).collect();
        let y: Vec<f32> = (0..b * c).map(|i| (i as f32 * 0.3).cos()).collect();

        let mut u = vec![0.0; b * c];
        m.prepare_input(&x, c, &mut u);
        let mut streams = x.clone();
        m.apply(&mut streams, &y, c);
        for bi in 0..b {
            for j in 0..c {
                let xs = |s: usize| x[bi * 4 * c + s * c + j] as f64;
                let want_u: f64 = (0..4).map(|s| m.h_pre()[s] as f64 * xs(s)).sum();
                assert!((u[bi * c + j] as f64 - want_u).abs() < 1e-6);
                for i in 0..4 {
                    let mix: f64 = (0..4).map(|s| m.h_res().get(i, s) as f64 * xs(s)).sum();
                    let want = mix + m.h_post()[i] as f64 * y[bi * c + j] as f64;
                    let got = streams[bi * 4 * c + i * c + j];
                    assert!((got as f64 - want).abs() < 1e-6);
                    // Bit for bit the documented f32 order (what the training graph computes).
                    let mut acc = m.h_res().get(i, 0) * xs(0) as f32;
                    for s in 1..4 {
                        acc += m.h_res().get(i, s) * xs(s) as f32;
                    }
                    acc += m.h_post()[i] * y[bi * c + j];
                    assert_eq!(got, acc);
                }
            }
        }
    }

    #[test]
    fn collapse_of_apply_keeps_the_stream_mean_plus_mean_post_gain() {
        // Doubly stochastic H_res preserves the mean of the streams: collapse(apply(x, y)) =
        // collapse(x) + mean(h_post)·y. This is why h_post, not H_res, sets the output gain.
        let m = Mixing::from_params(&MhcParams::init(NStreams::Four, 0));
        let x: Vec<f32> = (0..8).map(|i| i as f32 - 3.0).collect();
        let y = [0.5, -2.0];
        let mut before = [0.0; 2];
        collapse(NStreams::Four, &x, 2, &mut before);
        let mut streams = x.clone();
        m.apply(&mut streams, &y, 2);
        let mut after = [0.0; 2];
        collapse(NStreams::Four, &streams, 2, &mut after);
        let gain = m.h_post().iter().sum::<f32>() / 4.0;
        for j in 0..2 {
            assert!((after[j] - (before[j] + gain * y[j])).abs() < 1e-5);
        }
    }

    #[test]
    #[should_panic(expected = "stream buffer")]
    fn shape_mismatch_panics_with_a_message() {
        let m = Mixing::from_params(&MhcParams::init(NStreams::Two, 0));
        m.apply(&mut [0.0; 6], &[0.0; 2], 2);
    }

    proptest! {
        #[test]
        fn expand_then_collapse_is_identity(
            c in 1usize..9,
            rows in 1usize..5,
            seed in proptest::collection::vec(-1.0e30f32..1.0e30, 32),
            four in any::<bool>(),
        ) {
            let n = if four { NStreams::Four } else { NStreams::Two };
            let x: Vec<f32> = (0..rows * c).map(|i| seed[i % seed.len()] / (i + 1) as f32).collect();
            let mut streams = vec![f32::NAN; n.count() * x.len()];
            expand(n, &x, c, &mut streams);
            let mut back = vec![f32::NAN; x.len()];
            collapse(n, &streams, c, &mut back);
            prop_assert_eq!(
                back.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                x.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            );
        }
    }
}
