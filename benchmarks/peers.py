"""edgecompress side by side with the tools a user would pick instead, on the reference MNIST MLP (DESIGN §7):
AIMET weight SVD (greedy), NNCF weight compression (int8, int4), tensorly-torch factorized layers, and a
hand-written torch SVD + torch.onnx.export + onnxruntime quantize_dynamic script.

Every tool starts from the same trained weights (edgecompress's cached reference model, saved as a state_dict) and
writes an ONNX file; this script then measures every file the same way in the project venv: Linear parameters,
file bytes, test accuracy (onnxruntime, MNIST t10k), and batch-1 single-thread p50 latency against the dense export,
all files timed in one interleaved `edgecompress bench` run. Compression wall and CPU seconds are each tool's own
process (rusage of the child), so a busy machine shows in wall time, not in CPU time.

Peers run in their own venvs (their pins conflict with the project's; never install them into the project venv).
Make them once (torch first, from the CPU wheel, or pip pulls a multi-GB CUDA torch):

    for peer in nncf tensorly aimet; do python3.11 -m venv /work/envs/$peer
        /work/envs/$peer/bin/pip install torch==2.13.0; done
    /work/envs/nncf/bin/pip install nncf==3.4.0 onnx onnxscript onnxruntime
    /work/envs/tensorly/bin/pip install tensorly-torch tensorly onnx onnxscript onnxruntime
    /work/envs/aimet/bin/pip install aimet-torch==2.42.0 onnx onnxscript onnxruntime
    python benchmarks/peers.py --stub-torchvision /work/envs/aimet   # aimet-torch imports torchvision; a real
        # torchvision wheel replaces torch 2.13 CPU with a CUDA build, so an empty stub package stands in for it

A peer whose venv is missing or whose run fails is listed with the exact reason.

Usage (≈ 15-25 min on 2 busy cores; AIMET's greedy table is most of it):
    python benchmarks/peers.py --out benchmarks/results/peers_mnist-mlp-784-1024-1024-10_cpu-2core.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
WORKERS = Path(__file__).resolve().parent / "peer_workers"
MNIST = Path("/work/shared/datasets/mnist") if Path("/work/shared/datasets/mnist").is_dir() else \
    REPO.parent / "shared" / "datasets" / "mnist"
ENVS = Path("/work/envs")
DENSE_PARAMS = 1_863_690

# what the user had to write, per tool (shown in the table)
USER_CODE = {
    "edgecompress": "one command",
    "AIMET": "~25 lines: eval callback, greedy + weight-SVD params, modules_to_ignore, compress_model, export",
    "NNCF": "3 lines: onnx.load, nncf.compress_weights(mode=...), onnx.save",
    "tensorly": "~10 lines: FactorizedLinear.from_linear per layer with tensorized shapes, export",
    "hand-written": "17 lines: SVD per layer, module swap, torch.onnx.export, quantize_dynamic",
}


TORCHVISION_STUBS = ("datasets", "transforms", "models", "ops")


def stub_torchvision(env: Path) -> Path:
    """An empty ``torchvision`` package in ``env``'s site-packages (AIMET imports it at module level)."""
    site = next((env / "lib").glob("python3*/site-packages"))
    package = site / "torchvision"
    package.mkdir(exist_ok=True)
    (package / "__init__.py").write_text('"""Stub: aimet-torch imports torchvision; the MLP never uses it."""\n'
                                         '__version__ = "0.0.0+stub"\n'
                                         f'from . import {", ".join(TORCHVISION_STUBS)}\n')
    for name in TORCHVISION_STUBS:  # what aimet_torch imports from torchvision at module level
        (package / f"{name}.py").write_text('"""Stub: any name is an empty placeholder class."""\n\n\n'
                                            'def __getattr__(name):\n    return type(name, (), {})\n')
    return package


def prepare(work: Path, mnist: Path) -> Path:
    """reference.pt (state_dict), val.npz, test.npz and dense.onnx in ``work``; returns the .pt2 for builds."""
    import torch

    from edgecompress.data import load_dataset
    from edgecompress.export.onnx import export_onnx, simplify_onnx
    from edgecompress.models import save_exported, trained_reference_mlp

    torch.set_num_threads(1)
    model = trained_reference_mlp(mnist)
    torch.save(model.state_dict(), work / "reference.pt")
    for split in ("val", "test"):
        data = load_dataset(str(mnist), split)
        np.savez(work / f"{split}.npz", x=data.x.astype(np.float32), y=data.y.astype(np.int64))
    dense = work / "dense.onnx"
    export_onnx(model, (1, 784), dense)
    simplify_onnx(dense)
    return save_exported(model, (1, 784), work / "mnist-mlp.pt2")


def run_timed(command: list[str], cwd: Path, cpu_cap: float | None = None,
              env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run a child process (stopped by the kernel after ``cpu_cap`` CPU seconds, whatever the machine load:
    the reason replaces its stderr); its result, wall seconds and CPU seconds (user + system)."""
    def limit() -> None:
        cap = int(cpu_cap)
        resource.setrlimit(resource.RLIMIT_CPU, (cap, cap + 5))  # SIGXCPU at the soft limit, SIGKILL at the hard

    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    proc = subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=env,
                          preexec_fn=limit if cpu_cap else None)
    if cpu_cap and proc.returncode in (-signal.SIGXCPU, -signal.SIGKILL):
        proc.stderr += f"\nstopped at the {cpu_cap:.0f} CPU-second cap"
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return proc, round(time.perf_counter() - start, 1), round(cpu, 1)


def worker(tool: str, python: Path, script: str, args: list[str], work: Path, *, label: str | None = None,
           cpu_cap: float | None = None, env: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Run one peer worker in its venv; its rows (or one row, ``label``, with the reason it could not run)."""
    if not python.exists():
        return [{"tool": tool, "method": label or tool, "error": f"venv missing: {python} (see this script's docstring)"}]
    proc, wall, cpu = run_timed([str(python), str(WORKERS / script), str(work), *args], work, cpu_cap, env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        reason = (proc.stderr.strip().splitlines() or ["no output"])[-1][:400]
        return [{"tool": tool, "method": label or tool, "error": f"exit {proc.returncode}: {reason}", "wall_s": wall,
                 "cpu_s": cpu}]
    rows = json.loads(lines[-1][len("RESULT "):])
    for row in rows:
        row.setdefault("wall_s", wall)
        row.setdefault("cpu_s", cpu)
        row["tool"] = tool
        row["process_cpu_s"] = cpu
    return rows


def edgecompress_rows(pt2: Path, work: Path, mnist: Path, name: str, options: list[str]) -> list[dict[str, Any]]:
    """One `edgecompress build` (its fp32, int8 and int4 files), timed as a child process."""
    out = work / f"ec-{name}"
    command = [sys.executable, "-m", "edgecompress", "build", str(pt2), *options, "--quantize", "int8,int4",
               "--eval-split", f"{mnist}:val", "--out", str(out), "--quiet"]
    proc, wall, cpu = run_timed(command, REPO)
    shown = " ".join(["edgecompress build model.pt2", *options, "--quantize int8,int4 --eval-split mnist:val"])
    if proc.returncode != 0:
        return [{"tool": "edgecompress", "method": shown, "error": proc.stderr.strip()[-400:], "wall_s": wall,
                 "cpu_s": cpu}]
    record = json.loads((out / "build.json").read_text())
    params = record["linear_params_after"] if "linear_params_after" in record else sum(
        layer["params_after"] for layer in record["layers"])
    ranks = {layer["name"]: layer["rank"] for layer in record["layers"]}
    return [{"tool": "edgecompress", "method": f"{shown} [{role}]", "file": str(out / record["artifacts"][role]["path"]),
             "linear_params": params, "ranks": ranks, "wall_s": wall, "cpu_s": cpu}
            for role in ("compressed", "int8", "int4")]


def onnx_accuracy(path: Path, work: Path) -> tuple[float | None, str | None]:
    """Test accuracy in onnxruntime (batches of 100, one thread), or why the file does not run."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        data = np.load(work / "test.npz")
        predictions = np.concatenate([session.run(None, {name: data["x"][i:i + 100]})[0].argmax(1)
                                      for i in range(0, len(data["x"]), 100)])
    except Exception as exc:  # onnxruntime refuses the file: that is the finding
        return None, f"onnxruntime: {str(exc).splitlines()[0][:300]}"
    return float((predictions == data["y"]).mean()), None


def unify_input(path: Path, work: Path) -> Path:
    """A copy of ``path`` whose graph input is named ``input`` (bench runs files side by side on one feed)."""
    import onnx

    model = onnx.load(str(path))
    old = model.graph.input[0].name
    if old == "input":
        return path
    for node in model.graph.node:
        node.input[:] = ["input" if name == old else name for name in node.input]
    model.graph.input[0].name = "input"
    target = work / "bench" / path.name
    target.parent.mkdir(exist_ok=True)
    onnx.save(model, str(target))
    return target


def measure(rows: list[dict[str, Any]], work: Path, runs: int) -> dict[str, Any]:
    """Accuracy, bytes and interleaved batch-1 latency of every file that runs; errors recorded on the row."""
    from edgecompress import onnxinfo
    from edgecompress.bench import run_benchmark

    dense = work / "dense.onnx"
    dense_accuracy, _ = onnx_accuracy(dense, work)
    files = {}
    for row in rows:
        if not row.get("file"):
            continue
        path = Path(row["file"]) if Path(row["file"]).is_absolute() else work / row["file"]
        row["bytes"] = path.stat().st_size
        row["onnx_params"] = onnxinfo.count_params(onnxinfo.load_model(path))
        row["ops"] = onnxinfo.ops_by_type(onnxinfo.load_model(path))
        row["accuracy"], error = onnx_accuracy(path, work)
        if error:
            row["error"] = error
            continue
        row["drop_points"] = round(100 * (dense_accuracy - row["accuracy"]), 2)
        files[row["method"]] = unify_input(path, work)
    report = run_benchmark([dense, *files.values()], batches=(1,), threads=1, runs=runs, limit=8, memory=False,
                           progress=False)
    by_file = {r["model"]: r for r in report["results"]}
    names = [r["model"] for r in report["results"]]
    for (method, _), name in zip(files.items(), names[1:]):
        row = next(r for r in rows if r["method"] == method)
        row["p50_ms"] = by_file[name]["latency_ms"]["p50"]
        row["p50_x_dense"] = by_file[name]["ratios"]["p50"]
    return {"dense_accuracy": dense_accuracy, "dense_bytes": dense.stat().st_size,
            "dense_p50_ms": by_file[names[0]]["latency_ms"]["p50"], "runs": runs}


def markdown(result: dict[str, Any]) -> str:
    dense = result["dense"]
    lines = ["# edgecompress and its peers on the reference MNIST MLP", "",
             f"Command: `{result['command']}`  ", f"Machine load (uptime 1/5/15 min) before / after: "
             f"{result['load_before']} / {result['load_after']}  ",
             f"Dense: {DENSE_PARAMS:,} Linear params, {dense['dense_bytes']:,} B, test accuracy "
             f"{dense['dense_accuracy']:.4f}, p50 {dense['dense_p50_ms']:.4f} ms (batch 1, one thread; every file in "
             f"one interleaved run of {dense['runs']} rounds)", "",
             "| tool | method | Linear params (x fewer) | file bytes | test acc | drop (pt) | p50 × dense | wall s | CPU s "
             "| user writes |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for row in result["rows"]:
        params = row.get("linear_params")
        params_text = f"{params:,} ({DENSE_PARAMS / params:.1f}x)" if params else "–"
        if row.get("error") and row.get("accuracy") is None:
            lines.append(f"| {row['tool']} | {row['method']} | {params_text} | {row.get('bytes', '–')} | – | – | – | "
                         f"{row.get('wall_s', '–')} | {row.get('cpu_s', '–')} | **failed**: {row['error']} |")
            continue
        lines.append(f"| {row['tool']} | {row['method']} | {params_text} | {row['bytes']:,} | {row['accuracy']:.4f} | "
                     f"{row['drop_points']} | {row.get('p50_x_dense', float('nan')):.3f} | {row.get('wall_s', '–')} | "
                     f"{row.get('cpu_s', '–')} | {row.get('user_writes', USER_CODE.get(row['tool'], ''))} |")
    return "\n".join(lines + cpu_summary(result["rows"])) + "\n"


def cpu_summary(rows: list[dict[str, Any]], max_drop: float = 0.5) -> list[str]:
    """The CPU-time comparison with AIMET at equal accuracy loss, with its boundaries stated."""
    def ok(row: dict[str, Any]) -> bool:
        return row.get("drop_points") is not None and row["drop_points"] <= max_drop

    aimet = [r for r in rows if r["tool"] == "AIMET" and "head out" in r["method"] and ok(r)]
    ours = [r for r in rows if r["tool"] == "edgecompress" and "in-process" in r["method"] and ok(r)]
    builds = [r for r in rows if r["tool"] == "edgecompress" and r["method"].endswith("[compressed]")]
    if not aimet or not ours:
        return ["", "CPU comparison: needs AIMET head-out and edgecompress in-process rows within "
                f"{max_drop} points (not in this run)."]
    first_a = [r["cpu_s"] for r in aimet if not r.get("reused_table")]
    more_a = [r["cpu_s"] for r in aimet if r.get("reused_table")]
    first_o = [r["cpu_s"] for r in ours if r.get("table_cache") != "hit"]
    more_o = [r["cpu_s"] for r in ours if r.get("table_cache") == "hit"]
    best_a = min(aimet, key=lambda r: r["linear_params"])
    best_o = min(ours, key=lambda r: r["linear_params"])
    lines = ["", f"## CPU time at equal accuracy loss (≤ {max_drop} test points), same run", "",
             "Boundary: the compression call alone (AIMET `ModelCompressor.compress_model`; edgecompress "
             "`model_spectra` + `budget_compress`), one process each, same state_dict, head left dense, the same "
             "5,000 validation samples as the evaluation; imports, data loading, export and the test-set "
             "evaluation excluded for both. CPU seconds = user + system of that call.", "",
             "| | AIMET greedy weight SVD | edgecompress budget search | AIMET / edgecompress |", "|---|---:|---:|---:|",
             f"| Linear params of the smallest model within {max_drop} pt | {best_a['linear_params']:,} "
             f"({DENSE_PARAMS / best_a['linear_params']:.1f}x) | {best_o['linear_params']:,} "
             f"({DENSE_PARAMS / best_o['linear_params']:.1f}x) | {best_a['linear_params'] / best_o['linear_params']:.2f}x "
             "the reduction |"]
    if first_a and first_o:
        lines.append(f"| first target (per-layer table measured + search), CPU s | {first_a[0]} | {first_o[0]} | "
                     f"**{first_a[0] / first_o[0]:.1f}x** |")
    if more_a and more_o:
        lines.append(f"| a further target (table reused from disk), CPU s | {min(more_a)}–{max(more_a)} | "
                     f"{min(more_o)}–{max(more_o)} | **{min(more_a) / max(more_o):.1f}–{max(more_a) / min(more_o):.1f}x** |")
    for row in ours:
        if row.get("phases_cpu_s"):
            phases = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in row["phases_cpu_s"].items())
            lines.append(f"\nedgecompress {row['method'].split(' head')[0].split('compress ')[-1]} "
                         f"(table {row.get('table_cache')}): {phases} CPU s, {row.get('candidates_evaluated')} "
                         "candidates evaluated.")
    whole_a = next((r.get("process_cpu_s") for r in aimet), None)
    if builds and whole_a:
        lines.append(f"\nWhole processes (not like for like): each `edgecompress build` above "
                     f"({', '.join(str(r['cpu_s']) for r in builds)} CPU s) includes importing torch and the ONNX "
                     "exporter, loading the .pt2, the search, exporting dense and compressed ONNX, verifying them in "
                     "onnxruntime, int8 and int4 files with their verification and the validation evaluation; the "
                     f"AIMET worker process ({whole_a} CPU s) covers its imports, the head-in target and the head-out "
                     "targets (a table for each head setting) and an ONNX export per target.")
    return lines


def write_results(out: Path, result: dict[str, Any], render: Any) -> None:
    """``out`` (JSON, with the command, load after and provenance added) and its Markdown beside it; prints it."""
    from edgecompress import provenance

    result = {"command": " ".join(["python", *sys.argv]), **result, "load_after": uptime(),
              "provenance": provenance.collect()}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(render(result))
    print(render(result))


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip().split("load average:")[-1].strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="result JSON (a .md is written beside it)")
    parser.add_argument("--mnist-dir", type=Path, default=MNIST)
    parser.add_argument("--envs", type=Path, default=ENVS, help="folder of the peer venvs (nncf, tensorly, aimet)")
    parser.add_argument("--peers", default="edgecompress,hand-written,nncf,tensorly,aimet")
    parser.add_argument("--aimet-targets", default="0.1,0.077,0.055", help="AIMET target_comp_ratio values")
    parser.add_argument("--tensorly-methods", default="cp;cp:n_iter_max=10;tucker;blocktt",
                        help="tensorly-torch factorizations, ';'-separated, each in its own capped process")
    parser.add_argument("--tensorly-cap", type=float, default=180, help="CPU seconds per tensorly factorization")
    parser.add_argument("--search-drops", default="0.5,0.4",
                        help="accuracy drops for edgecompress's in-process search rows (the first measures the table)")
    parser.add_argument("--runs", type=int, default=300, help="interleaved latency rounds")
    parser.add_argument("--stub-torchvision", type=Path, metavar="ENV", help="write the torchvision stub into ENV and exit")
    args = parser.parse_args()
    if args.stub_torchvision:
        print(stub_torchvision(args.stub_torchvision))
        return
    if args.out is None:
        parser.error("--out is required")

    peers = args.peers.split(",")
    load_before = uptime()
    with tempfile.TemporaryDirectory(prefix="peers-") as tmp:
        work = Path(tmp)
        pt2 = prepare(work, args.mnist_dir)
        rows: list[dict[str, Any]] = []
        os.environ["EDGECOMPRESS_TABLE_CACHE"] = str(work / "cli-table-cache")  # first build measures, second reuses
        if "edgecompress" in peers:
            rows += edgecompress_rows(pt2, work, args.mnist_dir, "drop-0.5", ["--max-accuracy-drop", "0.5"])
            rows += edgecompress_rows(pt2, work, args.mnist_dir, "drop-0.5-c0",
                                      ["--max-accuracy-drop", "0.5", "--confidence", "0"])
        if "edgecompress" in peers:  # the compression call alone, in-process, AIMET's boundaries (see the worker)
            rows += worker("edgecompress", Path(sys.executable), "edgecompress_search.py", [args.search_drops, "0"],
                           work, env={**os.environ, "PYTHONPATH": str(REPO)})
        if "hand-written" in peers:
            rows += worker("hand-written", Path(sys.executable), "plain_svd.py", ["29"], work)
        if "nncf" in peers:
            low_rank = next((r["file"] for r in rows if r.get("file", "").endswith(".onnx") and r["tool"] == "edgecompress"
                             and "[compressed]" in r["method"]), str(work / "dense.onnx"))
            low_rank_params = next((r["linear_params"] for r in rows if r.get("file") == low_rank), DENSE_PARAMS)
            for row in worker("NNCF", args.envs / "nncf" / "bin" / "python", "nncf_worker.py",
                              [str(work / "dense.onnx"), low_rank], work):
                row.setdefault("linear_params", DENSE_PARAMS if row["method"].endswith("on dense") else low_rank_params)
                rows.append(row)
        if "tensorly" in peers:
            for method in args.tensorly_methods.split(";"):
                rows += worker("tensorly", args.envs / "tensorly" / "bin" / "python", "tensorly_worker.py",
                               ["0.065", method], work, label=f"tensorly-torch {method} rank=0.065",
                               cpu_cap=args.tensorly_cap)
        if "aimet" in peers:
            rows += worker("AIMET", args.envs / "aimet" / "bin" / "python", "aimet_worker.py", [args.aimet_targets], work)
        dense = measure(rows, work, args.runs)
    for row in rows:
        if row.get("file"):
            row["file"] = Path(row["file"]).name
    write_results(args.out, {"load_before": load_before, "dense": dense, "rows": rows}, markdown)


if __name__ == "__main__":
    main()
