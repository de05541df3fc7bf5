//! Invariant checks on H_res: doubly-stochastic verification and the composite gain across depth.
//!
//! Owns the two numbers the tools report about an mHC model: whether every H_res is doubly
//! stochastic (non-negative, rows and columns summing to 1 within a tolerance), and the composite
//! gain of the product of all H_res matrices of a stack, which stays ≤ 1 (up to rounding) exactly
//! when the residual path can neither blow up nor vanish with depth. Sums and products are taken in
//! f64 so the check measures the f32 matrices, not its own rounding.

use crate::mixing::ResMatrix;
use crate::params::NStreams;

/// Why a matrix is not doubly stochastic: the first violation found, scanning entries row by row,
/// then row sums, then column sums.
#[derive(Clone, Copy, Debug, PartialEq, thiserror::Error)]
pub enum StochasticError {
    /// An entry is NaN or infinite.
    #[error("entry ({row}, {col}) is not finite ({value})")]
    NonFinite {
        /// Row of the entry.
        row: usize,
        /// Column of the entry.
        col: usize,
        /// The entry.
        value: f32,
    },
    /// An entry is below zero.
    #[error("entry ({row}, {col}) is negative ({value})")]
    Negative {
        /// Row of the entry.
        row: usize,
        /// Column of the entry.
        col: usize,
        /// The entry.
        value: f32,
    },
    /// A row does not sum to 1 within the tolerance.
    #[error("row {row} sums to {sum}, off 1 by {:.3e} (tolerance {tol:e})", (sum - 1.0).abs())]
    RowSum {
        /// The row.
        row: usize,
        /// Its sum, in f64.
        sum: f64,
        /// The tolerance that was exceeded.
        tol: f64,
    },
    /// A column does not sum to 1 within the tolerance.
    #[error("column {col} sums to {sum}, off 1 by {:.3e} (tolerance {tol:e})", (sum - 1.0).abs())]
    ColumnSum {
        /// The column.
        col: usize,
        /// Its sum, in f64.
        sum: f64,
        /// The tolerance that was exceeded.
        tol: f64,
    },
}

impl ResMatrix {
    /// Checks that every entry is finite and ≥ 0 and that every row and column sums to 1 within
    /// `tol` (sums in f64). Returns the largest |sum − 1| over all rows and columns, or the first
    /// violation.
    pub fn check_doubly_stochastic(&self, tol: f64) -> Result<f64, StochasticError> {
        let n = self.n_streams().count();
        for row in 0..n {
            for col in 0..n {
                let value = self.get(row, col);
                if !value.is_finite() {
                    return Err(StochasticError::NonFinite { row, col, value });
                }
                if value < 0.0 {
                    return Err(StochasticError::Negative { row, col, value });
                }
            }
        }
        let mut worst = 0.0f64;
        for row in 0..n {
            let sum: f64 = (0..n).map(|col| self.get(row, col) as f64).sum();
            if (sum - 1.0).abs() > tol {
                return Err(StochasticError::RowSum { row, sum, tol });
            }
            worst = worst.max((sum - 1.0).abs());
        }
        for col in 0..n {
            let sum: f64 = (0..n).map(|row| self.get(row, col) as f64).sum();
            if (sum - 1.0).abs() > tol {
                return Err(StochasticError::ColumnSum { col, sum, tol });
            }
            worst = worst.max((sum - 1.0).abs());
        }
        Ok(worst)
    }
}

/// The composite gain of a stack of modules: with P = H_L·…·H_2·H_1 (the first module applied
/// first, product in f64), `max(‖P‖_∞, ‖P‖_1)`, i.e. the largest absolute row sum or column sum.
/// For doubly-stochastic matrices this is 1 (up to the f32 rounding of the entries); an empty stack
/// gives 1 (the identity).
///
/// # Panics
/// If the matrices do not all have the same stream count.
pub fn composite_gain<'a>(matrices: impl IntoIterator<Item = &'a ResMatrix>) -> f64 {
    let mut iter = matrices.into_iter().peekable();
    let Some(n_streams) = iter.peek().map(|m| m.n_streams()) else {
        return 1.0;
    };
    let n = n_streams.count();
    let mut p = [[0.0f64; 4]; 4];
    for (i, row) in p.iter_mut().enumerate().take(n) {
        row[i] = 1.0;
    }
    for h in iter {
        assert_eq!(
            h.n_streams(),
            n_streams,
            "composite_gain: all matrices must have the same stream count"
        );
        // p ← h · p
        let mut next = [[0.0f64; 4]; 4];
        for (i, next_row) in next.iter_mut().enumerate().take(n) {
            for (j, v) in next_row.iter_mut().enumerate().take(n) {
                *v = (0..n).map(|s| h.get(i, s) as f64 * p[s][j]).sum();
            }
        }
        p = next;
    }
    gain_of(&p, n_streams)
}

/// `max(‖P‖_∞, ‖P‖_1)` of the leading n×n block of `p`.
fn gain_of(p: &[[f64; 4]; 4], n: NStreams) -> f64 {
    let n = n.count();
    let row_max = (0..n)
        .map(|i| (0..n).map(|j| p[i][j].abs()).sum::<f64>())
        .fold(0.0, f64::max);
    let col_max = (0..n)
        .map(|j| (0..n).map(|i| p[i][j].abs()).sum::<f64>())
        .fold(0.0, f64::max);
    row_max.max(col_max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mixing::Mixing;
    use crate::params::{Mhc2, Mhc4, MhcParams};
    use proptest::prelude::*;

    /// The tolerance the issue asks for.
    const TOL: f64 = 1e-6;

    #[test]
    fn violations_are_named() {
        let m = ResMatrix::from_row_major(NStreams::Two, &[1.1, -0.1, -0.1, 1.1]);
        assert_eq!(
            m.check_doubly_stochastic(TOL),
            Err(StochasticError::Negative {
                row: 0,
                col: 1,
                value: -0.1
            })
        );
        let m = ResMatrix::from_row_major(NStreams::Two, &[0.5, 0.6, 0.5, 0.4]);
        let err = m.check_doubly_stochastic(TOL).unwrap_err();
        assert!(
            matches!(err, StochasticError::RowSum { row: 0, .. }),
            "{err}"
        );
        assert!(err.to_string().starts_with("row 0 sums to 1.1"), "{err}");
        let m = ResMatrix::from_row_major(NStreams::Two, &[0.5, 0.5, 0.6, 0.4]);
        let err = m.check_doubly_stochastic(TOL).unwrap_err();
        assert!(
            matches!(err, StochasticError::ColumnSum { col: 0, .. }),
            "{err}"
        );
        let m = ResMatrix::from_row_major(NStreams::Two, &[f32::NAN, 0.5, 0.5, 0.5]);
        assert!(matches!(
            m.check_doubly_stochastic(TOL),
            Err(StochasticError::NonFinite { row: 0, col: 0, .. })
        ));
        let m = ResMatrix::from_row_major(NStreams::Two, &[0.25, 0.75, 0.75, 0.25]);
        assert_eq!(m.check_doubly_stochastic(TOL), Ok(0.0));
    }

    #[test]
    fn composite_gain_of_known_products() {
        assert_eq!(composite_gain([]), 1.0);
        let swap = ResMatrix::from_row_major(NStreams::Two, &[0.0, 1.0, 1.0, 0.0]);
        assert_eq!(composite_gain([&swap, &swap, &swap]), 1.0);
        // A non-stochastic matrix shows its growth: [[1, 1], [0, 1]]^3 = [[1, 3], [0, 1]].
        let shear = ResMatrix::from_row_major(NStreams::Two, &[1.0, 1.0, 0.0, 1.0]);
        assert_eq!(composite_gain([&shear, &shear, &shear]), 4.0);
        // Row sums 1 but column sums not: the 1-norm catches it.
        let lopsided = ResMatrix::from_row_major(NStreams::Two, &[1.0, 0.0, 1.0, 0.0]);
        assert_eq!(composite_gain([&lopsided]), 2.0);
    }

    #[test]
    fn init_is_doubly_stochastic_at_every_depth() {
        for n in [NStreams::Two, NStreams::Four] {
            let hs: Vec<ResMatrix> = (0..64)
                .map(|m| *Mixing::from_params(&MhcParams::init(n, m)).h_res())
                .collect();
            for h in &hs {
                h.check_doubly_stochastic(TOL).unwrap();
            }
            assert!(composite_gain(&hs) <= 1.0 + 1e-4);
        }
    }

    /// The range for random logits.
    fn logit() -> impl Strategy<Value = f32> {
        -10.0f32..10.0
    }

    /// A wider range, so saturated softmax weights are covered too.
    fn wide_logit() -> impl Strategy<Value = f32> {
        -30.0f32..30.0
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        #[test]
        fn n4_random_logits_give_doubly_stochastic_h_res(
            logits in proptest::array::uniform24(wide_logit()),
        ) {
            let mut p = Mhc4::init(0);
            p.res_logits = logits;
            let h = *Mixing::from_mhc4(&p).h_res();
            prop_assert!(h.check_doubly_stochastic(TOL).is_ok(), "{:?}", h.check_doubly_stochastic(TOL));
        }

        #[test]
        fn n2_alpha_logits_give_doubly_stochastic_h_res(alpha in logit()) {
            let mut p = Mhc2::init(0);
            p.alpha_logit = alpha;
            let h = *Mixing::from_mhc2(&p).h_res();
            prop_assert!(h.check_doubly_stochastic(TOL).is_ok(), "{:?}", h.check_doubly_stochastic(TOL));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn composite_gain_over_64_random_layers_stays_at_most_one(
            res in proptest::collection::vec(proptest::array::uniform24(logit()), 64),
            alphas in proptest::collection::vec(logit(), 64),
        ) {
            let h4: Vec<ResMatrix> = res
                .iter()
                .map(|&res_logits| *Mixing::from_mhc4(&Mhc4 { res_logits, ..Mhc4::init(0) }).h_res())
                .collect();
            let g4 = composite_gain(&h4);
            prop_assert!(g4 <= 1.0 + 1e-4, "N = 4 gain {}", g4);
            let h2: Vec<ResMatrix> = alphas
                .iter()
                .map(|&alpha_logit| *Mixing::from_mhc2(&Mhc2 { alpha_logit, ..Mhc2::init(0) }).h_res())
                .collect();
            let g2 = composite_gain(&h2);
            prop_assert!(g2 <= 1.0 + 1e-4, "N = 2 gain {}", g2);
        }
    }
}
