//! The operator's web dashboard in a real browser: headless Chromium (Debian `chromium`) against
//! the operator binary serving rollouts on a real kube-apiserver.
//!
//! No controller touches the rollouts, so the tests write their status themselves (as in
//! kubectl_plugin.rs): the operator runs as a standby replica (another identity holds the Lease
//! for an hour), which serves the dashboard from the API server, under the chart's RBAC. The
//! controller's-cache path is covered by the router tests (operator/src/dashboard/tests.rs).
//! Screenshots are kept in `target/dashboard-screenshots/`.
//!
//! Needs `make controlplane`, the operator binary (`cargo build -p embedding-rollout-operator`)
//! and chromium (`make deps`); fails (never skips) when one is missing.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use e2e::child::GroupChild;
use e2e::controlplane::ControlPlane;
use e2e::scenario::{
    default_operator_bin, fast_rollout, rollout_resource, write_operator_kubeconfig,
    OPERATOR_NAMESPACE, OPERATOR_SA,
};
use e2e::workspace_root;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{json, Value};

const CRD_NAME: &str = "embeddingrollouts.rollout.akidb.io";

/// `E2E_CHROMIUM`, else `chromium` on PATH (Debian's package, `make deps`).
fn chromium_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("E2E_CHROMIUM") {
        return p.into();
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("chromium"))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| {
            panic!("chromium is not installed: run `make deps` (Debian package chromium)")
        })
}

fn workdir(test: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("dashboard")
        .join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("workdir");
    dir
}

/// `target/dashboard-screenshots/` (or under `$CARGO_TARGET_DIR`): kept after the run.
fn screenshot_dir() -> PathBuf {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
        .join("dashboard-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    dir
}

fn free_port() -> u16 {
    e2e::free_port().expect("a free port")
}

/// The fixtures' clock: `secs` after ten minutes ago, when the first step started, so the charts
/// span minutes like a real rollout's.
fn ts(secs: i64) -> String {
    at(secs).format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// [`ts`] with microseconds (an Event's `eventTime`).
fn ts_micro(secs: i64) -> String {
    at(secs).format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

fn at(secs: i64) -> chrono::DateTime<chrono::Utc> {
    static BASE: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    let base = *BASE.get_or_init(|| chrono::Utc::now().timestamp() - 600);
    chrono::DateTime::from_timestamp(base + secs, 0).unwrap()
}

fn analysis(time: &str, step: u32, weight: u32, verdict: &str, p95_fraction: f64) -> Value {
    json!({
        "time": time, "step": step, "weight": weight,
        "candidateP95Ms": 30.0 + p95_fraction * 200.0, "baselineP95Ms": 31.5, "errorRate": 0.0015,
        "breakerState": "Closed", "stepRequests": 1200, "baselineStepRequests": 3600, "look": 3,
        "verdict": verdict,
        "reasons": if verdict == "Pass" { json!([]) } else { json!([format!("maxP95Ms: P(>35 ms) = {:.1} %", p95_fraction * 100.0)]) },
        "gates": [
            {"gate": "maxP95Ms", "verdict": verdict,
             "evidence": format!("P(>35 ms) = {:.1} % (n = 1200)", p95_fraction * 100.0),
             "value": p95_fraction, "low": p95_fraction * 0.6, "high": p95_fraction * 1.5,
             "threshold": 0.05, "samples": 1200},
            {"gate": "maxErrorRate", "verdict": "Pass", "evidence": "2 of 1200 failed",
             "value": 0.0015, "low": 0.0002, "high": 0.006, "threshold": 0.005, "samples": 1200}
        ]
    })
}

/// The status of `production/embed`: the second of four steps, 25 %, six analyses (one failing).
fn progressing_status() -> Value {
    let history = vec![
        analysis(&ts(60), 0, 10, "Pass", 0.010),
        analysis(&ts(120), 0, 10, "Pass", 0.012),
        analysis(&ts(180), 0, 10, "Pass", 0.009),
        analysis(&ts(300), 1, 25, "Pass", 0.015),
        analysis(&ts(360), 1, 25, "Fail", 0.081),
        analysis(&ts(420), 1, 25, "Pass", 0.020),
    ];
    json!({
        "phase": "Progressing", "currentStep": 1, "step": "2/4", "currentWeight": 25,
        "phaseStartedAt": &ts(0), "stepStartedAt": &ts(240),
        "stepAnalyses": 3, "consecutiveFailures": 0,
        "lastAnalysis": history.last().unwrap().clone(),
        "history": history,
        "stepSummaries": [
            {"step": 0, "weight": 10, "startedAt": &ts(0), "endedAt": &ts(240),
             "durationSeconds": 240, "outcome": "Advanced", "analyses": 3, "passed": 3,
             "candidateRequests": 1500, "baselineRequests": 13500, "maxCandidateP95Ms": 33.0,
             "maxBaselineP95Ms": 32.0, "maxErrorRate": 0.002},
            {"step": 1, "weight": 25, "startedAt": &ts(240), "analyses": 3, "passed": 2,
             "failed": 1, "candidateRequests": 1200, "baselineRequests": 3600}
        ],
        "commands": [
            {"command": "resume", "by": "alice@example.com", "manager": "kubectl-embeddingrollout",
             "handledAt": &ts(210), "phase": "Paused", "result": "Applied",
             "message": "resumed at step 1/4"}
        ],
        "message": "step 2/4 at 25 %: soaking, 3 analyses"
    })
}

fn rolled_back_status() -> Value {
    json!({
        "phase": "RolledBack", "currentStep": 0, "step": "1/4", "currentWeight": 0,
        "history": [analysis(&ts(-3540), 0, 10, "Fail", 0.2)],
        "rollback": {"reason": "maxP95Ms failed 3 times", "startedAt": &ts(-3480),
                     "completedAt": &ts(-3460), "seconds": 20.0, "fromPhase": "Progressing"},
        "message": "rolled back: maxP95Ms failed 3 times"
    })
}

struct Dashboard {
    cp: ControlPlane,
    /// Held for its Drop (kills the operator).
    _operator: GroupChild,
    url: String,
    token: String,
    workdir: PathBuf,
}

impl Dashboard {
    fn rollouts(&self, ns: &str) -> Api<DynamicObject> {
        Api::namespaced_with(self.cp.admin.clone(), ns, &rollout_resource())
    }

    async fn set_status(&self, ns: &str, name: &str, status: Value) {
        self.rollouts(ns)
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": status })),
            )
            .await
            .unwrap_or_else(|e| panic!("status of {ns}/{name}: {e}"));
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.workdir.join("operator.log")).unwrap_or_default()
    }
}

/// A four-step rollout (10, 25, 50, 100 %) named `name` in `ns`; returns its uid.
async fn create_rollout(cp: &ControlPlane, ns: &str, name: &str) -> String {
    let mut v = fast_rollout(name, "http://127.0.0.1:9090");
    v["spec"]["steps"] = json!([
        {"weight": 10, "duration": "2m"}, {"weight": 25, "duration": "2m"},
        {"weight": 50, "duration": "5m", "approval": true}, {"weight": 100, "duration": "5m"}
    ]);
    let obj: DynamicObject = serde_json::from_value(v).unwrap();
    let created = Api::<DynamicObject>::namespaced_with(cp.admin.clone(), ns, &rollout_resource())
        .create(&PostParams::default(), &obj)
        .await
        .unwrap_or_else(|e| panic!("create {ns}/{name}: {e}"));
    created.metadata.uid.expect("uid")
}

/// An events.k8s.io/v1 Event about the rollout, as the operator's recorder writes them.
async fn record_event(
    cp: &ControlPlane,
    ns: &str,
    rollout: &str,
    uid: &str,
    reason: &str,
    note: &str,
    at: &str,
) {
    let event = json!({
        "apiVersion": "events.k8s.io/v1", "kind": "Event",
        "metadata": {"generateName": format!("{rollout}-"), "namespace": ns},
        "eventTime": at, "reportingController": "embedding-rollout-operator",
        "reportingInstance": "embedding-rollout-operator-0", "action": "Reconcile",
        "reason": reason, "note": note, "type": if reason.contains("Fail") { "Warning" } else { "Normal" },
        "regarding": {"apiVersion": "rollout.akidb.io/v1alpha1", "kind": "EmbeddingRollout",
                      "namespace": ns, "name": rollout, "uid": uid}
    });
    let api: Api<DynamicObject> = Api::namespaced_with(
        cp.admin.clone(),
        ns,
        &kube::core::ApiResource::from_gvk_with_plural(
            &kube::core::GroupVersionKind::gvk("events.k8s.io", "v1", "Event"),
            "events",
        ),
    );
    api.create(
        &PostParams::default(),
        &serde_json::from_value(event).unwrap(),
    )
    .await
    .unwrap_or_else(|e| panic!("event {reason}: {e}"));
}

/// The control plane with the CRD, three rollouts and their events, and the operator binary
/// serving the dashboard with a token, as a standby replica under the chart's RBAC.
async fn start(test: &str) -> Dashboard {
    e2e::use_ring_crypto();
    let chromium = chromium_bin();
    assert!(chromium.is_file(), "{} missing", chromium.display());
    let operator_bin = default_operator_bin();
    assert!(
        operator_bin.is_file(),
        "the operator is not built: {} is missing; run `cargo build -p embedding-rollout-operator`",
        operator_bin.display()
    );
    let workdir = workdir(test);
    let cp = ControlPlane::start(&workdir.join("controlplane"))
        .await
        .unwrap_or_else(|e| panic!("control plane: {e}"));
    let crd = std::fs::read_to_string(workspace_root().join(format!("crds/{CRD_NAME}.yaml")))
        .expect("CRD file");
    cp.apply_as_admin(&crd).await.expect("apply CRD");
    for ns in ["production", "staging"] {
        cp.apply_as_admin(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n"
        ))
        .await
        .expect("namespace");
    }
    let kubeconfig = workdir.join("operator.kubeconfig");
    write_operator_kubeconfig(&cp, &kubeconfig)
        .await
        .expect("operator identity");
    // Another replica leads for the next hour: this operator only serves the dashboard.
    cp.apply_as_admin(&format!(
        "apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata: {{name: {OPERATOR_SA}, namespace: {OPERATOR_NAMESPACE}}}\n\
         spec: {{holderIdentity: the-other-replica, leaseDurationSeconds: 3600, renewTime: \"{}\"}}\n",
        chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.6fZ")
    ))
    .await
    .expect("lease held by another replica");

    let embed = create_rollout(&cp, "production", "embed").await;
    let legacy = create_rollout(&cp, "staging", "legacy").await;
    create_rollout(&cp, "staging", "fresh").await; // no status yet: Pending, -/4
    let d =
        |ns: &str| Api::<DynamicObject>::namespaced_with(cp.admin.clone(), ns, &rollout_resource());
    for (ns, name, status) in [
        ("production", "embed", progressing_status()),
        ("staging", "legacy", rolled_back_status()),
    ] {
        d(ns)
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": status })),
            )
            .await
            .unwrap_or_else(|e| panic!("status of {ns}/{name}: {e}"));
    }
    record_event(
        &cp,
        "production",
        "embed",
        &embed,
        "StepStarted",
        "step 2/4: canary weight 25 %",
        &ts_micro(240),
    )
    .await;
    record_event(
        &cp,
        "production",
        "embed",
        &embed,
        "AnalysisFailed",
        "maxP95Ms: P(>35 ms) = 8.1 % above 5 %",
        &ts_micro(360),
    )
    .await;
    record_event(
        &cp,
        "staging",
        "legacy",
        &legacy,
        "RolledBack",
        "all traffic on the baseline in 20 s",
        &ts_micro(-3460),
    )
    .await;

    let token = format!("dash-{}-{}", std::process::id(), rand::random::<u64>());
    let token_file = workdir.join("dashboard-token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let log = std::fs::File::create(workdir.join("operator.log")).unwrap();
    let mut cmd = tokio::process::Command::new(&operator_bin);
    cmd.args(["--metrics-addr", &format!("127.0.0.1:{}", free_port())])
        .args([
            "--leader-elect",
            "--lease-namespace",
            OPERATOR_NAMESPACE,
            "--lease-name",
            OPERATOR_SA,
        ])
        .args(["--lease-identity", "dashboard-e2e"])
        .args(["--dashboard-addr", &addr, "--dashboard-refresh", "1s"])
        .arg("--dashboard-token-file")
        .arg(&token_file)
        .env("KUBECONFIG", &kubeconfig)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    let mut operator = GroupChild::spawn(&mut cmd).expect("start the operator");
    let url = format!("http://{addr}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(status)) = operator.try_wait() {
            panic!(
                "the operator exited with {status}:\n{}",
                std::fs::read_to_string(workdir.join("operator.log")).unwrap_or_default()
            );
        }
        if let Ok(r) = reqwest::get(format!("{url}/assets/style.css")).await {
            if r.status().is_success() {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the dashboard did not answer within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Dashboard {
        cp,
        _operator: operator,
        url,
        token,
        workdir,
    }
}

// ---------------------------------------------------------------------------------------------
// Chromium from its command line

const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
];

/// Runs chromium on `url` with `extra` (`--dump-dom`, `--screenshot=...`), a fresh profile, and
/// 5 s of virtual time for the page's script (it waits for pending fetches); returns stdout.
async fn chromium(workdir: &Path, url: &str, extra: &[String]) -> String {
    let profile = tempdir_in(workdir, "profile");
    let out = tokio::time::timeout(
        Duration::from_secs(90),
        tokio::process::Command::new(chromium_bin())
            .args(CHROMIUM_FLAGS)
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("--virtual-time-budget=5000")
            .args(extra)
            .arg(url)
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("chromium did not finish in 90 s")
    .expect("run chromium");
    let _ = std::fs::remove_dir_all(&profile);
    assert!(
        out.status.success(),
        "chromium {extra:?} {url}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 DOM")
}

fn tempdir_in(dir: &Path, tag: &str) -> PathBuf {
    let p = dir.join(format!("{tag}-{}", rand::random::<u32>()));
    std::fs::create_dir_all(&p).unwrap();
    p
}

/// GET `path` of the dashboard's JSON API with the token, as JSON.
async fn api_json(http: &reqwest::Client, d: &Dashboard, path: &str) -> Value {
    http.get(format!("{}{path}", d.url))
        .bearer_auth(&d.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn dump_dom(d: &Dashboard, path: &str, token: Option<&str>) -> String {
    let url = match token {
        Some(t) => format!("{}{path}#token={t}", d.url),
        None => format!("{}{path}", d.url),
    };
    chromium(&d.workdir, &url, &["--dump-dom".to_string()]).await
}

async fn screenshot(d: &Dashboard, path: &str, name: &str, size: &str) -> PathBuf {
    let file = screenshot_dir().join(format!("{name}.png"));
    let _ = std::fs::remove_file(&file);
    chromium(
        &d.workdir,
        &format!("{}{path}#token={}", d.url, d.token),
        &[
            format!("--screenshot={}", file.display()),
            format!("--window-size={size}"),
        ],
    )
    .await;
    let png = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "{} is not a rendered page ({} bytes)",
        file.display(),
        png.len()
    );
    file
}

/// The element opened by the first tag containing `marker`, up to its closing `</tag>` (no
/// nesting of the same tag inside, which holds for the rows and charts looked at here).
fn element<'a>(dom: &'a str, tag: &str, marker: &str) -> &'a str {
    let at = dom
        .find(marker)
        .unwrap_or_else(|| panic!("no {marker} in the page:\n{}", excerpt(dom)));
    let start = dom[..at]
        .rfind(&format!("<{tag}"))
        .unwrap_or_else(|| panic!("{marker} is not inside <{tag}>"));
    let end = dom[at..]
        .find(&format!("</{tag}>"))
        .map(|e| at + e + tag.len() + 3)
        .unwrap_or_else(|| panic!("<{tag}> with {marker} not closed"));
    &dom[start..end]
}

/// The text inside the element carrying `data-field="field"` in `scope`.
fn field<'a>(scope: &'a str, field: &str) -> &'a str {
    let marker = format!("data-field=\"{field}\"");
    let at = scope
        .find(&marker)
        .unwrap_or_else(|| panic!("no {marker} in:\n{}", excerpt(scope)));
    let open_end = at + scope[at..].find('>').unwrap() + 1;
    let close = open_end + scope[open_end..].find("</").unwrap();
    &scope[open_end..close]
}

fn text_of(html: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out
}

fn excerpt(s: &str) -> String {
    s.chars().take(3000).collect()
}

fn attr(tag_text: &str, name: &str) -> Option<String> {
    let key = format!("{name}=\"");
    let at = tag_text.find(&key)? + key.len();
    Some(tag_text[at..at + tag_text[at..].find('"')?].to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_serves_the_dashboard_and_chromium_shows_it() {
    let d = start("pages").await;
    let http = reqwest::Client::new();

    // The JSON API the page uses, as the operator binary serves it.
    let list = http
        .get(format!("{}/api/rollouts", d.url))
        .send()
        .await
        .unwrap();
    assert_eq!(list.status(), 401, "no token");
    let list: Value = api_json(&http, &d, "/api/rollouts").await;
    assert_eq!(
        list["origin"], "api",
        "a standby replica reads the API server: {list}"
    );
    let rows: Vec<String> = list["rollouts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            format!(
                "{}/{} {} {} {}",
                r["namespace"].as_str().unwrap(),
                r["name"].as_str().unwrap(),
                r["phase"].as_str().unwrap(),
                r["step"].as_str().unwrap(),
                r["weight"]
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            "production/embed Progressing 2/4 25",
            "staging/fresh Pending -/4 0",
            "staging/legacy RolledBack 1/4 0"
        ]
    );
    let post = http
        .post(format!("{}/api/rollouts/production/embed", d.url))
        .bearer_auth(&d.token)
        .body("{\"command\": \"abort\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 405);
    let detail: Value = api_json(&http, &d, "/api/rollouts/production/embed").await;
    assert_eq!(detail["eventsError"], Value::Null, "{}", d.log());
    let reasons: Vec<&str> = detail["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["reason"].as_str().unwrap())
        .collect();
    assert_eq!(
        reasons,
        ["AnalysisFailed", "StepStarted"],
        "only this rollout's, newest first"
    );

    // The list page.
    let dom = dump_dom(&d, "/", Some(&d.token)).await;
    let row = element(&dom, "tr", "data-rollout=\"production/embed\"");
    assert_eq!(text_of(field(row, "phase")), "Progressing", "{row}");
    assert_eq!(field(row, "step"), "2/4");
    assert!(text_of(row).contains("25 %"), "{row}");
    let legacy = element(&dom, "tr", "data-rollout=\"staging/legacy\"");
    assert_eq!(text_of(field(legacy, "phase")), "RolledBack");
    let fresh = element(&dom, "tr", "data-rollout=\"staging/fresh\"");
    assert_eq!(field(fresh, "step"), "-/4");
    assert!(
        dom.contains("class=\"live ok\""),
        "the live indicator says the page polls:\n{}",
        excerpt(&dom)
    );
    let list_png = screenshot(&d, "/", "list", "1280,900").await;

    // One rollout's page: facts, charts with points, history, commands, events.
    let dom = dump_dom(&d, "/rollouts/production/embed", Some(&d.token)).await;
    assert_eq!(field(&dom, "phase"), "Progressing");
    assert_eq!(field(&dom, "step"), "2/4");
    assert_eq!(field(&dom, "weight"), "25 %");
    let weight = element(&dom, "svg", "data-chart=\"weight\"");
    let points: usize = attr(weight, "data-points").unwrap().parse().unwrap();
    // Two step starts and six analyses (all at distinct times), and now: the rollout is in flight.
    assert_eq!(points, 2 + 6 + 1, "{weight}");
    assert_eq!(weight.matches("<circle").count(), points, "{weight}");
    let line = element(weight, "path", "class=\"line s0\"");
    assert!(
        attr(line, "d").unwrap().contains(" H"),
        "a step line: {line}"
    );
    let gate = element(&dom, "svg", "data-chart=\"gate-maxP95Ms\"");
    assert_eq!(
        gate.matches("<circle").count(),
        6,
        "one point per analysis: {gate}"
    );
    assert_eq!(
        gate.matches("class=\"v-Fail\"").count(),
        1,
        "the failing analysis: {gate}"
    );
    assert!(
        gate.contains("class=\"threshold\""),
        "the threshold line: {gate}"
    );
    assert!(
        gate.contains("class=\"band\""),
        "the confidence bounds: {gate}"
    );
    let errors = element(&dom, "svg", "data-chart=\"gate-maxErrorRate\"");
    assert_eq!(errors.matches("<circle").count(), 6);
    let latency = element(&dom, "svg", "data-chart=\"latency\"");
    assert_eq!(
        latency.matches("<circle").count(),
        12,
        "candidate and baseline P95"
    );
    let history = element(&dom, "table", "id=\"history\"");
    assert_eq!(
        history.matches("<tr>").count(),
        1 + 6,
        "header and six analyses"
    );
    let commands = element(&dom, "table", "id=\"commands\"");
    assert!(
        text_of(commands).contains("alice@example.com"),
        "{commands}"
    );
    let events = text_of(element(&dom, "table", "id=\"events\""));
    assert!(
        events.contains("StepStarted") && events.contains("step 2/4: canary weight 25 %"),
        "{events}"
    );
    assert!(events.contains("AnalysisFailed"), "{events}");
    assert!(
        !events.contains("RolledBack"),
        "another rollout's event: {events}"
    );
    let detail_png = screenshot(&d, "/rollouts/production/embed", "detail", "1280,900").await;
    let detail_full =
        screenshot(&d, "/rollouts/production/embed", "detail-full", "1280,2600").await;

    let dom = dump_dom(&d, "/rollouts/staging/legacy", Some(&d.token)).await;
    assert_eq!(field(&dom, "phase"), "RolledBack");
    assert!(text_of(element(&dom, "div", "data-field=\"rollback\""))
        .contains("maxP95Ms failed 3 times"));
    let rolled_back = screenshot(&d, "/rollouts/staging/legacy", "rolled-back", "1280,900").await;

    // Without the token the page asks for it and shows no rollout.
    let dom = dump_dom(&d, "/", None).await;
    assert!(dom.contains("id=\"login\""), "{}", excerpt(&dom));
    assert!(
        !dom.contains("production/embed") && !dom.contains("Progressing"),
        "{}",
        excerpt(&dom)
    );
    let dom = dump_dom(&d, "/", Some("not-the-token")).await;
    assert!(
        dom.contains("The token was not accepted."),
        "{}",
        excerpt(&dom)
    );
    assert!(!dom.contains("data-rollout="));

    assert!(
        !d.log().contains("acquired leadership"),
        "the operator must stay a standby: {}",
        d.log()
    );
    println!(
        "screenshots: {} {} {} {}",
        list_png.display(),
        detail_png.display(),
        detail_full.display(),
        rolled_back.display()
    );
}

// ---------------------------------------------------------------------------------------------
// Chromium driven over the DevTools protocol (--remote-debugging-pipe: NUL-separated JSON on
// file descriptors 3 and 4), to watch one page update without a reload.

struct Cdp {
    to_browser: std::fs::File,
    from_browser: mpsc::Receiver<Value>,
    next_id: u64,
    session: Option<String>,
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills both descriptors on success.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: fresh descriptors owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

impl Cdp {
    /// Starts chromium (from the async side: the child is a tokio process) and returns it with
    /// the protocol's two pipes, which may move to a thread of their own.
    fn launch(workdir: &Path) -> (GroupChild, Self) {
        let (browser_reads, we_write) = pipe();
        let (we_read, browser_writes) = pipe();
        let profile = tempdir_in(workdir, "cdp-profile");
        let mut cmd = tokio::process::Command::new(chromium_bin());
        cmd.args(CHROMIUM_FLAGS)
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("--remote-debugging-pipe")
            .arg("--window-size=1280,900")
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(workdir.join("chromium-cdp.log")).unwrap());
        let (r, w) = (browser_reads.as_raw_fd(), browser_writes.as_raw_fd());
        // SAFETY: only async-signal-safe fcntl and dup2 between fork and exec. The copies above
        // 10 first, so neither pipe end can be 3 or 4 when dup2 puts them there (dup2 onto the
        // same descriptor would keep its close-on-exec flag; onto the other end would close it).
        unsafe {
            cmd.pre_exec(move || {
                let (r2, w2) = (
                    libc::fcntl(r, libc::F_DUPFD, 10),
                    libc::fcntl(w, libc::F_DUPFD, 10),
                );
                if r2 < 0 || w2 < 0 || libc::dup2(r2, 3) < 0 || libc::dup2(w2, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(r2);
                libc::close(w2);
                Ok(())
            });
        }
        let child = GroupChild::spawn(&mut cmd).expect("start chromium");
        drop((browser_reads, browser_writes));
        let (tx, rx) = mpsc::channel();
        let reader = std::fs::File::from(we_read);
        std::thread::spawn(move || {
            let mut r = BufReader::new(reader);
            loop {
                let mut buf = Vec::new();
                match r.read_until(0, &mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        buf.pop();
                        if let Ok(v) = serde_json::from_slice::<Value>(&buf) {
                            if tx.send(v).is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        });
        (
            child,
            Self {
                to_browser: std::fs::File::from(we_write),
                from_browser: rx,
                next_id: 1,
                session: None,
            },
        )
    }

    /// Sends one command (to the attached page, once there is one) and waits for its answer.
    fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = &self.session {
            msg["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&msg).unwrap();
        bytes.push(0);
        self.to_browser
            .write_all(&bytes)
            .expect("write to chromium");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = self
                .from_browser
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("no answer to {method} from chromium: {e}"));
            if v["id"] == json!(id) {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    fn open(&mut self, url: &str) {
        let target = self.call("Target.createTarget", json!({"url": url}));
        let target_id = target["targetId"].as_str().expect("targetId").to_string();
        let attached = self.call(
            "Target.attachToTarget",
            json!({"targetId": target_id, "flatten": true}),
        );
        self.session = Some(
            attached["sessionId"]
                .as_str()
                .expect("sessionId")
                .to_string(),
        );
    }

    /// The value of a JavaScript expression in the page.
    fn eval(&mut self, expression: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true}),
        );
        assert!(r.get("exceptionDetails").is_none(), "{expression}: {r}");
        r["result"]["value"].clone()
    }

    /// Evaluates `expression` every 200 ms until it is `true`; panics with the last value of
    /// `show` after `timeout`.
    fn wait_for(&mut self, what: &str, expression: &str, show: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.eval(expression) == json!(true) {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "{what}: not within {timeout:?}; the page shows {}",
                    self.eval(show)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

const SHOWN: &str = "JSON.stringify({phase: document.querySelector('[data-field=phase]')?.textContent, \
     step: document.querySelector('[data-field=step]')?.textContent, \
     weight: document.querySelector('[data-field=weight]')?.textContent, \
     points: document.querySelector('svg[data-chart=weight]')?.getAttribute('data-points'), \
     live: document.getElementById('live')?.textContent, polls: document.body.getAttribute('data-polls')})";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rollout_page_follows_the_rollout_without_a_reload() {
    let d = start("live").await;
    let url = format!("{}/rollouts/production/embed#token={}", d.url, d.token);
    let workdir = d.workdir.clone();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<usize>();
    // The browser side runs on its own thread (blocking pipe I/O); the test changes the status.
    let (_chromium, mut cdp) = Cdp::launch(&workdir);
    let browser = std::thread::spawn(move || {
        cdp.open(&url);
        cdp.wait_for(
            "the page shows step 2/4 at 25 %",
            "document.querySelector('[data-field=weight]')?.textContent === '25 %' && \
             document.querySelector('[data-field=step]')?.textContent === '2/4'",
            SHOWN,
            Duration::from_secs(30),
        );
        let before: usize = cdp
            .eval("document.querySelector('svg[data-chart=weight]').getAttribute('data-points')")
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        // A marker that a reload would lose.
        cdp.eval("window.__sameDocument = 'yes'");
        ready_tx.send(before).unwrap();
        rx.blocking_recv().unwrap();
        cdp.wait_for(
            "the page shows step 3/4 at 50 % without a reload",
            "document.querySelector('[data-field=weight]')?.textContent === '50 %' && \
             document.querySelector('[data-field=step]')?.textContent === '3/4'",
            SHOWN,
            Duration::from_secs(30),
        );
        let same = cdp.eval("window.__sameDocument");
        let after: usize = cdp
            .eval("document.querySelector('svg[data-chart=weight]').getAttribute('data-points')")
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let verdict = cdp.eval("document.querySelector('[data-field=verdict]').textContent");
        (before, after, same, verdict)
    });
    let loaded = ready_rx
        .await
        .expect("the browser side failed before the page showed the rollout (its panic is above)");
    // The operator moves on: step 3/4 at 50 % with a new analysis.
    let mut status = progressing_status();
    status["currentStep"] = json!(2);
    status["step"] = json!("3/4");
    status["currentWeight"] = json!(50);
    status["stepSummaries"][1]["endedAt"] = json!(&ts(480));
    status["stepSummaries"][1]["outcome"] = json!("Advanced");
    status["stepSummaries"]
        .as_array_mut()
        .unwrap()
        .push(json!({"step": 2, "weight": 50, "startedAt": &ts(480), "analyses": 1, "passed": 0, "inconclusive": 1}));
    let next = analysis(&ts(540), 2, 50, "Inconclusive", 0.02);
    status["history"].as_array_mut().unwrap().push(next.clone());
    status["lastAnalysis"] = next;
    d.set_status("production", "embed", status).await;
    tx.send(()).unwrap();
    let (before, after, same, verdict) = tokio::task::spawn_blocking(move || browser.join())
        .await
        .unwrap()
        .unwrap_or_else(|_| panic!("the browser side failed; operator log:\n{}", d.log()));
    assert_eq!(loaded, before);
    assert_eq!(same, json!("yes"), "the page was reloaded");
    assert_eq!(verdict, json!("Inconclusive"));
    // One step start and one analysis more.
    assert_eq!(after, before + 2, "weight chart points {before} -> {after}");
}
