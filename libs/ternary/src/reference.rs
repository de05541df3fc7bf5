//! The Rust scalar reference GEMV: the definition every kernel must match bit for bit.
//!
//! For each row `r`: `i[g] = Σ_{k in g} trit(r, k) · x_q[k]` exactly in integers; `acc = 0`;
//! for `g` in increasing order `acc = fma(s[r, g], i[g] as f32, acc)`; `y[r] = acc · act_scale`.
//! `|i[g]| ≤ 128 · 127 < 2^24`, so the conversion to f32 is exact and only the FMAs and the final
//! product round.

use crate::planar::PlanarWeights;
use crate::quant::{QuantizedActivations, QuantizedBatch};
use crate::{trit, GROUP_SIZE};

/// Exact integer dot product of group `group` of `row` with the activations.
pub fn group_dot(w: &PlanarWeights, row: usize, group: usize, x: &[i8]) -> i32 {
    let start = group * GROUP_SIZE;
    let end = (start + GROUP_SIZE).min(w.cols());
    (start..end)
        .map(|j| trit::decode(w.code(row, j)) as i32 * x[j] as i32)
        .sum()
}

/// One output of the reference GEMV for quantized activations `x` with scale `act_scale`.
pub fn gemv_row(w: &PlanarWeights, row: usize, x: &[i8], act_scale: f32) -> f32 {
    let acc = (0..w.groups()).fold(0.0f32, |acc, g| {
        w.scale(row, g).mul_add(group_dot(w, row, g, x) as f32, acc)
    });
    acc * act_scale
}

/// `y = W · x` by the definition. Panics if `x.len() != w.cols()` or `y.len() != w.rows()`; the
/// checked entry point for callers is [`crate::kernels::gemv`] with [`crate::Kernel::Reference`].
pub fn gemv(w: &PlanarWeights, x: &QuantizedActivations, y: &mut [f32]) {
    assert_eq!(x.len(), w.cols(), "reference gemv: activation length");
    assert_eq!(y.len(), w.rows(), "reference gemv: output length");
    for (row, out) in y.iter_mut().enumerate() {
        *out = gemv_row(w, row, x.values(), x.scale());
    }
}

/// `Y = X · Wᵀ` for a batch by the definition: `y` is `[batch, rows]`, vector `b` of the batch
/// gives row `b` of `y`. Panics on mismatched lengths, like [`gemv`].
pub fn gemm(w: &PlanarWeights, x: &QuantizedBatch, y: &mut [f32]) {
    assert_eq!(x.len(), w.cols(), "reference gemm: activation length");
    assert_eq!(
        y.len(),
        w.rows() * x.batch(),
        "reference gemm: output length"
    );
    for (b, out) in y.chunks_mut(w.rows()).enumerate() {
        for (row, value) in out.iter_mut().enumerate() {
            *value = gemv_row(w, row, x.values(b), x.scales()[b]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::quantize_activations;
    use proptest::prelude::*;

    proptest! {
        /// The reference equals a naive f64 computation of Σ q·s·x_q·act_scale within 1e-5 of the
        /// sum of absolute terms (the only differences are f32 roundings).
        #[test]
        fn reference_matches_naive_f64(
            rows in 1usize..6, cols in 1usize..700, seed in any::<u64>()
        ) {
            let mut state = seed | 1;
            let mut next = move || {
                state ^= state << 13; state ^= state >> 7; state ^= state << 17;
                (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            };
            let weights: Vec<f32> = (0..rows * cols).map(|_| next()).collect();
            let x: Vec<f32> = (0..cols).map(|_| next() * 10.0).collect();
            let w = PlanarWeights::from_f32(rows, cols, &weights).unwrap();
            let xq = quantize_activations(&x);
            let mut y = vec![0f32; rows];
            gemv(&w, &xq, &mut y);
            for (r, &got) in y.iter().enumerate() {
                let (mut exact, mut magnitude) = (0f64, 0f64);
                for j in 0..cols {
                    let term = trit::decode(w.code(r, j)) as f64
                        * w.scale(r, j / GROUP_SIZE) as f64
                        * xq.values()[j] as f64
                        * xq.scale() as f64;
                    exact += term;
                    magnitude += term.abs();
                }
                prop_assert!((got as f64 - exact).abs() <= 1e-5 * magnitude + 1e-30,
                    "row {}: {} vs {} (magnitude {})", r, got, exact, magnitude);
            }
        }
    }
}
