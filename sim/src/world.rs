//! The simulated world of one rollout: two servers, their clients and Prometheus.

use embedding_rollout_operator::decision::{
    stats::Histogram, Counts, MetricsSnapshot, ServiceMetrics,
};
use rand::rngs::StdRng;

use crate::traffic::{arrivals, Behaviour, Counters, BUCKETS_MS};
use crate::tsdb::{Series, BUCKET0, ERRORS, REQUESTS};

pub struct World {
    pub rng: StdRng,
    /// Total client rate, req/s.
    pub rate: f64,
    baseline: Behaviour,
    candidate: Behaviour,
    base_counters: Counters,
    cand_counters: Counters,
    base_series: Series,
    cand_series: Series,
    /// The candidate process exists (its series start at its first scrape).
    pub candidate_running: bool,
}

impl World {
    pub fn new(rng: StdRng, rate: f64, baseline: Behaviour, candidate: Behaviour) -> Self {
        Self {
            rng,
            rate,
            baseline,
            candidate,
            base_counters: Counters::default(),
            cand_counters: Counters::default(),
            base_series: Series::default(),
            cand_series: Series::default(),
            candidate_running: false,
        }
    }

    /// `seconds` of traffic with `share` (0..1) of it on the candidate.
    pub fn advance(&mut self, seconds: f64, share: f64) {
        if seconds <= 0.0 {
            return;
        }
        let share = if self.candidate_running { share } else { 0.0 };
        let n_c = arrivals(&mut self.rng, self.rate * share, seconds);
        let n_b = arrivals(&mut self.rng, self.rate * (1.0 - share), seconds);
        self.cand_counters.add(&mut self.rng, &self.candidate, n_c);
        self.base_counters.add(&mut self.rng, &self.baseline, n_b);
    }

    pub fn scrape(&mut self, t: f64) {
        self.base_series.scrape(t, self.base_counters.exported());
        if self.candidate_running {
            self.cand_series.scrape(t, self.cand_counters.exported());
        }
    }

    /// What the operator's queries would return at `t`: the window (`window` s) and, when a step
    /// is running, the step so far (`step` s).
    pub fn snapshot(&self, t: f64, window: f64, step: Option<f64>) -> MetricsSnapshot {
        MetricsSnapshot {
            candidate: service(&self.cand_series, t, window, step),
            baseline: service(&self.base_series, t, window, step),
            custom: Vec::new(),
            // The simulated candidate serves the baseline's model: every parity probe finds the
            // same vectors (the simulator measures the latency and error gates, not parity).
            parity: Some(same_embeddings()),
            gate_problems: Vec::new(),
        }
    }

    /// Window values for the point-estimate judge: P95 (s), error rate, requests.
    pub fn window_points(&self, t: f64, window: f64) -> [Points; 2] {
        [&self.cand_series, &self.base_series].map(|s| {
            let c = counts(s, t, window);
            let m = service_from(c.clone(), c);
            Points {
                p95: m.p95_seconds.ok().flatten(),
                error_rate: m.error_rate.ok().flatten().filter(|v| v.is_finite()),
                requests: m.window.requests.ok().flatten(),
            }
        })
    }
}

/// Point values over the window.
#[derive(Clone, Copy, Debug)]
pub struct Points {
    pub p95: Option<f64>,
    pub error_rate: Option<f64>,
    pub requests: Option<f64>,
}

fn counts(s: &Series, t: f64, range: f64) -> Counts {
    match s.increase(t, range) {
        None => Counts::no_data(),
        Some(v) => {
            let mut buckets: Vec<(f64, f64)> = BUCKETS_MS
                .iter()
                .enumerate()
                .map(|(i, le)| (le / 1000.0, v[BUCKET0 + i]))
                .collect();
            buckets.push((f64::INFINITY, v[BUCKET0 + BUCKETS_MS.len()]));
            Counts {
                latency: Ok(Some(buckets)),
                requests: Ok(Some(v[REQUESTS])),
                errors: Ok(Some(v[ERRORS])),
            }
        }
    }
}

fn service(s: &Series, t: f64, window: f64, step: Option<f64>) -> ServiceMetrics {
    let w = counts(s, t, window);
    let st = step.map_or_else(Counts::no_data, |r| counts(s, t, r));
    service_from(w, st)
}

fn service_from(window: Counts, step: Counts) -> ServiceMetrics {
    // histogram_quantile and the error ratio over the window, as the default queries compute them.
    let p95 = match &window.latency {
        Ok(Some(b)) => match Histogram::from_samples(b) {
            Ok(h) if h.total() > 0 => Ok(h.quantile(0.95)),
            Ok(_) => Ok(Some(f64::NAN)),
            Err(e) => Err(e.to_string()),
        },
        _ => Ok(None),
    };
    let error_rate = match (&window.errors, &window.requests) {
        (Ok(Some(e)), Ok(Some(r))) => Ok(Some(e / r)),
        _ => Ok(None),
    };
    let breaker = if window.requests.as_ref().is_ok_and(|r| r.is_some()) {
        Ok(Some(0.0))
    } else {
        Ok(None)
    };
    ServiceMetrics {
        p95_seconds: p95,
        error_rate,
        breaker,
        window,
        step,
    }
}

/// A parity probe whose two answers agree exactly.
fn same_embeddings() -> embedding_rollout_operator::decision::parity::ParityProbe {
    use embedding_rollout_operator::decision::parity::{Answer, ParityProbe};
    let answer = Answer {
        model: "all-MiniLM-L6-v2".into(),
        embeddings: vec![vec![0.6, 0.8]],
    };
    ParityProbe {
        texts: vec!["hello".into()],
        baseline: Ok(answer.clone()),
        candidate: Ok(answer),
        notes: Vec::new(),
    }
}
