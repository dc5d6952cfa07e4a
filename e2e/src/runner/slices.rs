//! TEST HARNESS: the EndpointSlices and Prometheus file_sd targets of the runner's processes (pure).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::json;

use super::{PodInfo, MANAGED_BY, MANAGED_BY_LABEL, POD_LABEL};
use crate::nginx::SERVICE_NAME_LABEL;

/// Prometheus file_sd JSON for these pods. Pure.
pub fn file_sd_json(pods: &[PodInfo]) -> String {
    let groups: Vec<_> = pods
        .iter()
        .map(|p| {
            json!({
                "targets": [format!("127.0.0.1:{}", p.port)],
                "labels": {"deployment": p.deployment, "namespace": p.namespace, "pod": p.name},
            })
        })
        .collect();
    serde_json::to_string_pretty(&groups).unwrap_or_else(|_| "[]".into())
}

/// What the EndpointSlice computation needs to know of a pod.
#[derive(Debug, Clone)]
pub struct PodView {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub port: u16,
    pub ready: bool,
    pub terminating: bool,
}

/// FQDN of a harness pod: `<pod>.localhost` (RFC 6761: always loopback); `harness.localhost` when
/// the pod name is too long for a DNS label.
pub fn endpoint_host(pod: &str) -> String {
    if pod.len() <= 63 {
        format!("{pod}.localhost")
    } else {
        "harness.localhost".to_string()
    }
}

/// The EndpointSlices of a namespace: one per (Service with selector, matching pod). Pure.
pub fn desired_slices(
    namespace: &str,
    services: &[Service],
    pods: &[PodView],
) -> BTreeMap<String, EndpointSlice> {
    let mut out = BTreeMap::new();
    for svc in services {
        let Some(name) = svc.metadata.name.as_deref() else {
            continue;
        };
        let Some(spec) = &svc.spec else { continue };
        let Some(selector) = spec.selector.as_ref().filter(|s| !s.is_empty()) else {
            continue;
        };
        let ports = spec.ports.clone().unwrap_or_default();
        for pod in pods {
            if !selector.iter().all(|(k, v)| pod.labels.get(k) == Some(v)) {
                continue;
            }
            let slice_name = format!("{name}-{}", pod.name);
            let slice: EndpointSlice = serde_json::from_value(json!({
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": slice_name,
                    "namespace": namespace,
                    "labels": {
                        SERVICE_NAME_LABEL: name,
                        MANAGED_BY_LABEL: MANAGED_BY,
                        POD_LABEL: pod.name,
                    },
                    "annotations": {"harness.akidb.io/note": "TEST HARNESS: written by the e2e deployment runner for a local process"},
                    "ownerReferences": svc.metadata.uid.as_ref().map(|uid| vec![json!({
                        "apiVersion": "v1", "kind": "Service", "name": name, "uid": uid
                    })]),
                },
                "addressType": "FQDN",
                "endpoints": [{
                    "addresses": [endpoint_host(&pod.name)],
                    "conditions": {
                        "ready": pod.ready && !pod.terminating,
                        "serving": pod.ready,
                        "terminating": pod.terminating,
                    },
                }],
                // Every process serves all of the Service's ports on its single listen port.
                "ports": ports.iter().map(|p| json!({
                    "name": p.name.clone().unwrap_or_default(),
                    "port": pod.port,
                    "protocol": p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                })).collect::<Vec<_>>(),
            }))
            .expect("EndpointSlice literal");
            out.insert(slice_name, slice);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_cover_matching_services_with_each_process_port() {
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "mlx", "uid": "u1"},
            "spec": {"selector": {"app": "mlx"}, "ports": [{"name": "http", "port": 8080}]}
        }))
        .unwrap();
        let other: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "other"}, "spec": {"selector": {"app": "other"}, "ports": [{"port": 80}]}
        }))
        .unwrap();
        let pod = |name: &str, app: &str, port, ready| PodView {
            name: name.into(),
            labels: [("app".to_string(), app.to_string())].into(),
            port,
            ready,
            terminating: false,
        };
        let pods = vec![
            pod("mlx-a", "mlx", 9001, true),
            pod("mlx-b", "mlx", 9002, false),
            pod("cand-a", "candle", 9003, true),
        ];
        let slices = desired_slices("ns", &[svc, other], &pods);
        assert_eq!(
            slices.keys().collect::<Vec<_>>(),
            vec!["mlx-mlx-a", "mlx-mlx-b"]
        );
        let a = &slices["mlx-mlx-a"];
        assert_eq!(
            a.metadata.labels.as_ref().unwrap()[SERVICE_NAME_LABEL],
            "mlx"
        );
        assert_eq!(a.ports.as_ref().unwrap()[0].port, Some(9001));
        assert_eq!(a.address_type, "FQDN");
        assert_eq!(a.endpoints[0].addresses, vec!["mlx-a.localhost"]);
        assert_eq!(
            a.endpoints[0].conditions.as_ref().unwrap().ready,
            Some(true)
        );
        assert_eq!(
            slices["mlx-mlx-b"].endpoints[0]
                .conditions
                .as_ref()
                .unwrap()
                .ready,
            Some(false)
        );
    }

    #[test]
    fn file_sd_lists_every_process() {
        let p = PodInfo {
            namespace: "ns".into(),
            deployment: "d".into(),
            name: "d-x-y".into(),
            template_hash: "x".into(),
            port: 9001,
            pid: 1,
            ready: true,
            terminating: false,
            log: "l".into(),
        };
        let v: serde_json::Value = serde_json::from_str(&file_sd_json(&[p])).unwrap();
        assert_eq!(v[0]["targets"][0], "127.0.0.1:9001");
        assert_eq!(v[0]["labels"]["pod"], "d-x-y");
        assert_eq!(v[0]["labels"]["deployment"], "d");
        assert_eq!(v[0]["labels"]["namespace"], "ns");
    }
}
