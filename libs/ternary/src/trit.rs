//! Trit codes: one ternary weight in 2 bits, BitNet convention.
//!
//! | code | weight |
//! |------|--------|
//! | 00   | 0      |
//! | 01   | +1     |
//! | 11   | -1     |
//! | 10   | invalid: decodes to 0 everywhere and is counted |
//!
//! Bit 0 says "non-zero", bit 1 says "negative", so decoding is `b0 * (1 - 2*b1)`.
//! Packed form (the GGUF `I8` codes tensor): 4 codes a byte, weight `j` of a row in byte `j / 4` at
//! bits `2 * (j % 4)`; a row of `cols` weights takes `cols.div_ceil(4)` bytes, unused fields are 00.

/// The invalid code: never written by the encoder, decoded as 0 by every kernel.
pub const INVALID_CODE: u8 = 0b10;

/// Code of a ternary value, branchless. Values outside {-1, 0, 1} are clamped first.
#[inline]
pub fn encode(value: i8) -> u8 {
    let v = value.clamp(-1, 1);
    let nonzero = (v != 0) as u8;
    let negative = (v < 0) as u8;
    nonzero | (negative << 1)
}

/// Ternary value of a code (only the low 2 bits are read); 10 decodes to 0.
#[inline]
pub fn decode(code: u8) -> i8 {
    let nonzero = (code & 1) as i8;
    let negative = ((code >> 1) & 1) as i8;
    nonzero * (1 - 2 * negative)
}

/// Whether the low 2 bits are the invalid code 10.
#[inline]
pub fn is_invalid(code: u8) -> bool {
    code & 0b11 == INVALID_CODE
}

/// Bytes needed to pack `cols` codes.
pub const fn packed_len(cols: usize) -> usize {
    cols.div_ceil(4)
}

/// Packs ternary values (one row) into codes, 4 a byte. `out.len()` must be `packed_len(values.len())`.
pub fn pack_row(values: &[i8], out: &mut [u8]) {
    assert_eq!(
        out.len(),
        packed_len(values.len()),
        "pack_row: output length"
    );
    out.fill(0);
    for (j, &v) in values.iter().enumerate() {
        out[j / 4] |= encode(v) << (2 * (j % 4));
    }
}

/// Reads code `j` (0-based weight index) from a packed row.
#[inline]
pub fn packed_code(packed: &[u8], j: usize) -> u8 {
    (packed[j / 4] >> (2 * (j % 4))) & 0b11
}

/// Unpacks `out.len()` values from a packed row; invalid codes become 0. Returns the number of
/// invalid codes seen.
pub fn unpack_row(packed: &[u8], out: &mut [i8]) -> usize {
    assert!(
        packed.len() >= packed_len(out.len()),
        "unpack_row: packed row too short"
    );
    let mut invalid = 0;
    for (j, v) in out.iter_mut().enumerate() {
        let code = packed_code(packed, j);
        invalid += is_invalid(code) as usize;
        *v = decode(code);
    }
    invalid
}

/// Counts of each decoded value and of invalid codes in packed data (first `count` codes).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CodeHistogram {
    pub minus_one: u64,
    pub zero: u64,
    pub plus_one: u64,
    pub invalid: u64,
}

impl CodeHistogram {
    /// Histogram of the first `count` codes of `packed`.
    pub fn of_packed(packed: &[u8], count: usize) -> Self {
        let mut h = Self::default();
        for j in 0..count.min(packed.len() * 4) {
            match packed_code(packed, j) {
                0b00 => h.zero += 1,
                0b01 => h.plus_one += 1,
                0b11 => h.minus_one += 1,
                _ => h.invalid += 1,
            }
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_code_decodes_as_documented() {
        assert_eq!(decode(0b00), 0);
        assert_eq!(decode(0b01), 1);
        assert_eq!(decode(0b11), -1);
        assert_eq!(decode(0b10), 0);
        assert!(is_invalid(0b10));
        assert!(![0b00, 0b01, 0b11].iter().any(|&c| is_invalid(c)));
    }

    #[test]
    fn encode_then_decode_is_identity_on_trits_and_never_invalid() {
        for v in -1..=1i8 {
            assert_eq!(decode(encode(v)), v);
            assert!(!is_invalid(encode(v)));
        }
        assert_eq!(decode(encode(5)), 1);
        assert_eq!(decode(encode(-128)), -1);
    }

    proptest! {
        #[test]
        fn pack_unpack_round_trip(values in proptest::collection::vec(-1i8..=1, 0..600)) {
            let mut packed = vec![0u8; packed_len(values.len())];
            pack_row(&values, &mut packed);
            let mut back = vec![0i8; values.len()];
            prop_assert_eq!(unpack_row(&packed, &mut back), 0);
            prop_assert_eq!(back, values);
        }

        #[test]
        fn histogram_counts_every_code(bytes in proptest::collection::vec(any::<u8>(), 1..64)) {
            let h = CodeHistogram::of_packed(&bytes, bytes.len() * 4);
            prop_assert_eq!(h.minus_one + h.zero + h.plus_one + h.invalid, bytes.len() as u64 * 4);
            let mut values = vec![0i8; bytes.len() * 4];
            prop_assert_eq!(unpack_row(&bytes, &mut values) as u64, h.invalid);
        }
    }
}
