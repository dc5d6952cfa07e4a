//! The statistics behind the gates: exact binomial tests on counts, Clopper-Pearson intervals,
//! distribution-free bounds of a quantile from Prometheus' binned histogram, and the spending of
//! the false-rollback budget over steps, gates and repeated looks.
//!
//! Everything here is a pure function of counts. The model is the usual one for request
//! metrics: each request is an independent draw, so the number of requests above a latency bound
//! (or failing) out of `n` is binomial. docs/analysis.md states what that buys and what it does not.

use statrs::distribution::{Beta, Binomial, ContinuousCDF, DiscreteCDF};
use statrs::function::beta::{beta_reg, ln_beta};

/// How many Fail-direction tests an analysis runs: the three statistical gates (absolute P95,
/// P95 against the baseline, error rate), the baseline's P95 bound that the comparison gate rests
/// on (a wrong bound fails a good candidate as surely as a wrong test), and the two hard
/// triggers (P95, error rate).
pub const TESTS_PER_LOOK: u32 = 6;

/// The triggers roll back at once, so they ask for ten times stronger evidence than a gate.
pub const TRIGGER_EVIDENCE_FACTOR: f64 = 10.0;

/// The significance level of one sequential test over a whole step: the budget
/// `1 - confidence` split evenly over the steps and the tests of a look. A sequential test at this
/// level may be looked at after every request without spending more (see [`sequential_test`]).
pub fn step_alpha(confidence: f64, steps: usize) -> f64 {
    let budget = (1.0 - confidence).clamp(1e-12, 0.5);
    budget / (steps.max(1) as f64 * f64::from(TESTS_PER_LOOK))
}

/// The share of a step's budget that the tests on its `r`-th evidence restart spend: 0.9 for the
/// step's first evidence, then 0.1 × 6 / (π² r²) for restart r = 1, 2, ... (which sums to 1), so
/// the guarantee covers a step however often its evidence starts over.
pub fn restart_share(restarts: u32) -> f64 {
    const FIRST: f64 = 0.9;
    if restarts == 0 {
        FIRST
    } else {
        let r = f64::from(restarts);
        (1.0 - FIRST) * 6.0 / (std::f64::consts::PI.powi(2) * r * r)
    }
}

/// The significance level of one fixed-sample test at one look.
///
/// The whole budget `1 - confidence` is split evenly over the steps and the tests of a look, and
/// within a step over the looks `k = 1, 2, ...` as `6 / (π² k²)` (which sums to 1). By the union
/// bound, for a candidate that meets every gate the chance that *any* test of *any* look of the
/// rollout rejects is at most `1 - confidence`, however the looks' evidence overlaps and however
/// long a step waits. The same level bounds, per gate and step, the chance that a candidate that
/// violates the gate passes it.
pub fn look_alpha(confidence: f64, steps: usize, look: u32) -> f64 {
    let budget = (1.0 - confidence).clamp(1e-12, 0.5);
    let k = f64::from(look.max(1));
    let per_step_test = budget / (steps.max(1) as f64 * f64::from(TESTS_PER_LOOK));
    per_step_test * 6.0 / (std::f64::consts::PI.powi(2) * k * k)
}

/// One-sided binomial test of "the true fraction is below `p0`" and "above `p0`".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finding {
    /// Confident the fraction is below the bound.
    Below,
    /// Confident the fraction is above the bound.
    Above,
    /// Neither at this level.
    Unsure,
}

/// Exact binomial test of `k` successes out of `n` against `p0` at level `alpha` in each
/// direction. With `n = 0` nothing is known.
pub fn binomial_test(k: u64, n: u64, p0: f64, alpha: f64) -> Finding {
    if n == 0 {
        return Finding::Unsure;
    }
    let k = k.min(n);
    let Ok(b) = Binomial::new(p0.clamp(0.0, 1.0), n) else {
        return Finding::Unsure;
    };
    // P(X >= k) small: more successes than p0 explains.
    let upper_tail = if k == 0 { 1.0 } else { b.sf(k - 1) };
    // P(X <= k) small: fewer successes than p0 explains.
    let lower_tail = b.cdf(k);
    if upper_tail <= alpha {
        Finding::Above
    } else if lower_tail <= alpha {
        Finding::Below
    } else {
        Finding::Unsure
    }
}

/// Anytime-valid one-sided tests of a binomial fraction against `p0`: mixture sequential
/// probability ratio tests. For "above `p0`" the likelihood ratio of every alternative `p > p0`
/// against `p0` is averaged under a uniform prior on `(p0, 1]`; for "below `p0`" under a uniform
/// prior on `[0, p0)`. Each average is a non-negative supermartingale in the number of requests
/// under its null hypothesis, so by Ville's inequality the chance that it *ever* reaches `1/alpha`
/// is at most `alpha`: the counts may be judged after every request, at any analysis interval, for
/// as long as the step lasts, without inflating the error rate.
pub fn sequential_test(k: u64, n: u64, p0: f64, alpha: f64) -> Finding {
    if n == 0 || !(p0 > 0.0 && p0 < 1.0) {
        return Finding::Unsure;
    }
    let k = k.min(n);
    let (a, b) = (k as f64 + 1.0, (n - k) as f64 + 1.0);
    // ln of the likelihood at p0 (without the binomial coefficient, which cancels).
    let ln_l0 = k as f64 * p0.ln() + (n - k) as f64 * (1.0 - p0).ln();
    let ln_b = ln_beta(a, b);
    let threshold = (1.0 / alpha).ln();
    // Mass of the posterior-shaped integrand above and below p0 (symmetry keeps both accurate).
    let above_mass = beta_reg(b, a, 1.0 - p0);
    let below_mass = beta_reg(a, b, p0);
    let ln_above = ln_b + above_mass.ln() - ln_l0 - (1.0 - p0).ln();
    let ln_below = ln_b + below_mass.ln() - ln_l0 - p0.ln();
    if ln_above >= threshold {
        Finding::Above
    } else if ln_below >= threshold {
        Finding::Below
    } else {
        Finding::Unsure
    }
}

/// The fewest requests with no failure that [`sequential_test`] finds confidently below `p0` at
/// `alpha`: what a clean candidate needs to pass a rate gate (saturates at 10^9).
pub fn requests_to_pass(p0: f64, alpha: f64) -> u64 {
    let below = |n: u64| sequential_test(0, n, p0, alpha) == Finding::Below;
    let (mut lo, mut hi) = (1u64, 1u64);
    while !below(hi) {
        if hi >= 1_000_000_000 {
            return hi;
        }
        lo = hi;
        hi = hi.saturating_mul(2);
    }
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if below(mid) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    hi
}

/// Clopper-Pearson interval of a binomial fraction: each bound one-sided at `alpha`.
pub fn clopper_pearson(k: u64, n: u64, alpha: f64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let k = k.min(n);
    let (kf, nf) = (k as f64, n as f64);
    let low = if k == 0 {
        0.0
    } else {
        Beta::new(kf, nf - kf + 1.0)
            .map(|b| b.inverse_cdf(alpha))
            .unwrap_or(0.0)
    };
    let high = if k == n {
        1.0
    } else {
        Beta::new(kf + 1.0, nf - kf)
            .map(|b| b.inverse_cdf(1.0 - alpha))
            .unwrap_or(1.0)
    };
    (low, high)
}

/// A cumulative latency histogram as Prometheus' `increase(..._bucket[range])` gives it: upper
/// bounds in seconds, ascending, the last one `+Inf`, with the requests at or below each bound.
#[derive(Clone, Debug, PartialEq)]
pub struct Histogram {
    buckets: Vec<(f64, u64)>,
}

/// Why a set of bucket samples is not a histogram.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HistogramError {
    #[error("no buckets")]
    Empty,
    #[error("no +Inf bucket")]
    NoInfBucket,
    #[error("bucket bound {0} is not a number")]
    BadBound(String),
}

impl Histogram {
    /// From `(le, count)` samples in any order. Counts are rounded (`increase()` extrapolates and
    /// yields fractions) and made monotone, as `histogram_quantile` does with scrape skew.
    pub fn from_samples(samples: &[(f64, f64)]) -> Result<Self, HistogramError> {
        if samples.is_empty() {
            return Err(HistogramError::Empty);
        }
        if let Some((le, _)) = samples.iter().find(|(le, _)| le.is_nan()) {
            return Err(HistogramError::BadBound(le.to_string()));
        }
        let mut s: Vec<(f64, f64)> = samples.to_vec();
        s.sort_by(|a, b| a.0.total_cmp(&b.0));
        s.dedup_by(|a, b| a.0 == b.0);
        if s.last().map(|b| b.0) != Some(f64::INFINITY) {
            return Err(HistogramError::NoInfBucket);
        }
        let mut running = 0u64;
        let buckets = s
            .into_iter()
            .map(|(le, c)| {
                let c = if c.is_finite() && c > 0.0 {
                    c.round() as u64
                } else {
                    0
                };
                running = running.max(c);
                (le, running)
            })
            .collect();
        Ok(Self { buckets })
    }

    /// All requests (the `+Inf` bucket).
    pub fn total(&self) -> u64 {
        self.buckets.last().map_or(0, |b| b.1)
    }

    /// The finite bucket bounds, seconds.
    pub fn bounds(&self) -> impl Iterator<Item = f64> + '_ {
        self.buckets.iter().map(|b| b.0).filter(|le| le.is_finite())
    }

    /// Requests at or below `le` when `le` is a bucket bound.
    pub fn at_or_below(&self, le: f64) -> Option<u64> {
        self.buckets.iter().find(|b| b.0 == le).map(|b| b.1)
    }

    /// The bucket bound at or below `seconds` (largest) and at or above it (smallest, may be
    /// `+Inf`). Bounds are compared at microsecond resolution, so 0.035 is the 35 ms bucket.
    pub fn neighbours(&self, seconds: f64) -> (Option<f64>, f64) {
        let us = |s: f64| (s * 1e6).round();
        let below = self
            .buckets
            .iter()
            .rev()
            .map(|b| b.0)
            .find(|le| le.is_finite() && us(*le) <= us(seconds));
        let above = self
            .buckets
            .iter()
            .map(|b| b.0)
            .find(|le| !le.is_finite() || us(*le) >= us(seconds))
            .unwrap_or(f64::INFINITY);
        (below, above)
    }

    /// The latency of the request at 1-based rank `r` (of `total()`), interpolated linearly
    /// inside its bucket as `histogram_quantile` does (the first bucket starts at 0). A rank in the
    /// `+Inf` bucket is `+Inf`; rank 0 is 0.
    pub fn value_at_rank(&self, r: u64) -> f64 {
        if r == 0 {
            return 0.0;
        }
        let mut prev = (0.0, 0u64);
        for &(le, c) in &self.buckets {
            if c >= r {
                if !le.is_finite() {
                    return f64::INFINITY;
                }
                let width = (c - prev.1) as f64;
                let into = (r - prev.1) as f64;
                return prev.0 + (le - prev.0) * into / width;
            }
            prev = (le, c);
        }
        f64::INFINITY
    }

    /// Requests above `seconds`: exact at a bucket bound, interpolated linearly inside a bucket
    /// otherwise (the first bucket starts at 0; nothing is known inside the `+Inf` bucket, so a
    /// bound beyond the last finite one counts that whole bucket).
    pub fn above(&self, seconds: f64) -> f64 {
        let n = self.total() as f64;
        let mut prev = (0.0, 0u64);
        for &(le, c) in &self.buckets {
            if seconds <= le {
                if !le.is_finite() {
                    return n - prev.1 as f64;
                }
                let frac = if le > prev.0 {
                    ((seconds - prev.0) / (le - prev.0)).clamp(0.0, 1.0)
                } else {
                    1.0
                };
                let at_or_below = prev.1 as f64 + frac * (c - prev.1) as f64;
                return n - at_or_below;
            }
            prev = (le, c);
        }
        0.0
    }

    /// Point estimate of quantile `q` (0..1), like `histogram_quantile`.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let n = self.total();
        if n == 0 {
            return None;
        }
        let r = ((q * n as f64).ceil() as u64).clamp(1, n);
        Some(self.value_at_rank(r))
    }

    /// Distribution-free, anytime-valid confidence bounds of quantile `q`, each one-sided at
    /// `alpha` over the whole growing evidence of a step: the same [`sequential_test`] the gates
    /// use, on the fraction of requests above an order statistic. The lower bound is the largest
    /// order statistic with confidently more than `1 - q` of the requests above it (so the true
    /// quantile lies above it), the upper bound the smallest with confidently less. Being
    /// sequential, the bounds may be read at every analysis of a step without spending more, so a
    /// step that takes long to decide does not see them widen look by look (a per-look split of the
    /// budget did: 6 / (π² k²) made the 50th look's bounds those of a 10^-7 level). Read off the
    /// binned data by interpolation, as `histogram_quantile` does. `None` for a bound the evidence
    /// cannot give yet (the lower bound is then 0, the upper `+Inf`).
    pub fn quantile_bounds(&self, q: f64, alpha: f64) -> (Option<f64>, Option<f64>) {
        let n = self.total();
        let tail = 1.0 - q.clamp(0.0, 1.0);
        if n == 0 || !(tail > 0.0 && tail < 1.0) {
            return (None, None);
        }
        // Requests above the order statistic of rank r (1-based): n - r.
        let above_rank = |r: u64| sequential_test(n - r, n, tail, alpha);
        // Lower: the largest r whose upper share is confidently above `tail` (holds for every
        // smaller r, since a smaller r has more requests above it).
        let lower_rank = last_true(1, n, |r| above_rank(r) == Finding::Above);
        // Upper: the smallest r whose upper share is confidently below `tail`, the one after the
        // last that is not (none when even the top rank is not).
        let upper_rank = match last_true(1, n, |r| above_rank(r) != Finding::Below) {
            None => Some(1),
            Some(r) => (r < n).then_some(r + 1),
        };
        let low = lower_rank.map(|r| self.value_at_rank(r));
        let high = upper_rank
            .map(|r| self.value_at_rank(r))
            .filter(|v| v.is_finite());
        (low, high)
    }
}

/// The largest `x` in `lo..=hi` for which `holds` is true, when `holds` is true up to some point
/// and false after it; `None` when it holds nowhere.
fn last_true(lo: u64, hi: u64, holds: impl Fn(u64) -> bool) -> Option<u64> {
    if lo > hi || !holds(lo) {
        return None;
    }
    let (mut lo, mut hi) = (lo, hi); // holds(lo)
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if holds(mid) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    Some(lo)
}

/// A fraction as a percentage with up to three significant decimals: `2.1 %`, `0.05 %`.
pub fn pct(f: f64) -> String {
    let p = f * 100.0;
    let s = if p == 0.0 || p >= 10.0 {
        format!("{p:.1}")
    } else if p >= 1.0 {
        format!("{p:.2}")
    } else {
        format!("{p:.3}")
    };
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    };
    format!("{s} %")
}

/// Confidence `1 - alpha` as people write it: `99.97 %`.
pub fn confidence_pct(alpha: f64) -> String {
    let c = (1.0 - alpha) * 100.0;
    // Enough nines to tell the levels apart, at most six decimals.
    let mut digits = 0;
    while digits < 6 && (100.0 - c) * 10f64.powi(digits) < 1.0 {
        digits += 1;
    }
    format!(
        "{:.*} %",
        digits as usize,
        (c * 10f64.powi(digits)).round() / 10f64.powi(digits)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(b: &[(f64, f64)]) -> Histogram {
        Histogram::from_samples(b).unwrap()
    }

    #[test]
    fn spending_sums_to_the_budget() {
        let total: f64 = (1..200_000)
            .map(|k| look_alpha(0.99, 4, k) * 4.0 * f64::from(TESTS_PER_LOOK))
            .sum();
        assert!(total < 0.01 && total > 0.00999, "{total}");
        assert!(look_alpha(0.99, 4, 2) < look_alpha(0.99, 4, 1));
        assert_eq!(look_alpha(0.99, 4, 0), look_alpha(0.99, 4, 1));
    }

    #[test]
    fn binomial_test_needs_evidence_both_ways() {
        // One slow request out of five is what a healthy server does now and then.
        assert_eq!(binomial_test(1, 5, 0.05, 1e-3), Finding::Unsure);
        // Five out of five above the bound: 0.05^5 = 3e-7.
        assert_eq!(binomial_test(5, 5, 0.05, 1e-3), Finding::Above);
        // None out of 50: 0.95^50 = 0.077, not enough to say "below 5 %" at 0.1 %.
        assert_eq!(binomial_test(0, 50, 0.05, 1e-3), Finding::Unsure);
        // None out of 200: 0.95^200 = 3.5e-5.
        assert_eq!(binomial_test(0, 200, 0.05, 1e-3), Finding::Below);
        // A single error out of three never passes the 1 % trigger test.
        assert_eq!(binomial_test(1, 3, 0.01, 1e-4), Finding::Unsure);
        assert_eq!(binomial_test(0, 0, 0.01, 0.5), Finding::Unsure);
    }

    #[test]
    fn binomial_test_matches_hand_computed_tails() {
        // P(X >= 2 | n = 10, p = 0.05) = 1 - 0.95^10 - 10 * 0.05 * 0.95^9 = 0.0861.
        assert_eq!(binomial_test(2, 10, 0.05, 0.087), Finding::Above);
        assert_eq!(binomial_test(2, 10, 0.05, 0.086), Finding::Unsure);
    }

    #[test]
    fn sequential_test_asks_for_more_than_one_look_but_never_inflates() {
        // Zero errors: "below 0.5 %" needs about 2000 requests at 5e-4.
        assert_eq!(sequential_test(0, 1000, 0.005, 5e-4), Finding::Unsure);
        assert_eq!(sequential_test(0, 2500, 0.005, 5e-4), Finding::Below);
        // A slow request out of five at a 5 % bound says nothing; eight out of eight says a lot.
        assert_eq!(sequential_test(1, 5, 0.05, 5e-4), Finding::Unsure);
        assert_eq!(sequential_test(8, 8, 0.05, 5e-4), Finding::Above);
        // Right at the bound: never confident either way, however much evidence.
        assert_eq!(sequential_test(5_000, 100_000, 0.05, 5e-4), Finding::Unsure);
        // 2 % errors against 0.5 %.
        assert_eq!(sequential_test(40, 2000, 0.005, 5e-4), Finding::Above);
    }

    /// Ville's inequality in action: a fraction exactly at p0, looked at after every request,
    /// crosses in fewer than alpha of the runs.
    #[test]
    fn sequential_test_keeps_its_level_under_continuous_monitoring() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let (p0, alpha, runs, len) = (0.05, 0.05, 400, 2000u64);
        let mut crossed = 0;
        for _ in 0..runs {
            let mut k = 0;
            for n in 1..=len {
                if rng.random::<f64>() < p0 {
                    k += 1;
                }
                if n % 10 == 0 && sequential_test(k, n, p0, alpha) != Finding::Unsure {
                    crossed += 1;
                    break;
                }
            }
        }
        // Both directions together at most 2 alpha; expect far fewer.
        assert!(
            crossed <= (2.0 * alpha * runs as f64) as usize,
            "{crossed} of {runs}"
        );
    }

    #[test]
    fn clopper_pearson_known_values() {
        // k = 0: upper = 1 - alpha^(1/n).
        let (lo, hi) = clopper_pearson(0, 100, 0.025);
        assert_eq!(lo, 0.0);
        assert!((hi - (1.0 - 0.025f64.powf(0.01))).abs() < 1e-9, "{hi}");
        // k = n: lower = alpha^(1/n).
        let (lo, hi) = clopper_pearson(10, 10, 0.05);
        assert!((lo - 0.05f64.powf(0.1)).abs() < 1e-9);
        assert_eq!(hi, 1.0);
        let (lo, hi) = clopper_pearson(21, 1000, 0.025);
        assert!(
            lo < 0.021 && hi > 0.021 && lo > 0.012 && hi < 0.033,
            "{lo} {hi}"
        );
    }

    #[test]
    fn histogram_from_prometheus_samples() {
        let h = hist(&[
            (f64::INFINITY, 100.2),
            (0.01, 10.0),
            (0.02, 60.4),
            (0.03, 59.0),
        ]);
        // Sorted, rounded and made monotone (59 after 60 is scrape skew).
        assert_eq!(h.total(), 100);
        assert_eq!(h.at_or_below(0.02), Some(60));
        assert_eq!(h.at_or_below(0.03), Some(60));
        assert_eq!(
            Histogram::from_samples(&[(0.1, 1.0)]),
            Err(HistogramError::NoInfBucket)
        );
        assert_eq!(Histogram::from_samples(&[]), Err(HistogramError::Empty));
    }

    #[test]
    fn neighbours_at_microsecond_resolution() {
        let h = hist(&[(0.03, 1.0), (0.035, 2.0), (0.04, 3.0), (f64::INFINITY, 3.0)]);
        assert_eq!(h.neighbours(0.035), (Some(0.035), 0.035));
        assert_eq!(h.neighbours(0.0350000001), (Some(0.035), 0.035));
        assert_eq!(h.neighbours(0.037), (Some(0.035), 0.04));
        assert_eq!(h.neighbours(0.01), (None, 0.03));
        assert_eq!(h.neighbours(0.5), (Some(0.04), f64::INFINITY));
    }

    #[test]
    fn above_interpolates_inside_a_bucket() {
        let h = hist(&[(0.01, 50.0), (0.02, 100.0), (f64::INFINITY, 110.0)]);
        assert_eq!(h.above(0.01), 60.0);
        assert!((h.above(0.015) - 35.0).abs() < 1e-9);
        assert_eq!(h.above(0.005), 85.0);
        assert_eq!(h.above(0.5), 10.0);
    }

    #[test]
    fn quantile_interpolates_like_histogram_quantile() {
        // 100 requests, 50 in (0, 10 ms], 50 in (10, 20 ms].
        let h = hist(&[(0.01, 50.0), (0.02, 100.0), (f64::INFINITY, 100.0)]);
        let q = h.quantile(0.95).unwrap();
        assert!((q - 0.019).abs() < 1e-12, "{q}");
        assert_eq!(h.value_at_rank(50), 0.01);
        let all_slow = hist(&[(0.01, 0.0), (f64::INFINITY, 10.0)]);
        assert_eq!(all_slow.quantile(0.95), Some(f64::INFINITY));
    }

    #[test]
    fn requests_to_pass_is_the_first_clean_count_that_passes() {
        let n = super::requests_to_pass(0.005, 0.0045);
        assert_eq!(sequential_test(0, n, 0.005, 0.0045), Finding::Below);
        assert_ne!(sequential_test(0, n - 1, 0.005, 0.0045), Finding::Below);
        // docs/analysis.md: about 2 000 requests at the default confidence over four steps.
        assert!((1_000..3_000).contains(&n), "{n}");
        assert!(
            super::requests_to_pass(0.005, 0.0001) > n,
            "a smaller budget needs more"
        );
    }

    #[test]
    fn restart_shares_sum_to_the_whole_budget_and_shrink() {
        let total: f64 = (0..100_000).map(super::restart_share).sum();
        assert!(total <= 1.0 && total > 0.99999, "{total}");
        assert!((1..50).all(|r| super::restart_share(r + 1) < super::restart_share(r)));
    }

    #[test]
    fn quantile_bounds_shrink_with_evidence_and_cover_the_estimate() {
        let make = |n: f64| {
            hist(&[
                (0.01, 0.5 * n),
                (0.02, 0.9 * n),
                (0.03, 0.99 * n),
                (f64::INFINITY, n),
            ])
        };
        let few = make(20.0).quantile_bounds(0.95, 0.001);
        // Twenty requests cannot bound a P95 from above at 99.9 %.
        assert_eq!(few.1, None);
        let many = make(100_000.0);
        let (lo, hi) = many.quantile_bounds(0.95, 0.001);
        let (lo, hi) = (lo.unwrap(), hi.unwrap());
        let q = many.quantile(0.95).unwrap();
        assert!(lo < q && q < hi, "{lo} {q} {hi}");
        assert!(hi - lo < 0.001, "{lo} {hi}");
    }

    #[test]
    fn quantile_bounds_hold_for_every_prefix_of_a_growing_sample() {
        // Uniform latencies on 0..100 ms in 1 ms buckets: the true P95 is 95 ms. Over a step whose
        // evidence grows request by request, bounds at 1 % must cover it at (nearly) every size
        // in (nearly) every run: count the runs where they ever miss.
        let bounds: Vec<f64> = (1..=100).map(|ms| f64::from(ms) / 1000.0).collect();
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng >> 11) as f64 / (1u64 << 53) as f64
        };
        let runs = 200;
        let mut ever_missed = 0;
        for _ in 0..runs {
            let mut counts = vec![0f64; bounds.len()];
            let mut missed = false;
            for n in 1..=2000u32 {
                let ms = (next() * 100.0).floor() as usize;
                counts[ms] += 1.0;
                if n % 50 == 0 {
                    let mut acc = 0.0;
                    let mut samples: Vec<(f64, f64)> = bounds
                        .iter()
                        .zip(&counts)
                        .map(|(le, c)| {
                            acc += c;
                            (*le, acc)
                        })
                        .collect();
                    samples.push((f64::INFINITY, acc));
                    let (lo, hi) = hist(&samples).quantile_bounds(0.95, 0.01);
                    missed |= lo.is_some_and(|l| l > 0.0955) || hi.is_some_and(|h| h < 0.0945);
                }
            }
            ever_missed += usize::from(missed);
        }
        // Anytime-valid at 1 % per side: at most 2 % of runs may ever miss (with room for the
        // 200 runs' own noise, 4 % is a failure).
        assert!(
            ever_missed <= 8,
            "{ever_missed} of {runs} runs missed at some size"
        );
        // And they tighten: 2 000 requests bound a P95 within a few ms.
        let mut samples: Vec<(f64, f64)> = bounds.iter().map(|le| (*le, *le * 2.0e4)).collect();
        samples.push((f64::INFINITY, 2000.0));
        let (lo, hi) = hist(&samples).quantile_bounds(0.95, 0.01);
        let (lo, hi) = (lo.unwrap(), hi.unwrap());
        assert!(lo > 0.090 && hi < 0.099, "{lo} {hi}");
    }

    #[test]
    fn formatting() {
        assert_eq!(pct(0.021), "2.1 %");
        assert_eq!(pct(0.0), "0 %");
        assert_eq!(pct(0.0005), "0.05 %");
        assert_eq!(pct(0.25), "25 %");
        assert_eq!(confidence_pct(0.05), "95 %");
        assert_eq!(confidence_pct(0.0003), "99.97 %");
    }
}
