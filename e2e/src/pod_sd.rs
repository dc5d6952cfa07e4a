//! TEST HARNESS: Prometheus's pod discovery for the real node.
//!
//! A cluster's Prometheus finds the embedder pods with `kubernetes_sd_configs` (role pod) and the
//! `prometheus.io/scrape|port|path` annotations the operator puts on the candidate's pods. Debian's
//! prometheus 2.42 is built without the Kubernetes discovery ("field kubernetes_sd_configs not
//! found in type config.ScrapeConfig"), so this watches the pods through the API server and writes
//! the same selection as the file_sd file Prometheus reads: running pods with an IP, annotated
//! `prometheus.io/scrape: "true"`, at `<pod IP>:<prometheus.io/port>`, labelled namespace and pod.

use std::collections::BTreeMap;
use std::path::PathBuf;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::{Api, Client};

use crate::prometheus::{write_file_sd, FileSdGroup};

/// The file_sd groups for `pods` of `namespaces`.
pub fn groups<'a>(
    pods: impl IntoIterator<Item = &'a Pod>,
    namespaces: &[String],
) -> Vec<FileSdGroup> {
    let mut out: Vec<FileSdGroup> = pods
        .into_iter()
        .filter_map(|p| {
            let ns = p.metadata.namespace.clone()?;
            if !namespaces.contains(&ns) {
                return None;
            }
            let a = p.metadata.annotations.as_ref()?;
            if a.get("prometheus.io/scrape").map(String::as_str) != Some("true") {
                return None;
            }
            let status = p.status.as_ref()?;
            if status.phase.as_deref() != Some("Running") || p.metadata.deletion_timestamp.is_some()
            {
                return None;
            }
            let ip = status.pod_ip.clone()?;
            let port: u16 = a.get("prometheus.io/port")?.parse().ok()?;
            let mut labels = BTreeMap::from([
                ("namespace".to_string(), ns),
                (
                    "pod".to_string(),
                    p.metadata.name.clone().unwrap_or_default(),
                ),
            ]);
            if let Some(path) = a.get("prometheus.io/path") {
                labels.insert("__metrics_path__".into(), path.clone());
            }
            Some(FileSdGroup {
                targets: vec![format!("{ip}:{port}")],
                labels,
            })
        })
        .collect();
    out.sort_by(|a, b| a.targets.cmp(&b.targets));
    out
}

/// Keeps `path` equal to [`groups`] of the cluster's pods until the task is aborted.
pub fn spawn(
    client: Client,
    namespaces: Vec<String>,
    path: PathBuf,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let (reader, writer) = reflector::store::<Pod>();
        let stream = reflector(
            writer,
            watcher(Api::<Pod>::all(client), watcher::Config::default()),
        )
        .default_backoff()
        .touched_objects();
        futures::pin_mut!(stream);
        let mut last = None;
        while let Some(event) = stream.next().await {
            if event.is_err() {
                continue;
            }
            let state = reader.state();
            let g = groups(state.iter().map(|p| p.as_ref()), &namespaces);
            if last.as_ref() != Some(&g) {
                if let Err(e) = write_file_sd(&path, &g) {
                    eprintln!("pod discovery: {e}");
                }
                last = Some(g);
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ns: &str, name: &str, phase: &str, ip: Option<&str>, scrape: Option<&str>) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": ns, "annotations": match scrape {
                Some(s) => serde_json::json!({"prometheus.io/scrape": s, "prometheus.io/port": "8080",
                                              "prometheus.io/path": "/metrics"}),
                None => serde_json::json!({}),
            }},
            "status": {"phase": phase, "podIP": ip}
        }))
        .unwrap()
    }

    #[test]
    fn only_running_annotated_pods_of_the_namespaces_with_an_ip_are_targets() {
        let pods = [
            pod("a", "p1", "Running", Some("10.244.0.7"), Some("true")),
            pod("a", "pending", "Pending", None, Some("true")),
            pod(
                "a",
                "opted-out",
                "Running",
                Some("10.244.0.8"),
                Some("false"),
            ),
            pod("a", "plain", "Running", Some("10.244.0.9"), None),
            pod("other", "p2", "Running", Some("10.244.0.10"), Some("true")),
        ];
        let g = groups(pods.iter(), &["a".to_string()]);
        assert_eq!(g.len(), 1, "{g:?}");
        assert_eq!(g[0].targets, ["10.244.0.7:8080"]);
        assert_eq!(g[0].labels["pod"], "p1");
        assert_eq!(g[0].labels["namespace"], "a");
        assert_eq!(g[0].labels["__metrics_path__"], "/metrics");
    }
}
