"""One figure per setup: test accuracy vs Linear parameters and vs ONNX file size, with the Pareto
front (the most accurate model at each size or smaller) over every row; for embedding pages, the
mean cosine vs the Linear-parameter ratio per policy (``cosine_plot``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
from matplotlib import ticker  # noqa: E402

MARKERS = {"dense": "*", "uniform": "o", "energy": "s", "entropy": "D", "data": "^", "ddlr-convex": "v",
           "budget": "P", "magnitude": "x", "truncate": "<", "finetune": ">", "svd-training": "h", "int8": "d",
           "lowrank-int8": "X"}
COLORS = [*(plt.get_cmap("tab10")(i) for i in range(10)), "black", "darkgoldenrod", "teal"]
FLOOR_POINTS = 10.0  # y axis starts at most this many points below dense


def pareto(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (size, accuracy) points no smaller-or-equal point beats, by increasing size."""
    front: list[tuple[float, float]] = []
    for size, acc in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or acc > front[-1][1]:
            front.append((size, acc))
    return front


def plot(rows: Sequence[dict[str, Any]], path: Path, title: str) -> Path:
    """Write the two-panel PNG to ``path``."""
    dense = next(r for r in rows if r["method"] == "dense")
    floor = 100 * dense["accuracy"] - FLOOR_POINTS
    fig, axes = plt.subplots(1, 2, figsize=(14, 5), sharey=True)
    for ax, key, xlabel in ((axes[0], "linear_params", "Linear parameters (non-zeros)"),
                            (axes[1], "onnx_bytes", "ONNX file size (bytes)")):
        for index, (method, marker) in enumerate(MARKERS.items()):
            members = [r for r in rows if r["method"] == method]
            if members:
                ax.scatter([r[key] for r in members], [max(100 * r["accuracy"], floor) for r in members],
                           marker=marker, s=60 if marker != "*" else 160, label=method,
                           color=COLORS[index % len(COLORS)])
        front = pareto([(r[key], 100 * r["accuracy"]) for r in rows])
        ax.step([p[0] for p in front], [max(p[1], floor) for p in front], where="post", color="grey", lw=1,
                label="Pareto front")
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(ticker.EngFormatter(unit="B" if key == "onnx_bytes" else ""))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_xlabel(xlabel)
        ax.grid(True, which="both", alpha=0.3)
    sparse = [r for r in rows if r.get("csr_bytes")]
    if sparse:
        axes[1].scatter([r["csr_bytes"] for r in sparse], [max(100 * r["accuracy"], floor) for r in sparse],
                        marker="x", color="lightgrey", label="magnitude, if stored CSR")
    axes[0].set_ylabel(f"test accuracy (%), clipped at {floor:.1f}")
    handles, labels = axes[1].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="center right")
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 0.86, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def cosine_plot(rows: Sequence[dict[str, Any]], path: Path, title: str) -> Path:
    """Embedding pages: mean cosine with the dense model vs the Linear-parameter ratio, one line per
    policy family (``family``), the dense model at (1, 1); written to ``path``."""
    fig, ax = plt.subplots(figsize=(8, 5))
    families = list(dict.fromkeys(r["family"] for r in rows))
    for index, name in enumerate(families):
        members = sorted((r for r in rows if r["family"] == name and r["cosine_mean"] is not None),
                         key=lambda r: r["param_ratio"])
        ax.plot([r["param_ratio"] for r in members], [r["cosine_mean"] for r in members], marker="os^DvPh<>"[index % 9],
                color=COLORS[index % len(COLORS)], label=name, lw=1)
    ax.scatter([1.0], [1.0], marker="*", s=160, color="black", label="dense", zorder=3)
    ax.set_xlabel("Linear-parameter ratio (dense / compressed)")
    ax.set_ylabel("mean cosine with dense embeddings (test)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
