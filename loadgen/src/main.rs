//! `embed-loadgen`: drives an embedding server and prints rate, latency quantiles and errors.

use std::process::ExitCode;
use std::time::Duration;

use clap::{ArgGroup, Parser};
use embed_loadgen::api::sample_texts;
use embed_loadgen::{
    parse_duration, run_closed_loop, run_open_loop, wait_ready, Api, ClosedLoop, OpenLoopPlan,
    RequestTemplate, Target, DEFAULT_MODEL,
};

/// Load generator for the embedding API: open loop at a constant arrival rate (`--rate`), latency
/// measured from the scheduled time, or closed loop at a fixed concurrency (`--concurrency`).
/// Prints a report, then the same report as one JSON line (the last line) for scripts.
#[derive(Debug, Parser)]
#[command(name = "embed-loadgen", version)]
#[command(group(ArgGroup::new("mode").required(true).args(["rate", "concurrency"])))]
struct Args {
    /// Base URL of the server.
    #[arg(long, env = "LOADGEN_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Open loop: requests per second, on a fixed schedule.
    #[arg(long)]
    rate: Option<f64>,
    /// Closed loop: workers sending back to back.
    #[arg(long)]
    concurrency: Option<usize>,
    /// How long to send for (e.g. 30s, 2m).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    duration: Duration,
    /// Stop after this many requests even if the duration has not passed.
    #[arg(long)]
    requests: Option<u64>,
    /// Open loop: most requests in flight at once (k6's preAllocatedVUs).
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Texts per request (the seed's two k6 texts, then more sample sentences).
    #[arg(long, default_value_t = 2)]
    texts: usize,
    /// Model name sent with each request.
    #[arg(long, default_value = DEFAULT_MODEL)]
    model: String,
    /// Send no model name (the server's default model answers).
    #[arg(long, conflicts_with = "model")]
    no_model: bool,
    /// Speak the OpenAI dialect: POST /v1/embeddings with `input`.
    #[arg(long)]
    openai: bool,
    /// Per-request timeout; in the open loop it counts from the scheduled time.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
    /// Before the measured run, send back to back for this long and discard the results.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    warmup: Duration,
    /// First wait up to this long for GET /health/ready to answer 2xx.
    #[arg(long, value_parser = parse_duration)]
    wait_ready: Option<Duration>,
    /// Print only the JSON line.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.texts == 0 {
        eprintln!("embed-loadgen: --texts must be at least 1");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("embed-loadgen: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    runtime.block_on(run(args))
}

async fn run(args: Args) -> ExitCode {
    let api = if args.openai {
        Api::OpenAi
    } else {
        Api::Native
    };
    let model = (!args.no_model).then_some(args.model.as_str());
    let target = Target {
        base_url: args.url.clone(),
        template: RequestTemplate::new(api, &sample_texts(args.texts), model),
        timeout: args.timeout,
    };

    if let Some(within) = args.wait_ready {
        if !wait_ready(&args.url, "/health/ready", within).await {
            eprintln!(
                "embed-loadgen: {}/health/ready not ready within {within:?}",
                args.url
            );
            return ExitCode::from(2);
        }
    }

    if !args.warmup.is_zero() {
        let workers = args.concurrency.unwrap_or(args.connections.min(16));
        let warmup = ClosedLoop {
            concurrency: workers,
            duration: args.warmup,
            max_requests: None,
        };
        if let Err(e) = run_closed_loop(&target, &warmup).await {
            eprintln!("embed-loadgen: {e}");
            return ExitCode::from(2);
        }
    }

    let result = match (args.rate, args.concurrency) {
        (Some(rate), _) => match OpenLoopPlan::new(rate, args.duration, args.requests) {
            Ok(plan) => run_open_loop(&target, &plan, args.connections).await,
            Err(e) => Err(e.into()),
        },
        (None, Some(concurrency)) => {
            let spec = ClosedLoop {
                concurrency,
                duration: args.duration,
                max_requests: args.requests,
            };
            run_closed_loop(&target, &spec).await
        }
        (None, None) => unreachable!("clap requires --rate or --concurrency"),
    };
    let report = match result {
        Ok(report) => report,
        Err(e) => {
            eprintln!("embed-loadgen: {e}");
            return ExitCode::from(2);
        }
    };
    if !args.json {
        print!("{report}");
    }
    println!("{}", report.to_json_line());
    // A run in which nothing succeeded is a failed run for scripts, whatever the reason.
    if report.ok == 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
