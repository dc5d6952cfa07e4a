//! Read the cluster into the decision core's [`Observed`].
//!
//! The conversions from API objects are pure and unit-tested; [`read`] only fetches (from the
//! controller's stores where it can, [`crate::caches`]).

use std::{fmt::Debug, sync::Arc};

use k8s_openapi::{
    api::{
        apps::v1::Deployment, autoscaling::v2::HorizontalPodAutoscaler, networking::v1::Ingress,
    },
    NamespaceResourceScope,
};
use kube::{runtime::reflector::Store, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;

use crate::{
    caches::Caches,
    cluster::{self, ClusterError},
    crd::{
        EmbeddingRollout, Provider, CANDIDATE_HASH_ANNOTATION, COMMAND_ANNOTATION,
        COMMAND_AT_ANNOTATION, COMMAND_BY_ANNOTATION,
    },
    decision::{AutoscalerObs, CommandIssuer, DeploymentObs, Observed, PrimaryBackend},
    traffic::{
        gateway,
        httproute::HttpRoute,
        nginx::{self, CANARY_WEIGHT_ANNOTATION},
    },
};

/// The candidate and baseline Deployments, the autoscalers, and the traffic objects: both
/// Ingresses (nginx) or the HTTPRoute (Gateway API); from the controller's stores when `caches`
/// can answer for the object, else by a live read (see [`crate::caches`] for which and why).
pub async fn read(
    client: &Client,
    caches: Option<&Caches>,
    rollout: &EmbeddingRollout,
) -> Result<Observed, ClusterError> {
    let ns = rollout.namespace().unwrap_or_default();
    let spec = &rollout.spec;
    let deployments = |c: &Caches| Some(c.deployments.clone());
    let ingresses = |c: &Caches| Some(c.ingresses.clone());
    let candidate_name = rollout.candidate_name();
    let traffic = async {
        match spec.provider() {
            Some(Provider::Nginx(ingress)) => {
                let canary_name = ingress.canary_name();
                let (primary, canary) = tokio::try_join!(
                    get(client, caches, ingresses, &ns, &ingress.name),
                    get(client, caches, ingresses, &ns, &canary_name),
                )?;
                Ok(Traffic::Nginx(primary, canary))
            }
            Some(Provider::GatewayApi(g)) => {
                let route_ns = g.http_route.namespace.clone().unwrap_or_else(|| ns.clone());
                let routes = |c: &Caches| c.routes_in(&route_ns).cloned();
                let route = get(client, caches, routes, &route_ns, &g.http_route.name).await?;
                Ok(Traffic::Gateway(route))
            }
            None => Ok::<_, ClusterError>(Traffic::None),
        }
    };
    let hpas = async {
        match caches.and_then(|c| c.autoscalers_in(&ns)) {
            Some(stored) => Ok(stored),
            None => cluster::list(&cluster::api::<HorizontalPodAutoscaler>(client, &ns)).await,
        }
    };
    let (candidate, baseline, traffic, hpas) = tokio::try_join!(
        get(client, caches, deployments, &ns, &candidate_name),
        get(client, caches, deployments, &ns, &spec.baseline.deployment),
        traffic,
        hpas,
    )?;
    let (primary, canary) = match &traffic {
        Traffic::Nginx(p, c) => (p.as_deref(), c.as_deref()),
        _ => (None, None),
    };
    let mut observed = assemble(
        rollout,
        candidate.as_deref(),
        baseline.as_deref(),
        primary,
        canary,
    );
    if let (Traffic::Gateway(route), Some(Provider::GatewayApi(g))) = (&traffic, spec.provider()) {
        let view = gateway::observe(
            route.as_deref(),
            &gateway::names(rollout, g, &candidate_name),
        );
        observed.primary_backend = view.primary;
        observed.canary_weight = view.canary_weight;
        observed.traffic_blocked = view.blocked;
    }
    observed.candidate_autoscaler = hpas
        .iter()
        .find(|h| {
            h.metadata.name.as_deref() == Some(candidate_name.as_str()) && owned_by(h, rollout)
        })
        .map(autoscaler_obs);
    observed.baseline_autoscaler = baseline_autoscaler(&hpas, &spec.baseline.deployment);
    Ok(observed)
}

/// `ns/name` from the store `which` picks, or a live GET when there is none or it cannot answer
/// for this object yet.
async fn get<K>(
    client: &Client,
    caches: Option<&Caches>,
    which: impl Fn(&Caches) -> Option<Store<K>>,
    ns: &str,
    name: &str,
) -> Result<Option<Arc<K>>, ClusterError>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Debug
        + 'static,
{
    let store = caches.and_then(|c| which(c).map(|s| (c, s)));
    if let Some((c, store)) = &store {
        if let Some(stored) = c.get(store, ns, name) {
            return Ok(stored);
        }
    }
    let live = cluster::get_opt(&cluster::api::<K>(client, ns), name).await?;
    if let Some((c, store)) = &store {
        let version = live
            .as_ref()
            .and_then(|o| o.meta().resource_version.as_deref());
        c.read_live(store, ns, name, version);
    }
    Ok(live.map(Arc::new))
}

// One per reconcile, on the stack for a moment: boxing would buy nothing.
#[allow(clippy::large_enum_variant)]
enum Traffic {
    Nginx(Option<Arc<Ingress>>, Option<Arc<Ingress>>),
    Gateway(Option<Arc<HttpRoute>>),
    None,
}

fn owned_by(h: &HorizontalPodAutoscaler, rollout: &EmbeddingRollout) -> bool {
    let uid = rollout.meta().uid.as_deref();
    h.metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| Some(o.uid.as_str()) == uid)
}

/// The user's autoscaler of the baseline: one whose target is the baseline Deployment.
pub fn baseline_autoscaler(
    hpas: &[HorizontalPodAutoscaler],
    deployment: &str,
) -> Option<AutoscalerObs> {
    hpas.iter()
        .find(|h| {
            h.spec.as_ref().is_some_and(|s| {
                s.scale_target_ref.kind == "Deployment" && s.scale_target_ref.name == deployment
            })
        })
        .map(autoscaler_obs)
}

pub fn autoscaler_obs(h: &HorizontalPodAutoscaler) -> AutoscalerObs {
    let spec = h.spec.clone().unwrap_or_default();
    AutoscalerObs {
        name: h.metadata.name.clone().unwrap_or_default(),
        // The API default of minReplicas is 1.
        min_replicas: spec.min_replicas.unwrap_or(1),
        max_replicas: spec.max_replicas,
    }
}

pub fn assemble(
    rollout: &EmbeddingRollout,
    candidate: Option<&Deployment>,
    baseline: Option<&Deployment>,
    primary: Option<&Ingress>,
    canary: Option<&Ingress>,
) -> Observed {
    let candidate_name = rollout.candidate_name();
    Observed {
        generation: rollout.meta().generation,
        deleting: rollout.meta().deletion_timestamp.is_some(),
        command: rollout
            .annotations()
            .get(COMMAND_ANNOTATION)
            .map(|c| c.trim().to_string())
            .filter(|c| !c.is_empty()),
        command_issuer: command_issuer(rollout),
        candidate: candidate.map(deployment_obs),
        baseline: baseline.map(deployment_obs),
        canary_weight: canary.map(canary_weight),
        primary_backend: primary_backend(primary, &rollout.spec.baseline.service, &candidate_name),
        traffic_blocked: None,
        candidate_autoscaler: None,
        baseline_autoscaler: None,
    }
}

/// Who wrote the command annotation: what the writer says (`command-by`, `command-at`) and the
/// field manager the API server recorded for the annotation in managedFields.
pub fn command_issuer(rollout: &EmbeddingRollout) -> CommandIssuer {
    let a = rollout.annotations();
    let text = |k: &str| {
        a.get(k)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let key = format!("f:{COMMAND_ANNOTATION}");
    let manager = rollout
        .meta()
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| {
            m.fields_v1.as_ref().is_some_and(|f| {
                f.0.get("f:metadata")
                    .and_then(|m| m.get("f:annotations"))
                    .and_then(|a| a.get(&key))
                    .is_some()
            })
        })
        // The latest writer of the annotation.
        .max_by_key(|m| m.time.as_ref().map(|t| t.0))
        .and_then(|m| m.manager.clone());
    CommandIssuer {
        by: text(COMMAND_BY_ANNOTATION),
        at: text(COMMAND_AT_ANNOTATION),
        manager,
    }
}

pub fn deployment_obs(d: &Deployment) -> DeploymentObs {
    let status = d.status.clone().unwrap_or_default();
    DeploymentObs {
        // An unset replicas field means 1 (the API default).
        spec_replicas: d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
        ready_replicas: status.ready_replicas.unwrap_or(0),
        available_replicas: status.available_replicas.unwrap_or(0),
        updated_replicas: status.updated_replicas.unwrap_or(0),
        generation: d.metadata.generation.unwrap_or(0),
        observed_generation: status.observed_generation.unwrap_or(0),
        candidate_hash: d
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(CANDIDATE_HASH_ANNOTATION))
            .cloned(),
    }
}

/// The canary's weight; an unparsable or out-of-range annotation counts as 0 (ingress-nginx
/// ignores it too), so the decision re-applies the weight it wants.
pub fn canary_weight(canary: &Ingress) -> u8 {
    canary
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(CANARY_WEIGHT_ANNOTATION))
        .and_then(|w| w.trim().parse::<u8>().ok())
        .filter(|w| *w <= 100)
        .unwrap_or(0)
}

/// Where the primary routes: the candidate wins if any backend uses it (a half-switched
/// Ingress must still be switched back), then the baseline; other Services only if neither.
pub fn primary_backend(
    primary: Option<&Ingress>,
    baseline: &str,
    candidate: &str,
) -> PrimaryBackend {
    let Some(primary) = primary else {
        return PrimaryBackend::Missing;
    };
    let services = nginx::backend_services(&primary.spec.clone().unwrap_or_default());
    if services.iter().any(|s| s == candidate) {
        PrimaryBackend::Candidate
    } else if services.iter().any(|s| s == baseline) {
        PrimaryBackend::Baseline
    } else {
        PrimaryBackend::Other(services.first().cloned().unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::{
        api::{
            apps::v1::{DeploymentSpec, DeploymentStatus},
            networking::v1::{
                HTTPIngressPath, HTTPIngressRuleValue, IngressBackend, IngressRule,
                IngressServiceBackend, IngressSpec,
            },
        },
        apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
        jiff::Timestamp,
    };
    use std::collections::BTreeMap;

    fn rollout(annotations: &[(&str, &str)]) -> EmbeddingRollout {
        let mut r: EmbeddingRollout = serde_json::from_value(serde_json::json!({
            "apiVersion": "rollout.akidb.io/v1alpha1",
            "kind": "EmbeddingRollout",
            "metadata": {"name": "r1", "namespace": "prod", "uid": "u1", "generation": 4},
            "spec": {
                "baseline": {"deployment": "akidb-mlx", "service": "akidb-mlx"},
                "candidate": {"image": "candle:1"},
                "ingress": {"name": "akidb-ingress"}
            }
        }))
        .unwrap();
        r.metadata.annotations = Some(
            annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        r
    }

    fn ingress(services: &[&str], annotations: &[(&str, &str)]) -> Ingress {
        Ingress {
            metadata: ObjectMeta {
                annotations: Some(
                    annotations
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect::<BTreeMap<_, _>>(),
                ),
                ..Default::default()
            },
            spec: Some(IngressSpec {
                rules: Some(vec![IngressRule {
                    host: Some("h".into()),
                    http: Some(HTTPIngressRuleValue {
                        paths: services
                            .iter()
                            .map(|s| HTTPIngressPath {
                                path: Some(format!("/{s}")),
                                path_type: "Prefix".into(),
                                backend: IngressBackend {
                                    service: Some(IngressServiceBackend {
                                        name: s.to_string(),
                                        port: None,
                                    }),
                                    resource: None,
                                },
                            })
                            .collect(),
                    }),
                }]),
                ..Default::default()
            }),
            status: None,
        }
    }

    #[test]
    fn rollout_metadata_and_command_are_read() {
        let mut r = rollout(&[(COMMAND_ANNOTATION, " promote-full ")]);
        r.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
        let o = assemble(&r, None, None, None, None);
        assert_eq!(o.generation, Some(4));
        assert!(o.deleting);
        assert_eq!(o.command.as_deref(), Some("promote-full"));
        assert_eq!(o.candidate, None);
        assert_eq!(o.canary_weight, None);
        assert_eq!(o.primary_backend, PrimaryBackend::Missing);
        let blank = assemble(
            &rollout(&[(COMMAND_ANNOTATION, "")]),
            None,
            None,
            None,
            None,
        );
        assert_eq!(blank.command, None);
    }

    #[test]
    fn deployment_counts_and_hash_are_read_with_api_defaults() {
        let d = Deployment {
            metadata: ObjectMeta {
                generation: Some(3),
                annotations: Some(BTreeMap::from([(
                    CANDIDATE_HASH_ANNOTATION.to_string(),
                    "abc".to_string(),
                )])),
                ..Default::default()
            },
            spec: Some(DeploymentSpec {
                replicas: Some(2),
                ..Default::default()
            }),
            status: Some(DeploymentStatus {
                ready_replicas: Some(2),
                available_replicas: Some(1),
                updated_replicas: Some(2),
                observed_generation: Some(3),
                ..Default::default()
            }),
        };
        let obs = deployment_obs(&d);
        assert_eq!(
            obs,
            DeploymentObs {
                spec_replicas: 2,
                ready_replicas: 2,
                available_replicas: 1,
                updated_replicas: 2,
                generation: 3,
                observed_generation: 3,
                candidate_hash: Some("abc".into()),
            }
        );
        let fresh = deployment_obs(&Deployment {
            spec: Some(DeploymentSpec::default()),
            ..Default::default()
        });
        assert_eq!(fresh.spec_replicas, 1);
        assert_eq!(fresh.ready_replicas, 0);
    }

    #[test]
    fn canary_weight_comes_from_the_annotation() {
        let w = |v: &str| canary_weight(&ingress(&[], &[(CANARY_WEIGHT_ANNOTATION, v)]));
        assert_eq!(w("10"), 10);
        assert_eq!(w(" 50 "), 50);
        assert_eq!(w("101"), 0);
        assert_eq!(w("ten"), 0);
        assert_eq!(canary_weight(&ingress(&[], &[])), 0);
    }

    #[test]
    fn primary_backend_prefers_candidate_then_baseline() {
        let b =
            |svcs: &[&str]| primary_backend(Some(&ingress(svcs, &[])), "akidb-mlx", "r1-candle");
        assert_eq!(b(&["akidb-mlx", "admin"]), PrimaryBackend::Baseline);
        assert_eq!(b(&["r1-candle", "admin"]), PrimaryBackend::Candidate);
        assert_eq!(b(&["akidb-mlx", "r1-candle"]), PrimaryBackend::Candidate);
        assert_eq!(b(&["admin"]), PrimaryBackend::Other("admin".into()));
    }

    #[test]
    fn default_candidate_name_is_used_for_the_primary_check() {
        let r = rollout(&[]);
        let o = assemble(&r, None, None, Some(&ingress(&["r1-candle"], &[])), None);
        assert_eq!(o.primary_backend, PrimaryBackend::Candidate);
    }

    #[test]
    fn the_command_issuer_comes_from_its_annotations_and_the_latest_manager_of_the_annotation() {
        let r: EmbeddingRollout = serde_json::from_value(serde_json::json!({
            "apiVersion": "rollout.akidb.io/v1alpha1", "kind": "EmbeddingRollout",
            "metadata": {
                "name": "r1", "namespace": "prod",
                "annotations": {"rollout.akidb.io/command": "abort",
                                "rollout.akidb.io/command-by": "alice",
                                "rollout.akidb.io/command-at": "2026-01-01T00:00:00Z"},
                "managedFields": [
                    {"manager": "kubectl-client-side-apply", "operation": "Update", "time": "2025-12-01T00:00:00Z",
                     "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}}},
                    {"manager": "kubectl-annotate", "operation": "Update", "time": "2025-12-31T00:00:00Z",
                     "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {"f:annotations": {"f:rollout.akidb.io/command": {}}}}},
                    {"manager": "kubectl-embeddingrollout", "operation": "Update", "time": "2026-01-01T00:00:00Z",
                     "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {"f:annotations": {"f:rollout.akidb.io/command": {}, "f:rollout.akidb.io/command-by": {}}}}}
                ]
            },
            "spec": {"baseline": {"deployment": "b", "service": "b"}, "candidate": {"image": "c"}, "ingress": {"name": "i"}}
        }))
        .unwrap();
        let i = command_issuer(&r);
        assert_eq!(i.by.as_deref(), Some("alice"));
        assert_eq!(i.at.as_deref(), Some("2026-01-01T00:00:00Z"));
        assert_eq!(i.manager.as_deref(), Some("kubectl-embeddingrollout"));
    }
}
