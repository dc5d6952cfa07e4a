//! The edge of the embedding parity gate: reads the probe texts, finds one ready endpoint of the
//! baseline Service and one of the candidate Service, and sends them the same texts in one
//! request each, at the same time. What the answers mean is `decision::parity`'s business.
//!
//! Straight to the endpoints, not through the Service's virtual IP or the ingress: the probe is
//! about the two servers, and the operator may run where ClusterIPs are not routable (the e2e
//! runs it on the host). Endpoints are picked round-robin across looks, so every pod is probed
//! over a step. The load is one request per side per probe, of at most `maxTexts` texts.

use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::ListParams;
use kube::{Api, Client};
use serde_json::{json, Value};

use crate::crd::{EmbeddingApi, ParitySpec};
use crate::decision::parity::{self, Answer, ParityProbe};

/// Largest answer read (a 64-text batch of 4096-dimensional floats as JSON is about 5 MiB).
const MAX_ANSWER_BYTES: usize = 32 << 20;

/// One side of the probe: the Service, its port, the API and the model to ask for.
#[derive(Clone, Debug)]
pub struct Side<'a> {
    pub service: &'a str,
    pub port: i32,
    pub api: EmbeddingApi,
    pub model: Option<&'a str>,
}

/// One probe to send: where, what, and how long each request may take.
#[derive(Clone, Debug)]
pub struct Request<'a> {
    pub namespace: &'a str,
    pub spec: &'a ParitySpec,
    pub baseline: Side<'a>,
    pub candidate: Side<'a>,
    /// Picks the endpoints and the texts of a larger set (changes from probe to probe).
    pub round: u64,
    pub timeout: Duration,
}

/// Runs one probe. Never fails: every problem becomes the side's error, which the gate reports
/// as Inconclusive with the reason.
pub async fn probe(client: &Client, http: &reqwest::Client, req: &Request<'_>) -> ParityProbe {
    let Request {
        namespace,
        spec,
        baseline,
        candidate,
        round,
        timeout,
    } = req.clone();
    let all = match texts(client, namespace, spec).await {
        Ok(t) => t,
        Err(e) => return ParityProbe::unprobed(e),
    };
    let (texts, note) = parity::select_texts(
        &all,
        spec.max_texts as usize,
        spec.max_text_bytes as usize,
        round,
    );
    let (b, c) = tokio::join!(
        ask(client, http, namespace, &baseline, &texts, round, timeout),
        ask(client, http, namespace, &candidate, &texts, round, timeout),
    );
    ParityProbe {
        texts,
        baseline: b,
        candidate: c,
        notes: note.into_iter().collect(),
    }
}

async fn texts(client: &Client, ns: &str, spec: &ParitySpec) -> Result<Vec<String>, String> {
    let Some(r) = &spec.texts else {
        return Ok(parity::builtin_texts());
    };
    let key = crate::object_keys::KeyRef {
        kind: "ConfigMap",
        namespace: ns,
        name: &r.name,
        key: &r.key,
        field: "parity.texts",
    };
    let bytes = crate::object_keys::read(client, key)
        .await
        .map_err(|e| e.to_string())?;
    // ConfigMap data is text: the API server only stores UTF-8 there.
    let value = String::from_utf8_lossy(&bytes);
    let texts = parity::parse_texts(&value).map_err(|e| {
        format!(
            "ConfigMap {ns}/{} key {:?} (for parity.texts): {e}",
            r.name, r.key
        )
    })?;
    if texts.is_empty() {
        return Err(format!(
            "ConfigMap {ns}/{} key {:?} (for parity.texts) holds no texts",
            r.name, r.key
        ));
    }
    Ok(texts)
}

async fn ask(
    client: &Client,
    http: &reqwest::Client,
    ns: &str,
    side: &Side<'_>,
    texts: &[String],
    round: u64,
    timeout: Duration,
) -> Result<Answer, String> {
    let base = endpoint(client, ns, side.service, side.port, round).await?;
    let url = format!("{base}{}", side.api.path());
    let body = request_body(side.api, texts, side.model);
    let res = http
        .post(&url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.to_string())
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| format!("POST {url}: {}", crate::prometheus::error_chain(&e)))?;
    let status = res.status();
    let bytes = res.bytes().await.map_err(|e| {
        format!(
            "POST {url}: reading the answer: {}",
            crate::prometheus::error_chain(&e)
        )
    })?;
    if !status.is_success() {
        let text = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned();
        return Err(format!("POST {url}: HTTP {status}: {}", text.trim()));
    }
    if bytes.len() > MAX_ANSWER_BYTES {
        return Err(format!(
            "POST {url}: the answer is over {MAX_ANSWER_BYTES} bytes"
        ));
    }
    let v: Value = serde_json::from_slice(&bytes)
        .map_err(|e| format!("POST {url}: the answer is not JSON: {e}"))?;
    parse_answer(side.api, &v).map_err(|e| format!("POST {url}: {e}"))
}

/// The request of one API for `texts`.
pub fn request_body(api: EmbeddingApi, texts: &[String], model: Option<&str>) -> Value {
    let mut body = match api {
        EmbeddingApi::Embed => json!({"texts": texts}),
        EmbeddingApi::OpenAI => json!({"input": texts, "encoding_format": "float"}),
    };
    if let Some(m) = model {
        body["model"] = json!(m);
    }
    body
}

/// The model and the embeddings (in the texts' order) of one API's answer.
pub fn parse_answer(api: EmbeddingApi, v: &Value) -> Result<Answer, String> {
    let model = v["model"].as_str().unwrap_or_default().to_string();
    let vector = |e: &Value| -> Result<Vec<f32>, String> {
        e.as_array()
            .ok_or("an embedding is not an array")?
            .iter()
            .map(|x| {
                x.as_f64()
                    .map(|f| f as f32)
                    .ok_or("an embedding holds a non-number")
            })
            .collect::<Result<_, _>>()
            .map_err(String::from)
    };
    let embeddings = match api {
        EmbeddingApi::Embed => v["embeddings"]
            .as_array()
            .ok_or("no \"embeddings\" array in the answer")?
            .iter()
            .map(vector)
            .collect::<Result<Vec<_>, _>>()?,
        EmbeddingApi::OpenAI => {
            let data = v["data"]
                .as_array()
                .ok_or("no \"data\" array in the answer")?;
            let mut indexed = data
                .iter()
                .enumerate()
                .map(|(i, d)| {
                    let index = d["index"].as_u64().map_or(i, |x| x as usize);
                    vector(&d["embedding"]).map(|e| (index, e))
                })
                .collect::<Result<Vec<_>, _>>()?;
            // OpenAI's answer says which input each embedding is for; do not trust the order.
            indexed.sort_by_key(|(i, _)| *i);
            indexed.into_iter().map(|(_, e)| e).collect()
        }
    };
    Ok(Answer { model, embeddings })
}

/// `http://host:port` of one ready, non-terminating endpoint of `service`, round-robin by `round`.
async fn endpoint(
    client: &Client,
    ns: &str,
    service: &str,
    port: i32,
    round: u64,
) -> Result<String, String> {
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let svc = services
        .get_opt(service)
        .await
        .map_err(|e| {
            format!(
                "cannot read Service {ns}/{service}: {}",
                crate::cluster::describe_kube_error(&e)
            )
        })?
        .ok_or_else(|| format!("Service {ns}/{service} not found"))?;
    let port_name = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .and_then(|ps| ps.iter().find(|p| p.port == port))
        .map(|p| p.name.clone().unwrap_or_default())
        .ok_or_else(|| format!("Service {ns}/{service} has no port {port}"))?;
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    let list = slices
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={service}")))
        .await
        .map_err(|e| {
            format!(
                "cannot list EndpointSlices of Service {ns}/{service}: {}",
                crate::cluster::describe_kube_error(&e)
            )
        })?;
    let ready = ready_endpoints(&list.items, &port_name);
    if ready.is_empty() {
        return Err(format!("Service {ns}/{service} has no ready endpoint"));
    }
    let (host, p) = &ready[(round as usize) % ready.len()];
    Ok(format!("http://{}:{p}", url_host(host)))
}

/// Every ready, non-terminating `(address, port)` of the slices, for the Service port named
/// `port_name` ("" for an unnamed single port), in a stable order.
pub fn ready_endpoints(slices: &[EndpointSlice], port_name: &str) -> Vec<(String, i32)> {
    let mut out = Vec::new();
    for s in slices {
        let Some(port) = s
            .ports
            .as_ref()
            .and_then(|ps| {
                ps.iter()
                    .find(|p| p.name.as_deref().unwrap_or_default() == port_name)
            })
            .and_then(|p| p.port)
        else {
            continue;
        };
        for e in &s.endpoints {
            let c = e.conditions.as_ref();
            // The API: a nil `ready` is to be read as ready; terminating endpoints are leaving.
            let ready = c.and_then(|c| c.ready).unwrap_or(true);
            let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
            if ready && !terminating {
                if let Some(a) = e.addresses.first() {
                    out.push((a.clone(), port));
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// An address as a URL host: IPv6 in brackets; names under `.localhost` are the loopback
/// address (RFC 6761 §6.3: they always resolve there, which glibc without systemd-resolved
/// does not do; the e2e's FQDN endpoints rely on it).
pub fn url_host(address: &str) -> String {
    if address == "localhost" || address.ends_with(".localhost") {
        "127.0.0.1".into()
    } else if address.contains(':') {
        format!("[{address}]")
    } else {
        address.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_apis_ask_for_the_same_texts_and_model() {
        let t = vec!["a".to_string(), "b".to_string()];
        assert_eq!(
            request_body(EmbeddingApi::Embed, &t, Some("m")),
            json!({"texts": ["a", "b"], "model": "m"})
        );
        assert_eq!(
            request_body(EmbeddingApi::OpenAI, &t, None),
            json!({"input": ["a", "b"], "encoding_format": "float"})
        );
    }

    #[test]
    fn answers_of_both_apis_are_read_in_the_texts_order() {
        let a = parse_answer(
            EmbeddingApi::Embed,
            &json!({"model": "m", "dimension": 2, "embeddings": [[1.0, 0.0], [0.0, 1.0]]}),
        )
        .unwrap();
        assert_eq!(a.model, "m");
        assert_eq!(a.embeddings, vec![vec![1.0, 0.0], vec![0.0, 1.0]]);
        let o = parse_answer(
            EmbeddingApi::OpenAI,
            &json!({"model": "m", "data": [
                {"object": "embedding", "index": 1, "embedding": [0.0, 1.0]},
                {"object": "embedding", "index": 0, "embedding": [1.0, 0.0]}
            ]}),
        )
        .unwrap();
        assert_eq!(o.embeddings, a.embeddings);
        assert!(parse_answer(EmbeddingApi::Embed, &json!({"data": []}))
            .unwrap_err()
            .contains("no \"embeddings\""));
        assert!(parse_answer(
            EmbeddingApi::OpenAI,
            &json!({"data": [{"embedding": ["x"]}]})
        )
        .unwrap_err()
        .contains("non-number"));
    }

    #[test]
    fn only_ready_endpoints_of_the_named_port_are_probed() {
        let slice: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "s"},
            "addressType": "FQDN",
            "ports": [{"name": "http", "port": 9001}, {"name": "metrics", "port": 9100}],
            "endpoints": [
                {"addresses": ["b.localhost"], "conditions": {"ready": true}},
                {"addresses": ["a.localhost"]},
                {"addresses": ["c.localhost"], "conditions": {"ready": false}},
                {"addresses": ["d.localhost"], "conditions": {"ready": true, "terminating": true}}
            ]
        }))
        .unwrap();
        assert_eq!(
            ready_endpoints(std::slice::from_ref(&slice), "http"),
            vec![
                ("a.localhost".to_string(), 9001),
                ("b.localhost".to_string(), 9001)
            ]
        );
        assert!(ready_endpoints(&[slice], "grpc").is_empty());
    }

    #[test]
    fn hosts_for_urls() {
        assert_eq!(url_host("10.0.0.7"), "10.0.0.7");
        assert_eq!(url_host("fd00::7"), "[fd00::7]");
        assert_eq!(url_host("pod-a.localhost"), "127.0.0.1");
        assert_eq!(url_host("web.example.org"), "web.example.org");
    }
}
