"""Budget mode: the smallest model within an accuracy drop or above an embedding cosine, or the largest within a size.

AIMET-style: a per-layer sensitivity table is computed once (from cached SVDs), one global knob
turns it into a sequence of candidate rank plans ordered from largest to smallest model, and a
binary search over that sequence finds the plan that meets the target. Three knobs:

- ``uniform`` policy: the shared rank itself (the conventional baseline).
- ``threshold`` allocation: one error threshold for every layer, the policy's own rule
  (``data``: relative output error on the calibration inputs; ``energy`` and others: relative
  weight error ``sqrt(1 - energy kept)``, i.e. the energy threshold).
- ``sensitivity`` allocation: for each layer and a grid of ranks, the network-output distortion
  when only that layer is compressed is measured on real inputs (mean KL divergence of the
  softmax outputs, or relative squared error for non-class outputs), interpolated between grid
  points; a Lagrangian sweep (greedy on each layer's lower convex hull of params vs distortion)
  orders the plans. Needs inputs (``--calib`` or ``--eval-split``); it is what ``auto`` picks
  when they exist. Models with named inputs give one small batch (``sample``, a dict of tensors);
  for an embedding budget the distortion is ``1 - cos`` of the sentence embeddings. The layer under
  test is swapped into one working copy (no copy of the model per candidate) and ``measured_ranks``
  bounds the forwards per layer: 36 layers x 6 ranks x one 32-sentence batch is a few minutes.

Every candidate the search visits is checked for real (accuracy on the validation split, the
parameter count, the mean cosine of the sentence embeddings with the dense model's on the
validation split, or the exported file size), so the plan returned meets its target. An accuracy
budget is checked against a one-sided upper confidence bound of the drop (``confidence``, from the
paired per-sample flips): a search that tries many candidates on one validation set otherwise
picks the one whose drop was luckiest, and loses more on new data.
"""

from __future__ import annotations

import functools
import math
import statistics
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from edgecompress.errors import BudgetExceeded, InputError
from edgecompress.lowrank.data_policies import DataSpectrum, data_spectra
from edgecompress.lowrank.embedding import Batch, cosine_stats, embedding_of, forward, mask_of
from edgecompress.lowrank.factorize import CompressionPlan, LowRankLinear, apply_ranks, copy_module, replace_submodule
from edgecompress.lowrank.policies import PolicyContext, RankPolicy
from edgecompress.lowrank.refit import refit_with_context
from edgecompress.lowrank.spectrum import LayerSpectrum

Plan = dict[str, int | None]
ALLOCATIONS = ("auto", "threshold", "sensitivity")
MEASURED_RANKS = 24  # ranks per layer at which the output distortion is measured
SENSITIVITY_SAMPLES = 2048  # inputs used to measure it


@dataclass(frozen=True)
class Budget:
    """Exactly one target: a max accuracy drop (points), a min mean embedding cosine, a fraction of
    Linear params, or file bytes."""

    max_accuracy_drop: float | None = None
    target_params: float | None = None
    target_size: int | None = None
    min_cosine: float | None = None

    def __post_init__(self) -> None:
        given = [v for v in (self.max_accuracy_drop, self.target_params, self.target_size, self.min_cosine)
                 if v is not None]
        if len(given) != 1:
            raise InputError("budget mode takes exactly one of --max-accuracy-drop, --min-cosine, --target-params, "
                             "--target-size")
        if self.min_cosine is not None and not -1 < self.min_cosine < 1:
            raise InputError(f"--min-cosine is a mean cosine similarity in (-1, 1), got {self.min_cosine}")
        if self.max_accuracy_drop is not None and not 0 <= self.max_accuracy_drop < 100:
            raise InputError(f"--max-accuracy-drop is in points (0-100), got {self.max_accuracy_drop}")
        if self.target_params is not None and not 0 < self.target_params <= 1:
            raise InputError(f"--target-params is a fraction of the Linear parameters in (0, 1], got {self.target_params}")
        if self.target_size is not None and self.target_size <= 0:
            raise InputError(f"--target-size must be positive, got {self.target_size}")

    @property
    def kind(self) -> str:
        """``accuracy``, ``cosine``, ``params`` or ``size``."""
        if self.max_accuracy_drop is not None:
            return "accuracy"
        if self.min_cosine is not None:
            return "cosine"
        return "params" if self.target_params is not None else "size"

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, **{k: v for k, v in asdict(self).items() if v is not None}}


@dataclass(frozen=True)
class LayerCurve:
    """One layer's rows of the sensitivity table: candidate ranks (``None`` = dense, last) and their cost."""

    name: str
    ranks: tuple[int | None, ...]
    params: tuple[int, ...]
    error: tuple[float, ...]  # the policy's per-layer error (0 for dense)
    distortion: tuple[float, ...] | None = None  # network-output distortion (interpolated), 0 for dense
    measured: dict[int, float] = field(default_factory=dict)  # rank -> distortion actually measured

    def to_json(self, ranks: set[int | None]) -> list[dict[str, Any]]:
        """The rows at ``ranks`` (and every measured one)."""
        rows = []
        for i, rank in enumerate(self.ranks):
            if rank in ranks or rank in self.measured:
                row: dict[str, Any] = {"rank": rank, "params": self.params[i], "error": round(self.error[i], 6)}
                if self.distortion is not None:
                    row["distortion"] = float(f"{self.distortion[i]:.6g}")  # monotone envelope used by the search
                    if rank in self.measured:
                        row["measured"] = float(f"{self.measured[rank]:.6g}")
                rows.append(row)
        return rows


def rank_grid(spectrum: LayerSpectrum, multiple: int) -> list[int]:
    """Multiples of ``multiple`` that pay off for this layer, ascending."""
    return list(range(multiple, spectrum.break_even_rank + 1, multiple))


def weight_error(spectrum: LayerSpectrum, rank: int) -> float:
    """Relative Frobenius error of the rank-``rank`` truncated SVD: ``sqrt(1 - energy kept)``."""
    return math.sqrt(max(0.0, 1.0 - spectrum.energy_kept(rank)))


def layer_curve(spectrum: LayerSpectrum, source: Any, multiple: int) -> LayerCurve:
    """The threshold part of one layer's table: every grid rank, then dense."""
    grid = rank_grid(spectrum, multiple)
    errors = [source.relative_error(r) if isinstance(source, DataSpectrum) else weight_error(spectrum, r) for r in grid]
    return LayerCurve(spectrum.name, (*grid, None), (*(spectrum.factored_params(r) for r in grid), spectrum.dense_params),
                      (*errors, 0.0))


def plan_params(plan: Mapping[str, int | None], curves: Mapping[str, LayerCurve]) -> int:
    """Linear parameters of a plan (from the table)."""
    return sum(curve.params[curve.ranks.index(plan[name])] for name, curve in curves.items())


def _ordered(plans: list[Plan], curves: Mapping[str, LayerCurve]) -> list[Plan]:
    """Distinct plans that compress something, largest model first."""
    unique: dict[tuple[Any, ...], Plan] = {}
    for plan in plans:
        if any(rank is not None for rank in plan.values()):
            unique.setdefault(tuple(plan.values()), plan)
    return sorted(unique.values(), key=lambda p: (-plan_params(p, curves), tuple(str(v) for v in p.values())))


def uniform_plans(curves: Mapping[str, LayerCurve]) -> list[Plan]:
    """One shared rank for every layer (layers where it does not pay stay dense)."""
    ranks = sorted({r for c in curves.values() for r in c.ranks if r is not None}, reverse=True)
    return _ordered([{name: r if r in c.ranks else None for name, c in curves.items()} for r in ranks], curves)


def threshold_plans(curves: Mapping[str, LayerCurve]) -> list[Plan]:
    """One error threshold for all layers: each keeps its smallest rank within it."""
    thresholds = sorted({e for c in curves.values() for e in c.error})
    plans = []
    for threshold in thresholds:
        plans.append({name: next(r for r, e in zip(c.ranks, c.error) if e <= threshold + 1e-12)
                      for name, c in curves.items()})
    return _ordered(plans, curves)


def _lower_hull(params: Sequence[int], distortion: Sequence[float]) -> list[int]:
    """Indices of the lower convex hull of (params, distortion), params ascending."""
    order = sorted(range(len(params)), key=lambda i: (params[i], distortion[i]))
    hull: list[int] = []
    for i in order:
        if hull and params[hull[-1]] == params[i]:
            continue
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            cross = (params[b] - params[a]) * (distortion[i] - distortion[a]) - (distortion[b] - distortion[a]) * (params[i] - params[a])
            if cross <= 0:  # b lies on or above the segment a-i
                hull.pop()
            else:
                break
        hull.append(i)
    # only the decreasing part matters: more params must buy less distortion
    best = min(range(len(hull)), key=lambda k: (distortion[hull[k]], params[hull[k]]))
    return hull[:best + 1]


def lagrangian_plans(curves: Mapping[str, LayerCurve]) -> list[Plan]:
    """Greedy marginal analysis over each layer's hull: the plans a Lagrangian sweep reaches."""
    hulls = {name: _lower_hull(c.params, c.distortion or c.error) for name, c in curves.items()}
    position = {name: len(h) - 1 for name, h in hulls.items()}  # start from the largest option
    plans = [{name: curves[name].ranks[hulls[name][position[name]]] for name in curves}]
    while True:
        steps = []
        for name, hull in hulls.items():
            k = position[name]
            if k == 0:
                continue
            curve, here, there = curves[name], hull[k], hull[k - 1]
            values = curve.distortion or curve.error
            saved = curve.params[here] - curve.params[there]
            steps.append(((values[there] - values[here]) / saved, name))
        if not steps:
            break
        _, name = min(steps)
        position[name] -= 1
        plans.append({n: curves[n].ranks[hulls[n][position[n]]] for n in curves})
    return _ordered(plans, curves)


def accuracy_drop(base: np.ndarray, candidate: np.ndarray, confidence: float) -> tuple[float, float]:
    """(drop, upper bound of the drop at ``confidence``) in points, from per-sample correctness.

    The drop is ``(lost - gained) / n`` over the samples the candidate gets wrong that the base got
    right (lost) and the reverse (gained); its standard error comes from the paired flips.
    """
    n = max(len(base), 1)
    lost = int(np.sum(base & ~candidate))
    gained = int(np.sum(~base & candidate))
    drop = 100.0 * (lost - gained) / n
    if confidence <= 0:
        return drop, drop
    spread = math.sqrt(max(lost + gained - (lost - gained) ** 2 / n, 0.0))
    return drop, drop + statistics.NormalDist().inv_cdf(confidence) * 100.0 * spread / n


def output_distortion(outputs: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean KL(reference || outputs) of softmax outputs; relative squared error for non-class outputs."""
    if outputs.ndim == 2 and outputs.shape[-1] >= 2:
        log_ref = torch.log_softmax(reference.double(), -1)
        log_out = torch.log_softmax(outputs.double(), -1)
        return float((log_ref.exp() * (log_ref - log_out)).sum(-1).mean().clamp_min(0.0))
    scale = float(reference.double().square().sum())
    return float((outputs.double() - reference.double()).square().sum()) / scale if scale > 0 else 0.0


def _measured_ranks(grid: list[int], count: int = MEASURED_RANKS) -> list[int]:
    """Up to ``count`` grid ranks, spaced geometrically, always the first and last."""
    if len(grid) <= count:
        return grid
    picks = {grid[0], grid[-1]}
    for k in range(count):
        target = grid[0] * (grid[-1] / grid[0]) ** (k / (count - 1))
        picks.add(min(grid, key=lambda r: abs(r - target)))
    return sorted(picks)


def _interpolate(ranks: list[int], measured: dict[int, float]) -> list[float]:
    """Log-linear interpolation of the measured distortion, made non-increasing in rank."""
    known = sorted(measured)
    xs = np.array(known, dtype=float)
    ys = np.log(np.array([measured[r] for r in known]) + 1e-12)
    values = np.exp(np.interp(np.array(ranks, dtype=float), xs, ys)) - 1e-12
    return list(np.maximum.accumulate(np.clip(values, 0.0, None)[::-1])[::-1])


def embedding_distortion(outputs: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean ``1 - cos`` between two sets of sentence embeddings."""
    return float(1.0 - torch.nn.functional.cosine_similarity(outputs.double(), reference.double(), dim=-1).mean())


Mapper = Callable[[Callable[[Any], Any], Sequence[Any]], list[Any]]


def serial_map(fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
    """The default executor of the sensitivity table: every layer in this process, in order."""
    return [fn(item) for item in items]


# where the sensitivity table's per-layer evaluations run (edgecompress.sweep sets Ray workers)
SENSITIVITY_MAP: ContextVar[Mapper] = ContextVar("sensitivity_map", default=serial_map)


@contextmanager
def sensitivity_executor(mapper: Mapper) -> Iterator[None]:
    """Inside this block, :func:`measure_sensitivity` evaluates its layers through ``mapper(fn, items)``
    (which must return ``[fn(item) for item in items]``, in order, e.g. on other processes)."""
    token = SENSITIVITY_MAP.set(mapper)
    try:
        yield
    finally:
        SENSITIVITY_MAP.reset(token)


def measure_sensitivity(model: nn.Module, spectra: Mapping[str, LayerSpectrum], curves: Mapping[str, LayerCurve],
                        factors: Mapping[str, Any], outputs: Callable[[nn.Module], torch.Tensor],
                        distortion: Callable[[torch.Tensor, torch.Tensor], float] = output_distortion, *,
                        measured_ranks: int = MEASURED_RANKS,
                        progress: Callable[[str], None] | None = None) -> dict[str, LayerCurve]:
    """Add the measured network-output distortion to each layer's curve (one layer compressed at a time).

    ``outputs(model)`` runs a model on the fixed sample; each candidate layer is swapped into one
    working copy of ``model`` and swapped back, so ``model`` itself is never touched. The layers
    are evaluated through the current :data:`SENSITIVITY_MAP` (serial unless a sweep set workers).
    """
    work = copy_module(model)
    with torch.no_grad():
        reference = outputs(work)
    mapper = SENSITIVITY_MAP.get()
    report = progress if mapper is serial_map else None  # a callback stays in this process
    if progress and report is None:
        progress(f"sensitivity: {len(curves)} layers on the sweep's workers")
    jobs = [(index, name, [r for r in curve.ranks if r is not None])
            for index, (name, curve) in enumerate(curves.items())]

    def layer(job: tuple[int, str, list[int]]) -> dict[int, float]:
        index, name, grid = job
        nonlocal work
        measured: dict[int, float] = {}
        original = work.get_submodule(name)
        source = factors.get(name, spectra[name])
        bias = None if original.bias is None else original.bias.detach()
        try:
            for rank in _measured_ranks(grid, measured_ranks):
                if report:
                    report(f"sensitivity: layer {index + 1}/{len(curves)} ({name}), rank {rank}")
                work = replace_submodule(work, name, LowRankLinear.from_factors(*source.factors(rank), bias))
                with torch.no_grad():
                    measured[rank] = distortion(outputs(work), reference)
        finally:
            work = replace_submodule(work, name, original)
        return measured

    result = {}
    for (_, name, grid), measured in zip(jobs, mapper(layer, jobs)):
        curve = curves[name]
        distortion_curve = (*(_interpolate(grid, measured) if grid else []), 0.0)
        result[name] = LayerCurve(name, curve.ranks, curve.params, curve.error, distortion_curve, measured)
    return result


def sample_outputs(budget: Budget, inputs: np.ndarray | None, sample: Batch | None,
                   mask_key: str = "attention_mask") -> tuple[Callable[[nn.Module], torch.Tensor],
                                                               Callable[[torch.Tensor, torch.Tensor], float]]:
    """(outputs(model), distortion) of the sensitivity measurement: array inputs or one named-input batch."""
    if sample is not None:
        mask = mask_of(sample, mask_key)
        if budget.kind == "cosine":
            return (lambda m: embedding_of(forward(m, sample), mask)), embedding_distortion
        return (lambda m: _first_tensor(forward(m, sample))), output_distortion
    x = torch.from_numpy(np.ascontiguousarray(inputs[:SENSITIVITY_SAMPLES], dtype=np.float32))
    return (lambda m: m(x)), output_distortion


def _first_tensor(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    values = list(output.values()) if hasattr(output, "values") else list(output)
    return next(v for v in values if isinstance(v, torch.Tensor))


@dataclass
class _Search:
    """Evaluates candidates once each and records the path."""

    plans: list[Plan]
    curves: Mapping[str, LayerCurve]
    measure: Callable[[Plan], float | tuple[float, float]]  # value, or (value, value checked)
    meets: Callable[[float], bool]
    path: list[dict[str, Any]] = field(default_factory=list)
    seen: dict[int, bool] = field(default_factory=dict)
    progress: Callable[[str], None] | None = None
    on_checked: Callable[[Plan, bool], None] | None = None  # (plan, meets) after each new evaluation

    def check(self, index: int) -> bool:
        if index not in self.seen:
            plan = self.plans[index]
            params = plan_params(plan, self.curves)
            if self.progress:
                self.progress(f"budget search: candidate {index + 1}/{len(self.plans)}, {params:,} Linear params")
            measured = self.measure(plan)
            value, checked, *more = measured if isinstance(measured, tuple) else (measured, measured)
            self.seen[index] = self.meets(checked)
            errors = {name: round(curve.error[curve.ranks.index(plan[name])], 6) for name, curve in self.curves.items()}
            step = {"candidate": index, "ranks": dict(plan), "linear_params": params, "layer_error": errors,
                    "value": float(f"{value:.6g}")}
            if checked != value:
                step["bound"] = float(f"{checked:.6g}")
            for extra in more:
                step.update(extra)
            self.path.append({**step, "meets": self.seen[index]})
            if self.on_checked:
                self.on_checked(plan, self.seen[index])
        return self.seen[index]

    def last_meeting(self) -> int | None:
        """Largest index that meets (candidates assumed to fail from some point on)."""
        if not self.check(0):
            return None
        lo, hi = 0, len(self.plans)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if self.check(mid) else (lo, mid)
        return lo

    def first_meeting(self) -> int | None:
        """Smallest index that meets (candidates assumed to meet from some point on)."""
        last = len(self.plans) - 1
        if not self.check(last):
            return None
        lo, hi = -1, last
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if self.check(mid) else (mid, hi)
        return hi


@dataclass(frozen=True)
class BudgetResult:
    """The compressed model, its plan, and the "search" record for build.json."""

    model: nn.Module
    plan: CompressionPlan
    record: dict[str, Any]


def budget_compress(model: nn.Module, policy: RankPolicy, spectra: Mapping[str, LayerSpectrum], budget: Budget, *,
                    context: PolicyContext, allocation: str = "auto", confidence: float = 0.95,
                    evaluate: Callable[[nn.Module], np.ndarray] | None = None,
                    inputs: np.ndarray | None = None,
                    size_of: Callable[[nn.Module], int] | None = None,
                    embed: Callable[[nn.Module], torch.Tensor] | None = None,
                    sample: Batch | None = None, measured_ranks: int = MEASURED_RANKS) -> BudgetResult:
    """Search the policy's rank plans for the one that meets ``budget``.

    Args:
        model: the dense model (not modified).
        policy: decides the factorization (``data``: data-aware closed form, needs
            ``context.calibration``; others: truncated SVD) and the threshold knob; ``uniform``
            searches the shared rank.
        spectra: the layers to compress.
        budget: the target.
        context: calibration statistics, ``round_to``, progress.
        allocation: ``auto``, ``threshold`` or ``sensitivity`` (module docstring).
        confidence: an accuracy budget must hold for the upper bound of the drop at this one-sided
            confidence (0: the measured drop itself).
        evaluate: per-sample correctness (bool array) of a model on the validation split; needed
            for an accuracy budget.
        inputs: real inputs for the sensitivity table (validation or calibration samples).
        size_of: bytes of a model's exported file; needed for a size budget.
        embed: sentence embeddings (N, H) of a model on the validation split; needed for a cosine
            budget (compared row by row with the dense model's).
        sample: one batch of named inputs (``dict[str, Tensor]``) for the sensitivity table of a
            model with named inputs (instead of ``inputs``).
        measured_ranks: ranks per layer at which the sensitivity is measured.

    Raises:
        BudgetExceeded: no candidate meets the target (the message says what is achievable).
        InputError: the options do not fit together.
    """
    _check_options(policy, budget, allocation, confidence, evaluate, inputs if sample is None else sample, size_of,
                   embed)
    whitened = policy.needs_calibration or context.whiten
    factors: dict[str, Any] = dict(data_spectra(spectra, context)) if whitened else {}
    sensitivity = None if inputs is None and sample is None else sample_outputs(budget, inputs, sample)
    knob, curves, plans = _candidates(model, policy, spectra, context, allocation, factors, sensitivity,
                                      measured_ranks, (model, inputs, sample, budget.kind == "cosine"))

    # a quality budget with --sequential-refit holds for the model the build writes: each candidate is judged refit
    refit_each = context.refit_data is not None and budget.kind in ("accuracy", "cosine")
    # "built": the candidate refit last; "met": the last one that met the budget, which is the search's answer
    # (the binary search only moves up from a candidate that met)
    refits: dict[str, tuple[Plan, nn.Module, dict[str, Any] | None]] = {}
    dense_embedding = functools.cache(lambda: embed(model))

    def build(plan: Plan) -> nn.Module:
        candidate = apply_ranks(model, dict(spectra), dict(plan), {}, factors=factors)[0]
        if refit_each:
            refits["built"] = (dict(plan), candidate, refit_with_context(model, candidate, context))
        return candidate

    def keep_meeting(plan: Plan, meets: bool) -> None:
        built = refits.pop("built", None)
        if meets and built is not None and built[0] == plan:
            refits["met"] = built

    dense_params = sum(s.dense_params for s in spectra.values())
    baseline: dict[str, Any] = {"linear_params": dense_params}
    if budget.kind == "accuracy":
        base = np.asarray(evaluate(model), dtype=bool)
        baseline.update(accuracy=float(base.mean()), samples=int(base.size), confidence=confidence)
        search = _Search(plans, curves, lambda p: accuracy_drop(base, np.asarray(evaluate(build(p)), dtype=bool),
                                                                confidence),
                         lambda drop: drop <= budget.max_accuracy_drop + 1e-9, progress=context.on_progress)
    elif budget.kind == "cosine":
        baseline.update(samples=int(dense_embedding().shape[0]))

        def cosine(plan: Plan) -> tuple[float, float, dict[str, float]]:
            mean, p5 = cosine_stats(embed(build(plan)), dense_embedding())
            return mean, mean, {"cosine_p5": float(f"{p5:.6g}")}

        search = _Search(plans, curves, cosine, lambda mean: mean >= budget.min_cosine - 1e-12,
                         progress=context.on_progress)
    elif budget.kind == "params":
        search = _Search(plans, curves, lambda p: plan_params(p, curves) / dense_params,
                         lambda fraction: fraction <= budget.target_params, progress=context.on_progress)
    else:
        search = _Search(plans, curves, lambda p: float(size_of(build(p))),
                         lambda size: size <= budget.target_size, progress=context.on_progress)
    search.on_checked = keep_meeting if refit_each else None
    index = search.last_meeting() if budget.kind in ("accuracy", "cosine") else search.first_meeting()
    if index is None:
        raise BudgetExceeded(_unreachable(budget, search.path[-1], context.round_to))
    ranks = plans[index]
    compressed, plan = apply_ranks(model, dict(spectra), dict(ranks),
                                   {"name": policy.name, "budget": budget.to_json(), "knob": knob}, factors=factors)
    refitted = _refit_chosen(model, compressed, ranks, context, refits.get("met"),
                             None if embed is None else (embed, dense_embedding))
    visited = {r for step in search.path for r in step["ranks"].values()}
    record = {
        "budget": budget.to_json(), "knob": knob, "allocation": allocation, "round_to": context.round_to,
        "factorization": "data-aware" if factors else "truncated SVD", "baseline": baseline,
        "candidates": len(plans),
        "table": {name: curve.to_json(visited | {r for r in curve.ranks if r is not None and _power_of_two(r)})
                  for name, curve in curves.items()},
        **({"table_cache": context.extras["table_cache"]} if "table_cache" in context.extras else {}),
        "path": search.path, "ranks": dict(ranks),
        "result": next(step for step in search.path if step["candidate"] == index),
    }
    if refitted is not None:
        record["refit"] = refitted
    return BudgetResult(compressed, plan, record)


def _refit_chosen(model: nn.Module, compressed: nn.Module, ranks: Plan, context: PolicyContext,
                  met: tuple[Plan, nn.Module, dict[str, Any] | None] | None,
                  embedding: tuple[Callable[[nn.Module], torch.Tensor], Callable[[], torch.Tensor]] | None
                  ) -> dict[str, Any] | None:
    """The sequential refit of the chosen plan (``ranks``) when ``context.refit_data`` asks for it.

    ``met``: the search's own refit of a plan (a quality budget judges every candidate refit); when it is
    this plan its factors replace the fresh ``compressed`` ones and the record says ``in_search``, else the
    plan is refit now (a params or size budget: the refit changes neither). With ``embedding`` (embed, the
    dense model's embeddings) the validation cosine before and after the refit is recorded."""
    if context.refit_data is None:
        return None
    before = cosine_stats(embedding[0](compressed), embedding[1]()) if embedding is not None else None
    if met is not None and met[0] == dict(ranks):
        compressed.load_state_dict(met[1].state_dict())
        record = None if met[2] is None else {**met[2], "in_search": True}
        context.extras["refit"] = record  # (the search's last refit may have been a candidate that failed)
    else:
        record = refit_with_context(model, compressed, context)
    if before is not None and record is not None:
        after = cosine_stats(embedding[0](compressed), embedding[1]())
        record["validation_cosine"] = {"before": round(before[0], 6), "after": round(after[0], 6),
                                       "p5_before": round(before[1], 6), "p5_after": round(after[1], 6)}
    return record


def _check_options(policy: RankPolicy, budget: Budget, allocation: str, confidence: float,
                   evaluate: Callable[[nn.Module], np.ndarray] | None, inputs: Any,
                   size_of: Callable[[nn.Module], int] | None,
                   embed: Callable[[nn.Module], torch.Tensor] | None = None) -> None:
    """Refuse option combinations before any work is done."""
    if policy.name == "ddlr-convex":
        raise InputError("budget mode searches closed-form rank curves; use --policy data "
                         "(ddlr-convex solves one --max-error at a time)")
    if allocation not in ALLOCATIONS:
        raise InputError(f"--allocation must be one of {', '.join(ALLOCATIONS)}, got {allocation!r}")
    if allocation == "sensitivity" and inputs is None:
        raise InputError("--allocation sensitivity needs inputs: give --calib or --eval-split")
    if budget.kind == "accuracy" and evaluate is None:
        raise InputError("--max-accuracy-drop needs --eval-split DATA (a labelled validation set)")
    if budget.kind == "accuracy" and not 0 <= confidence < 1:
        raise InputError(f"--confidence must be in [0, 1), got {confidence}")
    if budget.kind == "cosine" and embed is None:
        raise InputError("--min-cosine needs a validation split to embed (--eval-split DATA, unlabeled is fine)")
    if budget.kind == "size" and size_of is None:
        raise InputError("--target-size needs a way to measure the exported size")


def _candidates(model: nn.Module, policy: RankPolicy, spectra: Mapping[str, LayerSpectrum], context: PolicyContext,
                allocation: str, factors: Mapping[str, Any], sensitivity: tuple[Callable[..., Any], Callable[..., float]] | None,
                measured_ranks: int = MEASURED_RANKS,
                cache_key: tuple[Any, ...] = ()) -> tuple[str, Mapping[str, LayerCurve], list[Plan]]:
    """(knob description, sensitivity table, candidate plans largest first) for the policy and allocation."""
    curves = {name: layer_curve(s, factors.get(name, s), context.round_to) for name, s in spectra.items()}
    if policy.name == "uniform":
        knob, plans = "uniform rank", uniform_plans(curves)
    elif allocation == "threshold" or (allocation == "auto" and sensitivity is None):
        knob, plans = "per-layer error threshold", threshold_plans(curves)
    else:
        # the table depends on the model, sample, factors and rank grid, not on the target: measured
        # once per context, so several budgets on one model (a benchmark's curve) pay for it once
        key = (measured_ranks, context.round_to, tuple(curves))
        cached = context.extras.get("sensitivity")
        if cached is None or cached[0] != key or any(a is not b for a, b in zip(cached[1], cache_key)):
            from edgecompress.lowrank.table_cache import stored_table  # (it imports this module)

            table = stored_table(model, curves, measured_ranks, context, cache_key,
                                 lambda: measure_sensitivity(model, spectra, curves, factors, *sensitivity,
                                                             measured_ranks=measured_ranks, progress=context.on_progress))
            context.extras["sensitivity"] = cached = (key, cache_key, table)
        curves = cached[2]
        knob, plans = "Lagrangian on measured output distortion", lagrangian_plans(curves)
    if not plans:
        raise BudgetExceeded(f"no layer can be factorized with ranks rounded to multiples of {context.round_to} "
                             "(every candidate rank is past the break-even rank); lower --round-to")
    return knob, curves, plans




def _power_of_two(n: int) -> bool:
    return n & (n - 1) == 0


def _unreachable(budget: Budget, closest: dict[str, Any], multiple: int) -> str:
    """The BudgetExceeded message: what the closest candidate achieves."""
    ranks = ", ".join(f"{name or '(root)'}={'dense' if r is None else r}" for name, r in closest["ranks"].items())
    if budget.kind == "accuracy":
        bound = f" (upper bound {closest['bound']:.2f})" if "bound" in closest else ""
        return (f"no compressed model stays within {budget.max_accuracy_drop} points: the smallest achievable drop is "
                f"{closest['value']:.2f} points{bound} (ranks {ranks}, {closest['linear_params']:,} Linear params); "
                "raise --max-accuracy-drop")
    if budget.kind == "cosine":
        return (f"no compressed model keeps a mean cosine of {budget.min_cosine} with the dense embeddings: the "
                f"closest candidate reaches {closest['value']:.4f} (ranks {ranks}, {closest['linear_params']:,} "
                "Linear params); lower --min-cosine, or distill after compressing")
    if budget.kind == "params":
        return (f"--target-params {budget.target_params} is out of reach: the smallest model keeps "
                f"{closest['value']:.4f} of the Linear parameters ({closest['linear_params']:,}, ranks {ranks}, "
                f"multiples of {multiple})")
    return (f"--target-size {budget.target_size:,} bytes is out of reach: the smallest model is "
            f"{int(closest['value']):,} bytes (ranks {ranks})")
