//! The learning-rate schedule: linear warmup, then cosine decay to a floor, exactly as
//! transformers' `get_cosine_schedule_with_warmup` (`min_lr_ratio` = 0) and
//! `get_cosine_with_min_lr_schedule_with_warmup` compute it.

/// Linear warmup then cosine decay.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CosineSchedule {
    /// The learning rate at the end of warmup.
    pub peak_lr: f64,
    /// Optimizer steps of linear warmup from 0.
    pub warmup_steps: usize,
    /// Total optimizer steps; the rate reaches its floor here.
    pub total_steps: usize,
    /// The floor as a fraction of `peak_lr`.
    pub min_lr_ratio: f64,
}

impl CosineSchedule {
    /// The rate of optimizer step `step` (0-based): the first step of a warmup runs at 0, as
    /// with transformers' scheduler.
    pub fn lr(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return self.peak_lr * step as f64 / self.warmup_steps.max(1) as f64;
        }
        let progress = (step - self.warmup_steps) as f64
            / (self.total_steps.saturating_sub(self.warmup_steps)).max(1) as f64;
        let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos());
        self.peak_lr * (self.min_lr_ratio + (1.0 - self.min_lr_ratio) * cosine).max(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_transformers() {
        // get_cosine_schedule_with_warmup(AdamW(lr=2e-5), num_warmup_steps=3, num_training_steps=10),
        // the lr of each of 11 steps, recorded from transformers 5.24.
        let reference = [
            0.0,
            6.666666666666667e-06,
            1.3333333333333333e-05,
            2e-05,
            1.900968867902419e-05,
            1.6234898018587336e-05,
            1.2225209339563144e-05,
            7.774790660436857e-06,
            3.7651019814126656e-06,
            9.903113209758098e-07,
            0.0,
        ];
        let s = CosineSchedule {
            peak_lr: 2e-5,
            warmup_steps: 3,
            total_steps: 10,
            min_lr_ratio: 0.0,
        };
        for (step, want) in reference.iter().enumerate() {
            assert!(
                (s.lr(step) - want).abs() < 1e-18,
                "step {step}: {} vs {want}",
                s.lr(step)
            );
        }
        let floor = CosineSchedule {
            min_lr_ratio: 0.1,
            ..s
        };
        assert!((floor.lr(10) - 2e-6).abs() < 1e-18);
    }
}
