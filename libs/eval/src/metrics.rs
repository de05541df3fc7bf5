//! pass@k, with the unbiased estimator of Chen et al. (2021): from n samples of which c are
//! correct, pass@k = 1 − C(n−c, k) / C(n, k), computed as a product so no binomial overflows.

/// The probability that at least one of k samples drawn without replacement from the n is
/// correct. `k` must be at most `n`.
pub fn pass_at_k(n: usize, correct: usize, k: usize) -> f64 {
    assert!(
        k >= 1 && k <= n && correct <= n,
        "pass@{k} of {correct}/{n}"
    );
    if n - correct < k {
        return 1.0;
    }
    // C(n−c, k) / C(n, k) = Π_{i = n−c+1}^{n} (1 − k / i)
    let miss: f64 = ((n - correct + 1)..=n)
        .map(|i| 1.0 - k as f64 / i as f64)
        .product();
    1.0 - miss
}

/// The k values reported for n samples a task: 1, 5, 10, 20, 50, 100 up to n.
pub fn reported_ks(n: usize) -> Vec<usize> {
    [1, 5, 10, 20, 50, 100]
        .into_iter()
        .filter(|&k| k <= n)
        .collect()
}

/// Mean pass@k over tasks given as (samples, correct).
pub fn mean_pass_at_k(tasks: &[(usize, usize)], k: usize) -> Option<f64> {
    if tasks.is_empty() {
        return None;
    }
    let sum: f64 = tasks.iter().map(|&(n, c)| pass_at_k(n, c, k)).sum();
    Some(sum / tasks.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// 1 − C(n−c, k)/C(n, k) with exact binomials (small n).
    fn exact(n: u64, c: u64, k: u64) -> f64 {
        fn choose(n: u64, k: u64) -> f64 {
            if k > n {
                return 0.0;
            }
            (0..k).fold(1.0, |acc, i| acc * (n - i) as f64 / (i + 1) as f64)
        }
        1.0 - choose(n - c, k) / choose(n, k)
    }

    #[test]
    fn known_values() {
        assert_eq!(pass_at_k(10, 0, 1), 0.0);
        assert!((pass_at_k(10, 3, 1) - 0.3).abs() < 1e-12);
        assert_eq!(pass_at_k(10, 8, 5), 1.0);
        // 1 − C(8,2)/C(10,2) = 1 − 28/45
        assert!((pass_at_k(10, 2, 2) - (1.0 - 28.0 / 45.0)).abs() < 1e-12);
        assert_eq!(reported_ks(8), vec![1, 5]);
        assert_eq!(mean_pass_at_k(&[(4, 4), (4, 0)], 1), Some(0.5));
    }

    proptest! {
        #[test]
        fn matches_the_binomial_definition_and_grows_with_k_and_c(n in 1usize..30, c_frac in 0.0f64..=1.0, k_frac in 0.0f64..=1.0) {
            let c = ((n as f64) * c_frac) as usize;
            let k = 1 + ((n - 1) as f64 * k_frac) as usize;
            let p = pass_at_k(n, c, k);
            prop_assert!((p - exact(n as u64, c as u64, k as u64)).abs() < 1e-9);
            prop_assert!((0.0..=1.0).contains(&p));
            if k < n { prop_assert!(pass_at_k(n, c, k + 1) >= p - 1e-12); }
            if c < n { prop_assert!(pass_at_k(n, c + 1, k) >= p - 1e-12); }
            // pass@1 is the plain success rate.
            prop_assert!((pass_at_k(n, c, 1) - c as f64 / n as f64).abs() < 1e-12);
        }
    }
}
