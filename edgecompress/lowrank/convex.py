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
(exactly low-rank after thresholding). Every iteration costs one full SVD of an out x in matrix.
"""

from __future__ import annotations

import math
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

    @property
    def weight(self) -> torch.Tensor:
        """The solution as a dense out x in float64 matrix."""
        return (self.u * self.s) @ self.vh

    def to_json(self) -> dict[str, Any]:
        return {"rank": self.rank, "fit_error": round(self.fit_error, 6), "max_error": self.max_error,
                "max_violation": round(self.max_violation, 8), "iterations": self.iterations,
                "converged": self.converged, "relu_aware": self.relu, "nuclear_norm": round(float(self.s.sum()), 6)}


def singular_value_threshold(matrix: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The prox of ``threshold * ||.||_*``: SVD with singular values soft-thresholded (zeros dropped)."""
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    s = (s - threshold).clamp_min(0.0)
    keep = int((s > 0).sum())
    return u[:, :keep], s[:keep], vh[:keep]


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
               progress: Progress | None = None) -> ConvexResult:
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
        progress: called every few iterations with a status line.
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
    chol = torch.linalg.cholesky(torch.eye(in_features, dtype=torch.float64) + xs @ xs.T)
    rho = rho or 10.0 / max(float(torch.linalg.matrix_norm(w, ord=2)), 1e-300)

    z, q, u_var = w.clone(), w.clone(), target.clone()
    y1, y2 = torch.zeros_like(w), torch.zeros_like(target)
    svd = singular_value_threshold(q, 0.0)
    converged, iteration = False, 0
    for iteration in range(1, max_iter + 1):
        rhs = (q - y1) + (u_var - y2) @ xs.T
        z = torch.cholesky_solve(rhs.T, chol).T
        zx = z @ xs
        q_old, u_old = q, u_var
        z_relaxed = RELAXATION * z + (1 - RELAXATION) * q_old
        zx_relaxed = RELAXATION * zx + (1 - RELAXATION) * u_old
        svd = singular_value_threshold(z_relaxed + y1, 1.0 / rho)
        q = (svd[0] * svd[1]) @ svd[2]
        u_var = constraint.project(zx_relaxed + y2)
        y1 += z_relaxed - q
        y2 += zx_relaxed - u_var
        primal = math.sqrt(float((z - q).square().sum() + (zx - u_var).square().sum()))
        dual = rho * float(((q - q_old) + (u_var - u_old) @ xs.T).norm())
        primal /= max(float(z.norm()), float(q.norm()), float(zx.norm()), float(u_var.norm()), 1e-300)
        dual /= max(rho * float(y1.norm()), rho * float((y2 @ xs.T).norm()), 1e-300)
        if progress and iteration % 10 == 0:
            progress(f"iteration {iteration}/{max_iter}, rank {svd[1].numel()}, residuals {primal:.1e}/{dual:.1e}")
        if primal <= tol and dual <= tol:
            converged = True
            break
        if primal > BALANCE * dual or dual > BALANCE * primal:  # residual balancing; scaled duals follow rho
            factor = 2.0 if primal > dual else 0.5
            rho *= factor
            y1 /= factor
            y2 /= factor
    u, s, vh = svd
    return ConvexResult(u, s, vh, int(s.numel()), *_constraint_report(q, w, x, b, active, reference),
                        iteration, converged, relu, max_error)


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
