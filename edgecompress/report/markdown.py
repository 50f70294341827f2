"""bench.json -> Markdown: a settings list and two tables (speed & memory per batch; size &
accuracy per model). The table builders are shared with the HTML report.

Cells show the value and, for models other than the reference, its ratio to the reference
(``0.213 (0.45×)``); accuracy and macro-F1 show the change in percentage points instead.
Missing values print as ``n/a``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from edgecompress.quality import describe

NA = "n/a"


@dataclass(frozen=True)
class Cell:
    """One table cell: the value, its comparison with the reference (``0.45×``, ``−0.20 pt``) and
    a mark, ``good`` / ``bad`` / ``""``, that the HTML and terminal reports colour."""

    text: str
    extra: str = ""
    mark: str = ""

    def __str__(self) -> str:
        return f"{self.text} ({self.extra})" if self.extra else self.text


@dataclass(frozen=True)
class Table:
    """Headers, alignment per column (``l``/``r``) and rows of formatted cells."""

    title: str
    headers: tuple[str, ...]
    align: tuple[str, ...]
    cells: tuple[tuple[Cell, ...], ...]

    @property
    def rows(self) -> tuple[tuple[str, ...], ...]:
        """The cells as plain strings: ``0.213 (0.45×)``."""
        return tuple(tuple(str(c) for c in row) for row in self.cells)


# --- number formatting ------------------------------------------------------------------------


def fmt_ms(value: float | None) -> str:
    if value is None:
        return NA
    return f"{value:.3f}" if value < 10 else f"{value:.2f}" if value < 100 else f"{value:.1f}"


def fmt_float(value: float | None, digits: int = 1) -> str:
    return NA if value is None else f"{value:,.{digits}f}"


def fmt_int(value: int | None) -> str:
    return NA if value is None else f"{int(value):,}"


def fmt_bytes(value: int | None) -> str:
    """The project's one size convention: binary units (1,024), one decimal — ``333.5 KiB``
    (JSON files keep exact byte counts)."""
    from edgecompress.check.units import format_bytes

    return NA if value is None else format_bytes(value)


def fmt_pct(value: float | None) -> str:
    return NA if value is None else f"{value * 100:.2f}%"


def fmt_sci(value: float | None) -> str:
    return NA if value is None else f"{value:.2e}"


def fmt_ratio(value: float | None) -> str:
    if value is None:
        return NA
    return f"{value:.2f}×" if value < 100 else f"{value:.0f}×"


# Relative change that is shown uncoloured (timing noise, rounding).
NEUTRAL_RATIO = 0.05
NEUTRAL_POINTS = 0.1


def ratio_cell(text: str, ratio: float | None, is_reference: bool, *, higher_is_better: bool = False) -> Cell:
    """The value with its ratio to the reference, marked good/bad beyond ±5 %."""
    if is_reference or text == NA or ratio is None:
        return Cell(text)
    better = ratio > 1 + NEUTRAL_RATIO if higher_is_better else ratio < 1 - NEUTRAL_RATIO
    worse = ratio < 1 - NEUTRAL_RATIO if higher_is_better else ratio > 1 + NEUTRAL_RATIO
    return Cell(text, fmt_ratio(ratio), "good" if better else "bad" if worse else "")


def fmt_delta_pt(delta: float) -> str:
    """A change in percentage points: ``+0.20 pt``, ``−0.20 pt``, ``±0.00 pt``."""
    sign = "+" if delta >= 0.005 else "−" if delta <= -0.005 else "±"
    return f"{sign}{abs(delta):.2f} pt"


def delta_cell(value: float | None, reference: float | None, is_reference: bool) -> Cell:
    """A percentage with its change in percentage points vs the reference: ``97.90% (−0.20 pt)``."""
    text = fmt_pct(value)
    if is_reference or value is None or reference is None:
        return Cell(text)
    delta = (value - reference) * 100
    mark = "good" if delta > NEUTRAL_POINTS else "bad" if delta < -NEUTRAL_POINTS else ""
    return Cell(text, fmt_delta_pt(delta), mark)


# --- tables -----------------------------------------------------------------------------------


def _latency(row: Mapping[str, Any], key: str) -> float | None:
    return (row.get("latency_ms") or {}).get(key)


def block_label(row: Mapping[str, Any]) -> str:
    """``batch 1`` or, for a bench over several sequence lengths, ``seq 128, batch 1``."""
    return ("" if row.get("seq") is None else f"seq {row['seq']}, ") + f"batch {row.get('batch')}"


def speed_table(bench: Mapping[str, Any]) -> Table:
    """One row per (sequence length,) batch size and model: latency percentiles, throughput, start-up, memory."""
    ref = bench.get("reference")
    with_seq = any(r.get("seq") is not None for r in bench.get("results", []))
    rows = []
    for r in bench.get("results", []):
        is_ref = r.get("model") == ref
        ratios = r.get("ratios") or {}

        def cell(text: str, key: str) -> Cell:
            return ratio_cell(text, ratios.get(key), is_ref, higher_is_better=key == "throughput_per_s")

        rows.append((
            Cell(str(r.get("model"))), *((Cell(str(r.get("seq"))),) if with_seq else ()), Cell(str(r.get("batch"))),
            *(cell(fmt_ms(_latency(r, k)), k) for k in ("p50", "p90", "p99", "min", "mean")),
            cell(fmt_float(r.get("throughput_per_s"), 1), "throughput_per_s"),
            cell(fmt_ms(r.get("init_ms")), "init_ms"),
            cell(fmt_ms(r.get("first_inference_ms")), "first_inference_ms"),
            cell(fmt_float(r.get("peak_rss_mib"), 1), "peak_rss_mib"),
            cell(fmt_float(r.get("rss_increment_mib"), 1), "rss_increment_mib"),
        ))
    headers = ("Model", *(("Seq",) if with_seq else ()), "Batch", "p50 ms", "p90 ms", "p99 ms", "min ms", "mean ms",
               "Samples/s", "Init ms", "First ms", "Peak RSS MiB", "+RSS MiB")
    return Table("Speed and memory", headers, ("l",) + ("r",) * (len(headers) - 1), tuple(rows))


def model_rows(bench: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per model: its entry in ``models`` merged with its first result row (size, accuracy ...)."""
    first: dict[str, Mapping[str, Any]] = {}
    for r in bench.get("results", []):
        first.setdefault(r.get("model"), r)
    merged = []
    for m in bench.get("models", []):
        row = dict(first.get(m.get("name"), {}))
        row.update({k: v for k, v in m.items() if v is not None or k not in row})
        merged.append(row)
    return merged


def model_table(bench: Mapping[str, Any]) -> Table:
    """One row per model: format, file size, parameters, accuracy, macro-F1, agreement, max diff."""
    ref_name = bench.get("reference")
    models = model_rows(bench)
    ref = next((m for m in models if m.get("name") == ref_name), {})
    rows = []
    for m in models:
        is_ref = m.get("name") == ref_name
        ratios = m.get("ratios") or {}
        rows.append((
            Cell(str(m.get("name"))), Cell(str(m.get("format", NA))),
            ratio_cell(fmt_bytes(m.get("bytes")), ratios.get("bytes"), is_ref),
            ratio_cell(fmt_int(m.get("params")), ratios.get("params"), is_ref),
            delta_cell(m.get("accuracy"), ref.get("accuracy"), is_ref),
            delta_cell(m.get("macro_f1"), ref.get("macro_f1"), is_ref),
            Cell(agreement_by_seq(bench, m)),
            Cell(fmt_sci(m.get("max_abs_diff"))),
        ))
    headers = ("Model", "Format", "Size", "Params", "Accuracy", "Macro-F1", "Agreement", "Max abs diff")
    return Table("Size and accuracy", headers, ("l", "l") + ("r",) * 6, tuple(rows))


def agreement_text(row: Mapping[str, Any]) -> str:
    """The row's agreement with the reference in its measure's words ("cosine mean 0.9812 (p5 0.9620)");
    a bench.json written before the measure was recorded shows its top-1 agreement."""
    measure = row.get("quality_measure") or ("top1_agreement" if row.get("top1_agreement") is not None else None)
    values = {"top1_agreement": "top1_agreement", "cosine": "cosine_mean", "relative_error": "relative_error"}
    if measure not in values or row.get(values[measure]) is None:
        return f"{NA} agreement"
    return describe({**row, "measure": measure})


def agreement_by_seq(bench: Mapping[str, Any], model: Mapping[str, Any]) -> str:
    """The model's agreement text; for a bench over several sequence lengths one per length ("cosine mean 0.91
    (p5 0.86) at seq 32; cosine mean 0.90 (p5 0.85) at seq 128"), each from that length's first result row."""
    by_seq: dict[Any, Mapping[str, Any]] = {}
    for r in bench.get("results", []):
        if r.get("model") == model.get("name"):
            by_seq.setdefault(r.get("seq"), r)
    if len(by_seq) < 2:
        return agreement_text(model) + ("" if model.get("seq") is None else f" at seq {model['seq']}")
    return "; ".join(f"{agreement_text({**model, **row})} at seq {seq}" for seq, row in by_seq.items())


def verdicts(bench: Mapping[str, Any]) -> list[str]:
    """One line per compared model: ``model.onnx: 0.20× size, 0.85× p50 latency (batch 1), ±0.00 pt
    accuracy`` — size, median latency at each batch size, and accuracy (else top-1 agreement)."""
    ref_name = bench.get("reference")
    models = model_rows(bench)
    ref = next((m for m in models if m.get("name") == ref_name), {})
    lines = []
    for m in models:
        if m.get("name") == ref_name:
            continue
        parts = [f"{fmt_ratio((m.get('ratios') or {}).get('bytes'))} size"]
        for r in bench.get("results", []):
            if r.get("model") == m.get("name"):
                parts.append(f"{fmt_ratio((r.get('ratios') or {}).get('p50'))} p50 latency ({block_label(r)})")
        if m.get("accuracy") is not None and ref.get("accuracy") is not None:
            parts.append(f"{fmt_delta_pt((m['accuracy'] - ref['accuracy']) * 100)} accuracy")
        else:
            parts.append(agreement_by_seq(bench, m))
        lines.append(f"{m.get('name')}: " + ", ".join(parts) + f" vs {ref_name}")
    return lines


# --- settings ---------------------------------------------------------------------------------


def settings(bench: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(label, text) lines describing machine, runtime, timing, data and run."""
    prov = bench.get("provenance") or {}
    cfg = bench.get("config") or {}
    versions = prov.get("versions") or {}
    runtimes = ", ".join(f"{k} {v}" for k, v in versions.items() if k in ("onnxruntime", "ai-edge-litert") and v)
    temp = prov.get("cpu_temp_c")
    temp_end = prov.get("cpu_temp_c_end")
    temp_text = NA if temp is None else f"{temp} °C" + (f" → {temp_end} °C" if temp_end is not None else "")
    if cfg.get("runs") and cfg.get("seconds"):
        amount = f"up to {cfg['runs']} rounds or {cfg['seconds']} s"
    elif cfg.get("seconds"):
        amount = f"{cfg['seconds']} s of rounds"
    else:
        amount = f"{cfg.get('runs', NA)} rounds"
    data = cfg.get("data")
    samples = cfg.get("eval_samples")
    if data:
        data_text = f"{data}, {samples} samples, " + ("labelled" if cfg.get("labels") else "no labels (accuracy n/a)")
    else:
        data_text = f"seeded random inputs (seed {cfg.get('seed', NA)}, {samples} samples; accuracy n/a)"
    inputs = "; ".join(f"{i['name']}: {i.get('dtype', '')}[{', '.join(map(str, i.get('shape', [])))}]"
                       for i in cfg.get("inputs", []))
    memory = ("peak RSS (VmHWM) of a fresh process per model and batch after load + run; "
              "+RSS = increment over that process after importing the runtime"
              if cfg.get("memory", True) else "not measured (--no-memory)")
    return [
        ("Reference", str(bench.get("reference", NA))),
        ("Machine", f"{prov.get('cpu', NA)} ({prov.get('cpu_count', NA)} CPUs), {prov.get('os', NA)}, "
                    f"Python {prov.get('python', NA)}"),
        ("CPU", f"governor {prov.get('cpu_governor') or NA}, temperature {temp_text}"),
        ("Runtime", f"{runtimes or NA}; {cfg.get('threads', prov.get('threads', NA))} intra-op thread(s), "
                    f"{cfg.get('inter_op_threads', 1)} inter-op, {cfg.get('execution_mode', 'sequential')}"),
        ("Timing", f"{amount} per batch size after {cfg.get('warmup', NA)} warm-up rounds, models interleaved; "
                   f"start-up from a {'fresh process' if cfg.get('cold_start') == 'subprocess' else 'new session'}"),
        ("Inputs", f"{inputs or NA}"),
        ("Data", data_text),
        ("Memory", memory),
        ("Run", f"{prov.get('timestamp', NA)}, git {(prov.get('git_commit') or NA)[:12]}, "
                f"`{prov.get('command', NA)}`"),
    ]


NOTES = ("Ratios are figure ÷ reference at the same batch size: below 1 is better for latency, start-up, "
         "memory, size and parameters; above 1 is better for samples/s. Accuracy and macro-F1 show the change "
         "in percentage points. Agreement (top-1 for class logits, cosine mean and 5th percentile for embeddings, "
         "relative error otherwise) and max abs diff compare each model's quality output with the "
         "reference's on the same inputs. n/a: not measured or not applicable (e.g. no labels).")


def _md_table(table: Table) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in table.rows)) if table.rows else len(h)
              for i, h in enumerate(table.headers)]

    def line(cells: Sequence[str]) -> str:
        padded = [c.rjust(w) if a == "r" else c.ljust(w) for c, w, a in zip(cells, widths, table.align)]
        return "| " + " | ".join(p.replace("|", "\\|") for p in padded) + " |"

    rule = "| " + " | ".join(("-" * (w - 1) + ":") if a == "r" else "-" * w
                             for w, a in zip(widths, table.align)) + " |"
    return [line(table.headers), rule, *(line(r) for r in table.rows)]


def render_markdown(bench: Mapping[str, Any]) -> str:
    """The whole report as Markdown (readable as plain text too: columns are padded)."""
    names = [m.get("name") for m in bench.get("models", [])]
    lines = [f"# edgecompress bench: {', '.join(map(str, names))}", ""]
    lines += [f"**{line}**" for line in verdicts(bench)] + ([""] if len(names) > 1 else [])
    lines += [f"- **{label}:** {text}" for label, text in settings(bench)]
    for table in (speed_table(bench), model_table(bench)):
        lines += ["", f"## {table.title}", "", *_md_table(table)]
    lines += ["", NOTES, ""]
    return "\n".join(lines)
