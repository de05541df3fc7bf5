//! Numerically stable sigmoid and softmax, the only non-linear functions of mHC-lite.
//!
//! Owns the exact operation order of both, so the inference model and the training graph can follow
//! the same definition. Neither function overflows for any finite input: `exp` is only ever taken of
//! a non-positive number.

/// Logistic sigmoid σ(x) = 1 / (1 + e^(−x)), in (0, 1) for finite x (0 or 1 only after rounding).
///
/// Stable form: for x ≥ 0, `1 / (1 + exp(-x))`; for x < 0, `e / (1 + e)` with `e = exp(x)`.
/// Both branches take `exp` of a non-positive number, so nothing overflows.
pub fn sigmoid(x: f32) -> f32 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// Softmax of `logits` into `out` (same length, at least 1).
///
/// Stable form, in this order: `m = max_k logits[k]`; `e_k = exp(logits[k] - m)` (every e_k ≤ 1
/// and the largest is exactly 1); `sum = e_0 + e_1 + ...` accumulated left to right in f32;
/// `out[k] = e_k / sum`. With finite logits, sum ≥ 1, so the division never sees 0.
///
/// # Panics
/// If `logits` is empty or the lengths differ (a programming error, not a data error).
pub fn softmax(logits: &[f32], out: &mut [f32]) {
    assert!(!logits.is_empty(), "softmax of an empty vector");
    assert_eq!(
        logits.len(),
        out.len(),
        "softmax: input and output lengths differ"
    );
    let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for (o, &l) in out.iter_mut().zip(logits) {
        *o = (l - m).exp();
        sum += *o;
    }
    for o in out.iter_mut() {
        *o /= sum;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sigmoid_known_values_and_extremes() {
        assert_eq!(sigmoid(0.0), 0.5);
        assert!((sigmoid(1.0) - 0.731_058_6).abs() < 1e-7);
        assert!((sigmoid(-1.0) - 0.268_941_4).abs() < 1e-7);
        assert_eq!(sigmoid(f32::MAX), 1.0);
        assert_eq!(sigmoid(f32::MIN), 0.0);
        assert!(sigmoid(-100.0) > 0.0 && sigmoid(-100.0).is_finite());
        for i in -200..=200 {
            let x = i as f32 * 0.1;
            assert!(
                (sigmoid(x) + sigmoid(-x) - 1.0).abs() < 1e-6,
                "symmetry at {x}"
            );
        }
    }

    #[test]
    fn softmax_is_a_distribution_even_for_huge_logits() {
        let logits = [f32::MAX, 0.0, f32::MIN, -3.0e38];
        let mut out = [0.0; 4];
        softmax(&logits, &mut out);
        assert_eq!(out, [1.0, 0.0, 0.0, 0.0]);

        let logits = [1.0, 2.0, 3.0];
        softmax(&logits, &mut out[..3]);
        let z: f32 = logits.iter().map(|l| l.exp()).sum();
        for (o, l) in out.iter().zip(logits) {
            assert!((o - l.exp() / z).abs() < 1e-7);
        }
    }
}
