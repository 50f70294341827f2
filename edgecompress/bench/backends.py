"""Model backends: one small class per runtime (onnxruntime for .onnx, LiteRT for .tflite).

A backend knows one model file. ``inspect()`` reads static facts without a runtime session
(size, parameters, input/output specs); ``load()`` creates the session (the timed "init");
``run(feeds)`` runs one inference. Only numpy and the runtime are imported, never torch, and
the runtime is imported lazily so the memory probe can measure a process that imported only it.

To add a runtime (e.g. ``.tflite`` through ai-edge-litert): subclass :class:`Backend`, set
``format`` and ``suffixes``, implement the four methods and add the class to :data:`BACKENDS`.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from edgecompress.errors import InputError
from edgecompress.onnxinfo import TensorSpec


@dataclass(frozen=True)
class ModelInfo:
    """Static facts about one model file."""

    path: Path
    format: str
    bytes: int
    params: int | None
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    ops: dict[str, int] = field(default_factory=dict)
    sha256: str | None = None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


class Backend(ABC):
    """One model in one runtime: ``inspect`` / ``load`` / ``run`` / ``close``."""

    format: ClassVar[str]
    suffixes: ClassVar[tuple[str, ...]]

    def __init__(self, path: str | Path, *, threads: int = 1) -> None:
        self.path = Path(path)
        self.threads = threads

    @classmethod
    def import_runtime(cls) -> None:
        """Import the runtime library (so a probe can measure memory after it, before a model)."""

    @abstractmethod
    def inspect(self) -> ModelInfo:
        """Static facts without a runtime session; InputError when the file is not this format."""

    @abstractmethod
    def load(self) -> None:
        """Create the runtime session; InputError when the runtime refuses the model."""

    @abstractmethod
    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """One inference: input name -> array in, outputs (graph order) out."""

    def close(self) -> None:
        """Release the session."""

    def timed_load(self) -> float:
        """``load()`` and return its wall time in ms."""
        start = time.perf_counter()
        self.load()
        return (time.perf_counter() - start) * 1000.0


class OnnxBackend(Backend):
    """onnxruntime CPU session: ``threads`` intra-op threads, 1 inter-op thread, sequential."""

    format = "onnx"
    suffixes = (".onnx",)

    def __init__(self, path: str | Path, *, threads: int = 1) -> None:
        super().__init__(path, threads=threads)
        self._session: Any = None

    @classmethod
    def import_runtime(cls) -> None:
        try:
            import onnxruntime  # noqa: F401
        except ImportError as exc:
            raise InputError("onnxruntime is not installed: pip install onnxruntime") from exc

    def inspect(self) -> ModelInfo:
        from edgecompress import onnxinfo

        model = onnxinfo.load_model(self.path)
        return ModelInfo(
            path=self.path, format=self.format,
            bytes=onnxinfo.file_bytes(model, self.path),
            params=onnxinfo.count_params(model),
            inputs=tuple(onnxinfo.input_specs(model)),
            outputs=tuple(onnxinfo.output_specs(model)),
            ops=onnxinfo.ops_by_type(model),
            sha256=onnxinfo.sha256(self.path),
        )

    def load(self) -> None:
        self.import_runtime()
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3  # errors only: no initializer warnings on stderr
        try:
            self._session = ort.InferenceSession(str(self.path), sess_options=options,
                                                 providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own pybind exception types
            raise InputError(f"onnxruntime cannot load {self.path}: {_first_line(exc)}") from exc

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        if self._session is None:
            raise RuntimeError("OnnxBackend.run() before load()")
        try:
            return self._session.run(None, dict(feeds))
        except Exception as exc:
            raise InputError(f"onnxruntime failed to run {self.path.name}: {_first_line(exc)}") from exc

    def close(self) -> None:
        self._session = None


class LiteRTBackend(Backend):
    """ai-edge-litert's interpreter (XNNPACK on CPU) with ``threads`` threads. A .tflite has a
    fixed input shape, batch included: ``inspect`` reports it and feeds must match it."""

    format = "tflite"
    suffixes = (".tflite",)

    def __init__(self, path: str | Path, *, threads: int = 1) -> None:
        super().__init__(path, threads=threads)
        self._interpreter: Any = None
        self._inputs: dict[str, int] = {}
        self._outputs: list[int] = []

    @classmethod
    def import_runtime(cls) -> None:
        from edgecompress.export.tflite import require_runtime

        require_runtime("running .tflite files")
        import ai_edge_litert.interpreter  # noqa: F401

    def inspect(self) -> ModelInfo:
        from edgecompress import onnxinfo
        from edgecompress.export import tflite

        graph = tflite.read_tflite(self.path)

        def specs(tensors: list[tflite.TfliteTensor]) -> tuple[TensorSpec, ...]:
            return tuple(TensorSpec(t.name, t.shape, t.feed_dtype) for t in tensors)

        return ModelInfo(path=self.path, format=self.format, bytes=self.path.stat().st_size,
                         params=tflite.weight_params(graph.tensors), inputs=specs(graph.inputs),
                         outputs=specs(graph.outputs), ops=graph.ops, sha256=onnxinfo.sha256(self.path))

    def load(self) -> None:
        self.import_runtime()
        from ai_edge_litert.interpreter import Interpreter

        from edgecompress.export import tflite

        graph = tflite.read_tflite(self.path)
        try:
            with tflite.quiet_native():  # allocate_tensors logs the XNNPACK delegate's creation
                self._interpreter = Interpreter(model_path=str(self.path), num_threads=self.threads)
                self._interpreter.allocate_tensors()
        except Exception as exc:  # the interpreter raises ValueError/RuntimeError on bad files
            raise InputError(f"LiteRT cannot load {self.path}: {_first_line(exc)}") from exc
        self._inputs = {t.name: t.index for t in graph.inputs}
        self._outputs = [t.index for t in graph.outputs]
        details = self._interpreter.get_input_details() + self._interpreter.get_output_details()
        self._details = {d["index"]: d for d in details}  # quantization of full-integer (static int8) I/O

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        from edgecompress.export import tflite

        if self._interpreter is None:
            raise RuntimeError("LiteRTBackend.run() before load()")
        try:
            for name, array in feeds.items():
                index = self._inputs[name]
                self._interpreter.set_tensor(index, tflite.to_tensor(array, self._details[index]))
            self._interpreter.invoke()
            return [tflite.from_tensor(self._interpreter.get_tensor(index), self._details[index])
                    for index in self._outputs]
        except KeyError as exc:
            raise InputError(f"{self.path.name} has no input {exc}; its inputs are {', '.join(self._inputs)}") from exc
        except Exception as exc:  # a shape that is not the file's fixed shape
            raise InputError(f"LiteRT failed to run {self.path.name}: {_first_line(exc)}") from exc

    def close(self) -> None:
        self._interpreter = None


BACKENDS: dict[str, type[Backend]] = {OnnxBackend.format: OnnxBackend, LiteRTBackend.format: LiteRTBackend}
"""format name -> backend class. The first whose ``suffixes`` match a file wins; ONNX otherwise."""

_PLANNED: dict[str, str] = {}  # suffix -> why bench cannot run it yet


def backend_for(path: str | Path, *, threads: int = 1) -> Backend:
    """The backend for a model file, chosen by suffix (unknown suffixes are tried as ONNX)."""
    suffix = Path(path).suffix.lower()
    for cls in BACKENDS.values():
        if suffix in cls.suffixes:
            return cls(path, threads=threads)
    if suffix in _PLANNED:
        raise InputError(f"{path}: {_PLANNED[suffix]}")
    return OnnxBackend(path, threads=threads)
