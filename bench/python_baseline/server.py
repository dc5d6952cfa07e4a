"""The Python baseline: a typical sentence-transformers + FastAPI + uvicorn embedding service.

Written the way such services usually are (one uvicorn worker, a plain `def` endpoint that FastAPI runs
in its thread pool, `model.encode` per request, no dynamic batching) so the benchmark compares the Rust
server against the kind of service it replaces, not against a tuned one. Same API as candle-embedder's
`/api/v1/embed`, plus `/v1/embeddings`, `/health/ready` and `/health/live`.

Offline only: the model is read from a local sentence-transformers directory (default
models/all-MiniLM-L6-v2); HF_HUB_OFFLINE is forced so nothing is fetched from a model hub.

    .venv-bench/bin/python bench/python_baseline/server.py --port 8090 --model-dir models/all-MiniLM-L6-v2
"""

import argparse
import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import uvicorn  # noqa: E402
from fastapi import FastAPI, HTTPException  # noqa: E402
from pydantic import BaseModel  # noqa: E402
from sentence_transformers import SentenceTransformer  # noqa: E402

MODEL_NAME = "all-MiniLM-L6-v2"
MAX_TEXTS = 64


class EmbedRequest(BaseModel):
    texts: list[str]
    model: str | None = None


class OpenAiRequest(BaseModel):
    input: str | list[str]
    model: str | None = None


def build_app(model_dir: str) -> FastAPI:
    model = SentenceTransformer(model_dir, device="cpu")
    model.max_seq_length = 256
    # Warm-up, so the first measured request does not pay for lazy initialisation.
    model.encode(["warm up"], normalize_embeddings=True)
    app = FastAPI(title="python-baseline")

    def encode(texts: list[str], requested: str | None) -> list[list[float]]:
        if requested not in (None, MODEL_NAME):
            raise HTTPException(404, f"unknown model {requested!r}; served: [{MODEL_NAME!r}]")
        if not texts or any(not t for t in texts):
            raise HTTPException(400, "texts must be a non-empty list of non-empty strings")
        if len(texts) > MAX_TEXTS:
            raise HTTPException(413, f"at most {MAX_TEXTS} texts per request")
        return model.encode(texts, normalize_embeddings=True).tolist()

    @app.post("/api/v1/embed")
    def embed(req: EmbedRequest):
        vectors = encode(req.texts, req.model)
        return {"model": MODEL_NAME, "dimension": len(vectors[0]), "embeddings": vectors}

    @app.post("/v1/embeddings")
    def openai_embeddings(req: OpenAiRequest):
        texts = [req.input] if isinstance(req.input, str) else req.input
        vectors = encode(texts, req.model)
        return {
            "object": "list",
            "model": MODEL_NAME,
            "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
        }

    @app.get("/health/live")
    def live():
        return {"status": "ok"}

    @app.get("/health/ready")
    def ready():
        return {"status": "ready"}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--model-dir", default="models/all-MiniLM-L6-v2")
    args = parser.parse_args()
    uvicorn.run(build_app(args.model_dir), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
