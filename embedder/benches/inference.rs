//! Inference throughput of all-MiniLM-L6-v2, f32 and INT8 (our `int8` kernel and candle's
//! `q8_0`): texts/s per batch size, and how close INT8 stays to f32. Needs `make model`.
//!
//! cargo bench -p candle-embedder --bench inference            (release profile)
//! cargo bench -p candle-embedder --profile dev --bench inference   (reuses the dev build)
//! BENCH_SECONDS=5 sets the time per case (default 3); BENCH_MODELS=f32,int8 (or q8_0) picks models;
//! RAYON_NUM_THREADS caps the threads one batch is split across; BENCH_SEED=1 runs only the
//! seed-request loop (compare bench/naive-bert); BENCH_GEMM=1 only the GEMM rates;
//! BENCH_PROFILE=1 where one thread's time goes per request (JSON, tokenizer, each encoder
//! stage, pooling) for the seed request, 32 short texts and 256-token texts.
use std::path::Path;
use std::time::{Duration, Instant};

use candle_embedder::model::pooling::cosine;
use candle_embedder::model::{Encoded, Model, ModelOptions, Quantization};

const SHORT: [&str; 8] = [
    "How do I reset my password?",
    "Best hiking trails near the lake",
    "The embedding server answers in a few milliseconds.",
    "Rust makes systems programming safer",
    "What is the capital of France?",
    "A man is eating food.",
    "canary rollout with automatic rollback",
    "Quarterly revenue grew by twelve percent",
];

fn texts(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("{} #{i}", SHORT[i % SHORT.len()]))
        .collect()
}

/// CPU time (user + system) this process has used, from /proc (Linux; 0 elsewhere). On a shared
/// machine wall-clock rates depend on the neighbours; CPU time per text does much less.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

struct Rate {
    texts_per_s: f64,
    ms_per_batch: f64,
    cpu_ms_per_text: f64,
}

fn bench(model: &Model, enc: &[Encoded], batch: usize, budget: Duration) -> Rate {
    let refs: Vec<&Encoded> = enc.iter().take(batch).collect();
    model.embed(&refs).unwrap();
    let start = Instant::now();
    let cpu0 = cpu_seconds();
    let mut runs = 0u32;
    while start.elapsed() < budget || runs < 3 {
        model.embed(&refs).unwrap();
        runs += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    let texts = batch as f64 * runs as f64;
    Rate {
        texts_per_s: texts / secs,
        ms_per_batch: secs * 1e3 / runs as f64,
        cpu_ms_per_text: (cpu_seconds() - cpu0) * 1e3 / texts,
    }
}

/// Runs `body` (which does `iters` rounds of `macs_per_iter` multiply-adds) and returns GMAC/s.
fn rate(iters: u64, macs_per_iter: f64, body: impl FnOnce(u64) -> f32) -> f64 {
    let start = Instant::now();
    std::hint::black_box(body(iters));
    iters as f64 * macs_per_iter / start.elapsed().as_secs_f64() / 1e9
}

/// The machine's peaks on one thread, in GMAC/s: 12 independent chains (enough to cover the
/// latency) of each instruction. f32: `vfmadd` on ymm and zmm; int8: the AVX2 chain
/// `vpmaddubsw` + `vpmaddwd` + `vpaddd` (32 MACs per ymm step) and `vpdpbusd` on ymm (AVX-VNNI)
/// and zmm (AVX512-VNNI). Every GEMM rate below is a fraction of the best of its kind.
#[derive(Debug, Default)]
struct Peaks {
    fma256: f64,
    fma512: f64,
    int8_avx2: f64,
    int8_vnni256: f64,
    int8_vnni512: f64,
}

impl Peaks {
    fn f32(&self) -> f64 {
        self.fma256.max(self.fma512)
    }
    fn int8(&self) -> f64 {
        self.int8_avx2.max(self.int8_vnni256).max(self.int8_vnni512)
    }
}

#[cfg(target_arch = "x86_64")]
mod peaks {
    use std::arch::x86_64::*;

    macro_rules! chains {
        ($name:ident, $feat:literal, $ty:ty, $init:expr, $step:expr, $fold:expr) => {
            /// # Safety
            /// The CPU supports the enabled features.
            #[target_feature(enable = $feat)]
            pub unsafe fn $name(iters: u64) -> f32 {
                // Distinct, opaque start values: the compiler must not merge the chains.
                let mut acc: [$ty; 12] = std::array::from_fn(|i| $init(std::hint::black_box(i)));
                for _ in 0..iters {
                    for a in acc.iter_mut() {
                        *a = $step(*a);
                    }
                }
                acc.iter().map(|a| $fold(*a)).sum()
            }
        };
    }

    chains!(
        fma256,
        "avx2,fma",
        __m256,
        |i| _mm256_set1_ps(1.0 + i as f32),
        |a| _mm256_fmadd_ps(a, _mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7)),
        |a| _mm_cvtss_f32(_mm256_castps256_ps128(a))
    );
    chains!(
        fma512,
        "avx512f",
        __m512,
        |i| _mm512_set1_ps(1.0 + i as f32),
        |a| _mm512_fmadd_ps(a, _mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7)),
        |a| _mm512_reduce_add_ps(a)
    );
    chains!(
        int8_avx2,
        "avx2",
        __m256i,
        |i| _mm256_set1_epi32(i as i32),
        |a| _mm256_add_epi32(
            a,
            _mm256_madd_epi16(
                _mm256_maddubs_epi16(_mm256_set1_epi8(3), a),
                _mm256_set1_epi16(1)
            )
        ),
        |a| _mm256_cvtsi256_si32(a) as f32
    );
    chains!(
        int8_vnni256,
        "avx2,avxvnni",
        __m256i,
        |i| _mm256_set1_epi32(i as i32),
        |a| _mm256_dpbusd_avx_epi32(a, _mm256_set1_epi8(3), _mm256_set1_epi8(-2)),
        |a| _mm256_cvtsi256_si32(a) as f32
    );
    chains!(
        int8_vnni512,
        "avx512f,avx512vnni",
        __m512i,
        |i| _mm512_set1_epi32(i as i32),
        |a| _mm512_dpbusd_epi32(a, _mm512_set1_epi8(3), _mm512_set1_epi8(-2)),
        |a| _mm512_reduce_add_epi32(a) as f32
    );
}

fn measure_peaks() -> Peaks {
    #[allow(unused_mut)]
    let mut p = Peaks::default();
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        let n = 20_000_000;
        if has!("avx2") && has!("fma") {
            // SAFETY: the features were just detected.
            p.fma256 = rate(n, 12.0 * 8.0, |i| unsafe { peaks::fma256(i) });
            // SAFETY: as above.
            p.int8_avx2 = rate(n, 12.0 * 32.0, |i| unsafe { peaks::int8_avx2(i) });
        }
        if has!("avx512f") {
            // SAFETY: the feature was just detected.
            p.fma512 = rate(n, 12.0 * 16.0, |i| unsafe { peaks::fma512(i) });
        }
        if has!("avx2") && has!("avxvnni") {
            // SAFETY: the features were just detected.
            p.int8_vnni256 = rate(n, 12.0 * 32.0, |i| unsafe { peaks::int8_vnni256(i) });
        }
        if has!("avx512f") && has!("avx512vnni") {
            // SAFETY: the features were just detected.
            p.int8_vnni512 = rate(n, 12.0 * 64.0, |i| unsafe { peaks::int8_vnni512(i) });
        }
    }
    p
}

/// Multiply-adds per CPU-second of every f32 and INT8 kernel this CPU runs, for the layer
/// shapes of MiniLM at `m` rows (BENCH_GEMM=1), as fractions of the peaks.
fn gemm_roofline(m: usize, budget: Duration, peaks: &Peaks) {
    use candle_embedder::model::gemm::{gemm_with, F32Kernel, PackedB};
    use candle_embedder::model::qgemm::{qgemm_with, I8Kernel, PackedI8};
    for (k, n) in [(384, 1152), (384, 384), (384, 1536), (1536, 384)] {
        let a: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 104729) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        let bias = vec![0f32; n];
        let packed = PackedB::from_out_in(&w, n, k);
        let packed8 = PackedI8::quantize_out_in(&w, n, k);
        let mut c = vec![0f32; m * n];
        let time = |f: &mut dyn FnMut()| {
            f();
            let start = Instant::now();
            let cpu0 = cpu_seconds();
            let mut runs = 0u32;
            while start.elapsed() < budget / 8 {
                f();
                runs += 1;
            }
            let macs = (m * k * n) as f64 * runs as f64;
            (
                macs / start.elapsed().as_secs_f64() / 1e9,
                macs / (cpu_seconds() - cpu0).max(1e-9) / 1e9,
            )
        };
        let mut line = format!("gemm {m}x{k}x{n} GMAC/s wall (per cpu-s, % of peak):");
        for kernel in F32Kernel::available() {
            if kernel == F32Kernel::Portable {
                continue;
            }
            let r =
                time(&mut || gemm_with(kernel, &a, k, m, &packed, Some(&bias), &mut c, n, true));
            line += &format!(
                " f32/{} {:.1} ({:.1}, {:.0} %)",
                kernel.name(),
                r.0,
                r.1,
                100.0 * r.1 / peaks.f32()
            );
        }
        for kernel in I8Kernel::available() {
            if kernel == I8Kernel::Portable {
                continue;
            }
            let r = time(&mut || qgemm_with(kernel, &a, m, &packed8, &bias, &mut c, n));
            line += &format!(
                " int8/{} {:.1} ({:.1}, {:.0} %)",
                kernel.name(),
                r.0,
                r.1,
                100.0 * r.1 / peaks.int8()
            );
        }
        println!("{line}");
    }
}

/// The seed's k6 request (two texts) embedded back to back on one thread, like
/// bench/naive-bert's loop over candle-transformers' BertModel (BENCH_SEED=1): the in-process
/// cost per request, without HTTP or batching across requests.
fn seed_loop(model: &Model, budget: Duration) {
    let texts = vec![
        "Machine learning and artificial intelligence".to_string(),
        "Natural language processing with transformers".to_string(),
    ];
    let warm = Instant::now();
    while warm.elapsed() < Duration::from_secs(2) {
        let enc = model.encode(&texts, true).unwrap();
        model.embed(&enc.iter().collect::<Vec<_>>()).unwrap();
    }
    let mut lat = Vec::new();
    let start = Instant::now();
    let cpu0 = cpu_seconds();
    while start.elapsed() < budget {
        let t = Instant::now();
        let enc = model.encode(&texts, true).unwrap();
        let v = model.embed(&enc.iter().collect::<Vec<_>>()).unwrap();
        assert_eq!(v.len(), 2);
        lat.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu_ms = (cpu_seconds() - cpu0) * 1e3 / lat.len() as f64;
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| lat[((lat.len() - 1) as f64 * p) as usize];
    println!(
        "seed request loop (2 texts, one thread): {} requests, {:.1} req/s, p50 {:.2} ms, p95 {:.2} ms, {cpu_ms:.2} cpu ms/request",
        lat.len(),
        lat.len() as f64 / secs,
        pct(0.5),
        pct(0.95)
    );
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average at start of the loop run: {}", load.trim());
}

/// BENCH_PROFILE=1: the share of one thread's time per stage of a request, for three shapes of
/// work. One rayon thread, so wall time is the CPU time the stage costs.
fn profile(model: &Model, label: &str, budget: Duration) {
    use candle_embedder::model::bert::{Profile, Stage};
    let long = (0..60)
        .map(|i| format!("Sentence {i} talks about rolling embeddings out safely."))
        .collect::<Vec<_>>()
        .join(" ");
    let cases: [(&str, Vec<String>); 3] = [
        (
            "seed request (2 texts)",
            vec![
                "Machine learning and artificial intelligence".to_string(),
                "Natural language processing with transformers".to_string(),
            ],
        ),
        ("32 short texts", texts(32)),
        ("4 texts of 256 tokens", vec![long; 4]),
    ];
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("one-thread pool");
    for (case, texts) in cases {
        let body = serde_json::json!({ "texts": texts }).to_string();
        let mut prof = Profile::default();
        let (mut json_in, mut tokenize, mut pooling, mut json_out) = (0.0, 0.0, 0.0, 0.0);
        let (mut runs, mut tokens) = (0u32, 0usize);
        let start = Instant::now();
        pool.install(|| {
            while start.elapsed() < budget || runs < 3 {
                let t = Instant::now();
                let req: serde_json::Value = serde_json::from_str(&body).unwrap();
                let texts: Vec<String> = req["texts"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap().to_string())
                    .collect();
                json_in += t.elapsed().as_secs_f64();
                let t = Instant::now();
                let enc = model.encode(&texts, true).unwrap();
                tokenize += t.elapsed().as_secs_f64();
                let refs: Vec<&Encoded> = enc.iter().collect();
                tokens += enc.iter().map(Encoded::len).sum::<usize>();
                let hidden = model.profile_forward(&refs, &mut prof).unwrap();
                let t = Instant::now();
                let vectors = model.pool(&hidden, &refs);
                pooling += t.elapsed().as_secs_f64();
                let t = Instant::now();
                let out = serde_json::json!({ "embeddings": vectors }).to_string();
                json_out += t.elapsed().as_secs_f64();
                assert!(out.len() > 100);
                runs += 1;
            }
        });
        let n = f64::from(runs);
        let encoder = prof.total() / n;
        let total = encoder + (json_in + tokenize + pooling + json_out) / n;
        let share = |s: f64| s / total * 100.0;
        println!(
            "{label} {case}: {:.2} ms per request on one thread, {:.0} tokens/s",
            total * 1e3,
            tokens as f64 / n / total
        );
        let mut parts = vec![("json parse", json_in / n), ("tokenizer", tokenize / n)];
        parts.extend(
            Stage::ALL
                .iter()
                .map(|&st| (st.name(), prof.seconds(st) / n)),
        );
        parts.push(("pooling", pooling / n));
        parts.push(("json out", json_out / n));
        for (name, secs) in parts {
            println!(
                "    {name:<17} {:>8.3} ms {:>5.1} %",
                secs * 1e3,
                share(secs)
            );
        }
    }
}

fn main() {
    if std::env::var("BENCH_PEAKS").is_ok() {
        // One JSON line for scripts/bench.sh: per-core peaks (GMAC/s) and the kernels in use.
        let p = measure_peaks();
        println!(
            "{{\"fma256_gmacs\": {:.1}, \"fma512_gmacs\": {:.1}, \"int8_avx2_gmacs\": {:.1}, \
             \"int8_vnni256_gmacs\": {:.1}, \"int8_vnni512_gmacs\": {:.1}, \"f32_peak_gmacs\": {:.1}, \
             \"int8_peak_gmacs\": {:.1}, \"f32_kernel\": \"{}\", \"int8_kernel\": \"{}\"}}",
            p.fma256,
            p.fma512,
            p.int8_avx2,
            p.int8_vnni256,
            p.int8_vnni512,
            p.f32(),
            p.int8(),
            candle_embedder::model::gemm::F32Kernel::best().name(),
            candle_embedder::model::qgemm::I8Kernel::best().name(),
        );
        return;
    }
    if std::env::var("BENCH_GEMM").is_ok() {
        let p = measure_peaks();
        println!(
            "peaks, one thread, GMAC/s: f32 FMA ymm {:.1}, zmm {:.1}; int8 AVX2 maddubs {:.1}, \
             AVX-VNNI {:.1}, AVX512-VNNI {:.1}",
            p.fma256, p.fma512, p.int8_avx2, p.int8_vnni256, p.int8_vnni512
        );
        for m in [11, 88, 352] {
            gemm_roofline(m, Duration::from_secs(2), &p);
        }
        return;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/all-MiniLM-L6-v2");
    assert!(
        dir.join("model.safetensors").is_file(),
        "{} missing: run `make model`",
        dir.display()
    );
    let budget = Duration::from_secs_f64(
        std::env::var("BENCH_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(3.0),
    );
    let load = |q| {
        let opts = ModelOptions {
            quantization: q,
            ..ModelOptions::default()
        };
        let t = Instant::now();
        let m = Model::load("all-MiniLM-L6-v2", &dir, &opts).unwrap();
        m.warmup().unwrap();
        println!("loaded {q} in {:.2}s", t.elapsed().as_secs_f64());
        m
    };
    let f32_model = load(Quantization::None);
    if std::env::var("BENCH_PROFILE").is_ok() {
        profile(&f32_model, "f32", budget);
        profile(&load(Quantization::Int8), "int8", budget);
        return;
    }
    if std::env::var("BENCH_SEED").is_ok() {
        seed_loop(&f32_model, budget);
        return;
    }
    let int8_model = load(Quantization::Int8);
    let q8_model = load(Quantization::Q8_0);

    let texts = texts(64);
    let enc = f32_model.encode(&texts, true).unwrap();
    let mean_tokens = enc.iter().map(Encoded::len).sum::<usize>() as f64 / enc.len() as f64;
    println!(
        "threads: {} (RAYON_NUM_THREADS={}), short texts of {mean_tokens:.1} tokens on average",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "unset".into())
    );
    // Other processes compete for the same cores; say how busy the machine was.
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "load average at start: {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "{:<6} {:>6} {:>10} {:>10}",
        "model", "batch", "texts/s", "ms/batch"
    );
    let only = std::env::var("BENCH_MODELS").unwrap_or_else(|_| "f32,int8,q8_0".into());
    let models: Vec<(&str, &Model)> = [
        ("f32", &f32_model),
        ("int8", &int8_model),
        ("q8_0", &q8_model),
    ]
    .into_iter()
    .filter(|(label, _)| only.split(',').any(|m| m.trim() == *label))
    .collect();
    for &(label, model) in &models {
        for batch in [1, 2, 8, 32] {
            let r = bench(model, &enc, batch, budget);
            println!(
                "{label:<6} {batch:>6} {:>10.1} {:>10.2} {:>14.2}",
                r.texts_per_s, r.ms_per_batch, r.cpu_ms_per_text
            );
        }
    }

    let long: Vec<String> = vec![(0..60)
        .map(|i| format!("Sentence {i} talks about rolling embeddings out safely."))
        .collect::<Vec<_>>()
        .join(" ")];
    let long_enc = f32_model.encode(&long, true).unwrap();
    for &(label, model) in &models {
        let r = bench(model, &long_enc, 1, budget);
        println!(
            "{label:<6} 1 x {} tokens: {:.1} texts/s, {:.2} ms, {:.1} cpu ms",
            long_enc[0].len(),
            r.texts_per_s,
            r.ms_per_batch,
            r.cpu_ms_per_text
        );
    }

    let refs: Vec<&Encoded> = enc.iter().collect();
    let a = f32_model.embed(&refs).unwrap();
    for (label, model) in [("int8", &int8_model), ("q8_0", &q8_model)] {
        let b = model.embed(&refs).unwrap();
        let cos: Vec<f32> = a.iter().zip(&b).map(|(x, y)| cosine(x, y)).collect();
        let min = cos.iter().copied().fold(f32::INFINITY, f32::min);
        let mean = cos.iter().sum::<f32>() / cos.len() as f32;
        println!(
            "cosine {label} vs f32 over {} texts: min {min:.5}, mean {mean:.5}",
            cos.len()
        );
    }
}
