//! ggml's Q8_0 blocks: 32 consecutive values of a row as one f16 scale `d` (2 bytes,
//! little-endian) followed by 32 `i8` values `q` (34 bytes a block); value `j` is `d · q[j]`,
//! exact in f32 (an 11-bit significand times a 7-bit integer).
//!
//! [`quantize`] is llama.cpp's rule (`quantize_row_q8_0_ref` in ggml-quants.c, and the reference
//! Python package's `gguf.quants.Q8_0`, which matches it bit for bit), in f32:
//! ```text
//! amax = max |x|;   d = amax / 127;   id = 1 / d (0 when d = 0)
//! q[j] = round(x[j] · id)             round half away from zero (f32::round)
//! stored: f16(d) (round to nearest even), q[j] as i8
//! ```
//! `q` is computed with the f32 `d`, not the stored f16 one, as ggml does. A row is a whole number
//! of blocks (the reader refuses a tensor whose rows are not).

use crate::types::f16_to_f32;

/// Values per block.
pub const BLOCK: usize = 32;
/// Bytes per block: the f16 scale, then the 32 values.
pub const BLOCK_BYTES: usize = 2 + BLOCK;

/// One block's values, quantized as ggml does: the scale's f16 bits and the 32 codes.
pub fn quantize_block(x: &[f32; BLOCK]) -> (u16, [i8; BLOCK]) {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d == 0.0 { 0.0 } else { 1.0 / d };
    let mut q = [0i8; BLOCK];
    for (q, &v) in q.iter_mut().zip(x) {
        // |v · id| ≤ 127 up to rounding, so the cast does not saturate for finite input.
        *q = (v * id).round() as i8;
    }
    (half::f16::from_f32(d).to_bits(), q)
}

/// `values` (a whole number of blocks) as Q8_0 bytes, appended to `out`.
///
/// # Panics
/// If `values.len()` is not a multiple of [`BLOCK`].
pub fn quantize_into(values: &[f32], out: &mut Vec<u8>) {
    assert_eq!(
        values.len() % BLOCK,
        0,
        "Q8_0 takes whole blocks of 32 values"
    );
    out.reserve(values.len() / BLOCK * BLOCK_BYTES);
    for x in values.chunks_exact(BLOCK) {
        let (d, q) = quantize_block(x.try_into().expect("chunks of BLOCK"));
        out.extend_from_slice(&d.to_le_bytes());
        out.extend(q.iter().map(|&v| v as u8));
    }
}

/// The scale of a 34-byte block as f32 (exact).
pub fn block_scale(block: &[u8]) -> f32 {
    f16_to_f32(u16::from_le_bytes([block[0], block[1]]))
}

/// The 32 values of a 34-byte block.
pub fn block_values(block: &[u8]) -> &[i8] {
    bytemuck::cast_slice(&block[2..BLOCK_BYTES])
}

/// Q8_0 bytes (whole blocks) as f32 values, `d · q` each, appended to `out`.
pub fn dequantize_into(blocks: &[u8], out: &mut Vec<f32>) {
    out.reserve(blocks.len() / BLOCK_BYTES * BLOCK);
    for block in blocks.chunks_exact(BLOCK_BYTES) {
        let d = block_scale(block);
        out.extend(block_values(block).iter().map(|&q| d * f32::from(q)));
    }
}

/// The first block (counted from 0) whose scale is infinite or NaN, if any.
pub fn first_non_finite_scale(blocks: &[u8]) -> Option<usize> {
    blocks
        .chunks_exact(BLOCK_BYTES)
        .position(|block| !block_scale(block).is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn quantize(values: &[f32]) -> Vec<u8> {
        let mut out = Vec::new();
        quantize_into(values, &mut out);
        out
    }

    fn dequantize(blocks: &[u8]) -> Vec<f32> {
        let mut out = Vec::new();
        dequantize_into(blocks, &mut out);
        out
    }

    #[test]
    fn a_block_is_the_scale_then_the_values() {
        // amax 127: d = 1 exactly, q = round(x) with ties away from zero.
        let mut x = [0.0f32; BLOCK];
        x[0] = -127.0;
        x[1] = 2.5;
        x[2] = -2.5;
        x[3] = 0.49;
        x[31] = 126.6;
        let bytes = quantize(&x);
        assert_eq!(bytes.len(), BLOCK_BYTES);
        assert_eq!(&bytes[..2], &0x3c00u16.to_le_bytes(), "f16 1.0");
        assert_eq!(block_values(&bytes)[..4], [-127, 3, -3, 0]);
        assert_eq!(block_values(&bytes)[31], 127);
        assert_eq!(block_scale(&bytes), 1.0);
        assert_eq!(dequantize(&bytes)[..3], [-127.0, 3.0, -3.0]);
    }

    #[test]
    fn a_zero_block_has_scale_zero_and_zero_values() {
        let bytes = quantize(&[0.0; 2 * BLOCK]);
        assert!(bytes.iter().all(|&b| b == 0));
        assert_eq!(dequantize(&bytes), vec![0.0; 2 * BLOCK]);
    }

    #[test]
    fn the_codes_use_the_f32_scale_not_the_stored_f16_one() {
        // amax = 1: d = 1/127 in f32, whose f16 rounding differs; q of amax is still 127.
        let mut x = [0.0f32; BLOCK];
        x[0] = 1.0;
        x[1] = 0.5;
        let bytes = quantize(&x);
        let d = 1.0f32 / 127.0;
        assert_ne!(block_scale(&bytes), d);
        assert_eq!(block_scale(&bytes), half::f16::from_f32(d).to_f32());
        assert_eq!(
            block_values(&bytes)[..2],
            [127, (0.5 * (1.0 / d)).round() as i8]
        );
    }

    #[test]
    fn non_finite_scales_are_found() {
        let mut bytes = quantize(&[1.0; 3 * BLOCK]);
        assert_eq!(first_non_finite_scale(&bytes), None);
        bytes[2 * BLOCK_BYTES..2 * BLOCK_BYTES + 2].copy_from_slice(&0x7c00u16.to_le_bytes());
        assert_eq!(first_non_finite_scale(&bytes), Some(2));
    }

    proptest! {
        /// Quantize, then dequantize: every value within half a step of the input, the step
        /// being the f32 scale `d = amax / 127` the codes were computed with, plus what storing
        /// d as f16 moves a value by (`127 · |d − f16(d)|`, at most 127 · 2^-11 · d for a normal
        /// f16, and all of a block too small for f16, which then reads back as zeros).
        #[test]
        fn round_trips_within_half_a_step(
            values in proptest::collection::vec(-1e3f32..1e3, BLOCK..8 * BLOCK),
            scale in -40i32..12,
        ) {
            let n = values.len() / BLOCK * BLOCK;
            let x: Vec<f32> = values[..n].iter().map(|v| v * 2f32.powi(scale)).collect();
            let bytes = quantize(&x);
            prop_assert_eq!(bytes.len(), n / BLOCK * BLOCK_BYTES);
            let back = dequantize(&bytes);
            for (b, (xs, ys)) in x.chunks(BLOCK).zip(back.chunks(BLOCK)).enumerate() {
                let amax = xs.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                let d = f64::from(amax / 127.0);
                let stored = f64::from(block_scale(&bytes[b * BLOCK_BYTES..]));
                // 1e-6: the f32 rounding of x · (1 / d), far below a step.
                let bound = d / 2.0 * (1.0 + 1e-6) + 127.0 * (d - stored).abs();
                for (&v, &y) in xs.iter().zip(ys) {
                    prop_assert!((f64::from(v) - f64::from(y)).abs() <= bound,
                        "block {} value {} came back as {} (d {}, stored {})", b, v, y, d, stored);
                }
            }
        }
    }
}
