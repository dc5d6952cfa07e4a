//! The candidate's Deployment, Service and models ConfigMap, built from the rollout spec.
//!
//! Pure builders: the controller server-side-applies what they return, so building the same spec
//! twice must give the same object (no timestamps).

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentSpec},
        core::v1::{
            Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EnvVar,
            HTTPGetAction, KeyToPath, PodSpec, PodTemplateSpec, Probe, ResourceRequirements,
            SeccompProfile, SecurityContext, Service, ServicePort, ServiceSpec, Volume,
            VolumeMount,
        },
    },
    apimachinery::pkg::{
        apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference},
        util::intstr::IntOrString,
    },
};

use crate::crd::{candidate_labels, EmbeddingRollout};
pub use crate::crd::{CANDIDATE_HASH_ANNOTATION, ROLLOUT_LABEL};

pub const NAME_LABEL: &str = "app.kubernetes.io/name";
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGER: &str = "embedding-rollout-operator";

pub const CONTAINER_NAME: &str = "embedder";
pub const MODELS_DIR_FILE: &str = "/etc/candle/models.yaml";
const MODELS_KEY: &str = "models.yaml";
const MODELS_VOLUME: &str = "models";
const PORT_NAME: &str = "http";

/// What the candidate workload is made of (the rollout's `spec.candidate`, resolved).
#[derive(Debug, Clone)]
pub struct CandidateWorkload<'a> {
    pub rollout: &'a str,
    pub namespace: &'a str,
    pub owner: OwnerReference,
    pub name: &'a str,
    pub image: &'a str,
    pub replicas: i32,
    pub port: i32,
    pub metrics_service: &'a str,
    pub args: &'a [String],
    pub env: &'a [EnvVar],
    pub resources: Option<&'a ResourceRequirements>,
    pub models: Option<&'a str>,
    /// `CandidateSpec::pod_hash`: annotated on the Deployment and its pod template, so the
    /// controller can tell whether the live Deployment runs the spec of the rollout in flight,
    /// and so a models-only change still rolls the pods.
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
        let c = &r.spec.candidate;
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
            image: &c.image,
            replicas,
            port: c.port,
            metrics_service: &c.metrics_service,
            args: &c.args,
            env: &c.env,
            resources: c.resources.as_ref(),
            models: c.models.as_deref(),
            pod_hash: c.pod_hash(),
        })
    }
}

pub fn models_config_map_name(candidate: &str) -> String {
    format!("{candidate}-models")
}

/// Labels on every object the operator creates for a candidate, and the Deployment selector.
pub fn labels(candidate: &str, rollout: &str) -> BTreeMap<String, String> {
    candidate_labels(rollout, candidate)
}

fn object_labels(w: &CandidateWorkload<'_>) -> BTreeMap<String, String> {
    let mut l = labels(w.name, w.rollout);
    l.insert(MANAGED_BY_LABEL.to_string(), MANAGER.to_string());
    l
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
fn container_args(w: &CandidateWorkload<'_>) -> Vec<String> {
    let mut args = Vec::new();
    if w.models.is_some() {
        args.push("--models".to_string());
        args.push(MODELS_DIR_FILE.to_string());
    }
    args.extend(w.args.iter().cloned());
    args
}

fn container_env(w: &CandidateWorkload<'_>) -> Vec<EnvVar> {
    let ours = [
        ("EMBEDDER_HOST", "0.0.0.0".to_string()),
        ("EMBEDDER_PORT", w.port.to_string()),
        ("EMBEDDER_SERVICE_NAME", w.metrics_service.to_string()),
    ];
    // The user's env comes last: for duplicate names Kubernetes keeps the last one, so users can
    // override ours.
    ours.into_iter()
        .filter(|(k, _)| !w.env.iter().any(|e| e.name == *k))
        .map(|(k, v)| EnvVar {
            name: k.to_string(),
            value: Some(v),
            value_from: None,
        })
        .chain(w.env.iter().cloned())
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

fn pod_template(w: &CandidateWorkload<'_>) -> PodTemplateSpec {
    let mut volumes = Vec::new();
    let mut mounts = Vec::new();
    if w.models.is_some() {
        volumes.push(Volume {
            name: MODELS_VOLUME.to_string(),
            config_map: Some(ConfigMapVolumeSource {
                name: models_config_map_name(w.name),
                items: Some(vec![KeyToPath {
                    key: MODELS_KEY.to_string(),
                    path: MODELS_KEY.to_string(),
                    mode: None,
                }]),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        });
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
    let container = Container {
        name: CONTAINER_NAME.to_string(),
        image: Some(w.image.to_string()),
        args: Some(container_args(w)),
        env: Some(container_env(w)),
        ports: Some(vec![ContainerPort {
            name: Some(PORT_NAME.to_string()),
            container_port: w.port,
            protocol: Some("TCP".to_string()),
            ..ContainerPort::default()
        }]),
        resources: w.resources.cloned(),
        readiness_probe: Some(probe("/health/ready", 2, 3)),
        // Model loading can take a while; only restart a pod that stays dead.
        liveness_probe: Some(probe("/health/live", 10, 6)),
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
    };
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(object_labels(w)),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            containers: vec![container],
            volumes: (!volumes.is_empty()).then_some(volumes),
            ..PodSpec::default()
        }),
    }
}

pub fn deployment(w: &CandidateWorkload<'_>) -> Deployment {
    let hash_annotation =
        BTreeMap::from([(CANDIDATE_HASH_ANNOTATION.to_string(), w.pod_hash.clone())]);
    let mut template = pod_template(w);
    if let Some(m) = template.metadata.as_mut() {
        let mut annotations = hash_annotation.clone();
        // The gates read the candidate's own metrics: make its pods discoverable by the common
        // annotation-based Prometheus scrape configs (a PodMonitor in the chart is the other way).
        annotations.insert("prometheus.io/scrape".into(), "true".into());
        annotations.insert("prometheus.io/port".into(), w.port.to_string());
        annotations.insert("prometheus.io/path".into(), "/metrics".into());
        m.annotations = Some(annotations);
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
                port: w.port,
                target_port: Some(IntOrString::String(PORT_NAME.to_string())),
                protocol: Some("TCP".to_string()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// The models ConfigMap, when the rollout carries a models file.
pub fn models_config_map(w: &CandidateWorkload<'_>) -> Option<ConfigMap> {
    w.models.map(|models| ConfigMap {
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
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

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

    struct Inputs {
        args: Vec<String>,
        env: Vec<EnvVar>,
        resources: ResourceRequirements,
    }

    fn inputs() -> Inputs {
        Inputs {
            args: vec!["--chaos-latency-ms=40".into()],
            env: vec![EnvVar {
                name: "RUST_LOG".into(),
                value: Some("info".into()),
                value_from: None,
            }],
            resources: ResourceRequirements {
                limits: Some(BTreeMap::from([("memory".into(), Quantity("2Gi".into()))])),
                ..Default::default()
            },
        }
    }

    fn workload<'a>(i: &'a Inputs, models: Option<&'a str>) -> CandidateWorkload<'a> {
        CandidateWorkload {
            rollout: "r1",
            namespace: "prod",
            owner: owner(),
            name: "akidb-candle",
            image: "ghcr.io/akidb/candle-embedder:1.0.0",
            replicas: 2,
            port: 8080,
            metrics_service: "candle",
            args: &i.args,
            env: &i.env,
            resources: Some(&i.resources),
            models,
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
        let d = deployment(&workload(&i, None));
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
        let d = deployment(&workload(&i, None));
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
        assert_eq!(c.resources.as_ref(), Some(&i.resources));
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
        let d = deployment(&workload(&i, None));
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
        let i = inputs();
        let w = workload(&i, Some("models:\n  - name: m\n"));
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
        let w = workload(&i, None);
        let d = deployment(&w);
        assert!(container(&d).volume_mounts.is_none());
        assert!(models_config_map(&w).is_none());
    }

    #[test]
    fn pods_are_scrapable_and_hardened() {
        let i = inputs();
        let d = deployment(&workload(&i, None));
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
        let d = deployment(&workload(&i, None));
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
        let w = workload(&i, None);
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
        assert_eq!(w.port, 9000);
        assert_eq!(w.metrics_service, "candle");
        assert_eq!(w.pod_hash, r.spec.candidate.pod_hash());
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
}
