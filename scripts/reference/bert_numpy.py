#!/usr/bin/env python3
"""Independent reference for the embedder: BERT + pooling + L2 normalisation in plain numpy (float64).

Reads the same sentence-transformers directory as the Rust code (model.safetensors via the
safetensors numpy API, tokenizer.json via the `tokenizers` package) but shares no code with it.

Input (JSON on stdin): {"model_dir": str, "texts": [str], "max_length": int (optional)}
Output (JSON on stdout): {"ids": [[int]], "embeddings": [[float]], "max_length": int, "pooling": str}
"""
import json
import math
import os
import sys

import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer

_erf = np.vectorize(math.erf, otypes=[np.float64])


def gelu(x):
    # The exact (erf) GELU of BERT's "gelu" activation.
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def layer_norm(x, w, b, eps):
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


class Bert:
    def __init__(self, model_dir):
        with open(os.path.join(model_dir, "config.json")) as f:
            self.cfg = json.load(f)
        raw = load_file(os.path.join(model_dir, "model.safetensors"))
        prefix = "" if "embeddings.word_embeddings.weight" in raw else "bert."
        self.w = {k[len(prefix):]: v.astype(np.float64) for k, v in raw.items() if k.startswith(prefix)}

    def forward(self, ids, type_ids):
        """One sequence, no padding: returns [len, hidden] last hidden states."""
        c, w = self.cfg, self.w
        eps = c.get("layer_norm_eps", 1e-12)
        heads = c["num_attention_heads"]
        d = c["hidden_size"] // heads
        n = len(ids)
        x = (w["embeddings.word_embeddings.weight"][ids]
             + w["embeddings.position_embeddings.weight"][np.arange(n)]
             + w["embeddings.token_type_embeddings.weight"][type_ids])
        x = layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)
        for i in range(c["num_hidden_layers"]):
            p = f"encoder.layer.{i}."

            def lin(name, inp):
                return inp @ w[p + name + ".weight"].T + w[p + name + ".bias"]

            q = lin("attention.self.query", x).reshape(n, heads, d).transpose(1, 0, 2)
            k = lin("attention.self.key", x).reshape(n, heads, d).transpose(1, 0, 2)
            v = lin("attention.self.value", x).reshape(n, heads, d).transpose(1, 0, 2)
            att = softmax(q @ k.transpose(0, 2, 1) / math.sqrt(d))
            ctx = (att @ v).transpose(1, 0, 2).reshape(n, heads * d)
            x = layer_norm(lin("attention.output.dense", ctx) + x,
                           w[p + "attention.output.LayerNorm.weight"],
                           w[p + "attention.output.LayerNorm.bias"], eps)
            h = gelu(lin("intermediate.dense", x))
            x = layer_norm(lin("output.dense", h) + x,
                           w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"], eps)
        return x


def pooling_mode(model_dir):
    path = os.path.join(model_dir, "1_Pooling", "config.json")
    with open(path) as f:
        cfg = json.load(f)
    for key, mode in (("pooling_mode_mean_tokens", "mean"), ("pooling_mode_cls_token", "cls"),
                      ("pooling_mode_max_tokens", "max")):
        if cfg.get(key):
            return mode
    raise SystemExit(f"{path}: no supported pooling mode")


def max_length(model_dir):
    with open(os.path.join(model_dir, "sentence_bert_config.json")) as f:
        return json.load(f)["max_seq_length"]


def pool(hidden, mode):
    if mode == "mean":
        return hidden.mean(axis=0)
    if mode == "cls":
        return hidden[0]
    return hidden.max(axis=0)


def main():
    req = json.load(sys.stdin)
    model_dir = req["model_dir"]
    limit = req.get("max_length") or max_length(model_dir)
    tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(max_length=limit)
    bert = Bert(model_dir)
    mode = pooling_mode(model_dir)
    out_ids, out_emb = [], []
    for text in req["texts"]:
        enc = tok.encode(text)
        v = pool(bert.forward(np.array(enc.ids), np.array(enc.type_ids)), mode)
        v = v / np.linalg.norm(v)
        out_ids.append(enc.ids)
        out_emb.append(v.tolist())
    json.dump({"ids": out_ids, "embeddings": out_emb, "max_length": limit, "pooling": mode}, sys.stdout)


if __name__ == "__main__":
    main()
