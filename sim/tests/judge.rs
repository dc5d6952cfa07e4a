//! The judge on whole simulated rollouts of the demo example: a healthy candidate is promoted, a
//! +40 ms or 2 %-error candidate is rolled back. Small counts so `make test` stays quick; the
//! rates over thousands of rollouts are `make simulate` (docs/analysis.md).

use embedding_rollout_operator::crd::EmbeddingRollout;
use rollout_sim::experiment::{run_many, Config, Judge, SCENARIOS};
use rollout_sim::run::Clock;
use rollout_sim::traffic::BENCH_100;

fn demo() -> Config {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/demo-rollout.yaml");
    let r: EmbeddingRollout =
        serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    Config {
        example: "demo-rollout".into(),
        spec: r.spec,
        rate: 100.0,
        model: BENCH_100,
        clock: Clock {
            scrape: 5.0,
            max_time: 3600.0,
        },
    }
}

#[test]
fn healthy_candidates_are_promoted_and_gross_regressions_rolled_back() {
    let cfg = demo();
    let healthy = run_many(&cfg, &SCENARIOS[0], Judge::Core, 40, 1, 2);
    assert_eq!(healthy.promoted, 40, "{healthy:?}");
    // Each step waited for evidence, not for its duration alone, and then moved on.
    assert!(
        healthy.step_waits.iter().all(|w| w.is_some()),
        "{healthy:?}"
    );
    for sc in [&SCENARIOS[3], &SCENARIOS[6]] {
        let r = run_many(&cfg, sc, Judge::Core, 20, 1, 2);
        assert_eq!(r.rolled_back, 20, "{}: {r:?}", sc.name);
        // At 25 % of 100 req/s the evidence for either is there within a minute or two.
        let (median, _) = r.rollback_after.unwrap();
        assert!(median < 120.0, "{}: {r:?}", sc.name);
    }
}

#[test]
fn the_same_seed_gives_the_same_rollouts() {
    let cfg = demo();
    let a = run_many(&cfg, &SCENARIOS[4], Judge::Core, 10, 7, 2);
    let b = run_many(&cfg, &SCENARIOS[4], Judge::Core, 10, 7, 1);
    assert_eq!(format!("{a:?}"), format!("{b:?}"));
}
