"""How close a compressed model's outputs are to the dense model's, by the kind of output:
top-1 agreement for class logits, cosine similarity (mean, 5th percentile) for embeddings,
relative error for anything else. Numpy only."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

KINDS = ("logits", "embedding", "values")


def output_kind(name: str, array: np.ndarray) -> str:
    """"embedding" for outputs named like one (or hidden states), "logits" for (batch, classes) floats or
    per-token class scores named logits, else "values"."""
    lowered = name.lower()
    if "embedding" in lowered or "hidden_state" in lowered:
        return "embedding"
    if array.ndim == 2 and array.shape[1] > 1 or "logits" in lowered and array.ndim >= 2 and array.shape[-1] > 1:
        return "logits"
    return "values"


def default_quality_output(outputs: tuple[str, ...]) -> str | None:
    """An output named like an embedding when there is one, else the first."""
    for name in outputs:
        if "embedding" in name:
            return name
    return outputs[0] if outputs else None


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of matching rows (trailing dimension = the vector)."""
    a = np.asarray(a, np.float64).reshape(-1, a.shape[-1])
    b = np.asarray(b, np.float64).reshape(-1, b.shape[-1])
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.divide((a * b).sum(1), norms, out=np.ones(len(a)), where=norms > 0)


def agreement(dense: np.ndarray, compressed: np.ndarray, kind: str) -> dict[str, Any]:
    """The quality measure of ``kind``, comparing compressed outputs with the dense model's."""
    if kind == "logits":
        same = dense.argmax(-1) == compressed.argmax(-1)
        return {"measure": "top1_agreement", "top1_agreement": float(same.mean())}
    if kind == "embedding":
        cos = cosine_rows(dense, compressed)
        return {"measure": "cosine", "cosine_mean": float(cos.mean()), "cosine_p5": float(np.percentile(cos, 5))}
    scale = float(np.linalg.norm(dense))
    error = float(np.linalg.norm(dense.astype(np.float64) - compressed)) / scale if scale > 0 else 0.0
    return {"measure": "relative_error", "relative_error": error}


def describe(result: dict[str, Any]) -> str:
    """One short phrase: "top-1 agreement 97.3%", "cosine mean 0.981 (p5 0.962)", "relative error 0.042"."""
    if result["measure"] == "top1_agreement":
        return f"top-1 agreement {result['top1_agreement']:.1%}"
    if result["measure"] == "cosine":
        return f"cosine mean {result['cosine_mean']:.4f} (p5 {result['cosine_p5']:.4f})"
    return f"relative error {result['relative_error']:.4f}"


def agreement_text(check: Mapping[str, Any]) -> str:
    """"cosine mean 0.9991" for an embedding output's verification record, else "top-1 agreement 99.20%"/"n/a"."""
    cosine, top1 = check.get("cosine_mean"), check.get("top1_agreement")
    if isinstance(cosine, float):
        return f"cosine mean {cosine:.4f}"
    return f"top-1 agreement {'n/a' if not isinstance(top1, float) else f'{top1:.2%}'}"


def preferred_agreement(rows: list[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """Of a build's agreement rows (one per input set), the one on the --eval data, else the first."""
    return next((row for row in rows if row.get("inputs") == "eval"), rows[0] if rows else None)
