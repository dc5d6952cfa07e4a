//! End-to-end rollout scenarios on the real node: kube-apiserver, etcd, the controllers, the
//! kubelet with containerd, kube-proxy and Traefik (both providers); the operator installed by its
//! Helm chart (two pods, leader election); the demo baseline and the candidates as pods of the
//! embedder image; Prometheus outside the cluster scraping the pods; constant client traffic
//! through Traefik, recorded request by request. One node for the binary, a namespace per
//! scenario: `cargo test -p e2e --test scenarios -- --test-threads=1 --nocapture`.
//! Missing prerequisites fail the test with the command that provides them; nothing is skipped.

use std::time::{Duration, Instant, SystemTime};

use e2e::controlplane::ControlPlane;
use e2e::node_env::cluster;
use e2e::rollout_env::{Provider, RolloutEnv, ROUTE_SETTLE};
use e2e::scenario::{
    self, bucket_by_served, expected_candidate_share, fast_rollout, phase, secs_between,
    served_from, timestamp, Observation, BASELINE, CANDIDATE, OPERATOR_NAMESPACE, OPERATOR_SA,
};
use e2e::traffic::Sample;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::api::{Api, PostParams};
use serde_json::{json, Value};

/// Client requests per second. The gates need about 1500 candidate requests per step to be sure of
/// a 0.5 % error bound (docs/analysis.md); 30 req/s gathers them in under two minutes at 50 %, and
/// the shared 2-core machine (two baseline pods, two candidate pods, two operator pods, Traefik,
/// Prometheus, the control plane and the clients) still answers well within the latency gates.
const RATE: f64 = 30.0;

async fn env(ns: &str, provider: Provider) -> RolloutEnv {
    RolloutEnv::start(cluster().await, ns, provider, &[]).await
}

fn ok<T>(r: anyhow::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{e:#}"))
}

fn terminal(r: &Value) -> bool {
    matches!(
        phase(r),
        "Promoted" | "Decommissioned" | "RolledBack" | "Failed"
    )
}

/// Weights only go up while the rollout moves forward: the rollout's step and currentWeight and the
/// candidate's weight in the traffic object, over every observation.
fn assert_never_backwards(log: &[Observation]) {
    let forward = |o: &Observation| {
        matches!(
            o.phase.as_str(),
            "" | "Pending" | "Deploying" | "Progressing" | "Paused" | "Promoting" | "Promoted"
        )
    };
    let mut step = 0;
    let mut weight = 0;
    let mut routed = 0;
    for o in log.iter().filter(|o| forward(o)) {
        assert!(o.step >= step, "step went back {step} -> {}: {o:?}", o.step);
        assert!(
            o.weight >= weight,
            "currentWeight went back {weight} -> {}: {o:?}",
            o.weight
        );
        if let Some(c) = o.candidate_weight {
            assert!(
                c >= routed,
                "the candidate's route weight went back {routed} -> {c}: {o:?}"
            );
            routed = c;
        }
        step = o.step;
        weight = o.weight;
    }
}

/// The candidate's share under each routing the traffic object had (requests sent within
/// [`ROUTE_SETTLE`] of a change left out), within a tolerance loose enough for small samples.
/// Returns the weights (basis points) that had enough samples.
fn assert_shares(log: &[Observation], samples: &[Sample]) -> Vec<u32> {
    let served = served_from(log);
    let mut seen = Vec::new();
    println!("  routing                          requests  candle share  expected");
    for (s, bucket) in bucket_by_served(&served, samples, ROUTE_SETTLE) {
        let answered: Vec<&Sample> = bucket.iter().filter(|s| s.served_by.is_some()).collect();
        let n = answered.len();
        let candle = answered
            .iter()
            .filter(|s| s.served_by.as_deref() == Some("candle"))
            .count();
        let share = if n == 0 {
            0.0
        } else {
            candle as f64 / n as f64
        };
        let expected = expected_candidate_share(s);
        println!(
            "  primary={:<12} candidate={:>5}bp {:>9}  {:>11.3}  {:>8.3}",
            s.primary, s.candidate_bp, n, share, expected
        );
        if n < 20 {
            continue;
        }
        if expected == 0.0 || expected == 1.0 {
            assert_eq!(
                share, expected,
                "candidate share under {s:?} over {n} requests"
            );
        } else {
            let sd = (expected * (1.0 - expected) / n as f64).sqrt();
            let tol = (4.0 * sd).max(0.07);
            assert!(
                (share - expected).abs() <= tol,
                "candidate share {share:.3} under {s:?} over {n} requests; expected {expected} +- {tol:.3}"
            );
        }
        seen.push(if s.primary == CANDIDATE {
            10_000
        } else {
            s.candidate_bp
        });
    }
    seen
}

/// The traffic object sends everything to the baseline again: the primary Ingress on it and the
/// canary Ingress gone or at 0, or the HTTPRoute's only weighted ref the baseline's.
async fn assert_on_baseline(env: &RolloutEnv) {
    let r = ok(env.routing().await);
    assert_eq!(r.primary.as_deref(), Some(BASELINE), "{r:?}");
    assert!(
        matches!(r.candidate_weight, None | Some(0)),
        "the candidate keeps route weight: {r:?}"
    );
}

async fn replicas(env: &RolloutEnv, name: &str) -> i32 {
    let api: Api<Deployment> = Api::namespaced(env.cp.admin.clone(), &env.ns);
    api.get(name)
        .await
        .expect("get Deployment")
        .spec
        .unwrap()
        .replicas
        .unwrap_or(1)
}

fn failures(samples: &[Sample]) -> Vec<&Sample> {
    samples.iter().filter(|s| !s.ok()).collect()
}

/// Fails with how many client requests failed and the first few of them.
fn assert_no_failed_requests(samples: &[Sample]) {
    let failed = failures(samples);
    assert!(
        failed.is_empty(),
        "{} of {} client requests failed, e.g. {:?}",
        failed.len(),
        samples.len(),
        &failed[..failed.len().min(5)]
    );
}

/// A webhook receiver on the node's bridge address (the operator's pods post to it), its URL in
/// the Secret the rollout's notifications name.
async fn webhook(env: &RolloutEnv, rollout: &mut Value) -> e2e::webhook::Receiver {
    let ip = env.cp.node.as_ref().expect("a node").ip.clone();
    let hook = ok(e2e::webhook::Receiver::start(&ip).await);
    ok(hook.create_secret(&env.cp.admin, &env.ns).await);
    rollout["spec"]["notifications"] = e2e::webhook::Receiver::spec();
    hook
}

/// `kind step: message` per notification, for the log.
fn summary(got: &[Value]) -> String {
    got.iter()
        .map(|b| format!("\n  {} {}: {}", b["kind"], b["step"], b["message"]))
        .collect()
}

/// Runs a rollout to its end with traffic and returns (final rollout, samples, observations).
async fn run_to_end(
    env: &mut RolloutEnv,
    rollout: Value,
    timeout: Duration,
) -> (Value, Vec<Sample>, Vec<Observation>) {
    let name = rollout["metadata"]["name"].as_str().unwrap().to_string();
    env.start_traffic(RATE);
    env.create_rollout(&rollout)
        .await
        .unwrap_or_else(|e| panic!("create rollout: {e}"));
    let mut log = Vec::new();
    let fin = ok(env
        .wait_rollout(&name, timeout, "a final phase", &mut log, terminal)
        .await);
    // Traffic after the end shows where clients are now (past Traefik's settle time).
    tokio::time::sleep(ROUTE_SETTLE + Duration::from_secs(3)).await;
    let samples = env.stop_traffic().await;
    (fin, samples, log)
}

/// Restart counts of the operator's containers, by pod.
async fn operator_restarts(cp: &ControlPlane) -> Vec<(String, i32, String)> {
    e2e::rollout_env::operator_pods(cp)
        .await
        .into_iter()
        .filter_map(|p| {
            let name = p.metadata.name?;
            let cs = p.status?.container_statuses?.into_iter().next()?;
            Some((name, cs.restart_count, cs.container_id.unwrap_or_default()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s1_happy_path_promotes_with_traffic_shares_within_tolerance_and_no_failed_requests() {
    let t = Instant::now();
    let mut env = env("happy", Provider::Nginx).await;
    let mut rollout = env.rollout_spec("happy");
    // The seed's HPA (2-10 at 70 % CPU). The controller-manager's autoscaler runs, but no metrics
    // server does, so it keeps the operator's counts (it only clamps to min/max without
    // metrics); what is checked is the object the operator keeps.
    rollout["spec"]["candidate"]["autoscaling"] = json!({"maxReplicas": 10});
    // The same model on both sides: the parity probe must find them equal. The user's own
    // short texts from a ConfigMap: the built-in set (517 tokens, about 250 ms of one pod's CPU
    // here) every 5 s would itself be the 5 % tail the latency gates judge at this small load.
    let texts: k8s_openapi::api::core::v1::ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "parity-texts"},
        "data": {"texts": "What is the capital of France?\nhello\n東京は日本の首都です。\n🚀 launch day!\n"}
    }))
    .unwrap();
    Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(env.cp.admin.clone(), &env.ns)
        .create(&PostParams::default(), &texts)
        .await
        .expect("create the parity texts");
    rollout["spec"]["analysis"]["gates"]["parity"] =
        json!({"texts": {"name": "parity-texts", "key": "texts"}, "every": 3});
    // Gates written once in templates (examples/gate-templates.yaml): a cluster-wide blocking one
    // (the candidate served requests in the window) and a namespaced report-only one.
    env.cp
        .apply_as_admin(&format!(
            r#"apiVersion: rollout.akidb.io/v1alpha1
kind: ClusterEmbeddingGateTemplate
metadata: {{name: e2e-served}}
spec:
  gates:
    - name: served-requests
      query: 'sum(increase(embedding_requests_total{{service="{{{{service}}}}"}}[{{{{window}}}}]))'
      min: 1
---
apiVersion: rollout.akidb.io/v1alpha1
kind: EmbeddingGateTemplate
metadata: {{name: team-report, namespace: {ns}}}
spec:
  gates:
    - name: candidate-errors
      query: 'sum(increase(embedding_errors_total{{service="{{{{service}}}}"}}[{{{{window}}}}])) or vector(0)'
      max: 0
      blocking: false
"#,
            ns = env.ns
        ))
        .await
        .expect("create the gate templates");
    rollout["spec"]["analysis"]["gates"]["templates"] =
        json!([{"name": "e2e-served", "clusterScope": true}, {"name": "team-report"}]);
    let hook = webhook(&env, &mut rollout).await;
    let (fin, samples, log) = run_to_end(&mut env, rollout, Duration::from_secs(600)).await;
    println!(
        "[happy] final phase {} after {:.1}s; {} requests",
        phase(&fin),
        t.elapsed().as_secs_f64(),
        samples.len()
    );
    assert_eq!(
        phase(&fin),
        "Promoted",
        "status: {}",
        serde_json::to_string_pretty(&fin["status"]).unwrap()
    );
    assert_no_failed_requests(&samples);
    assert_never_backwards(&log);
    let parity: Vec<f64> = fin["status"]["history"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|a| a["gates"].as_array().cloned().unwrap_or_default())
        .filter(|g| g["gate"] == "parity")
        .map(|g| {
            assert_eq!(g["verdict"], "Pass", "parity of equal models: {g}");
            assert_eq!(g["samples"], 4, "the ConfigMap's four texts: {g}");
            g["value"].as_f64().expect("min cosine")
        })
        .collect();
    println!("[happy] parity min cosines (f32 against f32): {parity:?}");
    // The templates' gates were judged in every analysis kept, and the blocking one passed
    // before the promotion.
    let history = fin["status"]["history"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(!history.is_empty(), "no history");
    for a in &history {
        let gates = a["gates"].as_array().cloned().unwrap_or_default();
        for name in ["custom:served-requests", "custom:candidate-errors"] {
            assert!(
                gates.iter().any(|g| g["gate"] == name),
                "{name} missing from {a}"
            );
        }
        assert!(
            !gates.iter().any(|g| g["gate"] == "gateTemplates"),
            "a template problem: {a}"
        );
    }
    let last = &history[history.len() - 1];
    let served = last["gates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["gate"] == "custom:served-requests")
        .unwrap();
    assert_eq!(served["verdict"], "Pass", "{served}");
    assert!(!parity.is_empty(), "no parity finding in the history");
    assert!(parity.iter().all(|c| *c > 0.9999), "{parity:?}");
    let seen = assert_shares(&log, &samples);
    for bp in [5_000, 10_000] {
        assert!(
            seen.contains(&bp),
            "no (or too little) traffic observed at {bp} basis points; seen {seen:?}"
        );
    }
    let routing = ok(env.routing().await);
    assert_eq!(
        routing,
        e2e::rollout_env::Routing {
            primary: Some(CANDIDATE.into()),
            candidate_weight: None
        },
        "the primary Ingress on the candidate, the canary Ingress deleted"
    );
    assert_eq!(
        replicas(&env, BASELINE).await,
        1,
        "baseline at standbyReplicas"
    );
    let hpas: Api<k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler> =
        Api::namespaced(env.cp.admin.clone(), &env.ns);
    let hpa = hpas
        .get(CANDIDATE)
        .await
        .expect("the candidate's HorizontalPodAutoscaler is kept after promotion");
    let spec = hpa.spec.clone().unwrap();
    assert_eq!(spec.scale_target_ref.name, CANDIDATE);
    assert_eq!((spec.min_replicas, spec.max_replicas), (Some(2), 10));
    assert_eq!(
        spec.metrics.unwrap()[0]
            .resource
            .as_ref()
            .unwrap()
            .target
            .average_utilization,
        Some(70)
    );
    assert_eq!(
        hpa.metadata.owner_references.unwrap()[0].kind,
        "EmbeddingRollout",
        "deleting the rollout garbage-collects it"
    );
    let tail: Vec<&Sample> = samples.iter().rev().take(20).collect();
    assert!(
        tail.iter()
            .all(|s| s.served_by.as_deref() == Some("candle")),
        "after promotion every request is served by candle"
    );
    // One message per milestone, in order, none twice: two steps, then the promotion.
    let got = ok(hook.wait_for("Promoted", Duration::from_secs(20)).await);
    println!("[happy] notifications: {}", summary(&got));
    assert_eq!(
        got.iter()
            .map(|b| format!(
                "{} {}",
                b["kind"].as_str().unwrap(),
                b["step"].as_str().unwrap()
            ))
            .collect::<Vec<_>>(),
        ["StepStarted 1/2", "StepStarted 2/2", "Promoted 2/2"],
        "{got:#?}"
    );
    assert!(got
        .iter()
        .all(|b| b["rollout"] == "happy" && b["namespace"] == env.ns.as_str()));
    assert_eq!(got[0]["weight"], 50);
    env.shutdown().await;
    println!("[happy] wall time {:.1}s", t.elapsed().as_secs_f64());
}

/// Rollback timing: first failing check -> all traffic back on the baseline, from the status and
/// from the clients (the last response served by candle).
async fn rollback_scenario(
    test: &str,
    provider: Provider,
    chaos: &[&str],
    expect_no_client_failures: bool,
) {
    let t = Instant::now();
    let mut env = env(test, provider).await;
    let mut rollout = env.rollout_spec(test);
    rollout["spec"]["candidate"]["args"] = json!(chaos);
    let hook = webhook(&env, &mut rollout).await;
    let (fin, samples, _log) = run_to_end(&mut env, rollout, Duration::from_secs(300)).await;
    let status = &fin["status"];
    println!("[{test}] last analyses: {}", status["history"]);
    assert_eq!(
        phase(&fin),
        "RolledBack",
        "status: {}",
        serde_json::to_string_pretty(status).unwrap()
    );
    let rb = &status["rollback"];
    let first_fail = timestamp(&rb["firstFailureAt"])
        .or_else(|| {
            status["history"]
                .as_array()?
                .iter()
                .find(|a| a["verdict"] == "Fail")
                .and_then(|a| timestamp(&a["time"]))
        })
        .unwrap_or_else(|| panic!("no first failure time in the status: {status}"));
    let started = timestamp(&rb["startedAt"]).expect("rollback.startedAt");
    let completed = timestamp(&rb["completedAt"]).expect("rollback.completedAt");
    let last_candle = samples
        .iter()
        .filter(|s| s.served_by.as_deref() == Some("candle"))
        .map(|s| s.wall + s.latency)
        .max()
        .expect("the candidate served some requests before the rollback");
    let server_secs = secs_between(first_fail, completed);
    let client_secs = secs_between(first_fail, last_candle);
    println!(
        "[{test}] reason: {}\n[{test}] first failing check -> rollback started {:.1}s -> completed {:.1}s (status); \
         last candle-served response {:.1}s after the first failing check (clients)",
        rb["reason"].as_str().unwrap_or(""),
        secs_between(first_fail, started),
        server_secs,
        client_secs
    );
    // The spec's rollbackDeadline is 1 m; the wait above allows 300 s, so this bound can fail.
    assert!(
        server_secs < 60.0 && client_secs < 60.0,
        "rollback too slow: {server_secs:.1}s (status), {client_secs:.1}s (clients)"
    );
    // Nothing reaches the candidate once the rollback is complete and Traefik has applied it.
    let late: Vec<&Sample> = samples
        .iter()
        .filter(|s| {
            s.served_by.as_deref() == Some("candle")
                && secs_between(completed, s.wall) > ROUTE_SETTLE.as_secs_f64()
        })
        .collect();
    assert!(
        late.is_empty(),
        "candle served after the rollback: {late:?}"
    );
    assert_on_baseline(&env).await;
    assert_eq!(replicas(&env, BASELINE).await, 2, "baseline restored");
    // Told when the rollback starts and when it is done (why and how fast), once each, last.
    let got = ok(hook.wait_for("RolledBack", Duration::from_secs(20)).await);
    println!("[{test}] notifications: {}", summary(&got));
    let kinds: Vec<&str> = got.iter().map(|b| b["kind"].as_str().unwrap()).collect();
    let n = kinds.len();
    assert!(n >= 3, "{got:#?}");
    assert_eq!(
        kinds[n - 2..],
        ["RollbackStarted", "RolledBack"],
        "{got:#?}"
    );
    assert!(
        kinds[..n - 2].iter().all(|k| *k == "StepStarted"),
        "{got:#?}"
    );
    let last = &got[n - 1];
    let text = last["message"].as_str().unwrap();
    assert!(text.contains("rolled back in"), "timing in {text:?}");
    assert!(
        text.contains(rb["reason"].as_str().unwrap()),
        "reason {:?} in {text:?}",
        rb["reason"]
    );
    let failed = failures(&samples);
    println!(
        "[{test}] client requests {}, failed {} (all served by {:?})",
        samples.len(),
        failed.len(),
        failed
            .iter()
            .map(|s| s.served_by.clone().unwrap_or_default())
            .collect::<std::collections::BTreeSet<_>>()
    );
    if expect_no_client_failures {
        assert_no_failed_requests(&samples);
    } else {
        assert!(
            failed
                .iter()
                .all(|s| s.served_by.as_deref() == Some("candle")),
            "only the faulty candidate may fail requests: {:?}",
            failed
                .iter()
                .filter(|s| s.served_by.as_deref() != Some("candle"))
                .take(5)
                .collect::<Vec<_>>()
        );
    }
    env.shutdown().await;
    println!("[{test}] wall time {:.1}s", t.elapsed().as_secs_f64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s2_latency_regression_rolls_back_gateway_api() {
    rollback_scenario(
        "latency",
        Provider::Gateway,
        &["--chaos-latency-ms=40"],
        true,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3b_error_regression_rolls_back_gateway_api() {
    rollback_scenario(
        "errors-gateway",
        Provider::Gateway,
        &["--chaos-error-ratio=0.02"],
        false,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_error_regression_rolls_back_nginx() {
    rollback_scenario(
        "errors",
        Provider::Nginx,
        &["--chaos-error-ratio=0.02"],
        false,
    )
    .await;
}

/// Every operator container SIGKILLed through containerd in the middle of a step (as a node's OOM
/// killer or a crash would end them): the kubelet restarts them, one takes the Lease, and the
/// rollout continues from its status: same step, same step start, nothing undone, promoted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s4_operator_containers_sigkilled_mid_step_resume_at_the_same_step() {
    let t = Instant::now();
    let mut env = env("sigkill", Provider::Gateway).await;
    let name = "sigkill";
    let mut rollout = env.rollout_spec(name);
    // A long first step (50 %) to kill the operator in.
    rollout["spec"]["steps"][0]["duration"] = json!("60s");
    env.start_traffic(RATE);
    env.create_rollout(&rollout).await.expect("create rollout");
    let mut log = Vec::new();
    let before = ok(env
        .wait_rollout(
            name,
            Duration::from_secs(180),
            "step 1 at 50 %",
            &mut log,
            |r| r["status"]["currentStep"] == 0 && r["status"]["currentWeight"] == 50,
        )
        .await);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let step_started = before["status"]["stepStartedAt"].clone();
    let pods = operator_restarts(&env.cp).await;
    assert_eq!(pods.len(), 2, "two operator pods: {pods:?}");
    let killed = SystemTime::now();
    for (pod, _, container) in &pods {
        e2e::rollout_env::kill_container(&env.cp, container)
            .unwrap_or_else(|e| panic!("killing {pod}'s operator container: {e:#}"));
    }
    println!(
        "[sigkill] both operator containers SIGKILLed at {:.1}s, in step 1 ({pods:?})",
        env.secs()
    );
    // Only a restarted operator can write an analysis newer than the kill; until then nothing
    // may change (wait_rollout records every observation for the check below).
    let after = ok(env
        .wait_rollout(
            name,
            Duration::from_secs(90),
            "a restarted operator's first analysis",
            &mut log,
            |r| timestamp(&r["status"]["lastAnalysis"]["time"]).is_some_and(|t| t > killed),
        )
        .await);
    let resumed = SystemTime::now();
    let down: Vec<&Observation> = log.iter().filter(|o| o.wall > killed).collect();
    assert!(
        down.iter().all(|o| (o.step, o.weight) == (0, 50)),
        "changed while the operator was down: {down:?}"
    );
    let now = operator_restarts(&env.cp).await;
    for (pod, restarts, _) in &pods {
        let again = now.iter().find(|(p, _, _)| p == pod);
        assert!(
            again.is_some_and(|(_, r, _)| r > restarts),
            "{pod} restarted by the kubelet (restartCount {restarts} before): {now:?}"
        );
    }
    println!(
        "[sigkill] first analysis by a restarted operator {:.1}s after the kill (restart counts {:?})",
        secs_between(killed, resumed),
        now.iter().map(|(p, r, _)| (p, r)).collect::<Vec<_>>()
    );
    assert_eq!(after["status"]["currentStep"], 0, "resumed at step 1");
    assert_eq!(
        after["status"]["stepStartedAt"], step_started,
        "the step continues, not restarted"
    );
    let fin = ok(env
        .wait_rollout(
            name,
            Duration::from_secs(600),
            "a final phase",
            &mut log,
            terminal,
        )
        .await);
    let samples = env.stop_traffic().await;
    assert_eq!(
        phase(&fin),
        "Promoted",
        "status: {}",
        serde_json::to_string_pretty(&fin["status"]).unwrap()
    );
    assert_never_backwards(&log);
    assert_no_failed_requests(&samples);
    env.shutdown().await;
    println!("[sigkill] wall time {:.1}s", t.elapsed().as_secs_f64());
}

/// Prometheus down while the rollout is at 10 %: returns (env, rollout name, log) with Prometheus
/// stopped after `hold` of checks that nothing advanced.
async fn stop_prometheus_mid_rollout(
    env: &mut RolloutEnv,
    name: &str,
    policy: &str,
) -> Vec<Observation> {
    let mut rollout = env.rollout_spec(name);
    rollout["spec"]["analysis"]["failureLimit"] = json!(2);
    env.start_traffic(RATE);
    env.create_rollout(&rollout).await.expect("create rollout");
    let mut log = Vec::new();
    ok(env
        .wait_rollout(
            name,
            Duration::from_secs(180),
            "step 1 at 50 %",
            &mut log,
            |r| r["status"]["currentStep"] == 0 && r["status"]["currentWeight"] == 50,
        )
        .await);
    // The policy is set only now, so only Prometheus being down can trigger it.
    env.rollouts()
        .patch(
            name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"analysis": {"noDataPolicy": policy}}})),
        )
        .await
        .expect("set noDataPolicy");
    env.prometheus.stop().await;
    println!(
        "[{name}] noDataPolicy {policy}; Prometheus stopped at {:.1}s",
        env.secs()
    );
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s5_prometheus_down_holds_with_hold_policy_then_continues() {
    let t = Instant::now();
    let mut env = env("promdown", Provider::Nginx).await;
    let name = "promdown";
    let mut log = stop_prometheus_mid_rollout(&mut env, name, "Hold").await;
    let stopped = SystemTime::now();
    // Longer than the step (15 s) plus several analyses: nothing may advance.
    let hold_until = Instant::now() + Duration::from_secs(35);
    let mut last = Value::Null;
    while Instant::now() < hold_until {
        last = ok(env.rollout(name).await);
        let o = ok(env.observe(name).await);
        assert_eq!(
            (o.phase.as_str(), o.step, o.weight),
            ("Progressing", 0, 50),
            "advanced or rolled back without Prometheus: {}",
            last["status"]
        );
        log.push(o);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let history = last["status"]["history"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let during: Vec<&Value> = history
        .iter()
        .filter(|a| timestamp(&a["time"]).is_some_and(|at| at > stopped + Duration::from_secs(2)))
        .collect();
    assert!(
        !during.is_empty(),
        "no analysis while Prometheus was down: {}",
        last["status"]
    );
    assert!(
        during.iter().all(|a| a["verdict"] == "Inconclusive"),
        "analyses without Prometheus must be Inconclusive: {during:?}"
    );
    println!(
        "[promdown] {} Inconclusive analyses while down, e.g. {}",
        during.len(),
        during[0]["reasons"]
    );
    // Said once: the address, the error and how many queries it hit; the queries stay in the log.
    let down_reasons = during[0]["reasons"].as_array().cloned().unwrap_or_default();
    let said = down_reasons
        .iter()
        .filter_map(Value::as_str)
        .filter(|r| r.contains("Prometheus"))
        .collect::<Vec<_>>();
    assert_eq!(said.len(), 1, "one line for the outage: {down_reasons:?}");
    assert!(
        said[0].starts_with(&format!(
            "18 of 18 Prometheus queries failed: Prometheus at {}",
            env.prometheus.url()
        )) && said[0].contains("is unreachable")
            && !said[0].contains("query="),
        "{}",
        said[0]
    );
    env.prometheus
        .start_again()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    println!("[promdown] Prometheus back at {:.1}s", env.secs());
    let fin = ok(env
        .wait_rollout(
            name,
            Duration::from_secs(600),
            "a final phase",
            &mut log,
            terminal,
        )
        .await);
    let samples = env.stop_traffic().await;
    assert_eq!(phase(&fin), "Promoted", "status: {}", fin["status"]);
    assert_never_backwards(&log);
    assert_no_failed_requests(&samples);
    env.shutdown().await;
    println!("[promdown] wall time {:.1}s", t.elapsed().as_secs_f64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s5b_prometheus_down_with_fail_policy_rolls_back() {
    let t = Instant::now();
    let mut env = env("promdown-fail", Provider::Gateway).await;
    let name = "promdown-fail";
    let mut log = stop_prometheus_mid_rollout(&mut env, name, "Fail").await;
    let fin = ok(env
        .wait_rollout(
            name,
            Duration::from_secs(120),
            "a final phase",
            &mut log,
            terminal,
        )
        .await);
    let _ = env.stop_traffic().await;
    assert_eq!(phase(&fin), "RolledBack", "status: {}", fin["status"]);
    println!(
        "[promdown-fail] rolled back: {}",
        fin["status"]["rollback"]["reason"]
    );
    assert_on_baseline(&env).await;
    env.shutdown().await;
    println!(
        "[promdown-fail] wall time {:.1}s",
        t.elapsed().as_secs_f64()
    );
}

/// The traffic object a provider's operator patches: (API group, resource).
fn traffic_resource(provider: Provider) -> (&'static str, &'static str) {
    match provider {
        Provider::Nginx => ("networking.k8s.io", "ingresses"),
        Provider::Gateway => ("gateway.networking.k8s.io", "httproutes"),
    }
}

/// Replaces the operator's ClusterRole with `role` when dropped, on a runtime of its own (the
/// test's may be gone when a failed assertion unwinds).
struct RestoreRole {
    node: std::path::PathBuf,
    role: ClusterRole,
    check: (Provider, String),
}

impl Drop for RestoreRole {
    fn drop(&mut self) {
        let (node, mut role) = (self.node.clone(), self.role.clone());
        let (provider, ns) = self.check.clone();
        role.metadata.resource_version = None;
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            rt.block_on(async move {
                let cp = ControlPlane::attach(&node).await?;
                let roles: Api<ClusterRole> = Api::all(cp.admin.clone());
                roles
                    .replace(OPERATOR_SA, &PostParams::default(), &role)
                    .await?;
                wait_may_patch(&cp, provider, &ns, true).await;
                anyhow::Ok(())
            })
        })
        .join();
        if !matches!(done, Ok(Ok(()))) {
            eprintln!("could not restore the operator's ClusterRole: {done:?}");
        }
    }
}

/// Until the API server's authorizer says the operator may (or may not) patch the provider's
/// traffic object in `ns`.
async fn wait_may_patch(cp: &ControlPlane, provider: Provider, ns: &str, allowed: bool) {
    use k8s_openapi::api::authorization::v1::{
        ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
    };
    let (group, resource) = traffic_resource(provider);
    let reviews: Api<SubjectAccessReview> = Api::all(cp.admin.clone());
    e2e::node_env::until(
        Duration::from_secs(30),
        "the ClusterRole change reaches the authorizer",
        || async {
            let review = SubjectAccessReview {
                spec: SubjectAccessReviewSpec {
                    user: Some(format!(
                        "system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_SA}"
                    )),
                    groups: Some(vec!["system:serviceaccounts".into()]),
                    resource_attributes: Some(ResourceAttributes {
                        group: Some(group.into()),
                        resource: Some(resource.into()),
                        verb: Some("patch".into()),
                        namespace: Some(ns.into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                ..Default::default()
            };
            let got = reviews.create(&PostParams::default(), &review).await.ok()?;
            (got.status.is_some_and(|s| s.allowed) == allowed).then_some(())
        },
    )
    .await;
}

/// The chart's ClusterRole without `patch` on the provider's traffic object (server-side apply
/// needs it), put back however the test ends (the operator is shared by the binary's tests): the
/// candidate is deployed, then no weight ever, the denial reported, the operator keeps running.
async fn missing_permission_scenario(name: &str, provider: Provider) {
    let t = Instant::now();
    let env = env(name, provider).await;
    let (_, resource) = traffic_resource(provider);
    let roles: Api<ClusterRole> = Api::all(env.cp.admin.clone());
    let original = roles
        .get(OPERATOR_SA)
        .await
        .expect("the chart's ClusterRole is installed");
    let _restore = RestoreRole {
        node: env.cp.workdir().to_path_buf(),
        role: original.clone(),
        check: (provider, name.to_string()),
    };
    let mut role = original;
    for rule in role.rules.iter_mut().flatten() {
        if rule.resources.iter().flatten().any(|r| r == resource) {
            rule.verbs.retain(|v| v != "patch");
        }
    }
    roles
        .replace(OPERATOR_SA, &PostParams::default(), &role)
        .await
        .expect("replace ClusterRole");
    wait_may_patch(&env.cp, provider, name, false).await;
    let restarts = operator_restarts(&env.cp).await;
    env.create_rollout(&env.rollout_spec(name))
        .await
        .expect("create rollout");
    let mut log = Vec::new();
    // The candidate gets deployed (Deployments are allowed) ...
    let deployments: Api<Deployment> = Api::namespaced(env.cp.admin.clone(), &env.ns);
    e2e::node_env::until(
        Duration::from_secs(120),
        "the candidate Deployment created",
        || async { deployments.get_opt(CANDIDATE).await.ok().flatten() },
    )
    .await;
    ok(env
        .wait_rollout(
            name,
            Duration::from_secs(120),
            "the rollout deploying",
            &mut log,
            |r| matches!(phase(r), "Deploying" | "Progressing"),
        )
        .await);
    // ... but no traffic ever moves.
    let deadline = Instant::now() + Duration::from_secs(40);
    while Instant::now() < deadline {
        let o = ok(env.observe(name).await);
        assert_eq!(
            o.weight, 0,
            "no weight without permission to patch {resource}: {o:?}"
        );
        assert!(
            o.candidate_weight.is_none(),
            "the candidate routed without permission: {o:?}"
        );
        log.push(o);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The operator's log is shared by the binary's tests: look for this namespace's denial.
    let logtext = env.operator_logs();
    let denial = logtext.lines().find(|l| {
        l.contains(&format!("cannot patch resource \"{resource}\""))
            && l.contains(&format!("namespace \"{name}\""))
    });
    let r = ok(env.rollout(name).await);
    let status_says = r["status"].to_string().to_lowercase().contains("forbidden");
    assert!(
        denial.is_some() || status_says,
        "the operator must report the Forbidden patch; status {}\nlog tail:\n{}",
        r["status"],
        env.operator_log_tail(20)
    );
    println!(
        "[{name}] status message: {}\n[{name}] operator log: {}",
        r["status"]["message"],
        denial.map_or("", |l| &l[l.find("cannot patch").unwrap_or(0)..])
    );
    let counts = |v: &[(String, i32, String)]| -> Vec<(String, i32)> {
        v.iter().map(|(p, r, _)| (p.clone(), *r)).collect()
    };
    assert_eq!(
        counts(&operator_restarts(&env.cp).await),
        counts(&restarts),
        "the operator keeps running: no pod replaced, no container restarted"
    );
    env.shutdown().await;
    println!("[{name}] wall time {:.1}s", t.elapsed().as_secs_f64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s6_a_missing_permission_in_the_role_stops_the_rollout_with_forbidden_nginx() {
    missing_permission_scenario("rbac", Provider::Nginx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s6b_a_missing_permission_in_the_role_stops_the_rollout_with_forbidden_gateway_api() {
    missing_permission_scenario("rbac-gateway", Provider::Gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s7_invalid_rollouts_are_rejected_by_the_api_server_with_the_schema_message() {
    let t = Instant::now();
    // The API server alone (no node): the schema is all this test needs.
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("scenarios/crd");
    let _ = std::fs::remove_dir_all(&dir);
    let cp = ControlPlane::start(&dir.join("controlplane"))
        .await
        .unwrap_or_else(|e| panic!("control plane: {e}"));
    let crd = std::fs::read_to_string(
        e2e::workspace_root().join("crds/embeddingrollouts.rollout.akidb.io.yaml"),
    )
    .expect("CRD file");
    assert!(
        !crd.trim().is_empty(),
        "crds/embeddingrollouts.rollout.akidb.io.yaml is empty"
    );
    cp.apply_as_admin(&crd).await.expect("apply CRD");
    cp.apply_as_admin("apiVersion: v1\nkind: Namespace\nmetadata: {name: crd}\n")
        .await
        .expect("namespace");
    let api: Api<kube::api::DynamicObject> =
        Api::namespaced_with(cp.admin.clone(), "crd", &scenario::rollout_resource());
    let create = |v: Value| {
        let api = api.clone();
        async move {
            let obj: kube::api::DynamicObject = serde_json::from_value(v).unwrap();
            api.create(&PostParams::default(), &obj).await
        }
    };
    let base = fast_rollout("valid", "http://127.0.0.1:9090");
    create(base.clone())
        .await
        .expect("a valid rollout is accepted");
    // A candidate template as a user writes it survives the schema (nothing pruned).
    let mut templated = base.clone();
    templated["metadata"]["name"] = json!("templated");
    let template = json!({
        "metadata": {"labels": {"team": "search"}},
        "spec": {
            "imagePullSecrets": [{"name": "ghcr"}],
            "nodeSelector": {"kubernetes.io/arch": "amd64"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}],
            "volumes": [{"name": "weights", "persistentVolumeClaim": {"claimName": "minilm"}}],
            "initContainers": [{"name": "fetch", "image": "busybox:1", "command": ["true"]}],
            "containers": [{"name": "embedder", "volumeMounts": [{"name": "weights", "mountPath": "/models"}]}]
        }
    });
    templated["spec"]["candidate"]["template"] = template.clone();
    let stored = create(templated)
        .await
        .expect("a rollout with a candidate template is accepted");
    assert_eq!(
        stored.data["spec"]["candidate"]["template"], template,
        "the API server kept the template as written"
    );

    type Mutation = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&str, Mutation, &str)> = vec![
        (
            "weights-not-increasing",
            Box::new(
                |v| v["spec"]["steps"] = json!([{"weight": 10, "duration": "1m"}, {"weight": 5, "duration": "1m"}, {"weight": 100, "duration": "1m"}]),
            ),
            "step weights must be strictly increasing",
        ),
        (
            "weights-repeated",
            Box::new(
                |v| v["spec"]["steps"] = json!([{"weight": 10, "duration": "1m"}, {"weight": 10, "duration": "1m"}, {"weight": 100, "duration": "1m"}]),
            ),
            "step weights must be strictly increasing",
        ),
        (
            "last-not-100",
            Box::new(|v| {
                v["spec"]["steps"] =
                    json!([{"weight": 1, "duration": "1m"}, {"weight": 50, "duration": "1m"}])
            }),
            "the last step must have weight 100",
        ),
        (
            "negative-p95-gate",
            Box::new(|v| v["spec"]["analysis"]["gates"]["maxP95Ms"] = json!(-5)),
            "gates.maxP95Ms must be positive",
        ),
        (
            "negative-error-gate",
            Box::new(|v| v["spec"]["analysis"]["gates"]["maxErrorRate"] = json!(-0.01)),
            "gates.maxErrorRate must be in (0, 1]",
        ),
        (
            "negative-trigger",
            Box::new(|v| v["spec"]["analysis"]["rollbackTriggers"]["p95Ms"] = json!(-1)),
            "rollbackTriggers.p95Ms must be positive",
        ),
        (
            "template-sets-the-embedder-image",
            Box::new(|v| {
                v["spec"]["candidate"]["template"] =
                    json!({"spec": {"containers": [{"name": "embedder", "image": "other:1"}]}})
            }),
            "the embedder container's image, command, args and ports come from candidate.image",
        ),
        (
            "template-reuses-the-models-volume",
            Box::new(|v| {
                v["spec"]["candidate"]["template"] =
                    json!({"spec": {"volumes": [{"name": "models", "emptyDir": {}}]}})
            }),
            "the volume name models is reserved for candidate.models",
        ),
        (
            "custom-gate-with-max-and-min",
            Box::new(|v| {
                v["spec"]["analysis"]["gates"]["custom"] =
                    json!([{"name": "p99", "query": "x", "max": 0.05, "min": 0.01}])
            }),
            "a custom gate takes max or min, exactly one",
        ),
        (
            "custom-gates-with-one-name",
            Box::new(|v| {
                v["spec"]["analysis"]["gates"]["custom"] = json!([
                    {"name": "p99", "query": "x", "max": 1}, {"name": "p99", "query": "y", "max": 2}
                ])
            }),
            "gates.custom names must be unique",
        ),
    ];
    for (name, mutate, message) in cases {
        let mut v = base.clone();
        v["metadata"]["name"] = json!(name);
        mutate(&mut v);
        let err = create(v)
            .await
            .expect_err(&format!("{name} must be rejected"));
        let kube::Error::Api(status) = err else {
            panic!("{name}: unexpected error {err}")
        };
        println!("[crd] {name}: {} {}", status.code, status.message);
        assert_eq!(status.code, 422, "{name}: {}", status.message);
        assert!(
            status.message.contains(message),
            "{name}: expected {message:?} in {:?}",
            status.message
        );
    }
    println!("[crd] wall time {:.1}s", t.elapsed().as_secs_f64());
}

/// The candidate's models file: the seed's model quantized to INT8 at load.
const INT8_MODELS: &str = "models:\n  - name: all-MiniLM-L6-v2\n    path: /models/all-MiniLM-L6-v2\n    quantization: int8\n";
/// The same model cutting texts at 32 tokens instead of 256: fast, 200s, wrong vectors.
const TRUNCATING_MODELS: &str =
    "models:\n  - name: all-MiniLM-L6-v2\n    path: /models/all-MiniLM-L6-v2\n    max_tokens: 32\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s8_embedding_parity_passes_int8_and_rolls_back_a_truncating_candidate() {
    let t = Instant::now();
    let mut env = env("parity", Provider::Gateway).await;
    let name = "parity";
    let mut rollout = env.rollout_spec(name);
    // A long first step: the INT8 candidate is watched there, then replaced.
    rollout["spec"]["steps"][0]["duration"] = json!("10m");
    rollout["spec"]["candidate"]["models"] = json!(INT8_MODELS);
    // The gate's defaults (minCosine 0.999, the built-in texts): this embedder's INT8 keeps its
    // outlier input channels in f32 and stays above 0.999 even on 1-3 word texts
    // (embedder/tests/int8_parity.rs).
    rollout["spec"]["analysis"]["gates"]["parity"] = json!({});
    env.start_traffic(RATE);
    env.create_rollout(&rollout).await.expect("create rollout");
    let mut log = Vec::new();
    let parity_of = |r: &Value| -> Option<Value> {
        r["status"]["lastAnalysis"]["gates"]
            .as_array()?
            .iter()
            .find(|g| g["gate"] == "parity")
            .cloned()
    };
    let int8 = ok(env
        .wait_rollout(
            name,
            Duration::from_secs(180),
            "a parity finding at 50 %",
            &mut log,
            |r| {
                r["status"]["currentWeight"] == 50
                    && parity_of(r).is_some_and(|g| g["verdict"] != "Inconclusive")
            },
        )
        .await);
    let g = parity_of(&int8).unwrap();
    println!(
        "[parity] INT8 candidate: {} ({})",
        g["verdict"], g["evidence"]
    );
    assert_eq!(g["verdict"], "Pass", "INT8 against f32: {g}");
    assert_eq!(g["threshold"], 0.999, "the default threshold: {g}");
    let min_cos = g["value"].as_f64().expect("the min cosine");
    // Below 1: the candidate really serves the quantized weights.
    assert!(
        (0.999..1.0 - 1e-6).contains(&min_cos),
        "min cosine {min_cos}"
    );
    assert_eq!(g["samples"], 16, "the built-in texts");

    // A new candidate that truncates at 32 tokens: redeployed from step 1, then rolled back.
    env.rollouts()
        .patch(
            name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"candidate": {"models": TRUNCATING_MODELS}}})),
        )
        .await
        .expect("change the candidate's models");
    let changed = SystemTime::now();
    let fin = ok(env
        .wait_rollout(
            name,
            Duration::from_secs(300),
            "a final phase",
            &mut log,
            terminal,
        )
        .await);
    let samples = env.stop_traffic().await;
    let status = &fin["status"];
    assert_eq!(
        phase(&fin),
        "RolledBack",
        "status: {}",
        serde_json::to_string_pretty(status).unwrap()
    );
    let reason = status["rollback"]["reason"].as_str().unwrap_or_default();
    println!(
        "[parity] truncating candidate rolled back {:.1}s after the change: {reason}",
        secs_between(
            changed,
            timestamp(&status["rollback"]["completedAt"]).unwrap()
        )
    );
    assert!(
        reason.contains("embeddings differ from the baseline's"),
        "rolled back for another reason: {reason}"
    );
    // The long text is the one truncation changes.
    assert!(
        reason.contains("characters)"),
        "the worst text is the long one: {reason}"
    );
    let not_candle: Vec<&Sample> = failures(&samples)
        .into_iter()
        .filter(|s| s.served_by.as_deref() != Some("candle"))
        .collect();
    assert!(
        not_candle.is_empty(),
        "only the candidate may fail requests: {} others did, e.g. {:?}",
        not_candle.len(),
        &not_candle[..not_candle.len().min(5)]
    );
    env.shutdown().await;
    println!("[parity] wall time {:.1}s", t.elapsed().as_secs_f64());
}
