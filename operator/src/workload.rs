//! The candidate's Deployment, Service and models ConfigMap, built from the rollout spec.
//!
//! Pure builders: the controller server-side-applies what they return, so building the same spec
//! twice must give the same object (no timestamps).

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentSpec},
        autoscaling::v2::{
            CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec,
            MetricSpec, MetricTarget, ResourceMetricSource,
        },
        core::v1::{
            Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EnvVar,
            HTTPGetAction, KeyToPath, Lifecycle, LifecycleHandler, PodSpec, PodTemplateSpec, Probe,
            SeccompProfile, SecurityContext, Service, ServicePort, ServiceSpec, SleepAction,
            Volume, VolumeMount,
        },
    },
    apimachinery::pkg::{
        apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference},
        util::intstr::IntOrString,
    },
};

use crate::crd::{candidate_labels, CandidateSpec, EmbeddingRollout};
pub use crate::crd::{CANDIDATE_HASH_ANNOTATION, ROLLOUT_LABEL};

pub const NAME_LABEL: &str = "app.kubernetes.io/name";
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGER: &str = "embedding-rollout-operator";

pub const CONTAINER_NAME: &str = "embedder";
pub const MODELS_DIR_FILE: &str = "/etc/candle/models.yaml";
const MODELS_KEY: &str = "models.yaml";
const MODELS_VOLUME: &str = "models";
const PORT_NAME: &str = "http";
/// How long a candidate pod keeps serving after Kubernetes decides to stop it, before SIGTERM:
/// endpoints and the ingress controller drop it meanwhile (Traefik applies a change up to 2 s
/// later), so requests already routed to it are answered, not refused. As the embedder chart's
/// `preStopSleepSeconds`; the user's `template` can set its own `lifecycle`.
pub const PRE_STOP_SLEEP_SECONDS: i64 = 5;

fn pre_stop_sleep() -> Lifecycle {
    Lifecycle {
        pre_stop: Some(LifecycleHandler {
            sleep: Some(SleepAction {
                seconds: PRE_STOP_SLEEP_SECONDS,
            }),
            ..LifecycleHandler::default()
        }),
        ..Lifecycle::default()
    }
}

/// What the candidate workload is made of: the rollout's `spec.candidate` and where it goes.
#[derive(Debug, Clone)]
pub struct CandidateWorkload<'a> {
    pub rollout: &'a str,
    pub namespace: &'a str,
    pub owner: OwnerReference,
    pub name: &'a str,
    pub replicas: i32,
    pub candidate: &'a CandidateSpec,
    /// The hash of the rollout in flight ([`pod_hash`] of its spec): annotated on the Deployment
    /// and its pod template, so the controller can tell whether the live Deployment runs the
    /// spec of the rollout in flight, and so a models-only change still rolls the pods.
    pub pod_hash: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkloadError {
    #[error("the rollout has no name, namespace or uid yet (not read from the API server?)")]
    Unidentified,
}

impl<'a> CandidateWorkload<'a> {
    /// Resolve the rollout's `spec.candidate` at `replicas`.
    pub fn for_rollout(
        r: &'a EmbeddingRollout,
        name: &'a str,
        replicas: i32,
    ) -> Result<Self, WorkloadError> {
        use kube::Resource;
        let owner = r
            .controller_owner_ref(&())
            .ok_or(WorkloadError::Unidentified)?;
        Ok(Self {
            rollout: r
                .meta()
                .name
                .as_deref()
                .ok_or(WorkloadError::Unidentified)?,
            namespace: r
                .meta()
                .namespace
                .as_deref()
                .ok_or(WorkloadError::Unidentified)?,
            owner,
            name,
            replicas,
            candidate: &r.spec.candidate,
            pod_hash: pod_hash(&r.spec.candidate),
        })
    }
}

/// Prefix of [`pod_hash`] values. Hashes written before it ([`earlier_pod_hashes`]: 16 hex digits
/// of the candidate's pod fields, then `t1-` before the default preStop sleep) are recognised so
/// an upgrade does not restart rollouts.
const POD_HASH_PREFIX: &str = "t2-";

/// Stable hash of the pod template the operator applies for this candidate spec (everything but
/// the hash annotation itself and the object's identity): a change of anything that reaches the
/// pods, `metricsService` and `template` included, restarts the rollout from step 0. Replica
/// counts and progressDeadline do not reach the pods and do not restart anything.
pub fn pod_hash(c: &CandidateSpec) -> String {
    // The labels carry the rollout's and the candidate's names, which a rollout cannot change
    // (a new candidate.name is a new Deployment); the hash covers the rest, plus that name.
    let template = pod_template("", c.name.as_deref().unwrap_or(""), c);
    hash_of(&template, c, POD_HASH_PREFIX)
}

/// The hashes earlier operator versions wrote for the same spec: [`legacy_pod_hash`], and the
/// template hash from before the default preStop sleep (prefix `t1-`). Read only to adopt the
/// rollouts they started, which then continue at their step (their pods roll once).
pub fn earlier_pod_hashes(c: &CandidateSpec) -> [String; 2] {
    let mut template = pod_template("", c.name.as_deref().unwrap_or(""), c);
    if let Some(embedder) = template
        .spec
        .as_mut()
        .and_then(|s| s.containers.iter_mut().find(|c| c.name == CONTAINER_NAME))
    {
        if embedder.lifecycle == Some(pre_stop_sleep()) {
            embedder.lifecycle = None;
        }
    }
    [legacy_pod_hash(c), hash_of(&template, c, "t1-")]
}

fn hash_of(template: &PodTemplateSpec, c: &CandidateSpec, prefix: &str) -> String {
    let mut input = serde_json::to_vec(template).unwrap_or_default();
    input.extend(c.name.as_deref().unwrap_or("").bytes());
    // The models file reaches the pod through its ConfigMap, not the template: without it here a
    // models-only change (INT8, max_tokens) would neither roll the pods nor restart the analysis.
    if let Some(models) = &c.models {
        input.push(0);
        input.extend(models.bytes());
    }
    format!("{prefix}{:016x}", fnv1a(&input))
}

/// The hash of operator versions before [`pod_hash`]: the candidate's pod fields only (it
/// missed `metricsService`). Read only to adopt rollouts started by them.
pub fn legacy_pod_hash(c: &CandidateSpec) -> String {
    let pod_fields = serde_json::json!({
        "image": c.image,
        "port": c.port,
        "args": c.args,
        "env": c.env,
        "resources": c.resources,
        "models": c.models,
    });
    format!(
        "{:016x}",
        fnv1a(&serde_json::to_vec(&pod_fields).unwrap_or_default())
    )
}

/// FNV-1a 64: tiny, stable across Rust versions and platforms (unlike `DefaultHasher`), and
/// collisions are harmless here (a spec change that collides would not restart the rollout,
/// at 2^-64 odds). serde_json's default map is ordered, so the serialisation is stable too.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

pub fn models_config_map_name(candidate: &str) -> String {
    format!("{candidate}-models")
}

/// Labels on every object the operator creates for a candidate, and the Deployment selector.
pub fn labels(candidate: &str, rollout: &str) -> BTreeMap<String, String> {
    candidate_labels(rollout, candidate)
}

fn object_labels(w: &CandidateWorkload<'_>) -> BTreeMap<String, String> {
    pod_labels(w.name, w.rollout)
}

fn meta(w: &CandidateWorkload<'_>, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(w.namespace.to_string()),
        labels: Some(object_labels(w)),
        owner_references: Some(vec![w.owner.clone()]),
        ..ObjectMeta::default()
    }
}

/// Container args. Host, port and service name go through the embedder's env vars instead, so
/// a runner that appends its own `--host/--port` (the e2e harness) does not collide with ours.
fn container_args(c: &CandidateSpec) -> Vec<String> {
    let mut args = Vec::new();
    if c.models.is_some() {
        args.push("--models".to_string());
        args.push(MODELS_DIR_FILE.to_string());
    }
    args.extend(c.args.iter().cloned());
    args
}

fn container_env(c: &CandidateSpec) -> Vec<EnvVar> {
    let ours = [
        ("EMBEDDER_HOST", "0.0.0.0".to_string()),
        ("EMBEDDER_PORT", c.port.to_string()),
        ("EMBEDDER_SERVICE_NAME", c.metrics_service.to_string()),
    ];
    // The user's env comes last: for duplicate names Kubernetes keeps the last one, so users can
    // override ours.
    ours.into_iter()
        .filter(|(k, _)| !c.env.iter().any(|e| e.name == *k))
        .map(|(k, v)| EnvVar {
            name: k.to_string(),
            value: Some(v),
            value_from: None,
        })
        .chain(c.env.iter().cloned())
        .collect()
}

fn probe(path: &str, initial_delay: i32, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_string()),
            port: IntOrString::String(PORT_NAME.to_string()),
            ..HTTPGetAction::default()
        }),
        initial_delay_seconds: Some(initial_delay),
        period_seconds: Some(5),
        failure_threshold: Some(failure_threshold),
        ..Probe::default()
    }
}

/// The embedder container the operator builds, before the user's template is merged.
fn embedder_container(c: &CandidateSpec) -> Container {
    let mut mounts = Vec::new();
    if c.models.is_some() {
        // subPath keeps the rest of /etc/candle from the image visible; models changes roll the
        // pods through the template hash instead of relying on live ConfigMap updates.
        mounts.push(VolumeMount {
            name: MODELS_VOLUME.to_string(),
            mount_path: MODELS_DIR_FILE.to_string(),
            sub_path: Some(MODELS_KEY.to_string()),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }
    Container {
        name: CONTAINER_NAME.to_string(),
        image: Some(c.image.to_string()),
        args: Some(container_args(c)),
        env: Some(container_env(c)),
        ports: Some(vec![ContainerPort {
            name: Some(PORT_NAME.to_string()),
            container_port: c.port,
            protocol: Some("TCP".to_string()),
            ..ContainerPort::default()
        }]),
        resources: c.resources.clone(),
        readiness_probe: Some(probe("/health/ready", 2, 3)),
        // Model loading can take a while; only restart a pod that stays dead.
        liveness_probe: Some(probe("/health/live", 10, 6)),
        lifecycle: Some(pre_stop_sleep()),
        volume_mounts: (!mounts.is_empty()).then_some(mounts),
        // Same hardening as the chart's embedder: the server writes nothing to its filesystem.
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_string()]),
                ..Capabilities::default()
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".to_string(),
                ..SeccompProfile::default()
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    }
}

/// The user's `embedder` entry of `template.spec.containers` onto ours (see `CandidatePodSpec`).
/// Name, image, command, args and ports stay ours (the schema rejects them there).
fn merge_embedder(ours: &mut Container, user: &Container, has_resources: bool) {
    if let Some(m) = &user.volume_mounts {
        ours.volume_mounts
            .get_or_insert_with(Vec::new)
            .extend(m.iter().cloned());
    }
    if let Some(e) = &user.env {
        // After ours, so the same name overrides, as with candidate.env.
        ours.env
            .get_or_insert_with(Vec::new)
            .extend(e.iter().cloned());
    }
    if user.env_from.is_some() {
        ours.env_from.clone_from(&user.env_from);
    }
    replace(&mut ours.security_context, &user.security_context);
    replace(&mut ours.readiness_probe, &user.readiness_probe);
    replace(&mut ours.liveness_probe, &user.liveness_probe);
    replace(&mut ours.startup_probe, &user.startup_probe);
    replace(&mut ours.lifecycle, &user.lifecycle);
    replace(&mut ours.image_pull_policy, &user.image_pull_policy);
    if !has_resources {
        replace(&mut ours.resources, &user.resources);
    }
}

/// `theirs` when set, else `mine`.
fn replace<T: Clone>(mine: &mut Option<T>, theirs: &Option<T>) {
    if theirs.is_some() {
        mine.clone_from(theirs);
    }
}

/// `None` for an empty list (the API server's omitted form, so applies stay quiet).
fn non_empty<T: Clone>(v: &[T]) -> Option<Vec<T>> {
    (!v.is_empty()).then(|| v.to_vec())
}

/// The candidate's pod template: the operator's pod with the user's `template` merged on.
/// Pure; `rollout` and `name` only set the labels.
pub fn pod_template(rollout: &str, name: &str, c: &CandidateSpec) -> PodTemplateSpec {
    let user = c.template.clone().unwrap_or_default();
    let user_spec = user.spec.unwrap_or_default();
    let user_meta = user.metadata.unwrap_or_default();

    let mut volumes = Vec::new();
    if c.models.is_some() {
        volumes.push(Volume {
            name: MODELS_VOLUME.to_string(),
            config_map: Some(ConfigMapVolumeSource {
                name: models_config_map_name(name),
                items: Some(vec![KeyToPath {
                    key: MODELS_KEY.to_string(),
                    path: MODELS_KEY.to_string(),
                    mode: None,
                }]),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        });
    }
    volumes.extend(user_spec.volumes.iter().cloned());

    let mut embedder = embedder_container(c);
    let mut containers = Vec::new();
    for u in &user_spec.containers {
        if u.name == CONTAINER_NAME {
            merge_embedder(&mut embedder, u, c.resources.is_some());
        } else {
            containers.push(u.clone());
        }
    }
    containers.insert(0, embedder);

    // Ours last: the selector and the scrape annotations must hold whatever the user adds.
    let mut labels = user_meta.labels.clone();
    labels.extend(pod_labels(name, rollout));
    let mut annotations = user_meta.annotations.clone();
    // The gates read the candidate's own metrics: make its pods discoverable by the common
    // annotation-based Prometheus scrape configs (a PodMonitor in the chart is the other way).
    annotations.insert("prometheus.io/scrape".into(), "true".into());
    annotations.insert("prometheus.io/port".into(), c.port.to_string());
    annotations.insert("prometheus.io/path".into(), "/metrics".into());

    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            containers,
            init_containers: non_empty(&user_spec.init_containers),
            volumes: non_empty(&volumes),
            image_pull_secrets: non_empty(&user_spec.image_pull_secrets),
            service_account_name: user_spec.service_account_name.clone(),
            automount_service_account_token: user_spec.automount_service_account_token,
            node_selector: (!user_spec.node_selector.is_empty())
                .then(|| user_spec.node_selector.clone()),
            tolerations: non_empty(&user_spec.tolerations),
            affinity: user_spec.affinity.clone(),
            topology_spread_constraints: non_empty(&user_spec.topology_spread_constraints),
            priority_class_name: user_spec.priority_class_name.clone(),
            security_context: user_spec.security_context.clone(),
            termination_grace_period_seconds: user_spec.termination_grace_period_seconds,
            ..PodSpec::default()
        }),
    }
}

fn pod_labels(name: &str, rollout: &str) -> BTreeMap<String, String> {
    let mut l = labels(name, rollout);
    l.insert(MANAGED_BY_LABEL.to_string(), MANAGER.to_string());
    l
}

pub fn deployment(w: &CandidateWorkload<'_>) -> Deployment {
    let hash_annotation =
        BTreeMap::from([(CANDIDATE_HASH_ANNOTATION.to_string(), w.pod_hash.clone())]);
    let mut template = pod_template(w.rollout, w.name, w.candidate);
    if let Some(m) = template.metadata.as_mut() {
        m.annotations
            .get_or_insert_with(BTreeMap::new)
            .extend(hash_annotation.clone());
    }
    let mut metadata = meta(w, w.name.to_string());
    metadata.annotations = Some(hash_annotation);
    Deployment {
        metadata,
        spec: Some(DeploymentSpec {
            replicas: Some(w.replicas),
            selector: LabelSelector {
                match_labels: Some(labels(w.name, w.rollout)),
                match_expressions: None,
            },
            template,
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

pub fn service(w: &CandidateWorkload<'_>) -> Service {
    Service {
        metadata: meta(w, w.name.to_string()),
        spec: Some(ServiceSpec {
            selector: Some(labels(w.name, w.rollout)),
            ports: Some(vec![ServicePort {
                name: Some(PORT_NAME.to_string()),
                port: w.candidate.port,
                target_port: Some(IntOrString::String(PORT_NAME.to_string())),
                protocol: Some("TCP".to_string()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// The candidate's HorizontalPodAutoscaler (`candidate.autoscaling`) with `min_replicas`, or
/// `None` without autoscaling. Targets the candidate Deployment by name.
pub fn autoscaler(w: &CandidateWorkload<'_>, min_replicas: i32) -> Option<HorizontalPodAutoscaler> {
    let a = w.candidate.autoscaling.as_ref()?;
    let metrics = if a.metrics.is_empty() {
        vec![MetricSpec {
            type_: "Resource".into(),
            resource: Some(ResourceMetricSource {
                name: "cpu".into(),
                target: MetricTarget {
                    type_: "Utilization".into(),
                    average_utilization: Some(a.target_cpu_utilization_percentage),
                    ..MetricTarget::default()
                },
            }),
            ..MetricSpec::default()
        }]
    } else {
        a.metrics.clone()
    };
    Some(HorizontalPodAutoscaler {
        metadata: meta(w, w.name.to_string()),
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".into()),
                kind: "Deployment".into(),
                name: w.name.to_string(),
            },
            min_replicas: Some(min_replicas),
            // A minimum above the maximum is refused by the API server; the schema forbids it
            // for the spec's counts, this keeps a hand-edited object applicable.
            max_replicas: a.max_replicas.max(min_replicas),
            metrics: Some(metrics),
            behavior: None,
        }),
        status: None,
    })
}

/// The models ConfigMap, when the rollout carries a models file.
pub fn models_config_map(w: &CandidateWorkload<'_>) -> Option<ConfigMap> {
    w.candidate.models.as_deref().map(|models| ConfigMap {
        metadata: meta(w, models_config_map_name(w.name)),
        data: Some(BTreeMap::from([(
            MODELS_KEY.to_string(),
            models.to_string(),
        )])),
        ..ConfigMap::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner() -> OwnerReference {
        OwnerReference {
            api_version: "rollout.akidb.io/v1alpha1".into(),
            kind: "EmbeddingRollout".into(),
            name: "r1".into(),
            uid: "uid-1".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }
    }

    fn inputs() -> CandidateSpec {
        serde_json::from_value(serde_json::json!({
            "name": "akidb-candle",
            "image": "ghcr.io/akidb/candle-embedder:1.0.0",
            "args": ["--chaos-latency-ms=40"],
            "env": [{"name": "RUST_LOG", "value": "info"}],
            "resources": {"limits": {"memory": "2Gi"}},
        }))
        .unwrap()
    }

    fn workload(c: &CandidateSpec) -> CandidateWorkload<'_> {
        CandidateWorkload {
            rollout: "r1",
            namespace: "prod",
            owner: owner(),
            name: "akidb-candle",
            replicas: 2,
            candidate: c,
            pod_hash: "h1".into(),
        }
    }

    fn container(d: &Deployment) -> &Container {
        &d.spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0]
    }

    #[test]
    fn deployment_has_contract_labels_selector_and_owner() {
        let i = inputs();
        let d = deployment(&workload(&i));
        let labels = d.metadata.labels.clone().unwrap();
        assert_eq!(labels[NAME_LABEL], "akidb-candle");
        assert_eq!(labels[ROLLOUT_LABEL], "r1");
        assert_eq!(d.metadata.namespace.as_deref(), Some("prod"));
        assert_eq!(d.metadata.owner_references.clone().unwrap()[0].uid, "uid-1");
        let spec = d.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(2));
        let selector = spec.selector.match_labels.clone().unwrap();
        let pod_labels = spec.template.metadata.clone().unwrap().labels.unwrap();
        for (k, v) in &selector {
            assert_eq!(pod_labels.get(k), Some(v), "selector must match pod labels");
        }
    }

    #[test]
    fn container_runs_the_image_with_port_env_args_resources_and_probes() {
        let i = inputs();
        let d = deployment(&workload(&i));
        let c = container(&d);
        assert_eq!(
            c.image.as_deref(),
            Some("ghcr.io/akidb/candle-embedder:1.0.0")
        );
        assert_eq!(c.args.clone().unwrap(), ["--chaos-latency-ms=40"]);
        let env: BTreeMap<_, _> = c
            .env
            .clone()
            .unwrap()
            .into_iter()
            .map(|e| (e.name, e.value.unwrap()))
            .collect();
        assert_eq!(env["EMBEDDER_PORT"], "8080");
        assert_eq!(env["EMBEDDER_HOST"], "0.0.0.0");
        assert_eq!(env["EMBEDDER_SERVICE_NAME"], "candle");
        assert_eq!(env["RUST_LOG"], "info");
        assert_eq!(c.ports.clone().unwrap()[0].container_port, 8080);
        assert_eq!(c.resources, i.resources);
        let ready = c.readiness_probe.clone().unwrap().http_get.unwrap();
        assert_eq!(ready.path.as_deref(), Some("/health/ready"));
        let live = c.liveness_probe.clone().unwrap().http_get.unwrap();
        assert_eq!(live.path.as_deref(), Some("/health/live"));
    }

    #[test]
    fn user_env_overrides_ours_without_duplicates() {
        let mut i = inputs();
        i.env.push(EnvVar {
            name: "EMBEDDER_HOST".into(),
            value: Some("127.0.0.1".into()),
            value_from: None,
        });
        let d = deployment(&workload(&i));
        let hosts: Vec<_> = container(&d)
            .env
            .clone()
            .unwrap()
            .into_iter()
            .filter(|e| e.name == "EMBEDDER_HOST")
            .collect();
        assert_eq!(hosts.len(), 1);
        assert_eq!(hosts[0].value.as_deref(), Some("127.0.0.1"));
    }

    #[test]
    fn models_file_is_mounted_from_its_config_map_and_passed_as_arg() {
        let mut i = inputs();
        i.models = Some("models:\n  - name: m\n".into());
        let w = workload(&i);
        let d = deployment(&w);
        let c = container(&d);
        assert_eq!(
            c.args.clone().unwrap(),
            [
                "--models",
                "/etc/candle/models.yaml",
                "--chaos-latency-ms=40"
            ]
        );
        let mount = &c.volume_mounts.clone().unwrap()[0];
        assert_eq!(mount.mount_path, "/etc/candle/models.yaml");
        assert_eq!(mount.sub_path.as_deref(), Some("models.yaml"));
        let vol = &d
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .volumes
            .clone()
            .unwrap()[0];
        assert_eq!(vol.config_map.as_ref().unwrap().name, "akidb-candle-models");
        let cm = models_config_map(&w).unwrap();
        assert_eq!(cm.metadata.name.as_deref(), Some("akidb-candle-models"));
        assert_eq!(cm.data.unwrap()["models.yaml"], "models:\n  - name: m\n");
        assert_eq!(cm.metadata.owner_references.unwrap()[0].name, "r1");
    }

    #[test]
    fn no_models_no_volume_no_config_map() {
        let i = inputs();
        let w = workload(&i);
        let d = deployment(&w);
        assert!(container(&d).volume_mounts.is_none());
        assert!(models_config_map(&w).is_none());
    }

    #[test]
    fn pods_are_scrapable_and_hardened() {
        let i = inputs();
        let d = deployment(&workload(&i));
        let pod_annotations = d
            .spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .clone()
            .unwrap()
            .annotations
            .unwrap();
        assert_eq!(pod_annotations["prometheus.io/scrape"], "true");
        assert_eq!(pod_annotations["prometheus.io/path"], "/metrics");
        let sc = container(&d).security_context.clone().unwrap();
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
    }

    #[test]
    fn pod_hash_is_annotated_on_deployment_and_pods() {
        let i = inputs();
        let d = deployment(&workload(&i));
        assert_eq!(
            d.metadata.annotations.clone().unwrap()[CANDIDATE_HASH_ANNOTATION],
            "h1"
        );
        let on_pods = d
            .spec
            .unwrap()
            .template
            .metadata
            .unwrap()
            .annotations
            .unwrap();
        assert_eq!(on_pods[CANDIDATE_HASH_ANNOTATION], "h1");
    }

    #[test]
    fn service_selects_the_candidate_pods_on_its_port() {
        let i = inputs();
        let w = workload(&i);
        let s = service(&w);
        let spec = s.spec.unwrap();
        assert_eq!(spec.selector.unwrap(), labels("akidb-candle", "r1"));
        let port = &spec.ports.unwrap()[0];
        assert_eq!(port.port, 8080);
        assert_eq!(port.target_port, Some(IntOrString::String("http".into())));
        assert_eq!(
            s.metadata.owner_references.unwrap()[0].kind,
            "EmbeddingRollout"
        );
    }

    #[test]
    fn for_rollout_resolves_the_candidate_spec_and_owner() {
        let r: EmbeddingRollout = serde_json::from_value(serde_json::json!({
            "apiVersion": "rollout.akidb.io/v1alpha1",
            "kind": "EmbeddingRollout",
            "metadata": {"name": "r1", "namespace": "prod", "uid": "u1"},
            "spec": {
                "baseline": {"deployment": "akidb-mlx", "service": "akidb-mlx"},
                "candidate": {"image": "candle:2", "port": 9000, "models": "m: 1\n"},
                "ingress": {"name": "akidb-ingress"}
            }
        }))
        .unwrap();
        let name = r.candidate_name();
        let w = CandidateWorkload::for_rollout(&r, &name, 6).unwrap();
        assert_eq!(w.name, "r1-candle");
        assert_eq!(w.namespace, "prod");
        assert_eq!(w.replicas, 6);
        assert_eq!(w.candidate.port, 9000);
        assert_eq!(w.candidate.metrics_service, "candle");
        assert_eq!(w.pod_hash, pod_hash(&r.spec.candidate));
        assert_eq!(w.owner.uid, "u1");
        assert_eq!(w.owner.controller, Some(true));
        assert!(models_config_map(&w).is_some());

        let mut unsaved = r.clone();
        unsaved.metadata.uid = None;
        assert_eq!(
            CandidateWorkload::for_rollout(&unsaved, &name, 1).unwrap_err(),
            WorkloadError::Unidentified
        );
    }

    fn with_template(t: serde_json::Value) -> CandidateSpec {
        let mut c = inputs();
        c.template = Some(serde_json::from_value(t).unwrap());
        c
    }

    fn pod(d: &Deployment) -> &PodSpec {
        d.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
    }

    #[test]
    fn template_brings_a_private_registry_scheduling_and_a_model_on_a_pvc() {
        let c = with_template(serde_json::json!({
            "metadata": {"labels": {"team": "search", ROLLOUT_LABEL: "spoofed"},
                         "annotations": {"sidecar.istio.io/inject": "false"}},
            "spec": {
                "imagePullSecrets": [{"name": "ghcr"}],
                "serviceAccountName": "embedder",
                "nodeSelector": {"node.kubernetes.io/instance-type": "c7i.2xlarge"},
                "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}],
                "priorityClassName": "serving",
                "securityContext": {"fsGroup": 1000},
                "volumes": [{"name": "weights", "persistentVolumeClaim": {"claimName": "minilm"}}],
                "initContainers": [{"name": "fetch", "image": "busybox", "command": ["true"]}],
                "containers": [
                    {"name": "embedder", "volumeMounts": [{"name": "weights", "mountPath": "/models"}],
                     "envFrom": [{"secretRef": {"name": "hf"}}],
                     "startupProbe": {"httpGet": {"path": "/health/ready", "port": "http"}, "failureThreshold": 60}},
                    {"name": "log-shipper", "image": "fluent-bit:3"}
                ]
            }
        }));
        let d = deployment(&workload(&c));
        let p = pod(&d);
        assert_eq!(p.image_pull_secrets.clone().unwrap()[0].name, "ghcr");
        assert_eq!(p.service_account_name.as_deref(), Some("embedder"));
        assert_eq!(
            p.node_selector.clone().unwrap()["node.kubernetes.io/instance-type"],
            "c7i.2xlarge"
        );
        assert_eq!(
            p.tolerations.clone().unwrap()[0].key.as_deref(),
            Some("dedicated")
        );
        assert_eq!(p.priority_class_name.as_deref(), Some("serving"));
        assert_eq!(p.security_context.clone().unwrap().fs_group, Some(1000));
        assert_eq!(
            p.volumes.clone().unwrap()[0]
                .persistent_volume_claim
                .clone()
                .unwrap()
                .claim_name,
            "minilm"
        );
        assert_eq!(p.init_containers.clone().unwrap()[0].name, "fetch");
        let names: Vec<&str> = p.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            ["embedder", "log-shipper"],
            "ours first, one embedder"
        );
        let e = &p.containers[0];
        assert_eq!(
            e.image.as_deref(),
            Some("ghcr.io/akidb/candle-embedder:1.0.0")
        );
        assert_eq!(e.volume_mounts.clone().unwrap()[0].mount_path, "/models");
        assert_eq!(
            e.env_from.clone().unwrap()[0]
                .secret_ref
                .clone()
                .unwrap()
                .name,
            "hf"
        );
        assert_eq!(e.startup_probe.clone().unwrap().failure_threshold, Some(60));
        // Not replaced: the readiness probe and the hardening stay ours.
        assert!(e.readiness_probe.is_some());
        assert_eq!(
            e.security_context
                .clone()
                .unwrap()
                .read_only_root_filesystem,
            Some(true)
        );
        let meta = d.spec.as_ref().unwrap().template.metadata.clone().unwrap();
        let labels = meta.labels.unwrap();
        assert_eq!(labels["team"], "search");
        assert_eq!(
            labels[ROLLOUT_LABEL], "r1",
            "the selector's labels stay ours"
        );
        let annotations = meta.annotations.unwrap();
        assert_eq!(annotations["sidecar.istio.io/inject"], "false");
        assert_eq!(annotations[CANDIDATE_HASH_ANNOTATION], "h1");
    }

    #[test]
    fn the_models_volume_and_the_users_volumes_are_both_there() {
        let mut c = with_template(serde_json::json!({"spec": {
            "volumes": [{"name": "cache", "emptyDir": {}}],
            "containers": [{"name": "embedder", "volumeMounts": [{"name": "cache", "mountPath": "/cache"}]}]
        }}));
        c.models = Some("models: []\n".into());
        let d = deployment(&workload(&c));
        let vols: Vec<String> = pod(&d)
            .volumes
            .clone()
            .unwrap()
            .into_iter()
            .map(|v| v.name)
            .collect();
        assert_eq!(vols, ["models", "cache"]);
        let mounts: Vec<String> = pod(&d).containers[0]
            .volume_mounts
            .clone()
            .unwrap()
            .into_iter()
            .map(|m| m.mount_path)
            .collect();
        assert_eq!(mounts, ["/etc/candle/models.yaml", "/cache"]);
    }

    #[test]
    fn the_embedder_entry_may_carry_resources_only_without_candidate_resources() {
        let t = serde_json::json!({"spec": {"containers": [
            {"name": "embedder", "resources": {"requests": {"cpu": "3"}}}
        ]}});
        let mut c = with_template(t);
        let d = deployment(&workload(&c));
        assert_eq!(
            pod(&d).containers[0].resources,
            inputs().resources,
            "candidate.resources wins"
        );
        c.resources = None;
        let d = deployment(&workload(&c));
        let r = pod(&d).containers[0].resources.clone().unwrap();
        assert_eq!(r.requests.unwrap()["cpu"].0, "3");
    }

    #[test]
    fn every_change_that_reaches_the_pod_changes_the_hash() {
        let base = inputs();
        let h = pod_hash(&base);
        assert!(h.starts_with(POD_HASH_PREFIX), "{h}");
        assert_eq!(h, pod_hash(&inputs()), "stable");
        let changed = |f: &dyn Fn(&mut CandidateSpec)| {
            let mut c = inputs();
            f(&mut c);
            pod_hash(&c) != h
        };
        // metricsService reaches the pod as EMBEDDER_SERVICE_NAME: the gates query that label.
        assert!(changed(&|c| c.metrics_service = "candle-v2".into()));
        assert!(changed(&|c| c.image = "candle:2".into()));
        assert!(changed(&|c| c.port = 9000));
        assert!(changed(&|c| c.args.push("--int8".into())));
        assert!(changed(&|c| c.models = Some("m: 1\n".into())));
        assert!(changed(&|c| c.name = Some("other".into())));
        assert!(changed(&|c| {
            c.template = Some(
                serde_json::from_value(serde_json::json!({"spec": {"nodeSelector": {"a": "b"}}}))
                    .unwrap(),
            )
        }));
        // Not pod fields: scaling and timing never restart a rollout.
        assert!(!changed(&|c| c.replicas = 7));
        assert!(!changed(&|c| c.full_replicas = Some(9)));
        assert!(!changed(&|c| c.progress_deadline = "1h".into()));
        // An empty template is no template.
        assert!(!changed(&|c| c.template = Some(Default::default())));
    }

    /// FNV-1a 64 of `{"args":[],"env":[],"image":"candle:1.0.0","models":null,"port":8080,
    /// "resources":null}`, computed independently (Python) from the old formula.
    const LEGACY_HASH_OF_CANDLE_1_0_0: &str = "058dd8c982043f80";

    #[test]
    fn candidate_pods_keep_serving_five_seconds_after_they_are_told_to_stop() {
        let c = inputs();
        let t = pod_template("r", "akidb-candle", &c);
        let embedder = &t.spec.as_ref().unwrap().containers[0];
        let sleep = embedder
            .lifecycle
            .as_ref()
            .unwrap()
            .pre_stop
            .as_ref()
            .unwrap();
        assert_eq!(sleep.sleep.as_ref().unwrap().seconds, 5);
        // The user's own lifecycle wins.
        let mut mine = inputs();
        mine.template = Some(
            serde_json::from_value(
                serde_json::json!({"spec": {"containers": [{"name": "embedder",
                "lifecycle": {"preStop": {"sleep": {"seconds": 15}}}}]}}),
            )
            .unwrap(),
        );
        let t = pod_template("r", "akidb-candle", &mine);
        let embedder = &t.spec.as_ref().unwrap().containers[0];
        let pre_stop = embedder
            .lifecycle
            .as_ref()
            .unwrap()
            .pre_stop
            .as_ref()
            .unwrap();
        assert_eq!(pre_stop.sleep.as_ref().unwrap().seconds, 15);
    }

    #[test]
    fn the_t1_hash_differs_from_todays_only_by_the_default_pre_stop() {
        let c = inputs();
        let [_, t1] = earlier_pod_hashes(&c);
        assert!(t1.starts_with("t1-") && pod_hash(&c).starts_with("t2-"));
        assert_ne!(
            t1[3..],
            pod_hash(&c)[3..],
            "the default preStop reaches the pods"
        );
        // With the user's own lifecycle the templates are the same: only the prefix differs.
        let mut mine = inputs();
        mine.template = Some(
            serde_json::from_value(
                serde_json::json!({"spec": {"containers": [{"name": "embedder",
                "lifecycle": {"preStop": {"sleep": {"seconds": 15}}}}]}}),
            )
            .unwrap(),
        );
        let [_, t1] = earlier_pod_hashes(&mine);
        assert_eq!(t1[3..], pod_hash(&mine)[3..]);
    }

    #[test]
    fn the_legacy_hash_is_the_one_older_operators_wrote() {
        // Value written by the operator before pod_hash covered the whole template (commit
        // 16d3173): adopting it must not restart the rollouts they started.
        let c: CandidateSpec =
            serde_json::from_value(serde_json::json!({"image": "candle:1.0.0"})).unwrap();
        assert_eq!(legacy_pod_hash(&c).len(), 16);
        assert_eq!(legacy_pod_hash(&c), LEGACY_HASH_OF_CANDLE_1_0_0);
        assert_ne!(legacy_pod_hash(&c), pod_hash(&c));
    }

    #[test]
    fn the_autoscaler_targets_the_candidate_at_the_seeds_70_percent_cpu() {
        let mut c = inputs();
        assert!(
            autoscaler(&workload(&c), 2).is_none(),
            "no autoscaling, no HPA"
        );
        c.autoscaling =
            Some(serde_json::from_value(serde_json::json!({"maxReplicas": 10})).unwrap());
        let h = autoscaler(&workload(&c), 2).unwrap();
        let spec = h.spec.unwrap();
        assert_eq!(spec.scale_target_ref.kind, "Deployment");
        assert_eq!(spec.scale_target_ref.name, "akidb-candle");
        assert_eq!((spec.min_replicas, spec.max_replicas), (Some(2), 10));
        let m = &spec.metrics.unwrap()[0];
        assert_eq!(m.resource.as_ref().unwrap().name, "cpu");
        assert_eq!(
            m.resource.as_ref().unwrap().target.average_utilization,
            Some(70)
        );
        assert_eq!(h.metadata.owner_references.unwrap()[0].uid, "uid-1");
        // Autoscaling is not a pod field: it does not restart a rollout.
        assert_eq!(pod_hash(&c), pod_hash(&inputs()));
    }
}
