//! TEST HARNESS: Traefik v3.7 (built by `make traefik`, image by e2e/images/build.sh) on the real
//! node, with its `kubernetesIngressNGINX` and `kubernetesGateway` providers: the Gateway API
//! standard CRDs, Traefik's RBAC, the IngressClass `nginx`, the Deployment and Service of
//! e2e/traefik/traefik.yaml; [`apply_gateway`] adds the GatewayClass + Gateway `traefik/traefik`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, PostParams};

use crate::controlplane::{bin_dir, ControlPlane};
use crate::node_env::wait_available;
use crate::workspace_root;

/// The Gateway routes attach to (listener `web`, routes from every namespace).
pub const GATEWAY_NAMESPACE: &str = "traefik";
pub const GATEWAY: &str = "traefik";
/// How long one step of the installation may take.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(180);

/// Where clients reach Traefik: `http://<ClusterIP>:80` (its `web` entrypoint) and
/// `http://<ClusterIP>:8080` (ping and its read-only API, for diagnostics).
#[derive(Debug, Clone)]
pub struct Traefik {
    pub base: String,
    pub api: String,
}

/// The Gateway API v1.6.3 standard-channel files `make traefik` extracted.
fn crd_files() -> Vec<PathBuf> {
    let dir = bin_dir().join("gateway-api-crds");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e} (run `make traefik`)", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no CRDs in {}", dir.display());
    files
}

/// Installs everything and returns once Traefik is available. Panics with the reason otherwise.
pub async fn install(cp: &ControlPlane) -> Traefik {
    let t = Instant::now();
    for f in crd_files() {
        cp.apply_as_admin(&std::fs::read_to_string(&f).unwrap())
            .await
            .unwrap_or_else(|e| panic!("applying {}: {e}", f.display()));
    }
    // Traefik's RBAC (and the IngressClass) before its Deployment, and effective before it starts:
    // the ingress-nginx provider lists IngressClasses once when it starts watching, and if that is
    // forbidden it ignores IngressClasses for the life of the process, so Ingresses of class nginx
    // are never served (seen on this node when the pod won the race; a restart fixes it).
    let manifest =
        std::fs::read_to_string(workspace_root().join("e2e/traefik/traefik.yaml")).unwrap();
    let (deployment, rest): (Vec<&str>, Vec<&str>) = manifest
        .split("\n---\n")
        .partition(|doc| doc.contains("\nkind: Deployment\n"));
    assert_eq!(
        deployment.len(),
        1,
        "one Deployment in e2e/traefik/traefik.yaml"
    );
    cp.apply_as_admin(&rest.join("\n---\n"))
        .await
        .expect("applying e2e/traefik/traefik.yaml (all but the Deployment)");
    cp.apply_as_admin(
        "apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {name: nginx}\n\
         spec: {controller: k8s.io/ingress-nginx}\n",
    )
    .await
    .expect("IngressClass nginx");
    let secs = wait_allowed(cp, "system:serviceaccount:traefik:traefik").await;
    println!("[traefik] its ServiceAccount may list ingressclasses and gatewayclasses {secs:.2}s after the RBAC was applied");
    cp.apply_as_admin(deployment[0])
        .await
        .expect("applying the Traefik Deployment");
    wait_available(
        cp,
        "traefik",
        "traefik",
        1,
        INSTALL_TIMEOUT,
        "Traefik available",
    )
    .await;
    let services: Api<Service> = Api::namespaced(cp.admin.clone(), "traefik");
    let ip = services
        .get("traefik")
        .await
        .expect("Service traefik/traefik")
        .spec
        .and_then(|s| s.cluster_ip)
        .expect("a ClusterIP");
    println!(
        "[traefik] Gateway API CRDs and Traefik installed, Traefik available, in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    Traefik {
        base: format!("http://{ip}:80"),
        api: format!("http://{ip}:8080"),
    }
}

/// The GatewayClass and Gateway `traefik/traefik` of e2e/traefik/gateway.yaml.
pub async fn apply_gateway(cp: &ControlPlane) {
    cp.apply_as_admin(
        &std::fs::read_to_string(workspace_root().join("e2e/traefik/gateway.yaml")).unwrap(),
    )
    .await
    .expect("applying e2e/traefik/gateway.yaml");
}

/// Until the API server's authorizer lets `user` list IngressClasses and GatewayClasses (the RBAC
/// just applied reaches it through an informer). Returns the seconds it took.
async fn wait_allowed(cp: &ControlPlane, user: &str) -> f64 {
    let reviews: Api<SubjectAccessReview> = Api::all(cp.admin.clone());
    let t = Instant::now();
    loop {
        let mut allowed = true;
        for (group, resource) in [
            ("networking.k8s.io", "ingressclasses"),
            ("gateway.networking.k8s.io", "gatewayclasses"),
        ] {
            let review = SubjectAccessReview {
                spec: SubjectAccessReviewSpec {
                    user: Some(user.to_string()),
                    groups: Some(vec!["system:serviceaccounts".into()]),
                    resource_attributes: Some(ResourceAttributes {
                        group: Some(group.into()),
                        resource: Some(resource.into()),
                        verb: Some("list".into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                ..Default::default()
            };
            let got = reviews
                .create(&PostParams::default(), &review)
                .await
                .expect("SubjectAccessReview");
            allowed &= got.status.is_some_and(|s| s.allowed);
        }
        if allowed {
            return t.elapsed().as_secs_f64();
        }
        assert!(
            t.elapsed() < INSTALL_TIMEOUT,
            "{user} still may not list ingressclasses/gatewayclasses after {INSTALL_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
