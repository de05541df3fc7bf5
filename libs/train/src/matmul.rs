//! Matrix products of the fused CPU kernels, through the gemm crate that candle's CPU matmul
//! calls: the same microkernels, so a product of the same operands gives the same bits as
//! `Tensor::matmul` (each output a sequential chain of FMAs over k while k fits one of gemm's
//! depth blocks, 512, and the product has more than 16 × 16 outputs: smaller ones take a kernel
//! that sums in another order), written straight into a block of a larger buffer: no zeroed
//! output to allocate, no copy, and a causal product can stop at the last visible position.

use gemm::Parallelism;

/// A strided view of a `rows × cols` matrix: element `(i, j)` at `data[i·rs + j·cs]`.
#[derive(Clone, Copy)]
pub(crate) struct View<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a> View<'a> {
    /// `rows × cols` with element `(i, j)` at `data[i·rs + j·cs]`.
    ///
    /// # Panics
    /// If an element lies outside `data`.
    pub(crate) fn new(data: &'a [f32], rows: usize, cols: usize, rs: usize, cs: usize) -> Self {
        if rows > 0 && cols > 0 {
            let last = (rows - 1) * rs + (cols - 1) * cs;
            assert!(
                last < data.len(),
                "matmul view {rows}x{cols} (strides {rs}, {cs}) outside {} values",
                data.len()
            );
        }
        View {
            data,
            rows,
            cols,
            rs,
            cs,
        }
    }

    /// Row-major `rows × cols` with row stride `rs`.
    pub(crate) fn rows(data: &'a [f32], rows: usize, cols: usize, rs: usize) -> Self {
        Self::new(data, rows, cols, rs, 1)
    }

    /// Rows `[r0, r1)` (no copy).
    pub(crate) fn sub_rows(self, r0: usize, r1: usize) -> Self {
        assert!(
            r0 <= r1 && r1 <= self.rows,
            "rows {r0}..{r1} of {}",
            self.rows
        );
        if r0 == r1 {
            return View { rows: 0, ..self };
        }
        View::new(
            &self.data[r0 * self.rs..],
            r1 - r0,
            self.cols,
            self.rs,
            self.cs,
        )
    }

    /// Columns `[c0, c1)` (no copy).
    pub(crate) fn sub_cols(self, c0: usize, c1: usize) -> Self {
        self.t().sub_rows(c0, c1).t()
    }

    /// The transpose (no copy).
    pub(crate) fn t(self) -> Self {
        View {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }
}

/// `dst[i·dst_rs + j] = Σ_k a[i, k]·b[k, j]` (`+=` with `accumulate`) for `a` `m × k` and `b`
/// `k × n`; `parallel` splits the output over the rayon pool (the per-element sums are the same
/// either way).
///
/// # Panics
/// If the shapes do not chain, or the output rows overlap or leave `dst`.
pub(crate) fn matmul(
    dst: &mut [f32],
    dst_rs: usize,
    a: View,
    b: View,
    accumulate: bool,
    parallel: bool,
) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "matmul: {m}x{k} times {}x{n}", b.rows);
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        dst_rs >= n && (m - 1) * dst_rs + n <= dst.len(),
        "matmul: a {m}x{n} output with row stride {dst_rs} in {} values",
        dst.len()
    );
    if k == 0 {
        if !accumulate {
            dst.chunks_mut(dst_rs)
                .take(m)
                .for_each(|row| row[..n].fill(0.0));
        }
        return;
    }
    let parallelism = if parallel && rayon::current_num_threads() > 1 {
        Parallelism::Rayon(rayon::current_num_threads())
    } else {
        Parallelism::None
    };
    // SAFETY: every element gemm reads is inside its slice (checked by `View::new` for `a` and
    // `b`, just above for the m × n block of `dst`, whose rows do not overlap as dst_rs >= n);
    // `dst` is borrowed mutably, so it aliases neither operand; strides fit in isize because
    // each view's last element is an index of a slice.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    fn values(n: usize, seed: u64) -> Vec<f32> {
        ternary::synthetic::uniform_values(n, seed)
    }

    /// The shapes and layouts of the attention and Newton–Schulz products: the same bits as
    /// candle's matmul, whole or as row and column blocks of it.
    #[test]
    fn products_are_candles_bit_for_bit_whole_and_in_blocks() {
        let dev = Device::Cpu;
        for (m, k, n, seed) in [
            (512, 64, 256, 1u64),
            (512, 256, 64, 2),
            (256, 512, 64, 3),
            (256, 512, 256, 4),
            (37, 300, 19, 5),
        ] {
            let a = values(m * k, seed);
            let b = values(k * n, seed + 10);
            // b given as the transpose of an n × k matrix, as `x.matmul(&y.t())` does.
            let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
            let want = Tensor::from_slice(&a, (m, k), &dev)
                .unwrap()
                .matmul(&Tensor::from_slice(&bt, (n, k), &dev).unwrap().t().unwrap())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let mut whole = vec![f32::NAN; m * n];
            matmul(
                &mut whole,
                n,
                View::rows(&a, m, k, k),
                View::rows(&bt, n, k, k).t(),
                false,
                true,
            );
            assert_eq!(bits(&whole), bits(&want), "{m}x{k}x{n} whole");
            // Row blocks of 32 against the first c columns; the rest of each row untouched.
            // (gemm takes another kernel, summing in another order, for products of at most
            // 16 × 16 outputs: the blocks here and in the kernels are larger.)
            let mut blocks = vec![f32::NAN; m * n];
            for r0 in (0..m).step_by(32) {
                let r1 = (r0 + 32).min(m);
                let c = (r1 * n / m).clamp(n.min(16), n);
                matmul(
                    &mut blocks[r0 * n..],
                    n,
                    View::rows(&a[r0 * k..], r1 - r0, k, k),
                    View::rows(&bt, c, k, k).t(),
                    false,
                    false,
                );
                if (r1 - r0) * c <= 16 * 16 {
                    continue;
                }
                for r in r0..r1 {
                    assert_eq!(
                        bits(&blocks[r * n..r * n + c]),
                        bits(&want[r * n..r * n + c])
                    );
                    assert!(blocks[r * n + c..(r + 1) * n].iter().all(|v| v.is_nan()));
                }
            }
            // Accumulating onto a first product gives first + second.
            let mut acc = whole.clone();
            matmul(
                &mut acc,
                n,
                View::rows(&a, m, k, k),
                View::rows(&bt, n, k, k).t(),
                true,
                true,
            );
            let doubled: Vec<f32> = whole.iter().map(|v| v + v).collect();
            assert_eq!(bits(&acc), bits(&doubled));
        }
    }

    /// A product over the leading part of k whose remaining terms are zero equals the whole
    /// product, bit for bit (what lets a causal product stop at the last visible position).
    #[test]
    fn trailing_zero_terms_change_nothing() {
        let (m, k, n) = (64, 256, 64);
        let mut a = values(m * k, 7);
        for (i, row) in a.chunks_mut(k).enumerate() {
            row[100 + i..].fill(0.0);
        }
        let b = values(k * n, 8);
        let mut whole = vec![0.0; m * n];
        matmul(
            &mut whole,
            n,
            View::rows(&a, m, k, k),
            View::rows(&b, k, n, n),
            false,
            false,
        );
        let mut short = vec![0.0; m * n];
        let used = 100 + m;
        matmul(
            &mut short,
            n,
            View::rows(&a, m, used, k),
            View::rows(&b, used, n, n),
            false,
            false,
        );
        assert_eq!(bits(&whole), bits(&short));
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }
}
