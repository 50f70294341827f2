"""PNG plots for the HTML report (matplotlib's object API, no pyplot, no display needed).

:func:`render_plots` raises ImportError when matplotlib is missing; the HTML report then says so.
"""

from __future__ import annotations

import inspect
import io
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from edgecompress.report.markdown import block_label, model_rows


@dataclass(frozen=True)
class Plot:
    """One figure: a title, PNG bytes and alt text."""

    title: str
    png: bytes
    alt: str


def _matplotlib() -> tuple[Any, Any]:
    """(Figure, FigureCanvasAgg); ImportError when matplotlib is not installed."""
    import matplotlib  # noqa: F401  (explicit, so a missing package fails here)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    return Figure, FigureCanvasAgg


def nice_log_ticks(low: float, high: float) -> list[float]:
    """Tick values for a log axis over [low, high]: 1-2-5 steps, or 1..9 steps when that gives fewer
    than four ticks (a range within one decade would otherwise show one or two); the two ends when
    even that gives fewer than two."""
    if not (0 < low <= high):
        return []
    for steps in ((1, 2, 5), (1, 2, 3, 4, 5, 6, 7, 8, 9)):
        ticks = [m * 10.0 ** e for e in range(math.floor(math.log10(low)) - 1, math.ceil(math.log10(high)) + 1)
                 for m in steps]
        inside = [t for t in ticks if low <= t <= high]
        if len(inside) >= 4:
            return inside
    return inside if len(inside) >= 2 else [low, high]


def _plain_log_axis(axis: Any, low: float, high: float) -> None:
    """Log scale over [low, high] with plain-number ticks (0.02, 5, 100), no unlabelled minor ticks."""
    from matplotlib.ticker import FuncFormatter, NullFormatter, NullLocator

    axis.set_minor_locator(NullLocator())
    axis.set_minor_formatter(NullFormatter())
    axis.set_ticks(nice_log_ticks(low, high))
    axis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))


def _png(fig: Any, canvas_cls: Any) -> bytes:
    canvas_cls(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    return buf.getvalue()


def latency_plot(bench: Mapping[str, Any]) -> Plot | None:
    """Per batch size, a box plot of each model's latency samples (whiskers: p1..p99)."""
    figure_cls, canvas_cls = _matplotlib()
    by_batch: dict[Any, list[tuple[str, list[float]]]] = {}
    for r in bench.get("results", []):
        samples = (r.get("latency_ms") or {}).get("samples") or []
        if samples:
            by_batch.setdefault(block_label(r), []).append((str(r.get("model")), samples))
    if not by_batch:
        return None
    n_models = max(len(v) for v in by_batch.values())
    values = [v for entries in by_batch.values() for _, samples in entries for v in samples if v > 0]
    log = bool(values) and max(values) > 20 * min(values)  # outliers or batch sizes would squash the boxes
    fig = figure_cls(figsize=(9, 0.6 + len(by_batch) * (0.55 * n_models + 0.9)))
    # one x axis for every batch size, so boxes can be compared across batches
    axes = fig.subplots(len(by_batch), 1, squeeze=False, sharex=True)[:, 0]
    for ax, (batch, entries) in zip(axes, by_batch.items()):
        labels = [name for name, _ in entries][::-1]
        data = [samples for _, samples in entries][::-1]
        horizontal = ({"orientation": "horizontal"} if "orientation" in inspect.signature(ax.boxplot).parameters
                      else {"vert": False})  # matplotlib < 3.10
        ax.boxplot(data, whis=(1, 99), widths=0.6, flierprops={"markersize": 2, "alpha": 0.4}, **horizontal)
        ax.set_yticks(range(1, len(labels) + 1), labels)
        ax.set_title(batch, fontsize=10, loc="left")
        ax.grid(axis="x", alpha=0.3)
        ax.tick_params(labelbottom=True)  # shared axis, but every panel keeps its numbers
    if log:
        axes[-1].set_xscale("log")
        low, high = min(values) / 1.2, max(values) * 1.2
        axes[-1].set_xlim(low, high)
        _plain_log_axis(axes[-1].xaxis, low, high)
    axes[-1].set_xlabel("latency per batch (ms" + (", log scale)" if log else ")"))
    fig.tight_layout()
    return Plot("Latency distributions", _png(fig, canvas_cls),
                "Box plots of latency samples per model and batch size (whiskers at p1 and p99)")


def size_accuracy_plot(bench: Mapping[str, Any]) -> Plot | None:
    """File size vs accuracy (or vs top-1 agreement with the reference when there are no labels)."""
    figure_cls, canvas_cls = _matplotlib()
    models = [m for m in model_rows(bench) if m.get("bytes") is not None]
    key, label = "accuracy", "accuracy (%)"
    if not any(m.get("accuracy") is not None for m in models):
        key, label = "top1_agreement", "top-1 agreement with the reference (%)"
        if any(m.get("cosine_mean") is not None for m in models):
            key, label = "cosine_mean", "mean cosine similarity to the reference (×100)"
    if not any(m.get(key) is not None for m in models):
        return None
    big = max(m["bytes"] for m in models) >= 2**20
    unit, scale = ("MiB", 2**20) if big else ("KiB", 2**10)
    ref_name = bench.get("reference")
    points = [(m["bytes"] / scale, m[key] * 100, str(m.get("name"))) for m in models if m.get(key) is not None]
    fig = figure_cls(figsize=(7.5, 4.6))
    ax = fig.subplots()
    # names go in a legend, not next to the points: files of similar size would overprint their labels
    for index, (x, y, name) in enumerate(points):
        if name == ref_name:
            ax.scatter([x], [y], s=110, marker="*", color="black", zorder=3, label=f"{name} (reference)")
            ax.axhline(y, color="black", linewidth=0.8, linestyle=":", zorder=1)
        else:
            ax.scatter([x], [y], s=45, color=f"C{index % 10}", zorder=2, label=name)
    ax.set_xlabel(f"file size ({unit}, log scale)")
    ax.set_ylabel(label)
    ax.set_xscale("log")
    xs = [p[0] for p in points]
    low, high = min(xs) / 1.5, max(xs) * 1.5
    ax.set_xlim(low, high)
    _plain_log_axis(ax.xaxis, low, high)
    ax.grid(alpha=0.3)
    ys = [p[1] for p in points]
    pad = max(0.5, (max(ys) - min(ys)) * 0.2)
    ax.set_ylim(min(ys) - pad, min(100.0 + pad / 4, max(ys) + pad))
    ax.legend(fontsize=9, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, frameon=False)
    fig.tight_layout()
    return Plot(f"Size vs {key.replace('_', ' ').replace('top1', 'top-1')}", _png(fig, canvas_cls),
                f"Scatter of file size against {label} per model")


def render_plots(bench: Mapping[str, Any]) -> list[Plot]:
    """All plots that have data; ImportError when matplotlib is missing."""
    _matplotlib()
    return [p for p in (latency_plot(bench), size_accuracy_plot(bench)) if p is not None]
