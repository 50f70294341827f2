"""The sensitivity table kept on disk across builds: a second budget target on the same model, data
and factors reuses the per-layer measurements (AIMET keeps its per-layer evaluation table the same
way) and costs only the search. JSON files named by the sha256 of everything the table depends on;
writes are atomic; a missing, damaged or foreign file is measured again."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn

from edgecompress.lowrank.budget import SENSITIVITY_SAMPLES, LayerCurve
from edgecompress.lowrank.policies import PolicyContext

TABLE_VERSION = 1  # bump when the measurement changes: stored tables with another version are not reused


def table_cache_dir() -> Path | None:
    """Where measured sensitivity tables are kept across runs: ``$EDGECOMPRESS_TABLE_CACHE``, else
    ``$EDGECOMPRESS_CACHE/sensitivity`` (default ``~/.cache/edgecompress/sensitivity``); ``off`` disables it."""
    chosen = os.environ.get("EDGECOMPRESS_TABLE_CACHE")
    if chosen is not None:
        return None if chosen.strip().lower() in ("", "0", "off", "no", "false") else Path(chosen)
    return Path(os.environ.get("EDGECOMPRESS_CACHE", Path.home() / ".cache" / "edgecompress")) / "sensitivity"


def table_key(model: nn.Module, curves: Mapping[str, LayerCurve], measured_ranks: int, round_to: int,
              inputs: Any, cosine: bool) -> str:
    """sha256 of everything the sensitivity table depends on: the model (its graph code when it has one,
    every parameter and buffer), the measurement inputs (what :func:`sample_outputs` feeds), the distortion
    kind, the factor source (each layer's rank grid and policy error curve, which differ for whitened or
    data-aware factors), the measured-rank count and the rounding, and :data:`TABLE_VERSION`."""
    digest = hashlib.sha256(f"v{TABLE_VERSION} {measured_ranks} {round_to} {cosine} {SENSITIVITY_SAMPLES}".encode())
    digest.update(str(getattr(model, "code", type(model).__name__)).encode())
    for name, tensor in (*model.state_dict().items(), *({} if inputs is None else _named_arrays(inputs)).items()):
        array = np.ascontiguousarray(tensor.detach().cpu().numpy() if isinstance(tensor, torch.Tensor) else tensor)
        digest.update(f"{name} {array.dtype} {array.shape}".encode())
        digest.update(array.tobytes())
    digest.update(json.dumps([[n, c.ranks, c.params, [float(e).hex() for e in c.error]] for n, c in curves.items()]).encode())
    return digest.hexdigest()


def _named_arrays(inputs: Any) -> dict[str, Any]:
    """The sensitivity inputs as named arrays: an array's first :data:`SENSITIVITY_SAMPLES` rows, or a batch."""
    if isinstance(inputs, Mapping):
        return {f"input:{k}": v for k, v in inputs.items()}
    return {"input": np.asarray(inputs[:SENSITIVITY_SAMPLES], dtype=np.float32)}


def stored_table(model: nn.Module, curves: Mapping[str, LayerCurve], measured_ranks: int, context: PolicyContext,
                 cache_key: tuple[Any, ...], measure: Callable[[], dict[str, LayerCurve]]) -> dict[str, LayerCurve]:
    """The sensitivity table from :func:`table_cache_dir` when an identical measurement was stored (AIMET
    keeps its per-layer evaluation table for the next target the same way), else ``measure()``, stored.
    ``context.extras["table_cache"]`` records which ("hit"/"stored" and the key)."""
    folder = table_cache_dir()
    if folder is None or not cache_key:
        return measure()
    _, inputs, sample, cosine = cache_key
    key = table_key(model, curves, measured_ranks, context.round_to, inputs if sample is None else sample, cosine)
    path = folder / f"{key}.json"
    table = _read_table(path, curves)
    if table is not None:
        context.extras["table_cache"] = {"status": "hit", "key": key}
        if context.on_progress:
            context.on_progress("sensitivity: table reused from the cache")
        return table
    table = measure()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({name: {"distortion": curve.distortion, "measured": list(curve.measured.items())}
                                   for name, curve in table.items()}))
        tmp.replace(path)
        context.extras["table_cache"] = {"status": "stored", "key": key}
    except OSError:  # a read-only or full cache folder only costs the reuse
        context.extras["table_cache"] = {"status": "not stored", "key": key}
    return table


def _read_table(path: Path, curves: Mapping[str, LayerCurve]) -> dict[str, LayerCurve] | None:
    """A stored table joined with this run's curves, or None when absent or unreadable."""
    try:
        stored = json.loads(path.read_text())
        return {name: LayerCurve(name, curve.ranks, curve.params, curve.error, tuple(float(d) for d in stored[name]["distortion"]),
                                 {int(r): float(d) for r, d in stored[name]["measured"]})
                for name, curve in curves.items()}
    except (OSError, ValueError, KeyError, TypeError):
        return None
