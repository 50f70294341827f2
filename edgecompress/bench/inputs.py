"""Input tensors for a benchmark: check that the models take the same inputs, resolve dynamic
dimensions, fit a data set to the model, and make seeded random inputs. numpy only.

Dimension 0 is the batch dimension. A dynamic batch dimension becomes the batch size; other
dynamic dimensions come from the data's per-sample shape or from ``--input-shape``
(``[NAME:]SHAPE``, dims separated by ``x`` or ``,``, ``N`` for the batch dimension, e.g.
``tokens:Nx128``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from edgecompress.bench.backends import ModelInfo
from edgecompress.errors import InputError
from edgecompress.onnxinfo import Dim, TensorSpec

BATCH = "N"
RANDOM_SAMPLES = 256
"""How many random samples stand in for a data set when none is given."""


@dataclass(frozen=True)
class InputPlan:
    """Per input: name, dtype, per-sample shape (dims 1..), and the fixed batch size if any."""

    name: str
    dtype: str
    sample_shape: tuple[int, ...]
    fixed_batch: int | None
    fixed_by: str | None = None
    role: str = "data"  # ids / mask: random token ids below ``high``, attention masks as prefixes of ones
    high: int | None = None

    def shape(self, batch: int) -> tuple[int, ...]:
        return (batch, *self.sample_shape)


def parse_input_shape(text: str) -> tuple[str | None, tuple[int | str, ...]]:
    """``"x:Nx784"`` -> ("x", ("N", 784)); ``"1,3,224,224"`` -> (None, (1, 3, 224, 224))."""
    name, sep, dims_text = text.rpartition(":")
    if not sep:
        name, dims_text = "", text
    parts = [p.strip() for p in re.split(r"[x,]", dims_text.strip()) if p.strip()]
    if not parts:
        raise InputError(f"--input-shape {text!r}: no dimensions (example: x:Nx784)")
    dims: list[int | str] = []
    for part in parts:
        if part.upper() in (BATCH, "B", "?", "-1"):
            dims.append(BATCH)
        elif part.isdigit() and int(part) > 0:
            dims.append(int(part))
        else:
            raise InputError(f"--input-shape {text!r}: {part!r} is not a positive size or N (example: x:Nx784)")
    return (name or None), tuple(dims)


SEQ_AXIS = "seq"


def with_seq(infos: Sequence[ModelInfo], overrides: Mapping[str | None, Sequence[int | str]] | None,
             seq: int | None) -> dict[str | None, tuple[int | str, ...]] | None:
    """``overrides`` plus, for ``--seq``, every input whose dynamic dimension is named "seq" (as build
    writes it) at that length; InputError when no input has one."""
    if seq is None:
        return dict(overrides) if overrides else None
    if seq < 1:
        raise InputError(f"--seq must be at least 1, got {seq}")
    result: dict[str | None, tuple[int | str, ...]] = dict(overrides or {})
    for spec, _ in merged_inputs(infos):
        if SEQ_AXIS in spec.shape and spec.name not in result:
            result[spec.name] = tuple(BATCH if i == 0 else seq if d == SEQ_AXIS else d
                                      for i, d in enumerate(spec.shape))
    if not any(SEQ_AXIS in spec.shape for spec, _ in merged_inputs(infos)):
        raise InputError("--seq needs a model input with a dynamic 'seq' dimension (edgecompress build names it so)")
    return result


def _fmt_spec(spec: TensorSpec) -> str:
    return spec.describe()


def merged_inputs(infos: Sequence[ModelInfo]) -> list[tuple[TensorSpec, dict[int, str]]]:
    """Check every model takes the reference's inputs (names, dtypes, ranks, fixed sizes) and
    return per input the reference spec with dims fixed by any model, plus who fixed each dim."""
    ref = infos[0]
    ref_by_name = {s.name: s for s in ref.inputs}
    merged: list[tuple[TensorSpec, dict[int, str]]] = []
    for spec in ref.inputs:
        fixed_by = {i: ref.path.name for i, d in enumerate(spec.shape) if isinstance(d, int)}
        merged.append((spec, fixed_by))
    for info in infos[1:]:
        names = [s.name for s in info.inputs]
        if sorted(names) != sorted(ref_by_name):
            raise InputError(f"inputs differ: {info.path.name} takes ({', '.join(names)}) but the reference "
                             f"{ref.path.name} takes ({', '.join(ref_by_name)}); bench models with the same inputs")
        for other in info.inputs:
            base = ref_by_name[other.name]
            same_rank = len(other.shape) == len(base.shape)
            clash = not same_rank or other.dtype != base.dtype or any(
                isinstance(a, int) and isinstance(b, int) and a != b for a, b in zip(other.shape, base.shape))
            if clash:
                raise InputError(f"inputs differ: {info.path.name} has {_fmt_spec(other)} but the reference "
                                 f"{ref.path.name} has {_fmt_spec(base)}")
    out: list[tuple[TensorSpec, dict[int, str]]] = []
    for spec, fixed_by in merged:
        dims: list[Dim] = list(spec.shape)
        for info in infos[1:]:
            other = next(s for s in info.inputs if s.name == spec.name)
            for i, d in enumerate(other.shape):
                if isinstance(d, int) and not isinstance(dims[i], int):
                    dims[i] = d
                    fixed_by[i] = info.path.name
        out.append((TensorSpec(spec.name, tuple(dims), spec.dtype, spec.role, spec.high), fixed_by))
    return out


def plan_inputs(infos: Sequence[ModelInfo], *, overrides: Mapping[str | None, Sequence[int | str]] | None = None,
                data_sample_shape: tuple[int, ...] | Mapping[str, tuple[int, ...]] | None = None) -> list[InputPlan]:
    """Resolve every input's per-sample shape; InputError names the dimension that is unknown.

    ``data_sample_shape``: the per-sample shape of one-array data (a single-input model), or input
    name -> per-sample shape of named data (an .npz with one array per input)."""
    merged = merged_inputs(infos)
    overrides = dict(overrides or {})
    if None in overrides:
        if len(merged) != 1:
            raise InputError("--input-shape without a name needs a single-input model; "
                             f"write NAME:SHAPE for one of {', '.join(s.name for s, _ in merged)}")
        overrides[merged[0][0].name] = overrides.pop(None)
    unknown = set(overrides) - {s.name for s, _ in merged}
    if unknown:
        raise InputError(f"--input-shape names unknown input(s) {', '.join(sorted(map(str, unknown)))}; "
                         f"the model's inputs are {', '.join(s.name for s, _ in merged)}")
    named = isinstance(data_sample_shape, Mapping)
    if data_sample_shape is not None and not named and len(merged) != 1:
        raise InputError(f"--data with one array 'x' feeds single-input models, but the model has {len(merged)} "
                         f"inputs ({', '.join(s.name for s, _ in merged)}): give an .npz with one array per input "
                         "name, or leave out --data to use random inputs")
    plans = []
    for spec, fixed_by in merged:
        override = overrides.get(spec.name)
        shape = data_sample_shape.get(spec.name) if named else data_sample_shape
        plans.append(_plan_one(spec, fixed_by, override, shape))
    return plans


def _plan_one(spec: TensorSpec, fixed_by: dict[int, str], override: Sequence[int | str] | None,
              data_shape: tuple[int, ...] | None) -> InputPlan:
    rank = len(spec.shape)
    if rank == 0:
        raise InputError(f"input {spec.describe()} is a scalar; bench needs a batch dimension")
    if override is not None and len(override) != rank:
        raise InputError(f"--input-shape for {spec.name!r} has {len(override)} dims but the model input "
                         f"is {spec.describe()}")
    if data_shape is not None and len(data_shape) != rank - 1:
        raise InputError(f"data samples have shape {tuple(data_shape)} but the model input is {spec.describe()} "
                         f"(per-sample shape of rank {rank - 1}); preprocess the data to the model's input shape")
    if override is not None and isinstance(override[0], int) and isinstance(spec.shape[0], int) \
            and override[0] != spec.shape[0]:
        raise InputError(f"--input-shape sets the batch dimension of {spec.name!r} to {override[0]} but "
                         f"{fixed_by.get(0)} fixes it to {spec.shape[0]}")
    sample: list[int] = []
    for i in range(1, rank):
        model_dim = spec.shape[i]
        candidates: list[tuple[int, str]] = []
        if isinstance(model_dim, int):
            candidates.append((model_dim, f"{fixed_by.get(i, 'the model')}"))
        if override is not None:
            if override[i] == BATCH:
                raise InputError(f"--input-shape for {spec.name!r}: N (batch) is only allowed in dimension 0")
            candidates.append((int(override[i]), "--input-shape"))
        if data_shape is not None:
            candidates.append((int(data_shape[i - 1]), "the data"))
        if not candidates:
            label = f"'{model_dim}'" if isinstance(model_dim, str) else "unknown"
            example = "x".join(["N"] + [str(d) if isinstance(d, int) else "SIZE" for d in spec.shape[1:]])
            raise InputError(f"input {spec.name!r} has a dynamic dimension {i} ({label}); give its size with "
                             f"--input-shape {spec.name}:{example}")
        size, source = candidates[0]
        for other_size, other_source in candidates[1:]:
            if other_size != size:
                if "data" in other_source:
                    raise InputError(f"data samples have shape {tuple(data_shape or ())} but the model input is "
                                     f"{spec.describe()}; preprocess the data to the model's input shape")
                raise InputError(f"input {spec.name!r} dimension {i}: {source} says {size} but "
                                 f"{other_source} says {other_size}")
        sample.append(size)
    fixed = spec.shape[0] if isinstance(spec.shape[0], int) else None
    if fixed is None and override is not None and isinstance(override[0], int):
        fixed = int(override[0])
    return InputPlan(spec.name, spec.dtype, tuple(sample), fixed, fixed_by.get(0, "--input-shape") if fixed else None,
                     spec.role, spec.high)


def check_batches(plans: Sequence[InputPlan], batches: Sequence[int]) -> None:
    """InputError when a model fixes the batch size to something other than a requested batch."""
    for plan in plans:
        if plan.fixed_batch is None:
            continue
        wrong = [b for b in batches if b != plan.fixed_batch]
        if wrong:
            raise InputError(f"{plan.fixed_by} fixes the batch size of input {plan.name!r} to {plan.fixed_batch}, "
                             f"so --batch {','.join(map(str, wrong))} cannot run; use --batch {plan.fixed_batch} "
                             "or export with a dynamic batch dimension")


def fit_data(x: np.ndarray, plan: InputPlan) -> np.ndarray:
    """The data's ``x`` cast to the model's input dtype (integers only from integral values)."""
    dtype = np.dtype(plan.dtype) if not plan.dtype.startswith("onnx:") else None
    if dtype is None:
        raise InputError(f"input {plan.name!r} has an unsupported element type {plan.dtype}")
    if tuple(x.shape[1:]) != plan.sample_shape:
        raise InputError(f"data samples have shape {tuple(x.shape[1:])} but input {plan.name!r} expects "
                         f"{plan.sample_shape}; preprocess the data to the model's input shape")
    if np.issubdtype(dtype, np.floating):
        return np.ascontiguousarray(x, dtype=dtype)
    if np.issubdtype(dtype, np.integer) or dtype == np.bool_:
        if not np.all(np.isfinite(x)) or not np.all(x == np.round(x)):
            raise InputError(f"input {plan.name!r} takes {plan.dtype} but the data has non-integer values")
        return np.ascontiguousarray(x.astype(dtype))
    raise InputError(f"input {plan.name!r} has an unsupported element type {plan.dtype}")


def random_inputs(plans: Sequence[InputPlan], samples: int, seed: int) -> dict[str, np.ndarray]:
    """Seeded stand-in data: standard normal floats; for integer inputs token ids below the vocabulary
    size and attention masks (prefixes of ones) when the file says so (edgecompress build writes it),
    else 0/1; random bools."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for plan in plans:
        if plan.dtype.startswith("onnx:"):
            raise InputError(f"input {plan.name!r} has an unsupported element type {plan.dtype}")
        dtype = np.dtype(plan.dtype)
        shape = (samples, *plan.sample_shape)
        if plan.role == "mask" and shape[1:]:
            lengths = rng.integers(1, shape[-1] + 1, size=shape[:-1])
            out[plan.name] = (np.arange(shape[-1]) < lengths[..., None]).astype(dtype)
        elif np.issubdtype(dtype, np.floating):
            out[plan.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype == np.bool_:
            out[plan.name] = rng.random(shape) < 0.5
        elif plan.high:
            out[plan.name] = rng.integers(0, plan.high, size=shape).astype(dtype)
        else:
            out[plan.name] = rng.integers(0, 2, size=shape).astype(dtype)
    return out


def take_batch(arrays: Mapping[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
    """The first ``batch`` samples of each array, repeated cyclically if there are fewer."""
    out = {}
    for name, arr in arrays.items():
        if arr.shape[0] >= batch:
            out[name] = np.ascontiguousarray(arr[:batch])
        else:
            idx = np.arange(batch) % arr.shape[0]
            out[name] = np.ascontiguousarray(arr[idx])
    return out
