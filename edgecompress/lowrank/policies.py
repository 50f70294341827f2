"""Rank policies: how many singular values each Linear layer keeps.

A policy is a frozen dataclass (it serialises into build.json). Per-layer policies implement
``rank_for``; global ones (a budget search) override ``plan``. Register a new policy with
``@register`` and it is available by name to the CLI without touching the others.
A rank of ``None`` in a plan means "keep this layer dense".
"""

from __future__ import annotations

import importlib
import math
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, ClassVar, Mapping

from edgecompress.errors import InputError
from edgecompress.lowrank.spectrum import LayerSpectrum


@dataclass
class PolicyContext:
    """What a policy may need beyond the spectra: calibration statistics, an evaluator, progress."""

    calibration: Mapping[str, Any] | None = None
    evaluate: Callable[[Mapping[str, int | None]], float] | None = None
    progress: bool = False
    extras: dict[str, Any] = field(default_factory=dict)
    # status lines for long work (the build's spinner), None = silent
    on_progress: Callable[[str], None] | None = None
    # factor sources (anything with ``factors(rank) -> (first, second)``) by layer name, filled by
    # policies whose factors are not the truncated SVD of W (data-aware, convex); read by compress()
    factors: dict[str, Any] = field(default_factory=dict)
    # round every chosen rank up to a multiple of this (SIMD-friendly shapes)
    round_to: int = 1
    # with calibration: every policy chooses ranks on, and factors, the activation-whitened spectrum
    # (SVD of W L, L the Cholesky factor of the input second moment; SVD-LLM's truncation-aware whitening)
    whiten: bool = False
    # calibration inputs (an array, a dict of named arrays, or a list of batches) for the sequential refit:
    # once the ranks are chosen, every factor pair is refit in execution order to its dense layer's output
    # on the inputs the compressed prefix produces, biases corrected (lowrank/refit.py; SVD-LLM's update)
    refit_data: Any = None
    # with refit_data: weigh each layer's refit error by how much it moves the sentence embedding
    # (label-free Fisher metric, lowrank/output_metric.py; embedding models only)
    refit_metric: bool = False

    def __post_init__(self) -> None:
        if self.round_to < 1:
            raise InputError(f"--round-to must be >= 1, got {self.round_to}")


@dataclass(frozen=True)
class RankPolicy(ABC):
    """Base class: maps every layer's spectrum to a rank."""

    name: ClassVar[str]
    needs_calibration: ClassVar[bool] = False

    def plan(self, spectra: Mapping[str, LayerSpectrum], context: PolicyContext) -> dict[str, int | None]:
        """Rank per layer name (None keeps the layer dense)."""
        return {name: self.rank_for(spectrum, context) for name, spectrum in spectra.items()}

    @abstractmethod
    def rank_for(self, spectrum: LayerSpectrum, context: PolicyContext) -> int:
        """The rank this policy keeps for one layer (1..max_rank)."""

    def to_json(self) -> dict[str, Any]:
        """``{"name": ..., **fields}`` for build.json."""
        return {"name": self.name, **asdict(self)}


POLICIES: dict[str, type[RankPolicy]] = {}
# modules that register more policies; imported on first lookup so this file never names their classes
PLUGIN_MODULES = ("edgecompress.lowrank.data_policies", "edgecompress.lowrank.training")


def _load_plugins() -> None:
    for module in PLUGIN_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise


def register(cls: type[RankPolicy]) -> type[RankPolicy]:
    """Class decorator: make a policy available by its ``name``."""
    POLICIES[cls.name] = cls
    return cls


def make_policy(name: str, **options: Any) -> RankPolicy:
    """Instantiate a registered policy, ignoring options it does not take (None = default)."""
    _load_plugins()
    if name not in POLICIES:
        raise InputError(f"unknown policy {name!r}; choose one of: {', '.join(sorted(POLICIES))}")
    cls = POLICIES[name]
    fields = cls.__dataclass_fields__
    return cls(**{k: v for k, v in options.items() if k in fields and v is not None})


@register
@dataclass(frozen=True)
class UniformPolicy(RankPolicy):
    """The same rank for every layer (capped at the layer's full rank): the conventional baseline."""

    name: ClassVar[str] = "uniform"
    rank: int = 32

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise InputError(f"--rank must be >= 1, got {self.rank}")

    def rank_for(self, spectrum: LayerSpectrum, context: PolicyContext) -> int:
        return min(self.rank, spectrum.max_rank)


@register
@dataclass(frozen=True)
class EnergyPolicy(RankPolicy):
    """ARSVD: the smallest r with sum_{i<=r} s_i^2 / sum_i s_i^2 >= threshold."""

    name: ClassVar[str] = "energy"
    threshold: float = 0.95

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise InputError(f"--energy must be in (0, 1], got {self.threshold}")

    def rank_for(self, spectrum: LayerSpectrum, context: PolicyContext) -> int:
        return spectrum.rank_for_energy(self.threshold)  # the top singular values only


def spectral_entropy(spectrum: LayerSpectrum) -> float:
    """Shannon entropy (nats) of the normalised energy distribution p_i = s_i^2 / sum_j s_j^2."""
    energy = spectrum.s ** 2
    total = float(energy.sum())
    if total == 0.0:
        return 0.0
    p = energy / total
    p = p[p > 0]
    return float(-(p * p.log()).sum())


@register
@dataclass(frozen=True)
class EntropyPolicy(RankPolicy):
    """ARSVD's spectral-entropy variant: r = ceil(scale * exp(H)), H the entropy of p_i = s_i^2/sum s^2.

    exp(H) is the "effective rank" of the spectrum: the number of equally strong singular values
    with the same entropy. A flat spectrum keeps everything, a spiky one keeps few. ``scale``
    trades size for fidelity (1.0 = the effective rank itself).
    """

    name: ClassVar[str] = "entropy"
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.scale <= 0:
            raise InputError(f"--entropy-scale must be > 0, got {self.scale}")

    def rank_for(self, spectrum: LayerSpectrum, context: PolicyContext) -> int:
        effective = math.exp(spectral_entropy(spectrum))
        return max(1, min(spectrum.max_rank, math.ceil(self.scale * effective - 1e-9)))
