//! The two quantizers of docs/ARCHITECTURE.md ("Numerics"), one definition for training, export
//! and inference.
//!
//! - Weights: per group of [`GROUP_SIZE`] weights along the input dimension, `s = max(mean|w|, eps)`,
//!   `q = clamp(round(w / s), -1, 1)`; the dequantized weight is `q * s`.
//! - Activations: per token (vector), `a = max|x|`, `x_q = clamp(round(x * 127 / a), -127, 127)` as
//!   i8, `act_scale = a / 127`; an all-zero vector gives zeros and scale 0, never NaN.
//!
//! `round` is `f32::round` (half away from zero) everywhere, and `x * 127 / a` is evaluated left to
//! right, so every caller that re-implements these (the candle training graph) gets the same bits.

use rayon::prelude::*;

use crate::aligned::AlignedVec;
use crate::{groups_for, GROUP_SIZE};

/// Lower bound of a weight group's scale: keeps all-zero (or tiny) groups finite, as BitNet does.
pub const WEIGHT_SCALE_EPS: f32 = 1e-5;

/// Values per rayon task when a batch is quantized in parallel.
const PARALLEL_MIN_VALUES: usize = 1 << 15;

/// Largest magnitude of a quantized activation.
pub const ACT_MAX: f32 = 127.0;

/// Absmean scale of one weight group (at most [`GROUP_SIZE`] weights).
pub fn weight_group_scale(group: &[f32]) -> f32 {
    debug_assert!(!group.is_empty() && group.len() <= GROUP_SIZE);
    let sum: f32 = group.iter().map(|w| w.abs()).sum();
    (sum / group.len() as f32).max(WEIGHT_SCALE_EPS)
}

/// Ternary value of one weight given its group scale.
#[inline]
pub fn quantize_weight(w: f32, scale: f32) -> i8 {
    (w / scale).round().clamp(-1.0, 1.0) as i8
}

/// Quantizes one row of weights: `values` gets a trit per weight, `scales` one scale per group.
pub fn quantize_weight_row(row: &[f32], values: &mut [i8], scales: &mut [f32]) {
    assert_eq!(
        values.len(),
        row.len(),
        "quantize_weight_row: values length"
    );
    assert_eq!(
        scales.len(),
        groups_for(row.len()),
        "quantize_weight_row: scales length"
    );
    for ((group, out), scale) in row
        .chunks(GROUP_SIZE)
        .zip(values.chunks_mut(GROUP_SIZE))
        .zip(scales.iter_mut())
    {
        *scale = weight_group_scale(group);
        for (v, &w) in out.iter_mut().zip(group) {
            *v = quantize_weight(w, *scale);
        }
    }
}

/// The dequantized weights `q · s` of one row, group by group: the values a quantization-aware
/// training graph multiplies with (its straight-through forward).
pub fn fake_quantize_weight_row(row: &[f32], out: &mut [f32]) {
    assert_eq!(out.len(), row.len(), "fake_quantize_weight_row: out length");
    for (group, out) in row.chunks(GROUP_SIZE).zip(out.chunks_mut(GROUP_SIZE)) {
        let scale = weight_group_scale(group);
        for (o, &w) in out.iter_mut().zip(group) {
            // `quantize_weight(w, scale) as f32` in a form the compiler vectorizes (no `roundf`
            // call per weight): round(w / s) clamped to ±1 is +1 exactly when w / s ≥ 0.5, −1
            // when ≤ −0.5 (half away from zero), 0 otherwise and for NaN (as the `as i8` cast).
            let y = w / scale;
            let q = f32::from(u8::from(y >= 0.5)) - f32::from(u8::from(y <= -0.5));
            *o = q * scale;
        }
    }
}

/// The dequantized activations `x_q · (a / 127)` of one vector (all zeros for an all-zero input),
/// `x_q = clamp(round(x · 127 / a), −127, 127)`, in a form the compiler vectorizes.
pub fn fake_quantize_activation_row(x: &[f32], out: &mut [f32]) {
    assert_eq!(
        out.len(),
        x.len(),
        "fake_quantize_activation_row: out length"
    );
    let absmax = absmax(x);
    if absmax == 0.0 {
        out.fill(0.0);
        return;
    }
    let act_scale = absmax / ACT_MAX;
    for (o, &v) in out.iter_mut().zip(x) {
        // Clamping first keeps the rounding in its exact range and changes no result: anything
        // beyond ±128 rounds beyond ±127 and is clamped to it either way.
        let y = (v * ACT_MAX / absmax).clamp(-128.0, 128.0);
        *o = round_half_away(y).clamp(-ACT_MAX, ACT_MAX) * act_scale;
    }
}

/// `f32::round` (half away from zero, the sign of a zero result kept) of `y` in `[-2^22, 2^22]`
/// or NaN, without a call: adding and subtracting 1.5·2^23 rounds to nearest-even exactly in that
/// range, then a tie that went towards zero is moved one away.
#[inline(always)]
fn round_half_away(y: f32) -> f32 {
    const SHIFTER: f32 = 12_582_912.0;
    let nearest_even = (y + SHIFTER) - SHIFTER;
    let off = y - nearest_even; // exact
    let up = f32::from(u8::from(off == 0.5 && y > 0.0));
    let down = f32::from(u8::from(off == -0.5 && y < 0.0));
    (nearest_even + up - down).copysign(y)
}

/// Quantizes one vector into `out` (zero-padded to whole groups) and `group_sums`; returns the
/// activation scale `a / 127`.
fn quantize_into(x: &[f32], out: &mut [i8], group_sums: &mut [i32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512bw") {
        // SAFETY: the CPU supports AVX-512 F and BW (BW implies F; checked just above); the
        // function is safe code compiled with them enabled.
        return unsafe { quantize_into_avx512(x, out, group_sums) };
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked just above); the function is safe code compiled
        // with AVX2 enabled.
        return unsafe { quantize_into_avx2(x, out, group_sums) };
    }
    quantize_into_portable(x, out, group_sums)
}

/// [`quantize_into_portable`] compiled for AVX2: the same operations on each element (an IEEE
/// multiply and divide, then [`round_activation`]), eight at a time, so the same bits.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn quantize_into_avx2(x: &[f32], out: &mut [i8], group_sums: &mut [i32]) -> f32 {
    quantize_into_portable(x, out, group_sums)
}

/// [`quantize_into_portable`] compiled for AVX-512: sixteen at a time, the same bits.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn quantize_into_avx512(x: &[f32], out: &mut [i8], group_sums: &mut [i32]) -> f32 {
    quantize_into_portable(x, out, group_sums)
}

#[inline(always)]
fn quantize_into_portable(x: &[f32], out: &mut [i8], group_sums: &mut [i32]) -> f32 {
    let absmax = absmax(x);
    out.fill(0);
    if absmax > 0.0 {
        for (q, &v) in out.iter_mut().zip(x) {
            *q = round_activation(v * ACT_MAX / absmax);
        }
    }
    fill_group_sums(out, group_sums);
    absmax / ACT_MAX
}

/// `max |x|` (0 for an empty slice) in eight lanes, so it vectorizes: a maximum does not depend on
/// the order it is taken in.
#[inline(always)]
fn absmax(x: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let mut chunks = x.chunks_exact(8);
    for chunk in &mut chunks {
        for (lane, v) in lanes.iter_mut().zip(chunk) {
            *lane = lane.max(v.abs());
        }
    }
    let tail = chunks
        .remainder()
        .iter()
        .fold(0.0f32, |m, v| m.max(v.abs()));
    lanes.iter().fold(tail, |m, &v| m.max(v))
}

/// `x.round().clamp(-127, 127) as i8` in float and integer adds, compares and selects only, so a
/// loop of it vectorizes (libm's `roundf` is a call per element on baseline x86-64, and a
/// saturating `as i32` a scalar conversion per element): adding 1.5·2^23 rounds a float of
/// magnitude ≤ 128 to the nearest integer, ties to even, exactly, and leaves that integer in the
/// low bits; a tie that rounded toward zero then moves one away from it. NaN gives 0, as the cast
/// of a rounded NaN does.
#[inline(always)]
fn round_activation(x: f32) -> i8 {
    const SHIFTER: f32 = 12_582_912.0; // 1.5 · 2^23: one unit in the last place is 1
                                       // Clamped first, so huge or infinite x stay in the shifter's exact range (they clamp anyway).
    let x = if x.is_nan() {
        0.0
    } else {
        x.clamp(-128.0, 128.0)
    };
    let shifted = x + SHIFTER;
    let nearest_even = shifted - SHIFTER;
    // Exact: both are within 128 of each other's binade.
    let off = x - nearest_even;
    let n = shifted.to_bits() as i32 - SHIFTER.to_bits() as i32;
    let n = n + i32::from(off == 0.5 && x > 0.0) - i32::from(off == -0.5 && x < 0.0);
    n.clamp(-(ACT_MAX as i32), ACT_MAX as i32) as i8
}

fn fill_group_sums(padded: &[i8], group_sums: &mut [i32]) {
    for (sum, group) in group_sums.iter_mut().zip(padded.chunks(GROUP_SIZE)) {
        *sum = group.iter().map(|&v| v as i32).sum();
    }
}

/// One activation vector quantized to int8, padded with zeros to whole groups, with the per-group
/// sums of its values that the SIMD kernels need (they compute `Σ (w+1)·x` and subtract `Σ x`).
#[derive(Clone, Debug)]
pub struct QuantizedActivations {
    values: AlignedVec<i8>,
    group_sums: Vec<i32>,
    len: usize,
    scale: f32,
}

impl QuantizedActivations {
    fn zeroed(len: usize) -> Self {
        Self {
            values: AlignedVec::zeroed(groups_for(len) * GROUP_SIZE),
            group_sums: vec![0; groups_for(len)],
            len,
            scale: 0.0,
        }
    }

    /// Number of real (unpadded) values.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The quantized values, zero-padded to a whole number of groups (128-byte aligned).
    pub fn padded_values(&self) -> &[i8] {
        &self.values
    }

    /// The real values (`len()` of them).
    pub fn values(&self) -> &[i8] {
        &self.values[..self.len]
    }

    /// `Σ x_q` over each group.
    pub fn group_sums(&self) -> &[i32] {
        &self.group_sums
    }

    /// `a / 127`: the real value of one quantized unit.
    pub fn scale(&self) -> f32 {
        self.scale
    }

    /// The scale as a one-element slice (the kernels' batch-of-one view).
    pub(crate) fn scale_slice(&self) -> &[f32] {
        std::slice::from_ref(&self.scale)
    }

    /// Builds from already quantized values (tests and tools that construct inputs directly).
    pub fn from_quantized(values: &[i8], scale: f32) -> Self {
        let mut q = Self::zeroed(values.len());
        q.values[..values.len()].copy_from_slice(values);
        fill_group_sums(&q.values, &mut q.group_sums);
        q.scale = scale;
        q
    }
}

/// Absmax int8 quantization of one activation vector. Non-finite inputs are the caller's bug: they
/// give an unspecified (but non-panicking) result.
pub fn quantize_activations(x: &[f32]) -> QuantizedActivations {
    let mut q = QuantizedActivations::zeroed(x.len());
    q.scale = quantize_into(x, &mut q.values, &mut q.group_sums);
    q
}

/// Several activation vectors of the same length, each with its own scale, stored contiguously
/// (vector `b` at `b * padded_len()`): the input of the GEMM path (prefill, batched decode).
#[derive(Clone, Debug)]
pub struct QuantizedBatch {
    values: AlignedVec<i8>,
    group_sums: Vec<i32>,
    scales: Vec<f32>,
    len: usize,
}

/// The slot of one vector in a [`QuantizedBatch`] (from [`QuantizedBatch::rows_mut`]): the rows
/// can then be quantized by whoever computes them, in any order and on any thread.
pub struct QuantizedRowMut<'a> {
    len: usize,
    values: &'a mut [i8],
    group_sums: &'a mut [i32],
    scale: &'a mut f32,
}

impl QuantizedRowMut<'_> {
    /// Quantizes `x` into the slot, exactly as [`QuantizedBatch::quantize`] quantizes a row.
    ///
    /// # Panics
    /// If `x` is not the batch's vector length.
    pub fn quantize(self, x: &[f32]) {
        assert_eq!(x.len(), self.len, "a row of the batch's length");
        *self.scale = quantize_into(x, self.values, self.group_sums);
    }
}

impl QuantizedBatch {
    /// Quantizes the rows of a row-major `[batch, len]` slice, each with its own absmax scale.
    pub fn quantize(x: &[f32], len: usize) -> Self {
        assert!(
            len > 0 && x.len() % len == 0,
            "QuantizedBatch: x is not [batch, len]"
        );
        let mut q = Self::zeroed(x.len() / len, len);
        // Rows in parallel only when there are enough of them to pay for the split (a prefill,
        // not a decode step).
        q.rows_mut()
            .into_par_iter()
            .zip(x.par_chunks(len))
            .with_min_len(PARALLEL_MIN_VALUES.div_ceil(len))
            .for_each(|(slot, row)| slot.quantize(row));
        q
    }

    /// `batch` vectors of `len` values, all zero with scale 0 until quantized through
    /// [`Self::rows_mut`].
    ///
    /// # Panics
    /// If `len` is 0.
    pub fn zeroed(batch: usize, len: usize) -> Self {
        assert!(len > 0, "QuantizedBatch: empty vectors");
        let (padded, groups) = (groups_for(len) * GROUP_SIZE, groups_for(len));
        Self {
            values: AlignedVec::zeroed(batch * padded),
            group_sums: vec![0; batch * groups],
            scales: vec![0.0; batch],
            len,
        }
    }

    /// The slot of every vector, in order.
    pub fn rows_mut(&mut self) -> Vec<QuantizedRowMut<'_>> {
        let (len, padded, groups) = (self.len, self.padded_len(), groups_for(self.len));
        self.values
            .chunks_exact_mut(padded)
            .zip(self.group_sums.chunks_exact_mut(groups))
            .zip(self.scales.iter_mut())
            .map(|((values, group_sums), scale)| QuantizedRowMut {
                len,
                values,
                group_sums,
                scale,
            })
            .collect()
    }

    /// Number of vectors.
    pub fn batch(&self) -> usize {
        self.scales.len()
    }

    /// Length of every vector.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.scales.is_empty()
    }

    /// Distance between consecutive vectors in [`Self::padded_values`] (a multiple of 128).
    pub fn padded_len(&self) -> usize {
        groups_for(self.len) * GROUP_SIZE
    }

    /// All vectors, each zero-padded to whole groups.
    pub fn padded_values(&self) -> &[i8] {
        &self.values
    }

    /// Real values of vector `b`.
    pub fn values(&self, b: usize) -> &[i8] {
        let start = b * self.padded_len();
        &self.values[start..start + self.len]
    }

    /// Group sums, `[batch, groups]`.
    pub fn group_sums(&self) -> &[i32] {
        &self.group_sums
    }

    /// Activation scale of each vector.
    pub fn scales(&self) -> &[f32] {
        &self.scales
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Bit patterns (NaN as any NaN) of `ours` and `theirs` over `rows`.
    fn same_bits(rows: &[Vec<f32>], ours: fn(&[f32], &mut [f32]), theirs: fn(&[f32], &mut [f32])) {
        for (r, row) in rows.iter().enumerate() {
            let (mut a, mut b) = (vec![1.0f32; row.len()], vec![2.0f32; row.len()]);
            ours(row, &mut a);
            theirs(row, &mut b);
            for (i, (x, y)) in a.iter().zip(&b).enumerate() {
                assert!(
                    x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()),
                    "row {r} [{i}] of {:?}: {x:e} vs {y:e}",
                    &row[..row.len().min(8)]
                );
            }
        }
    }

    fn rows_under_test() -> Vec<Vec<f32>> {
        let mut rows = Vec::new();
        for (seed, len) in [(1u64, 256usize), (2, 768), (3, 200), (4, 7), (5, 128)] {
            let v = crate::synthetic::uniform_values(len, seed);
            for scale in [1e-30f32, 1e-6, 0.01, 1.0, 3.7, 1e4, 1e30] {
                rows.push(v.iter().map(|x| x * scale).collect());
            }
        }
        // Activation ties: absmax 127, so x·127/127 = x, and every k + 1/2 in between.
        let mut ties: Vec<f32> = (-127..127).map(|k| k as f32 + 0.5).collect();
        ties.push(127.0);
        rows.push(ties.clone());
        rows.push(ties.iter().map(|x| -x).collect());
        // Weight ties: 127 weights of ±255 and one of ±127 give s = 254 and w/s = ±0.5.
        for sign in [1.0f32, -1.0] {
            let mut group = vec![255.0f32; 128];
            group[5] = 127.0 * sign;
            group[9] = -255.0;
            rows.push(group);
        }
        // Zeros of both signs, tiny values that round to −0, subnormals, infinities, NaN.
        rows.push(vec![0.0; 130]);
        rows.push(vec![-0.0, 0.0, -1e-30, 1e-30, -1.0, 1.0, 0.25, -0.25]);
        rows.push(vec![
            f32::MIN_POSITIVE / 4.0,
            -f32::MIN_POSITIVE / 8.0,
            0.0,
            1e-38,
        ]);
        rows.push(vec![f32::INFINITY, 1.0, -2.0, 0.5]);
        rows.push(vec![f32::NEG_INFINITY, f32::INFINITY, 3.0]);
        rows.push(vec![f32::NAN, 1.0, -0.3, 0.7]);
        rows.push(vec![f32::MAX, -f32::MAX, 1.0, f32::MAX / 127.0]);
        // A sweep of bit patterns from −300 to 300.
        let sweep: Vec<f32> = (0..200_000u32)
            .map(|i| {
                let x = f32::from_bits(0x3000_0000 + i * 0x0000_0A3D);
                if i % 2 == 0 {
                    x
                } else {
                    -x
                }
            })
            .filter(|x| x.abs() <= 300.0)
            .collect();
        rows.extend(sweep.chunks(256).map(<[f32]>::to_vec));
        rows
    }

    /// The quantizers' definitions, one `f32::round` per value.
    fn weight_row_by_definition(row: &[f32], out: &mut [f32]) {
        for (group, out) in row.chunks(GROUP_SIZE).zip(out.chunks_mut(GROUP_SIZE)) {
            let scale = weight_group_scale(group);
            for (o, &w) in out.iter_mut().zip(group) {
                *o = quantize_weight(w, scale) as f32 * scale;
            }
        }
    }

    fn activation_row_by_definition(x: &[f32], out: &mut [f32]) {
        let absmax = absmax(x);
        if absmax == 0.0 {
            out.fill(0.0);
            return;
        }
        for (o, &v) in out.iter_mut().zip(x) {
            *o = (v * ACT_MAX / absmax).round().clamp(-ACT_MAX, ACT_MAX) * (absmax / ACT_MAX);
        }
    }

    #[test]
    fn vectorized_quantizers_equal_their_definitions_bit_for_bit() {
        let rows = rows_under_test();
        same_bits(
            &rows,
            fake_quantize_activation_row,
            activation_row_by_definition,
        );
        same_bits(&rows, fake_quantize_weight_row, weight_row_by_definition);
    }

    #[test]
    fn round_half_away_is_f32_round_in_its_range() {
        let mut x = -4_194_304.0f32;
        let mut checked = 0;
        while x <= 4_194_304.0 {
            for y in [x, x + 0.5, x - 0.25, x + 0.75] {
                let (a, b) = (round_half_away(y), y.round());
                assert_eq!(a.to_bits(), b.to_bits(), "{y}: {a} vs {b}");
                checked += 1;
            }
            x += if x.abs() < 300.0 { 0.125 } else { 997.0 };
        }
        assert!(checked > 10_000);
        assert!(round_half_away(f32::NAN).is_nan());
        assert_eq!(round_half_away(-0.0).to_bits(), (-0.0f32).to_bits());
    }

    #[test]
    fn all_zero_group_quantizes_to_zeros_with_finite_scale() {
        let row = [0.0f32; 300];
        let mut values = [7i8; 300];
        let mut scales = [f32::NAN; 3];
        quantize_weight_row(&row, &mut values, &mut scales);
        assert!(values.iter().all(|&v| v == 0));
        assert!(scales.iter().all(|&s| s == WEIGHT_SCALE_EPS));
    }

    #[test]
    fn fake_quantized_rows_are_the_integer_values_times_their_scales() {
        let row: Vec<f32> = crate::synthetic::uniform_values(300, 11);
        let (mut values, mut scales) = (vec![0i8; 300], vec![0.0f32; 3]);
        quantize_weight_row(&row, &mut values, &mut scales);
        let mut fake = vec![0.0f32; 300];
        fake_quantize_weight_row(&row, &mut fake);
        for (k, (&f, &v)) in fake.iter().zip(&values).enumerate() {
            assert_eq!(f, v as f32 * scales[k / GROUP_SIZE]);
        }

        let q = quantize_activations(&row);
        fake_quantize_activation_row(&row, &mut fake);
        for (&f, &v) in fake.iter().zip(q.values()) {
            assert_eq!(f, v as f32 * q.scale());
        }
        fake_quantize_activation_row(&[0.0; 4], &mut fake[..4]);
        assert_eq!(&fake[..4], &[0.0; 4]);
    }

    #[test]
    fn all_zero_activations_give_zeros_and_zero_scale() {
        let q = quantize_activations(&[0.0; 200]);
        assert!(q.values().iter().all(|&v| v == 0));
        assert_eq!(q.scale(), 0.0);
        assert!(!q.scale().is_nan());
        assert_eq!(q.group_sums(), &[0, 0]);
    }

    #[test]
    fn activation_extremes_map_to_plus_minus_127() {
        let q = quantize_activations(&[-2.0, 1.0, 2.0, 0.0]);
        assert_eq!(q.values(), &[-127, 64, 127, 0]);
        assert_eq!(q.scale(), 2.0 / 127.0);
        assert_eq!(q.padded_values().len(), GROUP_SIZE);
        assert_eq!(q.group_sums(), &[64]);
    }

    #[test]
    fn activation_rounding_equals_round_then_clamp() {
        let expected = |x: f32| x.round().clamp(-ACT_MAX, ACT_MAX) as i8;
        let special = [
            0.5,
            -0.5,
            0.499_999_97,
            -0.499_999_97,
            1.5,
            -1.5,
            2.5,
            -2.5,
            3.5,
            -3.5,
            126.5,
            -126.5,
            127.49,
            127.5,
            -127.5,
            128.0,
            1e9,
            -1e9,
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            -0.0,
            f32::MIN_POSITIVE,
        ];
        for x in special {
            assert_eq!(round_activation(x), expected(x), "{x}");
        }
        // Every float from -300 to 300 at a stride of bit patterns.
        for bits in (0u32..0x4396_0000).step_by(977) {
            for x in [f32::from_bits(bits), -f32::from_bits(bits)] {
                assert_eq!(round_activation(x), expected(x), "{x}");
            }
        }
    }

    #[test]
    fn a_batch_quantizes_each_row_as_alone_serially_or_in_parallel() {
        let len = 300;
        // 3 rows: one task; 400 rows: split across the pool's threads.
        for rows in [3, 400] {
            let x: Vec<f32> = crate::synthetic::uniform_values(rows * len, 5)
                .iter()
                .enumerate()
                .map(|(i, v)| v * (1 + i / len) as f32)
                .collect();
            let batch = QuantizedBatch::quantize(&x, len);
            let groups = groups_for(len);
            for (r, row) in x.chunks(len).enumerate() {
                let alone = quantize_activations(row);
                assert_eq!(batch.values(r), alone.values(), "row {r} of {rows}");
                assert_eq!(batch.scales()[r], alone.scale());
                assert_eq!(
                    &batch.group_sums()[r * groups..(r + 1) * groups],
                    alone.group_sums()
                );
            }
            // Row by row through the slots, last row first, into a batch that held other rows.
            let mut slotted = QuantizedBatch::quantize(&vec![1.0; rows * len], len);
            for (slot, row) in slotted.rows_mut().into_iter().zip(x.chunks(len)).rev() {
                slot.quantize(row);
            }
            assert_eq!(slotted.padded_values(), batch.padded_values());
            assert_eq!(slotted.group_sums(), batch.group_sums());
            assert_eq!(slotted.scales(), batch.scales());
        }
    }

    #[test]
    fn weights_round_half_away_from_zero_and_clamp() {
        assert_eq!(quantize_weight(0.5, 1.0), 1);
        assert_eq!(quantize_weight(-0.5, 1.0), -1);
        assert_eq!(quantize_weight(0.49, 1.0), 0);
        assert_eq!(quantize_weight(9.0, 1.0), 1);
        assert_eq!(quantize_weight(-9.0, 1.0), -1);
    }

    proptest! {
        /// Dequantized weights stay within one group scale of the originals for weights within
        /// 1.5 scales (clamping aside, rounding moves a value by at most half a scale).
        #[test]
        fn dequantization_error_is_bounded_by_the_scale(
            row in proptest::collection::vec(-4.0f32..4.0, 1..400)
        ) {
            let mut values = vec![0i8; row.len()];
            let mut scales = vec![0f32; groups_for(row.len())];
            quantize_weight_row(&row, &mut values, &mut scales);
            for (j, (&w, &q)) in row.iter().zip(&values).enumerate() {
                let s = scales[j / GROUP_SIZE];
                prop_assert!(s.is_finite() && s > 0.0);
                let err = (w - q as f32 * s).abs();
                let clamp_excess = (w.abs() - s).max(0.0);
                prop_assert!(err <= 0.5 * s * 1.0001 + clamp_excess, "w {} q {} s {}", w, q, s);
            }
        }

        /// The quantizer (vectorized where the CPU allows it) gives the definition's bits:
        /// `a = max|x|`, then `round(x · 127 / a)` clamped, evaluated left to right.
        #[test]
        fn activation_quantization_is_the_definition(
            x in proptest::collection::vec(-1e3f32..1e3, 1..600)
        ) {
            let a = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let q = quantize_activations(&x);
            prop_assert_eq!(q.scale(), a / ACT_MAX);
            for (&v, &xq) in x.iter().zip(q.values()) {
                let expected = if a == 0.0 {
                    0
                } else {
                    (v * ACT_MAX / a).round().clamp(-ACT_MAX, ACT_MAX) as i8
                };
                prop_assert_eq!(xq, expected);
            }
        }

        #[test]
        fn activation_round_trip_within_half_a_unit(
            x in proptest::collection::vec(-100.0f32..100.0, 1..300)
        ) {
            let q = quantize_activations(&x);
            prop_assert!(q.scale().is_finite());
            for (&v, &xq) in x.iter().zip(q.values()) {
                prop_assert!((v - xq as f32 * q.scale()).abs() <= 0.5 * q.scale() * 1.001 + 1e-6);
            }
            let sums: i32 = q.group_sums().iter().sum();
            prop_assert_eq!(sums, q.values().iter().map(|&v| v as i32).sum::<i32>());
        }
    }
}
