//! Fault injection for tests of the rollout machinery (never enable in production): extra
//! latency on every embed request and a share of embed requests failed with 500.

use std::time::Duration;

#[derive(Debug, Clone, Default)]
pub struct Chaos {
    pub latency: Duration,
    /// 0.0 ..= 1.0
    pub error_ratio: f64,
}

impl Chaos {
    pub fn enabled(&self) -> bool {
        !self.latency.is_zero() || self.error_ratio > 0.0
    }

    /// Waits the configured extra latency (no-op when 0).
    pub async fn delay(&self) {
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
    }

    /// Whether this request is one of the injected failures.
    pub fn should_fail(&self) -> bool {
        self.error_ratio > 0.0
            && (self.error_ratio >= 1.0 || rand::random::<f64>() < self.error_ratio)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_by_default_and_extremes_are_exact() {
        let off = Chaos::default();
        assert!(!off.enabled());
        assert!((0..1000).all(|_| !off.should_fail()));
        let all = Chaos {
            error_ratio: 1.0,
            ..Chaos::default()
        };
        assert!((0..1000).all(|_| all.should_fail()));
    }

    #[test]
    fn ratio_is_roughly_respected() {
        let c = Chaos {
            error_ratio: 0.3,
            ..Chaos::default()
        };
        let fails = (0..10_000).filter(|_| c.should_fail()).count();
        assert!((2_500..3_500).contains(&fails), "{fails} of 10000");
    }
}
