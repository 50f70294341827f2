"""Cross-check `edgecompress bench` against a by-hand onnxruntime timing loop (issue: bench).

Usage: python benchmarks/bench_vs_hand_loop.py DENSE.onnx COMPRESSED.onnx [--runs 2000] [--out FILE.json]
Both measure batch 1, one intra-op thread, sequential execution, interleaved dense/compressed runs;
the script alternates hand loop and bench twice and writes the p50s and ratios.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edgecompress import provenance
from edgecompress.bench import run_benchmark


def _session(path: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def hand_loop(dense: str, compressed: str, runs: int) -> list[float]:
    """p50 ms of a plain session.run loop, dense and compressed interleaved."""
    sessions = [_session(dense), _session(compressed)]
    feeds = {sessions[0].get_inputs()[0].name: np.random.default_rng(0).standard_normal((1, 784)).astype(np.float32)}
    samples: list[list[float]] = [[], []]
    for _ in range(50):
        for session in sessions:
            session.run(None, feeds)
    for _ in range(runs):
        for i, session in enumerate(sessions):
            start = time.perf_counter()
            session.run(None, feeds)
            samples[i].append((time.perf_counter() - start) * 1e3)
    return [float(np.median(s)) for s in samples]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dense")
    parser.add_argument("compressed")
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    rows = []
    for attempt in range(2):
        hand = hand_loop(args.dense, args.compressed, args.runs)
        bench = run_benchmark([args.dense, args.compressed], runs=args.runs, memory=False, progress=False)
        tool = [row["latency_ms"]["p50"] for row in bench["results"]]
        rows.append({"attempt": attempt, "hand_loop_p50_ms": hand, "bench_p50_ms": tool,
                     "hand_loop_ratio": hand[1] / hand[0], "bench_ratio": tool[1] / tool[0]})
        print(f"hand loop {hand[0]:.4f} / {hand[1]:.4f} ms (ratio {hand[1] / hand[0]:.3f});  "
              f"edgecompress bench {tool[0]:.4f} / {tool[1]:.4f} ms (ratio {tool[1] / tool[0]:.3f})")
    if args.out:
        record = {"models": [args.dense, args.compressed], "runs": args.runs, "batch": 1, "threads": 1,
                  "rows": rows, "provenance": provenance.collect()}
        args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
