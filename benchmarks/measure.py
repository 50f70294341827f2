"""Measure models the same way for every row of a page: ONNX export of a baseline candidate
(edgecompress export, onnxsim, refold guard, int8, verification against torch), accuracy on the
validation split (selection), and bench results (test accuracy, macro-F1, file size, peak memory in
a fresh process, batch-1 single-thread latency interleaved with dense, p50 ratio from the same run).
Sweep entries are benchmarked by the sweep itself (``bench = true``: bench.json in their folders).
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from baselines import Artifact, Candidate
from edgecompress.bench import run_benchmark
from edgecompress.bench.metrics import accuracy, top1
from edgecompress.data import Dataset
from edgecompress.export.onnx import check_factors_kept, export_onnx, simplify_onnx
from edgecompress.export.quantize import int8_tolerance, quantize_onnx
from edgecompress.export.verify import Tolerance, ort_runner, torch_outputs, verify


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


def predictions(path: Path, data: Dataset) -> np.ndarray:
    """Arg-max class of a model on every sample (validation accuracy, paired test comparisons)."""
    return top1(ort_runner(path, threads=1)(data.x))


def bench_against(dense: Path, path: Path, test: Dataset, runs: int, warmup: int) -> dict[str, Any]:
    """bench.json's result of ``path`` in one run interleaved with ``dense`` alone (memory included)."""
    return run_benchmark([dense, path], data=test, batches=(1,), threads=1, runs=runs, warmup=warmup,
                         memory=True, progress=False)["results"][1]


def noise_floor(dense: Path, test: Dataset, runs: int, warmup: int) -> float:
    """p50 ratio of dense against a second copy of itself (separate sessions): the ratios' noise."""
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory(prefix="edgecompress-aa-") as folder:
        copy = Path(folder) / f"again-{dense.name}"
        shutil.copyfile(dense, copy)
        return float(bench_against(dense, copy, test, runs, warmup)["ratios"]["p50"])


def row(label: str, method: str, linear_params: int, dense_params: int, result: Mapping[str, Any], *,
        val_accuracy: float, method_seconds: float, export_seconds: float, artifact: str,
        meta: dict[str, Any], verification: Any = None, csr: int | None = None) -> dict[str, Any]:
    """One page row: the model's facts and its bench.json result (latency ratio vs dense, same run)."""
    return {
        "label": label,
        "method": method,
        "linear_params": linear_params,
        "linear_param_fraction": round(linear_params / dense_params, 6),
        "onnx_bytes": result["bytes"],
        "csr_bytes": csr,
        "val_accuracy": round(val_accuracy, 6),
        "accuracy": result["accuracy"],
        "macro_f1": result["macro_f1"],
        "latency_p50_ms": result["latency_ms"]["p50"],
        "latency_p50_ratio": result["ratios"]["p50"],
        "peak_rss_mib": result["peak_rss_mib"],
        "rss_increment_mib": result["rss_increment_mib"],
        "build_seconds": round(method_seconds + export_seconds, 3),
        "method_seconds": round(method_seconds, 3),
        "export_seconds": round(export_seconds, 3),
        "artifact": artifact,
        "meta": meta,
        "verification": verification,
    }
