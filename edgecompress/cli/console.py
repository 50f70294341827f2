"""Shared terminal helpers: a stderr console, a stage spinner, byte formatting."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Callable, Iterator

from rich.console import Console

console = Console(stderr=True, highlight=False)
stdout = Console(highlight=False, soft_wrap=True)


def interactive(quiet: bool = False) -> bool:
    """Progress is shown on a TTY, never with --quiet or in CI."""
    return not quiet and sys.stderr.isatty() and not os.environ.get("CI")


LOG_EVERY = 30.0  # seconds between progress lines when stderr is not a terminal


def progress_lines(every: float = LOG_EVERY) -> Callable[[str], None]:
    """A ``progress(stage)`` callback for logs and CI: the latest stage as one stderr line, at most
    every ``every`` seconds and not before ``every`` seconds have passed (short runs print nothing)."""
    clock = {"last": time.monotonic()}

    def log(stage: str) -> None:
        now = time.monotonic()
        if now - clock["last"] >= every:
            clock["last"] = now
            console.print(f"… {stage.replace('_', ' ')}", soft_wrap=True)

    return log


@contextlib.contextmanager
def stage_spinner(quiet: bool = False) -> Iterator[Callable[[str], None] | None]:
    """Yield a ``progress(stage)`` callback that updates a spinner on a terminal, prints a line every
    30 s otherwise (a log file, CI), and is None with --quiet."""
    if quiet:
        yield None
        return
    if not interactive(quiet):
        yield progress_lines()
        return
    with console.status("starting") as status:
        yield lambda stage: status.update(f"[bold]{stage.replace('_', ' ')}[/]…")


@contextlib.contextmanager
def counted_bar(description: str, total: int, quiet: bool = False) -> Iterator[Callable[[str], None] | None]:
    """A bar with ``done/total``, elapsed time and an ETA; yields ``advance(status)`` (None when not
    interactive)."""
    if not interactive(quiet):
        yield None
        return
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
               TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(description, total=total, status="")
        yield lambda status: bar.update(task, advance=1, status=status)


def human_bytes(count: float | None) -> str:
    """341459 -> '333.46 KiB' (the project's one size convention, see check.units.format_bytes)."""
    from edgecompress.check.units import format_bytes

    return "n/a" if count is None else format_bytes(count)
