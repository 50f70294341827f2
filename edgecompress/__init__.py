"""edgecompress: low-rank compression of Linear layers, export, verification and benchmarking.

The public API is re-exported lazily so that runtime-only installs (``bench``/``check``)
never import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY: dict[str, str] = {
    "compress": "edgecompress.lowrank.factorize",
    "LowRankLinear": "edgecompress.lowrank.factorize",
    "EnergyPolicy": "edgecompress.lowrank.policies",
    "EntropyPolicy": "edgecompress.lowrank.policies",
    "UniformPolicy": "edgecompress.lowrank.policies",
    "export_onnx": "edgecompress.export.onnx",
    "load_model": "edgecompress.load",
    "load_dataset": "edgecompress.data",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'edgecompress' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
