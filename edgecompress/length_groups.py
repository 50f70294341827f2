"""Token batches grouped by length: samples sorted by their attention mask's length, each batch cut
to its longest real sequence (padding columns dropped, real tokens never cut).

Text data is padded to its longest line, so running it in one padded block costs every short
sentence the longest one's length. Grouping does the same work on the real tokens only. Used by
distillation (training and held-out batches) and by build's verification and eval passes
(:func:`run_grouped`, the same grouping for the torch reference and for onnxruntime).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from edgecompress.data import Batch, num_samples
from edgecompress.spec import ModelIO, as_inputs

GROUP = 64
"""Samples per group in verification and eval passes."""

Outputs = dict[str, np.ndarray]


def groupable(io: ModelIO) -> bool:
    """Whether ``io`` has an attention mask over a dynamic "seq" axis (and a dynamic batch)."""
    mask = io.mask_name
    return mask is not None and io.static_batch is None and io.spec(mask).axes[1:2] == ("seq",)


def length_order(named: Mapping[str, np.ndarray], io: ModelIO, seed: int | None) -> np.ndarray:
    """Sample indices sorted by mask length (stable); ``seed``: shuffled first (training batches)."""
    order = np.arange(num_samples(dict(named)))
    if seed is not None:
        order = np.random.default_rng(seed).permutation(order)
    mask = named[io.mask_name] if io.mask_name else None
    if mask is None:
        return order
    return order[np.argsort(mask[order].reshape(len(order), -1).sum(1), kind="stable")]


def trim(batch: dict[str, np.ndarray], io: ModelIO) -> dict[str, np.ndarray]:
    """``batch`` without its all-padding tail columns on the "seq" axes."""
    mask = batch[io.mask_name]
    if mask.ndim != 2 or io.spec(io.mask_name).axes[1] != "seq":
        return batch
    used = np.flatnonzero(mask.any(0))
    length = int(used[-1]) + 1 if used.size else 1
    return {name: array[:, :length] if io.spec(name).axes[1:2] == ("seq",) else array
            for name, array in batch.items()}


def padded_batches(x: Batch, io: ModelIO, size: int, seed: int | None) -> list[dict[str, np.ndarray]]:
    """Batches of named inputs; with an attention mask and a dynamic "seq" axis, samples are grouped by
    length and each batch drops its all-padding tail columns. ``seed``: shuffle before grouping
    (training), None: keep the order (held-out)."""
    named = as_inputs(x, io)
    return _batches(named, length_order(named, io, seed), io, size)


def _batches(named: Mapping[str, np.ndarray], order: np.ndarray, io: ModelIO, size: int) -> list[dict[str, np.ndarray]]:
    """``named`` cut into batches of ``size`` samples in ``order``, each trimmed when the model has a mask."""
    batches = [{name: array[order[start:start + size]] for name, array in named.items()}
               for start in range(0, len(order), size)]
    return [trim(batch, io) for batch in batches] if io.mask_name is not None else batches


def run_grouped(run: Callable[[Batch], Outputs], x: Batch, io: ModelIO, size: int = GROUP) -> Outputs:
    """``run(x)``'s named outputs, computed on length groups of ``x`` (see the module docstring) and put
    back in the samples' order: the same values up to float noise, at the cost of the real tokens.

    Falls back to ``run(x)`` when the model has no masked "seq" axis, when the groups would not differ
    in length, or when an output's shape follows the sequence length (token-level outputs: the groups'
    outputs could not be stacked without changing their padding positions)."""
    if not groupable(io) or num_samples(x) <= size:
        return run(x)
    named = as_inputs(x, io)
    order = length_order(named, io, None)
    groups = _batches(named, order, io, size)
    if len({group[io.mask_name].shape[1] for group in groups}) < 2:
        return run(x)  # one length: a length-dependent output could not be told apart by its shape
    parts: list[Outputs] = []
    for group in groups:
        out = run(group)
        if parts and any(out[k].shape[1:] != parts[0][k].shape[1:] for k in out):
            return run(x)  # a length-dependent output: one padded pass keeps its positions
        parts.append(out)
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    return {k: np.concatenate([p[k] for p in parts])[inverse] for k in parts[0]}


def grouped_runner(run: Callable[[Batch], Outputs], io: ModelIO, size: int = GROUP) -> Callable[[Batch], Outputs]:
    """``run`` wrapped by :func:`run_grouped`."""
    return lambda x: run_grouped(run, x, io, size)
