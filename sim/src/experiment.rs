//! Many seeded rollouts of one configuration, summarised.

use std::thread;

use embedding_rollout_operator::crd::EmbeddingRolloutSpec;
use rand::SeedableRng;

use crate::run::{self, Clock, End, Outcome};
use crate::traffic::{Behaviour, LatencyModel};
use crate::world::World;

/// What is wrong with the candidate (nothing, for the healthy case), from its first request.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scenario {
    pub name: &'static str,
    pub shift_ms: f64,
    pub error_p: f64,
}

impl Scenario {
    pub fn healthy(&self) -> bool {
        self.shift_ms == 0.0 && self.error_p == 0.0
    }
}

pub const SCENARIOS: [Scenario; 7] = [
    Scenario {
        name: "healthy",
        shift_ms: 0.0,
        error_p: 0.0,
    },
    Scenario {
        name: "P95 +5 ms",
        shift_ms: 5.0,
        error_p: 0.0,
    },
    Scenario {
        name: "P95 +10 ms",
        shift_ms: 10.0,
        error_p: 0.0,
    },
    Scenario {
        name: "P95 +40 ms",
        shift_ms: 40.0,
        error_p: 0.0,
    },
    Scenario {
        name: "errors 0.6 %",
        shift_ms: 0.0,
        error_p: 0.006,
    },
    Scenario {
        name: "errors 1 %",
        shift_ms: 0.0,
        error_p: 0.01,
    },
    Scenario {
        name: "errors 2 %",
        shift_ms: 0.0,
        error_p: 0.02,
    },
];

/// Which judge drives the rollout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Judge {
    /// The operator's decision core (`decision::reconcile`).
    Core,
    /// The point-estimate judge it replaced, kept only here.
    PointEstimate,
}

impl Judge {
    pub fn name(self) -> &'static str {
        match self {
            Judge::Core => "tests on counts",
            Judge::PointEstimate => "point estimates (old)",
        }
    }
}

/// One configuration: a rollout spec at a client rate.
#[derive(Clone, Debug)]
pub struct Config {
    pub example: String,
    pub spec: EmbeddingRolloutSpec,
    pub rate: f64,
    pub model: LatencyModel,
    pub clock: Clock,
}

/// The summary of `runs` rollouts of one configuration and scenario.
#[derive(Clone, Debug)]
pub struct Row {
    pub example: String,
    pub rate: f64,
    pub scenario: Scenario,
    pub judge: Judge,
    pub runs: usize,
    pub promoted: usize,
    pub rolled_back: usize,
    pub held: usize,
    /// Seconds from first candidate traffic to the rollback decision: median, 90th percentile.
    pub rollback_after: Option<(f64, f64)>,
    /// Analyses from the first conclusive one to the rollback: worst case.
    pub analyses_to_rollback_max: Option<u32>,
    /// Share of rollbacks decided within 3 analyses of the first conclusive one.
    pub within_3: Option<f64>,
    /// Per step: mean seconds past the step's duration spent waiting for evidence.
    pub step_waits: Vec<Option<f64>>,
}

fn seed(base: u64, parts: &[u64]) -> u64 {
    // SplitMix64 over the parts: independent, reproducible streams per run.
    let mut x = base;
    for p in parts {
        x ^= p
            .wrapping_add(0x9e37_79b9_7f4a_7c15)
            .wrapping_add(x << 6)
            .wrapping_add(x >> 2);
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x = z ^ (z >> 31);
    }
    x
}

/// Runs `runs` seeded rollouts on `threads` threads. The result depends only on the seed.
pub fn run_many(
    cfg: &Config,
    scenario: &Scenario,
    judge: Judge,
    runs: usize,
    base_seed: u64,
    threads: usize,
) -> Row {
    let baseline = Behaviour {
        buckets: cfg.model.bucket_probabilities(0.0),
        error_p: 0.0,
    };
    let candidate = Behaviour {
        buckets: cfg.model.bucket_probabilities(scenario.shift_ms),
        error_p: scenario.error_p,
    };
    let scenario_id = SCENARIOS.iter().position(|s| s == scenario).unwrap_or(99) as u64;
    let example_id = cfg
        .example
        .bytes()
        .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
    let one = |i: usize| -> Outcome {
        let rng = rand::rngs::StdRng::seed_from_u64(seed(
            base_seed,
            &[example_id, cfg.rate as u64, scenario_id, i as u64],
        ));
        let mut world = World::new(rng, cfg.rate, baseline.clone(), candidate.clone());
        match judge {
            Judge::Core => run::with_core(&cfg.spec, &mut world, cfg.clock),
            Judge::PointEstimate => run::with_point_estimates(&cfg.spec, &mut world, cfg.clock),
        }
    };
    let threads = threads.max(1);
    let mut outcomes: Vec<(usize, Outcome)> = thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let one = &one;
                s.spawn(move || {
                    (t..runs)
                        .step_by(threads)
                        .map(|i| (i, one(i)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    // In run order, so the summary does not depend on the thread count.
    outcomes.sort_by_key(|(i, _)| *i);
    let outcomes: Vec<Outcome> = outcomes.into_iter().map(|(_, o)| o).collect();
    summarise(cfg, scenario, judge, &outcomes)
}

fn summarise(cfg: &Config, scenario: &Scenario, judge: Judge, o: &[Outcome]) -> Row {
    let count = |e: End| o.iter().filter(|x| x.end == e).count();
    let mut after: Vec<f64> = o.iter().filter_map(|x| x.rollback_after).collect();
    after.sort_by(f64::total_cmp);
    let pick = |v: &[f64], q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    let to_rb: Vec<u32> = o.iter().filter_map(|x| x.analyses_to_rollback).collect();
    let steps = cfg.spec.steps.len();
    let step_waits = (0..steps)
        .map(|i| {
            let w: Vec<f64> = o
                .iter()
                .filter_map(|x| x.step_waits.get(i).copied().flatten())
                .collect();
            (!w.is_empty()).then(|| w.iter().sum::<f64>() / w.len() as f64)
        })
        .collect();
    Row {
        example: cfg.example.clone(),
        rate: cfg.rate,
        scenario: *scenario,
        judge,
        runs: o.len(),
        promoted: count(End::Promoted),
        rolled_back: count(End::RolledBack),
        held: count(End::Held),
        rollback_after: (!after.is_empty()).then(|| (pick(&after, 0.5), pick(&after, 0.9))),
        analyses_to_rollback_max: to_rb.iter().max().copied(),
        within_3: (!to_rb.is_empty())
            .then(|| to_rb.iter().filter(|n| **n <= 3).count() as f64 / to_rb.len() as f64),
        step_waits,
    }
}
