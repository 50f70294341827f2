"""Parameters and op counts of an ONNX file, read with the ``onnx`` package only (no torch,
no onnxruntime). Private to ``check``; to be merged with ``edgecompress.onnxinfo``."""

from __future__ import annotations

import math
import os
from collections import Counter
from pathlib import Path

from edgecompress.errors import InputError

# Element types counted as parameters: floating point weights and 8/4-bit quantized weights.
# int32/int64 initializers are shapes, axes and indices, not weights.
_WEIGHT_TYPES = {"FLOAT", "FLOAT16", "DOUBLE", "BFLOAT16", "FLOAT8E4M3FN", "FLOAT8E4M3FNUZ",
                 "FLOAT8E5M2", "FLOAT8E5M2FNUZ", "INT8", "UINT8", "INT4", "UINT4"}


def read_onnx(path: Path) -> tuple[int, dict[str, int], int]:
    """Return (parameters, nodes per op type, bytes on disk including external data) of a model.

    Same conventions as build.json: parameters are the elements of float and 8/4-bit integer
    initializers; ops count main-graph nodes, ``domain.Op`` outside the default domain.
    """
    import onnx  # deferred: only bare .onnx paths need it

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError, OSError, ValueError ... on a bad file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path} is not a readable ONNX model: {first}") from None
    if model.ir_version == 0 or not model.graph.node:
        raise InputError(f"{path} is not an ONNX model (no graph)")
    weight_types = {getattr(onnx.TensorProto, name) for name in _WEIGHT_TYPES if hasattr(onnx.TensorProto, name)}
    params = 0
    ops: Counter[str] = Counter()
    external: set[str] = set()
    for tensor in model.graph.initializer:
        if tensor.data_type in weight_types:
            params += math.prod(tensor.dims)
        for entry in tensor.external_data:
            if entry.key == "location":
                external.add(entry.value)
    for node in model.graph.node:
        domain = node.domain if node.domain not in ("", "ai.onnx") else ""
        ops[f"{domain}.{node.op_type}" if domain else node.op_type] += 1
    size = path.stat().st_size
    for location in sorted(external):
        side = path.parent / location
        if side.is_file() and os.path.normpath(side) != os.path.normpath(path):
            size += side.stat().st_size
    return params, dict(sorted(ops.items())), size

