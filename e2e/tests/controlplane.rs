//! The local control plane behaves like a real cluster's API server for what the scenarios need:
//! version, CRDs with schema validation, RBAC for restricted users and ServiceAccount tokens.
//! Needs `make controlplane`; fails (never skips) when the binaries are missing.

use std::path::PathBuf;
use std::time::Duration;

use e2e::controlplane::ControlPlane;
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::json;

fn workdir(test: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("controlplane")
        .join(test);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

async fn start(test: &str) -> ControlPlane {
    match ControlPlane::start(&workdir(test)).await {
        Ok(cp) => cp,
        Err(e) => panic!("{e}"),
    }
}

fn api_status(err: &kube::Error) -> Option<(u16, String)> {
    match err {
        kube::Error::Api(status) => Some((status.code, status.message.clone())),
        _ => None,
    }
}

#[tokio::test]
async fn apiserver_is_ready_and_reports_v1_34_7() {
    let cp = start("version").await;
    let version = cp.admin.apiserver_version().await.expect("GET /version");
    assert_eq!(version.git_version, "v1.34.7");
    assert_eq!(
        (version.major.as_str(), version.minor.as_str()),
        ("1", "34")
    );

    // What a user's curl sees: the server certificate verifies against the CA, the token authenticates.
    let ca = std::fs::read(&cp.ca_path).expect("read CA");
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("CA PEM"))
        .build()
        .unwrap();
    let readyz = http
        .get(format!("{}/readyz", cp.api_url))
        .bearer_auth(&cp.admin_token)
        .send()
        .await
        .expect("GET /readyz");
    assert_eq!(readyz.status(), 200);
    assert_eq!(readyz.text().await.unwrap().trim(), "ok");
}

const WIDGET_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.e2e.akidb.io}
spec:
  group: e2e.akidb.io
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, shortNames: [wdg]}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [size]
            properties:
              size: {type: integer, minimum: 1}
          status:
            type: object
            properties:
              phase: {type: string}
"#;

#[tokio::test]
async fn a_crd_can_be_applied_and_its_schema_is_enforced() {
    let cp = start("crd").await;
    // As `kubectl apply -f` would: the CRD and an object of its kind in one file.
    let manifest = format!(
        "{WIDGET_CRD}---\napiVersion: e2e.akidb.io/v1\nkind: Widget\nmetadata: {{name: first}}\nspec: {{size: 1}}\n"
    );
    let applied = cp
        .apply_as_admin(&manifest)
        .await
        .expect("apply CRD + Widget");
    assert_eq!(applied.len(), 2);
    assert_eq!(applied[1].metadata.namespace.as_deref(), Some("default"));

    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("e2e.akidb.io", "v1", "Widget"),
        "widgets",
    );
    let widgets: Api<DynamicObject> = Api::namespaced_with(cp.admin.clone(), "default", &ar);
    let valid: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "e2e.akidb.io/v1", "kind": "Widget",
        "metadata": {"name": "good"}, "spec": {"size": 3}
    }))
    .unwrap();
    widgets
        .create(&PostParams::default(), &valid)
        .await
        .expect("a valid Widget is accepted");

    let invalid: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "e2e.akidb.io/v1", "kind": "Widget",
        "metadata": {"name": "bad"}, "spec": {"size": 0}
    }))
    .unwrap();
    let err = widgets
        .create(&PostParams::default(), &invalid)
        .await
        .expect_err("size 0 violates minimum 1");
    let (code, message) = api_status(&err).expect("an API status");
    assert_eq!(code, 422, "{message}");
    assert!(message.contains("spec.size"), "{message}");

    // The status subresource is separate from the main resource, as the operator relies on.
    let status = Patch::Merge(json!({"status": {"phase": "Ready"}}));
    let patched = widgets
        .patch_status("good", &PatchParams::default(), &status)
        .await
        .expect("patch status");
    assert_eq!(patched.data["status"]["phase"], "Ready");
}

#[tokio::test]
async fn the_dev_user_is_forbidden_what_rbac_does_not_grant() {
    let cp = start("rbac-dev").await;
    let namespaces: Api<Namespace> = Api::all(cp.dev.clone());
    let err = namespaces
        .list(&ListParams::default())
        .await
        .expect_err("dev has no RBAC to list namespaces");
    let (code, message) = api_status(&err).expect("an API status");
    assert_eq!(code, 403, "{message}");
    assert!(message.contains("e2e-dev"), "{message}");

    let configmaps: Api<ConfigMap> = Api::namespaced(cp.dev.clone(), "default");
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "x"}})).unwrap();
    let err = configmaps
        .create(&PostParams::default(), &cm)
        .await
        .expect_err("dev cannot create ConfigMaps");
    assert_eq!(api_status(&err).map(|s| s.0), Some(403));

    // Admin (system:masters) can do both.
    Api::<Namespace>::all(cp.admin.clone())
        .list(&ListParams::default())
        .await
        .expect("admin lists namespaces");
}

#[tokio::test]
async fn a_service_account_token_carries_only_the_rbac_bound_to_it() {
    let cp = start("rbac-sa").await;
    let token = cp
        .service_account_token(
            "e2e",
            "embedding-rollout-operator",
            Duration::from_secs(3600),
        )
        .await
        .expect("TokenRequest without a controller-manager");
    let sa = cp
        .client_for_token(&token)
        .expect("client for the SA token");

    let review = Api::<SelfSubjectReview>::all(sa.clone())
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .expect("SelfSubjectReview");
    let user = review.status.and_then(|s| s.user_info).expect("user info");
    assert_eq!(
        user.username.as_deref(),
        Some("system:serviceaccount:e2e:embedding-rollout-operator")
    );
    assert!(user
        .groups
        .unwrap_or_default()
        .contains(&"system:serviceaccounts".to_string()));

    let configmaps: Api<ConfigMap> = Api::namespaced(sa.clone(), "e2e");
    let err = configmaps
        .list(&ListParams::default())
        .await
        .expect_err("no binding yet");
    assert_eq!(api_status(&err).map(|s| s.0), Some(403));

    let role: ClusterRole = serde_json::from_value(json!({
        "metadata": {"name": "e2e-configmap-reader"},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch"]}]
    }))
    .unwrap();
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "e2e-configmap-reader"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "e2e-configmap-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "embedding-rollout-operator", "namespace": "e2e"}]
    }))
    .unwrap();
    let pp = PostParams::default();
    Api::<ClusterRole>::all(cp.admin.clone())
        .create(&pp, &role)
        .await
        .expect("create ClusterRole");
    Api::<ClusterRoleBinding>::all(cp.admin.clone())
        .create(&pp, &binding)
        .await
        .expect("create ClusterRoleBinding");

    // The RBAC authorizer reads bindings through an informer: allow it a moment to see the new one.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match configmaps.list(&ListParams::default()).await {
            Ok(_) => break,
            Err(e) if tokio::time::Instant::now() < deadline => {
                assert_eq!(api_status(&e).map(|s| s.0), Some(403), "{e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("the binding did not take effect within 10 s: {e}"),
        }
    }
    // Still nothing beyond what the role grants.
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "x"}})).unwrap();
    let err = configmaps
        .create(&pp, &cm)
        .await
        .expect_err("the role grants no create");
    assert_eq!(api_status(&err).map(|s| s.0), Some(403));
}
