"""torch -> .tflite with litert-torch (the ``[tflite]`` extra), the refold guard on a .tflite's
constant tensors, and a LiteRT runner for verification.

Importing this module needs neither torch nor the extras: torch and litert-torch are imported
only by :func:`convert_tflite`, ai-edge-litert only when a file is read or run, so the runtime-only
bench can use :func:`litert_runner`, :func:`tflite_facts` and :func:`quiet_native`.

A .tflite file has a fixed batch: litert-torch traces the model with an example of shape
``(batch, *input_shape[1:])`` and that shape is baked into the file.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import sys
import warnings
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

import numpy as np

from edgecompress.errors import ExportError, InputError, MissingExtraError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from edgecompress.lowrank.factorize import CompressionPlan

Runner = Callable[[np.ndarray], np.ndarray]
INPUT_NAME = "input"  # as in the ONNX export (edgecompress.export.onnx.INPUT_NAME)
CONVERTER_MODULES = ("litert_torch", "ai_edge_litert")
RUNTIME_MODULES = ("ai_edge_litert",)
# TensorType codes of the schema that hold weights (int32/int64 constants are shapes and indices).
_WEIGHT_TYPES = {"FLOAT32", "FLOAT16", "BFLOAT16", "FLOAT64", "INT8", "UINT8", "INT4"}


def _missing(modules: tuple[str, ...]) -> list[str]:
    return [name for name in modules if importlib.util.find_spec(name) is None]


def require_converter(what: str = "--target tflite") -> None:
    """Raise :class:`MissingExtraError` (naming ``pip install 'edgecompress[tflite]'``) unless
    litert-torch and ai-edge-litert are importable. Cheap: nothing is imported."""
    if _missing(CONVERTER_MODULES):
        raise MissingExtraError(what, "tflite")


def require_runtime(what: str = "running .tflite files") -> None:
    """Raise :class:`MissingExtraError` (naming ``pip install 'edgecompress[litert]'``) unless
    ai-edge-litert is importable."""
    if _missing(RUNTIME_MODULES):
        raise MissingExtraError(what, "litert")


@contextlib.contextmanager
def quiet_native() -> Iterator[None]:
    """Silence stdout/stderr at the file-descriptor level (absl, XNNPACK and converter logs are
    written by native code), Python warnings and logging below ERROR. Exceptions propagate."""
    disabled = logging.root.manager.disable
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            os.dup2(null.fileno(), 2)
        logging.disable(logging.WARNING)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        logging.disable(disabled)


def _first_line(exc: BaseException) -> str:
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()[:300]
    return type(exc).__name__


def import_converter() -> Any:
    """Import litert-torch quietly (progress off); :class:`MissingExtraError` when it is missing."""
    require_converter()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        with quiet_native():
            import litert_torch
    except ImportError as exc:  # installed but broken: still the extra's problem
        raise MissingExtraError(f"--target tflite (import failed: {_first_line(exc)})", "tflite") from exc
    litert_torch.config.show_progress = False
    return litert_torch


def _named_input(model: "nn.Module") -> "nn.Module":
    """``model`` behind a ``forward(input)``: the signature input is then named like the ONNX input,
    so bench can run a .tflite and an .onnx side by side on the same feeds."""
    from torch import nn

    class NamedInput(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input: "torch.Tensor") -> "torch.Tensor":  # noqa: A002 - the signature's input name
            return self.inner(input)

    return NamedInput(model)


def convert_tflite(model: "nn.Module", input_shape: tuple[int, ...], path: Path, *, batch: int = 1,
                   quant_config: Any = None) -> Path:
    """Convert ``model`` (in inference mode) to ``path`` with litert-torch, batch fixed at ``batch``.

    ``quant_config`` is a litert-torch ``QuantConfig`` for a model already prepared for PT2E
    quantization (see :func:`edgecompress.export.quantize.convert_tflite_int8`).
    Raises :class:`MissingExtraError` without the extra, :class:`ExportError` when conversion fails.
    """
    if batch < 1:
        raise InputError(f"--batch must be at least 1, got {batch}")
    litert_torch = import_converter()
    import torch

    example = {INPUT_NAME: torch.zeros((batch, *input_shape[1:]))}
    try:
        with quiet_native():
            edge_model = litert_torch.convert(_named_input(model), sample_kwargs=example, quant_config=quant_config)
            edge_model.export(str(path))
    except Exception as exc:  # the converter raises many types; all mean "cannot convert this model"
        path.unlink(missing_ok=True)
        raise ExportError(f"TFLite conversion failed: {_first_line(exc)}") from exc
    return path


@dataclass(frozen=True)
class TfliteTensor:
    """One tensor of a .tflite's main subgraph."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # schema TensorType name: FLOAT32, INT8 ...
    constant: bool  # backed by a non-empty buffer: a weight, bias or shape constant
    index: int = -1  # tensor index in the subgraph (what the interpreter's set_tensor/get_tensor take)
    quantized: bool = False  # has a scale: int8 I/O of a full-integer file takes and gives real values via it

    @property
    def numpy_dtype(self) -> str:
        """``FLOAT32`` -> ``float32``."""
        return self.dtype.lower()

    @property
    def feed_dtype(self) -> str:
        """What a caller feeds / reads: float32 for a quantized integer tensor (see :func:`to_tensor`)."""
        return "float32" if self.quantized and self.dtype in ("INT8", "UINT8") else self.numpy_dtype


def _schema() -> Any:
    require_runtime("reading .tflite files")
    from ai_edge_litert import schema_py_generated

    return schema_py_generated


def _names(enum_class: type) -> dict[int, str]:
    return {value: name for name, value in vars(enum_class).items() if not name.startswith("_")}


@dataclass(frozen=True)
class TfliteGraph:
    """What edgecompress reads from a .tflite's main subgraph."""

    tensors: list[TfliteTensor]
    inputs: list[TfliteTensor]  # named by the first signature where there is one ("input")
    outputs: list[TfliteTensor]
    ops: dict[str, int]  # builtin operator name (custom ops by their code) -> count


def read_tflite(path: Path) -> TfliteGraph:
    """Parse a .tflite; InputError when it is missing, unreadable, not a .tflite or truncated."""
    schema = _schema()
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"model not found: {path}") from None
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from exc
    if len(data) < 8 or not schema.Model.ModelBufferHasIdentifier(data, 0):
        raise InputError(f"{path} is not a .tflite file (no TFL3 flatbuffer identifier)")
    try:
        model = schema.Model.GetRootAs(data, 0)
        if model.SubgraphsLength() < 1:
            raise InputError(f"{path} is not a valid .tflite file: it has no subgraph")
        return _graph(schema, model)
    except InputError:
        raise
    except Exception as exc:  # flatbuffers raises struct/index errors on a truncated or corrupt file
        raise InputError(f"{path} is not a valid .tflite file (truncated or corrupt: {type(exc).__name__})") from exc


def _buffer_has_data(model: Any, index: int) -> bool:
    if index <= 0 or index >= model.BuffersLength():
        return False
    buffer = model.Buffers(index)
    return buffer.DataLength() > 0 or buffer.Size() > 0  # Size/Offset: data stored after the flatbuffer (>2 GB)


def _has_scale(tensor: Any) -> bool:
    quantization = tensor.Quantization()
    return quantization is not None and quantization.ScaleLength() > 0


def _graph(schema: Any, model: Any) -> TfliteGraph:
    types, builtin = _names(schema.TensorType), _names(schema.BuiltinOperator)
    graph = model.Subgraphs(0)
    tensors = []
    for i in range(graph.TensorsLength()):
        tensor = graph.Tensors(i)
        shape = tuple(int(d) for d in tensor.ShapeAsNumpy()) if tensor.ShapeLength() else ()
        tensors.append(TfliteTensor(tensor.Name().decode(errors="replace"), shape,
                                    types.get(tensor.Type(), str(tensor.Type())),
                                    _buffer_has_data(model, tensor.Buffer()), i, _has_scale(tensor)))
    names: dict[int, str] = {}
    if model.SignatureDefsLength() and model.SignatureDefs(0).SubgraphIndex() == 0:
        signature = model.SignatureDefs(0)
        maps = [signature.Inputs(j) for j in range(signature.InputsLength())]
        maps += [signature.Outputs(j) for j in range(signature.OutputsLength())]
        names = {m.TensorIndex(): m.Name().decode(errors="replace") for m in maps}
    inputs = [tensors[graph.Inputs(i)] for i in range(graph.InputsLength())]
    outputs = [tensors[graph.Outputs(i)] for i in range(graph.OutputsLength())]
    codes = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        custom = code.CustomCode()
        number = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        codes.append(custom.decode() if custom else builtin.get(number, str(number)))
    ops = Counter(codes[graph.Operators(i).OpcodeIndex()] for i in range(graph.OperatorsLength()))
    return TfliteGraph(tensors, [replace(t, name=names.get(t.index, t.name)) for t in inputs],
                       [replace(t, name=names.get(t.index, t.name)) for t in outputs], dict(sorted(ops.items())))


def tflite_tensors(path: Path) -> list[TfliteTensor]:
    """Every tensor of the main subgraph with its shape, type and whether it is a constant."""
    return read_tflite(path).tensors


def tflite_facts(path: Path) -> dict[str, Any]:
    """File size, weight parameter count (float and int8 constants), ops by name and the fixed input batch."""
    graph = read_tflite(path)
    first = graph.inputs[0] if graph.inputs else None
    return {"bytes": path.stat().st_size, "params": weight_params(graph.tensors), "ops": graph.ops,
            "batch": first.shape[0] if first is not None and first.shape else None}


def weight_params(tensors: list[TfliteTensor]) -> int:
    """Elements of the float and int8 constants (int32/int64 constants are shapes and indices)."""
    return sum(int(np.prod(t.shape)) for t in tensors if t.constant and t.dtype in _WEIGHT_TYPES)


def constant_shapes(path: Path) -> list[tuple[int, ...]]:
    """Shapes of the constant tensors (where weights live)."""
    return [t.shape for t in tflite_tensors(path) if t.constant]


def check_tflite_factors(path: Path, plan: "CompressionPlan", *, where: str) -> None:
    """The refold guard on a .tflite (see :func:`edgecompress.export.onnx.check_weight_shapes`)."""
    from edgecompress.export.onnx import check_weight_shapes

    check_weight_shapes(constant_shapes(path), plan, where=where)


def to_tensor(array: np.ndarray, detail: Mapping[str, Any]) -> np.ndarray:
    """A float array as an interpreter input (``get_input_details`` entry): quantized with the tensor's scale
    and zero point when a full-integer .tflite takes int8/uint8 (static int8 files do), else cast."""
    dtype = np.dtype(detail["dtype"])
    scale, zero = detail.get("quantization", (0.0, 0))
    if np.issubdtype(array.dtype, np.floating) and dtype.kind in "iu" and scale:
        info = np.iinfo(dtype)
        return np.clip(np.round(array / scale) + zero, info.min, info.max).astype(dtype)
    return array.astype(dtype, copy=False)


def from_tensor(array: np.ndarray, detail: Mapping[str, Any]) -> np.ndarray:
    """An interpreter output as float32 (dequantized when the tensor is quantized int8/uint8)."""
    scale, zero = detail.get("quantization", (0.0, 0))
    if array.dtype.kind in "iu" and scale:
        return ((array.astype(np.float32) - zero) * scale).astype(np.float32)
    return array.copy()


def litert_runner(path: Path, threads: int | None = None) -> Runner:
    """A runner for a single-input, single-output .tflite: feeds its fixed batch at a time
    (the last chunk zero-padded), returns the outputs of the real rows."""
    require_runtime()
    from ai_edge_litert.interpreter import Interpreter

    try:
        with quiet_native():
            interpreter = Interpreter(model_path=str(path), num_threads=threads)
            interpreter.allocate_tensors()  # creates the XNNPACK delegate, which logs a line
    except Exception as exc:  # the interpreter raises ValueError/RuntimeError on bad files
        raise InputError(f"LiteRT cannot load {path}: {_first_line(exc)}") from exc
    source, sink = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    batch = int(source["shape"][0])

    def run(inputs: np.ndarray) -> np.ndarray:
        outputs = []
        for start in range(0, len(inputs), batch):
            chunk = to_tensor(np.asarray(inputs[start:start + batch]), source)
            rows = len(chunk)
            if rows < batch:
                chunk = np.concatenate([chunk, np.zeros((batch - rows, *chunk.shape[1:]), chunk.dtype)])
            interpreter.set_tensor(source["index"], np.ascontiguousarray(chunk))
            interpreter.invoke()
            outputs.append(from_tensor(interpreter.get_tensor(sink["index"])[:rows], sink))
        return np.concatenate(outputs) if outputs else np.zeros((0,), np.float32)

    return run
