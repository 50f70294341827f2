"""ARSVD with and without the classifier head: how much of "adaptive rank loses to a fixed rank" is
the energy / entropy rule truncating the 10-row head.

For each dataset's trained MLP (the models of run.py, from its cache) and each ARSVD policy
(energy τ ∈ {0.8, 0.9, 0.95}, entropy): the policy on every Linear layer (the papers' setting,
run.py's rows), the policy with the head kept dense (``edgecompress build``'s default), and the
uniform rank closest in Linear parameters to the head-dense model; test accuracy (torch; the
exports are verified equal elsewhere) and paired 95% intervals as in run.py.

Usage (about a minute per dataset):
    python benchmarks/arsvd_head.py --out benchmarks/results/arsvd-head_mlp_cpu-2core.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from baselines import closest, ranks_params, uniform_ranks  # noqa: E402
from report import paired, verdict  # noqa: E402
from setups import setups, trained_model  # noqa: E402

from edgecompress import provenance  # noqa: E402
from edgecompress.export.verify import torch_outputs  # noqa: E402
from edgecompress.lowrank.factorize import compress, count_linear_params  # noqa: E402
from edgecompress.lowrank.policies import EnergyPolicy, EntropyPolicy, RankPolicy, UniformPolicy  # noqa: E402
from edgecompress.lowrank.spectrum import exclude_head, model_spectra  # noqa: E402

POLICIES: dict[str, RankPolicy] = {"energy τ=0.8": EnergyPolicy(0.8), "energy τ=0.9": EnergyPolicy(0.9),
                                   "energy τ=0.95": EnergyPolicy(0.95), "entropy": EntropyPolicy()}


def closest_uniform(model: nn.Module, spectra: dict, target: int) -> tuple[int, nn.Module, int]:
    """The uniform rank whose Linear parameter count is closest to ``target`` (as run.py matches)."""
    ranks = range(1, max(s.max_rank for s in spectra.values()) + 1)
    rank = closest(((r, ranks_params(spectra, uniform_ranks(spectra, r))) for r in ranks), target)
    compressed, plan = compress(model, UniformPolicy(rank), spectra=spectra)
    return rank, compressed, plan.linear_params_after


def one_dataset(name: str) -> dict[str, Any]:
    """Every ARSVD policy with and without the head, and the matched uniform rank, on ``name``."""
    setup = setups()[name]
    model = trained_model(setup)
    test = setup.split("test")
    spectra = model_spectra(model)
    head_dense = model_spectra(model, exclude_head(model, None))
    predictions: dict[str, np.ndarray] = {}
    rows = []
    for label, policy in POLICIES.items():
        entries = {}
        for variant, chosen in (("all layers", spectra), ("head dense", head_dense)):
            compressed, plan = compress(model, policy, spectra=chosen)
            key = f"{label} ({variant})"
            predictions[key] = torch_outputs(compressed, test.x).argmax(-1)
            entries[variant] = {"label": key, "linear_params": count_linear_params(compressed), "ranks": plan.ranks,
                                "accuracy": float(np.mean(predictions[key] == test.y))}
        rank, uniform_model, params = closest_uniform(model, spectra, entries["head dense"]["linear_params"])
        key = f"uniform r={rank}"
        predictions[key] = torch_outputs(uniform_model, test.x).argmax(-1)
        entries["uniform"] = {"label": key, "linear_params": params, "rank": rank,
                              "accuracy": float(np.mean(predictions[key] == test.y))}
        pairs = {variant: paired(entries[variant], entries["uniform"], predictions, test.y)
                 for variant in ("all layers", "head dense")}
        rows.append({"policy": label, **entries, "pairs": {k: vars(p) for k, p in pairs.items()}})
    verdicts = {variant: verdict([paired(row[variant], row["uniform"], predictions, test.y) for row in rows])
                for variant in ("all layers", "head dense")}
    return {"dataset": name, "model": setup.model_name, "test_samples": len(test), "rows": rows, "verdicts": verdicts}


def markdown(results: list[dict[str, Any]]) -> str:
    lines = ["| dataset | policy | every layer: params, test acc | head dense: params, test acc | uniform: r, params, "
             "test acc | every layer − uniform | head dense − uniform |", "|---|---|---|---|---|---:|---:|"]
    for result in results:
        for row in result["rows"]:
            cells = [f"{row[v]['linear_params']:,}, {100 * row[v]['accuracy']:.2f}%" for v in ("all layers", "head dense")]
            uniform = row["uniform"]
            diffs = [f"{row['pairs'][v]['difference']:+.2f} ± {row['pairs'][v]['half_width']:.2f}"
                     for v in ("all layers", "head dense")]
            lines.append(f"| {result['dataset']} | {row['policy']} | {cells[0]} | {cells[1]} | r={uniform['rank']}, "
                         f"{uniform['linear_params']:,}, {100 * uniform['accuracy']:.2f}% | {diffs[0]} | {diffs[1]} |")
    lines.append("")
    lines += [f"- {r['dataset']}: every layer vs uniform **{r['verdicts']['all layers']}**; head dense vs uniform "
              f"**{r['verdicts']['head dense']}**" for r in results]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["mnist", "fashion-mnist", "digits"])
    parser.add_argument("--out", type=Path, help="JSON file for the rows and provenance")
    args = parser.parse_args()
    torch.set_num_threads(1)
    available = setups()
    chosen = [name for name in args.datasets if not available[name].missing()]
    results = [one_dataset(name) for name in chosen]
    text = markdown(results)
    if args.out:  # FILE.json and FILE.md
        args.out.write_text(json.dumps({"results": results, "provenance": provenance.collect()}, indent=1) + "\n")
        args.out.with_suffix(".md").write_text(f"# ARSVD with and without the classifier head\n\n{text}\n")
    print(text)


if __name__ == "__main__":
    main()
