//! The fixed clock of the open-loop mode: when request `i` is due, and how many there are.

use std::time::Duration;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PlanError {
    #[error("the rate must be a positive number of requests per second, got {0}")]
    Rate(f64),
}

/// Constant arrival rate: request `i` is due `i / rate` seconds after the start, for `duration`,
/// and never more than `max_requests` of them.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenLoopPlan {
    rate: f64,
    duration: Duration,
    max_requests: Option<u64>,
}

impl OpenLoopPlan {
    pub fn new(
        rate: f64,
        duration: Duration,
        max_requests: Option<u64>,
    ) -> Result<Self, PlanError> {
        if !(rate.is_finite() && rate > 0.0) {
            return Err(PlanError::Rate(rate));
        }
        Ok(OpenLoopPlan {
            rate,
            duration,
            max_requests,
        })
    }

    pub fn rate(&self) -> f64 {
        self.rate
    }

    pub fn duration(&self) -> Duration {
        self.duration
    }

    /// Requests due strictly before the end of the run, capped by `max_requests`.
    pub fn total_requests(&self) -> u64 {
        // Rounding guards against 0.1*3 style float error turning 30.0 into 29.999.
        let in_time = (self.rate * self.duration.as_secs_f64() - 1e-9)
            .ceil()
            .max(0.0) as u64;
        match self.max_requests {
            Some(max) => in_time.min(max),
            None => in_time,
        }
    }

    /// The span the schedule covers: `total_requests / rate`. A server that keeps up answers the
    /// last request about this long after the start, so rates are computed over at least this span.
    pub fn window(&self) -> Duration {
        Duration::from_secs_f64(self.total_requests() as f64 / self.rate)
    }

    /// When request `i` is due, counted from the start of the run.
    pub fn offset(&self, i: u64) -> Duration {
        Duration::from_secs_f64(i as f64 / self.rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_evenly_spaced_at_the_rate() {
        let plan = OpenLoopPlan::new(100.0, Duration::from_secs(30), None).unwrap();
        assert_eq!(plan.total_requests(), 3000);
        assert_eq!(plan.offset(0), Duration::ZERO);
        assert_eq!(plan.offset(1), Duration::from_millis(10));
        assert_eq!(plan.offset(250), Duration::from_millis(2500));
        // The last request is due before the end, never at or after it.
        assert!(plan.offset(plan.total_requests() - 1) < plan.duration());
        assert_eq!(plan.window(), Duration::from_secs(30));
    }

    #[test]
    fn the_schedule_does_not_drift_over_long_runs() {
        let plan = OpenLoopPlan::new(3.0, Duration::from_secs(3600), None).unwrap();
        assert_eq!(plan.total_requests(), 10_800);
        let last = plan.offset(10_799).as_secs_f64();
        assert!((last - 10_799.0 / 3.0).abs() < 1e-6, "{last}");
    }

    #[test]
    fn fractional_rates_and_durations() {
        let plan = OpenLoopPlan::new(2.5, Duration::from_millis(1000), None).unwrap();
        // due at 0, 0.4, 0.8 s
        assert_eq!(plan.total_requests(), 3);
        let plan = OpenLoopPlan::new(0.1, Duration::from_secs(30), None).unwrap();
        assert_eq!(plan.total_requests(), 3);
    }

    #[test]
    fn a_request_count_caps_the_run() {
        let plan = OpenLoopPlan::new(1000.0, Duration::from_secs(60), Some(500)).unwrap();
        assert_eq!(plan.total_requests(), 500);
        assert_eq!(plan.window(), Duration::from_millis(500));
        let plan = OpenLoopPlan::new(10.0, Duration::from_secs(1), Some(500)).unwrap();
        assert_eq!(plan.total_requests(), 10);
    }

    #[test]
    fn nonsensical_rates_are_refused() {
        for bad in [0.0, -5.0, f64::NAN, f64::INFINITY] {
            assert!(OpenLoopPlan::new(bad, Duration::from_secs(1), None).is_err());
        }
    }
}
