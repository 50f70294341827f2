"""Measure candidates the same way: export to ONNX with edgecompress (simplify, refold guard, int8),
verify against torch and score on the validation split as each one is made; at the end,
``edgecompress.bench.run_benchmark`` over every artifact (test accuracy, macro-F1, file size, peak
memory in a fresh process), then per artifact a batch-1 single-thread latency run interleaved with
dense alone (ratio of p50s from the same run).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgecompress.bench import run_benchmark
from edgecompress.bench.metrics import accuracy, top1
from edgecompress.data import Dataset
from edgecompress.export.onnx import check_factors_kept, export_onnx, simplify_onnx
from edgecompress.export.quantize import int8_tolerance, quantize_onnx
from edgecompress.export.verify import Tolerance, ort_runner, torch_outputs, verify

from methods import Artifact, Candidate, Settings


def slug(label: str) -> str:
    """A file-name-safe version of a row label."""
    return re.sub(r"[^A-Za-z0-9.=-]+", "_", label.replace("τ", "tau").replace("ε", "eps")).strip("_")


def export(candidate: Candidate, folder: Path, input_shape: tuple[int, ...], val: Dataset) -> Artifact:
    """ONNX (+ int8) of one candidate in ``folder``, guarded, verified and scored on ``val``."""
    start = time.perf_counter()
    path = folder / f"{len(list(folder.glob('*.onnx'))):02d}-{slug(candidate.label)}.onnx"
    export_onnx(candidate.model, input_shape, path)
    simplify_onnx(path)
    tolerance = Tolerance()
    if candidate.int8:
        fp32, path = path, path.with_suffix(".int8.onnx")
        quantize_onnx(fp32, path)
        fp32.unlink()
        # agreement with fp32 is a result here (reported in the row), not a gate: build enforces
        # --int8-agreement; the gross-error bound still fails a broken file (wrong scale or zero point)
        tolerance = int8_tolerance(min_agreement=0.0)
    if candidate.plan is not None:
        check_factors_kept(onnx.load(str(path)), candidate.plan, where=path.name)
    outputs = ort_runner(path, threads=1)(val.x)
    checked = verify(path.name, lambda _: outputs, torch_outputs(candidate.model, val.x), val.x, "val", tolerance)
    seconds = time.perf_counter() - start
    assert val.y is not None
    return Artifact(path, path.stat().st_size, seconds, accuracy(val.y, top1(outputs)), checked.to_json())


@dataclass(frozen=True)
class Bench:
    """The bench results: one run over every model (test accuracy, F1, size, peak memory) and, per
    model, its latency run interleaved with dense alone (so every pair shares the same cache state)."""

    overview: dict[str, Any]
    latency: dict[str, dict[str, Any]]  # artifact file name -> its result row in the pair run
    aa_ratio: float | None  # dense vs a second session of dense: the noise floor of the ratios


def bench(candidates: list[Candidate], test: Dataset, settings: Settings, *, progress: bool) -> Bench:
    """Benchmark every candidate's artifact (the first candidate is the dense reference)."""
    paths = [c.artifact.path for c in candidates if c.artifact is not None]
    overview = run_benchmark(paths, data=test, batches=(1,), threads=1, runs=1, warmup=0, memory=True,
                             progress=progress)
    latency = {path.name: run_benchmark([paths[0], path], batches=(1,), threads=1, runs=settings.bench_runs,
                                        warmup=settings.bench_warmup, memory=False, progress=False)["results"][1]
               for path in paths}
    aa_ratio = latency[paths[0].name]["ratios"]["p50"]
    latency[paths[0].name] = {**latency[paths[0].name], "ratios": {"p50": 1.0}}
    return Bench(overview, latency, aa_ratio)


def test_predictions(path: Path, test: Dataset) -> np.ndarray:
    """Arg-max class of a model on every test sample (for paired comparisons)."""
    return top1(ort_runner(path, threads=1)(test.x))


def row(candidate: Candidate, result: dict[str, Any], latency: dict[str, Any], dense_params: int) -> dict[str, Any]:
    """One results row: the candidate's facts, its bench.json result and its latency vs dense."""
    artifact = candidate.artifact
    assert artifact is not None
    return {
        "label": candidate.label,
        "method": candidate.method,
        "linear_params": candidate.linear_params,
        "linear_param_fraction": round(candidate.linear_params / dense_params, 6),
        "onnx_bytes": result["bytes"],
        "csr_bytes": candidate.meta.get("csr_bytes"),
        "val_accuracy": round(artifact.val_accuracy, 6),
        "accuracy": result["accuracy"],
        "macro_f1": result["macro_f1"],
        "latency_p50_ms": latency["latency_ms"]["p50"],
        "latency_p50_ratio": latency["ratios"]["p50"],
        "peak_rss_mib": result["peak_rss_mib"],
        "rss_increment_mib": result["rss_increment_mib"],
        "build_seconds": round(candidate.seconds + artifact.seconds, 3),
        "method_seconds": round(candidate.seconds, 3),
        "export_seconds": round(artifact.seconds, 3),
        "artifact": artifact.path.name,
        "meta": {k: v for k, v in candidate.meta.items() if k != "csr_bytes"},
        "verification": artifact.verification,
    }


def rows(candidates: list[Candidate], measured: Bench, dense_params: int) -> list[dict[str, Any]]:
    """Rows of every measured candidate, joined to the bench results by artifact file name."""
    by_name = {r["model"]: r for r in measured.overview["results"]}
    return [row(c, by_name[c.artifact.path.name], measured.latency[c.artifact.path.name], dense_params)
            for c in candidates if c.artifact is not None]
