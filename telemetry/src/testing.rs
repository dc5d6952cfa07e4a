//! A local OTLP/HTTP receiver for tests (feature `testing`): `POST /v1/traces` on 127.0.0.1, the
//! protobuf body decoded with `opentelemetry-proto`'s types, every span kept with its service
//! name, ids and attributes, and anything else (another path or method, another content type, a
//! body that does not decode) counted as rejected and answered with an error.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode as OtlpStatus;
use prost::Message;

/// One span as a collector received it.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    /// `service.name` of the resource the span came with.
    pub service_name: Option<String>,
    pub name: String,
    /// `SPAN_KIND_SERVER`, `SPAN_KIND_INTERNAL`, ...
    pub kind: String,
    /// Lowercase hex, as in logs and W3C `traceparent`.
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    /// Attribute values rendered as text (`200`, `true`, `tiny-bert`).
    pub attributes: BTreeMap<String, String>,
    /// `STATUS_CODE_UNSET`, `STATUS_CODE_OK` or `STATUS_CODE_ERROR`.
    pub status: String,
}

impl ReceivedSpan {
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

#[derive(Default)]
struct Seen {
    spans: Vec<ReceivedSpan>,
    requests: usize,
    rejected: Vec<String>,
}

/// The receiver; stops when dropped.
pub struct Receiver {
    addr: SocketAddr,
    seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    /// Listens on 127.0.0.1 at a free port, on the current tokio runtime.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the OTLP receiver");
        let addr = listener.local_addr().expect("the receiver's address");
        let seen = Arc::new(Mutex::new(Seen::default()));
        let app = Router::new()
            .route("/v1/traces", post(traces))
            .fallback(reject)
            .with_state(Arc::clone(&seen));
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("the OTLP receiver");
        });
        Receiver { addr, seen, task }
    }

    /// The base URL, as `OTEL_EXPORTER_OTLP_ENDPOINT` takes it (`/v1/traces` is appended).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far, in arrival order.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.seen.lock().unwrap().spans.clone()
    }

    /// Export requests accepted.
    pub fn requests(&self) -> usize {
        self.seen.lock().unwrap().requests
    }

    /// Requests refused, with why.
    pub fn rejected(&self) -> Vec<String> {
        self.seen.lock().unwrap().rejected.clone()
    }
}

async fn reject(
    State(seen): State<Arc<Mutex<Seen>>>,
    method: axum::http::Method,
    uri: axum::http::Uri,
) -> StatusCode {
    seen.lock()
        .unwrap()
        .rejected
        .push(format!("{method} {uri}: not an OTLP traces request"));
    StatusCode::NOT_FOUND
}

async fn traces(State(seen): State<Arc<Mutex<Seen>>>, headers: HeaderMap, body: Bytes) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    if content_type != "application/x-protobuf" {
        seen.lock()
            .unwrap()
            .rejected
            .push(format!("content-type {content_type:?}"));
        return StatusCode::UNSUPPORTED_MEDIA_TYPE.into_response();
    }
    let request = match ExportTraceServiceRequest::decode(body) {
        Ok(r) => r,
        Err(e) => {
            seen.lock()
                .unwrap()
                .rejected
                .push(format!("undecodable body: {e}"));
            return StatusCode::BAD_REQUEST.into_response();
        }
    };
    let mut spans = Vec::new();
    for resource_spans in request.resource_spans {
        let service_name = resource_spans.resource.as_ref().and_then(|r| {
            r.attributes
                .iter()
                .find(|kv| kv.key == "service.name")
                .map(|kv| text(kv.value.as_ref()))
        });
        for scope_spans in resource_spans.scope_spans {
            for span in scope_spans.spans {
                spans.push(ReceivedSpan {
                    service_name: service_name.clone(),
                    kind: SpanKind::try_from(span.kind)
                        .map(|k| k.as_str_name().to_string())
                        .unwrap_or_else(|_| format!("unknown kind {}", span.kind)),
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    attributes: attributes(&span.attributes),
                    status: span
                        .status
                        .as_ref()
                        .and_then(|s| OtlpStatus::try_from(s.code).ok())
                        .unwrap_or(OtlpStatus::Unset)
                        .as_str_name()
                        .to_string(),
                    name: span.name,
                });
            }
        }
    }
    {
        let mut seen = seen.lock().unwrap();
        seen.requests += 1;
        seen.spans.extend(spans);
    }
    (
        [(header::CONTENT_TYPE, "application/x-protobuf")],
        ExportTraceServiceResponse::default().encode_to_vec(),
    )
        .into_response()
}

fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), text(kv.value.as_ref())))
        .collect()
}

fn text(value: Option<&AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
