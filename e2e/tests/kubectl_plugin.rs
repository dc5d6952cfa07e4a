//! The `kubectl-embeddingrollout` binary against a real kube-apiserver: tables, `-o json|yaml`,
//! history, watch, each manual command's annotations, and the errors with their exit codes.
//! No operator runs: the tests write the status themselves through the status subresource.
//! Needs `make controlplane` and the plugin built (`cargo build -p kubectl-embeddingrollout`, part
//! of `make build`); fails (never skips) when either is missing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use e2e::controlplane::ControlPlane;
use e2e::scenario::{fast_rollout, rollout_resource};
use e2e::workspace_root;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;

const NS: &str = "production";
const CRD_NAME: &str = "embeddingrollouts.rollout.akidb.io";
const EXIT_NOT_FOUND: i32 = 3;
const EXIT_CRD_MISSING: i32 = 4;
const EXIT_FORBIDDEN: i32 = 5;
const EXIT_UNREACHABLE: i32 = 6;
const EXIT_REFUSED: i32 = 7;
const EXIT_TIMEOUT: i32 = 8;
const EXIT_CONFIG: i32 = 9;

/// `E2E_PLUGIN_BIN`, else `$CARGO_TARGET_DIR/debug/kubectl-embeddingrollout`, else
/// `<workspace>/target/debug/kubectl-embeddingrollout` (as the scenarios find the operator).
fn plugin_bin() -> PathBuf {
    let path = std::env::var_os("E2E_PLUGIN_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| workspace_root().join("target"))
                .join("debug")
                .join("kubectl-embeddingrollout")
        });
    assert!(
        path.is_file(),
        "the plugin is not built: {} is missing; run `cargo build -p kubectl-embeddingrollout` \
         (with the same CARGO_TARGET_DIR) or `make build`",
        path.display()
    );
    path
}

fn workdir(test: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("kubectl_plugin")
        .join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("workdir");
    dir
}

/// A control plane with the CRD from crds/ and the namespaces `production` and `staging`.
async fn cluster(test: &str) -> ControlPlane {
    let cp = ControlPlane::start(&workdir(test).join("controlplane"))
        .await
        .unwrap_or_else(|e| panic!("control plane: {e}"));
    let crd = std::fs::read_to_string(
        workspace_root()
            .join("crds")
            .join(format!("{CRD_NAME}.yaml")),
    )
    .expect("CRD file");
    cp.apply_as_admin(&crd).await.expect("apply CRD");
    for ns in [NS, "staging"] {
        cp.apply_as_admin(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n"
        ))
        .await
        .expect("namespace");
    }
    cp
}

fn rollouts(cp: &ControlPlane, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(cp.admin.clone(), ns, &rollout_resource())
}

/// Creates the two-step fast rollout `name` and, if given, writes `status` through the status
/// subresource as the operator would.
async fn create(cp: &ControlPlane, ns: &str, name: &str, status: Option<Value>) {
    let obj: DynamicObject =
        serde_json::from_value(fast_rollout(name, "http://127.0.0.1:9090")).unwrap();
    rollouts(cp, ns)
        .create(&PostParams::default(), &obj)
        .await
        .unwrap_or_else(|e| panic!("create {ns}/{name}: {e}"));
    if let Some(status) = status {
        set_status(cp, ns, name, status).await;
    }
}

async fn set_status(cp: &ControlPlane, ns: &str, name: &str, status: Value) {
    rollouts(cp, ns)
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await
        .unwrap_or_else(|e| panic!("status of {ns}/{name}: {e}"));
}

async fn annotations(cp: &ControlPlane, ns: &str, name: &str) -> BTreeMap<String, String> {
    rollouts(cp, ns)
        .get(name)
        .await
        .expect("read the rollout back")
        .metadata
        .annotations
        .unwrap_or_default()
}

/// What the operator does after acting on a command: clears it (here: all three annotations).
async fn clear_command(cp: &ControlPlane, ns: &str, name: &str) {
    rollouts(cp, ns)
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {
                "rollout.akidb.io/command": null,
                "rollout.akidb.io/command-by": null,
                "rollout.akidb.io/command-at": null,
            }}})),
        )
        .await
        .expect("clear the command");
    let left = annotations(cp, ns, name).await;
    assert!(!left.contains_key("rollout.akidb.io/command"), "{left:?}");
}

fn analysis(step: u32, weight: u32, verdict: &str, p95: f64) -> Value {
    json!({
        "time": "2025-03-01T10:00:00Z", "step": step, "weight": weight,
        "candidateP95Ms": p95, "baselineP95Ms": 18.5, "errorRate": 0.002,
        "breakerState": "Closed", "stepRequests": 1500, "baselineStepRequests": 1600, "look": 4,
        "verdict": verdict,
        "reasons": if verdict == "Pass" { json!([]) } else { json!(["maxP95Ms: P95 above 400 ms"]) },
        "gates": [
            {"gate": "maxP95Ms", "verdict": verdict, "evidence": "P(>400 ms) = 1.1 % (95 % CI 0.6-1.8 %, n = 1500)",
             "value": 0.011, "low": 0.006, "high": 0.018, "threshold": 0.05, "samples": 1500},
            {"gate": "maxErrorRate", "verdict": "Pass", "evidence": "3 of 1500 failed",
             "value": 0.002, "threshold": 0.005, "samples": 1500}
        ]
    })
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs the plugin with `KUBECONFIG=kubeconfig` (its current context is `admin`).
async fn plugin(kubeconfig: &Path, args: &[&str]) -> Run {
    run_binary(&plugin_bin(), kubeconfig, args).await
}

async fn run_binary(bin: &Path, kubeconfig: &Path, args: &[&str]) -> Run {
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(bin)
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("{} {args:?} did not finish in 60 s", bin.display()))
    .expect("run the plugin");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// The cells of the table row whose first cell is `first`.
fn row<'a>(table: &'a str, first: &str) -> Vec<&'a str> {
    table
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cells| cells.first() == Some(&first))
        .unwrap_or_else(|| panic!("no row {first:?} in\n{table}"))
}

#[tokio::test]
async fn list_get_history_and_output_formats_of_real_rollouts() {
    let cp = cluster("tables").await;
    let kc = &cp.kubeconfig_path;
    let long_message = "step 2 of 2 at 100%: waiting for 1500 candidate requests before the gates can decide, 1200 so far";
    create(
        &cp,
        NS,
        "embed",
        Some(json!({
            "phase": "Progressing", "currentStep": 1, "currentWeight": 100,
            "message": long_message,
            "lastAnalysis": analysis(1, 100, "Pass", 21.5),
            "history": [analysis(0, 50, "Fail", 35.25), analysis(1, 100, "Pass", 21.5)],
        })),
    )
    .await;
    create(&cp, NS, "fresh", None).await;
    create(
        &cp,
        "staging",
        "elsewhere",
        Some(json!({"phase": "Paused", "currentStep": 0, "currentWeight": 50})),
    )
    .await;

    let r = plugin(kc, &["list", "-n", NS]).await;
    assert_eq!(r.code, 0, "{r}");
    let header: Vec<&str> = r
        .stdout
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "NAME",
            "PHASE",
            "STEP",
            "WEIGHT",
            "CANDIDATE",
            "VERDICT",
            "AGE",
            "MESSAGE"
        ],
        "{r}"
    );
    let embed = row(&r.stdout, "embed");
    assert_eq!(
        &embed[..6],
        [
            "embed",
            "Progressing",
            "2/2",
            "100%",
            "ghcr.io/akidb/candle-embedder:1.0.0",
            "Pass"
        ],
        "{r}"
    );
    let embed_line = r.stdout.lines().find(|l| l.starts_with("embed")).unwrap();
    assert!(
        !embed_line.contains(long_message),
        "list truncates the message: {r}"
    );
    assert!(embed_line.ends_with('…'), "{r}");
    assert_eq!(&row(&r.stdout, "fresh")[1..4], ["-", "-/2", "-"], "{r}");
    assert!(!r.stdout.contains("elsewhere"), "another namespace: {r}");

    let r = plugin(kc, &["list", "-A"]).await;
    assert_eq!(r.code, 0, "{r}");
    assert!(r.stdout.starts_with("NAMESPACE"), "{r}");
    assert_eq!(
        &row(&r.stdout, "staging")[..5],
        ["staging", "elsewhere", "Paused", "1/2", "50%"],
        "{r}"
    );
    assert_eq!(&row(&r.stdout, NS)[..1], [NS], "{r}");

    // The namespace comes from the context when -n is absent: admin's is `default`, empty.
    let r = plugin(kc, &["list"]).await;
    assert_eq!(r.code, 0, "{r}");
    assert!(r.stdout.is_empty(), "{r}");
    assert!(
        r.stderr
            .contains("No EmbeddingRollouts in namespace default"),
        "{r}"
    );

    let r = plugin(kc, &["get", "embed", "-n", NS]).await;
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(
        &row(&r.stdout, "embed")[..3],
        ["embed", "Progressing", "2/2"],
        "{r}"
    );
    assert!(
        r.stdout.contains(long_message),
        "get shows the whole message: {r}"
    );
    assert!(r.stdout.contains("Last analysis"), "{r}");
    assert!(
        r.stdout.contains("at step 2/2, weight 100%, look 4: Pass"),
        "{r}"
    );
    let gate = row(&r.stdout, "maxP95Ms");
    assert_eq!(&gate[..3], ["maxP95Ms", "Pass", "0.011"], "{r}");
    let gate_line = r
        .stdout
        .lines()
        .find(|l| l.starts_with("maxP95Ms"))
        .unwrap();
    assert!(gate_line.contains("0.05"), "threshold: {r}");
    assert!(
        gate_line.ends_with("P(>400 ms) = 1.1 % (95 % CI 0.6-1.8 %, n = 1500)"),
        "evidence: {r}"
    );
    assert_eq!(
        &row(&r.stdout, "maxErrorRate")[..4],
        ["maxErrorRate", "Pass", "0.002", "0.005"],
        "{r}"
    );

    let r = plugin(kc, &["get", "embed", "-n", NS, "-o", "json"]).await;
    assert_eq!(r.code, 0, "{r}");
    let v: Value = serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("json: {e}\n{r}"));
    assert_eq!(v["kind"], "EmbeddingRollout");
    assert_eq!(v["metadata"]["name"], "embed");
    assert_eq!(v["status"]["currentStep"], 1);
    assert_eq!(v["status"]["history"].as_array().map(Vec::len), Some(2));
    let r = plugin(kc, &["get", "embed", "-n", NS, "-o", "yaml"]).await;
    assert_eq!(r.code, 0, "{r}");
    let y: Value = serde_yaml::from_str(&r.stdout).unwrap_or_else(|e| panic!("yaml: {e}\n{r}"));
    assert_eq!(
        y["spec"]["candidate"]["image"],
        "ghcr.io/akidb/candle-embedder:1.0.0"
    );
    let r = plugin(kc, &["list", "-n", NS, "-o", "json"]).await;
    assert_eq!(r.code, 0, "{r}");
    let v: Value = serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("json: {e}\n{r}"));
    let mut names: Vec<&str> = v["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|i| i["metadata"]["name"].as_str())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["embed", "fresh"], "{r}");

    let r = plugin(kc, &["history", "embed", "-n", NS]).await;
    assert_eq!(r.code, 0, "{r}");
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "header and two analyses: {r}");
    let cells: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(cells[0], "TIME", "{r}");
    let first: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        &first[..8],
        [
            "2025-03-01T10:00:00Z",
            "1/2",
            "50%",
            "35.25",
            "18.5",
            "0.2%",
            "closed",
            "Fail"
        ],
        "{r}"
    );
    assert!(
        lines[1].ends_with("maxP95Ms: P95 above 400 ms"),
        "reasons: {r}"
    );
    let second: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(&second[1..4], ["2/2", "100%", "21.5"], "{r}");
    assert_eq!(second[7], "Pass", "{r}");
    let r = plugin(kc, &["history", "fresh", "-n", NS]).await;
    assert_eq!(r.code, 0, "{r}");
    assert!(r.stdout.contains("No analyses yet for fresh"), "{r}");

    // The alias: the same binary under the name kubectl-erollout (what `make plugin` installs).
    let dir = workdir("tables-alias");
    let alias = dir.join("kubectl-erollout");
    std::os::unix::fs::symlink(plugin_bin(), &alias).expect("symlink");
    let r = run_binary(&alias, kc, &["get", "embed", "-n", NS]).await;
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(
        &row(&r.stdout, "embed")[..3],
        ["embed", "Progressing", "2/2"],
        "{r}"
    );
    let r = run_binary(&alias, kc, &["--help"]).await;
    assert_eq!(r.code, 0, "{r}");
    assert!(r.stdout.contains("Usage: kubectl-erollout"), "{r}");
    assert!(r.stdout.contains("Exit codes:"), "{r}");
    for shell in ["bash", "zsh", "fish"] {
        let r = run_binary(&alias, kc, &["completion", shell]).await;
        assert_eq!(r.code, 0, "{r}");
        assert!(r.stdout.contains("kubectl-erollout"), "{shell}: {r}");
        assert!(r.stdout.contains("promote"), "{shell}: {r}");
    }
    let r = plugin(kc, &["completion", "tcsh"]).await;
    assert_eq!(r.code, 2, "an unknown shell is a usage error: {r}");
}

/// The operator's own code that keeps every analysis (`history_store`), run against the real API
/// server: the objects it creates pass the CRD's schema, its guarded JSON patches apply, a
/// restarted process appends nothing twice, and `history` reads every analysis back, far more
/// than `status.history` keeps. (No operator process: the statuses are what its reconciles
/// would write, ten analyses at most each.)
#[tokio::test]
async fn history_reads_every_analysis_the_operator_kept_far_past_the_status() {
    use embedding_rollout_operator::crd::{
        EmbeddingRollout, EmbeddingRolloutAnalysis, EmbeddingRolloutStatus, HISTORY_LIMIT,
    };
    use embedding_rollout_operator::history_store::Keeper;
    let cp = cluster("kept").await;
    let kc = &cp.kubeconfig_path;
    let crd = std::fs::read_to_string(
        workspace_root().join("crds/embeddingrolloutanalyses.rollout.akidb.io.yaml"),
    )
    .expect("CRD file");
    cp.apply_as_admin(&crd)
        .await
        .expect("apply the EmbeddingRolloutAnalysis CRD");
    create(&cp, NS, "embed", None).await;
    let stored = rollouts(&cp, NS)
        .get("embed")
        .await
        .expect("read the rollout");
    let rollout: EmbeddingRollout =
        serde_json::from_value(serde_json::to_value(stored).unwrap()).expect("a rollout");

    // Step 1 (50 %) from 10:00: 15 analyses a minute apart; step 2 (100 %) from 10:20: 12 more.
    let record = |step: u32, min: u32, look: u32| {
        let verdict = if min.is_multiple_of(7) {
            "Fail"
        } else {
            "Pass"
        };
        let weight = if step == 0 { 50 } else { 100 };
        let mut a = analysis(step, weight, verdict, 20.0 + f64::from(min) / 4.0);
        a["time"] = json!(format!("2025-03-01T10:{min:02}:00Z"));
        a["look"] = json!(look);
        a
    };
    let all: Vec<Value> = (1..=15)
        .map(|m| record(0, m, m))
        .chain((21..=32).map(|m| record(1, m, m - 20)))
        .collect();
    // The status after a reconcile: its last ten analyses (the operator appends from it).
    let status_after = |n: usize| -> EmbeddingRolloutStatus {
        serde_json::from_value(json!({
            "phase": "Progressing", "currentStep": 1, "currentWeight": 100,
            "stepStartedAt": "2025-03-01T10:20:00Z",
            "stepSummaries": [{"step": 0, "weight": 50, "startedAt": "2025-03-01T10:00:00Z"},
                              {"step": 1, "weight": 100, "startedAt": "2025-03-01T10:20:00Z"}],
            "history": all[n.saturating_sub(HISTORY_LIMIT)..n],
        }))
        .expect("a status")
    };
    let keeper = Keeper::new();
    for n in [4, 13, 20] {
        let kept = keeper.keep(&cp.admin, &rollout, &status_after(n)).await;
        assert_eq!(kept.failed, None, "after {n} analyses: {kept:?}");
        assert!(kept.gaps.is_empty(), "{kept:?}");
    }
    // A restarted operator reads the newest object back and appends only what is new.
    let restarted = Keeper::new();
    for (n, appended) in [(20, 0), (27, 7)] {
        let kept = restarted.keep(&cp.admin, &rollout, &status_after(n)).await;
        assert_eq!(kept.failed, None, "{kept:?}");
        assert_eq!(kept.appended, appended, "after a restart, at {n}: {kept:?}");
    }
    set_status(
        &cp,
        NS,
        "embed",
        serde_json::to_value(status_after(all.len())).unwrap(),
    )
    .await;

    // One object per step run, every analysis once, in order, owned by the rollout.
    let analyses: Api<EmbeddingRolloutAnalysis> = Api::namespaced(cp.admin.clone(), NS);
    let mut objects = analyses
        .list(&kube::api::ListParams::default().labels("rollout.akidb.io/rollout=embed"))
        .await
        .expect("list EmbeddingRolloutAnalyses")
        .items;
    objects.sort_by_key(|o| o.spec.step_started_at);
    let counts: Vec<(String, u32, usize)> = objects
        .iter()
        .map(|o| {
            (
                o.metadata.name.clone().unwrap_or_default(),
                o.spec.count,
                o.spec.analyses.len(),
            )
        })
        .collect();
    assert_eq!(
        counts,
        [
            ("embed-step1-20250301-100000-0000".to_string(), 15, 15),
            ("embed-step2-20250301-102000-0000".to_string(), 12, 12),
        ]
    );
    let total: u32 = objects.iter().map(|o| o.spec.count).sum();
    assert!(
        total as usize > HISTORY_LIMIT,
        "{total} analyses kept, more than the status's {HISTORY_LIMIT}"
    );
    let times: Vec<_> = objects
        .iter()
        .flat_map(|o| o.spec.analyses.iter().map(|a| a.t))
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] < w[1]),
        "in order, none twice"
    );
    assert_eq!(
        (objects[0].spec.passed, objects[0].spec.failed),
        (13, 2),
        "minutes 7 and 14 failed"
    );
    for o in &objects {
        let owner = &o.metadata.owner_references.as_ref().expect("owned")[0];
        assert_eq!(owner.uid, rollout.metadata.uid.clone().unwrap());
        assert_eq!(owner.block_owner_deletion, Some(true));
    }

    // The plugin: all of them, oldest first.
    let r = plugin(kc, &["history", "embed", "-n", NS]).await;
    assert_eq!(r.code, 0, "{r}");
    let rows: Vec<&str> = r
        .stdout
        .lines()
        .filter(|l| l.starts_with("2025-"))
        .collect();
    assert_eq!(rows.len(), all.len(), "{r}");
    let first: Vec<&str> = rows[0].split_whitespace().collect();
    assert_eq!(&first[..3], ["2025-03-01T10:01:00Z", "1/2", "50%"], "{r}");
    let last: Vec<&str> = rows[26].split_whitespace().collect();
    assert_eq!(&last[..3], ["2025-03-01T10:32:00Z", "2/2", "100%"], "{r}");
    assert!(!r.stdout.contains("note:"), "nothing missing: {r}");
    assert!(
        r.stderr.contains(
            "embed: 27 analyses, 27 from 2 EmbeddingRolloutAnalysis objects, 0 from status.history"
        ),
        "{r}"
    );
}

#[tokio::test]
async fn each_command_writes_its_annotations_and_refuses_what_makes_no_sense() {
    let cp = cluster("commands").await;
    let kc = &cp.kubeconfig_path;
    create(
        &cp,
        NS,
        "embed",
        Some(json!({"phase": "Progressing", "currentStep": 0, "currentWeight": 50})),
    )
    .await;

    // Sends `args`, expects success and the annotations, then clears them as the operator would.
    let expect_sent = |args: Vec<&'static str>, command: &'static str, next: &'static str| {
        let cp = &cp;
        async move {
            let before = Utc::now() - chrono::Duration::seconds(2);
            let r = plugin(kc, &args).await;
            assert_eq!(r.code, 0, "{args:?}: {r}");
            assert!(
                r.stdout
                    .starts_with(&format!("{command}: sent to {NS}/embed as e2e-admin")),
                "{r}"
            );
            assert!(
                r.stdout.contains(next),
                "{args:?} says what happens next ({next:?}): {r}"
            );
            let a = annotations(cp, NS, "embed").await;
            assert_eq!(
                a.get("rollout.akidb.io/command").map(String::as_str),
                Some(command),
                "{a:?}"
            );
            assert_eq!(
                a.get("rollout.akidb.io/command-by").map(String::as_str),
                Some("e2e-admin"),
                "{a:?}"
            );
            let at: DateTime<Utc> = a["rollout.akidb.io/command-at"]
                .parse()
                .unwrap_or_else(|e| panic!("command-at is RFC 3339: {e}: {a:?}"));
            assert!(
                at >= before && at <= Utc::now() + chrono::Duration::seconds(2),
                "{at}"
            );
            let obj = rollouts(cp, NS).get("embed").await.unwrap();
            let managers: Vec<String> = obj
                .metadata
                .managed_fields
                .unwrap_or_default()
                .into_iter()
                .filter_map(|m| m.manager)
                .collect();
            assert!(
                managers.iter().any(|m| m == "kubectl-embeddingrollout"),
                "{managers:?}"
            );
            clear_command(cp, NS, "embed").await;
        }
    };
    // Expects a refusal with exit 7 and the reason, and nothing written.
    let expect_refused = |args: Vec<&'static str>, reason: &'static str| {
        let cp = &cp;
        async move {
            let r = plugin(kc, &args).await;
            assert_eq!(r.code, EXIT_REFUSED, "{args:?}: {r}");
            assert!(r.stderr.contains("refusing to"), "{r}");
            assert!(
                r.stderr.contains(reason),
                "{args:?}: reason {reason:?}: {r}"
            );
            assert!(r.stderr.contains("--force"), "{r}");
            assert!(r.stdout.is_empty(), "{r}");
            let a = annotations(cp, NS, "embed").await;
            assert!(
                !a.contains_key("rollout.akidb.io/command"),
                "{args:?} wrote {a:?}"
            );
            assert!(
                !a.contains_key("rollout.akidb.io/command-by"),
                "{args:?} wrote {a:?}"
            );
        }
    };

    // Progressing at step 1 of 2.
    expect_sent(
        vec!["abort", "embed", "-n", NS],
        "abort",
        "traffic returns to the baseline; the operator rolls back within rollbackDeadline (1m)",
    )
    .await;
    expect_sent(
        vec!["promote", "embed", "-n", NS],
        "promote",
        "moves to step 2/2 at 100%",
    )
    .await;
    expect_sent(
        vec!["promote", "--full", "embed", "-n", NS],
        "promote-full",
        "promotes now",
    )
    .await;
    expect_sent(
        vec!["pause", "embed", "-n", NS],
        "pause",
        "holds step 1/2 at 50%",
    )
    .await;
    expect_refused(
        vec!["retry", "embed", "-n", NS],
        "only a RolledBack or Failed rollout can be retried",
    )
    .await;
    expect_refused(vec!["resume", "embed", "-n", NS], "it is not paused").await;
    // --force sends it anyway, with a warning.
    let r = plugin(kc, &["retry", "--force", "embed", "-n", NS]).await;
    assert_eq!(r.code, 0, "{r}");
    assert!(
        r.stderr.contains("warning: sending retry with --force"),
        "{r}"
    );
    assert_eq!(
        annotations(&cp, NS, "embed").await["rollout.akidb.io/command"],
        "retry"
    );
    // A command still pending is replaced, and the plugin says so.
    let r = plugin(kc, &["abort", "embed", "-n", NS]).await;
    assert_eq!(r.code, 0, "{r}");
    assert!(
        r.stderr
            .contains("replaces the command \"retry\" (sent by e2e-admin)"),
        "{r}"
    );
    assert_eq!(
        annotations(&cp, NS, "embed").await["rollout.akidb.io/command"],
        "abort"
    );
    clear_command(&cp, NS, "embed").await;

    // Paused by a pause command.
    set_status(
        &cp,
        NS,
        "embed",
        json!({"phase": "Paused", "manualPause": true}),
    )
    .await;
    expect_sent(
        vec!["resume", "embed", "-n", NS],
        "resume",
        "continues from step 1/2",
    )
    .await;
    expect_refused(vec!["pause", "embed", "-n", NS], "already paused").await;

    // Rolled back: only retry makes sense.
    set_status(
        &cp,
        NS,
        "embed",
        json!({"phase": "RolledBack", "manualPause": false, "currentWeight": 0}),
    )
    .await;
    expect_sent(
        vec!["retry", "embed", "-n", NS],
        "retry",
        "then step 1/2 at 50%",
    )
    .await;
    expect_refused(vec!["abort", "embed", "-n", NS], "nothing to abort").await;
    expect_refused(
        vec!["promote", "embed", "-n", NS],
        "promotion needs a candidate serving canary traffic",
    )
    .await;
    expect_refused(vec!["pause", "embed", "-n", NS], "no traffic step to hold").await;

    // Promoted: abort goes back to the baseline.
    set_status(
        &cp,
        NS,
        "embed",
        json!({"phase": "Promoted", "currentStep": 1, "currentWeight": 100}),
    )
    .await;
    expect_sent(
        vec!["abort", "embed", "-n", NS],
        "abort",
        "primary Ingress returns to it",
    )
    .await;
    expect_refused(vec!["retry", "embed", "-n", NS], "it is Promoted").await;
}

#[tokio::test]
async fn errors_name_the_namespace_the_verb_and_the_crd_with_distinct_exit_codes() {
    let cp = cluster("errors").await;
    let kc = &cp.kubeconfig_path;
    create(
        &cp,
        NS,
        "embed",
        Some(json!({"phase": "Progressing", "currentStep": 0, "currentWeight": 50})),
    )
    .await;

    for args in [
        vec!["get", "missing", "-n", NS],
        vec!["history", "missing", "-n", NS],
        vec!["watch", "missing", "-n", NS],
        vec!["abort", "missing", "-n", NS],
    ] {
        let r = plugin(kc, &args).await;
        assert_eq!(r.code, EXIT_NOT_FOUND, "{args:?}: {r}");
        assert!(
            r.stderr
                .contains("embeddingrollout \"missing\" not found in namespace \"production\""),
            "{args:?}: {r}"
        );
    }
    let r = plugin(kc, &["get", "embed", "-n", "staging"]).await;
    assert_eq!(r.code, EXIT_NOT_FOUND, "{r}");
    assert!(
        r.stderr.contains("not found in namespace \"staging\""),
        "{r}"
    );

    // The dev user is bound to nothing: no get, no list.
    let r = plugin(kc, &["--context", "dev", "get", "embed", "-n", NS]).await;
    assert_eq!(r.code, EXIT_FORBIDDEN, "{r}");
    assert!(
        r.stderr
            .contains("you may not get embeddingrollouts.rollout.akidb.io in production"),
        "{r}"
    );
    let r = plugin(kc, &["--context", "dev", "list", "-A"]).await;
    assert_eq!(r.code, EXIT_FORBIDDEN, "{r}");
    assert!(
        r.stderr
            .contains("you may not list embeddingrollouts.rollout.akidb.io in any namespace"),
        "{r}"
    );

    // With get but not patch, a command is refused by RBAC and names the verb it lacked.
    let role = |verbs: &[&str]| {
        format!(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: rollout-reader, namespace: {NS}}}\n\
             rules:\n- apiGroups: [rollout.akidb.io]\n  resources: [embeddingrollouts]\n  verbs: {verbs:?}\n\
             ---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: rollout-reader, namespace: {NS}}}\n\
             roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: rollout-reader}}\n\
             subjects:\n- {{apiGroup: rbac.authorization.k8s.io, kind: User, name: e2e-dev}}\n"
        )
    };
    cp.apply_as_admin(&role(&["get"])).await.expect("role get");
    // RBAC changes reach the authorizer through an informer: wait until get works.
    let deadline = Instant::now() + Duration::from_secs(30);
    let r = loop {
        let r = plugin(kc, &["--context", "dev", "get", "embed", "-n", NS]).await;
        if r.code == 0 || Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(r.code, 0, "dev may get now: {r}");
    let r = plugin(kc, &["--context", "dev", "abort", "embed", "-n", NS]).await;
    assert_eq!(r.code, EXIT_FORBIDDEN, "{r}");
    assert!(
        r.stderr
            .contains("you may not patch embeddingrollouts.rollout.akidb.io in production"),
        "{r}"
    );
    assert!(!annotations(&cp, NS, "embed")
        .await
        .contains_key("rollout.akidb.io/command"));

    // With patch too, the command goes through and records the dev user from SelfSubjectReview.
    cp.apply_as_admin(&role(&["get", "patch"]))
        .await
        .expect("role get, patch");
    let deadline = Instant::now() + Duration::from_secs(30);
    let r = loop {
        let r = plugin(kc, &["--context", "dev", "abort", "embed", "-n", NS]).await;
        if r.code == 0 || Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(r.code, 0, "{r}");
    let a = annotations(&cp, NS, "embed").await;
    assert_eq!(a["rollout.akidb.io/command"], "abort");
    assert_eq!(a["rollout.akidb.io/command-by"], "e2e-dev", "{a:?}");

    // Without the CRD every verb says it is not installed and how to install it.
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(cp.admin.clone());
    crds.delete(CRD_NAME, &DeleteParams::default())
        .await
        .expect("delete the CRD");
    let deadline = Instant::now() + Duration::from_secs(60);
    while crds.get_opt(CRD_NAME).await.expect("read CRD").is_some() {
        assert!(
            Instant::now() < deadline,
            "the CRD was not deleted within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for args in [
        vec!["list", "-n", NS],
        vec!["list", "-A"],
        vec!["get", "embed", "-n", NS],
        vec!["abort", "embed", "-n", NS],
    ] {
        let r = plugin(kc, &args).await;
        assert_eq!(r.code, EXIT_CRD_MISSING, "{args:?}: {r}");
        assert!(
            r.stderr
                .contains("the EmbeddingRollout CRD is not installed"),
            "{args:?}: {r}"
        );
        assert!(
            r.stderr.contains("kubectl apply --server-side -f crds/"),
            "{args:?}: {r}"
        );
        assert!(r.stderr.contains(&cp.api_url), "names the server: {r}");
    }
}

#[tokio::test]
async fn an_unreachable_api_server_and_a_bad_kubeconfig_are_said_plainly() {
    let plugin_bin = plugin_bin();
    let dir = workdir("unreachable");
    // A port that was free a moment ago and has nothing listening now.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let server = format!("https://127.0.0.1:{port}");
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: gone\n  cluster: {{server: \"{server}\", insecure-skip-tls-verify: true}}\n\
             users:\n- name: u\n  user: {{token: abc}}\ncontexts:\n- name: gone\n  context: {{cluster: gone, user: u, namespace: {NS}}}\n\
             current-context: gone\n"
        ),
    )
    .unwrap();
    for args in [
        vec!["list"],
        vec!["get", "embed"],
        vec!["abort", "embed"],
        vec!["watch", "embed"],
    ] {
        let r = run_binary(&plugin_bin, &kubeconfig, &args).await;
        assert_eq!(r.code, EXIT_UNREACHABLE, "{args:?}: {r}");
        assert!(
            r.stderr
                .contains(&format!("cannot reach the API server at {server}")),
            "{args:?}: {r}"
        );
    }
    // --kubeconfig wins over $KUBECONFIG, and a missing file is a kubeconfig error.
    let missing = dir.join("no-such-kubeconfig");
    let r = run_binary(
        &plugin_bin,
        &kubeconfig,
        &["--kubeconfig", missing.to_str().unwrap(), "list"],
    )
    .await;
    assert_eq!(r.code, EXIT_CONFIG, "{r}");
    assert!(r.stderr.contains("no-such-kubeconfig"), "{r}");
    let r = run_binary(&plugin_bin, &kubeconfig, &["--context", "nope", "list"]).await;
    assert_eq!(r.code, EXIT_CONFIG, "{r}");
}

/// stdout of a running child, collected as it comes.
fn collect(mut pipe: tokio::process::ChildStdout) -> Arc<Mutex<String>> {
    let text = Arc::new(Mutex::new(String::new()));
    let sink = text.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut buf).await {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    text
}

async fn wait_for(text: &Arc<Mutex<String>>, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !text.lock().unwrap().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "watch never printed {needle:?}; so far:\n{}",
            text.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn watch_prints_each_change_with_the_gates_and_ends_at_a_terminal_phase() {
    let cp = cluster("watch").await;
    let kc = &cp.kubeconfig_path;
    create(
        &cp,
        NS,
        "embed",
        Some(json!({"phase": "Progressing", "currentStep": 0, "currentWeight": 50})),
    )
    .await;

    let mut child = tokio::process::Command::new(plugin_bin())
        .args(["watch", "embed", "-n", NS, "--timeout", "2m"])
        .env("KUBECONFIG", kc)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start watch");
    let stdout = collect(child.stdout.take().unwrap());
    wait_for(&stdout, "Progressing   1/2").await;
    set_status(
        &cp,
        NS,
        "embed",
        json!({"currentStep": 1, "currentWeight": 100, "lastAnalysis": analysis(1, 100, "Pass", 21.5)}),
    )
    .await;
    wait_for(&stdout, "Progressing   2/2").await;
    wait_for(&stdout, "maxErrorRate").await;
    set_status(&cp, NS, "embed", json!({"phase": "Promoted"})).await;
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("watch ends once the rollout is Promoted")
        .expect("wait");
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .await
        .unwrap();
    // Let the reader drain the pipe.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let text = stdout.lock().unwrap().clone();
    assert_eq!(status.code(), Some(0), "{text}\n{stderr}");
    assert!(stderr.contains("embed is Promoted"), "{stderr}");
    let frames: Vec<&str> = text.split("(Ctrl-C to stop)").skip(1).collect();
    assert!(frames.len() >= 3, "a block per change: {text}");
    let first = |needle: &str| {
        text.find(needle)
            .unwrap_or_else(|| panic!("no {needle:?} in {text}"))
    };
    assert!(
        first("Progressing   1/2") < first("Progressing   2/2"),
        "{text}"
    );
    assert!(
        first("Progressing   2/2") < first("Promoted   2/2"),
        "{text}"
    );
    let last = frames.last().unwrap();
    assert!(
        last.contains("P(>400 ms) = 1.1 %"),
        "the gates' evidence: {last}"
    );
    assert!(
        !text.contains('\x1b'),
        "no terminal codes when stdout is not a terminal: {text}"
    );

    // A rollout that does not end in time: exit 8, saying where it is.
    create(
        &cp,
        NS,
        "slow",
        Some(json!({"phase": "Progressing", "currentStep": 0, "currentWeight": 50})),
    )
    .await;
    let t = Instant::now();
    let r = plugin(kc, &["watch", "slow", "-n", NS, "--timeout", "2s"]).await;
    assert_eq!(r.code, EXIT_TIMEOUT, "{r}");
    assert!(
        r.stderr.contains("slow is still Progressing after 2s"),
        "{r}"
    );
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    // Already ended: one frame, at once.
    let r = plugin(kc, &["watch", "embed", "-n", NS]).await;
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(r.stdout.matches("(Ctrl-C to stop)").count(), 1, "{r}");

    // On a terminal (a pty from script(1)) the frame is redrawn in place.
    let plugin_path = plugin_bin();
    let cmd = format!("{} watch embed -n {NS}", plugin_path.display());
    let output = tokio::process::Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env("KUBECONFIG", kc)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("script(1) from util-linux");
    let text = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert!(
        text.contains("\x1b[H\x1b[2J"),
        "cursor home + clear on a terminal: {text:?}"
    );
}
