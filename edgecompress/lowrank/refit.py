"""Sequential closed-form refit: each factor pair fitted to the dense layer's output on the inputs
the already-compressed prefix produces (SVD-LLM's parameter update, made sequential and exact).

Whitened truncation (``PolicyContext(whiten=True)``) fits every layer on the *dense* model's inputs
``X``. Once earlier layers are compressed, a layer sees other inputs ``X_c`` and the errors compound
over depth. The refit walks the compressed model in execution order, stage by stage (layers that
read the same input tensor, such as an attention block's query/key/value, form one stage), and for
each ``LowRankLinear`` of rank ``r`` solves

    min over rank-r W_r (and a free bias b')   ||W X + b - (W_r X_c + b')||_F

in closed form from streamed moments: with centered ``S_cc = cov(X_c)`` (Cholesky ``L``) and
``S_xc = cov(X, X_c)``, the unconstrained optimum is ``W* = W S_xc S_cc^-1``; the error splits
into ``||W X - W* X_c||^2 + ||(W* - W_r) L||^2``, so ``W_r`` is the truncated SVD of ``W* L``
mapped back by ``L^-1`` (reduced-rank regression), and ``b' = b + W mu_x - W_r mu_c`` absorbs the
mean output error (bias correction). With ``bias=False`` (or a layer without bias) the moments are
not centered and the bias stays as it was. Each stage needs one forward pass of both models over the calibration batches,
stopped right after the stage's inputs are seen, so the cost is about (number of stages / 2) full
forwards of each model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from edgecompress.errors import InputError
from edgecompress.lowrank.calibration import MASK_KEY, batches_of, real_rows, run_batch
from edgecompress.lowrank.embedding import Batch, mask_of
from edgecompress.lowrank.factorize import LowRankLinear

RIDGE = 1e-6  # relative to trace(S_cc) / in: the cross-moment solve needs more than the whitening's 1e-8
METRIC_RIDGE = 1e-2  # the output metric G + lam I (lam relative to trace(G) / out): every direction keeps some weight


class _StageSeen(Exception):
    """Raised from a hook once every layer of the current stage has seen its input: ends the forward."""


@dataclass
class _Moments:
    """Streamed moments of the dense inputs ``x`` and compressed inputs ``c`` of one layer.

    Rows are shifted by the first batch's means before the products (the shifted-data algorithm), so
    the covariances of inputs with a large mean keep their small directions in float32 products.
    """

    features: int
    count: int = 0
    shift_x: torch.Tensor | None = None
    shift_c: torch.Tensor | None = None
    sums: torch.Tensor | None = None  # (2, features): sums of the shifted x and c
    cc: torch.Tensor | None = None  # sum of shifted c c^T
    xc: torch.Tensor | None = None  # sum of shifted x c^T
    xx: torch.Tensor | None = None  # sum of shifted x x^T (only for the reported errors)

    def add(self, x: torch.Tensor, c: torch.Tensor) -> None:
        """Add one batch's rows (float32 per-batch products, summed in float64)."""
        if x.shape != c.shape:
            raise InputError(f"the dense and compressed models gave a layer inputs of different shapes "
                             f"{tuple(x.shape)} and {tuple(c.shape)}: they must be run on the same batches")
        if self.shift_x is None:
            self.shift_x, self.shift_c = x.mean(0), c.mean(0)
            self.sums = torch.zeros(2, self.features, dtype=torch.float64)
            self.cc, self.xc, self.xx = (torch.zeros(self.features, self.features, dtype=torch.float64)
                                         for _ in range(3))
        x, c = x - self.shift_x, c - self.shift_c
        self.count += int(x.shape[0])
        self.sums += torch.stack([x.sum(0, dtype=torch.float64), c.sum(0, dtype=torch.float64)])
        self.cc += (c.T @ c).double()
        self.xc += (x.T @ c).double()
        self.xx += (x.T @ x).double()

    def means(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The means of ``x`` and ``c``."""
        shifted = self.sums / max(self.count, 1)
        return self.shift_x.double() + shifted[0], self.shift_c.double() + shifted[1]

    def covariances(self, center: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(S_cc, S_xc, S_xx) per sample: centered covariances, or raw second moments (``center=False``)."""
        n = max(self.count, 1)
        d_x, d_c = self.sums[0] / n, self.sums[1] / n  # shifted means
        cc = self.cc / n - torch.outer(d_c, d_c)
        xc = self.xc / n - torch.outer(d_x, d_c)
        xx = self.xx / n - torch.outer(d_x, d_x)
        if center:
            return cc, xc, xx
        mu_x, mu_c = self.means()
        return cc + torch.outer(mu_c, mu_c), xc + torch.outer(mu_x, mu_c), xx + torch.outer(mu_x, mu_x)


@dataclass(frozen=True)
class RefitRecord:
    """What the refit did to one layer: relative output error vs the dense layer on the calibration data."""

    name: str
    rank: int
    error_before: float  # ||W X + b - (current factors) X_c||_F / ||W X + b||_F
    error_after: float

    def to_json(self) -> dict[str, Any]:
        return {"rank": self.rank, "error_before": round(self.error_before, 6), "error_after": round(self.error_after, 6)}


def _output_error(weight: torch.Tensor, bias: torch.Tensor, target_w: torch.Tensor, target_b: torch.Tensor,
                  m: _Moments) -> float:
    """``||(T_w X + T_b) - (W X_c + b)||_F / ||T_w X + T_b||_F`` from the moments (T = the dense layer):
    per sample, the centered part plus the error of the means."""
    s_cc, s_xc, s_xx = m.covariances(center=True)
    mu_x, mu_c = m.means()

    def quad(a: torch.Tensor, s: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.einsum("ij,jk,ik->", a, s, b)  # tr(A S B^T)

    mean_error = (target_w @ mu_x + target_b) - (weight @ mu_c + bias)
    err = quad(target_w, s_xx, target_w) - 2 * quad(target_w, s_xc, weight) + quad(weight, s_cc, weight) \
        + mean_error @ mean_error
    ref = quad(target_w, s_xx, target_w) + (target_w @ mu_x + target_b).square().sum()
    return float(err.clamp_min(0).sqrt() / ref.clamp_min(1e-300).sqrt())


def _cholesky(matrix: torch.Tensor, ridge: float) -> torch.Tensor:
    """Cholesky factor of ``matrix + lam I`` (lam = ``ridge`` x mean eigenvalue), the ridge raised
    tenfold until the factorization succeeds (a nearly singular covariance)."""
    features = matrix.shape[0]
    scale = max(float(torch.trace(matrix)) / features, 1e-300)
    eye = torch.eye(features, dtype=matrix.dtype)
    for _ in range(12):
        chol, info = torch.linalg.cholesky_ex(matrix + ridge * scale * eye)
        if int(info) == 0:
            return chol
        ridge *= 10
    raise InputError("the calibration inputs of a layer have no usable covariance (all zero or not finite)")


def solve(weight: torch.Tensor, bias: torch.Tensor | None, rank: int, m: _Moments, *, center: bool = True,
          ridge: float = RIDGE, metric: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor,
                                                                              torch.Tensor | None]:
    """The rank-``rank`` factors (first: rank x in, second: out x rank) and bias minimising the layer's
    output error on the moments (module docstring), measured in ``metric`` (out x out: ``tr(E^T G E)``)
    when given. float64 inside, float32 out."""
    w = weight.to(torch.float64)
    s_cc, s_xc, _ = m.covariances(center)
    chol = _cholesky(s_cc, ridge)
    # W* L = W S_xc S_cc^-1 L = W S_xc L^-T (S_cc ~= L L^T)
    target = torch.linalg.solve_triangular(chol, (w @ s_xc).T, upper=False).T
    root = None if metric is None else _cholesky(metric.to(torch.float64), METRIC_RIDGE).T  # G ~= R^T R
    if root is not None:
        target = root @ target
    u, s, vh = torch.linalg.svd(target, full_matrices=False)
    u, s, vh = u[:, :rank], s[:rank], vh[:rank]
    if root is not None:
        u = torch.linalg.solve_triangular(root, u, upper=True)  # back to output coordinates: R^-1 U_r
    a = torch.linalg.solve_triangular(chol.T, vh.T, upper=True).T  # rows v_i^T L^-1
    scale = torch.sqrt(s / a.norm(dim=1).clamp_min(1e-300))
    first = a * scale[:, None]
    second = u * (s / scale.clamp_min(1e-300))[None, :]
    if bias is None:
        return first.float().contiguous(), second.float().contiguous(), None
    b = bias.to(torch.float64)
    if center:
        mu_x, mu_c = m.means()
        b = b + w @ mu_x - second @ (first @ mu_c)
    return first.float().contiguous(), second.float().contiguous(), b.float()


def execution_stages(model: nn.Module, batch: Batch, names: Iterable[str]) -> list[list[str]]:
    """The named layers in the order ``model`` calls them on ``batch``, grouped into stages of
    consecutive layers that read the same input tensor. Layers never called are left out."""
    wanted = set(names)
    calls: dict[str, torch.Tensor] = {}  # first call of each layer -> its input, kept alive (ids get reused)

    def record(module_name: str) -> Callable[[nn.Module, tuple[Any, ...]], None]:
        def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
            calls.setdefault(module_name, args[0])
        return hook

    handles = [module.register_forward_pre_hook(record(name)) for name, module in model.named_modules()
               if name in wanted]
    try:
        with torch.no_grad():
            run_batch(model, batch)
    finally:
        for handle in handles:
            handle.remove()
    stages: list[list[str]] = []
    previous = None
    for name, tensor in calls.items():
        if stages and tensor is previous:
            stages[-1].append(name)
        else:
            stages.append([name])
        previous = tensor
    return stages


def _collect(model: nn.Module, batch: Batch, stage: Sequence[str], features: Mapping[str, int],
             mask_key: str) -> dict[str, torch.Tensor]:
    """Each stage layer's real-token input rows on ``batch`` (float32); the forward stops once all are seen."""
    mask = mask_of(batch, mask_key) if isinstance(batch, Mapping) else None
    rows: dict[str, torch.Tensor] = {}

    def hook(name: str) -> Callable[[nn.Module, tuple[Any, ...]], None]:
        def capture(_module: nn.Module, args: tuple[Any, ...]) -> None:
            if name not in rows:
                rows[name] = real_rows(args[0], mask, features[name], torch.float32)
            if len(rows) == len(stage):
                raise _StageSeen
        return capture

    handles = [model.get_submodule(name).register_forward_pre_hook(hook(name)) for name in stage]
    try:
        with torch.no_grad():
            run_batch(model, batch)
    except _StageSeen:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return rows


def refit(dense: nn.Module, compressed: nn.Module, data: Any, *, bias: bool = True,
          batch_size: int = 64, mask_key: str = MASK_KEY, ridge: float = RIDGE, metrics: Mapping[str, torch.Tensor] | None = None,
          progress: Callable[[str], None] | None = None) -> dict[str, RefitRecord]:
    """Refit every ``LowRankLinear`` of ``compressed`` (in place) to its dense layer's output, in order.

    Args:
        dense: the uncompressed model (not modified); its ``nn.Linear`` layers have the same names as
            the factor pairs of ``compressed``.
        compressed: the compressed copy (``compress(...)``); ranks are kept, factors (and biases
            when ``bias``) are replaced.
        data: calibration inputs, as :func:`edgecompress.lowrank.calibration.calibrate` takes them: an
            array, one dict of named arrays (cut into ``batch_size`` batches) or a list of batches
            (tensors, or dicts of named inputs with an attention mask for token models).
        batch_size: samples per forward pass (array inputs).
        bias: also absorb the mean output error into the bias (centered moments).
        mask_key: the batch entry holding the attention mask; padding rows are excluded.
        ridge: ridge of the input covariance, relative to its mean eigenvalue.
        metrics: per layer, an (out x out) metric of its output error (``output_metric.output_metrics``:
            how much each output direction moves the embedding); layers without one use ``||E||^2``.
        progress: called with a status line per stage.

    Returns:
        Per layer, the relative output error on the calibration data before and after its refit.

    Raises:
        InputError: no batches, or the two models do not correspond.
    """
    batches = batches_of(data, batch_size)
    if not batches:
        raise InputError("the sequential refit needs calibration batches")
    pairs = {name: m for name, m in compressed.named_modules() if isinstance(m, LowRankLinear)}
    originals = dict(dense.named_modules())
    missing = [name for name in pairs if not isinstance(originals.get(name), nn.Linear)]
    if missing:
        raise InputError(f"the dense model has no Linear layer {missing[0]!r} matching the compressed model's")
    features = {name: pair.in_features for name, pair in pairs.items()}
    stages = execution_stages(compressed, batches[0], pairs)
    records: dict[str, RefitRecord] = {}
    was_training = (dense.training, compressed.training)
    dense.eval()
    compressed.eval()
    try:
        for index, stage in enumerate(stages):
            if progress:
                progress(f"refit: stage {index + 1}/{len(stages)} ({', '.join(stage)})")
            moments = {name: _Moments(features[name]) for name in stage}
            for batch in batches:
                x = _collect(dense, batch, stage, features, mask_key)
                c = _collect(compressed, batch, stage, features, mask_key)
                for name in stage:
                    moments[name].add(x[name], c[name])
            for name in stage:
                records[name] = _refit_layer(name, originals[name], pairs[name], moments[name], bias, ridge,
                                             (metrics or {}).get(name))
    finally:
        dense.train(was_training[0])
        compressed.train(was_training[1])
    return records


def _refit_layer(name: str, linear: nn.Module, pair: LowRankLinear, m: _Moments, bias: bool,
                 ridge: float, metric: torch.Tensor | None = None) -> RefitRecord:
    """Solve one layer and write its new factors (and bias) into ``pair``."""
    weight = linear.weight.detach().to(torch.float64)
    dense_bias = torch.zeros(weight.shape[0], dtype=torch.float64) if linear.bias is None \
        else linear.bias.detach().to(torch.float64)
    current_bias = dense_bias if pair.second.bias is None else pair.second.bias.detach().to(torch.float64)
    before = _output_error(pair.dense_weight().detach().to(torch.float64), current_bias, weight, dense_bias, m)
    has_bias = linear.bias is not None and pair.second.bias is not None
    first, second, new_bias = solve(weight, dense_bias if has_bias else None, pair.rank, m,
                                    center=bias and has_bias, ridge=ridge, metric=metric)
    with torch.no_grad():
        pair.first.weight.copy_(first)
        pair.second.weight.copy_(second)
        if new_bias is not None:
            pair.second.bias.copy_(new_bias)
    after_bias = dense_bias if new_bias is None else new_bias.to(torch.float64)
    after = _output_error(second.to(torch.float64) @ first.to(torch.float64), after_bias, weight, dense_bias, m)
    return RefitRecord(name, pair.rank, before, after)


def refit_with_context(dense: nn.Module, compressed: nn.Module, context: Any) -> dict[str, Any] | None:
    """The refit ``context`` (a ``PolicyContext``) asks for, if any: refits ``compressed`` in place and
    returns its record for build.json (also kept in ``context.extras["refit"]``)."""
    if context is None or context.refit_data is None:
        return None
    from edgecompress.lowrank.output_metric import output_metrics

    batches = batches_of(context.refit_data, 64)
    pairs = [name for name, m in compressed.named_modules() if isinstance(m, LowRankLinear)]
    metrics = None
    if context.refit_metric:  # depends on the dense model and the data only: cached for several plans
        key = (id(dense), id(context.refit_data))
        cached = context.extras.get("output_metrics")
        if cached is None or cached[0] != key:
            context.extras["output_metrics"] = cached = (key, {})
        missing = [name for name in pairs if name not in cached[1]]
        if missing:
            cached[1].update(output_metrics(dense, batches, missing, progress=context.on_progress))
        metrics = cached[1]
    records = refit(dense, compressed, batches, metrics=metrics, progress=context.on_progress)
    record = {"metric": "embedding output (label-free Fisher)" if metrics else "layer output",
              "samples": sum(_samples(b) for b in batches),
              "layers": {name: r.to_json() for name, r in records.items()}}
    context.extras["refit"] = record
    return record


def _samples(batch: Any) -> int:
    return int(next(iter(batch.values())).shape[0]) if isinstance(batch, Mapping) else int(batch.shape[0])
