//! Reads the gate templates a rollout refers to (`analysis.gates.templates`), at each analysis:
//! a template edit reaches every rollout at its next look, with no watch to keep.

use kube::{Api, Client};

use crate::cluster::describe_kube_error;
use crate::crd::{ClusterEmbeddingGateTemplate, EmbeddingGateTemplate, GateTemplateRef};
use crate::decision::gate_templates::FetchedTemplate;

/// One entry per reference, concurrently; a failed read is the entry's error, for the analysis to
/// report (never an error of the reconcile: the rest of the rollout goes on).
pub async fn read(client: &Client, ns: &str, refs: &[GateTemplateRef]) -> Vec<FetchedTemplate> {
    futures::future::join_all(refs.iter().map(|r| async move {
        let gates = if r.cluster_scope {
            let api: Api<ClusterEmbeddingGateTemplate> = Api::all(client.clone());
            outcome(api.get_opt(&r.name).await, "in the cluster").map(|t| t.spec.gates)
        } else {
            let api: Api<EmbeddingGateTemplate> = Api::namespaced(client.clone(), ns);
            outcome(api.get_opt(&r.name).await, &format!("in namespace {ns}")).map(|t| t.spec.gates)
        };
        FetchedTemplate {
            reference: r.clone(),
            gates,
        }
    }))
    .await
}

fn outcome<T>(read: kube::Result<Option<T>>, where_: &str) -> Result<T, String> {
    match read {
        Ok(Some(t)) => Ok(t),
        Ok(None) => Err(format!("not found {where_}")),
        Err(kube::Error::Api(s)) if s.code == 403 => Err(format!(
            "the operator may not read it (403 {}); the chart's ClusterRole grants get on gate templates",
            s.message
        )),
        Err(e) => Err(format!("reading it failed: {}", describe_kube_error(&e))),
    }
}
