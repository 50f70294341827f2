"""`edgecompress sweep` on Ray: the digits sweep on 1 vs 2 local workers, and Ray's per-entry overhead.

    python benchmarks/sweep_ray.py --out benchmarks/results/sweep-ray_digits_cpu-2core.json

1. Wall time of benchmarks/sweeps/ray-digits.toml (6 builds) on a fresh local Ray instance with 1 and
   with 2 CPUs (each includes starting Ray and its workers), run in the order given by --order
   (default 1,2,2,1: each worker count once early and once late), every entry rebuilt (force).
2. Per-entry overhead: one entry built directly in this process and as a Ray task on a warm
   1-CPU local instance, alternated --pairs times after one warm-up of each; overhead = Ray wall
   minus direct wall of the same pair (and Ray wall minus the build time measured inside the task).
Writes the JSON and a Markdown table beside it (same stem); machine load (uptime) before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from setups import setups, trained_model

from edgecompress import provenance
from edgecompress.sweep import load_sweep, sweep
from edgecompress.sweep.entries import resolve_entries
from edgecompress.sweep.task import run_entry

HERE = Path(__file__).resolve().parent
CONFIG = HERE / "sweeps" / "ray-digits.toml"
OVERHEAD_ENTRY = "uniform-rank16"


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def timed_sweep(workers: int, scratch: Path) -> dict[str, Any]:
    """One whole sweep on a fresh local Ray instance of ``workers`` CPUs."""
    start = time.perf_counter()
    record = sweep(load_sweep(CONFIG), out=scratch / f"w{workers}-{time.monotonic_ns()}", workers=workers, force=True)
    wall = time.perf_counter() - start
    entry_s = [row["seconds"] for row in record["entries"] if row.get("seconds") is not None]
    print(f"workers={workers}: {wall:.1f} s, counts {record['counts']}", file=sys.stderr)
    return {"workers": workers, "wall_s": round(wall, 2), "counts": record["counts"],
            "entry_seconds_sum": round(sum(entry_s), 2), "uptime": uptime()}


def overhead(pairs: int, scratch: Path) -> dict[str, Any]:
    """Direct build vs the same build as a Ray task on a warm worker, alternated."""
    import ray

    entry = next(e for e in resolve_entries(load_sweep(CONFIG), scratch / "overhead", 1) if e.label == OVERHEAD_ENTRY)
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        remote = ray.remote(num_cpus=1, max_retries=1)(run_entry)
        run_entry(entry, 1)
        ray.get(remote.remote(entry, 1))  # warm-up: starts the worker, imports torch, first export
        direct, via_ray, in_task = [], [], []
        for _ in range(pairs):
            start = time.perf_counter()
            run_entry(entry, 1)
            direct.append(time.perf_counter() - start)
            start = time.perf_counter()
            row = ray.get(remote.remote(entry, 1))
            via_ray.append(time.perf_counter() - start)
            in_task.append(row["seconds"])
    finally:
        ray.shutdown()
    diff = [r - d for r, d in zip(via_ray, direct)]
    task = [r - t for r, t in zip(via_ray, in_task)]
    return {"entry": OVERHEAD_ENTRY, "pairs": pairs, "direct_s": [round(v, 3) for v in direct],
            "ray_s": [round(v, 3) for v in via_ray], "ray_in_task_build_s": [round(v, 3) for v in in_task],
            "median_direct_s": round(statistics.median(direct), 3), "median_ray_s": round(statistics.median(via_ray), 3),
            "median_overhead_vs_direct_s": round(statistics.median(diff), 3),
            "median_overhead_vs_in_task_s": round(statistics.median(task), 3), "uptime": uptime()}


def markdown(result: dict[str, Any]) -> str:
    runs = result["sweeps"]
    by = {w: [r["wall_s"] for r in runs if r["workers"] == w] for w in (1, 2)}
    median = {w: statistics.median(v) for w, v in by.items() if v}
    ratio = median[2] / median[1] if 1 in median and 2 in median else None
    lines = ["# edgecompress sweep on Ray: digits, 1 vs 2 workers; per-entry overhead", "",
             f"Command: `{result['command']}`", "",
             f"Config: `benchmarks/sweeps/ray-digits.toml` ({runs[0]['counts']['total']} builds of the 64-256-256-10 "
             "digits MLP); every run rebuilds every entry on a fresh local Ray instance (start-up included).", "",
             f"Machine load before: `{result['uptime_before']}`; after: `{result['uptime_after']}` "
             "(2 cores shared with other work: absolute times are only comparable within this run).", "",
             "| order | workers | wall s | sum of per-entry build s | uptime after the run |",
             "| ---: | ---: | ---: | ---: | --- |"]
    for i, run in enumerate(runs, start=1):
        lines.append(f"| {i} | {run['workers']} | {run['wall_s']:.1f} | {run['entry_seconds_sum']:.1f} | {run['uptime']} |")
    if ratio is not None:
        lines += ["", f"**Wall-time ratio 2 workers / 1 worker (medians): {ratio:.2f}** "
                      f"({median[2]:.1f} s / {median[1]:.1f} s)."]
    o = result["overhead"]
    lines += ["", f"## Per-entry overhead (entry `{o['entry']}`, {o['pairs']} alternated pairs, warm worker)", "",
              "| | median s | each run s |", "| --- | ---: | --- |",
              f"| direct build in this process | {o['median_direct_s']:.3f} | {', '.join(map(str, o['direct_s']))} |",
              f"| the same build as a Ray task | {o['median_ray_s']:.3f} | {', '.join(map(str, o['ray_s']))} |",
              f"| build time measured inside the task | | {', '.join(map(str, o['ray_in_task_build_s']))} |", "",
              f"**Overhead per entry: {o['median_overhead_vs_direct_s']:+.3f} s vs a direct build (median of pair "
              f"differences); {o['median_overhead_vs_in_task_s']:+.3f} s of scheduling, argument transfer and result "
              "return around the build inside the task.** Target: < 1 s.", "",
              f"Load during the overhead runs: `{o['uptime']}`.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="JSON result file (the .md goes beside it)")
    parser.add_argument("--order", default="1,2,2,1", help="worker counts of the whole-sweep runs, in order")
    parser.add_argument("--pairs", type=int, default=5, help="direct/Ray pairs for the overhead")
    args = parser.parse_args()
    torch.set_num_threads(1)
    trained_model(setups()["digits"])  # the cached state_dict the config names
    result: dict[str, Any] = {"command": "python " + " ".join(sys.argv), "uptime_before": uptime(),
                              "provenance": provenance.collect()}
    with tempfile.TemporaryDirectory(prefix="sweep-ray-") as folder:
        scratch = Path(folder)
        result["sweeps"] = [timed_sweep(int(w), scratch) for w in args.order.split(",")]
        result["overhead"] = overhead(args.pairs, scratch)
    result["uptime_after"] = uptime()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}", file=sys.stderr)


if __name__ == "__main__":
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    main()
