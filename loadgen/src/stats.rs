//! Counting outcomes and summarising latencies (HdrHistogram, microsecond resolution).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Why a request did not count as a success.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ErrorKind {
    /// The server answered with a non-2xx status.
    Status(u16),
    /// No complete answer within the request timeout.
    Timeout,
    /// Could not connect.
    Connect,
    /// Open loop only: the request waited for a free connection past its timeout and was never sent.
    NotSent,
    /// A 2xx answer that is not a correct embedding response (wrong count, unparseable).
    InvalidResponse,
    /// Any other transport failure (reset connection, truncated body, ...).
    Transport,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorKind::Status(code) => write!(f, "http_{code}"),
            ErrorKind::Timeout => f.write_str("timeout"),
            ErrorKind::Connect => f.write_str("connect"),
            ErrorKind::NotSent => f.write_str("not_sent"),
            ErrorKind::InvalidResponse => f.write_str("invalid_response"),
            ErrorKind::Transport => f.write_str("transport"),
        }
    }
}

/// Latencies of successful requests and counts of failed ones.
#[derive(Debug, Clone)]
pub struct Recorder {
    latency_us: Histogram<u64>,
    errors: BTreeMap<ErrorKind, u64>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    pub fn new() -> Self {
        Recorder {
            // 1 µs .. 10 min at 3 significant digits: far beyond any request timeout.
            latency_us: Histogram::new_with_bounds(1, 600_000_000, 3)
                .expect("static histogram bounds are valid"),
            errors: BTreeMap::new(),
        }
    }

    pub fn record_ok(&mut self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.latency_us.saturating_record(us.max(1));
    }

    pub fn record_error(&mut self, kind: ErrorKind) {
        *self.errors.entry(kind).or_default() += 1;
    }

    pub fn merge(&mut self, other: &Recorder) {
        self.latency_us
            .add(&other.latency_us)
            .expect("histograms with the same bounds always merge");
        for (kind, n) in &other.errors {
            *self.errors.entry(*kind).or_default() += n;
        }
    }

    pub fn ok(&self) -> u64 {
        self.latency_us.len()
    }

    pub fn errors(&self) -> u64 {
        self.errors.values().sum()
    }

    pub fn latency(&self) -> LatencySummary {
        let h = &self.latency_us;
        let ms = |us: u64| us as f64 / 1000.0;
        if h.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p95: ms(h.value_at_quantile(0.95)),
            p99: ms(h.value_at_quantile(0.99)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
        }
    }

    /// The summary of a run that took `elapsed` (first scheduled/sent request to last answer).
    pub fn report(&self, run: RunInfo, elapsed: Duration) -> Report {
        let ok = self.ok();
        let errors = self.errors();
        let requests = ok + errors;
        let secs = elapsed.as_secs_f64();
        let per_sec = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
        Report {
            mode: run.mode,
            api: run.api,
            url: run.url,
            target_rate: run.target_rate,
            connections: run.connections,
            texts_per_request: run.texts_per_request,
            elapsed_s: secs,
            requests,
            ok,
            errors,
            error_rate: if requests > 0 {
                errors as f64 / requests as f64
            } else {
                0.0
            },
            errors_by_kind: self
                .errors
                .iter()
                .map(|(k, n)| (k.to_string(), *n))
                .collect(),
            achieved_rps: per_sec(ok),
            attempted_rps: per_sec(requests),
            latency_ms: self.latency(),
        }
    }
}

/// Quantiles in milliseconds, of successful requests only (failures are counted by kind instead).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    pub p50: f64,
    pub p90: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

/// What was run, to label the report.
#[derive(Debug, Clone)]
pub struct RunInfo {
    pub mode: &'static str,
    pub api: &'static str,
    pub url: String,
    pub target_rate: Option<f64>,
    pub connections: usize,
    pub texts_per_request: usize,
}

/// The result of a run; printed for people and as one JSON line for scripts.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub mode: &'static str,
    pub api: &'static str,
    pub url: String,
    /// Offered rate (open loop only), requests per second.
    pub target_rate: Option<f64>,
    /// Open loop: most requests in flight at once; closed loop: workers.
    pub connections: usize,
    pub texts_per_request: usize,
    /// Start to last answer (open loop: at least the scheduled window, `requests / target_rate`).
    pub elapsed_s: f64,
    pub requests: u64,
    pub ok: u64,
    pub errors: u64,
    pub error_rate: f64,
    pub errors_by_kind: BTreeMap<String, u64>,
    /// Successful requests per second.
    pub achieved_rps: f64,
    /// Successful and failed requests per second.
    pub attempted_rps: f64,
    pub latency_ms: LatencySummary,
}

impl Report {
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self).expect("a report always serialises")
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.target_rate {
            Some(rate) => writeln!(
                f,
                "mode        open loop, target {rate:.1} req/s, up to {} in flight, {} texts/request ({} API)",
                self.connections, self.texts_per_request, self.api
            )?,
            None => writeln!(
                f,
                "mode        closed loop, {} workers, {} texts/request ({} API)",
                self.connections, self.texts_per_request, self.api
            )?,
        }
        writeln!(f, "url         {}", self.url)?;
        writeln!(
            f,
            "requests    {} in {:.2} s: {} ok, {} errors ({:.3} %)",
            self.requests,
            self.elapsed_s,
            self.ok,
            self.errors,
            self.error_rate * 100.0
        )?;
        writeln!(
            f,
            "rate        {:.1} req/s achieved (ok), {:.1} req/s attempted",
            self.achieved_rps, self.attempted_rps
        )?;
        let l = &self.latency_ms;
        writeln!(
            f,
            "latency ms  p50 {:.2}  p90 {:.2}  p95 {:.2}  p99 {:.2}  max {:.2}  mean {:.2}",
            l.p50, l.p90, l.p95, l.p99, l.max, l.mean
        )?;
        if self.errors_by_kind.is_empty() {
            writeln!(f, "errors      none")
        } else {
            let kinds: Vec<String> = self
                .errors_by_kind
                .iter()
                .map(|(k, n)| format!("{k}={n}"))
                .collect();
            writeln!(f, "errors      {}", kinds.join(" "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> RunInfo {
        RunInfo {
            mode: "open",
            api: "native",
            url: "http://127.0.0.1:1".into(),
            target_rate: Some(100.0),
            connections: 8,
            texts_per_request: 2,
        }
    }

    #[test]
    fn quantiles_come_from_the_recorded_latencies() {
        let mut r = Recorder::new();
        for ms in 1..=100 {
            r.record_ok(Duration::from_millis(ms));
        }
        let l = r.latency();
        // 3 significant digits: within 0.1 %.
        let close = |a: f64, b: f64| (a - b).abs() <= b * 0.001 + 0.001;
        assert!(close(l.p50, 50.0), "{l:?}");
        assert!(close(l.p95, 95.0), "{l:?}");
        assert!(close(l.p99, 99.0), "{l:?}");
        assert!(close(l.max, 100.0), "{l:?}");
        assert!(close(l.mean, 50.5), "{l:?}");
    }

    #[test]
    fn errors_are_counted_by_kind_and_kept_out_of_the_latencies() {
        let mut r = Recorder::new();
        r.record_ok(Duration::from_millis(5));
        r.record_error(ErrorKind::Status(429));
        r.record_error(ErrorKind::Status(429));
        r.record_error(ErrorKind::Timeout);
        r.record_error(ErrorKind::InvalidResponse);
        let report = r.report(info(), Duration::from_secs(1));
        assert_eq!(report.ok, 1);
        assert_eq!(report.errors, 4);
        assert_eq!(report.requests, 5);
        assert!((report.error_rate - 0.8).abs() < 1e-12);
        assert_eq!(report.errors_by_kind["http_429"], 2);
        assert_eq!(report.errors_by_kind["timeout"], 1);
        assert_eq!(report.errors_by_kind["invalid_response"], 1);
        assert!(report.latency_ms.max < 5.1);
    }

    #[test]
    fn rates_are_per_second_of_elapsed_time() {
        let mut r = Recorder::new();
        for _ in 0..300 {
            r.record_ok(Duration::from_millis(2));
        }
        r.record_error(ErrorKind::Connect);
        let report = r.report(info(), Duration::from_secs(3));
        assert!((report.achieved_rps - 100.0).abs() < 1e-9);
        assert!((report.attempted_rps - 301.0 / 3.0).abs() < 1e-9);
    }

    #[test]
    fn merged_recorders_add_up() {
        let mut a = Recorder::new();
        let mut b = Recorder::new();
        a.record_ok(Duration::from_millis(1));
        b.record_ok(Duration::from_millis(100));
        b.record_error(ErrorKind::Status(503));
        a.record_error(ErrorKind::Status(503));
        a.merge(&b);
        assert_eq!(a.ok(), 2);
        assert_eq!(a.errors(), 2);
        assert!(a.latency().max > 99.0);
    }

    #[test]
    fn an_empty_run_reports_zeros_not_nan() {
        let report = Recorder::new().report(info(), Duration::ZERO);
        assert_eq!(report.requests, 0);
        assert_eq!(report.error_rate, 0.0);
        assert_eq!(report.achieved_rps, 0.0);
        assert_eq!(report.latency_ms, LatencySummary::default());
    }

    #[test]
    fn the_json_line_has_what_scripts_read() {
        let mut r = Recorder::new();
        r.record_ok(Duration::from_millis(3));
        r.record_error(ErrorKind::Status(500));
        let line = r.report(info(), Duration::from_secs(1)).to_json_line();
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["mode"], "open");
        assert_eq!(v["target_rate"], 100.0);
        assert_eq!(v["ok"], 1);
        assert_eq!(v["errors_by_kind"]["http_500"], 1);
        assert!(v["latency_ms"]["p95"].as_f64().unwrap() > 2.9);
        assert!(v["achieved_rps"].is_number());
    }

    #[test]
    fn the_human_report_names_rates_quantiles_and_errors() {
        let mut r = Recorder::new();
        r.record_ok(Duration::from_millis(3));
        r.record_error(ErrorKind::Status(429));
        let text = r.report(info(), Duration::from_secs(1)).to_string();
        assert!(text.contains("open loop, target 100.0 req/s"), "{text}");
        assert!(text.contains("p95"), "{text}");
        assert!(text.contains("http_429=1"), "{text}");
    }
}
