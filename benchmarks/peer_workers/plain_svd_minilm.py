"""The hand-written baseline on all-MiniLM-L6-v2: truncated SVD of every encoder Linear at one rank, the
sentence-transformers pooling written out, torch.onnx.export, onnxruntime quantize_dynamic. Runs in the project venv
(torch + transformers + onnxruntime; no edgecompress). Usage: python plain_svd_minilm.py WORK MODEL_FOLDER RANK"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from onnxruntime.quantization import QuantType, quantize_dynamic  # noqa: E402
from torch import nn  # noqa: E402
from transformers import AutoModel  # noqa: E402

from common import emit, linear_params  # noqa: E402
from plain_svd import svd_linear  # noqa: E402

torch.set_num_threads(1)


# --- what the user writes (25 lines: svd_linear, 8 of them, is plain_svd.py's, shared here) ---
class Embedder(nn.Module):  # sentence-transformers' mean pooling + L2 normalize
    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9), dim=-1)


def compress(encoder: nn.Module, rank: int) -> nn.Module:
    for name, module in list(encoder.named_modules()):
        if isinstance(module, nn.Linear) and rank * (module.in_features + module.out_features) < module.weight.numel():
            parent, _, child = name.rpartition(".")
            setattr(encoder.get_submodule(parent), child, svd_linear(module, rank))
    return encoder
# --- end ---


def main() -> None:
    work, folder, rank = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    model = Embedder(compress(AutoModel.from_pretrained(folder).eval(), rank)).eval()
    ids = torch.ones(1, 16, dtype=torch.int64)
    path = work / f"plain-svd-minilm-r{rank}.onnx"
    seq = torch.export.Dim("seq", min=2, max=512)
    torch.onnx.export(model, (ids, torch.ones_like(ids)), str(path), input_names=["input_ids", "attention_mask"],
                      output_names=["sentence_embedding"], dynamo=True, external_data=False, opset_version=18,
                      dynamic_shapes=({0: torch.export.Dim("batch"), 1: seq}, {0: torch.export.Dim("batch"), 1: seq}))
    quantized = path.with_suffix(".int8.onnx")
    quantize_dynamic(path, quantized, weight_type=QuantType.QInt8)
    params = linear_params(model.encoder.encoder)  # the encoder layers' Linears (what edgecompress counts)
    emit([{"method": f"hand-written SVD r={rank}", "file": path.name, "linear_params": params},
          {"method": f"hand-written SVD r={rank} + quantize_dynamic", "file": quantized.name, "linear_params": params}])


if __name__ == "__main__":
    main()
