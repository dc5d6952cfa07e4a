//! The part of Prometheus the gates rely on: scraped counter samples and `increase()` over a
//! range, with Prometheus' own extrapolation (promql/functions.go `extrapolatedRate`).

use crate::traffic::NB;

/// One server's scraped samples: time (s) and the exported values (`requests`, `errors`, the
/// cumulative buckets).
#[derive(Clone, Debug, Default)]
pub struct Series {
    samples: Vec<(f64, [f64; NB + 2])>,
}

/// Index of `requests`, `errors` and the first bucket in the exported values.
pub const REQUESTS: usize = 0;
pub const ERRORS: usize = 1;
pub const BUCKET0: usize = 2;

impl Series {
    pub fn scrape(&mut self, t: f64, values: [f64; NB + 2]) {
        self.samples.push((t, values));
    }

    /// `increase(x[range])` evaluated at `t` for every exported value; `None` when the range
    /// holds fewer than two samples (Prometheus returns no series then).
    pub fn increase(&self, t: f64, range: f64) -> Option<[f64; NB + 2]> {
        let start = t - range;
        // Samples in (start, t].
        let lo = self.samples.partition_point(|s| s.0 <= start);
        let hi = self.samples.partition_point(|s| s.0 <= t);
        if hi < lo + 2 {
            return None;
        }
        let (t0, first) = &self.samples[lo];
        let (t1, last) = &self.samples[hi - 1];
        let sampled = t1 - t0;
        let avg = sampled / (hi - lo - 1) as f64;
        let mut out = [0.0; NB + 2];
        for i in 0..NB + 2 {
            let result = last[i] - first[i];
            let mut to_start = t0 - start;
            let to_end = t - t1;
            // A counter that started inside the range is not extrapolated below zero.
            if result > 0.0 && first[i] >= 0.0 {
                let to_zero = sampled * (first[i] / result);
                if to_zero < to_start {
                    to_start = to_zero;
                }
            }
            let threshold = avg * 1.1;
            let mut interval = sampled;
            interval += if to_start < threshold {
                to_start
            } else {
                avg / 2.0
            };
            interval += if to_end < threshold {
                to_end
            } else {
                avg / 2.0
            };
            out[i] = result * (interval / sampled);
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn increase_extrapolates_like_prometheus() {
        let mut s = Series::default();
        // 1 request per second, scraped every 5 s from t = 0.
        for i in 0..=12 {
            let mut v = [0.0; NB + 2];
            v[REQUESTS] = 100.0 + 5.0 * i as f64;
            s.scrape(5.0 * i as f64, v);
        }
        // [30 s] at t = 60 holds samples 35..60: 25 s sampled, 5 s to the start extrapolated.
        let inc = s.increase(60.0, 30.0).unwrap();
        assert!((inc[REQUESTS] - 30.0).abs() < 1e-9, "{}", inc[REQUESTS]);
        // One sample in range: nothing.
        assert!(s.increase(60.0, 4.0).is_none());
    }
}
