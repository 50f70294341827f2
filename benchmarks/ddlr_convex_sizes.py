"""DDLR's convex program against the closed form at equal size on the reference MNIST MLP.

For each target fraction F of the Linear parameters: the ``data`` policy's budget build
(``--target-params F --allocation threshold``) gives an error bound ε and per-layer ranks; the
``ddlr-convex`` program is then solved at that ε (ReLU-aware ADMM on the first 1,024 training
images, as ``edgecompress build --policy ddlr-convex --calib MNIST:train --max-error ε`` does) and
evaluated three ways: the solution's own weights (the paper, ``--no-refit``) and the closed-form
data-aware factors at its ranks (``refit``, the default), and the solution's weights truncated to the
``data`` policy's ranks (same size; at the data ranks the refit factors *are* the ``data`` policy).
Figures on the 10k test split.

Usage (about 25 minutes of one core per fraction; fractions run in parallel with --jobs):
    python benchmarks/ddlr_convex_sizes.py --jobs 3 \
        --out benchmarks/results/ddlr-convex-sizes_mnist-mlp-784-1024-1024-10_cpu-2core.json
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgecompress import provenance
from edgecompress.data import Dataset, load_dataset
from edgecompress.lowrank.budget import Budget, budget_compress
from edgecompress.lowrank.calibration import calibrate
from edgecompress.lowrank.data_policies import data_spectra
from edgecompress.lowrank.factorize import apply_ranks, compress
from edgecompress.lowrank.policies import PolicyContext, make_policy
from edgecompress.lowrank.spectrum import model_spectra
from edgecompress.models import test_accuracy, trained_reference_mlp

MNIST = str(Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets" / "mnist")
CALIB_SAMPLES = 1024  # edgecompress build's --calib-samples default


def measure(model: nn.Module, spectra: dict, ranks: dict[str, int | None], factors: Any, test: Dataset) -> dict[str, Any]:
    """Linear parameters and test accuracy of ``model`` at ``ranks`` with the given factor sources."""
    compressed, plan = apply_ranks(model, spectra, ranks, {}, factors=factors)
    return {"ranks": plan.ranks, "linear_params": plan.linear_params_after,
            "test_accuracy": round(test_accuracy(compressed, test), 4)}


def at_most(ranks: dict[str, int | None], limits: dict[str, int | None]) -> dict[str, int | None]:
    """``ranks`` capped by ``limits`` (None = dense: no cap / keeps the other)."""
    return {name: rank if limits.get(name) is None else limits[name] if rank is None else min(rank, limits[name])
            for name, rank in ranks.items()}


def one_size(fraction: float, max_iter: int) -> dict[str, Any]:
    """The data policy's budget build at ``fraction``, then the convex program at its ε."""
    torch.set_num_threads(1)
    model = trained_reference_mlp(MNIST)
    test, train = load_dataset(f"{MNIST}:test"), load_dataset(f"{MNIST}:train")
    spectra = model_spectra(model)
    calibration = calibrate(model, train.x[:CALIB_SAMPLES], list(spectra), keep_inputs=CALIB_SAMPLES).layers
    data = budget_compress(model, make_policy("data"), spectra, Budget(target_params=fraction),
                           context=PolicyContext(calibration=calibration), allocation="threshold")
    error = round(max(data.record["result"]["layer_error"].values()), 6)
    data_ranks = data.plan.ranks
    refit_factors = data_spectra(spectra, PolicyContext(calibration=calibration))
    context = PolicyContext(calibration=calibration)
    start = time.perf_counter()
    _, convex_plan = compress(model, make_policy("ddlr-convex", max_error=error, max_iter=max_iter, refit=False),
                              context=context, spectra=spectra)
    solve_seconds = time.perf_counter() - start
    return {
        "fraction": fraction, "max_error": error, "solve_seconds": round(solve_seconds, 1),
        "solver": context.extras["ddlr_convex"],
        "data": measure(model, spectra, data_ranks, refit_factors, test),
        "convex_refit": measure(model, spectra, convex_plan.ranks, refit_factors, test),
        "convex_solution": measure(model, spectra, convex_plan.ranks, context.factors, test),
        "convex_solution_at_data_ranks": measure(model, spectra, at_most(data_ranks, convex_plan.ranks),
                                                 context.factors, test),
    }


def markdown(rows: list[dict[str, Any]]) -> str:
    """The per-size table of docs/ddlr.md."""
    def cell(result: dict[str, Any]) -> str:
        ranks = ", ".join("dense" if r is None else str(r) for r in result["ranks"].values())
        return f"{result['linear_params']:,} ({ranks}): {100 * result['test_accuracy']:.2f}%"

    lines = ["| F | ε | `data` | `ddlr-convex` (refit, the default) | `ddlr-convex --no-refit` (the paper) "
             "| `--no-refit` truncated to `data`'s ranks | solve |",
             "| --- | ---: | --- | --- | --- | --- | ---: |"]
    for row in rows:
        lines.append(f"| {row['fraction']:g} | {row['max_error']:.3f} | {cell(row['data'])} "
                     f"| {cell(row['convex_refit'])} | {cell(row['convex_solution'])} "
                     f"| {cell(row['convex_solution_at_data_ranks'])} "
                     f"| {row['solve_seconds'] / 60:.0f} min |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.05, 0.075, 0.10])
    parser.add_argument("--max-iter", type=int, default=1000, help="ADMM iterations per layer (edgecompress's default)")
    parser.add_argument("--jobs", type=int, default=1, help="fractions solved in parallel (one core each)")
    parser.add_argument("--out", type=Path, help="JSON file for the rows and provenance")
    args = parser.parse_args()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        rows = list(pool.map(one_size, args.fractions, [args.max_iter] * len(args.fractions)))
    if args.out:
        record = {"rows": rows, "calib_samples": CALIB_SAMPLES, "max_iter": args.max_iter,
                  "provenance": provenance.collect()}
        args.out.write_text(json.dumps(record, indent=1) + "\n")
        args.out.with_suffix(".md").write_text(f"# DDLR convex vs closed form at equal size\n\n{markdown(rows)}\n")
    print(markdown(rows))


if __name__ == "__main__":
    main()
