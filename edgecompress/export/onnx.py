"""torch -> ONNX export (dynamic batch, one self-contained file), onnxsim simplification, and the
refold guard that proves each factor pair survived as two matmuls."""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections import Counter
import warnings
from io import StringIO
from dataclasses import replace
from pathlib import Path
from typing import Iterable, Iterator

import onnx
import torch
from torch import nn

from edgecompress import onnxinfo
from edgecompress.errors import ExportError, RefoldError
from edgecompress.lowrank.factorize import CompressionPlan
from edgecompress.spec import INPUT_NAME, OUTPUT_NAME, ModelIO, NamedOutputs  # noqa: F401 (INPUT_NAME re-exported)

DEFAULT_OPSET = 18
EXTERNAL_DATA_THRESHOLD = 2 * 1024 ** 3  # protobuf's 2 GiB limit


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the dynamo exporter's chatter (warnings, logs, prints); errors still propagate."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch._dynamo", "torch.export", "onnxscript")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def parameter_bytes(model: nn.Module) -> int:
    """Bytes of all parameters and buffers (what the ONNX initializers will hold)."""
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


def dynamic_shapes(io: ModelIO) -> tuple[dict[int, torch.export.Dim], ...]:
    """torch.export dynamic shapes per input; axes with the same name share one ``Dim`` (e.g. "batch", "seq")."""
    dims: dict[str, torch.export.Dim] = {}
    specs = []
    for spec in io.inputs:
        entry = {}
        for index, axis in enumerate(spec.axes):
            if axis is not None:
                dims.setdefault(axis, torch.export.Dim(axis, min=1))
                entry[index] = dims[axis]
        specs.append(entry)
    return tuple(specs)


def export_onnx(model: nn.Module, io: ModelIO | tuple[int, ...], path: Path, *,
                opset: int = DEFAULT_OPSET, dynamic_batch: bool = True) -> Path:
    """Export ``model`` to ``path`` with torch's dynamo exporter.

    ``io`` names the inputs and outputs and says which axes are dynamic (a shape tuple means one
    float input "input" with a dynamic batch). A dynamic batch is traced at size >= 2 so torch cannot
    specialise it to 1. Weights are stored inside the file unless they exceed 2 GiB, and the graph
    passes ``onnx.checker``. Raises :class:`ExportError` with the exporter's reason.
    """
    if opset < 18:
        raise ExportError(f"opset {opset} is not supported by torch's ONNX exporter; use --opset 18 or higher")
    if not isinstance(io, ModelIO):
        io = ModelIO.single_float(tuple(io))
    if not dynamic_batch:
        io = replace(io, inputs=tuple(replace(s, axes=(None,) * len(s.axes)) for s in io.inputs))
    outputs = list(io.outputs) or [OUTPUT_NAME]
    wrapped = model if outputs == [OUTPUT_NAME] else NamedOutputs(model)
    shapes = dynamic_shapes(io)
    if not any(shapes):
        shapes = None
    elif wrapped is not model:
        shapes = (shapes,)  # NamedOutputs.forward(*args): one varargs entry
    external = parameter_bytes(model) > EXTERNAL_DATA_THRESHOLD  # one self-contained file when it fits
    try:
        with _quiet_exporter():
            program = torch.onnx.export(wrapped, io.example(), None, dynamo=True, opset_version=opset,
                                        input_names=io.names, output_names=outputs,
                                        dynamic_shapes=shapes, external_data=external,
                                        verbose=False, report=False)
            tokens = [{"name": s.name, "role": s.role, "high": s.high} for s in io.inputs if s.role != "data"]
            if tokens:  # lets bench draw ids below the vocabulary and prefix masks without torch
                program.model.metadata_props[onnxinfo.INPUTS_METADATA] = json.dumps(tokens)
            if io.outputs:  # lets bench judge the quality output by its kind (cosine for embeddings)
                program.model.metadata_props[onnxinfo.OUTPUTS_METADATA] = json.dumps(
                    [{"name": name, "kind": io.output_kinds.get(name), "quality": name == io.quality_output}
                     for name in io.outputs])
            program.save(str(path), external_data=external)
    except Exception as exc:  # the exporter raises a zoo of types; all mean "cannot export this model"
        raise ExportError(f"ONNX export failed: {_export_reason(exc)}") from exc
    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"exported ONNX model is invalid: {_first_line(exc)}") from exc
    return path


def _export_reason(exc: BaseException) -> str:
    """The root cause from the dynamo exporter's report ("## Exception summary"), without colours."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    if "## Exception summary" in text:
        summary = text.split("## Exception summary", 1)[1].strip().splitlines()
        if summary:
            return re.sub(r"^<class '[^']*'>:\s*", "", summary[0])[:300]
    return _first_line(exc)


def _first_line(exc: BaseException) -> str:
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()[:300]
    return type(exc).__name__


def simplify_skip_reason(path: Path) -> str | None:
    """Why onnxsim must not run on ``path`` (None: it may). Decided on the TOTAL bytes, external data
    included: onnxsim holds the whole model as one protobuf (2 GiB at most; it peaked at 5x the
    weights on a 2.45 GB model) and writes it back as one file, orphaning a side ``.onnx.data``."""
    model = onnxinfo.load_model(path)  # without the external data
    total = onnxinfo.file_bytes(model, path)
    if total > EXTERNAL_DATA_THRESHOLD:
        return (f"onnxsim skipped: the model is {total:,} bytes with its external data, over protobuf's "
                f"2 GiB limit for one model ({EXTERNAL_DATA_THRESHOLD:,} bytes)")
    if onnxinfo.external_data_files(model, path):
        return "onnxsim skipped: the weights are in external data, which onnxsim would inline"
    try:
        import onnxsim  # noqa: F401
    except ImportError:
        return "onnxsim skipped: onnxsim is not installed"
    return None


def simplify_onnx(path: Path) -> bool:
    """Run onnxsim in place; returns False (file untouched) when :func:`simplify_skip_reason` says
    so or onnxsim fails its own check."""
    if simplify_skip_reason(path) is not None:
        return False
    import onnxsim

    model = onnx.load(str(path))
    try:
        with _quiet_exporter():
            simplified, ok = onnxsim.simplify(model)
    except Exception as exc:  # onnxsim raises RuntimeError/ValueError from its C++ core
        raise ExportError(f"onnxsim failed on {path.name}: {_first_line(exc)}") from exc
    if not ok:
        return False
    onnx.save(simplified, str(path))
    return True


def initializer_shapes(model: onnx.ModelProto) -> list[tuple[int, ...]]:
    """Shapes of all initializers (and Constant node tensors, where folding may also put weights)."""
    shapes = [tuple(init.dims) for init in model.graph.initializer]
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    shapes.append(tuple(attr.t.dims))
    return shapes


def check_factors_kept(model: onnx.ModelProto | Path, plan: CompressionPlan, *, where: str,
                       other: Iterable[tuple[int, ...]] = ()) -> None:
    """The refold guard on an ONNX graph or file (see :func:`check_weight_shapes`); a file is read
    without its external data (the guard needs shapes only). ``other``: the model's 2-D weights outside
    Linear layers (embedding tables ...), which may share a Linear's shape."""
    if isinstance(model, Path):
        model = onnxinfo.load_model(model)
    check_weight_shapes(initializer_shapes(model), plan, where=where, other=other)


def _matrix_key(shape: Iterable[int]) -> tuple[int, ...]:
    """A 2-D shape up to transposition (exporters may store a weight either way round)."""
    return tuple(sorted(shape))


def plan_weight_shapes(plan: CompressionPlan) -> list[tuple[int, int]]:
    """The 2-D weights a compressed model holds per its plan: factor pairs and dense layers."""
    shapes: list[tuple[int, int]] = []
    for layer in plan.layers:
        if layer.rank is None:
            shapes.append((layer.out_features, layer.in_features))
        else:
            shapes += [(layer.rank, layer.in_features), (layer.out_features, layer.rank)]
    return shapes


def check_weight_shapes(shapes: Iterable[tuple[int, ...]], plan: CompressionPlan, *, where: str,
                        other: Iterable[tuple[int, ...]] = ()) -> None:
    """Raise :class:`RefoldError` if an exported file holds more in x out matrices than the
    compressed model has (a factor pair was multiplied back), or lacks a layer's two factors.

    ``shapes`` are the file's constant shapes; the model's 2-D weights are read off ``plan``, which
    must list every Linear layer (kept-dense ones too, as build's plans do). Counting, rather than
    looking for the shape, keeps a factor or a dense layer that merely has the same shape as another
    layer's dense weight from being a false alarm.
    """
    present = Counter(_matrix_key(s) for s in shapes if len(s) == 2)
    allowed = Counter(_matrix_key(s) for s in [*plan_weight_shapes(plan), *other])
    for layer in plan.layers:
        if layer.rank is None:
            continue
        dense = _matrix_key((layer.in_features, layer.out_features))
        if present[dense] > allowed[dense]:
            raise RefoldError(f"{where}: a dense {layer.out_features}x{layer.in_features} weight for layer "
                              f"{layer.name!r} is in the graph where a rank-{layer.rank} factor pair should be "
                              "(a constant-folding pass multiplied the factors back)")
        first, second = _matrix_key((layer.rank, layer.in_features)), _matrix_key((layer.out_features, layer.rank))
        if not (present[first] and present[second]):
            raise RefoldError(f"{where}: the rank-{layer.rank} factors of layer {layer.name!r} are missing from the graph")


def onnx_facts(path: Path) -> dict[str, object]:
    """File size, parameter count and op counts of an ONNX file (see :mod:`edgecompress.onnxinfo`)."""
    model = onnxinfo.load_model(path)
    return {"bytes": onnxinfo.file_bytes(model, path), "params": onnxinfo.count_params(model),
            "ops": onnxinfo.ops_by_type(model)}
