"""Low rank + 4-bit weights on the reference MNIST MLP (shared/DESIGN.md §7): the issue-17 target, a file
>= 100x smaller than the dense fp32 ONNX at <= 1 point test-accuracy loss, found by budget mode.

Two `edgecompress build` runs as a user types them (each in its own process; CPU time from rusage):
  size: --quantize int8,int4 --target-size <dense bytes / 100>  (budget mode measures the int4 file)
  drop: --quantize int8,int4 --max-accuracy-drop 1               (ranks by validation drop of the fp32 low rank)
then one `edgecompress bench`-equivalent run (batch 1, one thread, interleaved rounds) of the size run's dense,
fp32 low-rank, int8 and int4 files on the MNIST test split: latency ratios side by side, accuracy, agreement.

Usage (about 5 minutes on 2 busy cores):
    python benchmarks/lowrank_int4.py --out benchmarks/results/lowrank-int4_mnist-mlp_cpu-2core.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from peers import MNIST, REPO, run_timed, uptime, write_results  # noqa: E402

ROLES = ("dense", "compressed", "int8", "int4")


def reference_pt2(folder: Path, mnist: Path) -> Path:
    """The cached reference MLP (trained on first use) saved as a .pt2."""
    import torch

    from edgecompress.models import save_exported, trained_reference_mlp

    torch.set_num_threads(1)
    return save_exported(trained_reference_mlp(mnist), (1, 784), folder / "mnist-mlp.pt2")


def timed_build(pt2: Path, out: Path, mnist: Path, budget: list[str]) -> dict[str, Any]:
    """One `edgecompress build` in a child process; its build.json, command, wall and CPU seconds."""
    command = [sys.executable, "-m", "edgecompress", "build", str(pt2), "--quantize", "int8,int4", *budget,
               "--eval-split", f"{mnist}:val", "--eval", str(mnist), "--out", str(out), "--quiet"]
    proc, wall, cpu = run_timed(command, REPO)
    if proc.returncode != 0:
        raise SystemExit(f"build failed: {proc.stderr.strip()[-500:]}")
    record = json.loads((out / "build.json").read_text())
    return {"command": " ".join(["edgecompress", *command[3:]]), "wall_s": wall, "cpu_s": cpu, "record": record}


def summary(run: dict[str, Any]) -> dict[str, Any]:
    """Ranks, and per artifact bytes, x smaller than dense, test accuracy and drop in points."""
    artifacts = run["record"]["artifacts"]
    dense = artifacts["dense"]
    rows = {role: {"bytes": artifacts[role]["bytes"], "params": artifacts[role]["params"],
                   "x_smaller": round(dense["bytes"] / artifacts[role]["bytes"], 2),
                   "accuracy": artifacts[role]["eval"]["accuracy"],
                   "drop_points": round(100 * (dense["eval"]["accuracy"] - artifacts[role]["eval"]["accuracy"]), 2)}
            for role in ROLES}
    ranks = {layer["name"]: layer["rank"] for layer in run["record"]["layers"]}
    blocks = [layer["block_size"] for layer in artifacts["int4"]["quantization"]["layers"]]
    return {"command": run["command"], "wall_s": run["wall_s"], "cpu_s": run["cpu_s"], "ranks": ranks,
            "int4_blocks": blocks, "artifacts": rows}


def latency(out: Path, record: dict[str, Any], mnist: Path, runs: int) -> list[dict[str, Any]]:
    """Batch-1 single-thread latency of the four files, interleaved in one run, with accuracy on the test split."""
    from edgecompress.bench import run_benchmark

    paths = [out / record["artifacts"][role]["path"] for role in ROLES]
    report = run_benchmark(paths, data=str(mnist), batches=(1,), threads=1, runs=runs, memory=False, progress=False)
    return [{"model": row["model"], "p50_ms": row["latency_ms"]["p50"], "p90_ms": row["latency_ms"]["p90"],
             "ratios_vs_dense": row["ratios"], "accuracy": row["accuracy"],
             "top1_agreement": row["top1_agreement"]} for row in report["results"]]


def markdown(result: dict[str, Any]) -> str:
    lines = ["# Low rank + int4 on the reference MNIST MLP", "",
             f"Command: `{result['command']}` · machine load (uptime) before/after: {result['load_before']} / "
             f"{result['load_after']}", ""]
    for name, run in result["runs"].items():
        lines += [f"## {name}: `{run['command']}`", "",
                  f"ranks {run['ranks']}, int4 block sizes {run['int4_blocks']}; wall {run['wall_s']} s, "
                  f"CPU {run['cpu_s']} s", "",
                  "| file | bytes | x smaller than dense | test accuracy | drop (points) |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {role} | {row['bytes']:,} | {row['x_smaller']} | {row['accuracy']:.4f} | {row['drop_points']} |"
                  for role, row in run["artifacts"].items()]
        lines.append("")
    lines += ["## Latency (size run's files; batch 1, one thread, interleaved rounds, one run)", "",
              "| file | p50 ms | p90 ms | p50 × dense | p50 × fp32 low rank | accuracy | agreement with dense |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    low_rank = result["latency"][1]["p50_ms"]
    dense = result["latency"][0]["p50_ms"]
    for row in result["latency"]:
        lines.append(f"| {row['model']} | {row['p50_ms']:.4f} | {row['p90_ms']:.4f} | {row['p50_ms'] / dense:.3f} | "
                     f"{row['p50_ms'] / low_rank:.2f} | {row['accuracy']:.4f} | {row['top1_agreement']:.4f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="result JSON (a .md is written beside it)")
    parser.add_argument("--mnist-dir", type=Path, default=MNIST)
    parser.add_argument("--runs", type=int, default=300, help="timed interleaved rounds")
    args = parser.parse_args()
    load_before = uptime()
    with tempfile.TemporaryDirectory(prefix="lowrank-int4-") as tmp:
        folder = Path(tmp)
        pt2 = reference_pt2(folder, args.mnist_dir)
        runs: dict[str, dict[str, Any]] = {}
        probe = timed_build(pt2, folder / "drop", args.mnist_dir, ["--max-accuracy-drop", "1"])
        runs["drop"] = summary(probe)
        dense_bytes = probe["record"]["artifacts"]["dense"]["bytes"]
        size = timed_build(pt2, folder / "size", args.mnist_dir, ["--target-size", f"{dense_bytes // 100}B"])
        runs["size"] = summary(size)
        rows = latency(folder / "size", size["record"], args.mnist_dir, args.runs)
    write_results(args.out, {"load_before": load_before, "dense_bytes": dense_bytes, "target_bytes": dense_bytes // 100,
                             "runs": runs, "latency": rows}, markdown)


if __name__ == "__main__":
    main()
