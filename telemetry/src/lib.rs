//! OTLP export of `tracing` spans, shared by the operator and the embedder.
//!
//! Off unless `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT` is set: then
//! [`OtlpConfig::from_env`] is `None`, no layer is installed, no thread is started and nothing
//! is sent. On, [`layer`] gives a `tracing-subscriber` layer that turns spans into OpenTelemetry
//! spans (`tracing-opentelemetry`), batches them on the SDK's batch processor thread and posts
//! them as OTLP/HTTP protobuf (`opentelemetry-otlp`) to `<endpoint>/v1/traces`, and a
//! [`Telemetry`] handle to flush and shut down with.
//!
//! The standard variables: `OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT`, `OTEL_SERVICE_NAME` (else
//! `service.name` in `OTEL_RESOURCE_ATTRIBUTES`, else the program's default),
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_EXPORTER_OTLP_[TRACES_]HEADERS`,
//! `OTEL_EXPORTER_OTLP_[TRACES_]TIMEOUT`, `OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL` (only
//! `http/protobuf`), `OTEL_TRACES_SAMPLER[_ARG]`, `OTEL_BSP_*`, `OTEL_SDK_DISABLED`,
//! `OTEL_TRACES_EXPORTER` (`otlp` or `none`). Plain `http://` only: the client is HTTP/1 without
//! TLS (an in-cluster collector or a node agent); an `https://` endpoint, a gRPC protocol or gzip
//! compression is refused at start with the reason, rather than failing every export later.
//!
//! The SDK's batch processor exports from its own thread with a blocking executor; the HTTP
//! request itself runs on the program's tokio runtime (captured when the layer is built), so
//! [`layer`] must be called inside one, and [`Telemetry::force_flush`] and
//! [`Telemetry::shutdown`] hand the blocking wait to a blocking thread.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_http::{HttpClient, HttpError};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing::Subscriber;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

#[cfg(feature = "testing")]
pub mod testing;

/// Where and as whom spans are exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpConfig {
    /// The full URL spans are posted to (`http://collector:4318/v1/traces`).
    pub traces_endpoint: String,
    /// The resource's `service.name`.
    pub service_name: String,
    /// Per export request, connecting and reading the answer included.
    pub timeout: Duration,
}

/// Why export could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Config(String),
    #[error("OTLP exporter: {0}")]
    Build(#[from] opentelemetry_otlp::ExporterBuildError),
    #[error("OTLP export needs a tokio runtime to send from; none is running here")]
    NoRuntime,
    #[error("OTLP: {0}")]
    Sdk(#[from] opentelemetry_sdk::error::OTelSdkError),
    #[error("OTLP: the flush task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// How long [`Telemetry::shutdown`] waits for the last spans to go out.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// An OTLP answer is a small protobuf message; anything bigger is not a collector.
const MAX_RESPONSE_BYTES: usize = 1 << 20;

impl OtlpConfig {
    /// From the process environment; `Ok(None)` when export is off.
    pub fn from_env(default_service_name: &str) -> Result<Option<Self>, Error> {
        Self::from_vars(|k| std::env::var(k).ok(), default_service_name)
    }

    /// From `var` (the environment, or a test's table); `Ok(None)` when no endpoint is set,
    /// `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`.
    pub fn from_vars(
        var: impl Fn(&str) -> Option<String>,
        default_service_name: &str,
    ) -> Result<Option<Self>, Error> {
        let get = |k: &str| {
            var(k)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        if get("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        if let Some(exporters) = get("OTEL_TRACES_EXPORTER") {
            let exporters: Vec<&str> = exporters.split(',').map(str::trim).collect();
            if exporters.contains(&"none") {
                return Ok(None);
            }
            if let Some(other) = exporters.iter().find(|e| **e != "otlp") {
                return Err(Error::Config(format!(
                    "OTEL_TRACES_EXPORTER={other}: only otlp (or none) is built in"
                )));
            }
        }
        let (var_name, traces_endpoint) =
            if let Some(url) = get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", url)
            } else if let Some(base) = get("OTEL_EXPORTER_OTLP_ENDPOINT") {
                (
                    "OTEL_EXPORTER_OTLP_ENDPOINT",
                    format!("{}/v1/traces", base.trim_end_matches('/')),
                )
            } else {
                return Ok(None);
            };
        if !traces_endpoint.starts_with("http://") {
            return Err(Error::Config(format!(
                "{var_name}: {traces_endpoint}: only plain http:// is supported (OTLP/HTTP to a \
                 collector's port 4318, no TLS client built in)"
            )));
        }
        if let Err(e) = traces_endpoint.parse::<http::Uri>() {
            return Err(Error::Config(format!("{var_name}: {traces_endpoint}: {e}")));
        }
        for name in [
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ] {
            if let Some(p) = get(name) {
                if p != "http/protobuf" {
                    return Err(Error::Config(format!(
                        "{name}={p}: only http/protobuf is built in; point the endpoint at the \
                         collector's OTLP/HTTP port (4318)"
                    )));
                }
                break;
            }
        }
        let timeout = match get("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT")
            .map(|v| ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", v))
            .or_else(|| {
                get("OTEL_EXPORTER_OTLP_TIMEOUT").map(|v| ("OTEL_EXPORTER_OTLP_TIMEOUT", v))
            }) {
            None => DEFAULT_TIMEOUT,
            Some((name, ms)) => ms
                .parse::<u64>()
                .map(Duration::from_millis)
                .map_err(|_| Error::Config(format!("{name}={ms}: not a number of milliseconds")))?,
        };
        let from_attributes = || {
            get("OTEL_RESOURCE_ATTRIBUTES").and_then(|attrs| {
                attrs.split(',').find_map(|kv| {
                    let (k, v) = kv.split_once('=')?;
                    (k.trim() == "service.name" && !v.trim().is_empty())
                        .then(|| v.trim().to_string())
                })
            })
        };
        let service_name = get("OTEL_SERVICE_NAME")
            .or_else(from_attributes)
            .unwrap_or_else(|| default_service_name.to_string());
        Ok(Some(OtlpConfig {
            traces_endpoint,
            service_name,
            timeout,
        }))
    }
}

/// Flushes and shuts down the exporter of a [`layer`].
#[derive(Clone)]
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Telemetry").finish_non_exhaustive()
    }
}

impl Telemetry {
    /// Exports every span ended so far and waits for the collector's answer.
    pub async fn force_flush(&self) -> Result<(), Error> {
        let provider = self.provider.clone();
        tokio::task::spawn_blocking(move || provider.force_flush()).await??;
        Ok(())
    }

    /// Exports what is left (within [`SHUTDOWN_TIMEOUT`]) and stops the batch thread; spans
    /// ended afterwards are dropped. For the graceful exit path.
    pub async fn shutdown(self) -> Result<(), Error> {
        let provider = self.provider;
        tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT))
            .await??;
        Ok(())
    }
}

/// A boxed layer for any subscriber with span lookup (a `Registry` under other layers).
pub type BoxedLayer<S> = Box<dyn Layer<S> + Send + Sync + 'static>;

/// The subscriber both binaries build: the log filter, then their log format.
pub type Logging =
    tracing_subscriber::layer::Layered<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>;

/// Installs the process's subscriber: `filter`, then `fmt` (the program's log format), then, when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`) is set, the OTLP export of its spans
/// under `default_service_name` unless `OTEL_SERVICE_NAME` says otherwise (announced in the log).
/// The handle flushes the spans at exit; `None` when nothing is exported.
pub fn install(
    default_service_name: &str,
    filter: tracing_subscriber::EnvFilter,
    fmt: BoxedLayer<Logging>,
) -> Result<Option<Telemetry>, Error> {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let otlp = OtlpConfig::from_env(default_service_name)?;
    let (export, telemetry) = match &otlp {
        Some(config) => {
            let (layer, telemetry) = layer(config)?;
            (Some(layer), Some(telemetry))
        }
        None => (None, None),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(export)
        .init();
    if let Some(config) = &otlp {
        tracing::info!(
            endpoint = %config.traces_endpoint,
            service = %config.service_name,
            "exporting spans over OTLP/HTTP"
        );
    }
    Ok(telemetry)
}

/// The exporting layer and its handle. Call inside a tokio runtime.
///
/// Spans and events of the HTTP client and of OpenTelemetry itself are left out, so exporting
/// never produces more spans to export.
pub fn layer<S>(config: &OtlpConfig) -> Result<(BoxedLayer<S>, Telemetry), Error>
where
    S: Subscriber + for<'a> LookupSpan<'a> + Send + Sync + 'static,
{
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
    let client = OnRuntime {
        client: Client::builder(hyper_util::rt::TokioExecutor::new()).build_http(),
        runtime,
        timeout: config.timeout,
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(client)
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(config.traces_endpoint.clone())
        .with_timeout(config.timeout)
        .build()?;
    // Resource::builder() reads OTEL_RESOURCE_ATTRIBUTES; the service name resolved above wins.
    let resource = Resource::builder()
        .with_service_name(config.service_name.clone())
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build();
    let tracer = provider.tracer(config.service_name.clone());
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(filter_fn(|meta| {
            let target = meta.target();
            !["opentelemetry", "hyper", "h2", "reqwest"]
                .iter()
                .any(|t| target.starts_with(t))
        }));
    Ok((Box::new(layer), Telemetry { provider }))
}

/// The OpenTelemetry trace id of `span` (32 hex digits), when spans are exported; `None`
/// without an exporting layer. A log field carrying it joins the logs to the trace.
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    let span_ref = context.span();
    let span_context = span_ref.span_context();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}

/// The exporter's HTTP client: HTTP/1 over hyper-util, each request run on the program's
/// runtime (the batch processor's thread has none).
#[derive(Clone)]
struct OnRuntime {
    client: Client<HttpConnector, Full<Bytes>>,
    runtime: tokio::runtime::Handle,
    timeout: Duration,
}

impl fmt::Debug for OnRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OnRuntime")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl HttpClient for OnRuntime {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let client = self.client.clone();
        let timeout = self.timeout;
        let (parts, body) = request.into_parts();
        let request = Request::from_parts(parts, Full::new(body));
        let task = self.runtime.spawn(async move {
            let exchange = async {
                let response = client.request(request).await?;
                let (parts, body) = response.into_parts();
                let body = Limited::new(body, MAX_RESPONSE_BYTES)
                    .collect()
                    .await?
                    .to_bytes();
                Ok::<_, HttpError>(Response::from_parts(parts, body))
            };
            match tokio::time::timeout(timeout, exchange).await {
                Ok(result) => result,
                Err(_) => Err(format!("no answer within {} ms", timeout.as_millis()).into()),
            }
        });
        task.await.map_err(|e| Box::new(e) as HttpError)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)]) -> Result<Option<OtlpConfig>, Error> {
        OtlpConfig::from_vars(
            |k| {
                vars.iter()
                    .find(|(name, _)| *name == k)
                    .map(|(_, v)| v.to_string())
            },
            "default-svc",
        )
    }

    #[test]
    fn off_without_an_endpoint_or_when_disabled() {
        assert_eq!(config(&[]).unwrap(), None);
        assert_eq!(
            config(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")]).unwrap(),
            None
        );
        assert_eq!(config(&[("OTEL_SERVICE_NAME", "x")]).unwrap(), None);
        let on = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318");
        assert_eq!(config(&[on, ("OTEL_SDK_DISABLED", "TRUE")]).unwrap(), None);
        assert_eq!(
            config(&[on, ("OTEL_TRACES_EXPORTER", "none")]).unwrap(),
            None
        );
        assert!(config(&[on, ("OTEL_SDK_DISABLED", "false")])
            .unwrap()
            .is_some());
    }

    #[test]
    fn the_base_endpoint_gets_the_traces_path_and_the_signal_endpoint_is_taken_as_is() {
        let c = config(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://otel:4318/")])
            .unwrap()
            .unwrap();
        assert_eq!(c.traces_endpoint, "http://otel:4318/v1/traces");
        assert_eq!(c.service_name, "default-svc");
        assert_eq!(c.timeout, Duration::from_secs(10));
        let c = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://otel:4318"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://tempo:4318/otlp/traces",
            ),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(c.traces_endpoint, "http://tempo:4318/otlp/traces");
        assert_eq!(c.timeout, Duration::from_millis(2500));
    }

    #[test]
    fn the_service_name_comes_from_the_env_then_the_resource_attributes_then_the_default() {
        let on = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318");
        let name = |vars: &[(&str, &str)]| config(vars).unwrap().unwrap().service_name;
        assert_eq!(name(&[on]), "default-svc");
        let attrs = (
            "OTEL_RESOURCE_ATTRIBUTES",
            "team=search, service.name=from-attrs",
        );
        assert_eq!(name(&[on, attrs]), "from-attrs");
        assert_eq!(name(&[on, attrs, ("OTEL_SERVICE_NAME", "svc")]), "svc");
    }

    #[test]
    fn what_this_build_cannot_send_is_refused_with_the_variable_named() {
        let err = |vars: &[(&str, &str)]| config(vars).unwrap_err().to_string();
        assert!(err(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c:4318")])
            .contains("OTEL_EXPORTER_OTLP_ENDPOINT: https://c:4318/v1/traces: only plain http://"));
        let on = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317");
        assert!(err(&[on, ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")])
            .contains("OTEL_EXPORTER_OTLP_PROTOCOL=grpc: only http/protobuf"));
        assert!(err(&[on, ("OTEL_EXPORTER_OTLP_TIMEOUT", "5s")])
            .contains("OTEL_EXPORTER_OTLP_TIMEOUT=5s"));
        assert!(err(&[on, ("OTEL_TRACES_EXPORTER", "zipkin")]).contains("zipkin"));
        assert!(
            config(&[on, ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")])
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn no_trace_id_without_an_exporting_layer() {
        let span = tracing::info_span!("x");
        assert_eq!(trace_id(&span), None);
    }
}
