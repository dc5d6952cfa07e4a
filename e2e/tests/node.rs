//! The product on a real node: kube-controller-manager, kube-scheduler, the kubelet, containerd and
//! kube-proxy run the image archives of e2e/images/build.sh, and the operator is installed by its own
//! Helm chart. One node for the whole binary (started by the first test that needs it, stopped when
//! the binary exits), a namespace per test. Needs root; `make e2e` builds the images first.
//!
//!   e2e/images/build.sh && cargo test -p e2e --test node -- --test-threads=1 --nocapture

use std::path::Path;
use std::time::{Duration, Instant};

use e2e::node_env::{
    apply_baseline, available, cluster, create_namespace, embed_via_service, image, images_dir,
    install_operator, until, wait_available,
};
use e2e::scenario::{
    fast_rollout, phase, primary_backend, rollout_resource, BASELINE, CANDIDATE,
    OPERATOR_NAMESPACE, OPERATOR_SA, PRIMARY_INGRESS,
};
use e2e::traffic::{self, TrafficConfig};
use e2e::workspace_root;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams};
use serde_json::{json, Value};

/// The image archives hold what the Dockerfiles' final stages put in their images: the same
/// ENTRYPOINT, CMD, ENV, USER and EXPOSE, and the files they COPY at the same paths.
#[test]
fn image_archives_match_the_dockerfiles() {
    let dir = images_dir();
    for (archive, dockerfile, files) in [
        (
            "candle-embedder",
            "embedder/Dockerfile",
            &[
                "usr/local/bin/candle-embedder",
                "models/all-MiniLM-L6-v2/model.safetensors",
                "models/all-MiniLM-L6-v2/tokenizer.json",
                "models/all-MiniLM-L6-v2/config.json",
            ][..],
        ),
        (
            "embedding-rollout-operator",
            "operator/Dockerfile",
            &["usr/local/bin/embedding-rollout-operator"][..],
        ),
    ] {
        let path = dir.join(format!("{archive}.tar"));
        assert!(
            path.is_file(),
            "{} missing: run e2e/images/build.sh",
            path.display()
        );
        let config = image_config(&path);
        let want = dockerfile_final_stage(&workspace_root().join(dockerfile));
        let cfg = &config["config"];
        assert_eq!(
            cfg["Entrypoint"], want["Entrypoint"],
            "{archive}: ENTRYPOINT"
        );
        assert_eq!(cfg["User"], want["User"], "{archive}: USER");
        let exposed: Vec<String> = cfg["ExposedPorts"]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        assert_eq!(
            serde_json::to_value(exposed).unwrap(),
            want["ExposedPorts"],
            "{archive}: EXPOSE"
        );
        if !want["Cmd"].is_null() {
            assert_eq!(cfg["Cmd"], want["Cmd"], "{archive}: CMD");
        }
        for env in want["Env"].as_array().unwrap() {
            assert!(
                cfg["Env"].as_array().unwrap().contains(env),
                "{archive}: ENV {env} missing from {}",
                cfg["Env"]
            );
        }
        let listed = archive_files(&path);
        for f in files {
            assert!(
                listed.iter().any(|l| l == f),
                "{archive}: {f} missing from the image's layers"
            );
        }
        // The shared libraries the binary loads, as distroless/cc-debian12 ships them.
        assert!(
            listed.iter().any(|l| l.ends_with("libc.so.6")),
            "{archive}: no libc.so.6"
        );
        assert!(
            listed.iter().any(|l| l == "lib64/ld-linux-x86-64.so.2"),
            "{archive}: no dynamic loader at /lib64"
        );
    }
}

/// The image config JSON inside a `docker save`-format archive.
fn image_config(archive: &Path) -> Value {
    let manifest: Value = serde_json::from_slice(&tar_extract(archive, "manifest.json")).unwrap();
    let config = manifest[0]["Config"].as_str().expect("manifest Config");
    serde_json::from_slice(&tar_extract(archive, config)).unwrap()
}

fn tar_extract(archive: &Path, member: &str) -> Vec<u8> {
    let out = std::process::Command::new("tar")
        .arg("-xOf")
        .arg(archive)
        .arg(member)
        .output()
        .expect("tar");
    assert!(
        out.status.success(),
        "tar -xOf {} {member}",
        archive.display()
    );
    out.stdout
}

/// Every file path in every layer (without the leading `./`).
fn archive_files(archive: &Path) -> Vec<String> {
    let manifest: Value = serde_json::from_slice(&tar_extract(archive, "manifest.json")).unwrap();
    let mut files = Vec::new();
    for layer in manifest[0]["Layers"].as_array().unwrap() {
        let blob = tar_extract(archive, layer.as_str().unwrap());
        let mut child = std::process::Command::new("tar")
            .args(["-tz"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let writer = std::thread::spawn(move || {
            use std::io::Write;
            stdin.write_all(&blob).unwrap();
        });
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap();
        files.extend(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(|l| l.trim_start_matches("./").trim_end_matches('/').to_string()),
        );
    }
    files
}

/// ENTRYPOINT, CMD (exec form), ENV, USER and EXPOSE of a Dockerfile's last stage, as an image config.
fn dockerfile_final_stage(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let l = line.trim();
        if l.starts_with('#') || l.is_empty() {
            continue;
        }
        cur.push_str(l.trim_end_matches('\\'));
        cur.push(' ');
        if !l.ends_with('\\') {
            lines.push(std::mem::take(&mut cur));
        }
    }
    let last_from = lines.iter().rposition(|l| l.starts_with("FROM ")).unwrap();
    let mut cfg =
        json!({"Entrypoint": null, "Cmd": null, "Env": [], "User": "", "ExposedPorts": []});
    for l in &lines[last_from..] {
        let (inst, rest) = l.split_once(' ').unwrap();
        let rest = rest.trim();
        match inst {
            "ENTRYPOINT" => cfg["Entrypoint"] = serde_json::from_str(rest).unwrap(),
            "CMD" => cfg["Cmd"] = serde_json::from_str(rest).unwrap(),
            "USER" => cfg["User"] = json!(rest),
            "EXPOSE" => cfg["ExposedPorts"] = json!([format!("{rest}/tcp")]),
            "ENV" => {
                for kv in rest.split_whitespace() {
                    cfg["Env"].as_array_mut().unwrap().push(json!(kv));
                }
            }
            _ => {}
        }
    }
    cfg
}

/// The operator chart on a real node: two replicas under leader election (read-only root, the
/// chart's probes and RBAC). A candidate whose container crash-loops (a bad flag) never becomes
/// available: `progressDeadline` expires and the rollout Fails without ever moving traffic,
/// while the baseline keeps answering through its Service. Deleting the rollout releases its
/// finalizer and the controller-manager's garbage collector removes the candidate's objects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n1_crash_looping_candidate_fails_on_progress_deadline_and_deletion_collects_its_objects() {
    let cp = cluster().await;
    install_operator(&cp, &[]);
    let ns = "n1";
    create_namespace(&cp, ns).await;
    apply_baseline(&cp, ns).await;
    let t = Instant::now();
    wait_available(
        &cp,
        ns,
        BASELINE,
        2,
        Duration::from_secs(120),
        "the baseline's 2 pods Ready",
    )
    .await;
    println!(
        "[n1] baseline available (2 pods) in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    // kube-proxy programs the new Service's rules moments after its endpoints turn ready.
    let t = Instant::now();
    until(
        Duration::from_secs(30),
        "the baseline Service answers",
        || async { embed_via_service(&cp, ns, BASELINE).await.ok() },
    )
    .await;
    println!(
        "[n1] baseline answers on its ClusterIP {:.1}s after availability",
        t.elapsed().as_secs_f64()
    );

    // Clients on the baseline's ClusterIP for the whole rollout: none of their requests may fail.
    let services: Api<Service> = Api::namespaced(cp.admin.clone(), ns);
    let ip = services
        .get(BASELINE)
        .await
        .unwrap()
        .spec
        .and_then(|s| s.cluster_ip)
        .expect("a ClusterIP");
    let mut cfg = TrafficConfig::new(&format!("http://{ip}:8080"), None);
    cfg.rate_per_sec = 10.0;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let clients = tokio::spawn(traffic::run(cfg, async {
        let _ = stop_rx.await;
    }));

    let node = cp.node.as_ref().expect("a node");
    // Prometheus is never asked: the candidate never becomes available.
    let mut rollout = fast_rollout("crash", &format!("http://{}:9", node.ip));
    rollout["spec"]["candidate"]["image"] = json!(image("candle-embedder"));
    rollout["spec"]["candidate"]["args"] = json!(["--no-such-flag"]);
    rollout["spec"]["candidate"]["progressDeadline"] = json!("45s");
    let rollouts: Api<DynamicObject> =
        Api::namespaced_with(cp.admin.clone(), ns, &rollout_resource());
    let obj: DynamicObject = serde_json::from_value(rollout).unwrap();
    rollouts.create(&PostParams::default(), &obj).await.unwrap();
    let t = Instant::now();

    let pods: Api<Pod> = Api::namespaced(cp.admin.clone(), ns);
    let candidate_pods =
        ListParams::default().labels(&format!("app.kubernetes.io/name={CANDIDATE}"));
    let mut max_restarts = 0;
    let mut crash_loop_seen = false;
    let mut max_weight = 0;
    let deadline = Instant::now() + Duration::from_secs(150);
    let final_status = loop {
        for p in pods.list(&candidate_pods).await.unwrap().items {
            for cs in p
                .status
                .and_then(|s| s.container_statuses)
                .unwrap_or_default()
            {
                max_restarts = max_restarts.max(cs.restart_count);
                let waiting = cs.state.and_then(|s| s.waiting).and_then(|w| w.reason);
                crash_loop_seen |= waiting.as_deref() == Some("CrashLoopBackOff");
            }
        }
        let r = serde_json::to_value(rollouts.get("crash").await.unwrap()).unwrap();
        max_weight = max_weight.max(r["status"]["currentWeight"].as_i64().unwrap_or(0));
        if phase(&r) == "Failed" {
            break r["status"].clone();
        }
        assert!(
            Instant::now() < deadline,
            "not Failed after 150 s; status {}",
            r["status"]
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    println!(
        "[n1] Failed {:.1}s after creation; candidate restarts {max_restarts}, CrashLoopBackOff seen {crash_loop_seen}; message: {}",
        t.elapsed().as_secs_f64(),
        final_status["message"]
    );
    assert!(
        max_restarts >= 1,
        "the kubelet restarted the crashing container"
    );
    let message = final_status["message"].as_str().unwrap_or("");
    assert!(
        message.contains("not available after 45s") && message.contains("traffic untouched"),
        "the status says why: {message}"
    );
    assert_eq!(
        max_weight, 0,
        "no traffic ever moved to a candidate that never became available"
    );
    let ingresses: Api<Ingress> = Api::namespaced(cp.admin.clone(), ns);
    let primary = ingresses.get(PRIMARY_INGRESS).await.unwrap();
    let backend = primary_backend(&primary).expect("a backend Service");
    assert_eq!(
        backend, BASELINE,
        "the primary Ingress stays on the baseline"
    );
    assert_eq!(available(&cp, ns, BASELINE).await, 2);
    let _ = stop_tx.send(());
    let samples = clients.await.unwrap();
    let failed: Vec<_> = samples.iter().filter(|s| !s.ok()).collect();
    println!(
        "[n1] clients on the baseline's ClusterIP: {} requests, {} failed",
        samples.len(),
        failed.len()
    );
    assert!(samples.len() > 300, "clients ran for the whole rollout");
    assert!(
        failed.is_empty(),
        "no client request fails: {:?}",
        &failed[..failed.len().min(3)]
    );

    // Deletion: the finalizer goes, then the owned candidate Deployment, its ReplicaSets and pods.
    let deps: Api<Deployment> = Api::namespaced(cp.admin.clone(), ns);
    assert!(
        deps.get_opt(CANDIDATE).await.unwrap().is_some(),
        "the candidate Deployment is still there after the rollback (scaled down, owned by the rollout)"
    );
    let replica_sets: Api<ReplicaSet> = Api::namespaced(cp.admin.clone(), ns);
    let owned_sets = replica_sets
        .list(&candidate_pods)
        .await
        .unwrap()
        .items
        .len();
    assert!(
        owned_sets >= 1,
        "the candidate's ReplicaSet exists before the deletion"
    );
    let t = Instant::now();
    rollouts
        .delete("crash", &DeleteParams::default())
        .await
        .unwrap();
    until(
        Duration::from_secs(60),
        "the rollout gone (finalizer released)",
        || async {
            rollouts
                .get_opt("crash")
                .await
                .ok()?
                .is_none()
                .then_some(())
        },
    )
    .await;
    until(
        Duration::from_secs(90),
        "the candidate Deployment, ReplicaSets and pods garbage-collected",
        || async {
            let dep = deps.get_opt(CANDIDATE).await.ok()?;
            let sets = replica_sets.list(&candidate_pods).await.ok()?.items.len();
            let left = pods.list(&candidate_pods).await.ok()?.items.len();
            (dep.is_none() && sets == 0 && left == 0).then_some(())
        },
    )
    .await;
    println!(
        "[n1] rollout deleted; candidate Deployment and its {owned_sets} ReplicaSet(s) collected {:.1}s later",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(
        available(&cp, ns, BASELINE).await,
        2,
        "the baseline is untouched"
    );
}

/// The leader operator pod deleted: the standby takes the Lease. Prints the handover time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n2_leader_pod_deleted_the_standby_takes_the_lease() {
    let cp = cluster().await;
    install_operator(&cp, &[]);
    wait_available(
        &cp,
        OPERATOR_NAMESPACE,
        OPERATOR_SA,
        2,
        Duration::from_secs(90),
        "the operator at 2 ready replicas",
    )
    .await;
    let leases: Api<Lease> = Api::namespaced(cp.admin.clone(), OPERATOR_NAMESPACE);
    let holder = |l: Option<Lease>| l.and_then(|l| l.spec?.holder_identity);
    let leader = until(Duration::from_secs(60), "a Lease holder", || async {
        holder(leases.get_opt(OPERATOR_SA).await.ok()?)
    })
    .await;
    let pods: Api<Pod> = Api::namespaced(cp.admin.clone(), OPERATOR_NAMESPACE);
    let names: Vec<String> = pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    assert!(
        names.contains(&leader),
        "the Lease holder {leader} is one of the operator pods {names:?}"
    );
    let t = Instant::now();
    pods.delete(&leader, &DeleteParams::default())
        .await
        .unwrap();
    let next = until(
        Duration::from_secs(60),
        "another pod takes the Lease",
        || async { holder(leases.get_opt(OPERATOR_SA).await.ok()?).filter(|h| *h != leader) },
    )
    .await;
    println!(
        "[n2] leader {leader} deleted; {next} holds the Lease {:.1}s later",
        t.elapsed().as_secs_f64()
    );
    // The standby, or the replacement pod if it starts first: any live replica but the deleted one.
    let live: Vec<String> = pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| p.metadata.name)
        .collect();
    assert!(
        live.contains(&next),
        "the new leader {next} is a live operator pod ({live:?})"
    );
    // The Deployment replaces the deleted pod: two replicas again.
    wait_available(
        &cp,
        OPERATOR_NAMESPACE,
        OPERATOR_SA,
        2,
        Duration::from_secs(90),
        "the operator back at 2 ready replicas",
    )
    .await;
}

/// A container killed through containerd (as the OOM killer or a crash would end it): the kubelet
/// restarts it in the same pod, the pod turns Ready again and the Service answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n3_a_killed_container_is_restarted_by_the_kubelet() {
    let cp = cluster().await;
    let ns = "n3";
    create_namespace(&cp, ns).await;
    apply_baseline(&cp, ns).await;
    wait_available(
        &cp,
        ns,
        BASELINE,
        2,
        Duration::from_secs(120),
        "the baseline's 2 pods Ready",
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(cp.admin.clone(), ns);
    let lp = ListParams::default().labels(&format!("app.kubernetes.io/name={BASELINE}"));
    let pod = pods.list(&lp).await.unwrap().items.remove(0);
    let name = pod.metadata.name.clone().unwrap();
    let status = pod.status.unwrap().container_statuses.unwrap().remove(0);
    let container_id = status
        .container_id
        .clone()
        .expect("a running container has an id");
    let t = Instant::now();
    e2e::rollout_env::kill_container(&cp, &container_id).unwrap_or_else(|e| panic!("{e:#}"));
    let restarted = until(
        Duration::from_secs(90),
        "the container restarted and Ready",
        || async {
            let p = pods.get(&name).await.ok()?;
            let cs = p.status?.container_statuses?.remove(0);
            (cs.restart_count > status.restart_count
                && cs.ready
                && cs.container_id.as_deref() != Some(container_id.as_str()))
            .then_some(cs.restart_count)
        },
    )
    .await;
    println!(
        "[n3] container of {name} SIGKILLed through containerd; restarted (restartCount {restarted}) and Ready {:.1}s later",
        t.elapsed().as_secs_f64()
    );
    until(Duration::from_secs(30), "the Service answers", || async {
        embed_via_service(&cp, ns, BASELINE).await.ok()
    })
    .await;
    assert_eq!(available(&cp, ns, BASELINE).await, 2);
}
