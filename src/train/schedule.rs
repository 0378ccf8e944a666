//! The learning-rate schedule: linear warm-up, constant, then a linear cool-down over the last
//! fraction of the run to a final fraction of the peak (modded-nanogpt's trapezoid).

use anyhow::{Result, ensure};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub warmup_steps: usize,
    /// Fraction of `max_steps` at the end over which the rate decays.
    pub cooldown_frac: f32,
    /// The rate at the last step, as a fraction of the peak.
    pub final_lr_frac: f32,
}

impl Schedule {
    pub fn validate(&self) -> Result<()> {
        ensure!(
            (0.0..=1.0).contains(&self.cooldown_frac),
            "--cooldown-frac must lie in [0, 1], not {}",
            self.cooldown_frac
        );
        ensure!(
            (0.0..=1.0).contains(&self.final_lr_frac),
            "--final-lr-frac must lie in [0, 1], not {}",
            self.final_lr_frac
        );
        Ok(())
    }

    /// Multiplier of every learning rate at `step` (0-based) of a run of `max_steps`. The
    /// cool-down starts at the later of the end of the warm-up and `max_steps·(1 − cooldown_frac)`,
    /// so that a warm-up reaching into the cool-down region hands over without a jump.
    pub fn lr_scale(&self, step: usize, max_steps: usize) -> f32 {
        if step < self.warmup_steps {
            return (step + 1) as f32 / self.warmup_steps as f32;
        }
        let (step, end) = (step as f64, max_steps as f64);
        let start = (end * (1.0 - self.cooldown_frac as f64)).max(self.warmup_steps as f64);
        if step < start || start >= end {
            return 1.0;
        }
        let w = ((end - step) / (end - start)).clamp(0.0, 1.0);
        (w + (1.0 - w) * self.final_lr_frac as f64) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::Schedule;

    #[test]
    fn trapezoid_matches_hand_computed_points() {
        // 100 steps, 10 of warm-up, cool-down over the last 40 to 10% of the peak.
        let s = Schedule {
            warmup_steps: 10,
            cooldown_frac: 0.4,
            final_lr_frac: 0.1,
        };
        let expected = [
            (0, 0.1),
            (4, 0.5),
            (9, 1.0),
            (10, 1.0),
            (59, 1.0),
            (60, 1.0),    // the cool-down starts here, with w = 1
            (80, 0.55),   // w = (1 − 0.8)/0.4 = 0.5 → 0.5 + 0.5·0.1
            (99, 0.1225), // w = 0.01/0.4 = 0.025 → 0.025 + 0.975·0.1
        ];
        for (step, want) in expected {
            let got = s.lr_scale(step, 100);
            assert!((got - want).abs() < 1e-6, "step {step}: {got} vs {want}");
        }
    }

    #[test]
    fn decay_starts_where_an_overlapping_warmup_ends() {
        // gpt2 defaults on 100 steps: warm-up 10, decay over the whole run to 0. The decay
        // then runs from step 10 (1.0) to step 100 (0.0): step 55 is half-way.
        let s = Schedule {
            warmup_steps: 10,
            cooldown_frac: 1.0,
            final_lr_frac: 0.0,
        };
        let expected = [(9, 1.0), (10, 1.0), (55, 0.5), (91, 0.1), (99, 1.0 / 90.0)];
        for (step, want) in expected {
            let got = s.lr_scale(step, 100);
            assert!((got - want).abs() < 1e-6, "step {step}: {got} vs {want}");
        }
    }

    #[test]
    fn no_cooldown_keeps_the_peak() {
        let s = Schedule {
            warmup_steps: 0,
            cooldown_frac: 0.0,
            final_lr_frac: 0.0,
        };
        assert!((0..50).all(|step| s.lr_scale(step, 50) == 1.0));
    }
}
