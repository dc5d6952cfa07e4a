//! TEST HARNESS: a real Prometheus (the Debian `prometheus` binary) scraping the embedder processes.
//!
//! Targets come from a file_sd file that the deployment runner rewrites as processes come and go
//! ([`write_file_sd`] replaces it atomically so Prometheus never reads half a file). [`Prometheus::stop`]
//! and [`Prometheus::start_again`] serve the "Prometheus down" scenario: same port, same TSDB.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::Serialize;
use tokio::process::Command;

use crate::child::GroupChild;

const READY_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// The scrape job of the embedders (the `job` label of their series).
pub const JOB: &str = "embedders";

#[derive(Debug, thiserror::Error)]
pub enum PrometheusError {
    #[error(
        "the `prometheus` binary is not on PATH: run `make deps` (installs the Debian package)"
    )]
    BinaryMissing,
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot find a free port: {0}")]
    Port(#[source] std::io::Error),
    #[error("cannot start prometheus: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("prometheus did not become ready on {url} ({reason}); last log lines:\n{log}")]
    NotReady {
        url: String,
        reason: String,
        log: String,
    },
    #[error("prometheus query {query:?}: {reason}")]
    Query { query: String, reason: String },
}

type Result<T, E = PrometheusError> = std::result::Result<T, E>;

/// One file_sd entry: addresses (`127.0.0.1:port`) sharing a set of target labels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileSdGroup {
    pub targets: Vec<String>,
    pub labels: BTreeMap<String, String>,
}

/// The file_sd JSON for `groups`.
pub fn render_file_sd(groups: &[FileSdGroup]) -> String {
    serde_json::to_string_pretty(groups).expect("file_sd groups serialise")
}

/// Replaces `path` with the file_sd JSON for `groups` (write + rename: Prometheus watches the file).
pub fn write_file_sd(path: &Path, groups: &[FileSdGroup]) -> Result<()> {
    let tmp = path.with_extension("json.tmp");
    let write_err = |source| PrometheusError::Write {
        path: path.to_path_buf(),
        source,
    };
    std::fs::write(&tmp, render_file_sd(groups)).map_err(write_err)?;
    std::fs::rename(&tmp, path).map_err(write_err)
}

/// prometheus.yml: one job scraping every target listed in `file_sd_path` every `interval`.
pub fn render_config(file_sd_path: &Path, interval: Duration) -> String {
    let every = format!("{}ms", interval.as_millis().max(1));
    // JSON strings are valid YAML scalars: the path is quoted whatever it holds.
    let file = serde_json::to_string(&file_sd_path.to_string_lossy()).expect("a string serialises");
    format!(
        "global:\n  scrape_interval: {every}\n  scrape_timeout: {every}\n  evaluation_interval: {every}\n\
         scrape_configs:\n- job_name: {JOB}\n  scrape_interval: {every}\n  scrape_timeout: {every}\n  \
         file_sd_configs:\n  - files: [{file}]\n    refresh_interval: 1s\n"
    )
}

/// A Prometheus server on 127.0.0.1 (or the node's bridge address), stopped on drop.
#[derive(Debug)]
pub struct Prometheus {
    host: String,
    port: u16,
    config_path: PathBuf,
    data_dir: PathBuf,
    log_path: PathBuf,
    http: reqwest::Client,
    child: Option<GroupChild>,
}

impl Prometheus {
    /// Scrapes the targets in `file_sd_path` every second. The file may not exist yet.
    pub async fn start(workdir: &Path, file_sd_path: &Path) -> Result<Self> {
        Self::start_with_interval(workdir, file_sd_path, Duration::from_secs(1)).await
    }

    /// Writes `workdir/prometheus.yml`, keeps its TSDB in `workdir/prometheus-data`, listens on a free
    /// loopback port and returns once `/-/ready` answers.
    pub async fn start_with_interval(
        workdir: &Path,
        file_sd_path: &Path,
        scrape_interval: Duration,
    ) -> Result<Self> {
        let mut p = Self::configure(workdir, file_sd_path, scrape_interval)?;
        p.start_again().await?;
        Ok(p)
    }

    fn configure(workdir: &Path, file_sd_path: &Path, scrape_interval: Duration) -> Result<Self> {
        let write_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| PrometheusError::Write { path, source }
        };
        std::fs::create_dir_all(workdir).map_err(write_err(workdir))?;
        let config_path = workdir.join("prometheus.yml");
        std::fs::write(&config_path, render_config(file_sd_path, scrape_interval))
            .map_err(write_err(&config_path))?;
        if !file_sd_path.exists() {
            write_file_sd(file_sd_path, &[])?;
        }
        let port = free_port().map_err(PrometheusError::Port)?;
        let prometheus = Self {
            host: "127.0.0.1".into(),
            port,
            config_path,
            data_dir: workdir.join("prometheus-data"),
            log_path: workdir.join("prometheus.log"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .no_proxy()
                .build()
                .expect("a default reqwest client builds"),
            child: None,
        };
        Ok(prometheus)
    }

    /// Like [`Self::start`], listening on `host` instead of loopback (the node's bridge address,
    /// so pods such as the operator reach it too).
    pub async fn start_on(workdir: &Path, file_sd_path: &Path, host: &str) -> Result<Self> {
        let mut p = Self::configure(workdir, file_sd_path, Duration::from_secs(1))?;
        p.host = host.to_string();
        p.start_again().await?;
        Ok(p)
    }

    /// `http://<host>:<port>`, also while stopped (the port is kept for [`Self::start_again`]).
    pub fn url(&self) -> String {
        format!("http://{}:{}", self.host, self.port)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Stops the server gracefully (SIGTERM, then SIGKILL after 20 s). Queries fail until
    /// [`Self::start_again`].
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.signal(libc::SIGTERM);
            if tokio::time::timeout(STOP_TIMEOUT, child.wait())
                .await
                .is_err()
            {
                child.kill().await;
            }
        }
    }

    /// Starts the server (again) on the same port with the same TSDB; returns once ready.
    pub async fn start_again(&mut self) -> Result<()> {
        if self.child.is_some() {
            return Ok(());
        }
        which("prometheus").ok_or(PrometheusError::BinaryMissing)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(|source| PrometheusError::Write {
                path: self.log_path.clone(),
                source,
            })?;
        let stderr = log.try_clone().map_err(|source| PrometheusError::Write {
            path: self.log_path.clone(),
            source,
        })?;
        let mut cmd = Command::new("prometheus");
        cmd.arg(format!("--config.file={}", self.config_path.display()))
            .arg(format!("--storage.tsdb.path={}", self.data_dir.display()))
            .arg(format!("--web.listen-address={}:{}", self.host, self.port))
            .arg("--storage.tsdb.retention.time=1d")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr);
        let mut child = GroupChild::spawn(&mut cmd).map_err(PrometheusError::Spawn)?;

        let ready_url = format!("{}/-/ready", self.url());
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(self.not_ready(format!("exited with {status}")));
            }
            if let Ok(resp) = self.http.get(&ready_url).send().await {
                if resp.status().is_success() {
                    break;
                }
            }
            if tokio::time::Instant::now() > deadline {
                child.kill().await;
                return Err(self.not_ready(format!("no answer after {READY_TIMEOUT:?}")));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.child = Some(child);
        Ok(())
    }

    fn not_ready(&self, reason: String) -> PrometheusError {
        let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        PrometheusError::NotReady {
            url: self.url(),
            reason,
            log: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        }
    }

    /// Instant query; returns `data.result` (a vector of `{metric, value}` objects for vector results).
    pub async fn query(&self, promql: &str) -> Result<serde_json::Value> {
        let query_err = |reason: String| PrometheusError::Query {
            query: promql.to_string(),
            reason,
        };
        let resp = self
            .http
            .get(format!("{}/api/v1/query", self.url()))
            .query(&[("query", promql)])
            .send()
            .await
            .map_err(|e| query_err(e.to_string()))?;
        let body: serde_json::Value = resp.json().await.map_err(|e| query_err(e.to_string()))?;
        if body["status"] != "success" {
            return Err(query_err(format!(
                "{}: {}",
                body["errorType"], body["error"]
            )));
        }
        Ok(body["data"]["result"].clone())
    }

    /// Addresses of the scrape targets that are currently up (`up == 1`) in the embedders job.
    pub async fn healthy_targets(&self) -> Result<Vec<String>> {
        let result = self.query(&format!("up{{job=\"{JOB}\"}} == 1")).await?;
        let mut targets: Vec<String> = result
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["metric"]["instance"].as_str().map(str::to_string))
            .collect();
        targets.sort();
        Ok(targets)
    }
}

fn which(binary: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(binary))
            .find(|p| p.is_file())
    })
}

/// A port the kernel considers free right now (bound to port 0 and released).
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_scrapes_the_file_sd_targets_at_the_interval() {
        let text = render_config(Path::new("/w/targets.json"), Duration::from_secs(1));
        let yaml: serde_yaml::Value = serde_yaml::from_str(&text).expect("valid YAML");
        let job = &yaml["scrape_configs"][0];
        assert_eq!(job["job_name"], JOB);
        assert_eq!(job["scrape_interval"], "1000ms");
        assert_eq!(job["file_sd_configs"][0]["files"][0], "/w/targets.json");
    }

    #[test]
    fn file_sd_lists_targets_with_their_labels() {
        let groups = [FileSdGroup {
            targets: vec!["127.0.0.1:4000".into()],
            labels: BTreeMap::from([("deployment".to_string(), "akidb-candle".to_string())]),
        }];
        let json: serde_json::Value = serde_json::from_str(&render_file_sd(&groups)).unwrap();
        assert_eq!(json[0]["targets"][0], "127.0.0.1:4000");
        assert_eq!(json[0]["labels"]["deployment"], "akidb-candle");
        assert_eq!(render_file_sd(&[]).trim(), "[]");
    }
}
