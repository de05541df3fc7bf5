//! Q8_0 tables at run time: the token embedding or a tied or dense LM head stored as ggml's 8-bit
//! blocks (32 values of a row share one f16 scale `d`; value = `d · q`, `gguf::q8`). Looking a
//! token up dequantizes its row (exact in f32); the head's logits are dot products of each row
//! with the unquantized f32 hidden vector.
//!
//! Layout: the file's bytes, 34 per 32 values, regrouped in tiles of 4 rows (`TILE`) so that
//! the head, which takes four rows at a time, reads memory in one sequential stream (four rows
//! side by side in the file's order made four short streams, which the hardware prefetchers
//! follow badly: 2B4T's head ran at half the speed). In tile `t` (rows `4t .. 4t + 4`, the last
//! tile padded with rows of zeros), block `i` of row `4t + r` holds its 32 values at
//! `values[((t · blocks + i) · 4 + r) · 32 ..]` and its scale at `scales[(t · blocks + i) · 4 + r]`.
//!
//! The dot product of a row with `x` is defined by [`reference_dot`], which every path (scalar,
//! AVX2 + FMA, AVX-512) reproduces bit for bit: 16 lanes, lane `l` of block `b` (values `32b ..
//! 32b + 32`) takes values `l` and `l + 16` of the block,
//! ```text
//! t = q[l] · x[l];   t = fma(q[l + 16], x[l + 16], t);   acc[l] = fma(d_b, t, acc[l])
//! ```
//! for b in increasing order, then the lanes are added as a tree: `s[l] = acc[l] + acc[l + 8]`,
//! then `s[l] + s[l + 4]`, `s[l] + s[l + 2]`, `s[0] + s[1]` (what an AVX2 horizontal sum does).
//! The SIMD paths are C (csrc/q8.c, as libs/ternary's kernels: AVX-512 intrinsics are not in the
//! Rust this workspace supports): AVX-512 holds the 16 lanes in one register, AVX2 in two; the
//! products and sums are the same IEEE operations in the same order, so the results are the same
//! bits. The paths differ only in
//! how many rows and vectors they take at once (a tile's four rows, with one vector or, sharing
//! each row's widened values, two), which changes nothing in any one result.

use std::ops::Range;
use std::sync::OnceLock;

use gguf::q8::{BLOCK, BLOCK_BYTES};
use half::f16;

/// Lanes of the dot product's definition.
const LANES: usize = 16;
/// Rows per tile of the layout; a kernel call takes a whole tile (four independent chains of
/// FMAs hide their latency).
const TILE: usize = 4;

/// A `[rows, cols]` table of Q8_0 blocks, in tiles of four rows (module documentation).
pub struct Q8Table {
    rows: usize,
    cols: usize,
    values: Vec<i8>,
    scales: Vec<f16>,
}

impl Q8Table {
    /// The table of `rows × cols` values stored in `data` as Q8_0 blocks, row after row as a
    /// GGUF file has them; each piece of `data` is handed to `release` once decoded (the loader
    /// frees the mapped pages). A row must be a whole number of blocks and every scale finite.
    pub fn from_blocks(
        rows: usize,
        cols: usize,
        data: &[u8],
        release: impl Fn(&[u8]),
    ) -> Result<Q8Table, String> {
        if cols % BLOCK != 0 || cols == 0 {
            return Err(format!(
                "rows of {cols} values are not whole Q8_0 blocks of {BLOCK}"
            ));
        }
        let blocks = cols / BLOCK;
        if data.len() != rows * blocks * BLOCK_BYTES {
            return Err(format!(
                "{} bytes of Q8_0 data, {rows}x{cols} values need {}",
                data.len(),
                rows * blocks * BLOCK_BYTES
            ));
        }
        if let Some(block) = gguf::q8::first_non_finite_scale(data) {
            return Err(format!(
                "Q8_0 block {block} (row {}) has a non-finite scale",
                block / blocks
            ));
        }
        let padded = rows.div_ceil(TILE) * TILE;
        let mut table = Q8Table {
            rows,
            cols,
            values: vec![0; padded * cols],
            scales: vec![f16::ZERO; padded * blocks],
        };
        const PIECE_ROWS: usize = 4096;
        for (piece_index, piece) in data.chunks(PIECE_ROWS * blocks * BLOCK_BYTES).enumerate() {
            for (k, block) in piece.chunks_exact(BLOCK_BYTES).enumerate() {
                let (row, i) = (piece_index * PIECE_ROWS + k / blocks, k % blocks);
                let at = table.block_index(row, i);
                table.scales[at] = f16::from_le_bytes([block[0], block[1]]);
                table.values[at * BLOCK..(at + 1) * BLOCK]
                    .copy_from_slice(gguf::q8::block_values(block));
            }
            release(piece);
        }
        Ok(table)
    }

    /// Bytes held (the file's, and the padding rows of the last tile).
    pub fn bytes(&self) -> usize {
        self.values.len() + 2 * self.scales.len()
    }

    fn blocks_per_row(&self) -> usize {
        self.cols / BLOCK
    }

    /// Where block `i` of `row` is: its scale's index, and its values' index / 32.
    fn block_index(&self, row: usize, i: usize) -> usize {
        ((row / TILE * self.blocks_per_row() + i) * TILE) + row % TILE
    }

    /// The blocks of `row` in order: each one's 32 values and scale.
    fn row_blocks(&self, row: usize) -> impl Iterator<Item = (&[i8], f16)> + '_ {
        (0..self.blocks_per_row()).map(move |i| {
            let at = self.block_index(row, i);
            (&self.values[at * BLOCK..(at + 1) * BLOCK], self.scales[at])
        })
    }

    /// Row `row` dequantized into `out` (exact: `d · q` needs 18 of f32's 24 significand bits).
    pub fn row_into(&self, row: usize, out: &mut [f32]) {
        assert!(row < self.rows, "row {row} of {}", self.rows);
        for (out, (q, d)) in out.chunks_exact_mut(BLOCK).zip(self.row_blocks(row)) {
            let d = d.to_f32();
            for (o, &q) in out.iter_mut().zip(q) {
                *o = d * f32::from(q);
            }
        }
    }

    /// The dot products of rows `rows` with every vector of `h` (`[B, C]`), appended to `out` row
    /// by row: `out[i·B + b]` = row `rows.start + i` · vector b, each [`reference_dot`]'s bits.
    pub fn dots(&self, rows: Range<usize>, h: &[f32], out: &mut Vec<f32>) {
        self.dots_with(Path::selected(), rows, h, out);
    }

    fn dots_with(&self, path: Path, rows: Range<usize>, h: &[f32], out: &mut Vec<f32>) {
        let cols = self.cols;
        assert!(
            h.len() % cols == 0 && rows.end <= self.rows,
            "Q8_0 dots: vectors of {cols} values and rows inside the table"
        );
        let vectors: Vec<&[f32]> = h.chunks_exact(cols).collect();
        let batch = vectors.len();
        let first = out.len();
        out.resize(first + rows.len() * batch, 0.0);
        // Every tile the range touches, computed whole; the rows asked for kept.
        for tile in rows.start / TILE..rows.end.div_ceil(TILE) {
            let mut keep = |dots: &[f32], r: usize, b: usize| {
                let row = tile * TILE + r;
                if rows.contains(&row) {
                    let at = first + (row - rows.start) * batch + b;
                    out[at..at + dots.len()].copy_from_slice(dots);
                }
            };
            let mut b = 0;
            // Two vectors at a time: each row's values widened once for both.
            while b + 2 <= batch {
                let dots = self.tile::<2>(path, tile, [vectors[b], vectors[b + 1]]);
                for (r, dots) in dots.iter().enumerate() {
                    keep(dots, r, b);
                }
                b += 2;
            }
            if b < batch {
                let dots = self.tile::<1>(path, tile, [vectors[b]]);
                for (r, dots) in dots.iter().enumerate() {
                    keep(dots, r, b);
                }
            }
        }
    }

    /// The dots of the four rows of tile `tile` with the `V` vectors `h` (each `cols` long).
    fn tile<const V: usize>(&self, path: Path, tile: usize, h: [&[f32]; V]) -> [[f32; V]; TILE] {
        const { assert!(V == 1 || V == 2, "the kernels take one or two vectors") };
        let (cols, blocks) = (self.cols, self.blocks_per_row());
        let values = &self.values[tile * TILE * cols..(tile + 1) * TILE * cols];
        let scales = &self.scales[tile * TILE * blocks..(tile + 1) * TILE * blocks];
        assert!(
            h.iter().all(|v| v.len() == cols),
            "Q8_0 dots: vector length"
        );
        match path {
            #[cfg(target_arch = "x86_64")]
            Path::Avx512 | Path::Avx2 => {
                let kernel = match (path, V) {
                    (Path::Avx512, 1) => ffi::nq8_tile_v1_avx512,
                    (Path::Avx512, _) => ffi::nq8_tile_v2_avx512,
                    (_, 1) => ffi::nq8_tile_v1_avx2,
                    _ => ffi::nq8_tile_v2_avx2,
                };
                let vectors = h.map(<[f32]>::as_ptr);
                let mut out = [[0.0f32; V]; TILE];
                // SAFETY: the CPU has what the kernel's target attribute names (AVX-512F for
                // `Path::Avx512`, AVX2, FMA and F16C for both: a `Path` is only made after
                // checking them); `values` and `scales` are one tile of `blocks` blocks a row
                // (sliced above), every vector holds `cols` = 32 · blocks values (checked above);
                // `out` holds TILE · V floats and V is 1 or 2 (asserted at compile time).
                unsafe {
                    kernel(
                        values.as_ptr(),
                        scales.as_ptr().cast(),
                        blocks,
                        vectors.as_ptr(),
                        out.as_mut_ptr().cast(),
                    )
                };
                out
            }
            Path::Scalar => std::array::from_fn(|r| {
                let row = tile * TILE + r;
                std::array::from_fn(|v| reference_dot(self.row_blocks(row), h[v]))
            }),
        }
    }
}

/// The dot product of one Q8_0 row, given as its blocks (32 values and a scale each), with `x`,
/// in the order the module documentation defines: every path gives these bits.
pub fn reference_dot<'a>(blocks: impl Iterator<Item = (&'a [i8], f16)>, x: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut covered = 0;
    for ((q, d), x) in blocks.zip(x.chunks_exact(BLOCK)) {
        let d = d.to_f32();
        for (l, acc) in acc.iter_mut().enumerate() {
            let t = f32::from(q[l]) * x[l];
            let t = f32::from(q[l + LANES]).mul_add(x[l + LANES], t);
            *acc = d.mul_add(t, *acc);
        }
        covered += BLOCK;
    }
    assert_eq!(covered, x.len(), "reference_dot: one block per 32 values");
    let s: [f32; 8] = std::array::from_fn(|l| acc[l] + acc[l + 8]);
    let s: [f32; 4] = std::array::from_fn(|l| s[l] + s[l + 4]);
    (s[0] + s[2]) + (s[1] + s[3])
}

/// The code that computes the dots, chosen once per process from the CPU's features.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Path {
    /// Every path this CPU runs, best last.
    fn available() -> Vec<Path> {
        #[allow(unused_mut)]
        let mut paths = vec![Path::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c");
            if avx2 {
                paths.push(Path::Avx2);
                if is_x86_feature_detected!("avx512f") {
                    paths.push(Path::Avx512);
                }
            }
        }
        paths
    }

    fn selected() -> Path {
        static SELECTED: OnceLock<Path> = OnceLock::new();
        *SELECTED.get_or_init(|| *Path::available().last().expect("scalar is always there"))
    }
}

#[cfg(target_arch = "x86_64")]
mod ffi {
    extern "C" {
        pub fn nq8_tile_v1_avx512(
            values: *const i8,
            scales: *const u16,
            blocks: usize,
            h: *const *const f32,
            out: *mut f32,
        );
        pub fn nq8_tile_v2_avx512(
            values: *const i8,
            scales: *const u16,
            blocks: usize,
            h: *const *const f32,
            out: *mut f32,
        );
        pub fn nq8_tile_v1_avx2(
            values: *const i8,
            scales: *const u16,
            blocks: usize,
            h: *const *const f32,
            out: *mut f32,
        );
        pub fn nq8_tile_v2_avx2(
            values: *const i8,
            scales: *const u16,
            blocks: usize,
            h: *const *const f32,
            out: *mut f32,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    /// A random table of Q8_0 bytes: values over all of i8 (-128 included, which files may hold
    /// though llama.cpp's rule never writes it), scales of varied magnitude with a zero, a
    /// subnormal and the largest f16 among them.
    fn blocks(rows: usize, cols: usize, seed: u64) -> Vec<u8> {
        let mut rng = SplitMix64::new(seed);
        let mut bytes = Vec::new();
        for i in 0..rows * cols / BLOCK {
            let d = match i % 23 {
                5 => f16::ZERO,
                11 => f16::from_bits(3),
                17 => f16::MAX,
                _ => f16::from_f32((rng.next_f32() + 0.01) * 2f32.powi((i % 9) as i32 - 8)),
            };
            bytes.extend_from_slice(&d.to_le_bytes());
            bytes.extend((0..BLOCK).map(|_| rng.next_u64() as u8));
        }
        bytes
    }

    fn vectors(batch: usize, cols: usize, seed: u64) -> Vec<f32> {
        let mut rng = SplitMix64::new(seed);
        (0..batch * cols)
            .map(|i| (rng.next_f32() - 0.5) * 2f32.powi((i % 7) as i32 - 3))
            .collect()
    }

    /// Row `row` of the file's bytes, as (values, scale) blocks.
    fn file_row(bytes: &[u8], cols: usize, row: usize) -> Vec<(&[i8], f16)> {
        let row_bytes = cols / BLOCK * BLOCK_BYTES;
        bytes[row * row_bytes..(row + 1) * row_bytes]
            .chunks_exact(BLOCK_BYTES)
            .map(|b| {
                let d = f16::from_le_bytes([b[0], b[1]]);
                (gguf::q8::block_values(b), d)
            })
            .collect()
    }

    #[test]
    fn every_path_gives_the_reference_bits() {
        let paths = Path::available();
        assert!(paths.contains(&Path::Scalar));
        // 1 to 17 blocks a row (a partial second chunk of 16 scales), 80 (dim 2560); ranges
        // starting and ending inside tiles and a last tile of padding; 1 to 5 vectors (pairs and
        // one left).
        for (cols, rows, range, batch) in [
            (32, 1, 0..1, 1),
            (64, 11, 1..10, 5),
            (96, 10, 2..9, 2),
            (544, 9, 0..9, 3),
            (512, 8, 4..8, 4),
            (2560, 6, 1..6, 1),
        ] {
            let bytes = blocks(rows, cols, cols as u64);
            let t = Q8Table::from_blocks(rows, cols, &bytes, |_| {}).unwrap();
            let h = vectors(batch, cols, rows as u64);
            let mut expected = Vec::new();
            for row in range.clone() {
                for x in h.chunks_exact(cols) {
                    let dot = reference_dot(file_row(&bytes, cols, row).into_iter(), x);
                    expected.push(dot.to_bits());
                }
            }
            for &path in &paths {
                let mut out = vec![7.0];
                t.dots_with(path, range.clone(), &h, &mut out);
                assert_eq!(out[0], 7.0, "appended, not overwritten");
                let got: Vec<u32> = out[1..].iter().map(|v| v.to_bits()).collect();
                assert_eq!(
                    got, expected,
                    "{path:?}, {rows}x{cols} {range:?}, {batch} vectors"
                );
            }
        }
    }

    #[test]
    fn the_reference_is_the_dot_of_the_dequantized_row() {
        let (rows, cols) = (3, 2560);
        let bytes = blocks(rows, cols, 9);
        let t = Q8Table::from_blocks(rows, cols, &bytes, |_| {}).unwrap();
        let x = vectors(1, cols, 4);
        let mut row = vec![0.0f32; cols];
        for r in 0..rows {
            t.row_into(r, &mut row);
            let products = row
                .iter()
                .zip(&x)
                .map(|(&w, &x)| f64::from(w) * f64::from(x));
            let exact: f64 = products.clone().sum();
            let magnitude: f64 = products.map(f64::abs).sum();
            let mut out = Vec::new();
            t.dots(r..r + 1, &x, &mut out);
            // f32 sums of 160 terms a lane, then 16 lanes: well within 256 roundings of the
            // largest partial sum.
            let bound = 256.0 * magnitude * f64::from(f32::EPSILON);
            assert!(
                (f64::from(out[0]) - exact).abs() <= bound,
                "row {r}: {} vs {exact}",
                out[0]
            );
        }
    }

    #[test]
    fn rows_dequantize_exactly_and_padding_is_not_a_row() {
        let (rows, cols) = (5, 64);
        let x: Vec<f32> = (0..rows * cols).map(|i| (i as f32 - 60.0) / 7.0).collect();
        let mut bytes = Vec::new();
        gguf::q8::quantize_into(&x, &mut bytes);
        let released = std::cell::Cell::new(0);
        let t = Q8Table::from_blocks(rows, cols, &bytes, |piece| {
            released.set(released.get() + piece.len())
        })
        .unwrap();
        assert_eq!(released.get(), bytes.len(), "every piece released");
        // Two tiles: the second holds row 4 and three rows of padding.
        assert_eq!(t.bytes(), 8 * (cols + 2 * cols / BLOCK));
        let mut expected = Vec::new();
        gguf::q8::dequantize_into(&bytes, &mut expected);
        let mut row = vec![0.0; cols];
        for r in 0..rows {
            t.row_into(r, &mut row);
            assert_eq!(row, expected[r * cols..(r + 1) * cols]);
        }
        let padding = std::panic::catch_unwind(|| t.row_into(5, &mut vec![0.0; cols]));
        assert!(padding.is_err());
    }

    #[test]
    fn bad_blocks_are_refused() {
        let mut bytes = Vec::new();
        gguf::q8::quantize_into(&[1.0; 96], &mut bytes);
        let e = Q8Table::from_blocks(1, 96, &bytes[..bytes.len() - 1], |_| {})
            .err()
            .unwrap();
        assert!(e.contains("need 102"), "{e}");
        let e = Q8Table::from_blocks(2, 48, &bytes, |_| {}).err().unwrap();
        assert!(e.contains("whole Q8_0 blocks"), "{e}");
        bytes[BLOCK_BYTES + 1] = 0xfe; // block 1's scale: a NaN
        let e = Q8Table::from_blocks(1, 96, &bytes, |_| {}).err().unwrap();
        assert!(e.contains("block 1 (row 0) has a non-finite scale"), "{e}");
    }
}
