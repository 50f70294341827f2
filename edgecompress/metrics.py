"""Classification and agreement metrics on numpy arrays (torch-free)."""

from __future__ import annotations

import numpy as np


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy."""
    return float(np.mean(np.argmax(logits, axis=-1) == labels))


def macro_f1(logits: np.ndarray, labels: np.ndarray) -> float:
    """Unweighted mean of per-class F1 over the classes present in labels or predictions."""
    predictions = np.argmax(logits, axis=-1)
    scores = []
    for cls in np.union1d(labels, predictions):
        tp = np.sum((predictions == cls) & (labels == cls))
        fp = np.sum((predictions == cls) & (labels != cls))
        fn = np.sum((predictions != cls) & (labels == cls))
        denominator = 2 * tp + fp + fn
        scores.append(0.0 if denominator == 0 else 2 * tp / denominator)
    return float(np.mean(scores)) if scores else 0.0


def top1_agreement(outputs: np.ndarray, reference: np.ndarray) -> float | None:
    """Share of samples whose arg-max matches the reference's (None for non-class outputs)."""
    if outputs.ndim < 2 or outputs.shape[-1] < 2:
        return None
    return float(np.mean(np.argmax(outputs, axis=-1) == np.argmax(reference, axis=-1)))


def max_abs_error(outputs: np.ndarray, reference: np.ndarray) -> float:
    """Largest absolute elementwise difference."""
    return float(np.max(np.abs(outputs.astype(np.float64) - reference.astype(np.float64)))) if outputs.size else 0.0


def max_rel_error(outputs: np.ndarray, reference: np.ndarray) -> float:
    """Largest absolute difference relative to the reference's largest magnitude."""
    scale = float(np.max(np.abs(reference))) if reference.size else 0.0
    return max_abs_error(outputs, reference) / scale if scale > 0 else 0.0
