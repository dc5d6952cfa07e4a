//! Baseline for the docs: the straightforward way to serve all-MiniLM-L6-v2 with candle, i.e.
//! candle-transformers' `BertModel` called once per request, back to back on one thread.
//! Every request is the seed's k6 payload (two short texts), tokenised, encoded, mean-pooled
//! with the attention mask and L2-normalised, exactly what an embedding endpoint has to do.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

/// The seed's k6 request body: `{"texts": [TEXTS[0], TEXTS[1]]}`.
const TEXTS: [&str; 2] = [
    "Machine learning and artificial intelligence",
    "Natural language processing with transformers",
];
const WARM_UP: Duration = Duration::from_secs(2);
/// Same limit as our embedder; tokenizer.json ships with 128 (and fixed padding to 128).
const MAX_TOKENS: usize = 256;
/// utime/stime in /proc are in USER_HZ, which Linux fixes at 100 for user space on every
/// mainstream architecture; this avoids a libc dependency just for sysconf(_SC_CLK_TCK).
const USER_HZ: f64 = 100.0;

struct Args {
    model_dir: PathBuf,
    seconds: f64,
}

fn parse_args() -> Result<Args> {
    // Default is resolved against the crate, not the cwd, so `cargo run --manifest-path` works
    // from anywhere.
    let mut model_dir =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/all-MiniLM-L6-v2");
    let mut seconds: f64 = 20.0;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--model-dir" => model_dir = it.next().context("--model-dir needs a value")?.into(),
            "--seconds" => {
                seconds = it
                    .next()
                    .context("--seconds needs a value")?
                    .parse()
                    .context("--seconds must be a number")?
            }
            "-h" | "--help" => {
                println!("usage: naive-bert [--model-dir DIR] [--seconds N]");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    if !seconds.is_finite() || seconds <= 0.0 {
        bail!("--seconds must be positive");
    }
    Ok(Args { model_dir, seconds })
}

struct Model {
    bert: BertModel,
    tokenizer: Tokenizer,
    device: Device,
}

impl Model {
    fn load(dir: &std::path::Path) -> Result<Self> {
        let device = Device::Cpu;
        let config: Config = serde_json::from_slice(
            &std::fs::read(dir.join("config.json"))
                .with_context(|| format!("reading {}/config.json", dir.display()))?,
        )
        .context("parsing config.json")?;
        // SAFETY: the weights file is not modified while mapped (read-only model directory).
        let vb = unsafe {
            VarBuilder::from_mmaped_safetensors(
                &[dir.join("model.safetensors")],
                DType::F32,
                &device,
            )?
        };
        let bert = BertModel::load(vb, &config).context("loading BertModel")?;

        let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(anyhow::Error::msg)
            .context("loading tokenizer.json")?;
        // Pad to the longest text of the request instead of the file's fixed 128, as any
        // sensible server would; otherwise the baseline would encode ~10x more tokens.
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            ..Default::default()
        }));
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: MAX_TOKENS,
                ..Default::default()
            }))
            .map_err(anyhow::Error::msg)?;
        Ok(Self {
            bert,
            tokenizer,
            device,
        })
    }

    /// One request: texts in, L2-normalised sentence embeddings out (copied to host memory, as
    /// a server would before serialising them).
    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(anyhow::Error::msg)?;
        let (n, len) = (encodings.len(), encodings[0].len());
        let mut ids = Vec::with_capacity(n * len);
        let mut types = Vec::with_capacity(n * len);
        let mut mask = Vec::with_capacity(n * len);
        for e in &encodings {
            ids.extend_from_slice(e.get_ids());
            types.extend_from_slice(e.get_type_ids());
            mask.extend_from_slice(e.get_attention_mask());
        }
        let ids = Tensor::from_vec(ids, (n, len), &self.device)?;
        let types = Tensor::from_vec(types, (n, len), &self.device)?;
        let mask = Tensor::from_vec(mask, (n, len), &self.device)?;

        let hidden = self.bert.forward(&ids, &types, Some(&mask))?; // (n, len, 384)

        // Mean pooling over real tokens only (sentence-transformers' pooling for this model).
        let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?; // (n, len, 1)
        let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
        let pooled = summed.broadcast_div(&mask.sum(1)?)?;
        let norm = pooled.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
        Ok(pooled.broadcast_div(&norm)?.to_vec2::<f32>()?)
    }
}

/// Process CPU time (all threads, user + system) in seconds, from /proc/self/stat.
fn cpu_seconds() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // The command name (field 2) may contain spaces, so count fields after its closing ')':
    // there field 3 (state) is index 0, hence utime (14) is 11 and stime (15) is 12.
    let rest = &stat[stat.rfind(')').context("malformed /proc/self/stat")? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    Ok(ticks as f64 / USER_HZ)
}

fn load_average() -> Result<[f64; 3]> {
    let s = std::fs::read_to_string("/proc/loadavg")?;
    let mut it = s.split_whitespace().map(str::parse::<f64>);
    let mut next = || -> Result<f64> { Ok(it.next().context("malformed /proc/loadavg")??) };
    Ok([next()?, next()?, next()?])
}

/// Nearest-rank percentile of an ascending slice.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn main() -> Result<()> {
    let args = parse_args()?;
    // Read before loading and warming up, so it reflects the machine, not this process.
    let loadavg = load_average()?;

    let model = Model::load(&args.model_dir)?;
    let first = model.embed(&TEXTS)?;
    let seq_len = model
        .tokenizer
        .encode_batch(TEXTS.to_vec(), true)
        .map_err(anyhow::Error::msg)?[0]
        .len();
    println!(
        "model: {}  texts/request: {}  padded tokens/text: {}  candle threads: {}",
        args.model_dir.display(),
        TEXTS.len(),
        seq_len,
        candle_core::utils::get_num_threads()
    );
    println!("load average at start: {loadavg:?}");
    let first5 = first[0][..5].to_vec();
    println!("first embedding[..5] ({:?}): {first5:?}", TEXTS[0]);

    let warm_end = Instant::now() + WARM_UP;
    while Instant::now() < warm_end {
        model.embed(&TEXTS)?;
    }

    let budget = Duration::from_secs_f64(args.seconds);
    let mut latencies_ms = Vec::new();
    let cpu_start = cpu_seconds()?;
    let start = Instant::now();
    while start.elapsed() < budget {
        let t = Instant::now();
        std::hint::black_box(model.embed(&TEXTS)?);
        latencies_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let wall = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds()? - cpu_start;

    let requests = latencies_ms.len();
    let mean = latencies_ms.iter().sum::<f64>() / requests as f64;
    latencies_ms.sort_by(f64::total_cmp);
    let (p50, p95) = (
        percentile(&latencies_ms, 50.0),
        percentile(&latencies_ms, 95.0),
    );
    let rps = requests as f64 / wall;
    let cpu_ms = cpu * 1e3 / requests as f64;

    println!("requests: {requests} in {wall:.2} s");
    println!(
        "req/s: {rps:.2}  (texts/s: {:.2})",
        rps * TEXTS.len() as f64
    );
    println!("latency ms/request: mean {mean:.3}  p50 {p50:.3}  p95 {p95:.3}");
    println!("CPU ms/request: {cpu_ms:.3}  (process CPU {cpu:.2} s over {wall:.2} s wall)");
    println!(
        "{}",
        serde_json::json!({
            "bench": "naive-bert",
            "requests": requests,
            "seconds": wall,
            "req_per_s": rps,
            "texts_per_request": TEXTS.len(),
            "mean_ms": mean,
            "p50_ms": p50,
            "p95_ms": p95,
            "cpu_ms_per_req": cpu_ms,
            "loadavg_start": loadavg,
            "candle_threads": candle_core::utils::get_num_threads(),
            "padded_tokens": seq_len,
            "first_embedding_head": first5,
        })
    );
    Ok(())
}
