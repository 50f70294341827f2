"""Benchmark every rank policy and the usual alternatives at equal size; write JSON + Markdown + PNG.

    python benchmarks/run.py --dataset mnist                  # the reference MNIST MLP (long)
    python benchmarks/run.py --dataset digits --methods uniform,energy,magnitude
    python benchmarks/run.py --smoke --out /tmp/smoke          # tiny settings on digits (CI)

Results land in ``--out`` (default ``benchmarks/results``) as
``<model>_cpu-<n>core.{json,md,png}``; trained models are cached in ~/.cache/edgecompress and ONNX
files live in a temporary folder only.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click
import torch

import measure
import plots
import report
from methods import METHODS, Context, Settings, resolve
from setups import MNIST_DIR, Setup, setups, smoke, trained_model

from edgecompress.bench import to_json_text

RESULTS = Path(__file__).resolve().parent / "results"
SMOKE = Settings(taus=(0.9,), sweep_ranks=(8,), match_anchors=("energy",), budget_drops=(1.0,), calib_samples=512,
                 convex_inputs=512, convex_iter=30, svd_prune_energies=(0.2,), svd_epochs=1, svd_finetune_epochs=1,
                 bench_runs=20, bench_warmup=3)


def settings_for(setup: Setup, is_smoke: bool) -> Settings:
    """Smoke, the digits setup (small layers: more epochs, exact convex solves), or full size."""
    if is_smoke:
        return SMOKE
    if setup.name == "digits":
        return Settings(sweep_ranks=(4, 8, 16, 32), calib_samples=2000, convex_inputs=2000,
                        svd_epochs=20, svd_finetune_epochs=10)
    return Settings(calib_samples=5000)


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def log(message: str) -> None:
    click.echo(message, err=True)


def build_all(ctx: Context, names: list[str], folder: Path) -> tuple[dict[str, str], dict[str, str]]:
    """Run each method and measure its candidates as they come; (missing, failed) by method name."""
    missing: dict[str, str] = {}
    failed: dict[str, str] = {}
    for method in resolve(names):
        reason = method.missing()
        if reason:
            missing[method.name] = reason
            log(f"[{ctx.setup.name}] {method.name}: not available ({reason})")
            continue
        try:
            for candidate in method.build(ctx):
                candidate.artifact = measure.export(candidate, folder, ctx.setup.input_shape, ctx.val)
                ctx.candidates.append(candidate)
                log(f"[{ctx.setup.name}] {candidate.label}: {candidate.linear_params:,} Linear params, "
                    f"val {100 * candidate.artifact.val_accuracy:.2f}%, "
                    f"{candidate.seconds + candidate.artifact.seconds:.1f} s")
        except Exception as exc:  # one broken method must not hide the others' results
            failed[method.name] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            log(f"[{ctx.setup.name}] {method.name} FAILED: {failed[method.name]}")
            traceback.print_exc()
    return missing, failed


def notes(missing: dict[str, str], failed: dict[str, str], rows: list[dict[str, Any]]) -> list[str]:
    """The caveats every results page carries."""
    found = [
        "Magnitude pruning zeroes weights inside dense matrices: its ONNX file is as large as dense and runs at "
        "dense speed; the CSR figure is what a sparse format (float32 values, int32 indices) would store.",
        "int8 is onnxruntime `quantize_dynamic` (weights int8 per-tensor, activations quantized at run time); "
        "\"low rank + int8\" quantizes the smallest post-hoc low-rank row within 1 point of dense on validation.",
        "Matched methods (uniform, data, magnitude) are sized to each anchor (energy τ, entropy, DDLR convex, SVD "
        "training, budget) and to the uniform-rank sweep; the data-driven ε is bisected to the closest size.",
        "Claims: differences are test-accuracy points, method minus baseline, with a 95% interval from the paired "
        "(McNemar) variance; \"holds\" needs more significant wins than losses and a positive mean.",
    ]
    found += [f"Not measured: **{name}** — {reason}." for name, reason in missing.items()]
    found += [f"FAILED: **{name}** — {message} (its rows are missing)." for name, message in failed.items()]
    found += [row["meta"]["note"] for row in rows if row["meta"].get("note")]
    return list(dict.fromkeys(found))  # one solve can annotate several rows


def run_setup(setup: Setup, settings: Settings, names: list[str], out: Path, is_smoke: bool) -> bool:
    """Benchmark one setup and write its files; False when a method failed."""
    log(f"[{setup.name}] training or loading {setup.model_name} ({setup.epochs} epochs, cached)")
    ctx = Context(setup, settings, trained_model(setup), setup.split("train"), setup.split("val"))
    test = setup.split("test")
    assert test.y is not None
    with tempfile.TemporaryDirectory(prefix="edgecompress-benchmarks-") as tmp:
        missing, failed = build_all(ctx, names, Path(tmp))
        log(f"[{setup.name}] benchmarking {len(ctx.candidates)} models (memory, accuracy; then each interleaved with dense, batch 1, 1 thread)")
        measured = measure.bench(ctx.candidates, test, settings, progress=sys.stderr.isatty())
        rows = measure.rows(ctx.candidates, measured, ctx.dense_params)
        predictions = {c.label: measure.test_predictions(c.artifact.path, test) for c in ctx.candidates
                       if c.artifact is not None}
    stem = f"{setup.model_name}_cpu-{cores()}core" + ("-smoke" if is_smoke else "")
    record: dict[str, Any] = {
        "schema": "edgecompress.benchmarks/1",
        "smoke": is_smoke,
        "setup": {**asdict(setup), "model_name": setup.model_name},
        "settings": asdict(settings),
        "cores": cores(),
        "command": " ".join(["python benchmarks/run.py", *sys.argv[1:]]),
        "provenance": measured.overview["provenance"],
        "val_samples": len(ctx.val),
        "test_samples": len(test),
        "bench": {**measured.overview["config"], "runs": settings.bench_runs, "warmup": settings.bench_warmup,
                  "latency": "each model interleaved with dense alone", "aa_ratio": measured.aa_ratio},
        "rows": rows,
        "claims": report.claims(rows, predictions, test.y),
        "missing": missing,
        "failed": failed,
        "notes": notes(missing, failed, rows),
    }
    out.mkdir(parents=True, exist_ok=True)
    plot = plots.plot(rows, out / f"{stem}.png", f"{setup.model_name}: test accuracy vs size")
    (out / f"{stem}.json").write_text(to_json_text(record))
    (out / f"{stem}.md").write_text(report.markdown(record, plot.name))
    log(f"[{setup.name}] wrote {out / stem}.{{json,md,png}}")
    return not failed


@click.command(context_settings={"show_default": True})
@click.option("--dataset", type=click.Choice(["digits", "mnist", "fashion-mnist", "all"]), default="digits",
              help="Which setup(s); 'all' skips those whose data is absent.")
@click.option("--smoke", "smoke_run", is_flag=True, help="Tiny settings on digits (CI): a few minutes, results not for reading.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Output folder [default: benchmarks/results; a smoke run needs --out].")
@click.option("--methods", default="all", help=f"Comma-separated subset of: {', '.join(METHODS)}.")
@click.option("--mnist-dir", type=click.Path(path_type=Path), default=MNIST_DIR, help="MNIST IDX folder.")
def main(dataset: str, smoke_run: bool, out: Path | None, methods: str, mnist_dir: Path) -> None:
    """Compare every compression method at equal size on the chosen dataset(s)."""
    names = list(METHODS) if methods == "all" else [m.strip() for m in methods.split(",") if m.strip()]
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise click.BadParameter(f"unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}",
                                 param_hint="--methods")
    if out is None:
        if smoke_run:
            raise click.BadParameter("a smoke run must not write into benchmarks/results; give --out",
                                     param_hint="--out")
        out = RESULTS
    all_setups = setups(mnist_dir)
    chosen = ["digits"] if smoke_run else list(all_setups) if dataset == "all" else [dataset]
    torch.set_num_threads(1)  # training and SVDs single-threaded: the machine is shared
    ok = True
    for name in chosen:
        setup = smoke(all_setups[name]) if smoke_run else all_setups[name]
        reason = setup.missing()
        if reason:
            if dataset != "all":
                raise click.UsageError(f"{name}: {reason}")
            log(f"[{name}] skipped: {reason}")
            continue
        started = time.perf_counter()
        ok &= run_setup(setup, settings_for(setup, smoke_run), names, out, smoke_run)
        log(f"[{name}] done in {time.perf_counter() - started:.0f} s")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
