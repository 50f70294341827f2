"""The sweep's results table: results.json, results.md and results.html (with the accuracy-vs-size
Pareto plot; embedding models without labels: mean cosine to the dense model instead of accuracy), written atomically beside the entries' folders. Torch-free."""

from __future__ import annotations

import base64
import html
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from edgecompress import provenance
from edgecompress.report.html import _CSS, _table
from edgecompress.report.markdown import NA, Cell, Table, _md_table, fmt_bytes, fmt_int, fmt_pct

SCHEMA = "edgecompress.sweep/1"
FILES = ("results.json", "results.md", "results.html")


def quality_key(rows: Sequence[Mapping[str, Any]]) -> str:
    """What the sweep's quality is: "accuracy" when any entry has one (labelled data), else "cosine" (the
    embedding's mean cosine to the dense model)."""
    return "accuracy" if any(r.get("accuracy") is not None for r in rows) else "cosine"


def _quality_points(rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, float, float]]:
    """(entry, compressed bytes, quality) of the finished entries that have both."""
    key = quality_key(rows)
    return [(r["entry"], r["bytes"], r[key]) for r in rows
            if r.get("status") == "ok" and r.get("bytes") is not None and r.get(key) is not None]


def pareto_front(rows: Sequence[Mapping[str, Any]]) -> set[str]:
    """Labels of the finished entries no other entry beats on both size (smaller) and quality (higher)."""
    points = _quality_points(rows)
    return {label for label, size, acc in points
            if not any(s <= size and a >= acc and (s < size or a > acc) for _, s, a in points)}


def results_record(name: str, config: str, rows: list[dict[str, Any]], counts: Mapping[str, int], wall_s: float,
                   ray: Mapping[str, Any], interrupted: bool) -> dict[str, Any]:
    """results.json: settings, counts and one row per entry (``pareto`` marks the front)."""
    front = pareto_front(rows)
    return {"schema": SCHEMA, "name": name, "config": config, "provenance": provenance.collect(),
            "ray": dict(ray), "wall_s": wall_s, "interrupted": interrupted, "counts": dict(counts),
            "entries": [{**row, "pareto": row["entry"] in front} for row in rows]}


def _delta_pt(row: Mapping[str, Any]) -> str:
    acc, dense = row.get("accuracy"), row.get("dense_accuracy")
    return NA if acc is None or dense is None else f"{(acc - dense) * 100:+.2f}"


def _params(row: Mapping[str, Any]) -> Cell:
    after, before = row.get("linear_params"), row.get("linear_params_dense")
    if after is None:
        return Cell(NA)
    return Cell(fmt_int(after), f"{after / before:.2f}×" if before else "")


def _p50(row: Mapping[str, Any]) -> Cell:
    p50, dense = row.get("compressed_p50_ms"), row.get("dense_p50_ms")
    if p50 is None:
        return Cell(NA)
    return Cell(f"{p50:.4f}", f"{p50 / dense:.2f}×" if dense else "")


def _quality_cell(row: Mapping[str, Any]) -> Cell:
    """Accuracy, else the embedding's mean cosine to the dense model (5th percentile below it)."""
    if row.get("accuracy") is not None or row.get("cosine") is None:
        return Cell(fmt_pct(row.get("accuracy")))
    p5 = row.get("cosine_p5")
    return Cell(f"cos {row['cosine']:.4f}", "" if p5 is None else f"p5 {p5:.4f}")


def results_table(record: Mapping[str, Any]) -> Table:
    """One row per entry; failed entries show their error line; a latency column when entries were benchmarked."""
    bench = any(row.get("compressed_p50_ms") is not None for row in record["entries"])
    rows = []
    for row in record["entries"]:
        ok = row.get("status") == "ok"
        status = ("skipped (done before)" if row.get("skipped") else "ok") if ok else "failed"
        cells = [Cell(row["entry"] + (" ★" if row.get("pareto") else "")), Cell(status),
                 Cell(str(row.get("policy") or row.get("options", {}).get("policy", NA))),
                 _params(row) if ok else Cell(NA), Cell(fmt_bytes(row.get("bytes"))),
                 Cell(fmt_bytes(row.get("int8_bytes"))), _quality_cell(row), Cell(_delta_pt(row))]
        cells += [_p50(row)] if bench else []
        cells += [Cell(NA if row.get("seconds") is None else f"{row['seconds']:.1f}"),
                  Cell("" if ok else str(row.get("error", "")))]
        rows.append(tuple(cells))
    headers = ["entry", "status", "policy", "Linear params (vs dense)", "ONNX size", "int8 size", "accuracy / cosine",
               "Δ vs dense (pt)", *(["p50 ms batch 1 (vs dense)"] if bench else []), "build s", "error"]
    return Table("Entries", tuple(headers), ("l", "l", "l", *("r" * (len(headers) - 4)), "l"), tuple(rows))


def _summary(record: Mapping[str, Any]) -> list[tuple[str, str]]:
    counts, ray = record["counts"], record.get("ray") or {}
    items = [("config", str(record["config"])),
             ("entries", f"{counts['total']}: {counts['done']} built, {counts['failed']} failed, "
                         f"{counts['skipped']} skipped (finished in an earlier run)"),
             ("wall time", f"{record['wall_s']:.1f} s")]
    if ray:
        items.append(("Ray", f"{ray.get('address')}, {ray.get('cpus')} CPUs, {ray.get('cpus_per_entry')} per entry, "
                             f"max_retries {ray.get('max_retries')}"))
    if record.get("interrupted"):
        items.append(("interrupted", "yes: the entries not listed as ok had not finished"))
    return items


NOTE = ("★ marks the Pareto front: no other entry is both smaller (compressed ONNX file) and more accurate "
        "(for embedding models without labels: a higher mean cosine of the compressed file's embeddings to the dense "
        "model's, on the entry's --eval data). Δ vs dense is the accuracy change in percentage points against the "
        "entry's own dense export.")


def render_markdown(record: Mapping[str, Any]) -> str:
    lines = [f"# edgecompress sweep: {record['name']}", ""]
    lines += [f"- **{label}:** {text}" for label, text in _summary(record)]
    lines += ["", *_md_table(results_table(record)), "", NOTE, ""]
    return "\n".join(lines)


def pareto_plot(record: Mapping[str, Any]) -> bytes | None:
    """PNG: compressed ONNX size (log) vs accuracy (else mean cosine) per entry, the Pareto front joined by a line."""
    from edgecompress.report.plots import _matplotlib, _plain_log_axis, _png

    entries = record["entries"]
    accuracy = quality_key(entries) == "accuracy"
    scale = 100 if accuracy else 1
    pareto = {r["entry"]: r.get("pareto") for r in entries}
    points = [(size / 1024, value * scale, label, pareto[label]) for label, size, value in _quality_points(entries)]
    if not points:
        return None
    figure_cls, canvas_cls = _matplotlib()
    fig = figure_cls(figsize=(7, 4.5))
    ax = fig.subplots()
    ax.scatter([p[0] for p in points], [p[1] for p in points], s=30, color="#888", label="entry")
    dense = {(r["dense_bytes"] / 1024, r["dense_accuracy"] * 100 if accuracy else 1.0) for r in entries
             if r.get("dense_bytes") is not None and (r.get("dense_accuracy") is not None or not accuracy)}
    if dense:
        ax.scatter([d[0] for d in dense], [d[1] for d in dense], marker="*", s=90, color="#246", label="dense export")
    front = sorted((p for p in points if p[3]), key=lambda p: p[0])
    ax.plot([p[0] for p in front], [p[1] for p in front], "o-", color="#c03", label="Pareto front")
    for x, y, label, _ in points:
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, 3), fontsize=7)
    ax.set_xscale("log")
    sizes = [p[0] for p in points] + [d[0] for d in dense]
    _plain_log_axis(ax.xaxis, min(sizes), max(sizes))
    ax.set_xlabel("ONNX file size (KiB, log scale)")
    ax.set_ylabel("accuracy (%)" if accuracy else "mean cosine to the dense model")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig, canvas_cls)


def render_html(record: Mapping[str, Any]) -> str:
    try:
        png = pareto_plot(record)
        plot = ('<p class="note">No finished entry with an accuracy or cosine to plot.</p>' if png is None else
                f'<figure><img src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}" '
                'alt="Accuracy against compressed ONNX size per entry, Pareto front joined">'
                "<figcaption>Accuracy vs size</figcaption></figure>")
    except ImportError:
        plot = "<p class=\"note\">Plot omitted: matplotlib is not installed (pip install 'edgecompress[plot]').</p>"
    title = html.escape(f"edgecompress sweep: {record['name']}")
    items = "\n".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in _summary(record))
    return "\n".join(["<!DOCTYPE html>", '<html lang="en">', '<head><meta charset="utf-8">', f"<title>{title}</title>",
                      f"<style>{_CSS}</style></head>", "<body>", f"<h1>{title}</h1>", f"<dl>\n{items}\n</dl>",
                      _table(results_table(record), None), f'<p class="note">{html.escape(NOTE)}</p>',
                      "<h2>Accuracy vs size</h2>", plot, "</body>", "</html>", ""])


def _write(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def write_results(record: Mapping[str, Any], out: Path) -> list[Path]:
    """results.json, results.md, results.html in ``out`` (each replaced atomically)."""
    out.mkdir(parents=True, exist_ok=True)
    texts = (json.dumps(record, indent=2) + "\n", render_markdown(record), render_html(record))
    paths = [out / name for name in FILES]
    for path, text in zip(paths, texts):
        _write(path, text)
    return paths
