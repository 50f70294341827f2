"""Singular value decomposition of each Linear layer, computed lazily and only as far as a policy needs.

A :class:`LayerSpectrum` holds a reference to the layer's weight (no copy) and decomposes it on
demand, one layer at a time:

* ``top(k)``: the top-``k`` singular triplets. Small matrices (``min(m, n) <= EXACT_MAX_DIM``) and
  ranks that are not well below ``min(m, n)`` take the exact float64 SVD (deterministic, the same
  numbers as always); otherwise a randomized SVD (Halko, Martinsson & Tropp 2011: a seeded Gaussian
  sketch with ``oversample`` extra columns, ``power_iterations`` re-orthonormalised power
  iterations, float32 products, a float64 SVD of the small projected matrix).
* ``s``: the whole spectrum (entropy rule, budget search): the exact SVD.
* ``rank_for_energy(tau)``: the energy rule needs the top singular values only, since the total
  energy is ``||W||_F^2``: ``k`` doubles until the kept energy reaches ``tau``.

Every truncation is ``P W`` for an orthogonal projection ``P`` (exact or randomized), so its
relative error is ``sqrt(1 - kept energy)``; :meth:`LayerSpectrum.svd_record` reports it per layer
with the path taken (``build.json`` ``layers[].svd``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from edgecompress.errors import InputError

EXACT_MAX_DIM = 1024  # min(m, n) up to this: exact float64 SVD (under ~1 s on one core)
OVERSAMPLE = 32  # extra sketch columns beyond k
POWER_ITERATIONS = 4  # power iterations of the randomized range finder
SEED = 0  # the Gaussian sketch's seed: the randomized path is deterministic too
FIRST_K = 64  # the energy rule's first sketch size (doubled until the threshold is met)
ROW_CHUNK = 2048  # rows per step when summing ||W||_F^2 in float64

Progress = Callable[[str], None]


@dataclass(frozen=True)
class SvdSettings:
    """When and how the randomized SVD replaces the exact one."""

    exact_max_dim: int = EXACT_MAX_DIM
    oversample: int = OVERSAMPLE
    power_iterations: int = POWER_ITERATIONS
    seed: int = SEED

    def randomized(self, k: int, min_dim: int) -> bool:
        """True when ``k`` (plus oversampling) is well below ``min_dim`` of a large matrix: at most
        half of it, where the sketch still costs a fraction of the exact SVD."""
        return min_dim > self.exact_max_dim and 2 * (k + self.oversample) <= min_dim


SVD_MODES = ("auto", "exact")


def svd_settings(mode: str) -> SvdSettings:
    """``--svd auto`` (the defaults) or ``exact`` (the exact float64 SVD for every layer, however large)."""
    if mode not in SVD_MODES:
        raise InputError(f"--svd must be one of {', '.join(SVD_MODES)}, got {mode!r}")
    return SvdSettings() if mode == "auto" else SvdSettings(exact_max_dim=1 << 62)


def randomized_svd(matrix: torch.Tensor, k: int, settings: SvdSettings) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-``k`` ``(u, s, vh)`` of ``matrix`` (float64 results, float32 products) by a seeded sketch."""
    work = matrix.detach().float()
    sketch = min(k + settings.oversample, min(work.shape))
    generator = torch.Generator().manual_seed(settings.seed)
    omega = torch.randn(work.shape[1], sketch, generator=generator, dtype=torch.float32)
    basis = torch.linalg.qr(work @ omega).Q
    for _ in range(settings.power_iterations):
        basis = torch.linalg.qr(work @ torch.linalg.qr(work.T @ basis).Q).Q
    small = (basis.T @ work).double()  # sketch x n
    u_small, s, vh = torch.linalg.svd(small, full_matrices=False)
    return (basis.double() @ u_small[:, :k]), s[:k], vh[:k]


def top_until(matrix: torch.Tensor, enough: Callable[[torch.Tensor], bool],
              settings: SvdSettings) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, str]:
    """The top singular triplets of ``matrix`` until ``enough(s)``: randomized with ``k`` doubling
    from :data:`FIRST_K` while ``k`` is well below the full rank, else the exact float64 SVD.
    Returns ``(u, s, vh, path)``, ``path`` "randomized" or "exact"."""
    k = FIRST_K
    while settings.randomized(k, min(matrix.shape)):
        u, s, vh = randomized_svd(matrix, k, settings)
        if enough(s):
            return u, s, vh, "randomized"
        k *= 2
    u, s, vh = torch.linalg.svd(matrix.to(torch.float64), full_matrices=False)
    return u, s, vh, "exact"


def squared_norm(matrix: torch.Tensor) -> float:
    """``||matrix||_F^2`` accumulated in float64, a block of rows at a time (no full float64 copy)."""
    return float(sum(float(block.double().square().sum()) for block in torch.split(matrix.detach(), ROW_CHUNK)))


@dataclass(frozen=True)
class LayerSpectrum:
    """A Linear layer's SVD ``W = U diag(s) Vh`` (float64, descending ``s``), computed on demand.

    Either give ``weight`` (decomposed lazily) or the decomposition ``u, s, vh`` itself.
    """

    name: str
    in_features: int
    out_features: int
    has_bias: bool
    u: torch.Tensor | None = field(default=None, repr=False)
    s_given: torch.Tensor | None = field(default=None, repr=False)
    vh: torch.Tensor | None = field(default=None, repr=False)
    weight: torch.Tensor | None = field(default=None, repr=False)
    settings: SvdSettings = field(default_factory=SvdSettings)
    label: str = ""  # "layer 2/5" in progress messages
    on_progress: Progress | None = field(default=None, repr=False, compare=False)
    _cache: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.s_given is not None:
            self._cache.update(path="exact", u=self.u, s=self.s_given, vh=self.vh, k=int(self.s_given.numel()))
        elif self.weight is None:
            raise ValueError("LayerSpectrum needs a weight or its decomposition (u, s, vh)")

    @property
    def max_rank(self) -> int:
        """min(in, out), or the length of a given (possibly shorter) spectrum."""
        return int(self.s_given.numel()) if self.s_given is not None else min(self.in_features, self.out_features)

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

    # -- the decomposition, computed as far as asked -------------------------------------------

    def weight_matrix(self) -> torch.Tensor:
        """The (out x in) weight: the layer's own tensor, or rebuilt from a given decomposition."""
        if self.weight is not None:
            return self.weight.detach()
        return (self._cache["u"] * self._cache["s"]) @ self._cache["vh"]

    @property
    def exact(self) -> bool:
        """True once the full exact decomposition is held."""
        return self._cache.get("path") == "exact"

    def _report(self, what: str) -> None:
        if self.on_progress:
            where = f"{self.label} " if self.label else ""
            self.on_progress(f"SVD {where}({self.name}, {self.out_features}x{self.in_features}): {what}")

    def _exact(self) -> None:
        if not self.exact:
            self._report("exact")
            u, s, vh = torch.linalg.svd(self.weight_matrix().to(torch.float64), full_matrices=False)
            self._cache.update(path="exact", u=u, s=s, vh=vh, k=int(s.numel()))

    def top(self, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The top-``k`` singular triplets ``(u, s, vh)`` (randomized when ``k`` is well below the
        full rank of a large matrix, exact otherwise)."""
        k = max(1, min(k, self.max_rank))
        if self._cache.get("k", 0) < k:
            if self.weight is not None and self.settings.randomized(k, self.max_rank):
                self._report(f"randomized, k={k}")
                u, s, vh = randomized_svd(self.weight, k, self.settings)
                self._cache.update(path="randomized", u=u, s=s, vh=vh, k=k)
            else:
                self._exact()
        cache = self._cache
        return cache["u"][:, :k], cache["s"][:k], cache["vh"][:k]

    @property
    def s(self) -> torch.Tensor:
        """The whole spectrum (exact)."""
        self._exact()
        return self._cache["s"]

    @property
    def total_energy(self) -> float:
        """``||W||_F^2``."""
        if "total" not in self._cache:
            self._cache["total"] = (float((self._cache["s"] ** 2).sum()) if self.exact
                                    else squared_norm(self.weight_matrix()))
        return self._cache["total"]

    def energy_kept(self, rank: int) -> float:
        """Fraction of the squared Frobenius norm kept by the top ``rank`` singular values."""
        kept = float((self.top(rank)[1] ** 2).sum())  # first: an exact SVD also gives the total as sum(s^2)
        total = self.total_energy
        return 1.0 if total == 0 else kept / total

    def relative_error(self, rank: int) -> float:
        """``||W - W_rank||_F / ||W||_F`` of the truncation :meth:`factors` returns."""
        return max(0.0, 1.0 - self.energy_kept(rank)) ** 0.5

    def cumulative_energy(self) -> torch.Tensor:
        """``cumulative_energy()[r-1]`` = energy kept at rank r (the whole spectrum)."""
        energy = self.s ** 2
        total = energy.sum()
        return torch.ones_like(energy) if total == 0 else torch.cumsum(energy, 0) / total

    def rank_for_energy(self, threshold: float) -> int:
        """The smallest r keeping ``threshold`` of the energy: the top singular values only, ``k``
        doubling from :data:`FIRST_K` until the threshold is met (the exact spectrum once ``k`` is
        no longer well below the full rank)."""
        if not self.exact and self.weight is not None and self.settings.randomized(FIRST_K, self.max_rank):
            total = self.total_energy

            def enough(values: torch.Tensor) -> bool:
                return total == 0 or float((values ** 2).sum()) >= (threshold - 1e-12) * total

            self._report("randomized, k doubling until the energy threshold")
            u, s, vh, path = top_until(self.weight, enough, self.settings)
            if path == "exact":
                self._report("exact")
            self._cache.update(path=path, u=u, s=s, vh=vh, k=int(s.numel()))
        values = self._cache["s"] if self.exact or "s" in self._cache else self.s
        cumulative = torch.cumsum(values ** 2, 0) / self.total_energy if self.total_energy else torch.ones_like(values)
        hits = (cumulative >= threshold - 1e-12).nonzero()
        return int(hits[0]) + 1 if len(hits) else (self.max_rank if self.exact else int(values.numel()))

    def factors(self, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Balanced factors ``first`` (rank x in) and ``second`` (out x rank) with second @ first = W_r."""
        u, s, vh = self.top(rank)
        root = torch.sqrt(s)
        first = root[:, None] * vh
        second = u * root[None, :]
        return first.float().contiguous(), second.float().contiguous()

    def svd_record(self, rank: int) -> dict[str, Any]:
        """How the rank-``rank`` truncation was computed and its relative error (build.json ``svd``)."""
        self.top(rank)
        record: dict[str, Any] = {"path": self._cache["path"], "relative_error": round(self.relative_error(rank), 6)}
        if record["path"] == "randomized":
            settings = self.settings
            record.update(k=self._cache["k"], oversample=settings.oversample,
                          power_iterations=settings.power_iterations, seed=settings.seed)
        return record

    def release(self) -> None:
        """Drop the decomposition (keeps the weight reference and the total energy)."""
        for key in ("u", "s", "vh", "k", "path"):
            self._cache.pop(key, None)


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


def layer_spectrum(name: str, linear: nn.Linear, settings: SvdSettings | None = None, label: str = "",
                   on_progress: Progress | None = None) -> LayerSpectrum:
    """One layer's spectrum, decomposed lazily (see :class:`LayerSpectrum`); the weight is not copied."""
    return LayerSpectrum(name, linear.in_features, linear.out_features, linear.bias is not None,
                         weight=linear.weight.detach(), settings=settings or SvdSettings(), label=label,
                         on_progress=on_progress)


def model_spectra(model: nn.Module, exclude: str | None = None, *, settings: SvdSettings | None = None,
                  on_progress: Progress | None = None) -> dict[str, LayerSpectrum]:
    """Spectra of all selected Linear layers, in module order (nothing is decomposed yet)."""
    layers = linear_layers(model, exclude)
    return {name: layer_spectrum(name, linear, settings, f"layer {i + 1}/{len(layers)}", on_progress)
            for i, (name, linear) in enumerate(layers.items())}
