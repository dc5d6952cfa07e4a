//! TEST HARNESS: ingress emulator. Watches Ingress, Service and EndpointSlice objects of one
//! namespace and serves them with a real nginx (Debian package) on 127.0.0.1, using ingress-nginx's
//! canary-by-weight semantics (see [`crate::nginx`]). Every change is validated with `nginx -t`,
//! applied with a reload (SIGHUP) and confirmed by asking nginx for the new generation number.
//! Responses carry `x-upstream` (endpoint address) and `x-ingress-backend` (upstream name).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::Ingress;
use kube::Client;
use tokio::process::Command;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::child::GroupChild;
use crate::nginx::{self, NginxSettings, Route, RouteOptions, GENERATION_PATH, STATUS_HOST};
use crate::reflect::Watched;

#[derive(Debug, thiserror::Error)]
pub enum IngressError {
    #[error("nginx binary not found at {0} (install the Debian package: apt-get install nginx)")]
    NginxMissing(PathBuf),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("nginx rejected the rendered configuration {conf}: {stderr}")]
    InvalidConfig { conf: PathBuf, stderr: String },
    #[error("nginx did not serve generation {generation} within {timeout:?} (see {log})")]
    NotServing {
        generation: u64,
        timeout: Duration,
        log: PathBuf,
    },
    #[error("nginx exited: {0}")]
    NginxExited(String),
    #[error("timed out after {0:?} waiting for the ingress emulator: {1}")]
    Timeout(Duration, String),
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> IngressError {
    let context = context.into();
    move |source| IngressError::Io { context, source }
}

/// Settings of the emulator.
#[derive(Debug, Clone)]
pub struct IngressEmulatorConfig {
    pub namespace: String,
    /// nginx prefix: config, pid, logs, temp files.
    pub workdir: PathBuf,
    /// Port nginx listens on (127.0.0.1); 0 picks a free one.
    pub listen_port: u16,
    pub nginx_bin: PathBuf,
    pub ingress_class: Option<String>,
    /// Coalesce bursts of watch events into one reload.
    pub debounce: Duration,
}

impl IngressEmulatorConfig {
    pub fn new(namespace: impl Into<String>, workdir: impl Into<PathBuf>) -> Self {
        Self {
            namespace: namespace.into(),
            workdir: workdir.into(),
            listen_port: 0,
            nginx_bin: default_nginx_bin(),
            ingress_class: None,
            debounce: Duration::from_millis(100),
        }
    }
}

/// `E2E_NGINX_BIN`, else `nginx` on PATH, else `/usr/sbin/nginx` (Debian).
pub fn default_nginx_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("E2E_NGINX_BIN") {
        return p.into();
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join("nginx"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| "/usr/sbin/nginx".into())
}

/// A free TCP port on 127.0.0.1 (bound and released: a tiny race is accepted in the harness).
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// What nginx currently serves.
#[derive(Debug, Clone, Default)]
pub struct Applied {
    pub generation: u64,
    pub routes: Vec<Route>,
    /// Last failure to apply a change (the previous configuration stays in force).
    pub error: Option<String>,
}

/// A running emulator; dropping it stops nginx.
pub struct IngressEmulator {
    port: u16,
    workdir: PathBuf,
    applied: watch::Receiver<Applied>,
    task: JoinHandle<()>,
}

impl Drop for IngressEmulator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Nginx {
    bin: PathBuf,
    workdir: PathBuf,
    settings: NginxSettings,
    child: Option<GroupChild>,
    probe: reqwest::Client,
}

impl Nginx {
    fn conf(&self) -> PathBuf {
        self.workdir.join("nginx.conf")
    }

    fn base_args(&self, conf: &Path) -> Vec<std::ffi::OsString> {
        vec![
            "-p".into(),
            self.workdir.clone().into_os_string(),
            "-c".into(),
            conf.as_os_str().to_owned(),
            "-e".into(),
            self.workdir.join("error.log").into_os_string(),
        ]
    }

    /// Write `text` as a candidate, validate it with `nginx -t`, then make it the configuration.
    async fn install(&self, text: &str) -> Result<(), IngressError> {
        let candidate = self.workdir.join("nginx.conf.new");
        tokio::fs::write(&candidate, text)
            .await
            .map_err(io(format!("writing {}", candidate.display())))?;
        let out = Command::new(&self.bin)
            .args(self.base_args(&candidate))
            .arg("-t")
            .output()
            .await
            .map_err(io(format!("running {} -t", self.bin.display())))?;
        if !out.status.success() {
            return Err(IngressError::InvalidConfig {
                conf: candidate,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        tokio::fs::rename(&candidate, self.conf())
            .await
            .map_err(io("installing nginx.conf"))
    }

    async fn start(&mut self) -> Result<(), IngressError> {
        kill_orphaned_workers(&self.workdir);
        // nginx unlinks its unix socket only on a clean exit.
        let _ = std::fs::remove_file(self.workdir.join("no-endpoints.sock"));
        let mut cmd = Command::new(&self.bin);
        cmd.args(self.base_args(&self.conf()))
            .args(["-g", "daemon off;"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        self.child = Some(
            GroupChild::spawn(&mut cmd).map_err(io(format!("starting {}", self.bin.display())))?,
        );
        Ok(())
    }

    /// Has the master exited? Then report how.
    fn exited(&mut self) -> Option<String> {
        match self.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(Some(status))) => Some(status.to_string()),
            Some(Err(e)) => Some(e.to_string()),
            Some(Ok(None)) => None,
            None => Some("not started".into()),
        }
    }

    /// Poll nginx until it answers `generation` on a fresh connection (old workers close their
    /// listeners on reload, so a fresh connection reaches the new configuration).
    async fn wait_serving(
        &mut self,
        generation: u64,
        timeout: Duration,
    ) -> Result<(), IngressError> {
        let url = format!(
            "http://127.0.0.1:{}{GENERATION_PATH}",
            self.settings.listen_port
        );
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(how) = self.exited() {
                return Err(IngressError::NginxExited(format!(
                    "{how}; see {}",
                    self.workdir.join("error.log").display()
                )));
            }
            let got = self
                .probe
                .get(&url)
                .header("host", STATUS_HOST)
                .send()
                .await;
            if let Ok(resp) = got {
                if resp.text().await.ok().as_deref() == Some(generation.to_string().as_str()) {
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() > deadline {
                return Err(IngressError::NotServing {
                    generation,
                    timeout,
                    log: self.workdir.join("error.log"),
                });
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Worker processes of the running master (children whose title says `worker process`).
    fn workers(&self) -> Vec<(i32, String)> {
        let Some(master) = self.child.as_ref().map(|c| c.pid()) else {
            return Vec::new();
        };
        processes()
            .filter(|p| p.ppid == Some(master))
            .map(|p| {
                let title = std::fs::read(format!("/proc/{}/cmdline", p.pid))
                    .map(|b| {
                        String::from_utf8_lossy(&b)
                            .replace('\0', " ")
                            .trim()
                            .to_string()
                    })
                    .unwrap_or_default();
                (p.pid, title)
            })
            .collect()
    }

    /// After a reload, old workers keep accepting on the shared listen socket until they handle
    /// the master's shutdown signal; wait until each has exited or says "shutting down", so that
    /// every new connection reaches the new configuration.
    async fn wait_old_workers(&self, old: &[i32], timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let still_accepting = self
                .workers()
                .into_iter()
                .any(|(pid, title)| old.contains(&pid) && !title.contains("shutting down"));
            if !still_accepting || tokio::time::Instant::now() > deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Render, validate, install and make nginx serve `routes` as `generation`.
    async fn apply(&mut self, routes: &[Route], generation: u64) -> Result<(), IngressError> {
        self.settings.generation = generation;
        let text = nginx::render(routes, &self.settings);
        self.install(&text).await?;
        match self.exited() {
            Some(how) => {
                if self.child.is_some() {
                    tracing::warn!(%how, "nginx had exited; starting it again");
                }
                self.start().await?;
            }
            None => {
                let old: Vec<i32> = self.workers().into_iter().map(|(pid, _)| pid).collect();
                if let Some(c) = &self.child {
                    c.signal(libc::SIGHUP);
                }
                self.wait_serving(generation, Duration::from_secs(15))
                    .await?;
                self.wait_old_workers(&old, Duration::from_secs(5)).await;
                return Ok(());
            }
        }
        self.wait_serving(generation, Duration::from_secs(15)).await
    }
}

/// nginx workers do not follow a master that was SIGKILLed (the harness died without cleanup and
/// `PR_SET_PDEATHSIG` took the master): such orphans still hold this workdir's logs, socket and
/// maybe its port. Kill the orphaned nginx processes with a file open under `workdir`.
/// One process of `/proc`, with its parent pid and raw `stat` line.
struct ProcStat {
    pid: i32,
    ppid: Option<i32>,
    stat: String,
}

/// The processes visible in `/proc` (those that vanish while reading are skipped).
fn processes() -> impl Iterator<Item = ProcStat> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.parse::<i32>().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // Fields after the parenthesised command: state ppid ...
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<i32>().ok());
            Some(ProcStat { pid, ppid, stat })
        })
}

fn kill_orphaned_workers(workdir: &Path) {
    for ProcStat { pid, ppid, stat } in processes() {
        let is_orphaned_nginx = stat.contains("(nginx)") && ppid == Some(1);
        if !is_orphaned_nginx {
            continue;
        }
        let holds_workdir = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|fd| std::fs::read_link(fd.path()).ok())
            .any(|target| target.starts_with(workdir));
        if holds_workdir {
            tracing::warn!(
                pid,
                "killing an orphaned nginx worker of {}",
                workdir.display()
            );
            // SAFETY: plain syscall.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

impl IngressEmulator {
    /// Start nginx (serving nothing yet) and the watch loop. Fails with a clear message when the
    /// nginx binary is missing or cannot serve.
    pub async fn start(client: Client, cfg: IngressEmulatorConfig) -> Result<Self, IngressError> {
        if !cfg.nginx_bin.is_file() {
            return Err(IngressError::NginxMissing(cfg.nginx_bin.clone()));
        }
        let workdir = std::path::absolute(&cfg.workdir).map_err(io("resolving the workdir"))?;
        tokio::fs::create_dir_all(workdir.join("tmp"))
            .await
            .map_err(io(format!("creating {}", workdir.display())))?;
        let port = if cfg.listen_port == 0 {
            free_port().map_err(io("picking a free port"))?
        } else {
            cfg.listen_port
        };
        // SAFETY: plain syscall.
        let root = unsafe { libc::geteuid() } == 0;
        let mut nginx = Nginx {
            bin: cfg.nginx_bin.clone(),
            workdir: workdir.clone(),
            settings: NginxSettings {
                namespace: cfg.namespace.clone(),
                listen_port: port,
                workdir: workdir.clone(),
                generation: 0,
                user: root.then(|| "root".to_string()),
            },
            child: None,
            probe: reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .timeout(Duration::from_secs(1))
                .build()
                .expect("reqwest client"),
        };
        nginx.apply(&[], 1).await?;
        let (tx, rx) = watch::channel(Applied {
            generation: 1,
            routes: Vec::new(),
            error: None,
        });
        let task = tokio::spawn(watch_loop(client, cfg, nginx, tx));
        Ok(Self {
            port,
            workdir,
            applied: rx,
            task,
        })
    }

    /// Base URL of the ingress: `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// nginx prefix directory (config, logs).
    pub fn workdir(&self) -> &Path {
        &self.workdir
    }

    /// What nginx serves right now; changes after every applied reload.
    pub fn applied(&self) -> watch::Receiver<Applied> {
        self.applied.clone()
    }

    /// Wait until nginx serves a route table satisfying `pred`.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&Applied) -> bool,
    ) -> Result<Applied, IngressError> {
        let mut rx = self.applied.clone();
        let res = tokio::time::timeout(timeout, async {
            loop {
                {
                    let cur = rx.borrow_and_update();
                    if pred(&cur) {
                        return Ok(cur.clone());
                    }
                }
                if rx.changed().await.is_err() {
                    return Err(IngressError::NginxExited("ingress emulator stopped".into()));
                }
            }
        })
        .await;
        match res {
            Ok(r) => r,
            Err(_) => {
                let cur = self.applied.borrow().clone();
                Err(IngressError::Timeout(
                    timeout,
                    format!(
                        "{what}; serving generation {} with routes {:?}, last error {:?}",
                        cur.generation, cur.routes, cur.error
                    ),
                ))
            }
        }
    }
}

async fn watch_loop(
    client: Client,
    cfg: IngressEmulatorConfig,
    mut nginx: Nginx,
    tx: watch::Sender<Applied>,
) {
    let changed = Arc::new(Notify::new());
    let ingresses = Watched::<Ingress>::start(client.clone(), &cfg.namespace, changed.clone());
    let services = Watched::<Service>::start(client.clone(), &cfg.namespace, changed.clone());
    let slices = Watched::<EndpointSlice>::start(client, &cfg.namespace, changed.clone());
    ingresses.ready().await;
    services.ready().await;
    slices.ready().await;
    let opts = RouteOptions {
        ingress_class: cfg.ingress_class.clone(),
    };
    let mut generation = 1;
    let mut served: Vec<Route> = Vec::new();
    let mut pending_error = false;
    loop {
        let routes = nginx::routes(
            &ingresses.objects(),
            &services.objects(),
            &slices.objects(),
            &opts,
        );
        if routes != served || pending_error || nginx.exited().is_some() {
            generation += 1;
            match nginx.apply(&routes, generation).await {
                Ok(()) => {
                    tracing::info!(generation, routes = ?routes, "ingress emulator: nginx reloaded");
                    served = routes.clone();
                    pending_error = false;
                    tx.send_replace(Applied {
                        generation,
                        routes,
                        error: None,
                    });
                }
                Err(e) => {
                    tracing::error!(error = %e, "ingress emulator: change not applied");
                    pending_error = true;
                    tx.send_modify(|a| a.error = Some(e.to_string()));
                }
            }
        }
        // Wake on a change, or every second to notice a dead nginx or retry a failed apply.
        let _ = tokio::time::timeout(Duration::from_secs(1), changed.notified()).await;
        tokio::time::sleep(cfg.debounce).await;
    }
}
