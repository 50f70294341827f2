"""The benchmark pages' baseline step: the methods that are not ``edgecompress build`` policies.

Everything a build can make is an entry of the page's sweep config (benchmarks/sweeps/*.toml).
What remains is made here, in the page's process, after the sweep and from its results:

- ``magnitude``: global magnitude pruning of the dense model to exactly the Linear parameter count
  of every target row (the anchors and the uniform ranks of the sweep), the Net-Trim-style
  sparsity baseline of the DDLR claim;
- ``int8``: onnxruntime dynamic int8 of the dense model (no low rank);
- ``truncate`` / ``finetune``: post-hoc truncation at an SVD-training entry's per-layer ranks, as is
  and fine-tuned with distillation for as many epochs as SVD training trained (the SVD-training
  claims need another entry's ranks, which a sweep entry cannot name).

Each yields :class:`Candidate` torch models; ``measure.py`` exports, verifies and benchmarks them
the same way as the sweep benchmarks its entries.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgecompress.data import Dataset
from edgecompress.lowrank.factorize import CompressionPlan, apply_ranks, count_linear_params, layer_plan
from edgecompress.lowrank.spectrum import LayerSpectrum, linear_layers, model_spectra

BASELINES = ("magnitude", "int8", "finetune")  # --baselines choices (finetune also makes the truncate rows)


@dataclass
class Artifact:
    """What ``measure.export`` made of a candidate."""

    path: Path
    bytes: int
    seconds: float  # export + simplify + guard (+ int8) + verify
    val_accuracy: float
    verification: dict[str, Any]


@dataclass
class Candidate:
    """One baseline model to measure."""

    label: str
    method: str
    model: nn.Module = field(repr=False)
    linear_params: int  # non-zero weights + biases of all Linear layers (factors included)
    seconds: float  # time it took to make (pruning, truncation, training)
    plan: CompressionPlan | None = field(default=None, repr=False)  # its factor pairs, for the refold guard
    int8: bool = False  # export, then onnxruntime int8
    meta: dict[str, Any] = field(default_factory=dict)
    artifact: Artifact | None = None


def uniform_ranks(spectra: Mapping[str, LayerSpectrum], rank: int) -> dict[str, int | None]:
    return {name: min(rank, s.max_rank) for name, s in spectra.items()}


def ranks_params(spectra: Mapping[str, LayerSpectrum], ranks: Mapping[str, int | None]) -> int:
    """Linear parameters after ``apply_ranks`` (a rank that does not pay keeps its layer dense)."""
    return sum(layer_plan(spectra[name], rank).params_after for name, rank in ranks.items())


def closest(options: Iterable[tuple[Any, int]], target: int) -> Any:
    """The option whose parameter count is closest to ``target`` (the smaller one on a tie)."""
    return min(options, key=lambda option: (abs(option[1] - target), option[1]))[0]


def magnitude_prune(model: nn.Module, nonzeros: int) -> nn.Module:
    """A copy keeping the ``nonzeros`` - (bias count) largest-magnitude Linear weights, over all layers
    at once (global magnitude pruning); biases are kept."""
    pruned = copy.deepcopy(model)
    layers = list(linear_layers(pruned).values())
    biases = sum(layer.bias.numel() for layer in layers if layer.bias is not None)
    magnitudes = torch.cat([layer.weight.detach().abs().flatten() for layer in layers])
    mask = torch.zeros_like(magnitudes, dtype=torch.bool)
    mask[magnitudes.topk(max(nonzeros - biases, 0)).indices] = True
    with torch.no_grad():
        for layer, keep in zip(layers, mask.split([layer.weight.numel() for layer in layers])):
            layer.weight.mul_(keep.view_as(layer.weight))
    return pruned


def nonzero_params(model: nn.Module) -> int:
    """Non-zero weights plus all biases of the Linear layers."""
    return sum(int(layer.weight.count_nonzero()) + (layer.bias.numel() if layer.bias is not None else 0)
               for layer in linear_layers(model).values())


def csr_bytes(model: nn.Module) -> int:
    """Bytes of the Linear layers stored sparse: CSR (float32 values, int32 column indices and row
    pointers) plus float32 biases; what a sparse format could save, which a dense ONNX file does not."""
    total = 0
    for layer in linear_layers(model).values():
        nnz = int(layer.weight.count_nonzero())
        total += 8 * nnz + 4 * (layer.out_features + 1) + (4 * layer.bias.numel() if layer.bias is not None else 0)
    return total


def magnitude(dense: nn.Module, targets: Mapping[int, list[str]]) -> Iterator[Candidate]:
    """Global magnitude pruning to each target's Linear parameter count (target params -> labels)."""
    for nonzeros, labels in targets.items():
        if nonzeros >= count_linear_params(dense):
            continue
        start = time.perf_counter()
        model = magnitude_prune(dense, nonzeros)
        yield Candidate(f"magnitude nnz={nonzeros:,}", "magnitude", model, nonzero_params(model),
                        time.perf_counter() - start, meta={"targets": labels, "csr_bytes": csr_bytes(model)})


def int8(dense: nn.Module) -> Iterator[Candidate]:
    """onnxruntime dynamic int8 of the dense model (weights int8, no low rank)."""
    yield Candidate("int8 (dense)", "int8", dense, count_linear_params(dense), 0.0, int8=True)


def truncate_and_finetune(dense: nn.Module, train: Dataset, val: Dataset,
                          sources: Iterable[tuple[str, Mapping[str, int | None], int]]) -> Iterator[Candidate]:
    """Per (label, ranks, epochs) of an SVD-training row: the dense model truncated at its ranks, and
    that model fine-tuned (distillation from dense) for ``epochs``."""
    from edgecompress.lowrank.finetune import TrainSettings, finetune

    spectra = model_spectra(dense)
    for label, ranks, epochs in sources:
        start = time.perf_counter()
        truncated, plan = apply_ranks(dense, spectra, {name: ranks.get(name) for name in spectra},
                                      {"name": "truncate", "ranks_of": label})
        seconds = time.perf_counter() - start
        yield Candidate(f"truncated @ {label} ranks", "truncate", truncated, plan.linear_params_after, seconds, plan,
                        meta={"ranks": plan.ranks, "source": label})
        tuned = copy.deepcopy(truncated)
        start = time.perf_counter()
        result = finetune(tuned, train, val, teacher=dense, settings=TrainSettings(epochs=epochs))
        yield Candidate(f"fine-tuned @ {label} ranks", "finetune", tuned, plan.linear_params_after,
                        seconds + time.perf_counter() - start, plan,
                        meta={"ranks": plan.ranks, "source": label, "training": result.to_json()})
