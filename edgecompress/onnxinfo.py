"""Static facts about an ONNX file: parameters, ops by type, input/output specs, size on disk.

Torch-free (imports ``onnx`` only, lazily), so the runtime-only bench and report can use it.
Weights are never loaded from external data files: counting only needs initializer shapes.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgecompress.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import onnx

Dim = int | str | None
"""One dimension: a fixed size, a symbolic name (``"batch"``) or None (unknown)."""


@dataclass(frozen=True)
class TensorSpec:
    """A graph input or output: name, shape (ints, symbolic names or None) and numpy dtype name."""

    name: str
    shape: tuple[Dim, ...]
    dtype: str
    role: str = "data"  # "ids" / "mask" for token inputs (from the file's edgecompress.inputs metadata)
    high: int | None = None  # integer values lie in [0, high) (token ids: the vocabulary size)
    kind: str | None = None  # outputs: logits / embedding / values (from the file's edgecompress.outputs metadata)
    quality: bool = False  # outputs: the one quality is judged on (edgecompress.outputs metadata)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    def describe(self) -> str:
        """``x: float32[batch, 784]``."""
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name}: {self.dtype}[{dims}]"


def _float_types() -> set[int]:
    import onnx

    names = ("FLOAT", "FLOAT16", "DOUBLE", "BFLOAT16")
    return {getattr(onnx.TensorProto, n) for n in names}


def _weight_int_types() -> set[int]:
    """Integer types that hold quantized weights (int8/uint8, int4/uint4 where onnx has them)."""
    import onnx

    names = ("INT8", "UINT8", "INT4", "UINT4")
    return {getattr(onnx.TensorProto, n) for n in names if hasattr(onnx.TensorProto, n)}


def load_model(path: str | Path) -> "onnx.ModelProto":
    """Parse an ONNX file without its external weight data; InputError when it is not ONNX."""
    import onnx
    from google.protobuf.message import DecodeError

    path = Path(path)
    if not path.exists():
        raise InputError(f"model not found: {path}")
    if not path.is_file():
        raise InputError(f"{path} is not a file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError) as exc:
        raise InputError(f"{path} is not an ONNX model ({type(exc).__name__}); "
                         "give a .onnx file written by edgecompress build or torch.onnx.export") from exc
    if model.ir_version == 0 or not model.HasField("graph") or not model.graph.node:
        raise InputError(f"{path} is not an ONNX model (no graph); "
                         "give a .onnx file written by edgecompress build or torch.onnx.export")
    return model


def count_params(model: "onnx.ModelProto") -> int:
    """Parameters: elements of floating-point initializers plus 8/4-bit integer (quantized weight)
    initializers (a MatMulNBits weight counts its K x N, not its packed bytes). int32/int64
    initializers (shapes, indices) are not parameters."""
    kinds = _float_types() | _weight_int_types()
    packed = _nbits_weights(model)
    total = 0
    for init in model.graph.initializer:
        if init.name in packed:
            total += packed[init.name]
        elif init.data_type in kinds:
            size = 1
            for d in init.dims:
                size *= int(d)
            total += size
    return total


def _nbits_weights(model: "onnx.ModelProto") -> dict[str, int]:
    """Packed 4-bit weights of MatMulNBits nodes (uint8, two per byte) -> their K x N parameters."""
    counts = {}
    for node in model.graph.node:
        if node.op_type == "MatMulNBits" and len(node.input) > 1:
            attrs = {a.name: a.i for a in node.attribute}
            counts[node.input[1]] = attrs.get("K", 0) * attrs.get("N", 0)
    return counts


def ops_by_type(model: "onnx.ModelProto") -> dict[str, int]:
    """Count of main-graph nodes per op type (``domain.Op`` outside the default domain), sorted."""
    counts: Counter[str] = Counter()
    for node in model.graph.node:
        domain = node.domain if node.domain not in ("", "ai.onnx") else ""
        counts[f"{domain}.{node.op_type}" if domain else node.op_type] += 1
    return dict(sorted(counts.items()))


def _spec(value: Any) -> TensorSpec:
    import onnx

    ttype = value.type.tensor_type
    dims: list[Dim] = []
    if ttype.HasField("shape"):
        for d in ttype.shape.dim:
            if d.HasField("dim_value"):
                dims.append(int(d.dim_value))
            elif d.HasField("dim_param"):
                dims.append(d.dim_param)
            else:
                dims.append(None)
    try:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(ttype.elem_type).name
    except (KeyError, TypeError, ValueError):
        dtype = f"onnx:{ttype.elem_type}"
    return TensorSpec(value.name, tuple(dims), dtype)


def input_specs(model: "onnx.ModelProto") -> list[TensorSpec]:
    """Graph inputs a caller must feed (initializers listed as inputs by old exporters excluded)."""
    inits = {i.name for i in model.graph.initializer}
    ranges = input_ranges(model)
    return [replace(_spec(v), **ranges.get(v.name, {})) for v in model.graph.input if v.name not in inits]


INPUTS_METADATA = "edgecompress.inputs"  # JSON [{name, role, high}] written by edgecompress build's export


def _metadata(model: "onnx.ModelProto", key: str, read: Any) -> dict[str, dict[str, Any]]:
    """Name -> ``read(entry)`` for the JSON list of entries under metadata ``key``; {} when absent,
    foreign or damaged (the tensors then stay plain)."""
    import json

    text = next((p.value for p in model.metadata_props if p.key == key), None)
    try:
        return {e["name"]: read(e) for e in (json.loads(text) if text else [])}
    except (ValueError, TypeError, KeyError, AttributeError):
        return {}


def input_ranges(model: "onnx.ModelProto") -> dict[str, dict[str, Any]]:
    """Input name -> {"role", "high"} from the file's metadata (token ids and masks), when present."""
    return _metadata(model, INPUTS_METADATA, lambda e: {"role": str(e.get("role") or "data"),
                                                        "high": None if e.get("high") is None else int(e["high"])})


OUTPUTS_METADATA = "edgecompress.outputs"  # JSON [{name, kind, quality}] written by edgecompress build's export


def output_kinds(model: "onnx.ModelProto") -> dict[str, dict[str, Any]]:
    """Output name -> {"kind", "quality"} from the file's metadata, when present (else bench guesses
    the kind from the output's name and shape)."""
    return _metadata(model, OUTPUTS_METADATA, lambda e: {"kind": None if e.get("kind") is None else str(e["kind"]),
                                                         "quality": bool(e.get("quality"))})


def output_specs(model: "onnx.ModelProto") -> list[TensorSpec]:
    """Graph outputs, in order (with their kind and quality mark from the metadata, when present)."""
    kinds = output_kinds(model)
    return [replace(_spec(v), **kinds.get(v.name, {})) for v in model.graph.output]


def external_data_files(model: "onnx.ModelProto", path: str | Path) -> list[Path]:
    """Side files (``.onnx.data``) holding this model's external initializers."""
    import onnx

    folder = Path(path).parent
    found: dict[str, Path] = {}
    for init in model.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            for entry in init.external_data:
                if entry.key == "location":
                    found.setdefault(entry.value, folder / entry.value)
    return list(found.values())


def file_bytes(model: "onnx.ModelProto", path: str | Path) -> int:
    """Size on disk: the .onnx file plus any external data files it references."""
    total = Path(path).stat().st_size
    for side in external_data_files(model, path):
        if side.is_file():
            total += side.stat().st_size
    return total


def sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def summarize(path: str | Path) -> dict[str, Any]:
    """One record: bytes, params, ops, inputs, outputs, opset of an ONNX file."""
    model = load_model(path)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    return {
        "bytes": file_bytes(model, path),
        "params": count_params(model),
        "ops": ops_by_type(model),
        "inputs": [s.to_dict() for s in input_specs(model)],
        "outputs": [s.to_dict() for s in output_specs(model)],
        "opset": opset,
    }
