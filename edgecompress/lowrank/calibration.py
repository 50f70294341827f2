"""What each Linear layer sees on real inputs: forward hooks stream the input second moment.

For every selected layer the hook adds ``X_b^T X_b`` of each batch to a float64 ``in x in``
accumulator (``gram = sum_x x x^T``), so memory is one ``in x in`` matrix per layer however much
data flows through; only when asked (``keep_inputs``) is a bounded sample of raw input rows kept
(the ``ddlr-convex`` solver needs them). Leading dimensions (batch, sequence ...) are flattened:
every input vector counts as one sample.

Models with named inputs (token ids, attention masks ...) are calibrated on batches given as
``dict[str, Tensor]`` and called as ``model(**batch)``. When a batch has an attention mask (B, T)
(1 = real token, 0 = padding), a layer input whose leading dimensions are (B, T) contributes only
its real-token rows: padding positions are dropped, not merely down-weighted, so whatever a model
computes there (huge values, NaN) cannot leak into the statistics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch
from torch import nn

from edgecompress.errors import InputError
from edgecompress.lowrank.embedding import Batch, forward, mask_of
from edgecompress.lowrank.spectrum import linear_layers

Progress = Callable[[str], None]
MASK_KEY = "attention_mask"
RELU_TARGETS = (torch.relu, torch.nn.functional.relu, torch.ops.aten.relu.default, torch.ops.aten.relu_.default)


@dataclass
class LayerInputs:
    """Streamed statistics of one Linear layer's inputs (and the layer's bias, for ReLU-aware fits)."""

    name: str
    in_features: int
    gram: torch.Tensor = field(repr=False)  # sum over input vectors of x x^T, float64
    count: int = 0  # input vectors seen
    relu_after: bool = False  # the layer's output feeds a ReLU (and nothing else)
    bias: torch.Tensor | None = field(default=None, repr=False)
    kept: list[torch.Tensor] = field(default_factory=list, repr=False)  # raw input rows, float64

    @property
    def inputs(self) -> torch.Tensor:
        """The kept input rows as one ``(n, in)`` float64 matrix (empty when none were kept)."""
        return torch.cat(self.kept) if self.kept else torch.zeros(0, self.in_features, dtype=torch.float64)

    def to_json(self) -> dict[str, Any]:
        """Summary for build.json (never the matrices)."""
        return {"vectors": self.count, "in_features": self.in_features, "relu_after": self.relu_after,
                "kept_inputs": int(sum(len(k) for k in self.kept))}


@dataclass(frozen=True)
class Calibration:
    """Per-layer input statistics from one calibration set."""

    dataset: str
    samples: int
    layers: dict[str, LayerInputs]

    def to_json(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "samples": self.samples,
                "layers": {name: stats.to_json() for name, stats in self.layers.items()}}


def relu_followers(model: nn.Module, names: Iterable[str]) -> set[str]:
    """Names of the layers whose output goes only into a ReLU.

    Reads the graph of an ``fx.GraphModule`` (what a loaded ``.pt2`` becomes); for eager modules
    it recognises a ``Linear`` followed by ``ReLU`` inside an ``nn.Sequential``. Anything else
    counts as "not followed by a ReLU", which only makes the ReLU-aware fit stricter.
    """
    wanted = set(names)
    found: set[str] = set()
    if isinstance(model, torch.fx.GraphModule):
        modules = dict(model.named_modules())
        for node in model.graph.nodes:
            if node.op == "call_module" and node.target in wanted and node.users:
                if all(_is_relu(user, modules) for user in node.users):
                    found.add(str(node.target))
        return found
    for prefix, module in model.named_modules():
        if isinstance(module, nn.Sequential):
            children = list(module.named_children())
            for (name, child), (_, following) in zip(children, children[1:]):
                full = f"{prefix}.{name}" if prefix else name
                if full in wanted and isinstance(child, nn.Linear) and isinstance(following, nn.ReLU):
                    found.add(full)
    return found


def _is_relu(node: torch.fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_function":
        return node.target in RELU_TARGETS
    if node.op == "call_method":
        return node.target in ("relu", "relu_")
    return node.op == "call_module" and isinstance(modules.get(str(node.target)), nn.ReLU)


def calibrate(model: nn.Module, x: np.ndarray | Batch | Iterable[Batch], names: Iterable[str], *,
              dataset: str = "calibration", batch_size: int = 256, keep_inputs: int = 0,
              mask_key: str = MASK_KEY, progress: Progress | None = None) -> Calibration:
    """Run ``model`` on ``x`` batch by batch and accumulate each named layer's input second moment.

    Args:
        model: the model; not modified (hooks are removed afterwards).
        x: calibration inputs: an array shaped like the model's single input, all samples as one
            dict of named arrays (cut into batches of ``batch_size``), or an iterable of batches of
            named inputs (``dict[str, Tensor | ndarray]``, passed as keyword arguments).
        names: qualified names of the ``nn.Linear`` layers to observe.
        dataset: name recorded in the result.
        batch_size: samples per forward pass (array inputs).
        keep_inputs: also keep up to this many raw input rows per layer (0: none).
        mask_key: the batch entry holding the attention mask (B, T); padding rows are excluded.
        progress: called with a short status line per batch.

    Raises:
        InputError: the model cannot run on these inputs.
    """
    linears = linear_layers(model)
    names = list(names)
    relu = relu_followers(model, names)
    stats: dict[str, LayerInputs] = {}
    mask: list[torch.Tensor | None] = [None]  # the current batch's mask, read by the hooks
    handles = []
    for name in names:
        linear = linears[name]
        bias = None if linear.bias is None else linear.bias.detach().to(torch.float64).clone()
        stats[name] = LayerInputs(name, linear.in_features,
                                  torch.zeros(linear.in_features, linear.in_features, dtype=torch.float64),
                                  relu_after=name in relu, bias=bias)
        handles.append(linear.register_forward_pre_hook(_accumulator(stats[name], keep_inputs, mask)))
    samples = 0
    try:
        with torch.no_grad():
            for index, batch, total in _batches(x, batch_size):
                if progress:
                    progress(f"calibrating: batch {index + 1}/{total or '?'}")
                mask[0] = mask_of(batch, mask_key) if isinstance(batch, Mapping) else None
                samples += _batch_size(batch)
                try:
                    run_batch(model, batch)
                except Exception as exc:  # any failure means these inputs do not fit the model
                    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                    raise InputError(f"the model cannot run on the calibration data {dataset} "
                                     f"({_describe(batch)}): {first}") from exc
    finally:
        for handle in handles:
            handle.remove()
    return Calibration(dataset, samples, stats)


def _batches(x: np.ndarray | Batch | Iterable[Batch], batch_size: int) -> Iterable[tuple[int, Any, int | None]]:
    """(index, batch, number of batches or None) of an array or a dict of arrays cut in batches, or of
    given batches."""
    if isinstance(x, Mapping):
        samples = _batch_size(x)
        total = math.ceil(samples / batch_size)
        for index, start in enumerate(range(0, samples, batch_size)):
            yield index, {name: v[start:start + batch_size] for name, v in x.items()}, total
        return
    if isinstance(x, np.ndarray):
        total = math.ceil(len(x) / batch_size)
        for index, start in enumerate(range(0, len(x), batch_size)):
            yield index, torch.from_numpy(np.ascontiguousarray(x[start:start + batch_size], dtype=np.float32)), total
        return
    total = len(x) if hasattr(x, "__len__") else None
    for index, batch in enumerate(x):
        yield index, batch, total


def batches_of(x: np.ndarray | Batch | Iterable[Batch], batch_size: int) -> list[Any]:
    """Calibration inputs in any form :func:`calibrate` takes, as a list of batches (tensors or dicts)."""
    return [batch for _, batch, _ in _batches(x, batch_size)]


def run_batch(model: nn.Module, batch: Any) -> Any:
    """``model`` on one batch: named inputs as keyword arguments, a tensor as the one input."""
    return forward(model, batch) if isinstance(batch, Mapping) else model(batch)


def _batch_size(batch: Any) -> int:
    if isinstance(batch, Mapping):
        return int(next(iter(batch.values())).shape[0]) if batch else 0
    return int(batch.shape[0])


def _describe(batch: Any) -> str:
    if isinstance(batch, Mapping):
        return "inputs " + ", ".join(f"{k}: {tuple(v.shape)} {str(v.dtype).removeprefix('torch.')}"
                                     for k, v in batch.items())
    return f"samples of shape {tuple(batch.shape[1:])}"


def real_rows(activation: torch.Tensor, mask: torch.Tensor | None, features: int,
              dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The input vectors of one layer call as (n, features) rows of ``dtype``, padding rows dropped.

    With a mask (B, T) and an activation whose leading dimensions are (B, T), only the rows where
    the mask is nonzero are kept; otherwise every row counts.
    """
    if mask is not None and tuple(activation.shape[:-1]) == tuple(mask.shape):
        return activation.detach()[mask != 0].to(dtype).reshape(-1, features)
    return activation.detach().reshape(-1, features).to(dtype)


def _accumulator(stats: LayerInputs, keep_inputs: int,
                 mask: list[torch.Tensor | None]) -> Callable[[nn.Module, tuple[Any, ...]], None]:
    def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
        rows = real_rows(args[0], mask[0], stats.in_features)
        stats.gram += rows.T @ rows
        stats.count += int(rows.shape[0])
        room = keep_inputs - sum(len(k) for k in stats.kept)
        if room > 0:
            stats.kept.append(rows[:room].clone())
    return hook


def require_samples(calibration: Calibration, names: Iterable[str]) -> None:
    """Refuse a calibration too small to pin down a layer's input second moment.

    A layer with ``in`` inputs needs at least ``in`` input vectors (fewer leave its second-moment
    matrix rank-deficient and the data-driven error meaningless outside the seen directions).

    Raises:
        InputError: naming the first such layer and a ``--calib-samples`` value that would do.
    """
    short = [calibration.layers[n] for n in names if calibration.layers[n].count < calibration.layers[n].in_features]
    if not short:
        return
    worst = max(short, key=lambda s: s.in_features / max(s.count, 1))
    per_sample = max(worst.count / max(calibration.samples, 1), 1e-12)
    needed = max(math.ceil(stats.in_features / per_sample) for stats in short)
    suggestion = 256 * math.ceil(2 * needed / 256)
    raise InputError(f"calibration data {calibration.dataset} gave layer '{worst.name}' only {worst.count} input "
                     f"vectors but it has {worst.in_features} inputs; data-driven ranks need at least as many "
                     f"vectors as inputs: use --calib-samples {suggestion} (from a set that large)")
