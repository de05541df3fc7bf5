//! Vector math shared by attention, the feed-forward block and sampling: a polynomial `e^x` for
//! x ≤ 0 in 8-wide AVX2 + FMA vectors, the SwiGLU product `silu(gate) · up` and the softmax
//! weights of a logits row built on it. Each has a portable form; a process always takes the same
//! one (chosen by CPU features), so prefill, decode and batched decode agree bit for bit with each
//! other. The two forms agree to a few ulps.

/// `out[j] = silu(gate[j]) · up[j]` for each row of `gate_up` (`[R, 2F]`: the gate's F values,
/// then up's), into `out` (`[R, F]`), with `silu(g) = g / (1 + e^-g)`.
pub(crate) fn swiglu_rows(gate_up: &[f32], f: usize, out: &mut [f32]) {
    assert_eq!(
        gate_up.len(),
        2 * out.len(),
        "gate|up rows are twice the output rows"
    );
    #[cfg(target_arch = "x86_64")]
    let vector = x86::usable();
    for (gu, a) in gate_up.chunks_exact(2 * f).zip(out.chunks_exact_mut(f)) {
        let (gate, up) = gu.split_at(f);
        #[cfg(target_arch = "x86_64")]
        if vector {
            // SAFETY: the CPU has AVX2 and FMA (checked by `usable`); the three slices hold f
            // values each (split above).
            unsafe { x86::swiglu(gate, up, a) };
            continue;
        }
        for ((a, &g), &u) in a.iter_mut().zip(gate).zip(up) {
            *a = silu(g) * u;
        }
    }
}

/// `out[j] = relu(gate[j])² · up[j]` for each row of `gate_up` (as [`swiglu_rows`]): BitNet
/// b1.58's gated squared ReLU. Plain code: the compiler vectorizes it.
pub(crate) fn relu2_rows(gate_up: &[f32], f: usize, out: &mut [f32]) {
    assert_eq!(
        gate_up.len(),
        2 * out.len(),
        "gate|up rows are twice the output rows"
    );
    for (gu, a) in gate_up.chunks_exact(2 * f).zip(out.chunks_exact_mut(f)) {
        let (gate, up) = gu.split_at(f);
        for ((a, &g), &u) in a.iter_mut().zip(gate).zip(up) {
            let r = g.max(0.0);
            *a = r * r * u;
        }
    }
}

/// `Σ a_i · b_i` with AVX2 FMA where the CPU has it (four 8-lane chains), else the portable
/// eight-lane sum. One function for every caller, so every path gives the same bits.
pub(crate) fn dot_fma(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot_fma: lengths");
    #[cfg(target_arch = "x86_64")]
    if x86::usable() {
        // SAFETY: the CPU has AVX2 and FMA (checked by `usable`); the slices are equally long.
        return unsafe { x86::dot(a, b) };
    }
    crate::attention::dot(a, b)
}

/// [`dot_f16`] of one f16 row with two vectors at once (each table value widened once): the
/// same bits as two calls.
pub(crate) fn dot_f16_pair(a: &[half::f16], b0: &[f32], b1: &[f32]) -> (f32, f32) {
    assert!(
        a.len() == b0.len() && a.len() == b1.len(),
        "dot_f16_pair: lengths"
    );
    #[cfg(target_arch = "x86_64")]
    if x86::usable() && is_x86_feature_detected!("f16c") {
        // SAFETY: the CPU has AVX2, FMA and F16C (checked just above); equal lengths.
        return unsafe { x86::dot_f16_pair(a, b0, b1) };
    }
    (dot_f16(a, b0), dot_f16(a, b1))
}

/// f16 values widened to f32 (exact), eight at a time with F16C where the CPU has it.
pub(crate) fn widen_f16(a: &[half::f16], out: &mut [f32]) {
    assert_eq!(a.len(), out.len(), "widen_f16: lengths");
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("f16c") && is_x86_feature_detected!("avx") {
        // SAFETY: the CPU has AVX and F16C (checked just above); equal lengths.
        return unsafe { x86::widen_f16(a, out) };
    }
    half::slice::HalfFloatSliceExt::convert_to_f32_slice(a, out);
}

/// [`dot_fma`] of an f16 row (widened exactly) with `b`, without widening the row into memory
/// first where the CPU converts f16 itself (F16C): the same bits as widening, then `dot_fma`.
pub(crate) fn dot_f16(a: &[half::f16], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot_f16: lengths");
    #[cfg(target_arch = "x86_64")]
    if x86::usable() && is_x86_feature_detected!("f16c") {
        // SAFETY: the CPU has AVX2, FMA and F16C (checked just above); equal lengths.
        return unsafe { x86::dot_f16(a, b) };
    }
    let mut row = vec![0.0f32; a.len()];
    half::slice::HalfFloatSliceExt::convert_to_f32_slice(a, &mut row);
    dot_fma(&row, b)
}

fn silu(g: f32) -> f32 {
    g / (1.0 + (-g).exp())
}

/// Values per entry of the block sums [`softmax_weights`] writes.
pub(crate) const WEIGHT_BLOCK: usize = 64;

/// Weights below e^-87 (and NaN logits) count as 0.
const LOWEST_EXPONENT: f32 = -87.0;

/// Unnormalized softmax weights of `logits` at temperature `1 / inv_t`, relative to their
/// largest value `max`: `out[i] = e^((logits[i] - max) · inv_t)`, 0 where the exponent is under
/// -87 or the logit is NaN. `block_sums[b]` receives the sum of block b of [`WEIGHT_BLOCK`]
/// weights; returns the sum of all.
///
/// # Panics
/// If `out` is not as long as `logits` or `block_sums` does not hold one sum per block.
pub(crate) fn softmax_weights(
    logits: &[f32],
    max: f32,
    inv_t: f32,
    out: &mut [f32],
    block_sums: &mut [f32],
) -> f32 {
    assert_eq!(out.len(), logits.len(), "one weight per logit");
    assert_eq!(
        block_sums.len(),
        logits.len().div_ceil(WEIGHT_BLOCK),
        "one sum per block"
    );
    #[cfg(target_arch = "x86_64")]
    if x86::usable() {
        // SAFETY: the CPU has AVX2 and FMA (checked by `usable`); the lengths were checked above.
        return unsafe { x86::softmax_weights(logits, max, inv_t, out, block_sums) };
    }
    let mut total = 0.0;
    for ((logits, out), sum) in logits
        .chunks(WEIGHT_BLOCK)
        .zip(out.chunks_mut(WEIGHT_BLOCK))
        .zip(block_sums.iter_mut())
    {
        *sum = 0.0;
        for (w, &l) in out.iter_mut().zip(logits) {
            let x = (l - max) * inv_t;
            *w = if x >= LOWEST_EXPONENT { x.exp() } else { 0.0 };
            *sum += *w;
        }
        total += *sum;
    }
    total
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use std::arch::x86_64::*;

    /// Whether the CPU runs the functions of this module.
    pub(crate) fn usable() -> bool {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }

    /// [`super::dot_fma`]: four chains of 8 lanes, then the tail in scalar FMAs.
    ///
    /// # Safety
    /// The CPU runs AVX2 and FMA; `b` is at least as long as `a`.
    #[target_feature(enable = "avx2,fma")]
    pub(crate) unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        let mut acc = [_mm256_setzero_ps(); 4];
        let full = a.len() / 32 * 32;
        for i in (0..full).step_by(32) {
            for (k, acc) in acc.iter_mut().enumerate() {
                let (pa, pb) = (a.as_ptr().add(i + 8 * k), b.as_ptr().add(i + 8 * k));
                *acc = _mm256_fmadd_ps(_mm256_loadu_ps(pa), _mm256_loadu_ps(pb), *acc);
            }
        }
        let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let mut total = horizontal_sum(sum);
        for i in full..a.len() {
            total = a[i].mul_add(b[i], total);
        }
        total
    }

    /// [`super::dot_f16_pair`]: [`dot_f16`]'s four chains for each vector, sharing the loads
    /// and conversions of `a`.
    ///
    /// # Safety
    /// The CPU runs AVX2, FMA and F16C; `b0` and `b1` are at least as long as `a`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) unsafe fn dot_f16_pair(a: &[half::f16], b0: &[f32], b1: &[f32]) -> (f32, f32) {
        let mut acc0 = [_mm256_setzero_ps(); 4];
        let mut acc1 = [_mm256_setzero_ps(); 4];
        let full = a.len() / 32 * 32;
        for i in (0..full).step_by(32) {
            for k in 0..4 {
                let pa = a.as_ptr().add(i + 8 * k) as *const __m128i;
                let wide = _mm256_cvtph_ps(_mm_loadu_si128(pa));
                let (p0, p1) = (b0.as_ptr().add(i + 8 * k), b1.as_ptr().add(i + 8 * k));
                acc0[k] = _mm256_fmadd_ps(wide, _mm256_loadu_ps(p0), acc0[k]);
                acc1[k] = _mm256_fmadd_ps(wide, _mm256_loadu_ps(p1), acc1[k]);
            }
        }
        let finish = |acc: [__m256; 4], b: &[f32]| {
            let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
            let mut total = horizontal_sum(sum);
            for i in full..a.len() {
                total = a[i].to_f32().mul_add(b[i], total);
            }
            total
        };
        (finish(acc0, b0), finish(acc1, b1))
    }

    /// [`super::widen_f16`].
    ///
    /// # Safety
    /// The CPU runs AVX and F16C; `out` is as long as `a`.
    #[target_feature(enable = "avx,f16c")]
    pub(crate) unsafe fn widen_f16(a: &[half::f16], out: &mut [f32]) {
        let full = a.len() / 8 * 8;
        for i in (0..full).step_by(8) {
            let wide = _mm256_cvtph_ps(_mm_loadu_si128(a.as_ptr().add(i) as *const __m128i));
            _mm256_storeu_ps(out.as_mut_ptr().add(i), wide);
        }
        for i in full..a.len() {
            out[i] = a[i].to_f32();
        }
    }

    /// [`super::dot_f16`]: [`dot`] with each 8 values of `a` widened by `vcvtph2ps` as loaded.
    ///
    /// # Safety
    /// The CPU runs AVX2, FMA and F16C; `b` is at least as long as `a`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) unsafe fn dot_f16(a: &[half::f16], b: &[f32]) -> f32 {
        let mut acc = [_mm256_setzero_ps(); 4];
        let full = a.len() / 32 * 32;
        for i in (0..full).step_by(32) {
            for (k, acc) in acc.iter_mut().enumerate() {
                let pa = a.as_ptr().add(i + 8 * k) as *const __m128i;
                let wide = _mm256_cvtph_ps(_mm_loadu_si128(pa));
                let pb = b.as_ptr().add(i + 8 * k);
                *acc = _mm256_fmadd_ps(wide, _mm256_loadu_ps(pb), *acc);
            }
        }
        let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let mut total = horizontal_sum(sum);
        for i in full..a.len() {
            total = a[i].to_f32().mul_add(b[i], total);
        }
        total
    }

    /// `e^x` for x ≤ 0 (within 2 ulps down to -87; anything lower, -∞ and NaN included, gives a
    /// value of at most e^-87 or garbage that callers mask off): x = n·ln 2 + r with
    /// |r| ≤ ln 2 / 2, e^r by its Taylor polynomial of degree 6, times 2^n built in the exponent
    /// bits.
    ///
    /// # Safety
    /// The CPU runs AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(crate) unsafe fn exp_of_negative(x: __m256) -> __m256 {
        const LN2_HI: f32 = 0.693_359_4;
        const LN2_LO: f32 = -2.121_944_4e-4;
        let x = _mm256_max_ps(x, _mm256_set1_ps(-87.0));
        let n = _mm256_round_ps(
            _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
            _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
        );
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
        let mut p = _mm256_set1_ps(1.0 / 720.0);
        for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let two_to_n = _mm256_castsi256_ps(_mm256_slli_epi32(
            _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)),
            23,
        ));
        _mm256_mul_ps(p, two_to_n)
    }

    /// The sum of the lanes of `v`.
    #[target_feature(enable = "avx2,fma")]
    pub(crate) unsafe fn horizontal_sum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
    }

    /// Eight softmax weights: `e^((l - max) · inv_t)`, 0 where the exponent is under -87 or NaN.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn weights8(l: __m256, max: __m256, inv_t: __m256) -> __m256 {
        let x = _mm256_mul_ps(_mm256_sub_ps(l, max), inv_t);
        let kept = _mm256_cmp_ps(x, _mm256_set1_ps(super::LOWEST_EXPONENT), _CMP_GE_OQ);
        _mm256_and_ps(exp_of_negative(x), kept)
    }

    /// [`super::softmax_weights`] 8 values at a time; a block's tail padded with -∞ (weight 0).
    ///
    /// # Safety
    /// The CPU runs AVX2 and FMA; `out` is as long as `logits`; `block_sums` holds one entry
    /// per block.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn softmax_weights(
        logits: &[f32],
        max: f32,
        inv_t: f32,
        out: &mut [f32],
        block_sums: &mut [f32],
    ) -> f32 {
        let (max, inv_t) = (_mm256_set1_ps(max), _mm256_set1_ps(inv_t));
        let mut total = 0.0;
        for ((logits, out), sum) in logits
            .chunks(super::WEIGHT_BLOCK)
            .zip(out.chunks_mut(super::WEIGHT_BLOCK))
            .zip(block_sums.iter_mut())
        {
            let mut acc = _mm256_setzero_ps();
            let full = logits.len() / 8 * 8;
            for j in (0..full).step_by(8) {
                let w = weights8(_mm256_loadu_ps(logits.as_ptr().add(j)), max, inv_t);
                _mm256_storeu_ps(out.as_mut_ptr().add(j), w);
                acc = _mm256_add_ps(acc, w);
            }
            if full < logits.len() {
                let rest = logits.len() - full;
                let mut padded = [f32::NEG_INFINITY; 8];
                padded[..rest].copy_from_slice(&logits[full..]);
                let w = weights8(_mm256_loadu_ps(padded.as_ptr()), max, inv_t);
                _mm256_storeu_ps(padded.as_mut_ptr(), w);
                out[full..].copy_from_slice(&padded[..rest]);
                acc = _mm256_add_ps(acc, w);
            }
            *sum = horizontal_sum(acc);
            total += *sum;
        }
        total
    }

    /// `silu(g) · u` of 8 lanes from `E = e^-|g|` (never above 1, so never overflowing):
    /// `silu(g) = g / (1 + E)` for g ≥ 0 and `g · E / (1 + E)` for g < 0.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn swiglu8(g: __m256, u: __m256) -> __m256 {
        let magnitude = _mm256_andnot_ps(_mm256_set1_ps(-0.0), g);
        let e = exp_of_negative(_mm256_sub_ps(_mm256_setzero_ps(), magnitude));
        let negative = _mm256_cmp_ps(g, _mm256_setzero_ps(), _CMP_LT_OQ);
        let numerator = _mm256_blendv_ps(g, _mm256_mul_ps(g, e), negative);
        let silu = _mm256_div_ps(numerator, _mm256_add_ps(_mm256_set1_ps(1.0), e));
        _mm256_mul_ps(silu, u)
    }

    /// [`super::swiglu_rows`] of one row, 8 values at a time; the tail padded with zeros.
    ///
    /// # Safety
    /// The CPU runs AVX2 and FMA; `up` and `out` are as long as `gate`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn swiglu(gate: &[f32], up: &[f32], out: &mut [f32]) {
        let full = gate.len() / 8 * 8;
        for j in (0..full).step_by(8) {
            let (g, u) = (
                _mm256_loadu_ps(gate.as_ptr().add(j)),
                _mm256_loadu_ps(up.as_ptr().add(j)),
            );
            _mm256_storeu_ps(out.as_mut_ptr().add(j), swiglu8(g, u));
        }
        if full < gate.len() {
            let (mut g, mut u, mut o) = ([0.0f32; 8], [0.0f32; 8], [0.0f32; 8]);
            let rest = gate.len() - full;
            g[..rest].copy_from_slice(&gate[full..]);
            u[..rest].copy_from_slice(&up[full..]);
            _mm256_storeu_ps(
                o.as_mut_ptr(),
                swiglu8(_mm256_loadu_ps(g.as_ptr()), _mm256_loadu_ps(u.as_ptr())),
            );
            out[full..].copy_from_slice(&o[..rest]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_f16_dot_is_widening_then_the_f32_dot_bit_for_bit() {
        for len in [1, 7, 8, 31, 32, 33, 2560, 2561] {
            let a: Vec<half::f16> = (0..len)
                .map(|i| half::f16::from_f32(((i * 37 % 101) as f32 - 50.0) / 7.0))
                .collect();
            let b: Vec<f32> = (0..len)
                .map(|i| ((i * 13 % 29) as f32 - 14.0) / 3.0)
                .collect();
            let mut wide = vec![0.0f32; len];
            widen_f16(&a, &mut wide);
            assert!(wide.iter().zip(&a).all(|(w, h)| *w == h.to_f32()), "{len}");
            let expected: f64 = wide.iter().zip(&b).map(|(x, y)| f64::from(x * y)).sum();
            let (fused, widened) = (dot_f16(&a, &b), dot_fma(&wide, &b));
            assert_eq!(fused.to_bits(), widened.to_bits(), "{len}");
            let other: Vec<f32> = b.iter().map(|v| v * 0.5 - 1.0).collect();
            let (first, second) = dot_f16_pair(&a, &b, &other);
            assert_eq!(first.to_bits(), fused.to_bits(), "{len}");
            assert_eq!(second.to_bits(), dot_f16(&a, &other).to_bits(), "{len}");
            assert!(
                (f64::from(fused) - expected).abs() < 1e-3 * len as f64,
                "{len}"
            );
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vector_exp_is_within_two_ulps_of_f64() {
        use std::arch::x86_64::*;
        if !x86::usable() {
            return;
        }
        let mut worst = 0.0f64;
        for i in 0..=87_000 {
            let x = -(i as f32) / 1000.0;
            let mut got = [0.0f32; 8];
            // SAFETY: AVX2 and FMA are present (checked above); `got` holds 8 floats.
            unsafe { _mm256_storeu_ps(got.as_mut_ptr(), x86::exp_of_negative(_mm256_set1_ps(x))) };
            let exact = (x as f64).exp();
            let ulp = f64::from(f32::EPSILON) * exact.max(f64::from(f32::MIN_POSITIVE));
            worst = worst.max((got[0] as f64 - exact).abs() / ulp);
        }
        assert!(worst <= 2.0, "worst error {worst} ulps");
    }

    /// The dispatched softmax weights against f64, with NaN, -∞, weights under the floor and a
    /// partial last block.
    #[test]
    fn softmax_weights_match_f64_and_sum_by_block() {
        let mut logits: Vec<f32> = (0..1000)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 4.0)
            .collect();
        logits[3] = f32::NAN;
        logits[70] = f32::NEG_INFINITY;
        logits[999] = -500.0;
        let (max, inv_t) = (12.5f32, 1.0 / 0.7f32);
        let mut out = vec![f32::NAN; logits.len()];
        let mut sums = vec![f32::NAN; logits.len().div_ceil(WEIGHT_BLOCK)];
        let total = softmax_weights(&logits, max, inv_t, &mut out, &mut sums);
        for (i, (&l, &w)) in logits.iter().zip(&out).enumerate() {
            // The exponent as the f32 code rounds it, then e^x exactly.
            let x = f64::from((l - max) * inv_t);
            let want = if x >= -87.0 { x.exp() } else { 0.0 };
            assert!(
                (w as f64 - want).abs() <= 4.0 * f64::from(f32::EPSILON) * want,
                "logit {i} ({l}): {w} vs {want}"
            );
        }
        assert_eq!((out[3], out[70], out[999]), (0.0, 0.0, 0.0));
        for (b, &sum) in sums.iter().enumerate() {
            let block: f64 = out[b * WEIGHT_BLOCK..]
                .iter()
                .take(WEIGHT_BLOCK)
                .map(|&w| w as f64)
                .sum();
            assert!((sum as f64 - block).abs() <= 1e-5 * block, "block {b}");
        }
        let all: f64 = out.iter().map(|&w| w as f64).sum();
        assert!((total as f64 - all).abs() <= 1e-5 * all);
    }

    /// The dispatched SwiGLU (vector where the CPU runs it) against f64, over gates from -100 to
    /// 100 and a row length that leaves a vector tail.
    #[test]
    fn swiglu_matches_f64_within_a_few_ulps() {
        let f = 1003;
        let rows = 3;
        let gate_up: Vec<f32> = (0..rows * 2 * f)
            .map(|i| {
                let t = i as f32 / (rows * 2 * f) as f32;
                if (i / f) % 2 == 0 {
                    200.0 * t * t - 100.0 + (i % 7) as f32 * 0.01
                } else {
                    1.0 - t
                }
            })
            .collect();
        let mut out = vec![f32::NAN; rows * f];
        swiglu_rows(&gate_up, f, &mut out);
        for (r, (gu, o)) in gate_up.chunks(2 * f).zip(out.chunks(f)).enumerate() {
            for j in 0..f {
                let (g, u) = (gu[j] as f64, gu[f + j] as f64);
                let want = g / (1.0 + (-g).exp()) * u;
                let tolerance = 4.0 * f64::from(f32::EPSILON) * want.abs() + 1e-30;
                assert!(
                    (o[j] as f64 - want).abs() <= tolerance,
                    "row {r}, gate {g}: {} vs {want}",
                    o[j]
                );
            }
        }
    }
}
