//! The operator's own Prometheus metrics (names in docs/interfaces.md).

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    phase: IntGaugeVec,
    weight: IntGaugeVec,
    verdicts: IntCounterVec,
    rollbacks: IntCounterVec,
    reconcile_duration: HistogramVec,
    reconcile_errors: IntCounterVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let phase = IntGaugeVec::new(
            Opts::new(
                "embedding_rollout_phase",
                "1 for the rollout's current phase, 0 for the others",
            ),
            &["namespace", "rollout", "phase"],
        )
        .expect("valid metric");
        let weight = IntGaugeVec::new(
            Opts::new(
                "embedding_rollout_canary_weight",
                "Share of traffic (percent) routed to the candidate",
            ),
            &["namespace", "rollout"],
        )
        .expect("valid metric");
        let verdicts = IntCounterVec::new(
            Opts::new(
                "embedding_rollout_analysis_total",
                "Gate analyses by verdict (Pass, Fail, Inconclusive)",
            ),
            &["namespace", "rollout", "verdict"],
        )
        .expect("valid metric");
        let rollbacks = IntCounterVec::new(
            Opts::new("embedding_rollout_rollbacks_total", "Rollbacks started"),
            &["namespace", "rollout"],
        )
        .expect("valid metric");
        let reconcile_duration = HistogramVec::new(
            HistogramOpts::new(
                "embedding_rollout_reconcile_duration_seconds",
                "Time spent in one reconcile, Prometheus queries included",
            )
            // Fine below 100 ms, where a reconcile should end (issue 13's p99 target, measured
            // by `make scale-bench` from these buckets).
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0,
                2.5, 5.0, 10.0,
            ]),
            &[],
        )
        .expect("valid metric");
        let reconcile_errors = IntCounterVec::new(
            Opts::new(
                "embedding_rollout_reconcile_errors_total",
                "Reconciles that failed, by error kind",
            ),
            &["kind"],
        )
        .expect("valid metric");
        for c in [
            Box::new(phase.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(weight.clone()),
            Box::new(verdicts.clone()),
            Box::new(rollbacks.clone()),
            Box::new(reconcile_duration.clone()),
            Box::new(reconcile_errors.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        Self {
            registry,
            phase,
            weight,
            verdicts,
            rollbacks,
            reconcile_duration,
            reconcile_errors,
        }
    }

    /// Set the phase gauge: `current` to 1, every other known phase to 0, so a dashboard can
    /// `max by (phase)` without stale ones.
    pub fn set_phase(&self, namespace: &str, rollout: &str, current: &str, all: &[&str]) {
        for p in all {
            self.phase
                .with_label_values(&[namespace, rollout, *p])
                .set(i64::from(*p == current));
        }
        if !all.contains(&current) {
            self.phase
                .with_label_values(&[namespace, rollout, current])
                .set(1);
        }
    }

    pub fn set_weight(&self, namespace: &str, rollout: &str, weight: i64) {
        self.weight
            .with_label_values(&[namespace, rollout])
            .set(weight);
    }

    pub fn count_verdict(&self, namespace: &str, rollout: &str, verdict: &str) {
        self.verdicts
            .with_label_values(&[namespace, rollout, verdict])
            .inc();
    }

    pub fn count_rollback(&self, namespace: &str, rollout: &str) {
        self.rollbacks
            .with_label_values(&[namespace, rollout])
            .inc();
    }

    pub fn observe_reconcile(&self, seconds: f64) {
        self.reconcile_duration
            .with_label_values(&[] as &[&str])
            .observe(seconds);
    }

    pub fn count_error(&self, kind: &str) {
        self.reconcile_errors.with_label_values(&[kind]).inc();
    }

    /// Drop a deleted rollout's series (the phase and verdict label values it may have used).
    pub fn forget(&self, namespace: &str, rollout: &str, phases: &[&str], verdicts: &[&str]) {
        for p in phases {
            let _ = self.phase.remove_label_values(&[namespace, rollout, *p]);
        }
        for v in verdicts {
            let _ = self.verdicts.remove_label_values(&[namespace, rollout, *v]);
        }
        let _ = self.weight.remove_label_values(&[namespace, rollout]);
        let _ = self.rollbacks.remove_label_values(&[namespace, rollout]);
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phase_gauge_marks_only_the_current_phase() {
        let m = Metrics::new();
        let all = ["Pending", "Progressing", "RolledBack"];
        m.set_phase("ns", "r", "Progressing", &all);
        m.set_phase("ns", "r", "RolledBack", &all);
        let text = m.render();
        assert!(
            text.contains(
                r#"embedding_rollout_phase{namespace="ns",phase="RolledBack",rollout="r"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"embedding_rollout_phase{namespace="ns",phase="Progressing",rollout="r"} 0"#
            ),
            "{text}"
        );
    }

    #[test]
    fn counters_and_histogram_render() {
        let m = Metrics::new();
        m.set_weight("ns", "r", 10);
        m.count_verdict("ns", "r", "Fail");
        m.count_rollback("ns", "r");
        m.observe_reconcile(0.02);
        m.count_error("Kube");
        let text = m.render();
        for needle in [
            r#"embedding_rollout_canary_weight{namespace="ns",rollout="r"} 10"#,
            r#"embedding_rollout_analysis_total{namespace="ns",rollout="r",verdict="Fail"} 1"#,
            r#"embedding_rollout_rollbacks_total{namespace="ns",rollout="r"} 1"#,
            "embedding_rollout_reconcile_duration_seconds_count 1",
            r#"embedding_rollout_reconcile_errors_total{kind="Kube"} 1"#,
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }

    #[test]
    fn forgetting_a_rollout_drops_its_series() {
        let m = Metrics::new();
        m.set_weight("ns", "gone", 50);
        m.set_weight("ns", "kept", 1);
        m.set_phase("ns", "gone", "Failed", &["Failed"]);
        m.count_verdict("ns", "gone", "Pass");
        m.forget("ns", "gone", &["Failed"], &["Pass"]);
        let text = m.render();
        assert!(!text.contains(r#"rollout="gone""#));
        assert!(text.contains(r#"rollout="kept""#));
    }
}
