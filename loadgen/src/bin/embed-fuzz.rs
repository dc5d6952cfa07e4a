//! `embed-fuzz`: sends a bounded stream of generated requests (valid, malformed, hostile; see
//! `embed_loadgen::fuzz`) to a running embedding server over raw TCP, and checks that it answers
//! every one with 2xx/4xx/429/503/504, never 500 or a dropped well-formed request, stays alive, and
//! keeps its memory bounded. Prints progress, then one JSON line; exits 1 on any violation.
//!
//!   embed-fuzz --addr 127.0.0.1:18080 --cases 1000000 --pid $(pidof candle-embedder)

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use embed_loadgen::fuzz::case;
use embed_loadgen::fuzz_client::{acceptable, health, send, Outcome};
use embed_loadgen::parse_duration;

#[derive(Debug, Parser)]
#[command(name = "embed-fuzz", version)]
struct Args {
    /// host:port of the server.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: String,
    /// How many cases to send.
    #[arg(long, default_value_t = 1_000_000)]
    cases: u64,
    /// Seed of the case stream (case n of a seed is always the same request).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Connections sending at once.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Stop sending after this long even if not all cases went out (the run is bounded).
    #[arg(long, default_value = "20m", value_parser = parse_duration)]
    max_time: Duration,
    /// How long one answer may take.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    timeout: Duration,
    /// The server's pid: its RSS is read before, during and after (Linux /proc).
    #[arg(long)]
    pid: Option<u32>,
}

#[derive(Default)]
struct Tally {
    by_status: BTreeMap<String, u64>,
    by_kind: BTreeMap<&'static str, BTreeMap<String, u64>>,
    violations: u64,
    examples: Vec<String>,
    stale_reconnects: u64,
}

fn rss_kib(pid: Option<u32>) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid?)).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = health(&args.addr).await {
        eprintln!(
            "embed-fuzz: {} does not answer GET /health/live with 200: {e}",
            args.addr
        );
        return ExitCode::from(2);
    }
    let rss_before = rss_kib(args.pid);
    let next = Arc::new(AtomicU64::new(0));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let peak_rss = Arc::new(AtomicU64::new(rss_before.unwrap_or(0)));
    let start = Instant::now();
    let deadline = start + args.max_time;

    let mut tasks = Vec::new();
    for _ in 0..args.connections.max(1) {
        let (next, tally, addr) = (Arc::clone(&next), Arc::clone(&tally), args.addr.clone());
        let (cases, seed, timeout) = (args.cases, args.seed, args.timeout);
        tasks.push(tokio::spawn(async move {
            let mut conn = None;
            let mut buf = Vec::with_capacity(1 << 16);
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= cases || Instant::now() >= deadline {
                    break;
                }
                let c = case(seed, n);
                let (outcome, stale) =
                    match tokio::time::timeout(timeout, send(&addr, &mut conn, &c, &mut buf)).await
                    {
                        Ok(r) => r,
                        Err(_) => {
                            conn = None;
                            (Outcome::Timeout, false)
                        }
                    };
                let label = match &outcome {
                    Outcome::Status(s) => s.to_string(),
                    Outcome::Closed => "closed".into(),
                    Outcome::Timeout => "timeout".into(),
                    Outcome::Io(_) => "io-error".into(),
                };
                let ok = acceptable(&c, &outcome);
                let mut t = tally.lock().unwrap_or_else(|e| e.into_inner());
                *t.by_status.entry(label.clone()).or_default() += 1;
                *t.by_kind
                    .entry(c.kind)
                    .or_default()
                    .entry(label)
                    .or_default() += 1;
                t.stale_reconnects += u64::from(stale);
                if !ok {
                    t.violations += 1;
                    if t.examples.len() < 10 {
                        t.examples
                            .push(format!("case {n} ({}): {outcome:?}", c.kind));
                    }
                }
            }
        }));
    }

    // Progress and RSS every 10 s while the tasks run.
    let progress = {
        let (next, peak_rss, pid, cases) = (
            Arc::clone(&next),
            Arc::clone(&peak_rss),
            args.pid,
            args.cases,
        );
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                let sent = next.load(Ordering::Relaxed).min(cases);
                let rss = rss_kib(pid);
                if let Some(r) = rss {
                    peak_rss.fetch_max(r, Ordering::Relaxed);
                }
                eprintln!(
                    "embed-fuzz: {sent} cases in {:.0} s, RSS {} KiB",
                    start.elapsed().as_secs_f64(),
                    rss.map_or("?".into(), |r| r.to_string())
                );
            }
        })
    };
    for t in tasks {
        let _ = t.await;
    }
    progress.abort();
    let elapsed = start.elapsed().as_secs_f64();
    let health_after = health(&args.addr).await;
    let alive = health_after.is_ok();
    if let Err(e) = &health_after {
        eprintln!("embed-fuzz: GET /health/live after the run: {e}");
    }
    let rss_after = rss_kib(args.pid);
    if let Some(r) = rss_after {
        peak_rss.fetch_max(r, Ordering::Relaxed);
    }
    let t = tally.lock().unwrap_or_else(|e| e.into_inner());
    let sent: u64 = t.by_status.values().sum();
    let report = serde_json::json!({
        "cases": sent,
        "seconds": elapsed,
        "cases_per_s": sent as f64 / elapsed,
        "by_status": t.by_status,
        "by_kind": t.by_kind,
        "violations": t.violations,
        "examples": t.examples,
        "stale_reconnects": t.stale_reconnects,
        "alive_after": alive,
        "rss_before_kib": rss_before,
        "rss_peak_kib": args.pid.map(|_| peak_rss.load(Ordering::Relaxed)),
        "rss_after_kib": rss_after,
    });
    eprintln!(
        "embed-fuzz: {sent} cases in {elapsed:.0} s ({:.0}/s): {:?}; violations {}; alive after: {alive}",
        sent as f64 / elapsed,
        t.by_status,
        t.violations
    );
    println!("{report}");
    if t.violations > 0 || !alive || sent < args.cases {
        if sent < args.cases {
            eprintln!(
                "embed-fuzz: only {sent} of {} cases within --max-time",
                args.cases
            );
        }
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}
