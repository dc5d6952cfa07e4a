//! Client traffic as the servers see it: Poisson arrivals split by the weight, latencies from a
//! distribution fitted to the embedder's measurements, errors with a given probability, all
//! counted into the embedder's own histogram buckets.

use rand::{Rng, SeedableRng};
use rand_distr::{Binomial, Distribution, Exp, Poisson, StandardNormal};

/// The embedder's latency buckets, ms (embedder/src/metrics.rs).
pub const BUCKETS_MS: [f64; 22] = [
    1.0, 2.5, 5.0, 7.5, 10.0, 15.0, 20.0, 25.0, 30.0, 35.0, 40.0, 45.0, 50.0, 60.0, 75.0, 100.0,
    150.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0,
];
/// Finite buckets + `+Inf`.
pub const NB: usize = BUCKETS_MS.len() + 1;

/// `base + median * exp(sigma * N(0,1))`, plus with probability `tail_p` an exponential extra of
/// mean `tail_mean_ms`: a floor of compute time, a log-normal body and occasional stalls.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LatencyModel {
    pub name: &'static str,
    pub base_ms: f64,
    pub median_ms: f64,
    pub sigma: f64,
    pub tail_p: f64,
    pub tail_mean_ms: f64,
}

/// docs/benchmarks.md, 100 req/s open loop on the 2-core machine: p50 12.4, p95 14.2, p99 20.6 ms.
/// This model gives 12.4 / 14.0 / 20.8.
pub const BENCH_100: LatencyModel = LatencyModel {
    name: "bench fit (p50 12.4, p95 14.0, p99 20.8 ms)",
    base_ms: 10.5,
    median_ms: 1.9,
    sigma: 0.3,
    tail_p: 0.04,
    tail_mean_ms: 6.0,
};

/// The e2e and `make demo` on the shared 2-core machine (server, baseline, Prometheus, nginx,
/// operator and clients on two cores): P95 around 25-29 ms. This model gives 16 / 26 / 35 ms.
pub const E2E_20: LatencyModel = LatencyModel {
    name: "e2e fit (p50 16, p95 26, p99 35 ms)",
    base_ms: 8.0,
    median_ms: 8.0,
    sigma: 0.45,
    tail_p: 0.02,
    tail_mean_ms: 15.0,
};

impl LatencyModel {
    pub fn sample<R: Rng>(&self, rng: &mut R, shift_ms: f64) -> f64 {
        let z: f64 = rng.sample(StandardNormal);
        let mut ms = self.base_ms + self.median_ms * (self.sigma * z).exp() + shift_ms;
        if rng.random::<f64>() < self.tail_p {
            ms += Exp::new(1.0 / self.tail_mean_ms).unwrap().sample(rng);
        }
        ms
    }

    /// Probability of each bucket (non-cumulative, `+Inf` last), estimated once from 2M seeded
    /// draws so every run of the simulator uses the same distribution.
    pub fn bucket_probabilities(&self, shift_ms: f64) -> [f64; NB] {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
        let n = 2_000_000;
        let mut counts = [0u64; NB];
        for _ in 0..n {
            let ms = self.sample(&mut rng, shift_ms);
            let i = BUCKETS_MS.iter().position(|le| ms <= *le).unwrap_or(NB - 1);
            counts[i] += 1;
        }
        counts.map(|c| c as f64 / n as f64)
    }

    /// Quantile `q` of the model (by sampling), for the table.
    pub fn quantile(&self, q: f64, shift_ms: f64) -> f64 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x9e);
        let mut v: Vec<f64> = (0..200_000)
            .map(|_| self.sample(&mut rng, shift_ms))
            .collect();
        v.sort_by(f64::total_cmp);
        v[((v.len() as f64) * q) as usize]
    }
}

/// What one service's requests look like.
#[derive(Clone, Debug)]
pub struct Behaviour {
    /// Per-bucket probabilities (see [`LatencyModel::bucket_probabilities`]).
    pub buckets: [f64; NB],
    pub error_p: f64,
}

/// Cumulative counters of one server, as it exports them.
#[derive(Clone, Debug, Default)]
pub struct Counters {
    /// Non-cumulative per bucket; [`Counters::cumulative`] gives the `le` view.
    pub per_bucket: [u64; NB],
    pub requests: u64,
    pub errors: u64,
}

impl Counters {
    /// `requests`, `errors`, then the cumulative bucket counts (`le` ascending, `+Inf` last).
    pub fn exported(&self) -> [f64; NB + 2] {
        let mut out = [0.0; NB + 2];
        out[0] = self.requests as f64;
        out[1] = self.errors as f64;
        let mut run = 0;
        for (i, c) in self.per_bucket.iter().enumerate() {
            run += c;
            out[2 + i] = run as f64;
        }
        out
    }

    /// Adds `n` requests drawn from `b`: a multinomial split by conditional binomials.
    pub fn add<R: Rng>(&mut self, rng: &mut R, b: &Behaviour, n: u64) {
        if n == 0 {
            return;
        }
        self.requests += n;
        if b.error_p > 0.0 {
            self.errors += Binomial::new(n, b.error_p).unwrap().sample(rng);
        }
        let mut left = n;
        let mut mass = 1.0;
        for (i, p) in b.buckets.iter().enumerate() {
            if left == 0 {
                break;
            }
            let k = if i == NB - 1 || *p >= mass {
                left
            } else if *p <= 0.0 {
                0
            } else {
                Binomial::new(left, (p / mass).clamp(0.0, 1.0))
                    .unwrap()
                    .sample(rng)
            };
            self.per_bucket[i] += k;
            left -= k;
            mass -= p;
        }
    }
}

/// Requests arriving in `seconds` at `rate` req/s (Poisson).
pub fn arrivals<R: Rng>(rng: &mut R, rate: f64, seconds: f64) -> u64 {
    let lambda = rate * seconds;
    if lambda <= 0.0 {
        return 0;
    }
    Poisson::new(lambda).unwrap().sample(rng) as u64
}
