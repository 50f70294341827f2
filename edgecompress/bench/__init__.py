"""Runtime-only benchmark: latency, peak memory, size and accuracy of models vs a reference.

Imports numpy and the runtime (onnxruntime), never torch, so it runs on a device that only has
the runtime. The result is a plain dict following ``bench.json`` (docs/formats.md)::

    from edgecompress.bench import run_benchmark, write_json, write_markdown
    result = run_benchmark(["model.dense.onnx", "model.onnx"], data="test.npz", batches=(1, 32))
    write_json(result, "bench.json"); write_markdown(result, "bench.md")

The first model is the reference; every ratio is ``figure / reference figure`` at the same batch.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress import quality
from edgecompress.bench import metrics
from edgecompress.bench.backends import BACKENDS, Backend, ModelInfo, OnnxBackend, backend_for
from edgecompress.bench.inputs import (BATCH, RANDOM_SAMPLES, InputPlan, check_batches, fit_data,
                                       SEQ_AXIS, merged_inputs, parse_input_shape, plan_inputs, random_inputs, take_batch,
                                       with_seq)
from edgecompress.bench.runner import Timing, interleave, probe, time_ms
from edgecompress.errors import InputError
from edgecompress.quality import default_quality_output

SCHEMA = "edgecompress.bench/1"
DEFAULT_RUNS = 100
DEFAULT_WARMUP = 10
EVAL_BATCH = 256
QUALITY_KEYS = ("top1_agreement", "cosine_mean", "cosine_p5", "relative_error")  # vs the reference, by output kind
RATIO_KEYS = ("p50", "p90", "p99", "min", "mean", "throughput_per_s", "init_ms", "first_inference_ms",
              "peak_rss_mib", "rss_increment_mib", "bytes", "params", "accuracy", "macro_f1")

__all__ = ["run_benchmark", "write_json", "write_markdown", "write_html", "to_json_text", "SCHEMA",
           "Backend", "OnnxBackend", "BACKENDS", "backend_for", "ModelInfo", "interleave", "probe",
           "parse_input_shape", "metrics"]


def run_benchmark(paths: Sequence[str | os.PathLike[str]], *, data: Any = None, batches: Sequence[int] = (1,),
                  threads: int = 1, runs: int | None = None, seconds: float | None = None,
                  warmup: int = DEFAULT_WARMUP, seed: int = 0,
                  input_shapes: Mapping[str | None, Sequence[int | str]] | None = None,
                  seq: int | Sequence[int] | None = None,
                  limit: int | None = None, memory: bool = True, progress: bool = True) -> dict[str, Any]:
    """Benchmark models against the first one and return a bench.json dict.

    Args:
        paths: model files; the first is the reference.
        data: dataset spec (``test.npz``, an MNIST IDX folder, ``digits``) or an
            :class:`edgecompress.data.Dataset`; None: seeded random inputs, no accuracy.
        batches: batch sizes to time.
        threads: intra-op threads (inter-op is 1, execution sequential).
        runs: timed rounds per batch size (each round runs every model once, interleaved).
        seconds: time budget per batch size for the timed rounds; with ``runs``, whichever
            comes first. Neither: ``DEFAULT_RUNS`` rounds.
        warmup: untimed rounds per batch size before timing.
        seed: seed of the random inputs.
        input_shapes: input name (None for the only input) -> shape with ``"N"`` for the batch
            dimension, for dynamic dimensions the data does not fix.
        seq: length(s) of every input's dynamic "seq" dimension (token models built by edgecompress);
            several lengths: one block of results per length (random inputs), ratios per length.
        limit: evaluate accuracy/agreement on the first ``limit`` samples only.
        memory: measure peak memory and cold start in a fresh process per model and batch.
        progress: show a progress bar when stderr is a terminal.

    Raises:
        InputError: a file is not a model, the models' inputs differ, data does not fit, ...
    """
    batches = _check_options(paths, batches, threads, runs, seconds, warmup, limit)
    seqs = _check_seqs(seq)
    if runs is None and seconds is None:
        runs = DEFAULT_RUNS
    from edgecompress import provenance

    temp_start = provenance.cpu_temperature_c()
    backends = [backend_for(p, threads=threads) for p in paths]
    infos = [b.inspect() for b in backends]
    names = _unique_names([b.path for b in backends])
    dataset = _load_data(data, limit, [spec.name for spec, _ in merged_inputs(infos)])
    if dataset is not None and len(seqs) > 1:
        raise InputError("several --seq lengths run on random inputs; --data fixes the sequence length "
                         "(bench the data at its own length, without --seq, or drop --data)")
    shapes = [_shape(infos, dataset, input_shapes, s, limit, seed) for s in seqs]
    for shape in shapes:
        check_batches(shape.plans, batches)
    n_eval = len(next(iter(shapes[0].inputs.values())))
    blocks = [(shape, b) for shape in shapes for b in batches]

    with ExitStack() as stack, _Progress(progress) as bar:
        for backend in backends:
            stack.callback(backend.close)
        _warm_runtime(infos[0], threads, take_batch(shapes[0].inputs, batches[0]))
        init_ms = [backend.timed_load() for backend in backends]
        first_ms = {(shape.seq, b, i): time_ms(lambda be=be, f=take_batch(shape.inputs, b): be.run(f))
                    for shape, b in blocks for i, be in enumerate(backends)}
        scores = {shape.seq: _evaluate(backends, names, infos, shape.inputs, shape.labels, shape.plans, bar)
                  for shape in shapes}
        probes = {(shape.seq, *key): found for shape in shapes
                  for key, found in _probe_all(infos, batches, shape.inputs, threads, bar).items()} if memory else {}
        timings = {(shape.seq, b): _time_batch(backends, take_batch(shape.inputs, b), b, runs, seconds, warmup, bar,
                                               shape.seq) for shape, b in blocks}

    results = [_result_row(names[i], infos[i], shape.seq, b, timings[(shape.seq, b)], i, init_ms[i],
                           first_ms[(shape.seq, b, i)], probes.get((shape.seq, b, i)), scores[shape.seq][0][i], n_eval)
               for shape, b in blocks for i in range(len(backends))]
    _add_ratios(results, names[0])
    labels = shapes[0].labels
    config = {
        "batches": list(batches), "seq": None if seq is None else [s for s in seqs if s is not None],
        "threads": threads, "inter_op_threads": 1, "execution_mode": "sequential",
        "runs": runs, "seconds": seconds, "warmup": warmup, "seed": seed,
        "data": _data_label(data, dataset), "labels": labels is not None,
        "eval_samples": n_eval, "limit": limit, "quality_output": scores[shapes[0].seq][1],
        "inputs": _input_config(shapes),
        "memory": memory, "cold_start": "subprocess" if memory else "in-process",
        "interleaved": True, "percentiles": "linear",
    }
    prov = provenance.collect(threads=threads, inter_op_threads=1, cpu_governor=provenance.cpu_governor(),
                              cpu_temp_c=temp_start, cpu_temp_c_end=provenance.cpu_temperature_c(),
                              cpu_affinity=_affinity())
    return {
        "schema": SCHEMA,
        "provenance": prov,
        "config": config,
        "reference": names[0],
        "models": [_model_entry(name, info, p) for name, info, p in zip(names, infos, paths)],
        "results": results,
    }


# --- options and inputs -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Shape:
    """The inputs of one sequence length (None: no --seq): plans, eval inputs, labels."""

    seq: int | None
    plans: list[InputPlan]
    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None


def _check_seqs(seq: int | Sequence[int] | None) -> list[int | None]:
    """--seq as a list of distinct lengths in the given order ([None] without it)."""
    if seq is None:
        return [None]
    values = [seq] if isinstance(seq, (int, np.integer)) else list(seq)
    if not values or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 for v in values):
        raise InputError(f"--seq takes positive lengths, e.g. --seq 32,128; got {seq!r}")
    return list(dict.fromkeys(int(v) for v in values))


def _shape(infos: Sequence[ModelInfo], dataset: Any, input_shapes: Mapping[str | None, Sequence[int | str]] | None,
           seq: int | None, limit: int | None, seed: int) -> _Shape:
    plans = plan_inputs(infos, overrides=with_seq(infos, input_shapes, seq),
                        data_sample_shape=None if dataset is None else sample_shapes(dataset.x))
    if dataset is None:
        return _Shape(seq, plans, random_inputs(plans, limit or RANDOM_SAMPLES, seed), None)
    inputs = ({plan.name: fit_data(dataset.x[plan.name], plan) for plan in plans}
              if isinstance(dataset.x, dict) else {plans[0].name: fit_data(dataset.x, plans[0])})
    return _Shape(seq, plans, inputs, _check_labels(dataset.y))


def _input_config(shapes: Sequence[_Shape]) -> list[dict[str, Any]]:
    """Each input's shape ("N" = the batch; "seq" where several --seq lengths differ) and dtype."""
    out = []
    for index, plan in enumerate(shapes[0].plans):
        dims: list[int | str] = list(plan.sample_shape)
        for other in shapes[1:]:
            dims = [d if d == o else SEQ_AXIS for d, o in zip(dims, other.plans[index].sample_shape)]
        out.append({"name": plan.name, "shape": [BATCH, *dims], "dtype": plan.dtype})
    return out


def _check_options(paths: Sequence[Any], batches: Sequence[int], threads: int, runs: int | None,
                   seconds: float | None, warmup: int, limit: int | None) -> list[int]:
    if not paths:
        raise InputError("give at least one model file (the first is the reference)")
    seen: list[int] = []
    for b in batches:
        if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or b < 1:
            raise InputError(f"batch sizes must be positive integers, got {b!r}")
        if int(b) not in seen:
            seen.append(int(b))
    if not seen:
        raise InputError("give at least one batch size (e.g. --batch 1,32)")
    checks = [(threads >= 1, f"threads must be >= 1, got {threads}"),
              (runs is None or runs >= 1, f"runs must be >= 1, got {runs}"),
              (seconds is None or seconds > 0, f"seconds must be > 0, got {seconds}"),
              (warmup >= 0, f"warmup must be >= 0, got {warmup}"),
              (limit is None or limit >= 1, f"limit must be >= 1, got {limit}")]
    for ok, message in checks:
        if not ok:
            raise InputError(message)
    return seen


def _unique_names(paths: Sequence[Path]) -> list[str]:
    """File names; the path as given where two models share a name, then ``#2`` if still equal."""
    names = [p.name for p in paths]
    names = [str(p) if names.count(p.name) > 1 else p.name for p in paths]
    out: list[str] = []
    for name in names:
        candidate, k = name, 2
        while candidate in out:
            candidate, k = f"{name}#{k}", k + 1
        out.append(candidate)
    return out


def _load_data(data: Any, limit: int | None, names: Sequence[str]) -> Any:
    """The data set; an .npz without ``x`` (or any .npz for a model with several inputs) holds one
    array per input name."""
    if data is None:
        return None
    from edgecompress.data import Dataset, load_dataset, load_named_npz

    if isinstance(data, Dataset):
        dataset = data
    elif str(data).endswith(".npz") and Path(data).is_file() and (len(names) > 1 or not _has_x(Path(data))):
        dataset = load_named_npz(Path(data), list(names))
    else:
        dataset = load_dataset(str(data))
    if len(dataset) == 0:
        raise InputError(f"data set {dataset.name} is empty")
    return dataset.take(limit)


def _has_x(path: Path) -> bool:
    try:
        with np.load(path, allow_pickle=False) as archive:
            return "x" in archive.files
    except Exception:  # noqa: BLE001 - empty, truncated or not an .npz: load_dataset reports it in its words
        return True


def sample_shapes(x: Any) -> tuple[int, ...] | dict[str, tuple[int, ...]]:
    """Per-sample shape of one array, or of each named array."""
    if isinstance(x, dict):
        return {name: tuple(array.shape[1:]) for name, array in x.items()}
    return tuple(x.shape[1:])


def _data_label(data: Any, dataset: Any) -> str | None:
    if data is None:
        return None
    return str(data) if isinstance(data, (str, os.PathLike)) else dataset.name


def _check_labels(y: np.ndarray | None) -> np.ndarray | None:
    if y is None:
        return None
    y = np.asarray(y)
    if y.ndim != 1:
        raise InputError(f"labels y must be one class index per sample, got shape {y.shape}")
    if y.size and y.min() < 0:
        raise InputError(f"labels y must be class indices >= 0, found {int(y.min())}")
    return y.astype(np.int64)


def _affinity() -> list[int] | None:
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def _warm_runtime(info: ModelInfo, threads: int, feeds: Mapping[str, np.ndarray]) -> None:
    """Create, run and drop one untimed session, so the runtime's one-time set-up (environment,
    allocators, kernel registries) is not charged to whichever model happens to load first."""
    backend = BACKENDS[info.format](info.path, threads=threads)
    backend.load()
    backend.run(feeds)
    backend.close()


# --- accuracy and agreement -------------------------------------------------------------------


def quality_output(infos: Sequence[ModelInfo]) -> tuple[list[int], str, str | None]:
    """Which output quality is judged on: per model its index, the reference's output name and declared
    kind. The one the file's edgecompress.outputs metadata marks (build's --quality-output), else an
    output named like an embedding, else the first; other models' output of the same name (else the
    same position: a .tflite renames its outputs)."""
    ref = infos[0].outputs
    names = tuple(s.name for s in ref)
    marked = [s.name for s in ref if s.quality]
    name = marked[0] if marked else default_quality_output(names) or ""
    position = names.index(name) if name in names else 0
    indices = [next((i for i, s in enumerate(info.outputs) if s.name == name), position) for info in infos]
    kind = ref[position].kind if ref else None
    return indices, name, kind


def _outputs(backend: Backend, name: str, inputs: Mapping[str, np.ndarray], chunk: int, fixed: bool,
             advance: Any, index: int = 0) -> np.ndarray:
    """Output ``index`` over all samples, ``chunk`` at a time (last chunk padded for a fixed batch)."""
    n = len(next(iter(inputs.values())))
    parts = []
    for start in range(0, n, chunk):
        size = min(chunk, n - start)
        feeds = {k: v[start:start + size] for k, v in inputs.items()}
        if fixed and size < chunk:
            feeds = take_batch(feeds, chunk)
        out = np.asarray(backend.run(feeds)[index])
        if out.ndim == 0 or out.shape[0] != (chunk if fixed else size):
            raise InputError(f"the compared output of {name} has shape {out.shape}, no batch dimension; "
                             "bench compares outputs sample by sample")
        parts.append(out[:size])
        advance()
    return np.concatenate(parts, axis=0)


def _evaluate(backends: Sequence[Backend], names: Sequence[str], infos: Sequence[ModelInfo],
              inputs: Mapping[str, np.ndarray], labels: np.ndarray | None, plans: Sequence[InputPlan],
              bar: "_Progress") -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per model its quality vs the reference on the quality output; and which output and kind that was."""
    fixed = plans[0].fixed_batch
    chunk = fixed or EVAL_BATCH
    n = len(next(iter(inputs.values())))
    indices, output, declared = quality_output(infos)
    task = bar.add("accuracy" if labels is not None else "agreement", len(backends) * math.ceil(n / chunk))
    ref: np.ndarray | None = None
    kind = declared
    found = []
    for backend, name, index in zip(backends, names, indices):
        out = _outputs(backend, name, inputs, chunk, fixed is not None, lambda: bar.advance(task), index)
        if ref is None:
            ref = out
            kind = declared if declared in quality.KINDS else quality.output_kind(output, ref)
        elif out.shape != ref.shape:
            raise InputError(f"outputs differ: {name} gives shape {out.shape[1:]} per sample but the reference "
                             f"{names[0]} gives {ref.shape[1:]}; bench models that compute the same thing")
        found.append(_quality(out, ref, labels, name, kind))
    measure = found[0]["quality_measure"] if found else None
    return found, {"output": output or None, "kind": kind, "measure": measure}


def _quality(out: np.ndarray, ref: np.ndarray, labels: np.ndarray | None, name: str, kind: str) -> dict[str, Any]:
    """Accuracy with labels (class logits), and the build's compressed-vs-dense measure of ``kind``
    (edgecompress.quality: top-1 agreement, cosine mean / 5th percentile, or relative error)."""
    acc = f1 = None
    if labels is not None and kind == "logits" and metrics.is_classifier_output(out):
        if labels.size and labels.max() >= out.shape[1]:
            raise InputError(f"labels go up to {int(labels.max())} but {name} has only {out.shape[1]} outputs; "
                             "are these the right data?")
        pred = metrics.top1(out)
        acc, f1 = metrics.accuracy(labels, pred), metrics.macro_f1(labels, pred)
    measured = quality.agreement(ref, out, kind)
    return {"accuracy": acc, "macro_f1": f1, "quality_measure": measured.pop("measure"),
            **{key: measured.get(key) for key in QUALITY_KEYS}, "max_abs_diff": metrics.max_abs_diff(out, ref)}


# --- memory and timing ------------------------------------------------------------------------


def _probe_all(infos: Sequence[ModelInfo], batches: Sequence[int], inputs: Mapping[str, np.ndarray],
               threads: int, bar: "_Progress") -> dict[tuple[int, int], Any]:
    task = bar.add("peak memory", len(infos) * len(batches))
    found = {}
    for b in batches:
        feeds = take_batch(inputs, b)
        for i, info in enumerate(infos):
            found[(b, i)] = probe(info.format, info.path, feeds, threads=threads)
            bar.advance(task)
    return found


def _time_batch(backends: Sequence[Backend], feeds: Mapping[str, np.ndarray], batch: int, runs: int | None,
                seconds: float | None, warmup: int, bar: "_Progress", seq: int | None = None) -> Timing:
    task = bar.add(f"batch {batch}" + ("" if seq is None else f" seq {seq}"), 1000)

    def on_round(done: int, elapsed: float) -> None:
        fraction = max(done / runs if runs else 0.0, elapsed / seconds if seconds else 0.0)
        bar.update(task, min(1.0, fraction) * 1000)

    fns = [lambda be=be: be.run(feeds) for be in backends]
    timing = interleave(fns, runs=runs, seconds=seconds, warmup=warmup, on_round=on_round)
    bar.update(task, 1000)
    return timing


# --- result assembly --------------------------------------------------------------------------


def _round(value: float | None, digits: int) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), digits)


def _model_entry(name: str, info: ModelInfo, given: Any) -> dict[str, Any]:
    return {"path": str(given), "name": name, "format": info.format, "bytes": info.bytes, "params": info.params,
            "sha256": info.sha256, "ops": info.ops,
            "inputs": [s.to_dict() for s in info.inputs], "outputs": [s.to_dict() for s in info.outputs]}


def _result_row(name: str, info: ModelInfo, seq: int | None, batch: int, timing: Timing, index: int, init_ms: float,
                first_ms: float, probed: Any, scores: dict[str, Any], eval_samples: int) -> dict[str, Any]:
    samples = timing.samples_ms[index]
    stats = metrics.latency_stats(samples)
    latency = {k: _round(float(stats[k]), 4) for k in ("p50", "p90", "p99", "min", "mean", "max", "std")}
    latency["samples"] = [round(s, 4) for s in samples]
    if probed is not None:
        init_ms, first_ms = probed.init_ms, probed.first_inference_ms
    return {
        "model": name, "batch": batch, "seq": seq, "runs": len(samples),
        "latency_ms": latency,
        "throughput_per_s": _round(metrics.throughput(batch, float(stats["p50"])), 2),
        "init_ms": _round(init_ms, 3), "first_inference_ms": _round(first_ms, 3),
        "peak_rss_mib": _round(probed.peak_rss_mib, 2) if probed else None,
        "rss_increment_mib": _round(probed.rss_increment_mib, 2) if probed else None,
        "baseline_rss_mib": _round(probed.baseline_rss_mib, 2) if probed else None,
        "bytes": info.bytes, "params": info.params,
        "accuracy": _round(scores["accuracy"], 6), "macro_f1": _round(scores["macro_f1"], 6),
        "quality_measure": scores["quality_measure"],
        **{key: _round(scores[key], 6) for key in QUALITY_KEYS},
        "max_abs_diff": _round(scores["max_abs_diff"], 9),
        "eval_samples": eval_samples,
        "ratios": {},
    }


def _figure(row: Mapping[str, Any], key: str) -> float | None:
    return row["latency_ms"][key] if key in row["latency_ms"] else row.get(key)


def _add_ratios(results: list[dict[str, Any]], reference: str) -> None:
    refs = {(r["seq"], r["batch"]): r for r in results if r["model"] == reference}
    for row in results:
        ref = refs[(row["seq"], row["batch"])]
        row["ratios"] = {k: _round(metrics.ratio(_figure(row, k), _figure(ref, k)), 4) for k in RATIO_KEYS}


# --- progress ---------------------------------------------------------------------------------


class _Progress:
    """A rich progress bar on a terminal (stderr), a no-op otherwise.

    No background refresh thread (it would compete with the timed runs for the CPU and the GIL):
    the bar is redrawn from the main thread between timed rounds, at most every 0.25 s.
    """

    INTERVAL_S = 0.25

    def __init__(self, enabled: bool) -> None:
        self._bar: Any = None
        self._last = 0.0
        if enabled and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(TextColumn("{task.description:>12}"), BarColumn(),
                                 TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn(),
                                 console=Console(stderr=True), transient=True, auto_refresh=False)

    def _refresh(self, force: bool = False) -> None:
        now = time.perf_counter()
        if force or now - self._last >= self.INTERVAL_S:
            self._bar.refresh()
            self._last = now

    def __enter__(self) -> "_Progress":
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def add(self, description: str, total: float) -> int:
        if self._bar is None:
            return 0
        task = self._bar.add_task(description, total=total)
        self._refresh(force=True)
        return task

    def advance(self, task: int) -> None:
        if self._bar is not None:
            self._bar.advance(task)
            self._refresh()

    def update(self, task: int, completed: float) -> None:
        if self._bar is not None:
            self._bar.update(task, completed=completed)
            total = next(t.total for t in self._bar.tasks if t.id == task)
            self._refresh(force=total is not None and completed >= total)


# --- writers (rendering lives in edgecompress.report) -----------------------------------------


def to_json_text(bench: Mapping[str, Any]) -> str:
    """Strict JSON (non-finite numbers become null), 2-space indented, keys in schema order."""
    from edgecompress.report import to_json_text as _to_json

    return _to_json(bench)


def write_json(bench: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """Write bench.json atomically (``-``: stdout)."""
    from edgecompress.report import write_json as _write

    _write(bench, path)


def write_markdown(bench: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """Write the Markdown report atomically (``-``: stdout)."""
    from edgecompress.report import write_markdown as _write

    _write(bench, path)


def write_html(bench: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """Write the self-contained HTML report (plots embedded) atomically (``-``: stdout)."""
    from edgecompress.report import write_html as _write

    _write(bench, path)
