"""Swap Linear layers for low-rank factor pairs: ``compress(model, policy) -> (model, plan)``."""

from __future__ import annotations

import copy
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from edgecompress.errors import InputError
from edgecompress.lowrank.policies import PolicyContext, RankPolicy
from edgecompress.lowrank.spectrum import LayerSpectrum, linear_layers, model_spectra


class LowRankLinear(nn.Module):
    """``Linear(in, out)`` as two matmuls: ``first`` (in -> rank, no bias), ``second`` (rank -> out, bias)."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.first = nn.Linear(in_features, rank, bias=False)
        self.second = nn.Linear(rank, out_features, bias=bias)

    @classmethod
    def from_spectrum(cls, spectrum: LayerSpectrum, rank: int, bias: torch.Tensor | None) -> "LowRankLinear":
        """The best rank-``rank`` approximation (truncated SVD) of a layer, with its bias."""
        return cls.from_factors(*spectrum.factors(rank), bias)

    @classmethod
    def from_factors(cls, first: torch.Tensor, second: torch.Tensor, bias: torch.Tensor | None) -> "LowRankLinear":
        """A layer computing ``second @ first @ x + bias`` from explicit factors (rank x in, out x rank)."""
        layer = cls(first.shape[1], second.shape[0], first.shape[0], bias=bias is not None)
        with torch.no_grad():
            layer.first.weight.copy_(first)
            layer.second.weight.copy_(second)
            if bias is not None:
                layer.second.bias.copy_(bias)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))

    def dense_weight(self) -> torch.Tensor:
        """The (out x in) product of the factors."""
        return self.second.weight @ self.first.weight

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"


@dataclass(frozen=True)
class LayerPlan:
    """What happened to one Linear layer."""

    name: str
    in_features: int
    out_features: int
    rank: int | None  # None: kept dense
    energy_kept: float
    params_before: int
    params_after: int
    reason: str | None = None  # why it stayed dense
    svd: dict[str, Any] | None = None  # truncated-SVD path and relative error (LayerSpectrum.svd_record)

    @property
    def factorized(self) -> bool:
        return self.rank is not None


@dataclass(frozen=True)
class CompressionPlan:
    """Per-layer ranks and parameter counts of one compression."""

    policy: dict[str, Any]
    layers: tuple[LayerPlan, ...]

    @property
    def linear_params_before(self) -> int:
        return sum(layer.params_before for layer in self.layers)

    @property
    def linear_params_after(self) -> int:
        return sum(layer.params_after for layer in self.layers)

    @property
    def ranks(self) -> dict[str, int | None]:
        return {layer.name: layer.rank for layer in self.layers}

    def to_json(self) -> dict[str, Any]:
        """The ``policy``, ``layers`` and ``totals`` sections of build.json."""
        before, after = self.linear_params_before, self.linear_params_after
        return {
            "policy": self.policy,
            "layers": [{**asdict(layer), "factorized": layer.factorized} for layer in self.layers],
            "totals": {
                "linear_params_before": before,
                "linear_params_after": after,
                "linear_param_ratio": round(before / after, 4) if after else None,
                "layers_factorized": sum(layer.factorized for layer in self.layers),
                "layers_total": len(self.layers),
            },
        }


def replace_submodule(root: nn.Module, name: str, module: nn.Module) -> nn.Module:
    """``root`` with its sub-module ``name`` replaced by ``module``; ``module`` itself when ``name``
    is "" (the root is the layer, e.g. a bare ``nn.Linear``)."""
    if not name:
        return module
    root.set_submodule(name, module)
    return root


def layer_plan(spectrum: LayerSpectrum, rank: int | None, source: Any = None) -> LayerPlan:
    """Plan entry for one layer; a rank that does not pay is turned into "keep dense".

    ``source`` (explicit factors) reports its own ``energy_kept`` when its factors are not the SVD's.
    """
    reason = None
    if rank is not None and not spectrum.pays(rank):
        reason = f"rank {rank} does not pay: r*(in+out) >= in*out (break-even rank {spectrum.break_even_rank})"
        rank = None
    elif rank is None:
        reason = "kept dense by the policy"
    energy = (source or spectrum).energy_kept(rank) if rank is not None else 1.0
    after = spectrum.factored_params(rank) if rank is not None else spectrum.dense_params
    svd = spectrum.svd_record(rank) if rank is not None and (source is None or source is spectrum) else None
    return LayerPlan(spectrum.name, spectrum.in_features, spectrum.out_features, rank,
                     round(energy, 6), spectrum.dense_params, after, reason, svd)


def copy_module(model: nn.Module, skip: Iterable[nn.Module] = ()) -> nn.Module:
    """A deep copy, without torch.fx's pytree deprecation warning that copying a GraphModule prints.

    Modules in ``skip`` (about to be replaced) are not copied: the copy holds a placeholder
    ``nn.Identity`` in their place, so replacing the large layers of a large model never holds two
    copies of their weights.
    """
    memo: dict[int, Any] = {id(module): nn.Identity() for module in skip}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return copy.deepcopy(model, memo)


def with_unplanned_layers(plan: CompressionPlan, model: nn.Module, reason: str, *,
                          exclude: str | None = None) -> CompressionPlan:
    """``plan`` plus a kept-dense entry (``reason``) for each Linear of ``model`` (outside ``exclude``)
    that it does not list, in module order, so its totals cover the whole model."""
    planned = {layer.name: layer for layer in plan.layers}
    entries = []
    for name, linear in linear_layers(model, exclude).items():
        if name in planned:
            entries.append(planned.pop(name))
            continue
        params = sum(p.numel() for p in linear.parameters(recurse=False))
        entries.append(LayerPlan(name, linear.in_features, linear.out_features, None, 1.0, params, params, reason))
    return CompressionPlan(plan.policy, tuple(entries) + tuple(planned.values()))


def apply_ranks(model: nn.Module, spectra: dict[str, LayerSpectrum], ranks: dict[str, int | None],
                policy: dict[str, Any], *, factors: Mapping[str, Any] | None = None) -> tuple[nn.Module, CompressionPlan]:
    """A copy of ``model`` with each layer truncated to its rank (None or non-paying = dense).

    ``factors`` maps layer names to sources with ``factors(rank) -> (first, second)`` that replace
    the truncated SVD of those layers (data-aware or convex solutions).
    """
    plans = [layer_plan(spectrum, ranks.get(name), (factors or {}).get(name, spectrum))
             for name, spectrum in spectra.items()]
    originals = linear_layers(model)
    new_model = copy_module(model, skip=[originals[plan.name] for plan in plans if plan.rank is not None])
    for plan in plans:
        if plan.rank is not None:
            source = (factors or {}).get(plan.name, spectra[plan.name])
            bias = originals[plan.name].bias
            pair = LowRankLinear.from_factors(*source.factors(plan.rank), None if bias is None else bias.detach())
            new_model = replace_submodule(new_model, plan.name, pair)
    from edgecompress.coverage import keep_eager_paths  # (coverage imports lowrank.spectrum)

    keep_eager_paths(new_model)
    if hasattr(new_model, "recompile"):
        new_model.recompile()  # fx GraphModules re-generate code after sub-module swaps
    return new_model, CompressionPlan(policy, tuple(plans))


def compress(model: nn.Module, policy: RankPolicy, *, exclude: str | None = None,
             context: PolicyContext | None = None,
             spectra: dict[str, LayerSpectrum] | None = None) -> tuple[nn.Module, CompressionPlan]:
    """Factorize every selected ``nn.Linear`` of ``model`` by ``policy``; the input is not modified.

    Args:
        model: any module; Linear layers anywhere in its tree are candidates.
        policy: a rank policy (``UniformPolicy(32)``, ``EnergyPolicy(0.95)`` ...).
        exclude: regular expression on qualified layer names to keep dense.
        context: calibration data / evaluator for policies that need them; ``context.whiten``
            makes any policy rank and factor the activation-whitened spectra; ``context.refit_data``
            refits the factors in order on the compressed prefix's inputs (lowrank/refit.py).
        spectra: precomputed spectra (``model_spectra(model, exclude)``) to skip the SVDs.

    Returns:
        The compressed copy and its :class:`CompressionPlan`.
    """
    spectra = spectra if spectra is not None else model_spectra(model, exclude)
    context = context or PolicyContext()
    chosen_on = spectra
    if context.whiten and not policy.needs_calibration:
        from edgecompress.lowrank.data_policies import whiten  # registers the data policies; imports this module
        chosen_on = whiten(spectra, context)
    ranks = round_ranks(policy.plan(chosen_on, context), spectra, context.round_to)
    compressed, plan = apply_ranks(model, spectra, ranks, policy.to_json(), factors=context.factors)
    from edgecompress.lowrank.refit import refit_with_context  # (refit imports this module)

    refit_with_context(model, compressed, context)
    return compressed, with_unplanned_layers(plan, model, excluded_reason(exclude)) if exclude else plan


def excluded_reason(exclude: str | None) -> str:
    """The plan's note for a layer matched by ``--exclude``."""
    return f"excluded by --exclude {exclude!r}"


def round_ranks(ranks: Mapping[str, int | None], spectra: Mapping[str, LayerSpectrum],
                multiple: int) -> dict[str, int | None]:
    """Round each rank up to a multiple of ``multiple`` (capped at the layer's full rank)."""
    if multiple < 1:
        raise InputError(f"--round-to must be >= 1, got {multiple}")
    return {name: None if rank is None else min(-(-rank // multiple) * multiple, spectra[name].max_rank)
            for name, rank in ranks.items()}


def count_linear_params(model: nn.Module) -> int:
    """Weights and biases of all Linear layers (factor pairs count both factors)."""
    return sum(p.numel() for m in model.modules() if isinstance(m, nn.Linear) for p in m.parameters(recurse=False))
