"""What the safe .pt2 loading costs: ``pt2_archive.inspect_pt2`` (read the archive's configs, load the
sample inputs weights-only) next to ``torch.export.load`` itself, on MLPs from tiny to 4096 wide.

Usage:
    python benchmarks/pt2_inspection.py --out benchmarks/results/pt2-inspection_cpu-2core.json

Each size: the program is saved once; then ``--repeats`` rounds, each timing the inspection and the
torch load back to back (interleaved, so machine load hits both alike); medians are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from edgecompress import provenance
from edgecompress.models import mlp, save_exported
from edgecompress.pt2_archive import inspect_pt2, no_pickle

SIZES = [(64, 96, 96, 10), (784, 1024, 1024, 10), (4096, 4096, 4096, 10)]


def measure(sizes: tuple[int, ...], folder: Path, repeats: int) -> dict:
    torch.manual_seed(0)
    path = save_exported(mlp(sizes).eval(), (1, sizes[0]), folder / f"mlp-{'-'.join(map(str, sizes))}.pt2")
    inspect_s, load_s = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        inspect_pt2(path)
        inspect_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        with no_pickle():
            torch.export.load(path)
        load_s.append(time.perf_counter() - start)
    inspect_median, load_median = statistics.median(inspect_s), statistics.median(load_s)
    return {"model": "mlp-" + "-".join(map(str, sizes)), "file_bytes": path.stat().st_size,
            "inspect_ms": round(1000 * inspect_median, 2), "torch_export_load_ms": round(1000 * load_median, 2),
            "inspect_over_load": round(inspect_median / load_median, 4), "repeats": repeats}


def markdown(record: dict) -> str:
    lines = ["# .pt2 inspection cost (edgecompress/pt2_archive.py)", "",
             f"Command: `{record['command']}`  ", f"Machine load (uptime): {record['load']}  ",
             f"torch {torch.__version__}, one thread, medians of {record['rows'][0]['repeats']} interleaved rounds.", "",
             "| model | .pt2 bytes | inspect ms | torch.export.load ms | inspect / load |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['model']} | {r['file_bytes']:,} | {r['inspect_ms']} | {r['torch_export_load_ms']} | "
              f"{r['inspect_over_load']:.3f} |" for r in record["rows"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="JSON result file (a .md is written beside it).")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="pt2-inspection-") as folder:
        rows = [measure(sizes, Path(folder), args.repeats) for sizes in SIZES]
    record = {"command": "python " + " ".join(sys.argv), "load": os.popen("uptime").read().strip(),
              "provenance": provenance.collect(), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(record))
    print(markdown(record))


if __name__ == "__main__":
    main()
