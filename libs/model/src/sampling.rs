//! Choosing the next token from logits: repetition penalty, then greedy (temperature 0) or
//! temperature → top-k → top-p → a seeded draw.
//!
//! The random stream is [`SplitMix64`], so a seed gives the same tokens everywhere.

use crate::engine::SamplingParams;
use crate::rng::SplitMix64;

/// The sampler of one request.
#[derive(Clone, Debug)]
pub struct Sampler {
    params: SamplingParams,
    rng: SplitMix64,
    /// Candidate (token, value) pairs, reused across calls.
    candidates: Vec<(u32, f32)>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        Sampler {
            rng: SplitMix64::new(params.seed),
            params,
            candidates: Vec::new(),
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
        if p.temperature == 0.0 {
            return argmax(logits);
        }
        let inv_t = 1.0 / p.temperature;
        self.candidates.clear();
        self.candidates.extend(
            logits
                .iter()
                .enumerate()
                .filter(|(_, l)| !l.is_nan())
                .map(|(i, &l)| (i as u32, l * inv_t)),
        );
        if self.candidates.is_empty() {
            return 0;
        }
        let by_value_desc =
            |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if p.top_k > 0 && p.top_k < self.candidates.len() {
            self.candidates
                .select_nth_unstable_by(p.top_k - 1, by_value_desc);
            self.candidates.truncate(p.top_k);
        }
        // Softmax over the candidates.
        let max = self
            .candidates
            .iter()
            .map(|c| c.1)
            .fold(f32::NEG_INFINITY, f32::max);
        let mut total = 0.0f32;
        for c in &mut self.candidates {
            c.1 = (c.1 - max).exp();
            total += c.1;
        }
        if p.top_p < 1.0 {
            self.candidates.sort_unstable_by(by_value_desc);
            let mut kept = 0.0f32;
            let mut keep = self.candidates.len();
            for (i, c) in self.candidates.iter().enumerate() {
                kept += c.1;
                if kept >= p.top_p * total {
                    keep = i + 1;
                    break;
                }
            }
            self.candidates.truncate(keep);
            total = kept.min(total);
        }
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

/// Index of the largest logit (the lowest index among ties; NaN never wins).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    let mut best_value = f32::NEG_INFINITY;
    for (i, &l) in logits.iter().enumerate() {
        if l > best_value {
            best = i;
            best_value = l;
        }
    }
    best as u32
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
        let mut s = Sampler::new(params(0.0, 0, 1.0, 0));
        assert_eq!(s.sample(&mut [0.5, -2.0, 4.0], &[]), 2);
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
