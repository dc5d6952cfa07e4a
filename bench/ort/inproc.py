"""ONNX Runtime in process, no HTTP: the same cases as `cargo bench -p candle-embedder --bench inference`.

texts/s and tokens/s per batch size (1, 2, 8, 32) of the same 64 short texts, one 256-token text, the seed
request in a loop, and the cosine of INT8 to f32 over the 64 texts. Prints a table, then one JSON line.

    .venv-bench/bin/python bench/ort/inproc.py --models target/bench/ort --threads 2 --seconds 3
"""

import argparse
import json
import os
import time

import numpy as np

from ort_common import embed, load_session, load_tokenizer, real_tokens

# The embedder bench's SHORT texts (embedder/benches/inference.rs), numbered the same way.
SHORT = [
    "How do I reset my password?",
    "Best hiking trails near the lake",
    "The embedding server answers in a few milliseconds.",
    "Rust makes systems programming safer",
    "What is the capital of France?",
    "A man is eating food.",
    "canary rollout with automatic rollback",
    "Quarterly revenue grew by twelve percent",
]
SEED = ["Machine learning and artificial intelligence", "Natural language processing with transformers"]
LONG = " ".join(f"Sentence {i} talks about rolling embeddings out safely." for i in range(60))


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def rate(session, tok, texts, seconds):
    embed(session, tok, texts)
    start, cpu0, runs = time.perf_counter(), cpu_seconds(), 0
    while time.perf_counter() - start < seconds or runs < 3:
        embed(session, tok, texts)
        runs += 1
    wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu0
    n = runs * len(texts)
    return {
        "texts_per_s": n / wall,
        "tokens_per_s": runs * real_tokens(tok, texts) / wall,
        "ms_per_batch": wall / runs * 1000,
        "cpu_ms_per_text": cpu / n * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default="models/all-MiniLM-L6-v2")
    parser.add_argument("--models", default="target/bench/ort")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    tok = load_tokenizer(args.model_dir)
    texts = [f"{SHORT[i % len(SHORT)]} #{i}" for i in range(64)]
    report = {"threads": args.threads, "cases": []}
    print(f"{'model':<9} {'case':<16} {'texts/s':>9} {'tokens/s':>9} {'ms/batch':>9} {'cpu ms/text':>11}")
    sessions = {}
    for label in ("f32", "int8"):
        s = load_session(os.path.join(args.models, f"model-{label}.onnx"), args.threads)
        sessions[label] = s
        cases = [(f"batch {b}", texts[:b]) for b in (1, 2, 8, 32)]
        cases += [("seed request", SEED), ("1 x 256 tokens", [LONG]), ("8 x 256 tokens", [LONG] * 8)]
        for case, batch in cases:
            r = rate(s, tok, batch, args.seconds)
            print(f"ort-{label:<5} {case:<16} {r['texts_per_s']:>9.1f} {r['tokens_per_s']:>9.0f} "
                  f"{r['ms_per_batch']:>9.2f} {r['cpu_ms_per_text']:>11.2f}")
            report["cases"].append({"model": f"ort-{label}", "case": case, **r})
    a, b = embed(sessions["f32"], tok, texts), embed(sessions["int8"], tok, texts)
    cos = np.sum(a * b, axis=1)
    print(f"cosine ort-int8 vs ort-f32 over {len(texts)} texts: min {cos.min():.5f}, mean {cos.mean():.5f}")
    report["int8_cosine_min"], report["int8_cosine_mean"] = float(cos.min()), float(cos.mean())
    report["long_tokens"] = real_tokens(tok, [LONG])
    print(json.dumps(report))


if __name__ == "__main__":
    main()
