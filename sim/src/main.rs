//! `make simulate`: whole rollouts of the examples under healthy and regressed candidates, judged
//! by the operator's decision core and, for comparison, by the old point-estimate judge. Prints a
//! table, then one JSON line with `false_rollback_rate`, `missed_regression_rate` and `runs`.

use std::time::Instant;

use anyhow::{bail, Context};
use clap::Parser;
use embedding_rollout_operator::crd::{EmbeddingRollout, EmbeddingRolloutSpec};
use embedding_rollout_operator::duration::GoDuration;
use rollout_sim::experiment::{run_many, Config, Judge, Row, SCENARIOS};
use rollout_sim::run::Clock;
use rollout_sim::traffic::{BENCH_100, E2E_20};

#[derive(Parser, Debug)]
#[command(about = "Measure the rollout judge's error rates over seeded simulated rollouts")]
struct Args {
    /// Rollout manifests (an EmbeddingRollout each).
    #[arg(long, value_delimiter = ',', default_values_t = [
        "examples/demo-rollout.yaml".to_string(),
        "examples/production-rollout.yaml".to_string(),
    ])]
    examples: Vec<String>,
    /// Total client rates, req/s.
    #[arg(long, value_delimiter = ',', default_values_t = [20.0, 100.0])]
    rates: Vec<f64>,
    /// Healthy rollouts per configuration.
    #[arg(long, default_value_t = 1000)]
    runs: usize,
    /// Rollouts per configuration for each regression.
    #[arg(long, default_value_t = 200)]
    regression_runs: usize,
    /// Shorten steps longer than this (e.g. `2h`), so a 14-day plan simulates in seconds; the
    /// table says so. Unset: the plan as written.
    #[arg(long)]
    step_cap: Option<String>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Skip the old judge.
    #[arg(long)]
    no_baseline_judge: bool,
}

fn load(path: &str) -> anyhow::Result<EmbeddingRolloutSpec> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v = serde_yaml::Value::deserialize(doc)?;
        if v.get("kind").and_then(|k| k.as_str()) == Some("EmbeddingRollout") {
            let r: EmbeddingRollout = serde_yaml::from_value(v)?;
            return Ok(r.spec);
        }
    }
    bail!("{path}: no EmbeddingRollout in it")
}

use serde::Deserialize;

fn secs(g: &GoDuration) -> f64 {
    g.parse().map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

fn fmt_s(s: f64) -> String {
    if s >= 7200.0 {
        format!("{:.1}h", s / 3600.0)
    } else if s >= 120.0 {
        format!("{:.0}m", s / 60.0)
    } else {
        format!("{s:.0}s")
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let cap = args
        .step_cap
        .as_ref()
        .map(|c| GoDuration::from(c.as_str()).parse())
        .transpose()
        .map_err(|e| anyhow::anyhow!("--step-cap: {e}"))?;
    let mut configs = Vec::new();
    for path in &args.examples {
        let mut spec = load(path)?;
        // A step's approval is a person's go at a meeting, which the simulator does not model:
        // it approves at once (the gates still have to pass first).
        for s in &mut spec.steps {
            s.approval = false;
        }
        let mut capped = false;
        if let Some(cap) = cap {
            for s in &mut spec.steps {
                if s.duration.parse().is_ok_and(|d| d > cap) {
                    s.duration = GoDuration::from(
                        embedding_rollout_operator::duration::format(cap).as_str(),
                    );
                    capped = true;
                }
            }
        }
        let name = path
            .rsplit('/')
            .next()
            .unwrap_or(path)
            .trim_end_matches(".yaml");
        let name = if capped {
            format!(
                "{name} (steps capped at {})",
                args.step_cap.as_deref().unwrap_or("")
            )
        } else {
            name.to_string()
        };
        let interval = secs(&spec.analysis.interval);
        let total: f64 = spec.steps.iter().map(|s| secs(&s.duration)).sum::<f64>()
            + spec.steps.len() as f64 * secs(&spec.analysis.evidence_timeout)
            + 600.0;
        for &rate in &args.rates {
            configs.push(Config {
                example: name.clone(),
                spec: spec.clone(),
                rate,
                model: if rate <= 20.0 { E2E_20 } else { BENCH_100 },
                clock: Clock {
                    scrape: interval.min(15.0),
                    max_time: total,
                },
            });
        }
    }
    println!(
        "latency models: 20 req/s: {}; 100 req/s: {}",
        E2E_20.name, BENCH_100.name
    );
    println!(
        "{:<44} {:>5} {:<13} {:<22} {:>5} {:>8} {:>9} {:>6} {:>15} {:>8}  step waits past duration",
        "example",
        "req/s",
        "candidate",
        "judge",
        "runs",
        "promoted",
        "rolled b.",
        "held",
        "rollback after",
        "<=3 an."
    );
    let judges: &[Judge] = if args.no_baseline_judge {
        &[Judge::Core]
    } else {
        &[Judge::Core, Judge::PointEstimate]
    };
    let started = Instant::now();
    let mut rows: Vec<Row> = Vec::new();
    for cfg in &configs {
        for sc in &SCENARIOS {
            for &judge in judges {
                let runs = if sc.healthy() {
                    args.runs
                } else {
                    args.regression_runs
                };
                let r = run_many(cfg, sc, judge, runs, args.seed, args.threads);
                let waits: Vec<String> = r
                    .step_waits
                    .iter()
                    .map(|w| w.map_or("-".into(), fmt_s))
                    .collect();
                println!(
                    "{:<44} {:>5} {:<13} {:<22} {:>5} {:>7.1}% {:>8.1}% {:>5.1}% {:>15} {:>8}  {}",
                    r.example,
                    r.rate,
                    r.scenario.name,
                    r.judge.name(),
                    r.runs,
                    100.0 * r.promoted as f64 / r.runs as f64,
                    100.0 * r.rolled_back as f64 / r.runs as f64,
                    100.0 * r.held as f64 / r.runs as f64,
                    r.rollback_after.map_or("-".into(), |(m, p)| format!(
                        "{} / {}",
                        fmt_s(m),
                        fmt_s(p)
                    )),
                    r.within_3
                        .map_or("-".into(), |w| format!("{:.0}%", 100.0 * w)),
                    waits.join(" ")
                );
                rows.push(r);
            }
        }
    }
    let sum = |pick: fn(&Row) -> bool, field: fn(&Row) -> usize| -> usize {
        rows.iter()
            .filter(|r| r.judge == Judge::Core && pick(r))
            .map(field)
            .sum()
    };
    let healthy = |r: &Row| r.scenario.healthy();
    let gross = |r: &Row| r.scenario.shift_ms >= 40.0 || r.scenario.error_p >= 0.02;
    let healthy_runs = sum(healthy, |r| r.runs);
    let false_rb = sum(healthy, |r| r.rolled_back);
    let gross_runs = sum(gross, |r| r.runs);
    let missed = sum(gross, |r| r.promoted);
    let total_runs: usize = rows.iter().map(|r| r.runs).sum();
    println!(
        "rollout judge (tests on counts): {false_rb} false rollbacks in {healthy_runs} healthy rollouts, {missed} promotions in {gross_runs} rollouts with P95 +40 ms or 2 % errors; {total_runs} rollouts simulated in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    println!(
        "{}",
        serde_json::json!({
            "false_rollback_rate": false_rb as f64 / healthy_runs.max(1) as f64,
            "missed_regression_rate": missed as f64 / gross_runs.max(1) as f64,
            "runs": total_runs,
            "healthy_runs": healthy_runs,
            "gross_regression_runs": gross_runs,
            "seed": args.seed,
        })
    );
    Ok(())
}
