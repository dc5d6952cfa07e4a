use serde_json::{json, Value};

use super::*;

const HEADER: fn() -> CanaryHeader = || CanaryHeader {
    name: "X-Canary".into(),
    value: "always".into(),
};

fn names(header: Option<&CanaryHeader>) -> Names<'_> {
    Names {
        rollout: "r1",
        namespace: "prod",
        baseline: "akidb-mlx",
        baseline_port: 8080,
        candidate: "akidb-candle",
        candidate_port: 8081,
        header,
        remove_baseline_on_promotion: false,
    }
}

fn accepted() -> Value {
    json!({"parents": [{"parentRef": {"name": "gw", "namespace": "infra"},
        "controllerName": "traefik.io/gateway-controller",
        "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
                        "lastTransitionTime": "2026-12-02T00:00:00Z"}]}]})
}

/// The user's route: `/v1` to the baseline (as the API server returns it, defaults filled in,
/// a field of the experimental channel on the rule), and `/admin` to a Service we do not own.
fn route() -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "embed", "namespace": "prod", "resourceVersion": "41"},
        "spec": {
            "parentRefs": [{"name": "gw", "namespace": "infra"}],
            "hostnames": ["embed.example"],
            "rules": [
                {"matches": [{"path": {"type": "PathPrefix", "value": "/v1"}}],
                 "sessionPersistence": {"type": "Cookie"},
                 "backendRefs": [{"group": "", "kind": "Service", "name": "akidb-mlx", "port": 8080, "weight": 1}]},
                {"matches": [{"path": {"type": "PathPrefix", "value": "/admin"}}],
                 "backendRefs": [{"group": "", "kind": "Service", "name": "admin", "port": 80, "weight": 1}]}
            ]
        },
        "status": accepted()
    })
}

fn typed(v: &Value) -> HttpRoute {
    serde_json::from_value(v.clone()).unwrap()
}

fn view(v: &Value, n: &Names<'_>) -> RouteView {
    observe(Some(&typed(v)), n)
}

/// Apply `action` as the API server would (the patch, a new resourceVersion).
fn act(v: &mut Value, n: &Names<'_>, action: Action) -> bool {
    let Some(p) = patch_for(v, n, &action).unwrap() else {
        return false;
    };
    json_patch::patch(v, &p).expect("the patch applies to the route it was made from");
    let rv: u64 = v["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    v["metadata"]["resourceVersion"] = json!((rv + 1).to_string());
    true
}

fn weights(v: &Value, rule: usize) -> Vec<(String, i64)> {
    v["spec"]["rules"][rule]["backendRefs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_string(),
                r["weight"].as_i64().unwrap_or(1),
            )
        })
        .collect()
}

fn s(name: &str, w: i64) -> (String, i64) {
    (name.to_string(), w)
}

#[test]
fn the_users_route_reads_as_baseline_primary_without_canary() {
    let n = names(None);
    assert_eq!(
        view(&route(), &n),
        RouteView {
            primary: PrimaryBackend::Baseline,
            canary_weight: None,
            blocked: None
        }
    );
    assert_eq!(observe(None, &n).primary, PrimaryBackend::Missing);
}

#[test]
fn a_whole_rollout_changes_only_the_managed_rules_weights_and_ends_on_the_candidate() {
    let n = names(None);
    let mut r = route();
    let before = r.clone();
    assert!(act(&mut r, &n, Action::SetCanaryWeight(10)));
    assert_eq!(
        weights(&r, 0),
        vec![s("akidb-mlx", 90), s("akidb-candle", 10)]
    );
    assert_eq!(r["spec"]["rules"][0]["backendRefs"][1]["port"], 8081);
    assert_eq!(view(&r, &n).canary_weight, Some(10));
    assert_eq!(view(&r, &n).primary, PrimaryBackend::Baseline);
    // Everything else of the user's is as it was.
    assert_eq!(r["spec"]["rules"][1], before["spec"]["rules"][1]);
    assert_eq!(
        r["spec"]["rules"][0]["sessionPersistence"],
        json!({"type": "Cookie"})
    );
    assert_eq!(r["spec"]["hostnames"], before["spec"]["hostnames"]);

    assert!(act(&mut r, &n, Action::SetCanaryWeight(100)));
    assert_eq!(
        weights(&r, 0),
        vec![s("akidb-mlx", 0), s("akidb-candle", 100)]
    );
    assert_eq!(
        view(&r, &n).primary,
        PrimaryBackend::Baseline,
        "the last step is not a promotion"
    );
    assert_eq!(view(&r, &n).canary_weight, Some(100));

    assert!(act(
        &mut r,
        &n,
        Action::PointPrimaryIngressAt(Backend::Candidate)
    ));
    assert_eq!(
        weights(&r, 0),
        vec![s("akidb-mlx", 0), s("akidb-candle", 100)]
    );
    assert_eq!(
        r["metadata"]["annotations"][PRIMARY_ANNOTATION],
        "akidb-candle"
    );
    assert_eq!(
        view(&r, &n),
        RouteView {
            primary: PrimaryBackend::Candidate,
            canary_weight: None,
            blocked: None
        }
    );
    // Retiring the canary after the cutover changes nothing more.
    assert!(!act(&mut r, &n, Action::DeleteCanaryIngress));
}

#[test]
fn a_rollback_returns_the_route_to_the_baseline_alone() {
    let n = names(None);
    let mut r = route();
    act(&mut r, &n, Action::SetCanaryWeight(50));
    assert!(act(&mut r, &n, Action::SetCanaryWeight(0)));
    assert_eq!(
        weights(&r, 0),
        vec![s("akidb-mlx", 100), s("akidb-candle", 0)]
    );
    assert_eq!(view(&r, &n).canary_weight, Some(0));
    assert!(act(&mut r, &n, Action::DeleteCanaryIngress));
    assert_eq!(weights(&r, 0), vec![s("akidb-mlx", 100)]);
    assert_eq!(view(&r, &n).canary_weight, None);
    // Already there: no write.
    assert!(!act(
        &mut r,
        &n,
        Action::PointPrimaryIngressAt(Backend::Baseline)
    ));
}

#[test]
fn promotion_can_remove_the_baseline_and_a_later_rollback_brings_it_back() {
    let mut n = names(None);
    n.remove_baseline_on_promotion = true;
    let mut r = route();
    act(&mut r, &n, Action::SetCanaryWeight(100));
    act(
        &mut r,
        &n,
        Action::PointPrimaryIngressAt(Backend::Candidate),
    );
    assert_eq!(weights(&r, 0), vec![s("akidb-candle", 100)]);
    assert_eq!(view(&r, &n).primary, PrimaryBackend::Candidate);
    assert!(act(
        &mut r,
        &n,
        Action::PointPrimaryIngressAt(Backend::Baseline)
    ));
    assert_eq!(weights(&r, 0), vec![s("akidb-mlx", 100)]);
    assert_eq!(r["spec"]["rules"][0]["backendRefs"][0]["port"], 8080);
    assert!(r["metadata"]["annotations"]
        .get(PRIMARY_ANNOTATION)
        .is_none());
    assert_eq!(view(&r, &n).primary, PrimaryBackend::Baseline);
}

#[test]
fn the_canary_header_gets_a_rule_of_its_own_while_the_canary_exists() {
    let h = HEADER();
    let n = names(Some(&h));
    let mut r = route();
    assert!(act(&mut r, &n, Action::SetCanaryWeight(0)));
    let rules = r["spec"]["rules"].as_array().unwrap().clone();
    assert_eq!(rules.len(), 3, "{rules:#?}");
    let hr = &rules[2];
    assert_eq!(hr["name"], "canary-header-r1-0");
    assert_eq!(
        hr["matches"],
        json!([{"path": {"type": "PathPrefix", "value": "/v1"},
                "headers": [{"type": "Exact", "name": "X-Canary", "value": "always"}]}])
    );
    assert_eq!(weights(&r, 2), vec![s("akidb-candle", 1)]);
    assert_eq!(
        hr["sessionPersistence"],
        json!({"type": "Cookie"}),
        "the rule's own settings"
    );
    // The header rule is not a managed rule: the weights still read from rule 0.
    assert_eq!(view(&r, &n).canary_weight, Some(0));
    // Steady: a second reconcile at the same weight writes nothing.
    assert!(!act(&mut r, &n, Action::SetCanaryWeight(0)));
    assert!(act(&mut r, &n, Action::SetCanaryWeight(10)));
    assert_eq!(r["spec"]["rules"].as_array().unwrap().len(), 3);
    // The cutover, and equally a rollback, remove it.
    assert!(act(
        &mut r,
        &n,
        Action::PointPrimaryIngressAt(Backend::Candidate)
    ));
    assert_eq!(r["spec"]["rules"].as_array().unwrap().len(), 2);
}

#[test]
fn every_patch_is_guarded_by_the_resource_version_it_was_computed_from() {
    let n = names(None);
    let r = route();
    let p = patch_for(&r, &n, &Action::SetCanaryWeight(5))
        .unwrap()
        .unwrap();
    let ops = serde_json::to_value(&p).unwrap();
    assert_eq!(
        ops[0],
        json!({"op": "test", "path": "/metadata/resourceVersion", "value": "41"})
    );
    let mut moved = r.clone();
    moved["metadata"]["resourceVersion"] = json!("42");
    assert!(
        json_patch::patch(&mut moved, &p).is_err(),
        "a concurrent edit fails the test op"
    );
}

#[test]
fn a_route_that_cannot_be_shifted_safely_blocks_with_the_reason() {
    let n = names(None);
    let mut r = route();
    r["status"] = json!({"parents": []});
    assert_eq!(
        view(&r, &n).blocked.as_deref(),
        Some("HTTPRoute embed is not accepted by any Gateway yet (status.parents is empty)")
    );
    r["status"] = json!({"parents": [{"parentRef": {"name": "gw"}, "controllerName": "x",
        "conditions": [{"type": "Accepted", "status": "False", "reason": "NotAllowedByListeners",
                        "message": "no listener allows routes from prod", "lastTransitionTime": "2026-12-02T00:00:00Z"}]}]});
    assert_eq!(
        view(&r, &n).blocked.as_deref(),
        Some("HTTPRoute embed is not accepted by Gateway gw: NotAllowedByListeners: no listener allows routes from prod")
    );

    let mut r = route();
    r["spec"]["rules"][0]["backendRefs"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "legacy", "port": 80, "weight": 5}));
    let v = view(&r, &n);
    assert!(
        v.blocked
            .as_deref()
            .unwrap()
            .contains("rule 0 also sends traffic to Service legacy"),
        "{v:?}"
    );
    assert!(patch_for(&r, &n, &Action::SetCanaryWeight(1)).is_err());

    let mut r = route();
    r["spec"]["rules"][0]["backendRefs"][0]["name"] = json!("other");
    let v = view(&r, &n);
    assert_eq!(
        v.blocked.as_deref(),
        Some("HTTPRoute embed has no rule with a backendRef to Service akidb-mlx")
    );
}

#[test]
fn a_route_in_another_namespace_names_the_services_namespace() {
    let n = names(None);
    let mut r = route();
    r["metadata"]["namespace"] = json!("gateways");
    r["spec"]["rules"][0]["backendRefs"][0]["namespace"] = json!("prod");
    assert_eq!(view(&r, &n).primary, PrimaryBackend::Baseline);
    act(&mut r, &n, Action::SetCanaryWeight(20));
    assert_eq!(r["spec"]["rules"][0]["backendRefs"][1]["namespace"], "prod");
    // A same-named Service in the route's own namespace is not ours.
    let mut r = route();
    r["metadata"]["namespace"] = json!("gateways");
    assert!(view(&r, &n).blocked.is_some());
}

#[test]
fn too_many_rules_for_the_header_is_an_error_not_a_rejected_write() {
    let h = HEADER();
    let n = names(Some(&h));
    let mut r = route();
    let rule = r["spec"]["rules"][0].clone();
    let rules = r["spec"]["rules"].as_array_mut().unwrap();
    while rules.len() < 9 {
        rules.push(rule.clone());
    }
    let e = patch_for(&r, &n, &Action::SetCanaryWeight(0)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "HTTPRoute embed would need 17 rules for the canary header, more than Gateway API's 16"
    );
}
