//! The committed CRD must match the Rust types, and the schema must carry the defaults and
//! validations users rely on.

use embedding_rollout_operator::crd::{self, EmbeddingRollout, EmbeddingRolloutSpec, NoDataPolicy};
use kube::CustomResourceExt;

const COMMITTED: &str = include_str!("../../crds/embeddingrollouts.rollout.akidb.io.yaml");

#[test]
fn committed_crd_is_up_to_date() {
    assert!(
        COMMITTED == crd::crd_yaml(),
        "crds/embeddingrollouts.rollout.akidb.io.yaml is stale: run make crds"
    );
}

#[test]
fn every_committed_crd_is_up_to_date_and_none_is_left_over() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds");
    let files = crd::crd_files();
    for (file, yaml) in &files {
        let committed = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
        assert!(committed == *yaml, "crds/{file} is stale: run make crds");
    }
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|f| f.ends_with(".yaml"))
        .collect();
    on_disk.sort();
    let mut generated: Vec<String> = files.into_iter().map(|(f, _)| f).collect();
    generated.sort();
    assert_eq!(on_disk, generated, "crds/ holds exactly the generated CRDs");
}

/// Helm and kubectl read YAML as YAML 1.1 (Go's yaml.v2), where a bare `y`, `n`, `yes`, `no`,
/// `on` or `off` is a bool, while our own YAML 1.2 parser reads a string: a property named `n`
/// made Helm refuse the chart's EmbeddingRolloutAnalysis CRD ("cannot unmarshal bool into ...
/// string"). No bare key or scalar of a generated CRD may be one of those words.
#[test]
fn no_generated_crd_holds_a_word_that_yaml_1_1_reads_as_a_bool() {
    const YAML_1_1_BOOLS: [&str; 16] = [
        "y", "Y", "n", "N", "yes", "Yes", "YES", "no", "No", "NO", "on", "On", "ON", "off", "Off",
        "OFF",
    ];
    for (file, yaml) in crd::crd_files() {
        for (i, line) in yaml.lines().enumerate() {
            let t = line.trim_start().trim_start_matches("- ");
            // A mapping key (`n:`), a list item (`- n`) or a value (`key: n`).
            let (key, value) = match t.split_once(':') {
                Some((k, v)) => (k, Some(v.trim())),
                None => (t, None),
            };
            for word in [Some(key.trim()), value].into_iter().flatten() {
                assert!(
                    !YAML_1_1_BOOLS.contains(&word),
                    "crds/{file} line {}: `{}` is a bool in YAML 1.1",
                    i + 1,
                    line.trim()
                );
            }
        }
    }
}

#[test]
fn gate_templates_come_in_a_namespaced_and_a_cluster_kind() {
    use embedding_rollout_operator::crd::{ClusterEmbeddingGateTemplate, EmbeddingGateTemplate};
    let ns = EmbeddingGateTemplate::crd();
    assert_eq!(ns.spec.scope, "Namespaced");
    assert_eq!(ns.spec.names.short_names, Some(vec!["egt".to_string()]));
    let cluster = ClusterEmbeddingGateTemplate::crd();
    assert_eq!(cluster.spec.scope, "Cluster");
    assert_eq!(
        cluster.spec.names.short_names,
        Some(vec!["cegt".to_string()])
    );
    for crd in [ns, cluster] {
        let schema = schema_of(&crd);
        let gates = &schema["properties"]["spec"]["properties"]["gates"];
        assert_eq!(gates["minItems"], 1, "{gates}");
        assert_eq!(gates["maxItems"], 20, "{gates}");
        assert_eq!(
            gates["x-kubernetes-validations"][0]["message"],
            "gate names must be unique"
        );
        // The same gate as analysis.gates.custom, with its max-or-min rule.
        assert!(
            gates["items"]["x-kubernetes-validations"]
                .to_string()
                .contains("exactly one"),
            "{gates}"
        );
    }
}

#[test]
fn kept_analyses_are_a_namespaced_kind_of_their_own_with_a_bounded_list_and_useful_columns() {
    use embedding_rollout_operator::crd::{EmbeddingRolloutAnalysis, ANALYSES_PER_OBJECT};
    use embedding_rollout_operator::history::OBJECT_BYTES;
    let crd = EmbeddingRolloutAnalysis::crd();
    assert_eq!(
        crd.metadata.name.as_deref(),
        Some("embeddingrolloutanalyses.rollout.akidb.io")
    );
    assert_eq!(crd.spec.group, "rollout.akidb.io");
    assert_eq!(crd.spec.scope, "Namespaced");
    assert_eq!(crd.spec.names.kind, "EmbeddingRolloutAnalysis");
    assert_eq!(crd.spec.names.plural, "embeddingrolloutanalyses");
    assert_eq!(
        crd.spec.names.short_names,
        Some(vec!["eranalysis".to_string()])
    );
    let v = &crd.spec.versions[0];
    assert_eq!(v.name, "v1alpha1");
    // Written whole by its one writer: no status subresource to patch separately.
    assert!(v.subresources.is_none());
    let columns: Vec<(&str, &str, i32)> = v
        .additional_printer_columns
        .as_ref()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c.name.as_str(),
                c.json_path.as_str(),
                c.priority.unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        columns,
        [
            ("Rollout", ".spec.rollout", 0),
            ("Step", ".spec.stepOf", 0),
            ("Weight", ".spec.weight", 0),
            ("Analyses", ".spec.count", 0),
            ("Pass", ".spec.passed", 0),
            ("Fail", ".spec.failed", 0),
            ("Inconclusive", ".spec.inconclusive", 0),
            ("Latest", ".spec.lastVerdict", 0),
            ("Last-Analysis", ".spec.lastTime", 0),
            ("Step-Started", ".spec.stepStartedAt", 1),
            ("Age", ".metadata.creationTimestamp", 0),
        ]
    );
    let schema = schema_of(&crd);
    let spec = &schema["properties"]["spec"];
    let analyses = &spec["properties"]["analyses"];
    assert_eq!(analyses["maxItems"], ANALYSES_PER_OBJECT);
    assert_eq!(analyses["items"]["required"], serde_json::json!(["t", "v"]));
    assert_eq!(spec["properties"]["weight"]["maximum"], 100.0);
    // What `kubectl explain` says matches the bounds the operator keeps.
    let about = spec["description"].as_str().unwrap();
    assert!(
        about.contains(&format!(
            "at most {ANALYSES_PER_OBJECT} analyses or {} KiB each",
            OBJECT_BYTES / 1024
        )),
        "{about}"
    );
    // And the rollout's status points at them.
    let history = &schema_of(&EmbeddingRollout::crd())["properties"]["status"]["properties"]
        ["history"]["description"];
    assert!(
        history
            .as_str()
            .unwrap()
            .contains("EmbeddingRolloutAnalysis"),
        "{history}"
    );
}

fn schema() -> serde_json::Value {
    schema_of(&EmbeddingRollout::crd())
}

fn schema_of(
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> serde_json::Value {
    let v = &crd.spec.versions[0];
    serde_json::to_value(
        v.schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema
            .as_ref()
            .unwrap(),
    )
    .unwrap()
}

#[test]
fn names_scope_and_subresources() {
    let crd = EmbeddingRollout::crd();
    assert_eq!(
        crd.metadata.name.as_deref(),
        Some("embeddingrollouts.rollout.akidb.io")
    );
    assert_eq!(crd.spec.group, "rollout.akidb.io");
    assert_eq!(crd.spec.scope, "Namespaced");
    assert_eq!(crd.spec.names.kind, "EmbeddingRollout");
    assert_eq!(
        crd.spec.names.short_names,
        Some(vec!["erollout".to_string()])
    );
    let v = &crd.spec.versions[0];
    assert_eq!(v.name, "v1alpha1");
    assert!(v.subresources.as_ref().unwrap().status.is_some());
    let columns: Vec<_> = v
        .additional_printer_columns
        .as_ref()
        .unwrap()
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(columns, ["Phase", "Step", "Weight", "Candidate", "Age"]);
}

#[test]
fn schema_carries_defaults() {
    let s = schema();
    let spec = &s["properties"]["spec"]["properties"];
    assert_eq!(spec["rollbackDeadline"]["default"], "5m");
    let steps = &spec["steps"]["default"];
    assert_eq!(steps[0]["weight"], 1);
    assert_eq!(steps[3]["duration"], "7d");
    let analysis = &spec["analysis"]["properties"];
    assert_eq!(analysis["interval"]["default"], "1m");
    assert_eq!(analysis["failureLimit"]["default"], 3);
    assert_eq!(analysis["noDataPolicy"]["default"], "Hold");
    assert_eq!(analysis["gates"]["properties"]["maxP95Ms"]["default"], 35.0);
    assert_eq!(
        spec["baseline"]["properties"]["metricsService"]["default"],
        "mlx"
    );
    assert_eq!(
        spec["candidate"]["properties"]["metricsService"]["default"],
        "candle"
    );
    assert_eq!(
        spec["baseline"]["properties"]["standbyReplicas"]["default"],
        2
    );
}

#[test]
fn schema_carries_validations_with_messages() {
    let s = schema();
    let spec = &s["properties"]["spec"]["properties"];
    let rules = spec["steps"]["x-kubernetes-validations"]
        .as_array()
        .unwrap();
    let messages: Vec<_> = rules
        .iter()
        .map(|r| r["message"].as_str().unwrap())
        .collect();
    assert!(messages.contains(&"step weights must be strictly increasing"));
    assert!(messages.contains(&"the last step must have weight 100"));
    // 0 is for a header-only first step; the spec-level rules below keep it there.
    assert_eq!(
        spec["steps"]["items"]["properties"]["weight"]["minimum"],
        0.0
    );
    let spec_rules: Vec<_> = s["properties"]["spec"]["x-kubernetes-validations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["message"].as_str().unwrap())
        .collect();
    assert!(spec_rules.contains(
        &"set exactly one traffic provider: ingress (or traffic.nginx) or traffic.gatewayAPI"
    ));
    assert!(spec_rules.contains(&"only the first step may have weight 0"));
    assert_eq!(
        spec["steps"]["items"]["properties"]["weight"]["maximum"],
        100.0
    );
    assert_eq!(
        spec["steps"]["items"]["properties"]["duration"]["pattern"],
        embedding_rollout_operator::duration::PATTERN
    );
    let gates = &spec["analysis"]["properties"]["gates"]["x-kubernetes-validations"];
    assert!(gates
        .to_string()
        .contains("gates.maxP95Ms must be positive"));
    assert_eq!(
        spec["analysis"]["properties"]["failureLimit"]["minimum"],
        1.0
    );
    let analysis = &spec["analysis"]["x-kubernetes-validations"];
    assert!(analysis
        .to_string()
        .contains("analysis.interval must be positive"));
    // An empty list is reported by minItems, not by an index error in the "last step" rule.
    assert!(rules
        .iter()
        .any(|r| r["rule"] == "size(self) == 0 || self[size(self) - 1].weight == 100"));
}

#[test]
fn minimal_object_gets_the_documented_defaults() {
    let spec: EmbeddingRolloutSpec = serde_json::from_value(serde_json::json!({
        "baseline": {"deployment": "akidb-mlx", "service": "akidb-mlx"},
        "candidate": {"image": "ghcr.io/akidb/candle-embedder:1.0.0"},
        "ingress": {"name": "akidb-ingress"}
    }))
    .unwrap();
    assert_eq!(spec.steps, crd::default_steps());
    assert_eq!(spec.baseline.standby_replicas, 2);
    assert_eq!(spec.baseline.metrics_service, "mlx");
    assert_eq!(spec.candidate.replicas, 2);
    assert_eq!(spec.candidate.full_replicas(), 2);
    assert_eq!(spec.candidate.metrics_service, "candle");
    assert_eq!(spec.analysis.gates.max_p95_ms, 35.0);
    assert_eq!(spec.analysis.gates.max_error_rate, 0.005);
    assert_eq!(spec.analysis.rollback_triggers.p95_ms, 50.0);
    assert_eq!(spec.analysis.no_data_policy, NoDataPolicy::Hold);
    assert!(spec.promotion.auto);
    assert_eq!(spec.rollback_deadline.parse().unwrap().as_secs(), 300);
    assert!(!spec.paused);
}

#[test]
fn candidate_name_defaults_to_rollout_name() {
    let spec: EmbeddingRolloutSpec = serde_json::from_value(serde_json::json!({
        "baseline": {"deployment": "a", "service": "a"},
        "candidate": {"image": "img"},
        "ingress": {"name": "ing"}
    }))
    .unwrap();
    let r = EmbeddingRollout::new("emb", spec);
    assert_eq!(r.candidate_name(), "emb-candle");
    assert_eq!(r.spec.nginx().unwrap().canary_name(), "ing-canary");
}

#[test]
fn the_traffic_provider_is_the_legacy_ingress_traffic_nginx_or_gateway_api_and_never_two() {
    use embedding_rollout_operator::crd::Provider;
    let spec = |extra: serde_json::Value| -> EmbeddingRolloutSpec {
        let mut v = serde_json::json!({
            "baseline": {"deployment": "a", "service": "a"},
            "candidate": {"image": "img"},
        });
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        serde_json::from_value(v).unwrap()
    };
    let legacy = spec(serde_json::json!({"ingress": {"name": "ing"}}));
    assert!(matches!(legacy.provider(), Some(Provider::Nginx(i)) if i.name == "ing"));
    let nginx = spec(serde_json::json!({"traffic": {"nginx": {"name": "ing"}}}));
    assert_eq!(nginx.provider(), legacy.provider());
    let gw = spec(serde_json::json!({"traffic": {
        "gatewayAPI": {"httpRoute": {"name": "embed", "namespace": "gateways"}},
        "canaryHeader": {"name": "X-Canary", "value": "always"}}}));
    assert!(
        matches!(gw.provider(), Some(Provider::GatewayApi(g)) if g.http_route.name == "embed" && !g.remove_baseline_on_promotion)
    );
    assert_eq!(gw.traffic_object(), "HTTPRoute gateways/embed");
    assert_eq!(gw.canary_header().unwrap().value, "always");
    let both = spec(serde_json::json!({"ingress": {"name": "ing"},
        "traffic": {"gatewayAPI": {"httpRoute": {"name": "embed"}}}}));
    assert_eq!(both.provider(), None);
    assert_eq!(spec(serde_json::json!({})).provider(), None);
    // Round trip keeps the field names users write.
    let v = serde_json::to_value(&gw).unwrap();
    assert_eq!(v["traffic"]["gatewayAPI"]["httpRoute"]["name"], "embed");
    assert!(v.get("ingress").is_none());
}
