"""Benchmark pages from sweep configs: every rank policy and the usual alternatives, side by side.

    python benchmarks/run.py --dataset digits                  # benchmarks/sweeps/digits.toml
    python benchmarks/run.py --dataset mnist --workers 2       # the reference MNIST MLP (long)
    python benchmarks/run.py --config my-sweep.toml            # any config whose [sweep] name is a setup
    python benchmarks/run.py --smoke --out /tmp/smoke          # benchmarks/sweeps/smoke.toml (CI)
    python benchmarks/run.py --dataset minilm --workers 1      # all-MiniLM-L6-v2 embedding quality (long)

What is measured is the checked-in sweep config beside the pages (benchmarks/sweeps/<dataset>.toml):
1. ``edgecompress sweep`` builds and benchmarks every entry (Ray workers, resumable: a re-run skips
   finished entries; its folder is the config's ``[sweep] out``, under build/, not in git);
2. the baseline step (baselines.py) makes what is not a build — magnitude pruning matched to the
   entries' sizes, dense int8, truncation and fine-tuning at SVD training's ranks — and measures it
   the same way;
3. the page (JSON + Markdown + PNG) is rendered from the sweep's results and the baselines:
   ``<model>_cpu-<n>core.{json,md,png}`` in ``--out`` (default ``benchmarks/results``).
The dense model is trained once and cached in ~/.cache/edgecompress (``EDGECOMPRESS_CACHE``); the
entries load that file (it replaces the config's ``model``, which names the default cache path).

Embedding pages (``[sweep] name`` in EMBEDDING_PAGES: minilm) have no labels and no baselines: a
prepare step (minilm_setup.py) writes the sentence files and the model link the config names into
``<sweep out>/data``, the sweep runs, and embedding_page.py renders ``<name>-sweep_cpu-<n>core.{json,md,png}``
(cosine with the dense embeddings vs the Linear-parameter ratio, per policy).
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click
import torch

import baselines
import embedding_page
import measure
import minilm_setup
import page
import plots
import report
from setups import MNIST_DIR, Setup, model_file, setups, smoke, trained_model

from edgecompress import provenance
from edgecompress.bench import to_json_text
from edgecompress.errors import EdgeCompressError
from edgecompress.sweep import SweepConfig, load_sweep, sweep
from edgecompress.sweep.entries import DATA_KEYS

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
SWEEPS = HERE / "sweeps"
SMOKE = "digits-smoke"  # [sweep] name of sweeps/smoke.toml: the digits setup trained for 5 epochs
DATASETS = ("digits", "mnist", "fashion-mnist", "minilm")
EMBEDDING_PAGES = {"minilm": minilm_setup}  # [sweep] name -> its prepare module (missing(), prepare(folder), TITLE)
PREPARED = "data"  # the prepare step's folder inside the sweep's out
MNIST_IN_CONFIG = "../../../shared/datasets/mnist"  # how sweeps/mnist.toml names setups.MNIST_DIR


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def log(message: str) -> None:
    click.echo(message, err=True)


def setup_of(config: SweepConfig, mnist_dir: Path) -> Setup:
    """The benchmark setup a page config measures, by its ``[sweep] name``."""
    known = setups(mnist_dir)
    if config.name == SMOKE:
        return smoke(known["digits"])
    if config.name not in known:
        raise click.UsageError(f"{config.path}: [sweep] name {config.name!r} is not a benchmark setup "
                               f"({', '.join([*known, SMOKE])})")
    return known[config.name]


def with_model(config: SweepConfig, model: Path, mnist_dir: Path) -> SweepConfig:
    """The config with every entry loading ``model`` (the setup's cached dense state_dict) and the
    MNIST folder the configs name (``MNIST_IN_CONFIG``) replaced by ``mnist_dir``."""
    def entry_options(options: dict[str, Any]) -> dict[str, Any]:
        moved = {k: str(mnist_dir) + v[len(MNIST_IN_CONFIG):] for k, v in options.items()
                 if k in DATA_KEYS and isinstance(v, str) and v.startswith(MNIST_IN_CONFIG)}
        return {**options, **moved, "model": str(model)}

    entries = tuple(dataclasses.replace(e, options=entry_options(e.options)) for e in config.entries)
    unbenched = [e.label for e in entries if not e.options.get("bench")]
    if unbenched:
        raise click.UsageError(f"{config.path}: a page's entries need bench = true (latency, memory); "
                               f"missing in {', '.join(unbenched)}")
    return dataclasses.replace(config, entries=entries)


def progress(row: dict[str, Any], counts: Any) -> None:
    what = "skipped (done before)" if row.get("skipped") else row["status"]
    error = f": {row.get('error')}" if row.get("status") != "ok" else ""
    log(f"  [{counts.finished}/{counts.total}] {row['entry']}: {what}{error}")


def baseline_candidates(names: list[str], ctx: page.EntryRows, dense: torch.nn.Module, setup: Setup
                        ) -> list[baselines.Candidate]:
    """The chosen baselines' models (after the sweep: they copy its rows' sizes and ranks)."""
    found: list[baselines.Candidate] = []
    if "magnitude" in names:
        found += baselines.magnitude(dense, page.magnitude_targets(ctx.rows, ctx.dense_params))
    if "int8" in names:
        found += baselines.int8(dense)
    if "finetune" in names:
        found += baselines.truncate_and_finetune(dense, setup.split("train"), ctx.val,
                                                 page.svd_training_sources(ctx.rows))
    return found


def measure_baselines(candidates: list[baselines.Candidate], ctx: page.EntryRows, setup: Setup, runs: int,
                      warmup: int) -> None:
    """Export, verify and bench each baseline against the sweep's dense export; add its row."""
    assert ctx.dense is not None
    with tempfile.TemporaryDirectory(prefix="edgecompress-baselines-") as tmp:
        for candidate in candidates:
            artifact = measure.export(candidate, Path(tmp), setup.input_shape, ctx.val)
            result = measure.bench_against(ctx.dense, artifact.path, ctx.test, runs, warmup)
            meta = {k: v for k, v in candidate.meta.items() if k != "csr_bytes"}
            ctx.rows.append(measure.row(candidate.label, candidate.method, candidate.linear_params, ctx.dense_params,
                                        result, val_accuracy=artifact.val_accuracy, method_seconds=candidate.seconds,
                                        export_seconds=artifact.seconds, artifact=artifact.path.name, meta=meta,
                                        verification=artifact.verification, csr=candidate.meta.get("csr_bytes")))
            ctx.predictions[candidate.label] = measure.predictions(artifact.path, ctx.test)
            log(f"  baseline {candidate.label}: {candidate.linear_params:,} Linear params, "
                f"val {100 * artifact.val_accuracy:.2f}%")


def notes(record: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    """The caveats every results page carries."""
    found = [
        "Magnitude pruning zeroes weights inside dense matrices: its ONNX file is as large as dense and runs at "
        "dense speed; the CSR figure is what a sparse format (float32 values, int32 indices) would store.",
        "int8 is onnxruntime `quantize_dynamic` (weights int8 per-tensor, activations quantized at run time); "
        "\"+ int8\" rows are the int8 file of a sweep entry with `quantize = \"int8\"`.",
        f"Equal size: uniform-rank and data-ε rows are the config's entries closest in Linear parameters to each "
        f"anchor (energy τ, entropy, DDLR convex, SVD training, budget) and to each uniform rank, paired only within "
        f"±{100 * page.MATCH_TOLERANCE:.0f}% (the pairs list both sizes); magnitude pruning is cut to each of those "
        "sizes exactly.",
        "Claims: differences are test-accuracy points, method minus baseline, with a 95% interval from the paired "
        "(McNemar) variance; \"holds\" needs more significant wins than losses and a positive mean.",
        "ARSVD rows compress every Linear, the 10-class head too (the papers' setting; `compress_head = true`): "
        "energy τ < 0.95 cuts the head below 10 ranks, which is where its losses against uniform come from; with "
        "the head kept dense (the build's default) energy τ and entropy tie the matched uniform rank "
        "(benchmarks/results/arsvd-head_mlp_cpu-2core.md).",
    ]
    found += [f"FAILED entry **{e['entry']}** — {e.get('error')} (its rows are missing)."
              for e in record["sweep"]["failed"]]
    found += [f"Baseline not measured: **{name}** — {reason}." for name, reason in record["missing"].items()]
    found += [row["meta"]["note"] for row in rows if row["meta"].get("note")]
    return list(dict.fromkeys(found))


def run_page(config_path: Path, out: Path, *, workers: int | None, force: bool, names: list[str],
             mnist_dir: Path, is_smoke: bool) -> bool:
    """Sweep, baselines and page of one config; False when an entry or a baseline failed."""
    config = load_sweep(config_path)
    load_before = uptime()
    setup = setup_of(config, mnist_dir)
    reason = setup.missing()
    if reason:
        raise click.UsageError(f"{setup.name}: {reason}")
    log(f"[{setup.name}] training or loading {setup.model_name} ({setup.epochs} epochs, cached)")
    dense = trained_model(setup, mnist_dir=mnist_dir)
    config = with_model(config, model_file(setup, mnist_dir=mnist_dir), mnist_dir)
    runs = int(config.entries[0].options.get("bench_runs") or 100)
    warmup = 10  # edgecompress bench's default, as in the entries
    with tempfile.TemporaryDirectory(prefix="edgecompress-smoke-sweep-") as scratch:
        sweep_out = Path(scratch) if is_smoke else config.out
        log(f"[{setup.name}] sweep {config_path.name}: {len(config.entries)} entries -> {sweep_out}")
        result = sweep(config, out=sweep_out, workers=workers, force=force, progress=progress)
        if result["interrupted"]:
            log(f"[{setup.name}] the finished entries are kept in {sweep_out}")
            raise KeyboardInterrupt
        ctx = page.EntryRows(result, sweep_out, setup.split("val"), setup.split("test"))
        if ctx.dense is None:
            log(f"[{setup.name}] no entry finished: no page")
            return False
        page.match(ctx.rows, ctx.dense_params)
        missing = {}
        if "finetune" in names and not page.svd_training_sources(ctx.rows):
            missing["finetune"] = "no SVD-training entry to copy ranks from"
        log(f"[{setup.name}] baselines: {', '.join(names) or 'none'}")
        measure_baselines(baseline_candidates(names, ctx, dense, setup), ctx, setup, runs, warmup)
        aa_ratio = measure.noise_floor(ctx.dense, ctx.test, runs, warmup)
    assert ctx.test.y is not None
    failed = [e for e in result["entries"] if e.get("status") != "ok"]
    record: dict[str, Any] = {
        "schema": "edgecompress.benchmarks/2",
        "smoke": is_smoke,
        "setup": {**dataclasses.asdict(setup), "model_name": setup.model_name},
        "config": str(config_path.resolve().relative_to(HERE.parent)) if config_path.resolve().is_relative_to(
            HERE.parent) else str(config_path),
        "settings": {"bench_runs": runs, "bench_warmup": warmup, "baselines": names,
                     "match_tolerance": page.MATCH_TOLERANCE},
        "cores": cores(),
        "uptime": {"before": load_before, "after": uptime()},
        "command": " ".join(["python benchmarks/run.py", *sys.argv[1:]]),
        "provenance": provenance.collect(),
        "val_samples": len(ctx.val),
        "test_samples": len(ctx.test),
        "sweep": {"counts": result["counts"], "wall_s": result["wall_s"], "ray": result["ray"],
                  "failed": [{"entry": e["entry"], "error": e.get("error")} for e in failed]},
        "bench": {"runs": runs, "warmup": warmup, "aa_ratio": aa_ratio,
                  "latency": "each entry's models interleaved with its dense export; each baseline with dense alone"},
        "rows": ctx.rows,
        "claims": report.claims(ctx.rows, ctx.predictions, ctx.test.y),
        "missing": missing,
    }
    record["notes"] = notes(record, ctx.rows)
    stem = f"{setup.model_name}_cpu-{cores()}core" + ("-smoke" if is_smoke else "")
    out.mkdir(parents=True, exist_ok=True)
    plot = plots.plot(ctx.rows, out / f"{stem}.png", f"{setup.model_name}: test accuracy vs size")
    (out / f"{stem}.json").write_text(to_json_text(record))
    (out / f"{stem}.md").write_text(report.markdown(record, plot.name))
    log(f"[{setup.name}] wrote {out / stem}.{{json,md,png}}")
    return not failed


def run_embedding_page(config_path: Path, out: Path, *, workers: int | None, force: bool, setup: Any) -> bool:
    """Prepare step, sweep and page of an embedding config; False when an entry failed. ``setup``
    provides ``missing()``, ``prepare(folder)`` (-> the corpus record) and ``TITLE``."""
    config = load_sweep(config_path)
    reason = setup.missing()
    if reason:
        raise click.UsageError(f"{config.name}: {reason}")
    load_before = uptime()
    corpus = setup.prepare(config.out / PREPARED)
    log(f"[{config.name}] inputs in {config.out / PREPARED}: "
        + ", ".join(f"{k} {v['sentences']} ({v['sha256'][:12]})" for k, v in corpus["splits"].items()))
    log(f"[{config.name}] sweep {config_path.name}: {len(config.entries)} entries -> {config.out}")
    result = sweep(config, workers=workers, force=force, progress=progress)
    if result["interrupted"]:
        log(f"[{config.name}] the finished entries are kept in {config.out}")
        raise KeyboardInterrupt
    rows = embedding_page.rows(result, config.out)
    if not rows:
        log(f"[{config.name}] no entry finished: no page")
        return False
    failed = [{"entry": e["entry"], "error": e.get("error")} for e in result["entries"] if e.get("status") != "ok"]
    record: dict[str, Any] = {
        "schema": "edgecompress.benchmarks.embedding/1",
        "title": f"{setup.TITLE}: post-training embedding quality vs Linear-parameter ratio",
        "model": setup.TITLE,
        "config": str(config_path.resolve().relative_to(HERE.parent)) if config_path.resolve().is_relative_to(
            HERE.parent) else str(config_path),
        "command": " ".join(["python benchmarks/run.py", *sys.argv[1:]]),
        "cores": cores(),
        "uptime": {"before": load_before, "after": uptime()},
        "provenance": provenance.collect(),
        "corpus": corpus,
        "dense_linear_params": rows[0]["dense_linear_params"],
        "sweep": {"counts": result["counts"], "wall_s": result["wall_s"], "ray": result["ray"], "failed": failed},
        "rows": rows,
    }
    record["notes"] = [f"FAILED entry **{e['entry']}** — {e['error']} (no row)." for e in failed] + [
        f"{r['entry']}: sensitivity table {'reused from disk (measured by an earlier entry)' if r['table_cache'] == 'hit' else 'measured (then stored)'}; "
        "the cosine targets and the params targets measure different distortions, so each kind has its own table."
        for r in rows if r["table_cache"]]
    stem = f"{config.name}-sweep_cpu-{cores()}core"
    out.mkdir(parents=True, exist_ok=True)
    plot = plots.cosine_plot(rows, out / f"{stem}.png", f"{setup.TITLE}: mean cosine vs Linear-parameter ratio")
    (out / f"{stem}.json").write_text(to_json_text(record))
    (out / f"{stem}.md").write_text(embedding_page.markdown(record, plot.name))
    log(f"[{config.name}] wrote {out / stem}.{{json,md,png}}")
    return not failed


def page_paths(dataset: str, mnist_dir: Path) -> list[Path]:
    """The configs of ``--dataset``; with 'all', those whose data is here (the others are named, skipped)."""
    chosen = DATASETS if dataset == "all" else (dataset,)
    if dataset != "all":
        return [SWEEPS / f"{name}.toml" for name in chosen]
    available = setups(mnist_dir)
    paths = []
    for name in chosen:
        reason = EMBEDDING_PAGES[name].missing() if name in EMBEDDING_PAGES else available[name].missing()
        if reason:
            log(f"[{name}] skipped: {reason}")
        else:
            paths.append(SWEEPS / f"{name}.toml")
    return paths


def run_config(path: Path, out: Path, *, workers: int | None, force: bool, names: list[str], mnist_dir: Path,
               is_smoke: bool) -> bool:
    """One page: an embedding page by its [sweep] name, else a classification setup's."""
    name = load_sweep(path).name
    if name in EMBEDDING_PAGES:
        return run_embedding_page(path, out, workers=workers, force=force, setup=EMBEDDING_PAGES[name])
    return run_page(path, out, workers=workers, force=force, names=names, mnist_dir=mnist_dir, is_smoke=is_smoke)


@click.command(context_settings={"show_default": True})
@click.option("--dataset", type=click.Choice([*DATASETS, "all"]), default="digits",
              help="Run benchmarks/sweeps/<dataset>.toml; 'all' skips (and names) a setup whose data or model is absent.")
@click.option("--config", "configs", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A page's sweep config instead of --dataset (repeatable); its [sweep] name is the setup.")
@click.option("--smoke", "smoke_run", is_flag=True,
              help="benchmarks/sweeps/smoke.toml (digits, 5 epochs, a few entries): CI, results not for reading.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Output folder of the pages [default: benchmarks/results; a smoke run needs --out].")
@click.option("--workers", type=int, default=None, help="CPUs of the local Ray instance [default: all cores].")
@click.option("--force", is_flag=True, help="Rebuild every sweep entry (default: finished entries are reused).")
@click.option("--baselines", "baseline_names", default=",".join(baselines.BASELINES),
              help="Comma-separated baselines after the sweep (may be empty).")
@click.option("--mnist-dir", type=click.Path(path_type=Path), default=MNIST_DIR, help="MNIST IDX folder.")
def main(dataset: str, configs: tuple[Path, ...], smoke_run: bool, out: Path | None, workers: int | None, force: bool,
         baseline_names: str, mnist_dir: Path) -> None:
    """Render benchmark pages from their sweep configs (sweep, then the baseline step, then the page).

    \b
    Examples:
      python benchmarks/run.py --dataset digits --workers 2
      python benchmarks/run.py --dataset mnist --mnist-dir ../shared/datasets/mnist
      python benchmarks/run.py --smoke --out /tmp/smoke --baselines magnitude
      HF_HUB_OFFLINE=1 python benchmarks/run.py --dataset minilm --workers 1
    """
    names = [n.strip() for n in baseline_names.split(",") if n.strip()]
    unknown = [n for n in names if n not in baselines.BASELINES]
    if unknown:
        raise click.BadParameter(f"unknown baseline {unknown[0]!r}; choose from {', '.join(baselines.BASELINES)}",
                                 param_hint="--baselines")
    if out is None:
        if smoke_run:
            raise click.BadParameter("a smoke run must not write into benchmarks/results; give --out",
                                     param_hint="--out")
        out = RESULTS
    if smoke_run:
        paths = [SWEEPS / "smoke.toml"]
    elif configs:
        paths = list(configs)
    else:
        paths = page_paths(dataset, mnist_dir)
    torch.set_num_threads(1)  # the baselines' training and SVDs single-threaded: the machine is shared
    ok = True
    for path in paths:
        started = time.perf_counter()
        try:
            ok &= run_config(path, out, workers=workers, force=force, names=names, mnist_dir=mnist_dir,
                             is_smoke=smoke_run)
        except EdgeCompressError as exc:  # a bad config or a missing Ray: one line, exit 2
            raise click.UsageError(str(exc).splitlines()[0]) from None
        except KeyboardInterrupt:  # the sweep's finished entries stay in its folder
            log(f"[{path.stem}] interrupted; run the same command to go on")
            sys.exit(130)
        log(f"[{path.stem}] done in {time.perf_counter() - started:.0f} s")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
