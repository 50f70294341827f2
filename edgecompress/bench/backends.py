"""Model backends: one small class per runtime (onnxruntime now, LiteRT later).

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


BACKENDS: dict[str, type[Backend]] = {OnnxBackend.format: OnnxBackend}
"""format name -> backend class. The first whose ``suffixes`` match a file wins; ONNX otherwise."""

_PLANNED = {".tflite": "LiteRT (.tflite) models are not supported by bench yet; bench the .onnx artifacts"}


def backend_for(path: str | Path, *, threads: int = 1) -> Backend:
    """The backend for a model file, chosen by suffix (unknown suffixes are tried as ONNX)."""
    suffix = Path(path).suffix.lower()
    for cls in BACKENDS.values():
        if suffix in cls.suffixes:
            return cls(path, threads=threads)
    if suffix in _PLANNED:
        raise InputError(f"{path}: {_PLANNED[suffix]}")
    return OnnxBackend(path, threads=threads)
