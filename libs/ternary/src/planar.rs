//! Planar runtime weights: the form every kernel reads (docs/ARCHITECTURE.md, "Numerics": codes
//! and scales in separate 128-byte-aligned buffers, never an interleaved `[codes|scale]` stride).
//!
//! Layout (documented in docs/formats.md):
//! - Rows are padded to a multiple of [`ROW_TILE`] (padding rows have zero codes and zero scales), so
//!   SIMD kernels always work on whole tiles of 8 rows.
//! - `codes` in [`CodeLayout::Rows`] (how weights are built, and what every kernel but AVX-512 VNNI
//!   reads):
//!   row `r` starts at `r * code_row_stride` (`groups * 32` bytes: rows are contiguous,
//!   with no padding between them, so a tile streams as one run of memory; every group starts
//!   32-byte aligned, all a kernel load needs); group `g` of the row takes the 32 bytes at `g * 32`. Inside a group, byte `i` holds
//!   weights `i`, `i + 32`, `i + 64`, `i + 96` of the group at bits 0, 2, 4, 6 (BitNet codes): one
//!   32-byte load plus a shift and masks gives four 32-lane vectors of consecutive weights. Weights
//!   past `cols` in the last group have code 00.
//! - [`CodeLayout::Interleaved`] (what the AVX-512 VNNI kernel reads; [`PlanarWeights::into_layout`]
//!   converts): the same bytes in the same tiles, but each tile (`8 * code_row_stride` bytes) runs
//!   group after group, 256 bytes a group, and inside a group the 4-byte word `j` (bytes `4j..4j+4`
//!   of each row's 32) of the tile's 8 rows together: byte `i` of row `r`'s group `g` at tile offset
//!   `g * 256 + (i / 4) * 32 + (r % 8) * 4 + i % 4`. One 32-byte load is then word `j` of 8 rows,
//!   a row per 32-bit lane, which `vpdpbusd` wants, with no transpose in registers.
//! - `scales`: one f32 per (row, group), tile-interleaved: tile `t = r / 8` starts at
//!   `t * scale_tile_stride` (`groups * 8` floats, a multiple of 32 bytes), and inside it the scale of row
//!   `r` for group `g` is at `g * 8 + r % 8`: one aligned 32-byte load gives group `g` of 8 rows.
//!   Where groups share a scale (models from elsewhere: llama.cpp's blocks of 256, BitNet's one
//!   scale per matrix) it is stored once: with `scale_shift` k, the scale of group `g` is entry
//!   `g >> k` (`ceil(groups / 2^k) * 8` floats a tile; k = [`ROW_SCALE_SHIFT`]: one per row). Every
//!   group still multiplies by its scale, the same number, so the arithmetic (and every result) is
//!   that of the per-group form; only the bytes read shrink (2.25 → 2.125 or ~2.0 bits a weight).
//!
//! The file form (GGUF) is different: row-major packed codes, weight `j` in byte `j / 4` at bits
//! `2 * (j % 4)` ([`crate::trit`]), and row-major `[rows, groups]` scales. Loading repacks once.

use crate::aligned::AlignedVec;
use crate::trit::{self, CodeHistogram};
use crate::{groups_for, quant, GROUP_CODE_BYTES, GROUP_SIZE};

/// Rows processed together by the SIMD kernels; row counts are padded to a multiple of it.
pub const ROW_TILE: usize = 8;

/// The `scale_shift` of one scale per row (any shift at least log2(groups) gives one; this one
/// covers every row length).
pub const ROW_SCALE_SHIFT: u32 = 31;

/// Why weights could not be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanarError {
    #[error("weight matrix must have at least one row and one column, got {rows}x{cols}")]
    EmptyShape { rows: usize, cols: usize },
    #[error("{what}: expected {expected} elements for a {rows}x{cols} matrix, got {actual}")]
    Length {
        what: &'static str,
        rows: usize,
        cols: usize,
        expected: usize,
        actual: usize,
    },
    #[error(
        "scale of row {row}, group {group} is {value}: scales must be finite and non-negative"
    )]
    BadScale {
        row: usize,
        group: usize,
        value: String,
    },
    #[error(
        "row {row}: group {group} has scale {found}, group {first} of the same shared scale has \
         {expected}"
    )]
    UnsharedScale {
        row: usize,
        group: usize,
        first: usize,
        found: String,
        expected: String,
    },
}

/// The order of the code bytes inside each tile of 8 rows (module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CodeLayout {
    /// Row after row.
    Rows,
    /// Group after group, and inside a group 4-byte word after word, the 8 rows' words together.
    Interleaved,
}

/// Bytes of one group of a whole tile's codes.
const TILE_GROUP_BYTES: usize = ROW_TILE * GROUP_CODE_BYTES;

/// Ternary weights `[rows, cols]` in planar runtime form.
#[derive(Clone)]
pub struct PlanarWeights {
    rows: usize,
    cols: usize,
    groups: usize,
    code_row_stride: usize,
    scale_tile_stride: usize,
    /// Group `g` uses scale entry `g >> scale_shift` (module documentation).
    scale_shift: u32,
    layout: CodeLayout,
    codes: AlignedVec<u8>,
    scales: AlignedVec<f32>,
}

impl std::fmt::Debug for PlanarWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlanarWeights")
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .finish_non_exhaustive()
    }
}

/// Byte and bit position of weight `j` of a row in the planar code layout.
#[inline]
fn code_position(j: usize) -> (usize, u32) {
    let (group, offset) = (j / GROUP_SIZE, j % GROUP_SIZE);
    let byte = group * GROUP_CODE_BYTES + offset % GROUP_CODE_BYTES;
    (byte, 2 * (offset / GROUP_CODE_BYTES) as u32)
}

/// Index in a code buffer of `layout` (rows `stride` bytes apart) of byte `byte` of row `row`'s
/// codes, `byte` counted as in the rows layout: group `byte / 32`, byte `byte % 32` of the group.
#[inline]
fn code_byte_index(layout: CodeLayout, stride: usize, row: usize, byte: usize) -> usize {
    match layout {
        CodeLayout::Rows => row * stride + byte,
        CodeLayout::Interleaved => {
            let (group, i) = (byte / GROUP_CODE_BYTES, byte % GROUP_CODE_BYTES);
            (row - row % ROW_TILE) * stride
                + group * TILE_GROUP_BYTES
                + (i / 4) * (4 * ROW_TILE)
                + (row % ROW_TILE) * 4
                + i % 4
        }
    }
}

fn check_len(
    what: &'static str,
    rows: usize,
    cols: usize,
    expected: usize,
    actual: usize,
) -> Result<(), PlanarError> {
    if expected == actual {
        Ok(())
    } else {
        Err(PlanarError::Length {
            what,
            rows,
            cols,
            expected,
            actual,
        })
    }
}

impl PlanarWeights {
    /// Zero weights of the given shape (all codes 00, all scales 0).
    fn zeroed(rows: usize, cols: usize) -> Result<Self, PlanarError> {
        if rows == 0 || cols == 0 {
            return Err(PlanarError::EmptyShape { rows, cols });
        }
        let groups = groups_for(cols);
        // No padding between rows or tiles: a row of 768 weights padded to 128 bytes took 256
        // bytes for 192 of codes, and the holes cost decode (which streams every weight from
        // memory) a quarter of its bandwidth. Group starts stay 32-byte aligned.
        let code_row_stride = groups * GROUP_CODE_BYTES;
        let scale_tile_stride = groups * ROW_TILE;
        let tiles = rows.div_ceil(ROW_TILE);
        Ok(Self {
            rows,
            cols,
            groups,
            code_row_stride,
            scale_tile_stride,
            scale_shift: 0,
            layout: CodeLayout::Rows,
            codes: AlignedVec::zeroed(tiles * ROW_TILE * code_row_stride),
            scales: AlignedVec::zeroed(tiles * scale_tile_stride),
        })
    }

    fn scale_index(&self, row: usize, group: usize) -> usize {
        let entry = group.checked_shr(self.scale_shift).unwrap_or(0);
        (row / ROW_TILE) * self.scale_tile_stride + entry * ROW_TILE + row % ROW_TILE
    }

    /// Stores each scale once for the `2^shift` groups that share it (module documentation):
    /// every row's scales must be equal within each such run, or nothing changes and the first
    /// difference is the error. The results of every kernel stay the same.
    pub fn share_scales(mut self, shift: u32) -> Result<Self, PlanarError> {
        if shift <= self.scale_shift {
            return Ok(self);
        }
        let per_entry = 1usize.checked_shl(shift).unwrap_or(usize::MAX);
        let entries = self.groups.div_ceil(per_entry);
        for row in 0..self.rows {
            for group in 0..self.groups {
                let first = group - group % per_entry.min(self.groups);
                let (found, expected) = (self.scale(row, group), self.scale(row, first));
                if found.to_bits() != expected.to_bits() {
                    return Err(PlanarError::UnsharedScale {
                        row,
                        group,
                        first,
                        found: found.to_string(),
                        expected: expected.to_string(),
                    });
                }
            }
        }
        let tiles = self.padded_rows() / ROW_TILE;
        let stride = entries * ROW_TILE;
        let mut scales = AlignedVec::zeroed(tiles * stride);
        for row in 0..self.padded_rows() {
            for entry in 0..entries {
                scales[(row / ROW_TILE) * stride + entry * ROW_TILE + row % ROW_TILE] =
                    self.scales[self.scale_index(row, entry * per_entry.min(self.groups))];
            }
        }
        self.scales = scales;
        self.scale_tile_stride = stride;
        self.scale_shift = shift;
        Ok(self)
    }

    /// Group `g` of a row uses scale entry `g >> scale_shift()` (0: a scale per group).
    pub fn scale_shift(&self) -> u32 {
        self.scale_shift
    }

    fn set_scales(&mut self, scales: &[f32]) -> Result<(), PlanarError> {
        self.set_scales_of_rows(0, self.rows, scales)
    }

    /// The scales of rows `first..first + rows` from row-major `[rows, groups]` values.
    fn set_scales_of_rows(
        &mut self,
        first: usize,
        rows: usize,
        scales: &[f32],
    ) -> Result<(), PlanarError> {
        check_len("scales", rows, self.cols, rows * self.groups, scales.len())?;
        for (i, &value) in scales.iter().enumerate() {
            let (row, group) = (first + i / self.groups, i % self.groups);
            if !(value.is_finite() && value >= 0.0) {
                return Err(PlanarError::BadScale {
                    row,
                    group,
                    value: value.to_string(),
                });
            }
            let index = self.scale_index(row, group);
            self.scales[index] = value;
        }
        Ok(())
    }

    /// Index in `codes` of byte `byte` of row `row`'s codes.
    #[inline]
    fn code_byte_index(&self, row: usize, byte: usize) -> usize {
        code_byte_index(self.layout, self.code_row_stride, row, byte)
    }

    fn put_code(&mut self, row: usize, j: usize, code: u8) {
        let (byte, shift) = code_position(j);
        let index = self.code_byte_index(row, byte);
        self.codes[index] |= (code & 0b11) << shift;
    }

    /// The order of the code bytes.
    pub fn layout(&self) -> CodeLayout {
        self.layout
    }

    /// The same weights with their code bytes in `layout` (a permutation of the bytes inside
    /// each tile; the scales do not move). In place, a tile at a time, so loading a model never
    /// holds two copies of a matrix.
    pub fn into_layout(mut self, layout: CodeLayout) -> Self {
        if layout == self.layout {
            return self;
        }
        let (from, stride) = (self.layout, self.code_row_stride);
        let mut tile = vec![0u8; ROW_TILE * stride];
        for codes in self.codes.chunks_exact_mut(ROW_TILE * stride) {
            tile.copy_from_slice(codes);
            for row in 0..ROW_TILE {
                for byte in 0..stride {
                    codes[code_byte_index(layout, stride, row, byte)] =
                        tile[code_byte_index(from, stride, row, byte)];
                }
            }
        }
        self.layout = layout;
        self
    }

    /// Quantizes row-major f32 weights with the absmean group quantizer of [`quant`].
    pub fn from_f32(rows: usize, cols: usize, weights: &[f32]) -> Result<Self, PlanarError> {
        check_len("weights", rows, cols, rows * cols, weights.len())?;
        let groups = groups_for(cols);
        let mut values = vec![0i8; rows * cols];
        let mut scales = vec![0f32; rows * groups];
        for ((row, out), row_scales) in weights
            .chunks(cols)
            .zip(values.chunks_mut(cols))
            .zip(scales.chunks_mut(groups))
        {
            quant::quantize_weight_row(row, out, row_scales);
        }
        Self::from_trits(rows, cols, &values, &scales)
    }

    /// From row-major trits (`[rows, cols]`, values in -1..=1) and row-major `[rows, groups]` scales.
    pub fn from_trits(
        rows: usize,
        cols: usize,
        values: &[i8],
        scales: &[f32],
    ) -> Result<Self, PlanarError> {
        let mut w = Self::zeroed(rows, cols)?;
        check_len("trits", rows, cols, rows * cols, values.len())?;
        w.set_scales(scales)?;
        for (row, row_values) in values.chunks(cols).enumerate() {
            for (j, &v) in row_values.iter().enumerate() {
                w.put_code(row, j, trit::encode(v));
            }
        }
        Ok(w)
    }

    /// From the file form: row-major packed codes (`trit::packed_len(cols)` bytes a row, any code,
    /// invalid ones kept as they are) and row-major `[rows, groups]` scales.
    pub fn from_packed(
        rows: usize,
        cols: usize,
        packed: &[u8],
        scales: &[f32],
    ) -> Result<Self, PlanarError> {
        Self::from_packed_parts(cols, &[(rows, packed, scales)])
    }

    /// Matrices of `cols` columns in the file form, `(rows, packed codes, scales)` each, stacked
    /// row-wise in order (q, k, v into one matrix): built in place, with no copy of the parts.
    pub fn from_packed_parts(
        cols: usize,
        parts: &[(usize, &[u8], &[f32])],
    ) -> Result<Self, PlanarError> {
        let rows = parts.iter().map(|(rows, ..)| rows).sum();
        let mut w = Self::zeroed(rows, cols)?;
        let row_bytes = trit::packed_len(cols);
        let mut first = 0;
        for &(part_rows, packed, scales) in parts {
            check_len(
                "packed codes (bytes)",
                part_rows,
                cols,
                part_rows * row_bytes,
                packed.len(),
            )?;
            w.set_scales_of_rows(first, part_rows, scales)?;
            for (row, row_codes) in packed.chunks(row_bytes).enumerate() {
                for j in 0..cols {
                    w.put_code(first + row, j, trit::packed_code(row_codes, j));
                }
            }
            first += part_rows;
        }
        Ok(w)
    }

    /// The file form: row-major packed codes and row-major `[rows, groups]` scales.
    pub fn to_packed(&self) -> (Vec<u8>, Vec<f32>) {
        let row_bytes = trit::packed_len(self.cols);
        let mut packed = vec![0u8; self.rows * row_bytes];
        for (row, out) in packed.chunks_mut(row_bytes).enumerate() {
            for j in 0..self.cols {
                out[j / 4] |= self.code(row, j) << (2 * (j % 4));
            }
        }
        let scales = (0..self.rows)
            .flat_map(|r| (0..self.groups).map(move |g| (r, g)))
            .map(|(r, g)| self.scale(r, g))
            .collect();
        (packed, scales)
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn groups(&self) -> usize {
        self.groups
    }

    /// Rows rounded up to whole [`ROW_TILE`]s: the rows present in the buffers.
    pub fn padded_rows(&self) -> usize {
        self.rows.next_multiple_of(ROW_TILE)
    }

    /// Bytes from one row's codes to the next in the rows layout (`groups * 32`); in both layouts
    /// a tile's codes take `8 * code_row_stride` bytes.
    pub fn code_row_stride(&self) -> usize {
        self.code_row_stride
    }

    /// Floats from one tile's scales to the next (a multiple of 32).
    pub fn scale_tile_stride(&self) -> usize {
        self.scale_tile_stride
    }

    /// The whole code buffer (128-byte aligned).
    pub fn codes(&self) -> &[u8] {
        &self.codes
    }

    /// The whole scale buffer (128-byte aligned).
    pub fn scales(&self) -> &[f32] {
        &self.scales
    }

    /// Raw 2-bit code of weight `j` of `row` (may be the invalid code 10).
    #[inline]
    pub fn code(&self, row: usize, j: usize) -> u8 {
        let (byte, shift) = code_position(j);
        (self.codes[self.code_byte_index(row, byte)] >> shift) & 0b11
    }

    /// Scale of `group` of `row`.
    #[inline]
    pub fn scale(&self, row: usize, group: usize) -> f32 {
        self.scales[self.scale_index(row, group)]
    }

    /// Dequantized row (`code → trit`, times its group scale); invalid codes give 0.
    pub fn dequantize_row(&self, row: usize) -> Vec<f32> {
        (0..self.cols)
            .map(|j| trit::decode(self.code(row, j)) as f32 * self.scale(row, j / GROUP_SIZE))
            .collect()
    }

    /// Counts of -1, 0, +1 and invalid codes over the real (unpadded) weights.
    pub fn histogram(&self) -> CodeHistogram {
        let mut h = CodeHistogram::default();
        for row in 0..self.rows {
            for j in 0..self.cols {
                match self.code(row, j) {
                    0b00 => h.zero += 1,
                    0b01 => h.plus_one += 1,
                    0b11 => h.minus_one += 1,
                    _ => h.invalid += 1,
                }
            }
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn trits_and_scales(rows: usize, cols: usize, seed: u64) -> (Vec<i8>, Vec<f32>) {
        let mut state = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let mut next = || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
            (state >> 33) as u32
        };
        let values = (0..rows * cols).map(|_| (next() % 3) as i8 - 1).collect();
        let scales = (0..rows * groups_for(cols))
            .map(|_| (next() % 1000) as f32 / 997.0)
            .collect();
        (values, scales)
    }

    #[test]
    fn buffers_are_aligned_and_rows_are_contiguous() {
        for (rows, cols) in [(1, 1), (3, 130), (9, 4096), (17, 11008), (8, 200)] {
            let (values, scales) = trits_and_scales(rows, cols, 1);
            let w = PlanarWeights::from_trits(rows, cols, &values, &scales).unwrap();
            assert_eq!(w.codes().as_ptr() as usize % crate::ALIGNMENT, 0);
            assert_eq!(w.scales().as_ptr() as usize % crate::ALIGNMENT, 0);
            assert_eq!(w.code_row_stride(), w.groups() * GROUP_CODE_BYTES);
            assert_eq!(w.scale_tile_stride(), w.groups() * ROW_TILE);
            // Every group of every row, and every tile's scales, start 32-byte aligned.
            assert_eq!(w.code_row_stride() % 32, 0);
            assert_eq!((w.scale_tile_stride() * 4) % 32, 0);
            assert_eq!(w.codes().len(), w.padded_rows() * w.code_row_stride());
        }
    }

    #[test]
    fn bad_shapes_and_scales_are_errors() {
        assert!(matches!(
            PlanarWeights::from_f32(0, 4, &[]),
            Err(PlanarError::EmptyShape { .. })
        ));
        assert!(matches!(
            PlanarWeights::from_f32(2, 4, &[0.0; 7]),
            Err(PlanarError::Length { expected: 8, .. })
        ));
        assert!(matches!(
            PlanarWeights::from_packed(1, 4, &[0], &[f32::NAN]),
            Err(PlanarError::BadScale { .. })
        ));
        assert!(matches!(
            PlanarWeights::from_packed(1, 5, &[0], &[1.0]),
            Err(PlanarError::Length { .. })
        ));
    }

    #[test]
    fn invalid_codes_survive_repacking_and_dequantize_to_zero() {
        let packed = [0b10_11_01_10u8, 0b10];
        let w = PlanarWeights::from_packed(1, 5, &packed, &[2.0]).unwrap();
        assert_eq!(w.histogram().invalid, 3);
        assert_eq!(w.dequantize_row(0), vec![0.0, 2.0, -2.0, 0.0, 0.0]);
        assert_eq!(w.to_packed().0, packed);
    }

    /// The interleaved layout puts byte i of row r's group g where docs/formats.md (and the VNNI
    /// kernel) expect it.
    #[test]
    fn interleaved_bytes_sit_where_the_layout_says() {
        let (rows, cols) = (19, 300);
        let (values, scales) = trits_and_scales(rows, cols, 5);
        let w = PlanarWeights::from_trits(rows, cols, &values, &scales).unwrap();
        let stride = w.code_row_stride();
        let v = w.clone().into_layout(CodeLayout::Interleaved);
        assert_eq!(v.layout(), CodeLayout::Interleaved);
        assert_eq!(v.codes().len(), w.codes().len());
        for r in 0..w.padded_rows() {
            for g in 0..w.groups() {
                for i in 0..GROUP_CODE_BYTES {
                    let at = (r / 8) * 8 * stride + g * 256 + (i / 4) * 32 + (r % 8) * 4 + i % 4;
                    assert_eq!(v.codes()[at], w.codes()[r * stride + g * 32 + i]);
                }
            }
        }
    }

    proptest! {
        /// Changing the layout moves bytes only: every code, scale and the file form stay, and
        /// going back gives the original buffer.
        #[test]
        fn layouts_hold_the_same_weights(
            rows in 1usize..20, cols in 1usize..400, seed in any::<u64>()
        ) {
            let (values, scales) = trits_and_scales(rows, cols, seed);
            let w = PlanarWeights::from_trits(rows, cols, &values, &scales).unwrap();
            let v = w.clone().into_layout(CodeLayout::Interleaved);
            for r in 0..rows {
                for j in 0..cols {
                    prop_assert_eq!(v.code(r, j), w.code(r, j));
                }
            }
            prop_assert_eq!(v.scales(), w.scales());
            prop_assert_eq!(v.to_packed(), w.to_packed());
            let back = v.into_layout(CodeLayout::Rows);
            prop_assert_eq!(back.codes(), w.codes());
        }

        #[test]
        fn packed_round_trip_keeps_every_code_and_scale(
            rows in 1usize..12, cols in 1usize..300, seed in any::<u64>()
        ) {
            let (values, scales) = trits_and_scales(rows, cols, seed);
            let w = PlanarWeights::from_trits(rows, cols, &values, &scales).unwrap();
            for r in 0..rows {
                for j in 0..cols {
                    prop_assert_eq!(trit::decode(w.code(r, j)), values[r * cols + j]);
                }
            }
            let (packed, back_scales) = w.to_packed();
            prop_assert_eq!(&back_scales, &scales);
            let again = PlanarWeights::from_packed(rows, cols, &packed, &back_scales).unwrap();
            prop_assert_eq!(again.codes(), w.codes());
            prop_assert_eq!(again.scales(), w.scales());
        }

        /// pack → unpack of real weights is within one group scale of the original (absmean rounding).
        #[test]
        fn f32_round_trip_within_group_scale(
            rows in 1usize..5, cols in 1usize..400, seed in any::<u64>()
        ) {
            let mut state = seed | 1;
            let weights: Vec<f32> = (0..rows * cols).map(|_| {
                state ^= state << 13; state ^= state >> 7; state ^= state << 17;
                ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2
            }).collect();
            let w = PlanarWeights::from_f32(rows, cols, &weights).unwrap();
            for r in 0..rows {
                let back = w.dequantize_row(r);
                for j in 0..cols {
                    let s = w.scale(r, j / GROUP_SIZE);
                    let original = weights[r * cols + j];
                    prop_assert!((back[j] - original).abs() <= s.max(original.abs() - s) + 1e-7);
                }
            }
        }
    }
}
