"""One description of a model's inputs and outputs, made at load time and used by every stage.

``ModelIO`` lists the named inputs (dtype, trace shape, which axes are dynamic, value range) and
the named outputs. A batch of inputs is ``Inputs``: a dict of numpy arrays sharing dimension 0;
the legacy one-float-input model is ``ModelIO.single_float(shape)`` with the input named "input".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from edgecompress.data import Batch, Inputs, num_samples, slice_inputs  # noqa: F401 (re-exported)
from edgecompress.errors import InputError
from edgecompress.quality import default_quality_output

INPUT_NAME = "input"
OUTPUT_NAME = "output"
ROLES = ("data", "ids", "mask")
DTYPES = ("float32", "float16", "float64", "int64", "int32", "bool")


@dataclass(frozen=True)
class InputSpec:
    """One named input: trace shape (dim 0 is the batch), dynamic axes by name, dtype, value range."""

    name: str
    shape: tuple[int, ...]
    axes: tuple[str | None, ...]  # a symbolic name per dim (e.g. "batch", "seq"), None = static
    dtype: str = "float32"
    high: int | None = None  # integer inputs are drawn from [0, high)
    role: str = "data"  # data | ids | mask

    @property
    def dynamic_batch(self) -> bool:
        return bool(self.axes) and self.axes[0] is not None

    def describe(self) -> str:
        dims = [f"{a}={s}" if a else str(s) for a, s in zip(self.axes, self.shape)]
        return f"{self.name}:{','.join(dims)}:{self.dtype}"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "axes": list(self.axes), "dtype": self.dtype,
                "high": self.high, "role": self.role}


@dataclass(frozen=True)
class ModelIO:
    """The model's named inputs (in forward-argument order) and named outputs."""

    inputs: tuple[InputSpec, ...]
    outputs: tuple[str, ...] = ()
    quality_output: str | None = None
    output_kinds: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def single_float(cls, shape: tuple[int, ...]) -> "ModelIO":
        """The legacy model: one float input named "input" with a dynamic batch."""
        return cls((InputSpec(INPUT_NAME, tuple(shape), ("batch",) + (None,) * (len(shape) - 1)),))

    @property
    def names(self) -> list[str]:
        return [spec.name for spec in self.inputs]

    @property
    def single(self) -> bool:
        """One float input: data may be a plain array."""
        return len(self.inputs) == 1 and self.inputs[0].dtype.startswith("float")

    @property
    def mask_name(self) -> str | None:
        return next((s.name for s in self.inputs if s.role == "mask"), None)

    @property
    def static_batch(self) -> int | None:
        """The batch size every call must use, when the model fixes it (a static-batch .pt2)."""
        fixed = [s.shape[0] for s in self.inputs if not s.dynamic_batch]
        return fixed[0] if fixed else None

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The first input's trace shape (what the legacy ``input_shape`` was)."""
        return self.inputs[0].shape

    def spec(self, name: str) -> InputSpec:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise InputError(f"the model has no input {name!r}; its inputs are {', '.join(self.names)}")

    def with_outputs(self, outputs: tuple[str, ...], kinds: Mapping[str, str], quality: str | None) -> "ModelIO":
        if quality is not None and quality not in outputs:
            raise InputError(f"--quality-output {quality!r} is not an output of the model "
                             f"(its outputs: {', '.join(outputs)})")
        return replace(self, outputs=outputs, output_kinds=dict(kinds),
                       quality_output=quality or default_quality_output(outputs))

    def random(self, samples: int, seed: int = 0) -> Inputs:
        """Seeded inputs: N(0,1) floats, ids in [0, high), masks as prefixes of ones (length >= 1)."""
        rng = np.random.default_rng(seed)
        out: Inputs = {}
        for spec in self.inputs:
            shape = (samples, *spec.shape[1:])
            if spec.role == "mask":
                lengths = rng.integers(1, shape[-1] + 1, size=shape[:-1])
                out[spec.name] = (np.arange(shape[-1]) < lengths[..., None]).astype(spec.dtype)
            elif spec.dtype.startswith("float"):
                out[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
            elif spec.dtype == "bool":
                out[spec.name] = rng.random(shape) < 0.5
            else:
                out[spec.name] = rng.integers(0, spec.high or 2, size=shape).astype(spec.dtype)
        return out

    def example(self, batch: int | None = None) -> tuple[torch.Tensor, ...]:
        """Tracing inputs; a dynamic batch is traced at >= 2 so torch does not specialise it to 1."""
        trace = self.static_batch or max(2, batch or self.inputs[0].shape[0])
        return self.tensors(self.random(trace, seed=0))

    def tensors(self, inputs: Batch) -> tuple[torch.Tensor, ...]:
        """Positional torch tensors in input order."""
        if isinstance(inputs, np.ndarray):
            if len(self.inputs) != 1:
                raise InputError(f"the model has {len(self.inputs)} inputs ({', '.join(self.names)}): data needs "
                                 "one array per input name (an .npz with those keys)")
            inputs = {self.inputs[0].name: inputs}
        return tuple(torch.from_numpy(np.ascontiguousarray(inputs[name])) for name in self.names)

    def to_json(self) -> dict[str, Any]:
        return {"inputs": [s.to_json() for s in self.inputs], "outputs": list(self.outputs),
                "output_kinds": dict(self.output_kinds), "quality_output": self.quality_output}


# -- batches of inputs ------------------------------------------------------------------------------

def index_inputs(x: Batch, index: np.ndarray) -> Batch:
    if isinstance(x, np.ndarray):
        return x[index]
    return {name: array[index] for name, array in x.items()}


def as_inputs(x: Batch, io: ModelIO) -> Inputs:
    """Named arrays for ``io`` (a plain array feeds a single-input model)."""
    if isinstance(x, np.ndarray):
        return dict(zip(io.names, (t.numpy() for t in io.tensors(x))))
    missing = [n for n in io.names if n not in x]
    if missing:
        raise InputError(f"data lacks input(s) {', '.join(missing)}; the model's inputs are {', '.join(io.names)}")
    return {name: x[name] for name in io.names}


# -- outputs ----------------------------------------------------------------------------------------

def flatten_outputs(out: Any) -> dict[str, torch.Tensor]:
    """Name a forward's result: tensor -> "output"; tuple/list -> output_0...; dict/ModelOutput -> keys."""
    if isinstance(out, torch.Tensor):
        return {OUTPUT_NAME: out}
    if isinstance(out, Mapping) or hasattr(out, "to_tuple") and hasattr(out, "keys"):
        items = [(str(k), v) for k, v in out.items() if isinstance(v, torch.Tensor)]
    elif isinstance(out, (tuple, list)):
        items = [(f"{OUTPUT_NAME}_{i}", v) for i, v in enumerate(out) if isinstance(v, torch.Tensor)]
    else:
        raise InputError(f"the model returns {type(out).__name__}; edgecompress needs tensors "
                         "(a tensor, a tuple/list of tensors, or a dict of them)")
    if not items:
        raise InputError("the model returns no tensors")
    return {_onnx_safe(name): value for name, value in items}


def _onnx_safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


def run_model(model: nn.Module, x: Batch, io: ModelIO) -> dict[str, torch.Tensor]:
    """One forward on a batch of inputs; the named outputs."""
    return flatten_outputs(model(*io.tensors(x)))


class NamedOutputs(nn.Module):
    """Wraps a model so it returns a tuple of tensors in ``ModelIO.outputs`` order (for exporters)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(flatten_outputs(self.model(*args)).values())


def outputs_of(model: nn.Module, x: Batch, io: ModelIO, batch_size: int = 256) -> dict[str, np.ndarray]:
    """Named numpy outputs of ``model`` on all samples of ``x``, in batches (the model's own batch when static)."""
    step = io.static_batch or batch_size
    total = num_samples(x)
    chunks: dict[str, list[np.ndarray]] = {}
    with torch.no_grad():
        for start in range(0, total, step):
            for name, value in run_model(model, slice_inputs(x, start, start + step), io).items():
                chunks.setdefault(name, []).append(value.detach().numpy())
    return {name: np.concatenate(parts) for name, parts in chunks.items()}


# -- --input NAME:SHAPE:DTYPE -----------------------------------------------------------------------

def parse_input(text: str) -> InputSpec:
    """``input_ids:batch=1,seq=128:int64[:<30522]`` -> an InputSpec (batch=1 traces at 2, stays dynamic).

    Dims are ``SIZE`` (static) or ``NAME=SIZE`` (symbolic, SIZE is the tracing size). A name ending in
    ``mask`` gets role "mask"; an integer input named ``*ids`` gets role "ids". ``:<N`` bounds integer values.
    """
    parts = text.split(":")
    if len(parts) not in (2, 3, 4) or not parts[0]:
        raise InputError(f"--input must look like NAME:SHAPE[:DTYPE[:<HIGH]], e.g. input_ids:batch=1,seq=128:int64; "
                         f"got {text!r}")
    name, dims_text = parts[0], parts[1]
    dtype = parts[2] if len(parts) > 2 and parts[2] else "float32"
    if dtype not in DTYPES:
        raise InputError(f"--input {text!r}: dtype must be one of {', '.join(DTYPES)}")
    high = None
    if len(parts) == 4:
        if not parts[3].startswith("<") or not parts[3][1:].isdigit():
            raise InputError(f"--input {text!r}: the value bound looks like '<30522'")
        high = int(parts[3][1:])
    shape, axes = [], []
    for dim in re.split(r"[x,]", dims_text):
        label, sep, size = dim.strip().rpartition("=")
        if not size.isdigit() or int(size) <= 0 or (sep and not re.fullmatch(r"[A-Za-z_]\w*", label)):
            raise InputError(f"--input {text!r}: each dim is SIZE or NAME=SIZE with SIZE > 0, e.g. batch=1,seq=128")
        shape.append(int(size))
        axes.append(label or None)
    role = "mask" if name.lower().endswith("mask") else "ids" if dtype.startswith("int") and name.endswith("ids") else "data"
    if role == "mask":
        high = 2
    return InputSpec(name, tuple(shape), tuple(axes), dtype, high, role)
