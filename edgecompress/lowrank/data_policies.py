"""Data-driven rank policies (DDLR): ranks chosen from what each layer does on real inputs.

``data``: the closed-form minimiser. For a layer ``W`` (out x in) and calibration inputs ``X``
(in x n), the rank-r matrix minimising ``||(W - W_r) X||_F`` is found from ``C = X X^T``:
with ``L`` the Cholesky factor of ``C + lam*I`` (``lam`` a tiny ridge relative to ``trace(C)/in``,
so singular ``C`` works), ``||(W - W_r) X||_F^2 ~= ||(W - W_r) L||_F^2``; the best rank-r
approximation of ``M = W L = U S V^T`` is its truncated SVD, so
``W_r = (U_r S_r)(V_r^T L^-1)``. The policy keeps the smallest rank whose relative output error
``||(W - W_r) X||_F / ||W X||_F`` is at most ``max_error``. That error is reported exactly (for the
unregularised ``C``) at every rank from one SVD: with ``a_i = L^-T v_i``,
``||(W - W_r) X||_F^2 = sum_{i>r} s_i^2 (1 - lam ||a_i||^2)``.

``ddlr-convex``: the paper's nuclear-norm relaxation, solved per layer by
:func:`edgecompress.lowrank.convex.solve_ddlr` (program in that module's docstring).

Both register with :func:`edgecompress.lowrank.policies.register` and need ``--calib``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

import torch

from edgecompress.errors import InputError
from edgecompress.lowrank.calibration import LayerInputs
from edgecompress.lowrank.convex import ConvexResult, solve_ddlr
from edgecompress.lowrank.policies import PolicyContext, RankPolicy, register
from edgecompress.lowrank.spectrum import LayerSpectrum, squared_norm, top_until

RIDGE = 1e-8  # lam = RIDGE * trace(C) / in
CACHE_KEY = "data_spectra"


@dataclass(frozen=True)
class DataSpectrum:
    """A layer's data-aware decomposition ``W = sum_i u_i s_i a_i^T`` (``s`` from SVD of ``W L``)."""

    name: str
    in_features: int
    out_features: int
    u: torch.Tensor = field(repr=False)  # out x k, orthonormal columns
    s: torch.Tensor = field(repr=False)  # k, descending
    a: torch.Tensor = field(repr=False)  # k x in, rows v_i^T L^-1
    squared_error: torch.Tensor = field(repr=False)  # k+1: ||(W - W_r) X||_F^2 for r = 0..k
    vectors: int  # calibration input vectors behind C

    @property
    def max_rank(self) -> int:
        return int(self.s.numel())

    def relative_error(self, rank: int) -> float:
        """``||(W - W_r) X||_F / ||W X||_F`` on the calibration inputs (0 when ``W X`` is 0)."""
        total = float(self.squared_error[0])
        rank = max(0, min(rank, self.max_rank))
        return 0.0 if total <= 0 else math.sqrt(max(float(self.squared_error[rank]), 0.0) / total)

    def error_curve(self) -> torch.Tensor:
        """``error_curve()[r]`` = relative error at rank r, r = 0..max_rank."""
        total = float(self.squared_error[0])
        return torch.zeros_like(self.squared_error) if total <= 0 else (self.squared_error.clamp_min(0) / total).sqrt()

    def rank_for_error(self, max_error: float) -> int:
        """The smallest rank (>= 1) whose relative error is at most ``max_error``."""
        hits = (self.error_curve()[1:] <= max_error + 1e-12).nonzero()
        return int(hits[0]) + 1 if len(hits) else self.max_rank

    def energy_kept(self, rank: int) -> float:
        """``||W_r||_F^2 / ||W||_F^2`` of the data-aware truncation (``U`` is orthonormal)."""
        energy = (self.s[:, None] * self.a).square().sum(dim=1)
        total = float(energy.sum())
        return 1.0 if total == 0 else float(energy[:rank].sum()) / total

    def factors(self, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``first`` (rank x in) and ``second`` (out x rank), each component balanced in norm."""
        a, u, s = self.a[:rank], self.u[:, :rank], self.s[:rank]
        norms = a.norm(dim=1).clamp_min(1e-300)
        scale = torch.sqrt(s / norms)  # first_i = a_i * t_i, second_i = u_i s_i / t_i, equal norms
        first = a * scale[:, None]
        second = u * (s / scale.clamp_min(1e-300))[None, :]
        return first.float().contiguous(), second.float().contiguous()


def data_spectrum(spectrum: LayerSpectrum, inputs: LayerInputs, ridge: float = RIDGE,
                  max_error: float | None = None) -> DataSpectrum:
    """The closed-form data-aware decomposition of one layer (see module docstring).

    With ``max_error`` only the top components up to that relative error are computed (randomized,
    :func:`edgecompress.lowrank.spectrum.top_until`, on large layers; the errors come from the total
    ``||W X||_F^2 = ||W L||_F^2 - lam ||W||_F^2``); without it, the whole exact decomposition.
    """
    weight = spectrum.weight_matrix().to(torch.float64)
    gram = inputs.gram
    lam = ridge * max(float(torch.trace(gram)) / spectrum.in_features, 1e-300)
    eye = torch.eye(spectrum.in_features, dtype=torch.float64)
    chol = torch.linalg.cholesky(gram + lam * eye)
    product = weight @ chol
    if max_error is None:
        u, s, vh, path = *torch.linalg.svd(product, full_matrices=False), "exact"
    else:
        total = max(squared_norm(product) - lam * squared_norm(weight), 0.0)
        u, s, vh, path = top_until(product, lambda s: float((s * s).sum()) >= (1 - max_error ** 2) * total,
                                   spectrum.settings)
    a = torch.linalg.solve_triangular(chol.T, vh.T, upper=True).T  # rows v_i^T L^-1
    weights = (1.0 - lam * (a * a).sum(dim=1)).clamp_min(0.0)  # a_i^T C a_i, exactly
    if path == "exact":
        tail = torch.flip(torch.cumsum(torch.flip(s * s * weights, [0]), 0), [0])
        squared_error = torch.cat([tail, torch.zeros(1, dtype=torch.float64)])
    else:
        kept = torch.cumsum(s * s * weights, 0)
        squared_error = (total - torch.cat([torch.zeros(1, dtype=torch.float64), kept])).clamp_min(0.0)
    return DataSpectrum(spectrum.name, spectrum.in_features, spectrum.out_features, u, s, a, squared_error,
                        inputs.count)


def layer_inputs(context: PolicyContext, name: str) -> LayerInputs:
    """The calibration statistics of one layer, or a clear error when there are none."""
    if not context.calibration or name not in context.calibration:
        raise InputError("data-driven ranks need calibration data: give --calib DATA "
                         "(an .npz, an MNIST-style folder such as mnist:train, or digits:train)")
    return context.calibration[name]


def data_spectra(spectra: Mapping[str, LayerSpectrum], context: PolicyContext,
                 max_error: float | None = None) -> dict[str, DataSpectrum]:
    """Data-aware decompositions of the given layers, computed once per context and cached (only
    down to ``max_error`` when given; see :func:`data_spectrum`)."""
    cache: dict[str, DataSpectrum] = context.extras.setdefault(CACHE_KEY, {})
    for index, (name, spectrum) in enumerate(spectra.items()):
        if name not in cache:
            if context.on_progress:
                context.on_progress(f"data-aware SVD: layer {index + 1}/{len(spectra)} ({name})")
            cache[name] = data_spectrum(spectrum, layer_inputs(context, name), max_error=max_error)
    return {name: cache[name] for name in spectra}


def whitened_spectrum(decomposition: DataSpectrum, has_bias: bool) -> LayerSpectrum:
    """The data-aware decomposition as a :class:`LayerSpectrum` (``vh`` = the rows ``a_i``, not orthonormal).

    Its singular values are those of ``W L``: energy kept is the fraction of the layer's OUTPUT energy
    on the calibration inputs, so any spectrum-based policy (uniform, energy, entropy) reads it as is.
    """
    d = decomposition
    return LayerSpectrum(d.name, d.in_features, d.out_features, has_bias, d.u, d.s, d.a)


def whiten(spectra: Mapping[str, LayerSpectrum], context: PolicyContext) -> dict[str, LayerSpectrum]:
    """Whitened spectra of the layers; the data-aware factors go into ``context.factors``."""
    decompositions = data_spectra(spectra, context)
    context.factors.update(decompositions)
    return {name: whitened_spectrum(decompositions[name], spectra[name].has_bias) for name in spectra}


def data_errors(context: PolicyContext, ranks: Mapping[str, int | None]) -> dict[str, float]:
    """Relative output error on the calibration inputs of each factorized layer whose data-aware
    decomposition was computed (what build.json reports next to the ranks)."""
    cache: dict[str, DataSpectrum] = context.extras.get(CACHE_KEY, {})
    return {name: round(cache[name].relative_error(rank), 6) for name, rank in ranks.items()
            if rank is not None and name in cache}


def _check_error(max_error: float) -> None:
    if not 0.0 < max_error < 1.0:
        raise InputError(f"--max-error must be in (0, 1), got {max_error}")


@register
@dataclass(frozen=True)
class DataPolicy(RankPolicy):
    """DDLR, closed form: per layer the lowest rank with ``||(W - W_r)X||_F / ||WX||_F <= max_error``."""

    name: ClassVar[str] = "data"
    needs_calibration: ClassVar[bool] = True
    max_error: float = 0.1

    def __post_init__(self) -> None:
        _check_error(self.max_error)

    def plan(self, spectra: Mapping[str, LayerSpectrum], context: PolicyContext) -> dict[str, int | None]:
        # only the components down to max_error (exact everything when ranks are rounded up past them)
        decompositions = data_spectra(spectra, context, max_error=self.max_error if context.round_to == 1 else None)
        context.factors.update(decompositions)
        return {name: d.rank_for_error(self.max_error) for name, d in decompositions.items()}

    def rank_for(self, spectrum: LayerSpectrum, context: PolicyContext) -> int:
        return self.plan({spectrum.name: spectrum}, context)[spectrum.name]


@dataclass(frozen=True)
class ConvexFactors:
    """Factors of a ``ddlr-convex`` solution (its own SVD, truncated)."""

    result: ConvexResult
    weight_energy: float  # ||W||_F^2 of the original layer

    def energy_kept(self, rank: int) -> float:
        """``||Q_r||_F^2 / ||W||_F^2`` of the truncated solution."""
        return float(self.result.s[:rank].square().sum()) / self.weight_energy if self.weight_energy else 1.0

    def factors(self, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
        u, s, vh = self.result.u[:, :rank], self.result.s[:rank], self.result.vh[:rank]
        root = torch.sqrt(s)
        return (root[:, None] * vh).float().contiguous(), (u * root[None, :]).float().contiguous()


@register
@dataclass(frozen=True)
class DDLRConvexPolicy(RankPolicy):
    """DDLR as in the paper: per layer, the minimum-nuclear-norm weights that fit the calibration
    outputs within ``max_error`` (ReLU-aware where a ReLU follows), solved by ADMM with singular-value
    thresholding; the rank is read off the solution. Slow on big layers, exact rather than fast.

    ``refit`` (default): the factors at that rank are the closed-form data-aware ones (the ``data``
    policy's), a debiasing step: the nuclear norm shrinks every singular value it keeps, and on the
    reference MLP the shrunk weights lose ~18 points where the refit loses <1. ``refit=False``
    (``--no-refit``) keeps the convex solution's own weights.
    """

    name: ClassVar[str] = "ddlr-convex"
    needs_calibration: ClassVar[bool] = True
    needs_inputs: ClassVar[bool] = True  # the solver works on input rows, not only on X X^T
    max_error: float = 0.1
    max_iter: int = 1000
    tol: float = 1e-4
    refit: bool = True

    def __post_init__(self) -> None:
        _check_error(self.max_error)

    def plan(self, spectra: Mapping[str, LayerSpectrum], context: PolicyContext) -> dict[str, int | None]:
        ranks: dict[str, int | None] = {}
        refits = data_spectra(spectra, context) if self.refit else {}
        solutions: dict[str, dict[str, Any]] = context.extras.setdefault("ddlr_convex", {})
        for index, (name, spectrum) in enumerate(spectra.items()):
            inputs = layer_inputs(context, name)
            if not inputs.kept:
                raise InputError("ddlr-convex needs the calibration input rows; calibrate with keep_inputs > 0")

            def report(message: str, _i: int = index, _name: str = name) -> None:
                if context.on_progress:
                    context.on_progress(f"ddlr-convex layer {_i + 1}/{len(spectra)} ({_name}): {message}")

            weight = spectrum.weight_matrix().to(torch.float64)
            result = solve_ddlr(weight, inputs.inputs, bias=inputs.bias, relu=inputs.relu_after,
                                max_error=self.max_error, max_iter=self.max_iter, tol=self.tol, progress=report)
            context.factors[name] = refits[name] if self.refit else ConvexFactors(result, spectrum.total_energy)
            solutions[name] = {**result.to_json(), "refit": self.refit}
            ranks[name] = max(result.rank, 1)
        return ranks

    def rank_for(self, spectrum: LayerSpectrum, context: PolicyContext) -> int:
        return self.plan({spectrum.name: spectrum}, context)[spectrum.name] or spectrum.max_rank
