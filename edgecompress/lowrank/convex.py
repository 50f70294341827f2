"""The DDLR convex program for one layer, solved by ADMM with singular-value thresholding.

Given a layer's weights ``W`` (out x in), bias ``b``, calibration inputs ``X`` (in x n, one column
per input vector) and a tolerance ``eps``, with ``Y = W X + b 1^T`` the original pre-activations:

Linear variant (no ReLU after the layer)::

    minimize_Z  ||Z||_*                                   (nuclear norm: sum of singular values)
    subject to  ||(Z - W) X||_F <= eps * ||W X||_F

ReLU-aware variant (the layer feeds a ReLU; ``Omega`` = entries where ``Y > 0``)::

    minimize_Z  ||Z||_*
    subject to  ||P_Omega((Z - W) X)||_F <= eps * ||relu(Y)||_F   fit where the unit is active
                P_Omega^c(Z X + b 1^T) <= 0                       stay inactive where it is inactive

so ``relu(Z X + b)`` matches ``relu(Y)`` exactly off ``Omega`` and within ``eps`` (relative to the
layer's post-activation output, as in Net-Trim) on it. Both are
convex (the nuclear norm is the convex envelope of rank); ``Z = W`` is always feasible. With the
scaled inputs ``X~ = X / ||X||_2`` and the splitting ``Q = Z``, ``U = Z X~``, the program is
``min ||Q||_* + I_S(U)  s.t.  Q = Z, U = Z X~`` (``S`` the constraint set above), and scaled ADMM
iterates, with penalty ``rho`` (balanced adaptively) and duals ``Y1``, ``Y2``::

    Z <- ((Q - Y1) + (U - Y2) X~^T) (I + X~ X~^T)^-1        (one Cholesky factor, reused)
    Q <- SVT_{1/rho}(Z + Y1)                               (soft-threshold the singular values)
    U <- Proj_S(Z X~ + Y2)                                 (ball on Omega, clip on Omega^c)
    Y1 <- Y1 + Z - Q;   Y2 <- Y2 + Z X~ - U

until the primal and dual residuals fall below ``tol`` (relative). The rank is read off ``Q``
(exactly low-rank after thresholding).

Speed. The thresholding needs only the singular triplets above ``1/rho``, and ``Z + Y1`` changes
little from one iteration to the next. :class:`ThresholdSVD` therefore does a full SVD only while
the rank is large; once it is small (below a quarter of the smaller dimension) it refines the
previous iteration's right singular vectors (plus a few spare directions) by subspace iteration
and a small SVD, and accepts the result only when the spare directions fall below the threshold
and every kept triplet's residual is below ``1e-9`` of the largest singular value — else it falls
back to the full SVD. The products with the calibration inputs are computed once per iteration and
reused by the update and the residuals.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

Progress = Callable[[str], None]
RELAXATION = 1.6  # over-relaxation (Boyd et al. 2011, sec. 3.4.3)
BALANCE = 5.0  # rescale rho when one residual exceeds the other this many times


@dataclass(frozen=True)
class ConvexResult:
    """A solution ``Q = u diag(s) vh`` of the DDLR program and how well it meets the constraints."""

    u: torch.Tensor = field(repr=False)
    s: torch.Tensor = field(repr=False)
    vh: torch.Tensor = field(repr=False)
    rank: int
    fit_error: float  # ||P_Omega((Q - W) X)||_F / ||W X||_F, or / ||relu(Y)||_F in the ReLU-aware variant
    max_violation: float  # max of P_Omega^c(Q X + b), relative to max |Y| (0 when feasible)
    iterations: int
    converged: bool
    relu: bool
    max_error: float
    full_svds: int = 0  # SVDs done in full / as a warm-started truncated SVD (ThresholdSVD)
    truncated_svds: int = 0

    @property
    def weight(self) -> torch.Tensor:
        """The solution as a dense out x in float64 matrix."""
        return (self.u * self.s) @ self.vh

    def to_json(self) -> dict[str, Any]:
        return {"rank": self.rank, "fit_error": round(self.fit_error, 6), "max_error": self.max_error,
                "max_violation": round(self.max_violation, 8), "iterations": self.iterations,
                "converged": self.converged, "relu_aware": self.relu, "nuclear_norm": round(float(self.s.sum()), 6),
                "svds": {"full": self.full_svds, "truncated": self.truncated_svds}}


Triplets = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _soft_threshold(u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor, threshold: float) -> Triplets:
    s = (s - threshold).clamp_min(0.0)
    keep = int((s > 0).sum())
    return u[:, :keep], s[:keep], vh[:keep]


def singular_value_threshold(matrix: torch.Tensor, threshold: float) -> Triplets:
    """The prox of ``threshold * ||.||_*``: SVD with singular values soft-thresholded (zeros dropped)."""
    return _soft_threshold(*torch.linalg.svd(matrix, full_matrices=False), threshold)


class ThresholdSVD:
    """Singular-value thresholding of a slowly changing sequence of matrices (module docstring):
    a warm-started truncated SVD while the rank is small, the full SVD otherwise.

    ``full`` / ``truncated`` count the SVDs of each kind (for the benchmark and the tests).
    """

    SPARE = 8  # extra directions beyond the last rank: they must come out below the threshold
    MAX_SWEEPS = 6  # subspace-iteration sweeps before giving up and doing the full SVD
    RESIDUAL = 1e-9  # accepted ||M v - s u||, ||M^T u - s v|| relative to the largest singular value

    def __init__(self, *, seed: int = 0, truncate: bool = True) -> None:
        self.truncate = truncate
        self.basis: torch.Tensor | None = None  # in x k: the last right singular vectors
        self.generator = torch.Generator().manual_seed(seed)
        self.full = 0
        self.truncated = 0

    def __call__(self, matrix: torch.Tensor, threshold: float) -> Triplets:
        small = min(matrix.shape)
        width = 0 if self.basis is None else self.basis.shape[1] + self.SPARE
        if self.truncate and 0 < width <= small // 4:
            found = self._truncated(matrix, threshold, width)
            if found is not None:
                self.truncated += 1
                return self._keep(found)
        self.full += 1
        return self._keep(singular_value_threshold(matrix, threshold))

    def _keep(self, triplets: Triplets) -> Triplets:
        self.basis = triplets[2].T
        return triplets

    def _truncated(self, matrix: torch.Tensor, threshold: float, width: int) -> Triplets | None:
        assert self.basis is not None
        extra = torch.randn(matrix.shape[1], width - self.basis.shape[1], dtype=matrix.dtype, generator=self.generator)
        v = torch.linalg.qr(torch.cat([self.basis, extra], dim=1)).Q
        for _ in range(self.MAX_SWEEPS):
            u = torch.linalg.qr(matrix @ v).Q
            v = torch.linalg.qr(matrix.T @ u).Q
            ub, s, vbh = torch.linalg.svd(matrix @ v, full_matrices=False)
            if float(s[-1]) >= threshold:  # the spare directions are not below the threshold: too narrow
                return None
            keep = int((s > threshold).sum())
            left, right = ub[:, :keep], (v @ vbh.T)[:, :keep]
            scale = max(float(s[0]), 1e-300)
            residual = float((matrix.T @ left - right * s[:keep]).norm(dim=0).max()) if keep else 0.0
            if residual <= self.RESIDUAL * scale:
                return _soft_threshold(left, s[:keep], right.T, threshold)
        return None


@dataclass(frozen=True)
class _Constraint:
    """The set S for U = Z X~: a Frobenius ball around the target on Omega, an upper bound off it."""

    target: torch.Tensor  # W X~
    active: torch.Tensor | None  # bool mask Omega (None: every entry, linear variant)
    upper: torch.Tensor | None  # bound on Omega^c entries (-b / scale)
    radius: float

    def project(self, values: torch.Tensor) -> torch.Tensor:
        diff = values - self.target
        if self.active is not None:
            diff = diff * self.active
        norm = float(diff.norm())
        if norm > self.radius:
            diff = diff * (self.radius / norm)
        if self.active is None:
            return self.target + diff
        inactive = torch.minimum(values, self.upper)
        return torch.where(self.active, self.target + diff, inactive)


def solve_ddlr(weight: torch.Tensor, inputs: torch.Tensor, *, bias: torch.Tensor | None = None, relu: bool = False,
               max_error: float = 0.1, max_iter: int = 1000, tol: float = 1e-4, rho: float | None = None,
               progress: Progress | None = None, truncate: bool = True) -> ConvexResult:
    """Solve the DDLR program (module docstring) for one layer.

    Args:
        weight: the layer's weights, out x in.
        inputs: calibration input rows, n x in.
        bias: the layer's bias (used by the ReLU-aware inequality).
        relu: use the ReLU-aware variant.
        max_error: ``eps``, the relative output error allowed.
        max_iter: ADMM iteration cap (``converged`` tells whether ``tol`` was reached).
        tol: relative primal/dual residual at which to stop.
        rho: initial penalty (default: 10 / largest singular value of ``weight``).
        progress: called every few iterations with a status line (iteration, rank, residuals, estimate).
        truncate: allow the warm-started truncated SVD (False: a full SVD every iteration).
    """
    w = weight.to(torch.float64)
    out_features, in_features = w.shape
    x = inputs.to(torch.float64).T  # in x n
    b = torch.zeros(out_features, dtype=torch.float64) if bias is None else bias.to(torch.float64)
    scale = float(torch.linalg.matrix_norm(x, ord=2)) or 1.0
    xs = x / scale
    target = w @ xs
    pre = w @ x + b[:, None]
    active = (pre > 0) if relu else None
    upper = (-b / scale)[:, None].expand_as(target) if relu else None
    reference = float(pre.clamp_min(0.0).norm()) if relu else float(target.norm()) * scale
    constraint = _Constraint(target, active, upper, max_error * reference / scale)
    gram = xs @ xs.T
    solve = torch.cholesky_inverse(torch.linalg.cholesky(torch.eye(in_features, dtype=torch.float64) + gram))
    rho = rho or 10.0 / max(float(torch.linalg.matrix_norm(w, ord=2)), 1e-300)

    z, q, u_var = w.clone(), w.clone(), target.clone()
    y1, y2 = torch.zeros_like(w), torch.zeros_like(target)
    ux, y2x = u_var @ xs.T, y2 @ xs.T  # U X~^T and Y2 X~^T: one product with X~ per iteration
    svt = ThresholdSVD(truncate=truncate)
    svd = svt(q, 0.0)
    converged, iteration = False, 0
    clock = _Eta(max_iter)
    for iteration in range(1, max_iter + 1):
        z = ((q - y1) + (ux - y2x)) @ solve  # (I + X~ X~^T) is symmetric: its inverse, once
        zx = z @ xs
        q_old, ux_old = q, ux
        z_relaxed = RELAXATION * z + (1 - RELAXATION) * q_old
        zx_relaxed = RELAXATION * zx + (1 - RELAXATION) * u_var
        svd = svt(z_relaxed + y1, 1.0 / rho)
        q = (svd[0] * svd[1]) @ svd[2]
        u_var_new = constraint.project(zx_relaxed + y2)
        y1 += z_relaxed - q
        y2 += zx_relaxed - u_var_new
        ux_new = u_var_new @ xs.T
        # Y2 X~^T follows from its update without a product with X~: (Z X~) X~^T = Z (X~ X~^T)
        y2x += RELAXATION * (z @ gram) + (1 - RELAXATION) * ux - ux_new
        u_var, ux = u_var_new, ux_new
        primal = math.sqrt(float((z - q).square().sum() + (zx - u_var).square().sum()))
        dual = rho * float(((q - q_old) + (ux - ux_old)).norm())
        primal /= max(float(z.norm()), float(q.norm()), float(zx.norm()), float(u_var.norm()), 1e-300)
        dual /= max(rho * float(y1.norm()), rho * float(y2x.norm()), 1e-300)
        if progress and clock.due(iteration):
            progress(f"iteration {iteration} (at most {max_iter}), rank {svd[1].numel()}, residuals "
                     f"{primal:.1e}/{dual:.1e} (stop at {tol:.0e}), {clock.describe(iteration)}")
        if primal <= tol and dual <= tol:
            converged = True
            break
        if primal > BALANCE * dual or dual > BALANCE * primal:  # residual balancing; scaled duals follow rho
            factor = 2.0 if primal > dual else 0.5
            rho *= factor
            y1 /= factor
            y2 /= factor
            y2x /= factor
    u, s, vh = svd
    return ConvexResult(u, s, vh, int(s.numel()), *_constraint_report(q, w, x, b, active, reference),
                        iteration, converged, relu, max_error, svt.full, svt.truncated)


class _Eta:
    """When to report (every 10 iterations, at most every 2 s) and a time estimate for the rest."""

    def __init__(self, max_iter: int) -> None:
        self.max_iter = max_iter
        self.start = time.perf_counter()
        self.last = -math.inf

    def due(self, iteration: int) -> bool:
        now = time.perf_counter()
        if iteration % 10 or now - self.last < 2.0:
            return False
        self.last = now
        return True

    def describe(self, iteration: int) -> str:
        per = (time.perf_counter() - self.start) / iteration
        return f"{per * 1000:.0f} ms/iteration, at most {_duration(per * (self.max_iter - iteration))} left"


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def _constraint_report(q: torch.Tensor, w: torch.Tensor, x: torch.Tensor, b: torch.Tensor,
                       active: torch.Tensor | None, reference: float) -> tuple[float, float]:
    """(fit error relative to ``reference``, largest violation of the inactive bound relative to max |Y|)."""
    diff = (q - w) @ x
    pre = q @ x + b[:, None]
    if active is None:
        return (float(diff.norm()) / reference if reference > 0 else 0.0), 0.0
    fit = float((diff * active).norm()) / reference if reference > 0 else 0.0
    original = w @ x + b[:, None]
    violation = float((pre * ~active).clamp_min(0.0).max()) if (~active).any() else 0.0
    return fit, violation / max(float(original.abs().max()), 1e-300)
