//! The fixed order of the 24 permutations of S4 that the N = 4 `res_logits` index.
//!
//! Owns the table and its matrix convention; everything that builds H_res for N = 4 (this crate,
//! the inference model, the candle training graph, exporters) must use this exact order, because
//! `res_logits[k]` in a `.mhc` file is the logit of permutation `S4[k]`.
//!
//! Order: lexicographic in the one-line notation `[σ(0), σ(1), σ(2), σ(3)]`, so the identity is
//! `S4[0]` and the full reversal `[3, 2, 1, 0]` is `S4[23]`.
//!
//! Matrix convention: `P_k[i][j] = 1` if `j == S4[k][i]`, else 0. Applied to the streams,
//! `(P_k x)_i = x_{S4[k][i]}`: output stream i takes input stream `S4[k][i]`.

/// Number of permutations of 4 elements (4!).
pub const S4_LEN: usize = 24;

/// The permutations of {0, 1, 2, 3} in lexicographic order; `S4[0]` is the identity.
pub const S4: [[usize; 4]; S4_LEN] = [
    [0, 1, 2, 3],
    [0, 1, 3, 2],
    [0, 2, 1, 3],
    [0, 2, 3, 1],
    [0, 3, 1, 2],
    [0, 3, 2, 1],
    [1, 0, 2, 3],
    [1, 0, 3, 2],
    [1, 2, 0, 3],
    [1, 2, 3, 0],
    [1, 3, 0, 2],
    [1, 3, 2, 0],
    [2, 0, 1, 3],
    [2, 0, 3, 1],
    [2, 1, 0, 3],
    [2, 1, 3, 0],
    [2, 3, 0, 1],
    [2, 3, 1, 0],
    [3, 0, 1, 2],
    [3, 0, 2, 1],
    [3, 1, 0, 2],
    [3, 1, 2, 0],
    [3, 2, 0, 1],
    [3, 2, 1, 0],
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_every_permutation_once_in_lexicographic_order_identity_first() {
        assert_eq!(S4[0], [0, 1, 2, 3]);
        for p in &S4 {
            let mut seen = [false; 4];
            for &v in p {
                assert!(v < 4 && !seen[v], "{p:?} is not a permutation");
                seen[v] = true;
            }
        }
        for w in S4.windows(2) {
            assert!(w[0] < w[1], "{:?} !< {:?}", w[0], w[1]);
        }
    }
}
