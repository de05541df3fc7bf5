//! The learning-rate schedule of a run: Warmup-Stable-Decay (MiniCPM, as nanochat's
//! `base_train.py` uses it; docs/ARCHITECTURE.md, "Training methods").
//!
//! Owns [`Wsd`]: the multiplier of the peak learning rate for each optimizer step — a linear
//! warmup, a constant stretch, then a linear decay to a final fraction over the last share of the
//! run. The optimizers take the multiplier and apply it to each group's peak rate.

use serde::{Deserialize, Serialize};

/// Warmup-Stable-Decay: linear warmup over `warmup_steps`, constant, then linear decay to
/// `final_lr_fraction` over the last `decay_fraction · total_steps` steps.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Wsd {
    /// Steps of the linear warmup; step `s < warmup_steps` gets `(s + 1) / warmup_steps`.
    pub warmup_steps: u64,
    /// Optimizer steps of the whole run.
    pub total_steps: u64,
    /// Share of `total_steps` in the final decay, e.g. 0.2 (rounded to whole steps).
    pub decay_fraction: f64,
    /// The multiplier at the last step, e.g. 0.0 or 0.1.
    pub final_lr_fraction: f64,
}

impl Wsd {
    /// Checks the fields and that warmup and decay fit in the run without overlapping (an
    /// overlap would never reach the peak rate, which is almost surely a mistake).
    pub fn validate(&self) -> Result<(), String> {
        if self.total_steps == 0 {
            return Err("schedule: total_steps must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.decay_fraction) {
            return Err(format!(
                "schedule: decay_fraction must be in [0, 1], got {}",
                self.decay_fraction
            ));
        }
        if !(0.0..=1.0).contains(&self.final_lr_fraction) {
            return Err(format!(
                "schedule: final_lr_fraction must be in [0, 1], got {}",
                self.final_lr_fraction
            ));
        }
        let decay = self.decay_steps();
        if self.warmup_steps.saturating_add(decay) > self.total_steps {
            return Err(format!(
                "schedule: {} warmup steps and {decay} decay steps do not fit in {} steps",
                self.warmup_steps, self.total_steps
            ));
        }
        Ok(())
    }

    /// Steps of the final decay: `decay_fraction · total_steps`, rounded.
    pub fn decay_steps(&self) -> u64 {
        // The cast saturates, so a bad fraction cannot wrap; validate() rejects it anyway.
        ((self.decay_fraction * self.total_steps as f64).round() as u64).min(self.total_steps)
    }

    /// Multiplier of the peak learning rate for optimizer step `step` (0-based). Steps at or past
    /// `total_steps` keep the final value.
    pub fn factor(&self, step: u64) -> f64 {
        let decay = self.decay_steps();
        let decay_start = self.total_steps - decay;
        if decay > 0 && step >= decay_start {
            // Steps still to come after this one, so the last step lands exactly on the final
            // fraction (written as final + rest so no rounding spoils that endpoint).
            let rest = (self.total_steps - 1).saturating_sub(step) as f64 / decay as f64;
            return self.final_lr_fraction + rest * (1.0 - self.final_lr_fraction);
        }
        if step < self.warmup_steps {
            return (step + 1) as f64 / self.warmup_steps as f64;
        }
        1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wsd(warmup: u64, total: u64, decay: f64, fin: f64) -> Wsd {
        Wsd {
            warmup_steps: warmup,
            total_steps: total,
            decay_fraction: decay,
            final_lr_fraction: fin,
        }
    }

    #[test]
    fn shape_warmup_flat_decay_endpoints() {
        let s = wsd(10, 100, 0.2, 0.1);
        s.validate().unwrap();
        assert_eq!(s.decay_steps(), 20);
        let f: Vec<f64> = (0..100).map(|i| s.factor(i)).collect();
        assert_eq!(f[0], 0.1);
        assert_eq!(f[9], 1.0);
        for i in 0..9 {
            assert!(f[i] < f[i + 1], "warmup rises at {i}");
        }
        assert!(f[10..80].iter().all(|&x| x == 1.0), "flat middle");
        for i in 80..99 {
            assert!(f[i] > f[i + 1], "decay falls at {i}");
        }
        assert!(f[80] < 1.0 && f[80] > 0.9);
        assert_eq!(f[99], 0.1);
        assert_eq!(s.factor(100), 0.1);
        assert_eq!(s.factor(u64::MAX), 0.1);
        // Equal steps in both ramps.
        assert!((f[1] - f[0] - 0.1).abs() < 1e-12);
        assert!((f[80] - f[81] - 0.9 / 20.0).abs() < 1e-12);
    }

    #[test]
    fn final_zero_reaches_zero() {
        let s = wsd(0, 50, 0.5, 0.0);
        s.validate().unwrap();
        assert_eq!(s.factor(49), 0.0);
        assert!(s.factor(48) > 0.0);
    }

    #[test]
    fn edge_cases() {
        // No warmup: the first step is at the peak.
        let s = wsd(0, 10, 0.2, 0.0);
        assert_eq!(s.factor(0), 1.0);
        // No decay: constant after warmup, up to the last step.
        let s = wsd(3, 10, 0.0, 0.0);
        s.validate().unwrap();
        assert_eq!(s.decay_steps(), 0);
        assert_eq!(
            (0..10).map(|i| s.factor(i)).collect::<Vec<_>>(),
            [1.0 / 3.0, 2.0 / 3.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
        );
        // A one-step run: the warmup, the decay or neither decides the only step.
        let s = wsd(0, 1, 0.2, 0.1);
        s.validate().unwrap();
        assert_eq!(s.factor(0), 1.0);
        let s = wsd(1, 1, 0.0, 0.1);
        s.validate().unwrap();
        assert_eq!(s.factor(0), 1.0);
        let s = wsd(0, 1, 1.0, 0.1);
        s.validate().unwrap();
        assert_eq!(s.factor(0), 0.1);
        // Warmup and decay back to back, no flat part.
        let s = wsd(4, 8, 0.5, 0.0);
        s.validate().unwrap();
        let f: Vec<f64> = (0..8).map(|i| s.factor(i)).collect();
        assert_eq!(f, [0.25, 0.5, 0.75, 1.0, 0.75, 0.5, 0.25, 0.0]);
    }

    #[test]
    fn validate_errors() {
        assert!(wsd(0, 0, 0.0, 0.0).validate().is_err());
        assert!(wsd(0, 10, -0.1, 0.0).validate().is_err());
        assert!(wsd(0, 10, 1.5, 0.0).validate().is_err());
        assert!(wsd(0, 10, f64::NAN, 0.0).validate().is_err());
        assert!(wsd(0, 10, 0.2, 1.1).validate().is_err());
        assert!(wsd(0, 10, 0.2, f64::NAN).validate().is_err());
        assert!(wsd(11, 10, 0.0, 0.0).validate().is_err());
        let e = wsd(9, 10, 0.2, 0.0).validate().unwrap_err();
        assert!(e.contains("do not fit"), "{e}");
        wsd(8, 10, 0.2, 0.0).validate().unwrap();
    }
}
