"""The hand-written baseline a user writes in ~20 lines: truncated SVD of the two hidden layers at one rank, head
dense, torch.onnx.export, onnxruntime quantize_dynamic. Runs in the project venv (torch + onnxruntime only).
Usage: python plain_svd.py WORK RANK"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from onnxruntime.quantization import QuantType, quantize_dynamic
from torch import nn

from common import emit, export, linear_params, reference_mlp


# --- what the user writes (20 lines) ---
def svd_linear(layer: nn.Linear, rank: int) -> nn.Sequential:
    u, s, vh = torch.linalg.svd(layer.weight.detach(), full_matrices=False)
    first = nn.Linear(layer.in_features, rank, bias=False)
    second = nn.Linear(rank, layer.out_features)
    first.weight.data = (s[:rank].sqrt()[:, None] * vh[:rank]).contiguous()
    second.weight.data = (u[:, :rank] * s[:rank].sqrt()).contiguous()
    second.bias.data = layer.bias.detach().clone()
    return nn.Sequential(first, second)


def compress(model: nn.Sequential, rank: int) -> nn.Sequential:
    for index in (0, 2):  # the hidden layers; the 10-row head stays dense
        model[index] = svd_linear(model[index], rank)
    return model
# --- end ---


def main() -> None:
    work, rank = Path(sys.argv[1]), int(sys.argv[2])
    model = compress(reference_mlp(work / "reference.pt"), rank)
    path = export(model, work / f"plain-svd-r{rank}.onnx")
    quantize_dynamic(path, work / f"plain-svd-r{rank}.int8.onnx", weight_type=QuantType.QInt8)
    params = linear_params(model)
    emit([{"method": f"hand-written SVD r={rank}", "file": path.name, "linear_params": params},
          {"method": f"hand-written SVD r={rank} + quantize_dynamic", "file": f"plain-svd-r{rank}.int8.onnx",
           "linear_params": params}])


if __name__ == "__main__":
    main()
