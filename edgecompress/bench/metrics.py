"""Numbers from arrays, numpy only: latency statistics, accuracy, macro-F1, agreement, output error.

Percentiles use linear interpolation between closest ranks (numpy's default, the same as
``statistics.quantiles(..., method="inclusive")``): p50 of [1, 2, 3, 4] is 2.5.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

PERCENTILES = (50, 90, 99)


def percentile(samples: Sequence[float] | np.ndarray, q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation; ValueError on no samples."""
    values = np.asarray(samples, dtype=np.float64)
    if values.size == 0:
        raise ValueError("percentile of no samples")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile q must be in [0, 100], got {q}")
    return float(np.percentile(values, q))


def latency_stats(samples_ms: Sequence[float] | np.ndarray) -> dict[str, float | int]:
    """p50/p90/p99/min/mean/max/std (ms, population std) and the number of runs."""
    values = np.asarray(samples_ms, dtype=np.float64)
    if values.size == 0:
        raise ValueError("latency statistics of no samples")
    stats: dict[str, float | int] = {f"p{q}": percentile(values, q) for q in PERCENTILES}
    stats.update(min=float(values.min()), mean=float(values.mean()), max=float(values.max()),
                 std=float(values.std()), runs=int(values.size))
    return stats


def throughput(batch: int, p50_ms: float) -> float | None:
    """Samples per second at the median latency per batch (None when the latency is 0).

    The median, not the mean: one scheduler stall would otherwise decide the figure, and a model
    with the lower p50 could show the lower samples/s. With the median, the throughput ratio is
    always the inverse of the p50 ratio."""
    return batch * 1000.0 / p50_ms if p50_ms > 0 else None


def top1(logits: np.ndarray) -> np.ndarray:
    """Predicted class per sample: argmax over the last axis."""
    return np.asarray(logits).argmax(axis=-1)


def is_classifier_output(output: np.ndarray) -> bool:
    """True for (N, C) scores with C > 1, the shape accuracy and agreement make sense for."""
    return output.ndim == 2 and output.shape[1] > 1


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Fraction of equal labels."""
    y_true, y_pred = np.asarray(y_true).ravel(), np.asarray(y_pred).ravel()
    if y_true.shape != y_pred.shape or y_true.size == 0:
        raise ValueError(f"accuracy needs equal, non-empty label arrays ({y_true.shape} vs {y_pred.shape})")
    return float(np.mean(y_true == y_pred))


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Unweighted mean of per-class F1 over the classes present in ``y_true`` or ``y_pred``
    (scikit-learn's ``f1_score(average="macro")``; a class with no TP, FP or FN scores 0)."""
    y_true, y_pred = np.asarray(y_true).ravel(), np.asarray(y_pred).ravel()
    if y_true.shape != y_pred.shape or y_true.size == 0:
        raise ValueError(f"macro_f1 needs equal, non-empty label arrays ({y_true.shape} vs {y_pred.shape})")
    classes = np.union1d(y_true, y_pred)
    t = y_true[:, None] == classes[None, :]
    p = y_pred[:, None] == classes[None, :]
    tp = np.sum(t & p, axis=0)
    fp = np.sum(~t & p, axis=0)
    fn = np.sum(t & ~p, axis=0)
    denom = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, denom, out=np.zeros(len(classes), dtype=np.float64), where=denom > 0)
    return float(f1.mean())


def top1_agreement(logits: np.ndarray, reference: np.ndarray) -> float:
    """Fraction of samples whose argmax equals the reference's argmax."""
    a, b = top1(logits), top1(reference)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"top1_agreement needs equal, non-empty outputs ({a.shape} vs {b.shape})")
    return float(np.mean(a == b))


def max_abs_diff(output: np.ndarray, reference: np.ndarray) -> float:
    """Largest absolute element-wise difference (inf when either has a non-finite value there)."""
    a = np.asarray(output, dtype=np.float64)
    b = np.asarray(reference, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"max_abs_diff needs equal shapes ({a.shape} vs {b.shape})")
    if a.size == 0:
        return 0.0
    diff = np.abs(a - b)
    return math.inf if not np.all(np.isfinite(diff)) else float(diff.max())


def ratio(value: float | int | None, reference: float | int | None) -> float | None:
    """``value / reference``; None when either is missing or the reference is 0."""
    if value is None or reference is None:
        return None
    if reference == 0 or not (math.isfinite(value) and math.isfinite(reference)):
        return None
    return float(value) / float(reference)
