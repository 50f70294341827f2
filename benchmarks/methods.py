"""The registry of compression methods the benchmark compares.

A method is one small function ``(ctx) -> candidates``, registered in execution order with
:func:`method`. It builds compressed torch models through edgecompress's own API (``compress``
with a rank policy, ``calibrate``, ``finetune``, ``svd_train``) and states how many Linear
parameters each has and how long it took; ``measure.py`` exports, verifies and measures every
candidate the same way, and fills in its :class:`Artifact` (which later methods may read, e.g. to
select on validation accuracy).

"At equal size": methods that choose their own size (energy τ, entropy, DDLR convex, SVD
training) are *anchors*; uniform rank, data-driven and magnitude pruning are *matched* to every
anchor's Linear parameter count and to a sweep of uniform ranks (the small-model end).
"""

from __future__ import annotations

import copy
import importlib.util
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from edgecompress.data import Dataset
from edgecompress.lowrank.factorize import CompressionPlan, apply_ranks, compress, count_linear_params, layer_plan
from edgecompress.lowrank.policies import PolicyContext, RankPolicy, make_policy
from edgecompress.lowrank.spectrum import LayerSpectrum, linear_layers, model_spectra

from setups import Setup

if TYPE_CHECKING:
    from edgecompress.lowrank.calibration import Calibration

POST_HOC = ("uniform", "energy", "entropy", "data", "ddlr-convex", "budget")  # low rank without training
ANCHORS = ("energy", "entropy", "ddlr-convex", "svd-training", "budget")  # sizes the matched methods copy


@dataclass(frozen=True)
class Settings:
    """Knobs of one benchmark run (full or smoke)."""

    taus: tuple[float, ...] = (0.8, 0.9, 0.95, 0.99)
    sweep_ranks: tuple[int, ...] = (8, 16, 32, 64)
    match_anchors: tuple[str, ...] = ANCHORS  # whose sizes the matched methods copy
    entropy_scale: float = 1.0
    calib_samples: int = 2048  # training images the data-driven methods see
    convex_errors: tuple[float, ...] = (0.1,)
    convex_inputs: int = 2048  # input rows per layer the convex solver works on
    convex_iter: int = 1000  # edgecompress's default
    svd_prune_energies: tuple[float, ...] = (0.05, 0.1, 0.2)  # around SVD training's default e = 0.1
    svd_epochs: int = 2  # edgecompress's defaults: 2 regularized epochs, then 10 fine-tuning epochs
    svd_finetune_epochs: int = 10
    budget_drops: tuple[float, ...] = (0.5, 1.0)  # accuracy points on the validation split
    int8_max_drop: float = 1.0  # low rank + int8 starts from the smallest post-hoc model within this
    bench_runs: int = 2000
    bench_warmup: int = 50


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
    """One compressed model to measure."""

    label: str
    method: str
    model: nn.Module = field(repr=False)
    linear_params: int  # non-zero weights + biases of all Linear layers (factors included)
    seconds: float  # time the method took to make it (compression, calibration, training)
    plan: CompressionPlan | None = field(default=None, repr=False)  # its factor pairs, for the refold guard
    int8: bool = False  # export, then onnxruntime int8
    meta: dict[str, Any] = field(default_factory=dict)
    artifact: Artifact | None = None


@dataclass
class Context:
    """The trained dense model, the data splits and every candidate measured so far."""

    setup: Setup
    settings: Settings
    dense: nn.Module
    train: Dataset
    val: Dataset
    candidates: list[Candidate] = field(default_factory=list)

    @cached_property
    def spectra(self) -> dict[str, LayerSpectrum]:
        return model_spectra(self.dense)

    @cached_property
    def dense_params(self) -> int:
        return count_linear_params(self.dense)

    @cached_property
    def calibration(self) -> tuple["Calibration", float]:
        """Per-layer input statistics on the first ``calib_samples`` training images, and their cost in s."""
        from edgecompress.lowrank.calibration import calibrate

        start = time.perf_counter()
        calib = calibrate(self.dense, self.train.x[:self.settings.calib_samples], list(self.spectra),
                          dataset=self.train.name, keep_inputs=self.settings.convex_inputs)
        return calib, time.perf_counter() - start

    def policy_context(self) -> PolicyContext:
        """A fresh context with the calibration (data-driven policies cache their SVDs in it)."""
        return PolicyContext(calibration=self.calibration[0].layers)

    def of(self, *methods: str) -> list[Candidate]:
        """The candidates measured so far that came from these methods."""
        return [c for c in self.candidates if c.method in methods]

    @property
    def dense_val_accuracy(self) -> float:
        dense = self.of("dense")
        if not dense or dense[0].artifact is None:
            raise RuntimeError("the dense model must be measured first")
        return dense[0].artifact.val_accuracy

    def targets(self) -> list[tuple[str, int]]:
        """(label, Linear params) the matched methods copy: every anchor so far, then the uniform sweep."""
        found = [(c.label, c.linear_params) for c in self.of(*self.settings.match_anchors)]
        found += [(f"rank {r}", ranks_params(self.spectra, uniform_ranks(self.spectra, r)))
                  for r in self.settings.sweep_ranks]
        return [(label, params) for label, params in found if params < self.dense_params]


Build = Callable[[Context], Iterable[Candidate]]


@dataclass(frozen=True)
class Method:
    """A registry entry: how to build its candidates, what it needs first, whether it is available."""

    name: str
    build: Build
    doc: str
    requires: tuple[str, ...] = ()
    missing: Callable[[], str | None] = lambda: None  # why it cannot run in this tree, or None


METHODS: dict[str, Method] = {}


def method(name: str, *, requires: tuple[str, ...] = (),
           missing: Callable[[], str | None] | None = None) -> Callable[[Build], Build]:
    """Register ``build`` under ``name``; registration order is execution order."""
    def register(build: Build) -> Build:
        METHODS[name] = Method(name, build, (build.__doc__ or "").strip().splitlines()[0], requires,
                               missing or (lambda: None))
        return build
    return register


def needs(*modules: str) -> Callable[[], str | None]:
    """A ``missing`` check: which of these edgecompress modules this tree does not have yet."""
    def missing() -> str | None:
        absent = [m for m in modules if importlib.util.find_spec(m) is None]
        return f"{', '.join(absent)} not in this tree yet" if absent else None
    return missing


DATA = needs("edgecompress.lowrank.calibration", "edgecompress.lowrank.data_policies")
TRAINING = needs("edgecompress.lowrank.finetune", "edgecompress.lowrank.training")


def resolve(names: Iterable[str]) -> list[Method]:
    """The named methods, "dense" and whatever they require, in registry order (KeyError on an unknown name)."""
    wanted: set[str] = set()
    pending = ["dense", *names]
    while pending:
        name = pending.pop()
        if name not in METHODS:
            raise KeyError(name)
        if name not in wanted:
            wanted.add(name)
            pending.extend(METHODS[name].requires)
    return [m for name, m in METHODS.items() if name in wanted]


# --- helpers ----------------------------------------------------------------------------------


def uniform_ranks(spectra: dict[str, LayerSpectrum], rank: int) -> dict[str, int | None]:
    return {name: min(rank, s.max_rank) for name, s in spectra.items()}


def ranks_params(spectra: dict[str, LayerSpectrum], ranks: dict[str, int | None]) -> int:
    """Linear parameters after ``apply_ranks`` (a rank that does not pay keeps its layer dense)."""
    return sum(layer_plan(spectra[name], rank).params_after for name, rank in ranks.items())


def timed_compress(ctx: Context, label: str, name: str, policy: RankPolicy,
                   context: PolicyContext | None = None, extra_seconds: float = 0.0, **meta: Any) -> Candidate:
    """``compress(dense, policy)`` from scratch (spectra included in the time)."""
    start = time.perf_counter()
    model, plan = compress(ctx.dense, policy, context=context)
    seconds = time.perf_counter() - start + extra_seconds
    return Candidate(label, name, model, plan.linear_params_after, seconds, plan,
                     meta={"policy": policy.to_json(), "ranks": plan.ranks, **meta})


def closest(options: Iterable[tuple[Any, int]], target: int) -> Any:
    """The option whose parameter count is closest to ``target`` (the smaller one on a tie)."""
    return min(options, key=lambda option: (abs(option[1] - target), option[1]))[0]


def bisect_error(params_at: Callable[[float], int], target: int, steps: int = 40) -> float:
    """The tolerance in (0, 1) whose parameter count (non-increasing in it) is closest to ``target``."""
    low, high = 1e-6, 0.999  # params_at(low) >= params_at(high)
    for _ in range(steps):
        middle = (low * high) ** 0.5
        low, high = (middle, high) if params_at(middle) > target else (low, middle)
    return closest([(low, params_at(low)), (high, params_at(high))], target)


def matched(ctx: Context, choose: Callable[[int], Any], build: Callable[[Any, list[str]], Candidate]
            ) -> Iterator[Candidate]:
    """``build(setting, target labels)`` once per distinct setting ``choose(target params)`` picks
    (skipping settings that leave the model at its dense size)."""
    by_setting: dict[Any, list[str]] = {}
    for label, params in ctx.targets():
        by_setting.setdefault(choose(params), []).append(label)
    for setting, labels in by_setting.items():
        candidate = build(setting, labels)
        if candidate.linear_params < ctx.dense_params:
            yield candidate


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


# --- the methods, in execution order ----------------------------------------------------------


@method("dense")
def dense(ctx: Context) -> Iterator[Candidate]:
    """The trained dense model (the reference of every ratio)."""
    yield Candidate("dense", "dense", ctx.dense, ctx.dense_params, 0.0)


@method("energy")
def energy(ctx: Context) -> Iterator[Candidate]:
    """ARSVD energy policy: per layer the smallest rank keeping τ of sum(s²), τ ∈ settings.taus."""
    for tau in ctx.settings.taus:
        yield timed_compress(ctx, f"energy τ={tau:g}", "energy", make_policy("energy", threshold=tau))


@method("entropy")
def entropy(ctx: Context) -> Iterator[Candidate]:
    """ARSVD spectral-entropy policy: rank = effective rank exp(H) of each layer's spectrum."""
    yield timed_compress(ctx, "entropy", "entropy", make_policy("entropy", scale=ctx.settings.entropy_scale))


@method("ddlr-convex", missing=DATA)
def ddlr_convex(ctx: Context) -> Iterator[Candidate]:
    """DDLR's nuclear-norm program (ReLU-aware ADMM) on calibration inputs, at each max_error: the
    solution's own weights (the paper, ``refit=False``) and, at the ranks read off it, the closed-form
    data-aware factors (``refit=True``, edgecompress's default; one solve serves both)."""
    from edgecompress.lowrank.data_policies import data_spectra

    calib_seconds = ctx.calibration[1]
    for error in ctx.settings.convex_errors:
        own = convex_candidate(ctx, error, calib_seconds)
        start = time.perf_counter()
        policy = make_policy("ddlr-convex", max_error=error, max_iter=ctx.settings.convex_iter, refit=True)
        model, plan = apply_ranks(ctx.dense, ctx.spectra, own.plan.ranks, policy.to_json(),
                                  factors=data_spectra(ctx.spectra, ctx.policy_context()))
        yield Candidate(f"DDLR convex ε={error:g}", "ddlr-convex", model, plan.linear_params_after,
                        own.seconds + time.perf_counter() - start, plan, meta={**own.meta, "policy": policy.to_json()})
        yield own


def convex_candidate(ctx: Context, error: float, calib_seconds: float) -> Candidate:
    """One ``ddlr-convex`` solve keeping the solution's weights, with a note when ADMM stopped early."""
    policy = make_policy("ddlr-convex", max_error=error, max_iter=ctx.settings.convex_iter, refit=False)
    context = ctx.policy_context()
    candidate = timed_compress(ctx, f"DDLR convex ε={error:g} (no refit)", "ddlr-convex", policy, context,
                               calib_seconds)
    solver = candidate.meta["solver"] = context.extras.get("ddlr_convex", {})
    stopped = [name for name, layer in solver.items() if not layer.get("converged", True)]
    if stopped:
        candidate.meta["note"] = (f"DDLR convex ε={error:g}: ADMM stopped at {ctx.settings.convex_iter} iterations "
                                  f"before its tolerance on layer(s) {', '.join(stopped)} (fit errors "
                                  + ", ".join(f"{solver[n]['fit_error']:.3f}" for n in stopped) + ")")
    return candidate


@method("svd-training", missing=TRAINING)
def svd_training(ctx: Context) -> Iterator[Candidate]:
    """SVD training (orthogonality + Hoyer sparsity, pruning to 1 - e of the energy, fine-tune), distilled
    from dense, at each e in settings.svd_prune_energies."""
    from edgecompress.lowrank.finetune import TrainSettings
    from edgecompress.lowrank.training import SvdTrainingPolicy, svd_train

    for energy in ctx.settings.svd_prune_energies:
        policy = SvdTrainingPolicy(prune_energy=energy)
        start = time.perf_counter()
        model, plan, report = svd_train(ctx.dense, ctx.train, ctx.val, policy,
                                        settings=TrainSettings(epochs=ctx.settings.svd_epochs),
                                        finetune_settings=TrainSettings(epochs=ctx.settings.svd_finetune_epochs))
        yield Candidate(f"SVD training e={energy:g}", "svd-training", model, plan.linear_params_after,
                        time.perf_counter() - start, plan,
                        meta={"policy": policy.to_json(), "ranks": plan.ranks, "training": report.to_json()})


@method("budget", missing=needs("edgecompress.lowrank.budget", "edgecompress.lowrank.calibration",
                                "edgecompress.lowrank.data_policies", "edgecompress.lowrank.finetune"))
def budget(ctx: Context) -> Iterator[Candidate]:
    """Budget mode: the smallest data-driven model within each accuracy drop on the validation split
    (sensitivity allocation measured on the validation inputs, as `build --eval-split` does)."""
    from edgecompress.lowrank.budget import Budget, budget_compress
    from edgecompress.lowrank.finetune import predict

    def correct(model: nn.Module) -> np.ndarray:
        return predict(model, ctx.val.x).argmax(-1).numpy() == ctx.val.y

    calib_seconds = ctx.calibration[1]
    for drop in ctx.settings.budget_drops:
        start = time.perf_counter()
        result = budget_compress(ctx.dense, make_policy("data"), model_spectra(ctx.dense),
                                 Budget(max_accuracy_drop=drop), context=ctx.policy_context(), evaluate=correct,
                                 inputs=ctx.val.x)
        yield Candidate(f"budget ≤{drop:g} pt", "budget", result.model, result.plan.linear_params_after,
                        time.perf_counter() - start + calib_seconds, result.plan,
                        meta={"ranks": result.plan.ranks, "search": {k: v for k, v in result.record.items()
                                                                     if k not in ("table", "path")}})


@method("uniform")
def uniform(ctx: Context) -> Iterator[Candidate]:
    """The same rank in every layer, matched to each anchor's size and to settings.sweep_ranks."""
    full = max(s.max_rank for s in ctx.spectra.values())
    sizes = [(r, ranks_params(ctx.spectra, uniform_ranks(ctx.spectra, r))) for r in range(1, full + 1)]
    yield from matched(ctx, lambda target: closest(sizes, target), lambda rank, labels: timed_compress(
        ctx, f"uniform r={rank}", "uniform", make_policy("uniform", rank=rank), targets=labels))


@method("data", missing=DATA)
def data(ctx: Context) -> Iterator[Candidate]:
    """DDLR closed form: per layer the lowest rank within an output error ε on calibration data,
    ε bisected to match each target size."""
    context = ctx.policy_context()

    def ranks_at(error: float) -> dict[str, int | None]:
        return make_policy("data", max_error=error).plan(ctx.spectra, context)

    by_ranks: dict[str, float] = {}  # one ε per distinct rank plan, so equal models are measured once

    def choose(target: int) -> float:
        error = bisect_error(lambda e: ranks_params(ctx.spectra, ranks_at(e)), target)
        return by_ranks.setdefault(str(ranks_at(error)), error)

    calib_seconds = ctx.calibration[1]
    yield from matched(ctx, choose, lambda error, labels: timed_compress(
        ctx, f"data ε={error:.3g}", "data", make_policy("data", max_error=error), ctx.policy_context(),
        calib_seconds, targets=labels))


@method("magnitude")
def magnitude(ctx: Context) -> Iterator[Candidate]:
    """Global magnitude pruning to the same number of non-zeros (Net-Trim-style sparsity baseline)."""
    def build(nonzeros: int, labels: list[str]) -> Candidate:
        start = time.perf_counter()
        model = magnitude_prune(ctx.dense, nonzeros)
        return Candidate(f"magnitude nnz={nonzeros:,}", "magnitude", model, nonzero_params(model),
                         time.perf_counter() - start, meta={"targets": labels, "csr_bytes": csr_bytes(model)})

    yield from matched(ctx, lambda target: target, build)


@method("finetune", requires=("svd-training",), missing=TRAINING)
def finetune(ctx: Context) -> Iterator[Candidate]:
    """Post-hoc truncation at SVD training's per-layer ranks, as is and fine-tuned (distillation)
    for as many epochs as SVD training trained."""
    from edgecompress.lowrank.finetune import TrainSettings, finetune as run_finetune

    for source in ctx.of("svd-training"):
        ranks = {name: source.plan.ranks.get(name) for name in ctx.spectra}
        start = time.perf_counter()
        truncated, plan = apply_ranks(ctx.dense, ctx.spectra, ranks, {"name": "truncate", "ranks_of": source.label})
        seconds = time.perf_counter() - start
        yield Candidate(f"truncated @ {source.label} ranks", "truncate", truncated, plan.linear_params_after,
                        seconds, plan, meta={"ranks": plan.ranks, "source": source.label})
        tuned = copy.deepcopy(truncated)
        epochs = ctx.settings.svd_epochs + ctx.settings.svd_finetune_epochs
        start = time.perf_counter()
        result = run_finetune(tuned, ctx.train, ctx.val, teacher=ctx.dense, settings=TrainSettings(epochs=epochs))
        yield Candidate(f"fine-tuned @ {source.label} ranks", "finetune", tuned, plan.linear_params_after,
                        seconds + time.perf_counter() - start, plan,
                        meta={"ranks": plan.ranks, "source": source.label, "training": result.to_json()})


@method("int8")
def int8(ctx: Context) -> Iterator[Candidate]:
    """onnxruntime dynamic int8 of the dense model (weights int8, no low rank)."""
    yield Candidate("int8 (dense)", "int8", ctx.dense, ctx.dense_params, 0.0, int8=True)


@method("lowrank-int8", requires=("uniform",))
def lowrank_int8(ctx: Context) -> Iterator[Candidate]:
    """onnxruntime dynamic int8 of the smallest post-hoc low-rank model within settings.int8_max_drop
    points of dense on the validation split."""
    floor = ctx.dense_val_accuracy - ctx.settings.int8_max_drop / 100.0
    pool = [c for c in ctx.of(*POST_HOC) if c.artifact is not None and c.artifact.val_accuracy >= floor]
    if pool:
        source = min(pool, key=lambda c: c.linear_params)
        yield Candidate(f"{source.label} + int8", "lowrank-int8", source.model, source.linear_params, source.seconds,
                        source.plan, int8=True, meta={**source.meta, "source": source.label})
