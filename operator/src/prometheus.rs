//! The Prometheus edge: render the rollout's PromQL templates and run them as instant queries.
//!
//! Every outcome a gate can meet is a value here, never a panic: a number (including `+Inf`), no
//! data (empty vector), NaN (e.g. `histogram_quantile` over a zero rate), or a [`QueryError`]
//! (unreachable, timeout, rejected PromQL, HTTP error, garbage). The decision core decides what
//! each means for the rollout.

use std::{error::Error as _, time::Duration};

use prometheus_http_query::{
    response::{Data, PromqlResult},
    Client, Error as PromError,
};

use crate::{
    crd::AnalysisSpec,
    decision::{
        BucketsResult, Counts, CustomReading, MetricsSnapshot, QueryResult as CoreQueryResult,
        ServiceMetrics,
    },
    prometheus_access::Access,
};

/// Default PromQL templates (docs/interfaces.md). `{{service}}` is the metrics `service` label,
/// `{{window}}` the range, `{{quantile}}` the quantile for the latency query.
pub const DEFAULT_P95: &str = r#"histogram_quantile({{quantile}}, sum by (le) (rate(embedding_request_duration_seconds_bucket{service="{{service}}"}[{{window}}])))"#;
/// `or vector(0)`: a healthy server may have no `embedding_errors_total` series at all (counters with
/// labels appear on first increment), which must read as 0 %, not as "no data". With no requests the
/// denominator is empty and the result is still "no data", as it should be.
pub const DEFAULT_ERROR_RATE: &str = r#"(sum(rate(embedding_errors_total{service="{{service}}"}[{{window}}])) or vector(0)) / sum(rate(embedding_requests_total{service="{{service}}"}[{{window}}]))"#;
pub const DEFAULT_REQUESTS: &str =
    r#"sum(increase(embedding_requests_total{service="{{service}}"}[{{window}}]))"#;
/// The counts the gates test (docs/analysis.md): requests per latency bucket and failed requests,
/// over `{{window}}` (the analysis window for the triggers, the step so far for the gates).
pub const DEFAULT_LATENCY_BUCKETS: &str = r#"sum by (le) (increase(embedding_request_duration_seconds_bucket{service="{{service}}"}[{{window}}]))"#;
pub const DEFAULT_ERRORS: &str =
    r#"sum(increase(embedding_errors_total{service="{{service}}"}[{{window}}])) or vector(0)"#;
pub const DEFAULT_BREAKER: &str = r#"max(max_over_time(circuit_breaker_state{service="embedding",backend="{{service}}"}[{{window}}]))"#;

/// The quantile the latency gate is about.
pub const P95_QUANTILE: f64 = 0.95;

/// Fill a template. Placeholders may carry inner spaces (`{{ service }}`) since users write
/// overrides by hand.
pub fn render(template: &str, service: &str, window: &str, quantile: f64) -> String {
    let quantile = format_quantile(quantile);
    render_with(
        template,
        &[
            ("service", service),
            ("window", window),
            ("quantile", &quantile),
        ],
    )
}

/// Fill `{{name}}` placeholders from `values`; unknown ones stay verbatim.
pub fn render_with(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len() + 32);
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        let Some(len) = rest[start + 2..].find("}}") else {
            break;
        };
        let name = rest[start + 2..start + 2 + len].trim();
        let value = values
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string());
        out.push_str(&rest[..start]);
        match value {
            Some(v) => out.push_str(&v),
            // Unknown placeholder: keep it verbatim so Prometheus reports the bad query.
            None => out.push_str(&rest[start..start + 2 + len + 2]),
        }
        rest = &rest[start + 2 + len + 2..];
    }
    out.push_str(rest);
    out
}

fn format_quantile(q: f64) -> String {
    // 0.95 not 0.9500000000000001; Display for f64 is the shortest round-trip form.
    format!("{q}")
}

/// What an instant query returned.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Reading {
    /// A number; `+Inf`/`-Inf` are numbers too (a histogram quantile above the last bucket).
    Value(f64),
    /// Empty result vector: the series does not exist (yet) in the window.
    NoData,
    /// Prometheus answered NaN, e.g. a quantile or ratio over zero traffic.
    NotANumber,
}

impl Reading {
    pub fn value(self) -> Option<f64> {
        match self {
            Reading::Value(v) => Some(v),
            _ => None,
        }
    }
}

/// Why a query produced no reading. Shown after "Prometheus at <address> " (see [`Prometheus::describe`]).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QueryError {
    #[error("is not a valid address: {message}")]
    BadAddress { address: String, message: String },
    #[error("is unreachable: {0}")]
    Unreachable(String),
    /// The TLS handshake failed: an unknown CA, a certificate for another name.
    #[error("failed the TLS handshake: {0}; check prometheus.tls")]
    Tls(String),
    #[error("did not answer within {0:?}")]
    Timeout(Duration),
    /// 401 or 403: the credentials (prometheus.bearerToken / basicAuth) are wrong or missing.
    #[error(
        "refused the credentials (HTTP {0}); check prometheus.bearerToken or prometheus.basicAuth"
    )]
    Unauthorized(u16),
    #[error("rejected the query ({kind}): {message}")]
    Rejected { kind: String, message: String },
    #[error("answered with an unusable response: {0}")]
    BadResponse(String),
    #[error("returned a {0}, expected an instant vector or scalar")]
    UnexpectedShape(&'static str),
    /// The credentials or CA could not be read or used.
    #[error("cannot be queried: {0}")]
    Access(#[from] crate::prometheus_access::AccessError),
}

/// A Prometheus endpoint plus the per-query time budget.
#[derive(Clone)]
pub struct Prometheus {
    client: Client,
    address: String,
    timeout: Duration,
}

impl Prometheus {
    /// A client for `address` without credentials.
    pub fn new(address: &str, timeout: Duration) -> Result<Self, QueryError> {
        Self::connect(address, &Access::default(), timeout)
    }

    /// A client for `address` with `access` (credentials, headers, CA, server name).
    pub fn connect(address: &str, access: &Access, timeout: Duration) -> Result<Self, QueryError> {
        let bad = |message: String| QueryError::BadAddress {
            address: address.to_string(),
            message,
        };
        // Parsed on its own first: the address must be a URL whatever the access says. (Parsing
        // builds a plain reqwest client, which needs the TLS provider.)
        crate::http_client::install_provider();
        address
            .parse::<Client>()
            .map_err(|e| bad(error_chain(&e)))?;
        let (url, http) = access.client(address, timeout)?;
        let client = Client::from(http, &url).map_err(|e| bad(error_chain(&e)))?;
        Ok(Self {
            client,
            address: address.to_string(),
            timeout,
        })
    }

    /// "Prometheus at <address> <what went wrong>", the form every status message uses.
    pub fn describe(address: &str, e: &QueryError) -> String {
        format!("Prometheus at {address} {e}")
    }

    /// Run one instant query. The timeout is both sent to Prometheus (so it stops evaluating) and
    /// enforced locally (so a hung connection cannot stall a reconcile).
    pub async fn instant(&self, promql: &str) -> Result<Reading, QueryError> {
        self.instant_worst(promql, false).await
    }

    /// One query with the time budget, both sent and enforced; errors classified.
    async fn query(&self, promql: &str) -> Result<PromqlResult, QueryError> {
        let millis = i64::try_from(self.timeout.as_millis()).unwrap_or(i64::MAX);
        let request = self.client.query(promql).timeout(millis).get();
        let result = match tokio::time::timeout(self.timeout, request).await {
            Err(_) => Err(QueryError::Timeout(self.timeout)),
            Ok(Err(e)) => Err(classify(e, self.timeout)),
            Ok(Ok(result)) => Ok(result),
        };
        // The status says what failed once, without the queries; the log keeps each one.
        if let Err(e) = &result {
            tracing::warn!(address = %self.address, query = promql, error = %e, "Prometheus query failed");
        }
        result
    }

    /// Run one `sum by (le)` histogram query: `(le, value)` per series. A series without a
    /// parsable `le` label makes the whole answer unusable (the query is not what it should be).
    pub async fn buckets(&self, promql: &str) -> Result<Vec<(f64, f64)>, QueryError> {
        let result = self.query(promql).await?;
        let Data::Vector(v) = result.data() else {
            return Err(QueryError::UnexpectedShape("non-vector"));
        };
        v.iter()
            .map(|s| {
                let le = s.metric().get("le").ok_or_else(|| {
                    QueryError::BadResponse("a latency bucket series has no le label".into())
                })?;
                let bound = le.parse::<f64>().map_err(|_| {
                    QueryError::BadResponse(format!("latency bucket le={le:?} is not a number"))
                })?;
                Ok((bound, s.sample().value()))
            })
            .collect()
    }
}

fn classify(e: PromError, timeout: Duration) -> QueryError {
    match e {
        PromError::Prometheus(p) if p.is_timeout() => QueryError::Timeout(timeout),
        PromError::Prometheus(p) => QueryError::Rejected {
            kind: p.error_type().to_string(),
            message: p.message().to_string(),
        },
        PromError::Client(c) => {
            let Some(r) = c.inner() else {
                return QueryError::BadResponse(c.to_string());
            };
            // reqwest's own message repeats the whole URL-encoded query: say why instead.
            let why = r.source().map(error_chain).unwrap_or_else(|| c.to_string());
            match r.status() {
                _ if r.is_timeout() => QueryError::Timeout(timeout),
                Some(s) if s.as_u16() == 401 || s.as_u16() == 403 => {
                    QueryError::Unauthorized(s.as_u16())
                }
                Some(s) => QueryError::BadResponse(format!("HTTP {s}")),
                // rustls says "invalid peer certificate: ..." for every verification failure.
                None if why.contains("peer certificate") => QueryError::Tls(why),
                None if r.is_connect() || r.is_request() => QueryError::Unreachable(why),
                None => QueryError::BadResponse(why),
            }
        }
        other => QueryError::BadResponse(error_chain(&other)),
    }
}

/// Reduce a query result to one reading. Several series (an override without aggregation) are
/// reduced to the worst, i.e. largest, number: every gate is an upper bound, so that is the
/// conservative choice.
/// With `smallest` (a custom gate with a `min`), the worst series is the smallest one: the values
/// are negated around the same reduction.
fn reading_from(data: &Data, smallest: bool) -> Result<Reading, QueryError> {
    let sign = if smallest { -1.0 } else { 1.0 };
    let values: Vec<f64> = match data {
        Data::Vector(v) => v.iter().map(|s| sign * s.sample().value()).collect(),
        Data::Scalar(s) => vec![sign * s.value()],
        Data::Matrix(_) => return Err(QueryError::UnexpectedShape("range vector")),
    };
    Ok(match reduce(&values) {
        Reading::Value(v) => Reading::Value(sign * v),
        other => other,
    })
}

fn reduce(values: &[f64]) -> Reading {
    if values.is_empty() {
        return Reading::NoData;
    }
    values
        .iter()
        .copied()
        .filter(|v| !v.is_nan())
        .fold(None, |acc: Option<f64>, v| {
            Some(acc.map_or(v, |a| a.max(v)))
        })
        .map_or(Reading::NotANumber, Reading::Value)
}

/// "outer: inner: innermost", so the status message says why (e.g. connection refused); also
/// the parity probe's HTTP errors.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        source = s.source();
    }
    msg
}

// ---------------------------------------------------------------------------------------------
// One analysis: the four queries for the candidate and the baseline.
// ---------------------------------------------------------------------------------------------

/// Which services an analysis compares, and how (the rollout's `spec.analysis`, resolved).
#[derive(Debug, Clone)]
pub struct AnalysisQueries<'a> {
    pub candidate_service: &'a str,
    pub baseline_service: &'a str,
    pub spec: &'a AnalysisSpec,
}

impl AnalysisQueries<'_> {
    fn template(&self, kind: QueryKind) -> &str {
        let q = &self.spec.queries;
        let custom = match kind {
            QueryKind::P95 => q.p95.as_deref(),
            QueryKind::ErrorRate => q.error_rate.as_deref(),
            QueryKind::Requests => q.requests.as_deref(),
            QueryKind::Breaker => q.breaker.as_deref(),
            QueryKind::LatencyBuckets => q.latency_buckets.as_deref(),
            QueryKind::Errors => q.errors.as_deref(),
        };
        custom
            .filter(|t| !t.trim().is_empty())
            .unwrap_or(match kind {
                QueryKind::P95 => DEFAULT_P95,
                QueryKind::ErrorRate => DEFAULT_ERROR_RATE,
                QueryKind::Requests => DEFAULT_REQUESTS,
                QueryKind::Breaker => DEFAULT_BREAKER,
                QueryKind::LatencyBuckets => DEFAULT_LATENCY_BUCKETS,
                QueryKind::Errors => DEFAULT_ERRORS,
            })
    }

    /// The PromQL of the four queries for `service`, in the order p95, error rate, requests,
    /// breaker; `Err` when the window is not a valid duration.
    pub fn rendered(&self, service: &str) -> Result<[String; 4], String> {
        let window = self
            .spec
            .window
            .parse()
            .map_err(|e| format!("analysis.window: {e}"))?;
        let window = crate::duration::format(window);
        Ok(QueryKind::ALL.map(|k| render(self.template(k), service, &window, P95_QUANTILE)))
    }

    /// The PromQL of the three count queries (latency buckets, requests, errors) for `service`
    /// over `range` (rendered in whole seconds).
    pub fn counts(&self, service: &str, range: &str) -> [String; 3] {
        [
            QueryKind::LatencyBuckets,
            QueryKind::Requests,
            QueryKind::Errors,
        ]
        .map(|k| render(self.template(k), service, range, P95_QUANTILE))
    }
}

/// A range in whole seconds, the form every Prometheus version parses.
pub fn range_seconds(d: Duration) -> String {
    format!("{}s", d.as_secs().max(1))
}

#[derive(Debug, Clone, Copy)]
enum QueryKind {
    P95,
    ErrorRate,
    Requests,
    Breaker,
    LatencyBuckets,
    Errors,
}

impl QueryKind {
    /// The four queries of `rendered`, in its order.
    const ALL: [QueryKind; 4] = [
        QueryKind::P95,
        QueryKind::ErrorRate,
        QueryKind::Requests,
        QueryKind::Breaker,
    ];
}

fn to_core(address: &str, r: Result<Reading, QueryError>) -> CoreQueryResult {
    match r {
        Ok(Reading::Value(v)) => Ok(Some(v)),
        Ok(Reading::NoData) => Ok(None),
        Ok(Reading::NotANumber) => Ok(Some(f64::NAN)),
        Err(e) => Err(Prometheus::describe(address, &e)),
    }
}

fn buckets_to_core(address: &str, r: Result<Vec<(f64, f64)>, QueryError>) -> BucketsResult {
    match r {
        Ok(v) if v.is_empty() => Ok(None),
        Ok(v) => Ok(Some(v)),
        Err(e) => Err(Prometheus::describe(address, &e)),
    }
}

impl Prometheus {
    async fn counts(&self, queries: &[String; 3]) -> Counts {
        let [buckets, req, err] = queries;
        let (buckets, req, err) =
            tokio::join!(self.buckets(buckets), self.instant(req), self.instant(err));
        Counts {
            latency: buckets_to_core(&self.address, buckets),
            requests: to_core(&self.address, req),
            errors: to_core(&self.address, err),
        }
    }

    async fn service_metrics(
        &self,
        q: &AnalysisQueries<'_>,
        service: &str,
        step_range: Option<Duration>,
    ) -> ServiceMetrics {
        let queries = match q.rendered(service) {
            Ok(qs) => qs,
            Err(e) => return ServiceMetrics::failed(&e),
        };
        let [p95, err, _req, brk] = &queries;
        let window = q.spec.window.parse().map(range_seconds).unwrap_or_default();
        let window_counts = q.counts(service, &window);
        let step = async {
            match step_range {
                Some(r) => self.counts(&q.counts(service, &range_seconds(r))).await,
                None => Counts::no_data(),
            }
        };
        let (p95, err, brk, window, step) = tokio::join!(
            self.instant(p95),
            self.instant(err),
            self.instant(brk),
            self.counts(&window_counts),
            step
        );
        ServiceMetrics {
            p95_seconds: to_core(&self.address, p95),
            error_rate: to_core(&self.address, err),
            breaker: to_core(&self.address, brk),
            window,
            step,
        }
    }

    /// Every query of one analysis, concurrently: the shown values and the window counts, and the
    /// counts since the step began (`step_range`, from `decision::evidence_range`). Never fails:
    /// each query's failure is in the snapshot for the decision core to judge.
    pub async fn snapshot(
        &self,
        q: &AnalysisQueries<'_>,
        step_range: Option<Duration>,
    ) -> MetricsSnapshot {
        let (candidate, baseline, custom) = tokio::join!(
            self.service_metrics(q, q.candidate_service, step_range),
            self.service_metrics(q, q.baseline_service, step_range),
            self.custom(q, step_range)
        );
        MetricsSnapshot {
            candidate,
            baseline,
            custom,
            // The parity probe is not Prometheus's: the controller adds it.
            parity: None,
            gate_problems: Vec::new(),
        }
    }

    /// The `analysis.gates.custom` queries, concurrently; each reduced to its worst series
    /// (largest against `max`, smallest against `min`).
    async fn custom(
        &self,
        q: &AnalysisQueries<'_>,
        step_range: Option<Duration>,
    ) -> Vec<CustomReading> {
        let window = q.spec.window.parse().map(range_seconds).unwrap_or_default();
        let step = step_range
            .map(range_seconds)
            .unwrap_or_else(|| window.clone());
        let values = [
            ("service", q.candidate_service),
            ("baseline", q.baseline_service),
            ("window", window.as_str()),
            ("step", step.as_str()),
        ];
        let readings = q.spec.gates.custom.iter().map(|g| {
            let value_q = render_with(&g.query, &values);
            let samples_q = g.samples_query.as_deref().map(|t| render_with(t, &values));
            let worst_is_min = g.max.is_none() && g.min.is_some();
            async move {
                let value = self.instant_worst(&value_q, worst_is_min).await;
                let samples = match &samples_q {
                    // The evidence is what the least-sampled series has.
                    Some(sq) => Some(to_core(&self.address, self.instant_worst(sq, true).await)),
                    None => None,
                };
                CustomReading {
                    name: g.name.clone(),
                    value: to_core(&self.address, value),
                    samples,
                }
            }
        });
        futures::future::join_all(readings).await
    }

    /// As [`Prometheus::instant`], reducing several series to the smallest when `smallest`.
    async fn instant_worst(&self, promql: &str, smallest: bool) -> Result<Reading, QueryError> {
        reading_from(self.query(promql).await?.data(), smallest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_p95_renders_to_the_documented_query() {
        assert_eq!(
            render(DEFAULT_P95, "candle", "5m", P95_QUANTILE),
            r#"histogram_quantile(0.95, sum by (le) (rate(embedding_request_duration_seconds_bucket{service="candle"}[5m])))"#
        );
    }

    #[test]
    fn every_default_renders_service_and_window_everywhere() {
        for t in [DEFAULT_ERROR_RATE, DEFAULT_REQUESTS, DEFAULT_BREAKER] {
            let q = render(t, "mlx", "2m", P95_QUANTILE);
            assert!(!q.contains("{{"), "{q}");
            assert!(q.contains(r#""mlx""#), "{q}");
            assert!(q.contains("[2m]"), "{q}");
        }
        assert_eq!(
            render(DEFAULT_ERROR_RATE, "mlx", "5m", 0.95),
            r#"(sum(rate(embedding_errors_total{service="mlx"}[5m])) or vector(0)) / sum(rate(embedding_requests_total{service="mlx"}[5m]))"#
        );
        assert_eq!(
            render(DEFAULT_BREAKER, "candle", "1m", 0.95),
            r#"max(max_over_time(circuit_breaker_state{service="embedding",backend="candle"}[1m]))"#
        );
    }

    #[test]
    fn overrides_may_use_spaces_and_other_quantiles() {
        let q = render(
            "histogram_quantile({{ quantile }}, x{job=\"{{ service }}\"}[{{window}}])",
            "c",
            "30s",
            0.99,
        );
        assert_eq!(q, "histogram_quantile(0.99, x{job=\"c\"}[30s])");
    }

    #[test]
    fn unknown_or_unclosed_placeholders_are_left_for_prometheus_to_reject() {
        assert_eq!(
            render("a{{nope}}b{{service}}", "s", "1m", 0.95),
            "a{{nope}}bs"
        );
        assert_eq!(render("x{{service", "s", "1m", 0.95), "x{{service");
    }

    #[test]
    fn several_series_reduce_to_the_worst_value_ignoring_nan() {
        assert_eq!(reduce(&[]), Reading::NoData);
        assert_eq!(reduce(&[f64::NAN]), Reading::NotANumber);
        assert_eq!(reduce(&[0.01, f64::NAN, 0.03]), Reading::Value(0.03));
        assert_eq!(reduce(&[1.0, f64::INFINITY]), Reading::Value(f64::INFINITY));
    }
}
