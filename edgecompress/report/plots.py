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

from edgecompress.report.markdown import model_rows


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


def _plain_log_axis(axis: Any) -> None:
    """Log scale with plain numbers (0.02, 5, 100) instead of powers of ten."""
    from matplotlib.ticker import FuncFormatter

    fmt = FuncFormatter(lambda v, _pos: f"{v:g}")
    axis.set_major_formatter(fmt)
    def minor(v: float, _pos: Any) -> str:
        lead = round(v / 10 ** math.floor(math.log10(v))) if v > 0 else 0
        return f"{v:g}" if lead in (2, 5) else ""

    axis.set_minor_formatter(FuncFormatter(minor))


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
            by_batch.setdefault(r.get("batch"), []).append((str(r.get("model")), samples))
    if not by_batch:
        return None
    n_models = max(len(v) for v in by_batch.values())
    fig = figure_cls(figsize=(8, 0.6 + len(by_batch) * (0.55 * n_models + 0.9)))
    axes = fig.subplots(len(by_batch), 1, squeeze=False)[:, 0]
    for ax, (batch, entries) in zip(axes, by_batch.items()):
        labels = [name for name, _ in entries][::-1]
        data = [samples for _, samples in entries][::-1]
        horizontal = ({"orientation": "horizontal"} if "orientation" in inspect.signature(ax.boxplot).parameters
                      else {"vert": False})  # matplotlib < 3.10
        ax.boxplot(data, whis=(1, 99), widths=0.6, flierprops={"markersize": 2, "alpha": 0.4}, **horizontal)
        ax.set_yticks(range(1, len(labels) + 1), labels)
        ax.set_title(f"batch {batch}", fontsize=10, loc="left")
        ax.set_xlabel("latency per batch (ms)")
        values = [v for d in data for v in d if v > 0]
        if values and max(values) > 20 * min(values):  # outliers would squash the boxes
            ax.set_xscale("log")
            _plain_log_axis(ax.xaxis)
            ax.set_xlabel("latency per batch (ms, log scale)")
        ax.grid(axis="x", alpha=0.3)
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
    if not any(m.get(key) is not None for m in models):
        return None
    big = max(m["bytes"] for m in models) >= 2**20
    unit, scale = ("MiB", 2**20) if big else ("KiB", 2**10)
    points = [(m["bytes"] / scale, m[key] * 100, str(m.get("name"))) for m in models if m.get(key) is not None]
    fig = figure_cls(figsize=(6.5, 4))
    ax = fig.subplots()
    for x, y, name in points:
        ax.scatter([x], [y], s=40)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set_xlabel(f"file size ({unit}, log scale)")
    ax.set_ylabel(label)
    ax.set_xscale("log")
    _plain_log_axis(ax.xaxis)
    ax.grid(alpha=0.3)
    ys = [p[1] for p in points]
    pad = max(0.5, (max(ys) - min(ys)) * 0.2)
    ax.set_ylim(min(ys) - pad, min(100.0 + pad / 4, max(ys) + pad))
    fig.tight_layout()
    return Plot(f"Size vs {key.replace('_', ' ').replace('top1', 'top-1')}", _png(fig, canvas_cls),
                f"Scatter of file size against {label} per model")


def render_plots(bench: Mapping[str, Any]) -> list[Plot]:
    """All plots that have data; ImportError when matplotlib is missing."""
    _matplotlib()
    return [p for p in (latency_plot(bench), size_accuracy_plot(bench)) if p is not None]
