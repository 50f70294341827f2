"""ddlr-convex on the demo's digits MLP: the solver as it was on main at commit 4117ae0 (before: a
full SVD, a Cholesky solve and four products with the inputs per iteration) against the current one
(after: warm-started truncated SVD once the rank is small, a precomputed inverse, two products with
the inputs), side by side in one run, same inputs. "before" is read with ``git show`` from that commit.

The model is trained exactly as ``edgecompress demo`` trains it (64-256-256-10, 30 epochs, seed 0);
the program is solved for each compressible layer (the head stays dense) on the first 1,024
digits:train samples at ``--max-error 0.1``, ReLU-aware, as ``edgecompress build digits-mlp.pt2
--policy ddlr-convex --calib digits:train`` does. Per layer and mode: seconds, iterations, SVDs
(full / truncated), rank, fit error, violation, nuclear norm; then digits:test accuracy with the
solutions' own weights (``--no-refit``) and the ranks that ``refit`` (the default) uses.

Usage (a few minutes on an idle core; one torch thread):
    python benchmarks/convex_speed.py --out benchmarks/results/convex-speed_digits-mlp_cpu-2core.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

import torch

from edgecompress import provenance
from edgecompress.data import load_dataset
from edgecompress.lowrank.calibration import calibrate
from edgecompress.lowrank import convex
from edgecompress.lowrank.spectrum import linear_layers
from edgecompress.models import digits_mlp, test_accuracy, train_classifier

CALIB_SAMPLES = 1024  # edgecompress build's --calib-samples default
BEFORE = "4117ae0"  # main before issue 18
MODES = (f"before ({BEFORE})", "after")


def solver_at(commit: str) -> Any:
    """``solve_ddlr`` as convex.py was at ``commit`` (git show), as a module of its own."""
    root = Path(__file__).resolve().parents[1]
    source = subprocess.run(["git", "show", f"{commit}:edgecompress/lowrank/convex.py"], cwd=root, check=True,
                            capture_output=True, text=True).stdout
    module = types.ModuleType(f"convex_{commit}")
    sys.modules[module.__name__] = module
    exec(compile(source, f"convex.py@{commit}", "exec"), module.__dict__)
    return module.solve_ddlr


def demo_model() -> torch.nn.Module:
    """The digits MLP as ``edgecompress demo`` trains it."""
    torch.manual_seed(0)
    return train_classifier(digits_mlp(), load_dataset("digits", "train"), epochs=30, lr=1e-3, batch_size=64, seed=0)


def run(max_error: float, max_iter: int) -> dict[str, Any]:
    torch.set_num_threads(1)
    load = os.getloadavg()
    model = demo_model()
    layers = linear_layers(model)
    names = list(layers)[:-1]  # the head stays dense (build's default)
    train, test = load_dataset("digits:train"), load_dataset("digits:test")
    calibration = calibrate(model, train.x[:CALIB_SAMPLES], names, keep_inputs=CALIB_SAMPLES).layers
    modes: dict[str, Any] = {}
    solvers = dict(zip(MODES, (solver_at(BEFORE), convex.solve_ddlr)))
    for label, solve in solvers.items():
        solved, seconds, weights = {}, 0.0, copy.deepcopy(model)
        for name in names:
            inputs = calibration[name]
            start = time.perf_counter()
            result = solve(layers[name].weight.detach(), inputs.inputs, bias=inputs.bias, relu=inputs.relu_after,
                           max_error=max_error, max_iter=max_iter)
            elapsed = time.perf_counter() - start
            seconds += elapsed
            solved[name] = {**result.to_json(), "seconds": round(elapsed, 2)}
            with torch.no_grad():
                linear_layers(weights)[name].weight.copy_(result.weight.to(torch.float32))
        modes[label] = {"seconds": round(seconds, 2), "layers": solved,
                        "ranks": {name: layer["rank"] for name, layer in solved.items()},
                        "test_accuracy_no_refit": round(test_accuracy(weights, test), 4)}
    before, after = (modes[label] for label in MODES)
    return {"max_error": max_error, "max_iter": max_iter, "calib_samples": CALIB_SAMPLES,
            "dense_test_accuracy": round(test_accuracy(model, test), 4), "modes": modes,
            "speedup": round(before["seconds"] / after["seconds"], 2),
            "same_ranks": before["ranks"] == after["ranks"],
            "load_before": load, "load_after": os.getloadavg(), "provenance": provenance.collect()}


def _svds(layer: dict[str, Any]) -> str:
    svds = layer.get("svds")
    return f"{svds['full']} / {svds['truncated']}" if svds else f"{layer['iterations'] + 1} / 0"


def markdown(result: dict[str, Any], command: str) -> str:
    lines = [f"# ddlr-convex speed on the demo digits MLP (max error {result['max_error']}, "
             f"at most {result['max_iter']} iterations)", "",
             f"Command: `{command}`  ", f"Load average (1/5/15 min) at start {'/'.join(f'{v:.1f}' for v in result['load_before'])}, at the end "
             f"{'/'.join(f'{v:.1f}' for v in result['load_after'])} (2 cores, shared machine)", "",
             "| solver | layer | seconds | iterations | converged | SVDs full / truncated | rank | fit error | "
             "violation | nuclear norm |", "| --- | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
    for label, mode in result["modes"].items():
        for name, layer in mode["layers"].items():
            lines.append(f"| {label} | {name} | {layer['seconds']:.1f} | {layer['iterations']} | {layer['converged']} | "
                         f"{_svds(layer)} | {layer['rank']} | "
                         f"{layer['fit_error']:.6f} | {layer['max_violation']:.2e} | {layer['nuclear_norm']:.6f} |")
    lines += ["", "| solver | total seconds | ranks | digits:test accuracy, solution's own weights |",
              "| --- | ---: | --- | ---: |"]
    for label, mode in result["modes"].items():
        lines.append(f"| {label} | {mode['seconds']:.1f} | {mode['ranks']} | {mode['test_accuracy_no_refit']:.2%} |")
    lines += ["", f"Dense test accuracy {result['dense_test_accuracy']:.2%}. Speed-up {result['speedup']}× "
              f"(same run, same inputs); same ranks: {result['same_ranks']}.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-error", type=float, default=0.1)
    parser.add_argument("--max-iter", type=int, default=1000)
    parser.add_argument("--out", type=Path, required=True, help="JSON file; the Markdown table goes next to it (.md)")
    args = parser.parse_args()
    result = run(args.max_error, args.max_iter)
    command = "python benchmarks/convex_speed.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items())
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result, command))
    print(markdown(result, command))


if __name__ == "__main__":
    main()
