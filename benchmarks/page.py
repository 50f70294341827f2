"""A benchmark page's rows from a finished sweep: one row per built artifact of every entry (its
compressed model, and its int8 file when the entry quantizes), the dense export, and the matching of
sizes the paper claims compare at.

Every sweep entry of a page config has ``bench = true``, so its folder holds bench.json: the dense
export, the compressed model (and int8) interleaved in one latency run, test accuracy, macro-F1,
peak memory. Validation accuracy (the key table's selection) and test predictions (the paired
claims) are computed here from the entry's ONNX files.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import measure
from edgecompress.bench.metrics import accuracy
from edgecompress.data import Dataset

ANCHORS = ("energy", "entropy", "ddlr-convex", "svd-training", "budget")  # sizes the matched rows are paired to
MATCHED = ("uniform", "data")  # paired to the anchor (or uniform rank) closest in size, within MATCH_TOLERANCE
MATCH_TOLERANCE = 0.1  # relative difference in Linear parameters
BUDGET_KEYS = ("max_accuracy_drop", "target_params", "target_size")
NOT_METHOD = ("reference", "export", "simplify", "verify", "eval", "quantize", "convert", "check")


def method_of(entry: Mapping[str, Any]) -> str:
    """The page's method family of a sweep entry: ``budget`` for budget mode, else its policy."""
    options = entry.get("options", {})
    return "budget" if any(key in options for key in BUDGET_KEYS) else str(entry.get("policy"))


def _seconds(timings: Mapping[str, float], artifact: str = "") -> tuple[float, float]:
    """(method s, export s) of one artifact of a build: compression and training, then that file's
    export, simplify, verify and eval (the dense export's own steps and loading the model excluded)."""
    if artifact == "dense":
        return 0.0, sum(v for k, v in timings.items() if k.endswith("_dense"))
    mine = {k: v for k, v in timings.items() if k != "load" and not k.endswith("_dense")}
    other = sum(v for k, v in mine.items() if k.startswith(NOT_METHOD))
    return sum(mine.values()) - other, other


class EntryRows:
    """Rows, test predictions and the dense export of a finished sweep's entries."""

    def __init__(self, record: Mapping[str, Any], out: Path, val: Dataset, test: Dataset) -> None:
        self.rows: list[dict[str, Any]] = []
        self.predictions: dict[str, np.ndarray] = {}
        self.dense: Path | None = None
        self.dense_params = 0
        self.val, self.test = val, test
        for entry in record["entries"]:
            if entry.get("status") == "ok":
                self._add(entry, out / entry["folder"])

    def _add(self, entry: Mapping[str, Any], folder: Path) -> None:
        build = json.loads((folder / "build.json").read_text())
        bench = json.loads((folder / "bench.json").read_text())
        by_file = {Path(str(r["model"])).name: r for r in bench["results"]}
        artifacts = build["artifacts"]
        timings = build.get("timings_s", {})
        totals = build["totals"]
        if self.dense is None:
            self.dense, self.dense_params = folder / artifacts["dense"]["path"], totals["linear_params_before"]
            self._row("dense", "dense", self.dense, by_file[artifacts["dense"]["path"]], totals["linear_params_before"],
                      build["artifacts"]["dense"], _seconds(timings, "dense"), {"entry": entry["entry"]})
        meta = {"entry": entry["entry"], "options": entry.get("options", {}), "policy": build.get("policy"),
                "ranks": entry.get("ranks")}
        for role, label, method in (("compressed", entry["entry"], method_of(entry)),
                                    ("int8", f"{entry['entry']} + int8", "lowrank-int8")):
            if role in artifacts:
                self._row(label, method, folder / artifacts[role]["path"], by_file[artifacts[role]["path"]],
                          totals["linear_params_after"], artifacts[role], _seconds(timings), dict(meta))

    def _row(self, label: str, method: str, path: Path, result: Mapping[str, Any], params: int,
             artifact: Mapping[str, Any], seconds: tuple[float, float], meta: dict[str, Any]) -> None:
        assert self.val.y is not None
        val = accuracy(self.val.y, measure.predictions(path, self.val))
        row = measure.row(label, method, params, self.dense_params, result, val_accuracy=val, method_seconds=seconds[0],
                          export_seconds=seconds[1], artifact=path.name, meta=meta,
                          verification=artifact.get("verification"))
        if method == "dense":
            row["latency_p50_ratio"] = 1.0  # the reference of every ratio
        self.rows.append(row)
        self.predictions[label] = measure.predictions(path, self.test)


def targets(rows: Sequence[Mapping[str, Any]], dense_params: int) -> list[tuple[str, int]]:
    """(label, Linear params) the matched methods are paired to: every anchor, then every uniform rank."""
    found = [(r["label"], r["linear_params"]) for r in rows if r["method"] in ANCHORS]
    found += [(r["label"], r["linear_params"]) for r in rows if r["method"] == "uniform"]
    return [(label, params) for label, params in found if params < dense_params]


def match(rows: Sequence[dict[str, Any]], dense_params: int) -> None:
    """Mark, per target, the uniform and data rows closest in size (within MATCH_TOLERANCE) with the
    target's label in ``meta["targets"]`` (report.py pairs rows through it)."""
    found = targets(rows, dense_params)
    for method in MATCHED:
        members = [r for r in rows if r["method"] == method]
        for label, params in found if members else ():
            best = min(members, key=lambda r: (abs(r["linear_params"] - params), r["linear_params"]))
            if best["label"] == label or abs(best["linear_params"] - params) <= MATCH_TOLERANCE * params:
                best["meta"].setdefault("targets", []).append(label)


def magnitude_targets(rows: Sequence[Mapping[str, Any]], dense_params: int) -> dict[int, list[str]]:
    """Linear parameter count -> the target labels of that size (magnitude pruning hits each exactly)."""
    sizes: dict[int, list[str]] = {}
    for label, params in targets(rows, dense_params):
        sizes.setdefault(params, []).append(label)
    return sizes


def svd_training_sources(rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, dict[str, int | None], int]]:
    """(label, per-layer ranks, epochs trained) of each SVD-training row (what truncate/finetune copy)."""
    from edgecompress.lowrank.training import FINETUNE_EPOCHS, SVD_EPOCHS

    found = []
    for r in rows:
        if r["method"] == "svd-training" and r["meta"].get("ranks"):
            options = r["meta"].get("options", {})
            epochs = options.get("epochs", SVD_EPOCHS) + options.get("finetune_epochs", FINETUNE_EPOCHS)
            found.append((r["label"], dict(r["meta"]["ranks"]), int(epochs)))
    return found
