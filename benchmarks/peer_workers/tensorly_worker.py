"""tensorly-torch factorized linear layers (CP, the default, and block-TT) replacing the two hidden layers at about
edgecompress's parameter count, head dense, then torch.onnx.export: does the ONNX file keep the factors?
Runs in /work/envs/tensorly.  Usage: python tensorly_worker.py WORK RANK_FRACTION"""

from __future__ import annotations

import sys
from pathlib import Path

import tltorch
import torch

from common import accuracy, attempt, emit, export, reference_mlp, split


def factorize(model: torch.nn.Sequential, factorization: str, rank: float) -> torch.nn.Sequential:
    for index in (0, 2):
        layer = model[index]
        # defaults otherwise: auto-tensorized 3-way shapes, implementation="reconstructed"
        model[index] = tltorch.FactorizedLinear.from_linear(layer, factorization=factorization, rank=rank)
    return model


def main() -> None:
    work, rank = Path(sys.argv[1]), float(sys.argv[2])
    x, y = split(work, "test")
    rows = []
    for factorization in ("cp", "blocktt"):
        def run(row: dict, factorization: str = factorization) -> None:
            model = factorize(reference_mlp(work / "reference.pt"), factorization, rank)
            row["linear_params"] = sum(p.numel() for p in model.parameters())
            row["torch_accuracy"] = accuracy(model, x, y)
            row["file"] = export(model, work / f"tensorly-{factorization}.onnx").name

        rows.append(attempt({"method": f"tensorly-torch {factorization} rank={rank}"}, run))
    emit(rows)


if __name__ == "__main__":
    main()
