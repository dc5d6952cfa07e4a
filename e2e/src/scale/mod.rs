//! The scale benchmark's harness (`make scale-bench`, e2e/src/bin/scale-bench.rs; TEST HARNESS,
//! never shipped): a fake Prometheus, a counting proxy in front of the API server, the stand-in
//! for the Deployment controller and kubelet (it writes Deployment status), and the arithmetic
//! of the figures (histogram quantiles, /proc samples, analysis gaps).

pub mod counting_proxy;
pub mod fake_prometheus;

/// Serves `app` on a free loopback port; its address and the server task.
async fn serve_on_loopback(
    app: axum::Router,
) -> std::io::Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>)> {
    use axum::serve::ListenerExt as _;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    // No Nagle: a response written in pieces (headers, then body chunks) must not wait for the
    // client's delayed ACK (40 ms on Linux) between them.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((addr, task))
}

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use kube::{
    api::{Api, Patch, PatchParams},
    runtime::{watcher, WatchStreamExt},
    Client,
};
use serde_json::json;

/// What a Deployment's status must say for the operator to count it as rolled out: every
/// replica updated, ready and available, for the current generation.
pub fn status_for(d: &Deployment) -> Option<serde_json::Value> {
    let replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let generation = d.metadata.generation.unwrap_or(0);
    let s = d.status.clone().unwrap_or_default();
    let done = s.observed_generation == Some(generation)
        && s.replicas == Some(replicas)
        && s.ready_replicas == Some(replicas)
        && s.available_replicas == Some(replicas)
        && s.updated_replicas == Some(replicas);
    (!done).then(|| {
        json!({"status": {
            "observedGeneration": generation, "replicas": replicas, "readyReplicas": replicas,
            "availableReplicas": replicas, "updatedReplicas": replicas,
            "conditions": [{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"}]
        }})
    })
}

/// Without a node there is no kube-controller-manager nor kubelet: this watches every
/// Deployment and marks it rolled out through the status subresource, as those would once the
/// pods were ready. Returns the number of status writes so far.
pub fn drive_deployment_status(admin: Client) -> (Arc<AtomicU64>, tokio::task::JoinHandle<()>) {
    let writes = Arc::new(AtomicU64::new(0));
    let counter = writes.clone();
    let task = tokio::spawn(async move {
        let api: Api<Deployment> = Api::all(admin.clone());
        let limit = Arc::new(tokio::sync::Semaphore::new(16));
        let mut events = watcher(api, watcher::Config::default())
            .default_backoff()
            .applied_objects()
            .boxed();
        while let Some(event) = events.next().await {
            let Ok(d) = event else { continue };
            let Some(patch) = status_for(&d) else {
                continue;
            };
            let (Some(ns), Some(name)) = (d.metadata.namespace.clone(), d.metadata.name.clone())
            else {
                continue;
            };
            let permit = limit.clone().acquire_owned().await.expect("never closed");
            let api: Api<Deployment> = Api::namespaced(admin.clone(), &ns);
            let counter = counter.clone();
            tokio::spawn(async move {
                let params = PatchParams::default();
                if api
                    .patch_status(&name, &params, &Patch::Merge(&patch))
                    .await
                    .is_ok()
                {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                drop(permit);
            });
        }
    });
    (writes, task)
}

/// A Prometheus histogram as scraped: cumulative counts by upper bound, count and sum.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    pub buckets: Vec<(f64, f64)>,
    pub count: f64,
    pub sum: f64,
}

impl Histogram {
    /// `name`'s histogram (without labels) from a text exposition.
    pub fn parse(text: &str, name: &str) -> Option<Self> {
        let mut h = Histogram::default();
        let bucket = format!("{name}_bucket{{le=\"");
        for line in text.lines() {
            let Some((key, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            if let Some(le) = key.strip_prefix(&bucket) {
                let le = le.trim_end_matches("\"}");
                let bound = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                h.buckets.push((bound, value));
            } else if key == format!("{name}_count") {
                h.count = value;
            } else if key == format!("{name}_sum") {
                h.sum = value;
            }
        }
        (!h.buckets.is_empty()).then_some(h)
    }

    /// The observations between `earlier` and `self` (two scrapes of the same histogram).
    pub fn since(&self, earlier: &Histogram) -> Histogram {
        Histogram {
            buckets: self
                .buckets
                .iter()
                .map(|(le, c)| {
                    let before = earlier
                        .buckets
                        .iter()
                        .find(|(l, _)| l == le)
                        .map_or(0.0, |(_, c)| *c);
                    (*le, c - before)
                })
                .collect(),
            count: self.count - earlier.count,
            sum: self.sum - earlier.sum,
        }
    }

    /// The `q` quantile, interpolated linearly within its bucket as PromQL's
    /// `histogram_quantile` does; `None` without observations. Above the last finite bound it
    /// is that bound (the answer is "more than").
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count <= 0.0 {
            return None;
        }
        let rank = q * self.count;
        let mut lower = (0.0, 0.0);
        for &(le, c) in &self.buckets {
            if c >= rank {
                if le.is_infinite() {
                    return Some(lower.0);
                }
                let width = c - lower.1;
                let into = if width > 0.0 {
                    (rank - lower.1) / width
                } else {
                    1.0
                };
                return Some(lower.0 + (le - lower.0) * into);
            }
            lower = (le, c);
        }
        Some(lower.0)
    }

    /// Share of observations at or below `bound` (a bucket bound).
    pub fn share_within(&self, bound: f64) -> Option<f64> {
        let c = self.buckets.iter().find(|(le, _)| *le == bound)?.1;
        (self.count > 0.0).then(|| c / self.count)
    }
}

/// A process's memory and CPU from /proc.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcSample {
    pub rss_kib: u64,
    pub hwm_kib: u64,
    pub cpu_seconds: f64,
}

pub fn sample_proc(pid: i32) -> Option<ProcSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may hold spaces) start at the last ')'.
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the command.
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ProcSample {
        rss_kib: field("VmRSS:")?,
        hwm_kib: field("VmHWM:")?,
        cpu_seconds: ticks / hz.max(1.0),
    })
}

/// One rollout's analysis times, sorted; the gaps between consecutive ones.
pub fn gaps(times: &[chrono::DateTime<chrono::Utc>]) -> Vec<Duration> {
    times
        .windows(2)
        .filter_map(|w| (w[1] - w[0]).to_std().ok())
        .collect()
}

/// The analysis times of every rollout: from its EmbeddingRolloutAnalysis objects (every
/// analysis kept, `spec.analyses[].t`) and its `status.history` (the newest ten), by
/// `namespace/name`, deduplicated and sorted.
pub fn analysis_times(
    kept: &[serde_json::Value],
    rollouts: &[serde_json::Value],
) -> BTreeMap<String, Vec<chrono::DateTime<chrono::Utc>>> {
    let mut out: BTreeMap<String, Vec<chrono::DateTime<chrono::Utc>>> = BTreeMap::new();
    let parse = |v: &serde_json::Value| {
        v.as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&chrono::Utc))
    };
    for k in kept {
        let key = format!(
            "{}/{}",
            k["metadata"]["namespace"].as_str().unwrap_or_default(),
            k["spec"]["rollout"].as_str().unwrap_or_default()
        );
        let times = k["spec"]["analyses"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| parse(&a["t"]));
        out.entry(key).or_default().extend(times);
    }
    for r in rollouts {
        let key = format!(
            "{}/{}",
            r["metadata"]["namespace"].as_str().unwrap_or_default(),
            r["metadata"]["name"].as_str().unwrap_or_default()
        );
        let times = r["status"]["history"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| parse(&a["time"]));
        out.entry(key).or_default().extend(times);
    }
    for times in out.values_mut() {
        times.sort();
        times.dedup();
    }
    out
}

/// The `q` quantile (nearest rank) of `values`, sorted or not.
pub fn nearest_rank(values: &[f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    Some(v[rank - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_within_the_bucket() {
        let text = "# HELP x y\nx_bucket{le=\"0.01\"} 50\nx_bucket{le=\"0.1\"} 100\nx_bucket{le=\"+Inf\"} 100\nx_sum 2\nx_count 100\n";
        let h = Histogram::parse(text, "x").unwrap();
        assert_eq!(h.count, 100.0);
        assert!((h.quantile(0.5).unwrap() - 0.01).abs() < 1e-12);
        assert!((h.quantile(0.75).unwrap() - 0.055).abs() < 1e-12);
        assert_eq!(h.share_within(0.1), Some(1.0));
        let earlier = Histogram::parse(
            "x_bucket{le=\"0.01\"} 50\nx_bucket{le=\"0.1\"} 50\nx_bucket{le=\"+Inf\"} 50\nx_sum 1\nx_count 50\n",
            "x",
        )
        .unwrap();
        let d = h.since(&earlier);
        assert_eq!(d.count, 50.0);
        assert!(d.quantile(0.5).unwrap() > 0.01);
    }

    #[test]
    fn a_rolled_out_deployment_needs_no_status_write() {
        let mut d: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "d", "generation": 2}, "spec": {"replicas": 3, "selector": {}, "template": {}}
        }))
        .unwrap();
        let patch = status_for(&d).expect("no status yet");
        assert_eq!(patch["status"]["availableReplicas"], 3);
        d.status = serde_json::from_value(patch["status"].clone()).unwrap();
        assert_eq!(status_for(&d), None);
    }

    #[test]
    fn analysis_times_merge_kept_objects_and_the_status() {
        let kept = vec![
            json!({"metadata": {"namespace": "n"}, "spec": {"rollout": "r",
            "analyses": [{"t": "2026-01-01T00:00:00Z"}, {"t": "2026-01-01T00:00:30Z"}]}}),
        ];
        let rollouts = vec![
            json!({"metadata": {"namespace": "n", "name": "r"}, "status": {"history": [
            {"time": "2026-01-01T00:00:30Z"}, {"time": "2026-01-01T00:01:10Z"}]}}),
        ];
        let t = analysis_times(&kept, &rollouts);
        let g = gaps(&t["n/r"]);
        assert_eq!(g, [Duration::from_secs(30), Duration::from_secs(40)]);
        assert_eq!(nearest_rank(&[3.0, 1.0, 2.0], 0.5), Some(2.0));
    }
}
