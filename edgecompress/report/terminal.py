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
# The terminal's speed table leaves out p90, min and mean (in --md, --json and --html) to fit 100 columns.
TERMINAL_SPEED_COLUMNS = ("Model", "Seq", "Batch", "p50 ms", "p99 ms", "Samples/s", "Init ms", "First ms", "Peak RSS MiB",
                          "+RSS MiB")
PIPE_WIDTH = 160  # output to a file or a pipe is not cut to 80 columns


def columns(table: Table, headers: tuple[str, ...]) -> Table:
    """``table`` with only the named columns, in their original order."""
    keep = [i for i, h in enumerate(table.headers) if h in headers]
    return Table(table.title, tuple(table.headers[i] for i in keep), tuple(table.align[i] for i in keep),
                 tuple(tuple(row[i] for i in keep) for row in table.cells))


def _cell(cell: Cell) -> Text:
    text = Text(cell.text)
    if cell.extra:
        text.append("\n" + cell.extra, style=STYLES[cell.mark])
    return text


def rich_table(table: Table) -> RichTable:
    """A rich table with the value and, below it, the coloured comparison with the reference."""
    out = RichTable(title=table.title, title_justify="left", header_style="bold")
    for index, (header, align) in enumerate(zip(table.headers, table.align)):
        out.add_column(header, justify="right" if align == "r" else "left", overflow="fold",
                       no_wrap=index > 0)
    for row in table.cells:
        out.add_row(*(_cell(c) for c in row))
    return out


def print_report(bench: Mapping[str, Any], console: Console) -> None:
    """The verdict line(s), then the speed and the size/accuracy tables, then the legend."""
    if not console.is_terminal:
        console = Console(file=console.file, width=max(console.width, PIPE_WIDTH), highlight=False)
    for line in verdicts(bench):
        console.print(Text(line, style="bold"))
    for table in (columns(speed_table(bench), TERMINAL_SPEED_COLUMNS), model_table(bench)):
        console.print(rich_table(table))
    console.print(Text(NOTES + " p90, min and mean latency: --md, --json or --html.", style="dim"))
