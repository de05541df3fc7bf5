//! Choosing the next token from logits: repetition penalty, then greedy (temperature 0) or
//! temperature → top-k → top-p → a seeded draw.
//!
//! The random stream is [`SplitMix64`], so a seed gives the same tokens everywhere.

use crate::rng::SplitMix64;
use crate::vmath;

/// How the next token is chosen.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 = greedy (argmax), as is any temperature too small for `1 / temperature` to be finite
    /// (below ~2.9e-39); otherwise logits are divided by it before the softmax.
    pub temperature: f32,
    /// Keep only the k most likely tokens (0 = all).
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches top_p (1 = all).
    pub top_p: f32,
    /// > 1 discourages tokens already in the prompt or the completion (1 = off).
    pub repetition_penalty: f32,
    /// Seed of this request's random stream.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            repetition_penalty: 1.0,
            seed: 0,
        }
    }
}

/// The sampler of one request.
#[derive(Clone, Debug)]
pub struct Sampler {
    params: SamplingParams,
    rng: SplitMix64,
    /// Candidate (token, weight) pairs, reused across calls.
    candidates: Vec<(u32, f32)>,
    /// Softmax weights of the whole vocabulary and their block sums, reused across calls.
    weights: Vec<f32>,
    block_sums: Vec<f32>,
    /// Nucleus candidates whose order decides whether they are kept, reused across calls.
    boundary: Vec<(u32, f32)>,
}

/// Keeps `candidates[..from]` (holding `kept` of the mass) and then, in order, as many more as it
/// takes for the kept mass to reach `goal` (all of them if it never does); returns the mass kept.
fn keep_until(candidates: &mut Vec<(u32, f32)>, from: usize, mut kept: f32, goal: f32) -> f32 {
    let mut keep = candidates.len();
    for (i, c) in candidates.iter().enumerate().skip(from) {
        kept += c.1;
        if kept >= goal {
            keep = i + 1;
            break;
        }
    }
    candidates.truncate(keep);
    kept
}

/// Highest weight first; the lower token first among equal weights.
fn by_weight_desc(a: &(u32, f32), b: &(u32, f32)) -> std::cmp::Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        Sampler {
            rng: SplitMix64::new(params.seed),
            params,
            candidates: Vec::new(),
            weights: Vec::new(),
            block_sums: Vec::new(),
            boundary: Vec::new(),
        }
    }

    /// Checks the parameters' ranges.
    pub fn validate(params: &SamplingParams) -> Result<(), String> {
        if !(params.temperature.is_finite() && params.temperature >= 0.0) {
            return Err(format!(
                "temperature must be finite and >= 0, not {}",
                params.temperature
            ));
        }
        if !(params.top_p > 0.0 && params.top_p <= 1.0) {
            return Err(format!("top_p must be in (0, 1], not {}", params.top_p));
        }
        if !(params.repetition_penalty.is_finite() && params.repetition_penalty > 0.0) {
            return Err(format!(
                "repetition_penalty must be finite and > 0, not {}",
                params.repetition_penalty
            ));
        }
        Ok(())
    }

    /// The next token given `logits` (modified in place) and the tokens so far (`history`, prompt
    /// and completion, for the repetition penalty).
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        let p = &self.params;
        if p.repetition_penalty != 1.0 {
            // Each distinct earlier token once (CTRL's rule: shrink positive logits, grow negative).
            let mut seen = vec![false; logits.len()];
            for &t in history {
                let t = t as usize;
                if t < logits.len() && !std::mem::replace(&mut seen[t], true) {
                    let l = &mut logits[t];
                    *l = if *l > 0.0 {
                        *l / p.repetition_penalty
                    } else {
                        *l * p.repetition_penalty
                    };
                }
            }
        }
        // Temperature 0, and any so small (f32 subnormals) that 1 / temperature overflows and
        // the softmax would be NaN: the limit of a vanishing temperature is greedy anyway.
        if (1.0 / p.temperature).is_infinite() {
            return argmax(logits);
        }
        if p.top_k > 0 && p.top_k < logits.len() {
            self.sample_top_k(logits)
        } else {
            self.sample_vocabulary(logits)
        }
    }

    /// The `top_k` largest, softmax over them at the temperature, top-p, a draw.
    fn sample_top_k(&mut self, logits: &[f32]) -> u32 {
        let (k, inv_t) = (self.params.top_k, 1.0 / self.params.temperature);
        self.candidates.clear();
        self.candidates.extend(
            logits
                .iter()
                .enumerate()
                .filter(|(_, l)| !l.is_nan())
                .map(|(i, &l)| (i as u32, l)),
        );
        if self.candidates.is_empty() {
            return 0;
        }
        if k < self.candidates.len() {
            self.candidates
                .select_nth_unstable_by(k - 1, by_weight_desc);
            self.candidates.truncate(k);
        }
        let max = self
            .candidates
            .iter()
            .map(|c| c.1)
            .fold(f32::NEG_INFINITY, f32::max);
        let mut total = 0.0f32;
        for c in &mut self.candidates {
            // The difference scaled, not each logit: a large 1 / temperature times a logit may
            // overflow to infinity, and ∞ - ∞ is NaN.
            c.1 = ((c.1 - max) * inv_t).exp();
            total += c.1;
        }
        self.draw_from_candidates(total)
    }

    /// Softmax weights of the whole vocabulary at the temperature (vectorized), then a draw from
    /// all of them, or from the nucleus when top_p < 1.
    fn sample_vocabulary(&mut self, logits: &[f32]) -> u32 {
        let max = max_ignoring_nan(logits);
        if max == f32::NEG_INFINITY {
            return 0; // nothing to draw from
        }
        self.weights.resize(logits.len(), 0.0);
        self.block_sums
            .resize(logits.len().div_ceil(vmath::WEIGHT_BLOCK), 0.0);
        let inv_t = 1.0 / self.params.temperature;
        let total =
            vmath::softmax_weights(logits, max, inv_t, &mut self.weights, &mut self.block_sums);
        if self.params.top_p < 1.0 {
            return self.draw_from_nucleus(total);
        }
        // A draw over the vocabulary: find the block, then the token.
        let mut target = self.rng.next_f32() * total;
        for (b, &sum) in self.block_sums.iter().enumerate() {
            if target < sum {
                let first = b * vmath::WEIGHT_BLOCK;
                let block = &self.weights[first..(first + vmath::WEIGHT_BLOCK).min(logits.len())];
                for (i, &w) in block.iter().enumerate() {
                    if target < w {
                        return (first + i) as u32;
                    }
                    target -= w;
                }
                // Rounding between the block's sum and its weights: its last weighted token.
                return (first + block.iter().rposition(|&w| w > 0.0).unwrap_or(0)) as u32;
            }
            target -= sum;
        }
        // Rounding left the draw past the end: the last weighted token.
        self.weights.iter().rposition(|&w| w > 0.0).unwrap_or(0) as u32
    }

    /// Top-p over the candidates (weights summing to `total`, unsorted), then a seeded draw.
    fn draw_from_candidates(&mut self, total: f32) -> u32 {
        if self.params.top_p >= 1.0 {
            return self.draw(total);
        }
        self.candidates.sort_unstable_by(by_weight_desc);
        let kept = keep_until(&mut self.candidates, 0, 0.0, self.params.top_p * total);
        self.draw(kept.min(total))
    }

    /// The nucleus of the vocabulary's weights (summing to `total`), then a seeded draw: the
    /// same tokens as sorting the whole vocabulary by weight and keeping the heaviest prefix
    /// that holds top_p of the mass, without that sort. Weights are 1 at the largest; a pass
    /// over them gives the mass above a power of two 2^-e, and a binary search over e the
    /// smallest e whose heavier tokens hold the goal: no lighter token is in the nucleus, every
    /// token heavier than 2^-(e-1) is, and only those in between need sorting. The margin
    /// covers the rounding of the f32 sums (at most n·2^-24 of the total for n weights added one
    /// by one, less for the eight lanes of `mass_above`).
    fn draw_from_nucleus(&mut self, total: f32) -> u32 {
        const LIGHTEST: i32 = 24;
        let goal = self.params.top_p * total;
        let margin = self.weights.len() as f64 * f64::from(f32::EPSILON);
        let (goal_low, goal_high) = (
            f64::from(goal) * (1.0 - margin),
            f64::from(goal) * (1.0 + margin),
        );
        let power = |e: i32| 2f32.powi(-e);
        let (mut e, mut none_lighter) = (1, LIGHTEST + 1);
        while e < none_lighter {
            let mid = (e + none_lighter) / 2;
            if mass_above(&self.weights, power(mid)) >= goal_high {
                none_lighter = mid;
            } else {
                e = mid + 1;
            }
        }
        let lower = if e <= LIGHTEST { power(e) } else { 0.0 };
        let upper = if mass_above(&self.weights, power(e - 1)) < goal_low {
            power(e - 1)
        } else {
            f32::INFINITY // too close to call: sort all above `lower`
        };
        self.candidates.clear();
        self.boundary.clear();
        let mut kept = 0.0f32;
        for (i, &w) in self.weights.iter().enumerate() {
            if w > upper {
                self.candidates.push((i as u32, w));
                kept += w;
            } else if w > lower {
                self.boundary.push((i as u32, w));
            }
        }
        // The certain part first (the draw does not depend on the order), then the boundary
        // heaviest first, as far as it takes to reach the goal.
        self.boundary.sort_unstable_by(by_weight_desc);
        let certain = self.candidates.len();
        self.candidates.append(&mut self.boundary);
        let kept = keep_until(&mut self.candidates, certain, kept, goal);
        self.draw(kept.min(total))
    }

    /// A seeded draw from the candidates, whose weights sum to `total`.
    fn draw(&mut self, total: f32) -> u32 {
        let mut target = self.rng.next_f32() * total;
        for &(token, weight) in &self.candidates {
            if target < weight {
                return token;
            }
            target -= weight;
        }
        // Rounding left the draw past the end: the last candidate.
        self.candidates.last().map_or(0, |c| c.0)
    }
}

/// The largest of `values`, NaN ignored (-∞ when there is none): eight running maxima, which
/// the compiler keeps in vector registers.
fn max_ignoring_nan(values: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let mut chunks = values.chunks_exact(8);
    for chunk in &mut chunks {
        for (m, &v) in lanes.iter_mut().zip(chunk) {
            *m = if v > *m { v } else { *m };
        }
    }
    lanes
        .into_iter()
        .chain(chunks.remainder().iter().copied())
        .fold(f32::NEG_INFINITY, |m, v| if v > m { v } else { m })
}

/// The sum of the weights above `floor`, in eight running f32 sums (vectorized) added in f64.
fn mass_above(weights: &[f32], floor: f32) -> f64 {
    let mut lanes = [0.0f32; 8];
    let mut chunks = weights.chunks_exact(8);
    for chunk in &mut chunks {
        for (s, &w) in lanes.iter_mut().zip(chunk) {
            *s += if w > floor { w } else { 0.0 };
        }
    }
    let tail: f64 = chunks
        .remainder()
        .iter()
        .filter(|&&w| w > floor)
        .map(|&w| f64::from(w))
        .sum();
    lanes.iter().map(|&s| f64::from(s)).sum::<f64>() + tail
}

/// Index of the largest logit (the lowest index among ties; NaN never wins; 0 when every logit is
/// NaN or -∞). The maximum first, in vector lanes, then its first position: a single scan that
/// remembers the index carries a dependency from every element to the next.
pub fn argmax(logits: &[f32]) -> u32 {
    let max = max_ignoring_nan(logits);
    if max == f32::NEG_INFINITY {
        return 0;
    }
    let chunk = logits
        .chunks(64)
        .position(|c| c.contains(&max))
        .expect("the maximum is one of the logits");
    let within = logits[64 * chunk..]
        .iter()
        .position(|&l| l == max)
        .expect("the chunk holds the maximum");
    (64 * chunk + within) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32, top_k: usize, top_p: f32, seed: u64) -> SamplingParams {
        SamplingParams {
            temperature,
            top_k,
            top_p,
            repetition_penalty: 1.0,
            seed,
        }
    }

    fn counts(p: SamplingParams, logits: &[f32], draws: usize) -> Vec<usize> {
        let mut s = Sampler::new(p);
        let mut counts = vec![0; logits.len()];
        for _ in 0..draws {
            counts[s.sample(&mut logits.to_vec(), &[]) as usize] += 1;
        }
        counts
    }

    #[test]
    fn greedy_takes_the_first_maximum() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, f32::NAN, -1.0]), 1);
        let mut long = vec![-1.0f32; 300];
        long[0] = f32::NAN;
        long[130] = 2.0;
        long[257] = 2.0;
        assert_eq!(argmax(&long), 130);
        long[129] = f32::INFINITY;
        assert_eq!(argmax(&long), 129);
        assert_eq!(argmax(&[f32::NAN; 70]), 0);
        assert_eq!(argmax(&[f32::NEG_INFINITY, f32::NAN]), 0);
        assert_eq!(argmax(&[-0.0, 0.0]), 0);
        let mut s = Sampler::new(params(0.0, 0, 1.0, 0));
        assert_eq!(s.sample(&mut [0.5, -2.0, 4.0], &[]), 2);
    }

    /// 1e-45 (the smallest f32 subnormal) used to make every weight NaN, and the draw token 0;
    /// 1e-38 overflowed the scaled logits of top-k.
    #[test]
    fn a_vanishing_temperature_is_greedy() {
        let logits = [0.5f32, -2.0, 4.0, 3.9, f32::NAN];
        for temperature in [1e-45, f32::MIN_POSITIVE / 8.0, 1e-38, 1e-30] {
            for top_k in [0, 2] {
                for seed in 0..20 {
                    let mut s = Sampler::new(params(temperature, top_k, 1.0, seed));
                    assert_eq!(
                        s.sample(&mut logits.to_vec(), &[]),
                        2,
                        "temperature {temperature:e}, top_k {top_k}, seed {seed}"
                    );
                }
            }
        }
    }

    #[test]
    fn temperature_sampling_follows_the_softmax() {
        // ln(1), ln(2), ln(3), ln(4): probabilities 0.1, 0.2, 0.3, 0.4.
        let logits: Vec<f32> = [1.0f32, 2.0, 3.0, 4.0].iter().map(|v| v.ln()).collect();
        let c = counts(params(1.0, 0, 1.0, 7), &logits, 20_000);
        for (i, &n) in c.iter().enumerate() {
            let expected = 20_000.0 * (i + 1) as f64 / 10.0;
            assert!(
                (n as f64 - expected).abs() < 0.05 * expected + 60.0,
                "{c:?}"
            );
        }
    }

    #[test]
    fn top_k_and_top_p_cut_the_tail() {
        let logits: Vec<f32> = [1.0f32, 2.0, 3.0, 4.0].iter().map(|v| v.ln()).collect();
        let c = counts(params(1.0, 2, 1.0, 1), &logits, 5_000);
        assert_eq!(&c[..2], &[0, 0], "top-2 keeps tokens 2 and 3: {c:?}");
        // top_p 0.5: 0.4 alone is not enough, 0.4 + 0.3 is: tokens 3 and 2.
        let c = counts(params(1.0, 0, 0.5, 1), &logits, 5_000);
        assert_eq!(&c[..2], &[0, 0], "{c:?}");
        assert!(c[2] > 1500 && c[3] > 2000, "{c:?}");
        let c = counts(params(1.0, 0, 0.3, 1), &logits, 1_000);
        assert_eq!(c, vec![0, 0, 0, 1_000]);
    }

    /// Three tokens in different blocks of a 1,000-token vocabulary (the last block partial),
    /// drawn at their softmax rates; the rest never (logits NaN, -∞, or far below).
    #[test]
    fn vocabulary_draws_find_the_block_and_the_token() {
        let mut logits = vec![-200.0f32; 1000];
        logits[1] = f32::NAN;
        logits[2] = f32::NEG_INFINITY;
        for (token, weight) in [(5usize, 1.0f32), (300, 2.0), (999, 5.0)] {
            logits[token] = weight.ln();
        }
        let draws = 40_000;
        let c = counts(params(1.0, 0, 1.0, 3), &logits, draws);
        for (token, weight) in [(5usize, 1.0f64), (300, 2.0), (999, 5.0)] {
            let expected = draws as f64 * weight / 8.0;
            assert!(
                (c[token] as f64 - expected).abs() < 0.05 * expected,
                "token {token}: {} of {draws}, expected {expected}",
                c[token]
            );
        }
        assert_eq!(c[5] + c[300] + c[999], draws);
    }

    /// The nucleus of a 32,768-token vocabulary whose weights fall off geometrically (token
    /// order shuffled): draws stay inside the nucleus computed in f64 (up to one token at its
    /// edge, where f32 rounding may decide) and follow the weights inside it.
    #[test]
    fn the_nucleus_of_a_large_vocabulary_is_exact() {
        let vocab = 32_768usize;
        // Rank r (weight e^(-r/50)) sits at token r·7919 mod vocab.
        let token_of = |rank: usize| rank * 7919 % vocab;
        let mut logits = vec![0.0f32; vocab];
        for rank in 0..vocab {
            logits[token_of(rank)] = -(rank as f32) / 50.0;
        }
        for top_p in [0.5f32, 0.9] {
            let weights: Vec<f64> = (0..vocab).map(|r| (-(r as f64) / 50.0).exp()).collect();
            let goal = f64::from(top_p) * weights.iter().sum::<f64>();
            let mut kept = 0.0;
            let nucleus = 1 + weights
                .iter()
                .position(|w| {
                    kept += w;
                    kept >= goal
                })
                .unwrap();
            let draws = 10_000;
            let c = counts(params(1.0, 0, top_p, 9), &logits, draws);
            let rank_of: std::collections::HashMap<usize, usize> =
                (0..vocab).map(|r| (token_of(r), r)).collect();
            for (token, &n) in c.iter().enumerate() {
                if n > 0 {
                    assert!(
                        rank_of[&token] <= nucleus,
                        "top_p {top_p}: rank {} drawn, nucleus {nucleus}",
                        rank_of[&token]
                    );
                }
            }
            let mass: f64 = weights[..nucleus].iter().sum();
            let expected = draws as f64 * weights[0] / mass;
            let first = c[token_of(0)] as f64;
            assert!(
                (first - expected).abs() < 0.2 * expected,
                "top_p {top_p}: the heaviest token {first} times, expected {expected}"
            );
        }
    }

    #[test]
    fn a_seed_gives_the_same_draws() {
        let logits = vec![0.0f32; 50];
        let a = counts(params(1.0, 0, 1.0, 42), &logits, 200);
        let b = counts(params(1.0, 0, 1.0, 42), &logits, 200);
        let c = counts(params(1.0, 0, 1.0, 43), &logits, 200);
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn repetition_penalty_discourages_seen_tokens() {
        let mut s = Sampler::new(SamplingParams {
            repetition_penalty: 2.0,
            ..params(0.0, 0, 1.0, 0)
        });
        // Token 0 (3.0 → 1.5) loses to token 1 (2.0); negative logits grow more negative.
        let mut logits = [3.0, 2.0, -1.0];
        assert_eq!(s.sample(&mut logits, &[0, 0, 2]), 1);
        assert_eq!(logits, [1.5, 2.0, -2.0]);
    }

    #[test]
    fn bad_parameters_are_refused() {
        for bad in [
            params(-1.0, 0, 1.0, 0),
            params(f32::NAN, 0, 1.0, 0),
            params(1.0, 0, 0.0, 0),
            params(1.0, 0, 1.5, 0),
        ] {
            assert!(Sampler::validate(&bad).is_err(), "{bad:?}");
        }
        assert!(Sampler::validate(&params(0.7, 40, 0.9, 0)).is_ok());
    }
}
