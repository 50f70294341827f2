"""One sweep entry on a worker: a fresh folder, one build (+ optional bench), one results row.

Runs inside a Ray worker (or in-process for a direct build): torch uses exactly the CPUs the task
declared. A typed error fails only this entry (its row carries the one-line error); the entry's
``entry.json`` is written last, atomically, so a folder without it is an unfinished entry.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from edgecompress.errors import EdgeCompressError
from edgecompress.quality import preferred_agreement
from edgecompress.sweep.entries import Entry

ENTRY_FILE = "entry.json"
ENTRY_SCHEMA = "edgecompress.sweep-entry/1"


def _artifact(record: dict[str, Any], role: str) -> dict[str, Any]:
    return record.get("artifacts", {}).get(role) or {}


def _accuracy(artifact: dict[str, Any]) -> float | None:
    return (artifact.get("eval") or {}).get("accuracy")


def _cosine(artifact: dict[str, Any]) -> dict[str, float | None]:
    """The file's mean / 5th-percentile cosine to the dense model (embedding outputs), on --eval when given."""
    row = preferred_agreement(artifact.get("agreement") or []) or {}
    if row.get("measure") != "cosine":
        return {"cosine": None, "cosine_p5": None}
    return {"cosine": row.get("cosine_mean"), "cosine_p5": row.get("cosine_p5")}


def summarize(record: dict[str, Any]) -> dict[str, Any]:
    """The results-table fields of one build.json record."""
    dense, compressed, int8 = (_artifact(record, role) for role in ("dense", "compressed", "int8"))
    if not compressed:  # --target tflite only
        dense, compressed, int8 = (_artifact(record, role) for role in ("dense_tflite", "tflite", "int8_tflite"))
    totals = record.get("totals", {})
    return {
        "policy": (record.get("policy") or {}).get("name"),
        "ranks": {layer["name"]: layer.get("rank") for layer in record.get("layers", []) if "name" in layer},
        "linear_params": totals.get("linear_params_after"),
        "linear_params_dense": totals.get("linear_params_before"),
        "bytes": compressed.get("bytes"),
        "dense_bytes": dense.get("bytes"),
        "int8_bytes": int8.get("bytes"),
        "accuracy": _accuracy(compressed),
        "dense_accuracy": _accuracy(dense),
        "int8_accuracy": _accuracy(int8),
        **_cosine(compressed),
    }


def _bench(record: dict[str, Any], folder: Path, eval_data: str | None, threads: int,
           runs: int | None = None) -> dict[str, Any]:
    """Benchmark the build's artifacts against its dense export; write bench.json; p50s for the row.
    A text eval file (sentences for a token model) is not bench data: the bench then feeds seeded token
    ids and prefix masks at the length the build traced (``input.input_shape``)."""
    from edgecompress.bench import run_benchmark, write_json
    from edgecompress.hf import TEXT_SUFFIXES

    artifacts = record["artifacts"]
    reference = "dense" if "dense" in artifacts else "dense_tflite"
    roles = [reference] + [role for role in artifacts if role != reference]
    paths = [str(folder / artifacts[role]["path"]) for role in roles]
    seq = None
    if eval_data is not None and Path(eval_data).suffix.lower() in TEXT_SUFFIXES:
        eval_data, seq = None, traced_seq(record)
    result = run_benchmark(paths, data=eval_data, batches=(record["options"].get("tflite_batch") or 1,),
                           threads=threads, runs=runs, seq=seq, progress=False)
    write_json(result, folder / "bench.json")
    p50 = {Path(str(r.get("model"))).name: (r.get("latency_ms") or {}).get("p50") for r in result.get("results", [])}
    return {f"{role}_p50_ms": p50.get(artifacts[role]["path"]) for role in roles}


def traced_seq(record: dict[str, Any]) -> int | None:
    """The length of the build's "seq" axis (None when no input has one)."""
    for spec in record.get("input", {}).get("inputs", []):
        if "seq" in spec.get("axes", ()):
            return int(spec["shape"][list(spec["axes"]).index("seq")])
    return None


def write_entry(folder: Path, entry: Entry, row: dict[str, Any]) -> None:
    """entry.json (identity + row), written atomically: its presence marks a finished entry."""
    temporary = folder / f".{ENTRY_FILE}.tmp"
    temporary.write_text(json.dumps({"schema": ENTRY_SCHEMA, "identity": entry.identity, "row": row}, indent=2) + "\n")
    os.replace(temporary, folder / ENTRY_FILE)


def finished_row(entry: Entry) -> dict[str, Any] | None:
    """The saved row when ``entry``'s folder holds a finished result with the same identity."""
    try:
        saved = json.loads((entry.folder / ENTRY_FILE).read_text())
    except (OSError, ValueError):
        return None
    if saved.get("identity") != entry.identity or not (entry.folder / "build.json").is_file():
        return None
    return saved.get("row")


def base_row(entry: Entry) -> dict[str, Any]:
    """The fields every row has, whatever happened to the entry."""
    return {"entry": entry.label, "id": (entry.identity or "")[:12], "source": entry.source,
            "options": {k: v for k, v in sorted(entry.options.items()) if k != "name"},
            "folder": f"{entry.folder.parent.name}/{entry.folder.name}"}


def failed_row(entry: Entry, error: str) -> dict[str, Any]:
    return {**base_row(entry), "status": "failed", "error": error}


def run_entry(entry: Entry, cpus: int = 1, spread_sensitivity: bool = False) -> dict[str, Any]:
    """Build one entry in its folder (removing what an earlier, unfinished attempt left) and return
    its row; a typed error or an unexpected exception gives a failed row instead. With
    ``spread_sensitivity`` a budget-mode build measures its sensitivity table on other Ray workers."""
    from contextlib import nullcontext

    import torch

    from edgecompress.pipeline import build
    from edgecompress.sweep.workers import sensitivity_on_workers

    torch.set_num_threads(cpus)
    if entry.folder.exists():
        shutil.rmtree(entry.folder)
    start = time.perf_counter()
    try:
        with sensitivity_on_workers(cpus) if spread_sensitivity else nullcontext():
            result = build(entry.config)
        row = {**base_row(entry), "status": "ok", **summarize(result.record)}
        if entry.bench:
            row.update(_bench(result.record, entry.folder, entry.config.eval_data, cpus, entry.bench_runs))
    except EdgeCompressError as exc:
        shutil.rmtree(entry.folder, ignore_errors=True)  # the bench may have failed after the build
        return failed_row(entry, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    except Exception as exc:  # noqa: BLE001 - an unforeseen failure must not stop the other entries
        shutil.rmtree(entry.folder, ignore_errors=True)
        return failed_row(entry, f"unexpected {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    row["seconds"] = round(time.perf_counter() - start, 3)
    row["worker_pid"] = os.getpid()
    write_entry(entry.folder, entry, row)
    return row
