"""Singular value decomposition of each Linear layer, computed once and reused by every policy."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass(frozen=True)
class LayerSpectrum:
    """A Linear layer's SVD ``W = U diag(s) Vh`` (float64, descending ``s``)."""

    name: str
    in_features: int
    out_features: int
    has_bias: bool
    u: torch.Tensor = field(repr=False)
    s: torch.Tensor = field(repr=False)
    vh: torch.Tensor = field(repr=False)

    @property
    def max_rank(self) -> int:
        return int(self.s.numel())

    @property
    def dense_params(self) -> int:
        """Weights plus bias of the dense layer."""
        return self.in_features * self.out_features + (self.out_features if self.has_bias else 0)

    def factored_params(self, rank: int) -> int:
        """Weights plus bias of the rank-``rank`` factor pair."""
        return rank * (self.in_features + self.out_features) + (self.out_features if self.has_bias else 0)

    def pays(self, rank: int) -> bool:
        """True when a rank-``rank`` pair has fewer weights than the dense matrix: r(in+out) < in*out."""
        return rank * (self.in_features + self.out_features) < self.in_features * self.out_features

    @property
    def break_even_rank(self) -> int:
        """The largest rank that still pays (0 when none does)."""
        return (self.in_features * self.out_features - 1) // (self.in_features + self.out_features)

    def energy_kept(self, rank: int) -> float:
        """Fraction of the squared Frobenius norm kept by the top ``rank`` singular values."""
        total = float((self.s ** 2).sum())
        return 1.0 if total == 0 else float((self.s[:rank] ** 2).sum()) / total

    def cumulative_energy(self) -> torch.Tensor:
        """``cumulative_energy()[r-1]`` = energy kept at rank r."""
        energy = self.s ** 2
        total = energy.sum()
        return torch.ones_like(energy) if total == 0 else torch.cumsum(energy, 0) / total

    def factors(self, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Balanced factors ``first`` (rank x in) and ``second`` (out x rank) with second @ first = W_r."""
        root = torch.sqrt(self.s[:rank])
        first = root[:, None] * self.vh[:rank]
        second = self.u[:, :rank] * root[None, :]
        return first.float().contiguous(), second.float().contiguous()


def linear_layers(model: nn.Module, exclude: str | None = None) -> dict[str, nn.Linear]:
    """Every ``nn.Linear`` in the module tree by qualified name, minus names matching ``exclude``."""
    pattern = re.compile(exclude) if exclude else None
    return {name: module for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and not (pattern and pattern.search(name))}


HEAD_KEPT_REASON = "classifier head (the last Linear) kept dense; --compress-head includes it"


def head_name(model: nn.Module, exclude: str | None = None) -> str | None:
    """The last selected Linear layer (the classifier head), when at least two are selected."""
    names = list(linear_layers(model, exclude))
    return names[-1] if len(names) >= 2 else None


def exclude_head(model: nn.Module, exclude: str | None) -> str | None:
    """``exclude`` plus the exact name of :func:`head_name`: truncating a 10-row head saves little
    and costs much."""
    head = head_name(model, exclude)
    if head is None:
        return exclude
    pattern = f"^{re.escape(head)}$"
    return f"{pattern}|{exclude}" if exclude else pattern


def layer_spectrum(name: str, linear: nn.Linear) -> LayerSpectrum:
    """SVD of one layer in float64 (deterministic on a given machine)."""
    weight = linear.weight.detach().to(torch.float64)
    u, s, vh = torch.linalg.svd(weight, full_matrices=False)
    return LayerSpectrum(name, linear.in_features, linear.out_features, linear.bias is not None, u, s, vh)


def model_spectra(model: nn.Module, exclude: str | None = None) -> dict[str, LayerSpectrum]:
    """Spectra of all selected Linear layers, in module order."""
    return {name: layer_spectrum(name, linear) for name, linear in linear_layers(model, exclude).items()}
