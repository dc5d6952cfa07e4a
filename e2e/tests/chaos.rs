//! `make chaos` (outside CI; about 10 minutes): rollouts on the real node while the operator is
//! killed and the API server restarted under them. Healthy and failing (slow) candidates, both
//! providers, one after another; meanwhile the operator's containers are SIGKILLed through
//! containerd at 20 random moments (the Lease holder's when it runs, as a node's OOM killer would
//! end it) and kube-apiserver is restarted twice while a rollout is in progress. Asserted: every
//! rollout ends with the right outcome (healthy: Promoted, slow: RolledBack), no weight ever goes
//! back without a rollback and its reason, no client request fails. Printed: the kills, each
//! handover (kill -> the Lease renewed after it), the API server's restart times, the outcomes.
//!
//!   E2E_KUBELET_MAX_RESTART_PERIOD=10s cargo test -p e2e --test chaos -- --nocapture
//!
//! (`make chaos` sets the kubelet's crash-loop back-off cap: at the default 300 s, 20 kills in
//! minutes leave both operator pods waiting minutes to restart.) `CHAOS_SEED` picks the moments.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use e2e::controlplane::ControlPlane;
use e2e::node_env::cluster;
use e2e::rollout_env::{kill_container, operator_pods, platform, Provider, RolloutEnv};
use e2e::scenario::{phase, Observation, CANDIDATE, OPERATOR_NAMESPACE, OPERATOR_SA};
use e2e::traffic::Sample;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

const KILLS: usize = 20;
const API_RESTARTS: usize = 2;
const RATE: f64 = 30.0;

struct Case {
    ns: &'static str,
    provider: Provider,
    args: &'static [&'static str],
    expected: &'static str,
}

const CASES: [Case; 4] = [
    Case {
        ns: "chaos-ok-gateway",
        provider: Provider::Gateway,
        args: &[],
        expected: "Promoted",
    },
    Case {
        ns: "chaos-slow-nginx",
        provider: Provider::Nginx,
        args: &["--chaos-latency-ms=60"],
        expected: "RolledBack",
    },
    Case {
        ns: "chaos-ok-nginx",
        provider: Provider::Nginx,
        args: &[],
        expected: "Promoted",
    },
    Case {
        ns: "chaos-slow-gateway",
        provider: Provider::Gateway,
        args: &["--chaos-latency-ms=60"],
        expected: "RolledBack",
    },
];

/// One event the chaos task carried out.
#[derive(Debug, Clone)]
enum Event {
    Kill {
        at: SystemTime,
        pod: String,
        leader: bool,
        /// Kill -> the Lease renewed by a live operator after it.
        handover: Option<Duration>,
    },
    ApiRestart {
        at: SystemTime,
        took: Duration,
    },
}

impl Event {
    /// One line for the log, times relative to `t0`.
    fn describe(&self, t0: SystemTime) -> String {
        let since = |at: &SystemTime| at.duration_since(t0).unwrap_or_default().as_secs_f64();
        match self {
            Event::Kill {
                at,
                pod,
                leader,
                handover,
            } => format!(
                "{:6.1}s SIGKILL {pod}{}: Lease renewed {}",
                since(at),
                if *leader { " (Lease holder)" } else { "" },
                handover.map_or("never (within 120 s)".into(), |h| format!(
                    "{:.1}s later",
                    h.as_secs_f64()
                ))
            ),
            Event::ApiRestart { at, took } => format!(
                "{:6.1}s kube-apiserver restarted, ready again in {:.1}s",
                since(at),
                took.as_secs_f64()
            ),
        }
    }
}

/// The Lease's holder and renew time; `None` while the API server does not answer.
async fn lease(cp: &ControlPlane) -> Option<(String, SystemTime)> {
    let leases: Api<Lease> = Api::namespaced(cp.admin.clone(), OPERATOR_NAMESPACE);
    let spec = leases.get(OPERATOR_SA).await.ok()?.spec?;
    let renew = spec.renew_time?.0;
    Some((
        spec.holder_identity?,
        SystemTime::UNIX_EPOCH + Duration::from_micros(renew.as_microsecond().max(0) as u64),
    ))
}

/// Kills a running operator container, the Lease holder's if it runs; waits for the handover.
async fn kill_one(cp: &ControlPlane) -> Option<Event> {
    let holder = lease(cp).await.map(|(h, _)| h);
    let pods = operator_pods(cp).await;
    let running: Vec<(String, String)> = pods
        .into_iter()
        .filter_map(|p| {
            let name = p.metadata.name?;
            let cs = p.status?.container_statuses?.into_iter().next()?;
            cs.state?.running?;
            Some((name, cs.container_id?))
        })
        .collect();
    let (pod, id) = running
        .iter()
        .find(|(p, _)| Some(p) == holder.as_ref())
        .or(running.first())?
        .clone();
    let leader = Some(&pod) == holder.as_ref();
    let at = SystemTime::now();
    if let Err(e) = kill_container(cp, &id) {
        println!("[chaos] could not kill {pod}: {e:#}");
        return None;
    }
    // The handover: the Lease renewed after the kill (by the restarted container or the standby).
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut handover = None;
    while Instant::now() < deadline {
        if let Some((_, renew)) = lease(cp).await {
            if renew > at {
                handover = Some(renew.duration_since(at).unwrap_or_default());
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Some(Event::Kill {
        at,
        pod,
        leader,
        handover,
    })
}

/// Weights go back only with a rollback under way and its reason in the status.
fn assert_no_unexplained_decrease(ns: &str, log: &[(Observation, Value)]) {
    for w in log.windows(2) {
        let ((a, _), (b, status)) = (&w[0], &w[1]);
        // The candidate's share of the route: all of it once the primary points at it (the
        // nginx promotion deletes the canary Ingress), else the canary's or backendRef's weight.
        let share = |o: &Observation| {
            if o.primary.as_deref() == Some(CANDIDATE) {
                100
            } else {
                o.candidate_weight.unwrap_or(0)
            }
        };
        let went_back = b.weight < a.weight || b.step < a.step || share(b) < share(a);
        if went_back {
            assert!(
                matches!(b.phase.as_str(), "RollingBack" | "RolledBack")
                    && status["rollback"]["reason"]
                        .as_str()
                        .is_some_and(|r| !r.is_empty()),
                "[{ns}] weight went back without a rollback and its reason: {a:?} -> {b:?}; status {status}"
            );
        }
    }
}

/// One rollout to its end through the chaos; tolerates the API server being away.
async fn run_case(
    case: &Case,
    ns: &str,
    in_rollout: &tokio::sync::watch::Sender<bool>,
) -> (String, f64, Vec<Sample>) {
    let mut env = RolloutEnv::start(cluster().await, ns, case.provider, &[]).await;
    let mut rollout = env.rollout_spec(ns);
    rollout["spec"]["candidate"]["args"] = json!(case.args);
    env.start_traffic(RATE);
    env.create_rollout(&rollout).await.expect("create rollout");
    let created = Instant::now();
    in_rollout.send_replace(true);
    let mut log: Vec<(Observation, Value)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(600);
    let fin = loop {
        if let (Ok(r), Ok(routing)) = (env.rollout(ns).await, env.routing().await) {
            let o = Observation::of(&r, routing.primary, routing.candidate_weight);
            if log.last().is_none_or(|(l, _)| !l.same_state(&o)) {
                println!(
                    "[{}] {:6.1}s phase={} step={} weight={} route={:?} | {}",
                    ns,
                    env.secs(),
                    o.phase,
                    o.step,
                    o.weight,
                    o.candidate_weight,
                    r["status"]["message"].as_str().unwrap_or("")
                );
            }
            let done = matches!(phase(&r), "Promoted" | "RolledBack" | "Failed");
            log.push((o, r["status"].clone()));
            if done {
                break r;
            }
        }
        assert!(
            Instant::now() < deadline,
            "[{}] no final phase within 600 s; last: {:?}",
            ns,
            log.last()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    in_rollout.send_replace(false);
    let took = created.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(8)).await;
    let samples = env.stop_traffic().await;
    assert_eq!(
        phase(&fin),
        case.expected,
        "[{}] status: {:#}",
        ns,
        fin["status"]
    );
    assert_no_unexplained_decrease(ns, &log);
    let failed: Vec<&Sample> = samples.iter().filter(|s| !s.ok()).collect();
    assert!(
        failed.is_empty(),
        "[{}] {} of {} client requests failed, e.g. {:?}",
        ns,
        failed.len(),
        samples.len(),
        &failed[..failed.len().min(5)]
    );
    env.shutdown().await;
    (phase(&fin).to_string(), took, samples)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_operator_killed_and_api_server_restarted_every_rollout_ends_right() {
    let t = Instant::now();
    let seed: u64 = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let cp = cluster().await;
    platform(&cp, &[]).await;
    // The moments: gaps of 6-20 s (about 13 s on average) from the first rollout on, the two API
    // server restarts among them; a restart waits for a rollout in progress.
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut plan: Vec<bool> = vec![false; KILLS];
    for _ in 0..API_RESTARTS {
        let at = rng.random_range(2..plan.len());
        plan.insert(at, true);
    }
    let gaps: Vec<Duration> = plan
        .iter()
        .map(|_| Duration::from_millis(rng.random_range(6_000..20_000)))
        .collect();
    let (in_rollout, mut rollout_rx) = tokio::sync::watch::channel(false);
    let events: Arc<Mutex<Vec<Event>>> = Arc::default();
    let t0 = SystemTime::now();
    let chaos = {
        let events = events.clone();
        tokio::spawn(async move {
            let cp = cluster().await;
            let _ = rollout_rx.wait_for(|r| *r).await;
            for (restart, gap) in plan.into_iter().zip(gaps) {
                tokio::time::sleep(gap).await;
                let event = if restart {
                    let _ = rollout_rx.wait_for(|r| *r).await;
                    let at = SystemTime::now();
                    match cp.restart_apiserver().await {
                        Ok(took) => Some(Event::ApiRestart { at, took }),
                        Err(e) => panic!("restarting the API server: {e}"),
                    }
                } else {
                    kill_one(&cp).await
                };
                if let Some(e) = event {
                    println!("[chaos] {}", e.describe(t0));
                    events.lock().unwrap().push(e);
                }
            }
        })
    };

    // Every case once, then again (in fresh namespaces) until the chaos plan is through: each
    // kill waits for its handover, so how long the plan takes depends on the machine.
    let mut outcomes = Vec::new();
    let mut round = 0;
    while round == 0 || !chaos.is_finished() {
        for case in &CASES {
            if round > 0 && chaos.is_finished() {
                break;
            }
            let ns = if round == 0 {
                case.ns.to_string()
            } else {
                format!("{}-{round}", case.ns)
            };
            let (phase, took, samples) = run_case(case, &ns, &in_rollout).await;
            println!(
                "[chaos] {ns} ended {phase} after {took:.1}s; {} client requests, 0 failed",
                samples.len()
            );
            outcomes.push((ns, phase, took, samples.len()));
        }
        round += 1;
        assert!(
            round <= 3,
            "the chaos plan did not finish within three rounds"
        );
    }
    chaos.await.expect("the chaos task");
    let events = events.lock().unwrap().clone();
    let kills: Vec<&Event> = events
        .iter()
        .filter(|e| matches!(e, Event::Kill { .. }))
        .collect();
    let restarts: Vec<Duration> = events
        .iter()
        .filter_map(|e| match e {
            Event::ApiRestart { took, .. } => Some(*took),
            _ => None,
        })
        .collect();
    let handovers: Vec<Duration> = kills
        .iter()
        .filter_map(|e| match e {
            Event::Kill { handover, .. } => *handover,
            _ => None,
        })
        .collect();
    let leaders = kills
        .iter()
        .filter(|e| matches!(e, Event::Kill { leader: true, .. }))
        .count();
    println!(
        "[chaos] seed {seed}: {} kills ({leaders} of the Lease holder), {} API server restarts ({restarts:?}); \
         handover after a kill: worst {:.1}s, median {:.1}s; outcomes {:?}; {:.0}s in all",
        kills.len(),
        restarts.len(),
        handovers.iter().max().unwrap_or(&Duration::ZERO).as_secs_f64(),
        {
            let mut h = handovers.clone();
            h.sort();
            h.get(h.len() / 2).copied().unwrap_or_default().as_secs_f64()
        },
        outcomes,
        t.elapsed().as_secs_f64()
    );
    assert_eq!(kills.len(), KILLS, "every kill carried out: {events:?}");
    assert_eq!(restarts.len(), API_RESTARTS);
    assert_eq!(
        handovers.len(),
        KILLS,
        "the Lease renewed after every kill: {events:?}"
    );
}
