"""bench.json -> one self-contained HTML page: settings, tables, PNG plots embedded as base64.

No external CSS, scripts or images, so the file can be mailed or attached to a CI run. Without
matplotlib the page has the tables and a note instead of plots.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping
from typing import Any

from edgecompress.report.markdown import NOTES, Cell, Table, model_table, settings, speed_table, verdicts

NO_MATPLOTLIB = "Plots omitted: matplotlib is not installed (pip install 'edgecompress[plot]')."

_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5em auto; max-width: 1240px;
       padding: 0 12px; color: #222; }
h1 { font-size: 1.45em; } h2 { font-size: 1.2em; margin-top: 1.6em; }
.verdict { font-size: 1.15em; font-weight: 600; margin: .3em 0; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: .5em 0; font-variant-numeric: tabular-nums; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: .2em .45em; white-space: nowrap; vertical-align: top; }
th { background: #f3f3f3; white-space: normal; } td.r { text-align: right; } tr.ref td { background: #f7fbff; }
.x { display: block; font-size: .9em; color: #666; } .good { color: #13795b; font-weight: 600; }
.bad { color: #c0392b; font-weight: 600; }
dl { display: grid; grid-template-columns: max-content auto; gap: .2em 1em; } dt { font-weight: 600; }
dd { margin: 0; overflow-wrap: anywhere; }
figure { margin: 1em 0; } figcaption { color: #555; font-size: .9em; } img { max-width: 100%; }
.note { color: #555; font-size: .9em; max-width: 60em; }
"""


def _cell(cell: Cell) -> str:
    """The value and, on a second line, its comparison with the reference (coloured)."""
    if not cell.extra:
        return html.escape(cell.text)
    mark = f" {cell.mark}" if cell.mark else ""
    return f'{html.escape(cell.text)}<span class="x{mark}">{html.escape(cell.extra)}</span>'


def _table(table: Table, reference: str | None) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.headers)
    body = []
    for row in table.cells:
        cls = ' class="ref"' if row[0].text == reference else ""
        cells = "".join(f'<td class="{a}">{_cell(c)}</td>' for c, a in zip(row, table.align))
        body.append(f"<tr{cls}>{cells}</tr>")
    return (f'<h2>{html.escape(table.title)}</h2>\n<div class="scroll"><table>\n<thead><tr>{head}</tr></thead>\n'
            "<tbody>\n" + "\n".join(body) + "\n</tbody>\n</table></div>")


def _plots_html(bench: Mapping[str, Any]) -> str:
    try:
        from edgecompress.report.plots import render_plots

        plots = render_plots(bench)
    except ImportError:
        return f'<h2>Plots</h2>\n<p class="note">{html.escape(NO_MATPLOTLIB)}</p>'
    if not plots:
        return '<h2>Plots</h2>\n<p class="note">No data to plot.</p>'
    figures = []
    for plot in plots:
        data = base64.b64encode(plot.png).decode("ascii")
        figures.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(plot.alt)}">'
                       f"<figcaption>{html.escape(plot.title)}</figcaption></figure>")
    return "<h2>Plots</h2>\n" + "\n".join(figures)


def render_html(bench: Mapping[str, Any]) -> str:
    """The report as a complete HTML document."""
    names = ", ".join(str(m.get("name")) for m in bench.get("models", []))
    reference = bench.get("reference")
    items = "\n".join(f"<dt>{html.escape(label)}</dt><dd>{html.escape(text)}</dd>"
                      for label, text in settings(bench))
    parts = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        f"<title>edgecompress bench: {html.escape(names)}</title>", f"<style>{_CSS}</style>", "</head>", "<body>",
        f"<h1>edgecompress bench: {html.escape(names)}</h1>",
        *(f'<p class="verdict">{html.escape(line)}</p>' for line in verdicts(bench)),
        f"<dl>\n{items}\n</dl>",
        _table(speed_table(bench), reference), _table(model_table(bench), reference),
        f'<p class="note">{html.escape(NOTES)}</p>', _plots_html(bench), "</body>", "</html>", "",
    ]
    return "\n".join(parts)
