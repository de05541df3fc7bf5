//! llama.cpp's ternary block types, decoded exactly: every weight's trit and every block's scale.
//!
//! Both types hold blocks of 256 weights of one row with one f16 scale `d` (weight = trit · d):
//! - TQ2_0 (66 bytes): `qs[64]` then `d`. Weight `128·c + 32·l + m` (chunk c of 2, l of 4, m of
//!   32) is `((qs[32·c + m] >> 2·l) & 3) − 1`. The code 3 would be the value 2: refused.
//! - TQ1_0 (54 bytes): `qs[48]`, `qh[4]`, then `d`; five (four in `qh`) base-3 digits a byte,
//!   stored as `ceil(v · 256 / 243)` so that digit n of byte b is `((b · 3ⁿ mod 256) · 3) >> 8`,
//!   minus 1. Weights 0..160 come from `qs[0..32]` (weight `32·n + m` from digit n of byte m),
//!   160..240 from `qs[32..48]` (`160 + 16·n + m`), 240..256 from `qh` (`240 + 4·n + m`).
//!
//! Rows are whole blocks (the reader refuses a row that is not), so a row's blocks are its own.

use crate::read::Tensor;
use crate::types::{f16_to_f32, GgmlType};

/// Weights per block.
pub const BLOCK: usize = 256;

/// A ternary tensor decoded: row-major trits and one scale per block of 256 weights of a row.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedTernary {
    pub rows: usize,
    pub cols: usize,
    /// `[rows, cols]`, values in -1..=1.
    pub trits: Vec<i8>,
    /// `[rows, cols / 256]`, the blocks' f16 scales as f32 (exact).
    pub block_scales: Vec<f32>,
}

/// Why a tensor could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TqError {
    #[error("tensor {name:?} is {found}, not TQ1_0 or TQ2_0")]
    NotTernary { name: String, found: GgmlType },
    #[error("tensor {name:?}: weight {index} has the TQ2_0 code 3, which is not a ternary value")]
    InvalidCode { name: String, index: usize },
    #[error("tensor {name:?}: block {block} has a non-finite scale")]
    NonFiniteScale { name: String, block: usize },
}

/// Whether `ggml_type` is one of llama.cpp's ternary types.
pub fn is_ternary_type(ggml_type: GgmlType) -> bool {
    matches!(ggml_type, GgmlType::Tq1_0 | GgmlType::Tq2_0)
}

/// Decodes a TQ1_0 or TQ2_0 tensor as a `[rows, cols]` matrix (`cols` = `ne[0]`, rows = the
/// product of the other dimensions). The reader has checked the data length against the shape.
pub fn decode(tensor: &Tensor<'_>) -> Result<DecodedTernary, TqError> {
    let info = tensor.info;
    let name = info.name().to_string();
    let ggml_type = info.ggml_type();
    if !is_ternary_type(ggml_type) {
        return Err(TqError::NotTernary {
            name,
            found: ggml_type,
        });
    }
    let cols = info.ne()[0] as usize;
    let rows = (info.n_elements() as usize).checked_div(cols).unwrap_or(0);
    let block_bytes = ggml_type.block_bytes() as usize;
    let mut trits = vec![0i8; rows * cols];
    let mut block_scales = Vec::with_capacity(rows * cols / BLOCK);
    for (block, (bytes, out)) in tensor
        .data
        .chunks_exact(block_bytes)
        .zip(trits.chunks_exact_mut(BLOCK))
        .enumerate()
    {
        let (codes, scale) = bytes.split_at(block_bytes - 2);
        let d = f16_to_f32(u16::from_le_bytes([scale[0], scale[1]]));
        if !d.is_finite() {
            return Err(TqError::NonFiniteScale { name, block });
        }
        block_scales.push(d);
        let out: &mut [i8; BLOCK] = out.try_into().expect("chunks of BLOCK");
        let valid = match ggml_type {
            GgmlType::Tq2_0 => decode_tq2_block(codes, out),
            _ => {
                decode_tq1_block(codes, out);
                true
            }
        };
        if !valid {
            let at = out.iter().position(|&t| t == 2).expect("an invalid code");
            return Err(TqError::InvalidCode {
                name,
                index: block * BLOCK + at,
            });
        }
    }
    Ok(DecodedTernary {
        rows,
        cols,
        trits,
        block_scales,
    })
}

/// One TQ2_0 block's 64 code bytes; false if a code is 3 (left as the value 2 in `out`).
fn decode_tq2_block(qs: &[u8], out: &mut [i8; BLOCK]) -> bool {
    let mut valid = true;
    for (chunk, bytes) in qs.chunks_exact(32).enumerate() {
        for l in 0..4 {
            for (m, &b) in bytes.iter().enumerate() {
                let code = (b >> (2 * l)) & 3;
                valid &= code != 3;
                out[128 * chunk + 32 * l + m] = code as i8 - 1;
            }
        }
    }
    valid
}

/// One TQ1_0 block's 52 code bytes (`qs[48]` then `qh[4]`).
fn decode_tq1_block(codes: &[u8], out: &mut [i8; BLOCK]) {
    // (first weight, bytes, digits per byte) of the three parts.
    let parts = [
        (0, &codes[0..32], 5),
        (160, &codes[32..48], 5),
        (240, &codes[48..52], 4),
    ];
    for (first, bytes, digits) in parts {
        let mut power = 1u8;
        for n in 0..digits {
            for (m, &b) in bytes.iter().enumerate() {
                let shifted = b.wrapping_mul(power);
                out[first + bytes.len() * n + m] = ((u16::from(shifted) * 3) >> 8) as i8 - 1;
            }
            power = power.wrapping_mul(3);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// TQ1_0's encoding of 5 (or 4) trits into one byte, from the format's definition.
    fn tq1_byte(trits: &[i8]) -> u8 {
        let mut v = 0u16;
        for &t in trits {
            v = 3 * v + (t + 1) as u16;
        }
        // Fewer than 5 digits are the high digits of a 5-digit number.
        v *= 3u16.pow(5 - trits.len() as u32);
        ((v * 256).div_ceil(243)) as u8
    }

    #[test]
    fn tq1_digits_round_trip_every_byte_value() {
        for v in 0..243u16 {
            let trits: Vec<i8> = (0..5)
                .map(|n| ((v / 3u16.pow(4 - n)) % 3) as i8 - 1)
                .collect();
            let byte = tq1_byte(&trits);
            let mut power = 1u8;
            for (n, &t) in trits.iter().enumerate() {
                let digit = ((u16::from(byte.wrapping_mul(power)) * 3) >> 8) as i8 - 1;
                assert_eq!(digit, t, "value {v} digit {n}");
                power = power.wrapping_mul(3);
            }
        }
    }

    #[test]
    fn tq2_block_places_weights_and_flags_code_3() {
        let mut qs = [0u8; 64];
        // Weight 128·1 + 32·2 + 5 = 197 is +1 (code 2); weight 3 is -1 (code 0); others 0 (1).
        for b in qs.iter_mut() {
            *b = 0b01010101;
        }
        qs[32 + 5] = 0b01100101;
        qs[3] = 0b01010100;
        let mut out = [0i8; BLOCK];
        assert!(decode_tq2_block(&qs, &mut out));
        let nonzero: Vec<(usize, i8)> = out
            .iter()
            .enumerate()
            .filter(|(_, &t)| t != 0)
            .map(|(i, &t)| (i, t))
            .collect();
        assert_eq!(nonzero, vec![(3, -1), (197, 1)]);
        qs[0] = 0b11;
        assert!(!decode_tq2_block(&qs, &mut out));
    }
}
