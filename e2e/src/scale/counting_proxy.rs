//! A counting proxy between the operator and the API server (TEST HARNESS, never shipped): the
//! operator's kubeconfig points at `http://127.0.0.1:<port>`, the proxy forwards every request
//! unchanged (the ServiceAccount's bearer token included) to the API server over TLS and streams
//! the answer back (watches too), counting each request by verb and resource. Only the operator
//! talks to it, so the counts are the operator's requests, nothing else.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::Path,
    sync::{Arc, Mutex},
};

use axum::{
    body::{Body, Bytes},
    extract::{Request, State},
    http::{HeaderMap, StatusCode},
    response::Response,
    Router,
};

/// Requests by (verb, resource): GET, LIST, WATCH, POST, PUT, PATCH, DELETE; `deployments`,
/// `embeddingrollouts/status`, ...
pub type Counts = BTreeMap<(String, String), u64>;

#[derive(Clone)]
struct Upstream {
    base: String,
    client: reqwest::Client,
    counts: Arc<Mutex<Counts>>,
}

pub struct CountingProxy {
    pub addr: SocketAddr,
    counts: Arc<Mutex<Counts>>,
    task: tokio::task::JoinHandle<()>,
}

impl CountingProxy {
    /// Forwards to `api_url` (https), trusting the CA in `ca_path`.
    pub async fn start(api_url: &str, ca_path: &Path) -> anyhow::Result<Self> {
        let ca = reqwest::Certificate::from_pem(&std::fs::read(ca_path)?)?;
        let client = reqwest::Client::builder()
            .add_root_certificate(ca)
            .pool_max_idle_per_host(64)
            .build()?;
        let counts = Arc::new(Mutex::new(Counts::new()));
        let upstream = Upstream {
            base: api_url.trim_end_matches('/').to_string(),
            client,
            counts: counts.clone(),
        };
        let app = Router::new().fallback(forward).with_state(upstream);
        let (addr, task) = super::serve_on_loopback(app).await?;
        Ok(Self { addr, counts, task })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn counts(&self) -> Counts {
        self.counts.lock().unwrap().clone()
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The verb and resource of a request as the API server's metrics name them.
pub fn classify(method: &str, path: &str, query: &str) -> (String, String) {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    // /api/v1/... or /apis/<group>/<version>/...
    let rest: &[&str] = match segments.first() {
        Some(&"api") if segments.len() >= 2 => &segments[2..],
        Some(&"apis") if segments.len() >= 3 => &segments[3..],
        _ => return (method.to_string(), format!("(other) {path}")),
    };
    let (resource, name, sub) = match rest {
        ["namespaces", _, resource, tail @ ..] => (*resource, tail.first(), tail.get(1)),
        ["namespaces", name @ ..] => ("namespaces", name.first(), None),
        [resource, tail @ ..] => (*resource, tail.first(), tail.get(1)),
        [] => ("(discovery)", None, None),
    };
    let resource = match sub {
        Some(s) => format!("{resource}/{s}"),
        None => resource.to_string(),
    };
    let watch = query
        .split('&')
        .any(|kv| kv == "watch=true" || kv == "watch=1");
    let verb = match method {
        "GET" if watch => "WATCH",
        "GET" if name.is_none() => "LIST",
        other => other,
    };
    (verb.to_string(), resource)
}

async fn forward(State(up): State<Upstream>, req: Request) -> Result<Response, StatusCode> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let query = parts.uri.query().unwrap_or("").to_string();
    *up.counts
        .lock()
        .unwrap()
        .entry(classify(parts.method.as_str(), &path, &query))
        .or_default() += 1;
    let url = if query.is_empty() {
        format!("{}{path}", up.base)
    } else {
        format!("{}{path}?{query}", up.base)
    };
    let body = axum::body::to_bytes(body, 64 << 20)
        .await
        .map_err(|_| StatusCode::BAD_REQUEST)?;
    let method = reqwest::Method::from_bytes(parts.method.as_str().as_bytes())
        .map_err(|_| StatusCode::METHOD_NOT_ALLOWED)?;
    let mut headers = reqwest::header::HeaderMap::new();
    for (k, v) in &parts.headers {
        if k == "host" || k == "content-length" || k == "connection" {
            continue;
        }
        if let (Ok(k), Ok(v)) = (
            reqwest::header::HeaderName::from_bytes(k.as_str().as_bytes()),
            reqwest::header::HeaderValue::from_bytes(v.as_bytes()),
        ) {
            headers.append(k, v);
        }
    }
    let resp = up
        .client
        .request(method, url)
        .headers(headers)
        .body(body.to_vec())
        .send()
        .await
        .map_err(|_| StatusCode::BAD_GATEWAY)?;
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut out_headers = HeaderMap::new();
    for (k, v) in resp.headers() {
        let name = k.as_str();
        if name == "content-length" || name == "transfer-encoding" || name == "connection" {
            continue;
        }
        if let (Ok(k), Ok(v)) = (
            axum::http::HeaderName::from_bytes(name.as_bytes()),
            axum::http::HeaderValue::from_bytes(v.as_bytes()),
        ) {
            out_headers.append(k, v);
        }
    }
    // Chunk by chunk, so a watch streams its events as they come.
    let stream = futures::stream::unfold(Some(resp), |resp| async move {
        let mut resp = resp?;
        match resp.chunk().await {
            Ok(Some(chunk)) => Some((Ok::<Bytes, std::io::Error>(chunk), Some(resp))),
            Ok(None) => None,
            Err(e) => Some((Err(std::io::Error::other(e)), None)),
        }
    });
    let mut response = Response::new(Body::from_stream(stream));
    *response.status_mut() = status;
    *response.headers_mut() = out_headers;
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::classify;

    #[test]
    fn requests_are_named_as_the_api_server_names_them() {
        let c = |m, p, q| {
            let (v, r) = classify(m, p, q);
            format!("{v} {r}")
        };
        assert_eq!(
            c("GET", "/apis/apps/v1/namespaces/ns1/deployments/base-0", ""),
            "GET deployments"
        );
        assert_eq!(
            c(
                "GET",
                "/apis/apps/v1/deployments",
                "watch=true&resourceVersion=5"
            ),
            "WATCH deployments"
        );
        assert_eq!(
            c("GET", "/apis/apps/v1/deployments", "limit=500"),
            "LIST deployments"
        );
        assert_eq!(
            c(
                "PATCH",
                "/apis/rollout.akidb.io/v1alpha1/namespaces/ns1/embeddingrollouts/r1/status",
                "fieldManager=x"
            ),
            "PATCH embeddingrollouts/status"
        );
        assert_eq!(
            c("POST", "/apis/events.k8s.io/v1/namespaces/ns1/events", ""),
            "POST events"
        );
        assert_eq!(c("GET", "/api/v1/namespaces/ns1", ""), "GET namespaces");
    }
}
