"""Large models (issue 15): build time, peak memory and truncation error of the rank-aware SVD.

Cases (synthetic MLPs, seeded weights with a decaying spectrum, saved as pickled modules):

* ``llm``: 4096 -> 11008 -> 4096 -> 10 (an LLM feed-forward block plus a small head), uniform rank
  256. Per-layer truncation error of the build vs the exact optimum, which comes from the float64
  eigenvalues of ``W W^T`` (the exact SVD of these layers took > 10 minutes each and is not run;
  the optimum is cached in the work folder).
* ``mlp4096``: 784 -> 4096 -> 4096 -> 4096 -> 10, uniform rank 64: ``--svd exact`` (the old path)
  and ``--svd auto`` side by side in one run.
* ``big``: 784 -> 8192 x 10 -> 10 (~611 M parameters, 2.44 GB of float32 weights, external data),
  every hidden layer compressed (uniform rank 256), verified, then ``edgecompress bench`` on the
  result. Needs ~6 GB of free memory: run it alone (``--cases big``).
* ``reference``: the reference MNIST MLP (trained, cached), uniform rank 32 and energy 0.9, built by
  this tree and by ``--baseline-repo`` (the code before the change): ranks, accuracy and the
  SHA-256 of the compressed ONNX must match (the exact path is used at these sizes).

Every build runs as a child process with one thread (``--threads 1``); wall time, CPU time and peak
RSS (``getrusage`` of the child) are recorded with the load average before and after.

Example:
    python benchmarks/large_models.py --cases llm,mlp4096,reference \\
        --out benchmarks/results/large-models_cpu-2core.json
    python benchmarks/large_models.py --cases big --out benchmarks/results/large-models-big_cpu-2core.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from edgecompress import provenance  # noqa: E402
from edgecompress.models import mlp  # noqa: E402

CASES: dict[str, dict[str, Any]] = {
    "llm": {"sizes": (4096, 11008, 4096, 10), "rank": 256, "modes": ("auto",), "optimum": True},
    "mlp4096": {"sizes": (784, 4096, 4096, 4096, 10), "rank": 64, "modes": ("exact", "auto"), "optimum": False},
    "small": {"sizes": (2048, 2048, 2048, 10), "rank": 64, "modes": ("exact", "auto"), "optimum": True},  # smoke
    "big": {"sizes": (784,) + (8192,) * 10 + (10,), "rank": 256, "modes": ("auto",), "optimum": False, "bench": True},
}
TARGETS = {"llm": {"wall_s": 60, "error_vs_optimum": 1.02}, "mlp4096": {"wall_s": 15},
           "big": {"wall_s": 900, "peak_rss_gb": 6.0}}
REFERENCE_BUILDS = {"uniform-32": ["--policy", "uniform", "--rank", "32"],
                    "energy-0.9": ["--policy", "energy", "--energy", "0.9"]}


def synthetic_mlp(sizes: tuple[int, ...], seed: int = 0) -> nn.Sequential:
    """An MLP whose weights are ``diag(a) G diag(b)`` (G Gaussian, a_i = i^-0.5, b_j = j^-0.3): a
    slowly decaying spectrum like trained layers', scaled to ||W||_F^2 = out (Gaussian-init size)."""
    model = mlp(sizes)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in (m for m in model if isinstance(m, nn.Linear)):
            out, inp = layer.weight.shape
            rows = torch.arange(1, out + 1, dtype=torch.float32) ** -0.5
            cols = torch.arange(1, inp + 1, dtype=torch.float32) ** -0.3
            weight = layer.weight
            weight.normal_(generator=generator).mul_(rows[:, None]).mul_(cols[None, :])
            weight.mul_((out / float(weight.double().square().sum())) ** 0.5)
            layer.bias.normal_(std=0.01, generator=generator)
    return model.eval()


def model_file(case: str, workdir: Path) -> Path:
    """The case's model as a pickled module in ``workdir`` (made once, reused)."""
    path = workdir / f"{case}.pt"
    if not path.is_file():
        workdir.mkdir(parents=True, exist_ok=True)
        torch.save(synthetic_mlp(CASES[case]["sizes"]), path.with_suffix(".tmp"))
        os.replace(path.with_suffix(".tmp"), path)
    return path


def load_average() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def measured_child(command: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run a command; wall time, CPU seconds and peak RSS of that child alone (``os.wait4``)."""
    import tempfile

    load_before = load_average()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        child = subprocess.Popen(command, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    return {"command": " ".join(command[1:]), "exit_code": os.waitstatus_to_exitcode(status), "wall_s": round(wall, 2),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 2), "peak_rss_gb": round(usage.ru_maxrss / 1024 ** 2, 3),
            "load_before": load_before, "load_after": load_average(), "stderr_tail": stderr[-600:], "stdout": stdout}


def edgecompress(*args: str) -> list[str]:
    return [sys.executable, "-m", "edgecompress", *args]


def build_case(case: str, mode: str, model: Path, workdir: Path) -> dict[str, Any]:
    spec = CASES[case]
    out = workdir / f"out-{case}-{mode}"
    shutil.rmtree(out, ignore_errors=True)
    command = edgecompress("build", str(model), "--allow-pickle", "--input-shape", f"1x{spec['sizes'][0]}",
                           "--policy", "uniform", "--rank", str(spec["rank"]), "--svd", mode, "--threads", "1",
                           "--out", str(out), "--json", str(workdir / f"{case}-{mode}.json"), "--quiet")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = measured_child(command, env)
    result.pop("stdout")
    if result["exit_code"] == 0:
        record = json.loads((workdir / f"{case}-{mode}.json").read_text())
        result["layers"] = [{"name": layer["name"], "shape": [layer["out_features"], layer["in_features"]],
                             "rank": layer["rank"], "svd": layer.get("svd")}
                            for layer in record["layers"] if layer["factorized"]]
        result["timings_s"] = record["timings_s"]
        result["artifacts"] = {role: {"bytes": a["bytes"], "simplified": a.get("simplified"),
                                      "simplify_note": a.get("simplify_note"),
                                      "verified": all(v["passed"] for v in a["verification"]),
                                      "max_abs_error": max(v["max_abs_error"] for v in a["verification"])}
                               for role, a in record["artifacts"].items()}
        if spec.get("bench"):
            result["bench"] = bench(out, record, env)
    shutil.rmtree(out, ignore_errors=True)
    return result


def bench(out: Path, record: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    """``edgecompress bench`` of dense vs compressed (batch 1, one thread), in a child process."""
    paths = [str(out / record["artifacts"][role]["path"]) for role in ("dense", "compressed")]
    result = measured_child(edgecompress("bench", *paths, "--runs", "20", "--warmup", "2", "--no-memory",
                                         "--json", "-"), env)
    if result["exit_code"] == 0:
        data = json.loads(result["stdout"])
        result["results"] = [{"model": r["model"], "batch": r["batch"], "p50_ms": r["latency_ms"]["p50"],
                              "p50_ratio": r.get("ratios", {}).get("p50")} for r in data.get("results", [])]
    result.pop("stdout")
    return result


def exact_optimum(case: str, model: Path, workdir: Path) -> dict[str, float]:
    """Per layer, the optimal relative error at the case's rank, ``sqrt(sum_{i>r} s_i^2 / sum s_i^2)``,
    from the float64 eigenvalues of ``W W^T`` (smaller side); cached in ``workdir``."""
    cache = workdir / f"{case}-optimum-r{CASES[case]['rank']}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    rank = CASES[case]["rank"]
    torch.set_num_threads(1)
    net = torch.load(model, weights_only=False)
    optimum: dict[str, float] = {}
    names = [name for name, m in net.named_modules() if isinstance(m, nn.Linear)][:-1]  # the head stays dense
    for name in names:
        weight = net.get_submodule(name).weight.detach().double()
        gram = weight @ weight.T if weight.shape[0] <= weight.shape[1] else weight.T @ weight
        energies = torch.linalg.eigvalsh(gram).flip(0).clamp_min(0)
        optimum[name] = round(float(energies[rank:].sum() / energies.sum()) ** 0.5, 6)
        del weight, gram
    cache.write_text(json.dumps(optimum, indent=2))
    return optimum


def reference_case(workdir: Path, baseline: Path, mnist: Path) -> dict[str, Any]:
    """The reference MNIST MLP built by this tree and by the baseline tree: same ranks, accuracy, bytes."""
    weights = workdir / "reference-mnist-mlp.pt"  # the trained reference (cached by edgecompress.models) as a state_dict
    if not weights.is_file():
        from edgecompress.models import trained_reference_mlp

        torch.save(trained_reference_mlp(mnist).state_dict(), weights)
    rows = {}
    for label, options in REFERENCE_BUILDS.items():
        row: dict[str, Any] = {}
        for tree, root in (("baseline", baseline), ("this", ROOT)):
            out = workdir / f"reference-{label}-{tree}"
            shutil.rmtree(out, ignore_errors=True)
            env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
            result = measured_child(edgecompress("build", str(weights), "--factory", "edgecompress.models:reference_mnist_mlp",
                                                 *options, "--eval", str(mnist), "--out", str(out), "--json", "-",
                                                 "--quiet"), env)
            record = json.loads(result.pop("stdout")) if result["exit_code"] == 0 else None
            if record:
                from edgecompress.onnxinfo import sha256

                result.update(ranks=[layer["rank"] for layer in record["layers"]],
                              accuracy=record["artifacts"]["compressed"]["eval"]["accuracy"],
                              onnx_sha256=sha256(out / record["artifacts"]["compressed"]["path"]))
            shutil.rmtree(out, ignore_errors=True)
            row[tree] = result
        row["same"] = {key: row["this"].get(key) == row["baseline"].get(key) and row["this"].get(key) is not None
                       for key in ("ranks", "accuracy", "onnx_sha256")}
        rows[label] = row
    return rows


def summarize(case: str, runs: dict[str, Any], optimum: dict[str, float] | None) -> dict[str, Any]:
    """Target checks of one case."""
    auto = runs.get("auto", {})
    summary: dict[str, Any] = {"targets": TARGETS.get(case, {}), "wall_s": auto.get("wall_s"),
                               "peak_rss_gb": auto.get("peak_rss_gb")}
    if optimum and auto.get("layers"):
        summary["error_vs_optimum"] = {layer["name"]: round(layer["svd"]["relative_error"] / optimum[layer["name"]], 4)
                                       for layer in auto["layers"] if optimum.get(layer["name"])}
    if "exact" in runs and runs["exact"].get("wall_s"):
        summary["speedup_wall"] = round(runs["exact"]["wall_s"] / auto["wall_s"], 2) if auto.get("wall_s") else None
        exact_layers = {layer["name"]: layer["svd"]["relative_error"] for layer in runs["exact"].get("layers", [])}
        summary["error_vs_exact"] = {layer["name"]: round(layer["svd"]["relative_error"] / exact_layers[layer["name"]], 4)
                                     for layer in auto.get("layers", []) if exact_layers.get(layer["name"])}
    return summary


def markdown(result: dict[str, Any]) -> str:
    """The results as Markdown tables."""
    lines = ["# Large models: rank-aware SVD (issue 15)", "", f"Command: `{result['command']}`", "",
             f"CPU: {result['provenance'].get('cpu', 'n/a')}; one thread per build (`--threads 1`), so CPU seconds "
             "approximate the wall time on an idle machine; the 1-minute load average before → after each run is "
             "in the table (2 cores, shared). Peak RSS is the build process's own (`wait4`).", "",
             "| case | svd | exit | wall s | CPU s | peak RSS GB | load before → after | SVD path (k) | rel. error per layer | target |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for case, data in result["cases"].items():
        if case == "reference":
            continue
        for mode, run in data["runs"].items():
            layers = run.get("layers", [])
            paths = ", ".join(sorted({f"{l['svd']['path']}" + (f" k={l['svd']['k']}" if 'k' in l['svd'] else "") for l in layers}))
            errors = ", ".join(f"{l['svd']['relative_error']:.4f}" for l in layers)
            lines.append(f"| {case} {'×'.join(map(str, CASES[case]['sizes']))} r={CASES[case]['rank']} | {mode} | "
                         f"{run['exit_code']} | {run['wall_s']} | {run['cpu_s']} | {run['peak_rss_gb']} | "
                         f"{run['load_before'][0]:.1f} → {run['load_after'][0]:.1f} | {paths} | {errors} | "
                         f"{json.dumps(TARGETS.get(case, {}))} |")
    for case, data in result["cases"].items():
        if case == "reference":
            lines += ["", "## Reference MNIST MLP: this tree vs the baseline tree", "",
                      "| build | ranks (this) | accuracy this / baseline | same ranks | same accuracy | byte-identical ONNX |",
                      "|---|---|---|---|---|---|"]
            for label, row in data.items():
                lines.append(f"| {label} | {row['this'].get('ranks')} | {row['this'].get('accuracy')} / "
                             f"{row['baseline'].get('accuracy')} | {row['same']['ranks']} | {row['same']['accuracy']} | "
                             f"{row['same']['onnx_sha256']} |")
            continue
        summary = data["summary"]
        lines += ["", f"## {case}", "", "```json", json.dumps(summary, indent=2), "```"]
        for run in data["runs"].values():
            if run.get("timings_s"):
                lines.append(f"stage timings ({run['command'].split('--svd ')[1].split()[0]}): "
                             + ", ".join(f"{k} {v:.1f} s" for k, v in run["timings_s"].items()))
            if run.get("bench"):
                lines.append(f"bench: exit {run['bench']['exit_code']}, wall {run['bench']['wall_s']} s, "
                             f"peak RSS {run['bench']['peak_rss_gb']} GB; batch-1 p50 latency: "
                             + ", ".join(f"{r['model']} {r['p50_ms']:.2f} ms (x{r['p50_ratio']})"
                                         for r in run["bench"].get("results", [])))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="llm,mlp4096,reference", help="comma-separated: llm, mlp4096, big, reference, small (a quick smoke case)")
    parser.add_argument("--out", type=Path, required=True, help="results JSON (a .md is written beside it)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/edgecompress-large-models"),
                        help="models, outputs and the cached exact optima (GBs for 'big')")
    parser.add_argument("--baseline-repo", type=Path, default=ROOT.parent.parent / "main",
                        help="the tree before the change, for the reference case")
    parser.add_argument("--mnist", type=Path, default=Path("/work/shared/datasets/mnist"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    result: dict[str, Any] = {"command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
                              "provenance": provenance.collect(), "cases": {}}
    for case in args.cases.split(","):
        print(f"[{time.strftime('%H:%M:%S')}] {case}", flush=True)
        if case == "reference":
            result["cases"][case] = reference_case(args.workdir, args.baseline_repo, args.mnist)
            continue
        model = model_file(case, args.workdir)
        runs = {mode: build_case(case, mode, model, args.workdir) for mode in CASES[case]["modes"]}
        optimum = exact_optimum(case, model, args.workdir) if CASES[case]["optimum"] else None
        result["cases"][case] = {"runs": runs, "optimum": optimum, "summary": summarize(case, runs, optimum)}
        print(json.dumps(result["cases"][case]["summary"]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
