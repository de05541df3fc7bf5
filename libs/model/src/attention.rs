//! Softmax attention of one query row's heads against a cache: the query heads that share one
//! key/value head (grouped-query attention) are done together, `out_h = softmax(q_h·kᵀ · scale) · v`
//! over every cached position.
//!
//! Keys and values are the cache's f16 or f32 (see [`crate::kv`]); queries, scores and sums are
//! f32.
//!
//! Two implementations of the same arithmetic: a portable one and, on x86-64 CPUs with AVX2, FMA
//! and F16C, one with 8-wide vectors (dot products of 8 positions reduced together, a polynomial `exp`,
//! fused multiply-adds). They agree to a few ulps, not bit for bit; a process always takes the same
//! one, so prefill, decode and batched decode give the same bits as each other.
//!
//! Weights under [`NEGLIGIBLE_WEIGHT`] of the largest are dropped in both: they add nothing an f32
//! output can hold, but as subnormals (or making the products `p·v` subnormal) they cost every
//! multiply a microcode assist, which once made attention the slowest part of decoding.

/// Attention weights below this are dropped (2^-100 ≈ 7.9e-31).
const NEGLIGIBLE_WEIGHT: f32 = 7.888_609e-31;
/// ln(2^-100): scores this far below the maximum give a weight under [`NEGLIGIBLE_WEIGHT`].
const NEGLIGIBLE_EXPONENT: f32 = -69.314_72;

use half::f16;

use crate::kv::KvLayer;

/// A key or value channel as the cache stores it.
pub(crate) trait KvValue: Copy {
    fn widen(self) -> f32;

    /// Eight consecutive values at `p`, as f32.
    ///
    /// # Safety
    /// The CPU runs AVX2 and F16C; `p` points at eight readable values.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256;
}

impl KvValue for f32 {
    #[inline(always)]
    fn widen(self) -> f32 {
        self
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const f32) -> std::arch::x86_64::__m256 {
        // SAFETY: the caller guarantees AVX and eight readable floats.
        unsafe { std::arch::x86_64::_mm256_loadu_ps(p) }
    }
}

impl KvValue for f16 {
    #[inline(always)]
    fn widen(self) -> f32 {
        self.to_f32()
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const f16) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        // SAFETY: the caller guarantees F16C and eight readable halves (16 bytes).
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.cast())) }
    }
}

/// The query heads of one key/value head: `queries` holds them one after the other, `head_dim`
/// each; key t of the head is `keys[t·stride + offset ..][..head_dim]` of `cache`, likewise the
/// values.
pub(crate) struct GroupView<'a> {
    pub queries: &'a [f32],
    pub head_dim: usize,
    pub cache: KvLayer<'a>,
    pub stride: usize,
    pub offset: usize,
    pub scale: f32,
}

impl GroupView<'_> {
    fn heads(&self) -> usize {
        self.queries.len() / self.head_dim
    }
}

/// Attention of every head of `group` over `weights.len() / heads` positions (`weights` is the
/// scratch for their softmax weights, head after head); `out` receives the heads' outputs one
/// after the other.
///
/// # Panics
/// If the keys or values do not hold that many positions, or the buffers are sized otherwise.
pub(crate) fn attend(group: &GroupView<'_>, weights: &mut [f32], out: &mut [f32]) {
    match group.cache {
        KvLayer::F16 { keys, values } => attend_stored(group, keys, values, weights, out),
        KvLayer::F32 { keys, values } => attend_stored(group, keys, values, weights, out),
    }
}

/// [`attend`] with the cache's keys and values as stored.
fn attend_stored<T: KvValue>(
    group: &GroupView<'_>,
    keys: &[T],
    values: &[T],
    weights: &mut [f32],
    out: &mut [f32],
) {
    let (d, heads) = (group.head_dim, group.heads());
    let len = weights.len() / heads;
    assert_eq!(
        weights.len(),
        heads * len,
        "one weight per head and position"
    );
    assert_eq!(out.len(), heads * d, "one output per head and channel");
    if len > 0 {
        let last = (len - 1) * group.stride + group.offset + d;
        assert!(
            last <= keys.len() && last <= values.len(),
            "the cache holds {len} positions"
        );
    }
    #[cfg(target_arch = "x86_64")]
    if simd::usable(d) {
        // SAFETY: the CPU has AVX2, FMA and F16C (checked by `usable`); the buffers' lengths were
        // checked above, which is what the function's pointer arithmetic relies on.
        return unsafe { simd::attend_avx2_fma(group, keys, values, weights, out) };
    }
    attend_portable(group, keys, values, weights, out)
}

/// Per head the scores in position order, max, exp, sum, then the weighted sum of values in
/// position order; each key and value row is read once for every head of the group.
fn attend_portable<T: KvValue>(
    group: &GroupView<'_>,
    keys: &[T],
    values: &[T],
    weights: &mut [f32],
    out: &mut [f32],
) {
    let d = group.head_dim;
    let len = weights.len() / group.heads();
    for t in 0..len {
        let k = &keys[t * group.stride + group.offset..][..d];
        for (h, q) in group.queries.chunks_exact(d).enumerate() {
            weights[h * len + t] = dot_with(q, k, T::widen) * group.scale;
        }
    }
    for scores in weights.chunks_exact_mut(len) {
        let max = scores.iter().fold(f32::NEG_INFINITY, |m, &w| m.max(w));
        let mut sum = 0.0f32;
        for w in scores.iter_mut() {
            let x = *w - max;
            *w = if x < NEGLIGIBLE_EXPONENT {
                0.0
            } else {
                x.exp()
            };
            sum += *w;
        }
        let inv = 1.0 / sum;
        for w in scores.iter_mut() {
            let p = *w * inv;
            *w = if p < NEGLIGIBLE_WEIGHT { 0.0 } else { p };
        }
    }
    out.fill(0.0);
    for t in 0..len {
        let v = &values[t * group.stride + group.offset..][..d];
        for (h, out_head) in out.chunks_exact_mut(d).enumerate() {
            let p = weights[h * len + t];
            if p == 0.0 {
                continue;
            }
            for (o, &vv) in out_head.iter_mut().zip(v) {
                *o += p * vv.widen();
            }
        }
    }
}

/// `Σ a_i·b_i` with eight independent accumulators.
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    dot_with(a, b, |x| x)
}

#[inline(always)]
fn dot_with<B: Copy>(a: &[f32], b: &[B], widen: impl Fn(B) -> f32) -> f32 {
    let mut acc = [0.0f32; 8];
    let chunks = a.len() / 8 * 8;
    for (ca, cb) in a[..chunks].chunks_exact(8).zip(b[..chunks].chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += ca[i] * widen(cb[i]);
        }
    }
    let mut sum = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    for (&x, &y) in a[chunks..].iter().zip(&b[chunks..]) {
        sum += x * widen(y);
    }
    sum
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use super::{GroupView, KvValue, NEGLIGIBLE_EXPONENT, NEGLIGIBLE_WEIGHT};
    use crate::vmath::x86::{exp_of_negative, horizontal_sum};
    use std::arch::x86_64::*;

    /// Whether [`attend_avx2_fma`] runs here for heads of `head_dim` channels.
    pub(super) fn usable(head_dim: usize) -> bool {
        head_dim % 8 == 0 && crate::vmath::x86::usable() && is_x86_feature_detected!("f16c")
    }

    /// [`super::attend_portable`] in 8-wide vectors, one head at a time (its keys and values
    /// are re-read from cache for each head of the group).
    ///
    /// # Safety
    /// The CPU runs AVX2, FMA and F16C; `group.head_dim % 8 == 0`; `keys` and `values` hold
    /// `weights.len() / heads` positions of `group`'s layout; `out.len() == heads * head_dim`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn attend_avx2_fma<T: KvValue>(
        group: &GroupView<'_>,
        keys: &[T],
        values: &[T],
        weights: &mut [f32],
        out: &mut [f32],
    ) {
        let d = group.head_dim;
        let len = weights.len() / group.heads();
        for ((q, scores), out_head) in group
            .queries
            .chunks_exact(d)
            .zip(weights.chunks_exact_mut(len))
            .zip(out.chunks_exact_mut(d))
        {
            scores_into(group, keys, q, scores);
            softmax_in_place(scores);
            weighted_values(group, values, scores, out_head);
        }
    }

    /// `scores[t] = q·k_t · scale`: eight positions at a time, their eight 8-lane partial sums
    /// reduced together by one transposing tree of `hadd`.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn scores_into<T: KvValue>(
        group: &GroupView<'_>,
        keys: &[T],
        q: &[f32],
        scores: &mut [f32],
    ) {
        let d = group.head_dim;
        let key = |t: usize| keys.as_ptr().add(t * group.stride + group.offset);
        let scale = _mm256_set1_ps(group.scale);
        let first = scores.len() / 8 * 8;
        let mut blocks = scores.chunks_exact_mut(8);
        for (b, block) in (&mut blocks).enumerate() {
            let mut acc = [_mm256_setzero_ps(); 8];
            for j in (0..d).step_by(8) {
                let qv = _mm256_loadu_ps(q.as_ptr().add(j));
                for (i, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(qv, T::load8(key(8 * b + i).add(j)), *a);
                }
            }
            let sums = transpose_sum(&acc);
            _mm256_storeu_ps(block.as_mut_ptr(), _mm256_mul_ps(sums, scale));
        }
        for (i, s) in blocks.into_remainder().iter_mut().enumerate() {
            let mut acc = _mm256_setzero_ps();
            for j in (0..d).step_by(8) {
                let k = T::load8(key(first + i).add(j));
                acc = _mm256_fmadd_ps(_mm256_loadu_ps(q.as_ptr().add(j)), k, acc);
            }
            *s = horizontal_sum(acc) * group.scale;
        }
    }

    /// Lane i = the sum of the lanes of `v[i]`.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn transpose_sum(v: &[__m256; 8]) -> __m256 {
        let s01 = _mm256_hadd_ps(v[0], v[1]);
        let s23 = _mm256_hadd_ps(v[2], v[3]);
        let s45 = _mm256_hadd_ps(v[4], v[5]);
        let s67 = _mm256_hadd_ps(v[6], v[7]);
        // Per 128-bit half: the half's sums of v[0..4] (left) and of v[4..8] (right).
        let s0123 = _mm256_hadd_ps(s01, s23);
        let s4567 = _mm256_hadd_ps(s45, s67);
        _mm256_add_ps(
            _mm256_permute2f128_ps(s0123, s4567, 0x20),
            _mm256_permute2f128_ps(s0123, s4567, 0x31),
        )
    }

    /// Scores → softmax weights, negligible ones dropped. The tail of fewer than eight goes
    /// through the same vector code, padded with -∞ (which gives weight 0).
    #[target_feature(enable = "avx2,fma")]
    unsafe fn softmax_in_place(scores: &mut [f32]) {
        let max = _mm256_set1_ps(max_of(scores));
        let mut sum = _mm256_setzero_ps();
        let mut blocks = scores.chunks_exact_mut(8);
        for block in &mut blocks {
            sum = _mm256_add_ps(sum, exp_block(block, max));
        }
        let tail = blocks.into_remainder();
        let mut padded = [f32::NEG_INFINITY; 8];
        padded[..tail.len()].copy_from_slice(tail);
        sum = _mm256_add_ps(sum, exp_block(&mut padded, max));
        tail.copy_from_slice(&padded[..tail.len()]);

        let inv = _mm256_set1_ps(1.0 / horizontal_sum(sum));
        let mut blocks = scores.chunks_exact_mut(8);
        for block in &mut blocks {
            normalize_block(block, inv);
        }
        let tail = blocks.into_remainder();
        let mut padded = [0.0; 8];
        padded[..tail.len()].copy_from_slice(tail);
        normalize_block(&mut padded, inv);
        tail.copy_from_slice(&padded[..tail.len()]);
    }

    /// The largest of `scores`, NaN ignored: eight running maxima, then across them, instead of
    /// one chain of dependent scalar compares.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn max_of(scores: &[f32]) -> f32 {
        let mut blocks = scores.chunks_exact(8);
        let mut max = _mm256_set1_ps(f32::NEG_INFINITY);
        for block in &mut blocks {
            // maxps returns its second operand where either is NaN.
            max = _mm256_max_ps(_mm256_loadu_ps(block.as_ptr()), max);
        }
        let mut lanes = [0.0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), max);
        lanes
            .into_iter()
            .chain(blocks.remainder().iter().copied())
            .fold(f32::NEG_INFINITY, f32::max)
    }

    /// `block = e^(block - max)`, zero where that is under 2^-100; returns the new values.
    /// `block` holds at least 8 floats.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn exp_block(block: &mut [f32], max: __m256) -> __m256 {
        let x = _mm256_sub_ps(_mm256_loadu_ps(block.as_ptr()), max);
        let kept = _mm256_cmp_ps(x, _mm256_set1_ps(NEGLIGIBLE_EXPONENT), _CMP_GE_OQ);
        let e = _mm256_and_ps(exp_of_negative(x), kept);
        _mm256_storeu_ps(block.as_mut_ptr(), e);
        e
    }

    /// `block *= inv`, zero where the product is under [`NEGLIGIBLE_WEIGHT`]. `block` holds at
    /// least 8 floats.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn normalize_block(block: &mut [f32], inv: __m256) {
        let p = _mm256_mul_ps(_mm256_loadu_ps(block.as_ptr()), inv);
        let kept = _mm256_cmp_ps(p, _mm256_set1_ps(NEGLIGIBLE_WEIGHT), _CMP_GE_OQ);
        _mm256_storeu_ps(block.as_mut_ptr(), _mm256_and_ps(p, kept));
    }

    /// `out = Σ_t p_t · v_t`, 64 channels (eight vectors of accumulators) at a time. Every
    /// position is added, dropped ones too: `0 · v` adds nothing (v is finite), and a branch on
    /// the weight mispredicts wherever kept and dropped positions interleave, which cost more
    /// than the multiply-adds it saves.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn weighted_values<T: KvValue>(
        group: &GroupView<'_>,
        values: &[T],
        weights: &[f32],
        out: &mut [f32],
    ) {
        let value = |t: usize| values.as_ptr().add(t * group.stride + group.offset);
        let done = out.len() / 64 * 64;
        let mut blocks = out.chunks_exact_mut(64);
        for (c, out_block) in (&mut blocks).enumerate() {
            let mut acc = [_mm256_setzero_ps(); 8];
            for (t, &p) in weights.iter().enumerate() {
                let (pv, v) = (_mm256_set1_ps(p), value(t).add(64 * c));
                for (i, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(pv, T::load8(v.add(8 * i)), *a);
                }
            }
            for (i, a) in acc.iter().enumerate() {
                _mm256_storeu_ps(out_block.as_mut_ptr().add(8 * i), *a);
            }
        }
        // The last channels of a head that is not a multiple of 64 wide, a vector at a time.
        for (i, out_vector) in blocks.into_remainder().chunks_exact_mut(8).enumerate() {
            let mut acc = _mm256_setzero_ps();
            for (t, &p) in weights.iter().enumerate() {
                let v = T::load8(value(t).add(done + 8 * i));
                acc = _mm256_fmadd_ps(_mm256_set1_ps(p), v, acc);
            }
            _mm256_storeu_ps(out_vector.as_mut_ptr(), acc);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both implementations (the vector one where this CPU runs it), for both stored types,
    /// against a plain f64 softmax per head of the stored values, on scores spread far enough
    /// that most weights fall under the dropping threshold for one head and none for the other,
    /// with a position count that leaves a vector tail.
    #[test]
    fn grouped_attention_matches_a_plain_softmax_per_head() {
        matches_a_plain_softmax(|x| x, |keys, values| KvLayer::F32 { keys, values });
        matches_a_plain_softmax(f16::from_f32, |keys, values| KvLayer::F16 { keys, values });
    }

    fn matches_a_plain_softmax<T: KvValue>(
        store: fn(f32) -> T,
        layer: for<'a> fn(&'a [T], &'a [T]) -> KvLayer<'a>,
    ) {
        for d in [8, 64, 72] {
            let (len, kv_heads, stride) = (37, 2, 2 * d);
            let value = |i: usize| ((i * 7919 % 101) as f32 - 50.0) / 25.0;
            let keys: Vec<T> = (0..len * stride).map(|i| store(value(i))).collect();
            let values: Vec<T> = (0..len * stride).map(|i| store(value(i + 13))).collect();
            // Head 0: sharp (scores over a range of hundreds), head 1: soft, whatever d.
            let queries: Vec<f32> = (0..2 * d)
                .map(|i| {
                    if i < d {
                        113.0 / (d as f32).sqrt() * value(i + 3)
                    } else {
                        0.28 / (d as f32).sqrt() * value(i + 5)
                    }
                })
                .collect();
            let scale = 1.0 / (d as f32).sqrt();
            for kv_head in 0..kv_heads {
                let view = GroupView {
                    queries: &queries,
                    head_dim: d,
                    cache: layer(&keys, &values),
                    stride,
                    offset: kv_head * d,
                    scale,
                };
                for path in ["dispatched", "portable"] {
                    let mut weights = vec![0.0; 2 * len];
                    let mut out = vec![0.0; 2 * d];
                    match path {
                        "dispatched" => attend(&view, &mut weights, &mut out),
                        _ => attend_portable(&view, &keys, &values, &mut weights, &mut out),
                    }
                    for h in 0..2 {
                        let q = &queries[h * d..(h + 1) * d];
                        let scores: Vec<f64> = (0..len)
                            .map(|t| {
                                let k = &keys[t * stride + kv_head * d..][..d];
                                q.iter()
                                    .zip(k)
                                    .map(|(a, b)| *a as f64 * b.widen() as f64)
                                    .sum::<f64>()
                                    * scale as f64
                            })
                            .collect();
                        let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                        let exps: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                        let sum: f64 = exps.iter().sum();
                        // f32 scores carry an error of a few ulps of the largest, which the
                        // exponential turns into the same relative error of each weight.
                        let largest = scores.iter().fold(0.0f64, |m, s| m.max(s.abs()));
                        let tolerance = 1e-5 + 8.0 * f32::EPSILON as f64 * largest;
                        for i in 0..d {
                            let expected: f64 = (0..len)
                                .map(|t| {
                                    exps[t] / sum
                                        * values[t * stride + kv_head * d + i].widen() as f64
                                })
                                .sum();
                            let got = out[h * d + i] as f64;
                            assert!(
                                (got - expected).abs() < tolerance,
                                "{path}, d {d}, head {h} channel {i}: {got} vs {expected}"
                            );
                        }
                    }
                    assert!(
                        weights[..len].iter().filter(|&&w| w == 0.0).count() > len / 2,
                        "{path}, d {d}: the sharp head drops weights"
                    );
                    assert!(
                        weights[len..].iter().all(|&w| w > 0.0),
                        "{path}, d {d}: the soft head keeps every weight"
                    );
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "the cache holds")]
    fn a_cache_shorter_than_the_weights_is_refused() {
        let view = GroupView {
            queries: &[0.0; 8],
            head_dim: 8,
            cache: KvLayer::F16 {
                keys: &[f16::ZERO; 16],
                values: &[f16::ZERO; 16],
            },
            stride: 8,
            offset: 0,
            scale: 1.0,
        };
        attend(&view, &mut [0.0; 3], &mut [0.0; 8]);
    }

    #[test]
    fn dot_matches_a_plain_sum() {
        let a: Vec<f32> = (0..37).map(|i| (i as f32).sin()).collect();
        let b: Vec<f32> = (0..37).map(|i| (i as f32).cos()).collect();
        let plain: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - plain).abs() < 1e-5);
    }
}
