"""tensorly-torch factorized linear layers replacing the two hidden layers at about edgecompress's parameter count
(rank given as a fraction of the dense parameters), head dense, then torch.onnx.export: does the ONNX file keep the
factors? One factorization per process (peers.py caps each with a time limit). METHOD is tensorly-torch's
factorization name, optionally with decomposition keyword arguments: ``cp`` (its default: CP-ALS with n_iter_max=100),
``cp:n_iter_max=10``, ``tucker``, ``blocktt``. Runs in /work/envs/tensorly.
Usage: python tensorly_worker.py WORK RANK_FRACTION METHOD"""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path

import tltorch
import torch

from common import accuracy, attempt, emit, export, reference_mlp, split


def parse(method: str) -> tuple[str, dict[str, int | float | str]]:
    """``cp:n_iter_max=10,init=random`` -> ("cp", {"n_iter_max": 10, "init": "random"})."""
    name, _, options = method.partition(":")
    kwargs: dict[str, int | float | str] = {}
    for item in filter(None, options.split(",")):
        key, value = item.split("=")
        kwargs[key] = int(value) if value.isdigit() else value
    return name, kwargs


def factorize(model: torch.nn.Sequential, factorization: str, rank: float, kwargs: dict) -> torch.nn.Sequential:
    for index in (0, 2):
        # defaults otherwise: auto-tensorized 3-way shapes, implementation="reconstructed"
        model[index] = tltorch.FactorizedLinear.from_linear(model[index], factorization=factorization, rank=rank,
                                                            decomposition_kwargs=kwargs)
    return model


def main() -> None:
    work, rank, method = Path(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
    x, y = split(work, "test")
    factorization, kwargs = parse(method)

    def run(row: dict) -> None:
        start, cpu = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
        model = factorize(reference_mlp(work / "reference.pt"), factorization, rank, kwargs)
        after = resource.getrusage(resource.RUSAGE_SELF)
        row["compress_wall_s"] = round(time.perf_counter() - start, 1)
        row["compress_cpu_s"] = round(after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime, 1)
        row["linear_params"] = sum(p.numel() for p in model.parameters())
        row["torch_accuracy"] = accuracy(model, x, y)
        row["file"] = export(model, work / f"tensorly-{method.replace(':', '-').replace('=', '').replace(',', '-')}.onnx").name

    emit([attempt({"method": f"tensorly-torch {method} rank={rank}"}, run)])


if __name__ == "__main__":
    main()
