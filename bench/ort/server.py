"""A peer server: ONNX Runtime behind FastAPI + uvicorn, with simple dynamic batching.

What a Python team would build to serve this model fast without Rust: the exported ONNX model (f32 or
per-channel INT8, bench/ort/export.py) on ONNX Runtime's CPU provider, requests gathered into one batch
for up to --batch-wait-ms or --max-batch texts, one inference at a time on a worker thread (ORT spreads
it over --threads intra-op threads). --batch-wait-ms 0 turns batching off (one run per request). Same
API as candle-embedder's /api/v1/embed, plus /v1/embeddings and /health/ready.

    .venv-bench/bin/python bench/ort/server.py --model target/bench/ort/model-int8.onnx --port 18091
"""

import argparse
import asyncio
import os
from concurrent.futures import ThreadPoolExecutor

import uvicorn
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

from ort_common import embed, load_session, load_tokenizer

MODEL_NAME = "all-MiniLM-L6-v2"
MAX_TEXTS = 64


class EmbedRequest(BaseModel):
    texts: list[str]
    model: str | None = None


class OpenAiRequest(BaseModel):
    input: str | list[str]
    model: str | None = None


def build_app(model_path: str, model_dir: str, threads: int, max_batch: int, wait_ms: float) -> FastAPI:
    session, tok = load_session(model_path, threads), load_tokenizer(model_dir)
    embed(session, tok, ["warm up"])
    pool = ThreadPoolExecutor(max_workers=1)  # one inference at a time; ORT uses `threads` inside it
    queue: asyncio.Queue = asyncio.Queue()
    app = FastAPI(title="ort-peer")

    async def batcher() -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [await queue.get()]
            count = len(items[0][0])
            deadline = loop.time() + wait_ms / 1000
            while count < max_batch:
                try:
                    item = await asyncio.wait_for(queue.get(), max(deadline - loop.time(), 0))
                except asyncio.TimeoutError:
                    break
                items.append(item)
                count += len(item[0])
            texts = [t for its, _ in items for t in its]
            try:
                vectors = await loop.run_in_executor(pool, embed, session, tok, texts)
            except Exception as e:  # noqa: BLE001 - every waiting request gets the error
                for _, fut in items:
                    fut.set_exception(e)
                continue
            at = 0
            for its, fut in items:
                fut.set_result(vectors[at : at + len(its)].tolist())
                at += len(its)

    @app.on_event("startup")
    async def start() -> None:
        if wait_ms > 0:
            app.state.batcher = asyncio.create_task(batcher())

    async def encode(texts: list[str], requested: str | None) -> list[list[float]]:
        if requested not in (None, MODEL_NAME):
            raise HTTPException(404, f"unknown model {requested!r}; served: [{MODEL_NAME!r}]")
        if not texts or any(not t for t in texts):
            raise HTTPException(400, "texts must be a non-empty list of non-empty strings")
        if len(texts) > MAX_TEXTS:
            raise HTTPException(413, f"at most {MAX_TEXTS} texts per request")
        if wait_ms <= 0:
            loop = asyncio.get_running_loop()
            return (await loop.run_in_executor(pool, embed, session, tok, texts)).tolist()
        fut = asyncio.get_running_loop().create_future()
        await queue.put((texts, fut))
        return await fut

    @app.post("/api/v1/embed")
    async def embed_route(req: EmbedRequest):
        vectors = await encode(req.texts, req.model)
        return {"model": MODEL_NAME, "dimension": len(vectors[0]), "embeddings": vectors}

    @app.post("/v1/embeddings")
    async def openai_embeddings(req: OpenAiRequest):
        texts = [req.input] if isinstance(req.input, str) else req.input
        vectors = await encode(texts, req.model)
        return {
            "object": "list",
            "model": MODEL_NAME,
            "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
        }

    @app.get("/health/live")
    async def live():
        return {"status": "ok"}

    @app.get("/health/ready")
    async def ready():
        return {"status": "ready"}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18091)
    parser.add_argument("--model", required=True, help="an .onnx file from bench/ort/export.py")
    parser.add_argument("--model-dir", default="models/all-MiniLM-L6-v2", help="for tokenizer.json")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--batch-wait-ms", type=float, default=2.0)
    args = parser.parse_args()
    app = build_app(args.model, args.model_dir, args.threads, args.max_batch, args.batch_wait_ms)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
