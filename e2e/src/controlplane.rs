//! TEST HARNESS: a local Kubernetes control plane (etcd + kube-apiserver built from Go modules).
//!
//! [`ControlPlane::start`] runs `e2e/controlplane/up.sh --foreground` in its own process group and waits
//! for the `controlplane.env` it writes once `/readyz` answers. Dropping the [`ControlPlane`] kills the group
//! (up.sh, etcd, kube-apiserver); if the test process dies without running destructors, up.sh gets
//! SIGKILL from `PR_SET_PDEATHSIG` and the servers follow it (up.sh starts them with `setpriv --pdeathsig`).
//!
//! There is no controller-manager, scheduler or kubelet: no Pods run, no garbage collection, namespaces
//! stay Terminating when deleted and no namespace gets a `default` ServiceAccount.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{AuthInfo, KubeConfigOptions, Kubeconfig};
use kube::core::GroupVersionKind;
use kube::discovery::Scope;
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, Config};
use serde::Deserialize;
use tokio::process::Command;

use crate::child::GroupChild;

/// How long up.sh may take from start to a ready API server. Seconds are normal; a loaded CI machine
/// gets headroom.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(180);

#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    #[error(
        "{missing} not found in {dir}: run `make controlplane` first (builds kube-apiserver and etcd from \
         Go modules; 10-20 min cold, seconds when cached)"
    )]
    BinariesMissing { missing: String, dir: PathBuf },
    #[error("cannot start {what}: {source}")]
    Spawn {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the control plane did not start (up.sh: {reason}); its output:\n{log}")]
    Startup { reason: String, log: String },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} lacks {key}")]
    MissingKey { path: PathBuf, key: &'static str },
    #[error("kube-apiserver restart: {0}")]
    Restart(String),
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("kubernetes client: {0}")]
    Client(#[from] kube::Error),
    #[error("TokenRequest for {namespace}/{name} returned no token")]
    NoToken { namespace: String, name: String },
    #[error("manifest document {index}: {reason}")]
    Manifest { index: usize, reason: String },
    #[error("CRD {name} not Established and served by discovery within {timeout:?}")]
    CrdNotEstablished { name: String, timeout: Duration },
}

type Result<T, E = ControlPlaneError> = std::result::Result<T, E>;

/// The node of a control plane started with [`ControlPlane::start_node`].
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub name: String,
    /// The node's address on the pod bridge; the API server listens there.
    pub ip: String,
    pub pod_cidr: String,
    /// containerd's socket (`ctr --address`), namespace `k8s.io`.
    pub containerd_socket: PathBuf,
}

/// How the control plane's process tree ends when the [`ControlPlane`] is dropped.
enum Process {
    /// Killed with its group (no machine-wide state to undo).
    Plain { _child: GroupChild },
    /// up.sh --node: SIGTERM, so its trap removes the pods, the bridge and the chains; waited for.
    Node(GroupChild),
    /// Owned elsewhere ([`ControlPlane::attach`]).
    None,
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Process::Node(child) = self {
            child.signal(libc::SIGTERM);
            let deadline = std::time::Instant::now() + NODE_STOP_TIMEOUT;
            while std::time::Instant::now() < deadline {
                if !matches!(child.try_wait(), Ok(None)) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// How long up.sh --node may take to stop the node's pods and undo its machine-wide state.
const NODE_STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// A running etcd + kube-apiserver pair with an admin and a restricted client.
pub struct ControlPlane {
    /// kubeconfig with the contexts `admin` (current; user `e2e-admin` in `system:masters`) and `dev`
    /// (user `e2e-dev` in group `e2e-devs`, bound to nothing).
    pub kubeconfig_path: PathBuf,
    /// `https://127.0.0.1:<port>`
    pub api_url: String,
    /// PEM file of the CA that signed the API server's certificate.
    pub ca_path: PathBuf,
    pub admin: Client,
    pub dev: Client,
    pub admin_token: String,
    pub dev_token: String,
    /// Set when started with [`ControlPlane::start_node`] (or attached to one).
    pub node: Option<NodeInfo>,
    workdir: PathBuf,
    admin_config: Config,
    // Held for its Drop: stops up.sh and the servers.
    _process: Process,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("api_url", &self.api_url)
            .field("kubeconfig_path", &self.kubeconfig_path)
            .finish_non_exhaustive()
    }
}

/// Where `make controlplane` puts the binaries; `E2E_CONTROLPLANE_BIN` overrides.
pub fn bin_dir() -> PathBuf {
    std::env::var_os("E2E_CONTROLPLANE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| scripts_dir().join("bin"))
}

fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("controlplane")
}

/// Fails with the "run make controlplane" message when a binary is missing.
pub fn check_binaries(dir: &Path) -> Result<()> {
    let missing: Vec<&str> = ["kube-apiserver", "etcd"]
        .into_iter()
        .filter(|b| !dir.join(b).is_file())
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(ControlPlaneError::BinariesMissing {
            missing: missing.join(" and "),
            dir: dir.to_path_buf(),
        })
    }
}

impl ControlPlane {
    /// Starts etcd and kube-apiserver with state, certificates, logs and the kubeconfig under `workdir`
    /// (created if missing). Returns once `/readyz` answers.
    pub async fn start(workdir: &Path) -> Result<Self> {
        Self::launch(workdir, None).await
    }

    /// [`ControlPlane::start`] plus a real node (up.sh --node: controller-manager, scheduler,
    /// containerd, kubelet, kube-proxy) whose containerd holds the image archives in `images`
    /// (e2e/images/build.sh). Needs root. The node's machine-wide state (bridge, iptables chains,
    /// cgroups) is removed when this is dropped, or when the thread that called this dies.
    pub async fn start_node(workdir: &Path, images: &Path) -> Result<Self> {
        Self::launch(workdir, Some(images)).await
    }

    /// Clients for a control plane another thread started in `workdir` (it keeps the processes).
    pub async fn attach(workdir: &Path) -> Result<Self> {
        Self::connect(workdir.to_path_buf(), Process::None).await
    }

    async fn launch(workdir: &Path, node_images: Option<&Path>) -> Result<Self> {
        let bin = bin_dir();
        check_binaries(&bin)?;
        std::fs::create_dir_all(workdir).map_err(|source| ControlPlaneError::Write {
            path: workdir.to_path_buf(),
            source,
        })?;
        let workdir = workdir
            .canonicalize()
            .map_err(|source| ControlPlaneError::Read {
                path: workdir.to_path_buf(),
                source,
            })?;
        let log_path = workdir.join("up.log");
        let log = std::fs::File::create(&log_path).map_err(|source| ControlPlaneError::Write {
            path: log_path.clone(),
            source,
        })?;

        // up.sh writes controlplane.env (atomically) once /readyz answers; a stale one must not count.
        let env_path = workdir.join("controlplane.env");
        let _ = std::fs::remove_file(&env_path);
        let script = scripts_dir().join("up.sh");
        let stderr = log.try_clone().map_err(|source| ControlPlaneError::Write {
            path: log_path.clone(),
            source,
        })?;
        let mut cmd = Command::new("bash");
        cmd.arg(&script).arg("--foreground");
        if let Some(images) = node_images {
            cmd.arg("--node").env("NODE_IMAGES", images);
        }
        cmd.arg(&workdir)
            .env("BIN", &bin)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr);
        let spawn_err = |source| ControlPlaneError::Spawn {
            what: script.display().to_string(),
            source,
        };
        let mut process = if node_images.is_some() {
            GroupChild::spawn_with_death_signal(&mut cmd, libc::SIGTERM).map_err(spawn_err)?
        } else {
            GroupChild::spawn(&mut cmd).map_err(spawn_err)?
        };

        let startup_failed = |reason: String| ControlPlaneError::Startup {
            reason,
            log: std::fs::read_to_string(&log_path).unwrap_or_default(),
        };
        let deadline = tokio::time::Instant::now() + STARTUP_TIMEOUT;
        while !env_path.exists() {
            if let Ok(Some(status)) = process.try_wait() {
                return Err(startup_failed(format!("exited with {status} before ready")));
            }
            if tokio::time::Instant::now() > deadline {
                return Err(startup_failed(format!(
                    "not ready after {STARTUP_TIMEOUT:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let process = if node_images.is_some() {
            Process::Node(process)
        } else {
            Process::Plain { _child: process }
        };
        Self::connect(workdir, process).await
    }

    async fn connect(workdir: PathBuf, process: Process) -> Result<Self> {
        let env_path = workdir.join("controlplane.env");
        let env = read_env_file(&env_path)?;
        let get = |key: &'static str| {
            env.get(key)
                .cloned()
                .ok_or_else(|| ControlPlaneError::MissingKey {
                    path: env_path.clone(),
                    key,
                })
        };
        let api_url = get("API_URL")?;
        let ca_path = PathBuf::from(get("CA_FILE")?);
        let admin_token = get("ADMIN_TOKEN")?;
        let kubeconfig_path = PathBuf::from(get("KUBECONFIG")?);
        let dev_token = get("DEV_TOKEN")?;
        let node = match env.get("NODE_NAME") {
            Some(name) => Some(NodeInfo {
                name: name.clone(),
                ip: get("NODE_IP")?,
                pod_cidr: get("POD_CIDR")?,
                containerd_socket: PathBuf::from(get("CONTAINERD_SOCK")?),
            }),
            None => None,
        };

        crate::use_ring_crypto();
        let admin_config = config_for_context(&kubeconfig_path, "admin").await?;
        let dev_config = config_for_context(&kubeconfig_path, "dev").await?;
        Ok(Self {
            kubeconfig_path,
            api_url,
            ca_path,
            admin: Client::try_from(admin_config.clone())?,
            dev: Client::try_from(dev_config)?,
            admin_token,
            dev_token,
            node,
            workdir,
            admin_config,
            _process: process,
        })
    }

    /// [`apply_yaml`] with the admin identity (field manager `e2e-admin`).
    pub async fn apply_as_admin(&self, yaml: &str) -> Result<Vec<DynamicObject>> {
        apply_yaml(&self.admin, yaml, "e2e-admin").await
    }

    /// The directory holding etcd's data, the certificates, `etcd.log` and `apiserver.log`.
    pub fn workdir(&self) -> &Path {
        &self.workdir
    }

    /// Restarts kube-apiserver (SIGTERM, then the same command line; etcd keeps the state) through
    /// up.sh (`--foreground`: SIGUSR1 to the pid in `up.pid`); returns once it is ready again, with
    /// how long up.sh measured from the signal to `/readyz`.
    pub async fn restart_apiserver(&self) -> Result<Duration> {
        let restarts = self.workdir.join("apiserver.restarts");
        let count = |p: &Path| {
            std::fs::read_to_string(p)
                .map(|s| s.lines().count())
                .unwrap_or(0)
        };
        let before = count(&restarts);
        let pid_path = self.workdir.join("up.pid");
        let pid: i32 = std::fs::read_to_string(&pid_path)
            .map_err(|source| ControlPlaneError::Read {
                path: pid_path.clone(),
                source,
            })?
            .trim()
            .parse()
            .map_err(|e| ControlPlaneError::Restart(format!("{}: {e}", pid_path.display())))?;
        // SAFETY: kill(2) with a pid read from up.pid and a valid signal number; no memory is shared.
        if unsafe { libc::kill(pid, libc::SIGUSR1) } != 0 {
            return Err(ControlPlaneError::Restart(format!(
                "signalling up.sh ({pid}): {}",
                std::io::Error::last_os_error()
            )));
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        while count(&restarts) == before {
            if tokio::time::Instant::now() > deadline {
                return Err(ControlPlaneError::Restart(
                    "not ready again within 90 s (see apiserver.log)".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let last = std::fs::read_to_string(&restarts).unwrap_or_default();
        let ms: u64 = last
            .lines()
            .last()
            .and_then(|l| l.split_whitespace().nth(2))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        Ok(Duration::from_millis(ms))
    }

    /// A client that authenticates with `token` (same server and CA as the admin client).
    pub fn client_for_token(&self, token: &str) -> Result<Client> {
        crate::use_ring_crypto();
        Ok(Client::try_from(self.config_for_token(token))?)
    }

    fn config_for_token(&self, token: &str) -> Config {
        let mut config = self.admin_config.clone();
        config.auth_info = AuthInfo {
            token: Some(token.to_string().into()),
            ..AuthInfo::default()
        };
        config
    }

    /// Writes a kubeconfig at `path` for a process (e.g. the operator binary) that must act as the
    /// holder of `token` rather than as admin.
    pub fn write_kubeconfig(&self, path: &Path, user: &str, token: &str) -> Result<()> {
        let text = render_kubeconfig(&self.api_url, &self.ca_path, user, token);
        std::fs::write(path, text).map_err(|source| ControlPlaneError::Write {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Creates namespace `namespace` and ServiceAccount `name` in it when missing, and returns a token
    /// for `system:serviceaccount:<namespace>:<name>` from the TokenRequest API (the API server signs it
    /// itself; no controller-manager is involved).
    pub async fn service_account_token(
        &self,
        namespace: &str,
        name: &str,
        ttl: Duration,
    ) -> Result<String> {
        let pp = PostParams::default();
        let namespaces: Api<Namespace> = Api::all(self.admin.clone());
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(namespace.to_string()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        ignore_conflict(namespaces.create(&pp, &ns).await)?;
        let accounts: Api<ServiceAccount> = Api::namespaced(self.admin.clone(), namespace);
        let sa = ServiceAccount {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                ..ObjectMeta::default()
            },
            ..ServiceAccount::default()
        };
        ignore_conflict(accounts.create(&pp, &sa).await)?;
        let request = TokenRequest {
            spec: TokenRequestSpec {
                expiration_seconds: Some(ttl.as_secs().max(600) as i64),
                ..TokenRequestSpec::default()
            },
            ..TokenRequest::default()
        };
        let issued = accounts.create_token_request(name, &pp, &request).await?;
        issued
            .status
            .map(|s| s.token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ControlPlaneError::NoToken {
                namespace: namespace.to_string(),
                name: name.to_string(),
            })
    }
}

/// How long an applied CRD may take to be served.
const CRD_ESTABLISHED_TIMEOUT: Duration = Duration::from_secs(30);

/// `kubectl apply --server-side -f` for a multi-document YAML string: every object is applied as
/// `field_manager` with `client`'s identity, in order. After a CustomResourceDefinition it waits until
/// the CRD is Established, so a later document may be of the new kind. Namespaced objects without a
/// namespace go to `default`. Returns the objects as the server stored them.
pub async fn apply_yaml(
    client: &Client,
    yaml: &str,
    field_manager: &str,
) -> Result<Vec<DynamicObject>> {
    let mut applied = Vec::new();
    for (index, doc) in serde_yaml::Deserializer::from_str(yaml).enumerate() {
        let bad = |reason: String| ControlPlaneError::Manifest { index, reason };
        let value = serde_yaml::Value::deserialize(doc).map_err(|e| bad(e.to_string()))?;
        if value.is_null() {
            continue; // an empty document, e.g. after a trailing `---`
        }
        let obj: DynamicObject = serde_yaml::from_value(value).map_err(|e| bad(e.to_string()))?;
        let types = obj
            .types
            .as_ref()
            .ok_or_else(|| bad("no apiVersion/kind".into()))?;
        let gvk = GroupVersionKind::try_from(types).map_err(|e| bad(e.to_string()))?;
        let name = obj
            .metadata
            .name
            .clone()
            .ok_or_else(|| bad("no metadata.name".into()))?;
        let (resource, caps) = kube::discovery::pinned_kind(client, &gvk)
            .await
            .map_err(|e| bad(format!("{}/{}: {e}", gvk.api_version(), gvk.kind)))?;
        let api: Api<DynamicObject> = match caps.scope {
            Scope::Namespaced => {
                let ns = obj.metadata.namespace.as_deref().unwrap_or("default");
                Api::namespaced_with(client.clone(), ns, &resource)
            }
            Scope::Cluster => Api::all_with(client.clone(), &resource),
        };
        let params = PatchParams::apply(field_manager).force();
        let stored = api.patch(&name, &params, &Patch::Apply(&obj)).await?;
        if gvk.group == "apiextensions.k8s.io" && gvk.kind == "CustomResourceDefinition" {
            wait_crd_established(client, &name).await?;
        }
        applied.push(stored);
    }
    Ok(applied)
}

/// Waits until the CRD `name` is Established and discovery lists its kind in every served version.
///
/// Established alone is not enough for a client that resolves kinds through discovery (as kubectl and
/// `apply_yaml` do): the API server's discovery controller publishes `/apis/<group>/<version>` on its
/// own queue, so for a moment after Established that path can still answer 404 (seen in CI:
/// "404 page not found" for the document right after its CRD). kubectl hides this by refreshing its
/// discovery cache and retrying; here we wait for the condition itself, bounded by the same timeout.
pub async fn wait_crd_established(client: &Client, name: &str) -> Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let served = async {
        let crd = await_condition(crds, name, conditions::is_crd_established())
            .await
            .map_err(|e| ControlPlaneError::Manifest {
                index: 0,
                reason: format!("watching CRD {name}: {e}"),
            })?
            .ok_or_else(|| ControlPlaneError::Manifest {
                index: 0,
                reason: format!("CRD {name} was deleted while waiting for it"),
            })?;
        let group = &crd.spec.group;
        let plural = &crd.spec.names.plural;
        for version in crd.spec.versions.iter().filter(|v| v.served) {
            let api_version = format!("{group}/{}", version.name);
            loop {
                match client.list_api_group_resources(&api_version).await {
                    Ok(list) if list.resources.iter().any(|r| &r.name == plural) => break,
                    // Not published yet (404, or the group listed without this kind): poll again.
                    Ok(_) | Err(kube::Error::Api(_)) => {
                        tokio::time::sleep(Duration::from_millis(100)).await
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(())
    };
    match tokio::time::timeout(CRD_ESTABLISHED_TIMEOUT, served).await {
        Ok(result) => result,
        Err(_) => Err(ControlPlaneError::CrdNotEstablished {
            name: name.to_string(),
            timeout: CRD_ESTABLISHED_TIMEOUT,
        }),
    }
}

fn ignore_conflict<T>(result: kube::Result<T>) -> kube::Result<()> {
    match result {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

async fn config_for_context(kubeconfig: &Path, context: &str) -> Result<Config> {
    let to_err = |source| ControlPlaneError::Kubeconfig {
        path: kubeconfig.to_path_buf(),
        source,
    };
    let parsed = Kubeconfig::read_from(kubeconfig).map_err(to_err)?;
    let options = KubeConfigOptions {
        context: Some(context.to_string()),
        ..KubeConfigOptions::default()
    };
    Config::from_custom_kubeconfig(parsed, &options)
        .await
        .map_err(to_err)
}

fn read_env_file(path: &Path) -> Result<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path).map_err(|source| ControlPlaneError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(parse_env(&text))
}

/// `KEY=VALUE` lines (no quoting; up.sh writes none).
fn parse_env(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// A single-context kubeconfig for `user` authenticating with `token`.
pub fn render_kubeconfig(api_url: &str, ca_path: &Path, user: &str, token: &str) -> String {
    // JSON strings are valid YAML scalars and quote whatever the values hold.
    let q = |s: &str| serde_json::to_string(s).expect("a string serialises");
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: e2e\n  cluster: {{server: {server}, certificate-authority: {ca}}}\n\
         users:\n- name: {user}\n  user: {{token: {token}}}\n\
         contexts:\n- name: {user}\n  context: {{cluster: e2e, user: {user}}}\n\
         current-context: {user}\n",
        server = q(api_url),
        ca = q(&ca_path.to_string_lossy()),
        user = q(user),
        token = q(token),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_file_lines_become_a_map() {
        let env = parse_env("API_URL=https://127.0.0.1:1234\nADMIN_TOKEN=abc=\n\n");
        assert_eq!(env["API_URL"], "https://127.0.0.1:1234");
        // Only the first '=' separates; the value keeps the rest.
        assert_eq!(env["ADMIN_TOKEN"], "abc=");
    }

    #[test]
    fn rendered_kubeconfig_parses_with_the_user_as_current_context() {
        let text = render_kubeconfig(
            "https://127.0.0.1:6443",
            Path::new("/tmp/x/ca.crt"),
            "system:serviceaccount:e2e:op",
            "tok\"en",
        );
        let parsed = Kubeconfig::from_yaml(&text).expect("valid kubeconfig");
        assert_eq!(
            parsed.current_context.as_deref(),
            Some("system:serviceaccount:e2e:op")
        );
        let cluster = parsed.clusters[0].cluster.as_ref().expect("cluster");
        assert_eq!(cluster.server.as_deref(), Some("https://127.0.0.1:6443"));
        assert_eq!(
            cluster.certificate_authority.as_deref(),
            Some("/tmp/x/ca.crt")
        );
    }

    #[test]
    fn a_missing_binary_is_reported_with_the_make_target() {
        let dir = std::env::temp_dir().join("e2e-no-controlplane-bin");
        let err = check_binaries(&dir).expect_err("no binaries there");
        let msg = err.to_string();
        assert!(msg.contains("kube-apiserver and etcd"), "{msg}");
        assert!(msg.contains("make controlplane"), "{msg}");
    }
}
