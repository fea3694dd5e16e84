//! Random walks that keep simulated readings plausible: small steps, clamped to a sensible range.

/// One metric's walk.
#[derive(Debug, Clone)]
pub struct Walk {
    pub metric: &'static str,
    pub unit: &'static str,
    value: f64,
    step: f64,
    /// A steady drift per step (a battery drains).
    drift: f64,
    min: f64,
    max: f64,
}

impl Walk {
    /// The three metrics every simulated device reports, started at a random point.
    pub fn standard(rng: &mut fastrand::Rng) -> Vec<Walk> {
        vec![
            Walk {
                metric: "temperature",
                unit: "C",
                value: 18.0 + rng.f64() * 6.0,
                step: 0.2,
                drift: 0.0,
                min: -10.0,
                max: 45.0,
            },
            Walk {
                metric: "humidity",
                unit: "%",
                value: 35.0 + rng.f64() * 20.0,
                step: 0.5,
                drift: 0.0,
                min: 0.0,
                max: 100.0,
            },
            Walk {
                metric: "battery",
                unit: "%",
                value: 80.0 + rng.f64() * 20.0,
                step: 0.0,
                drift: -0.01,
                min: 0.0,
                max: 100.0,
            },
        ]
    }

    /// Takes one step and returns the new value, rounded to two decimals as a sensor would report it.
    pub fn next(&mut self, rng: &mut fastrand::Rng) -> f64 {
        let step = (rng.f64() * 2.0 - 1.0) * self.step + self.drift;
        self.value = (self.value + step).clamp(self.min, self.max);
        if self.metric == "battery" && self.value <= self.min {
            // A simulated battery gets replaced rather than staying flat at zero forever.
            self.value = self.max;
        }
        (self.value * 100.0).round() / 100.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_stay_in_range() {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut walks = Walk::standard(&mut rng);
        for _ in 0..100_000 {
            for walk in &mut walks {
                let value = walk.next(&mut rng);
                assert!((walk.min..=walk.max).contains(&value), "{} = {value}", walk.metric);
            }
        }
    }
}
