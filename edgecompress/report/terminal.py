"""bench.json -> rich tables for a terminal (what `bench` prints; Markdown only with --md).

The same :class:`~edgecompress.report.markdown.Table` builders as the Markdown and HTML reports;
each ratio goes on a second line of its cell, green when better than the reference, red when worse.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.table import Table as RichTable
from rich.text import Text

from edgecompress.report.markdown import NOTES, Cell, Table, model_table, speed_table, verdicts

STYLES = {"good": "green", "bad": "red", "": "dim"}


def _cell(cell: Cell) -> Text:
    text = Text(cell.text)
    if cell.extra:
        text.append("\n" + cell.extra, style=STYLES[cell.mark])
    return text


def rich_table(table: Table) -> RichTable:
    """A rich table with the value and, below it, the coloured comparison with the reference."""
    out = RichTable(title=table.title, title_justify="left", header_style="bold")
    for header, align in zip(table.headers, table.align):
        out.add_column(header, justify="right" if align == "r" else "left")
    for row in table.cells:
        out.add_row(*(_cell(c) for c in row))
    return out


def print_report(bench: Mapping[str, Any], console: Console) -> None:
    """The verdict line(s), then the speed and the size/accuracy tables, then the legend."""
    for line in verdicts(bench):
        console.print(Text(line, style="bold"))
    for table in (speed_table(bench), model_table(bench)):
        console.print(rich_table(table))
    console.print(Text(NOTES, style="dim"))
