"""SVD training (Yang et al., CVPR-W 2020): train each Linear as ``U diag(s) V^T`` with
orthogonality and singular-value sparsity regularizers, prune small singular values, fold into
exportable factor pairs, fine-tune.

For your own training loop::

    decompose_(model)                                 # Linear -> SVDLinear, full rank, in place
    loss = task_loss + svd_regularizer(model, lambda_orth=1.0, lambda_sparsity=0.3)
    prune_singular_values_(model, energy=0.05)        # keep >= 95% of each layer's sum(s^2)
    small, plan = to_low_rank(model)                  # LowRankLinear pairs, ready for export_onnx

``svd_train`` runs the whole recipe with :func:`~edgecompress.lowrank.finetune.fit`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from edgecompress.data import Dataset
from edgecompress.errors import InputError
from edgecompress.lowrank.factorize import (CompressionPlan, apply_ranks, copy_module, replace_submodule,
                                            with_unplanned_layers)
from edgecompress.lowrank.finetune import (Hooks, TrainingReport, TrainSettings, accuracy_of, fit, teacher_outputs,
                                          torch_threads)
from edgecompress.lowrank.policies import EnergyPolicy, PolicyContext, RankPolicy, register
from edgecompress.lowrank.spectrum import HEAD_KEPT_REASON, LayerSpectrum, exclude_head, linear_layers

SPARSITY = ("hoyer", "l1")
SVD_EPOCHS = 2  # epochs of the regularized phase (the build's default)
FINETUNE_EPOCHS = 10  # fine-tuning epochs after pruning (the build's default)
S_LR_SCALE = 10.0  # learning-rate multiplier of the singular values during SVD training
DROP_ENERGY = 1e-4  # during SVD training, components holding less than this share of a layer's energy go


class SVDLinear(nn.Module):
    """``Linear(in, out)`` trained in SVD form: ``y = ((x V) * s) U^T + bias``.

    ``u`` is (out x r), ``s`` (r), ``v`` (in x r); r starts at min(in, out) and shrinks on pruning.
    """

    def __init__(self, u: torch.Tensor, s: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = u.shape[0], v.shape[0]
        self.u = nn.Parameter(u.detach().float().clone())
        self.s = nn.Parameter(s.detach().float().clone())
        self.v = nn.Parameter(v.detach().float().clone())
        self.bias = nn.Parameter(bias.detach().float().clone()) if bias is not None else None

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "SVDLinear":
        """Full-rank decomposition of a Linear layer (exact: same outputs up to float round-off)."""
        u, s, vh = torch.linalg.svd(linear.weight.detach().to(torch.float64), full_matrices=False)
        return cls(u, s, vh.T, linear.bias)

    @property
    def rank(self) -> int:
        return int(self.s.numel())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = (x @ self.v) * self.s
        out = hidden @ self.u.T
        return out + self.bias if self.bias is not None else out

    def weight(self) -> torch.Tensor:
        """The dense (out x in) matrix ``U diag(s) V^T``."""
        return (self.u * self.s) @ self.v.T

    def orthogonality(self) -> torch.Tensor:
        """``(||U^T U - I||_F^2 + ||V^T V - I||_F^2) / r^2``."""
        eye = torch.eye(self.rank, dtype=self.u.dtype)
        return (((self.u.T @ self.u - eye) ** 2).sum() + ((self.v.T @ self.v - eye) ** 2).sum()) / self.rank ** 2

    def sparsity(self, kind: str = "hoyer") -> torch.Tensor:
        """L1 ``||s||_1`` or Hoyer ``||s||_1 / ||s||_2`` of the singular values."""
        l1 = self.s.abs().sum()
        if kind == "l1":
            return l1
        if kind == "hoyer":
            return l1 / self.s.norm().clamp_min(1e-12)
        raise InputError(f"--sparsity must be one of {', '.join(SPARSITY)}, got {kind!r}")

    def spectrum(self, name: str) -> LayerSpectrum:
        """The trained ``U, |s|, V^T`` sorted by |s| descending (signs folded into U), as a spectrum."""
        with torch.no_grad():
            order = torch.argsort(self.s.abs(), descending=True, stable=True)
            s = self.s[order].double()
            u = self.u[:, order].double() * torch.sign(s).masked_fill(s == 0, 1.0)
            return LayerSpectrum(name, self.in_features, self.out_features, self.bias is not None,
                                 u, s.abs(), self.v[:, order].double().T)

    def rank_for_energy(self, energy: float) -> int:
        """The smallest rank keeping at least ``1 - energy`` of ``sum(s^2)``."""
        return EnergyPolicy(threshold=1.0 - energy).rank_for(self.spectrum(""), PolicyContext())

    def prune_(self, energy: float) -> int:
        """Keep the fewest largest-|s| components holding ``>= 1 - energy`` of ``sum(s^2)``; return the rank."""
        spectrum = self.spectrum("")
        keep = EnergyPolicy(threshold=1.0 - energy).rank_for(spectrum, PolicyContext())
        self.energy_kept = spectrum.energy_kept(keep)
        if keep == self.rank:
            return keep  # parameters stay the same objects (an optimiser keeps tracking them)
        with torch.no_grad():
            order = torch.argsort(self.s.abs(), descending=True, stable=True)[:keep]
            self.u = nn.Parameter(self.u[:, order].clone())
            self.s = nn.Parameter(self.s[order].clone())
            self.v = nn.Parameter(self.v[:, order].clone())
        return keep

    def to_linear(self) -> nn.Linear:
        """A dense Linear computing the same function."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        with torch.no_grad():
            linear.weight.copy_(self.weight())
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"


def svd_layers(model: nn.Module) -> dict[str, SVDLinear]:
    """Every :class:`SVDLinear` in the model by qualified name."""
    return {name: module for name, module in model.named_modules() if isinstance(module, SVDLinear)}


def decompose_(model: nn.Module, *, exclude: str | None = None) -> dict[str, SVDLinear]:
    """Replace every selected ``nn.Linear`` by a full-rank :class:`SVDLinear`, in place.

    Args:
        model: the model (its outputs do not change, up to float round-off).
        exclude: regular expression on qualified layer names to leave alone.

    Returns:
        The new layers by name.
    """
    layers = {name: SVDLinear.from_linear(linear) for name, linear in linear_layers(model, exclude).items()}
    if not layers:
        raise InputError("the model has no Linear layer to decompose" + (f" outside --exclude {exclude!r}"
                                                                        if exclude else ""))
    if "" in layers:
        raise InputError("the model is a bare nn.Linear: decompose_ works in place on its sub-modules; "
                         "wrap it, e.g. nn.Sequential(linear)")
    for name, layer in layers.items():
        model.set_submodule(name, layer)
    if hasattr(model, "recompile"):
        model.recompile()
    return layers


def svd_regularizer(model: nn.Module, *, lambda_orth: float = 1.0, lambda_sparsity: float = 0.0,
                    sparsity: str = "hoyer") -> torch.Tensor:
    """``sum over SVDLinear layers of lambda_orth * L_orth + lambda_sparsity * R(s)``: add it to your loss."""
    total = torch.zeros(())
    for layer in svd_layers(model).values():
        if lambda_orth:
            total = total + lambda_orth * layer.orthogonality()
        if lambda_sparsity:
            total = total + lambda_sparsity * layer.sparsity(sparsity)
    return total


def total_rank(model: nn.Module, energy: float | None = None) -> int:
    """Sum of the SVDLinear ranks (as they are, or as pruning at ``energy`` would leave them)."""
    return sum(layer.rank if energy is None else layer.rank_for_energy(energy)
               for layer in svd_layers(model).values())


def prune_singular_values_(model: nn.Module, energy: float) -> dict[str, tuple[int, int]]:
    """Prune every SVDLinear in place to keep ``>= 1 - energy`` of its ``sum(s^2)``.

    Returns:
        ``{name: (rank before, rank after)}``.
    """
    if not 0.0 <= energy < 1.0:
        raise InputError(f"--prune-energy must be in [0, 1), got {energy}")
    return {name: (layer.rank, layer.prune_(energy)) for name, layer in svd_layers(model).items()}


def to_low_rank(model: nn.Module, policy: dict[str, Any] | None = None) -> tuple[nn.Module, CompressionPlan]:
    """A copy of ``model`` with each SVDLinear as a :class:`LowRankLinear` of its current rank (a dense
    ``nn.Linear`` where that rank does not pay), plus the :class:`CompressionPlan`; ``model`` is unchanged.

    ``energy_kept`` in the plan is measured against the trained, unpruned spectrum when the layer was
    pruned by :func:`prune_singular_values_` (else 1.0).
    """
    dense = copy_module(model)
    layers = svd_layers(dense)
    if not layers:
        raise InputError("the model has no SVDLinear layer: call decompose_(model) and train it first")
    # the trained factors as they are (U, V need not be orthonormal): the folded pair computes the same function
    spectra = {name: layer.spectrum(name) for name, layer in layers.items()}
    ranks = {name: layer.rank for name, layer in layers.items()}
    kept = {name: getattr(layer, "energy_kept", 1.0) for name, layer in layers.items()}
    for name, layer in layers.items():
        dense = replace_submodule(dense, name, layer.to_linear())  # the dense form where a rank does not pay
    small, plan = apply_ranks(dense, spectra, ranks, policy or {"name": SvdTrainingPolicy.name})
    return small, CompressionPlan(plan.policy, tuple(
        replace(layer, energy_kept=round(kept[layer.name], 6)) if layer.factorized else layer
        for layer in plan.layers))


@register
@dataclass(frozen=True)
class SvdTrainingPolicy(RankPolicy):
    """SVD training's hyper-parameters (ranks come from training, then energy pruning).

    Attributes:
        sparsity: singular-value sparsity R(s): ``"hoyer"`` (||s||_1/||s||_2) or ``"l1"`` (||s||_1).
        lambda_orth: weight of the orthogonality term (||U^T U - I||^2 + ||V^T V - I||^2) / r^2.
        lambda_sparsity: weight of R(s), summed over layers.
        prune_energy: e; each layer keeps its fewest singular values holding >= 1 - e of sum(s^2).
        keep_head: leave the model's last Linear layer (the classifier head) dense: pruned to a rank
            below the class count it costs accuracy for few parameters.
    """

    name: ClassVar[str] = "svd-training"
    sparsity: str = "hoyer"
    lambda_orth: float = 1.0
    lambda_sparsity: float = 0.3
    prune_energy: float = 0.1
    keep_head: bool = True

    def __post_init__(self) -> None:
        if self.sparsity not in SPARSITY:
            raise InputError(f"--sparsity must be one of {', '.join(SPARSITY)}, got {self.sparsity!r}")
        for flag, value in (("--lambda-orth", self.lambda_orth), ("--lambda-sparsity", self.lambda_sparsity)):
            if not (value >= 0 and math.isfinite(value)):
                raise InputError(f"{flag} must be a number >= 0, got {value}")
        if not 0.0 <= self.prune_energy < 1.0:
            raise InputError(f"--prune-energy must be in [0, 1), got {self.prune_energy}")

    def rank_for(self, spectrum: LayerSpectrum, context: PolicyContext) -> int:
        raise InputError("svd-training chooses ranks by training: give --train DATA "
                         "(Python: edgecompress.lowrank.training.svd_train)")

    def exclude(self, model: nn.Module, exclude: str | None) -> str | None:
        """``exclude`` plus, with ``keep_head``, the last selected Linear layer's exact name."""
        return exclude_head(model, exclude) if self.keep_head else exclude

    def regularizer(self, model: nn.Module) -> torch.Tensor:
        """This policy's :func:`svd_regularizer` of ``model``."""
        return svd_regularizer(model, lambda_orth=self.lambda_orth, lambda_sparsity=self.lambda_sparsity,
                               sparsity=self.sparsity)


class SvdTrainingHooks(Hooks):
    """The SVD-training phase: the policy's regularizer; rank and validation accuracy as pruning now
    would leave them; every ``shrink_every`` steps, components that together hold less than
    ``drop_energy`` of a layer's energy are dropped (they carry nothing; later steps get cheaper)."""

    def __init__(self, policy: SvdTrainingPolicy, drop_energy: float = DROP_ENERGY, shrink_every: int = 50,
                 s_lr_scale: float = S_LR_SCALE) -> None:
        self.policy, self.drop_energy, self.shrink_every = policy, drop_energy, shrink_every
        self.s_lr_scale = s_lr_scale

    def param_groups(self, model: nn.Module, lr: float) -> list[dict[str, Any]]:
        """Singular values get ``s_lr_scale`` times the learning rate: they are O(1..10) while the
        singular vectors' entries are O(1/sqrt(n)), and Adam moves every entry by about lr per step."""
        values = {id(layer.s) for layer in svd_layers(model).values()}
        rest = [p for p in model.parameters() if id(p) not in values]
        return [{"params": rest, "lr": lr},
                {"params": [layer.s for layer in svd_layers(model).values()], "lr": lr * self.s_lr_scale}]

    def regularizer(self, model: nn.Module) -> torch.Tensor:
        return self.policy.regularizer(model)

    def total_rank(self, model: nn.Module) -> int:
        return total_rank(model, self.policy.prune_energy)

    def evaluate(self, model: nn.Module, data: Dataset) -> float:
        pruned = copy_module(model)
        prune_singular_values_(pruned, self.policy.prune_energy)
        return accuracy_of(pruned, data)

    def shrink(self, model: nn.Module) -> bool:
        if not self.drop_energy:
            return False
        return any(after < before for before, after in prune_singular_values_(model, self.drop_energy).values())


def svd_train(model: nn.Module, train: Dataset, val: Dataset, policy: SvdTrainingPolicy | None = None, *,
              settings: TrainSettings | None = None, finetune_settings: TrainSettings | None = None,
              exclude: str | None = None, checkpoints: Path | None = None,
              progress: bool = False) -> tuple[nn.Module, CompressionPlan, TrainingReport]:
    """The whole recipe on a copy of ``model``: decompose, train with the regularizers (keeping the
    last epoch), prune, fold into factor pairs, fine-tune (keeping the best validation epoch).

    The dense ``model`` is the distillation teacher in both phases (``settings.distill_weight``).

    Args:
        model: the trained dense model (unchanged).
        train: labelled training split.
        val: labelled validation split.
        policy: the regularizer and pruning hyper-parameters.
        settings: the SVD-training phase (default: ``SVD_EPOCHS`` epochs; ``keep`` is forced to "last").
        finetune_settings: the fine-tuning phase after pruning (None: skip it).
        exclude: regular expression on layer names to keep dense.
        checkpoints: folder where Ctrl-C saves ``<phase>-best.pt``.
        progress: show progress bars.

    Returns:
        The factorized model, its plan, and the training report.
    """
    policy = policy or SvdTrainingPolicy()
    settings = replace(settings or TrainSettings(epochs=SVD_EPOCHS), keep="last")
    with torch_threads(settings.threads):  # the SVDs too: under load, extra threads only contend
        return _svd_train(model, train, val, policy, settings, finetune_settings, exclude, checkpoints, progress)


def _svd_train(model: nn.Module, train: Dataset, val: Dataset, policy: SvdTrainingPolicy, settings: TrainSettings,
               finetune_settings: TrainSettings | None, exclude: str | None, checkpoints: Path | None,
               progress: bool) -> tuple[nn.Module, CompressionPlan, TrainingReport]:
    """:func:`svd_train` after its defaults are resolved."""
    work = copy_module(model)
    layers = decompose_(work, exclude=policy.exclude(work, exclude))
    decomposed = {name: layer.rank for name, layer in layers.items()}
    distill = settings.distill_weight > 0 or (finetune_settings is not None and finetune_settings.distill_weight > 0)
    teacher = teacher_outputs(model if distill else None, train)
    checkpoint = (lambda phase: checkpoints / f"{phase}-best.pt") if checkpoints else (lambda phase: None)
    phases = [fit(work, train, val, settings, teacher_logits=teacher, hooks=SvdTrainingHooks(policy),
                  phase="svd-training", checkpoint=checkpoint("svd-training"), progress=progress)]
    ranks = prune_singular_values_(work, policy.prune_energy)
    small, plan = to_low_rank(work, policy.to_json())
    plan = with_unplanned_layers(plan, model, HEAD_KEPT_REASON, exclude=exclude)  # the head, with keep_head
    if finetune_settings is not None:
        phases.append(fit(small, train, val, finetune_settings, teacher_logits=teacher, phase="finetune",
                          checkpoint=checkpoint("finetune"), progress=progress))
    report = TrainingReport("svd-training", train.name, val.name, len(train), phases,
                            ranks={"decomposed": decomposed,
                                   "before_pruning": {name: before for name, (before, _) in ranks.items()},
                                   "after_pruning": {name: after for name, (_, after) in ranks.items()},
                                   "final": plan.ranks})
    return small, plan, report
